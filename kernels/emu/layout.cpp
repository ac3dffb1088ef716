// The emulator's copy of every parameter struct layout (name, field, offset, size), for the ABI
// test to compare with the #[repr(C)] mirrors in src/backend/cuda/params.rs.
#include <cstddef>
#include <cstdio>
#include <string>

#include "../params.cuh"

namespace {
void row(std::string& o, const char* s, const char* f, size_t off, size_t size) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s %s %zu %zu\n", s, f, off, size);
    o += buf;
}
}  // namespace

extern "C" __attribute__((visibility("default"))) const char* kds_emu_param_layouts() {
    static const std::string table = [] {
        std::string o;
#define LF(T, name) row(o, sname, #name, offsetof(S, name), sizeof(T));
#define LA(T, name, n) row(o, sname, #name, offsetof(S, name), sizeof(T) * (n));
#define LS(Name, FIELDS)             \
    {                                \
        using S = Name;              \
        const char* sname = #Name;   \
        FIELDS(LF, LA)               \
        row(o, sname, "*", 0, sizeof(S)); \
    }
        KDS_ALL_PARAMS(LS)
        return o;
    }();
    return table.c_str();
}

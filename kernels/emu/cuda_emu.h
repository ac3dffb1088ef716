// CUDA emulation for host C++: the kernels in kernels/*.cu compiled by g++ run here, one
// cooperative fiber per CUDA thread, blocks one after another on the calling OS thread.
//
// - blockIdx/threadIdx/blockDim/gridDim read the current fiber's block;
// - __syncthreads() parks the fiber until every thread of the block has arrived (a thread that
//   exits while others wait is reported as barrier divergence, as on a GPU it is undefined);
// - warp shuffles exchange through a per-warp slot array with a warp barrier on each side, so
//   lanes see each other's values exactly as a converged warp would;
// - atomics are __atomic builtins (relaxed, as in CUDA), so ThreadSanitizer sees them as atomic;
// - SHARED() memory comes from a per-block arena filled with NaN bytes before the block runs.
//
// Built with -DKDS_EMU_TSAN and -fsanitize=thread, fibers are announced to ThreadSanitizer
// (switches without synchronisation) and barriers are release/acquire pairs, so a missing
// __syncthreads between a write and a read of another thread is a reported race.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint3 {
    unsigned x, y, z;
};

namespace kds_emu {

enum State : int { RUNNABLE = 0, WAIT_BLOCK = 1, WAIT_WARP = 2, DONE = 3 };

struct Fiber {
    void* sp;
    uint3 tid;
    int lin;
    int state;
    unsigned block_gen;
    unsigned warp_gen;
    size_t shared_cursor;
    char* stack;
    void* tsan;
};

struct Block {
    uint3 idx;
    dim3 dim;
    dim3 grid;
    int nthreads;
    char* shared;
    size_t shared_cap;
    char* dyn_shared;
    uint64_t warp_slots[32][32];
    int error;
    char msg[512];
};

#if defined(KDS_EMU_TSAN)
#define KDS_EMU_TLS thread_local
#else
#define KDS_EMU_TLS thread_local __attribute__((tls_model("initial-exec")))
#endif
extern KDS_EMU_TLS Fiber* g_cur;
extern KDS_EMU_TLS Block* g_block;

void syncthreads();
void syncwarp();
void fail(const char* fmt, ...);

template <class T>
inline T* shared_alloc(size_t count) {
    Fiber* f = g_cur;
    size_t align = alignof(T) < 16 ? 16 : alignof(T);
    size_t off = (f->shared_cursor + align - 1) & ~(align - 1);
    size_t end = off + count * sizeof(T);
    if (end > g_block->shared_cap) {
        fail("static shared memory overflow: %zu bytes requested, %zu available", end, g_block->shared_cap);
        off = 0;
    }
    f->shared_cursor = end;
    return reinterpret_cast<T*>(g_block->shared + off);
}

template <class T>
inline T* dyn_shared() {
    return reinterpret_cast<T*>(g_block->dyn_shared);
}

// Exchange `v` across the warp: every lane publishes, then reads lane `src(lane)`; lanes outside
// the block or the width segment keep their own value (CUDA's rule for shfl_up/down).
template <class T, class Src>
inline T warp_exchange(unsigned mask, T v, int width, Src src) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    Fiber* f = g_cur;
    Block* b = g_block;
    const int lane = f->lin & 31, warp = f->lin >> 5;
    const int lanes = std::min(32, b->nthreads - warp * 32);
    const unsigned want = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    if ((mask & want) != want) fail("warp shuffle with mask %08x while %d lanes are active (partial-mask shuffles are not emulated)", mask, lanes);
    if (width <= 0 || width > 32 || (width & (width - 1))) fail("warp shuffle width %d is not a power of two <= 32", width);
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    b->warp_slots[warp][lane] = bits;
    syncwarp();
    const int seg = lane & ~(width - 1);
    const int s = src(lane);
    T r = v;
    if (s >= seg && s < seg + width && s < lanes) std::memcpy(&r, &b->warp_slots[warp][s], sizeof(T));
    syncwarp();
    return r;
}

// Run `body(ctx)` once per thread of every block. Returns 0 or -1 (message in last_error()).
int launch_raw(const unsigned* grid, const unsigned* block, unsigned dyn_smem, void (*body)(void*), void* ctx);

template <class... A, size_t... I>
inline void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
inline int launch(void (*k)(A...), const unsigned* grid, const unsigned* block, unsigned smem, void** args) {
    struct Ctx {
        void (*k)(A...);
        void** args;
    } c{k, args};
    return launch_raw(
        grid, block, smem,
        [](void* p) {
            Ctx* c = static_cast<Ctx*>(p);
            call_with(c->k, c->args, std::index_sequence_for<A...>{});
        },
        &c);
}

}  // namespace kds_emu

extern "C" const char* kds_emu_last_error();

#define threadIdx (::kds_emu::g_cur->tid)
#define blockIdx (::kds_emu::g_block->idx)
#define blockDim (::kds_emu::g_block->dim)
#define gridDim (::kds_emu::g_block->grid)
#define warpSize 32

#define EMU_EXPORT(name)                                                                                   \
    extern "C" __attribute__((visibility("default"))) int kds_emu_##name(const unsigned* g, const unsigned* b, \
                                                                         unsigned smem, void** args) {     \
        return ::kds_emu::launch(name, g, b, smem, args);                                                  \
    }
#if defined(KDS_EMU_TSAN)
#define EMU_EXPORT_TSAN_ONLY(name) EMU_EXPORT(name)
#else
#define EMU_EXPORT_TSAN_ONLY(name)
#endif

inline void __syncthreads() { ::kds_emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::kds_emu::syncwarp(); }

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return ::kds_emu::warp_exchange(mask, v, width, [&](int lane) { return (lane & ~(width - 1)) + (src & (width - 1)); });
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::kds_emu::warp_exchange(mask, v, width, [&](int lane) { return lane + (int)delta; });
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::kds_emu::warp_exchange(mask, v, width, [&](int lane) { return lane - (int)delta; });
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return ::kds_emu::warp_exchange(mask, v, width, [&](int lane) { return lane ^ lane_mask; });
}

// ---- atomics (relaxed, like CUDA's) ----
inline float atomicAdd(float* a, float v) {
    unsigned* p = reinterpret_cast<unsigned*>(a);
    unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED), nw;
    float f;
    do {
        std::memcpy(&f, &old, 4);
        float s = f + v;
        std::memcpy(&nw, &s, 4);
    } while (!__atomic_compare_exchange_n(p, &old, nw, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return f;
}
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline int atomicMax(int* a, int v) {
    int old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline int atomicCAS(int* a, int cmp, int v) {
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}

// ---- device math that host C++ spells differently ----
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
template <class T>
inline T min(T a, T b) {
    return b < a ? b : a;
}
template <class T>
inline T max(T a, T b) {
    return a < b ? b : a;
}
inline float __ldg(const float* p) { return *p; }
// Round-to-nearest products and sums that the compiler must not contract into an FMA.
inline float __fmul_rn(float a, float b) {
    volatile float r = a * b;
    return r;
}
inline float __fadd_rn(float a, float b) {
    volatile float r = a + b;
    return r;
}

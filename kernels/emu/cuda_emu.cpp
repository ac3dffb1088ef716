// The emulator's scheduler: fibers with a hand-written x86-64 context switch (ucontext
// elsewhere), one fiber per CUDA thread of the running block, barriers resolved between
// round-robin passes. See cuda_emu.h for the model.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdlib>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(KDS_EMU_TSAN)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#define TSAN_NO_SYNC 1u
// The scheduler's own bookkeeping (fiber states, block coordinates, stack pointers) is shared
// by the scheduler and the fibers without synchronisation TSan could see, and must stay so:
// any happens-before edge through the scheduler would order every fiber after every other and
// hide the kernels' races. So the scheduler functions are not instrumented; the kernels'
// memory accesses are, and barriers are their only synchronisation.
#define KDS_NO_TSAN __attribute__((no_sanitize("thread")))
#else
#define KDS_NO_TSAN
#endif

namespace kds_emu {

KDS_EMU_TLS Fiber* g_cur = nullptr;
KDS_EMU_TLS Block* g_block = nullptr;

namespace {

#if defined(KDS_EMU_TSAN)
constexpr size_t kStack = 512 * 1024;
#else
constexpr size_t kStack = 128 * 1024;
#endif
constexpr size_t kStaticShared = 48 * 1024;
constexpr size_t kMaxDynShared = 48 * 1024;

thread_local char g_error[512];

#if defined(__x86_64__)
extern "C" void kds_emu_switch(void** save_sp, void* new_sp);
asm(R"(
    .pushsection .text
    .globl kds_emu_switch
    .hidden kds_emu_switch
    .type kds_emu_switch,@function
kds_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size kds_emu_switch,.-kds_emu_switch
    .popsection
)");
#endif

// Per OS thread: the fiber pool (stacks reused across blocks and launches) and the scheduler.
struct Runtime {
    std::vector<Fiber*> fibers;
    void* sched_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t sched_uc;
    std::vector<ucontext_t> ucs;
#endif
#if defined(KDS_EMU_TSAN)
    void* sched_tsan = nullptr;
#endif
    Block block;
    char* shared = nullptr;
    char* dyn = nullptr;
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
    // ThreadSanitizer sync objects: launch epoch and barrier generations (by parity).
    char epoch;
    char block_sync[2];
    char warp_sync[32][2];

    Runtime() {
        shared = static_cast<char*>(std::malloc(kStaticShared));
        dyn = static_cast<char*>(std::malloc(kMaxDynShared));
    }
    ~Runtime() {
        for (Fiber* f : fibers) {
            munmap(f->stack, kStack);
            delete f;
        }
        std::free(shared);
        std::free(dyn);
    }
};

thread_local Runtime* g_rt = nullptr;

KDS_NO_TSAN Runtime& rt() {
    static thread_local Runtime r;
    g_rt = &r;
    return r;
}

void fiber_entry();

KDS_NO_TSAN void init_stack(Runtime& r, Fiber* f, size_t index) {
#if defined(__x86_64__)
    (void)r;
    (void)index;
    uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack) + kStack) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;                                          // fake return address of fiber_entry
    *--sp = reinterpret_cast<uint64_t>(&fiber_entry);  // popped by `ret`
    for (int i = 0; i < 6; i++) *--sp = 0;              // rbp rbx r12-r15
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    *--sp = uint64_t(mxcsr) | (uint64_t(fpucw) << 32);
    f->sp = sp;
#else
    ucontext_t& uc = r.ucs[index];
    getcontext(&uc);
    uc.uc_stack.ss_sp = f->stack;
    uc.uc_stack.ss_size = kStack;
    uc.uc_link = nullptr;
    makecontext(&uc, fiber_entry, 0);
    f->sp = &uc;
#endif
}

KDS_NO_TSAN void ensure_fibers(Runtime& r, int n) {
    while ((int)r.fibers.size() < n) {
        Fiber* f = new Fiber();
        long page = sysconf(_SC_PAGESIZE);
        void* m = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            std::fprintf(stderr, "kdscout emulator: cannot map a fiber stack\n");
            std::abort();
        }
        mprotect(m, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
        f->stack = static_cast<char*>(m);
#if defined(KDS_EMU_TSAN)
        f->tsan = __tsan_create_fiber(0);
#endif
        r.fibers.push_back(f);
#if !defined(__x86_64__)
        r.ucs.resize(r.fibers.size());
#endif
    }
}

KDS_NO_TSAN inline void switch_to(Runtime& r, Fiber* f) {
    g_cur = f;
#if defined(KDS_EMU_TSAN)
    __tsan_switch_to_fiber(f->tsan, TSAN_NO_SYNC);
#endif
#if defined(__x86_64__)
    kds_emu_switch(&r.sched_sp, f->sp);
#else
    swapcontext(&r.sched_uc, static_cast<ucontext_t*>(f->sp));
#endif
}

KDS_NO_TSAN inline void yield_to_scheduler(Fiber* f) {
    Runtime& r = *g_rt;
#if defined(KDS_EMU_TSAN)
    __tsan_switch_to_fiber(r.sched_tsan, TSAN_NO_SYNC);
#endif
#if defined(__x86_64__)
    kds_emu_switch(&f->sp, r.sched_sp);
#else
    (void)f;
    swapcontext(static_cast<ucontext_t*>(f->sp), &r.sched_uc);
#endif
}

KDS_NO_TSAN void fiber_entry() {
    Runtime& r = *g_rt;
#if defined(KDS_EMU_TSAN)
    __tsan_acquire(&r.epoch);
#endif
    r.body(r.ctx);
#if defined(KDS_EMU_TSAN)
    __tsan_release(&r.epoch);
#endif
    Fiber* f = g_cur;
    f->state = DONE;
    yield_to_scheduler(f);
    std::abort();  // a finished fiber is never resumed
}

// Runs every thread of the current block to completion. Returns false on divergence.
KDS_NO_TSAN bool run_block(Runtime& r, int n) {
    Block& b = r.block;
    const dim3 d = b.dim;
    for (int i = 0; i < n; i++) {
        Fiber* f = r.fibers[i];
        f->lin = i;
        f->tid = uint3{unsigned(i) % d.x, (unsigned(i) / d.x) % d.y, unsigned(i) / (d.x * d.y)};
        f->state = RUNNABLE;
        f->block_gen = 0;
        f->warp_gen = 0;
        f->shared_cursor = 0;
        init_stack(r, f, i);
    }
    int live = n;
    const int nwarps = (n + 31) / 32;
    for (;;) {
        for (int i = 0; i < n; i++) {
            Fiber* f = r.fibers[i];
            if (f->state != RUNNABLE) continue;
            switch_to(r, f);
            if (f->state == DONE) live--;
        }
        if (b.error) return false;
        if (live == 0) return true;
        bool released = false;
        for (int w = 0; w < nwarps; w++) {
            int lanes = std::min(32, n - w * 32), at = 0;
            for (int l = 0; l < lanes; l++) at += r.fibers[w * 32 + l]->state == WAIT_WARP;
            if (at == 0) continue;
            if (at != lanes) {
                fail("warp %d of block (%u,%u,%u): %d of %d lanes reached a warp-synchronous op (divergent shuffle or __syncwarp)",
                     w, b.idx.x, b.idx.y, b.idx.z, at, lanes);
                return false;
            }
            for (int l = 0; l < lanes; l++) r.fibers[w * 32 + l]->state = RUNNABLE;
            released = true;
        }
        if (released) continue;
        int at = 0;
        for (int i = 0; i < n; i++) at += r.fibers[i]->state == WAIT_BLOCK;
        if (at != n) {
            fail("block (%u,%u,%u): __syncthreads reached by %d of %d threads (the others exited: barrier divergence)",
                 b.idx.x, b.idx.y, b.idx.z, at, n);
            return false;
        }
        for (int i = 0; i < n; i++) r.fibers[i]->state = RUNNABLE;
    }
}

}  // namespace

KDS_NO_TSAN void fail(const char* fmt, ...) {
    Block* b = g_block;
    if (b && b->error) return;  // keep the first message
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
    if (b) b->error = 1;
}

KDS_NO_TSAN void syncthreads() {
    Fiber* f = g_cur;
    Runtime& r = *g_rt;
    unsigned gen = f->block_gen++;
#if defined(KDS_EMU_TSAN)
    __tsan_release(&r.block_sync[gen & 1]);
#endif
    f->state = WAIT_BLOCK;
    yield_to_scheduler(f);
#if defined(KDS_EMU_TSAN)
    __tsan_acquire(&r.block_sync[gen & 1]);
#else
    (void)r;
    (void)gen;
#endif
}

KDS_NO_TSAN void syncwarp() {
    Fiber* f = g_cur;
    Runtime& r = *g_rt;
    unsigned gen = f->warp_gen++;
    int w = f->lin >> 5;
#if defined(KDS_EMU_TSAN)
    __tsan_release(&r.warp_sync[w][gen & 1]);
#endif
    f->state = WAIT_WARP;
    yield_to_scheduler(f);
#if defined(KDS_EMU_TSAN)
    __tsan_acquire(&r.warp_sync[w][gen & 1]);
#else
    (void)r;
    (void)gen;
    (void)w;
#endif
}

KDS_NO_TSAN int launch_raw(const unsigned* grid, const unsigned* block, unsigned dyn_smem, void (*body)(void*), void* ctx) {
    Runtime& r = rt();
    g_error[0] = 0;
    const unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || block[0] > 1024 || block[1] > 1024 || block[2] > 64) {
        std::snprintf(g_error, sizeof g_error, "invalid block (%u,%u,%u): at most 1024 threads, z at most 64", block[0],
                      block[1], block[2]);
        return -1;
    }
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[0] > 0x7fffffffu || grid[1] > 65535 || grid[2] > 65535) {
        std::snprintf(g_error, sizeof g_error, "invalid grid (%u,%u,%u): y and z at most 65535", grid[0], grid[1], grid[2]);
        return -1;
    }
    if (dyn_smem > kMaxDynShared) {
        std::snprintf(g_error, sizeof g_error, "%u bytes of dynamic shared memory (at most %zu without opt-in)", dyn_smem,
                      kMaxDynShared);
        return -1;
    }
    const int n = (int)threads;
    ensure_fibers(r, n);
#if defined(KDS_EMU_TSAN)
    if (!r.sched_tsan) r.sched_tsan = __tsan_get_current_fiber();
    __tsan_release(&r.epoch);
#endif
    r.body = body;
    r.ctx = ctx;
    Block& b = r.block;
    b.dim = dim3{block[0], block[1], block[2]};
    b.grid = dim3{grid[0], grid[1], grid[2]};
    b.nthreads = n;
    b.shared = r.shared;
    b.shared_cap = kStaticShared;
    b.dyn_shared = r.dyn;
    b.error = 0;
    Block* saved_block = g_block;
    Fiber* saved_cur = g_cur;
    g_block = &b;
    int rc = 0;
    for (unsigned z = 0; z < grid[2] && rc == 0; z++)
        for (unsigned y = 0; y < grid[1] && rc == 0; y++)
            for (unsigned x = 0; x < grid[0] && rc == 0; x++) {
                b.idx = uint3{x, y, z};
#if defined(KDS_EMU_TSAN)
                __tsan_acquire(&r.epoch);  // the previous block's threads are done with the arena
#endif
                // Shared memory starts as NaN bytes, so a read before any write shows.
                std::memset(b.shared, 0xff, kStaticShared);
                if (dyn_smem) std::memset(b.dyn_shared, 0xff, dyn_smem);
#if defined(KDS_EMU_TSAN)
                __tsan_release(&r.epoch);  // ... and this block's threads see the poisoned arena
#endif
                if (!run_block(r, n)) rc = -1;
            }
#if defined(KDS_EMU_TSAN)
    __tsan_acquire(&r.epoch);
#endif
    g_block = saved_block;
    g_cur = saved_cur;
    return rc;
}

}  // namespace kds_emu

extern "C" __attribute__((visibility("default"))) const char* kds_emu_last_error() { return kds_emu::g_error; }

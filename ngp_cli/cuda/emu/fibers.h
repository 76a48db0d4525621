// Fibers: the threads of a block when the launch has sync_threads=True (context switch, stacks, deadlock detection),
// with __syncthreads and its reductions, __syncwarp and the warp shuffles, votes and __activemask. Part of the CUDA
// emulation that cpu_emu.h assembles for the CPU target (docs/kernels.md): cpu_emu.h includes the parts in order,
// and each relies on the ones before it.
#pragma once

// ---------------------------------------------------------------------------------------------------------------
// Fibers: the threads of a block when the launch has sync_threads=True
// ---------------------------------------------------------------------------------------------------------------
#ifndef NGP_EMU_USE_UCONTEXT
// Hand-written x86-64 SysV context switch: saves the callee-saved registers on the old stack, swaps stacks.
extern "C" void ngp_emu_switch_ctx(void** save_sp, void* to_sp);
extern "C" void ngp_emu_fiber_start();
__asm__(
    ".text\n"
    ".globl ngp_emu_switch_ctx\n"
    ".hidden ngp_emu_switch_ctx\n"
    ".type ngp_emu_switch_ctx,@function\n"
    "ngp_emu_switch_ctx:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size ngp_emu_switch_ctx, .-ngp_emu_switch_ctx\n"
    ".globl ngp_emu_fiber_start\n"
    ".hidden ngp_emu_fiber_start\n"
    ".type ngp_emu_fiber_start,@function\n"
    "ngp_emu_fiber_start:\n"
    "  movq %r12, %rdi\n"
    "  callq *%r13\n"
    "  ud2\n"
    ".size ngp_emu_fiber_start, .-ngp_emu_fiber_start\n");
#endif

namespace ngp_emu {

constexpr size_t kFiberStack = 256 * 1024;
constexpr unsigned kMaxBlock = 1024;
constexpr unsigned kMaxWarps = kMaxBlock / 32;

struct Fiber {
#ifdef NGP_EMU_USE_UCONTEXT
    ucontext_t uc;
#else
    void* sp;
#endif
    uint3 tid;
    unsigned next, prev;  // ring of live fibers
};

struct BlockState {
    unsigned n = 0;
    unsigned cur = 0;
    unsigned alive = 0;
    unsigned bar_count = 0, bar_gen = 0;
    unsigned bar_acc[2] = {0, 0};  // __syncthreads_count/and/or
    unsigned stall = 0;            // consecutive resumptions without progress (deadlock detection)
    const char* abort_msg = nullptr;
    void (*invoke)(void*) = nullptr;
    void* body = nullptr;
#ifdef NGP_EMU_USE_UCONTEXT
    ucontext_t main_uc;
#else
    void* main_sp = nullptr;
#endif
    Fiber fibers[kMaxBlock];
    unsigned warp_alive[kMaxWarps], warp_count[kMaxWarps], warp_gen[kMaxWarps];
    unsigned char lane_phase[kMaxBlock];
    unsigned long long shfl[kMaxWarps][2][32];
    std::vector<void*> stacks;  // allocated once per worker, reused

    ~BlockState() {
        for (void* s : stacks) munmap(s, kFiberStack);
    }
};

inline BlockState& block_state() {
    static thread_local BlockState* bs = nullptr;
    if (!bs) bs = new BlockState();  // kept for the worker's lifetime (large, so not a TLS object itself)
    return *bs;
}

inline void* alloc_stack() {
    void* p = mmap(nullptr, kFiberStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, 4096, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting memory
    return p;
}

inline void switch_to(BlockState& b, unsigned next) {
    unsigned prev = b.cur;
    if (prev == next) return;
    b.cur = next;
    ctx.tid = b.fibers[next].tid;
#ifdef NGP_EMU_USE_UCONTEXT
    swapcontext(&b.fibers[prev].uc, &b.fibers[next].uc);
#else
    ngp_emu_switch_ctx(&b.fibers[prev].sp, b.fibers[next].sp);
#endif
}

// Leave the block's fibers for good and resume the launcher's context.
[[noreturn]] inline void return_to_main(BlockState& b) {
    void* dummy;
    (void)dummy;
#ifdef NGP_EMU_USE_UCONTEXT
    setcontext(&b.main_uc);
#else
    ngp_emu_switch_ctx(&dummy, b.main_sp);
#endif
    __builtin_unreachable();
}

[[noreturn]] inline void abort_block(BlockState& b, const char* msg) {
    b.abort_msg = msg;
    return_to_main(b);
}

// Give the CPU to the next live fiber; counts resumptions without progress to detect a deadlock.
inline void yield_blocked(BlockState& b) {
    if (++b.stall > 2 * b.alive + 4)
        abort_block(b, "deadlock: the threads of a block wait at different barriers (divergent __syncthreads or warp "
                       "intrinsic)");
    switch_to(b, b.fibers[b.cur].next);
}

inline void fiber_exit(BlockState& b) {
    unsigned me = b.cur;
    unsigned w = linear_tid() / 32;
    b.stall = 0;
    b.alive--;
    b.warp_alive[w]--;
    // Exited threads no longer take part in barriers.
    if (b.bar_count > 0 && b.bar_count >= b.alive) {
        b.bar_count = 0;
        b.bar_gen++;
        b.bar_acc[b.bar_gen & 1] = 0;
    }
    if (b.warp_count[w] > 0 && b.warp_count[w] >= b.warp_alive[w]) {
        b.warp_count[w] = 0;
        b.warp_gen[w]++;
    }
    if (b.alive == 0) return_to_main(b);
    Fiber& f = b.fibers[me];
    b.fibers[f.prev].next = f.next;
    b.fibers[f.next].prev = f.prev;
    unsigned next = f.next;
    b.cur = next;
    ctx.tid = b.fibers[next].tid;
    void* dummy;
    (void)dummy;
#ifdef NGP_EMU_USE_UCONTEXT
    setcontext(&b.fibers[next].uc);
#else
    ngp_emu_switch_ctx(&dummy, b.fibers[next].sp);
#endif
    __builtin_unreachable();
}

extern "C" inline void ngp_emu_fiber_main(void*) {
    BlockState& b = *ctx.block;
    b.invoke(b.body);
    fiber_exit(b);
}

// Barrier over the live threads of the block; returns the barrier generation passed.
inline unsigned block_barrier(BlockState& b) {
    unsigned gen = b.bar_gen;
    b.stall = 0;
    if (++b.bar_count >= b.alive) {
        b.bar_count = 0;
        b.bar_gen++;
        b.bar_acc[b.bar_gen & 1] = 0;
        return gen;
    }
    while (b.bar_gen == gen) yield_blocked(b);
    return gen;
}

inline void warp_barrier(BlockState& b, unsigned w) {
    unsigned gen = b.warp_gen[w];
    b.stall = 0;
    if (++b.warp_count[w] >= b.warp_alive[w]) {
        b.warp_count[w] = 0;
        b.warp_gen[w]++;
        return;
    }
    while (b.warp_gen[w] == gen) yield_blocked(b);
}

[[noreturn]] inline void fail_no_fibers(const char* what) {
    snprintf(ctx.errbuf, sizeof(ctx.errbuf),
             "%s reached in a block of %u threads launched without sync_threads=True", what, ctx.nthreads);
    fail(ctx.errbuf);
}

[[noreturn]] inline void fail(const char* msg) {
    if (ctx.in_fiber) abort_block(*ctx.block, msg);
    ctx.err = msg;
    longjmp(*ctx.jb, 1);
}

// Whole-warp exchange: every lane publishes 8 bytes, waits for its warp, and gets the warp's slots. Two slot sets
// alternate so that a fast lane's next exchange cannot overwrite a slot a slow lane has still to read.
inline const unsigned long long* warp_exchange(unsigned long long bits, unsigned& lane, unsigned& nlanes) {
    BlockState& b = *ctx.block;
    unsigned t = linear_tid();
    unsigned w = t / 32;
    lane = t % 32;
    nlanes = std::min(32u, ctx.nthreads - 32 * w);
    unsigned ph = b.lane_phase[t];
    b.lane_phase[t] = ph ^ 1;
    b.shfl[w][ph][lane] = bits;
    warp_barrier(b, w);
    return b.shfl[w][ph];
}

template <typename T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of an unsupported type");
    unsigned long long r = 0;
    memcpy(&r, &v, sizeof(T));
    return r;
}
template <typename T>
inline T from_bits(unsigned long long r) {
    T v;
    memcpy(&v, &r, sizeof(T));
    return v;
}

// src(lane) gives the source lane, or -1 for "keep the own value".
template <typename T, typename Src>
inline T shuffle(T var, Src src) {
    if (ctx.nthreads <= 1) {
        int s = src(0u, 1u);
        (void)s;
        return var;
    }
    if (!ctx.in_fiber) fail_no_fibers("a warp shuffle");
    unsigned lane, nlanes;
    const unsigned long long* slots = warp_exchange(to_bits(var), lane, nlanes);
    int s = src(lane, nlanes);
    if (s < 0 || (unsigned)s >= nlanes) return var;
    return from_bits<T>(slots[s]);
}

}  // namespace ngp_emu

inline void __syncthreads() {
    if (ngp_emu::ctx.nthreads <= 1) return;
    if (!ngp_emu::ctx.in_fiber) ngp_emu::fail_no_fibers("__syncthreads()");
    ngp_emu::block_barrier(*ngp_emu::ctx.block);
}
namespace ngp_emu {
inline unsigned syncthreads_reduce(unsigned v, int op) {  // op: 0 sum, 1 and, 2 or
    if (ctx.nthreads <= 1) return v;
    if (!ctx.in_fiber) fail_no_fibers("__syncthreads_count/and/or()");
    BlockState& b = *ctx.block;
    unsigned slot = b.bar_gen & 1;
    if (b.bar_count == 0) b.bar_acc[slot] = op == 1 ? 1u : 0u;
    if (op == 0)
        b.bar_acc[slot] += v;
    else if (op == 1)
        b.bar_acc[slot] &= (v != 0);
    else
        b.bar_acc[slot] |= (v != 0);
    unsigned gen = block_barrier(b);
    return b.bar_acc[gen & 1];
}
}  // namespace ngp_emu
inline int __syncthreads_count(int pred) { return (int)ngp_emu::syncthreads_reduce(pred != 0, 0); }
inline int __syncthreads_and(int pred) { return (int)ngp_emu::syncthreads_reduce(pred != 0, 1); }
inline int __syncthreads_or(int pred) { return (int)ngp_emu::syncthreads_reduce(pred != 0, 2); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    if (ngp_emu::ctx.nthreads <= 1) return;
    if (!ngp_emu::ctx.in_fiber) ngp_emu::fail_no_fibers("__syncwarp()");
    ngp_emu::warp_barrier(*ngp_emu::ctx.block, ngp_emu::linear_tid() / 32);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
    (void)mask;
    return ngp_emu::shuffle(var, [=](unsigned lane, unsigned) {
        return (int)((lane / width) * width + ((unsigned)srcLane % (unsigned)width));
    });
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
    (void)mask;
    return ngp_emu::shuffle(var, [=](unsigned lane, unsigned) {
        unsigned s = lane ^ (unsigned)laneMask;
        return s / width == lane / width ? (int)s : -1;
    });
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    (void)mask;
    return ngp_emu::shuffle(var, [=](unsigned lane, unsigned) {
        return (lane % width) + delta < (unsigned)width ? (int)(lane + delta) : -1;
    });
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    (void)mask;
    return ngp_emu::shuffle(var, [=](unsigned lane, unsigned) {
        return (lane % width) >= delta ? (int)(lane - delta) : -1;
    });
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    using namespace ngp_emu;
    if (ctx.nthreads <= 1) return pred ? (mask & 1u) : 0u;
    if (!ctx.in_fiber) fail_no_fibers("__ballot_sync()");
    unsigned lane, nlanes;
    const unsigned long long* slots = warp_exchange(pred ? 1ull : 0ull, lane, nlanes);
    unsigned r = 0;
    for (unsigned i = 0; i < nlanes; ++i) r |= (slots[i] ? 1u : 0u) << i;
    return r & mask;
}
inline int __all_sync(unsigned mask, int pred) {
    unsigned b = __ballot_sync(0xffffffffu, pred);
    using namespace ngp_emu;
    unsigned nl = ctx.nthreads <= 1 ? 1u : std::min(32u, ctx.nthreads - 32 * (linear_tid() / 32));
    unsigned live = (nl >= 32 ? 0xffffffffu : ((1u << nl) - 1)) & mask;
    return (b & live) == live;
}
inline int __any_sync(unsigned mask, int pred) { return (__ballot_sync(mask, pred) & mask) != 0; }
inline unsigned __activemask() {
    using namespace ngp_emu;
    unsigned nl = ctx.nthreads <= 1 ? 1u : std::min(32u, ctx.nthreads - 32 * (linear_tid() / 32));
    return nl >= 32 ? 0xffffffffu : ((1u << nl) - 1);
}

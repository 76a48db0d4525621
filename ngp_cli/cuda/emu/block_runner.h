// The block runner: launch_kernel<&kernel> unpacks a LaunchDesc once and runs the blocks on the pool's workers, each
// block's threads in a plain loop or as fibers, and NGP_EMU_EXPORT_KERNEL exports it per kernel. Part of the CUDA
// emulation that cpu_emu.h assembles for the CPU target (docs/kernels.md): cpu_emu.h includes the parts in order,
// and each relies on the ones before it.
#pragma once

// ---------------------------------------------------------------------------------------------------------------
// Block runner
// ---------------------------------------------------------------------------------------------------------------
namespace ngp_emu {

template <typename F>
struct Job {
    const LaunchDesc* d;
    F* body;
    std::atomic<int> failed{0};
    char msg[512];
};

inline unsigned char* dyn_smem_buffer(size_t bytes) {
    static thread_local std::vector<unsigned char> buf;
    if (buf.size() < bytes + 64) buf.resize(bytes + 64);
    uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
    return reinterpret_cast<unsigned char*>((p + 63) & ~uintptr_t(63));
}

template <typename F>
inline void invoke_body(void* p) {
    (*static_cast<F*>(p))();
}

// Runs one block with its threads as fibers (caller has set ctx.bid etc.).
template <typename F>
inline void run_block_fibers(F& body) {
    BlockState& b = block_state();
    const unsigned n = ctx.nthreads;
    while (b.stacks.size() < n) {
        void* s = alloc_stack();
        if (!s) fail("cannot allocate fiber stacks (mmap failed)");
        b.stacks.push_back(s);
    }
    b.n = n;
    b.alive = n;
    b.bar_count = 0;
    b.bar_gen = 0;
    b.bar_acc[0] = b.bar_acc[1] = 0;
    b.stall = 0;
    b.abort_msg = nullptr;
    b.invoke = &invoke_body<F>;
    b.body = &body;
    const unsigned nw = (n + 31) / 32;
    for (unsigned w = 0; w < nw; ++w) {
        b.warp_alive[w] = std::min(32u, n - 32 * w);
        b.warp_count[w] = 0;
        b.warp_gen[w] = 0;
    }
    const unsigned bx = ctx.bdim.x, by = ctx.bdim.y;
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = b.fibers[t];
        f.tid = uint3{t % bx, (t / bx) % by, t / (bx * by)};
        f.next = t + 1 == n ? 0 : t + 1;
        f.prev = t == 0 ? n - 1 : t - 1;
        b.lane_phase[t] = 0;
        // Stagger the stack tops (the stacks are 256 KiB aligned): identical low address bits would make every
        // fiber's hot stack lines compete for the same cache sets.
        char* top = static_cast<char*>(b.stacks[t]) + kFiberStack - ((t * 1088u) % 65536u);
#ifdef NGP_EMU_USE_UCONTEXT
        getcontext(&f.uc);
        f.uc.uc_stack.ss_sp = b.stacks[t];
        f.uc.uc_stack.ss_size = kFiberStack;
        f.uc.uc_link = nullptr;
        makecontext(&f.uc, (void (*)())ngp_emu_fiber_main, 1, nullptr);
        (void)top;
#else
        void** sp = reinterpret_cast<void**>(top - 72);
        sp[0] = nullptr;                                              // r15
        sp[1] = nullptr;                                              // r14
        sp[2] = reinterpret_cast<void*>(&ngp_emu_fiber_main);        // r13: function
        sp[3] = nullptr;                                              // r12: argument
        sp[4] = nullptr;                                              // rbx
        sp[5] = nullptr;                                              // rbp
        sp[6] = reinterpret_cast<void*>(&ngp_emu_fiber_start);       // return address
        f.sp = sp;
#endif
    }
    ctx.block = &b;
    ctx.in_fiber = 1;
    b.cur = 0;
    ctx.tid = b.fibers[0].tid;
#ifdef NGP_EMU_USE_UCONTEXT
    swapcontext(&b.main_uc, &b.fibers[0].uc);
#else
    ngp_emu_switch_ctx(&b.main_sp, b.fibers[0].sp);
#endif
    ctx.in_fiber = 0;
    if (b.abort_msg) {
        ctx.err = b.abort_msg;
        longjmp(*ctx.jb, 1);
    }
}

template <typename F>
inline void run_block(F& body, bool fibers) {
    if (fibers && ctx.nthreads > 1) {
        run_block_fibers(body);
        return;
    }
    const unsigned bx = ctx.bdim.x, by = ctx.bdim.y, bz = ctx.bdim.z;
    for (unsigned z = 0; z < bz; ++z)
        for (unsigned y = 0; y < by; ++y)
            for (unsigned x = 0; x < bx; ++x) {
                ctx.tid.x = x;
                ctx.tid.y = y;
                ctx.tid.z = z;
                body();
            }
}

// The blocks of items [begin, end): separate from run_items so that setjmp does not pessimise the thread loops.
template <typename F>
__attribute__((noinline)) void run_range(Job<F>& job, long long begin, long long end) {
    const LaunchDesc* d = job.d;
    F& body = *job.body;
    const bool fibers = (d->flags & FLAG_FIBERS) != 0;
    const unsigned gx = d->grid[0], gy = d->grid[1], gz = d->grid[2];
    const size_t shmem = d->shared_bytes;
    Ctx& c = ctx;
    if (d->flags & FLAG_EXCLUSIVE_Y) {
        // An item is a whole blockIdx.y row (all x and z): no other worker touches that row's outputs.
        for (long long y = begin; y < end; ++y)
            for (unsigned z = 0; z < gz; ++z)
                for (unsigned x = 0; x < gx; ++x) {
                    c.bid = uint3{x, (unsigned)y, z};
                    if (shmem) memset(c.dyn_smem, 0xFF, shmem);
                    run_block(body, fibers);
                }
    } else {
        unsigned x = (unsigned)(begin % gx);
        long long r = begin / gx;
        unsigned y = (unsigned)(r % gy), z = (unsigned)(r / gy);
        for (long long i = begin; i < end; ++i) {
            c.bid = uint3{x, y, z};
            if (shmem) memset(c.dyn_smem, 0xFF, shmem);
            run_block(body, fibers);
            if (++x == gx) {
                x = 0;
                if (++y == gy) {
                    y = 0;
                    ++z;
                }
            }
        }
    }
}

template <typename F>
inline void run_items(void* arg, int worker, long long begin, long long end) {
    (void)worker;
    Job<F>& job = *static_cast<Job<F>*>(arg);
    if (job.failed.load(std::memory_order_relaxed)) return;
    const LaunchDesc* d = job.d;
    const size_t shmem = d->shared_bytes;
    Ctx& c = ctx;
    c.bdim = dim3(d->block[0], d->block[1], d->block[2]);
    c.gdim = dim3(d->grid[0], d->grid[1], d->grid[2]);
    c.nthreads = d->block[0] * d->block[1] * d->block[2];
    c.exclusive = (d->flags & FLAG_EXCLUSIVE_Y) ? 1 : 0;
    c.in_fiber = 0;
    c.block = nullptr;
    c.err = nullptr;
    c.dyn_smem = shmem ? dyn_smem_buffer(shmem) : nullptr;
    jmp_buf jb;
    c.jb = &jb;
    if (setjmp(jb)) {
        Ctx& e = ctx;
        if (!job.failed.exchange(1)) {
            snprintf(job.msg, sizeof(job.msg), "%s (block %u,%u,%u thread %u,%u,%u)", e.err ? e.err : "error",
                     e.bid.x, e.bid.y, e.bid.z, e.tid.x, e.tid.y, e.tid.z);
        }
        e.in_fiber = 0;
        e.block = nullptr;
        e.exclusive = 0;
        return;
    }
    run_range(job, begin, end);
    ctx.exclusive = 0;
}

template <typename T>
struct fn_args;
template <typename... A>
struct fn_args<void (*)(A...)> {
    using type = std::tuple<typename std::remove_cv<typename std::remove_reference<A>::type>::type...>;
};

template <typename Tuple, size_t... I>
inline Tuple unpack_params(void** params, std::index_sequence<I...>) {
    return Tuple{*static_cast<typename std::tuple_element<I, Tuple>::type*>(params[I])...};
}

// Entry point of one kernel: runtime.py calls ngp_launch_<name>(const LaunchDesc*), 0 = success, else the error
// message is in d->err.
template <auto Kernel>
inline int launch_kernel(const LaunchDesc* d) {
    using Args = typename fn_args<decltype(Kernel)>::type;
    Args args = unpack_params<Args>(d->params, std::make_index_sequence<std::tuple_size<Args>::value>{});
    auto body = [&args]() { std::apply(Kernel, args); };
    using F = decltype(body);
    Job<F> job;
    job.d = d;
    job.body = &body;
    job.msg[0] = 0;
    const long long gx = d->grid[0], gy = d->grid[1], gz = d->grid[2];
    long long nitems, chunk;
    if (d->flags & FLAG_EXCLUSIVE_Y) {
        nitems = gy;
        chunk = 1;
    } else {
        nitems = gx * gy * gz;
        chunk = std::max(1LL, nitems / (std::max(1LL, d->nthreads) * 16));
    }
    if (nitems <= 0) return 0;
    if (d->nthreads <= 1 || nitems <= chunk || !d->pool_run) {
        run_items<F>(&job, 0, 0, nitems);
    } else {
        int rc = d->pool_run((int)d->nthreads, nitems, chunk, &run_items<F>, &job);
        if (rc != 0) {
            snprintf(d->err, d->err_len, "the CPU worker pool failed (code %d)", rc);
            return 2;
        }
    }
    if (job.failed.load()) {
        snprintf(d->err, d->err_len, "%s", job.msg);
        return 1;
    }
    return 0;
}

}  // namespace ngp_emu

#define NGP_EMU_EXPORT_KERNEL(name)                                                                       \
    extern "C" __attribute__((visibility("default"))) int ngp_launch_##name(const ngp_emu::LaunchDesc* d) { \
        return ngp_emu::launch_kernel<&name>(d);                                                          \
    }

// Worker pool of the CPU kernel target (ngp_cli/cuda/runtime.py compiles this once into its own shared library).
//
// ngp_pool_run(nthreads, nitems, chunk, fn, arg) calls fn(arg, worker, begin, end) over [0, nitems) in chunks of
// `chunk` items, handed out dynamically to `nthreads` workers: the calling thread is worker 0, the others are
// persistent std::threads created on first use (no OpenMP: torch ships its own libgomp). The kernel modules hold the
// block runners (cpu_emu.h); they get this function's address through their LaunchDesc. One launch runs at a time;
// concurrent callers are serialised; a forked child gets a fresh pool. Returns 0, or nonzero when a worker thread
// could not be started.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <vector>

namespace {

typedef void (*item_fn)(void* arg, int worker, long long begin, long long end);

struct Pool {
    std::mutex launch_mutex;  // one launch at a time
    std::mutex m;
    std::condition_variable work_cv, done_cv;
    std::vector<std::thread> threads;
    unsigned long long generation = 0;
    int participants = 0;  // worker threads (besides the caller) taking part in the current launch
    int finished = 0;
    item_fn fn = nullptr;
    void* arg = nullptr;
    long long nitems = 0, chunk = 1;
    std::atomic<long long> next{0};

    void work(int worker) {
        for (;;) {
            long long b = next.fetch_add(chunk, std::memory_order_relaxed);
            if (b >= nitems) break;
            fn(arg, worker, b, std::min(nitems, b + chunk));
        }
    }

    void thread_main(int worker) {
        unsigned long long seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lk(m);
                work_cv.wait(lk, [&] { return generation != seen && worker <= participants; });
                seen = generation;
            }
            work(worker);
            {
                std::lock_guard<std::mutex> lk(m);
                if (++finished == participants) done_cv.notify_one();
            }
        }
    }

    int run(int nthreads, long long n, long long c, item_fn f, void* a) {
        std::lock_guard<std::mutex> launch_lock(launch_mutex);
        const int extra = std::max(0, nthreads - 1);
        try {
            while ((int)threads.size() < extra) {
                const int id = (int)threads.size() + 1;
                threads.emplace_back([this, id] { thread_main(id); });
                threads.back().detach();  // lives as long as the process (the library is never unloaded)
            }
        } catch (...) {
            return 1;
        }
        {
            std::lock_guard<std::mutex> lk(m);
            fn = f;
            arg = a;
            nitems = n;
            chunk = std::max(1LL, c);
            next.store(0, std::memory_order_relaxed);
            participants = extra;
            finished = 0;
            ++generation;
        }
        work_cv.notify_all();
        work(0);
        std::unique_lock<std::mutex> lk(m);
        done_cv.wait(lk, [&] { return finished == participants; });
        return 0;
    }
};

Pool* g_pool = nullptr;
std::once_flag g_once;

// A forked child has none of the parent's worker threads: it starts over with a fresh pool (the old one is leaked,
// its mutexes may be in any state).
void after_fork_in_child() { g_pool = new Pool(); }

Pool& pool() {
    std::call_once(g_once, [] {
        g_pool = new Pool();  // never destroyed: detached workers may still wait on it at exit
        pthread_atfork(nullptr, nullptr, after_fork_in_child);
    });
    return *g_pool;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int ngp_pool_run(int nthreads, long long nitems, long long chunk,
                                                                    item_fn fn, void* arg) {
    if (nitems <= 0) return 0;
    if (nthreads <= 1) {
        fn(arg, 0, 0, nitems);
        return 0;
    }
    return pool().run(nthreads, nitems, chunk, fn, arg);
}

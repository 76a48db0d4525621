// Worker pool of the CPU kernel target (ngp_cli/cuda/runtime.py compiles this once into its own shared library).
//
// ngp_pool_run(nthreads, nitems, chunk, fn, arg) calls fn(arg, worker, begin, end) over [0, nitems) in chunks of
// `chunk` items, handed out dynamically to `nthreads` workers; the calling thread is worker 0. The kernel modules hold
// the block runners (cpu_emu.h); they get this function's address through their LaunchDesc. Returns 0, or nonzero
// when a worker thread could not be started.
//
// Two builds (runtime.py tries the first, falls back to the second):
// - with -fopenmp (_OPENMP): the workers are an OpenMP team. Loaded after torch, the library binds to the libgomp
//   torch already loaded (same soname), so kernels run on torch's own intra-op threads. A second pool would fight
//   them for the cores: after every torch op libgomp's idle threads spin for milliseconds (GOMP_SPINCOUNT), and on
//   the 2-core CI machine that took 2-4 ms from every hash-grid forward+backward;
// - without: persistent std::threads created on first use. One launch runs at a time; concurrent callers are
//   serialised; a forked child gets a fresh pool.
// A forked child of the process that loaded the library uses the std::thread pool in both builds: libgomp's team
// threads do not survive fork(), and a parallel region in the child would wait for them forever.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <pthread.h>
#include <unistd.h>
#include <thread>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

typedef void (*item_fn)(void* arg, int worker, long long begin, long long end);

// One worker's share of a launch: chunks of `chunk` items taken from `next` until none are left.
void take_chunks(std::atomic<long long>& next, long long nitems, long long chunk, item_fn fn, void* arg, int worker) {
    for (;;) {
        const long long b = next.fetch_add(chunk, std::memory_order_relaxed);
        if (b >= nitems) break;
        fn(arg, worker, b, std::min(nitems, b + chunk));
    }
}

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

    void work(int worker) { take_chunks(next, nitems, chunk, fn, arg, worker); }

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
const pid_t g_load_pid = getpid();  // the process that loaded the library (and whose OpenMP team exists)
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
#ifdef _OPENMP
    if (getpid() != g_load_pid) return pool().run(nthreads, nitems, chunk, fn, arg);
    std::atomic<long long> next{0};
#pragma omp parallel num_threads(nthreads)
    take_chunks(next, nitems, std::max(1LL, chunk), fn, arg, omp_get_thread_num());
    return 0;
#else
    return pool().run(nthreads, nitems, chunk, fn, arg);
#endif
}

// 1 when this build runs launches on an OpenMP team (torch's, once torch is loaded), 0 for the std::thread pool.
extern "C" __attribute__((visibility("default"))) int ngp_pool_openmp() {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

// The launch context: LaunchDesc (the launch as runtime.py passes it), the per-OS-thread Ctx that the block runner
// and the fibers fill, and threadIdx/blockIdx/blockDim/gridDim on top of it. Part of the CUDA emulation that
// cpu_emu.h assembles for the CPU target (docs/kernels.md): cpu_emu.h includes the parts in order, and each relies
// on the ones before it.
#pragma once

// ---------------------------------------------------------------------------------------------------------------
// Launch context (per OS thread)
// ---------------------------------------------------------------------------------------------------------------
namespace ngp_emu {

// Must match _LaunchDesc in runtime.py.
typedef void (*item_fn)(void* arg, int worker, long long begin, long long end);
typedef int (*pool_run_fn)(int nthreads, long long nitems, long long chunk, item_fn fn, void* arg);
struct LaunchDesc {
    pool_run_fn pool_run;
    long long nthreads;
    unsigned int grid[3];
    unsigned int block[3];
    unsigned long long shared_bytes;
    void** params;
    long long flags;  // FLAG_FIBERS | FLAG_EXCLUSIVE_Y
    char* err;
    long long err_len;
};
enum : long long { FLAG_FIBERS = 1, FLAG_EXCLUSIVE_Y = 2 };

struct BlockState;

struct Ctx {
    uint3 tid;
    uint3 bid;
    dim3 bdim;
    dim3 gdim;
    int exclusive;          // atomics are plain read-modify-writes (each worker owns whole blockIdx.y rows)
    int in_fiber;           // running on a fiber stack of `block`
    unsigned int nthreads;  // threads in a block
    unsigned char* dyn_smem;
    BlockState* block;  // fiber state of the current block, or nullptr in plain mode
    jmp_buf* jb;        // where fail() returns to (on the worker's own stack)
    const char* err;
    char errbuf[256];
};
// Local-dynamic TLS (the module defines it): the address is computed once per function, hoisted out of the
// per-thread loop of the block runner.
static thread_local Ctx ctx{};  // constant-initialised: no TLS guard on access

[[noreturn]] inline void fail(const char* msg);

inline unsigned int linear_tid() { return ctx.tid.x + ctx.bdim.x * (ctx.tid.y + ctx.bdim.y * ctx.tid.z); }

}  // namespace ngp_emu

#define threadIdx (::ngp_emu::ctx.tid)
#define blockIdx (::ngp_emu::ctx.bid)
#define blockDim (::ngp_emu::ctx.bdim)
#define gridDim (::ngp_emu::ctx.gdim)

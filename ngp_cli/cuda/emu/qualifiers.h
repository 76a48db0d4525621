// Execution-space and other CUDA qualifiers as host attributes, static shared memory as thread_local storage, and
// NGP_DYNAMIC_SHARED (dynamic shared memory, a per-worker buffer poisoned at every block start). Part of the CUDA
// emulation that cpu_emu.h assembles for the CPU target (docs/kernels.md): cpu_emu.h includes the parts in order,
// and each relies on the ones before it.
#pragma once

// ---------------------------------------------------------------------------------------------------------------
// Qualifiers
// ---------------------------------------------------------------------------------------------------------------
// Kernels are always inlined into their block runner (the per-thread loop), so a thread costs a few instructions.
#define __global__ inline __attribute__((always_inline))
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#ifndef __restrict__
#define __restrict__ __restrict
#endif
// Static shared memory: one instance per OS thread; the threads (fibers) of a block all run on one OS thread and a
// worker runs its blocks one after another, so this is per-block storage. Not poisoned (uninitialised on the GPU).
#define __shared__ static thread_local
// Dynamic shared memory (`extern __shared__` cannot be emulated with a qualifier): poisoned with 0xFF bytes (NaN)
// at every block start.
#define NGP_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::ngp_emu::ctx.dyn_smem)

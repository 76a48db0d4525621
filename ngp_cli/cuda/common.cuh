// Included first by every kernel source in ngp_cli/cuda (docs/kernels.md, "Writing a kernel for both targets").
//
// GPU (NVRTC through CuPy, or nvcc for the compile checks): pulls in cuda_fp16.h and mma.h and defines
// NGP_DYNAMIC_SHARED. CPU (NGP_CPU, the host compiler with cpu_emu.h force-included): cpu_emu.h already provides
// every CUDA name, so nothing else is included here.
//
// Only small helpers shared by all kernels belong here; kernel-specific helpers live in their own .cu files.
#pragma once

#ifndef NGP_CPU
#include <cuda_fp16.h>
#include <mma.h>
// The block's dynamic shared memory (the launch's shared_mem bytes) as `type name[]`. On the CPU it is a pointer
// to a per-worker buffer, filled with 0xFF bytes (NaN) at every block start.
#define NGP_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

// Number of blocks of `block` threads that cover `n` items.
__host__ __device__ __forceinline__ unsigned int ngp_div_round_up(unsigned int n, unsigned int block) {
    return (n + block - 1) / block;
}

// +infinity as a float, for every target. NVRTC compiles without the host's math headers, so INFINITY, HUGE_VALF and
// __builtin_huge_valf are all undefined there: the GPU build writes the IEEE bit pattern (what CUDART_INF_F does), the
// CPU build uses the compiler builtin.
__device__ __forceinline__ float ngp_inf_f() {
#ifdef NGP_CPU
    return __builtin_huge_valf();
#else
    return __int_as_float(0x7f800000);
#endif
}

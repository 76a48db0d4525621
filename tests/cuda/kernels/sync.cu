// Toy kernels for tests/cuda/test_runtime.py: static and dynamic shared memory, __syncthreads, warp intrinsics.
#include "common.cuh"

#define RED_BLOCK 256

// Per-block sum of x[] with a static __shared__ tree reduction (needs __syncthreads: launch with sync_threads).
extern "C" __global__ void block_sum(const float* __restrict__ x, float* __restrict__ sums, unsigned int n) {
    __shared__ float buf[RED_BLOCK];
    const unsigned int t = threadIdx.x;
    const unsigned int i = blockIdx.x * blockDim.x + t;
    buf[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
        __syncthreads();
    }
    if (t == 0) sums[blockIdx.x] = buf[0];
}

// Reads dynamic shared memory before writing it (sees the poison), then uses it as a block-wide exchange buffer:
// out[i] = x[block reversed i].
extern "C" __global__ void dyn_shared(const float* __restrict__ x, float* __restrict__ first_read,
                                      float* __restrict__ reversed) {
    NGP_DYNAMIC_SHARED(float, smem);
    const unsigned int t = threadIdx.x;
    const unsigned int i = blockIdx.x * blockDim.x + t;
    first_read[i] = smem[t];
    __syncthreads();
    smem[t] = x[i];
    __syncthreads();
    reversed[i] = smem[blockDim.x - 1 - t];
}

// __syncthreads in a kernel launched without sync_threads: the CPU runtime reports an error.
extern "C" __global__ void needs_sync(float* __restrict__ out) {
    __shared__ float s[RED_BLOCK];
    const unsigned int t = threadIdx.x;
    s[t] = (float)t;
    __syncthreads();
    out[t] = s[(t + 1) % blockDim.x];
}

// Warp intrinsics, one row of results per thread:
//   [0] xor-butterfly sum of the lane values over the warp, [1] __shfl_down_sync(v, 1), [2] __shfl_up_sync(v, 2),
//   [3] __shfl_sync(v, lane 3), [4] popcount of __ballot_sync(lane is odd), [5] __ballot_sync(lane < 5) as float,
//   [6] xor-butterfly max of a double.
extern "C" __global__ void warp_ops(const float* __restrict__ x, float* __restrict__ out) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int lane = threadIdx.x % 32;
    const float v = x[i];
    float s = v;
    for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
    out[i * 7 + 0] = s;
    out[i * 7 + 1] = __shfl_down_sync(0xffffffffu, v, 1);
    out[i * 7 + 2] = __shfl_up_sync(0xffffffffu, v, 2);
    out[i * 7 + 3] = __shfl_sync(0xffffffffu, v, 3);
    out[i * 7 + 4] = (float)__popc(__ballot_sync(0xffffffffu, lane % 2 == 1));
    out[i * 7 + 5] = (float)__ballot_sync(0xffffffffu, lane < 5);
    double d = (double)v;
    for (int m = 16; m > 0; m >>= 1) d = fmax(d, __shfl_xor_sync(0xffffffffu, d, m));
    __syncwarp();
    out[i * 7 + 6] = (float)d;
}

// Threads that exit early do not block a later __syncthreads of the others.
extern "C" __global__ void early_exit(float* __restrict__ out, unsigned int live) {
    __shared__ float v[RED_BLOCK];
    const unsigned int t = threadIdx.x;
    if (t >= live) return;
    v[t] = (float)t;
    __syncthreads();
    out[blockIdx.x * blockDim.x + t] = v[live - 1 - t];
}

// Threads wait at different barriers: a divergent __syncthreads (undefined on the GPU) is reported as a deadlock
// on the CPU instead of hanging.
extern "C" __global__ void divergent(float* __restrict__ out) {
    if (threadIdx.x == 0) {
        __syncthreads();
    } else {
        __syncwarp();
        __syncwarp();
    }
    out[threadIdx.x] = 1.0f;
}

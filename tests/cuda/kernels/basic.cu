// Toy kernels for tests/cuda/test_runtime.py: indexing, atomics, __half conversions, math, empty launches.
#include "common.cuh"

// Every thread of a 3-D grid of 3-D blocks writes its global linear index into out[] and bumps count[] once.
extern "C" __global__ void index3d(int* __restrict__ out, int* __restrict__ count, unsigned int nx, unsigned int ny,
                                   unsigned int nz) {
    const unsigned int x = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int y = blockIdx.y * blockDim.y + threadIdx.y;
    const unsigned int z = blockIdx.z * blockDim.z + threadIdx.z;
    if (x >= nx || y >= ny || z >= nz) return;
    const unsigned int i = (z * ny + y) * nx + x;
    out[i] = (int)i;
    atomicAdd(&count[i], 1);
}

extern "C" __global__ void empty_kernel(unsigned int n) {}

extern "C" __global__ void saxpy(float* __restrict__ y, const float* __restrict__ x, float a, unsigned int n) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

// Many threads add 1 to a few counters of each type (exact totals with integer-valued floats).
extern "C" __global__ void atomic_counts(float* __restrict__ f, double* __restrict__ d, __half2* __restrict__ h2,
                                         __half* __restrict__ h, int* __restrict__ iv, unsigned int* __restrict__ uv,
                                         unsigned int n, unsigned int slots) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned int s = i % slots;
    atomicAdd(&f[s], 1.0f);
    atomicAdd(&d[s], 1.0);
    atomicAdd(&h2[s], __floats2half2_rn(1.0f, 2.0f));
    atomicAdd(&h[s], __float2half(1.0f));
    atomicAdd(&iv[s], 1);
    atomicAdd(&uv[s], 2u);
}

// exclusive_y: blockIdx.y selects the output row; rows are owned by one worker, so atomics are plain on the CPU.
extern "C" __global__ void atomic_rows(float* __restrict__ out, unsigned int n, unsigned int slots) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&out[blockIdx.y * slots + i % slots], 1.0f);
}

// float -> __half -> float and __half2 packing.
extern "C" __global__ void half_roundtrip(const float* __restrict__ x, __half* __restrict__ h, float* __restrict__ back,
                                          __half2* __restrict__ pairs, float* __restrict__ pair_back, unsigned int n) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __half v = __float2half_rn(x[i]);
    h[i] = v;
    back[i] = __half2float(v);
    if (i % 2 == 0 && i + 1 < n) {
        __half2 p = __floats2half2_rn(x[i], x[i + 1]);
        p = __hadd2(p, __float2half2_rn(-0.0f));  // x + (-0) == x, signed zeros included
        pairs[i / 2] = p;
        const float2 f = __half22float2(p);
        pair_back[i] = f.x;
        pair_back[i + 1] = __high2float(p);
    }
}

// A sample of CUDA math functions.
extern "C" __global__ void math_funcs(const float* __restrict__ x, float* __restrict__ out, unsigned int n) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    out[i * 8 + 0] = expf(v);
    out[i * 8 + 1] = sqrtf(fabsf(v));
    out[i * 8 + 2] = rsqrtf(fabsf(v) + 1.0f);
    out[i * 8 + 3] = fminf(v, 0.5f) + fmaxf(v, -0.5f);
    out[i * 8 + 4] = floorf(v * 3.0f);
    out[i * 8 + 5] = tanhf(v);
    out[i * 8 + 6] = __saturatef(v);
    out[i * 8 + 7] = (float)min((int)(v * 10.0f), 3) + (float)max(2u, 1u);
}

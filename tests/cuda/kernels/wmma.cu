// Toy kernel for tests/cuda/test_runtime.py: one m16n16k16 tensor-core tile per block, fp16 inputs, fp32 results.
#include "common.cuh"

using namespace nvcuda;

// c[b] = a[b] (16x16 row-major) @ b[b] (16x16, column-major when B_COL_MAJOR) + c_in[b]; also an fp16 copy of the
// result through a __half accumulator. Launch with blockDim.x == 32 (one warp) or 1 (CPU: whole-tile fragments).
extern "C" __global__ void mma_tile(const __half* __restrict__ a, const __half* __restrict__ b,
                                   const float* __restrict__ c_in, float* __restrict__ c, __half* __restrict__ c_half) {
    const unsigned int off = blockIdx.x * 256u;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
#if B_COL_MAJOR
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
#else
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
#endif
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fragment<wmma::accumulator, 16, 16, 16, __half> acc_h;
    wmma::load_matrix_sync(fa, a + off, 16);
    wmma::load_matrix_sync(fb, b + off, 16);
    wmma::load_matrix_sync(acc, c_in + off, 16, wmma::mem_row_major);
    wmma::mma_sync(acc, fa, fb, acc);
    // Element-wise work on the fragment (valid on both targets whatever the element mapping).
    for (int i = 0; i < acc.num_elements; ++i) acc.x[i] = acc.x[i] * 2.0f;
    wmma::store_matrix_sync(c + off, acc, 16, wmma::mem_row_major);
    wmma::fill_fragment(acc_h, __float2half(0.0f));
    wmma::mma_sync(acc_h, fa, fb, acc_h);
    wmma::store_matrix_sync(c_half + off, acc_h, 16, wmma::mem_col_major);
}

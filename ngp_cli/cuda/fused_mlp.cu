// Fully fused MLP (tiny-cuda-nn src/fully_fused_mlp.cu; Müller et al. 2022, paper §4): a bias-free stack of
// equally wide matrices evaluated for a block of 16 * N_ITERS batch rows at a time, the activations of that block
// never leaving shared memory between layers. Tensor cores through nvcuda::wmma (m16n16k16, __half operands, float
// accumulators).
//
// Module defines (compile-time variant):
//   WIDTH              hidden width: 16, 32, 64 or 128; a block has WIDTH / 16 warps, warp w owns output columns
//                      [16 w, 16 w + 16) of every layer (the output and input-gradient layers, whose width may
//                      exceed WIDTH, are done in rounds of WIDTH columns)
//   IN_WIDTH           padded input width (multiple of 16; padding columns of input and first matrix are zero)
//   OUT_WIDTH          padded output width (multiple of 16; padding rows of the last matrix are zero)
//   N_ITERS            16-row tiles per block (rows per block R = 16 * N_ITERS); n_rows must be a multiple of R
//   K_CHUNK            k-extent (multiple of 16) of the weight slab staged in shared memory at a time
//   ACTIVATION         hidden activation code, OUTPUT_ACTIVATION output activation code (forward only):
//                      0 None, 1 ReLU, 2 LeakyReLU, 3 Exponential, 5 Sigmoid, 6 Squareplus, 7 Softplus, 8 Tanh
//                      (4 = Sine is not supported: its derivative is not a function of the output); the host's
//                      table of these codes is ACTIVATION_CODES in ngp_cli/nn/activations.py
//
// Layouts (row-major, batch-major, all fp16 unless stated):
//   input (n_rows, IN_WIDTH); hidden activations / gradients (n_hidden_matmuls + 1, n_rows, WIDTH);
//   output (n_rows, OUT_WIDTH) float32; input gradient (n_rows, IN_WIDTH) float32.
//   Every layer computes out = A (R x K) @ B (K x N) with B passed transposed, as an (N, K) row-major matrix "Bt":
//   for the forward pass Bt is the torch weight (out, in) itself, for the backward pass Bt = W^T (in, out).
//
// Shared memory (dynamic, bytes = fused_mlp_shared_bytes() below, mirrored by ngp_cli/cuda/fused_mlp.py):
//   act   R x ACT_LD halves, ACT_LD = max(IN_WIDTH, WIDTH, OUT_WIDTH) + 8: the block's activations (forward) or
//         gradients (backward) of the current layer, overwritten in place by the layer's result; the skew of 8
//         halves avoids bank conflicts of the row-major fragment loads.
//   wbuf  WIDTH x W_LD halves, W_LD = K_CHUNK + 8: a (16 * n_warps) x K_CHUNK slab of Bt, i.e. the columns of B the
//         warps need for K_CHUNK steps of k; after a layer's products it is reused per warp as a 16 x 20 float
//         staging tile through which the accumulators pass on their way to fp16 / global memory.
// Accumulators are never converted or activated as fragments: they are stored to the staging tile and every lane
// then handles elements (lane, lane + lanes, ...) at known positions, which holds for any fragment layout (and for
// the CPU emulation's whole-tile fragments, where a "warp" may be one fiber: lanes come from blockDim.x). With one
// lane per warp there is nothing to exchange, so __syncwarp is skipped: the emulation groups 32 consecutive threads
// of the block into a warp, which for blockDim.x == 1 would join several of this kernel's warps, some of them idle.
#include "common.cuh"

#ifdef NGP_CPU
#include <cstring>
#endif

#ifndef WIDTH
#error "fused_mlp.cu needs WIDTH"
#endif
#ifndef IN_WIDTH
#error "fused_mlp.cu needs IN_WIDTH"
#endif
#ifndef OUT_WIDTH
#define OUT_WIDTH 16
#endif
#ifndef N_ITERS
#define N_ITERS 8
#endif
#ifndef K_CHUNK
#define K_CHUNK 64
#endif
#ifndef ACTIVATION
#define ACTIVATION 1
#endif
#ifndef OUTPUT_ACTIVATION
#define OUTPUT_ACTIVATION 0
#endif

#if (WIDTH != 16 && WIDTH != 32 && WIDTH != 64 && WIDTH != 128)
#error "WIDTH must be 16, 32, 64 or 128"
#endif
#if (IN_WIDTH % 16 != 0 || OUT_WIDTH % 16 != 0 || K_CHUNK % 16 != 0 || IN_WIDTH <= 0 || OUT_WIDTH <= 0)
#error "IN_WIDTH, OUT_WIDTH and K_CHUNK must be positive multiples of 16"
#endif
#if (ACTIVATION == 4 || OUTPUT_ACTIVATION == 4)
#error "Sine is not supported by the fully fused MLP"
#endif

namespace fmlp {

constexpr int N_WARPS = WIDTH / 16;
constexpr int ROWS = 16 * N_ITERS;
constexpr int MAX2 = IN_WIDTH > WIDTH ? IN_WIDTH : WIDTH;
constexpr int ACT_COLS = MAX2 > OUT_WIDTH ? MAX2 : OUT_WIDTH;
constexpr int ACT_LD = ACT_COLS + 8;
constexpr int W_LD = K_CHUNK + 8;
constexpr int STAGE_LD = 20;                       // floats; a multiple of 4 as wmma requires for float
constexpr int STAGE_FLOATS = 16 * STAGE_LD;
constexpr int ACT_HALVES = ROWS * ACT_LD;
constexpr int WBUF_HALVES = WIDTH * W_LD;
static_assert(N_WARPS * STAGE_FLOATS * 2 <= WBUF_HALVES, "staging tiles must fit into the weight slab");
static_assert((ACT_HALVES * 2) % 32 == 0, "wbuf must stay 32-byte aligned");

// Epilogues: what happens to a finished 16x16 tile of a layer's product.
constexpr int EPI_FWD_HIDDEN = 0;  // activation -> fp16 into act (and into the saved activations when given)
constexpr int EPI_FWD_OUTPUT = 1;  // output activation -> float32 output
constexpr int EPI_BWD_HIDDEN = 2;  // times activation'(forward output) -> fp16 into act and into the gradients
constexpr int EPI_BWD_INPUT = 3;   // float32 input gradient

constexpr float K_ACT = 10.0f;  // tcnn's sharpness of Squareplus and Softplus

template <int A>
__device__ inline float activation(float x) {
    if (A == 1) return x > 0.0f ? x : 0.0f;
    if (A == 2) return x > 0.0f ? x : 0.01f * x;
    if (A == 3) return expf(x);
    if (A == 5) return 1.0f / (1.0f + expf(-x));
    if (A == 6) {
        const float kx = K_ACT * x;
        return 0.5f * (kx + sqrtf(kx * kx + 4.0f)) / K_ACT;
    }
    if (A == 7) {
        const float kx = K_ACT * x;  // torch's softplus: linear beyond beta * x > 20
        return kx > 20.0f ? x : log1pf(expf(kx)) / K_ACT;
    }
    if (A == 8) return tanhf(x);
    return x;
}

// d activation / d x expressed through the activation's output y (as tcnn's warp_activation_backward).
template <int A>
__device__ inline float activation_derivative(float y) {
    if (A == 1) return y > 0.0f ? 1.0f : 0.0f;
    if (A == 2) return y > 0.0f ? 1.0f : 0.01f;
    if (A == 3) return y;
    if (A == 5) return y * (1.0f - y);
    if (A == 6) {
        const float u = K_ACT * y;
        return u * u / (u * u + 1.0f);
    }
    if (A == 7) return 1.0f - expf(-K_ACT * y);
    if (A == 8) return 1.0f - y * y;
    return 1.0f;
}

__device__ inline void copy8(__half* dst, const __half* src) {
#ifdef NGP_CPU
    memcpy(dst, src, 16);
#else
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#endif
}

// Copies a rows x cols (cols a multiple of 8) fp16 block between row-major matrices, all threads of the block.
__device__ inline void block_copy(__half* dst, int dst_ld, const __half* src, int src_ld, int rows, int cols) {
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int n_threads = blockDim.x * blockDim.y;
    const int vec_per_row = cols / 8;
    for (int v = tid; v < rows * vec_per_row; v += n_threads) {
        const int r = v / vec_per_row;
        const int c = 8 * (v - r * vec_per_row);
        copy8(dst + r * dst_ld + c, src + r * src_ld + c);
    }
}

struct Epilogue {
    __half* act;                 // shared activations, ld ACT_LD
    __half* hidden_out;          // global (n_rows, WIDTH) block rows, or nullptr
    const __half* forward;       // global (n_rows, WIDTH) block rows (backward)
    float* out;                  // global float32 block rows (ld = the layer's N)
};

// One layer for the block's ROWS rows: act (ROWS x K, shared) @ B, B given as Bt (N x K, global row-major).
// Must be called by every thread of the block (it synchronises).
template <int N, int K, int EPI>
__device__ void block_layer(const __half* __restrict__ bt, __half* __restrict__ act, __half* __restrict__ wbuf,
                            const Epilogue& epi) {
    using namespace nvcuda;
    const int warp = threadIdx.y;
    const int lane = threadIdx.x;
    const int n_lanes = blockDim.x;
    float* stage = reinterpret_cast<float*>(wbuf) + warp * STAGE_FLOATS;

    for (int col_base = 0; col_base < N; col_base += 16 * N_WARPS) {
        const int rows_here = N - col_base < 16 * N_WARPS ? N - col_base : 16 * N_WARPS;
        const int col = col_base + 16 * warp;  // this warp's first output column
        const bool active = col < N;

        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[N_ITERS];
#pragma unroll
        for (int l = 0; l < N_ITERS; ++l) wmma::fill_fragment(acc[l], 0.0f);

        for (int k0 = 0; k0 < K; k0 += K_CHUNK) {
            const int kc = K - k0 < K_CHUNK ? K - k0 : K_CHUNK;
            __syncthreads();  // the previous readers of wbuf (or of the staging tiles in it) are done
            block_copy(wbuf, W_LD, bt + col_base * K + k0, K, rows_here, kc);
            __syncthreads();
            if (active) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a_frag;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b_frag;
                for (int kb = 0; kb < kc; kb += 16) {
                    wmma::load_matrix_sync(b_frag, wbuf + (16 * warp) * W_LD + kb, W_LD);
#pragma unroll
                    for (int l = 0; l < N_ITERS; ++l) {
                        wmma::load_matrix_sync(a_frag, act + (16 * l) * ACT_LD + k0 + kb, ACT_LD);
                        wmma::mma_sync(acc[l], a_frag, b_frag, acc[l]);
                    }
                }
            }
        }
        __syncthreads();  // every warp is done reading act and wbuf: results may overwrite both

        if (active) {
#pragma unroll
            for (int l = 0; l < N_ITERS; ++l) {
                wmma::store_matrix_sync(stage, acc[l], STAGE_LD, wmma::mem_row_major);
                if (n_lanes > 1) __syncwarp();  // lanes read elements other lanes stored
                for (int e = lane; e < 256; e += n_lanes) {
                    const int r = 16 * l + (e >> 4);  // row within the block
                    const int c = col + (e & 15);     // column within the layer
                    const float v = stage[(e >> 4) * STAGE_LD + (e & 15)];
                    if (EPI == EPI_FWD_HIDDEN) {
                        const __half h = __float2half(activation<ACTIVATION>(v));
                        act[r * ACT_LD + c] = h;
                        if (epi.hidden_out != nullptr) epi.hidden_out[r * WIDTH + c] = h;
                    } else if (EPI == EPI_FWD_OUTPUT) {
                        epi.out[r * N + c] = activation<OUTPUT_ACTIVATION>(v);
                    } else if (EPI == EPI_BWD_HIDDEN) {
                        const float y = __half2float(epi.forward[r * WIDTH + c]);
                        const __half h = __float2half(v * activation_derivative<ACTIVATION>(y));
                        act[r * ACT_LD + c] = h;
                        epi.hidden_out[r * WIDTH + c] = h;
                    } else {
                        epi.out[r * N + c] = v;
                    }
                }
                if (n_lanes > 1) __syncwarp();  // before the next store overwrites the tile
            }
        }
        __syncthreads();  // results visible to every warp before the next layer (or round) reads them
    }
}

}  // namespace fmlp

// Forward pass. grid (n_rows / (16 N_ITERS), 1, 1), block (lanes, WIDTH / 16, 1) with lanes = 32 on the GPU (the
// CPU emulation may use 1), dynamic shared memory fused_mlp_shared_bytes.
// input (n_rows, IN_WIDTH) fp16; w_first (WIDTH, IN_WIDTH); w_hidden (n_hidden_matmuls, WIDTH, WIDTH);
// w_last (OUT_WIDTH, WIDTH): the torch (out, in) matrices in fp16, zero-padded. output (n_rows, OUT_WIDTH) float32
// after OUTPUT_ACTIVATION. hidden: nullptr for inference, else (n_hidden_matmuls + 1, n_rows, WIDTH) fp16 receiving
// every hidden layer's activation output (training).
extern "C" __global__ void fused_mlp_forward(const __half* __restrict__ input, const __half* __restrict__ w_first,
                                             const __half* __restrict__ w_hidden, const __half* __restrict__ w_last,
                                             float* __restrict__ output, __half* __restrict__ hidden,
                                             const unsigned int n_rows, const unsigned int n_hidden_matmuls) {
    using namespace fmlp;
    NGP_DYNAMIC_SHARED(__half, smem);
    __half* act = smem;
    __half* wbuf = smem + ACT_HALVES;
    const size_t row0 = (size_t)blockIdx.x * ROWS;
    const size_t layer_stride = (size_t)n_rows * WIDTH;

    block_copy(act, ACT_LD, input + row0 * IN_WIDTH, IN_WIDTH, ROWS, IN_WIDTH);  // block_layer syncs before use

    Epilogue epi{act, hidden != nullptr ? hidden + row0 * WIDTH : nullptr, nullptr, nullptr};
    block_layer<WIDTH, IN_WIDTH, EPI_FWD_HIDDEN>(w_first, act, wbuf, epi);
    for (unsigned int k = 0; k < n_hidden_matmuls; ++k) {
        if (epi.hidden_out != nullptr) epi.hidden_out += layer_stride;
        block_layer<WIDTH, WIDTH, EPI_FWD_HIDDEN>(w_hidden + (size_t)k * WIDTH * WIDTH, act, wbuf, epi);
    }
    epi.out = output + row0 * OUT_WIDTH;
    block_layer<OUT_WIDTH, WIDTH, EPI_FWD_OUTPUT>(w_last, act, wbuf, epi);
}

// Backward pass, same launch shape. dl_doutput (n_rows, OUT_WIDTH) fp16: the loss gradient w.r.t. the output
// *before* OUTPUT_ACTIVATION (the caller applies the output activation's derivative), loss-scaled.
// wt_first (IN_WIDTH, WIDTH) = w_first^T; wt_hidden (n_hidden_matmuls, WIDTH, WIDTH) = each w_hidden^T;
// wt_last (WIDTH, OUT_WIDTH) = w_last^T. forward: the forward pass's hidden activations.
// dl_dhidden (n_hidden_matmuls + 1, n_rows, WIDTH) fp16 receives dL/d(pre-activation) of every hidden layer, in
// forward layer order; dl_dinput (n_rows, IN_WIDTH) float32 receives dL/d(input), or is skipped when nullptr.
extern "C" __global__ void fused_mlp_backward(const __half* __restrict__ dl_doutput,
                                              const __half* __restrict__ wt_first,
                                              const __half* __restrict__ wt_hidden,
                                              const __half* __restrict__ wt_last, const __half* __restrict__ forward,
                                              __half* __restrict__ dl_dhidden, float* __restrict__ dl_dinput,
                                              const unsigned int n_rows, const unsigned int n_hidden_matmuls) {
    using namespace fmlp;
    NGP_DYNAMIC_SHARED(__half, smem);
    __half* act = smem;
    __half* wbuf = smem + ACT_HALVES;
    const size_t row0 = (size_t)blockIdx.x * ROWS;
    const size_t layer_stride = (size_t)n_rows * WIDTH;

    block_copy(act, ACT_LD, dl_doutput + row0 * OUT_WIDTH, OUT_WIDTH, ROWS, OUT_WIDTH);

    const size_t last = n_hidden_matmuls;
    Epilogue epi{act, dl_dhidden + last * layer_stride + row0 * WIDTH, forward + last * layer_stride + row0 * WIDTH,
                 nullptr};
    block_layer<WIDTH, OUT_WIDTH, EPI_BWD_HIDDEN>(wt_last, act, wbuf, epi);
    for (unsigned int k = n_hidden_matmuls; k > 0; --k) {
        epi.hidden_out -= layer_stride;
        epi.forward -= layer_stride;
        block_layer<WIDTH, WIDTH, EPI_BWD_HIDDEN>(wt_hidden + (size_t)(k - 1) * WIDTH * WIDTH, act, wbuf, epi);
    }
    if (dl_dinput != nullptr) {
        epi.out = dl_dinput + row0 * IN_WIDTH;
        block_layer<IN_WIDTH, WIDTH, EPI_BWD_INPUT>(wt_first, act, wbuf, epi);
    }
}

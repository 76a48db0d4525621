// The MLP's inference forward on the CPU in bfloat16, every layer of a block of rows in one pass (the CPU twin of
// fused_mlp.cu's forward: tiny-cuda-nn's fully fused MLP, paper §4, with AVX-512-BF16 dot products in the place of
// tensor cores). Bindings and the torch reference: ngp_cli/cuda/cpu_mlp.py (fused_inference_mlp, and inference_mlp's
// oneDNN matmuls, which compute the same values up to summation order).
//
// A CPU kernel only: the GPU evaluates its MLPs with fused_mlp.cu. Launched with one thread per block; block b takes
// rows [b * rows_per_block, min(n_rows, (b + 1) * rows_per_block)), 16 rows (a tile) at a time, and keeps them in
// cache through every layer instead of writing each layer's activations to memory (oneDNN's matmuls: a 64-wide hidden
// layer is 128 bytes a row written and read again, and the narrow output layers, 64 -> 16 or 3, ran at a tenth of the
// wide layers' rate).
//
// Network (a bias-free MLP, as FullyFusedMLP): layer 0 takes the input's K0 columns (even, <= 64), the hidden layers
// have 64 neurons and ReLU, the last layer has n_out <= 16 outputs and no activation (the caller applies the output
// activation). n_layers >= 1 (1: a single 64-or-fewer-wide -> n_out product).
//
// Input: one or two column blocks of float32 (a NeRF's colour network takes the density network's output and the
// direction encoding side by side); element (r, c) of block k at x_k[r * row_stride_k + c * col_stride_k], so a
// row-major block has col_stride 1 and the hash grid's feature-major output row_stride 1 (other strides: the binding
// copies first). Widths even, summing to K0. Block 1 absent: width 0.
//
// Weights: bf16 pairs packed as 32-bit words (the binding's pack_weights): layer l's word [p][o] holds
// (W[o][2p], W[o][2p+1]) in its (low, high) halves, o < 64 (hidden) or < 16 (last, zero-padded), layers one after the
// other. An input row is packed the same way ((x[2p], x[2p+1]) per word), so one vdpbf16ps adds two products per lane.
//
// Precision: inputs, weights and hidden activations rounded to bf16 (round to nearest even, as torch's .to(bfloat16)),
// products summed in float32; the output is float32. Without AVX-512-BF16 the same arithmetic runs as scalar code
// (correct everywhere; fast only with the instructions; -DNGP_MLP_SCALAR picks it anyway, for the tests).
#include "common.cuh"

#ifdef NGP_CPU
#include <cstdint>
#include <cstring>
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512F__) && !defined(NGP_MLP_SCALAR)
#include <immintrin.h>
#define NGP_MLP_AVX512BF16 1
#endif

namespace mlp_bf16 {

constexpr int TILE = 16;      // rows kept together through the layers
constexpr int WIDTH = 64;     // hidden neurons
constexpr int HID_WORDS = 32; // bf16 pairs of a hidden row
constexpr int OUT_PAD = 16;   // the last layer's outputs, padded

// An input segment of a tile: word (row r, pair p) at base[r * rs + p * ps], np pairs, its weights from word row
// w_row of the layer's [pair][output] words.
struct Seg {
    const uint32_t* base;
    int rs, ps, np, w_row;
};

inline uint16_t to_bf16(float f) {  // round to nearest even; NaN stays a (quiet) NaN
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

inline float from_bf16(uint32_t h) {
    const uint32_t u = h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint32_t pack(float lo, float hi) { return (uint32_t)to_bf16(lo) | ((uint32_t)to_bf16(hi) << 16); }

// Packs rows [0, rows) of a tile of input block (x, rs, cs, width) into words: word (r, p) at out[r * o_rs + p * o_ps].
// Rows >= rows get zeros.
inline void pack_block(const float* x, long long rs, long long cs, int width, int rows, uint32_t* out, int o_rs,
                       int o_ps) {
    const int np = width / 2;
#ifdef NGP_MLP_AVX512BF16
    if (cs == 1) {  // row-major: a row's columns are contiguous; 32 columns -> 16 words per conversion
        for (int r = 0; r < TILE; ++r) {
            for (int c0 = 0; c0 < width; c0 += 32) {
                const int n = width - c0 < 32 ? width - c0 : 32;
                const __mmask16 m0 = (__mmask16)((n >= 16) ? 0xffffu : ((1u << n) - 1u));
                const __mmask16 m1 = (__mmask16)((n >= 32) ? 0xffffu : (n > 16 ? ((1u << (n - 16)) - 1u) : 0u));
                __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
                if (r < rows) {
                    a = _mm512_maskz_loadu_ps(m0, x + r * rs + c0);
                    b = _mm512_maskz_loadu_ps(m1, x + r * rs + c0 + 16);
                }
                const __m512i words = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // low lanes from a
                const __mmask16 wm = (__mmask16)((n / 2 >= 16) ? 0xffffu : ((1u << (n / 2)) - 1u));
                _mm512_mask_storeu_epi32(out + r * o_rs + (c0 / 2) * o_ps, wm, words);  // o_ps == 1 here
            }
        }
        return;
    }
    if (rs == 1) {  // feature-major: a column's rows are contiguous; two columns -> 16 rows' words
        const __mmask16 m = (__mmask16)(rows >= 16 ? 0xffffu : ((1u << rows) - 1u));
        const __m512i inter = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                               22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        for (int p = 0; p < np; ++p) {
            const __m512 even = _mm512_maskz_loadu_ps(m, x + (2 * p) * cs);
            const __m512 odd = _mm512_maskz_loadu_ps(m, x + (2 * p + 1) * cs);
            const __m512i halves = (__m512i)_mm512_cvtne2ps_pbh(odd, even);  // lanes 0-15 even, 16-31 odd
            const __m512i words = _mm512_permutexvar_epi16(inter, halves);   // (even r, odd r) per row
            _mm512_storeu_si512((void*)(out + p * o_ps), words);              // o_rs == 1 here
        }
        return;
    }
#endif
    for (int r = 0; r < TILE; ++r)
        for (int p = 0; p < np; ++p)
            out[r * o_rs + p * o_ps] = r < rows ? pack(x[r * rs + (2 * p) * cs], x[r * rs + (2 * p + 1) * cs]) : 0u;
}

#ifdef NGP_MLP_AVX512BF16
// A 64-wide layer for rows r0..r0+3 of the tile: ReLU, then bf16 words into hid[r * 32 + ...]. Per input word: the
// four rows' broadcasts and the four weight vectors are loaded once each for 16 dot products (the loads, not the
// dot products, bound a loop that reloads the weights per row). init: null (sums start at 0), or the tile's 16
// rows' 64 starting sums each (init[r], the row's part of the layer computed elsewhere: a NeRF colour network's
// direction columns, once per ray).
inline void wide4(const Seg* segs, int nseg, const uint32_t* W, int r0, uint32_t* hid,
                  const float* const* init = nullptr) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00,
           c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    if (init) {
#define NGP_MLP_INIT_ROW(r, q0, q1, q2, q3)                                                                           \
    q0 = _mm512_loadu_ps(init[r0 + (r)]); q1 = _mm512_loadu_ps(init[r0 + (r)] + 16);                                 \
    q2 = _mm512_loadu_ps(init[r0 + (r)] + 32); q3 = _mm512_loadu_ps(init[r0 + (r)] + 48)
        NGP_MLP_INIT_ROW(0, c00, c01, c02, c03);
        NGP_MLP_INIT_ROW(1, c10, c11, c12, c13);
        NGP_MLP_INIT_ROW(2, c20, c21, c22, c23);
        NGP_MLP_INIT_ROW(3, c30, c31, c32, c33);
#undef NGP_MLP_INIT_ROW
    }
    for (int s = 0; s < nseg; ++s) {
        const Seg g = segs[s];
        const uint32_t* w = W + (long long)g.w_row * WIDTH;
        const uint32_t* a = g.base + r0 * g.rs;
        const int rs = g.rs, ps = g.ps;
        for (int p = 0; p < g.np; ++p, w += WIDTH, a += ps) {
            const __m512bh a0 = (__m512bh)_mm512_set1_epi32((int)a[0]);
            const __m512bh a1 = (__m512bh)_mm512_set1_epi32((int)a[rs]);
            const __m512bh a2 = (__m512bh)_mm512_set1_epi32((int)a[2 * rs]);
            const __m512bh a3 = (__m512bh)_mm512_set1_epi32((int)a[3 * rs]);
            __m512bh v = (__m512bh)_mm512_loadu_si512((const void*)w);
            c00 = _mm512_dpbf16_ps(c00, a0, v); c10 = _mm512_dpbf16_ps(c10, a1, v);
            c20 = _mm512_dpbf16_ps(c20, a2, v); c30 = _mm512_dpbf16_ps(c30, a3, v);
            v = (__m512bh)_mm512_loadu_si512((const void*)(w + 16));
            c01 = _mm512_dpbf16_ps(c01, a0, v); c11 = _mm512_dpbf16_ps(c11, a1, v);
            c21 = _mm512_dpbf16_ps(c21, a2, v); c31 = _mm512_dpbf16_ps(c31, a3, v);
            v = (__m512bh)_mm512_loadu_si512((const void*)(w + 32));
            c02 = _mm512_dpbf16_ps(c02, a0, v); c12 = _mm512_dpbf16_ps(c12, a1, v);
            c22 = _mm512_dpbf16_ps(c22, a2, v); c32 = _mm512_dpbf16_ps(c32, a3, v);
            v = (__m512bh)_mm512_loadu_si512((const void*)(w + 48));
            c03 = _mm512_dpbf16_ps(c03, a0, v); c13 = _mm512_dpbf16_ps(c13, a1, v);
            c23 = _mm512_dpbf16_ps(c23, a2, v); c33 = _mm512_dpbf16_ps(c33, a3, v);
        }
    }
    const __m512 z = _mm512_setzero_ps();
    uint32_t* h = hid + r0 * HID_WORDS;
#define NGP_MLP_STORE_ROW(r, q0, q1, q2, q3)                                                                         \
    _mm512_storeu_si512((void*)(h + (r) * HID_WORDS),                                                                 \
                        (__m512i)_mm512_cvtne2ps_pbh(_mm512_max_ps(q1, z), _mm512_max_ps(q0, z)));                 \
    _mm512_storeu_si512((void*)(h + (r) * HID_WORDS + 16),                                                            \
                        (__m512i)_mm512_cvtne2ps_pbh(_mm512_max_ps(q3, z), _mm512_max_ps(q2, z)))
    NGP_MLP_STORE_ROW(0, c00, c01, c02, c03);
    NGP_MLP_STORE_ROW(1, c10, c11, c12, c13);
    NGP_MLP_STORE_ROW(2, c20, c21, c22, c23);
    NGP_MLP_STORE_ROW(3, c30, c31, c32, c33);
#undef NGP_MLP_STORE_ROW
}

// dst[c * ds + r] = src[r * ss + c] for a 16 x 16 block of 32-bit words (unpacks within 128-bit lanes, then lane
// shuffles; 64 shuffles for 16 rows).
inline void transpose16(const uint32_t* src, int ss, uint32_t* dst, int ds) {
    __m512i r[16], t[16], u[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512((const void*)(src + i * ss));
    for (int i = 0; i < 16; i += 2) {  // t[i], t[i+1]: rows i, i+1 interleaved (words 0,1 / 2,3 of each lane)
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // u[i + j]: column j (of each lane's four) of rows i..i+3
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; ++j) {  // lanes 0 and 2 (columns j, 8 + j), 1 and 3 (4 + j, 12 + j)
        t[2 * j] = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);
        t[2 * j + 1] = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xdd);
        t[8 + 2 * j] = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);
        t[8 + 2 * j + 1] = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xdd);
    }
    for (int j = 0; j < 4; ++j) {
        _mm512_storeu_si512((void*)(dst + j * ds), _mm512_shuffle_i32x4(t[2 * j], t[8 + 2 * j], 0x88));
        _mm512_storeu_si512((void*)(dst + (8 + j) * ds), _mm512_shuffle_i32x4(t[2 * j], t[8 + 2 * j], 0xdd));
        _mm512_storeu_si512((void*)(dst + (4 + j) * ds), _mm512_shuffle_i32x4(t[2 * j + 1], t[8 + 2 * j + 1], 0x88));
        _mm512_storeu_si512((void*)(dst + (12 + j) * ds), _mm512_shuffle_i32x4(t[2 * j + 1], t[8 + 2 * j + 1], 0xdd));
    }
}

// The last layer with at most 4 outputs on a 64-wide hidden tile (a NeRF's colour, an SDF's distance), lanes over
// rows: the tile's words transposed to 16 rows a vector, then per word one vector of rows and each output's weight
// broadcast, 32 x n_out dot products for the tile instead of narrow16's 32 x 16 (whose lanes are outputs, 3 of 16
// used). Each (row, output) sums the same products in the same order as narrow16: the same values, bit for bit.
inline void narrow_rows(const uint32_t* hid, const uint32_t* W, int rows, int n_out, float* out) {
    alignas(64) uint32_t tp[HID_WORDS * TILE];  // tp[p * 16 + r]
    transpose16(hid, HID_WORDS, tp, TILE);
    transpose16(hid + TILE, HID_WORDS, tp + TILE * TILE, TILE);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int p = 0; p < HID_WORDS; ++p) {
        const __m512bh a = (__m512bh)_mm512_load_si512((const void*)(tp + p * TILE));
#pragma GCC unroll 4
        for (int o = 0; o < 4; ++o)
            if (o < n_out)
                acc[o] = _mm512_dpbf16_ps(acc[o], a, (__m512bh)_mm512_set1_epi32((int)W[p * OUT_PAD + o]));
    }
    alignas(64) float cols[4][TILE];
    for (int o = 0; o < n_out; ++o) _mm512_store_ps(cols[o], acc[o]);
    for (int r = 0; r < rows; ++r)
        for (int o = 0; o < n_out; ++o) out[(long long)r * n_out + o] = cols[o][r];
}

// The last layer (<= 16 outputs) for the tile's first `rows` rows: float32 into out[r * n_out + o].
inline void narrow16(const Seg* segs, int nseg, const uint32_t* W, int rows, int n_out, float* out) {
    if (n_out <= 4 && nseg == 1 && segs[0].rs == HID_WORDS && segs[0].ps == 1 && segs[0].np == HID_WORDS &&
        segs[0].w_row == 0)
        return narrow_rows(segs[0].base, W, rows, n_out, out);
    __m512 acc[TILE];
    for (int r = 0; r < TILE; ++r) acc[r] = _mm512_setzero_ps();
    for (int s = 0; s < nseg; ++s) {
        const Seg g = segs[s];
        const uint32_t* w = W + (long long)g.w_row * OUT_PAD;
        const uint32_t* a = g.base;
        const int rs = g.rs;
        for (int p = 0; p < g.np; ++p, w += OUT_PAD, a += g.ps) {
            const __m512bh wv = (__m512bh)_mm512_loadu_si512((const void*)w);
#pragma GCC unroll 16
            for (int r = 0; r < TILE; ++r)
                acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32((int)a[r * rs]), wv);
        }
    }
    const __mmask16 m = (__mmask16)((1u << n_out) - 1u);
    for (int r = 0; r < rows; ++r) _mm512_mask_storeu_ps(out + (long long)r * n_out, m, acc[r]);
}
#else
// Scalar twins of wide4 / narrow16 (the same rounding; the sum of each word's two products added as vdpbf16ps
// does, the odd one first).
inline float dot_words(const Seg* segs, int nseg, const uint32_t* W, int stride, int r, int o, float acc = 0.0f) {
    for (int s = 0; s < nseg; ++s) {
        const Seg g = segs[s];
        for (int p = 0; p < g.np; ++p) {
            const uint32_t a = g.base[r * g.rs + p * g.ps], w = W[(long long)(g.w_row + p) * stride + o];
            acc += from_bf16(a >> 16) * from_bf16(w >> 16);
            acc += from_bf16(a & 0xffffu) * from_bf16(w & 0xffffu);
        }
    }
    return acc;
}

inline void wide4(const Seg* segs, int nseg, const uint32_t* W, int r0, uint32_t* hid,
                  const float* const* init = nullptr) {
    for (int r = r0; r < r0 + 4; ++r)
        for (int o = 0; o < WIDTH; o += 2) {
            const float a = dot_words(segs, nseg, W, WIDTH, r, o, init ? init[r][o] : 0.0f),
                        b = dot_words(segs, nseg, W, WIDTH, r, o + 1, init ? init[r][o + 1] : 0.0f);
            hid[r * HID_WORDS + o / 2] = pack(a > 0.0f ? a : 0.0f, b > 0.0f ? b : 0.0f);
        }
}

inline void narrow16(const Seg* segs, int nseg, const uint32_t* W, int rows, int n_out, float* out) {
    for (int r = 0; r < rows; ++r)
        for (int o = 0; o < n_out; ++o) out[(long long)r * n_out + o] = dot_words(segs, nseg, W, OUT_PAD, r, o);
}
#endif

// The layers of one tile: the first reads segs (k0_words words a row; its sums start at init, null: 0), the hidden
// ones go through hid_a / hid_b, the last writes rows [0, rows) of its n_out outputs to out[r * n_out + o].
inline void tile_layers(Seg* segs, int nseg, const uint32_t* W, int n_layers, int k0_words, int rows, int n_out,
                        float* out, uint32_t* hid_a, uint32_t* hid_b, const float* const* init) {
    uint32_t* hid_out = hid_a;
    for (int l = 0; l < n_layers; ++l) {
        if (l == n_layers - 1) {
            narrow16(segs, nseg, W, rows, n_out, out);
            return;
        }
        for (int r0 = 0; r0 < TILE; r0 += 4) wide4(segs, nseg, W, r0, hid_out, l == 0 ? init : nullptr);
        W += (long long)(l == 0 ? k0_words : HID_WORDS) * WIDTH;
        segs[0] = Seg{hid_out, HID_WORDS, 1, HID_WORDS, 0};
        nseg = 1;
        hid_out = hid_out == hid_a ? hid_b : hid_a;
    }
}

// Packs a tile of an input block (x, rs, cs, width) into buf: row-major words (rs = pairs, ps = 1) for row-major
// input, pair-major (rs = 1, ps = 16) for feature-major input; the segment that reads them, its weights from w_row.
inline Seg tile_input(const float* x, long long rs, long long cs, int width, int rows, uint32_t* buf, int w_row) {
    const bool feature_major = cs != 1 && rs == 1;
    const int np = width / 2;
    const int o_rs = feature_major ? 1 : np, o_ps = feature_major ? TILE : 1;
    pack_block(x, rs, cs, width, rows, buf, o_rs, o_ps);
    return Seg{buf, o_rs, o_ps, np, w_row};
}

}  // namespace mlp_bf16
#endif  // NGP_CPU

extern "C" __global__ void mlp_bf16_forward(const float* __restrict__ x0, const long long x0_rs, const long long x0_cs,
                                            const int w0, const float* __restrict__ x1, const long long x1_rs,
                                            const long long x1_cs, const int w1,
                                            const unsigned int* __restrict__ weights, const int n_layers,
                                            const int n_out, float* __restrict__ out, const long long n_rows,
                                            const int rows_per_block) {
#ifdef NGP_CPU
    using namespace mlp_bf16;
    alignas(64) uint32_t in0[TILE * 32], in1[TILE * 32], hid_a[TILE * HID_WORDS], hid_b[TILE * HID_WORDS];
    const long long begin = (long long)blockIdx.x * rows_per_block;
    const long long end = begin + rows_per_block < n_rows ? begin + rows_per_block : n_rows;
    const int k0_words = (w0 + w1) / 2;
    for (long long t = begin; t < end; t += TILE) {
        const int rows = end - t < TILE ? (int)(end - t) : TILE;
        Seg segs[2];
        int nseg = 0;
        segs[nseg++] = tile_input(x0 + t * x0_rs, x0_rs, x0_cs, w0, rows, in0, 0);
        if (w1) segs[nseg++] = tile_input(x1 + t * x1_rs, x1_rs, x1_cs, w1, rows, in1, w0 / 2);
        tile_layers(segs, nseg, weights, n_layers, k0_words, rows, n_out, out + t * n_out, hid_a, hid_b, nullptr);
    }
#endif
}

// A NeRF's two networks for rendering (instant-ngp's NerfNetwork, ngp_cli/tasks/nerf/model.py), a tile at a time:
// the density network on the grid's features (block x0, as mlp_bf16_forward's), its 16 outputs rounded to bf16 and
// fed to the colour network in the tile, whose first layer starts from the sample's ray's sums over the direction
// encoding (ray_sums[rows_of[i] * sums_stride + sums_column + o], float32: the same for every sample of a ray,
// computed once per ray by the binding) and so reads only those 16 outputs (8 words a row; dweights' last layer has
// exactly 16 outputs). Writes log_density[i] (the density network's output 0) and rgb[i * c_out + o] (the colour
// network's c_out <= 16 outputs), both before their activations. Nothing else goes to memory: no (N, 16) density
// output, no per-sample copy of the direction encoding.
extern "C" __global__ void mlp_bf16_nerf(const float* __restrict__ x0, const long long x0_rs, const long long x0_cs,
                                         const int w0, const unsigned int* __restrict__ dweights, const int d_layers,
                                         const float* __restrict__ ray_sums, const long long sums_stride,
                                         const long long sums_column, const long long* __restrict__ rows_of,
                                         const unsigned int* __restrict__ cweights, const int c_layers,
                                         const int c_out, float* __restrict__ log_density, float* __restrict__ rgb,
                                         const long long n_rows, const int rows_per_block) {
#ifdef NGP_CPU
    using namespace mlp_bf16;
    alignas(64) uint32_t in0[TILE * 32], geo[TILE * 8], hid_a[TILE * HID_WORDS], hid_b[TILE * HID_WORDS];
    alignas(64) float dens[TILE * OUT_PAD];
    alignas(64) static const float zeros[WIDTH] = {};
    const long long begin = (long long)blockIdx.x * rows_per_block;
    const long long end = begin + rows_per_block < n_rows ? begin + rows_per_block : n_rows;
    for (long long t = begin; t < end; t += TILE) {
        const int rows = end - t < TILE ? (int)(end - t) : TILE;
        Seg segs[1] = {tile_input(x0 + t * x0_rs, x0_rs, x0_cs, w0, rows, in0, 0)};
        tile_layers(segs, 1, dweights, d_layers, w0 / 2, TILE, OUT_PAD, dens, hid_a, hid_b, nullptr);
        const float* init[TILE];
        for (int r = 0; r < TILE; ++r) {
            init[r] = r < rows ? ray_sums + rows_of[t + r] * sums_stride + sums_column : zeros;
            if (r < rows) log_density[t + r] = dens[r * OUT_PAD];
        }
        segs[0] = tile_input(dens, OUT_PAD, 1, OUT_PAD, rows, geo, 0);
        tile_layers(segs, 1, cweights, c_layers, OUT_PAD / 2, rows, c_out, rgb + t * c_out, hid_a, hid_b, init);
    }
#endif
}

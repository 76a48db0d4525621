// Rendering a baked sparse voxel grid (`ngp bake`, docs/baked.md): density and spherical-harmonics colour stored at
// the fine voxels of the occupied cells of a NeRF's occupancy grid, rendered without any network. One fused kernel,
// one thread per ray: march, fetch, shade and composite. The torch reference it matches is
// ngp_cli/volrend/baked.py (render_baked_reference: march_rays_reference over the cells with a block, a trilinear
// fetch, composite_reference); the launch is in ngp_cli/cuda/baked.py.
//
// Grid (ngp_cli/volrend/baked.py, BakedGrid): cell c of cascade k (flat index as in volrend.cuh) with its bit set in
// occupancy_bits (bit c % 32 of word c / 32) holds block b = occupancy_rank[c / 32] + popcount(word & ((1 << c % 32)
// - 1)) (blocks are numbered in cell order: a rank query on 512 KiB of tables instead of an 8 MiB index) of SUBDIV^3
// fine voxels of size 2^k / (128 SUBDIV), values at the voxel centres. Fine
// voxel (x, y, z) of the block, x, y, z in [0, SUBDIV), is stored when bit x + SUBDIV (y + SUBDIV z) of
// block_mask[b] is set, at row block_offset[b] + popcount(block_mask[b] & ((1 << bit) - 1)) of density (n_voxels,)
// and sh (n_voxels, 3, SH_COEFFS) (both float16); a voxel not stored has sigma = 0 and colour 0: both arrays have
// one more row, empty_row = n_voxels, of zeros, which such a voxel reads.
// empty_distance[c] (uint8): 0 when cell c has a block; 1 when a cell of another cascade overlapping c has one; else
// the Chebyshev distance in cells (capped) from c to the nearest cell of its cascade's grid overlapped by a cell with a
// block, or to the grid's edge for an inner cascade: every cell within empty_distance[c] - 1 of c is empty in every
// cascade. One byte per cell tells both whether to sample and how far to skip.
//
// Per ray (marching exactly as march() of nerf.cu, on the same step lattice; no sample cap):
//   slab test against the box, t = max(t_near, near_distance); while pos = o + t d is inside the box:
//     dt = calc_dt(t); mip = mip_from_dt(dt, pos); cell = cell_index(pos, mip);
//     empty_distance[cell] == 0 (a block): a sample at pos; t += dt;
//     else: t_target = where the ray leaves the empty cube of radius empty_distance[cell] - 1 around the cell (at
//           least the cell: every lattice point inside lies in an empty cell whatever cascade it is looked up in, so
//           skipping them changes no sample); advance_on_lattice (the step loop's lattice points, bit for bit).
//   Sample: g = ((pos - 0.5) 2^-mip + 0.5) 128 SUBDIV - 0.5 (fine voxel centres at integer g, cascade mip);
//     sigma = sum over the 8 voxels around g of the trilinear weight times the stored sigma; when sigma > 0:
//     colour = clamp(sum_k w_k (sh_k . Y(d)), 0, 1) with Y the real SH basis of the ray direction in tcnn's order
//     and signs (ngp_cli/nn/encodings.py, SphericalHarmonicsEncoding), bands 0..SH_DEGREE;
//     tau = sigma dt, alpha = 1 - exp(-tau), w = T alpha (T = exp(-sum of earlier tau), kept as the running product
//     of the exp(-tau), one exp per sample); C += w colour, depth += w t, opacity += w; the ray stops once
//     T < min_transmittance.
//   Outputs: rgb = C + (1 - opacity) background, depth = sum w t (ngp-frame units), opacity.
//
// Defines: SUBDIV (1..4), SH_DEGREE (1 or 2).
#include "common.cuh"
#include "volrend.cuh"
#if defined(NGP_CPU) && defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef SUBDIV
#define SUBDIV 4
#endif
#ifndef SH_DEGREE
#define SH_DEGREE 2
#endif
#define SH_COEFFS ((SH_DEGREE + 1) * (SH_DEGREE + 1))
#define FINE_RES (NERF_GRID_SIZE * SUBDIV)

#if SUBDIV < 1 || SUBDIV > 4
#error "SUBDIV must be 1..4 (a block's voxels are the bits of a 64-bit mask)"
#endif
#if SH_DEGREE < 1 || SH_DEGREE > 2
#error "SH_DEGREE must be 1 or 2"
#endif

// The real SH basis of a unit direction, tcnn's order and signs (bands 0..SH_DEGREE).
__device__ __forceinline__ void sh_basis(float x, float y, float z, float* Y) {
    Y[0] = 0.28209479177387814f;
    Y[1] = -0.48860251190291987f * y;
    Y[2] = 0.48860251190291987f * z;
    Y[3] = -0.48860251190291987f * x;
#if SH_DEGREE >= 2
    Y[4] = 1.0925484305920792f * x * y;
    Y[5] = -1.0925484305920792f * y * z;
    Y[6] = 0.94617469575755997f * z * z - 0.31539156525251999f;
    Y[7] = -1.0925484305920792f * x * z;
    Y[8] = 0.54627421529603959f * x * x - 0.54627421529603959f * y * y;
#endif
}

// The colour from the SH coefficients trilinearly blended into acc (3 channels of SH_COEFFS) and the basis Y.
__device__ __forceinline__ void sh_dot(const float* Y, const float* acc, float& r, float& g, float& b) {
    r = g = b = 0.0f;
    for (int j = 0; j < SH_COEFFS; ++j) {
        r += Y[j] * acc[j];
        g += Y[j] * acc[SH_COEFFS + j];
        b += Y[j] * acc[2 * SH_COEFFS + j];
    }
}

// The SH colour of a sample, before clamping: sum_k w_k (sh_k . Y) over its 8 voxels = (sum_k w_k sh_k) . Y: the
// coefficients are interpolated first, then the basis of the ray direction applied once. A voxel not stored has
// rows[k] = empty_row, a row of zeros: no corner needs a branch.
#if defined(NGP_CPU) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// The CPU build converts and accumulates a voxel's 3 x SH_COEFFS float16 coefficients 16 at a time (masked loads,
// which never read past the row): with one scalar conversion per coefficient, the colour took 40% more of a
// lego_400 frame's time.

#define BAKED_SHADE_AVX512 1
__device__ __forceinline__ __mmask16 lane_range(int lo, int hi) {  // lanes [lo, hi) of 16, clipped
    lo = lo < 0 ? 0 : (lo > 16 ? 16 : lo);
    hi = hi < 0 ? 0 : (hi > 16 ? 16 : hi);
    return (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}
__device__ __forceinline__ void shade(const __half* __restrict__ sh, const int* rows, const float* w, const float* Y,
                                      float& r, float& g, float& b) {
    constexpr int n = 3 * SH_COEFFS;  // 27 or 12 coefficients: one or two 16-lane vectors
    const __mmask16 m0 = lane_range(0, n), m1 = lane_range(0, n - 16);
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (int k = 0; k < 8; ++k) {
        const unsigned short* c = reinterpret_cast<const unsigned short*>(sh + (long long)rows[k] * n);
        const __m512 wk = _mm512_set1_ps(w[k]);
        a0 = _mm512_fmadd_ps(wk, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, c)), a0);
        if (n > 16) a1 = _mm512_fmadd_ps(wk, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, c + 16)), a1);
    }
    alignas(64) float acc[32];
    _mm512_store_ps(acc, a0);
    _mm512_store_ps(acc + 16, a1);
    sh_dot(Y, acc, r, g, b);
}
#else
__device__ __forceinline__ void shade(const __half* __restrict__ sh, const int* rows, const float* w, const float* Y,
                                      float& r, float& g, float& b) {
    float acc[3 * SH_COEFFS];
    for (int j = 0; j < 3 * SH_COEFFS; ++j) acc[j] = 0.0f;
    for (int k = 0; k < 8; ++k) {
        const __half* c = sh + (long long)rows[k] * (3 * SH_COEFFS);
        for (int j = 0; j < 3 * SH_COEFFS; ++j) acc[j] += w[k] * __half2float(c[j]);
    }
    sh_dot(Y, acc, r, g, b);
}
#endif

// The block of cell c, or -1: a rank query on the occupancy bits (blocks are numbered in cell order).
__device__ __forceinline__ int block_of(const unsigned int* __restrict__ bits, const int* __restrict__ rank, int c) {
    const unsigned int word = bits[c >> 5];
    const unsigned int below = word & ((1u << (c & 31)) - 1u);
    return ((word >> (c & 31)) & 1u) ? rank[c >> 5] + __popc(below) : -1;
}

// Trilinear sigma at pos (cascade mip's fine voxels); rows[k] (-1: not stored) and w[k] of the 8 voxels around it,
// corner k = (k & 1, (k >> 1) & 1, k >> 2).
__device__ __forceinline__ float sample_sigma(float px, float py, float pz, int mip,
                                              const unsigned int* __restrict__ occupancy_bits,
                                              const int* __restrict__ occupancy_rank,
                                              const unsigned long long* __restrict__ block_mask,
                                              const int* __restrict__ block_offset,
                                              const __half* __restrict__ density, int empty_row, int* rows,
                                              float* w) {
    const float scale = pow2i(-mip);
    const float g[3] = {((px - 0.5f) * scale + 0.5f) * (float)FINE_RES - 0.5f,
                        ((py - 0.5f) * scale + 0.5f) * (float)FINE_RES - 0.5f,
                        ((pz - 0.5f) * scale + 0.5f) * (float)FINE_RES - 0.5f};
    int cell[3][2], local[3][2];
    bool valid[3][2];
    float f[3];
    for (int a = 0; a < 3; ++a) {
        const float fl = floorf(g[a]);
        f[a] = g[a] - fl;
        const int i0 = (int)fl;
        for (int s = 0; s < 2; ++s) {
            const int c = i0 + s;
            valid[a][s] = c >= 0 && c < FINE_RES;
            const int cc = valid[a][s] ? c : 0;
            cell[a][s] = cc / SUBDIV;
            local[a][s] = cc - cell[a][s] * SUBDIV;
        }
    }
    const bool same[3] = {cell[0][0] == cell[0][1] && valid[0][0] == valid[0][1],
                          cell[1][0] == cell[1][1] && valid[1][0] == valid[1][1],
                          cell[2][0] == cell[2][1] && valid[2][0] == valid[2][1]};
    const int base = mip * NERF_GRID_CELLS;
    // Few branches (which corners are stored is unpredictable): every corner reads a mask, an offset and a density;
    // a corner outside the grid, in a cell without a block or not stored reads the zero row empty_row.
    int blk[8];
    float sigma = 0.0f;
    for (int k = 0; k < 8; ++k) {
        const int bx = k & 1, by = (k >> 1) & 1, bz = k >> 2;
        w[k] = (bx ? f[0] : 1.0f - f[0]) * (by ? f[1] : 1.0f - f[1]) * (bz ? f[2] : 1.0f - f[2]);
        // The 8 voxels lie in 1, 2, 4 or 8 cells: look each cell up once (an invalid corner's cell is clamped).
        if (bx && same[0]) blk[k] = blk[k - 1];
        else if (by && same[1]) blk[k] = blk[k - 2];
        else if (bz && same[2]) blk[k] = blk[k - 4];
        else blk[k] = block_of(occupancy_bits, occupancy_rank,
                               base + cell[0][bx] + NERF_GRID_SIZE * (cell[1][by] + NERF_GRID_SIZE * cell[2][bz]));
        const bool in_block = valid[0][bx] && valid[1][by] && valid[2][bz] && blk[k] >= 0;
        const int b = in_block ? blk[k] : 0;  // block 0 exists: the sample's own cell has a block
        const unsigned long long mask = in_block ? block_mask[b] : 0ull;
        const int bit = local[0][bx] + SUBDIV * (local[1][by] + SUBDIV * local[2][bz]);
        const int row = block_offset[b] + __popcll(mask & ((1ull << bit) - 1ull));
        rows[k] = ((mask >> bit) & 1ull) ? row : empty_row;
        sigma += w[k] * __half2float(density[rows[k]]);
    }
    return sigma;
}

extern "C" __global__ void baked_render(const float* __restrict__ origins, const float* __restrict__ directions,
                                        const unsigned int n_rays, const unsigned int* __restrict__ occupancy_bits,
                                        const int* __restrict__ occupancy_rank,
                                        const unsigned char* __restrict__ empty_distance,
                                        const unsigned long long* __restrict__ block_mask,
                                        const int* __restrict__ block_offset, const __half* __restrict__ density,
                                        const __half* __restrict__ sh, const int empty_row, const int cascades,
                                        const float lo, const float hi, const float cone_angle,
                                        const float near_distance,
                                        const float min_dt, const float dt_max, const float min_transmittance,
                                        const float* __restrict__ background, const int background_stride,
                                        float* __restrict__ rgb, float* __restrict__ depth,
                                        float* __restrict__ opacity) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rays) return;
    const float ox = origins[3 * r], oy = origins[3 * r + 1], oz = origins[3 * r + 2];
    const float dx = directions[3 * r], dy = directions[3 * r + 1], dz = directions[3 * r + 2];
    const float ix = 1.0f / dx, iy = 1.0f / dy, iz = 1.0f / dz;
    const int max_cascade = cascades - 1;
    float t_near, t_far;
    ray_box(ox, oy, oz, ix, iy, iz, lo, hi, t_near, t_far);
    float t = t_near != t_near ? t_near : vr_fmaxf(t_near, near_distance);  // torch.clamp_min keeps NaN
    float cr = 0.0f, cg = 0.0f, cb = 0.0f, dep = 0.0f, op = 0.0f;
    if (t_far > t) {
        float Y[SH_COEFFS];
        sh_basis(dx, dy, dz, Y);
        float T = 1.0f;  // transmittance, exp(-sum of tau so far)
        const float margin = 1e-5f * (hi - lo);
        while (true) {
            const float px = ox + mul_rn(t, dx), py = oy + mul_rn(t, dy), pz = oz + mul_rn(t, dz);
            // The box test has the margin of march() (nerf.cu): the entry point rounds to either side of the face.
            if (!(px >= lo - margin && px <= hi + margin && py >= lo - margin && py <= hi + margin &&
                  pz >= lo - margin && pz <= hi + margin))
                break;
            const float dt = calc_dt(t, cone_angle, min_dt, dt_max);
            const int mip = max_cascade == 0 ? 0 : mip_from_dt(dt, px, py, pz, max_cascade);
            const int cell = cell_index(px, py, pz, mip);
            const int code = cell >= 0 ? (int)empty_distance[cell] : 1;
            if (code == 0) {
                int rows[8];
                float w8[8];
                const float sigma = sample_sigma(px, py, pz, mip, occupancy_bits, occupancy_rank, block_mask,
                                                 block_offset, density, empty_row, rows, w8);
                if (sigma > 0.0f) {
                    float sr, sg, sb;
                    shade(sh, rows, w8, Y, sr, sg, sb);
                    sr = vr_fminf(vr_fmaxf(sr, 0.0f), 1.0f);
                    sg = vr_fminf(vr_fmaxf(sg, 0.0f), 1.0f);
                    sb = vr_fminf(vr_fmaxf(sb, 0.0f), 1.0f);
                    const float tau = mul_rn(sigma, dt);
                    const float keep = expf(-tau);  // 1 - alpha
                    const float wt = T * (1.0f - keep);
                    cr += wt * sr;
                    cg += wt * sg;
                    cb += wt * sb;
                    dep += wt * t;
                    op += wt;
                    T *= keep;  // exp(-sum of tau) as a running product: one exp per sample
                    if (!(T >= min_transmittance)) break;
                }
                t += dt;
                continue;
            }
            // Empty cell: skip the empty cube of radius code - 1 around it (code 1: the cell itself).
            const int radius = code;
            const float t_target = t + distance_to_cube_face(px, py, pz, dx, dy, dz, ix, iy, iz,
                                                             pow2i(-mip) * (float)NERF_GRID_SIZE,
                                                             pow2i(mip) * (1.0f / NERF_GRID_SIZE), (float)radius);
            if (!advance_on_lattice(t, t_target, cone_angle, min_dt, dt_max)) break;
        }
    }
    const float left = 1.0f - op;
    const float br = background ? background[background_stride * r] : 0.0f;
    const float bg = background ? background[background_stride * r + 1] : 0.0f;
    const float bb = background ? background[background_stride * r + 2] : 0.0f;
    rgb[3 * r] = cr + left * br;
    rgb[3 * r + 1] = cg + left * bg;
    rgb[3 * r + 2] = cb + left * bb;
    depth[r] = dep;
    opacity[r] = op;
}

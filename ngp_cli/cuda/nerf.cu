// NeRF kernels: occupancy-grid ray marching, front-to-back compositing (forward and backward) and the occupancy-grid
// update, after instant-ngp's src/testbed_nerf.cu. The torch references these kernels match are
// ngp_cli/volrend/march.py (march_rays_reference), ngp_cli/volrend/grid.py (OccupancyGrid.update) and
// ngp_cli/volrend/composite.py (composite_reference); the launches are in ngp_cli/cuda/nerf.py.
//
// Frame and grid (volrend/grid.py): the scene box is [lo, hi]^3 = [0.5 - s/2, 0.5 + s/2]^3 (s = aabb_scale); cascade k
// of `cascades` covers [0.5 - 2^(k-1), 0.5 + 2^(k-1)]^3 with 128^3 cells, flat cell index
// k*128^3 + x + 128*(y + 128*z).
//
// 1. Ray marching (generate_training_samples_nerf, advance_to_next_voxel, mip_from_pos, mip_from_dt), one thread per
//    ray, two passes over the same device function (march<WRITE>):
//      march_rays_count  -> counts[r] (int32); rays r >= n_active[0] count 0 (n_active may be null: every ray);
//                           an exclusive cumsum on the device (torch) turns them into offsets (int64, R + 1);
//      march_rays_write  -> positions (S,3), dts (S,), ts (S,), ray_index (S,) int64 at offsets[r] (a ray never
//                           writes past offsets[r + 1], whatever happens); a ray whose samples would end past
//                           `capacity` writes nothing (the training batch's preallocated buffers hold `capacity`).
//    Rendering (no capacity, few samples per round) marches once instead: march_rays_slots writes each ray's samples
//    to its own max_samples slots, compact_samples packs them at the offsets (the same samples, in the same order).
//    Neither the host nor a device-wide counter needs the total: the buffers are sized before marching, so nothing
//    waits for the device between the passes (instant-ngp marches twice within one thread and takes its slice with
//    an atomicAdd; here the cumsum keeps the samples in ray order, the same on every target and every run).
//    Per ray: slab test against the box (t_near, t_far); t = max(t_near, near_distance); no samples unless
//    t_far > t; t += calc_dt(t) * jitter[r] (jitter may be null). Then, while pos = o + t*d is inside the box
//    (inclusive) and fewer than max_samples were taken:
//      dt = calc_dt(t) = clamp(t * cone_angle, min_dt, dt_max); mip = mip_from_dt(dt, pos); cell = cell(pos, mip);
//      occupied: emit (pos, dt, t), t += dt;
//      empty:    t_target = t + distance_to_next_voxel(pos, d, 1/d, mip); do t += calc_dt(t) while t < t_target
//                (advance_on_lattice: runs of equal steps at once, bit for bit). With empty-space distances (empty,
//                rendering; ngp_cli.volrend.grid.empty_distance), t_target is the face of the whole empty cube of
//                radius empty[cell] - 1 around the cell: no lattice point inside it is in an occupied cell of any
//                cascade, so the samples stay those of the reference.
//    An empty-cell skip that cannot advance t (t so large that t + dt == t, where the torch reference loops
//    forever) ends the ray. Products whose rounding matters (t*d, calc_dt*jitter) are rounded on their own (mul_rn,
//    no FMA contraction) so both targets take the reference's float32 steps (the CPU build matches it bit for bit);
//    every other product here is exact (powers of two) or not followed by an add.
//
// 2. Compositing forward (compute_loss_kernel_train_nerf / composite_kernel_nerf), one thread per ray:
//      tau_j = sigma_j dt_j, alpha_j = 1 - exp(-tau_j), T_j = exp(-S_j) with S_j = sum_{k<j} tau_k kept as a
//      compensated (Kahan) float sum, w_j = T_j alpha_j; the ray stops before the first sample with T_j < min_T
//      (1e-4). colour = sum w_j c_j, opacity = sum w_j, n_used[r] = samples composited (saved for the backward).
//
// 3. Compositing backward, one thread per ray, recomputing T_j and w_j exactly as the forward:
//      dL/dsigma_j = dt_j [g_C . (T_{j+1} c_j - sum_{k>j} w_k c_k) + g_O (T_{j+1} - sum_{k>j} w_k)],
//      dL/drgb_j = w_j g_C, with T_{j+1} = T_j exp(-tau_j) and the suffix sums = saved totals - prefix sums;
//      every sample of the ray is written (zeros from n_used on).
//
// 4. Occupancy-grid update (splat_grid_samples_nerf_max_nearest_neighbor, ema_grid_samples_nerf, grid_to_bitfield):
//      occupancy_splat: splat[idx[i]] = max(splat[idx[i]], v_i), v = thickness with NaN -> 0, +-inf -> +-FLT_MAX
//        (torch.nan_to_num); an atomicMax on the int bits of the floats: splat starts at +0 (bits 0), positive
//        floats order like their bits as ints and every negative float (sign bit set) is a negative int, so
//        negative values never win, like scatter_reduce("amax") into zeros. Indices outside [0, n) are skipped.
//      occupancy_ema: density = density < 0 ? density : max(decay * density, splat) (NaN-propagating, like
//        torch.maximum); -1 marks unseen cells that stay -1.
//      (the host takes mean = mean(max(density[:128^3], 0)) with torch, kept on the device)
//      occupancy_bits: occupancy = density > min(threshold, mean).
//    The elementwise kernels handle `per_thread` consecutive elements per thread (1 on the GPU, thousands on the
//    CPU).
#include "common.cuh"
// The cell math of marching (mul_rn, calc_dt, mip_from_dt, cell_index, distance_to_next_voxel), kahan_add and
// NERF_GRID_SIZE / NERF_GRID_CELLS, shared with baked.cu.
#include "volrend.cuh"

#define NERF_FLT_MAX 3.402823466e+38f

// Marches ray r; returns its sample count. WRITE: also stores the samples from out_begin, at most `capacity`.
template <bool WRITE>
__device__ __forceinline__ int march(const float* __restrict__ origins, const float* __restrict__ directions,
                                     const float* __restrict__ jitter, const float* __restrict__ t_start,
                                     const unsigned char* __restrict__ occupancy,
                                     const unsigned char* __restrict__ empty, unsigned int r, int max_cascade, float lo,
                                     float hi, float cone_angle,
                                     float near_distance, float min_dt, float dt_max, int max_samples,
                                     long long out_begin, long long capacity, float* __restrict__ positions,
                                     float* __restrict__ dts, float* __restrict__ ts,
                                     long long* __restrict__ ray_index) {
    const float ox = origins[3 * r], oy = origins[3 * r + 1], oz = origins[3 * r + 2];
    const float dx = directions[3 * r], dy = directions[3 * r + 1], dz = directions[3 * r + 2];
    const float ix = 1.0f / dx, iy = 1.0f / dy, iz = 1.0f / dz;
    float t_near, t_far;
    ray_box(ox, oy, oz, ix, iy, iz, lo, hi, t_near, t_far);
    float t = t_near != t_near ? t_near : fmaxf(t_near, near_distance);  // torch.clamp_min keeps NaN
    if (t_start) t = t != t ? t : fmaxf(t, t_start[r]);  // resuming a ray: continue where the last round stopped
    if (!(t_far > t)) return 0;
    if (jitter) t = t + mul_rn(calc_dt(t, cone_angle, min_dt, dt_max), jitter[r]);
    const float margin = 1e-5f * (hi - lo);
    int n = 0;
    while (n < max_samples) {
        const float px = ox + mul_rn(t, dx), py = oy + mul_rn(t, dy), pz = oz + mul_rn(t, dz);
        // The box test has a margin of 1e-5 box sizes: the entry point o + t_near·d rounds to either side of the
        // face, and a ray whose first position fell just outside would otherwise end before its first sample.
        if (!(px >= lo - margin && px <= hi + margin && py >= lo - margin && py <= hi + margin && pz >= lo - margin &&
              pz <= hi + margin))
            break;
        const float dt = calc_dt(t, cone_angle, min_dt, dt_max);
        const int mip = mip_from_dt(dt, px, py, pz, max_cascade);
        const int cell = cell_index(px, py, pz, mip);
        if (cell >= 0 && occupancy[cell]) {
            if (WRITE) {
                if (n >= capacity) break;
                const long long s = out_begin + n;
                positions[3 * s] = px;
                positions[3 * s + 1] = py;
                positions[3 * s + 2] = pz;
                dts[s] = dt;
                ts[s] = t;
                if (ray_index) ray_index[s] = (long long)r;
            }
            ++n;
            t += dt;  // (were t + dt == t, the ray ends at max_samples, as in the reference)
            continue;
        }
        // Empty cell: steps on the dt lattice until past the cell's far face (the first one is dt itself), runs of
        // equal steps at once, bit for bit as one at a time (volrend.cuh); a step that cannot advance t ends the ray.
        // With empty-space distances (rendering), the whole empty cube of radius empty[cell] - 1 cells around the
        // cell is skipped: every lattice point inside lies in an empty cell of every cascade, so no sample changes.
        float t_target;
        if (empty && cell >= 0 && empty[cell] > 1) {
            t_target = t + distance_to_cube_face(px, py, pz, dx, dy, dz, ix, iy, iz,
                                                 pow2i(-mip) * (float)NERF_GRID_SIZE,
                                                 pow2i(mip) * (1.0f / NERF_GRID_SIZE), (float)empty[cell]);
        } else {
            t_target = t + distance_to_next_voxel(px, py, pz, dx, dy, dz, ix, iy, iz, mip);
        }
        if (!advance_on_lattice(t, t_target, cone_angle, min_dt, dt_max)) break;
    }
    return n;
}

extern "C" __global__ void march_rays_count(const float* __restrict__ origins, const float* __restrict__ directions,
                                            const float* __restrict__ jitter, const float* __restrict__ t_start,
                                            const unsigned char* __restrict__ occupancy, const unsigned int n_rays,
                                            const int cascades, const float lo, const float hi,
                                            const float cone_angle, const float near_distance, const float min_dt,
                                            const float dt_max, const int max_samples,
                                            const long long* __restrict__ n_active,
                                            const unsigned char* __restrict__ empty, int* __restrict__ counts) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rays) return;
    if (n_active && (long long)r >= n_active[0]) {
        counts[r] = 0;
        return;
    }
    counts[r] = march<false>(origins, directions, jitter, t_start, occupancy, empty, r, cascades - 1, lo, hi,
                             cone_angle, near_distance, min_dt, dt_max, max_samples, 0, 0, nullptr, nullptr, nullptr,
                             nullptr);
}

extern "C" __global__ void march_rays_write(const float* __restrict__ origins, const float* __restrict__ directions,
                                            const float* __restrict__ jitter, const float* __restrict__ t_start,
                                            const unsigned char* __restrict__ occupancy, const unsigned int n_rays,
                                            const int cascades, const float lo, const float hi,
                                            const float cone_angle, const float near_distance, const float min_dt,
                                            const float dt_max, const int max_samples,
                                            const long long* __restrict__ offsets, const long long buffer_capacity,
                                            float* __restrict__ positions, float* __restrict__ dts,
                                            float* __restrict__ ts, long long* __restrict__ ray_index,
                                            const unsigned char* __restrict__ empty) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rays) return;
    const long long begin = offsets[r];
    const long long capacity = offsets[r + 1] - begin;
    if (capacity <= 0 || offsets[r + 1] > buffer_capacity) return;
    march<true>(origins, directions, jitter, t_start, occupancy, empty, r, cascades - 1, lo, hi, cone_angle,
                near_distance, min_dt, dt_max, max_samples, begin, capacity, positions, dts, ts, ray_index);
}

// Rendering's one-pass marching (small max_samples, no capacity): ray r writes its samples to its own slots
// [r * max_samples, r * max_samples + counts[r]) of slot buffers, then compact_samples packs them at offsets[r] (the
// exclusive cumsum of counts, on the device with torch). The same samples in the same order as count + write, with
// one march instead of two; the slot buffers hold n_rays * max_samples rows.
extern "C" __global__ void march_rays_slots(const float* __restrict__ origins, const float* __restrict__ directions,
                                            const float* __restrict__ jitter, const float* __restrict__ t_start,
                                            const unsigned char* __restrict__ occupancy, const unsigned int n_rays,
                                            const int cascades, const float lo, const float hi,
                                            const float cone_angle, const float near_distance, const float min_dt,
                                            const float dt_max, const int max_samples,
                                            const unsigned char* __restrict__ empty, int* __restrict__ counts,
                                            float* __restrict__ slot_positions, float* __restrict__ slot_dts,
                                            float* __restrict__ slot_ts) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rays) return;
    counts[r] = march<true>(origins, directions, jitter, t_start, occupancy, empty, r, cascades - 1, lo, hi,
                            cone_angle, near_distance, min_dt, dt_max, max_samples, (long long)r * max_samples,
                            max_samples, slot_positions, slot_dts, slot_ts, nullptr);
}

// Packs ray r's slots (march_rays_slots) to rows [offsets[r], offsets[r + 1]) of the outputs, with ray_index = r;
// at most max_samples rows per ray, and never past n_samples.
extern "C" __global__ void compact_samples(const long long* __restrict__ offsets, const unsigned int n_rays,
                                           const int max_samples, const long long n_samples,
                                           const float* __restrict__ slot_positions,
                                           const float* __restrict__ slot_dts, const float* __restrict__ slot_ts,
                                           float* __restrict__ positions, float* __restrict__ dts,
                                           float* __restrict__ ts, long long* __restrict__ ray_index) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rays) return;
    const long long begin = min(max(offsets[r], 0LL), n_samples);
    const long long end = min(min(max(offsets[r + 1], begin), n_samples), begin + (long long)max_samples);
    const long long src = (long long)r * max_samples;
    for (long long j = 0; j < end - begin; ++j) {
        const long long s = begin + j, k = src + j;
        positions[3 * s] = slot_positions[3 * k];
        positions[3 * s + 1] = slot_positions[3 * k + 1];
        positions[3 * s + 2] = slot_positions[3 * k + 2];
        dts[s] = slot_dts[k];
        ts[s] = slot_ts[k];
        ray_index[s] = (long long)r;
    }
}

// Samples [begin, end) of ray r, clamped to [0, n_samples): malformed offsets never index out of bounds.
__device__ __forceinline__ void ray_range(const long long* __restrict__ offsets, unsigned int r, long long n_samples,
                                          long long& begin, long long& end) {
    begin = min(max(offsets[r], 0LL), n_samples);
    end = min(max(offsets[r + 1], begin), n_samples);
}

extern "C" __global__ void composite_forward(const float* __restrict__ sigma, const float* __restrict__ rgb,
                                             const float* __restrict__ dts, const long long* __restrict__ offsets,
                                             const unsigned int n_rays, const long long n_samples,
                                             const float min_transmittance,
                                             float* __restrict__ colour, float* __restrict__ opacity,
                                             int* __restrict__ n_used) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rays) return;
    long long begin, end;
    ray_range(offsets, r, n_samples, begin, end);
    float sum = 0.0f, comp = 0.0f;  // sum_{k<j} tau_k
    float cr = 0.0f, cg = 0.0f, cb = 0.0f, op = 0.0f;
    long long j = begin;
    for (; j < end; ++j) {
        const float T = expf(-sum);
        if (!(T >= min_transmittance)) break;
        const float tau = mul_rn(sigma[j], dts[j]);
        const float w = T * (1.0f - expf(-tau));
        cr += w * rgb[3 * j];
        cg += w * rgb[3 * j + 1];
        cb += w * rgb[3 * j + 2];
        op += w;
        kahan_add(sum, comp, tau);
    }
    colour[3 * r] = cr;
    colour[3 * r + 1] = cg;
    colour[3 * r + 2] = cb;
    opacity[r] = op;
    n_used[r] = (int)(j - begin);
}

extern "C" __global__ void composite_backward(const float* __restrict__ sigma, const float* __restrict__ rgb,
                                              const float* __restrict__ dts, const long long* __restrict__ offsets,
                                              const int* __restrict__ n_used, const float* __restrict__ colour,
                                              const float* __restrict__ opacity,
                                              const float* __restrict__ grad_colour,
                                              const float* __restrict__ grad_opacity, const unsigned int n_rays,
                                              const long long n_samples, float* __restrict__ grad_sigma,
                                              float* __restrict__ grad_rgb) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rays) return;
    long long begin, end;
    ray_range(offsets, r, n_samples, begin, end);
    const long long used_end = min(begin + (long long)n_used[r], end);
    const float gr = grad_colour[3 * r], gg = grad_colour[3 * r + 1], gb = grad_colour[3 * r + 2];
    const float go = grad_opacity[r];
    const float Cr = colour[3 * r], Cg = colour[3 * r + 1], Cb = colour[3 * r + 2], O = opacity[r];
    float sum = 0.0f, comp = 0.0f;
    float pr = 0.0f, pg = 0.0f, pb = 0.0f, po = 0.0f;  // prefix sums of w c and w, up to and including j
    long long j = begin;
    for (; j < used_end; ++j) {
        const float T = expf(-sum);
        const float tau = mul_rn(sigma[j], dts[j]);
        const float e = expf(-tau);
        const float w = T * (1.0f - e);
        const float c0 = rgb[3 * j], c1 = rgb[3 * j + 1], c2 = rgb[3 * j + 2];
        pr += w * c0;
        pg += w * c1;
        pb += w * c2;
        po += w;
        const float T_next = T * e;
        const float dtau = gr * (T_next * c0 - (Cr - pr)) + gg * (T_next * c1 - (Cg - pg)) +
                           gb * (T_next * c2 - (Cb - pb)) + go * (T_next - (O - po));
        grad_sigma[j] = dtau * dts[j];
        grad_rgb[3 * j] = w * gr;
        grad_rgb[3 * j + 1] = w * gg;
        grad_rgb[3 * j + 2] = w * gb;
        kahan_add(sum, comp, tau);
    }
    for (; j < end; ++j) {
        grad_sigma[j] = 0.0f;
        grad_rgb[3 * j] = 0.0f;
        grad_rgb[3 * j + 1] = 0.0f;
        grad_rgb[3 * j + 2] = 0.0f;
    }
}

extern "C" __global__ void occupancy_splat(const long long* __restrict__ idx, const float* __restrict__ thickness,
                                           const unsigned int n_samples, const unsigned int n_cells,
                                           const unsigned int per_thread, float* __restrict__ splat) {
    const unsigned long long first = (unsigned long long)(blockIdx.x * blockDim.x + threadIdx.x) * per_thread;
    const unsigned long long last = first + per_thread < n_samples ? first + per_thread : n_samples;
    for (unsigned long long i = first; i < last; ++i) {
        const long long cell = idx[i];
        if (cell < 0 || cell >= (long long)n_cells) continue;
        float v = thickness[i];
        v = v != v ? 0.0f : fminf(fmaxf(v, -NERF_FLT_MAX), NERF_FLT_MAX);
        atomicMax(reinterpret_cast<int*>(splat + cell), __float_as_int(v));
    }
}

extern "C" __global__ void occupancy_ema(float* __restrict__ density, const float* __restrict__ splat,
                                         const unsigned int n_cells, const unsigned int per_thread,
                                         const float decay) {
    const unsigned long long first = (unsigned long long)(blockIdx.x * blockDim.x + threadIdx.x) * per_thread;
    const unsigned long long last = first + per_thread < n_cells ? first + per_thread : n_cells;
    for (unsigned long long i = first; i < last; ++i) {
        const float old = density[i];
        const float decayed = old * decay;
        const float s = splat[i];
        // torch.maximum propagates NaN; splat never holds NaN.
        const float updated = decayed != decayed ? decayed : fmaxf(decayed, s);
        density[i] = old < 0.0f ? old : updated;
    }
}

extern "C" __global__ void occupancy_bits(const float* __restrict__ density, const float* __restrict__ mean,
                                          const unsigned int n_cells, const unsigned int per_thread,
                                          const float threshold, unsigned char* __restrict__ occupancy) {
    const unsigned long long first = (unsigned long long)(blockIdx.x * blockDim.x + threadIdx.x) * per_thread;
    const unsigned long long last = first + per_thread < n_cells ? first + per_thread : n_cells;
    const float thr = fminf(threshold, mean[0]);  // Python's min(threshold, nan) is threshold, as fminf
    for (unsigned long long i = first; i < last; ++i) occupancy[i] = density[i] > thr ? 1 : 0;
}

// Cell math of occupancy-grid ray marching shared by the volume-rendering kernels (nerf.cu, baked.cu), after
// instant-ngp's src/testbed_nerf.cu; the torch twins are in ngp_cli/volrend/grid.py and ngp_cli/volrend/march.py.
//
// Frame and grid (volrend/grid.py): the scene box is [lo, hi]^3 = [0.5 - s/2, 0.5 + s/2]^3 (s = aabb_scale); cascade k
// covers [0.5 - 2^(k-1), 0.5 + 2^(k-1)]^3 with 128^3 cells, flat cell index k*128^3 + x + 128*(y + 128*z).
//
// Include after common.cuh. Everything here is a __device__ __forceinline__ function or a macro.
#pragma once

#define NERF_GRID_SIZE 128
#define NERF_GRID_CELLS (NERF_GRID_SIZE * NERF_GRID_SIZE * NERF_GRID_SIZE)

// a * b rounded on its own: never contracted into an FMA with a following add.
__device__ __forceinline__ float mul_rn(float a, float b) {
#ifdef NGP_CPU
    float r = a * b;
#if defined(__x86_64__) || defined(__i386__)
    __asm__("" : "+x"(r));  // opaque to the optimiser: the product is materialised in a register
#elif defined(__aarch64__)
    __asm__("" : "+w"(r));
#else
    volatile float v = r;
    r = v;
#endif
    return r;
#else
    return __fmul_rn(a, b);
#endif
}

// fminf / fmaxf with their IEEE semantics (a NaN operand yields the other one), inlined: the CPU build's host compiler
// calls libm for fminf / fmaxf unless it may assume finite math; on the GPU they are fminf / fmaxf.
__device__ __forceinline__ float vr_fminf(float a, float b) {
#ifdef NGP_CPU
    return (a < b || b != b) ? a : b;
#else
    return fminf(a, b);
#endif
}
__device__ __forceinline__ float vr_fmaxf(float a, float b) {
#ifdef NGP_CPU
    return (a > b || b != b) ? a : b;
#else
    return fmaxf(a, b);
#endif
}

// Slab test of the ray o + t d (i = 1/d per axis) against the box [lo, hi]^3: the entry and exit distances. The
// min/max skip the NaNs of 0 * inf (zero direction components), as torch.fmin/fmax do in the references.
__device__ __forceinline__ void ray_box(float ox, float oy, float oz, float ix, float iy, float iz, float lo, float hi,
                                       float& t_near, float& t_far) {
    const float ax = (lo - ox) * ix, bx = (hi - ox) * ix;
    const float ay = (lo - oy) * iy, by = (hi - oy) * iy;
    const float az = (lo - oz) * iz, bz = (hi - oz) * iz;
    t_near = vr_fmaxf(vr_fmaxf(vr_fminf(ax, bx), vr_fminf(ay, by)), vr_fminf(az, bz));
    t_far = vr_fminf(vr_fminf(vr_fmaxf(ax, bx), vr_fmaxf(ay, by)), vr_fmaxf(az, bz));
}

// 2^k for k in [-126, 127], exactly: ldexpf(1.0f, k) without the library call (the CPU build calls libm for it).
__device__ __forceinline__ float pow2i(int k) { return __int_as_float((127 + k) << 23); }

__device__ __forceinline__ float calc_dt(float t, float cone_angle, float min_dt, float dt_max) {
    return vr_fminf(vr_fmaxf(t * cone_angle, min_dt), dt_max);
}

// frexpf's exponent (x = m 2^e, 0.5 <= |m| < 1). The CPU build reads it from the bits of a normal float, where glibc
// would be a library call on every marching step (~5 % of a render's marching, perf); zero, subnormals, inf and NaN
// still go to frexpf.
__device__ __forceinline__ int frexp_exponent(float x) {
#ifdef NGP_CPU
    const int biased = (__float_as_int(x) >> 23) & 0xff;
    if (biased != 0 && biased != 0xff) return biased - 126;
#endif
    int e;
    frexpf(x, &e);
    return e;
}

// Cascade of a step: at least the cascade holding pos (smallest k with max|pos - 0.5| < 2^(k-1)), and coarse
// enough that a step spans at most about two cells; at most max_cascade.
__device__ __forceinline__ int mip_from_dt(float dt, float px, float py, float pz, int max_cascade) {
    const float maxval = vr_fmaxf(vr_fmaxf(fabsf(px - 0.5f), fabsf(py - 0.5f)), fabsf(pz - 0.5f));
    const int mip = min(max(frexp_exponent(maxval) + 1, 0), max_cascade);
    const float scaled = dt * (float)(2 * NERF_GRID_SIZE);
    if (scaled < 1.0f) return mip;
    return min(max_cascade, max(frexp_exponent(scaled), mip));
}

// Flat cell index of pos in cascade mip, or -1 outside that cascade.
__device__ __forceinline__ int cell_index(float px, float py, float pz, int mip) {
    const float scale = pow2i(-mip);
    const float fx = floorf(((px - 0.5f) * scale + 0.5f) * (float)NERF_GRID_SIZE);
    const float fy = floorf(((py - 0.5f) * scale + 0.5f) * (float)NERF_GRID_SIZE);
    const float fz = floorf(((pz - 0.5f) * scale + 0.5f) * (float)NERF_GRID_SIZE);
    const float hi = (float)NERF_GRID_SIZE;
    if (!(fx >= 0.0f && fx < hi && fy >= 0.0f && fy < hi && fz >= 0.0f && fz < hi)) return -1;
    return mip * NERF_GRID_CELLS + (int)fx + NERF_GRID_SIZE * ((int)fy + NERF_GRID_SIZE * (int)fz);
}

// instant-ngp's sign(): copysign, so a zero component (+0 or -0) still points to a cell face.
__device__ __forceinline__ float sign_of(float x) { return copysignf(1.0f, x); }

// Distance along the ray from pos to the far face of its cell of a grid of `res` cells per unit length centred on
// 0.5 (faces at 0.5 + k/res), >= 0 (NaN kept, as torch.clamp_min keeps it). ix, iy, iz: 1/d.
__device__ __forceinline__ float distance_to_next_face(float px, float py, float pz, float dx, float dy, float dz,
                                                       float ix, float iy, float iz, float res) {
    const float qx = res * (px - 0.5f), qy = res * (py - 0.5f), qz = res * (pz - 0.5f);
    const float tx = (floorf(qx + 0.5f + 0.5f * sign_of(dx)) - qx) * ix;
    const float ty = (floorf(qy + 0.5f + 0.5f * sign_of(dy)) - qy) * iy;
    const float tz = (floorf(qz + 0.5f + 0.5f * sign_of(dz)) - qz) * iz;
    const float t = vr_fminf(vr_fminf(tx, ty), tz) / res;
    return t != t ? t : vr_fmaxf(t, 0.0f);  // torch.clamp_min keeps NaN
}

// Distance along the ray from pos to where it leaves the cube of (2r - 1)^3 cells around pos's cell (radius r - 1;
// r = 1: the cell itself, as distance_to_next_face) of a grid of `res` cells per unit length centred on 0.5, >= 0
// (NaN kept). The exit face along an axis is floor(q) + r for a direction of sign +1, floor(q) + 1 - r for -1, q the
// position in cells (for r = 1 exactly distance_to_next_face's faces: floor(q + 1) and floor(q)). inv_res = 1/res.
__device__ __forceinline__ float distance_to_cube_face(float px, float py, float pz, float dx, float dy, float dz,
                                                       float ix, float iy, float iz, float res, float inv_res,
                                                       float r) {
    const float qx = res * (px - 0.5f), qy = res * (py - 0.5f), qz = res * (pz - 0.5f);
    const float tx = (floorf(qx) + (sign_of(dx) > 0.0f ? r : 1.0f - r) - qx) * ix;
    const float ty = (floorf(qy) + (sign_of(dy) > 0.0f ? r : 1.0f - r) - qy) * iy;
    const float tz = (floorf(qz) + (sign_of(dz) > 0.0f ? r : 1.0f - r) - qz) * iz;
    const float t = vr_fminf(vr_fminf(tx, ty), tz) * inv_res;
    return t != t ? t : vr_fmaxf(t, 0.0f);
}

// Distance along the ray from pos to the far face of its cell of cascade mip (DDA step), >= 0.
__device__ __forceinline__ float distance_to_next_voxel(float px, float py, float pz, float dx, float dy, float dz,
                                                        float ix, float iy, float iz, int mip) {
    return distance_to_next_face(px, py, pz, dx, dy, dz, ix, iy, iz, pow2i(-mip) * (float)NERF_GRID_SIZE);
}

// Kahan summation step: sum + x with the rounding error carried in comp.
__device__ __forceinline__ void kahan_add(float& sum, float& comp, float x) {
    const float y = x - comp;
    const float s = sum + y;
    comp = (s - sum) - y;
    sum = s;
}

// Advances t along the marching step lattice, t <- t + calc_dt(t) one step at a time as march_rays_reference does,
// to the first lattice point >= t_target, taking at least one step (the empty-space skip of advance_to_next_voxel).
// Returns false when a step cannot advance t (t + dt == t: the ray ends, as in the march kernels).
//
// Runs of steps of one constant dt inside one binade [2^(e-1), 2^e) of t are taken at once, and exactly: there
// every float is a multiple of u = 2^(e-24), so fl(t + dt) = t + delta for one delta = fl(t0 + dt) - t0 common to
// the whole binade (dt's part below u always rounds the same way), unless dt / u ends in exactly .5 (a tie, rounded
// to even: the steps alternate, and are taken one by one); n steps then add n * delta, exactly, while t stays in the
// binade. dt is constant over a run when cone_angle is 0, when t * cone_angle is past dt_max, or when it stays
// below min_dt up to the run's end. The result is bit for bit the one-step loop's, in O(binades) instead of
// O(steps): a long empty stretch costs a few integer divisions.
__device__ __forceinline__ bool advance_on_lattice(float& t, const float t_target, const float cone_angle,
                                                   const float min_dt, const float dt_max) {
    do {
        const float dt = calc_dt(t, cone_angle, min_dt, dt_max);
        const float next = t + dt;
        if (!(next > t)) return false;
        if (next < t_target && t >= 1.0e-20f && t < 1.0e30f) {  // two steps or more to go (NaN target: one)
            const int e = ((__float_as_int(t) >> 23) & 0xff) - 126;  // t in [2^(e-1), 2^e): t is normal here
            const float top = pow2i(e);
            const float end = vr_fminf(t_target, top);
            const bool constant = cone_angle == 0.0f || t * cone_angle >= dt_max || end * cone_angle <= min_dt;
            const float inv_u = pow2i(24 - e);  // 1/u, u = 2^(e-24) the spacing of the floats in the binade
            const float q = dt * inv_u;         // dt / u, exact (a power-of-two scaling)
            if (constant && next < top && q - floorf(q) != 0.5f) {
                const float delta = next - t;             // a multiple of u: exact
                const int D = (int)(delta * inv_u);       // >= 1
                const int A = (int)((top - t) * inv_u);   // n steps stay in the binade while n * D < A
                int n = (A - 1) / D;                      // >= 1, since next < top
                if (t_target < top) {                     // t_target in the binade too: a multiple of u
                    const int B = (int)((t_target - t) * inv_u);
                    n = min(n, (B + D - 1) / D);          // the fewest steps reaching t_target
                }
                t = t + (float)n * delta;                 // exact: n * delta < top - t, both multiples of u
                continue;
            }
        }
        t = next;
    } while (t < t_target);
    return true;
}

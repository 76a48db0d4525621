// Triangle-mesh queries over a bounding-volume hierarchy: closest point (unsigned distance), fast generalized winding
// number (inside/outside, also for open meshes) and ray casting. The launches are in ngp_cli/cuda/mesh.py; the BVH is
// built on the host by ngp_cli/mesh/bvh.py, whose torch references (brute force over every triangle) these kernels
// are tested against.
//
// BVH layout (implicit complete binary tree, heap order): P = n_leaves is a power of two, node i has children 2i+1
// and 2i+2, nodes P-1 .. 2P-2 are the leaves, leaf j = node P-1+j owns the triangles leaf_first[j] .. leaf_first[j+1]
// (at least one each) of `tris`, stored Morton-sorted as (n_tris, 9) float32 = v0, v1, v2; tri_ids maps them back
// to the caller's face indices. Per node: box_lo/box_hi (n_nodes, 3) bound its triangles; dipole data for the winding
// number: centre (n_nodes, 3) = area-weighted centroid, normal (n_nodes, 3) = sum of area-weighted normals
// (0.5 (v1-v0) x (v2-v0)), radius (n_nodes,) = largest distance from the centre to a vertex below the node.
//
// 1. mesh_closest_point, one thread per query (Ericson, "Real-Time Collision Detection" §5.1.5, ClosestPtPointTriangle):
//    depth-first, nearer child first, a node is skipped when its box is no nearer than the best squared distance
//    found so far (initially max_distance^2). Writes distance (sqrt of the best squared distance, or max_distance),
//    face (the caller's index, or -1 when nothing is within max_distance), the closest point (the query itself
//    when no face is found) and the closest feature of that face (0 interior, 1-3 vertex a/b/c, 4-6 edge ab/ac/bc,
//    -1 without a face), from which the caller takes the sign through angle-weighted pseudonormals (closed meshes).
// 2. mesh_winding_number, one thread per query (Barill et al. 2018, "Fast Winding Numbers for Soups and Clouds",
//    first-order far field): w(p) = sum over nodes of the cut: a node whose centre is farther than beta * radius
//    contributes its dipole (c - p) . N / (4 pi |c - p|^3); a leaf that is near is summed exactly with the solid angle
//    of each triangle (Van Oosterom & Strackee 1983): Omega = 2 atan2(a . (b x c), |a||b||c| + (a.b)|c| + (b.c)|a| +
//    (c.a)|b|), a, b, c the vertices relative to p; w = Omega / (4 pi). Outward-facing (counter-clockwise seen from
//    outside) closed meshes give w = 1 inside and 0 outside. beta = +inf gives the exact sum.
// 3. mesh_raycast, one thread per ray (Moller-Trumbore, two-sided): the nearest hit with t_min < t < t_max; nodes are
//    visited nearer-entry first and skipped when their slab entry is beyond the best hit. Writes t (t_max when there
//    is no hit) and face (-1 when there is no hit).
//
// The stack holds 64 nodes: a depth-first traversal of a tree of depth D <= 31 never holds more than D + 1.
#include "common.cuh"

#define MESH_STACK 64
#define MESH_INV_4PI 0.07957747154594767f

struct mesh_v3 {
    float x, y, z;
};

__device__ __forceinline__ mesh_v3 v3_load(const float* __restrict__ p) { return mesh_v3{p[0], p[1], p[2]}; }
__device__ __forceinline__ mesh_v3 v3_sub(mesh_v3 a, mesh_v3 b) { return mesh_v3{a.x - b.x, a.y - b.y, a.z - b.z}; }
__device__ __forceinline__ mesh_v3 v3_add(mesh_v3 a, mesh_v3 b) { return mesh_v3{a.x + b.x, a.y + b.y, a.z + b.z}; }
__device__ __forceinline__ mesh_v3 v3_scale(mesh_v3 a, float s) { return mesh_v3{a.x * s, a.y * s, a.z * s}; }
__device__ __forceinline__ float v3_dot(mesh_v3 a, mesh_v3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
__device__ __forceinline__ mesh_v3 v3_cross(mesh_v3 a, mesh_v3 b) {
    return mesh_v3{a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}

// Squared distance from p to the box [lo, hi] (0 inside).
__device__ __forceinline__ float box_distance2(const float* __restrict__ lo, const float* __restrict__ hi, mesh_v3 p) {
    const float dx = fmaxf(fmaxf(lo[0] - p.x, p.x - hi[0]), 0.0f);
    const float dy = fmaxf(fmaxf(lo[1] - p.y, p.y - hi[1]), 0.0f);
    const float dz = fmaxf(fmaxf(lo[2] - p.z, p.z - hi[2]), 0.0f);
    return dx * dx + dy * dy + dz * dz;
}

// Closest point to p on triangle (a, b, c), by Voronoi region (Ericson §5.1.5). `feature` receives the region: 0 the
// face's interior, 1/2/3 the vertex a/b/c, 4/5/6 the edge ab/ac/bc (a degenerate triangle reports vertex a).
__device__ __forceinline__ mesh_v3 closest_on_triangle(mesh_v3 p, mesh_v3 a, mesh_v3 b, mesh_v3 c, int& feature) {
    const mesh_v3 ab = v3_sub(b, a), ac = v3_sub(c, a), ap = v3_sub(p, a);
    const float d1 = v3_dot(ab, ap), d2 = v3_dot(ac, ap);
    feature = 1;
    if (d1 <= 0.0f && d2 <= 0.0f) return a;
    const mesh_v3 bp = v3_sub(p, b);
    const float d3 = v3_dot(ab, bp), d4 = v3_dot(ac, bp);
    feature = 2;
    if (d3 >= 0.0f && d4 <= d3) return b;
    const float vc = d1 * d4 - d3 * d2;
    feature = 4;
    if (vc <= 0.0f && d1 >= 0.0f && d3 <= 0.0f) return v3_add(a, v3_scale(ab, d1 / (d1 - d3)));
    const mesh_v3 cp = v3_sub(p, c);
    const float d5 = v3_dot(ab, cp), d6 = v3_dot(ac, cp);
    feature = 3;
    if (d6 >= 0.0f && d5 <= d6) return c;
    const float vb = d5 * d2 - d1 * d6;
    feature = 5;
    if (vb <= 0.0f && d2 >= 0.0f && d6 <= 0.0f) return v3_add(a, v3_scale(ac, d2 / (d2 - d6)));
    const float va = d3 * d6 - d5 * d4;
    feature = 6;
    if (va <= 0.0f && (d4 - d3) >= 0.0f && (d5 - d6) >= 0.0f)
        return v3_add(b, v3_scale(v3_sub(c, b), (d4 - d3) / ((d4 - d3) + (d5 - d6))));
    const float sum = va + vb + vc;
    feature = 1;
    if (!(sum > 0.0f)) return a;  // degenerate (zero-area) triangle: its edges were handled above
    feature = 0;
    const float denom = 1.0f / sum;
    return v3_add(a, v3_add(v3_scale(ab, vb * denom), v3_scale(ac, vc * denom)));
}

// Nearest-first depth-first traversal of the implicit BVH, shared by the closest-point and ray-cast kernels.
// key(node) is the node box's lower bound on what it can hold (squared distance to the query, slab entry t of the
// ray), +inf when nothing; visit(t) tests triangle t and may lower `best` (a reference the visitor also updates).
// A node is pushed, and examined when popped, only while its key is below `best`; of two children the nearer is
// popped first.
template <typename Key, typename Visit>
__device__ __forceinline__ void bvh_nearest_first(const int* __restrict__ leaf_first, const int n_leaves,
                                                  const float& best, Key key, Visit visit) {
    int stack[MESH_STACK];
    float stack_key[MESH_STACK];
    int top = 0;
    const float root_key = key(0);
    if (root_key < best) {
        stack[0] = 0;
        stack_key[0] = root_key;
        top = 1;
    }
    const int first_leaf = n_leaves - 1;
    while (top > 0) {
        --top;
        const int node = stack[top];
        if (!(stack_key[top] < best)) continue;
        if (node >= first_leaf) {
            const int leaf = node - first_leaf;
            for (int t = leaf_first[leaf]; t < leaf_first[leaf + 1]; ++t) visit(t);
            continue;
        }
        const int l = 2 * node + 1, r = 2 * node + 2;
        const float kl = key(l), kr = key(r);
        const bool left_first = kl <= kr;
        const int near = left_first ? l : r, far = left_first ? r : l;
        const float kn = left_first ? kl : kr, kf = left_first ? kr : kl;
        if (kf < best) {  // pushed first, popped after the nearer child
            stack[top] = far;
            stack_key[top] = kf;
            ++top;
        }
        if (kn < best) {
            stack[top] = near;
            stack_key[top] = kn;
            ++top;
        }
    }
}

extern "C" __global__ void mesh_closest_point(const float* __restrict__ queries, const unsigned int n_queries,
                                              const float* __restrict__ box_lo, const float* __restrict__ box_hi,
                                              const int* __restrict__ leaf_first, const float* __restrict__ tris,
                                              const int* __restrict__ tri_ids, const int n_leaves,
                                              const float max_distance, float* __restrict__ distance,
                                              int* __restrict__ face, float* __restrict__ closest,
                                              int* __restrict__ feature) {
    const unsigned int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= n_queries) return;
    const mesh_v3 p = v3_load(queries + 3 * (size_t)q);
    float best2 = max_distance * max_distance;
    int best_tri = -1, best_feature = -1;
    mesh_v3 best_point = p;
    bvh_nearest_first(
        leaf_first, n_leaves, best2,
        [&](int node) { return box_distance2(box_lo + 3 * (size_t)node, box_hi + 3 * (size_t)node, p); },
        [&](int t) {
            const float* v = tris + 9 * (size_t)t;
            int region;
            const mesh_v3 c = closest_on_triangle(p, v3_load(v), v3_load(v + 3), v3_load(v + 6), region);
            const mesh_v3 d = v3_sub(c, p);
            const float d2 = v3_dot(d, d);
            if (d2 < best2) {
                best2 = d2;
                best_tri = t;
                best_feature = region;
                best_point = c;
            }
        });
    distance[q] = best_tri >= 0 ? sqrtf(best2) : max_distance;
    face[q] = best_tri >= 0 ? tri_ids[best_tri] : -1;
    feature[q] = best_feature;
    closest[3 * (size_t)q] = best_point.x;
    closest[3 * (size_t)q + 1] = best_point.y;
    closest[3 * (size_t)q + 2] = best_point.z;
}

// Solid angle of triangle (a, b, c) seen from p, divided by 4 pi (Van Oosterom & Strackee).
__device__ __forceinline__ float triangle_winding(mesh_v3 p, mesh_v3 a, mesh_v3 b, mesh_v3 c) {
    a = v3_sub(a, p);
    b = v3_sub(b, p);
    c = v3_sub(c, p);
    const float la = sqrtf(v3_dot(a, a)), lb = sqrtf(v3_dot(b, b)), lc = sqrtf(v3_dot(c, c));
    const float det = v3_dot(a, v3_cross(b, c));
    const float den = la * lb * lc + v3_dot(a, b) * lc + v3_dot(b, c) * la + v3_dot(c, a) * lb;
    return 2.0f * atan2f(det, den) * MESH_INV_4PI;
}

extern "C" __global__ void mesh_winding_number(const float* __restrict__ queries, const unsigned int n_queries,
                                               const float* __restrict__ centre, const float* __restrict__ normal,
                                               const float* __restrict__ radius, const int* __restrict__ leaf_first,
                                               const float* __restrict__ tris, const int n_leaves, const float beta,
                                               float* __restrict__ winding) {
    const unsigned int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= n_queries) return;
    const mesh_v3 p = v3_load(queries + 3 * (size_t)q);
    const float beta2 = beta * beta;
    double w = 0.0;  // hundreds of terms of either sign: summed in double
    int stack[MESH_STACK];
    int top = 1;
    stack[0] = 0;
    const int first_leaf = n_leaves - 1;
    while (top > 0) {
        const int node = stack[--top];
        const mesh_v3 d = v3_sub(v3_load(centre + 3 * (size_t)node), p);
        const float dist2 = v3_dot(d, d);
        const float r = radius[node];
        if (dist2 > beta2 * r * r) {  // far field: the node's dipole
            const float inv = 1.0f / sqrtf(dist2);
            w += (double)(v3_dot(d, v3_load(normal + 3 * (size_t)node)) * inv * inv * inv * MESH_INV_4PI);
            continue;
        }
        if (node >= first_leaf) {
            const int leaf = node - first_leaf;
            for (int t = leaf_first[leaf]; t < leaf_first[leaf + 1]; ++t) {
                const float* v = tris + 9 * (size_t)t;
                w += (double)triangle_winding(p, v3_load(v), v3_load(v + 3), v3_load(v + 6));
            }
            continue;
        }
        stack[top++] = 2 * node + 2;
        stack[top++] = 2 * node + 1;
    }
    winding[q] = (float)w;
}

// Entry distance of the ray into the box [lo, hi] (slab test), or +inf when it misses within (t_min, t_max).
__device__ __forceinline__ float box_entry(const float* __restrict__ lo, const float* __restrict__ hi, mesh_v3 o,
                                           mesh_v3 inv_d, float t_min, float t_max) {
    float t0 = (lo[0] - o.x) * inv_d.x, t1 = (hi[0] - o.x) * inv_d.x;
    float tn = fminf(t0, t1), tf = fmaxf(t0, t1);
    t0 = (lo[1] - o.y) * inv_d.y;
    t1 = (hi[1] - o.y) * inv_d.y;
    tn = fmaxf(tn, fminf(t0, t1));
    tf = fminf(tf, fmaxf(t0, t1));
    t0 = (lo[2] - o.z) * inv_d.z;
    t1 = (hi[2] - o.z) * inv_d.z;
    tn = fmaxf(tn, fminf(t0, t1));
    tf = fminf(tf, fmaxf(t0, t1));
    tn = fmaxf(tn, t_min);
    tf = fminf(tf, t_max);
    return tn <= tf ? tn : ngp_inf_f();
}

extern "C" __global__ void mesh_raycast(const float* __restrict__ origins, const float* __restrict__ directions,
                                        const unsigned int n_rays, const float* __restrict__ box_lo,
                                        const float* __restrict__ box_hi, const int* __restrict__ leaf_first,
                                        const float* __restrict__ tris, const int* __restrict__ tri_ids,
                                        const int n_leaves, const float t_min, const float t_max,
                                        float* __restrict__ t_hit, int* __restrict__ face) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rays) return;
    const mesh_v3 o = v3_load(origins + 3 * (size_t)r);
    const mesh_v3 d = v3_load(directions + 3 * (size_t)r);
    const mesh_v3 inv_d = mesh_v3{1.0f / d.x, 1.0f / d.y, 1.0f / d.z};  // +-inf for zero components: slabs still work
    float best = t_max;
    int best_tri = -1;
    bvh_nearest_first(
        leaf_first, n_leaves, best,
        [&](int node) {
            return box_entry(box_lo + 3 * (size_t)node, box_hi + 3 * (size_t)node, o, inv_d, t_min, best);
        },
        [&](int t) {
            const float* v = tris + 9 * (size_t)t;
            const mesh_v3 a = v3_load(v);
            const mesh_v3 e1 = v3_sub(v3_load(v + 3), a), e2 = v3_sub(v3_load(v + 6), a);
            const mesh_v3 pv = v3_cross(d, e2);
            const float det = v3_dot(e1, pv);
            if (det == 0.0f) return;
            const float inv_det = 1.0f / det;
            const mesh_v3 tv = v3_sub(o, a);
            const float u = v3_dot(tv, pv) * inv_det;
            if (u < 0.0f || u > 1.0f) return;
            const mesh_v3 qv = v3_cross(tv, e1);
            const float w = v3_dot(d, qv) * inv_det;
            if (w < 0.0f || u + w > 1.0f) return;
            const float th = v3_dot(e2, qv) * inv_det;
            if (th > t_min && th < best) {
                best = th;
                best_tri = t;
            }
        });
    t_hit[r] = best;
    face[r] = best_tri >= 0 ? tri_ids[best_tri] : -1;
}

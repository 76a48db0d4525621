"""Exact geometric queries on a triangle mesh: closest point (unsigned distance), generalized winding number (inside
or outside, also for open meshes), signed distance and ray casting, through a bounding-volume hierarchy.

The queries run as the kernels of ``ngp_cli/cuda/mesh.cu`` (``cpu`` and ``cuda`` targets); the brute-force torch
functions at the bottom of this module (every query against every triangle, in float64) are their references.

Conventions: positions are float32 in the caller's frame (the SDF task uses the unit cube); the signed distance is
negative inside, where the winding number exceeds 1/2 (instant-ngp's convention), which is the exact inside test for
closed, consistently oriented meshes and the robust one of Jacobson et al. 2013 ("Robust Inside-Outside Segmentation
using Generalized Winding Numbers") for open ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

LEAF_SIZE = 4  # triangles per leaf at most (2 to 4 each: leaves split the Morton order evenly)
WINDING_BETA = 2.0  # far-field criterion of the fast winding number (Barill et al. 2018 use 2)
_REFERENCE_PAIRS = 1 << 21  # query-triangle pairs per chunk of the brute-force references


def _morton_codes(points: np.ndarray) -> np.ndarray:
    """30-bit Morton codes of (N, 3) points, 10 bits per axis over their bounding box."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    q = ((points - lo) / np.maximum(hi - lo, 1e-30) * 1023.0).astype(np.int64).clip(0, 1023)
    code = np.zeros(points.shape[0], dtype=np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((q[:, axis] >> bit) & 1) << (3 * bit + (2 - axis))
    return code


def query_target(device: torch.device) -> str | None:
    """The kernel target for queries on ``device``: "cuda" or "cpu" when it can run there, None for the torch
    references (slow: every query against every triangle)."""
    from ngp_cli.cuda.runtime import cpu_target_available, cuda_target_available

    if device.type == "cuda":
        return "cuda" if cuda_target_available() else None
    if device.type == "cpu":
        return "cpu" if cpu_target_available() else None
    return None


class MeshBVH:
    """A triangle mesh with its BVH, on a torch device.

    Args:
        vertices: (V, 3) float array of positions.
        faces: (F, 3) integer array of vertex indices, F >= 1, counter-clockwise seen from outside.
        device: where the BVH lives and queries run.
        target: kernel target ("cpu"/"cuda"), None for the torch references, or "auto" (:func:`query_target`).

    The tree is an implicit complete binary tree over the triangles sorted by the Morton code of their centroids (the
    layout is described in ``mesh.cu``): building it is a sort and a few reductions (0.1 s for 10^5 triangles).

    Raises:
        ValueError: empty or malformed arrays, face indices out of range, non-finite vertices.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, device: torch.device | str = "cpu",
                 target: str | None = "auto") -> None:
        v = np.asarray(vertices, dtype=np.float64)
        f = np.asarray(faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or f.shape[0] == 0:
            raise ValueError(f"a mesh needs (V, 3) vertices and (F >= 1, 3) faces, got {v.shape} and {f.shape}")
        if f.min() < 0 or f.max() >= v.shape[0]:
            raise ValueError(f"face indices out of range: must be in [0, {v.shape[0]}), got [{f.min()}, {f.max()}]")
        if not np.isfinite(v).all():
            raise ValueError("mesh vertices must be finite")
        self.device = torch.device(device)
        self.target = query_target(self.device) if target == "auto" else target
        tris = v[f]  # (F, 3, 3)
        self.n_faces = f.shape[0]
        self.triangles = torch.from_numpy(tris.astype(np.float32)).to(self.device)
        self.arrays = {k: torch.from_numpy(a).to(self.device) for k, a in _build(tris).items()}
        self._mesh = (v, f)  # for the pseudonormals, built at the first signed_distance
        self._pseudonormals: Tensor | None | bool = False  # False: not decided yet

    # ---- queries ------------------------------------------------------------------------------------------------

    def closest_point(self, points: Tensor, max_distance: float = math.inf) -> tuple[Tensor, Tensor, Tensor]:
        """(N, 3) points → ``(distance (N,) float32, face (N,) int64 or -1, closest point (N, 3) float32)``; only faces
        nearer than ``max_distance`` count."""
        if self.target is None:
            return closest_point_reference(self.triangles, points, max_distance)
        from ngp_cli.cuda.mesh import closest_point

        return closest_point(self.arrays, points, max_distance, self.target)[:3]

    def winding_number(self, points: Tensor, beta: float = WINDING_BETA) -> Tensor:
        """(N, 3) points → (N,) float32 generalized winding numbers (1 inside, 0 outside a closed mesh)."""
        if self.target is None:
            return winding_number_reference(self.triangles, points)
        from ngp_cli.cuda.mesh import winding_number

        return winding_number(self.arrays, points, beta, self.target)

    def contains(self, points: Tensor) -> Tensor:
        """(N, 3) points → (N,) bool, winding number > 1/2."""
        return self.winding_number(points) > 0.5

    @property
    def pseudonormals(self) -> Tensor | None:
        """(F, 7, 3) float32 angle-weighted pseudonormals (:func:`_pseudonormals`) when the mesh is closed and
        consistently oriented and a kernel target runs the queries, else None; computed at first use (a second or so
        per 10^5 faces, and memory for an edge table: meshes only rendered or measured never pay it)."""
        if self._pseudonormals is False:
            v, f = self._mesh
            closed = self.target is not None and _closed_and_oriented(f)
            self._pseudonormals = torch.from_numpy(_pseudonormals(v, f)).to(self.device) if closed else None
        return self._pseudonormals

    def signed_distance(self, points: Tensor) -> Tensor:
        """(N, 3) points → (N,) float32 exact distance to the surface, negative inside.

        Closed, consistently oriented meshes (every edge shared by exactly two faces, in opposite directions) take the
        sign from the angle-weighted pseudonormal of the closest feature (Bærentzen & Aanæs 2005: face, edge or
        vertex), which is exact for them; other meshes from the winding number (:meth:`contains`).
        """
        if self.pseudonormals is None:
            distance, _, _ = self.closest_point(points)
            return torch.where(self.contains(points), -distance, distance)
        from ngp_cli.cuda.mesh import closest_point

        distance, face, closest, feature = closest_point(self.arrays, points, math.inf, self.target)
        normal = self.pseudonormals[face.clamp_min(0), feature.clamp_min(0)]
        inside = ((points.to(closest) - closest) * normal).sum(1) < 0
        return torch.where(inside, -distance, distance)

    def raycast(self, origins: Tensor, directions: Tensor, t_min: float = 0.0, t_max: float = math.inf
                ) -> tuple[Tensor, Tensor]:
        """Nearest hit along each ray: ``(t (R,) float32 — t_max when none —, face (R,) int64 — -1 when none)``."""
        if self.target is None:
            return raycast_reference(self.triangles, origins, directions, t_min, t_max)
        from ngp_cli.cuda.mesh import raycast

        return raycast(self.arrays, origins, directions, t_min, t_max, self.target)


def _closed_and_oriented(faces: np.ndarray) -> bool:
    """Whether every directed edge occurs exactly once and its reverse also occurs: a closed 2-manifold whose faces
    agree on their orientation."""
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    n = int(faces.max()) + 1
    keys = directed[:, 0] * n + directed[:, 1]
    unique = np.unique(keys)
    if unique.size != keys.size:
        return False
    reverse = directed[:, 1] * n + directed[:, 0]
    return bool(np.isin(reverse, unique, assume_unique=False).all())


def _pseudonormals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 7, 3) float32 angle-weighted pseudonormals per face, indexed by the closest-feature code of
    ``mesh_closest_point``: 0 the face normal, 1/2/3 its vertices' (Σ incident angle × face normal), 4/5/6 its edges
    01/02/12 (the sum of the two adjacent face normals). Flipped when the mesh is inside out (negative volume)."""
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    fn = cross / np.maximum(np.linalg.norm(cross, axis=1, keepdims=True), 1e-300)
    out = np.zeros((len(faces), 7, 3))
    out[:, 0] = fn
    vn = np.zeros_like(vertices)
    for k in range(3):
        e1 = tri[:, (k + 1) % 3] - tri[:, k]
        e2 = tri[:, (k + 2) % 3] - tri[:, k]
        cos = (e1 * e2).sum(1) / np.maximum(np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1), 1e-300)
        np.add.at(vn, faces[:, k], np.arccos(np.clip(cos, -1.0, 1.0))[:, None] * fn)
    out[:, 1:4] = vn[faces]
    pairs = ((0, 1), (0, 2), (1, 2))
    edges = np.concatenate([np.sort(faces[:, list(p)], axis=1) for p in pairs])  # (3F, 2)
    _, inverse = np.unique(edges, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    en = np.zeros((inverse.max() + 1, 3))
    np.add.at(en, inverse, np.tile(fn, (3, 1)))
    out[:, 4:7] = en[inverse].reshape(3, len(faces), 3).transpose(1, 0, 2)
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()
    return (out * (-1.0 if volume < 0 else 1.0)).astype(np.float32)


def _build(tris: np.ndarray) -> dict[str, np.ndarray]:
    """The BVH arrays (``mesh.cu`` layout) of (F, 3, 3) float64 triangles."""
    n = tris.shape[0]
    order = np.argsort(_morton_codes(tris.mean(axis=1)), kind="stable")
    t = tris[order]
    n_leaves = 1 << max(0, math.ceil(math.log2(math.ceil(n / LEAF_SIZE))))
    leaf_first = (np.arange(n_leaves + 1, dtype=np.int64) * n) // n_leaves  # every leaf non-empty: n_leaves <= n
    starts = leaf_first[:-1]
    n_nodes = 2 * n_leaves - 1
    lo = np.empty((n_nodes, 3))
    hi = np.empty((n_nodes, 3))
    centre = np.empty((n_nodes, 3))
    normal = np.empty((n_nodes, 3))
    area = np.empty(n_nodes)
    radius = np.empty(n_nodes)
    first = n_leaves - 1
    lo[first:] = np.minimum.reduceat(t.min(axis=1), starts, axis=0)
    hi[first:] = np.maximum.reduceat(t.max(axis=1), starts, axis=0)
    area_vec = 0.5 * np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    tri_area = np.linalg.norm(area_vec, axis=1)
    centroid = t.mean(axis=1)
    normal[first:] = np.add.reduceat(area_vec, starts, axis=0)
    leaf_area = np.add.reduceat(tri_area, starts)
    counts = np.diff(leaf_first)
    weighted = np.add.reduceat(centroid * tri_area[:, None], starts, axis=0)
    plain = np.add.reduceat(centroid, starts, axis=0) / counts[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        centre[first:] = np.where(leaf_area[:, None] > 0, weighted / leaf_area[:, None], plain)
    area[first:] = leaf_area
    leaf_of = np.repeat(np.arange(n_leaves), counts)
    reach = np.linalg.norm(t - centre[first:][leaf_of][:, None, :], axis=2).max(axis=1)
    radius[first:] = np.maximum.reduceat(reach, starts)
    size = n_leaves // 2
    while size >= 1:  # internal levels, bottom up: nodes [size-1, 2 size-1), children [2 size-1, 4 size-1)
        p = slice(size - 1, 2 * size - 1)
        left, right = slice(2 * size - 1, 4 * size - 1, 2), slice(2 * size, 4 * size - 1, 2)
        lo[p] = np.minimum(lo[left], lo[right])
        hi[p] = np.maximum(hi[left], hi[right])
        normal[p] = normal[left] + normal[right]
        a = area[left] + area[right]
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.where(a[:, None] > 0, (area[left, None] * centre[left] + area[right, None] * centre[right])
                         / a[:, None], 0.5 * (centre[left] + centre[right]))
        centre[p] = c
        area[p] = a
        radius[p] = np.maximum(np.linalg.norm(c - centre[left], axis=1) + radius[left],
                               np.linalg.norm(c - centre[right], axis=1) + radius[right])
        size //= 2
    f32 = np.float32
    # Rounding the boxes to float32 outward keeps every triangle inside its box.
    return {"box_lo": np.nextafter(lo.astype(f32), f32(-np.inf)), "box_hi": np.nextafter(hi.astype(f32), f32(np.inf)),
            "leaf_first": leaf_first.astype(np.int32), "tris": t.reshape(n, 9).astype(f32),
            "tri_ids": order.astype(np.int32), "centre": centre.astype(f32), "normal": normal.astype(f32),
            "radius": (radius * (1 + 1e-6)).astype(f32)}


# ---------------------------------------------------------------------------------------------------------------------
# Torch references: brute force over every triangle, float64, chunked.


def _chunks(n_queries: int, n_tris: int) -> range:
    step = max(1, _REFERENCE_PAIRS // max(n_tris, 1))
    return range(0, n_queries, step)


def _segment_closest(p: Tensor, x: Tensor, y: Tensor) -> Tensor:
    e = y - x
    t = ((p - x) * e).sum(-1) / (e * e).sum(-1).clamp_min(1e-300)
    return x + t.clamp(0.0, 1.0).unsqueeze(-1) * e


def _closest_on_triangles(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Closest points (Q, F, 3) of (Q, 1, 3) points on (1, F, 3) triangles: the plane projection when it falls inside
    the triangle, else the nearest point of the three edges."""
    ab, ac = b - a, c - a
    n = torch.cross(ab, ac, dim=-1)
    nn = (n * n).sum(-1)
    proj = p - (((p - a) * n).sum(-1) / nn.clamp_min(1e-300)).unsqueeze(-1) * n
    v2 = proj - a
    d00, d01, d11 = (ab * ab).sum(-1), (ab * ac).sum(-1), (ac * ac).sum(-1)
    d20, d21 = (v2 * ab).sum(-1), (v2 * ac).sum(-1)
    denom = (d00 * d11 - d01 * d01).clamp_min(1e-300)
    v = (d11 * d20 - d01 * d21) / denom
    w = (d00 * d21 - d01 * d20) / denom
    inside = (v >= 0) & (w >= 0) & (v + w <= 1) & (nn > 0)
    candidates = torch.stack([_segment_closest(p, a, b), _segment_closest(p, b, c), _segment_closest(p, c, a),
                              torch.where(inside.unsqueeze(-1), proj, torch.full_like(proj, math.inf))])
    d2 = ((candidates - p) ** 2).sum(-1).nan_to_num(math.inf)
    best = d2.argmin(0)
    return torch.gather(candidates, 0, best[None, ..., None].expand(1, *best.shape, 3))[0]


def closest_point_reference(triangles: Tensor, points: Tensor, max_distance: float = math.inf
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """Brute-force closest point of (N, 3) ``points`` on (F, 3, 3) ``triangles`` (float64 inside): the reference of
    ``mesh_closest_point``. Returns float32 distances, int64 faces (-1 beyond ``max_distance``), float32 points."""
    tri = triangles.to(torch.float64)
    p_all = points.to(tri.device, torch.float64)
    n = p_all.shape[0]
    distance = torch.empty(n, dtype=torch.float64, device=tri.device)
    face = torch.empty(n, dtype=torch.int64, device=tri.device)
    point = torch.empty(n, 3, dtype=torch.float64, device=tri.device)
    a, b, c = tri[None, :, 0], tri[None, :, 1], tri[None, :, 2]
    step = _chunks(n, tri.shape[0]).step
    for s in range(0, n, step):
        p = p_all[s:s + step, None]
        cp = _closest_on_triangles(p, a, b, c)
        d2 = ((cp - p) ** 2).sum(-1)
        best = d2.argmin(1)
        rows = torch.arange(best.numel(), device=tri.device)
        distance[s:s + best.numel()] = d2[rows, best].sqrt()
        face[s:s + best.numel()] = best
        point[s:s + best.numel()] = cp[rows, best]
    far = distance >= max_distance
    distance[far] = max_distance
    face[far] = -1
    point[far] = p_all[far]
    return distance.float(), face, point.float()


def winding_number_reference(triangles: Tensor, points: Tensor) -> Tensor:
    """Exact generalized winding number of (N, 3) points (sum of the solid angles of every triangle / 4π, Van Oosterom
    & Strackee), float64 inside, (N,) float32 out: the reference of ``mesh_winding_number``."""
    tri = triangles.to(torch.float64)
    p_all = points.to(tri.device, torch.float64)
    out = torch.empty(p_all.shape[0], dtype=torch.float64, device=tri.device)
    step = _chunks(p_all.shape[0], tri.shape[0]).step
    for s in range(0, p_all.shape[0], step):
        p = p_all[s:s + step, None]
        a, b, c = tri[None, :, 0] - p, tri[None, :, 1] - p, tri[None, :, 2] - p
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        det = (a * torch.cross(b, c, dim=-1)).sum(-1)
        den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out[s:s + step] = (2.0 * torch.atan2(det, den)).sum(1) / (4.0 * math.pi)
    return out.float()


def raycast_reference(triangles: Tensor, origins: Tensor, directions: Tensor, t_min: float = 0.0,
                      t_max: float = math.inf) -> tuple[Tensor, Tensor]:
    """Brute-force nearest two-sided Möller–Trumbore hit with t_min < t < t_max (float64 inside): the reference of
    ``mesh_raycast``. Returns ``(t (R,) float32, t_max when none; face (R,) int64, -1 when none)``."""
    tri = triangles.to(torch.float64)
    o_all = origins.to(tri.device, torch.float64)
    d_all = directions.to(tri.device, torch.float64)
    n = o_all.shape[0]
    t_out = torch.full((n,), t_max, dtype=torch.float64, device=tri.device)
    f_out = torch.full((n,), -1, dtype=torch.int64, device=tri.device)
    a = tri[None, :, 0]
    e1, e2 = tri[None, :, 1] - a, tri[None, :, 2] - a
    step = _chunks(n, tri.shape[0]).step
    for s in range(0, n, step):
        o, d = o_all[s:s + step, None], d_all[s:s + step, None]
        pv = torch.cross(d.expand(-1, e2.shape[1], -1), e2.expand(o.shape[0], -1, -1), dim=-1)
        det = (e1 * pv).sum(-1)
        inv = 1.0 / det
        tv = o - a
        u = (tv * pv).sum(-1) * inv
        qv = torch.cross(tv, e1.expand(o.shape[0], -1, -1), dim=-1)
        w = (d * qv).sum(-1) * inv
        t = (e2 * qv).sum(-1) * inv
        ok = (det != 0) & (u >= 0) & (u <= 1) & (w >= 0) & (u + w <= 1) & (t > t_min) & (t < t_max)
        t = torch.where(ok, t, torch.full_like(t, math.inf))
        best = t.argmin(1)
        tb = t[torch.arange(best.numel(), device=tri.device), best]
        hit = torch.isfinite(tb)
        t_out[s:s + step] = torch.where(hit, tb, torch.full_like(tb, t_max))
        f_out[s:s + step] = torch.where(hit, best, torch.full_like(best, -1))
    return t_out.float(), f_out

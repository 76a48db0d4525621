"""Geometric accuracy metrics of a reconstruction against a reference mesh, in the unit-cube frame.

* IoU of the inside/outside classification of uniform random points in the unit cube (the paper's §5.2 / Fig. 6
  metric): |pred ∧ ref| / |pred ∨ ref|.
* Symmetric Chamfer distance: the mean distance from points sampled uniformly by area on each surface to the other
  surface, summed over both directions. Distances are exact point-to-surface distances through the BVH (not
  point-to-point nearest neighbours, which add a sampling bias of the order of the sample spacing), in unit-cube
  units.
* Normal consistency: the mean |cos| between the normal at each sampled point and the normal of the closest face on
  the other surface, averaged over both directions (1 is perfect).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ngp_cli.mesh.bvh import MeshBVH


def iou(pred_inside: Tensor, ref_inside: Tensor) -> float:
    """IoU of two (N,) bool classifications; 1.0 when both are empty."""
    union = int((pred_inside | ref_inside).sum())
    return float(int((pred_inside & ref_inside).sum()) / union) if union else 1.0


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, generator: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform by area on a triangle mesh and their face normals, both (n, 3) float32."""
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    face = generator.choice(len(faces), size=n, p=area / area.sum())
    u, v = generator.random(n), generator.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[face]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[face] / np.maximum(area[face], 1e-300)[:, None]
    return points.astype(np.float32), normals.astype(np.float32)


def _one_way(points: np.ndarray, normals: np.ndarray, target: MeshBVH, target_normals: Tensor) -> tuple[float, float]:
    x = torch.from_numpy(points).to(target.device)
    distance, face, _ = target.closest_point(x)
    cos = (torch.from_numpy(normals).to(target.device) * target_normals[face]).sum(1).abs()
    return float(distance.double().mean()), float(cos.double().mean())


def face_normals(bvh: MeshBVH) -> Tensor:
    """(F, 3) float32 unit face normals of the BVH's mesh, in its face order."""
    t = bvh.triangles
    return torch.nn.functional.normalize(torch.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], dim=1), dim=1)


def surface_metrics(pred_vertices: np.ndarray, pred_faces: np.ndarray, reference: MeshBVH,
                    reference_vertices: np.ndarray, reference_faces: np.ndarray, *, n_points: int = 1 << 18,
                    seed: int = 0) -> dict[str, float]:
    """Chamfer distance and normal consistency between a reconstruction and the reference, both (V, 3)/(F, 3) in the
    unit-cube frame (the reference also as its BVH). Returns ``chamfer``, ``chamfer_pred_to_ref``,
    ``chamfer_ref_to_pred``, ``normal_consistency`` and ``n_points`` per direction; an empty reconstruction gives
    ``inf`` distances and 0 consistency.
    """
    if len(pred_faces) == 0:
        return {"chamfer": float("inf"), "chamfer_pred_to_ref": float("inf"), "chamfer_ref_to_pred": float("inf"),
                "normal_consistency": 0.0, "n_points": n_points}
    rng = np.random.default_rng(seed)
    pred = MeshBVH(pred_vertices, pred_faces, device=reference.device)
    p_pts, p_nrm = sample_surface(pred_vertices, pred_faces, n_points, rng)
    r_pts, r_nrm = sample_surface(reference_vertices, reference_faces, n_points, rng)
    d_pr, c_pr = _one_way(p_pts, p_nrm, reference, face_normals(reference))
    d_rp, c_rp = _one_way(r_pts, r_nrm, pred, face_normals(pred))
    return {"chamfer": d_pr + d_rp, "chamfer_pred_to_ref": d_pr, "chamfer_ref_to_pred": d_rp,
            "normal_consistency": 0.5 * (c_pr + c_rp), "n_points": n_points}

"""Mesh-query kernels of ``mesh.cu`` on the ``cuda`` and ``cpu`` targets: closest point, fast winding number and ray
casting over the BVH built by :class:`ngp_cli.mesh.bvh.MeshBVH`.

The semantics are those of the brute-force torch references in :mod:`ngp_cli.mesh.bvh`
(``closest_point_reference``, ``winding_number_reference``, ``raycast_reference``), which the tests compare against.
This module takes the BVH arrays as plain tensors (see ``mesh.cu`` for the layout) and does not import
``ngp_cli.mesh``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ngp_cli.cuda.runtime import load_module
from ngp_cli.cuda.runtime import output_buffer as _out

__all__ = ["closest_point", "raycast", "winding_number"]

_GPU_BLOCK = 128
_CPU_BLOCK = 64  # queries per emulated block: each is a long traversal, small blocks balance the workers

def _launch(target: str, n: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    if target not in ("cpu", "cuda"):
        raise ValueError(f"target must be 'cpu' or 'cuda', got {target!r}")
    block = _GPU_BLOCK if target == "cuda" else _CPU_BLOCK
    return ((n + block - 1) // block, 1, 1), (block, 1, 1)


def _points(x: Tensor, what: str, device: torch.device) -> Tensor:
    if x.dim() != 2 or x.shape[1] != 3:
        raise ValueError(f"{what} must have shape (N, 3), got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{what} is on {x.device}, the BVH on {device}")
    if x.shape[0] >= 2**32:
        raise ValueError(f"at most 2**32 - 1 {what} per launch, got {x.shape[0]}")
    return x.detach().to(torch.float32).contiguous()


def closest_point(bvh: dict[str, Tensor], queries: Tensor, max_distance: float, target: str
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Closest point on the mesh to each query (``mesh_closest_point``).

    Args:
        bvh: the arrays of :meth:`ngp_cli.mesh.bvh.MeshBVH.arrays` on ``target``'s device.
        queries: (N, 3) points (cast to float32).
        max_distance: only faces nearer than this are considered (``inf`` for all).
        target: "cpu" or "cuda".

    Returns:
        ``(distance (N,) float32, face (N,) int64 — -1 when none is within max_distance —, point (N, 3) float32,
        feature (N,) int64 — the closest feature of the face: 0 interior, 1/2/3 vertex 0/1/2, 4/5/6 edge 01/02/12,
        -1 without a face)``.
    """
    device = bvh["tris"].device
    q = _points(queries, "queries", device)
    n = q.shape[0]
    distance = _out(n, torch.float32, device)
    face = _out(n, torch.int32, device)
    point = _out((n, 3), torch.float32, device)
    feature = _out(n, torch.int32, device)
    if n:
        grid, block = _launch(target, n)
        load_module("mesh.cu", target).launch("mesh_closest_point", grid, block, [
            q, np.uint32(n), bvh["box_lo"], bvh["box_hi"], bvh["leaf_first"], bvh["tris"], bvh["tri_ids"],
            np.int32(bvh["leaf_first"].numel() - 1), np.float32(max_distance), distance, face, point, feature])
    return distance, face.to(torch.int64), point, feature.to(torch.int64)


def winding_number(bvh: dict[str, Tensor], queries: Tensor, beta: float, target: str) -> Tensor:
    """Generalized winding number at each query (``mesh_winding_number``): exact near the query, first-order dipoles
    for nodes farther than ``beta`` times their radius (``inf``: exact everywhere). Returns (N,) float32."""
    device = bvh["tris"].device
    q = _points(queries, "queries", device)
    n = q.shape[0]
    out = _out(n, torch.float32, device)
    if n:
        grid, block = _launch(target, n)
        load_module("mesh.cu", target).launch("mesh_winding_number", grid, block, [
            q, np.uint32(n), bvh["centre"], bvh["normal"], bvh["radius"], bvh["leaf_first"], bvh["tris"],
            np.int32(bvh["leaf_first"].numel() - 1), np.float32(beta), out])
    return out


def raycast(bvh: dict[str, Tensor], origins: Tensor, directions: Tensor, t_min: float, t_max: float, target: str
            ) -> tuple[Tensor, Tensor]:
    """Nearest two-sided ray-triangle hit with ``t_min < t < t_max`` (``mesh_raycast``).

    Returns ``(t (R,) float32 — t_max when there is no hit —, face (R,) int64 — -1 when there is no hit)``; ``t`` is
    in units of the direction's length.
    """
    device = bvh["tris"].device
    o = _points(origins, "origins", device)
    d = _points(directions, "directions", device)
    if o.shape != d.shape:
        raise ValueError(f"origins {tuple(o.shape)} and directions {tuple(d.shape)} differ in shape")
    n = o.shape[0]
    t_hit = _out(n, torch.float32, device)
    face = _out(n, torch.int32, device)
    if n:
        grid, block = _launch(target, n)
        load_module("mesh.cu", target).launch("mesh_raycast", grid, block, [
            o, d, np.uint32(n), bvh["box_lo"], bvh["box_hi"], bvh["leaf_first"], bvh["tris"], bvh["tri_ids"],
            np.int32(bvh["leaf_first"].numel() - 1), np.float32(t_min), np.float32(t_max), t_hit, face])
    return t_hit, face.to(torch.int64)

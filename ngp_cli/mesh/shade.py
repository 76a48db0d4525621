"""Shaded renders of a triangle mesh (ray cast through its BVH), so a result can be looked at without a 3D viewer.

Views: pinhole cameras on a circle around the mesh's bounding sphere, ``elevation`` degrees above its equator (the
plane normal to ``up``), at equal azimuth steps, framed so the bounding sphere fills the image. Shading: a
grey two-sided Lambertian surface lit by a headlight and a key light from the upper left, on a white background.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ngp_cli.images import write_image
from ngp_cli.mesh.bvh import MeshBVH
from ngp_cli.mesh.metrics import face_normals


def orbit_cameras(centre: np.ndarray, radius: float, up: np.ndarray, n_views: int, elevation_deg: float = 20.0,
                  fov_deg: float = 35.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_views`` (origin (3,), camera-to-world rotation (3, 3) with columns right, up, forward) looking at
    ``centre`` from the distance at which a sphere of ``radius`` fills the vertical field of view ``fov_deg``."""
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    a = np.cross(up, helper)
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    distance = radius / math.sin(math.radians(fov_deg) / 2.0) * 1.05
    el = math.radians(elevation_deg)
    views = []
    for k in range(n_views):
        az = 2.0 * math.pi * k / n_views
        direction = math.cos(el) * (math.cos(az) * a + math.sin(az) * b) + math.sin(el) * up
        origin = np.asarray(centre) + distance * direction
        forward = -direction
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        cam_up = np.cross(right, forward)
        views.append((origin, np.stack([right, cam_up, forward], axis=1)))
    return views


def render_mesh(bvh: MeshBVH, origin: np.ndarray, rotation: np.ndarray, width: int, height: int,
                fov_deg: float = 35.0) -> np.ndarray:
    """One shaded view as (H, W, 3) uint8: rays through pixel centres of a pinhole camera at ``origin`` with
    ``rotation`` (columns right, up, forward) and vertical field of view ``fov_deg``."""
    f = 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)
    j, i = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    cam = np.stack([(i - width / 2) / f, -(j - height / 2) / f, np.ones_like(i)], axis=-1).reshape(-1, 3)
    dirs = cam @ rotation.T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    d = torch.from_numpy(dirs.astype(np.float32)).to(bvh.device)
    o = torch.from_numpy(np.asarray(origin, dtype=np.float32)).to(bvh.device).expand_as(d).contiguous()
    _, face = bvh.raycast(o, d)
    hit = face >= 0
    n = face_normals(bvh)[face.clamp_min(0)]
    n = torch.where(((n * d).sum(1, keepdim=True) > 0), -n, n)  # two-sided: face the camera
    key = torch.from_numpy((rotation @ np.array([-0.5, 0.8, -0.6])).astype(np.float32)).to(bvh.device)
    key = key / key.norm()
    shade = 0.15 + 0.55 * (-(n * d).sum(1)).clamp_min(0) + 0.35 * (n @ key).clamp_min(0)
    grey = (shade.clamp(0, 1) * torch.tensor([0.80, 0.80, 0.82], device=bvh.device)[:, None]).T
    image = torch.where(hit[:, None], grey, torch.ones_like(grey))
    return (image.reshape(height, width, 3).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def mesh_orbit(vertices: np.ndarray, up: np.ndarray, n_views: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`orbit_cameras` framing the sphere around the bounding box of (V, 3) ``vertices``."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    radius = float(np.linalg.norm(hi - lo)) * 0.5
    return orbit_cameras(0.5 * (lo + hi), max(radius, 1e-6), up, n_views)


def render_views(bvh: MeshBVH, vertices: np.ndarray, out_dir: Path, prefix: str, *, up: np.ndarray,
                 n_views: int = 4, size: int = 512) -> list[str]:
    """Write ``n_views`` shaded views of the mesh to ``out_dir/<prefix>_<k>.png``; returns the paths."""
    paths = []
    for k, (origin, rotation) in enumerate(mesh_orbit(vertices, up, n_views)):
        path = Path(out_dir) / f"{prefix}_{k}.png"
        write_image(path, render_mesh(bvh, origin, rotation, size, size))
        paths.append(str(path))
    return paths

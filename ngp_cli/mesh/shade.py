"""Shaded renders of a triangle mesh (ray cast through its BVH), so a result can be looked at without a 3D viewer; sphere
tracing of a signed distance field (depth and normals of an SDF run); and the image forms of rendered maps (depth,
accumulation, normals) with :class:`MapFrameWriter`, which ``ngp render --output`` uses for NeRF and SDF runs.

Views: pinhole cameras on a circle around the mesh's bounding sphere, ``elevation`` degrees above its equator (the
plane normal to ``up``), at equal azimuth steps, framed so the bounding sphere fills the image. Shading: a
grey two-sided Lambertian surface lit by a headlight and a key light from the upper left, on a white background.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ngp_cli.errors import OutputError
from ngp_cli.images import colormap, from_float, write_image
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


def pinhole_rays(rotation: np.ndarray, width: int, height: int, fov_deg: float = 35.0) -> np.ndarray:
    """Unit ray directions (H·W, 3) float64, row-major from the top-left pixel, through the pixel centres of a pinhole
    camera with ``rotation`` (3, 3) (columns right, up, forward; any frame) and vertical field of view ``fov_deg``
    (square pixels, principal point at the image centre)."""
    f = 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)
    j, i = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    cam = np.stack([(i - width / 2) / f, -(j - height / 2) / f, np.ones_like(i)], axis=-1).reshape(-1, 3)
    dirs = cam @ rotation.T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return dirs


def render_mesh(bvh: MeshBVH, origin: np.ndarray, rotation: np.ndarray, width: int, height: int,
                fov_deg: float = 35.0) -> np.ndarray:
    """One shaded view as (H, W, 3) uint8: rays through pixel centres of a pinhole camera at ``origin`` with
    ``rotation`` (columns right, up, forward) and vertical field of view ``fov_deg`` (:func:`pinhole_rays`)."""
    dirs = pinhole_rays(rotation, width, height, fov_deg)
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


@torch.no_grad()
def sphere_trace(sdf: Callable[[Tensor], Tensor], origins: Tensor, directions: Tensor, lo: float = 0.0,
                 hi: float = 1.0, *, max_steps: int = 256, epsilon: float = 1e-4, step_scale: float = 0.9,
                 refine_steps: int = 12, chunk: int = 1 << 18) -> tuple[Tensor, Tensor]:
    """First zero crossing of a signed distance field along rays, by sphere tracing inside the box ``[lo, hi]³``.

    From the ray's entry into the box (or its origin, inside it), steps of ``max(step_scale · sdf(x), epsilon)`` (a
    learned SDF is only about 1-Lipschitz, so the steps are shortened; the floor lets a ray that converges onto the
    surface cross it) until the field turns negative: the crossing is then refined by ``refine_steps`` bisections
    between that step and the one before, so the hit is the zero crossing itself (to ``epsilon · 2^-refine_steps``
    along the ray) and a field that only comes close to zero without crossing is not hit. A ray that leaves the box,
    takes ``max_steps`` steps, or starts inside (negative at its start) is a miss.

    Args:
        sdf: (N, 3) float32 positions → (N,) signed distances in the same units (negative inside).
        origins, directions: (R, 3) float32 rays, unit directions, in the SDF's frame.
        lo, hi: the box the field is defined in (the SDF task's unit cube).
        chunk: positions per ``sdf`` call.

    Returns:
        ``(t (R,) float32 distance along each ray to its hit — 0 where it misses —, hit (R,) bool)``.

    Source: Hart 1996, "Sphere tracing: a geometric method for the antialiased ray tracing of implicit surfaces";
    instant-ngp's SDF mode renders its network by sphere tracing too (testbed_sdf.cu).
    """
    from ngp_cli.volrend.march import ray_aabb

    o, d = origins.float(), directions.float()

    def field(idx: Tensor, ts: Tensor) -> Tensor:
        x = o[idx] + ts.unsqueeze(-1) * d[idx]
        return torch.cat([sdf(x[s:s + chunk]).float() for s in range(0, x.shape[0], chunk)])

    t_near, t_far = ray_aabb(o, d, lo, hi)
    t_near = t_near.clamp_min(0.0)
    t = t_near.clone()
    t_prev = t_near.clone()  # the last position with a positive value
    hit = torch.zeros(o.shape[0], dtype=torch.bool, device=o.device)
    active = torch.nonzero(t_far > t_near).squeeze(1)
    for step in range(max_steps):
        if not active.numel():
            break
        value = field(active, t[active])
        negative = value <= 0
        if step:
            hit[active[negative]] = True  # crossed since the last step (a ray negative at its start: a miss)
        t_prev[active[~negative]] = t[active[~negative]]
        t_new = t[active] + torch.clamp_min(step_scale * value, epsilon)
        t[active] = torch.where(negative, t[active], t_new)
        going = ~negative & (t_new <= t_far[active]) & torch.isfinite(value)
        active = active[going]
    refine = torch.nonzero(hit).squeeze(1)
    if refine.numel():
        a, b = t_prev[refine], t[refine]  # positive at a, not at b
        for _ in range(refine_steps):
            mid = 0.5 * (a + b)
            positive = field(refine, mid) > 0
            a, b = torch.where(positive, mid, a), torch.where(positive, b, mid)
        t[refine] = 0.5 * (a + b)
    return torch.where(hit, t, torch.zeros_like(t)), hit


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


# ---------------------------------------------------------------------------------------------------------------------
# Rendered maps as images and frames

#: The ``ngp render --output`` maps and what each frame shows.
MAP_OUTPUTS = ("rgb", "depth", "accumulation", "normals")
_EXR_RE = re.compile(r"^frame_(\d{5,})\.exr$")


def depth_scale(depth: np.ndarray) -> float | None:
    """The top of a depth map's colour scale: the 99th percentile of its positive finite values (robust to a few far
    samples), or None when it has none (nothing was hit)."""
    v = np.asarray(depth, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return None
    top = float(np.percentile(v, 99.0))
    return top if top > 0 else float(v.max())


def map_image(output: str, value: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """A rendered map as an (H, W, 3) uint8 image:

    * ``rgb``: (H, W, 3) floats in [0, 1] (clipped, rounded), or uint8 as it is;
    * ``depth``: (H, W) distances through :func:`ngp_cli.images.colormap` (inferno) from 0 (dark) to ``vmax``
      (bright; default :func:`depth_scale`), so nearer is darker;
    * ``accumulation``: (H, W) opacities in [0, 1] as grey;
    * ``normals``: (H, W, 3) unit vectors mapped from [-1, 1] to [0, 255] per axis (``(n + 1) / 2``: x → red,
      y → green, z → blue; a zero vector, nothing hit, is mid grey).

    Raises ``ValueError`` for an unknown ``output`` or a wrong shape.
    """
    a = np.asarray(value)
    if output == "rgb":
        return a if a.dtype == np.uint8 else from_float(a.astype(np.float32), np.uint8)
    if output == "depth":
        return colormap(a, vmax if vmax is not None else (depth_scale(a) or 1.0))
    if output == "accumulation":
        if a.ndim != 2:
            raise ValueError(f"an accumulation map is (H, W), got shape {a.shape}")
        return from_float(np.repeat(a.astype(np.float32)[..., None], 3, axis=2), np.uint8)
    if output == "normals":
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"a normal map is (H, W, 3), got shape {a.shape}")
        return from_float((a.astype(np.float32) + 1.0) * 0.5, np.uint8)
    raise ValueError(f"unknown output {output!r}; choose from {MAP_OUTPUTS}")


class MapFrameWriter:
    """Frames of one ``ngp render --output`` map, published only once the whole render succeeded.

    Every map goes through :class:`ngp_cli.video.FrameWriter` as its image (:func:`map_image`: a video, or a folder of
    ``frame_00000.png``, ...). Depth written to a folder is also kept as numbers: ``frame_00000.exr`` (float32, one
    channel Y, the distances in world units, 0 where nothing was hit) beside each PNG, written to a temporary folder
    beside ``out`` and moved into ``out`` after the PNGs were published (stale ``frame_NNNNN.exr`` of an earlier,
    longer render are removed; other files are kept). The depth colour scale is fixed for the whole render by the
    first frame that hits anything (:func:`depth_scale`), so frames compare; :attr:`vmax` holds it.

    Use as a context manager; an exception inside aborts both the frames and the EXRs, leaving ``out`` as it was.
    Raises :class:`OutputError` like FrameWriter, and when the EXR folder cannot be created or moved.
    """

    def __init__(self, out: str | os.PathLike, fps: float, output: str) -> None:
        from ngp_cli.video import FrameWriter

        if output not in MAP_OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose from {MAP_OUTPUTS}")
        self.out = Path(out)
        self.output = output
        self.vmax: float | None = None
        self.count = 0
        self.frames = FrameWriter(self.out, fps=fps)
        self._exr: Path | None = None
        if output == "depth" and not self.frames.is_video:
            tmp = self.out.parent / f".{self.out.name}.{secrets.token_hex(4)}.exr.tmp"
            try:
                tmp.mkdir()
            except OSError as e:
                self.frames.abort()
                raise OutputError(f"{self.out}: cannot write to directory {self.out.parent}: "
                                  f"{e.strerror or e}") from None
            self._exr = tmp

    @property
    def is_video(self) -> bool:
        return self.frames.is_video

    def write(self, value: np.ndarray) -> None:
        """Append one frame's map (see :func:`map_image` for the shapes)."""
        from ngp_cli.video import frame_name

        if self.output == "depth" and self.vmax is None:
            self.vmax = depth_scale(value)
        self.frames.write(map_image(self.output, value, self.vmax or 1.0))
        if self._exr is not None:
            name = frame_name(self.count)[:-4] + ".exr"
            try:
                write_image(self._exr / name, np.ascontiguousarray(value, dtype=np.float32)[..., None])
            except OutputError as e:
                raise OutputError(f"{self.out}: cannot write frame {self.count}'s depth: {e}") from None
        self.count += 1

    def close(self) -> None:
        """Publish the frames, then the EXRs. Raises OutputError (the EXRs removed) when that fails."""
        try:
            self.frames.close()
        except BaseException:
            self._drop_exr()
            raise
        if self._exr is None:
            return
        try:
            for entry in sorted(os.listdir(self._exr)):
                os.replace(self._exr / entry, self.out / entry)
            with contextlib.suppress(OSError):
                for entry in os.scandir(self.out):
                    m = _EXR_RE.match(entry.name)
                    if m and int(m.group(1)) >= self.count and entry.is_file():
                        os.unlink(entry.path)
            self._exr.rmdir()
        except OSError as e:
            self._drop_exr()
            raise OutputError(f"{self.out}: cannot move the depth EXRs into place: {e.strerror or e}") from None
        self._exr = None

    def abort(self) -> None:
        """Discard the render: the temporary frames and EXRs; ``out`` is untouched. Idempotent."""
        self.frames.abort()
        self._drop_exr()

    def _drop_exr(self) -> None:
        if self._exr is not None:
            shutil.rmtree(self._exr, ignore_errors=True)
            self._exr = None

    def __enter__(self) -> MapFrameWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

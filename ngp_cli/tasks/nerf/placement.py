"""Where a NeRF dataset's cameras and sparse points sit relative to the scene box (issue 16, parts 3 and 4). Numpy
only (trimesh is imported inside :func:`read_sparse_points`).

Frames (see :mod:`ngp_cli.tasks.nerf.cameras`): the dataset's *world* frame is the one of its ``transforms.json``; the
*ngp frame* is ``p·scale + offset`` (instant-ngp's defaults 0.33 and (0.5, 0.5, 0.5)), where the scene box is
``[0.5 − aabb_scale/2, 0.5 + aabb_scale/2]³`` around the box centre (0.5, 0.5, 0.5). Distances below are in ngp-frame
units unless they say otherwise.

The camera placement check (:func:`measure_placement`, :func:`placement_findings`) follows the conventions of
instant-ngp's ``scripts/colmap2nerf.py``: it centres the poses on the point the cameras look at (the least-squares
"center of attention" of their optical axes) and scales them so that the cameras sit 4 units from it on average;
instant-ngp's loader then applies ``scale`` 0.33, so a capture made that way has its cameras about
``4 × 0.33 = 1.32`` from the box centre (NeRF-synthetic lego: 1.33; instant-ngp's fox: 1.62). Two findings are
reported:

* **off-centre**: the look-at point is more than :data:`OFF_CENTRE_LIMIT` (0.25, a quarter of the unit cube) from the
  box centre along some axis, i.e. outside the central half of the unit cube, the finest occupancy cascade;
* **far**: the cameras sit more than :data:`FAR_FACTOR` (3) times colmap2nerf's 1.32 from the look-at point (median
  over cameras) *and* the region they frame there, a sphere of radius ``distance × tan(half the wider field of
  view)`` around the look-at point, reaches past the scene box: most of what they see then lies outside the box and
  cannot be represented (e.g. a dataset whose positions were multiplied by 7).

Each finding comes with the ``scale``/``offset`` (and, for "far", the ``aabb_scale``) that would fit; applying them
makes the finding go away (tests/tasks/test_nerf_placement.py checks the round trip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ngp_cli.errors import DataError
from ngp_cli.tasks.nerf.camera_path import scene_center

__all__ = ["FAR_FACTOR", "NGP_CAMERA_DISTANCE", "OFF_CENTRE_LIMIT", "Placement", "PlacementFit", "measure_placement",
           "placement_findings", "placement_fit", "points_to_ngp", "read_sparse_points", "sparse_points_path"]

# colmap2nerf.py scales the mean camera distance from the look-at point to 4; instant-ngp's default scale is 0.33.
NGP_CAMERA_DISTANCE = 4.0 * 0.33
FAR_FACTOR = 3.0
OFF_CENTRE_LIMIT = 0.25
# Below this smallest eigenvalue of the mean projector orthogonal to the optical axes (about the squared angular
# spread of the axes: 1e-3 is ~2°) the axes are too close to parallel to define a look-at point.
_MIN_AXIS_SPREAD = 1e-3
_MAX_AABB_SCALE = 128


@dataclass(frozen=True)
class Placement:
    """Where the cameras sit and look, in the ngp frame.

    Attributes:
        look_at: (3,) float64, the point closest in least squares to all optical axes
            (:func:`~ngp_cli.tasks.nerf.camera_path.scene_center`); None when the axes are (nearly) parallel
            (a forward-facing capture, a single camera), in which case nothing is judged.
        look_at_offset: max-norm distance of ``look_at`` from the box centre (0.5, 0.5, 0.5) (nan without look_at).
        camera_distance: median distance of the camera centres from ``look_at`` (nan without look_at).
        framed_radius: ``camera_distance × tan_half_fov``: the radius of the region the cameras frame at the
            look-at point (nan without look_at).
        tan_half_fov: median over cameras of tan(half the wider field of view), 0 when no intrinsics were given.
        aabb_scale: the scene box size; its half-size is ``aabb_scale / 2``.
        n_cameras: number of cameras measured.
    """

    look_at: np.ndarray | None
    look_at_offset: float
    camera_distance: float
    framed_radius: float
    tan_half_fov: float
    aabb_scale: int
    n_cameras: int

    @property
    def off_centre(self) -> bool:
        """The look-at point lies more than :data:`OFF_CENTRE_LIMIT` from the box centre along some axis."""
        return self.look_at is not None and self.look_at_offset > OFF_CENTRE_LIMIT

    @property
    def far(self) -> bool:
        """The cameras sit more than FAR_FACTOR × 1.32 from the look-at point and the region they frame there reaches
        past the scene box."""
        return (self.look_at is not None and self.camera_distance > FAR_FACTOR * NGP_CAMERA_DISTANCE
                and self.look_at_offset + self.framed_radius > 0.5 * self.aabb_scale)


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def measure_placement(c2w: Any, aabb_scale: int, intrinsics: Any = None, width: int | None = None,
                      height: int | None = None) -> Placement:
    """Measure where the cameras sit and look relative to the scene box.

    Args:
        c2w: (N, 3, 4) or (N, 4, 4) OpenGL camera-to-world matrices in the ngp frame (numpy or torch, any float dtype).
        aabb_scale: the scene box size (a power of two 1..128).
        intrinsics: optional (N, 4) fx, fy, cx, cy in pixels; with ``width``/``height`` (pixels) they give the
            field of view (the wider of the horizontal and vertical one, measured from the principal point to the
            farther image edge).
    Returns:
        A :class:`Placement`.
    Raises:
        ValueError: a wrong shape or non-finite poses (from ``scene_center``).
    Source: instant-ngp ``scripts/colmap2nerf.py`` (centre of attention, camera distance 4, scale 0.33).
    """
    poses = _as_array(c2w)
    if poses.ndim != 3 or poses.shape[1] not in (3, 4) or poses.shape[2] != 4 or poses.shape[0] == 0:
        raise ValueError(f"expected (N, 3, 4) or (N, 4, 4) camera-to-world matrices, got shape {poses.shape}")
    poses = poses[:, :3, :]
    n = poses.shape[0]
    tan_half = 0.0
    if intrinsics is not None and width and height:
        k = _as_array(intrinsics).reshape(-1, 4)
        fx, fy, cx, cy = k[:, 0], k[:, 1], k[:, 2], k[:, 3]
        tx = np.maximum(cx, width - cx) / fx
        ty = np.maximum(cy, height - cy) / fy
        tan_half = float(np.median(np.maximum(tx, ty)))
    nan = math.nan
    dirs = -poses[:, :, 2]
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    spread = np.eye(3) - np.einsum("ni,nj->ij", dirs, dirs) / n  # mean projector orthogonal to the axes
    if n < 2 or np.linalg.eigvalsh(spread)[0] < _MIN_AXIS_SPREAD:
        return Placement(None, nan, nan, nan, tan_half, int(aabb_scale), n)
    look_at = scene_center(poses)
    distance = float(np.median(np.linalg.norm(poses[:, :, 3] - look_at, axis=1)))
    offset = float(np.abs(look_at - 0.5).max())
    return Placement(look_at, offset, distance, distance * tan_half, tan_half, int(aabb_scale), n)


def _vec(v: Any) -> str:
    return "[" + ", ".join(f"{float(x):.4g}" for x in v) + "]"


def _box(aabb_scale: int) -> str:
    lo, hi = 0.5 - 0.5 * aabb_scale, 0.5 + 0.5 * aabb_scale
    return f"[{lo:g}, {hi:g}]³"


@dataclass(frozen=True)
class PlacementFit:
    """The transforms.json values that would fit a :class:`Placement` (see :func:`placement_fit`).

    Attributes:
        centred_offset: (3,) ``offset`` that puts the look-at point at the box centre, with the same ``scale``.
        scale, offset: colmap2nerf's normalisation: the look-at point at the box centre and the cameras
            :data:`NGP_CAMERA_DISTANCE` from it (median).
        aabb_scale: the smallest power of two whose box holds the framed region at the current scale and offset
            (may exceed 128, which no box can be).
    """

    centred_offset: np.ndarray
    scale: float
    offset: np.ndarray
    aabb_scale: int


def placement_fit(p: Placement, scale: float, offset: Any) -> PlacementFit | None:
    """The values that would fit ``p``, measured with the dataset's world → ngp transform ``scale``/``offset``
    (ngp = world·scale + offset): ``centred_offset = offset + (0.5 − look_at)``; ``scale' = scale × 1.32 /
    camera_distance`` with ``offset' = 0.5 − look_at_world × scale'``; ``aabb_scale' = 2^⌈log2(2 (look_at_offset +
    framed_radius))⌉``. None without a look-at point."""
    if p.look_at is None:
        return None
    off = np.asarray(offset, dtype=np.float64).reshape(3)
    world_look_at = (p.look_at - off) / scale
    new_scale = scale * NGP_CAMERA_DISTANCE / p.camera_distance if p.camera_distance > 0 else float(scale)
    need = 2.0 * (p.look_at_offset + p.framed_radius)
    aabb = 1 << max(0, math.ceil(math.log2(max(need, 1.0)) - 1e-9))
    return PlacementFit(off + (0.5 - p.look_at), float(new_scale), 0.5 - world_look_at * new_scale, aabb)


def placement_findings(p: Placement, scale: float, offset: Any) -> list[str]:
    """One human-readable line per finding of :class:`Placement` ``p`` (empty when the cameras fit), each with the
    measured numbers and the transforms.json values that would fit (:func:`placement_fit`): the centring ``offset``
    for an off-centre look-at point; colmap2nerf's ``scale`` and ``offset``, or an ``aabb_scale`` (when one up to 128
    holds the framed region), for cameras far outside the box.
    ``scale``/``offset``: the dataset's world → ngp transform (ngp = world·scale + offset) that ``p`` was measured
    with.
    """
    fit = placement_fit(p, scale, offset)
    if fit is None:
        return []
    off = np.asarray(offset, dtype=np.float64).reshape(3)
    lines = []
    if p.off_centre:
        lines.append(f"the cameras look at {_vec(p.look_at)} in the scene box frame, {p.look_at_offset:.3g} from the "
                     f"box centre [0.5, 0.5, 0.5] along an axis (more than {OFF_CENTRE_LIMIT:g}; aabb_scale "
                     f"{p.aabb_scale}, scale {scale:.4g}, offset {_vec(off)}); to centre it: \"offset\": "
                     f"{_vec(fit.centred_offset)}")
    if p.far:
        alt = (f"or \"aabb_scale\": {fit.aabb_scale} with this scale and offset" if fit.aabb_scale <= _MAX_AABB_SCALE
               else f"no aabb_scale up to {_MAX_AABB_SCALE} holds it with this scale")
        lines.append(f"the cameras sit a median {p.camera_distance:.3g} from the point they look at (colmap2nerf puts "
                     f"them 4 × scale 0.33 = {NGP_CAMERA_DISTANCE:.3g} away) and frame a region of radius "
                     f"{p.framed_radius:.3g} there that reaches past the scene box {_box(p.aabb_scale)} (aabb_scale "
                     f"{p.aabb_scale}, scale {scale:.4g}, offset {_vec(off)}); to fit: \"scale\": {fit.scale:.4g}, "
                     f"\"offset\": {_vec(fit.offset)} ({alt})")
    return lines


def points_to_ngp(points: Any, scale: float, offset: Any) -> np.ndarray:
    """World-frame points (N, 3) → the ngp frame, exactly as camera positions are mapped
    (:func:`~ngp_cli.tasks.nerf.cameras.nerf_matrix_to_ngp`: ``p·scale + offset`` in float64, then float32).
    Returns (N, 3) float32."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return (pts * float(scale) + np.asarray(offset, dtype=np.float64).reshape(3)).astype(np.float32)


def read_sparse_points(path: Path) -> np.ndarray:
    """The vertices of a PLY point cloud (``sparse_points.ply`` of ``ngp process-data``, or any PLY whose vertices are
    the points; a mesh's faces are ignored), read with trimesh, in the file's (the dataset's world) frame.

    Returns:
        (N, 3) float64, N >= 1.
    Raises:
        DataError: (one line, starting with the path) the file is missing, a folder, not a readable PLY, holds no
            vertices, or holds NaN/inf coordinates.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file (nerf.occupancy_init=points reads the sparse points from this PLY; "
                        "set nerf.sparse_points=FILE, or nerf.occupancy_init=full)")
    if not path.is_file():
        raise DataError(f"{path}: is not a file (expected a PLY point cloud)")
    import trimesh

    try:
        geometry = trimesh.load(str(path), file_type="ply")
    except Exception as exc:  # trimesh raises ValueError, KeyError, struct.error, ... for a corrupt file
        message = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise DataError(f"{path}: not a readable PLY point cloud ({message})") from None
    if isinstance(geometry, trimesh.Scene):  # trimesh returns an empty scene for a PLY without vertices
        parts = [np.asarray(g.vertices) for g in geometry.geometry.values() if hasattr(g, "vertices")]
        vertices = np.concatenate(parts) if parts else np.zeros((0, 3))
    else:
        vertices = np.asarray(getattr(geometry, "vertices", np.zeros((0, 3))))
    vertices = vertices.astype(np.float64).reshape(-1, 3)
    if vertices.shape[0] == 0:
        raise DataError(f"{path}: the PLY holds no points")
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} of {vertices.shape[0]} points have NaN or infinite coordinates "
                        f"(first: vertex {int(np.argmax(bad))})")
    return vertices


def sparse_points_path(configured: str, dataset_root: Path) -> Path:
    """The sparse point cloud of ``nerf.occupancy_init: points``: ``configured`` (``nerf.sparse_points``, made
    absolute) or, when it is empty, ``sparse_points.ply`` beside the dataset's transforms JSON (``dataset_root``)."""
    if configured:
        return Path(configured).expanduser().resolve()
    return (Path(dataset_root) / "sparse_points.ply").resolve()

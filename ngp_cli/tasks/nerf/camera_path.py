"""Camera trajectories for ``ngp render``: look-at matrices, an orbit around the training cameras, and path files.

All matrices are camera-to-world in the OpenGL convention used by NeRF's ``transforms.json``: columns 0, 1, 2 are the
camera's x (right), y (up) and z axes in world coordinates, the camera looks down its -z axis, column 3 is its position.
Nothing here assumes a particular world frame: an orbit computed from matrices in the NeRF frame is in the NeRF frame,
from matrices in instant-ngp's unit-cube frame it is in that frame.

Path files (:func:`load_camera_path`) come in three formats (examples: docs/examples/camera_path.json and
docs/examples/base_cam.json):

1. transforms.json style (instant-ngp / NeRF), every frame rendered as it is, in the dataset's frame::

       {"fps": 30, "camera_angle_x": 0.69, "fl_x": 1111.1, "w": 800, "h": 800,
        "frames": [{"transform_matrix": [[...4 numbers...] x 4], "camera_angle_x": 0.69 or "fl_x": 1111.1}, ...]}

   Per-frame ``fl_x`` (pixels) / ``camera_angle_x`` (radians, horizontal) override the top-level ones; all top-level
   keys are optional.
2. nerfstudio's ``camera_path.json`` (written by its viewer; read as in nerfstudio's ``get_path_from_json``)::

       {"render_width": 1920, "render_height": 1080, "fps": 24, "seconds": 4, "camera_type": "perspective",
        "is_cycle": false, "default_transition_sec": 2, "default_fov": 50,
        "keyframes": [{"matrix": [16 numbers], "fov": 50, "override_transition_enabled": false, ...}, ...],
        "camera_path": [{"camera_to_world": [16 numbers, row-major 4x4], "fov": 50 (degrees, vertical)}, ...]}

   ``camera_path`` holds nerfstudio's own interpolation, one entry per frame: rendered as it is (as ``ns-render``
   does), or resampled when ``--fps``/``--seconds`` ask for other frames; a file with ``keyframes`` only is
   interpolated. Poses live in nerfstudio's normalised frame and are mapped back to the dataset's through
   ``dataparser_transforms.json`` (``{"transform": 3x4, "scale": s}``, written by ``ns-train`` next to the model) when
   one is given or lies beside the path file.
3. instant-ngp's ``base_cam.json`` (its GUI's camera path, camera_path.cu)::

       {"loop": false, "time": 0.0,
        "path": [{"R": [x, y, z, w], "T": [x, y, z], "fov": 50.6 (degrees, vertical), "slice": 0, "scale": 1.5,
                  "dof": 0}, ...]}

   Keyframes ``[R | T]`` in instant-ngp's unit-cube frame (the NeRF frame scaled and offset as ``transforms.json``'s
   ``scale``/``offset`` say, axes cycled, OpenCV camera axes): mapped into this package's ngp frame, which shares the
   scale and offset, so the run's dataset must be the one instant-ngp trained on. ``slice``/``scale`` (the GUI's
   slice plane and look-at distance) do not change a pinhole render; depth of field (``dof``) is not rendered.

Keyframed paths are interpolated by :func:`interpolate_keyframes` (positions on a cubic spline, rotations slerped,
scipy), sampled at :func:`frame_times`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ngp_cli.errors import DataError
from ngp_cli.tasks.nerf.transforms import frame_list, matrix, number, read_object, vector

__all__ = ["DEFAULT_FPS", "CameraPath", "frame_times", "interpolate_keyframes", "load_camera_path",
           "load_dataparser_transforms", "look_at", "orbit_path", "scene_center", "up_axis"]


# --------------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _any_perpendicular(v: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to the unit vector ``v``."""
    helper = np.eye(3)[int(np.argmin(np.abs(v)))]
    return _unit(np.cross(v, helper))


def look_at(eye, target, up) -> np.ndarray:
    """OpenGL camera-to-world matrix of a camera at ``eye`` looking at ``target``.

    Args:
        eye, target: (3,) world positions (any units); must differ.
        up: (3,) world up direction (any length); the camera's y axis is ``up`` made orthogonal to the view direction.
            When ``up`` is (nearly) parallel to the view direction, an arbitrary perpendicular up is used instead.

    Returns:
        (3, 4) float64 ``[right | up' | -forward | eye]`` with an orthonormal, right-handed rotation, so the camera's
        -z axis points from ``eye`` to ``target``.

    Raises ``ValueError`` when ``eye`` equals ``target`` or ``up`` is zero / not finite.
    """
    eye = np.asarray(eye, dtype=np.float64).reshape(3)
    target = np.asarray(target, dtype=np.float64).reshape(3)
    up = np.asarray(up, dtype=np.float64).reshape(3)
    delta = target - eye
    dist = np.linalg.norm(delta)
    up_len = np.linalg.norm(up)
    if not (np.isfinite(dist) and dist > 0.0):
        raise ValueError(f"look_at: eye {eye.tolist()} and target {target.tolist()} must be distinct finite points")
    if not (np.isfinite(up_len) and up_len > 0.0):
        raise ValueError(f"look_at: up vector {up.tolist()} must be non-zero and finite")
    forward = delta / dist
    right = np.cross(forward, up / up_len)
    if np.linalg.norm(right) < 1e-9:
        right = _any_perpendicular(forward)
    right = _unit(right)
    cam_up = np.cross(right, forward)
    return np.stack([right, cam_up, -forward, eye], axis=1)


def _as_poses(c2w: Any) -> np.ndarray:
    """(N, 3|4, 4) torch tensor / array-like -> (N, 3, 4) float64 numpy."""
    if hasattr(c2w, "detach"):  # torch tensor, without importing torch here
        c2w = c2w.detach().cpu().numpy()
    a = np.asarray(c2w, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] not in (3, 4) or a.shape[2] != 4 or a.shape[0] == 0:
        raise ValueError(
            f"expected camera-to-world matrices of shape (N, 3, 4) or (N, 4, 4) with N >= 1, got {a.shape}"
        )
    if not np.isfinite(a[:, :3]).all():
        raise ValueError("camera-to-world matrices contain NaN or infinite values")
    return a[:, :3, :]


def scene_center(c2w: Any) -> np.ndarray:
    """The point the cameras look at: closest, in least squares, to all cameras' optical axes.

    Minimises ``sum_i |(I - d_i d_i^T)(p - o_i)|^2`` over p, with o_i the camera positions and d_i their viewing
    directions (-z columns): the "center of attention" of instant-ngp's ``scripts/colmap2nerf.py``, which averages
    the closest points of pairs of axes instead, in closed form. Falls back, when the axes are (nearly) parallel,
    to the mean over cameras of the mean camera position projected onto each optical axis (for parallel axes: about
    the mean camera position).

    Args: c2w (N, 3, 4) or (N, 4, 4) OpenGL camera-to-world matrices (numpy or torch).
    Returns: (3,) float64 point in the matrices' world frame.
    Raises ``ValueError`` for a wrong shape or non-finite values.
    """
    poses = _as_poses(c2w)
    origins = poses[:, :, 3]
    dirs = -poses[:, :, 2]
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]  # (N, 3, 3) projectors orthogonal to each axis
    a = proj.sum(axis=0)
    b = np.einsum("nij,nj->i", proj, origins)
    eig = np.linalg.eigvalsh(a)
    if eig[0] > 1e-6 * max(eig[-1], 1e-300):
        return np.linalg.solve(a, b)
    mean = origins.mean(axis=0)
    t = np.einsum("ni,ni->n", mean[None] - origins, dirs)
    return (origins + t[:, None] * dirs).mean(axis=0)


def up_axis(c2w: Any) -> np.ndarray:
    """The world's up direction as seen by the cameras: a unit (3,) float64 vector in the matrices' frame.

    Starts from the mean of the cameras' up vectors (column 1). A camera without roll has its right vector (column 0)
    perpendicular to the world's up, so when the right vectors span a plane, the up axis is taken as the direction
    most perpendicular to all of them (least squares: the eigenvector of ``sum_i x_i x_i^T`` with the smallest
    eigenvalue), signed to agree with the mean up vector. That is exact for roll-free cameras at any azimuths, where
    the plain mean tilts towards the side with more cameras. When the right vectors are (nearly) all parallel (a
    forward-facing capture, a single camera), the mean up vector is used, made perpendicular to their common
    direction. Last resort, if the mean up vector vanishes: the normal of the plane best fitting the camera positions.

    Args: c2w (N, 3, 4) or (N, 4, 4) OpenGL camera-to-world matrices (numpy or torch).
    Raises ``ValueError`` for a wrong shape or non-finite values.
    """
    poses = _as_poses(c2w)
    rights = poses[:, :, 0] / np.linalg.norm(poses[:, :, 0], axis=1, keepdims=True)
    ups = poses[:, :, 1] / np.linalg.norm(poses[:, :, 1], axis=1, keepdims=True)
    mean_up = ups.mean(axis=0)
    if np.linalg.norm(mean_up) < 1e-6:
        origins = poses[:, :, 3]
        if len(origins) < 3:
            raise ValueError("cannot tell the up direction: the cameras' up vectors cancel out")
        normal = np.linalg.svd(origins - origins.mean(axis=0))[2][-1]
        return _unit(normal)
    w, vecs = np.linalg.eigh(rights.T @ rights / len(rights))  # ascending eigenvalues, sum = 1
    if w[1] > 1e-4 and w[1] > 25.0 * w[0]:  # right vectors span a plane: its normal is the up axis
        up = vecs[:, 0]
        return up if up @ mean_up >= 0.0 else -up
    common = vecs[:, 2]  # the right vectors' (nearly) shared direction
    up = mean_up - (mean_up @ common) * common
    return _unit(up if np.linalg.norm(up) > 1e-6 else mean_up)


def orbit_path(c2w: Any, n_frames: int, *, center=None) -> np.ndarray:
    """A closed circular camera path around the scene, at the training cameras' mean distance and elevation.

    * centre: ``center`` (3,) if given, else :func:`scene_center` (least-squares intersection of the optical axes);
    * up axis u: :func:`up_axis`, the direction perpendicular to all cameras' right vectors, signed like the mean of
      their up vectors (column 1) (for parallel right vectors: the normalised mean up vector);
    * with v_i = position_i - centre: distance D = mean |v_i|, elevation e = mean asin(v_i·u / |v_i|); the circle has
      radius D cos e, lies at height D sin e above the centre along u;
    * frame k of n is at azimuth 2πk/n (counter-clockwise about u, endpoint excluded so the loop is seamless) from the
      first training camera's azimuth, and looks at the centre with up u (:func:`look_at`).

    Args:
        c2w: (N, 3, 4) or (N, 4, 4) OpenGL camera-to-world matrices of the training cameras (numpy array or torch
            tensor), in any world frame; the path comes back in the same frame.
        n_frames: number of frames, >= 1.
        center: optional (3,) point to orbit around.

    Returns: (n_frames, 3, 4) float32 camera-to-world matrices.
    Raises ``ValueError`` for n_frames < 1, a wrong shape or non-finite values.
    """
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    poses = _as_poses(c2w)
    centre = scene_center(poses) if center is None else np.asarray(center, dtype=np.float64).reshape(3)
    if not np.isfinite(centre).all():
        raise ValueError(f"orbit centre must be finite, got {centre.tolist()}")
    origins = poses[:, :, 3]
    up = up_axis(poses)

    v = origins - centre
    dist = np.linalg.norm(v, axis=1)
    ok = dist > 1e-12
    if not ok.any():
        raise ValueError("all cameras sit at the orbit centre: cannot derive an orbit radius")
    mean_dist = dist[ok].mean()
    elevation = np.arcsin(np.clip((v[ok] @ up) / dist[ok], -1.0, 1.0)).mean()
    radius = mean_dist * math.cos(elevation)
    height = mean_dist * math.sin(elevation)

    first = v[0] - (v[0] @ up) * up
    axis_a = _unit(first) if np.linalg.norm(first) > 1e-9 * max(mean_dist, 1e-300) else _any_perpendicular(up)
    axis_b = np.cross(up, axis_a)
    out = np.empty((int(n_frames), 3, 4), dtype=np.float32)
    for k in range(int(n_frames)):
        theta = 2.0 * math.pi * k / int(n_frames)
        eye = centre + height * up + radius * (math.cos(theta) * axis_a + math.sin(theta) * axis_b)
        out[k] = look_at(eye, centre, up)
    return out

# --------------------------------------------------------------------------------------------------------------------
# Path files
# --------------------------------------------------------------------------------------------------------------------

#: Frame rate of a path whose file gives none, when ``--fps`` is not given either.
DEFAULT_FPS = 30.0

# instant-ngp's internal frame cycles the axes of the NeRF frame (nerf_loader.h ``nerf_matrix_to_ngp``: x <- y,
# y <- z, z <- x) and uses OpenCV camera axes (y down, looking down +z). Our ngp frame keeps the NeRF axes, so a point
# of instant-ngp's frame p maps to _FROM_INGP @ p, and a camera rotation M to _FROM_INGP @ M @ _FLIP_YZ.
_FROM_INGP = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])


@dataclass
class CameraPath:
    """Cameras to render, from a path file or an orbit: one entry per output frame.

    Attributes:
        c2w: (F, 3, 4) float64 OpenGL camera-to-world matrices, in the dataset's world frame (``frame == "world"``)
            or already in the ngp frame (``frame == "ngp"``: instant-ngp base_cam.json paths, whose poses live in
            instant-ngp's unit-cube frame).
        fov_x: (F,) float64 horizontal field of view in radians, or None.
        fl_x: (F,) float64 horizontal focal length in pixels (for an image ``width`` pixels wide), or None.
        fov_y: (F,) float64 vertical field of view in radians (nerfstudio and instant-ngp paths), or None.
    Kept in float64, so a camera of a path file gives the very rays of the same camera in a dataset.
        fps: frames per second given by the file, or None.
        width, height: image size in pixels from the file (``w``/``h`` or ``render_width``/``render_height``), or None.
        kind: ``"transforms"``, ``"nerfstudio"`` or ``"instant-ngp"``.
        frame: ``"world"`` or ``"ngp"`` (see ``c2w``).
        keyframes: the keyframes the frames were interpolated from (0: the file's frames taken as they are).
        seconds: the duration the frames span, for paths with a time line (nerfstudio, instant-ngp), else None.
        dataparser: the nerfstudio ``dataparser_transforms.json`` the poses were mapped through, or None.
        notes: one-line remarks for the user (something in the file that is not rendered, a missing dataparser
            transform).
    At most one of fov_x / fl_x / fov_y is set; all None means "use the training cameras' intrinsics".
    """

    c2w: np.ndarray
    fov_x: np.ndarray | None = None
    fl_x: np.ndarray | None = None
    fov_y: np.ndarray | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    kind: str = "transforms"
    frame: str = "world"
    keyframes: int = 0
    seconds: float | None = None
    dataparser: Path | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def focal_lengths(self, width: int, height: int) -> np.ndarray | None:
        """(F,) float32 focal lengths in pixels for rendering at ``width`` × ``height`` (square pixels), or None.

        ``fl_x`` is rescaled by ``width / self.width`` when the file gave its image width; fields of view convert as
        ``f = 0.5 * width / tan(fov_x / 2)`` or ``f = 0.5 * height / tan(fov_y / 2)``.
        """
        if self.fl_x is not None:
            scale = width / self.width if self.width else 1.0
            return (self.fl_x * scale).astype(np.float32)
        if self.fov_x is not None:
            return (0.5 * width / np.tan(0.5 * self.fov_x.astype(np.float64))).astype(np.float32)
        if self.fov_y is not None:
            return (0.5 * height / np.tan(0.5 * self.fov_y.astype(np.float64))).astype(np.float32)
        return None


def frame_times(seconds: float, fps: float) -> np.ndarray:
    """The times (seconds) of the frames of a ``seconds`` long path at ``fps``: ``k · seconds / F`` for
    ``k = 0 .. F-1``, ``F = max(1, round(seconds · fps))``. The end of the path is not a frame, as in nerfstudio's
    viewer export (``i / num_frames``) and instant-ngp's ``scripts/run.py`` (``i / n_frames``), so a loop never shows
    its first frame twice."""
    n = max(1, int(round(seconds * fps)))
    return seconds * np.arange(n, dtype=np.float64) / n


def interpolate_keyframes(times: np.ndarray, c2w: np.ndarray, fov: np.ndarray, query: np.ndarray, *,
                          loop_end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cameras between keyframes: positions on a cubic spline through the keyframe positions (scipy ``CubicSpline``,
    natural ends; periodic for a loop), rotations slerped between consecutive keyframes along the shorter arc (scipy
    ``Slerp``), the field of view interpolated linearly.

    Args:
        times: (K,) float64 strictly increasing keyframe times (any unit).
        c2w: (K, 3, 4) camera-to-world matrices with proper rotations (a uniformly scaled rotation is taken as its
            rotation; the caller refuses reflections).
        fov: (K,) fields of view (any unit).
        query: (F,) times to sample; clamped to ``[times[0], times[-1]]`` (a loop: taken modulo its period).
        loop_end: for a closed path, the time at which it is back at keyframe 0 (> ``times[-1]``); None for an open
            path.

    Returns:
        ``(c2w (F, 3, 4) float64 with orthonormal rotations, fov (F,) float64)``. A single keyframe (K = 1) is repeated
        as it is, without re-orthonormalising its rotation.

    Sources: the issue's rule (spline positions, slerped rotations, with scipy rather than our own); nerfstudio's viewer
    (viewer/render_panel.py) uses Kochanek-Bartels splines for both, instant-ngp (camera_path.cu) a uniform cubic
    B-spline of positions and quaternions: both pass near, not always through, the keyframes, where these splines
    pass through every keyframe.
    """
    from scipy.interpolate import CubicSpline
    from scipy.spatial.transform import Rotation, Slerp

    times = np.asarray(times, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    fov = np.asarray(fov, dtype=np.float64)
    if len(times) == 1:
        return np.repeat(c2w[:1, :3], len(query), axis=0), np.repeat(fov[:1], len(query))
    positions, rotations, values = c2w[:, :, 3], c2w[:, :, :3], fov
    if loop_end is not None:
        times = np.append(times, loop_end)
        positions = np.concatenate([positions, positions[:1]])
        rotations = np.concatenate([rotations, rotations[:1]])
        values = np.append(values, values[0])
        query = times[0] + np.mod(query - times[0], loop_end - times[0])
        spline = CubicSpline(times, positions, axis=0, bc_type="periodic")
    else:
        query = np.clip(query, times[0], times[-1])
        spline = CubicSpline(times, positions, axis=0, bc_type="natural")
    out = np.empty((len(query), 3, 4))
    out[:, :, :3] = Slerp(times, Rotation.from_matrix(rotations))(query).as_matrix()
    out[:, :, 3] = spline(query)
    return out, np.interp(query, times, values)


def _fps(name: Path, doc: dict) -> float | None:
    return number(name, "'fps'", doc["fps"], positive=True) if doc.get("fps") is not None else None


def _size(name: Path, doc: dict, key: str) -> int | None:
    if doc.get(key) is None:
        return None
    v = number(name, f"'{key}'", doc[key], positive=True)
    if v != int(v):
        raise DataError(f"{name}: '{key}' must be a whole number of pixels, got {doc[key]}")
    return int(v)


def _flag(name: Path, doc: dict, key: str) -> bool:
    value = doc.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise DataError(f"{name}: '{key}' must be true or false, got {json.dumps(value)[:40]}")
    return value


def _proper(name: Path, where: str, m: np.ndarray) -> np.ndarray:
    """A keyframe matrix whose rotation can be interpolated: not a reflection (the shared check already refused a
    degenerate one)."""
    if np.linalg.det(m[:3, :3]) < 0:
        raise DataError(f"{name}: {where} is a reflection (determinant < 0), not a camera rotation: it cannot be "
                        "interpolated")
    return m


def _load_transforms(name: Path, doc: dict) -> CameraPath:
    frames = frame_list(name, doc, "frames")
    width = _size(name, doc, "w")
    top: tuple[str, float] | None = None
    if doc.get("fl_x") is not None:
        top = ("fl", number(name, "'fl_x'", doc["fl_x"], positive=True))
    elif doc.get("camera_angle_x") is not None:
        top = ("fov", number(name, "'camera_angle_x'", doc["camera_angle_x"], below=math.pi))
    mats, intr = [], []
    for i, fr in enumerate(frames):
        where = f"frames[{i}]"
        if not isinstance(fr, dict):
            raise DataError(f"{name}: {where} must be an object")
        if "transform_matrix" not in fr:
            raise DataError(f"{name}: {where} has no 'transform_matrix'")
        mats.append(matrix(name, f"{where}.transform_matrix", fr["transform_matrix"]))
        if fr.get("fl_x") is not None:
            intr.append(("fl", number(name, f"{where}.fl_x", fr["fl_x"], positive=True)))
        elif fr.get("camera_angle_x") is not None:
            intr.append(("fov", number(name, f"{where}.camera_angle_x", fr["camera_angle_x"], below=math.pi)))
        else:
            intr.append(top)
    path = CameraPath(
        c2w=np.stack(mats), fps=_fps(name, doc), width=width, height=_size(name, doc, "h")
    )
    known = [x for x in intr if x is not None]
    if not known:
        return path
    if len(known) < len(intr):
        i = intr.index(None)
        raise DataError(
            f"{name}: frames[{i}] has no 'fl_x' or 'camera_angle_x' while other frames do (add one, or a top-level one)"
        )
    kinds = {k for k, _ in known}
    if kinds == {"fov"}:
        path.fov_x = np.array([v for _, v in known], dtype=np.float64)
    elif kinds == {"fl"}:
        path.fl_x = np.array([v for _, v in known], dtype=np.float64)
    elif width is not None:  # mixed: express everything as focal lengths for the file's width
        path.fl_x = np.array([v if k == "fl" else 0.5 * width / math.tan(0.5 * v) for k, v in known], np.float64)
    else:
        raise DataError(f"{name}: frames mix 'fl_x' and 'camera_angle_x'; give the image width 'w' to combine them")
    return path


def load_dataparser_transforms(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """nerfstudio's ``dataparser_transforms.json`` (written next to a trained model by ``ns-train``):
    ``{"transform": 3x4 (or 4x4) matrix, "scale": s}``, the map nerfstudio applied to the dataset's poses,
    ``p_ns = s · (A p + b)`` with ``[A | b] = transform``.

    Returns ``(transform (4, 4) float64, scale)``. Raises :class:`DataError` (one line, starting with the path) for a
    file that is not such a JSON object, a non-invertible ``transform`` or a non-positive ``scale``.
    """
    name = Path(path)
    doc = read_object(name, "nerfstudio's dataparser_transforms.json")
    for key in ("transform", "scale"):
        if key not in doc:
            raise DataError(f"{name}: no '{key}' (expected nerfstudio's dataparser_transforms.json: "
                            "{\"transform\": 3x4 matrix, \"scale\": number})")
    m = np.eye(4)
    m[:3] = matrix(name, "'transform'", doc["transform"])
    return m, number(name, "'scale'", doc["scale"], positive=True)


def _from_nerfstudio(mats: np.ndarray, transform: tuple[np.ndarray, float] | None) -> np.ndarray:
    """(N, 3, 4) camera-to-world matrices of nerfstudio's normalised frame → the dataset's frame, as nerfstudio's
    ``transform_poses_to_original_space`` (camera_utils.py) does: translation / scale, then the inverse transform
    (OpenGL camera axes on both sides)."""
    if transform is None:
        return mats
    m, scale = transform
    full = np.zeros((len(mats), 4, 4))
    full[:, :3] = mats
    full[:, :3, 3] /= scale
    full[:, 3, 3] = 1.0
    return np.einsum("ij,njk->nik", np.linalg.inv(m), full)[:, :3]


def _nerfstudio_keyframe_times(name: Path, doc: dict, frames: list, loop: bool) -> tuple[np.ndarray, float]:
    """Keyframe times (seconds) and the path's duration, as nerfstudio's viewer times them: keyframe i > 0 comes
    ``override_transition_sec`` (when ``override_transition_enabled``) or ``default_transition_sec`` after keyframe
    i - 1; a loop adds keyframe 0's transition to close it. Without any transition in the file the keyframes are
    spread evenly over its ``seconds`` (else 1 s per transition)."""
    n_trans = len(frames) if loop else len(frames) - 1
    default = doc.get("default_transition_sec")
    if default is not None:
        default = number(name, "'default_transition_sec'", default, positive=True)
    elif n_trans:
        total = number(name, "'seconds'", doc["seconds"], positive=True) if doc.get("seconds") is not None else None
        default = total / n_trans if total is not None else 1.0
    steps = []
    for i in [*range(1, len(frames)), *([0] if loop else [])]:
        kf = frames[i]
        if kf.get("override_transition_enabled") and kf.get("override_transition_sec") is not None:
            steps.append(number(name, f"keyframes[{i}].override_transition_sec", kf["override_transition_sec"],
                                positive=True))
        else:
            steps.append(default)
    cum = np.concatenate([[0.0], np.cumsum(steps)]) if steps else np.zeros(1)
    return cum[:len(frames)], float(cum[-1])


def _load_nerfstudio(name: Path, doc: dict, fps: float | None, seconds: float | None,
                     transform: tuple[np.ndarray, float] | None) -> CameraPath:
    ctype = doc.get("camera_type", "perspective")
    if ctype != "perspective":
        raise DataError(f"{name}: unsupported camera_type {json.dumps(ctype)[:40]} (only 'perspective' is supported)")
    file_fps = _fps(name, doc)
    loop = _flag(name, doc, "is_cycle")
    use_keyframes = "keyframes" in doc and not (isinstance(doc.get("camera_path"), list) and doc["camera_path"])
    key, matrix_key = ("keyframes", "matrix") if use_keyframes else ("camera_path", "camera_to_world")
    cams = frame_list(name, doc, key, "keyframes" if use_keyframes else "frames")
    default_fov = doc.get("default_fov")
    mats, fovs = [], []
    for i, cam in enumerate(cams):
        where = f"{key}[{i}]"
        if not isinstance(cam, dict):
            raise DataError(f"{name}: {where} must be an object")
        if matrix_key not in cam:
            raise DataError(f"{name}: {where} has no '{matrix_key}'")
        m = matrix(name, f"{where}.{matrix_key}", cam[matrix_key], flat_ok=True)
        mats.append(_proper(name, f"{where}.{matrix_key}", m) if use_keyframes else m)
        fov = cam.get("fov", default_fov if use_keyframes else None)
        if fov is None:
            raise DataError(f"{name}: {where} has no 'fov' (vertical field of view in degrees)")
        fovs.append(math.radians(number(name, f"{where}.fov", fov, below=180.0)))
    mats_world = _from_nerfstudio(np.stack(mats), transform)
    fovs_arr = np.array(fovs)
    path = CameraPath(c2w=mats_world, fov_y=fovs_arr, fps=file_fps,
                      width=_size(name, doc, "render_width"), height=_size(name, doc, "render_height"),
                      kind="nerfstudio")
    out_fps = fps if fps is not None else (file_fps or DEFAULT_FPS)
    if use_keyframes:
        times, duration = _nerfstudio_keyframe_times(name, doc, cams, loop)
        if seconds is not None:
            times, duration = (times * (seconds / duration) if duration > 0 else times), seconds
        query = frame_times(duration, out_fps)
        c2w, fov = interpolate_keyframes(times, mats_world, fovs_arr, query,
                                         loop_end=duration if loop and len(cams) > 1 else None)
        path.c2w, path.fov_y = c2w, fov
        path.keyframes, path.seconds = len(cams), duration
        return path
    # camera_path: nerfstudio's own frames, entry i at time i / N of the path. Taken as they are unless --fps or
    # --seconds asks for other frames than the file's, then resampled over the same path.
    n = len(cams)
    span_fps = file_fps or DEFAULT_FPS
    file_seconds = (number(name, "'seconds'", doc["seconds"], positive=True) if doc.get("seconds") is not None
                    else n / span_fps)
    path.seconds = file_seconds
    new_seconds = seconds if seconds is not None else file_seconds
    if out_fps == span_fps and new_seconds == file_seconds:
        return path
    for i, m in enumerate(mats):
        _proper(name, f"camera_path[{i}].camera_to_world", m)
    query = frame_times(new_seconds, out_fps) / new_seconds  # in [0, 1) of the path
    c2w, fov = interpolate_keyframes(np.arange(n) / n, mats_world, fovs_arr, query,
                                     loop_end=1.0 if loop and n > 1 else None)
    path.c2w, path.fov_y = c2w, fov
    path.keyframes, path.seconds = n, new_seconds
    return path


def _load_instant_ngp(name: Path, doc: dict, fps: float | None, seconds: float | None) -> CameraPath:
    """instant-ngp's base_cam.json (camera_path.cu ``CameraPath::load``): ``{"path": [{"R": quaternion x, y, z, w,
    "T": position, "fov": vertical degrees, "slice", "scale", "dof"/"aperture_size"}, ...], "loop": bool,
    "time": playback position}``, poses in instant-ngp's unit-cube frame (camera ``[R | T]`` with OpenCV axes)."""
    from scipy.spatial.transform import Rotation

    keys = frame_list(name, doc, "path", "keyframes")
    loop = _flag(name, doc, "loop")
    mats, fovs, aperture = [], [], 0.0
    for i, kf in enumerate(keys):
        where = f"path[{i}]"
        if not isinstance(kf, dict):
            raise DataError(f"{name}: {where} must be an object")
        for key in ("R", "T", "fov"):
            if key not in kf:
                raise DataError(f"{name}: {where} has no '{key}' (instant-ngp keyframes have R, a quaternion x, y, z, "
                                "w; T, a position; fov, degrees)")
        q = vector(name, f"{where}.R", kf["R"], 4)
        if np.linalg.norm(q) < 1e-6:
            raise DataError(f"{name}: {where}.R is a zero quaternion: not a rotation (the camera matrix would not be "
                            "invertible)")
        t = vector(name, f"{where}.T", kf["T"], 3)
        fovs.append(math.radians(number(name, f"{where}.fov", kf["fov"], below=180.0)))
        for key in ("slice", "scale"):
            if kf.get(key) is not None:
                number(name, f"{where}.{key}", kf[key])
        dof = kf.get("dof", kf.get("aperture_size"))
        if dof is not None:
            aperture = max(aperture, number(name, f"{where}.dof", dof))
        m = np.empty((3, 4))
        m[:, :3] = _FROM_INGP @ Rotation.from_quat(q / np.linalg.norm(q)).as_matrix() @ _FLIP_YZ
        m[:, 3] = _FROM_INGP @ t
        mats.append(m)
    n = len(keys)
    closed = loop and n > 1
    transitions = n if closed else n - 1
    duration = seconds if seconds is not None else float(transitions)  # instant-ngp's file has no duration
    step = duration / transitions if transitions else 0.0
    c2w, fov = interpolate_keyframes(np.arange(n) * step, np.stack(mats), np.array(fovs),
                                     frame_times(duration, fps if fps is not None else DEFAULT_FPS),
                                     loop_end=n * step if closed else None)
    path = CameraPath(c2w=c2w, fov_y=fov, kind="instant-ngp", frame="ngp",
                      keyframes=n, seconds=duration)
    if aperture > 0:
        path.notes.append(f"{name}: depth of field (aperture {aperture:g}) is not rendered: pinhole cameras")
    return path


def load_camera_path(path: str | os.PathLike, *, fps: float | None = None, seconds: float | None = None,
                     dataparser_transforms: str | os.PathLike | None = None) -> CameraPath:
    """Read a camera path file and turn it into one camera per output frame.

    Formats (see the module docstring): transforms.json style (``"frames"``, each frame rendered as it is),
    nerfstudio's camera_path.json (``"camera_path"``, its frames as they are, or ``"keyframes"``, interpolated) and
    instant-ngp's base_cam.json (``"path"`` of keyframes, interpolated). Keyframes are interpolated by
    :func:`interpolate_keyframes` at the times :func:`frame_times` gives for the frame rate and duration.

    Args:
        path: the file.
        fps: frames per second of the output (``--fps``), or None for the file's (nerfstudio), else
            :data:`DEFAULT_FPS`. A nerfstudio ``camera_path`` is resampled over the same path when this (or
            ``seconds``) differs from the file's.
        seconds: duration of a keyframed path (``--seconds``), or None: nerfstudio's transitions / ``seconds``;
            instant-ngp: 1 s per keyframe transition (a single keyframe: one frame).
        dataparser_transforms: nerfstudio's ``dataparser_transforms.json`` to map a nerfstudio path from
            nerfstudio's normalised frame to the dataset's (:func:`load_dataparser_transforms`), or None for one
            found beside the path file; without either, a nerfstudio path is taken in the dataset's frame (noted in
            ``notes``).

    Returns:
        :class:`CameraPath` (matrices float64 (F, 3, 4); a 4x4 matrix's last row is dropped unchecked). Field-of-view
        units: ``camera_angle_x`` radians (horizontal), nerfstudio and instant-ngp ``fov`` degrees (vertical, stored
        as radians in ``fov_y``), ``fl_x`` pixels.

    Raises:
        DataError: (one line, starting with the path) when the file is missing, a directory, unreadable, not UTF-8,
            empty or malformed JSON (with line and column), not a JSON object, has none of ``frames``,
            ``camera_path``/``keyframes`` or ``path``, has no frames or keyframes, a frame without a matrix, a matrix
            of the wrong shape or with non-numbers, NaN/inf values, a non-invertible matrix (a degenerate rotation, a
            zero quaternion; a reflection where rotations are interpolated), or a non-positive / out-of-range fov,
            focal length, fps, duration or size; and the errors of :func:`load_dataparser_transforms`.
        ValueError: a non-positive ``fps`` or ``seconds`` (the command line refuses them first).
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    name = Path(path)
    doc = read_object(name, "a camera path JSON file")
    if "frames" in doc:
        return _load_transforms(name, doc)
    if "camera_path" in doc or "keyframes" in doc:
        found = None
        if dataparser_transforms is None and (name.parent / "dataparser_transforms.json").is_file():
            found = name.parent / "dataparser_transforms.json"
        source = Path(dataparser_transforms) if dataparser_transforms is not None else found
        transform = load_dataparser_transforms(source) if source is not None else None
        result = _load_nerfstudio(name, doc, fps, seconds, transform)
        result.dataparser = source
        if source is None:
            result.notes.append(f"{name}: no dataparser_transforms.json given (--dataparser-transforms) or beside it: "
                                "the nerfstudio path is taken in the dataset's own frame")
        return result
    if "path" in doc:
        return _load_instant_ngp(name, doc, fps, seconds)
    raise DataError(f"{name}: no 'frames' (transforms.json style) or 'camera_path'/'keyframes' (nerfstudio) or "
                    "'path' (instant-ngp base_cam.json) list")

"""The built-in demo scene: a tiny NeRF-synthetic ("Blender") dataset rendered exactly with numpy ray casting.

``ngp train-nerf`` with no dataset trains on this scene, so the NeRF task can be tried, tested and benchmarked without
downloading anything (the real Blender scenes are ~100 MB each and behind a Google Drive link). It is generated once per
cache (``$NGP_CACHE_DIR/scenes/synthetic-v1``, default ``~/.cache/ngp/scenes/synthetic-v1``) in well under a second.

The scene (world units, z up as in Blender), all inside ``|x|, |y|, |z| < 1.2``:

* a box with a two-tone checker texture (cell 0.2), half extents (0.3, 0.3, 0.45), centred at the origin, turned 30°
  about z;
* three spheres on a circle of radius 0.75 around the z axis, 120° apart: red (radius 0.42), green (0.32) and blue
  (0.24), at different heights.

Shading is Lambertian with one directional light plus 30 % ambient light (no shadows, no specular), so a pixel's colour
depends only on the surface point and its normal: exactly the view-independent radiance a NeRF can represent. The
background is transparent (alpha 0). Each pixel averages a 2×2 grid of rays (at offsets 0.25 and 0.75 of the pixel), so
silhouette pixels have fractional alpha (64, 128 or 191 of 255) and store the *straight* (un-premultiplied) mean colour
of the rays that hit, as Blender's PNGs do; a loader compositing ``rgb * a + bg * (1 - a)`` gets the exact average.

Layout, as in the NeRF-synthetic scenes (Mildenhall et al. 2020, ``nerf_synthetic/lego``)::

    transforms_train.json   {"camera_angle_x": 0.6911112, "frames": [{"file_path": "./train/r_0",
                              "transform_matrix": 4x4 camera-to-world}, ...]}
    transforms_val.json
    train/r_0.png ...       RGBA, 8 bit, resolution x resolution
    val/r_0.png ...

Cameras: camera-to-world matrices in the OpenGL convention (x right, y up, the camera looks down -z), on a sphere of
radius 4 around the origin, upper hemisphere (elevation between 8° and 75°, uniform in area), each looking at the origin
with +z as world up; positions are pseudo-random from ``seed`` (train first, then val, from one generator, so the val
views differ from the training views). The horizontal field of view is the lego scene's, 0.6911112 rad (39.6°).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ngp_cli.errors import OutputError
from ngp_cli.images import write_image
from ngp_cli.runs import atomic_write_text

from .camera_path import look_at

__all__ = [
    "CAMERA_ANGLE_X",
    "CAMERA_DISTANCE",
    "SCENE_NAME",
    "default_scene_dir",
    "ensure_synthetic_scene",
    "make_synthetic_scene",
    "render_view",
]

SCENE_NAME = "synthetic-v1"  # bump the version when the scene or its defaults change: old caches are then ignored
CAMERA_ANGLE_X = 0.6911112  # horizontal field of view in radians, as in nerf_synthetic/lego/transforms_*.json
CAMERA_DISTANCE = 4.0

_ELEVATION_RANGE_DEG = (8.0, 75.0)
_AMBIENT = 0.3
_LIGHT_DIR = np.array([0.45, -0.35, 0.82])
_LIGHT_DIR = _LIGHT_DIR / np.linalg.norm(_LIGHT_DIR)

# (centre, radius, albedo) of the spheres.
_SPHERES = (
    ((0.75, 0.0, 0.05), 0.42, (0.85, 0.18, 0.15)),
    ((-0.375, 0.6495, 0.3), 0.32, (0.2, 0.75, 0.25)),
    ((-0.375, -0.6495, -0.25), 0.24, (0.2, 0.35, 0.9)),
)
_BOX_CENTER = np.array([0.0, 0.0, 0.0])
_BOX_HALF = np.array([0.3, 0.3, 0.45])
_BOX_ANGLE = math.radians(30.0)
_BOX_COLORS = (np.array([0.95, 0.8, 0.3]), np.array([0.45, 0.3, 0.15]))  # checker: light and dark cells
_BOX_CELL = 0.2
_SUBPIXEL_OFFSETS = (0.25, 0.75)  # 2x2 supersampling


def default_scene_dir() -> Path:
    """Where the demo scene is cached: ``$NGP_CACHE_DIR/scenes/synthetic-v1``, else ``~/.cache/ngp/scenes/synthetic-v1``."""
    from ngp_cli.runs import cache_dir

    return cache_dir("scenes") / SCENE_NAME


def _is_complete(scene_dir: Path) -> bool:
    return (scene_dir / "transforms_train.json").is_file() and (scene_dir / "transforms_val.json").is_file()


def ensure_synthetic_scene() -> Path:
    """Return :func:`default_scene_dir`, generating the scene there first if it does not exist yet (default sizes).

    The scene is written into a temporary sibling directory and renamed into place, so a half-written scene is never
    used; when two processes race, the first rename wins and the other's copy is discarded. A directory that exists but
    lacks the transforms files (not made by this function) is replaced. Raises :class:`OutputError` when the cache
    directory cannot be written.
    """
    final = default_scene_dir()
    if _is_complete(final):
        return final
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise OutputError(f"{parent}: cannot create the demo scene cache: {e.strerror or e}") from None
    try:
        make_synthetic_scene(tmp)
        if final.exists() and not _is_complete(final):
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final):  # not a lost race: a real failure
                raise
    except OSError as e:
        raise OutputError(f"{final}: cannot write the demo scene: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _camera_poses(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` OpenGL camera-to-world (4, 4) float64 matrices on the upper hemisphere of radius 4, looking at the origin."""
    lo, hi = (math.sin(math.radians(e)) for e in _ELEVATION_RANGE_DEG)
    poses = np.zeros((n, 4, 4))
    for i in range(n):
        azimuth = rng.uniform(0.0, 2.0 * math.pi)
        z = rng.uniform(lo, hi)  # uniform in z = uniform in area on the spherical zone
        r = math.sqrt(1.0 - z * z)
        eye = CAMERA_DISTANCE * np.array([r * math.cos(azimuth), r * math.sin(azimuth), z])
        poses[i, :3] = look_at(eye, np.zeros(3), np.array([0.0, 0.0, 1.0]))
        poses[i, 3, 3] = 1.0
    return poses


def _intersect_spheres(o: np.ndarray, d: np.ndarray, t: np.ndarray, rgb: np.ndarray) -> None:
    """Update nearest hit distance ``t`` (R,) and shaded colour ``rgb`` (R, 3) in place with the spheres."""
    for center, radius, albedo in _SPHERES:
        oc = o - np.asarray(center)
        b = d @ oc  # o is shared by all rays: oc is (3,)
        c = float(oc @ oc) - radius * radius
        disc = b * b - c
        hit = disc > 0.0
        th = np.full_like(t, np.inf)
        th[hit] = -b[hit] - np.sqrt(disc[hit])
        closer = hit & (th > 0.0) & (th < t)
        if not closer.any():
            continue
        p = o + th[closer, None] * d[closer]
        n = (p - np.asarray(center)) / radius
        t[closer] = th[closer]
        rgb[closer] = np.asarray(albedo) * _shade(n)[:, None]


def _intersect_box(o: np.ndarray, d: np.ndarray, t: np.ndarray, rgb: np.ndarray) -> None:
    """Slab test against the turned box (in its local frame); same in-place update as :func:`_intersect_spheres`."""
    c, s = math.cos(_BOX_ANGLE), math.sin(_BOX_ANGLE)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # box-to-world
    ol = rot.T @ (o - _BOX_CENTER)
    dl = d @ rot  # rows: rot.T @ d_i
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(dl == 0.0, 1e-30, dl)
        t1 = (-_BOX_HALF - ol) * inv
        t2 = (_BOX_HALF - ol) * inv
    tnear = np.minimum(t1, t2)
    tfar = np.maximum(t1, t2)
    t_enter = tnear.max(axis=1)
    t_exit = tfar.min(axis=1)
    closer = (t_enter <= t_exit) & (t_enter > 0.0) & (t_enter < t)
    if not closer.any():
        return
    axis = tnear[closer].argmax(axis=1)
    rows = np.arange(axis.size)
    nl = np.zeros((axis.size, 3))
    nl[rows, axis] = -np.sign(dl[closer][rows, axis])
    te = t_enter[closer]
    pl = ol + te[:, None] * dl[closer]
    cells = np.floor((pl + _BOX_HALF) / _BOX_CELL + 1e-9).astype(np.int64)
    cells[rows, axis] = 0  # the checker lies on each face: ignore the coordinate along the normal
    dark = (cells.sum(axis=1) % 2).astype(bool)
    albedo = np.where(dark[:, None], _BOX_COLORS[1], _BOX_COLORS[0])
    t[closer] = te
    rgb[closer] = albedo * _shade(nl @ rot.T)[:, None]


def _shade(normals: np.ndarray) -> np.ndarray:
    """Lambertian shading factor for unit world normals (R, 3): ambient + (1 - ambient) * max(0, n·l)."""
    return _AMBIENT + (1.0 - _AMBIENT) * np.maximum(normals @ _LIGHT_DIR, 0.0)


def render_view(c2w: np.ndarray, width: int, height: int, camera_angle_x: float = CAMERA_ANGLE_X) -> np.ndarray:
    """Render the scene exactly from one pinhole camera.

    Args:
        c2w: (3, 4) or (4, 4) OpenGL camera-to-world matrix (x right, y up, looking down -z), world units.
        width, height: image size in pixels.
        camera_angle_x: horizontal field of view in radians; square pixels, principal point at the image centre.

    Returns:
        (height, width, 4) float64 straight-alpha RGBA in [0, 1], row 0 at the top; alpha is the fraction of the 2×2
        rays of a pixel that hit the object, RGB the mean colour of those rays (0 where alpha is 0).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    focal = 0.5 * width / math.tan(0.5 * camera_angle_x)
    origin = c2w[:3, 3]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    acc_rgb = np.zeros((height * width, 3))
    acc_hit = np.zeros(height * width)
    for dy in _SUBPIXEL_OFFSETS:
        for dx in _SUBPIXEL_OFFSETS:
            x = (cols.ravel() + dx - 0.5 * width) / focal
            y = -(rows.ravel() + dy - 0.5 * height) / focal
            dirs = np.stack([x, y, -np.ones_like(x)], axis=1) @ c2w[:3, :3].T
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            t = np.full(dirs.shape[0], np.inf)
            rgb = np.zeros_like(dirs)
            _intersect_spheres(origin, dirs, t, rgb)
            _intersect_box(origin, dirs, t, rgb)
            hit = np.isfinite(t)
            acc_rgb[hit] += rgb[hit]
            acc_hit += hit
    n_sub = len(_SUBPIXEL_OFFSETS) ** 2
    alpha = acc_hit / n_sub
    color = np.divide(acc_rgb, acc_hit[:, None], out=np.zeros_like(acc_rgb), where=acc_hit[:, None] > 0)
    return np.concatenate([color, alpha[:, None]], axis=1).reshape(height, width, 4)


def make_synthetic_scene(
    out_dir: Path, *, n_train: int = 48, n_val: int = 8, resolution: int = 64, seed: int = 0
) -> Path:
    """Write the demo scene as a NeRF-synthetic dataset into ``out_dir`` (created if needed) and return ``out_dir``.

    Writes ``transforms_train.json`` / ``transforms_val.json`` (``camera_angle_x`` = 0.6911112 and frames with
    ``file_path`` such as ``"./train/r_0"`` without extension and a 4×4 OpenGL ``transform_matrix``) and
    ``train/r_K.png`` / ``val/r_K.png``: RGBA uint8, ``resolution`` × ``resolution``. See the module docstring for the
    scene and the cameras. The output is byte-for-byte deterministic for given arguments; each file is written
    atomically (temporary file + rename), existing files of the same names are replaced.

    Raises ``ValueError`` for n_train < 1, n_val < 0 or resolution < 2, and :class:`OutputError` (one line, starting
    with the path) when ``out_dir`` cannot be written.
    """
    if n_train < 1 or n_val < 0 or resolution < 2:
        raise ValueError(f"need n_train >= 1, n_val >= 0, resolution >= 2; got {n_train}, {n_val}, {resolution}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    splits = (("train", _camera_poses(n_train, rng)), ("val", _camera_poses(n_val, rng)))
    for split, poses in splits:
        try:
            (out_dir / split).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{out_dir / split}: cannot create directory: {e.strerror or e}") from None
        frames = []
        for k, pose in enumerate(poses):
            rgba = render_view(pose, resolution, resolution)
            pixels = np.rint(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8)
            write_image(out_dir / split / f"r_{k}.png", pixels)
            frames.append({"file_path": f"./{split}/r_{k}", "transform_matrix": pose.tolist()})
        doc = {"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}
        atomic_write_text(out_dir / f"transforms_{split}.json", json.dumps(doc, indent=2) + "\n")
    return out_dir

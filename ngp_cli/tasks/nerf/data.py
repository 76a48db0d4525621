"""NeRF datasets in the instant-ngp / NeRF ``transforms.json`` format: loading, validation, pixel sampling and rays.

A dataset is one JSON file (``transforms.json``, or ``transforms_{train,val,test}.json`` for NeRF-synthetic/Blender
scenes) listing frames, each with an image ``file_path`` (relative to the JSON's folder; Blender omits the extension)
and a 4x4 camera-to-world ``transform_matrix`` in OpenGL camera axes (x right, y up, looking down -z). Intrinsics are
given at the top level and may be overridden per frame, as in instant-ngp's src/nerf_loader.cu.

Coordinates: poses are converted with :func:`~ngp_cli.tasks.nerf.cameras.nerf_matrix_to_ngp` (translation
``t * scale + offset``, axes kept), so a scene of ``aabb_scale`` 1 lies in the unit cube around (0.5, 0.5, 0.5) and the
scene box is ``[0.5 - aabb_scale/2, 0.5 + aabb_scale/2]^3``. Pixels follow :mod:`ngp_cli.tasks.nerf.cameras`.

Memory: images are read one at a time (optionally box-downscaled) into one preallocated ``(N, H, W, C)`` uint8 tensor
and are never converted to float as a whole; :meth:`NerfDataset.sample` converts only the sampled pixels.

Errors: every problem with the input raises :class:`~ngp_cli.errors.DataError` (exit 4) with a one-line message that
starts with the JSON path (image decoding errors from :func:`~ngp_cli.images.read_image` start with the image path).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ngp_cli.console import warn
from ngp_cli.errors import DataError
from ngp_cli.images import read_image

from .cameras import generate_rays, nerf_matrix_to_ngp, pixel_grid
from .transforms import frame_list, is_number, matrix, number, read_object

__all__ = ["IMAGE_SUFFIXES_TRIED", "SPLITS", "NerfDataset", "load_dataset"]

SPLITS: tuple[str, ...] = ("train", "val", "test", "all")
# Suffixes tried, in order, for a ``file_path`` that names no existing file (Blender's ``./train/r_0``).
IMAGE_SUFFIXES_TRIED: tuple[str, ...] = (".png", ".jpg", ".jpeg")
# instant-ngp defaults (nerf_loader.cu / nerf_loader.h).
DEFAULT_SCALE = 0.33
DEFAULT_OFFSET = (0.5, 0.5, 0.5)
MAX_AABB_SCALE = 128  # 1 << (NERF_CASCADES - 1) with 8 cascades
_DIST_KEYS = ("k1", "k2", "p1", "p2")
_FOCAL_KEYS = ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y")


@dataclass
class NerfDataset:
    """A loaded NeRF dataset (one split). See the module docstring for conventions.

    Attributes:
        root: dataset directory (the JSON's folder).
        split: "train", "val", "test" or "all".
        images: (N, H, W, C) uint8 CPU tensor, C = 3 (RGB) or 4 (RGBA, straight alpha).
        c2w: (N, 3, 4) float32 OpenGL camera-to-world matrices in the ngp frame.
        intrinsics: (N, 4) float32 fx, fy, cx, cy in pixels of the loaded (downscaled) images.
        distortion: (N, 4) float32 k1, k2, p1, p2 (zeros when the JSON has none).
        width, height: loaded image size in pixels.
        aabb_scale: power of two in 1..128; the scene box is [0.5 - aabb_scale/2, 0.5 + aabb_scale/2]^3.
        scale, offset: the world -> ngp transform of the translations.
        file_paths: the image file of each view.
        white_background: True when the images have alpha (NeRF-synthetic/Blender): evaluate on white.
        n_missing: frames of the split whose image file is absent (skipped).
    """

    root: Path
    split: str
    images: Tensor
    c2w: Tensor
    intrinsics: Tensor
    distortion: Tensor
    width: int
    height: int
    aabb_scale: int
    scale: float
    offset: tuple[float, float, float]
    file_paths: list[Path]
    white_background: bool
    n_missing: int

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def has_alpha(self) -> bool:
        """Whether the images carry an alpha channel (C == 4)."""
        return int(self.images.shape[-1]) == 4

    @functools.cached_property
    def has_distortion(self) -> bool:
        """Whether any view has a non-zero distortion coefficient (computed once: a training step must not read the
        device)."""
        return bool(torch.any(self.distortion != 0))

    def to(self, device: torch.device | str) -> NerfDataset:
        """This split with images, poses, intrinsics and distortion on ``device`` (a new dataset; ``self`` unchanged),
        so that training batches are drawn and their rays generated there."""
        return dataclasses.replace(self, images=self.images.to(device), c2w=self.c2w.to(device),
                                   intrinsics=self.intrinsics.to(device), distortion=self.distortion.to(device))

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``n`` random training pixels, uniform over all images and pixels (with replacement).

        Args:
            n: number of pixels.
            generator: a ``torch.Generator`` on the images' device; the same seed gives the same pixels.
        Returns:
            image index (n,) int64; pixel centres (n, 2) float32 (x + 0.5, y + 0.5) in pixel units (y downwards);
            colour (n, C) float32 in [0, 1] (value / 255), straight (not premultiplied) alpha when C == 4. All on the
            images' device.
        """
        n_img, h, w, c = (int(s) for s in self.images.shape)
        flat = torch.randint(0, n_img * h * w, (int(n),), generator=generator, dtype=torch.int64,
                             device=self.images.device)
        colour = self.images.view(-1, c)[flat].to(torch.float32) / 255.0
        per_image = h * w
        image_index = flat // per_image
        rem = flat - image_index * per_image
        y = rem // w
        x = rem - y * w
        pixels = torch.stack((x, y), dim=-1).to(torch.float32) + 0.5
        return image_index, pixels, colour

    def rays(self, image_index: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Rays through ``pixels`` (n, 2) (pixel units, centres at +0.5) of the views ``image_index`` (n,).

        Returns origins (n, 3) and unit directions (n, 3), float32, on ``pixels``' device (see
        :func:`~ngp_cli.tasks.nerf.cameras.generate_rays`).
        """
        idx = image_index.to(device=self.c2w.device, dtype=torch.int64)
        dist = self.distortion[idx] if self.has_distortion else None
        return generate_rays(self.c2w[idx], self.intrinsics[idx], pixels, dist)

    def image_rays(self, i: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Rays through every pixel centre of view ``i``, row-major: origins (H*W, 3), unit directions (H*W, 3),
        float32, on ``device`` (default CPU)."""
        pixels = pixel_grid(self.width, self.height, device=device)
        idx = torch.full((pixels.shape[0],), int(i), dtype=torch.int64)
        return self.rays(idx, pixels)

    def image_float(self, i: int, background: tuple[float, float, float] | None = None) -> Tensor:
        """View ``i`` as (H, W, 3) float32 RGB in [0, 1] on CPU.

        RGBA images are composited onto ``background`` (``rgb * a + background * (1 - a)``, e.g. (1, 1, 1) for the
        NeRF-synthetic scenes); with ``background=None`` the alpha channel is dropped (straight RGB). RGB images are
        returned as they are.
        """
        img = self.images[int(i)].to(torch.float32) / 255.0
        rgb = img[..., :3]
        if img.shape[-1] == 4 and background is not None:
            a = img[..., 3:4]
            bg = torch.as_tensor(background, dtype=torch.float32).reshape(3)
            rgb = rgb * a + bg * (1.0 - a)
        return rgb.contiguous()


# --------------------------------------------------------------------------------------------------------------------
# JSON parsing
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    json_path: Path
    index: int  # position in its JSON's frame list
    label: str  # "frame 3 (./train/r_3)" for messages
    matrix: np.ndarray  # (3, 4) float64
    image_path: Path | None  # None when no file exists
    fl: tuple[float | None, float | None]  # explicit focal lengths (pixels of the JSON's w/h)
    angle: tuple[float | None, float | None]  # camera_angle_x/y (radians)
    c: tuple[float | None, float | None]  # cx, cy
    wh: tuple[float | None, float | None]  # w, h
    dist: tuple[float, float, float, float]


def _resolve_image(json_path: Path, root: Path, label: str, file_path: str, allow_outside_root: bool) -> Path | None:
    """The image file of a frame, or None when it does not exist. Containment is checked lexically (``..`` and
    absolute paths), so a dataset may keep its images behind a symlink."""
    root_abs = os.path.normpath(os.path.abspath(root))
    target = os.path.normpath(os.path.join(root_abs, file_path))
    inside = os.path.commonpath([root_abs, target]) == root_abs
    if not inside and not allow_outside_root:
        # The hint first: error lines are cut at a length limit, and the frame's path can be long.
        raise DataError(
            f"{json_path}: image path outside the dataset folder (pass --allow-outside-root to allow it): {label}"
        )
    # Keep the user's spelling of the root (relative stays relative) in file_paths.
    candidate = root / file_path
    if candidate.is_file():
        return candidate
    for suffix in IMAGE_SUFFIXES_TRIED:
        alt = candidate.with_name(candidate.name + suffix)
        if alt.is_file():
            return alt
    return None


def _lookup(frame: dict, top: dict, key: str):
    return frame[key] if key in frame else top.get(key)


def _parse_file(json_path: Path, root: Path, doc: dict, allow_outside_root: bool) -> list[_Frame]:
    if "frames" not in doc:
        raise DataError(
            f"{json_path}: missing 'frames' (expected a list of frames with file_path and transform_matrix)"
        )
    frames = frame_list(json_path, doc, "frames")
    out: list[_Frame] = []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise DataError(f"{json_path}: frame {i}: expected an object, got {type(fr).__name__}")
        fp = fr.get("file_path")
        if not isinstance(fp, str) or not fp:
            raise DataError(f"{json_path}: frame {i}: missing 'file_path' (a string)")
        label = f"frame {i} ({fp})"
        if "transform_matrix" not in fr:
            raise DataError(f"{json_path}: {label}: missing 'transform_matrix'")
        m = matrix(json_path, f"{label}: 'transform_matrix'", fr["transform_matrix"])

        def opt(key: str, fr=fr, label=label, positive=False):
            v = _lookup(fr, doc, key)
            if v is None:
                return None
            where = f"{label}: " if key in fr else ""
            return number(json_path, f"{where}'{key}'", v, positive=positive)

        # A frame giving any focal key (fl_x, fl_y, camera_angle_x, camera_angle_y) replaces the top level's focal
        # lengths as a whole (a single axis then sets both), like instant-ngp's per-frame read_focal_length.
        src = fr if any(k in fr for k in _FOCAL_KEYS) else doc
        where = f"{label}: " if src is fr else ""
        fl: list[float | None] = []
        angle: list[float | None] = []
        for axis in ("x", "y"):
            f_val = src.get(f"fl_{axis}")
            a_val = src.get(f"camera_angle_{axis}")
            fl.append(None if f_val is None else number(json_path, f"{where}'fl_{axis}'", f_val))
            angle.append(None if a_val is None else number(json_path, f"{where}'camera_angle_{axis}'", a_val))
        if all(v is None for v in (*fl, *angle)):
            raise DataError(
                f"{json_path}: {label}: no camera intrinsics (expected fl_x/fl_y or camera_angle_x/camera_angle_y "
                "at the top level or in the frame)"
            )
        wh = (opt("w", positive=True), opt("h", positive=True))
        dist = tuple(opt(k) or 0.0 for k in _DIST_KEYS)
        image = _resolve_image(json_path, root, label, fp, allow_outside_root)
        out.append(_Frame(json_path, i, label, m, image, (fl[0], fl[1]), (angle[0], angle[1]),
                          (opt("cx"), opt("cy")), wh, dist))  # type: ignore[arg-type]
    return out


def _aabb_scale(json_path: Path, doc: dict) -> int:
    v = number(json_path, "'aabb_scale'", doc.get("aabb_scale", 1), positive=True)
    p = 1 << max(0, math.ceil(math.log2(v) - 1e-9))  # round up to a power of two
    if p > MAX_AABB_SCALE:
        warn(
            f"{json_path}: aabb_scale {v:g} is larger than {MAX_AABB_SCALE}; using {MAX_AABB_SCALE}"
        )
        p = MAX_AABB_SCALE
    return p


def _scale_offset(json_path: Path, doc: dict) -> tuple[float, tuple[float, float, float]]:
    scale = number(json_path, "'scale'", doc.get("scale", DEFAULT_SCALE), positive=True)
    off = doc.get("offset", list(DEFAULT_OFFSET))
    if not isinstance(off, list) or len(off) != 3:
        raise DataError(f"{json_path}: 'offset' must be a list of 3 numbers")
    offset = tuple(number(json_path, "'offset'", v) for v in off)
    return scale, offset  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def _box_downscale(arr: np.ndarray, n: int) -> np.ndarray:
    """N x N box filter (area average) of an integer (H, W, C) image, cropped to a multiple of N at the right/bottom;
    rounds half up; returns the input dtype."""
    h, w, c = arr.shape
    hh, ww = h // n, w // n
    crop = arr[: hh * n, : ww * n]
    s = crop.reshape(hh, n, ww, n, c).sum(axis=(1, 3), dtype=np.int64)
    return ((s + (n * n) // 2) // (n * n)).astype(arr.dtype)


def _to_u8_channels(arr: np.ndarray, path: Path) -> np.ndarray:
    """uint8/uint16 (H, W, 1..4) -> uint8 (H, W, 3 or 4): gray replicated to RGB, gray+alpha to RGBA."""
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise DataError(
            f"{path}: {arr.dtype} (floating-point) images are not supported for NeRF training "
            "(expected 8- or 16-bit PNG or JPEG)"
        )
    c = arr.shape[2]
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 2:
        return np.concatenate([np.repeat(arr[..., :1], 3, axis=2), arr[..., 1:2]], axis=2)
    return arr


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def _split_files(path: Path, split: str) -> tuple[list[Path], bool]:
    """The JSON file(s) for ``split`` and whether holdout selection applies (a single transforms file)."""
    if not path.is_dir():
        if not path.exists():
            raise DataError(f"{path}: no such file or directory (expected a transforms JSON file or its folder)")
        return [path], True
    if split == "all":
        per_split = sorted(path.glob("transforms_*.json"))
        if per_split:
            order = {"train": 0, "val": 1, "test": 2}
            per_split.sort(key=lambda p: (order.get(p.stem[len("transforms_"):], 3), p.name))
            return per_split, False
    else:
        f = path / f"transforms_{split}.json"
        if f.is_file():
            return [f], False
    single = path / "transforms.json"
    if single.is_file():
        return [single], True
    want = "transforms_*.json" if split == "all" else f"transforms_{split}.json"
    raise DataError(f"{path}: no {want} or transforms.json in this folder (split '{split}')")


def load_dataset(
    path: Path,
    split: str = "train",
    *,
    downscale: int = 1,
    holdout_every: int = 0,
    allow_outside_root: bool = False,
) -> NerfDataset:
    """Load one split of a NeRF dataset into memory.

    Args:
        path: a transforms JSON file, or a directory holding ``transforms_{split}.json`` (split "all" merges every
            ``transforms_*.json``, train/val/test first) or else ``transforms.json``.
        split: "train", "val", "test" or "all". With a single transforms file and ``holdout_every = k > 0``, "val" and
            "test" are the frames whose index in the JSON (before dropping missing images) is a multiple of k, "train"
            the others and "all" every frame; with k = 0 nothing is held out: "train" and "all" are every frame and
            "val"/"test" do not exist (DataError), so training frames are never evaluated as held-out ones.
        downscale: N >= 1; images are reduced by an N x N box filter (area average, rounded half up, cropped to a
            multiple of N at the right/bottom) and fx, fy, cx, cy divided by N. Alpha is averaged like the colours.
        holdout_every: k >= 0, see ``split``; ignored when per-split JSON files are used.
        allow_outside_root: accept image paths (``..``, absolute) outside the JSON's folder.
    Returns:
        A :class:`NerfDataset` (see its attributes for shapes and units).

    Intrinsics, as instant-ngp's src/nerf_loader.cu: focal per axis from ``fl_x``/``fl_y``, else from
    ``camera_angle_x``/``camera_angle_y`` (radians, f = 0.5 w / tan(angle / 2)); a missing axis copies the other.
    ``cx``, ``cy`` default to w/2, h/2; ``w``, ``h`` to the image size; ``k1, k2, p1, p2`` to 0. A frame's own keys
    override the top-level ones (a frame with any focal key replaces both top-level focal lengths). When ``w``/``h``
    are given and differ from the image size, the intrinsics are rescaled to the image (with one warning).
    ``aabb_scale`` (default 1) is rounded up to a power of two, at most 128; ``scale`` defaults to 0.33 and
    ``offset`` to (0.5, 0.5, 0.5). Gray images are replicated to RGB, gray+alpha to RGBA, 16-bit images are converted
    to 8 bits (rounded); mixing RGB and RGBA views gives RGBA (alpha 255 for the RGB views).

    Frames whose image file is missing (a ``file_path`` without extension tries .png, .jpg, .jpeg) are skipped with
    one warning line on stderr.

    Raises:
        DataError: (one line, starting with the JSON path) missing file/folder, malformed JSON (line and column), no
            object, missing or empty ``frames``, a frame without ``file_path`` or ``transform_matrix``, a matrix that is
            not 3x4/4x4 numbers or holds NaN/inf or has a degenerate rotation (|det| < 1e-6), NaN/inf or non-numeric
            intrinsics, no intrinsics at all, a non-positive focal length, a bad ``aabb_scale``/``scale``/``offset``,
            an image path outside the folder (without ``allow_outside_root``), a split with no frames ("val"/"test"
            of a single transforms file with ``holdout_every = 0``: no held-out views), no image file
            at all, images of mixed sizes, images smaller than ``downscale``; image decoding errors (from
            :func:`~ngp_cli.images.read_image`, starting with the image path) and float images.
        ValueError: an unknown ``split``, ``downscale < 1`` or ``holdout_every < 0`` (programming errors).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    downscale = int(downscale)
    if downscale < 1:
        raise ValueError(f"downscale must be >= 1, got {downscale}")
    if holdout_every < 0:
        raise ValueError(f"holdout_every must be >= 0, got {holdout_every}")
    path = Path(path)
    files, holdout_applies = _split_files(path, split)
    root = files[0].parent
    if holdout_applies and holdout_every == 0 and split in ("val", "test"):
        raise DataError(f"{files[0]}: no held-out views: nerf.holdout_every=0 holds none of this single transforms "
                        f"file's frames out as split '{split}'")

    frames: list[_Frame] = []
    aabb_scale, scale, offset = 1, DEFAULT_SCALE, DEFAULT_OFFSET
    for n_file, jf in enumerate(files):
        doc = read_object(jf, "a transforms JSON file")
        if n_file == 0:
            aabb_scale = _aabb_scale(jf, doc)
            scale, offset = _scale_offset(jf, doc)
        parsed = _parse_file(jf, root, doc, allow_outside_root)
        if any(k in doc and is_number(doc[k]) and doc[k] != 0 for k in ("k3", "k4")) or doc.get("is_fisheye"):
            warn(f"{jf}: k3/k4/fisheye distortion is not supported; only k1, k2, p1, p2 are used")
        if holdout_applies and holdout_every > 0 and split != "all":
            keep_val = split in ("val", "test")
            parsed = [f for f in parsed if (f.index % holdout_every == 0) == keep_val]
        frames.extend(parsed)
    where = files[0] if len(files) == 1 else root
    if not frames:
        raise DataError(f"{where}: split '{split}' has no frames (holdout_every={holdout_every})")

    present = [f for f in frames if f.image_path is not None]
    n_missing = len(frames) - len(present)
    if not present:
        raise DataError(
            f"{where}: none of the {len(frames)} frames of split '{split}' has an image file "
            f"(first: {frames[0].label}, looked in {root})"
        )
    if n_missing:
        warn(f"{where}: {n_missing} of {len(frames)} frames have no image file; skipped")

    images, raw_w, raw_h = _load_images(where, present, downscale)
    n, height, width, _ = images.shape

    intr = np.empty((n, 4), dtype=np.float64)
    warned_wh = False
    for k, f in enumerate(present):
        jw = f.wh[0] if f.wh[0] is not None else float(raw_w)
        jh = f.wh[1] if f.wh[1] is not None else float(raw_h)
        fx = f.fl[0] if f.fl[0] is not None else _focal_from_angle(f.angle[0], jw)
        fy = f.fl[1] if f.fl[1] is not None else _focal_from_angle(f.angle[1], jh)
        if fx is None:
            fx = fy
        if fy is None:
            fy = fx
        assert fx is not None and fy is not None  # _parse_file guarantees one of the four keys
        if not (math.isfinite(fx) and math.isfinite(fy)) or fx <= 0 or fy <= 0:
            raise DataError(f"{f.json_path}: {f.label}: non-positive or invalid focal length (fx={fx:g}, fy={fy:g})")
        cx = f.c[0] if f.c[0] is not None else jw / 2
        cy = f.c[1] if f.c[1] is not None else jh / 2
        sx, sy = raw_w / jw, raw_h / jh
        if (sx != 1 or sy != 1) and not warned_wh:
            warn(
                f"{f.json_path}: images are {raw_w}x{raw_h} but the JSON says w={jw:g}, h={jh:g}; "
                "intrinsics rescaled to the images"
            )
            warned_wh = True
        intr[k] = (fx * sx / downscale, fy * sy / downscale, cx * sx / downscale, cy * sy / downscale)

    mats = torch.from_numpy(np.stack([f.matrix for f in present]))
    return NerfDataset(
        root=root,
        split=split,
        images=images,
        c2w=nerf_matrix_to_ngp(mats, scale, offset),
        intrinsics=torch.from_numpy(intr).to(torch.float32),
        distortion=torch.tensor([f.dist for f in present], dtype=torch.float32).reshape(n, 4),
        width=int(width),
        height=int(height),
        aabb_scale=aabb_scale,
        scale=float(scale),
        offset=(float(offset[0]), float(offset[1]), float(offset[2])),
        file_paths=[f.image_path for f in present],  # type: ignore[misc]
        white_background=int(images.shape[-1]) == 4,
        n_missing=n_missing,
    )


def _focal_from_angle(angle: float | None, size: float) -> float | None:
    if angle is None:
        return None
    if not 0 < angle < math.pi:
        return -1.0  # reported as a non-positive focal length
    return 0.5 * size / math.tan(0.5 * angle)


def _load_images(where: Path, frames: list[_Frame], downscale: int) -> tuple[Tensor, int, int]:
    """Read the frames' images one at a time into a preallocated (N, H, W, C) uint8 tensor; returns it and the raw
    (pre-downscale) width and height."""
    images: Tensor | None = None
    raw_w = raw_h = 0
    first = frames[0]
    for k, f in enumerate(frames):
        assert f.image_path is not None
        arr = _to_u8_channels(read_image(f.image_path), f.image_path)
        h, w, c = arr.shape
        if images is None:
            raw_w, raw_h = w, h
            if w < downscale or h < downscale:
                raise DataError(f"{f.image_path}: image is {w}x{h}, smaller than downscale {downscale}")
            out_h, out_w = h // downscale, w // downscale
            images = torch.empty((len(frames), out_h, out_w, c), dtype=torch.uint8)
        elif (w, h) != (raw_w, raw_h):
            raise DataError(
                f"{where}: images of mixed sizes: {f.label} is {w}x{h} but {first.label} is {raw_w}x{raw_h}"
            )
        if downscale > 1:
            arr = _box_downscale(arr, downscale)
        if c == 4 and images.shape[-1] == 3:  # first RGBA view after RGB ones: widen, opaque alpha for the others
            wide = torch.empty((*images.shape[:3], 4), dtype=torch.uint8)
            wide[..., :3] = images
            wide[..., 3] = 255
            images = wide
        buf = images.numpy()
        if c == 3 and buf.shape[-1] == 4:
            buf[k, ..., :3] = arr
            buf[k, ..., 3] = 255
        else:
            buf[k] = arr
    assert images is not None
    return images, raw_w, raw_h


def load_split(cfg: Any, split: str) -> NerfDataset:
    """Load ``split`` of the dataset ``cfg`` (a :class:`~ngp_cli.tasks.nerf.config.NerfConfig`) names, with its loading
    options. Raises DataError."""
    return load_dataset(Path(cfg.nerf.path), split, downscale=cfg.nerf.downscale,
                        holdout_every=cfg.nerf.holdout_every, allow_outside_root=cfg.nerf.allow_outside_root)

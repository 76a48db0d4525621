"""The images of a capture: the photos of a folder, or the sharpest frame of each window of a video.

Both end up in one folder (``OUT_DIR/images/`` of ``ngp process-data``), where structure from motion and, later,
``ngp train-nerf`` read them:

* a folder: every ``.jpg``/``.jpeg``/``.png`` file directly in it (not in sub-folders; suffixes in any case), sorted
  by name, keeps its name. Each is decoded once (:func:`ngp_cli.images.read_image`, so a corrupt file is a data error
  naming it) to measure its sharpness; without downscaling the file is then copied byte for byte, otherwise written
  anew (PNG stays PNG, JPEG is written at quality 95).
* a video: decoded once with imageio-ffmpeg (ffmpeg applies the rotation the file asks for). The frames are split into
  ``num_frames`` windows of equal length (from the duration and frame rate in the header; when the header has neither,
  the frames are counted first) and the sharpest frame of each window is kept, as ``frame_00000.jpg``,
  ``frame_00001.jpg``, ... (JPEG quality 95; the names sort in time order, as sequential matching needs).

Sharpness is the variance of the Laplacian of the gray image, as instant-ngp's scripts/colmap2nerf.py computes it with
OpenCV (``cv2.Laplacian(gray, cv2.CV_64F).var()``: the 3x3 kernel [[0,1,0],[1,-4,1],[0,1,0]], mirrored borders, gray =
0.299 R + 0.587 G + 0.114 B on the 0..255 scale); the same numbers, through scipy.

``downscale`` N > 1 reduces each image by an N x N box filter (area average, :func:`skimage.transform.
downscale_local_mean`), cropped to a multiple of N at the right and bottom and rounded half up, the same filter as
``ngp train-nerf``'s own ``nerf.downscale``.

Errors: :class:`~ngp_cli.errors.DataError` (exit 4) for input that cannot be used (no images, an unreadable image, a
video that does not decode or has no frames), :class:`~ngp_cli.errors.OutputError` (exit 6) when the output folder
cannot be written. Imports numpy, scipy, scikit-image, Pillow and imageio-ffmpeg lazily or at module level; no torch.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ngp_cli.errors import DataError, OutputError

__all__ = [
    "DEFAULT_NUM_FRAMES",
    "IMAGE_SUFFIXES",
    "JPEG_QUALITY",
    "CapturedImage",
    "downscale_image",
    "extract_video_frames",
    "import_images",
    "list_images",
    "probe_video",
    "sharpness",
    "window_of",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
DEFAULT_NUM_FRAMES = 100
JPEG_QUALITY = 95
# ITU-R BT.601 luma, as OpenCV's cv2.COLOR_BGR2GRAY (colmap2nerf's sharpness).
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])

Advance = Callable[..., None]


@dataclass(frozen=True)
class CapturedImage:
    """One image written into the capture's image folder.

    Attributes:
        name: file name inside the image folder (``IMG_0001.jpg``, ``frame_00003.jpg``).
        width, height: size in pixels of the written image.
        sharpness: variance of the Laplacian of the gray image (0..255 scale) before downscaling (see the module).
        source: where it came from: the original file, or ``"<video> frame <i>"`` (i counted from 0).
    """

    name: str
    width: int
    height: int
    sharpness: float
    source: str


def _short(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (ffmpeg errors span many lines), at most 160 characters."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def list_images(folder: Path) -> list[Path]:
    """The images directly in ``folder``: files whose suffix (any case) is one of :data:`IMAGE_SUFFIXES`, sorted by
    name. Sub-folders and hidden files are not searched. Raises DataError when there is none, or when the folder cannot
    be listed."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder: {_short(exc)}") from None
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    if not images:
        raise DataError(f"{folder}: no images in this folder (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return images


def _gray_255(image: np.ndarray) -> np.ndarray:
    """(H, W) float64 gray on the 0..255 scale of an (H, W, C) uint8/uint16 image (C = 1..4; alpha ignored)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    scale = 255.0 / 65535.0 if arr.dtype == np.uint16 else 1.0
    if arr.shape[2] >= 3:
        gray = arr[..., :3].astype(np.float64) @ _GRAY_WEIGHTS
    else:
        gray = arr[..., 0].astype(np.float64)
    return gray * scale


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of ``image``'s gray version: colmap2nerf's ``variance_of_laplacian``.

    Args:
        image: (H, W, C) or (H, W) uint8 or uint16 array, C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA); 16-bit
            values are brought to the 0..255 scale first.
    Returns:
        the variance (float, 0..255 scale squared) of the 3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] of the gray image
        (0.299 R + 0.587 G + 0.114 B), borders mirrored (OpenCV's BORDER_REFLECT_101); larger is sharper.
    Source: instant-ngp scripts/colmap2nerf.py ``sharpness`` (``cv2.Laplacian(gray, cv2.CV_64F).var()``).
    """
    from scipy.ndimage import laplace

    return float(laplace(_gray_255(image), mode="mirror").var())


def downscale_image(image: np.ndarray, n: int) -> np.ndarray:
    """Reduce ``image`` by an ``n`` x ``n`` box filter (area average).

    Args:
        image: (H, W, C) uint8 or uint16 array with H, W >= n.
        n: factor >= 1 (1 returns ``image`` unchanged).
    Returns:
        (H // n, W // n, C) array of ``image``'s dtype: the mean of each n x n block (crop to a multiple of n at the
        right and bottom), rounded half up, as ``ngp train-nerf``'s ``nerf.downscale``.
    Raises:
        ValueError: ``n < 1`` or an image smaller than n (callers check sizes first).
    Source: :func:`skimage.transform.downscale_local_mean`.
    """
    from skimage.transform import downscale_local_mean

    n = int(n)
    if n < 1:
        raise ValueError(f"downscale must be >= 1, got {n}")
    if n == 1:
        return image
    h, w = image.shape[:2]
    if h < n or w < n:
        raise ValueError(f"image {w}x{h} is smaller than the downscale factor {n}")
    crop = image[: h // n * n, : w // n * n]
    factors = (n, n) + (1,) * (crop.ndim - 2)
    mean = downscale_local_mean(crop, factors)
    return np.floor(mean + 0.5).astype(image.dtype)


def _write(path: Path, image: np.ndarray) -> None:
    """Write ``image`` as PNG (ngp_cli.images) or JPEG (Pillow, quality :data:`JPEG_QUALITY`) by ``path``'s suffix.
    Raises OutputError."""
    if path.suffix.lower() == ".png":
        from ngp_cli.images import write_image

        write_image(path, image)
        return
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8 or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"JPEG needs uint8 gray or RGB, got {arr.dtype} with shape {arr.shape}")
    try:
        Image.fromarray(arr).save(path, format="JPEG", quality=JPEG_QUALITY)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {_short(exc)}") from None


def import_images(paths: list[Path], images_dir: Path, downscale: int, advance: Advance) -> list[CapturedImage]:
    """Copy (``downscale`` 1) or box-downscale the photos ``paths`` into ``images_dir`` (which exists), keeping their
    names; measure each one's :func:`sharpness`. Calls ``advance()`` after each image.

    Raises DataError (an image that cannot be decoded, is not 8/16-bit, or is smaller than ``downscale``; two names that
    differ only in case, which collide on case-insensitive file systems) and OutputError.
    """
    from ngp_cli.images import read_image

    seen: dict[str, Path] = {}
    out: list[CapturedImage] = []
    for path in paths:
        key = path.name.lower()
        if key in seen:
            raise DataError(f"{path}: same name as {seen[key].name} except for case; rename one of them")
        seen[key] = path
        image = read_image(path)
        if image.dtype not in (np.uint8, np.uint16):
            raise DataError(f"{path}: {image.dtype} images are not supported (expected 8- or 16-bit PNG or JPEG)")
        h, w = image.shape[:2]
        score = sharpness(image)
        target = images_dir / path.name
        if downscale > 1:
            if h < downscale or w < downscale:
                raise DataError(f"{path}: image is {w}x{h}, smaller than --downscale {downscale}")
            image = downscale_image(image, downscale)
            h, w = image.shape[:2]
            _write(target, image)
        else:
            try:
                shutil.copyfile(path, target)
            except OSError as exc:
                raise OutputError(f"{target}: cannot copy {path}: {_short(exc)}") from None
        out.append(CapturedImage(path.name, int(w), int(h), score, str(path)))
        advance()
    return out


def window_of(index: int, n_frames: int, n_windows: int) -> int:
    """The window (0 .. n_windows - 1) of frame ``index`` (from 0) when ``n_frames`` frames are split into
    ``n_windows`` windows of equal length; frames past the expected count fall in the last window."""
    return min(index * n_windows // max(n_frames, 1), n_windows - 1)


def _expected_frames(video: Path, meta: dict) -> int:
    """Frames the video should have: duration x fps from the header, else counted by decoding (imageio-ffmpeg)."""
    fps = meta.get("fps") or 0.0
    duration = meta.get("duration") or 0.0
    try:
        estimate = int(round(float(fps) * float(duration)))
    except (TypeError, ValueError):
        estimate = 0
    if estimate > 0:
        return estimate
    import imageio_ffmpeg

    try:
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    except (OSError, RuntimeError) as exc:
        raise DataError(f"{video}: cannot decode the video: {_short(exc)}") from None
    return int(n or 0)


def probe_video(video: Path) -> tuple[int, int]:
    """Width and height of the frames ``video`` decodes to (after the rotation it asks for), from ffmpeg's header,
    without decoding any frame. Raises DataError when the file is not a video ffmpeg can open."""
    import imageio_ffmpeg

    reader = None
    try:
        reader = imageio_ffmpeg.read_frames(str(video))
        meta = reader.__next__()
        width, height = (int(v) for v in meta["size"])
    except (OSError, RuntimeError, ValueError, StopIteration, IndexError, KeyError, TypeError) as exc:
        raise DataError(f"{video}: cannot decode the video: {_short(exc)}") from None
    finally:
        if reader is not None:
            reader.close()
    return width, height


def extract_video_frames(video: Path, images_dir: Path, num_frames: int, downscale: int, advance: Advance,
                         ) -> tuple[list[CapturedImage], int]:
    """Keep the sharpest frame of each of ``num_frames`` equal windows of ``video`` (see the module docstring).

    Args:
        video: a video file ffmpeg can decode (mp4, mov, mkv, avi, webm, ...).
        images_dir: existing folder; the frames are written there as ``frame_00000.jpg``, ... (RGB, JPEG quality 95).
        num_frames: windows (>= 1); a video with fewer frames gives all of its frames.
        downscale: box-filter factor (>= 1) applied to the kept frames.
        advance: progress callback, ``advance(1, total=None)`` per decoded frame (the first call gives ``total``).
    Returns:
        the kept frames in time order, and the number of frames decoded.
    Raises:
        DataError: the file does not decode as a video, has no frames, or its frames are smaller than ``downscale``.
        OutputError: a frame cannot be written.
    """
    import imageio_ffmpeg

    video = Path(video)
    try:
        reader = imageio_ffmpeg.read_frames(str(video))
        meta = reader.__next__()
    except (OSError, RuntimeError, ValueError, StopIteration, IndexError) as exc:
        raise DataError(f"{video}: cannot decode the video: {_short(exc)}") from None
    kept: list[CapturedImage] = []
    decoded = 0
    try:
        width, height = (int(v) for v in meta["size"])
        if downscale > 1 and (width < downscale or height < downscale):
            raise DataError(f"{video}: frames are {width}x{height}, smaller than --downscale {downscale}")
        expected = _expected_frames(video, meta)
        if expected <= 0:
            raise DataError(f"{video}: the video has no frames")
        n_windows = max(1, min(int(num_frames), expected))
        best: tuple[float, int, np.ndarray] | None = None
        current = 0

        def flush() -> None:
            if best is None:
                return
            score, index, frame = best
            image = downscale_image(frame, downscale)
            name = f"frame_{len(kept):05d}.jpg"
            _write(images_dir / name, image)
            kept.append(CapturedImage(name, int(image.shape[1]), int(image.shape[0]), score,
                                      f"{video} frame {index}"))

        frame_bytes = width * height * 3
        first = True
        for raw in reader:
            if len(raw) != frame_bytes:
                raise DataError(f"{video}: frame {decoded} has {len(raw)} bytes, expected {frame_bytes}")
            frame = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            window = window_of(decoded, expected, n_windows)
            if window != current:
                flush()
                best, current = None, window
            score = sharpness(frame)
            if best is None or score > best[0]:
                best = (score, decoded, frame.copy())
            decoded += 1
            if first:
                advance(1, total=expected)
                first = False
            else:
                advance(1)
        flush()
    except (OSError, RuntimeError) as exc:
        raise DataError(f"{video}: cannot decode the video: {_short(exc)}") from None
    finally:
        reader.close()
    if decoded == 0:
        raise DataError(f"{video}: the video has no frames")
    return kept, decoded


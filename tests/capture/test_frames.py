"""ngp_cli.capture.frames: sharpness, box downscaling, image listing, and the sharpest frame per window of a video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ngp_cli.capture.frames import downscale_image, extract_video_frames, list_images, sharpness, window_of
from ngp_cli.errors import DataError


def test_sharpness_is_the_variance_of_the_laplacian():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    gray = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    pad = np.pad(gray, 1, mode="reflect")  # numpy's "reflect" is OpenCV's BORDER_REFLECT_101
    lap = pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:] - 4 * gray
    assert sharpness(img) == pytest.approx(lap.var(), rel=1e-12)
    assert sharpness(np.full((8, 8, 3), 77, dtype=np.uint8)) == 0.0
    # 16-bit values are brought to the 8-bit scale; gray+alpha uses the gray channel.
    assert sharpness(img.astype(np.uint16) * 257) == pytest.approx(lap.var(), rel=1e-9)
    ga = np.stack([img[..., 0], np.full(img.shape[:2], 255, np.uint8)], axis=-1)
    assert sharpness(ga) == pytest.approx(sharpness(img[..., :1]), rel=1e-12)


def test_downscale_image_is_a_box_filter():
    img = np.arange(5 * 7 * 1, dtype=np.uint16).reshape(5, 7, 1) * 3
    out = downscale_image(img, 2)
    assert out.shape == (2, 3, 1) and out.dtype == np.uint16
    block = img[:4, :6].reshape(2, 2, 3, 2, 1).mean(axis=(1, 3))
    np.testing.assert_array_equal(out, np.floor(block + 0.5).astype(np.uint16))
    assert downscale_image(img, 1) is img
    with pytest.raises(ValueError):
        downscale_image(img, 6)


def test_list_images(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.jpeg", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.jpeg"]
    empty = tmp_path / "sub2"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        list_images(empty)


def test_window_of():
    assert [window_of(i, 10, 3) for i in range(12)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert [window_of(i, 4, 4) for i in range(4)] == [0, 1, 2, 3]


def _video(path: Path, frames: list[np.ndarray]) -> None:
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=12, quality=10, macro_block_size=1)
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()


def test_extract_video_frames_keeps_the_sharpest_per_window(tmp_path):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, size=(48, 64, 3)).astype(np.float64)
    sharp_at = {1, 6, 11}  # the sharpest frame of each window of 4 (12 frames, 3 windows)
    frames = []
    for i in range(12):
        sigma = 0.0 if i in sharp_at else 1.5 + 0.1 * i
        img = base if sigma == 0 else gaussian_filter(base, sigma=(sigma, sigma, 0))
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    video = tmp_path / "v.mp4"
    _video(video, frames)
    out = tmp_path / "frames"
    out.mkdir()
    calls = []
    kept, decoded = extract_video_frames(video, out, 3, 2, lambda n=1, *, total=None: calls.append((n, total)))
    assert decoded == 12
    assert [k.source for k in kept] == [f"{video} frame {i}" for i in sorted(sharp_at)]
    assert [k.name for k in kept] == ["frame_00000.jpg", "frame_00001.jpg", "frame_00002.jpg"]
    assert sorted(p.name for p in out.iterdir()) == [k.name for k in kept]
    assert all((k.width, k.height) == (32, 24) for k in kept)
    assert len(calls) == 12 and calls[0] == (1, 12)
    # More windows than frames: every frame.
    out2 = tmp_path / "all"
    out2.mkdir()
    kept, _ = extract_video_frames(video, out2, 100, 1, lambda n=1, *, total=None: None)
    assert len(kept) == 12 and (kept[0].width, kept[0].height) == (64, 48)


def test_extract_video_frames_refuses_a_file_that_is_not_a_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    with pytest.raises(DataError, match="cannot decode the video"):
        extract_video_frames(bad, tmp_path, 10, 1, lambda n=1, *, total=None: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]

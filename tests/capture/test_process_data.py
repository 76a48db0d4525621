"""``ngp process-data`` end to end (issue 16, part 1): poses from a video of the synthetic scene, a photo folder with
--downscale and an image that cannot be registered, and the bad-input contract (one line, the documented exit code,
nothing written to OUT_DIR)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bad_input.conftest import assert_refused, tree_digest
from tests.capture.scene import orbit_poses, render_frames, umeyama, write_video

# Poses from video: 40 frames at 200 px. Measured on 2 cores: about 7 s for process-data; rotation errors up to 0.39
# degree and position errors up to 0.30 % of the orbit's diameter (36 frames: 0.23 degree, 0.21 %; 48 frames: 0.38
# degree, 0.27 %; 40 frames at 240 px: 0.57 degree, 0.48 %). Without guided matching it was 0.88 degree, 0.83 %.
N_FRAMES = 40
SIZE = 200


@pytest.fixture
def colmap():
    return pytest.importorskip("pycolmap")


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = (np.trace(a.T @ b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def test_poses_from_video(tmp_path, ngp, colmap):
    poses = orbit_poses(N_FRAMES)
    video = tmp_path / "orbit.mp4"
    write_video(video, render_frames(poses, SIZE))
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("an earlier result\n")
    res = ngp("process-data", video, out, "--matching", "sequential", "--overwrite")
    assert res.exit_code == 0, res.stderr
    done = res.last("done")
    assert done["source"] == "video" and done["frames_decoded"] == N_FRAMES
    assert done["images_given"] == N_FRAMES and done["images_registered"] == N_FRAMES, done
    assert done["unregistered"] == []
    assert 0 < done["mean_reprojection_error_px"] < 1.0
    assert done["mapping_runs"] == 1 and done["pairs_checked"] >= N_FRAMES and done["pairs_contradicted"] == 0
    for stage in range(1, 6):
        assert f"process-data [{stage}/5]" in res.stderr
    assert _entries(tmp_path) == ["orbit.mp4", "out"]  # no temporary folder left, the old result replaced
    assert _entries(out) == ["colmap", "images", "sparse_points.ply", "transforms.json"]
    assert len(list((out / "images").iterdir())) == N_FRAMES
    assert (out / "colmap" / "sparse" / "0" / "images.bin").is_file()

    doc = json.loads((out / "transforms.json").read_text())
    assert doc["aabb_scale"] == done["aabb_scale"] and doc["ply_file_path"] == "sparse_points.ply"
    assert (doc["w"], doc["h"]) == (SIZE, SIZE)
    true_focal = 0.5 * SIZE / np.tan(0.5)
    assert doc["fl_x"] == pytest.approx(true_focal, rel=0.02) and doc["fl_y"] == pytest.approx(true_focal, rel=0.02)
    index = [int(f["file_path"].removeprefix("images/frame_").removesuffix(".jpg")) for f in doc["frames"]]
    assert index == list(range(N_FRAMES))
    est = np.array([f["transform_matrix"] for f in doc["frames"]])
    # colmap2nerf's frame: mean camera distance 4 from the point they look at (the origin), cameras above it.
    assert np.linalg.norm(est[:, :3, 3], axis=1).mean() == pytest.approx(4.0, rel=1e-6)
    assert (est[:, 2, 3] > 0).all()

    # The done-when test: after the best similarity, within 1 degree and 1 % of the scene (the orbit's diameter).
    truth = poses[index]
    scale, rot, shift = umeyama(est[:, :3, 3], truth[:, :3, 3])
    centres = scale * est[:, :3, 3] @ rot.T + shift
    diameter = max(np.linalg.norm(a - b) for a in truth[:, :3, 3] for b in truth[:, :3, 3])
    position_error = np.linalg.norm(centres - truth[:, :3, 3], axis=1).max() / diameter
    rotation_error = max(_rotation_error_deg(rot @ e[:3, :3], t[:3, :3]) for e, t in zip(est, truth, strict=True))
    assert position_error < 0.01, position_error
    assert rotation_error < 1.0, rotation_error

    # The sparse points lie in the frame of the poses: aligned the same way, most sit on the floor (z = -0.6), on the
    # dome (radius 9) or on the objects (within 1.3 of the origin). Measured: 97 %; far floor points come out a few
    # hundredths low (SIFT's blob centres on an obliquely seen plane), hence the tolerances.
    import trimesh

    cloud = trimesh.load(out / "sparse_points.ply")
    assert len(cloud.vertices) == done["points"] > 500
    pts = scale * np.asarray(cloud.vertices, dtype=np.float64) @ rot.T + shift
    radius = np.linalg.norm(pts, axis=1)
    on_surface = (np.abs(pts[:, 2] + 0.6) < 0.15) | (np.abs(radius - 9.0) < 0.5) | (radius < 1.3)
    assert on_surface.mean() > 0.9, on_surface.mean()

    # ngp train-nerf's loader reads it.
    from ngp_cli.tasks.nerf.data import load_dataset

    data = load_dataset(out, "train")
    assert len(data) == N_FRAMES and (data.width, data.height) == (SIZE, SIZE)
    assert data.aabb_scale == doc["aabb_scale"]


def test_photo_folder_with_downscale_and_an_unregistered_image(tmp_path, ngp, colmap):
    import imageio.v3 as iio

    photos = tmp_path / "photos"
    photos.mkdir()
    for k, frame in enumerate(render_frames(orbit_poses(40)[:12], 2 * 160)):
        iio.imwrite(photos / f"view_{k:02d}.png", frame)
    noise = np.random.default_rng(0).integers(0, 256, size=(320, 320, 3), dtype=np.uint8)
    iio.imwrite(photos / "zz_noise.png", noise)
    out = tmp_path / "data" / "scene"  # the parent folder is created
    res = ngp("process-data", photos, out, "--downscale", "2")
    assert res.exit_code == 0, res.stderr
    done = res.last("done")
    assert done["source"] == "images" and done["images_given"] == 13
    assert done["images_registered"] == 12 and done["unregistered"] == ["zz_noise.png"]
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("ngp: warning:")]
    assert len(warnings) == 1 and "1 of 13 images not registered" in warnings[0] and "zz_noise.png" in warnings[0]
    doc = json.loads((out / "transforms.json").read_text())
    assert (doc["w"], doc["h"]) == (160, 160)
    assert [f["file_path"] for f in doc["frames"]] == [f"images/view_{k:02d}.png" for k in range(12)]
    assert iio.imread(out / "images" / "zz_noise.png").shape == (160, 160, 3)
    assert _entries(tmp_path / "data") == ["scene"]


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line, the documented exit code, nothing written to OUT_DIR
# --------------------------------------------------------------------------------------------------------------------


def _noise_photos(folder: Path) -> Path:
    """4 unrelated 64 x 64 noise PNGs in a new ``folder`` (nothing matches between them)."""
    import imageio.v3 as iio

    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(4):
        iio.imwrite(folder / f"p{k}.png", rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    return folder


def test_video_that_does_not_decode(tmp_path, ngp, colmap):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated, not a video")
    res = ngp("process-data", bad, tmp_path / "out")
    assert_refused(res, 4, "cannot decode the video")
    assert _entries(tmp_path) == ["clip.mp4"]


def test_folder_without_images(tmp_path, ngp, colmap):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("no photos here\n")
    res = ngp("process-data", folder, tmp_path / "out")
    assert_refused(res, 4, "no images")
    assert _entries(tmp_path) == ["photos"]


def test_too_few_images_missing_input_and_a_single_image(tmp_path, ngp, colmap):
    folder = _noise_photos(tmp_path / "photos")
    (folder / "p3.png").unlink()
    (folder / "p2.png").unlink()
    assert_refused(ngp("process-data", folder, tmp_path / "out"), 4, "at least 3")
    assert_refused(ngp("process-data", tmp_path / "nowhere", tmp_path / "out"), 4, "no such file")
    assert_refused(ngp("process-data", folder / "p0.png", tmp_path / "out"), 4, "single image")
    assert _entries(tmp_path) == ["photos"]


def test_out_dir_not_empty_or_a_file(tmp_path, ngp, colmap):
    photos = _noise_photos(tmp_path / "photos")
    out = tmp_path / "out"
    out.mkdir()
    (out / "transforms.json").write_text("{}\n")
    before = tree_digest(tmp_path)
    assert_refused(ngp("process-data", photos, out), 2, "--overwrite")
    assert tree_digest(tmp_path) == before
    a_file = tmp_path / "file"
    a_file.write_text("x")
    before = tree_digest(tmp_path)
    assert_refused(ngp("process-data", photos, a_file), 6, "not a folder")
    assert_refused(ngp("process-data", photos, tmp_path, "--overwrite"), 2, "inside OUT_DIR")
    assert tree_digest(tmp_path) == before


def test_pycolmap_missing(tmp_path, ngp, monkeypatch):
    photos = _noise_photos(tmp_path / "photos")
    monkeypatch.setitem(sys.modules, "pycolmap", None)  # import pycolmap raises ImportError
    res = ngp("process-data", photos, tmp_path / "out")
    line = assert_refused(res, 2, "pip install 'ngp-cli[capture]'")
    assert "pycolmap" in line
    assert _entries(tmp_path) == ["photos"]


def test_fewer_than_three_registered(tmp_path, ngp, colmap):
    photos = _noise_photos(tmp_path / "photos")  # unrelated noise images: nothing matches
    out = tmp_path / "out"
    out.mkdir()  # an empty OUT_DIR is allowed, and stays empty
    res = ngp("-q", "process-data", photos, out)
    assert_refused(res, 4, "registered 0 of 4 images")
    assert _entries(tmp_path) == ["out", "photos"] and _entries(out) == []


def test_ctrl_c_leaves_nothing(tmp_path, ngp, colmap, monkeypatch):
    from ngp_cli.capture import process

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(process, "run_sfm", interrupted)
    photos = _noise_photos(tmp_path / "photos")
    res = ngp("-q", "process-data", photos, tmp_path / "out")
    assert_refused(res, 130, "stopped by Ctrl-C")
    assert _entries(tmp_path) == ["photos"]

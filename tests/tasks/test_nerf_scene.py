"""The NeRF demo scene, camera trajectories and path files, and the frame/video writer."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from ngp_cli.errors import DataError, OutputError
from ngp_cli.images import read_image
from ngp_cli.tasks.nerf.camera_path import (
    CameraPath,
    frame_times,
    load_camera_path,
    look_at,
    orbit_path,
    scene_center,
    up_axis,
)
from ngp_cli.tasks.nerf.synthetic import (
    default_scene_dir,
    ensure_synthetic_scene,
    make_synthetic_scene,
)
from ngp_cli.video import FrameWriter

# -- the synthetic scene ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("scene"), n_train=4, n_val=2, resolution=32, seed=3)


def _frames(scene: Path, split: str) -> list[dict]:
    doc = json.loads((scene / f"transforms_{split}.json").read_text())
    assert doc["camera_angle_x"] == pytest.approx(0.6911112)
    return doc["frames"]


def test_scene_layout_json_and_pngs(small_scene):
    for split, n in (("train", 4), ("val", 2)):
        frames = _frames(small_scene, split)
        assert [f["file_path"] for f in frames] == [f"./{split}/r_{k}" for k in range(n)]
        for f in frames:
            m = np.array(f["transform_matrix"])
            assert m.shape == (4, 4)
            np.testing.assert_allclose(m[3], [0, 0, 0, 1])
            img = read_image(small_scene / (f["file_path"][2:] + ".png"))
            assert img.shape == (32, 32, 4) and img.dtype == np.uint8
    train = np.array([f["transform_matrix"] for f in _frames(small_scene, "train")])
    val = np.array([f["transform_matrix"] for f in _frames(small_scene, "val")])
    dists = np.linalg.norm(train[:, None, :3, 3] - val[None, :, :3, 3], axis=-1)
    assert dists.min() > 1e-3  # val cameras are not training cameras


def test_scene_alpha_has_background_object_and_antialiased_edges(small_scene):
    alpha = np.stack([read_image(small_scene / "train" / f"r_{k}.png")[..., 3] for k in range(4)])
    values = set(np.unique(alpha).tolist())
    assert 0 in values and 255 in values
    assert values & {64, 128, 191}  # 2x2 supersampling: 1, 2 or 3 of 4 rays hit
    assert values <= {0, 64, 128, 191, 255}
    # background pixels carry no colour; object pixels are not black (ambient light)
    img = read_image(small_scene / "train" / "r_0.png")
    assert (img[img[..., 3] == 0][:, :3] == 0).all()
    assert img[img[..., 3] == 255][:, :3].max(axis=1).min() > 20
    # corners are background: the object fits in the frame
    assert (alpha[:, [0, 0, -1, -1], [0, -1, 0, -1]] == 0).all()


def test_scene_is_deterministic_for_a_seed(small_scene, tmp_path):
    again = make_synthetic_scene(tmp_path / "a", n_train=4, n_val=2, resolution=32, seed=3)
    other = make_synthetic_scene(tmp_path / "b", n_train=4, n_val=2, resolution=32, seed=4)
    for rel in ("transforms_train.json", "transforms_val.json", "train/r_0.png", "train/r_3.png", "val/r_1.png"):
        assert (again / rel).read_bytes() == (small_scene / rel).read_bytes()
    assert (other / "transforms_train.json").read_bytes() != (small_scene / "transforms_train.json").read_bytes()


def test_scene_cameras_are_orthonormal_look_at_origin_and_object_is_centred(small_scene):
    for split in ("train", "val"):
        for f in _frames(small_scene, split):
            m = np.array(f["transform_matrix"])
            r, pos = m[:3, :3], m[:3, 3]
            np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-9)
            assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-9)
            assert np.linalg.norm(pos) == pytest.approx(4.0, abs=1e-9)
            assert pos[2] > 0  # upper hemisphere
            np.testing.assert_allclose(-r[:, 2], -pos / np.linalg.norm(pos), atol=1e-9)  # -z looks at the origin
            assert r[2, 0] == pytest.approx(0.0, abs=1e-9)  # no roll: camera x is horizontal (world up +z)
            assert r[2, 1] > 0  # camera y points up-ish
            alpha = read_image(small_scene / (f["file_path"][2:] + ".png"))[..., 3].astype(np.float64)
            ys, xs = np.mgrid[0:32, 0:32] + 0.5
            cy, cx = (alpha * ys).sum() / alpha.sum(), (alpha * xs).sum() / alpha.sum()
            assert abs(cx - 16) < 3.5 and abs(cy - 16) < 3.5, (cx, cy)


def test_ensure_synthetic_scene_creates_once_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NGP_CACHE_DIR", str(tmp_path / "cache"))
    assert default_scene_dir() == tmp_path / "cache" / "scenes" / "synthetic-v1"
    scene = ensure_synthetic_scene()
    assert scene == default_scene_dir()
    assert len(_frames(scene, "train")) == 48 and len(_frames(scene, "val")) == 8
    assert read_image(scene / "val" / "r_7.png").shape == (64, 64, 4)
    stamp = (scene / "transforms_train.json").stat().st_mtime_ns
    assert ensure_synthetic_scene() == scene
    assert (scene / "transforms_train.json").stat().st_mtime_ns == stamp  # not regenerated
    assert [p.name for p in scene.parent.iterdir()] == ["synthetic-v1"]  # no temporary leftovers


def test_ensure_synthetic_scene_reports_unwritable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("NGP_CACHE_DIR", str(blocker))
    with pytest.raises(OutputError, match="^" + re.escape(str(blocker))):
        ensure_synthetic_scene()


# -- look_at / orbit --------------------------------------------------------------------------------------------------


def test_look_at_is_opengl():
    m = look_at([0, -5, 0], [0, 0, 0], [0, 0, 1])
    np.testing.assert_allclose(m, [[1, 0, 0, 0], [0, 0, -1, -5], [0, 1, 0, 0]], atol=1e-12)
    # up parallel to the view direction still gives an orthonormal camera looking at the target
    m = look_at([0, 0, 3], [0, 0, 0], [0, 0, 1])
    np.testing.assert_allclose(m[:, :3].T @ m[:, :3], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(-m[:, 2], [0, 0, -1], atol=1e-12)
    with pytest.raises(ValueError):
        look_at([1, 2, 3], [1, 2, 3], [0, 0, 1])


def _ring(center, up, radius, height, n, phase=0.3):
    """Cameras on a circle around ``center`` (axis ``up``) looking at it; irregular azimuths."""
    up = np.asarray(up, float) / np.linalg.norm(up)
    a = np.cross(up, [0.3, 0.5, 0.1])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    angles = phase + np.array([0.0, 0.9, 2.1, 2.8, 4.0, 5.5])[:n]
    eyes = [center + height * up + radius * (math.cos(t) * a + math.sin(t) * b) for t in angles]
    return np.stack([look_at(e, center, up) for e in eyes]), a, b, angles


def _check_orbit(frames, center, up, radius, height, first_eye):
    up = np.asarray(up, float) / np.linalg.norm(up)
    for m in frames.astype(np.float64):
        eye = m[:, 3]
        v = eye - center
        assert v @ up == pytest.approx(height, abs=1e-4)
        assert np.linalg.norm(v - (v @ up) * up) == pytest.approx(radius, abs=1e-4)
        np.testing.assert_allclose(-m[:, 2], -v / np.linalg.norm(v), atol=1e-5)  # looks at the centre
        assert m[:, 1] @ up > 0
    np.testing.assert_allclose(frames[0, :, 3], first_eye, atol=1e-4)  # starts at the first camera's azimuth


def test_orbit_recovers_centre_radius_and_height():
    center = np.array([0.4, -0.2, 1.3])
    up = np.array([0.1, 0.2, 1.0])
    cams, *_ = _ring(center, up, radius=2.5, height=0.8, n=6)
    np.testing.assert_allclose(scene_center(cams), center, atol=1e-6)
    frames = orbit_path(cams, 12)
    assert frames.shape == (12, 3, 4) and frames.dtype == np.float32
    _check_orbit(frames, center, up, 2.5, 0.8, cams[0, :, 3])
    # evenly spaced: consecutive positions are equally far apart, and the 12 frames go once around
    steps = np.linalg.norm(np.diff(frames[:, :, 3], axis=0, append=frames[:1, :, 3]), axis=1)
    np.testing.assert_allclose(steps, 2 * 2.5 * math.sin(math.pi / 12), atol=1e-4)


def test_orbit_accepts_torch_4x4_and_an_explicit_centre():
    torch = pytest.importorskip("torch")
    center = np.array([0.5, 0.5, 0.5])  # instant-ngp's unit-cube frame, y up
    cams, *_ = _ring(center, [0, 1, 0], radius=0.9, height=0.3, n=5)
    full = np.concatenate([cams, np.tile([[[0, 0, 0, 1.0]]], (5, 1, 1))], axis=1)
    frames = orbit_path(torch.tensor(full, dtype=torch.float32), 8)
    _check_orbit(frames, center, [0, 1, 0], 0.9, 0.3, cams[0, :, 3])
    other = np.array([0.5, 0.7, 0.5])
    frames = orbit_path(cams, 4, center=other)
    for m in frames.astype(np.float64):
        v = m[:, 3] - other
        np.testing.assert_allclose(-m[:, 2], -v / np.linalg.norm(v), atol=1e-5)


def test_up_axis_exact_for_uneven_cameras_and_forward_facing(small_scene):
    cams = np.array([f["transform_matrix"] for f in _frames(small_scene, "train")])  # 4 random hemisphere cameras
    np.testing.assert_allclose(up_axis(cams), [0, 0, 1], atol=1e-9)
    assert np.linalg.norm(cams[:, :3, 1].mean(axis=0) - [0, 0, 1]) > 1e-3  # the plain mean would be tilted
    tilted = np.stack([look_at([x, 0, 5], [x, 1, 0], [0, 0, 1]) for x in (-1.0, 0.0, 1.0)])  # parallel right vectors
    np.testing.assert_allclose(up_axis(tilted), tilted[0, :, 1], atol=1e-9)


def test_scene_center_falls_back_for_parallel_axes():
    cams = np.stack([look_at([x, 0, 5], [x, 0, 0], [0, 1, 0]) for x in (-1.0, 0.0, 1.0, 2.0)])
    np.testing.assert_allclose(scene_center(cams), [0.5, 0, 5], atol=1e-9)
    with pytest.raises(ValueError):
        orbit_path(cams, 0)


# -- camera path files ------------------------------------------------------------------------------------------------


def _write(tmp_path: Path, doc, name="path.json") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def test_load_transforms_style_path(tmp_path):
    m0 = look_at([0, -4, 1], [0, 0, 0], [0, 0, 1])
    m1 = look_at([4, 0, 1], [0, 0, 0], [0, 0, 1])
    rows = [np.vstack([m, [0, 0, 0, 1]]).tolist() for m in (m0, m1)]
    p = _write(
        tmp_path,
        {
            "camera_angle_x": 0.7,
            "fps": 24,
            "frames": [{"transform_matrix": rows[0]}, {"transform_matrix": rows[1], "camera_angle_x": 0.5}],
        },
    )
    cp = load_camera_path(p)
    assert isinstance(cp, CameraPath) and len(cp) == 2
    assert cp.c2w.dtype == np.float64 and cp.c2w.shape == (2, 3, 4)
    np.testing.assert_allclose(cp.c2w, np.stack([m0, m1]), atol=1e-6)
    np.testing.assert_allclose(cp.fov_x, [0.7, 0.5], atol=1e-7)
    assert cp.fl_x is None and cp.fov_y is None and cp.fps == 24
    np.testing.assert_allclose(cp.focal_lengths(100, 50), 50 / np.tan([0.35, 0.25]), rtol=1e-6)

    cp = load_camera_path(_write(tmp_path, {"fl_x": 300, "w": 400, "frames": [{"transform_matrix": rows[0]}]}))
    np.testing.assert_allclose(cp.fl_x, [300])
    assert cp.fps is None and cp.width == 400
    np.testing.assert_allclose(cp.focal_lengths(200, 100), [150])  # rescaled to the render width

    cp = load_camera_path(_write(tmp_path, {"frames": [{"transform_matrix": rows[1]}]}))
    assert cp.fov_x is None and cp.fl_x is None and cp.focal_lengths(64, 64) is None


def test_load_nerfstudio_camera_path(tmp_path):
    m = np.vstack([look_at([1, 2, 3], [0, 0, 0], [0, 0, 1]), [0, 0, 0, 1]])
    doc = {
        "render_width": 320,
        "render_height": 240,
        "fps": 30,
        "camera_type": "perspective",
        "seconds": 0.1,
        "camera_path": [
            {"camera_to_world": m.ravel().tolist(), "fov": 60, "aspect": 4 / 3},
            {"camera_to_world": m.ravel().tolist(), "fov": 90.0, "aspect": 4 / 3},
        ],
    }
    cp = load_camera_path(_write(tmp_path, doc))
    np.testing.assert_allclose(cp.c2w[0], m[:3], atol=1e-6)  # row-major
    np.testing.assert_allclose(cp.fov_y, np.radians([60, 90]), rtol=1e-6)
    assert cp.fov_x is None and cp.fl_x is None
    assert (cp.width, cp.height, cp.fps) == (320, 240, 30)
    np.testing.assert_allclose(cp.focal_lengths(320, 240), [120 / math.tan(math.pi / 6), 120], rtol=1e-6)


GOOD = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"frames": [', r"malformed JSON at line 1, column 13"),
        ('{\n  "frames": [}\n', r"malformed JSON at line 2, column 14"),
        ("", r"file is empty"),
        ("[1, 2]", r"expected a JSON object"),
        ({"poses": []}, r"no 'frames' .* or 'camera_path'.* or 'path' \(instant-ngp base_cam\.json\) list$"),
        ({"frames": []}, r"no frames"),
        ({"camera_path": []}, r"no frames"),
        ({"keyframes": []}, r"no keyframes \('keyframes' is empty\)$"),
        ({"path": []}, r"no keyframes \('path' is empty\)$"),
        ({"path": {}}, r"'path' must be a list, got dict$"),
        ({"path": [{"R": [0, 0, 0, 1], "T": [0, 0, 0]}]}, r"path\[0\] has no 'fov'"),
        ({"path": [{"R": [0, 0, 0, 0], "T": [0, 0, 0], "fov": 50}]}, r"path\[0\]\.R is a zero quaternion"),
        ({"path": [{"R": [0, 0, 1], "T": [0, 0, 0], "fov": 50}]}, r"path\[0\]\.R must be a list of 4 numbers"),
        ({"path": [{"R": [0, 0, 0, 1], "T": [0, 0, "x"], "fov": 50}]}, r"path\[0\]\.T must be a list of 3 numbers"),
        ({"path": [{"R": [0, 0, 0, 1], "T": [0, 0, 0], "fov": 0}]}, r"path\[0\]\.fov must be a finite number in"),
        ({"path": [{"R": [0, 0, 0, 1], "T": [0, 0, 0], "fov": 50}], "loop": 1}, r"'loop' must be true or false"),
        (
            {"keyframes": [{"matrix": sum(GOOD, []), "fov": 50}, {"matrix": [0] * 16, "fov": 50}]},
            r"keyframes\[1\]\.matrix has a degenerate rotation \(determinant 0\)$",
        ),
        (
            {"keyframes": [{"matrix": sum(GOOD, []), "fov": 50},
                           {"matrix": [-1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1], "fov": 50}]},
            r"keyframes\[1\]\.matrix is a reflection \(determinant < 0\)",
        ),
        ({"keyframes": [{"matrix": sum(GOOD, [])}]}, r"keyframes\[0\] has no 'fov'"),
        ({"frames": [{"file_path": "x"}]}, r"frames\[0\] has no 'transform_matrix'"),
        (
            {"frames": [{"transform_matrix": GOOD}, {"transform_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}]},
            r"frames\[1\]\.transform_matrix must be a 3x4 or 4x4 matrix, got shape \(3, 3\)",
        ),
        (
            {"frames": [{"transform_matrix": [[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]},
            r"frames\[0\]\.transform_matrix must be a 3x4 or 4x4 matrix, got rows of different lengths",
        ),
        (
            {"frames": [{"transform_matrix": [[1, 0, 0, "a"]] * 4}]},
            r"frames\[0\]\.transform_matrix must be a 3x4 or 4x4 matrix of numbers",
        ),
        (
            '{"frames": [{"transform_matrix": [[NaN, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]}',
            r"frames\[0\]\.transform_matrix contains NaN or infinite values",
        ),
        (
            {"frames": [{"transform_matrix": GOOD, "camera_angle_x": -1}]},
            r"frames\[0\]\.camera_angle_x must be a finite number in \(0, 3\.14159\), got -1$",
        ),
        (
            {"frames": [{"transform_matrix": GOOD, "fl_x": 100}, {"transform_matrix": GOOD}]},
            r"frames\[1\] has no 'fl_x' or 'camera_angle_x'",
        ),
        ({"fps": 0, "frames": [{"transform_matrix": GOOD}]}, r"'fps' must be a finite number > 0"),
        (
            {"camera_path": [{"camera_to_world": list(range(12)), "fov": 50}]},
            r"camera_path\[0\]\.camera_to_world must be a 3x4 or 4x4 matrix or 16 numbers, got shape \(12,\)",
        ),
        ({"camera_path": [{"camera_to_world": sum(GOOD, [])}]}, r"camera_path\[0\] has no 'fov'"),
        (
            {"camera_path": [{"camera_to_world": sum(GOOD, []), "fov": 180}]},
            r"camera_path\[0\]\.fov must be a finite number in \(0, 180\), got 180$",
        ),
        (
            {"camera_type": "fisheye", "camera_path": [{"camera_to_world": sum(GOOD, []), "fov": 50}]},
            r"unsupported camera_type \"fisheye\"",
        ),
    ],
)
def test_load_camera_path_rejects_bad_input(tmp_path, content, match):
    p = _write(tmp_path, content)
    with pytest.raises(DataError, match="^" + re.escape(str(p)) + ": " + match) as info:
        load_camera_path(p)
    assert "\n" not in str(info.value)


# -- keyframed paths: instant-ngp base_cam.json, nerfstudio keyframes, dataparser transforms --------------------------


def _ingp_matrix(c2w: np.ndarray, scale: float = 0.33, offset=(0.5, 0.5, 0.5)) -> np.ndarray:
    """instant-ngp's nerf_matrix_to_ngp (nerf_loader.h), written out independently: flip the camera's y and z
    columns, scale and offset the translation, then cycle the rows (x <- y, y <- z, z <- x)."""
    m = np.array(c2w[:3], dtype=np.float64)
    m[:, 1:3] *= -1.0
    m[:, 3] = m[:, 3] * scale + np.asarray(offset)
    return m[[1, 2, 0]]


def _base_cam_keyframe(c2w: np.ndarray, fov: float = 50.0, **extra) -> dict:
    from scipy.spatial.transform import Rotation

    m = _ingp_matrix(c2w)
    return {"R": Rotation.from_matrix(m[:, :3]).as_quat().tolist(), "T": m[:, 3].tolist(), "fov": fov,
            "slice": 0.0, "scale": 1.5, "dof": 0.0, **extra}


def _ngp(c2w: np.ndarray, scale: float = 0.33, offset=(0.5, 0.5, 0.5)) -> np.ndarray:
    """Our ngp frame: the NeRF frame scaled and offset, axes kept (cameras.nerf_matrix_to_ngp)."""
    m = np.array(c2w[:3], dtype=np.float64)
    m[:, 3] = m[:, 3] * scale + np.asarray(offset)
    return m


def test_base_cam_two_keyframes_interpolate_positions_and_slerp_rotations(tmp_path):
    from scipy.spatial.transform import Rotation

    a = look_at([0, -4, 1], [0, 0, 0], [0, 0, 1])
    b = look_at([4, 0, 2], [0, 0, 0.5], [0, 0, 1])
    doc = {"loop": False, "time": 0.3, "path": [_base_cam_keyframe(a, 40.0), _base_cam_keyframe(b, 60.0)]}
    cp = load_camera_path(_write(tmp_path, doc, "base_cam.json"), fps=4)
    # 1 s per transition by default, the end of the path not a frame (instant-ngp's run.py): t = 0, 1/4, 1/2, 3/4.
    assert (cp.kind, cp.frame, cp.keyframes, cp.seconds, len(cp)) == ("instant-ngp", "ngp", 2, 1.0, 4)
    np.testing.assert_allclose(cp.c2w[0], _ngp(a), atol=1e-6)  # instant-ngp's frame taken back into ours
    mid = cp.c2w[2].astype(np.float64)
    np.testing.assert_allclose(mid[:, 3], 0.5 * (_ngp(a)[:, 3] + _ngp(b)[:, 3]), atol=1e-6)  # midpoint position
    half = Rotation.from_matrix(a[:, :3]) * Rotation.from_rotvec(
        0.5 * (Rotation.from_matrix(a[:, :3]).inv() * Rotation.from_matrix(b[:, :3])).as_rotvec())
    np.testing.assert_allclose(mid[:, :3], half.as_matrix(), atol=1e-6)  # half way along the shorter arc
    np.testing.assert_allclose(np.degrees(cp.fov_y), [40, 45, 50, 55], atol=1e-4)  # vertical fov, linear
    np.testing.assert_allclose(cp.focal_lengths(100, 80)[0], 40 / math.tan(math.radians(20)), rtol=1e-6)
    # --seconds and --fps set the frame count; a loop comes back to keyframe 0 instead of stopping at keyframe 1.
    assert len(load_camera_path(_write(tmp_path, doc, "base_cam.json"), fps=10, seconds=3)) == 30
    looped = load_camera_path(_write(tmp_path, {**doc, "loop": True}, "loop.json"), fps=2)
    assert len(looped) == 4 and looped.seconds == 2.0  # two transitions, 1 s each
    np.testing.assert_allclose(looped.c2w[2], _ngp(b), atol=1e-5)
    # A single keyframe is one frame, exactly that camera; depth of field is noted, not rendered.
    one = load_camera_path(_write(tmp_path, {"path": [_base_cam_keyframe(b, dof=0.05)]}, "one.json"))
    assert len(one) == 1 and one.notes and "depth of field" in one.notes[0]
    np.testing.assert_allclose(one.c2w[0], _ngp(b), atol=1e-6)


def _ns_matrix(c2w: np.ndarray, transform: np.ndarray, scale: float) -> list[float]:
    """A world camera in nerfstudio's normalised frame: ``[A | b]`` applied, then the translation scaled, as flat
    row-major 16 numbers."""
    m = np.eye(4)
    m[:3] = c2w
    m = np.vstack([transform, [0, 0, 0, 1]]) @ m
    m[:3, 3] *= scale
    return m.ravel().tolist()


def test_nerfstudio_paths_map_through_the_dataparser_transform(tmp_path):
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("zx", [30, -10], degrees=True).as_matrix()
    transform = np.hstack([rot, [[0.2], [-0.1], [0.4]]])
    scale = 0.25
    cams = [look_at([0, -4, 1], [0, 0, 0], [0, 0, 1]), look_at([4, 0, 1], [0, 0, 0], [0, 0, 1]),
            look_at([0, 4, 2], [0, 0, 0], [0, 0, 1])]
    keyframes = [{"matrix": _ns_matrix(c, transform, scale), "fov": 50 + 10 * i, "aspect": 1.0,
                  "override_transition_enabled": i == 2, "override_transition_sec": 2.0 if i == 2 else None}
                 for i, c in enumerate(cams)]
    folder = tmp_path / "camera_paths"
    folder.mkdir()
    (folder / "dataparser_transforms.json").write_text(json.dumps({"transform": transform.tolist(),
                                                                    "scale": scale}))
    doc = {"camera_type": "perspective", "render_width": 64, "render_height": 48, "fps": 2, "seconds": 3.0,
           "is_cycle": False, "default_transition_sec": 1.0, "keyframes": keyframes}
    # Keyframes only: interpolated; keyframe times 0, 1 (default transition) and 3 (its own 2 s transition).
    cp = load_camera_path(_write(folder, doc, "path.json"))
    assert cp.kind == "nerfstudio" and cp.dataparser == folder / "dataparser_transforms.json" and not cp.notes
    assert (len(cp), cp.keyframes, cp.seconds, cp.fps, cp.width, cp.height) == (6, 3, 3.0, 2, 64, 48)
    np.testing.assert_allclose(cp.c2w[0], cams[0], atol=1e-5)  # t = 0: keyframe 0, back in the dataset's frame
    np.testing.assert_allclose(cp.c2w[2], cams[1], atol=1e-5)  # t = 1 s: keyframe 1
    np.testing.assert_allclose(np.degrees(cp.fov_y[[0, 2, 3]]), [50, 60, 62.5], atol=1e-4)
    # The same poses as nerfstudio's own camera_path: taken as they are, mapped the same way.
    flat = {**doc, "camera_path": [{"camera_to_world": k["matrix"], "fov": k["fov"]} for k in keyframes]}
    flat["seconds"] = 1.5
    cp = load_camera_path(_write(folder, flat, "path.json"))
    assert cp.keyframes == 0 and len(cp) == 3
    np.testing.assert_allclose(cp.c2w, np.stack(cams), atol=1e-5)
    # Another transform given explicitly wins; without any, the path stays in its own frame, with a note.
    ident = tmp_path / "identity.json"
    ident.write_text(json.dumps({"transform": np.eye(4)[:3].tolist(), "scale": 1.0}))
    cp = load_camera_path(folder / "path.json", dataparser_transforms=ident)
    np.testing.assert_allclose(cp.c2w[0].ravel(), np.array(keyframes[0]["matrix"]).reshape(4, 4)[:3].ravel(),
                               atol=1e-6)
    cp = load_camera_path(_write(tmp_path, flat, "alone.json"))
    assert cp.dataparser is None and "dataset's own frame" in cp.notes[0]
    with pytest.raises(DataError, match=r"identity\.json: 'transform' has a degenerate rotation"):
        ident.write_text(json.dumps({"transform": np.zeros((3, 4)).tolist(), "scale": 1.0}))
        load_camera_path(folder / "path.json", dataparser_transforms=ident)
    with pytest.raises(DataError, match=r"'scale' must be a finite number > 0"):
        ident.write_text(json.dumps({"transform": np.eye(4)[:3].tolist(), "scale": 0}))
        load_camera_path(folder / "path.json", dataparser_transforms=ident)


def test_fps_and_seconds_resample_a_nerfstudio_camera_path(tmp_path):
    cams = [look_at([4 * math.cos(a), 4 * math.sin(a), 1], [0, 0, 0], [0, 0, 1]) for a in np.linspace(0, 1.5, 4)]
    rows = [np.vstack([c, [0, 0, 0, 1]]).ravel().tolist() for c in cams]
    doc = {"fps": 2, "seconds": 2, "camera_path": [{"camera_to_world": r, "fov": 40} for r in rows]}
    p = _write(tmp_path, doc)
    assert len(load_camera_path(p)) == 4 and len(load_camera_path(p, fps=2)) == 4  # the file's own frames
    cp = load_camera_path(p, fps=4)  # same 2 s at twice the rate: every other frame is one of the file's
    assert len(cp) == 8 and cp.seconds == 2 and cp.fps == 2  # cp.fps: what the file says
    np.testing.assert_allclose(cp.c2w[::2], np.stack(cams), atol=1e-5)
    between = cp.c2w[1, :, 3]
    assert 0.1 < np.linalg.norm(between - cams[0][:, 3]) < np.linalg.norm(cams[1][:, 3] - cams[0][:, 3])
    cp = load_camera_path(p, seconds=4)  # slowed down: 8 frames at the file's 2 fps
    assert len(cp) == 8
    np.testing.assert_allclose(cp.c2w[::2], np.stack(cams), atol=1e-5)
    np.testing.assert_allclose(frame_times(1.0, 4), [0, 0.25, 0.5, 0.75])
    assert len(frame_times(0.0, 30)) == 1


def test_docs_example_paths_are_the_same_loop_in_both_formats(tmp_path):
    docs = Path(__file__).resolve().parents[2] / "docs" / "examples"
    ns = load_camera_path(docs / "camera_path.json")  # nerfstudio's own frames, in the built-in scene's frame
    assert (ns.kind, ns.keyframes, len(ns), ns.fps, ns.width, ns.height) == ("nerfstudio", 0, 12, 2, 160, 120)
    assert ns.notes  # no dataparser_transforms.json beside it: said so
    again = load_camera_path(docs / "camera_path.json", fps=2, seconds=6.0)  # the same, taken as it is
    np.testing.assert_array_equal(again.c2w, ns.c2w)
    bc = load_camera_path(docs / "base_cam.json", fps=2, seconds=6.0)  # the same keyframes, instant-ngp's frame
    assert (bc.kind, bc.keyframes, len(bc)) == ("instant-ngp", 3, 12)
    world = bc.c2w.copy()
    world[:, :, 3] = (world[:, :, 3] - 0.5) / 0.33  # our ngp frame -> the scene's (its default scale and offset)
    np.testing.assert_allclose(world, ns.c2w, atol=1e-4)  # the files round to 6-7 digits
    np.testing.assert_allclose(np.degrees(bc.fov_y), np.degrees(ns.fov_y), atol=1e-3)
    # The keyframes of camera_path.json (nerfstudio's other list) interpolate to its camera_path, too.
    doc = json.loads((docs / "camera_path.json").read_text())
    del doc["camera_path"]
    keyed = load_camera_path(_write(tmp_path, doc))
    assert keyed.keyframes == 3
    np.testing.assert_allclose(keyed.c2w, ns.c2w, atol=1e-5)


def test_load_camera_path_missing_or_directory(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: file does not exist$"):
        load_camera_path(tmp_path / "nope.json")
    with pytest.raises(DataError, match=r"is a directory"):
        load_camera_path(tmp_path)


# -- frame writer -----------------------------------------------------------------------------------------------------


def _frames_rgb(n, h=32, w=32):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, k, axis=1) for k in range(n)]


def test_frame_writer_png_directory(tmp_path):
    out = tmp_path / "frames"
    (out).mkdir()
    (out / "frame_00007.png").write_bytes(b"stale")  # from an earlier, longer render
    frames = _frames_rgb(3, 8, 6)
    with FrameWriter(out) as fw:
        for f in frames[:2]:
            fw.write(f)
        fw.write(frames[2].astype(np.float32) / 255.0)
    assert fw.paths == [out / f"frame_{k:05d}.png" for k in range(3)] and fw.count == 3
    for k, f in enumerate(frames):
        np.testing.assert_array_equal(read_image(out / f"frame_{k:05d}.png"), f)
    assert sorted(p.name for p in out.iterdir()) == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]


def test_frame_writer_mp4_round_trip(tmp_path):
    import imageio

    out = tmp_path / "sub" / "orbit.mp4"
    frames = [np.full((32, 32, 3), 30 * k, np.uint8) for k in range(8)]
    with FrameWriter(out, fps=12) as fw:
        for f in frames:
            fw.write(f)
    assert fw.paths == [out] and out.stat().st_size > 0
    reader = imageio.v2.get_reader(out)
    try:
        got = [np.asarray(x) for x in reader]
        assert reader.get_meta_data()["fps"] == pytest.approx(12)
    finally:
        reader.close()
    assert len(got) == 8 and got[0].shape == (32, 32, 3)
    np.testing.assert_allclose([g.mean() for g in got], [30 * k for k in range(8)], atol=4)
    assert [p.name for p in out.parent.iterdir()] == ["orbit.mp4"]  # no temporary left


def test_frame_writer_odd_size_and_gif(tmp_path):
    import imageio

    with FrameWriter(tmp_path / "odd.mp4") as fw:
        for f in _frames_rgb(3, 15, 17):
            fw.write(f)
    reader = imageio.v2.get_reader(tmp_path / "odd.mp4")
    try:
        got = [np.asarray(x) for x in reader]
    finally:
        reader.close()
    assert len(got) == 3 and got[0].shape == (16, 18, 3)  # padded to even for yuv420p
    with FrameWriter(tmp_path / "a.gif", fps=10) as fw:
        for f in _frames_rgb(4, 16, 16):
            fw.write(f)
    assert len(imageio.v2.mimread(tmp_path / "a.gif")) == 4


def test_frame_writer_failure_keeps_earlier_video(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"earlier video")
    with pytest.raises(RuntimeError, match="render failed"):
        with FrameWriter(out) as fw:
            fw.write(_frames_rgb(1)[0])
            raise RuntimeError("render failed")
    assert out.read_bytes() == b"earlier video"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    # a video closed without frames is not created and does not replace the old one
    with pytest.raises(OutputError, match=r"no frames were written"):
        with FrameWriter(out):
            pass
    assert out.read_bytes() == b"earlier video"


def test_frame_writer_bad_destination_and_frames(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="^" + re.escape(str(blocker)) + r": exists and is not a directory"):
        FrameWriter(blocker)
    with pytest.raises(OutputError, match="^" + re.escape(str(blocker / "v.mp4"))):
        FrameWriter(blocker / "v.mp4")
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(OutputError, match=r"dir\.mp4: is a directory"):
        FrameWriter(tmp_path / "dir.mp4")
    fw = FrameWriter(tmp_path / "frames")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        fw.write(np.zeros((4, 4), np.uint8))
    fw.write(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"earlier frames are 4x4"):
        fw.write(np.zeros((4, 5, 3), np.uint8))
    fw.close()

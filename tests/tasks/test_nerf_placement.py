"""The camera placement check of ``ngp train-nerf`` (issue 16, part 4): the geometry of
:mod:`ngp_cli.tasks.nerf.placement` on constructed rigs, the suggested fits removing the findings, the real fox and
lego captures passing silently, and a 7x scaled, off-centre dataset warning through the command."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from ngp_cli.tasks.nerf.camera_path import look_at
from ngp_cli.tasks.nerf.placement import (
    NGP_CAMERA_DISTANCE,
    measure_placement,
    placement_findings,
    placement_fit,
)

_LEGO_TAN = 0.36  # tan(camera_angle_x / 2) of NeRF-synthetic's 0.6911 rad


def _rig(centre, radius, n=24, seed=0) -> np.ndarray:
    """(n, 3, 4) cameras on the upper part of a sphere of ``radius`` around ``centre``, each looking at it."""
    rng = np.random.default_rng(seed)
    az = rng.uniform(0, 2 * np.pi, n)
    el = rng.uniform(0.15, 1.2, n)
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
    centre = np.asarray(centre, dtype=np.float64)
    return np.stack([look_at(centre + radius * d, centre, [0, 0, 1]) for d in dirs])


def _intrinsics(n, tan_half=_LEGO_TAN, size=100):
    f = 0.5 * size / tan_half
    return np.tile([f, f, size / 2, size / 2], (n, 1)), size, size


def _to_ngp(world: np.ndarray, scale: float, offset) -> np.ndarray:
    out = world.copy()
    out[:, :, 3] = world[:, :, 3] * scale + np.asarray(offset)
    return out


def _measure(world, scale, offset, aabb_scale):
    k, w, h = _intrinsics(len(world))
    return measure_placement(_to_ngp(world, scale, offset), aabb_scale, k, w, h)


def test_measures_the_look_at_point_the_distance_and_the_framed_radius():
    rig = _rig([0.7, 0.4, 0.55], 1.5)
    k, w, h = _intrinsics(len(rig))
    p = measure_placement(rig, 1, k, w, h)
    np.testing.assert_allclose(p.look_at, [0.7, 0.4, 0.55], atol=1e-9)
    assert p.look_at_offset == pytest.approx(0.2, abs=1e-9)
    assert p.camera_distance == pytest.approx(1.5, rel=1e-12)
    assert p.tan_half_fov == pytest.approx(_LEGO_TAN, rel=1e-12)
    assert p.framed_radius == pytest.approx(1.5 * _LEGO_TAN, rel=1e-12)
    assert p.n_cameras == len(rig) and not p.off_centre and not p.far
    # The wider field of view counts, measured to the farther image edge from the principal point.
    k2 = k.copy()
    k2[:, 2] = 30.0  # cx 30 of a 100-pixel width: 70 pixels to the right edge
    assert measure_placement(rig, 1, k2, w, h).tan_half_fov == pytest.approx(70.0 / k[0, 0], rel=1e-12)


def test_a_colmap2nerf_style_capture_has_no_finding():
    world = _rig([0.0, 0.0, 0.0], 4.0)  # colmap2nerf: centred on the look-at point, cameras 4 away
    p = _measure(world, 0.33, [0.5, 0.5, 0.5], 1)
    assert p.camera_distance == pytest.approx(NGP_CAMERA_DISTANCE, rel=1e-9)
    assert placement_findings(p, 0.33, [0.5, 0.5, 0.5]) == []


def test_seven_times_scaled_and_off_centre_gives_two_findings_and_fits_that_remove_them():
    scale, offset = 0.33, [0.5, 0.5, 0.5]
    world = _rig([5.0, -3.0, 2.0], 4.0 * 7)  # the capture above, positions x7 and shifted
    p = _measure(world, scale, offset, 1)
    assert p.off_centre and p.far
    lines = placement_findings(p, scale, offset)
    assert len(lines) == 2
    assert "look at [2.15, -0.49, 1.16]" in lines[0] and "1.65 from the box centre" in lines[0]
    assert "a median 9.24 from the point" in lines[1] and "radius 3.33" in lines[1] and "[0, 1]³" in lines[1]
    fit = placement_fit(p, scale, offset)
    assert f'"scale": {fit.scale:.4g}' in lines[1] and f'"aabb_scale": {fit.aabb_scale} ' in lines[1]
    assert fit.scale == pytest.approx(0.33 / 7, rel=1e-9)
    np.testing.assert_allclose(fit.offset, 0.5 - np.array([5.0, -3.0, 2.0]) * fit.scale, atol=1e-9)
    # Each suggestion, applied, removes its finding.
    assert placement_findings(_measure(world, fit.scale, fit.offset, 1), fit.scale, fit.offset) == []
    centred = _measure(world, scale, fit.centred_offset, 1)
    assert not centred.off_centre and centred.far
    assert fit.aabb_scale == 16  # 2 * (1.65 + 3.33) = 9.96 -> 16
    assert not _measure(world, scale, offset, fit.aabb_scale).far
    assert _measure(world, scale, offset, fit.aabb_scale // 2).far


def test_far_needs_both_the_distance_and_the_overflowing_box():
    world = _rig([0.0, 0.0, 0.0], 4.0 * 7)
    assert _measure(world, 0.33, [0.5] * 3, 1).far
    assert not _measure(world, 0.33, [0.5] * 3, 16).far  # a box that holds what the cameras frame
    near = _rig([0.0, 0.0, 0.0], 4.0 * 2.5)  # 3.3 from the look-at point: within 3x colmap2nerf's distance
    assert not _measure(near, 0.33, [0.5] * 3, 1).far


def test_no_look_at_point_for_parallel_axes_or_one_camera():
    one = _rig([0.0, 0.0, 0.0], 4.0, n=1)
    assert measure_placement(one, 1).look_at is None
    forward = np.stack([look_at([x, 0.0, 0.0], [x, 5.0, 0.0], [0, 0, 1]) for x in np.linspace(-1, 1, 5)])
    p = measure_placement(forward * 10, 1)
    assert p.look_at is None and math.isnan(p.camera_distance)
    assert placement_findings(p, 0.33, [0.5] * 3) == [] and placement_fit(p, 0.33, [0.5] * 3) is None
    with pytest.raises(ValueError):
        measure_placement(np.zeros((3, 3, 3)), 1)


# ---------------------------------------------------------------------------------------------------------------------
# Real captures and the command


def _load_input(path: Path, capsys, *sets: str) -> str:
    from ngp_cli.config import resolve
    from ngp_cli.tasks.nerf import NerfTask
    from ngp_cli.tasks.nerf.config import NerfConfig

    cfg = resolve(NerfConfig, "nerf", "nerf-cpu", [f"nerf.path={path}", "nerf.downscale=8", *sets],
                  default_preset="nerf-cpu")
    capsys.readouterr()
    NerfTask().load_input(cfg, True)
    return capsys.readouterr().err


@pytest.mark.parametrize("name", ["fox", "lego_400"])
def test_the_fox_and_lego_captures_do_not_warn(shared_data_dir, capsys, name):
    err = _load_input(shared_data_dir / "nerf" / name, capsys)
    assert "camera placement" not in err


def test_lego_scaled_seven_times_off_centre_warns(shared_data_dir, capsys, tmp_path):
    lego = shared_data_dir / "nerf" / "lego_400"
    doc = json.loads((lego / "transforms_train.json").read_text())
    doc["frames"] = doc["frames"][:12]
    for frame in doc["frames"]:
        m = np.array(frame["transform_matrix"])
        m[:3, 3] = m[:3, 3] * 7 + [5.0, -3.0, 2.0]
        frame["transform_matrix"] = m.tolist()
    (tmp_path / "transforms_train.json").write_text(json.dumps(doc))
    os.symlink(lego / "train", tmp_path / "train")
    lines = [ln for ln in _load_input(tmp_path, capsys).splitlines() if "camera placement" in ln]
    assert len(lines) == 2 and all(ln.startswith("ngp: warning: camera placement: ") for ln in lines)
    assert "to centre it" in lines[0] and '"scale": 0.04678' in lines[1]


def test_train_nerf_warns_on_the_builtin_scene_scaled_and_moved(ngp, tmp_path):
    """The issue's report: a transforms.json scaled 7x and off-centre trained silently."""
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    scene = make_synthetic_scene(tmp_path / "scene", n_train=8, n_val=1, resolution=16)
    for split in ("train", "val"):
        path = scene / f"transforms_{split}.json"
        doc = json.loads(path.read_text())
        for frame in doc["frames"]:
            m = np.array(frame["transform_matrix"])
            m[:3, 3] = m[:3, 3] * 7 + [4.0, 1.0, -2.0]
            frame["transform_matrix"] = m.tolist()
        path.write_text(json.dumps(doc))
    res = ngp("train-nerf", scene, "--steps", "1", "--runs-dir", tmp_path / "runs", "--backend", "torch",
              "--set", "train.final_eval_views=0", "--set", "nerf.render_views=0", "--set", "train.eval_every=0",
              "--set", "nerf.grid_warmup_steps=0", "--set", "train.batch_size=4096", "--set", "nerf.n_rays_initial=256",
              "--set", "encoding.log2_hashmap_size=12")
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("ngp: warning: camera placement:")]
    assert len(lines) == 2, res.stderr
    assert "from the box centre" in lines[0] and "reaches past the scene box" in lines[1]

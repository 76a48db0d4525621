"""Bad input to the tasks' commands after training (issue 13, slice D): ``ngp eval``, ``ngp render`` and
``ngp extract-mesh`` on runs whose input moved, bad ``--data``, camera paths, orbits, resolutions and outputs, commands
a run's task does not have, and bad datasets / scene files for ``train-nerf`` / ``train-nrc``.

Every case: its documented exit code, one stderr line, JSON-only stdout ending in an ``error`` line
(:func:`assert_refused`), and every run directory or input folder it points at unchanged byte for byte.
The runs are tiny real ones, trained once per module.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.bad_input.conftest import _train, assert_refused, unchanged

_NERF_FAST = ["--backend", "torch", "--set", "train.log_every=5", "--set", "nerf.grid_warmup_steps=16",
              "--set", "train.batch_size=16384", "--set", "nerf.n_rays_initial=512",
              "--set", "encoding.log2_hashmap_size=12", "--set", "nerf.render_views=0",
              "--set", "train.final_eval_views=0"]
_SDF_FAST = ["--backend", "torch", "--preset", "sdf-cpu", "--set", "encoding.log2_hashmap_size=12",
             "--set", "train.batch_size=4096", "--set", "sdf.iou_points=4096", "--set", "sdf.eval_iou_points=4096",
             "--set", "sdf.mesh_resolution=24", "--set", "sdf.chamfer_points=2048", "--set", "sdf.render_views=0",
             "--set", "sdf.sample_bank=4096", "--set", "sdf.bank_refresh=64", "--set", "train.log_every=5"]
_NRC_TINY = ["--backend", "torch", "--set", "nrc.width=16", "--set", "nrc.height=12", "--set", "nrc.warmup_frames=0",
             "--set", "nrc.train_paths=256", "--set", "nrc.reference_spp=4", "--set", "encoding.log2_hashmap_size=10",
             "--set", "network.n_hidden_layers=1"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    return make_synthetic_scene(tmp_path_factory.mktemp("scene"), n_train=6, n_val=2, resolution=32)


@pytest.fixture(scope="module")
def nerf_run(app, scene, tmp_path_factory) -> Path:
    """A 5-step NeRF run on the 32-px synthetic scene (its dataset stays where it was)."""
    return _train(app, ["train-nerf", str(scene), "--steps", "5", "--runs-dir",
                        str(tmp_path_factory.mktemp("nerf-runs")), *_NERF_FAST])


@pytest.fixture(scope="module")
def moved_nerf_run(app, scene, tmp_path_factory) -> Path:
    """A NeRF run whose dataset was moved away after training (the folder renamed)."""
    root = tmp_path_factory.mktemp("moved-nerf")
    shutil.copytree(scene, root / "dataset")
    run = _train(app, ["train-nerf", str(root / "dataset"), "--steps", "2", "--runs-dir", str(root / "runs"),
                       *_NERF_FAST])
    (root / "dataset").rename(root / "dataset-moved")
    return run


@pytest.fixture(scope="module")
def blob(tmp_path_factory) -> Path:
    import trimesh

    path = tmp_path_factory.mktemp("mesh") / "blob.obj"
    trimesh.creation.icosphere(subdivisions=2).export(path)
    return path


@pytest.fixture(scope="module")
def moved_sdf_run(app, blob, tmp_path_factory) -> Path:
    """An SDF run whose input mesh was moved away after training."""
    root = tmp_path_factory.mktemp("moved-sdf")
    mesh = root / "input.obj"
    shutil.copy(blob, mesh)
    run = _train(app, ["train-sdf", str(mesh), "--steps", "5", "--runs-dir", str(root / "runs"), *_SDF_FAST])
    mesh.rename(root / "input-moved.obj")
    return run


@pytest.fixture(scope="module")
def nrc_run(app, tmp_path_factory) -> Path:
    return _train(app, ["train-nrc", "--frames", "1", "--spp", "1", "--runs-dir",
                        str(tmp_path_factory.mktemp("nrc-runs")), *_NRC_TINY])


# -- runs whose input moved, and --data ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["eval"],
    ["render", "--orbit", "2", "--resolution", "8x8"],
    ["extract-mesh", "--resolution", "16"],
], ids=["eval", "render", "extract-mesh"])
def test_nerf_run_whose_dataset_moved_names_it_and_suggests_data(ngp, moved_nerf_run, command):
    with unchanged(moved_nerf_run):
        line = assert_refused(ngp(command[0], moved_nerf_run, *command[1:]), 4, "--data PATH")
    assert "dataset" in line and str(moved_nerf_run.parents[2] / "dataset") in line


def test_sdf_run_whose_mesh_moved_names_it_and_suggests_data(ngp, moved_sdf_run):
    with unchanged(moved_sdf_run):
        line = assert_refused(ngp("extract-mesh", moved_sdf_run, "--resolution", "16"), 4, "--data PATH")
    assert "input.obj" in line and "input mesh" in line


def test_data_pointing_at_a_missing_path(ngp, moved_nerf_run, tmp_path):
    with unchanged(moved_nerf_run):
        assert_refused(ngp("eval", moved_nerf_run, "--data", tmp_path / "nowhere"), 4, "--data: no such file")


def test_data_pointing_at_a_folder_without_a_dataset(ngp, moved_nerf_run, tmp_path):
    with unchanged(moved_nerf_run, tmp_path):
        assert_refused(ngp("render", moved_nerf_run, "--orbit", "1", "--data", tmp_path), 4, "transforms")


def test_data_pointing_at_another_mesh(ngp, moved_sdf_run, tmp_path):
    import trimesh

    other = tmp_path / "other.obj"
    trimesh.creation.box(extents=(3.0, 1.0, 1.0)).export(other)
    with unchanged(moved_sdf_run):
        assert_refused(ngp("eval", moved_sdf_run, "--data", other), 4, "has changed since")


# -- render: camera paths, orbits, resolutions, outputs --------------------------------------------------------------


def _pose() -> list[list[float]]:
    return [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]]


@pytest.mark.parametrize("content, needle", [
    (None, "does not exist"),
    ('{"frames": [', "malformed JSON"),
    ('{"camera_angle_x": 0.7, "frames": []}', "no frames"),
    (json.dumps({"frames": [{"transform_matrix": [[math.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]]}]}),
     "NaN"),
    (json.dumps({"frames": [{"transform_matrix": [[1, 0, 0], [0, 1, 0]]}]}), "4x4"),
    (json.dumps({"camera_path": [{"camera_to_world": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1], "fov": 200}]}), "fov"),
], ids=["missing", "malformed", "empty-frames", "nan-matrix", "wrong-shape", "fov-out-of-range"])
def test_render_bad_camera_path(ngp, nerf_run, tmp_path, content, needle):
    path = tmp_path / "path.json"
    if content is not None:
        path.write_text(content)
    with unchanged(nerf_run, tmp_path):
        assert_refused(ngp("render", nerf_run, "--camera-path", path, "--out", tmp_path / "out.mp4"), 4, needle)


@pytest.mark.parametrize("args", [
    ["--orbit", "0"],
    ["--orbit", "-3"],
    ["--orbit", "2", "--resolution", "0x10"],
    ["--orbit", "2", "--resolution", "garbage"],
    ["--orbit", "2", "--camera-path", "x.json"],
    [],
], ids=["orbit-0", "orbit-negative", "resolution-0x10", "resolution-garbage", "orbit-and-path", "neither"])
def test_render_bad_arguments_are_usage_errors(ngp, nerf_run, args):
    with unchanged(nerf_run):
        assert_refused(ngp("render", nerf_run, *args), 2)


def test_render_out_under_a_regular_file(ngp, nerf_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with unchanged(nerf_run, tmp_path):
        assert_refused(ngp("render", nerf_run, "--orbit", "1", "--resolution", "8x8", "--out", blocker / "v.mp4"), 6,
                       str(blocker))


def test_render_frames_onto_an_existing_file(ngp, nerf_run, tmp_path):
    target = tmp_path / "frames"
    target.write_text("a file where the frame folder would go")
    with unchanged(nerf_run, tmp_path):
        assert_refused(ngp("render", nerf_run, "--orbit", "1", "--resolution", "8x8", "--out", target), 6,
                       "not a directory")


def test_render_camera_path_on_an_sdf_run(ngp, moved_sdf_run, tmp_path):
    with unchanged(moved_sdf_run):
        assert_refused(ngp("render", moved_sdf_run, "--camera-path", tmp_path / "p.json"), 2, "--orbit")


# -- commands a run's task does not have, bad options ----------------------------------------------------------------


def test_extract_mesh_on_an_image_run(ngp, image_run):
    with unchanged(image_run):
        assert_refused(ngp("extract-mesh", image_run), 2, "extract-mesh")


def test_eval_on_an_nrc_run(ngp, nrc_run):
    with unchanged(nrc_run):
        assert_refused(ngp("eval", nrc_run), 2, "eval")


def test_eval_with_an_unknown_split(ngp, nerf_run):
    with unchanged(nerf_run):
        assert_refused(ngp("eval", nerf_run, "--split", "bogus"), 2, "split")


def test_extract_mesh_level_on_a_nerf_run(ngp, nerf_run):
    with unchanged(nerf_run):
        assert_refused(ngp("extract-mesh", nerf_run, "--level", "0.1"), 2, "--level")


# -- training inputs ------------------------------------------------------------------------------------------------


def test_train_nerf_on_a_folder_without_transforms(ngp, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG")
    with unchanged(folder):
        assert_refused(ngp("train-nerf", folder, "--runs-dir", tmp_path / "runs", *_NERF_FAST), 4, "transforms")
    assert not (tmp_path / "runs").exists()


def test_train_nerf_with_a_nan_pose(ngp, scene, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(scene / "train", ds / "train")
    meta = json.loads((scene / "transforms_train.json").read_text())
    meta["frames"][1]["transform_matrix"][0][3] = math.nan
    (ds / "transforms.json").write_text(json.dumps(meta))
    with unchanged(ds):
        assert_refused(ngp("train-nerf", ds, "--runs-dir", tmp_path / "runs", *_NERF_FAST), 4, "NaN")
    assert not (tmp_path / "runs").exists()


def test_eval_a_run_without_held_out_views(ngp, app, scene, tmp_path):
    """nerf.holdout_every=0 on a single transforms.json: there is no val split to evaluate (the training frames are
    not passed off as held-out views)."""
    ds = tmp_path / "single"
    shutil.copytree(scene / "train", ds / "train")
    shutil.copy(scene / "transforms_train.json", ds / "transforms.json")
    run = _train(app, ["train-nerf", str(ds), "--steps", "1", "--runs-dir", str(tmp_path / "runs"), *_NERF_FAST,
                       "--set", "nerf.holdout_every=0"])
    with unchanged(run, ds):
        assert_refused(ngp("eval", run), 4, "no held-out views")


@pytest.mark.parametrize("text, needle", [
    ("objects: [1, 2\n", "malformed YAML"),
    ("just a string\n", None),
], ids=["malformed-yaml", "not-a-mapping"])
def test_train_nrc_with_a_bad_scene_file(ngp, tmp_path, text, needle):
    scene_file = tmp_path / "scene.yaml"
    scene_file.write_text(text)
    with unchanged(tmp_path):
        assert_refused(ngp("train-nrc", scene_file, "--frames", "1", "--runs-dir", tmp_path / "runs", *_NRC_TINY), 4,
                       needle)


def test_train_nerf_images_of_mixed_sizes(ngp, scene, tmp_path):
    import imageio.v3 as iio

    ds = tmp_path / "ds"
    shutil.copytree(scene / "train", ds / "train")
    shutil.copy(scene / "transforms_train.json", ds / "transforms_train.json")
    first = sorted((ds / "train").glob("*.png"))[0]
    iio.imwrite(first, np.zeros((16, 16, 4), np.uint8))
    with unchanged(ds):
        assert_refused(ngp("train-nerf", ds, "--runs-dir", tmp_path / "runs", *_NERF_FAST), 4, "mixed sizes")

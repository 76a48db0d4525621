"""The sparse-point geometry prior of ``ngp train-nerf`` (issue 16, part 3): ``nerf.occupancy_init: points`` seeds the
occupancy grid with exactly the dilated cells of the points (against a numpy reference), the points are mapped as the
camera positions are, and a missing or corrupt PLY is one DataError line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from ngp_cli.errors import DataError
from ngp_cli.tasks.nerf.cameras import nerf_matrix_to_ngp
from ngp_cli.tasks.nerf.placement import points_to_ngp, read_sparse_points
from ngp_cli.volrend.constants import GRID_CELLS, GRID_SIZE, SEED_OPTICAL_THICKNESS
from ngp_cli.volrend.grid import OccupancyGrid


def _reference_cells(points: np.ndarray, cascades: int, dilation: int) -> set[int]:
    """Flat indices of every cell within ``dilation`` cells (per axis) of a point's cell, in each cascade holding the
    point, by looping over points and offsets."""
    out: set[int] = set()
    rng = range(-dilation, dilation + 1)
    for k in range(cascades):
        for p in points.astype(np.float32):
            c = np.floor(((p - np.float32(0.5)) * np.float32(2.0 ** -k) + np.float32(0.5)) * GRID_SIZE)
            if not ((c >= 0) & (c < GRID_SIZE)).all():
                continue
            x, y, z = (int(v) for v in c)
            for dz in rng:
                for dy in rng:
                    for dx in rng:
                        i, j, m = x + dx, y + dy, z + dz
                        if 0 <= i < GRID_SIZE and 0 <= j < GRID_SIZE and 0 <= m < GRID_SIZE:
                            out.add(k * GRID_CELLS + i + GRID_SIZE * (j + GRID_SIZE * m))
    return out


def _points(seed=0, n=30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-0.7, 1.7, (n, 3))  # some beyond the outer cascade of aabb_scale 2, [-0.5, 1.5]
    edges = np.array([[0.0, 0.0, 0.0], [0.999, 0.5, 0.5], [1.0, 0.5, 0.5], [-0.5, 1.4999, 0.2], [0.5, 0.5, 0.5]])
    return np.concatenate([pts, edges])


@pytest.mark.parametrize("dilation", [0, 2])
def test_point_cells_are_exactly_the_dilated_cells_of_the_points(dilation):
    grid = OccupancyGrid(2)
    pts = _points()
    mask = grid.point_cells(torch.from_numpy(pts), dilation)
    got = set(torch.nonzero(mask).squeeze(1).tolist())
    want = _reference_cells(pts, grid.cascades, dilation)
    assert got == want and len(want) > 0
    # a point inside the unit cube marks its cell in both cascades
    assert any(i < GRID_CELLS for i in want) and any(i >= GRID_CELLS for i in want)
    with pytest.raises(ValueError):
        grid.point_cells(torch.from_numpy(pts), -1)


def test_seeding_occupies_exactly_the_seen_dilated_cells_and_updates_proceed():
    grid = OccupancyGrid(1)
    pts = np.array([[0.3, 0.4, 0.5], [0.7, 0.61, 0.52], [0.2, 0.2, 0.9]])
    unseen = torch.arange(0, GRID_CELLS, 7)  # as mark_untrained leaves them
    grid.density[unseen] = -1.0
    count = grid.seed_from_points(torch.from_numpy(pts), 3)
    want = _reference_cells(pts, 1, 3) - set(unseen.tolist())
    occupied = set(torch.nonzero(grid.occupancy).squeeze(1).tolist())
    assert occupied == want and count == len(want)
    assert (grid.density[unseen] == -1).all()
    seeded = torch.tensor(sorted(want))
    assert (grid.density[seeded] == SEED_OPTICAL_THICKNESS).all()
    assert int((grid.density == 0).sum()) == GRID_CELLS - len(want) - unseen.numel()
    # An update with an untrained network's density (sigma 1, thickness ~0.0017) keeps the seeded cells and leaves
    # the others empty: the cascade's mean stays above the 0.01 threshold.
    grid.update(lambda x: torch.ones(x.shape[0]), torch.Generator().manual_seed(0), all_cells=True)
    assert set(torch.nonzero(grid.occupancy).squeeze(1).tolist()) == want


def test_seeding_without_a_seen_cell_changes_nothing():
    grid = OccupancyGrid(1)
    before = grid.occupancy.clone()
    assert grid.seed_from_points(torch.tensor([[5.0, 5.0, 5.0]]), 3) == 0
    assert torch.equal(grid.occupancy, before) and (grid.density == 0).all()


def test_points_map_into_the_ngp_frame_as_camera_positions_do():
    pts = np.random.default_rng(1).normal(size=(20, 3)) * 3.0
    mats = np.tile(np.eye(4), (20, 1, 1))
    mats[:, :3, 3] = pts
    scale, offset = 0.217, (0.4, 0.55, 0.61)
    cams = nerf_matrix_to_ngp(torch.from_numpy(mats), scale, offset)[:, :, 3].numpy()
    assert np.array_equal(points_to_ngp(pts, scale, offset), cams)


# ---------------------------------------------------------------------------------------------------------------------
# The PLY


def test_read_sparse_points_reads_binary_and_ascii_ply(tmp_path):
    pts = np.random.default_rng(2).uniform(-1, 1, (50, 3))
    trimesh.PointCloud(pts, colors=np.full((50, 4), 200, dtype=np.uint8)).export(tmp_path / "p.ply")
    np.testing.assert_allclose(read_sparse_points(tmp_path / "p.ply"), pts, rtol=1e-6, atol=1e-7)  # float32 in file
    ascii_ply = tmp_path / "a.ply"
    ascii_ply.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                         "property float z\nend_header\n0 1 2\n-1.5 0.25 3\n")
    assert read_sparse_points(ascii_ply).tolist() == [[0.0, 1.0, 2.0], [-1.5, 0.25, 3.0]]


def _header(n):
    return f"ply\nformat ascii 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"


@pytest.mark.parametrize("name, content, message", [
    ("missing.ply", None, "no such file"),
    ("garbage.ply", b"hello, not a point cloud\n", "not a readable PLY"),
    ("empty.ply", b"", "not a readable PLY"),
    ("truncated.ply", "cut", "not a readable PLY"),
    ("none.ply", _header(0).encode(), "holds no points"),
    ("nan.ply", (_header(2) + "0 0 0\n1 nan 1\n").encode(), "NaN or infinite"),
    ("folder.ply", "dir", "is not a file"),
])
def test_a_bad_ply_is_one_data_error_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "cut":
        trimesh.PointCloud(np.ones((100, 3))).export(path)
        path.write_bytes(path.read_bytes()[:400])
    elif content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_sparse_points(path)
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


# ---------------------------------------------------------------------------------------------------------------------
# The command


_FAST = ["--backend", "torch", "--set", "train.final_eval_views=0", "--set", "nerf.render_views=0",
         "--set", "nerf.grid_warmup_steps=0",
         "--set", "train.eval_every=0", "--set", "train.batch_size=4096", "--set", "nerf.n_rays_initial=256",
         "--set", "encoding.log2_hashmap_size=12", "--set", "train.checkpoint_every=1"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    return make_synthetic_scene(tmp_path_factory.mktemp("prior"), n_train=8, n_val=1, resolution=16)


def test_train_nerf_seeds_the_grid_from_the_points_beside_the_dataset_and_resumes_without_them(ngp, scene,
                                                                                                 tmp_path):
    import yaml

    ds = tmp_path / "ds"
    ds.mkdir()
    for item in scene.iterdir():
        (ds / item.name).symlink_to(item)
    pts = np.random.default_rng(3).uniform(-0.6, 0.6, (300, 3))
    trimesh.PointCloud(pts).export(ds / "sparse_points.ply")
    runs = tmp_path / "runs"
    # The default, occupancy_init=auto, seeds from a capture's sparse_points.ply (issue 16's measurement: +0.9 dB
    # after 10 minutes on the processed fox); a dataset without one starts full (below).
    res = ngp("train-nerf", ds, "--steps", "1", "--runs-dir", runs, "--set", "nerf.occupancy_dilation=2", *_FAST)
    assert res.exit_code == 0, res.stderr
    assert "occupancy grid seeded from 300 sparse points (0 outside the scene box) dilated by 2 cells" in res.stderr
    run = Path(res.last("done")["run_dir"])
    recorded = yaml.safe_load((run / "config.yaml").read_text())["nerf"]
    assert recorded["occupancy_init"] == "points" and recorded["sparse_points"] == str(ds.resolve() /
                                                                                        "sparse_points.ply")
    plain = ngp("train-nerf", scene, "--steps", "1", "--runs-dir", runs, *_FAST)
    assert plain.exit_code == 0, plain.stderr
    assert "seeded" not in plain.stderr
    plain_cfg = yaml.safe_load((Path(plain.last("done")["run_dir"]) / "config.yaml").read_text())["nerf"]
    assert plain_cfg["occupancy_init"] == "full"
    # The seeding happens on a fresh run only: --resume needs no points (the grid is in the checkpoint).
    (ds / "sparse_points.ply").unlink()
    again = ngp("train-nerf", "--resume", run, "--steps", "2", "--backend", "torch")
    assert again.exit_code == 0, again.stderr
    assert "seeded" not in again.stderr and again.last("done")["step"] == 2


@pytest.mark.parametrize("ply, message", [(None, "no such file"), (b"not a ply", "not a readable PLY")])
def test_train_nerf_refuses_a_missing_or_corrupt_ply_before_writing_anything(ngp, scene, tmp_path, ply, message):
    path = tmp_path / "points.ply"
    if ply is not None:
        path.write_bytes(ply)
    res = ngp("train-nerf", scene, "--steps", "1", "--runs-dir", tmp_path / "runs", "--set",
              "nerf.occupancy_init=points", "--set", f"nerf.sparse_points={path}", *_FAST)
    assert res.exit_code == 4
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("ngp:")]
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0] and "Traceback" not in res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["exit_code"] == 4 if res.stdout.strip() else True
    assert not (tmp_path / "runs").exists()

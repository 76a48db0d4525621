"""ngp_cli.capture.sfm: pycolmap's structure from motion on a few synthetic views, the check of a model against its
matches, and a second mapping run when the first model contradicts them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.capture.scene import orbit_poses, render_frames


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> Path:
    """12 views of the synthetic scene (a quarter of the test orbit), 160 x 160 PNG."""
    pytest.importorskip("pycolmap")
    import imageio.v3 as iio

    folder = tmp_path_factory.mktemp("views")
    for k, frame in enumerate(render_frames(orbit_poses(40)[:12], 160)):
        iio.imwrite(folder / f"view_{k:02d}.png", frame)
    return folder


def test_chunks_of_pairs_touch_few_images():
    from ngp_cli.capture.sfm import _chunks

    names = {i: f"{i:04d}.jpg" for i in range(1, 51)}
    pairs = [(i, j) for i in range(1, 51) for j in range(i + 1, 51)]
    chunks = _chunks(pairs, names, "exhaustive")
    assert len(chunks) == 15 and sorted(p for c in chunks for p in c) == pairs
    assert max(len({k for p in c for k in p}) for c in chunks) == 20  # 2 groups of 10 images
    sequential = pairs[:300]
    chunks = _chunks(sequential, names, "sequential")
    assert [len(c) for c in chunks] == [64, 64, 64, 64, 44] and [p for c in chunks for p in c] == sequential


def test_run_sfm_and_a_misplaced_view(views, tmp_path):
    import pycolmap

    from ngp_cli.capture.sfm import check_consistency, run_sfm

    stages = []
    result = run_sfm(views, tmp_path, matching="exhaustive", quiet=True, stage=stages.append)
    rec = result.reconstruction
    assert stages == ["features", "matching", "mapping"] and result.attempts == 1
    assert rec.num_reg_images() == 12
    assert result.consistency.pairs >= 30 and result.consistency.contradicted == []
    assert rec.compute_mean_reprojection_error() < 1.0

    # Move one view 2 units (the cameras are about 1 apart) along its own y axis: every pair with enough matches that
    # includes it is now contradicted, and the strongest of them are flagged.
    image = next(im for im in rec.images.values() if im.name == "view_05.png")
    frame = rec.frames[image.frame_id]
    pose = frame.rig_from_world
    frame.rig_from_world = pycolmap.Rigid3d(pose.rotation, pose.translation + np.array([0.0, 2.0, 0.0]))
    moved = check_consistency(rec, tmp_path / "database.db")
    assert moved.pairs == result.consistency.pairs
    assert len(moved.contradicted) >= 5
    assert all("view_05.png" in (a, b) for a, b, _ in moved.contradicted)
    assert moved.strong and moved.strong[0][2] == max(n for _, _, n in moved.contradicted)
    assert 0.0 < moved.contradicted_share < 1.0


def test_run_sfm_maps_again_when_the_model_contradicts_its_matches(views, tmp_path, monkeypatch):
    from ngp_cli.capture import sfm

    real = sfm.check_consistency
    calls = []

    def first_run_contradicted(rec, database, *args, **kwargs):
        cons = real(rec, database, *args, **kwargs)
        calls.append(cons)
        if len(calls) == 1:  # pretend the first model misplaced a view
            cons = sfm.Consistency(pairs=cons.pairs, inliers=cons.inliers, upper_quartile=cons.upper_quartile,
                                   contradicted=[("view_00.png", "view_01.png", 10**6)])
        return cons

    monkeypatch.setattr(sfm, "check_consistency", first_run_contradicted)
    notes = []
    result = sfm.run_sfm(views, tmp_path, quiet=True, note=notes.append)
    assert result.attempts == 2 and len(calls) == 2
    assert result.consistency.contradicted == []  # the second, uncontradicted model is kept
    assert len(notes) == 1 and "mapping again with another seed (2/3)" in notes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["database.db", "pairs.txt", "sparse-0", "sparse-1"]

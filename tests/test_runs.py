"""Run directories: uniqueness, atomic checkpoints kept to the last N, pickle-free loading."""

from __future__ import annotations

import os

import pytest
import torch

from ngp_cli.errors import DataError, OutputError
from ngp_cli.runs import RunDir, atomic_write_text


def test_run_directories_are_never_reused(tmp_path):
    runs = [RunDir.create(tmp_path, "image", "astro photo!") for _ in range(3)]
    paths = {r.path for r in runs}
    assert len(paths) == 3
    for r in runs:
        assert r.path.parent == tmp_path / "image"
        assert r.path.name.endswith(("astro_photo", "astro_photo-2", "astro_photo-3"))
        assert r.checkpoints_dir.is_dir() and r.renders_dir.is_dir()


def test_unwritable_runs_root_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="cannot create runs directory"):
        RunDir.create(blocker, "image", "x")


def test_checkpoints_round_trip_and_keep_last_n(tmp_path):
    run = RunDir.create(tmp_path, "image", "ckpt")
    for step in (10, 20, 30, 40):
        run.save_checkpoint(step, {"w": torch.full((3,), float(step)), "rng": torch.arange(4, dtype=torch.uint8)},
                            {"elapsed_s": step / 10}, keep=2)
    assert [s for s, _ in run.checkpoints()] == [30, 40]
    assert len(list(run.checkpoints_dir.iterdir())) == 4  # two .safetensors + two .json, no temporaries
    tensors, meta = run.load_latest_checkpoint()
    assert meta["step"] == 40 and meta["elapsed_s"] == 4.0
    assert torch.equal(tensors["w"], torch.full((3,), 40.0))


def test_incomplete_checkpoint_is_ignored_and_corrupt_one_is_a_data_error(tmp_path):
    run = RunDir.create(tmp_path, "image", "ckpt")
    run.save_checkpoint(5, {"w": torch.ones(2)}, {}, keep=3)
    # a crash between the weights and the metadata leaves a weights file without JSON: not a checkpoint
    (run.checkpoints_dir / "step-00000009.safetensors").write_bytes(b"partial")
    assert [s for s, _ in run.checkpoints()] == [5]
    (run.checkpoints_dir / "step-00000005.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(DataError, match="corrupt checkpoint"):
        run.load_latest_checkpoint()


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OutputError, match="No space left"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_open_requires_a_run_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        RunDir.open(tmp_path / "nope")
    with pytest.raises(DataError, match="no config.yaml"):
        RunDir.open(tmp_path)


def test_metrics_truncate_drops_lines_after_checkpoint(tmp_path):
    run = RunDir.create(tmp_path, "image", "m")
    for step in (10, 20, 30):
        run.append_metrics({"step": step, "loss": 1.0 / step})
    with open(run.metrics_path, "a") as fh:
        fh.write('{"step": 4')  # cut by a crash
    run.truncate_metrics(20)
    assert [m["step"] for m in run.read_metrics()] == [10, 20]

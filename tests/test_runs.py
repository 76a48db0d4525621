"""Run directories: uniqueness, atomic checkpoints kept to the last N, pickle-free loading."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

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
    loaded = run.latest_checkpoint()
    tensors, meta = loaded.tensors, loaded.meta
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
        run.latest_checkpoint()


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


def test_archived_summary_never_takes_a_name_from_an_unvalidated_step_nor_overwrites(tmp_path):
    run = RunDir.create(tmp_path, "image", "s")
    run.write_summary({"step": 10})
    (run.path / "summary-step10.json").write_text("older")
    assert run.archive_summary().name == "summary-step10-2.json"
    assert (run.path / "summary-step10.json").read_text() == "older"
    (run.path / "summary-stepx").mkdir()
    run.summary_path.write_text(json.dumps({"step": "x/../../victim"}))
    assert run.archive_summary() == run.path / "summary-previous.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image"]  # nothing written beside the run
    assert run.archive_summary() is None


def test_stale_temporaries_older_than_the_process_are_removed(tmp_path):
    run = RunDir.create(tmp_path, "image", "t")
    (run.path / "meshes").mkdir()
    old = 1e9  # from 2001: older than this (long-lived) test process
    stale = [run.path / ".summary.json.0123abcd.tmp", run.checkpoints_dir / ".step-00000010.safetensors.deadbeef.tmp",
             run.checkpoints_dir / ".tmpAb12Cd", run.renders_dir / ".reconstruction.png.00ff00ff.tmp.png",
             run.path / "meshes" / ".mesh_256.ply.11111111.tmp.ply"]
    young = run.checkpoints_dir / ".step-00000020.json.22222222.tmp"  # another process's write in progress
    keep = [run.path / "notes.tmp", run.renders_dir / ".hidden", young]
    for p in stale + keep:
        p.write_text("x")
    for p in stale + keep[:2]:
        os.utime(p, (old, old))
    os.utime(young, (time.time() + 60, time.time() + 60))
    assert run.remove_stale_temporaries() == len(stale)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)


def test_checkpoint_files_get_the_umask_mode_like_every_other_file(tmp_path):
    previous = os.umask(0o027)
    try:
        run = RunDir.create(tmp_path, "image", "mode")
        weights = run.save_checkpoint(1, {"w": torch.ones(2)}, {}, keep=1)
        run.write_summary({"step": 1})
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (weights, weights.with_suffix(".json"),
                                                               run.summary_path)}
    assert set(modes.values()) == {0o640}, {k: oct(v) for k, v in modes.items()}


def test_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys):
    run = RunDir.create(tmp_path, "image", "fb")
    for step in (10, 20, 30):
        run.save_checkpoint(step, {"w": torch.full((2,), float(step))}, {}, keep=3)
    (run.checkpoints_dir / "step-00000030.json").write_text('{"step": 31}')
    path = run.checkpoints_dir / "step-00000020.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    loaded = run.latest_checkpoint()
    assert loaded.step == 10 and torch.equal(loaded.tensors["w"], torch.full((2,), 10.0))
    assert [p.name for p in loaded.skipped] == ["step-00000030.json", "step-00000020.json"]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(err) == 1 and "warning" in err[0] and "step 10" in err[0] and "step-00000030.json" in err[0]
    run.set_aside(loaded.skipped)
    assert [s for s, _ in run.checkpoints()] == [10]
    assert (run.checkpoints_dir / "step-00000030.json.corrupt").is_file()
    assert (run.checkpoints_dir / "step-00000020.safetensors.corrupt").is_file()


def test_disk_full_in_safetensors_is_an_output_error_without_leftovers(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 8)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    run = RunDir.create(tmp_path, "image", "full")
    run.save_checkpoint(1, {"w": torch.ones(2)}, {}, keep=3)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OutputError, match="No space left on device"):
        run.save_checkpoint(2, {"w": torch.ones(2)}, {}, keep=3)
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step-00000001.json",
                                                                      "step-00000001.safetensors"]

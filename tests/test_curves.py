"""``renders/curves.png`` (issue 16, part 5): the series read from metrics.jsonl for each task's lines, the picture
written atomically from ``finish()`` and listed as the ``curves`` artifact, none for a run without a logged step, and a
drawing failure that warns without losing the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ngp_cli.curves import read_curves, write_curves


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _trainer_records(eval_key="psnr"):
    out = []
    for step in range(10, 60, 10):
        out.append({"step": step, "loss": 1.0 / step, "psnr": 10 + step / 10, "batch_psnr": 10 + step / 10,
                    "elapsed_s": step * 0.5})
        if step % 20 == 0:
            out.append({"step": step, "elapsed_s": step * 0.5, "eval": {eval_key: step / 100, "n_views": 2}})
    return out


def test_nerf_and_sdf_lines_give_loss_and_the_periodic_evaluation(tmp_path):
    c = read_curves(_jsonl(tmp_path / "m.jsonl", _trainer_records()))
    assert c.loss == [(5.0, 0.1), (10.0, 0.05), (15.0, 1 / 30), (20.0, 0.025), (25.0, 0.02)]
    assert c.metric == [(10.0, 0.2), (20.0, 0.4)] and c.metric_label == "held-out PSNR (dB)"
    assert c.time_label == "training time (s)"
    sdf = read_curves(_jsonl(tmp_path / "s.jsonl", _trainer_records("iou")))
    assert sdf.metric == [(10.0, 0.2), (20.0, 0.4)] and sdf.metric_label == "held-out IoU"


def test_image_lines_fall_back_to_the_batch_psnr_and_old_lines_to_the_step(tmp_path):
    records = [r for r in _trainer_records() if "eval" not in r]
    c = read_curves(_jsonl(tmp_path / "m.jsonl", records))
    assert c.metric == [(5.0, 11.0), (10.0, 12.0), (15.0, 13.0), (20.0, 14.0), (25.0, 15.0)]
    assert c.metric_label == "training batch PSNR (dB)"
    old = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]
    c = read_curves(_jsonl(tmp_path / "old.jsonl", old))
    assert c.time_label == "step" and [x for x, _ in c.loss] == [10, 20, 30, 40, 50]


def test_nrc_frames_accumulate_their_time(tmp_path):
    records = [{"frame": i + 1, "frame_s": 0.25, "loss": 0.5 / (i + 1), "relmse_frame": 2.0 / (i + 1)}
               for i in range(4)]
    c = read_curves(_jsonl(tmp_path / "m.jsonl", records))
    assert c.loss == [(0.25, 0.5), (0.5, 0.25), (0.75, 0.5 / 3), (1.0, 0.125)]
    assert c.metric == [(0.25, 2.0), (0.5, 1.0), (0.75, 2.0 / 3), (1.0, 0.5)] and c.metric_scale == "log"


def test_non_finite_values_and_bad_lines_are_left_out(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "loss": null, "elapsed_s": 1}\n[1, 2]\nnot json\n'
                    '{"step": 2, "loss": 0.5, "elapsed_s": 2}\n{"step": 3, "loss": 0.4, "elapsed_s": 3')
    assert read_curves(path).loss == [(2.0, 0.5)]


def test_write_curves_draws_a_png_and_nothing_without_a_logged_step(tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "curves.png"
    assert write_curves(_jsonl(tmp_path / "m.jsonl", _trainer_records()), out, title="run")
    image = iio.imread(out)
    assert image.shape[0] == 420 and image.shape[1] == 1100 and image.dtype == np.uint8
    assert image[..., :3].std() > 10  # not a blank canvas
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not write_curves(_jsonl(empty / "m.jsonl", []), empty / "curves.png")
    assert not write_curves(empty / "absent.jsonl", empty / "curves.png")
    assert not write_curves(_jsonl(empty / "e.jsonl", [{"step": 5, "elapsed_s": 1.0, "eval": {"n_views": 0}}]),
                            empty / "curves.png")
    assert not (empty / "curves.png").exists()


# ---------------------------------------------------------------------------------------------------------------------
# finish()


def _run(tmp_path, records):
    from ngp_cli.runs import RunDir

    run = RunDir.create(tmp_path / "runs", "image", "t")
    if records:
        _jsonl(run.metrics_path, records)
    return run


def _done(capsys) -> dict:
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    return lines[-1]


def test_finish_writes_the_curves_and_lists_them(tmp_path, capsys):
    from ngp_cli.commands import finish

    run = _run(tmp_path, _trainer_records())
    finish(run, 50, {"psnr": 20.0}, {})
    done = _done(capsys)
    assert done["artifacts"]["curves"] == str(run.renders_dir / "curves.png")
    assert (run.renders_dir / "curves.png").stat().st_size > 1000
    assert json.loads(run.summary_path.read_text())["artifacts"]["curves"] == done["artifacts"]["curves"]


def test_finish_without_logged_steps_writes_no_curves(tmp_path, capsys):
    from ngp_cli.commands import finish

    run = _run(tmp_path, [])
    finish(run, 0, {}, {})
    assert "curves" not in _done(capsys)["artifacts"] and list(run.renders_dir.iterdir()) == []


def test_a_drawing_failure_warns_and_the_run_completes(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    from ngp_cli.commands import finish

    def broken(self, *args, **kwargs):
        Path(args[0]).write_bytes(b"half a png")  # fails after writing part of the file
        raise RuntimeError("no\nfonts")

    monkeypatch.setattr(Figure, "savefig", broken)
    run = _run(tmp_path, _trainer_records())
    finish(run, 50, {"psnr": 20.0}, {})
    captured = capsys.readouterr()
    done = json.loads(captured.out.splitlines()[-1])
    assert done["event"] == "done" and "curves" not in done["artifacts"] and run.summary_path.is_file()
    warning = [ln for ln in captured.err.splitlines() if "warning" in ln]
    assert len(warning) == 1 and "training curves not drawn (RuntimeError: no fonts)" in warning[0]
    assert list(run.renders_dir.iterdir()) == []  # neither a curves.png nor the temporary


@pytest.mark.parametrize("task", ["fit-image", "train-nrc"])
def test_every_task_writes_curves(ngp, tmp_path, astronaut_crop, task):
    if task == "fit-image":
        args = [astronaut_crop, "--steps", "4", "--set", "encoding.n_levels=4", "--set", "encoding.log2_hashmap_size=12",
                "--set", "network.n_neurons=16", "--set", "train.batch_size=1024", "--set", "train.log_every=2"]
    else:
        args = ["--frames", "2", "--spp", "1", "--set", "nrc.width=16", "--set", "nrc.height=12", "--set",
                "nrc.warmup_frames=1", "--set", "nrc.train_paths=256", "--set", "nrc.reference_spp=4", "--set",
                "encoding.log2_hashmap_size=12", "--set", "network.n_hidden_layers=2"]
    res = ngp(task, *args, "--backend", "torch", "--runs-dir", tmp_path / "runs")
    assert res.exit_code == 0, res.stderr
    done = res.last("done")
    assert done["artifacts"]["curves"] == str(Path(done["run_dir"]) / "renders" / "curves.png")
    assert Path(done["artifacts"]["curves"]).stat().st_size > 1000

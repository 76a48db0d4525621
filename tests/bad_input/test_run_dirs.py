"""Bad run directories and resumes (issue 13, parts 1, 4 and 5): everything read back from a run is untrusted input.

Each case corrupts a private copy of a finished 10-step fit-image run (one checkpoint, step 10) in one distinct way and
checks that ``--resume`` refuses it with the documented exit code and one stderr line, leaving the run (and whatever
lies beside it) unchanged byte for byte.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.bad_input.conftest import assert_refused, unchanged

CKPT = "checkpoints/step-00000010"


def _json(path: Path, value) -> None:
    path.write_text(value if isinstance(value, str) else json.dumps(value))


def _ckpt_meta(run: Path) -> dict:
    return json.loads((run / f"{CKPT}.json").read_text())


def _set_ckpt_meta(run: Path, **changes) -> None:
    meta = _ckpt_meta(run)
    meta.update(changes)
    _json(run / f"{CKPT}.json", meta)


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _replace_by_file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("not a folder")


def _replace_by_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _metrics_line(run: Path, line: str) -> None:
    path = run / "metrics.jsonl"
    path.write_text(line + "\n" + path.read_text())


def _two_corrupt_checkpoints(run: Path) -> None:
    # an older checkpoint to fall back on, itself corrupt: nothing intact is left
    for suffix in (".json", ".safetensors"):
        shutil.copy(run / f"{CKPT}{suffix}", run / f"checkpoints/step-00000005{suffix}")
    _json(run / "checkpoints/step-00000005.json", {**_ckpt_meta(run), "step": 5})
    _truncate(run / "checkpoints/step-00000005.safetensors")
    _truncate(run / f"{CKPT}.safetensors")


# (id, corruption of the run, exit code, needle in the error line)
RUN_CORRUPTIONS = [
    ("summary-not-json", lambda r: _json(r / "summary.json", "{oops"), 4, "malformed summary"),
    ("summary-a-list", lambda r: _json(r / "summary.json", [1, 2]), 4, "expected a JSON object"),
    ("summary-step-float", lambda r: _json(r / "summary.json", {**_summary(r), "step": 2.5}), 4,
     "step must be an integer"),
    ("summary-step-bool", lambda r: _json(r / "summary.json", {**_summary(r), "step": True}), 4,
     "step must be an integer"),
    ("summary-is-a-folder", lambda r: _replace_by_folder(r / "summary.json"), 4, "not a file"),
    ("checkpoint-without-step", lambda r: _json(r / f"{CKPT}.json", {"elapsed_s": 1.0}), 4, "step must be"),
    ("checkpoint-json-list", lambda r: _json(r / f"{CKPT}.json", [10]), 4, "expected a JSON object"),
    ("checkpoint-step-string", lambda r: _set_ckpt_meta(r, step="abc"), 4, "step must be an integer"),
    ("checkpoint-step-negative", lambda r: _set_ckpt_meta(r, step=-1), 4, "step must be an integer"),
    ("checkpoint-step-bool", lambda r: _set_ckpt_meta(r, step=True), 4, "step must be an integer"),
    ("checkpoint-step-not-its-name", lambda r: _set_ckpt_meta(r, step=99), 4, "does not match the file name"),
    ("checkpoint-json-not-json", lambda r: _json(r / f"{CKPT}.json", '{"step": 10,'), 4, "malformed checkpoint"),
    ("checkpoint-weights-truncated", lambda r: _truncate(r / f"{CKPT}.safetensors"), 4, "corrupt checkpoint"),
    ("checkpoint-elapsed-string", lambda r: _set_ckpt_meta(r, elapsed_s="soon"), 4, "elapsed_s"),
    ("checkpoint-ema-steps-float", lambda r: _set_ckpt_meta(r, ema_steps=1.5), 4, "ema_steps"),
    ("checkpoint-last-not-object", lambda r: _set_ckpt_meta(r, last="x"), 4, "'last'"),
    ("every-checkpoint-corrupt", _two_corrupt_checkpoints, 4, "corrupt checkpoint"),
    ("checkpoints-is-a-file", lambda r: _replace_by_file(r / "checkpoints"), 4, "not a folder"),
    ("renders-is-a-file", lambda r: _replace_by_file(r / "renders"), 4, "not a folder"),
    ("metrics-garbage-line", lambda r: _metrics_line(r, "garbage"), 4, "line 1 is not JSON"),
    ("metrics-list-line", lambda r: _metrics_line(r, "[1, 2]"), 4, "line 1 is not a JSON object"),
    ("metrics-step-string", lambda r: _metrics_line(r, '{"step": "5", "loss": 1}'), 4, "step must be an integer"),
    ("config-without-task", lambda r: (r / "config.yaml").write_text(
        "\n".join(ln for ln in (r / "config.yaml").read_text().splitlines() if not ln.startswith("task:"))), 4,
     "names no task"),
    ("input-json-not-json", lambda r: _json(r / "input.json", "{"), 4, "malformed input identity"),
    ("input-json-bad-hash", lambda r: _json(r / "input.json", {"inputs": {"image.path": {
        "path": "/x.png", "files": {"": {"size": 1, "sha256_first_mib": 7}}}}, "changes": []}), 4,
     "malformed input identity"),
]


@pytest.mark.parametrize("corrupt, code, needle", [c[1:] for c in RUN_CORRUPTIONS],
                         ids=[c[0] for c in RUN_CORRUPTIONS])
def test_resume_refuses_a_corrupt_run(ngp, image_run, corrupt, code, needle):
    corrupt(image_run)
    with unchanged(image_run.parent):
        res = ngp("fit-image", "--resume", image_run, "--steps", "20")
    assert_refused(res, code, needle)


def test_summary_step_cannot_escape_the_run(ngp, image_run):
    """Issue 13 item 1: extending a finished run renamed summary.json to summary-step{step}.json with ``step`` read
    unvalidated, so this summary and an empty summary-stepx/ folder replaced a settings.json outside the run."""
    victim = image_run.parent / "victim"
    victim.mkdir()
    (victim / "settings.json").write_text('{"keep": "me"}')
    (image_run / "summary-stepx").mkdir()
    _json(image_run / "summary.json", {**_summary(image_run), "step": "x/../../victim/settings"})
    with unchanged(image_run.parent.parent):  # the run, the victim beside it, and anything else under runs/
        res = ngp("fit-image", "--resume", image_run, "--steps", "20")
    assert_refused(res, 4, "step must be an integer")
    assert (victim / "settings.json").read_text() == '{"keep": "me"}'


def test_resume_refuses_another_tasks_run(ngp, image_run):
    with unchanged(image_run):
        res = ngp("train-sdf", "--resume", image_run, "--steps", "20")
    assert_refused(res, 4, "is an 'image' run, not 'sdf'")


@pytest.mark.parametrize("assignment", ["image.path={other}", "image={{path: {other}}}"],
                         ids=["set-input-key", "set-input-section"])
def test_set_of_the_input_needs_allow_input_change(ngp, image_run, tmp_path, photo, assignment):
    other = tmp_path / "other.png"
    shutil.copy(photo, other)
    with unchanged(image_run, tmp_path / "other.png"):
        res = ngp("fit-image", "--resume", image_run, "--steps", "20", "--set", assignment.format(other=other))
    assert_refused(res, 3, "--allow-input-change")


@pytest.fixture
def own_photo_run(ngp, photo, tmp_path, image_fast_args) -> tuple[Path, Path]:
    """A finished 2-step run on a private copy of the photo (cases that change the photo on disk)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    own = folder / "own.png"
    shutil.copy(photo, own)
    res = ngp("fit-image", own, "--steps", "2", "--runs-dir", tmp_path / "runs", *image_fast_args)
    assert res.exit_code == 0, res.stderr
    return Path(res.last("done")["run_dir"]), own


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _append(path: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b"\0" * 16)


def _point_config_elsewhere(run: Path, photo: Path) -> None:
    other = photo.with_name("elsewhere.png")
    shutil.copy(photo, other)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(photo), str(other)))


@pytest.mark.parametrize("change, needle", [
    (lambda run, photo: _flip_a_byte(photo), "content differs"),
    (lambda run, photo: _append(photo), "size"),
    (_point_config_elsewhere, "is now"),
], ids=["photo-content-changed", "photo-grew", "config-path-edited"])
def test_resume_refuses_a_changed_input(ngp, own_photo_run, change, needle):
    run, photo = own_photo_run
    change(run, photo)
    with unchanged(run, photo.parent):
        res = ngp("fit-image", "--resume", run, "--steps", "4")
    assert_refused(res, 4, needle)


def test_disk_full_while_writing_a_checkpoint_is_an_output_error(ngp, photo, tmp_path, image_fast_args,
                                                                 monkeypatch):
    """safetensors reports ENOSPC as its own SafetensorError (not an OSError): exit 6, no partial file, the earlier
    checkpoint intact."""
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file
    calls = []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"\0" * 10)  # a partial write before the disk filled up
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28) at "
                                  f'path "{filename}"')
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    runs = tmp_path / "runs"
    with unchanged(photo.parent):
        res = ngp("-q", "fit-image", photo, "--steps", "10", "--runs-dir", runs, *image_fast_args,
                  "--set", "train.checkpoint_every=5")  # -q: the failure comes after training's progress lines
    assert_refused(res, 6, "No space left on device")
    (run,) = (runs / "image").iterdir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000005.json",
                                                                         "step-00000005.safetensors"]
    from ngp_cli.runs import RunDir

    assert RunDir(run).latest_checkpoint().step == 5

"""Bad command lines on every command (issue 13, part 7; slice E): unknown commands and options, missing or extra
arguments, malformed and out-of-range option values, choices, run names that are paths, and the error line itself
(folded and capped). Each case is refused with its documented code in one stderr line, before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ngp_cli.errors import EXIT_CONFIG, EXIT_DATA, EXIT_USAGE
from tests.bad_input.conftest import assert_refused, unchanged


@pytest.fixture(scope="module", autouse=True)
def _warm_kernel_launcher():
    """On a cold kernel cache the first auto-backend command prints a one-time "compiling ..." line: build it first."""
    from ngp_cli.cuda.runtime import cpu_target_problem

    cpu_target_problem()


_FAST = ["--steps", "1", "--backend", "torch", "--set", "train.batch_size=256", "--set", "encoding.n_levels=2",
         "--set", "encoding.log2_hashmap_size=10"]

# (argv, exit code, needle). Placeholders: {photo} (a good photo), {runs} (a fresh runs root), {run} (a private copy
# of a finished fit-image run), {sdf} and {nerf} (run directories of those tasks, a config.yaml only: a run command
# parses its options before it loads anything). Every row is a different mistake; the runs root, the photo's folder and the run are
# checked unchanged byte for byte, so nothing is created on the way to the refusal.
CASES = {
    # commands, arguments, option syntax
    "unknown-command": (["frobnicate"], EXIT_USAGE, "No such command 'frobnicate'"),
    "unknown-subcommand": (["presets", "frobnicate"], EXIT_USAGE, "No such command 'frobnicate'"),
    "unknown-option": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--bogus"], EXIT_USAGE,
                       "No such option: --bogus"),
    "another-commands-option": (["eval", "{run}", "--orbit", "3"], EXIT_USAGE, "No such option: --orbit"),
    "resume-on-train-nrc": (["train-nrc", "--resume", "{run}", "--runs-dir", "{runs}"], EXIT_USAGE,
                            "No such option: --resume"),
    "missing-run-argument": (["eval"], EXIT_USAGE, "Missing argument 'run'"),
    "missing-preset-argument": (["presets", "show"], EXIT_USAGE, "Missing argument 'name'"),
    "extra-argument": (["tasks", "extra"], EXIT_USAGE, "unexpected extra argument"),
    "two-inputs": (["fit-image", "{photo}", "{photo}", "--runs-dir", "{runs}"], EXIT_USAGE,
                   "unexpected extra argument"),
    "option-without-its-value": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--steps"], EXIT_USAGE,
                                 "'--steps' requires an argument"),
    "flag-given-a-value": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--json=yes"], EXIT_USAGE,
                           "'--json' does not take a value"),
    # malformed and out-of-range values
    "steps-not-a-number": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--steps", "abc"], EXIT_USAGE,
                           "Invalid value for '--steps'"),
    "steps-zero": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--steps", "0"], EXIT_CONFIG,
                   "train.n_steps must be >= 1, got 0"),
    "steps-negative-on-train-sdf": (["train-sdf", "--runs-dir", "{runs}", "--steps", "-5"], EXIT_CONFIG,
                                    "train.n_steps must be >= 1, got -5"),
    "render-scale-not-a-number": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--render-scale", "big"],
                                  EXIT_USAGE, "Invalid value for '--render-scale'"),
    "downscale-zero": (["train-nerf", "--runs-dir", "{runs}", "--downscale", "0"], EXIT_USAGE,
                       "Invalid value for '--downscale'"),
    "frames-zero": (["train-nrc", "--runs-dir", "{runs}", "--frames", "0"], EXIT_USAGE,
                    "Invalid value for '--frames'"),
    "spp-negative": (["train-nrc", "--runs-dir", "{runs}", "--spp", "-1"], EXIT_USAGE, "Invalid value for '--spp'"),
    "fps-zero": (["render", "{sdf}", "--fps", "0"], EXIT_USAGE, "Invalid value for '--fps'"),
    "mesh-resolution-too-small": (["extract-mesh", "{nerf}", "--resolution", "8"], EXIT_USAGE,
                                  "Invalid value for '--resolution'"),
    "min-component-above-one": (["extract-mesh", "{sdf}", "--min-component", "2"], EXIT_USAGE,
                                "Invalid value for '--min-component'"),
    "bench-batch-zero": (["bench", "--backend", "torch", "--batch", "0"], EXIT_USAGE, "Invalid value for '--batch'"),
    "bench-batch-absurd": (["bench", "--backend", "torch", "--batch", str(10**12)], EXIT_USAGE,
                           "Invalid value for '--batch'"),
    "bench-dims-7": (["bench", "--backend", "torch", "--dims", "7"], EXIT_USAGE, "Invalid value for '--dims'"),
    "bench-repeats-zero": (["bench", "--repeats", "0"], EXIT_USAGE, "Invalid value for '--repeats'"),
    "bench-warmup-negative": (["bench", "--warmup", "-1"], EXIT_USAGE, "Invalid value for '--warmup'"),
    "threshold-not-a-number": (["extract-mesh", "{nerf}", "--threshold", "high"], EXIT_USAGE,
                               "Invalid value for '--threshold'"),
    "runs-dir-empty": (["fit-image", "{photo}", "--runs-dir", "", *_FAST], EXIT_USAGE,
                       "Invalid value for '--runs-dir': is empty"),
    # choices: a usage error naming the valid values
    "backend-gpu-on-a-training-command": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--backend", "gpu"],
                                          EXIT_USAGE, "'gpu' is not one of 'auto', 'cuda', 'cpu', 'torch'"),
    "backend-gpu-on-a-run-command": (["eval", "{sdf}", "--backend", "gpu"], EXIT_USAGE,
                                     "'gpu' is not one of 'auto', 'cuda', 'cpu', 'torch'"),
    "backend-auto-on-bench": (["bench", "--backend", "auto"], EXIT_USAGE, "'auto' is not one of 'cuda', 'cpu', 'torch'"),
    "format-xml": (["presets", "show", "image", "--format", "xml"], EXIT_USAGE, "'xml' is not one of 'json', 'yaml'"),
    "bench-only-typo": (["bench", "--backend", "torch", "--only", "encodng_forward"], EXIT_USAGE,
                        "'encodng_forward' is not one of 'encoding_forward'"),
    "presets-task-typo": (["presets", "show", "image", "--task", "imgae"], EXIT_USAGE,
                          "--task must be an installed task"),
    # run names are plain names: the run directory always stays inside --runs-dir
    # (fit-image with a 1-step tiny model, so that a regression that accepts the name fails in seconds)
    "name-with-a-slash": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--name", "../../victim", *_FAST],
                          EXIT_USAGE, "is not a plain name"),
    "name-dot-dot": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--name", "..", *_FAST], EXIT_USAGE,
                     "is not a plain name"),
    "name-with-a-backslash": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--name", "..\\x", *_FAST],
                              EXIT_USAGE, "is not a plain name"),
    "name-empty": (["fit-image", "{photo}", "--runs-dir", "{runs}", "--name", "", *_FAST], EXIT_USAGE,
                   "is not a plain name"),
    # option combinations
    "preset-with-resume": (["fit-image", "--resume", "{run}", "--preset", "image"], EXIT_USAGE,
                           "--preset cannot be combined with --resume"),
    "set-unknown-section": (["train-nrc", "--runs-dir", "{runs}", "--set", "nosuch.key=1"], EXIT_CONFIG,
                            "unknown key 'nosuch'"),
    "eval-on-a-task-without-eval": (["eval", "{run}"], EXIT_USAGE, "'image' runs have no 'ngp eval'"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_command_line_is_refused(ngp, photo, image_run, tmp_path, case):
    argv, code, needle = CASES[case]
    runs = tmp_path / "new-runs"  # image_run lives under tmp_path / "runs"
    task_runs = {task: tmp_path / "task-runs" / task for task in ("sdf", "nerf")}
    for task, run in task_runs.items():
        for sub in ("checkpoints", "renders"):
            (run / sub).mkdir(parents=True)
        (run / "config.yaml").write_text(f"task: {task}\n")
    argv = [a.format(photo=photo, runs=runs, run=image_run, **task_runs) for a in argv]
    with unchanged(runs, photo.parent, image_run, *task_runs.values()):
        res = ngp(*argv)
    assert_refused(res, code, needle)
    assert not runs.exists()


def test_a_line_break_in_a_path_stays_on_the_error_line(ngp, tmp_path):
    """A file name may hold a newline; the error line must still be one line (and name the file)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    with unchanged(inputs):
        res = ngp("train-sdf", inputs / "bunny\nscan.obj", "--runs-dir", tmp_path / "runs")
    line = assert_refused(res, EXIT_DATA, "no such file")
    assert "bunny scan.obj" in line
    assert not (tmp_path / "runs").exists()


def test_a_huge_path_is_cut_on_the_error_line(ngp, tmp_path):
    """A 4000-character path (the OS takes it: each part is short) is cut, head kept, below the line cap."""
    from ngp_cli.cli import MAX_ERROR_LINE

    deep = Path(tmp_path, *(["d" * 200] * 20), "photo.png")
    with unchanged(tmp_path):
        res = ngp("fit-image", deep, "--runs-dir", tmp_path / "runs")
    line = assert_refused(res, EXIT_DATA)
    assert len(line) <= MAX_ERROR_LINE and line.endswith("...")
    assert line.startswith(f"ngp: data error: {tmp_path}/ddd")
    assert res.events[-1]["message"] == line.removeprefix("ngp: data error: ")

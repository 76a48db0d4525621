"""Bad inputs, run directories and outputs on every command (issue 13, part 7; slice E): the input of each training
command missing, a folder, empty or corrupt; runs roots that cannot be written; ``--resume``, ``eval``, ``render`` and
``extract-mesh`` pointed at things that are not (usable) runs; outputs that cannot be written; a GPU asked for where
there is none; bad presets. Each is refused with its documented code in one stderr line, leaving every run directory
and input folder it touches unchanged byte for byte.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ngp_cli.errors import EXIT_CONFIG, EXIT_DATA, EXIT_NO_GPU, EXIT_OUTPUT, EXIT_USAGE
from tests.bad_input.conftest import assert_refused, unchanged

_CUBE_OBJ = "".join(f"v {x} {y} {z}\n" for x, y, z in [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1),
                                                       (1, 1, 1), (0, 1, 1)]) + "".join(
    f"f {a} {b} {c}\n" for a, b, c in [(1, 3, 2), (1, 4, 3), (5, 6, 7), (5, 7, 8), (1, 2, 6), (1, 6, 5), (2, 3, 7),
                                       (2, 7, 6), (3, 4, 8), (3, 8, 7), (4, 1, 5), (4, 5, 8)])


@pytest.fixture(scope="module", autouse=True)
def _warm_kernel_launcher():
    """On a cold kernel cache the first auto-backend command prints a one-time "compiling ..." line: build it first."""
    from ngp_cli.cuda.runtime import cpu_target_problem

    cpu_target_problem()


def _no_gpu() -> bool:
    from ngp_cli.nn.backend import cuda_available

    return not cuda_available()


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A folder of bad (and a few good) input files for every command."""
    import imageio.v3 as iio
    import numpy as np

    d = tmp_path / "inputs"
    d.mkdir()
    iio.imwrite(d / "other.png", np.full((8, 8, 3), 200, np.uint8))
    (d / "cube.obj").write_text(_CUBE_OBJ)
    (d / "empty.obj").write_bytes(b"")
    (d / "broken.obj").write_text("v 1 2\nf 1 2 9\nthis is not OBJ\n")
    (d / "truncated.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 100\nproperty float x\n"
                                      b"property float y\nproperty float z\nend_header\n\x00\x01\x02")
    (d / "points.xyz").write_text("0 0 0\n1 1 1\n")
    (d / "mesh-folder.obj").mkdir()
    (d / "scene-unknown-key.yaml").write_text("lights: []\n")
    (d / "scene-empty.yaml").write_text("")
    (d / "not-json.json").write_text("frames: this is YAML, not JSON\n")
    (d / "no-frames.json").write_text('{"camera_angle_x": 0.7, "frames": []}')
    (d / "empty-dataset").mkdir()
    (d / "plain-file").write_text("not a folder\n")
    (d / "not-a-run").mkdir()
    (d / "not-a-run" / "notes.txt").write_text("hello\n")
    (d / "no-task.yaml").write_text("train:\n  n_steps: 3\n")
    return d


def _fake_run(root: Path, name: str, config: str | dict) -> Path:
    """A run directory as ngp creates it (config.yaml, checkpoints/, renders/), without a checkpoint."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "renders").mkdir()
    (run / "config.yaml").write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return run


@pytest.fixture
def runs(app, tmp_path, inputs) -> dict[str, Path]:
    """Run directories that are not usable in some way, each without a checkpoint: an SDF run of inputs/cube.obj, one
    of a task that is not installed, one with malformed YAML, and one whose config is a list."""
    from typer.testing import CliRunner

    sdf = yaml.safe_load(CliRunner().invoke(app, ["presets", "show", "sdf-cpu", "--format", "yaml"]).stdout)
    sdf["sdf"]["path"] = str(inputs / "cube.obj")
    root = tmp_path / "runs" / "misc"
    return {"sdf": _fake_run(root, "sdf", sdf), "alien": _fake_run(root, "alien", "task: martian\nseed: 1\n"),
            "malformed": _fake_run(root, "malformed", "task: [image\n"),
            "list": _fake_run(root, "list", "- task\n- image\n")}


_TINY_BENCH = ["--backend", "torch", "--batch", "64", "--dims", "2", "--only", "mlp_inference", "--repeats", "1",
               "--warmup", "0"]

# (argv, exit code, needle). Placeholders: {in} (the inputs folder), {new} (a runs root that must not appear),
# {photo} (a good photo), {image} (a finished fit-image run), and {sdf}, {alien}, {malformed}, {list} (the
# runs above). The inputs folder, the photo's folder and every run are checked unchanged byte for byte.
CASES = {
    # the input of each training command
    "mesh-missing": (["train-sdf", "{in}/nowhere.obj", "--runs-dir", "{new}"], EXIT_DATA, "no such file"),
    "mesh-is-a-folder": (["train-sdf", "{in}/mesh-folder.obj", "--runs-dir", "{new}"], EXIT_DATA, "is a directory"),
    "mesh-empty": (["train-sdf", "{in}/empty.obj", "--runs-dir", "{new}"], EXIT_DATA, "no triangles"),
    "mesh-corrupt-obj": (["train-sdf", "{in}/broken.obj", "--runs-dir", "{new}"], EXIT_DATA, "broken.obj"),
    "mesh-truncated-ply": (["train-sdf", "{in}/truncated.ply", "--runs-dir", "{new}"], EXIT_DATA, "truncated.ply"),
    "mesh-unsupported-format": (["train-sdf", "{in}/points.xyz", "--runs-dir", "{new}"], EXIT_DATA,
                                "unsupported mesh format '.xyz'"),
    "scene-missing": (["train-nrc", "{in}/nowhere.yaml", "--runs-dir", "{new}"], EXIT_DATA, "no such scene file"),
    "scene-is-a-folder": (["train-nrc", "{in}/empty-dataset", "--runs-dir", "{new}"], EXIT_DATA, "empty-dataset"),
    "scene-unknown-key": (["train-nrc", "{in}/scene-unknown-key.yaml", "--runs-dir", "{new}"], EXIT_DATA,
                          "unknown key 'lights'"),
    "scene-empty": (["train-nrc", "{in}/scene-empty.yaml", "--runs-dir", "{new}"], EXIT_DATA, "objects"),
    "dataset-missing": (["train-nerf", "{in}/nowhere", "--runs-dir", "{new}"], EXIT_DATA, "no such file or directory"),
    "dataset-not-json": (["train-nerf", "{in}/not-json.json", "--runs-dir", "{new}"], EXIT_DATA, "malformed JSON"),
    "dataset-without-frames": (["train-nerf", "{in}/no-frames.json", "--runs-dir", "{new}"], EXIT_DATA,
                               "'frames' is empty"),
    # where runs go
    "runs-dir-under-a-file": (["fit-image", "{photo}", "--runs-dir", "{in}/plain-file/runs"], EXIT_OUTPUT,
                              "cannot create runs directory"),
    # --resume of things that are not (this task's) runs
    "resume-missing": (["fit-image", "--resume", "{in}/no-such-run"], EXIT_DATA, "does not exist"),
    "resume-not-a-run": (["train-nerf", "--resume", "{in}/not-a-run"], EXIT_DATA, "not a run directory"),
    "resume-malformed-config": (["fit-image", "--resume", "{malformed}"], EXIT_CONFIG, "malformed YAML"),
    "resume-another-photo": (["fit-image", "{in}/other.png", "--resume", "{image}"], EXIT_USAGE,
                             "do not pass another photo"),
    "resume-changes-the-model": (["fit-image", "--resume", "{image}", "--set", "encoding.n_levels=8"], EXIT_CONFIG,
                                 "cannot change on --resume"),
    # eval / render / extract-mesh on things that are not usable runs
    "eval-a-file": (["eval", "{in}/plain-file"], EXIT_DATA, "a file, not a run directory"),
    "eval-config-not-a-mapping": (["eval", "{list}"], EXIT_CONFIG, "must be a mapping"),
    "render-uninstalled-task": (["render", "{alien}", "--orbit", "2"], EXIT_DATA, "'martian' is not installed"),
    "render-image-run": (["render", "{image}", "--orbit", "2"], EXIT_USAGE, "'image' runs have no 'ngp render'"),
    "eval-without-checkpoint": (["eval", "{sdf}"], EXIT_DATA, "no checkpoint"),
    "split-on-an-sdf-run": (["eval", "{sdf}", "--split", "val"], EXIT_USAGE, "--split is for nerf runs"),
    "extract-mesh-unknown-format": (["extract-mesh", "{sdf}", "--out", "{in}/mesh.xyz"], EXIT_USAGE,
                                    "mesh format must be one of"),
    "extract-mesh-out-in-missing-folder": (["extract-mesh", "{sdf}", "--out", "{in}/no/such/mesh.ply"], EXIT_OUTPUT,
                                           "does not exist"),
    # bench outputs (a one-figure bench, so that a regression that measures first fails in seconds)
    "bench-out-is-a-folder": (["bench", *_TINY_BENCH, "--out", "{in}/empty-dataset"], EXIT_OUTPUT, "is a directory"),
    "bench-out-in-missing-folder": (["bench", *_TINY_BENCH, "--out", "{in}/no/bench.json"], EXIT_OUTPUT,
                                    "does not exist"),
    # presets
    "preset-unknown": (["presets", "show", "imagee"], EXIT_CONFIG, "unknown preset 'imagee'"),
    "preset-file-missing": (["presets", "show", "{in}/nowhere.yaml"], EXIT_CONFIG, "does not exist"),
    "preset-without-task": (["presets", "show", "{in}/no-task.yaml"], EXIT_USAGE, "has no 'task:' key"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_refused(ngp, photo, image_run, inputs, runs, tmp_path, case):
    argv, code, needle = CASES[case]
    new = tmp_path / "new-runs"
    argv = [a.format(photo=photo, image=image_run, new=new, **{"in": inputs}, **runs) for a in argv]
    with unchanged(inputs, photo.parent, image_run, *runs.values()):
        res = ngp(*argv)
    assert_refused(res, code, needle)
    assert not new.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_runs_dir_not_writable(ngp, photo, tmp_path):
    root = tmp_path / "locked"
    root.mkdir()
    root.chmod(0o500)
    try:
        with unchanged(root):
            res = ngp("fit-image", photo, "--runs-dir", root, "--steps", "1")
    finally:
        root.chmod(0o700)
    assert_refused(res, EXIT_OUTPUT, "permission denied")


@pytest.mark.skipif(not _no_gpu(), reason="a GPU is present")
@pytest.mark.parametrize("argv", [
    ["fit-image", "{photo}", "--runs-dir", "{new}", "--backend", "cuda"],
    ["eval", "{sdf}", "--backend", "cuda"],
    ["bench", "--backend", "cuda"],
], ids=["training", "run-command", "bench"])
def test_cuda_without_a_gpu(ngp, photo, runs, tmp_path, argv):
    new = tmp_path / "new-runs"
    argv = [a.format(photo=photo, new=new, sdf=runs["sdf"]) for a in argv]
    with unchanged(photo.parent, runs["sdf"]):
        res = ngp(*argv)
    assert_refused(res, EXIT_NO_GPU, "needs an NVIDIA GPU")
    assert not new.exists()


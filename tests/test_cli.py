"""The CLI contract: JSON lines on stdout, one-line errors on stderr, documented exit codes, a light import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ngp_cli.errors import EXIT_CONFIG, EXIT_DATA, EXIT_NO_GPU, EXIT_OUTPUT, EXIT_USAGE


def test_help_imports_neither_torch_nor_cupy():
    code = ("import sys; from ngp_cli.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'cupy', 'numpy') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "fit-image" in proc.stdout and "presets" in proc.stdout


def test_tasks_lists_the_builtin_tasks(ngp):
    res = ngp("tasks")
    assert res.exit_code == 0
    tasks = {e["name"]: e for e in res.events if e["event"] == "task"}
    assert tasks["image"]["commands"] == ["fit-image", "view"]
    assert tasks["nerf"]["commands"] == ["train-nerf", "eval", "render", "extract-mesh", "bake", "view"]
    assert tasks["sdf"]["commands"] == ["train-sdf", "extract-mesh", "eval", "render", "view"]
    assert tasks["nrc"]["commands"] == ["train-nrc", "view"]
    assert "image" in res.stderr and "nerf" in res.stderr  # the human table


def test_presets_list_and_show(ngp):
    res = ngp("presets", "list")
    assert res.exit_code == 0
    assert {e["name"] for e in res.events} >= {"defaults", "image", "image-cpu"}
    res = ngp("presets", "show", "image-cpu", "--set", "train.n_steps=5")
    assert res.exit_code == 0
    cfg = res.last("preset")["config"]
    assert cfg["train"]["n_steps"] == 5 and cfg["encoding"]["log2_hashmap_size"] == 21
    assert cfg["optimizer"]["epsilon"] == 1e-15  # fully resolved: inherited from defaults.yaml


def test_presets_show_yaml_format(ngp):
    import yaml
    from typer.testing import CliRunner

    from ngp_cli.cli import build_app

    result = CliRunner().invoke(build_app(), ["presets", "show", "image", "--format", "yaml"])
    assert result.exit_code == 0
    assert yaml.safe_load(result.stdout)["encoding"]["log2_hashmap_size"] == 24
    assert ngp("presets", "show", "image", "--format", "xml").exit_code == EXIT_USAGE
    res = ngp("presets", "show", "nosuch")
    assert res.exit_code == EXIT_CONFIG and "unknown preset 'nosuch'" in res.stderr


@pytest.fixture(scope="module", autouse=True)
def _warm_kernel_launcher():
    """Build the cpu target's launcher library first: on a cold cache its one-time "compiling ..." progress line
    would otherwise precede the error line of whichever test runs first."""
    from ngp_cli.cuda.runtime import cpu_target_problem

    cpu_target_problem()


def assert_one_line_error(res, code: int, needle: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.stderr, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in res.stderr
    err = res.last("error")
    assert err["exit_code"] == code


def test_usage_error_is_one_line(ngp):
    assert_one_line_error(ngp("fit-image", "--no-such-option"), EXIT_USAGE, "No such option")


@pytest.fixture
def bad_files(tmp_path):
    truncated = tmp_path / "truncated.png"
    good = tmp_path / "good.png"
    import imageio.v3 as iio
    import numpy as np

    iio.imwrite(good, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    bmp = tmp_path / "photo.bmp"
    bmp.write_bytes(b"BM" + b"\x00" * 64)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [1, 2\n")
    return {"truncated": truncated, "empty": empty, "bmp": bmp, "bad_yaml": bad_yaml, "good": good,
            "dir": tmp_path}


@pytest.mark.parametrize("case, args, code, needle", [
    ("missing", ["{dir}/nope.png"], EXIT_DATA, "does not exist"),
    ("directory", ["{dir}"], EXIT_DATA, "is a directory"),
    ("truncated", ["{truncated}"], EXIT_DATA, "cannot decode"),
    ("zero-size", ["{empty}"], EXIT_DATA, "empty"),
    ("unsupported", ["{bmp}"], EXIT_DATA, "unsupported image format"),
    ("malformed yaml", ["{good}", "--preset", "{bad_yaml}"], EXIT_CONFIG, "malformed YAML"),
    ("unknown preset", ["{good}", "--preset", "nosuch"], EXIT_CONFIG, "unknown preset 'nosuch'"),
    ("bad --set", ["{good}", "--set", "encoding.n_level=4"], EXIT_CONFIG, "did you mean 'encoding.n_levels'"),
    ("bad --set value", ["{good}", "--set", "train.batch_size=many"], EXIT_CONFIG, "train.batch_size must be"),
    ("zero steps", ["{good}", "--steps", "0"], EXIT_CONFIG, "train.n_steps must be >= 1, got 0"),
    ("negative steps", ["{good}", "--steps", "-3"], EXIT_CONFIG, "train.n_steps must be >= 1, got -3"),
    ("bad backend", ["{good}", "--backend", "gpu"], EXIT_USAGE, "'gpu' is not one of 'auto', 'cuda', 'cpu', 'torch'"),
    ("unwritable runs dir", ["{good}", "--runs-dir", "{good}/sub"], EXIT_OUTPUT, "cannot create runs directory"),
])
def test_bad_input_gets_one_line_and_exit_code(ngp, bad_files, tmp_path, case, args, code, needle):
    args = [a.format(**bad_files) for a in args]
    if "--runs-dir" not in args:
        args += ["--runs-dir", str(tmp_path / "runs")]
    if "--steps" not in args:
        args += ["--steps", "2"]
    res = ngp("fit-image", *args)
    assert_one_line_error(res, code, needle)
    assert not list((tmp_path / "runs").glob("**/summary.json"))


def test_backend_cuda_without_gpu_is_exit_5(ngp, bad_files, tmp_path):
    from ngp_cli.nn.backend import cuda_available

    if cuda_available():
        pytest.skip("a GPU is present")
    res = ngp("fit-image", bad_files["good"], "--backend", "cuda", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(res, EXIT_NO_GPU, "needs an NVIDIA GPU")
    assert not (tmp_path / "runs").exists()


def test_tcnn_json_through_the_cli(ngp, tmp_path, tcnn_image_json):
    path = tcnn_image_json
    res = ngp("presets", "show", path)
    assert res.exit_code == EXIT_USAGE and "--task" in res.stderr
    res = ngp("presets", "show", path, "--task", "image")
    assert res.exit_code == 0, res.stderr
    cfg = res.last("preset")["config"]
    assert cfg["encoding"]["log2_hashmap_size"] == 15 and cfg["loss"]["otype"] == "RelativeL2"
    img = tmp_path / "img.png"
    import imageio.v3 as iio
    import numpy as np

    iio.imwrite(img, np.random.default_rng().integers(0, 255, (32, 48, 3), dtype=np.uint8))
    res = ngp("fit-image", img, "--preset", path, "--steps", "2", "--runs-dir", tmp_path / "runs")
    assert res.exit_code == 0, res.stderr
    assert "log2_hashmap_size: 15" in (Path(res.last("done")["run_dir"]) / "config.yaml").read_text()


# --- CLI consistency (issue 13): -h, -q after the command, choices in --help, the error-line cap, --data ------------

def _command_paths(group, prefix=()):
    """Every command path under the click group (``("presets", "show")`` ...), groups included."""
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _command_paths(cmd, (*prefix, name))


def test_h_is_help_on_every_command_including_plugins(app):
    import typer
    from typer.testing import CliRunner

    paths = [(), *_command_paths(typer.main.get_command(app))]
    assert {("fit-image",), ("train-nerf",), ("train-sdf",), ("train-nrc",), ("presets", "show")} <= set(paths)
    for path in paths:
        res = CliRunner().invoke(app, [*path, "-h"])
        assert res.exit_code == 0, (path, res.stderr)
        assert "Usage: ngp" in res.stdout and "--help" in res.stdout, path


def test_quiet_after_the_command_on_every_command(app):
    import typer

    for path in _command_paths(typer.main.get_command(app)):
        cmd = typer.main.get_command(app)
        for name in path:
            cmd = cmd.commands[name]
        flags = {o for p in cmd.params for o in p.opts}
        assert {"-q", "--quiet"} <= flags, path


def test_quiet_after_the_command_silences_training(ngp, astronaut_crop, tmp_path):
    fast = ["--steps", "2", "--backend", "torch", "--set", "train.batch_size=256", "--set", "encoding.n_levels=2",
            "--set", "encoding.log2_hashmap_size=10", "--runs-dir", tmp_path / "runs"]
    loud = ngp("fit-image", astronaut_crop, *fast)
    assert loud.exit_code == 0 and "run directory" in loud.stderr
    for argv in (["fit-image", "-q"], ["fit-image", "--quiet"], ["-q", "fit-image"]):
        res = ngp(*argv, astronaut_crop, *fast)
        assert res.exit_code == 0, res.stderr
        assert res.stderr == "", argv
        assert res.last("done")["metrics"]["psnr"] > 0
    # the tables of tasks, presets list and bench are human output too
    for argv in (["tasks", "-q"], ["presets", "list", "-q"], ["-q", "presets", "list"]):
        res = ngp(*argv)
        assert res.exit_code == 0 and res.stderr == "" and res.events, argv
    # a quiet run still reports its error
    res = ngp("fit-image", "-q", tmp_path / "nope.png", *fast)
    assert res.exit_code == EXIT_DATA and res.stderr.startswith("ngp: data error:")


@pytest.mark.parametrize("argv, shown", [
    (["fit-image"], "<auto|cuda|cpu|torch>"),
    (["train-nrc"], "<auto|cuda|cpu|torch>"),
    (["eval"], "<val|test|train>"),
    (["render"], "<auto|cuda|cpu|torch>"),
    (["extract-mesh"], "<auto|cuda|cpu|torch>"),
    (["presets", "show"], "<json|yaml>"),
    (["bench"], "<list[cuda|cpu|torch]>"),
    (["bench"], "<list[encoding_forward|encoding_forward_backward|simplex_forward|simplex_forward_backward|mlp_inference"
                "|mlp_training|train_step|render_network|render_frame|render_network_legacy|render_network_ingp|render_baked]>"),
], ids=["fit-image backend", "train-nrc backend", "eval split", "render backend", "extract-mesh backend",
        "presets format", "bench backend", "bench only"])
def test_choices_are_shown_in_help(app, argv, shown):
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "500"})
    assert res.exit_code == 0
    assert shown in res.stdout, res.stdout


def test_choice_options_hand_plain_strings_to_the_code(monkeypatch, ngp):
    import ngp_cli.bench

    seen = {}
    monkeypatch.setattr(ngp_cli.bench, "run_bench", lambda tasks, *args, **kw: seen.setdefault("args", args))
    res = ngp("bench", "--backend", "torch", "--backend", "cpu", "--only", "mlp_inference")
    assert res.exit_code == 0, res.stderr
    backends, _, _, only = seen["args"][:4]
    assert backends == ["torch", "cpu"] and only == ["mlp_inference"]
    assert all(type(v) is str for v in backends + only)


def test_error_line_is_folded_and_capped(capsys):
    from ngp_cli.cli import MAX_ERROR_LINE, _fail

    message = "first\nsecond\r\nthird\u2028" + "x" * 10_000 + " tail"
    with pytest.raises(SystemExit) as exc:
        _fail(EXIT_CONFIG, "config error", message)
    assert exc.value.code == EXIT_CONFIG
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and len(lines[0]) <= MAX_ERROR_LINE, (len(lines), len(lines[0]))
    assert lines[0].startswith("ngp: config error: first second third xxx") and lines[0].endswith("...")
    event = json.loads(out)
    assert event["message"] == lines[0].removeprefix("ngp: config error: ")


def test_one_line_keeps_short_messages():
    from ngp_cli.cli import one_line

    assert one_line("a path /x/y  with  spaces", 100) == "a path /x/y  with  spaces"
    assert one_line("abc\n\ndef", 100) == "abc def"
    assert one_line("abcdefghij", 8) == "abcde..."


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """A minimal run of ``task`` (a config.yaml naming it) whose run commands are fakes recording their options."""
    from ngp_cli.tasks import RunCommand

    calls = []

    def make(task: str):
        run = tmp_path / task
        run.mkdir()
        (run / "config.yaml").write_text(f"task: {task}\n")
        return run

    def record(self):
        return lambda task, run_path, **options: calls.append({"command": self.name, "task": task.name,
                                                               "run": run_path, **options})

    monkeypatch.setattr(RunCommand, "load", record)
    return make, calls


def test_run_commands_take_their_tasks_options_only(ngp, fake_run, tmp_path):
    make, calls = fake_run
    nerf, sdf = make("nerf"), make("sdf")
    assert ngp("eval", nerf).exit_code == 0
    assert calls[-1] == {"command": "eval", "task": "nerf", "run": nerf, "split": None, "baked": None, "nproc": 1,
                         "backend": None, "data": None}
    assert ngp("eval", nerf, "--data", tmp_path / "moved", "--split", "test").exit_code == 0
    assert calls[-1]["data"] == tmp_path / "moved" and calls[-1]["split"] == "test"
    assert ngp("render", "--orbit", "4", "--backend", "torch", nerf).exit_code == 0  # options before RUN too
    assert calls[-1]["orbit"] == 4 and calls[-1]["backend"] == "torch" and calls[-1]["camera_path"] is None
    assert ngp("extract-mesh", sdf, "--level", "0.01", "--resolution=32").exit_code == 0
    assert calls[-1] == {"command": "extract-mesh", "task": "sdf", "run": sdf, "resolution": 32, "level": 0.01,
                         "out": None, "normals": True, "min_component": 0.0, "backend": None, "data": None}
    assert ngp("eval", sdf).exit_code == 0 and set(calls[-1]) == {"command", "task", "run", "backend", "data"}
    assert len(calls) == 5
    # another task's option is refused in one line naming its task; a typo gets the nearest option
    assert_one_line_error(ngp("eval", sdf, "--split", "val"), EXIT_USAGE, "--split is for nerf runs, not sdf runs")
    assert_one_line_error(ngp("extract-mesh", nerf, "--level", "0.1"), EXIT_USAGE, "--level is for sdf runs")
    assert_one_line_error(ngp("render", nerf, "--orbitt", "3"), EXIT_USAGE, "No such option: --orbitt (did you "
                                                                            "mean --orbit?)")
    assert_one_line_error(ngp("render", "--orbit", "3"), EXIT_USAGE, "Missing argument 'run'")
    assert_one_line_error(ngp("eval", make("image")), EXIT_USAGE, "'image' runs have no 'ngp eval'")
    assert len(calls) == 5


def test_run_command_help_shows_the_runs_task_options(app, fake_run):
    from typer.testing import CliRunner

    make, _ = fake_run
    nerf, sdf = make("nerf"), make("sdf")

    def helptext(*argv):
        res = CliRunner().invoke(app, [str(a) for a in argv], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        return res.stdout

    assert "--threshold" in helptext("extract-mesh", nerf, "--help") and "--level" not in helptext(
        "extract-mesh", nerf, "--help")
    assert "--level" in helptext("extract-mesh", "-h", sdf) and "--colors" not in helptext("extract-mesh", sdf, "-h")
    assert "--split" not in helptext("eval", sdf, "--help") and "--data" in helptext("eval", sdf, "--help")
    assert "--camera-path" in helptext("render", nerf, "-h") and "--camera-path" not in helptext("render", sdf, "-h")
    overview = helptext("extract-mesh", "--help")  # without RUN: every task's, by task
    assert "Options on nerf runs" in overview and "Options on sdf runs" in overview
    assert overview.index("--threshold") < overview.index("Options on sdf runs") < overview.index("--level")

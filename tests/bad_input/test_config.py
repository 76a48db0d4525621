"""Bad configuration given to ngp (issue 13, items 3 and 7): presets, ``--set`` values, instant-ngp JSON, a run's
config.yaml and NRC scene files.

Every case goes through the CLI (in-process), is refused with exit 3 (config) or 4 (a scene file is data) in one
stderr line under 300 characters, and leaves the folder holding its inputs (and any run it names) unchanged, byte for
byte. Each row is a different bad input: alias bombs of three kinds, nesting, oversized values, malformed files,
wrong types, non-finite numbers, out-of-range sizes, broken ``extends:`` chains, encodings, duplicate keys, bad
``--set`` syntax.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.bad_input.conftest import assert_refused, unchanged

# A 300-byte "billion laughs": 9^9 nodes once expanded.
BOMB_LINES = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
BOMB = "\n".join(BOMB_LINES) + "\n"
# The same bomb as one flow value, for --set and typed keys.
FLOW_BOMB = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
    f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)) + "]"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def _image_preset(body: str) -> str:
    return "extends: image-cpu\n" + body


@dataclass(frozen=True)
class Case:
    """One bad input: files written into a fresh folder ``{d}``, the argv (``{d}`` replaced), the expected exit code
    and a needle of the error line."""

    id: str
    files: dict[str, str | bytes]
    argv: tuple[str, ...]
    code: int
    needle: str


def _show(path: str = "{d}/p.yaml", *extra: str) -> tuple[str, ...]:
    return ("presets", "show", path, *extra)


def _set(assignment: str, preset: str = "image-cpu") -> tuple[str, ...]:
    return ("presets", "show", preset, "--set", assignment)


CASES = [
    # -- alias bombs and nesting (issue 13, item 3) --------------------------------------------------------------
    Case("alias-bomb-in-preset", {"p.yaml": _image_preset(BOMB)}, _show(), 3, "alias bomb"),
    Case("alias-bomb-under-typed-key", {"p.yaml": _image_preset(f"train:\n  n_steps: {FLOW_BOMB}\n")}, _show(), 3,
         "alias bomb"),
    Case("alias-bomb-in-set", {}, _set(f"train.n_steps={FLOW_BOMB}"), 3, "alias bomb"),
    Case("alias-long-string-repeated", {"p.yaml": _image_preset(
        "description: &s " + "y" * 200_000 + "\ntrain:\n  n_steps: [" + ", ".join(["*s"] * 6) + "]\n")},
         _show(), 3, "more than 1048576 characters"),
    Case("recursive-alias", {"p.yaml": _image_preset("train: &t {n_steps: *t}\n")}, _show(), 3,
         "recursive YAML alias '*t'"),
    Case("deep-yaml", {"p.yaml": _image_preset("train:\n  n_steps: " + "[" * 100 + "]" * 100 + "\n")}, _show(), 3,
         "nested deeper than 64 levels"),
    Case("deep-json-past-recursion-limit", {"p.json": "[" * 100_000 + "]" * 100_000},
         _show("{d}/p.json", "--task", "image"), 3, "nested deeper than 64 levels"),
    Case("deep-json", {"p.json": '{"train": ' + '{"x": ' * 80 + "1" + "}" * 81}, _show("{d}/p.json", "--task", "image"), 3,
         "nested deeper than 64 levels"),
    Case("int-past-4300-digits", {"p.yaml": _image_preset("seed: 1" + "0" * 5000 + "\n")}, _show(), 3,
         "an integer with more than 4300 digits"),
    # -- values echoed at most 200 characters (issue 13, item 3) ---------------------------------------------------
    Case("megabyte-value-echoed", {"p.yaml": _image_preset("train:\n  n_steps: " + "x" * 1_000_000 + "\n")}, _show(),
         3, "(1000002 characters)"),
    Case("huge-unknown-key", {"p.yaml": _image_preset("train:\n  " + "k" * 1000 + ": 1\n")}, _show(), 3,
         "(1000 characters)"),
    # -- malformed files -------------------------------------------------------------------------------------------
    Case("malformed-yaml", {"p.yaml": _image_preset("train: {n_steps: 3\n")}, _show(), 3, "malformed YAML"),
    Case("yaml-tab-indent", {"p.yaml": _image_preset("train:\n\tn_steps: 3\n")}, _show(), 3, "'\\t'"),
    Case("malformed-json", {"p.json": '{"train": {"n_steps": 3,}}'}, _show("{d}/p.json", "--task", "image"), 3,
         "malformed JSON at line 1"),
    Case("json-unterminated-comment", {"p.json": '{"train": {"n_steps": 3}}\n/* note'},
         _show("{d}/p.json", "--task", "image"), 3, "unterminated /* comment at line 2"),
    Case("empty-json", {"p.json": "  \n"}, _show("{d}/p.json", "--task", "image"), 3, "empty file"),
    Case("list-at-top-level", {"p.yaml": "- extends: image-cpu\n"}, _show("{d}/p.yaml", "--task", "image"), 3,
         "mapping at the top level, got list"),
    Case("not-utf8", {"p.yaml": "extends: image-cpu\ndescription: caf\xe9\n".encode("latin-1")}, _show(), 3,
         "not UTF-8 text (byte 35)"),
    Case("utf16-with-bom", {"p.yaml": "extends: image-cpu\n".encode("utf-16")}, _show(), 3, "not UTF-8 text (byte 0)"),
    Case("duplicate-yaml-section", {"p.yaml": _image_preset("train:\n  n_steps: 3\ntrain:\n  batch_size: 64\n")},
         _show(), 3, "duplicate key 'train' (line 4)"),
    Case("duplicate-json-key", {"p.json": '{"train": {"n_steps": 3, "n_steps": 4}}'},
         _show("{d}/p.json", "--task", "image"), 3, "duplicate key 'n_steps'"),
    # -- keys and types --------------------------------------------------------------------------------------------
    Case("unknown-key-suggestion", {}, _set("encoding.n_level=4"), 3,
         "unknown key 'encoding.n_level' (did you mean 'encoding.n_levels'?)"),
    Case("unknown-section-in-file", {"p.yaml": _image_preset("trian:\n  n_steps: 3\n")}, _show(), 3,
         "unknown key 'trian' (did you mean 'train'?)"),
    Case("int-key-given-text", {}, _set("train.n_steps=abc"), 3, "train.n_steps must be an integer, got str 'abc'"),
    Case("float-key-given-text", {}, _set("optimizer.learning_rate=fast"), 3,
         "optimizer.learning_rate must be a number, got str 'fast'"),
    Case("bool-key-given-text", {}, _set("optimizer.skip_zero_grad=maybe"), 3,
         "optimizer.skip_zero_grad must be true or false"),
    Case("literal-key-unknown-value", {}, _set("loss.otype=L3"), 3, "loss.otype must be one of L2, L1"),
    Case("simplex-grid-smoothstep", {"p.yaml": _image_preset("encoding:\n  otype: SimplexGrid\n"
                                                             "  interpolation: Smoothstep\n")}, _show(), 3,
         "encoding.otype SimplexGrid interpolates barycentrically: encoding.interpolation must be Linear"),
    Case("nan", {}, _set("optimizer.learning_rate=.nan"), 3, "optimizer.learning_rate must be a finite number"),
    Case("inf", {}, _set("train.max_time_s=.inf"), 3, "train.max_time_s must be a finite number"),
    Case("json-nan-literal", {"p.json": '{"optimizer": {"epsilon": NaN}}'}, _show("{d}/p.json", "--task", "image"),
         3, "optimizer.epsilon must be a finite number"),
    # -- bounds ----------------------------------------------------------------------------------------------------
    Case("seed-2-to-the-64", {}, _set("seed=18446744073709551616"), 3, "seed must be <= 9223372036854775807"),
    Case("seed-negative", {}, _set("seed=-1"), 3, "seed must be >= 0"),
    Case("batch-1e12", {}, _set("train.batch_size=1e12"), 3, "train.batch_size must be <= 67108864"),
    Case("zero-steps", {}, _set("train.n_steps=0"), 3, "train.n_steps must be >= 1"),
    Case("task-section-size", {}, _set("nrc.frames=10000000", "nrc"), 3, "nrc.frames must be <= 1000000"),
    Case("grid-resolution", {}, _set("encoding.max_resolution=1e9", "nerf"), 3,
         "encoding.max_resolution must be <= 16777216"),
    # -- presets and extends ---------------------------------------------------------------------------------------
    Case("extends-cycle", {"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"},
         _show("{d}/a.yaml", "--task", "image"), 3, "'extends' forms a cycle"),
    Case("extends-missing-preset", {"p.yaml": "extends: imag-cpu\n"}, _show("{d}/p.yaml", "--task", "image"), 3,
         "unknown preset 'imag-cpu' (did you mean 'image-cpu'?)"),
    Case("extends-a-photo", {"p.yaml": "extends: photo.png\n", "photo.png": PNG_BYTES},
         _show("{d}/p.yaml", "--task", "image"), 3, "photo.png: not a preset file"),
    Case("extends-not-a-name", {"p.yaml": "extends: [image, image-cpu]\n"}, _show("{d}/p.yaml", "--task", "image"),
         3, "'extends' must be a preset name or path, got list"),
    Case("preset-is-a-folder", {"sub/x.yaml": "{}\n"}, _show("{d}/sub", "--task", "image"), 3, "is a directory"),
    Case("preset-path-too-long", {}, _show("{d}/" + "a/" * 3000 + "p.yaml", "--task", "image"), 3,
         "cannot be a preset"),
    Case("preset-of-another-task", {"p.yaml": "extends: sdf-cpu\n"}, _show("{d}/p.yaml", "--task", "image"), 3,
         "is for task 'sdf', not 'image'"),
    # -- --set syntax ----------------------------------------------------------------------------------------------
    Case("set-without-equals", {}, _set("train.n_steps"), 3, "expected KEY.PATH=VALUE"),
    Case("set-empty-key", {}, _set("=5"), 3, "expected KEY.PATH=VALUE"),
    Case("set-section-to-scalar", {}, _set("train=5"), 3, "train must be a mapping of keys to values, got int 5"),
    Case("set-through-a-value", {}, _set("train.n_steps.x=1"), 3, "'train.n_steps' is a value, not a section"),
    # -- tiny-cuda-nn / instant-ngp JSON ---------------------------------------------------------------------------
    Case("composite-with-two-encodings", {"p.json": '{"dir_encoding": {"otype": "Composite", "nested": ['
                                                    '{"otype": "SphericalHarmonics", "n_dims_to_encode": 2}, '
                                                    '{"otype": "Frequency"}]}}'},
         _show("{d}/p.json", "--task", "nerf"), 3, "dir_encoding: a Composite encoding is supported only"),
    Case("instant-ngp-key-in-an-ngp-json", {"p.json": '{"task": "image", "envmap": {}}'}, _show("{d}/p.json"), 3,
         "unknown key 'envmap'"),
    Case("unsupported-optimizer", {"p.json": '{"optimizer": {"otype": "Shampoo", "nested": {"otype": "Adam"}}}'},
         _show("{d}/p.json", "--task", "image"), 3, "optimizer.otype 'Shampoo' is not supported"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_config_is_refused(ngp, tmp_path, case):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    argv = [a.replace("{d}", str(folder)) for a in case.argv]
    with unchanged(folder):
        res = ngp(*argv)
    assert_refused(res, case.code, case.needle)


def test_the_cases_are_distinct():
    assert len({c.id for c in CASES}) == len(CASES) >= 30
    assert len({(c.argv, tuple(c.files.items())) for c in CASES}) == len(CASES)


# -- the same bounds on the training commands: no run directory is created or touched -----------------------------


def test_fit_image_refuses_a_bomb_preset_before_creating_a_run(ngp, photo, tmp_path):
    preset = tmp_path / "bomb.yaml"
    preset.write_text(_image_preset(BOMB))
    with unchanged(tmp_path, photo.parent):
        res = ngp("fit-image", photo, "--preset", preset, "--runs-dir", tmp_path / "runs")
    assert_refused(res, 3, "alias bomb")


def test_resume_refuses_an_out_of_range_batch(ngp, image_run):
    with unchanged(image_run):
        res = ngp("fit-image", "--resume", image_run, "--set", "train.batch_size=1e12")
    assert_refused(res, 3, "train.batch_size must be <= 67108864")


def test_a_run_config_yaml_is_read_through_the_bounded_loader(ngp, image_run):
    """A run directory is untrusted input: a config.yaml turned into an alias bomb is refused, not expanded."""
    (image_run / "config.yaml").write_text(BOMB)
    with unchanged(image_run):
        res = ngp("fit-image", "--resume", image_run)
    assert_refused(res, 3, "alias bomb")


def test_nrc_scene_file_bomb_is_a_data_error(ngp, tmp_path):
    scene = tmp_path / "scene.yaml"
    scene.write_text("camera: {fov: 40}\n" + BOMB)
    with unchanged(tmp_path):
        res = ngp("train-nrc", scene, "--backend", "torch", "--runs-dir", tmp_path / "runs")
    assert_refused(res, 4, "alias bomb")


def test_instant_ngp_nerf_json_with_a_bad_value_warns_then_refuses(ngp, tmp_path):
    """The warn-and-ignore rule does not swallow a real error in the same file: the warning lines come first, the
    error line last, with exit 3."""
    path = tmp_path / "base.json"
    path.write_text('{"envmap": {}, "network": {"n_neurons": 256}}')
    with unchanged(tmp_path):
        res = ngp("presets", "show", path, "--task", "nerf")
    assert res.exit_code == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("ngp: warning:") and "'envmap'" in lines[0]
    assert "network.n_neurons must be one of 16, 32, 64, 128, got 256" in lines[1]

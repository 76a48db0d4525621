"""Presets, inheritance, tiny-cuda-nn JSON, --set overrides and their error messages."""

from __future__ import annotations

import pytest

from ngp_cli.config import apply_sets, build, list_presets, load_preset, normalize_tcnn, parse_set, resolve
from ngp_cli.errors import ConfigError
from ngp_cli.tasks.gigapixel import ImageConfig


def image(preset="image-cpu", sets=()):
    return resolve(ImageConfig, "image", preset, list(sets), default_preset="image-cpu")


def test_builtin_presets_resolve_and_inherit():
    names = {p["name"]: p for p in list_presets()}
    assert {"defaults", "image", "image-cpu"} <= set(names)
    assert names["image-cpu"]["task"] == "image" and names["image-cpu"]["extends"] == "image"  # task inherited
    gpu, cpu = image("image"), image("image-cpu")
    # The paper's image config (§5.1) on GPU; CPU shrinks T and the batch and refines N_max (see image-cpu.yaml).
    assert (gpu.encoding.n_levels, gpu.encoding.n_features_per_level, gpu.encoding.base_resolution) == (16, 2, 16)
    assert gpu.encoding.log2_hashmap_size == 24 and gpu.train.batch_size == 2**18
    assert cpu.encoding.log2_hashmap_size == 21 and cpu.train.batch_size == 2**16
    assert gpu.image.max_resolution_factor == 0.5 and cpu.image.max_resolution_factor == 2
    assert cpu.network.n_neurons == 64 and cpu.network.n_hidden_layers == 2
    # inherited from defaults.yaml through image.yaml
    assert cpu.optimizer.beta2 == 0.99 and cpu.optimizer.epsilon == 1e-15 and cpu.optimizer.l2_reg == 1e-6
    assert cpu.loss.otype == "L2" and cpu.optimizer.learning_rate == 1e-2


def test_set_overrides_parse_yaml_values():
    cfg = image(sets=["train.n_steps=42", "optimizer.learning_rate=1e-3", "encoding.interpolation=Smoothstep",
                      "network.n_neurons=32"])
    assert cfg.train.n_steps == 42 and cfg.optimizer.learning_rate == 1e-3
    assert cfg.encoding.interpolation == "Smoothstep" and cfg.network.n_neurons == 32
    assert parse_set("a.b=[1, 2]") == (["a", "b"], [1, 2])


@pytest.mark.parametrize("sets, message", [
    (["encoding.n_level=4"], "unknown key 'encoding.n_level' (did you mean 'encoding.n_levels'?)"),
    (["encodng.n_levels=4"], "unknown key 'encodng' (did you mean 'encoding'?)"),
    (["optimizer.lr=1e-3"], "unknown key 'optimizer.lr' (did you mean 'optimizer.learning_rate'?)"),
    (["encoding.zzz=1"], "unknown key 'encoding.zzz' (valid keys: otype, type, n_levels"),
    (["train.n_steps=abc"], "train.n_steps must be an integer, got str 'abc'"),
    (["train.n_steps=0"], "train.n_steps must be >= 1, got 0"),
    (["train.n_steps=-5"], "train.n_steps must be >= 1, got -5"),
    (["train.batch_size=1.5"], "train.batch_size must be an integer, got float 1.5"),
    (["network.n_neurons=48"], "network.n_neurons must be one of 16, 32, 64, 128, got 48"),
    (["encoding.interpolation=linear"], "encoding.interpolation must be one of Nearest, Linear, Smoothstep, got 'linear' "
                                        "(did you mean 'Linear'?)"),
    (["optimizer.learning_rate=.nan"], "optimizer.learning_rate must be a finite number"),
    (["train=5"], "train must be a mapping"),
    (["train.n_steps.x=1"], "'train.n_steps' is a value, not a section"),
    (["noequals"], "expected KEY.PATH=VALUE"),
    (["a.b=[unclosed"], "bad --set 'a.b=[unclosed': value: malformed YAML"),
    (["encoding.n_levels=true"], "encoding.n_levels must be an integer, got bool True"),
])
def test_bad_overrides_name_the_key(sets, message):
    with pytest.raises(ConfigError) as err:
        image(sets=sets)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_extends_chain_and_errors(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("extends: image-cpu\ntrain:\n  n_steps: 7\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nencoding:\n  n_levels: 8\n")
    cfg = image(str(child))
    assert cfg.train.n_steps == 7 and cfg.encoding.n_levels == 8 and cfg.train.batch_size == 2**16
    loop_a, loop_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    loop_a.write_text("extends: b.yaml\n")
    loop_b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_preset(str(loop_a))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {n_steps: 3\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        image(str(bad))
    with pytest.raises(ConfigError, match=r"unknown preset 'imag' \(did you mean 'image'\?\)"):
        image("imag")
    with pytest.raises(ConfigError, match="preset file does not exist"):
        image(str(tmp_path / "missing.yaml"))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        image(str(listy))


def test_tcnn_json_accepted_as_is(tcnn_image_json):
    path = tcnn_image_json
    cfg = image(str(path))
    assert cfg.encoding.log2_hashmap_size == 15 and cfg.encoding.per_level_scale == 1.5
    assert cfg.encoding.max_resolution is None  # per_level_scale given: N_max is not used
    assert cfg.loss.otype == "RelativeL2" and cfg.network.otype == "FullyFusedMLP"
    assert cfg.train.batch_size == 2**16  # the rest comes from the task's default preset


def test_tcnn_nested_optimizer_is_flattened():
    nested = {"optimizer": {"otype": "Ema", "decay": 0.95, "nested": {
        "otype": "ExponentialDecay", "decay_start": 20000, "decay_interval": 10000, "decay_base": 0.33,
        "nested": {"otype": "Adam", "learning_rate": 1e-2, "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15}}}}
    flat = normalize_tcnn(nested)["optimizer"]
    assert flat == {"ema_decay": 0.95, "decay_start": 20000, "decay_interval": 10000, "decay_base": 0.33,
                    "otype": "Adam", "learning_rate": 1e-2, "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15}
    with pytest.raises(ConfigError, match="optimizer.otype 'SGD' is not supported"):
        normalize_tcnn({"optimizer": {"otype": "SGD"}})


def test_max_resolution_and_per_level_scale_exclude_each_other():
    cfg = image(sets=["encoding.per_level_scale=1.5"])
    assert cfg.encoding.per_level_scale == 1.5 and cfg.encoding.max_resolution is None
    cfg = apply_sets({"encoding": {"per_level_scale": 1.5}}, ["encoding.max_resolution=4096"])
    assert cfg["encoding"] == {"per_level_scale": None, "max_resolution": 4096}


def test_a_folder_named_like_a_preset_does_not_shadow_it(tmp_path, monkeypatch):
    """Working in a folder that holds, say, a ``image/`` or ``defaults/`` directory: the built-in presets (and their
    ``extends:`` chain) still resolve; a folder named with a path is refused."""
    for name in ("image", "image-cpu", "defaults"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = image("image-cpu")
    assert cfg.encoding.log2_hashmap_size == 21 and cfg.optimizer.beta2 == 0.99
    with pytest.raises(ConfigError, match="is a directory"):
        load_preset("./image")


def test_preset_for_other_task_is_rejected(tmp_path):
    other = tmp_path / "sdf.yaml"
    other.write_text("task: sdf\n")
    with pytest.raises(ConfigError, match="is for task 'sdf', not 'image'"):
        image(str(other))


def test_build_defaults_and_round_trip():
    from ngp_cli.config import to_dict

    cfg = image()
    again = build(ImageConfig, to_dict(cfg))
    assert again == cfg


# ---------------------------------------------------------------------------------------------------------------------
# Bounds on YAML/JSON (issue 13, item 3)

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def test_alias_bomb_is_refused_before_it_expands():
    """A 300-byte document whose aliases would expand to 9^9 nodes is refused at the budget, in milliseconds."""
    import time

    from ngp_cli.config import MAX_ALIAS_NODES, load_yaml

    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"YAML aliases expand to more than {MAX_ALIAS_NODES} nodes") as err:
        load_yaml(BILLION_LAUGHS, "bomb.yaml")
    assert time.perf_counter() - start < 1.0
    assert str(err.value).startswith("bomb.yaml: ") and "'*d', line 5" in str(err.value)
    # a long string repeated through aliases is bounded by characters, not nodes
    chars = "s: &s " + "y" * 100_000 + "\nl: [" + ", ".join(["*s"] * 11) + "]\n"
    with pytest.raises(ConfigError, match="more than 1048576 characters"):
        load_yaml(chars, "chars.yaml")


def test_ordinary_aliases_and_merge_keys_still_load():
    from ngp_cli.config import load_yaml

    text = ("base: &base {n_levels: 8, log2_hashmap_size: 15}\n"
            "encoding:\n  <<: *base\n  n_levels: 4\n"
            "lists: [*base, *base, *base]\n")
    data = load_yaml(text, "ok.yaml")
    assert data["encoding"] == {"n_levels": 4, "log2_hashmap_size": 15}
    assert data["lists"] == [{"n_levels": 8, "log2_hashmap_size": 15}] * 3


def test_recursive_alias_and_duplicate_keys_are_refused():
    from ngp_cli.config import load_json, load_yaml

    with pytest.raises(ConfigError, match=r"recursive YAML alias '\*a'"):
        load_yaml("a: &a [1, *a]\n", "r.yaml")
    with pytest.raises(ConfigError, match=r"duplicate key 'train' \(line 3\)"):
        load_yaml("train:\n  n_steps: 3\ntrain:\n  batch_size: 4\n", "d.yaml")
    with pytest.raises(ConfigError, match="duplicate key 'loss'"):
        load_json('{"loss": {"otype": "L1"}, "loss": {}}', "d.json")


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_nesting_depth_limit(fmt):
    from ngp_cli.config import MAX_DEPTH, load_json, load_yaml

    load = load_json if fmt == "json" else load_yaml
    node, depth = load("[" * MAX_DEPTH + "]" * MAX_DEPTH, "ok"), 0
    while isinstance(node, list):
        node, depth = (node[0] if node else None), depth + 1
    assert depth == MAX_DEPTH
    for depth in (MAX_DEPTH + 1, 100_000):  # past the limit, and past Python's recursion limit
        with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH} levels"):
            load("[" * depth + "]" * depth, "deep")


def test_int_past_pythons_digit_limit_is_malformed_not_a_crash():
    from ngp_cli.config import load_json, load_yaml

    for load in (load_yaml, load_json):
        with pytest.raises(ConfigError, match="an integer with more than 4300 digits"):
            load('{"seed": 1' + "0" * 5000 + "}", "big")


def test_every_config_read_goes_through_the_bounded_loader(tmp_path):
    """Presets, --set values, a run's config.yaml and NRC scene files all refuse the same bomb."""
    from ngp_cli.errors import DataError
    from ngp_cli.runs import RunDir
    from ngp_cli.tasks.nrc.scene import load_scene

    preset = tmp_path / "bomb.yaml"
    preset.write_text("extends: image-cpu\n" + BILLION_LAUGHS)
    with pytest.raises(ConfigError, match="alias bomb"):
        image(str(preset))
    with pytest.raises(ConfigError, match="alias bomb"):
        parse_set("train.n_steps=" + "{" + BILLION_LAUGHS.replace("\n", ", ") + "}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(BILLION_LAUGHS)
    with pytest.raises(ConfigError, match="alias bomb"):
        RunDir(run).read_config()
    scene = tmp_path / "scene.yaml"
    scene.write_text(BILLION_LAUGHS)
    with pytest.raises(DataError, match="alias bomb"):
        load_scene(scene)


def test_files_with_a_utf8_bom_load(tmp_path):
    for name, text in (("bom.yaml", "extends: image-cpu\ntrain:\n  n_steps: 9\n"),
                       ("bom.json", '{"train": {"n_steps": 9}}')):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert image(str(path)).train.n_steps == 9


# ---------------------------------------------------------------------------------------------------------------------
# Values cut at 200 characters (issue 13, item 3)


@pytest.mark.parametrize("sets", [
    ["train.n_steps=" + "x" * 1_000_000],                     # str under an int key
    ["loss.otype=" + "L" * 5000],                              # literal
    ["network.n_neurons=" + "[" + "1, " * 5000 + "1]"],       # list under a choices key
    ["encoding." + "k" * 5000 + "=1"],                         # unknown key name
    ["train.seed=" + "9" * 4000],                              # unknown key and a huge (valid) int
    ["train.n_steps.x" + "y" * 5000 + "=1"],                   # --set through a value
], ids=["str", "literal", "list", "key", "int", "set-path"])
def test_echoed_values_are_cut_at_200_characters(sets):
    with pytest.raises(ConfigError) as err:
        image(sets=sets)
    message = str(err.value)
    assert len(message) < 280 and "\n" not in message, message
    assert "characters)" in message or "more)" in message, message


def test_clip():
    from ngp_cli.config import clip, clipped_repr

    assert clip("abc") == "abc"
    assert clip("x" * 200) == "x" * 200
    assert clip("x" * 201) == "x" * 182 + "… (201 characters)" and len(clip("x" * 201)) == 200
    shown = clipped_repr("x" * 10**6)
    assert shown.startswith("'xxx") and shown.endswith("… (1000002 characters)") and len(shown) == 200


# ---------------------------------------------------------------------------------------------------------------------
# Upper bounds (issue 13, item 3)


@pytest.mark.parametrize("assignment, message", [
    ("seed=9223372036854775808", "seed must be <= 9223372036854775807"),   # 2^63: seed + step overflows 64 bits
    ("seed=18446744073709551616", "seed must be <= 9223372036854775807"),  # 2^64: torch refuses it
    ("seed=-1", "seed must be >= 0"),
    ("train.batch_size=1e12", "train.batch_size must be <= 67108864"),     # YAML 1.1 reads 1e12 as a string
    ("train.batch_size=1.0e12", "train.batch_size must be <= 67108864"),
    ("train.n_steps=1.0e30", "train.n_steps must be <= 1000000000"),
    ("train.keep_checkpoints=100000", "train.keep_checkpoints must be <= 1000"),
    ("encoding.base_resolution=1e9", "encoding.base_resolution must be <= 16777216"),
    ("encoding.per_level_scale=1000", "encoding.per_level_scale must be <= 256.0"),
    ("image.tile_pixels=1e9", "image.tile_pixels must be <= 67108864"),
    ("train.n_steps=1.5e3", None),
    ("seed=9223372036854775807", None),
    ("train.batch_size=67108864", None),
    ("train.n_steps=1e6", None),
])
def test_upper_bounds(assignment, message):
    if message is None:
        cfg = image(sets=[assignment])
        key, _, value = assignment.partition("=")
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == int(float(value)) if "e" in value else node == int(value)
        return
    with pytest.raises(ConfigError) as err:
        image(sets=[assignment])
    assert message in str(err.value)


def _task_configs():
    from ngp_cli.tasks.nerf import NerfConfig
    from ngp_cli.tasks.nrc import NrcConfig
    from ngp_cli.tasks.sdf import SdfConfig

    return [ImageConfig, NerfConfig, SdfConfig, NrcConfig]


def _leaf_fields(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaf_fields(tp, prefix + f.name + ".")
        else:
            args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            yield prefix + f.name, args[0], dict(f.metadata)


@pytest.mark.parametrize("cls", _task_configs(), ids=lambda c: c.__name__)
def test_every_number_key_is_bounded_and_finite(cls):
    """Every int key has an upper bound (a choices list counts); every float key refuses nan and inf (none is marked
    ``finite=False`` today)."""
    from ngp_cli.config import to_dict

    data = to_dict(cls())
    unbounded = [path for path, tp, meta in _leaf_fields(cls)
                 if tp is int and not ({"le", "lt", "choices"} & set(meta))]
    assert not unbounded, f"int keys without an upper bound: {unbounded}"
    floats = [path for path, tp, meta in _leaf_fields(cls) if tp is float and meta.get("finite", True)]
    assert floats
    for path in floats:
        for bad in (float("nan"), float("inf"), float("-inf")):
            with pytest.raises(ConfigError, match=f"{path} must be a finite number"):
                build(cls, apply_sets(data, [f"{path}={'.nan' if bad != bad else ('.inf' if bad > 0 else '-.inf')}"]))


def test_the_gpu_presets_fit_the_bounds():
    """The bounds are generous enough for the GPU presets (batches up to 2^18 here, 2^21 in the benchmarks)."""
    from ngp_cli.tasks.nerf import NerfConfig

    assert image("image", ["train.batch_size=2097152", "train.n_steps=35000"]).train.batch_size == 1 << 21
    cfg = resolve(NerfConfig, "nerf", "nerf", ["nerf.n_rays_initial=262144"], default_preset="nerf")
    assert cfg.train.batch_size == 1 << 18 and cfg.nerf.n_rays_initial == 1 << 18


# ---------------------------------------------------------------------------------------------------------------------
# instant-ngp's own JSON configs (issue 13, "compatibility claims that fail"). Faithful copies of NVlabs/instant-ngp
# configs/image/base.json and configs/nerf/base.json (master), tabs and comments included.

INGP_IMAGE_BASE = """{
\t"loss": {
\t\t"otype": "L2"
\t},
\t"optimizer": {
\t\t// "otype": "Ema",
\t\t// "decay": 0.95,
\t\t// "nested": {
\t\t\t"otype": "ExponentialDecay",
\t\t\t"decay_start": 20000,
\t\t\t"decay_interval": 10000,
\t\t\t"decay_base": 0.33,
\t\t\t"nested": {
\t\t\t\t"otype": "Adam",
\t\t\t\t"learning_rate": 1e-2,
\t\t\t\t"beta1": 0.9,
\t\t\t\t"beta2": 0.99,
\t\t\t\t"epsilon": 1e-15,
\t\t\t\t"l2_reg": 1e-6
\t\t\t}
\t\t// }
\t},
\t"encoding": {
\t\t"otype": "HashGrid",
\t\t"n_levels": 16,
\t\t"n_features_per_level": 2,
\t\t"log2_hashmap_size": 24,
\t\t"base_resolution": 16
\t},
\t"network": {
\t\t"otype": "FullyFusedMLP",
\t\t"activation": "ReLU",
\t\t"output_activation": "None",
\t\t"n_neurons": 64,
\t\t"n_hidden_layers": 2
\t}
}
"""

INGP_NERF_BASE = """{
\t"loss": {
\t\t"otype": "Huber"
\t},
\t"optimizer": {
\t\t"otype": "Ema",
\t\t"decay": 0.95,
\t\t"nested": {
\t\t\t"otype": "ExponentialDecay",
\t\t\t"decay_start": 20000,
\t\t\t"decay_interval": 10000,
\t\t\t"decay_base": 0.33,
\t\t\t"nested": {
\t\t\t\t"otype": "Adam",
\t\t\t\t"learning_rate": 1e-2,
\t\t\t\t"beta1": 0.9,
\t\t\t\t"beta2": 0.99,
\t\t\t\t"epsilon": 1e-15,
\t\t\t\t"l2_reg": 1e-6
\t\t\t}
\t\t}
\t},
\t"encoding": {
\t\t"otype": "HashGrid",
\t\t"n_levels": 8,
\t\t"n_features_per_level": 4,
\t\t"log2_hashmap_size": 19,
\t\t"base_resolution": 16
\t},
\t"network": {
\t\t"otype": "FullyFusedMLP",
\t\t"activation": "ReLU",
\t\t"output_activation": "None",
\t\t"n_neurons": 64,
\t\t"n_hidden_layers": 1
\t},
\t"dir_encoding": {
\t\t"otype": "Composite",
\t\t"nested": [
\t\t\t{
\t\t\t\t"n_dims_to_encode": 3,
\t\t\t\t"otype": "SphericalHarmonics",
\t\t\t\t"degree": 4
\t\t\t},
\t\t\t{
\t\t\t\t"otype": "Identity"
\t\t\t}
\t\t]
\t},
\t"rgb_network": {
\t\t"otype": "FullyFusedMLP",
\t\t"activation": "ReLU",
\t\t"output_activation": "None",
\t\t"n_neurons": 64,
\t\t"n_hidden_layers": 2
\t},
\t"distortion_map": {
\t\t"resolution": [32, 32],
\t\t"optimizer": {
\t\t\t"otype": "ExponentialDecay",
\t\t\t"decay_start": 10000,
\t\t\t"decay_interval": 5000,
\t\t\t"decay_end": 25000,
\t\t\t"decay_base": 0.33,
\t\t\t"nested": {
\t\t\t\t"otype": "Adam",
\t\t\t\t"learning_rate": 1e-4,
\t\t\t\t"beta1": 0.9,
\t\t\t\t"beta2": 0.99,
\t\t\t\t"epsilon": 1e-8
\t\t\t}
\t\t}
\t},
\t"envmap": {
\t\t"loss": {
\t\t\t"otype": "RelativeL2"
\t\t},
\t\t"optimizer": {
\t\t\t"otype": "Ema",
\t\t\t"decay": 0.99,
\t\t\t"nested": {
\t\t\t\t"otype": "ExponentialDecay",
\t\t\t\t"decay_start": 10000,
\t\t\t\t"decay_interval": 5000,
\t\t\t\t"decay_base": 0.33,
\t\t\t\t"nested": {
\t\t\t\t\t"otype": "Adam",
\t\t\t\t\t"learning_rate": 1e-2,
\t\t\t\t\t"beta1": 0.9,
\t\t\t\t\t"beta2": 0.99,
\t\t\t\t\t"beta3": 0.9,
\t\t\t\t\t"beta_shampoo": 0.0,
\t\t\t\t\t"epsilon": 1e-10,
\t\t\t\t\t"identity": 0.0001,
\t\t\t\t\t"cg_on_momentum": false,
\t\t\t\t\t"frobenius_normalization": true,
\t\t\t\t\t"l2_reg": 1e-10
\t\t\t\t}
\t\t\t}
\t\t}
\t}
}

"""


def test_instant_ngp_image_base_json_through_the_cli(ngp, tmp_path):
    """instant-ngp's configs/image/base.json, // comments and all: its keys resolved, no warning."""
    path = tmp_path / "base.json"
    path.write_text(INGP_IMAGE_BASE)
    res = ngp("presets", "show", path, "--task", "image")
    assert res.exit_code == 0, res.stderr
    assert res.stderr.strip() == ""
    cfg = res.last("preset")["config"]
    assert cfg["encoding"] | {} == cfg["encoding"] and {k: cfg["encoding"][k] for k in (
        "otype", "n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution")} == {
        "otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 24, "base_resolution": 16}
    assert cfg["network"] == {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                              "n_neurons": 64, "n_hidden_layers": 2}
    assert cfg["loss"]["otype"] == "L2"
    opt = cfg["optimizer"]
    assert (opt["learning_rate"], opt["beta1"], opt["beta2"], opt["epsilon"], opt["l2_reg"]) == (
        1e-2, 0.9, 0.99, 1e-15, 1e-6)
    assert (opt["decay_start"], opt["decay_interval"], opt["decay_base"]) == (20000, 10000, 0.33)
    assert opt["ema_decay"] == 0.0  # the Ema wrapper is commented out in the file


def test_instant_ngp_nerf_base_json_through_the_cli(ngp, tmp_path):
    """instant-ngp's configs/nerf/base.json: mapped keys resolved, one warning per unsupported key."""
    path = tmp_path / "base.json"
    path.write_text(INGP_NERF_BASE)
    res = ngp("presets", "show", path, "--task", "nerf")
    assert res.exit_code == 0, res.stderr
    warnings = res.stderr.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith(f"ngp: warning: {path}: ") for w in warnings), warnings
    assert "'distortion_map'" in warnings[0] and "'envmap'" in warnings[1]
    assert "dir_encoding.nested[1] (Identity" in warnings[2]
    cfg = res.last("preset")["config"]
    enc = cfg["encoding"]
    assert (enc["otype"], enc["n_levels"], enc["n_features_per_level"], enc["log2_hashmap_size"],
            enc["base_resolution"], enc["per_level_scale"], enc["max_resolution"]) == (
        "HashGrid", 8, 4, 19, 16, None, None)  # N_max: 2048 x aabb_scale, as instant-ngp derives it
    assert (cfg["network"]["n_neurons"], cfg["network"]["n_hidden_layers"]) == (64, 1)
    assert (cfg["dir_encoding"]["otype"], cfg["dir_encoding"]["degree"]) == ("SphericalHarmonics", 4)
    rgb = cfg["rgb_network"]
    # instant-ngp applies its logistic colour activation after the colour MLP's "None" output
    assert (rgb["n_neurons"], rgb["n_hidden_layers"], rgb["output_activation"]) == (64, 2, "Sigmoid")
    assert cfg["loss"]["otype"] == "Huber"
    opt = cfg["optimizer"]
    assert (opt["ema_decay"], opt["decay_start"], opt["decay_interval"], opt["decay_base"]) == (0.95, 20000, 10000, 0.33)
    assert (opt["learning_rate"], opt["epsilon"], opt["l2_reg"]) == (1e-2, 1e-15, 1e-6)
    # the envmap's own Adam (lr 1e-2, epsilon 1e-10) and the distortion map's (1e-4) did not leak into ours
    assert opt["epsilon"] == 1e-15 and opt["l2_reg"] == 1e-6


def test_instant_ngp_parent_chain(tmp_path):
    """instant-ngp's ``"parent": "base.json"`` (configs/nerf/big.json) is our ``extends``; the chain still ends in the
    task's default preset."""
    from ngp_cli.tasks.nerf import NerfConfig

    (tmp_path / "base.json").write_text(INGP_NERF_BASE)
    big = tmp_path / "big.json"
    big.write_text('{\n\t"parent": "base.json",\n\t"encoding": {\n\t\t"n_levels": 16,\n\t\t"log2_hashmap_size": 21\n'
                   '\t},\n\t"network": {\n\t\t"n_neurons": 64,\n\t\t"n_hidden_layers": 1\n\t}\n}\n')
    warned = []
    data = load_preset(str(big), default_parent="nerf-cpu", task="nerf", warn=lambda f, m: warned.append((f.name, m)))
    cfg = build(NerfConfig, {**data, "task": "nerf"})
    assert (cfg.encoding.n_levels, cfg.encoding.log2_hashmap_size, cfg.encoding.n_features_per_level) == (16, 21, 4)
    assert cfg.optimizer.ema_decay == 0.95 and cfg.rgb_network.output_activation == "Sigmoid"
    assert cfg.train.max_time_s == 1800  # from nerf-cpu, under base.json
    assert [f for f, _ in warned] == ["base.json"] * 3


def test_unknown_keys_stay_fatal_outside_instant_ngp_json(tmp_path):
    """The warn-and-ignore rule covers only instant-ngp's keys in an instant-ngp JSON: a YAML preset, or a JSON that
    names its task (an ngp file), still refuses them like any typo."""
    yml = tmp_path / "p.yaml"
    yml.write_text("extends: image-cpu\ndistortion_map: {resolution: [32, 32]}\n")
    with pytest.raises(ConfigError, match="unknown key 'distortion_map'"):
        image(str(yml))
    ours = tmp_path / "ours.json"
    ours.write_text('{"task": "image", "envmap": {}}')
    with pytest.raises(ConfigError, match="unknown key 'envmap'"):
        image(str(ours))
    typo = tmp_path / "typo.json"
    typo.write_text('{"encodng": {"n_levels": 4}}')
    with pytest.raises(ConfigError, match=r"unknown key 'encodng' \(did you mean 'encoding'\?\)"):
        image(str(typo))


def test_json_comments_are_stripped_outside_strings_only():
    from ngp_cli.config import load_json, strip_json_comments

    text = '{"url": "http://a/*b*/", // line\n "x": /* block\n over lines */ 1, "q": "say \\"//\\""}'
    assert load_json(text, "c.json") == {"url": "http://a/*b*/", "x": 1, "q": 'say "//"'}
    assert strip_json_comments(text).count("\n") == text.count("\n")  # parser line numbers stay right
    with pytest.raises(ConfigError, match="malformed JSON at line 3, column 2"):
        load_json('{"a": 1, /* two\nlines */\n x}', "c.json")
    with pytest.raises(ConfigError, match="unterminated /\\* comment at line 2"):
        load_json('{"a": 1,\n /* never closed', "c.json")

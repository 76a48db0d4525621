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
    (["a.b=[unclosed"], "value is not valid YAML"),
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

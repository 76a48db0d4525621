"""Typed run configuration, YAML presets with ``extends:`` inheritance, and ``--set a.b=value`` overrides.

Key names for the encoding, network, optimizer and loss follow tiny-cuda-nn's JSON config (``otype``, ``n_levels``,
``n_features_per_level``, ``log2_hashmap_size``, ``base_resolution``, ``per_level_scale``, ``interpolation``, ``n_neurons``,
``n_hidden_layers``, ``activation``, ``output_activation``, ``learning_rate``, ``beta1``, ``beta2``, ``epsilon``, ``l2_reg``),
so a tiny-cuda-nn / instant-ngp JSON file is accepted as a preset as it is (its nested ``Ema`` / ``ExponentialDecay``
optimizer wrappers are flattened, see :func:`normalize_tcnn`).

Resolution order, later wins: the task's built-in preset chain (``defaults.yaml`` at the root) → ``--preset NAME|PATH``
→ each ``--set``. The merged mapping is then validated against the task's dataclass: an unknown key is reported with its
full path and the closest valid name; an ill-typed or out-of-range value with its path and the expected type.

This module imports no torch, so ``ngp --help`` and ``ngp presets`` stay fast and need no GPU.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ngp_cli.errors import ConfigError

PRESET_SUFFIXES = (".yaml", ".yml", ".json")

# Value sets of tiny-cuda-nn's config; the nn modules import them from here so each has one home.
ACTIVATIONS = ("None", "ReLU", "LeakyReLU", "Exponential", "Sine", "Sigmoid", "Squareplus", "Softplus", "Tanh")
NETWORK_WIDTHS = (16, 32, 64, 128)
INTERPOLATIONS = ("Nearest", "Linear", "Smoothstep")
GRID_TYPES = ("Hash", "Dense")
_Activation = Literal[ACTIVATIONS]  # type: ignore[valid-type]
_META_KEYS = ("extends", "description")


def opt(default: Any, doc: str, **constraints: Any) -> Any:
    """A dataclass field with a docstring and value constraints (``ge``, ``gt``, ``le``, ``lt``, ``choices``)."""
    kwargs: dict[str, Any] = {"metadata": {"doc": doc, **constraints}}
    if isinstance(default, list | dict):
        kwargs["default_factory"] = lambda: copy.deepcopy(default)
    else:
        kwargs["default"] = default
    return field(**kwargs)


def section(cls: type, doc: str) -> Any:
    """A nested config section field."""
    return field(default_factory=cls, metadata={"doc": doc})


@dataclass
class EncodingConfig:
    """Input encoding, tiny-cuda-nn JSON names (paper §3). Grid keys apply to ``HashGrid``/``DenseGrid``/``Grid``;
    ``n_frequencies`` to ``Frequency``; ``degree`` to ``SphericalHarmonics``."""

    otype: Literal["HashGrid", "DenseGrid", "Grid", "Frequency", "SphericalHarmonics"] = opt(
        "HashGrid", "encoding type")
    type: Literal[GRID_TYPES] = opt(  # type: ignore[valid-type]
        "Hash", "grid storage for otype Grid: Hash (capped at T) or Dense")
    n_levels: int = opt(16, "number of levels L", ge=1, le=64)
    n_features_per_level: int = opt(2, "features per level F", choices=(1, 2, 4, 8))
    log2_hashmap_size: int = opt(19, "log2 of the hash table size T per level", ge=2, le=30)
    base_resolution: int = opt(16, "coarsest resolution N_min", ge=1)
    per_level_scale: float | None = opt(
        2.0, "per-level scale b; null derives it from max_resolution (or the task's natural N_max)", ge=1.0)
    max_resolution: int | None = opt(
        None, "finest resolution N_max; b = exp((ln N_max - ln N_min)/(L-1)); overrides per_level_scale", ge=1)
    interpolation: Literal[INTERPOLATIONS] = opt(  # type: ignore[valid-type]
        "Linear", "d-linear, smoothstep, or nearest-vertex interpolation")
    hash: Literal["CoherentPrime"] = opt("CoherentPrime", "spatial hash: XOR of coordinate x prime (paper eq. 4)")
    n_frequencies: int = opt(12, "Frequency encoding: number of octaves per input dimension", ge=1, le=32)
    degree: int = opt(4, "SphericalHarmonics encoding: degree (outputs degree^2)", ge=1, le=4)

    @property
    def is_grid(self) -> bool:
        return self.otype in ("HashGrid", "DenseGrid", "Grid")

    @property
    def grid_type(self) -> str:
        """``"Hash"`` or ``"Dense"``, from ``otype`` (HashGrid/DenseGrid) or ``type`` (Grid)."""
        return {"HashGrid": "Hash", "DenseGrid": "Dense"}.get(self.otype, self.type)


@dataclass
class NetworkConfig:
    """MLP after the encoding, tiny-cuda-nn "FullyFusedMLP" semantics: no biases, ReLU hidden layers."""

    otype: Literal["FullyFusedMLP", "CutlassMLP"] = opt("FullyFusedMLP", "network type (both have the same maths)")
    activation: _Activation = opt("ReLU", "hidden-layer activation")
    output_activation: _Activation = opt("None", "output activation")
    n_neurons: int = opt(64, "hidden width", choices=NETWORK_WIDTHS)
    n_hidden_layers: int = opt(2, "number of hidden layers", ge=1, le=16)


@dataclass
class OptimizerConfig:
    """Adam as in the paper §4 (β1=0.9, β2=0.99, ε=1e-15, L2 on MLP weights only). tiny-cuda-nn's ``Ema`` and
    ``ExponentialDecay`` wrappers are flattened into ``ema_decay`` and ``decay_*``."""

    otype: Literal["Adam"] = opt("Adam", "optimizer type")
    learning_rate: float = opt(1e-2, "step size", gt=0.0)
    beta1: float = opt(0.9, "Adam first-moment decay", ge=0.0, lt=1.0)
    beta2: float = opt(0.99, "Adam second-moment decay", ge=0.0, lt=1.0)
    epsilon: float = opt(1e-15, "Adam epsilon", ge=0.0)
    l2_reg: float = opt(1e-6, "L2 regularisation on the MLP weights (not the encoding tables)", ge=0.0)
    skip_zero_grad: bool = opt(True, "skip Adam steps of hash-table entries whose gradient is exactly 0, moments "
                                     "included (paper §4, tcnn adam_step)")
    ema_decay: float = opt(0.0, "EMA of the weights used for evaluation (tcnn Ema 'decay'); 0 disables", ge=0.0, lt=1.0)
    decay_start: int = opt(0, "ExponentialDecay: first step at which the learning rate decays", ge=0)
    decay_interval: int = opt(1000, "ExponentialDecay: steps between decays", ge=1)
    decay_base: float = opt(1.0, "ExponentialDecay: factor per interval; 1 disables", gt=0.0, le=1.0)


@dataclass
class LossConfig:
    """Training loss, tiny-cuda-nn names."""

    otype: Literal["L2", "L1", "RelativeL2", "RelativeL1", "RelativeL2Luminance", "MAPE", "Huber"] = opt(
        "L2", "loss function (Huber: instant-ngp's NeRF loss, quadratic below |error| 0.1; MAPE: |p-t|/(|t|+0.01), "
              "the SDF loss; RelativeL2Luminance: (p-t)^2/(lum(p)^2+0.01), the radiance-cache loss)")


@dataclass
class TrainConfig:
    """The task-agnostic training loop."""

    n_steps: int = opt(1000, "total training steps", ge=1)
    batch_size: int = opt(1 << 16, "training samples per step", ge=1)
    log_every: int = opt(10, "steps between metrics.jsonl lines", ge=1)
    checkpoint_every: int = opt(0, "steps between checkpoints; 0 writes one only at the end", ge=0)
    keep_checkpoints: int = opt(3, "number of most recent checkpoints kept", ge=1)
    eval_every: int = opt(0, "steps between the task's held-out evaluations logged to metrics.jsonl (tasks that have "
                             "one, e.g. NeRF's validation PSNR); 0: only the final evaluation", ge=0)
    final_eval_views: int | None = opt(
        None, "held-out views the task's final evaluation after training renders (NeRF: val/test views); null: all, "
              "0: skip it", ge=0)
    max_time_s: float = opt(0.0, "stop once this many seconds of training time have passed, before n_steps; "
                                 "0: no limit", ge=0.0)


@dataclass
class RunConfig:
    """Keys shared by every task. Tasks subclass it and add their own section."""

    task: str = opt("", "task this config is for")
    seed: int = opt(1337, "seed of every random draw (initialisation and sampling)")
    backend: Literal["auto", "cuda", "cpu", "torch"] = opt("auto", "kernel backend")
    device: str = opt("auto", "torch device for the torch backend: auto, cpu, cuda, cuda:N, mps")
    encoding: EncodingConfig = section(EncodingConfig, "input encoding")
    network: NetworkConfig = section(NetworkConfig, "MLP")
    optimizer: OptimizerConfig = section(OptimizerConfig, "optimizer")
    loss: LossConfig = section(LossConfig, "loss")
    train: TrainConfig = section(TrainConfig, "training loop")


# ---------------------------------------------------------------------------------------------------------------------
# Validation


# Names other tools (PyTorch optimizers, torch-ngp, nerfstudio) use for our tiny-cuda-nn keys, for "did you mean".
_ALIASES = {"lr": "learning_rate", "eps": "epsilon", "weight_decay": "l2_reg", "betas": "beta1",
            "steps": "n_steps", "iters": "n_steps", "max_steps": "n_steps", "batch": "batch_size",
            "num_levels": "n_levels", "level_dim": "n_features_per_level", "features_per_level": "n_features_per_level",
            "log2_hashmap": "log2_hashmap_size", "desired_resolution": "max_resolution",
            "hidden_dim": "n_neurons", "width": "n_neurons", "num_layers": "n_hidden_layers"}


def _suggest(key: str, valid: typing.Iterable[str], prefix: str) -> str:
    valid = list(valid)
    if _ALIASES.get(key) in valid:
        return f" (did you mean '{prefix}{_ALIASES[key]}'?)"
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f" (valid keys: {', '.join(valid)})"


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _check_number(value: Any, path: str, kind: type) -> int | float:
    if isinstance(value, bool):
        raise ConfigError(f"{path} must be {'an integer' if kind is int else 'a number'}, got {_describe(value)}")
    if isinstance(value, str):
        # PyYAML reads "1e-2" (no dot) as a string; accept numeric strings.
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            raise ConfigError(
                f"{path} must be {'an integer' if kind is int else 'a number'}, got {_describe(value)}") from None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {_describe(value)}")
        return value
    if not isinstance(value, int | float):
        raise ConfigError(f"{path} must be a number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number, got {value!r}")
    return value


def _check_constraints(value: Any, path: str, meta: dict[str, Any]) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{path} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    for op, test, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                           ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        if op in meta and not test(value, meta[op]):
            raise ConfigError(f"{path} must be {word} {meta[op]}, got {value!r}")


def _coerce(tp: Any, value: Any, path: str, meta: dict[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, path, meta)
    if value is None:
        raise ConfigError(f"{path} must not be null")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{path} must be one of {', '.join(map(str, args))}, got {value!r}{hint}")
        return value
    if tp is int or tp is float:
        value = _check_number(value, path, tp)
    elif tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {_describe(value)}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {_describe(value)}")
    _check_constraints(value, path, meta)
    return value


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Validate the mapping ``data`` against dataclass ``cls`` and return an instance.

    Missing keys take the dataclass defaults. Raises :class:`ConfigError` naming the full key path for an unknown key
    (with the closest valid name), a wrong type, or a value outside the field's constraints.
    """
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {_describe(data)}")
    flds = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in flds:
            raise ConfigError(f"unknown key '{prefix}{key}'{_suggest(str(key), flds, prefix)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], data[name], prefix + name, dict(f.metadata))
              for name, f in flds.items() if name in data}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain-dict form of a config dataclass (what config.yaml holds)."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------------------------------
# tiny-cuda-nn JSON normalisation


def _flatten_optimizer(opt_cfg: Any) -> dict[str, Any]:
    """Flatten tcnn's ``{"otype": "Ema", "decay": d, "nested": {"otype": "ExponentialDecay", ..., "nested": Adam}}``."""
    flat: dict[str, Any] = {}
    node = opt_cfg
    while isinstance(node, dict):
        node = dict(node)
        otype = node.pop("otype", "Adam")
        nested = node.pop("nested", None)
        if otype in ("Ema", "EMA", "ExponentialMovingAverage"):
            if "decay" in node:
                flat["ema_decay"] = node.pop("decay")
            if "full_precision" in node:
                node.pop("full_precision")  # precision detail of tcnn's implementation; ours is always fp32
        elif otype == "ExponentialDecay":
            for key in ("decay_start", "decay_interval", "decay_base"):
                if key in node:
                    flat[key] = node.pop(key)
        elif otype == "Adam":
            flat["otype"] = "Adam"
            flat.update(node)
            node = {}
        else:
            raise ConfigError(f"optimizer.otype '{otype}' is not supported "
                              "(supported: Adam, optionally wrapped in Ema and/or ExponentialDecay)")
        if otype != "Adam" and node:
            key = next(iter(node))
            raise ConfigError(f"unknown key 'optimizer.{key}' in tiny-cuda-nn {otype} optimizer")
        node = nested
    return flat


def normalize_tcnn(layer: dict[str, Any]) -> dict[str, Any]:
    """Bring one config layer (preset file, tcnn JSON) into ngp's flat schema.

    - nested tcnn optimizers (Ema → ExponentialDecay → Adam) become flat ``optimizer`` keys;
    - ``per_level_scale`` and ``max_resolution`` exclude each other: a layer that sets one clears the other, so
      ``--set encoding.max_resolution=4096`` works on top of a preset that gives ``per_level_scale``.
    """
    layer = copy.deepcopy(layer)
    optim = layer.get("optimizer")
    if isinstance(optim, dict) and ("nested" in optim or optim.get("otype", "Adam") != "Adam"):
        layer["optimizer"] = _flatten_optimizer(optim)
    enc = layer.get("encoding")
    if isinstance(enc, dict):
        for key, other in (("per_level_scale", "max_resolution"), ("max_resolution", "per_level_scale")):
            if enc.get(key) is not None and other not in enc:
                enc[other] = None
    return layer


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, anything else in ``over`` replaces ``base``."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Presets


def presets_dir() -> Path:
    """Directory of the built-in presets: the repository's ``presets/`` (installed as the ``ngp_cli.presets`` package)."""
    from importlib import resources

    try:
        return Path(str(resources.files("ngp_cli.presets")))
    except ModuleNotFoundError:  # running from a source tree that was not pip-installed
        return Path(__file__).resolve().parent.parent / "presets"


def read_mapping_file(path: Path, error: type[Exception] = ConfigError, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of a YAML or JSON file (JSON when the suffix is .json). Raises ``error`` with one line
    for an unreadable file, malformed YAML/JSON (the parser's position included) or a top level that is not a
    mapping; an empty file is an empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise error(f"{path}: malformed {'JSON' if path.suffix == '.json' else 'YAML'}: {detail}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def read_layer_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of one YAML/JSON config file, unmerged. Raises ConfigError."""
    return read_mapping_file(path)


def list_presets() -> list[dict[str, Any]]:
    """Built-in presets as ``{"name", "path", "task", "extends", "description"}`` dicts, sorted by name."""
    out = []
    for path in sorted(presets_dir().glob("*.yaml")):
        data = read_layer_file(path)
        out.append({"name": path.stem, "path": str(path), "task": load_preset(str(path)).get("task"),
                    "extends": data.get("extends"), "description": data.get("description", "")})
    return out


def find_preset(name_or_path: str) -> Path:
    """Map ``--preset NAME|PATH`` to a file: an existing file wins, else a built-in name. A bare name (no preset
    suffix, no ``/``) that is only a folder of the working directory is a built-in name: a project folder called
    ``nerf`` must not shadow the ``nerf`` preset (or a preset's ``extends: nerf``). Raises ConfigError."""
    as_path = Path(name_or_path).expanduser()
    if as_path.suffix in PRESET_SUFFIXES or "/" in name_or_path or as_path.is_file():
        if as_path.is_file():
            return as_path
        if as_path.is_dir():
            raise ConfigError(f"{name_or_path}: is a directory, expected a preset file (.yaml, .yml or .json)")
        raise ConfigError(f"{name_or_path}: preset file does not exist")
    builtin = presets_dir() / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    names = [p.stem for p in presets_dir().glob("*.yaml")]
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (available: {', '.join(sorted(names))})"
    raise ConfigError(f"unknown preset '{name_or_path}'{hint}")


def load_preset(name_or_path: str, *, default_parent: str | None = None, _chain: tuple[str, ...] = ()) -> dict:
    """Load a preset and everything it ``extends:``, merged root-first, normalised, without meta keys.

    A user file without ``extends:`` (a tiny-cuda-nn JSON, say) extends ``default_parent``, the task's built-in preset,
    so it only needs the keys it changes. Raises ConfigError for missing files, malformed YAML/JSON, cycles.
    """
    path = find_preset(name_or_path)
    key = str(path.resolve())
    if key in _chain:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    data = read_layer_file(path)
    parent = data.get("extends")
    is_builtin = path.resolve().parent == presets_dir().resolve()
    if parent is None and not is_builtin:
        parent = default_parent
    if parent is not None and not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a preset name or path, got {_describe(parent)}")
    base: dict[str, Any] = {}
    if parent:
        if not Path(parent).is_absolute() and (path.parent / parent).is_file():
            parent = str(path.parent / parent)
        base = load_preset(parent, _chain=_chain + (key,))
    layer = {k: v for k, v in data.items() if k not in _META_KEYS}
    return deep_merge(base, normalize_tcnn(layer))


def parse_set(assignment: str) -> tuple[list[str], Any]:
    """Parse one ``--set a.b=value`` (value parsed as YAML) into ``(["a", "b"], value)``. Raises ConfigError."""
    key, sep, raw = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or any(not p for p in parts):
        raise ConfigError(f"bad --set '{assignment}': expected KEY.PATH=VALUE, e.g. --set train.n_steps=500")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad --set '{assignment}': value is not valid YAML: {' '.join(str(exc).split())}") from None
    return parts, value


def apply_sets(data: dict[str, Any], assignments: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides in order to a copy of ``data``."""
    data = copy.deepcopy(data)
    for assignment in assignments:
        parts, value = parse_set(assignment)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = node.get(part, {})
            if not isinstance(node, dict):
                where = ".".join(parts[:i + 1])
                raise ConfigError(f"bad --set '{assignment}': '{where}' is a value, not a section")
        layer: dict[str, Any] = {}
        cursor = layer
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        data = deep_merge(data, normalize_tcnn(layer))
    return data


def resolve(cls: type, task: str, preset: str, sets: typing.Sequence[str] = (), *,
            default_preset: str | None = None) -> Any:
    """Resolve ``preset`` + ``sets`` into a validated ``cls`` instance for ``task``.

    Raises ConfigError when the preset belongs to another task or any key/value is invalid.
    """
    data = apply_sets(load_preset(preset, default_parent=default_preset), sets)
    data.setdefault("task", task)
    if data["task"] != task:
        raise ConfigError(f"preset '{preset}' is for task '{data['task']}', not '{task}'")
    return build(cls, data)


def dump_yaml(data: dict[str, Any]) -> str:
    """YAML text of a plain config dict, keys in schema order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

"""Typed run configuration, YAML presets with ``extends:`` inheritance, and ``--set a.b=value`` overrides.

Key names for the encoding, network, optimizer and loss follow tiny-cuda-nn's JSON config (``otype``, ``n_levels``,
``n_features_per_level``, ``log2_hashmap_size``, ``base_resolution``, ``per_level_scale``, ``interpolation``, ``n_neurons``,
``n_hidden_layers``, ``activation``, ``output_activation``, ``learning_rate``, ``beta1``, ``beta2``, ``epsilon``, ``l2_reg``),
so a tiny-cuda-nn / instant-ngp JSON file is accepted as a preset as it is (its nested ``Ema`` / ``ExponentialDecay``
optimizer wrappers are flattened, see :func:`normalize_tcnn`; its ``//`` comments, ``parent`` and NeRF keys are
handled by :func:`from_instant_ngp`).

Every YAML ngp reads goes through :func:`load_yaml` and every JSON config through :func:`load_json`: alias expansion,
nesting depth and duplicate keys are bounded there (docs/presets.md, "Limits"). Values echoed in error messages are
cut by :func:`clip` / :func:`clipped_repr`.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml

from ngp_cli.errors import ConfigError
from ngp_cli.nn.activations import ACTIVATIONS

PRESET_SUFFIXES = (".yaml", ".yml", ".json")

# Bounds on what a config file may hold (issue 13): a few KB of YAML must not expand into gigabytes through aliases,
# recurse the parser into a RecursionError, or print megabytes in one error line.
MAX_VALUE_CHARS = 200  # an echoed value is cut here (with its length) in error messages
MAX_DEPTH = 64  # nested mappings/lists; presets use 3
MAX_ALIAS_NODES = 10_000  # nodes that YAML aliases may add, counted at their expanded size
MAX_ALIAS_CHARS = 1 << 20  # scalar characters that YAML aliases may add
# Upper bounds of the common count keys; generous for real use (the GPU presets use batches of 2^18..2^21 and
# instant-ngp's configs tens of thousands of steps), small enough that a typo is refused rather than allocated.
MAX_STEPS = 10**9
MAX_BATCH = 1 << 26
MAX_SEED = (1 << 63) - 1

# Value sets of tiny-cuda-nn's config; the nn modules import them from here so each has one home (the activation
# names have theirs in ngp_cli.nn.activations, with the functions).
NETWORK_WIDTHS = (16, 32, 64, 128)
INTERPOLATIONS = ("Nearest", "Linear", "Smoothstep")
GRID_TYPES = ("Hash", "Dense")
BACKENDS = ("auto", "cuda", "cpu", "torch")  # kernel backends: --backend, nn.backend.resolve_backend
_Activation = Literal[ACTIVATIONS]  # type: ignore[valid-type]
_META_KEYS = ("extends", "description")


def opt(default: Any, doc: str, **constraints: Any) -> Any:
    """A dataclass field with a docstring and value constraints (``ge``, ``gt``, ``le``, ``lt``, ``choices``). A float
    field refuses nan and ±inf unless it passes ``finite=False``. Give every int field an upper bound (``le``/``lt``
    or ``choices``): tests/test_config.py checks that none is missing."""
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
    """Input encoding, tiny-cuda-nn JSON names (paper §3). Grid keys apply to ``HashGrid``/``DenseGrid``/``Grid``
    and ``SimplexGrid`` (the hash grid on a simplex lattice, Wen & Yang 2023; interpolation Linear only);
    ``n_frequencies`` to ``Frequency``; ``degree`` to ``SphericalHarmonics``."""

    otype: Literal["HashGrid", "DenseGrid", "Grid", "SimplexGrid", "Frequency", "SphericalHarmonics"] = opt(
        "HashGrid", "encoding type")
    type: Literal[GRID_TYPES] = opt(  # type: ignore[valid-type]
        "Hash", "grid storage for otype Grid: Hash (capped at T) or Dense")
    n_levels: int = opt(16, "number of levels L", ge=1, le=64)
    n_features_per_level: int = opt(2, "features per level F", choices=(1, 2, 4, 8))
    log2_hashmap_size: int = opt(19, "log2 of the hash table size T per level", ge=2, le=30)
    base_resolution: int = opt(16, "coarsest resolution N_min (at most 2^24)", ge=1, le=1 << 24)
    per_level_scale: float | None = opt(
        2.0, "per-level scale b (1..256); null derives it from max_resolution (or the task's natural N_max)",
        ge=1.0, le=256.0)
    max_resolution: int | None = opt(
        None, "finest resolution N_max (at most 2^24); b = exp((ln N_max - ln N_min)/(L-1)); overrides "
              "per_level_scale", ge=1, le=1 << 24)
    interpolation: Literal[INTERPOLATIONS] = opt(  # type: ignore[valid-type]
        "Linear", "d-linear, smoothstep, or nearest-vertex interpolation")
    hash: Literal["CoherentPrime"] = opt("CoherentPrime", "spatial hash: XOR of coordinate x prime (paper eq. 4)")
    n_frequencies: int = opt(12, "Frequency encoding: number of octaves per input dimension", ge=1, le=32)
    degree: int = opt(4, "SphericalHarmonics encoding: degree (outputs degree^2)", ge=1, le=4)

    def __post_init__(self) -> None:
        if self.otype == "SimplexGrid" and self.interpolation != "Linear":
            raise ConfigError(f"encoding.otype SimplexGrid interpolates barycentrically: encoding.interpolation must "
                              f"be Linear, got {self.interpolation}")

    @property
    def is_grid(self) -> bool:
        return self.otype in ("HashGrid", "DenseGrid", "Grid", "SimplexGrid")

    @property
    def grid_type(self) -> str:
        """``"Hash"`` or ``"Dense"``, from ``otype`` (HashGrid/DenseGrid) or ``type`` (Grid)."""
        return {"HashGrid": "Hash", "DenseGrid": "Dense", "SimplexGrid": "Hash"}.get(self.otype, self.type)


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
    decay_start: int = opt(0, "ExponentialDecay: first step at which the learning rate decays", ge=0, le=MAX_STEPS)
    decay_interval: int = opt(1000, "ExponentialDecay: steps between decays", ge=1, le=MAX_STEPS)
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

    n_steps: int = opt(1000, "total training steps (at most 10^9)", ge=1, le=MAX_STEPS)
    batch_size: int = opt(1 << 16, "training samples per step (at most 2^26; the GPU presets use 2^18)", ge=1,
                          le=MAX_BATCH)
    log_every: int = opt(10, "steps between metrics.jsonl lines", ge=1, le=MAX_STEPS)
    checkpoint_every: int = opt(0, "steps between checkpoints; 0 writes one only at the end", ge=0, le=MAX_STEPS)
    keep_checkpoints: int = opt(3, "number of most recent checkpoints kept (at most 1000)", ge=1, le=1000)
    eval_every: int = opt(0, "steps between the task's held-out evaluations logged to metrics.jsonl (tasks that have "
                             "one, e.g. NeRF's validation PSNR); 0: only the final evaluation", ge=0, le=MAX_STEPS)
    final_eval_views: int | None = opt(
        None, "held-out views the task's final evaluation after training renders (NeRF: val/test views); null: all, "
              "0: skip it", ge=0, le=10**6)
    max_time_s: float = opt(0.0, "stop once this many seconds of training time have passed, before n_steps; "
                                 "0: no limit (at most 10^9 s)", ge=0.0, le=1e9)


@dataclass
class DistributedConfig:
    """Data-parallel and spatially partitioned training on torch.distributed, launched by torchrun or ``--nproc``
    (docs/distributed.md)."""

    sampling_shards: int = opt(
        0, "random-sampling streams a step's batch is split into, each drawing train.batch_size / shards samples from "
           "its own generator, shared out over the processes; a run keeps them when resumed on another number of "
           "processes (a multiple of it), so it draws the same samples; 0: one per process, recorded at the start",
        ge=0, le=4096)
    timeout_s: float = opt(600.0, "seconds a process waits for the others before the run stops with an error "
                                  "(at most a day)", gt=0.0, le=86400.0)
    partition: int = opt(1, "NeRF only: cut the scene box into this many regions (1, 2, 4 or 8), one model part each "
                            "(hash tables of T / partition entries), trained on 1 process or on that many, one part "
                            "each (NeRF-XL); 1: one model", ge=1, le=8)


@dataclass
class RunConfig:
    """Keys shared by every task. Tasks subclass it and add their own section."""

    task: str = opt("", "task this config is for")
    seed: int = opt(1337, "seed of every random draw (initialisation and sampling); 0 <= seed < 2^63, so that the "
                          "seed plus a step count still fits torch.Generator's 64 bits", ge=0, le=MAX_SEED)
    backend: Literal[BACKENDS] = opt("auto", "kernel backend")  # type: ignore[valid-type]
    device: str = opt("auto", "torch device for the torch backend: auto, cpu, cuda, cuda:N, mps")
    encoding: EncodingConfig = section(EncodingConfig, "input encoding")
    network: NetworkConfig = section(NetworkConfig, "MLP")
    optimizer: OptimizerConfig = section(OptimizerConfig, "optimizer")
    loss: LossConfig = section(LossConfig, "loss")
    train: TrainConfig = section(TrainConfig, "training loop")
    distributed: DistributedConfig = section(DistributedConfig, "data-parallel training over processes")


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
    shown = ""
    for i, name in enumerate(valid):  # the task sections have 20 keys: keep the error line short
        if len(shown) + len(name) > 100:
            return f" (valid keys: {shown}, … {len(valid) - i} more)"
        shown = f"{shown}, {name}" if shown else name
    return f" (valid keys: {shown})"


def clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, ending in an ellipsis and the original length, for echoing user
    input in a one-line error message (the CLI caps the whole line at 280)."""
    text = str(text)
    if len(text) <= limit:
        return text
    note = f"… ({len(text)} characters)"
    return text[:max(limit - len(note), 0)] + note


def clipped_repr(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr(value)`` cut by :func:`clip`: how every error message shows a value read from the user. Messages that
    also list the valid choices pass a smaller ``limit`` so the whole line stays under 300 characters."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit str() limit
        return f"<{type(value).__name__} too large to print>"
    return clip(text, limit)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {clipped_repr(value)}"


def _parse_int(text: str) -> int:
    # YAML 1.1 reads "1e6" (no dot) as a string; accept it as an int when it is one exactly (Decimal, not float,
    # so 2^63 - 1 written out keeps its last digits). Raises ValueError.
    try:
        return int(text)
    except ValueError:
        pass
    try:
        dec = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(text) from None
    if not dec.is_finite() or dec != dec.to_integral_value() or abs(dec.adjusted()) > 100:
        raise ValueError(text)
    return int(dec)


def _check_number(value: Any, path: str, kind: type, finite: bool = True) -> int | float:
    wanted = "an integer" if kind is int else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{path} must be {wanted}, got {_describe(value)}")
    if isinstance(value, str):
        # PyYAML reads "1e-2" (no dot) as a string; accept numeric strings.
        try:
            value = float(value) if kind is float else _parse_int(value)
        except ValueError:
            raise ConfigError(f"{path} must be {wanted}, got {_describe(value)}") from None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {_describe(value)}")
        return value
    if not isinstance(value, int | float):
        raise ConfigError(f"{path} must be a number, got {_describe(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        raise ConfigError(f"{path} must be a finite number, got {_describe(value)}") from None
    if finite and not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number, got {value!r}")
    return value


def _check_constraints(value: Any, path: str, meta: dict[str, Any]) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(
            f"{path} must be one of {', '.join(map(str, meta['choices']))}, got {clipped_repr(value, 100)}")
    for op, test, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                           ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        if op in meta and not test(value, meta[op]):
            raise ConfigError(f"{path} must be {word} {meta[op]}, got {clipped_repr(value)}")


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
            close = difflib.get_close_matches(clip(value, 100), [str(a) for a in args], n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{path} must be one of {', '.join(map(str, args))}, got {clipped_repr(value, 100)}{hint}")
        return value
    if tp is int or tp is float:
        value = _check_number(value, path, tp, finite=meta.get("finite", True))
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
            raise ConfigError(f"unknown key '{prefix}{clip(key, 60)}'{_suggest(clip(key, 60), flds, prefix)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], data[name], prefix + name, dict(f.metadata))
              for name, f in flds.items() if name in data}
    return cls(**kwargs)


def config_value(cfg: Any, key: str) -> Any:
    """``cfg.section.name`` for a key ``section.name`` of a built config."""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def set_config_value(cfg: Any, key: str, value: Any) -> None:
    """Set ``cfg.section.name`` for a key ``section.name`` of a built config (no validation: for values the code
    derived, e.g. an input's absolute path)."""
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)


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
            raise ConfigError(f"optimizer.otype {clipped_repr(otype)} is not supported "
                              "(supported: Adam, optionally wrapped in Ema and/or ExponentialDecay)")
        if otype != "Adam" and node:
            key = next(iter(node))
            raise ConfigError(f"unknown key 'optimizer.{clip(key)}' in tiny-cuda-nn {otype} optimizer")
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


class _LoadProblem(Exception):
    """Why a YAML/JSON text was refused (one line, no source named)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the bounds of issue 13: an alias adds the expanded size of the node it names to a
    budget (:data:`MAX_ALIAS_NODES` nodes, :data:`MAX_ALIAS_CHARS` scalar characters), nesting stops at
    :data:`MAX_DEPTH`, recursive aliases and duplicated keys are refused. The pure-Python loader, because the C one
    composes nodes where no hook can count them; configs are a few KB."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._alias_nodes = 0
        self._alias_chars = 0
        self._done: set[int] = set()  # ids of nodes fully composed: an alias to any other one is recursive
        self._sizes: dict[int, tuple[int, int]] = {}

    def _size(self, node: yaml.Node) -> tuple[int, int]:
        # Expanded (nodes, scalar characters) of a composed node; shared sub-nodes are counted at every use, which is
        # what makes a "billion laughs" document large, and memoised, which keeps the count itself linear.
        key = id(node)
        if key not in self._sizes:
            if isinstance(node, yaml.ScalarNode):
                size = (1, len(node.value))
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else [
                    child for pair in node.value for child in pair]
                sizes = [self._size(child) for child in children]
                size = (1 + sum(n for n, _ in sizes), sum(c for _, c in sizes))
            self._sizes[key] = size
        return self._sizes[key]

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            target = self.anchors.get(anchor)
            if target is not None:
                if id(target) not in self._done:
                    raise _LoadProblem(f"recursive YAML alias '*{clip(anchor, 40)}'")
                nodes, chars = self._size(target)
                self._alias_nodes += nodes
                self._alias_chars += chars
                for used, limit, unit in ((self._alias_nodes, MAX_ALIAS_NODES, "nodes"),
                                          (self._alias_chars, MAX_ALIAS_CHARS, "characters")):
                    if used > limit:
                        line = self.peek_event().start_mark.line + 1
                        raise _LoadProblem(f"YAML aliases expand to more than {limit} {unit} (an alias bomb?) at "
                                           f"'*{clip(anchor, 40)}', line {line}")
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _LoadProblem(f"nested deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._done.add(id(node))
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # YAML says keys are unique; PyYAML keeps the last silently, so a second "train:" section would drop every key
        # of the first one.
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: the base class reports it
                    continue
                if duplicate:
                    raise _LoadProblem(f"duplicate key {clipped_repr(key)} (line {key_node.start_mark.line + 1})")
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # MarkedYAMLError's str() quotes the offending lines with a caret: several lines, up to ~80 characters each.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        where = exc.problem_mark or exc.context_mark
        context = f"{exc.context} " if exc.context else ""
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        return clip(f"{context}{exc.problem}{at}".strip(), 150)
    return clip(" ".join(str(exc).split()), 150)


def _value_problem(exc: Exception) -> str:
    if "4300" in str(exc) or "int_max_str_digits" in str(exc):
        return "an integer with more than 4300 digits"  # Python's int() limit, hit while constructing the value
    return clip(" ".join(str(exc).split()), 150)


def _parse_yaml(text: str) -> Any:
    """The YAML value of ``text`` through :class:`_BoundedLoader`. Raises _LoadProblem."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _LoadProblem:
        raise
    except yaml.YAMLError as exc:
        raise _LoadProblem(f"malformed YAML: {_yaml_problem(exc)}") from None
    except (ValueError, RecursionError) as exc:
        raise _LoadProblem(f"malformed YAML: {_value_problem(exc)}") from None
    finally:
        loader.dispose()


def strip_json_comments(text: str) -> str:
    """``text`` with ``//`` line and ``/* */`` block comments outside strings blanked out (newlines kept, so the JSON
    parser's line numbers stay right): what instant-ngp's nlohmann::json reader accepts with ``ignore_comments``.
    Nothing else non-standard is accepted. Raises _LoadProblem for an unterminated block comment."""
    out: list[str] = []
    i, n = 0, len(text)
    start = 0  # first character not yet copied
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(text[start:i])
            start = i = end
            continue
        elif ch == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                line = text.count("\n", 0, i) + 1
                raise _LoadProblem(f"malformed JSON: unterminated /* comment at line {line}")
            out.append(text[start:i])
            out.append("".join(c if c == "\n" else " " for c in text[i:end + 2]))
            start = i = end + 2
            continue
        i += 1
    out.append(text[start:])
    return "".join(out)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _LoadProblem(f"duplicate key {clipped_repr(key)}")
        out[key] = value
    return out


def _depth(value: Any) -> int:
    """Nesting depth of lists/dicts (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _parse_json(text: str) -> Any:
    """The JSON value of ``text`` (comments allowed, see :func:`strip_json_comments`). Raises _LoadProblem."""
    if not text.strip():
        raise _LoadProblem("empty file, expected a JSON object")
    try:
        data = json.loads(strip_json_comments(text), object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        raise _LoadProblem(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _LoadProblem(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise _LoadProblem(f"malformed JSON: {_value_problem(exc)}") from None
    if _depth(data) > MAX_DEPTH:
        raise _LoadProblem(f"nested deeper than {MAX_DEPTH} levels")
    return data


def load_yaml(text: str, source: str | Path, error: type[Exception] = ConfigError) -> Any:
    """Parse YAML ``text`` safely and within bounds: the one YAML reader of ngp (presets, ``--set`` values, a run's
    config.yaml, NRC scene files).

    Refused with ``error("<source>: <why>")``: malformed YAML (line and column), aliases expanding past
    :data:`MAX_ALIAS_NODES` nodes or :data:`MAX_ALIAS_CHARS` characters, recursive aliases, nesting deeper than
    :data:`MAX_DEPTH`, duplicated keys.
    """
    try:
        return _parse_yaml(text)
    except _LoadProblem as exc:
        raise error(f"{source}: {exc}") from None


def load_json(text: str, source: str | Path, error: type[Exception] = ConfigError) -> Any:
    """Parse JSON ``text`` with ``//`` and ``/* */`` comments (instant-ngp's configs have them), nested at most
    :data:`MAX_DEPTH` deep, keys unique. Raises ``error("<source>: <why>")``."""
    try:
        return _parse_json(text)
    except _LoadProblem as exc:
        raise error(f"{source}: {exc}") from None


def read_mapping_file(path: Path, error: type[Exception] = ConfigError, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of a YAML or JSON file (JSON when the suffix is .json, comments allowed), read through
    :func:`load_yaml` / :func:`load_json`. A UTF-8 byte-order mark is skipped. Raises ``error`` with one line for an
    unreadable or non-UTF-8 file, malformed or out-of-bounds YAML/JSON, or a top level that is not a mapping; an empty
    YAML file is an empty mapping."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}), expected a {what}") from None
    data = load_json(text, path, error) if path.suffix == ".json" else load_yaml(text, path, error)
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
    ``nerf`` must not shadow the ``nerf`` preset (or a preset's ``extends: nerf``). A file with another suffix (a
    photo, a mesh) is refused. Raises ConfigError."""
    shown = clip(name_or_path)
    as_path = Path(name_or_path).expanduser()
    try:
        if as_path.suffix in PRESET_SUFFIXES or "/" in name_or_path or as_path.is_file():
            if as_path.is_file():
                if as_path.suffix and as_path.suffix not in PRESET_SUFFIXES:
                    raise ConfigError(f"{shown}: not a preset file (expected .yaml, .yml or .json)")
                return as_path
            if as_path.is_dir():
                raise ConfigError(f"{shown}: is a directory, expected a preset file (.yaml, .yml or .json)")
            raise ConfigError(f"{shown}: preset file does not exist")
        builtin = presets_dir() / f"{name_or_path}.yaml"
        if builtin.is_file():
            return builtin
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        raise ConfigError(f"{shown}: cannot be a preset: {getattr(exc, 'strerror', None) or exc}") from None
    names = [p.stem for p in presets_dir().glob("*.yaml")]
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (available: {', '.join(sorted(names))})"
    raise ConfigError(f"unknown preset '{shown}'{hint}")


# instant-ngp keys with no equivalent here: a JSON config of instant-ngp that has them still loads, with one warning
# per key (testbed_nerf.cpp reads them beside the tcnn keys). Anything else unknown stays an error.
_INGP_UNSUPPORTED = {
    "distortion_map": "instant-ngp's trainable lens-distortion map",
    "envmap": "instant-ngp's trainable environment map",
}
# tiny-cuda-nn optimizer keys with no equivalent in our Adam/ExponentialDecay: warned and dropped in instant-ngp JSON.
_TCNN_UNSUPPORTED_OPTIMIZER_KEYS = ("decay_end", "relative_decay", "absolute_decay", "adabound",
                                    "optimize_matrix_params", "optimize_non_matrix_params")
_ENCODING_SECTIONS = ("encoding", "dir_encoding")


def _composite_encoding(enc: dict[str, Any], where: str, warn: Callable[[str], None]) -> dict[str, Any]:
    """Map tcnn's ``{"otype": "Composite", "nested": [...]}`` to its one encoding part of the 3 input dimensions.
    instant-ngp's NeRF dir_encoding is SphericalHarmonics of the direction followed by Identity of the per-image
    "extra dims", which are 0 here (no latent codes): the Identity part encodes nothing and is dropped with a warning.
    """
    nested = enc.get("nested")
    if not isinstance(nested, list) or not all(isinstance(p, dict) for p in nested):
        raise ConfigError(f"{where}.nested must be a list of encodings for otype Composite, got "
                          f"{_describe(nested)}")
    extra = set(enc) - {"otype", "nested"}
    if extra:
        raise ConfigError(f"unknown key '{where}.{clip(sorted(map(str, extra))[0])}' in a tiny-cuda-nn Composite")
    kept = []
    for i, part in enumerate(nested):
        if part.get("otype") == "Identity":
            warn(f"{where}.nested[{i}] (Identity over instant-ngp's per-image extra dimensions) is not supported; "
                 "ignored")
        else:
            kept.append(part)
    if len(kept) != 1 or kept[0].get("n_dims_to_encode", 3) != 3:
        raise ConfigError(f"{where}: a Composite encoding is supported only as one encoding of all 3 dimensions "
                          "(plus Identity parts), as in instant-ngp's NeRF configs")
    return {k: v for k, v in kept[0].items() if k != "n_dims_to_encode"}


def _drop_unsupported_optimizer_keys(node: Any, where: str, warn: Callable[[str], None]) -> None:
    while isinstance(node, dict):
        for key in _TCNN_UNSUPPORTED_OPTIMIZER_KEYS:
            if key in node:
                node.pop(key)
                warn(f"{where}.{key} (tiny-cuda-nn {node.get('otype', 'Adam')}) is not supported; ignored")
        node = node.get("nested")


def from_instant_ngp(layer: dict[str, Any], task: str | None, warn: Callable[[str], None]) -> dict[str, Any]:
    """Bring an instant-ngp / tiny-cuda-nn JSON config (a ``.json`` preset without ``task:``) into ngp's keys.

    - ``parent`` (instant-ngp's inheritance, relative to the file) becomes ``extends``;
    - ``distortion_map``, ``envmap`` and tcnn optimizer keys we do not implement (``decay_end``, ...) are dropped
      with one ``warn`` line each;
    - a ``Composite`` ``dir_encoding``/``encoding`` becomes its single 3-D part (:func:`_composite_encoding`);
    - for ``task == "nerf"``, ``rgb_network.output_activation``: instant-ngp applies its logistic colour activation
      after the colour MLP, so its ``"None"`` is our ``"Sigmoid"`` (another value has no equivalent: warned, Sigmoid).

    The rest (``encoding``, ``network``, ``rgb_network``, ``optimizer``, ``loss``) already has our names. Raises
    ConfigError for a Composite that cannot be mapped.
    """
    layer = copy.deepcopy(layer)
    if "parent" in layer and "extends" not in layer:
        layer["extends"] = layer.pop("parent")
    for key, what in _INGP_UNSUPPORTED.items():
        if key in layer:
            layer.pop(key)
            warn(f"'{key}' ({what}) is not supported; ignored")
    for key in _ENCODING_SECTIONS:
        enc = layer.get(key)
        if isinstance(enc, dict) and enc.get("otype") == "Composite":
            layer[key] = _composite_encoding(enc, key, warn)
    _drop_unsupported_optimizer_keys(layer.get("optimizer"), "optimizer", warn)
    rgb = layer.get("rgb_network")
    if task == "nerf" and isinstance(rgb, dict) and "output_activation" in rgb:
        if rgb["output_activation"] != "None":
            warn(f"rgb_network.output_activation {clipped_repr(rgb['output_activation'])} followed by instant-ngp's "
                 "logistic colour activation has no equivalent; using Sigmoid")
        rgb["output_activation"] = "Sigmoid"
    return layer


def _warn_line(source: Path, message: str) -> None:
    from ngp_cli.console import warn

    warn(f"{source}: {message}")


def load_preset(name_or_path: str, *, default_parent: str | None = None, task: str | None = None,
                warn: Callable[[Path, str], None] | None = None, _chain: tuple[str, ...] = ()) -> dict:
    """Load a preset and everything it ``extends:``, merged root-first, normalised, without meta keys.

    A user file without ``extends:`` (a tiny-cuda-nn JSON, say) extends ``default_parent``, the task's built-in preset,
    so it only needs the keys it changes; this holds at every level of a chain of user files. A ``.json`` file without
    ``task:`` is read as an instant-ngp / tiny-cuda-nn config (:func:`from_instant_ngp`, for ``task``); its warnings go
    to ``warn(file, message)`` (default: dropped, so that a caller resolving twice warns once). Raises ConfigError for
    missing files, malformed YAML/JSON, cycles.
    """
    path = find_preset(name_or_path)
    key = str(path.resolve())
    if key in _chain:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    data = read_layer_file(path)
    if path.suffix == ".json" and "task" not in data:
        data = from_instant_ngp(data, task, lambda message: warn(path, message) if warn else None)
    parent = data.get("extends")
    is_builtin = path.resolve().parent == presets_dir().resolve()
    if parent is None and not is_builtin:
        parent = default_parent
    if parent is not None and not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a preset name or path, got {_describe(parent)}")
    base: dict[str, Any] = {}
    if parent:
        try:
            if not Path(parent).is_absolute() and (path.parent / parent).is_file():
                parent = str(path.parent / parent)
        except (OSError, ValueError):
            pass  # find_preset names the problem
        base = load_preset(parent, default_parent=default_parent, task=task, warn=warn, _chain=_chain + (key,))
    layer = {k: v for k, v in data.items() if k not in _META_KEYS}
    return deep_merge(base, normalize_tcnn(layer))


def parse_set(assignment: str) -> tuple[list[str], Any]:
    """Parse one ``--set a.b=value`` (value parsed as YAML, within :func:`load_yaml`'s bounds) into
    ``(["a", "b"], value)``. Raises ConfigError."""
    key, sep, raw = assignment.partition("=")
    parts = key.strip().split(".")
    shown = clip(assignment, 80)
    if not sep or not key.strip() or any(not p for p in parts):
        raise ConfigError(f"bad --set '{shown}': expected KEY.PATH=VALUE, e.g. --set train.n_steps=500")
    try:
        value = _parse_yaml(raw) if raw.strip() else None
    except _LoadProblem as exc:
        raise ConfigError(f"bad --set '{shown}': value: {exc}") from None
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
                raise ConfigError(
                    f"bad --set '{clip(assignment, 80)}': '{clip(where, 60)}' is a value, not a section")
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
    data = apply_sets(load_preset(preset, default_parent=default_preset, task=task, warn=_warn_line), sets)
    data.setdefault("task", task)
    if data["task"] != task:
        raise ConfigError(f"preset '{clip(preset)}' is for task {clipped_repr(data['task'])}, not '{task}'")
    nerf = data.get("nerf")
    if task != "nerf" and isinstance(nerf, dict) and nerf.get("saliency_prune"):
        raise ConfigError(f"nerf.saliency_prune: saliency pruning prunes a NeRF's density volume, and the {task} task "
                          "has none (use it with ngp train-nerf)")
    return build(cls, data)


def dump_yaml(data: dict[str, Any]) -> str:
    """YAML text of a plain config dict, keys in schema order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

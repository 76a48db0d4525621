"""The ``cpu`` backend's MLP: three ways to evaluate the bias-free MLP of :class:`ngp_cli.nn.mlp.FullyFusedMLP` on a
CPU, and the choice between them, made by measuring on the machine itself.

Paths (:data:`PATHS`):

* ``"bf16"``: :class:`CPUMLPFunction` in bfloat16 (float32 accumulation in oneDNN). A candidate only where the CPU
  has bf16 matmul instructions (AVX-512-BF16 or AMX, :func:`cpu_compute_dtype`); emulated bf16 is slower than float32.
* ``"fp32"``: :class:`CPUMLPFunction` in float32.
* ``"torch"``: the plain torch-autograd evaluation, the same ops as the ``torch`` backend's reference MLP.

Which is fastest depends on the CPU and its BLAS, not only on its flags: on a 2-core AMD EPYC Zen 3 (AVX2 only) the
first float32 version of the hand-written path took 51.1 ms for forward + backward of the bench MLP at 2^16 rows,
where torch's autograd took 36.7 ms. So :func:`cpu_mlp_path` times the candidates once (:func:`measure_paths`, well
under 2 s) and caches the winner in the kernel cache directory, keyed by CPU model, ISA features, torch version and
thread count (:func:`cache_key`). ``NGP_CPU_MLP=bf16|fp32|torch|auto`` overrides the choice (docs/cli.md).

This module imports torch; :mod:`ngp_cli.machine` imports it lazily so ``ngp --help`` stays free of torch.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ngp_cli.cuda import mlp_bf16
from ngp_cli.cuda.hashgrid import is_feature_major
from ngp_cli.errors import ConfigError
from ngp_cli.nn.activations import activate_, activation_backward_, activation_fn

__all__ = [
    "ENV_VAR",
    "PATHS",
    "CPUMLPChoice",
    "CPUMLPFunction",
    "cache_key",
    "bucket_rows",
    "candidate_paths",
    "cpu_compute_dtype",
    "cpu_mlp",
    "cpu_mlp_path",
    "inference_mlp",
    "measure_paths",
    "select_cpu_mlp_path",
]

PATHS = ("bf16", "fp32", "torch")
ENV_VAR = "NGP_CPU_MLP"
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

class CPUMLPFunction(torch.autograd.Function):
    """The MLP as a hand-written forward/backward in ``dtype`` matmuls (bfloat16 with float32 accumulation in oneDNN,
    or float32).

    Same structure as the fused kernel: hidden activations saved after the activation, whose derivative comes from
    them; weight gradients ``g^T @ a`` (rounded to ``dtype``, then returned in the weights' dtype); no loss scaling
    (bf16 has float32's range). Activations and their derivatives are applied in place to the buffers this function
    owns, saving torch autograd's extra (N, width) tensors.

    Processing the batch in row chunks that stay in cache was tried for float32: 10-15 % faster on a quiet 2-core Xeon
    (17.6 against 20.7 ms at 2^16 rows), but each chunk multiplies the OpenMP parallel regions, and with another
    process on the cores every region waits for a time slice: 695 against 121 ms. Hence whole-batch matmuls.

    ``apply(x, activation, dtype, *weights)``: ``x`` (N, n_in), weights ``(out, in)`` matrices (any float dtype);
    returns the (N, n_out) float32 output *before* the output activation. A feature-major ``x`` (whose transpose is
    contiguous: the hash grid's layout, :func:`ngp_cli.cuda.hashgrid.encode` with ``feature_major``) enters the first
    matmul as a transposed operand, and dL/dx is returned in the same layout (``dxᵀ = W₀ᵀ · dhᵀ``), which the grid's
    backward reads in contiguous streams: the same values as for a row-major ``x``. An encoded network's forward +
    backward on the bench's grids and MLP was 1.09-1.30× faster so, with the same gradients bit for bit
    (``benchmarks/encoding_layout.py``; docs/benchmarks/2026-12-07-cpu-2core-zen4-issue20-training-layout.md).
    Activations: those of ``ngp_cli.nn.activations.ACTIVATION_CODES``. Source: tiny-cuda-nn
    ``src/fully_fused_mlp.cu`` (structure only).
    """

    @staticmethod
    def forward(ctx, x, activation, dtype, *weights):
        wl = [w.detach().to(dtype) for w in weights]
        h = x.detach().to(dtype)  # a feature-major x (hash grid's layout) stays so: the first matmul reads it as is
        ctx.activation = activation
        ctx.feature_major = is_feature_major(x)
        ctx.dtypes = (x.dtype, [w.dtype for w in weights])
        saved = [h]
        for w in wl[:-1]:
            h = torch.mm(h, w.t())
            activate_(h, activation)
            saved.append(h)
        ctx.save_for_backward(*saved, *wl)
        return torch.mm(h, wl[-1].t()).float()

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        n_layers = len(saved) // 2
        acts, wl = saved[:n_layers], saved[n_layers:]
        need_dx = ctx.needs_input_grad[0]
        g = grad_out.to(wl[0].dtype).contiguous()
        grads: list[Tensor | None] = [None] * n_layers
        for i in range(n_layers - 1, -1, -1):
            grads[i] = torch.mm(g.t(), acts[i])
            if i == 0 and not need_dx:
                break
            if i == 0 and ctx.feature_major:
                g = torch.mm(wl[0].t(), g.t()).t()  # dL/dx feature-major, as x came: the hash grid's backward reads it
            else:
                g = torch.mm(g, wl[i])  # a new tensor: the activation derivative may be applied in place
            if i > 0:
                activation_backward_(g, acts[i], ctx.activation)
        x_dtype, w_dtypes = ctx.dtypes
        return (g.to(x_dtype) if need_dx else None, None, None,
                *(gr.to(dt) for gr, dt in zip(grads, w_dtypes, strict=True)))


@functools.lru_cache(maxsize=1)
def cpu_compute_dtype() -> torch.dtype:
    """bfloat16 when the CPU has bf16 matmul instructions (AVX-512-BF16 or AMX, torch's own probes), else float32
    (emulated bf16 would be slower than float32). Decides whether ``"bf16"`` is a candidate path."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        fast = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    except Exception:  # a probe that fails means no fast path
        fast = False
    return torch.bfloat16 if fast else torch.float32


def _torch_mlp(x: Tensor, weights: Sequence[Tensor], activation: str, output_activation: str) -> Tensor:
    # The ops of FullyFusedMLP.forward's reference branch (kernel_target None), so "torch" is the torch backend's MLP.
    h = x.to(weights[0].dtype)
    last = len(weights) - 1
    for i, w in enumerate(weights):
        h = activation_fn(output_activation if i == last else activation)(h @ w.t())
    return h


def cpu_mlp(x: Tensor | Sequence[Tensor], weights: Sequence[Tensor], activation: str = "ReLU",
            output_activation: str = "None", dtype: torch.dtype | None = None, path: str | None = None) -> Tensor:
    """The MLP on the CPU: ``x`` (N, n_in) through ``weights`` (``(out, in)`` float32 matrices) to (N, n_out) in the
    last weight's dtype, differentiable in ``x`` and the weights. ``x`` may also be a sequence of (N, n_i) column
    blocks whose widths sum to n_in, the input being their concatenation (without autograd the blocks are written
    straight into the first layer's input buffer, :func:`inference_mlp`).

    Runs ``path`` (one of :data:`PATHS`), else :class:`CPUMLPFunction` in ``dtype`` when given, else the path
    :func:`cpu_mlp_path` chose for this machine; the output activation is float32 torch autograd. Activations: those
    of ``ngp_cli.nn.activations.ACTIVATION_CODES``.

    Raises:
        ConfigError: ``NGP_CPU_MLP`` holds an invalid value (only when neither ``path`` nor ``dtype`` is given).
        ValueError: ``path`` is not one of :data:`PATHS`.
    """
    if path is None and dtype is None:
        path = cpu_mlp_path().path
    if path is not None and path not in PATHS:
        raise ValueError(f"cpu_mlp: path must be one of {', '.join(PATHS)}, got {path!r}")
    if not isinstance(x, Tensor) and (path == "torch" or torch.is_grad_enabled()):
        x = torch.cat(list(x), dim=1)
    if path is not None:
        if path == "torch":
            return _torch_mlp(x, weights, activation, output_activation)
        dtype = _DTYPES[path]
    if torch.is_grad_enabled():
        out = CPUMLPFunction.apply(x, activation, dtype, *weights)
    else:
        out = inference_mlp(x, weights, activation, dtype)
    return activation_fn(output_activation)(out).to(weights[-1].dtype)


def _fused_relu_linear() -> Callable[[Tensor, Tensor], Tensor] | None:
    """oneDNN's matmul with the ReLU as a post-op (``torch.ops.mkldnn._linear_pointwise``, what torch's inductor
    emits for linear + relu on CPUs), or None where this torch build lacks it."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        probe = op(torch.ones(2, 2), torch.ones(2, 2), None, "relu", [], "")
    except (RuntimeError, NotImplementedError):
        return None
    if not torch.equal(probe, torch.full((2, 2), 2.0)):
        return None
    return lambda h, w: op(h, w, None, "relu", [], "")


_FUSED_RELU: list = []  # [the op or None], probed on first use


def bucket_rows(n: int) -> int:
    """The row count :func:`inference_mlp` pads ``n`` rows to: a multiple of ``max(1024, 2^(bit_length(n) - 4))``,
    so at most 1/8 more rows (1023 below 8192) and a few dozen distinct sizes from one row to millions."""
    grain = max(1024, 1 << max(0, n.bit_length() - 4))
    return -(-n // grain) * grain


def inference_mlp(x: Tensor | Sequence[Tensor], weights: Sequence[Tensor], activation: str,
                  dtype: torch.dtype) -> Tensor:
    """The forward pass of :class:`CPUMLPFunction` without autograd, for rendering: ``x`` (N, n_in) through the
    ``(out, in)`` weights in ``dtype`` matmuls (float32 accumulation), returning (N, n_out) float32 before the output
    activation; the same values as ``CPUMLPFunction.apply`` (the same matmuls and rounding). ``x`` may be a sequence
    of (N, n_i) column blocks, each converted into its columns of the ``dtype`` input buffer (a NeRF's colour
    network takes the density network's output and the direction encoding: no float32 concatenation first).

    * The rows are padded to :func:`bucket_rows` (zeros, dropped from the output). oneDNN builds a matmul primitive
      for every new shape, and rendering's rounds have a new sample count each time: on a 2-core Xeon with AMX, a
      64×64 bf16 layer at 30k rows took 1.93 ms per call with a new row count each call against 0.22 ms with one,
      and 0.31 ms padded to multiples of 4096.
    * A ReLU hidden layer runs as one oneDNN matmul with the ReLU as a post-op where torch has it, applied while the
      output is in cache instead of in a second pass over memory (bf16 at 100k rows: 64→64→64→16 in 2.25 ms against
      3.48 ms for matmul then ``relu_``).
    * In bf16 on a CPU with AVX-512-BF16, the networks of the tasks (64-wide ReLU hidden layers, at most 16 outputs)
      run on the fused kernel of :mod:`ngp_cli.cuda.mlp_bf16` instead: every layer of a 16-row tile in one pass, the
      same rounding (bf16 inputs, weights and activations, float32 sums), summed in another order. The points below
      are the oneDNN path's, for every other call.
    * A feature-major input (one (N, n_in) tensor whose transpose is contiguous: the hash grid's rendering layout,
      :func:`ngp_cli.cuda.hashgrid.encode` with ``feature_major``) is converted as it lies and enters the first
      matmul as a transposed operand; that layer's activation is a second pass. The same values as the row-major
      input.
    """
    blocks = [x] if isinstance(x, Tensor) else list(x)
    if mlp_bf16.supports(blocks, weights, activation, dtype):
        return mlp_bf16.fused_inference_mlp(blocks, weights)
    if not _FUSED_RELU:
        _FUSED_RELU.append(_fused_relu_linear())
    fused = _FUSED_RELU[0] if activation == "ReLU" else None
    n = blocks[0].shape[0]
    rows = bucket_rows(n)
    b0 = blocks[0]
    if len(blocks) == 1 and is_feature_major(b0):
        # A feature-major input (the hash grid's inference layout, hashgrid.encode(feature_major=True)): converted
        # as it lies, and the first layer's matmul takes it as a transposed operand (a transposing copy to rows
        # costs more than the whole layer: 3.7 ms for 131k×32 bf16). oneDNN's fused ReLU would copy it, so that
        # layer's activation is a second pass.
        ht = torch.empty(b0.shape[1], rows, dtype=dtype, device=b0.device)
        ht[:, :n] = b0.detach().t()
        ht[:, n:] = 0
        h = ht.t()
    else:
        h = torch.empty(rows, sum(b.shape[1] for b in blocks), dtype=dtype, device=b0.device)
        col = 0
        for b in blocks:
            h[:n, col:col + b.shape[1]] = b.detach()
            col += b.shape[1]
        h[n:] = 0
    wl = [w.detach().to(dtype) for w in weights]
    for w in wl[:-1]:
        if fused is not None and h.is_contiguous():
            h = fused(h, w)
        else:
            h = torch.mm(h, w.t())
            activate_(h, activation)
    return torch.mm(h, wl[-1].t())[:n].float()


# --- choosing the path by measuring ----------------------------------------------------------------------------

#: Bumped when the candidates' code changes, so results cached for the old code are measured again.
BENCH_VERSION = 1
#: The micro-benchmark's MLP (the bench's and fit-image's network) and batch.
BENCH_MLP = dict(n_in=32, n_out=16, width=64, n_hidden=2, batch=1 << 15)
_CACHE_FILE = "cpu_mlp_path.json"
# Below this share of its threads' wall time on a CPU, the measurement ran on a busy machine: with another process on
# the cores every OpenMP region waits for a time slice and the medians rank scheduling, not the paths (a 2-core VM:
# 0.98-1.01 quiet, 0.35-0.63 beside two busy processes, where bf16 came out slowest as often as fastest). Such a
# choice is used by this process but not cached.
_MIN_CPU_SHARE = 0.75
_MAX_ENTRIES = 16  # one per (CPU, torch, threads) seen with this cache directory; old ones are dropped


@dataclass(frozen=True)
class CPUMLPChoice:
    """The CPU MLP path in use: ``path`` (one of :data:`PATHS`), ``how`` it was chosen (``"measured"`` now,
    ``"cached"`` from an earlier measurement, ``"env"`` from ``NGP_CPU_MLP``), the measured medians in ms and the
    share of the measurement's thread time spent on a CPU (``cpu_share``, 1.0 on a quiet machine; both empty for
    ``"env"``)."""

    path: str
    how: str
    median_ms: dict[str, float] = field(default_factory=dict)
    cpu_share: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``{"path", "how"[, "median_ms", "cpu_share"]}``."""
        out: dict[str, Any] = {"path": self.path, "how": self.how}
        if self.median_ms:
            out["median_ms"] = dict(self.median_ms)
        if self.cpu_share is not None:
            out["cpu_share"] = self.cpu_share
        return out


def candidate_paths() -> list[str]:
    """The paths worth timing here: ``"bf16"`` only with bf16 instructions (:func:`cpu_compute_dtype`), then
    ``"fp32"`` and ``"torch"``."""
    return (["bf16"] if cpu_compute_dtype() == torch.bfloat16 else []) + ["fp32", "torch"]


def cache_key() -> str:
    """What a measurement depends on: CPU model, the ISA features that decide the paths, torch version, intra-op
    threads, and :data:`BENCH_VERSION`."""
    from ngp_cli.hardware import cpuinfo, isa_features

    return json.dumps([BENCH_VERSION, cpuinfo()[0], isa_features(), torch.__version__, torch.get_num_threads()])


def measure_paths(candidates: Sequence[str], time_once: Callable[[str], float], *, warmup: int = 1,
                  rounds: int = 7, min_rounds: int = 3, budget_s: float = 1.0) -> tuple[dict[str, float], float]:
    """Median seconds of ``time_once(path)`` per candidate: ``warmup`` untimed rounds, then up to ``rounds`` timed
    rounds that alternate the candidates (so a load change on a shared machine hits all of them), stopping after
    ``min_rounds`` once ``budget_s`` seconds of wall time have passed.

    Returns ``({path: median seconds}, cpu_share)``: the process's CPU time over the timed rounds divided by their
    wall time and torch's thread count (about 1 on a quiet machine, lower when other processes took the cores)."""
    start = time.perf_counter()
    for _ in range(warmup):
        for p in candidates:
            time_once(p)
    times: dict[str, list[float]] = {p: [] for p in candidates}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for r in range(rounds):
        for p in candidates:
            times[p].append(time_once(p))
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    share = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9) / torch.get_num_threads()
    return {p: statistics.median(t) for p, t in times.items()}, round(share, 2)


def _time_once_factory() -> Callable[[str], float]:
    """``time_once(path)``: seconds of one forward + backward of :data:`BENCH_MLP` through ``path`` (ReLU hidden
    layers, no output activation, gradients for the input and the weights, as in training)."""
    m = BENCH_MLP
    gen = torch.Generator().manual_seed(0)  # not the global RNG: measuring must not change a run's random stream
    widths = [m["n_in"]] + [m["width"]] * m["n_hidden"] + [m["n_out"]]
    weights = [(torch.rand(o, i, generator=gen) - 0.5).mul_(2 / i**0.5).requires_grad_(True)
               for i, o in zip(widths, widths[1:], strict=False)]
    x = torch.rand(m["batch"], m["n_in"], generator=gen).requires_grad_(True)
    grad = torch.ones(m["batch"], m["n_out"])

    def time_once(path: str) -> float:
        for t in (x, *weights):
            t.grad = None
        t0 = time.perf_counter()
        cpu_mlp(x, weights, "ReLU", "None", path=path).backward(grad)
        return time.perf_counter() - t0

    return time_once


def _cache_path() -> Path | None:
    try:
        from ngp_cli.cuda.runtime import kernel_cache_dir

        return kernel_cache_dir() / _CACHE_FILE
    except OSError:  # no usable cache directory (not even a fresh temporary one): measure in every process
        return None


def _read_cache(path: Path | None) -> dict[str, Any]:
    """The cache's entries; ``{}`` for a missing, unreadable or malformed file (it is rewritten after measuring)."""
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    entries = doc.get("entries") if isinstance(doc, dict) else None
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path | None, entries: dict[str, Any]) -> None:
    if path is None:
        return
    from ngp_cli.errors import OutputError
    from ngp_cli.runs import atomic_write_text

    keep = dict(list(entries.items())[-_MAX_ENTRIES:])
    try:  # temporary file + os.replace: a concurrent reader sees the old file or the new one
        atomic_write_text(path, json.dumps({"entries": keep}, indent=1) + "\n")
    except (OutputError, OSError):
        pass  # an unwritable cache only means measuring again in the next process


def _env_path() -> str | None:
    """The path ``NGP_CPU_MLP`` forces, or None for unset/empty/``auto``. Raises ConfigError for any other value."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value.lower() in ("", "auto"):
        return None
    if value.lower() not in PATHS:
        raise ConfigError(f"{ENV_VAR} must be one of auto, {', '.join(PATHS)}, got {value[:40]!r}")
    return value.lower()


def select_cpu_mlp_path(time_once: Callable[[str], float] | None = None, cache_file: Path | None = None,
                        use_cache: bool = True) -> CPUMLPChoice:
    """Choose the CPU MLP path: ``NGP_CPU_MLP`` if set (``how="env"``), else the cached result for :func:`cache_key`
    in ``cache_file`` (``"cached"``; default ``<kernel cache dir>/cpu_mlp_path.json``), else the fastest of
    :func:`candidate_paths` by :func:`measure_paths` with ``time_once`` (default: the real MLP; ``"measured"``), whose
    result is then written to the cache (atomically; an unwritable cache is skipped) unless the machine was busy
    (see :data:`_MIN_CPU_SHARE`). A cached entry naming a path that is not a candidate here, or a malformed file,
    counts as a miss. Ties go to the earlier candidate.

    Raises:
        ConfigError: ``NGP_CPU_MLP`` is not one of auto, bf16, fp32, torch.
    """
    forced = _env_path()
    if forced is not None:
        return CPUMLPChoice(forced, "env")
    candidates = candidate_paths()
    if use_cache and cache_file is None:
        cache_file = _cache_path()
    key = cache_key()
    entries = _read_cache(cache_file) if use_cache else {}
    hit = entries.get(key)
    if (isinstance(hit, dict) and hit.get("path") in candidates and isinstance(hit.get("median_ms"), dict)
            and all(isinstance(v, (int, float)) for v in hit["median_ms"].values())):
        share = hit.get("cpu_share")
        return CPUMLPChoice(hit["path"], "cached", {str(k): float(v) for k, v in hit["median_ms"].items()},
                            float(share) if isinstance(share, (int, float)) else None)
    if time_once is None:
        # Measured in its own autograd state: the first call may come from inside no_grad or inference_mode code.
        with torch.inference_mode(False), torch.enable_grad():
            medians, cpu_share = measure_paths(candidates, _time_once_factory())
    else:
        medians, cpu_share = measure_paths(candidates, time_once)
    best = min(candidates, key=lambda p: medians[p])
    median_ms = {p: round(s * 1e3, 3) for p, s in medians.items()}
    if use_cache and cpu_share >= _MIN_CPU_SHARE:
        entries.pop(key, None)  # re-inserted last: the newest entries survive the size cap
        entries[key] = {"path": best, "median_ms": median_ms, "cpu_share": cpu_share,
                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_cache(cache_file, entries)
    return CPUMLPChoice(best, "measured", median_ms, cpu_share)


# Per intra-op thread count, the one part of cache_key that can change within a process; read on every MLP call.
_chosen: dict[int, CPUMLPChoice] = {}


def cpu_mlp_path() -> CPUMLPChoice:
    """The path :func:`cpu_mlp` runs here: ``NGP_CPU_MLP`` (read on every call), else :func:`select_cpu_mlp_path`'s
    choice, made once per process and thread count (a later call reports the same ``how``).

    Raises:
        ConfigError: ``NGP_CPU_MLP`` holds an invalid value.
    """
    forced = _env_path()
    if forced is not None:
        return CPUMLPChoice(forced, "env")
    threads = torch.get_num_threads()
    choice = _chosen.get(threads)
    if choice is None:
        choice = _chosen[threads] = select_cpu_mlp_path()
    return choice

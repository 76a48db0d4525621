"""``ngp bench``: throughput of the encoding, the MLP and a full training step on every available backend.

Sizes are the paper's (§4-5): hash grid with L=16, F=2, T=2^19, N_min=16; 2-D with b=2 (N_max = 2^19, the gigapixel
scale) and 3-D with N_max=2048 (b≈1.38, the NeRF scale); a 2×64 ReLU MLP from the 32 encoded features to 16 outputs
(tcnn pads outputs to 16). Each figure is the median over ``repeats`` timed runs after ``warmup`` untimed ones, timed
with CUDA events on a GPU and ``time.perf_counter`` on the CPU.

Ceilings are measured in the same run rather than looked up: the device's copy bandwidth (a large tensor copy) and
its matmul throughput (a large float32 matmul on the CPU, float16 on a GPU). Reported fractions:

* encoding: gathered table bytes (N·L·2^D·F·4 for forward; twice that for forward+backward, whose scatter touches the
  same rows) per second over the copy bandwidth — an upper-bound model, since coarse levels stay in cache;
* MLP: 2·N·Σ(in·out) FLOPs per second (3× for training: forward, input and weight gradients) over the matmul rate.

Where both the ``torch`` and the ``cpu`` backend ran on the CPU, :func:`speed_ratios` divides the first's time by the
second's for ``mlp_training`` and ``train_step`` (the issue's targets: the cpu backend's step >= 3× the torch
backend's, its MLP training never slower), measured in the same run. ``simplex_forward`` and
``simplex_forward_backward`` time the SimplexGrid encoding (Wen & Yang 2023) at the hash grid's L, F, T and scales
(D + 1 vertices per level, so N·L·(D+1)·F·4 gathered bytes); the ratios divide the hash grid's time by the
SimplexGrid's per backend, dimension and batch (> 1: the simplex is faster). Both encodings are timed as an MLP's
input is encoded in training (:func:`ngp_cli.nn.model.encode_for_mlp`: the feature-major layout on the cpu kernels),
their gradient in the output's layout, as the MLP's backward returns it.

With ``--run RUN`` (a trained NeRF run) the bench also renders one held-out view of it per backend
(:mod:`ngp_cli.tasks.nerf.bench`): ``render_network`` (the inference path, as eval renders a view),
``render_frame`` (the same path as ``ngp render`` renders a frame, at the run's ``nerf.render_min_transmittance``),
``render_network_legacy`` (the schedule before it), ``render_network_ingp`` (instant-ngp's round lengths alone,
:func:`ngp_cli.volrend.render.round_steps` without its end-rate term) and, with ``--baked FILE``, ``render_baked``.
Their batch is the view's pixel count, so ns per element reads as milliseconds per megapixel, and the ratios add, per
backend, ``render_network`` (legacy time / network time), ``render_network_rounds`` (instant-ngp's rounds' time /
network time), ``render_frame`` (network time / frame time) and ``render_baked`` (network time / baked time).

torch is imported inside the functions, so the CLI reads :data:`BENCHMARKS` for ``ngp bench --help`` without it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ngp_cli.errors import ConfigError
from ngp_cli.machine import machine_info

if TYPE_CHECKING:
    import torch

    from ngp_cli.nn.backend import Backend

#: Measured on a trained NeRF run (``--run RUN``, ``--baked FILE``; :mod:`ngp_cli.tasks.nerf.bench`): one view's render
#: time, batch = its pixels.
RENDER_BENCHMARKS = ("render_network", "render_frame", "render_network_legacy", "render_network_ingp", "render_baked")
BENCHMARKS = ("encoding_forward", "encoding_forward_backward", "simplex_forward", "simplex_forward_backward",
              "mlp_inference", "mlp_training", "train_step", *RENDER_BENCHMARKS)
#: The grid encodings measured: benchmark-name prefix -> encoding class name (ngp_cli.nn.encodings), at the same
#: L, F, T and level scales; "simplex" is the SimplexGrid (D + 1 vertices per level instead of 2^D).
ENCODINGS = {"encoding": "HashGridEncoding", "simplex": "SimplexGridEncoding"}
RATIO_BENCHMARKS = ("mlp_training", "train_step")  # compared between the cpu and the torch backend
#: SimplexGrid against HashGrid per backend, dims and batch, in the same run: (ratio name, hash grid, simplex).
ENCODING_RATIOS = (("simplex_forward", "encoding_forward", "simplex_forward"),
                   ("simplex_forward_backward", "encoding_forward_backward", "simplex_forward_backward"))
#: Render speed-ups per backend, in the same run: (name, slower benchmark, faster benchmark).
RENDER_RATIOS = (("render_network", "render_network_legacy", "render_network"),
                 ("render_network_rounds", "render_network_ingp", "render_network"),
                 ("render_frame", "render_network", "render_frame"),
                 ("render_baked", "render_network", "render_baked"))
GRID = dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16)
PER_LEVEL_SCALE = {2: 2.0, 3: math.exp(math.log(2048 / 16) / 15)}
MLP = dict(n_input_dims=32, n_output_dims=16, n_neurons=64, n_hidden_layers=2)


@dataclass
class Result:
    """One measurement (a JSON line on stdout)."""

    backend: str
    device: str
    benchmark: str
    batch: int
    median_s: float
    elements_per_s: float
    ns_per_element: float
    dims: int | None = None
    ceiling: str | None = None
    ceiling_fraction: float | None = None
    runs_s: list[float] = field(default_factory=list)


def available_backends(device_type: str | None = None) -> list[Backend]:
    """Backends that can run here: torch on the CPU, torch on the GPU, cpu kernels, cuda kernels."""
    import torch

    from ngp_cli.nn.backend import Backend, cpu_kernels_available, cuda_available, cuda_kernels_available

    out = [Backend("torch", torch.device("cpu"))]
    if cpu_kernels_available():
        out.append(Backend("cpu", torch.device("cpu")))
    if cuda_available():
        out.append(Backend("torch", torch.device("cuda")))
        if cuda_kernels_available():
            out.append(Backend("cuda", torch.device("cuda")))
    if device_type is not None:
        out = [b for b in out if b.device.type == device_type]
    return out


def _timer(device: torch.device, fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def measure_ceilings(device: torch.device, warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """Copy bandwidth (bytes/s, read + write) and matmul rate (FLOP/s) of ``device``, measured now."""
    import torch

    n = (1 << 26) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_s = statistics.median(_timer(device, lambda: dst.copy_(src), warmup, repeats))
    m = 8192 if device.type == "cuda" else 1024
    # The fastest matmul dtype the MLP paths use: fp16 tensor cores on a GPU; float32 or bf16 on a CPU.
    rates = []
    for dtype in ((torch.float16,) if device.type == "cuda" else (torch.float32, torch.bfloat16)):
        a = torch.randn(m, m, device=device, dtype=dtype)
        b = torch.randn(m, m, device=device, dtype=dtype)
        mm_s = statistics.median(_timer(device, lambda a=a, b=b: a @ b, warmup, repeats))
        rates.append(2 * m**3 / mm_s)
    return {"copy_bytes_per_s": 2 * n * 4 / copy_s, "matmul_flops_per_s": max(rates)}


def _make_encoding(backend: Backend, dims: int, kind: str = "encoding"):
    import torch

    from ngp_cli.nn import encodings

    cls = getattr(encodings, ENCODINGS[kind])
    enc = cls(dims, per_level_scale=PER_LEVEL_SCALE[dims], **GRID,
              generator=torch.Generator().manual_seed(0)).to(backend.device)
    enc.kernel_target = backend.kernel_target
    return enc


def _make_mlp(backend: Backend):
    import torch

    from ngp_cli.nn.mlp import FullyFusedMLP

    mlp = FullyFusedMLP(**MLP, generator=torch.Generator().manual_seed(0)).to(backend.device)
    mlp.kernel_target = backend.kernel_target
    return mlp


def _mlp_flops() -> int:
    widths = [MLP["n_input_dims"]] + [MLP["n_neurons"]] * MLP["n_hidden_layers"] + [MLP["n_output_dims"]]
    return 2 * sum(a * b for a, b in zip(widths, widths[1:], strict=False))


def run_benchmarks(backends: list[Backend], batches: list[int], dims: list[int], which: list[str], *,
                   warmup: int = 2, repeats: int = 5, step_fn: Callable | None = None,
                   render_fn: Callable | None = None,
                   on_result: Callable[[Result], None] | None = None) -> tuple[list[Result], dict[str, Any]]:
    """Run ``which`` benchmarks for every backend × batch (× dims for the encoding).

    ``step_fn(backend, batch) -> callable`` builds one full training step (the fit-image task provides it).
    ``render_fn(backend) -> (device, [(name, pixels, callable), ...])`` builds the render benchmarks of a trained run
    (the run's task provides them); they are measured once per backend, not per batch.
    Returns the results and the measured ceilings per device. Raises ConfigError for an unknown benchmark name.
    """
    import torch

    from ngp_cli.nn.model import encode_for_mlp

    unknown = sorted(set(which) - set(BENCHMARKS))
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    ceilings: dict[str, dict[str, float]] = {}
    results: list[Result] = []
    if any(b.device.type == "cpu" for b in backends):
        from ngp_cli.allocator import tune_cpu_allocator

        tune_cpu_allocator()  # as the training loop does on a CPU (NGP_NO_MALLOPT=1 opts out)

    def record(backend: Backend, name: str, batch: int, times: list[float], dims_: int | None = None,
               work: float | None = None, ceiling_key: str | None = None) -> None:
        med = statistics.median(times)
        frac = None
        if work is not None and ceiling_key is not None:
            frac = work / med / ceilings[str(backend.device)][ceiling_key]
        res = Result(backend=backend.name, device=str(backend.device), benchmark=name, batch=batch, median_s=med,
                     elements_per_s=batch / med, ns_per_element=med / batch * 1e9, dims=dims_,
                     ceiling=ceiling_key, ceiling_fraction=frac, runs_s=[round(t, 6) for t in times])
        results.append(res)
        if on_result is not None:
            on_result(res)

    for backend in backends:
        dev = backend.device
        if str(dev) not in ceilings:
            ceilings[str(dev)] = measure_ceilings(dev)
        gen = torch.Generator(device=dev).manual_seed(1)
        for batch in batches:
            for d in dims:
                x = torch.rand(batch, d, device=dev, generator=gen)
                for kind in ENCODINGS:
                    if not {f"{kind}_forward", f"{kind}_forward_backward"} & set(which):
                        continue
                    enc = _make_encoding(backend, d, kind)
                    vertices = d + 1 if kind == "simplex" else 1 << d
                    gathered = batch * GRID["n_levels"] * vertices * GRID["n_features_per_level"] * 4
                    if f"{kind}_forward" in which:
                        with torch.no_grad():
                            times = _timer(dev, lambda enc=enc, x=x: encode_for_mlp(enc, x), warmup, repeats)
                        record(backend, f"{kind}_forward", batch, times, d, gathered, "copy_bytes_per_s")
                    if f"{kind}_forward_backward" in which:
                        def fb(enc=enc, x=x):
                            enc.params.grad = None
                            y = encode_for_mlp(enc, x)  # the layout an MLP's input takes on this backend
                            y.backward(torch.ones_like(y))  # dL/dy in y's layout, as the MLP's backward gives it
                        times = _timer(dev, fb, warmup, repeats)
                        record(backend, f"{kind}_forward_backward", batch, times, d, 2 * gathered,
                               "copy_bytes_per_s")
                    del enc
                del x
            if {"mlp_inference", "mlp_training"} & set(which):
                mlp = _make_mlp(backend)
                h = torch.rand(batch, MLP["n_input_dims"], device=dev, generator=gen)
                if "mlp_inference" in which:
                    with torch.no_grad():
                        times = _timer(dev, lambda mlp=mlp, h=h: mlp(h), warmup, repeats)
                    record(backend, "mlp_inference", batch, times, None, batch * _mlp_flops(), "matmul_flops_per_s")
                if "mlp_training" in which:
                    hg = h.clone().requires_grad_(True)

                    def train(mlp=mlp, hg=hg):
                        mlp.zero_grad(set_to_none=True)
                        hg.grad = None
                        y = mlp(hg)
                        y.backward(torch.ones_like(y))
                    times = _timer(dev, train, warmup, repeats)
                    record(backend, "mlp_training", batch, times, None, 3 * batch * _mlp_flops(),
                           "matmul_flops_per_s")
                del mlp, h
            if "train_step" in which and step_fn is not None:
                step = step_fn(backend, batch)
                times = _timer(dev, step, warmup, repeats)
                record(backend, "train_step", batch, times)
        if render_fn is not None and set(RENDER_BENCHMARKS) & set(which):
            render_dev, renders = render_fn(backend)
            for name, pixels, fn in renders:
                record(backend, name, pixels, _timer(render_dev, fn, warmup, repeats))
    return results, ceilings


def as_dict(result: Result) -> dict[str, Any]:
    return asdict(result)


def speed_ratios(results: list[Result]) -> dict[str, dict[str, float]]:
    """``{benchmark: {str(batch): torch-backend median / cpu-backend median}}`` for :data:`RATIO_BENCHMARKS`, both
    on the CPU, for every batch where both were measured (so > 1 means the cpu backend is faster); and for the render
    benchmarks ``{name: {"backend@device": slower median / faster median}}`` per :data:`RENDER_RATIOS` (> 1: the
    newer path is faster); and ``{"simplex_forward[_backward]": {"backend@device D-D batch": hash grid median /
    SimplexGrid median}}``. Rounded to 3 decimals; benchmarks without a pair are left out."""
    torch_s = {(r.benchmark, r.batch): r.median_s for r in results if r.backend == "torch" and r.device == "cpu"}
    ratios: dict[str, dict[str, float]] = {}
    for r in results:
        t = torch_s.get((r.benchmark, r.batch))
        if r.benchmark in RATIO_BENCHMARKS and r.backend == "cpu" and t is not None and r.median_s > 0:
            ratios.setdefault(r.benchmark, {})[str(r.batch)] = round(t / r.median_s, 3)
    by_backend = {(r.benchmark, r.backend, r.device): r.median_s for r in results if r.benchmark in RENDER_BENCHMARKS}
    for name, slow, fast in RENDER_RATIOS:
        for (bench, backend, device), fast_s in by_backend.items():
            slow_s = by_backend.get((slow, backend, device))
            if bench == fast and slow_s is not None and fast_s > 0:
                ratios.setdefault(name, {})[f"{backend}@{device}"] = round(slow_s / fast_s, 3)
    by_grid = {(r.benchmark, r.backend, r.device, r.dims, r.batch): r.median_s for r in results}
    for name, grid, simplex in ENCODING_RATIOS:
        for (bench, backend, device, dims, batch), simplex_s in by_grid.items():
            grid_s = by_grid.get((grid, backend, device, dims, batch))
            if bench == simplex and grid_s is not None and simplex_s > 0:
                ratios.setdefault(name, {})[f"{backend}@{device} {dims}-D {batch}"] = round(grid_s / simplex_s, 3)
    return ratios


def _render_fn(tasks: dict, which: list[str], only: list[str] | None, run: Path | None,
               baked: Path | None, data: Path | None = None) -> Callable | None:
    """The render benchmarks' builder for :func:`run_benchmarks` (None when there is no ``run``), after checking the
    options (see :func:`run_bench`)."""
    from ngp_cli.errors import DataError, UsageError
    from ngp_cli.runs import RunDir

    asked = [w for w in (only or []) if w in RENDER_BENCHMARKS]
    if run is None:
        if asked:
            raise UsageError(f"--only {asked[0]} measures a trained NeRF run: give --run RUN")
        if baked is not None:
            raise UsageError("--baked needs --run RUN (the run the file was baked from)")
        if data is not None:
            raise UsageError("--data needs --run RUN (it gives that run's dataset)")
        return None
    if "render_baked" in asked and baked is None:
        raise UsageError("--only render_baked needs --baked FILE (made by 'ngp bake RUN')")
    if baked is not None and not Path(baked).is_file():
        raise DataError(f"--baked {baked}: no such file")
    task_name = RunDir.open(run).read_config().get("task")
    task = tasks.get(task_name)
    if task is None or not hasattr(task, "benchmark_renders"):
        raise UsageError(f"--run {run}: '{task_name}' runs have no render benchmarks (NeRF runs have)")
    wanted = [w for w in which if w in RENDER_BENCHMARKS]
    return lambda backend: task.benchmark_renders(run, backend.name, wanted, baked, data)


def _batch_label(batch: int) -> str:
    return f"2^{int(math.log2(batch))}" if batch & (batch - 1) == 0 else str(batch)


def run_bench(tasks: dict, backend_names: list[str] | None, batches: list[int] | None, dims: list[int] | None,
              only: list[str] | None, repeats: int, warmup: int, out: Path | None, run: Path | None = None,
              baked: Path | None = None, data: Path | None = None) -> None:
    """The ``ngp bench`` command body: JSON lines on stdout, a rich table on stderr, optionally the JSON file ``out``.
    ``run`` (a trained run whose task offers render benchmarks) adds them; ``baked`` adds ``render_baked``; ``data``
    (``--data``) gives the run's dataset where it has moved, as for ``ngp eval``.

    Raises ConfigError (unknown backend/benchmark, a backend not available here, an invalid ``NGP_CPU_MLP`` when the
    cpu backend runs), NoGPUError (``cuda`` asked for without a GPU), UsageError (bad batch or dims; a render
    benchmark asked for with ``--only`` but no ``--run``, ``render_baked`` without ``--baked``, ``--baked`` or
    ``--data`` without ``--run``, a run whose task has no render benchmarks), DataError (not a run), OutputError
    (``out`` is a folder or in a missing one, checked before anything is measured; or cannot be written).
    """
    from rich.table import Table

    from ngp_cli.console import emit, info, is_quiet, stderr_console
    from ngp_cli.errors import NoGPUError, OutputError, UsageError
    from ngp_cli.nn.backend import cuda_available
    from ngp_cli.runs import atomic_write_text

    if out is not None:  # minutes of measurements must not end in "cannot write"
        out = Path(out).expanduser()
        if out.is_dir():
            raise OutputError(f"--out {out}: is a directory, expected a JSON file path")
        if not out.parent.is_dir():
            raise OutputError(f"--out {out}: folder {out.parent} does not exist")
    backends = available_backends()
    if backend_names:
        for name in backend_names:
            if name not in ("torch", "cpu", "cuda"):
                raise ConfigError(f"--backend must be torch, cpu or cuda, got '{name}'")
            if name == "cuda" and not cuda_available():
                raise NoGPUError("--backend cuda needs an NVIDIA GPU, and none is usable")
            if not any(b.name == name for b in backends):
                raise ConfigError(f"backend '{name}' is not available here (available: "
                                  f"{', '.join(sorted({b.name for b in backends}))})")
        backends = [b for b in backends if b.name in backend_names]
    gpu = any(b.device.type == "cuda" for b in backends)
    if not batches:
        batches = [1 << 16, 1 << 18, 1 << 20, 1 << 21] if gpu else [1 << 14, 1 << 16]
    if any(b < 1 for b in batches):
        raise UsageError(f"--batch must be positive, got {batches}")
    dims = dims or [2, 3]
    if any(d not in (2, 3) for d in dims):
        raise UsageError(f"--dims must be 2 or 3, got {dims}")
    which = list(only or BENCHMARKS)

    step_fns = [t.benchmark_step for t in tasks.values() if hasattr(t, "benchmark_step")]
    step_fn = step_fns[0] if step_fns else None
    render_fn = _render_fn(tasks, which, only, run, baked, data)
    if render_fn is None:
        which = [w for w in which if w not in RENDER_BENCHMARKS]
    elif baked is None:
        which = [w for w in which if w != "render_baked"]
    if any(b.name == "cpu" for b in backends):
        from ngp_cli.cuda.cpu_mlp import cpu_mlp_path

        cpu_mlp_path()  # refuses an invalid NGP_CPU_MLP before measuring (machine_info only records it)
    machine = machine_info()
    info(f"ngp bench on {machine['cpu']} ({machine['threads']} threads)"
         + (f", {machine['gpu']}" if "gpu" in machine else "")
         + f": {', '.join(f'{b.name}@{b.device}' for b in backends)}")

    def on_result(res: Result) -> None:
        emit("bench", **{k: v for k, v in as_dict(res).items() if k != "runs_s"})

    results, ceilings = run_benchmarks(backends, batches, dims, which, warmup=warmup, repeats=repeats,
                                       step_fn=step_fn, render_fn=render_fn, on_result=on_result)
    table = Table("benchmark", "D", "batch", "backend", "device", "median ms", "Melem/s", "ns/elem",
                  "ceiling %", title="ngp bench")
    for r in results:
        table.add_row(r.benchmark, str(r.dims or ""), _batch_label(r.batch), r.backend, r.device,
                      f"{r.median_s * 1e3:.2f}", f"{r.elements_per_s / 1e6:.2f}",
                      f"{r.ns_per_element:.1f}",
                      "" if r.ceiling_fraction is None else f"{100 * r.ceiling_fraction:.1f}")
    console = stderr_console()
    if not console.is_terminal:
        console.width = max(console.width, 120)  # a log file gets whole names, not ellipses
    ratios = speed_ratios(results)
    if not is_quiet():  # the table repeats the JSON lines for humans
        console.print(table)
        backend_ratios = {k: v for k, v in ratios.items() if k in RATIO_BENCHMARKS}
        if backend_ratios:
            info("cpu backend speed-up over torch (torch time / cpu time, this run): " + "; ".join(
                f"{name} {_batch_label(int(b))} {x:.2f}x" for name, per in backend_ratios.items()
                for b, x in per.items()))
        render_ratios = {k: v for k, v in ratios.items() if k not in RATIO_BENCHMARKS}
        if render_ratios:
            info("render speed-ups (this run): " + "; ".join(
                f"{fast} over {slow} on {b} {render_ratios[name][b]:.2f}x" for name, slow, fast in RENDER_RATIOS
                if name in render_ratios for b in render_ratios[name]))
    doc = {"machine": machine, "ceilings": ceilings, "sizes": {"grid": GRID, "per_level_scale": PER_LEVEL_SCALE,
                                                               "mlp": MLP},
           "repeats": repeats, "warmup": warmup, "ratios": ratios, "results": [as_dict(r) for r in results]}
    if out is not None:
        import json

        try:
            atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    emit("done", n_results=len(results), output=str(out) if out else None, ratios=ratios, machine=machine)

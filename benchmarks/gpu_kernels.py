"""Per-kernel timings of ngp's CUDA kernels, and the GPU session's probe, checks and report.

Used by ``benchmarks/gpu_session.sh`` (one subcommand per step), and runnable alone::

    python benchmarks/gpu_kernels.py probe                  # is there a usable GPU? (exit 5 with one line if not)
    python benchmarks/gpu_kernels.py info --out info.json   # driver, NVRTC, CUDA include dirs, GPU name, clocks
    python benchmarks/gpu_kernels.py check                  # hash grid + fused MLP on the cuda target vs torch
    python benchmarks/gpu_kernels.py time --out DIR         # kernels.json + kernels.md (CUDA events)
    python benchmarks/gpu_kernels.py time --device cpu --log2-sizes 10 12 --out DIR   # the same on the cpu target
    python benchmarks/gpu_kernels.py report WORK_DIR OUT_DIR  # session.json + summary.md from a session's steps

``time`` measures, per size N (default 2^18 and 2^21 elements): the hash-grid forward and its backward to the table
(3-D, ``ngp bench``'s grid: L=16, F=2, T=2^19, N_min=16, N_max=2048, float32 table; element = point), the fused MLP
forward and backward (``ngp bench``'s 2×64 ReLU MLP, 32 inputs, 16 outputs; element = row), occupancy-grid ray
marching (element = ray, at most 64 samples each, through a sphere of occupied cells), compositing forward and
backward (element = sample, 64 per ray), and one Adam step (:class:`ngp_cli.nn.optim.Adam`, a hash-table group:
per-element step counts, half the gradients zero; element = parameter). Each figure is the median of ``--repeats``
runs after ``--warmup``, timed with CUDA events on a GPU and ``time.perf_counter`` on the CPU
(:func:`ngp_cli.bench._timer`, the timer of ``ngp bench``). On the CPU the MLP entries time what the cpu backend
runs (:func:`ngp_cli.cuda.fused_mlp.cpu_mlp`), not the emulated fused kernel.

Exit codes: 0 success, 1 a failed check or an internal error, 2 bad arguments, 5 no usable GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout that is not installed
    sys.path.insert(0, str(REPO))

NO_GPU = 5  # ngp's own "no GPU" exit code (ngp_cli/errors.py)
KERNELS = ("hashgrid_forward", "hashgrid_backward", "fused_mlp_forward", "fused_mlp_backward", "march_rays",
           "composite_forward", "composite_backward", "adam_step")
UNITS = {"hashgrid_forward": "point", "hashgrid_backward": "point", "fused_mlp_forward": "row",
         "fused_mlp_backward": "row", "march_rays": "ray", "composite_forward": "sample",
         "composite_backward": "sample", "adam_step": "parameter"}
# tiny-cuda-nn / instant-ngp per-kernel figures (ns per element) with where each comes from. None is filled in: the
# only per-kernel throughput they publish is tiny-cuda-nn README's fully fused MLP plot (RTX 3090, 64 and 128 neurons,
# benchmarks/bench_ours.cu with data/config_oneblob.json), a curve without printed numbers; the instant-ngp paper
# gives whole-task times only. The markdown leaves the column empty rather than quote numbers read off a plot.
TCNN_PUBLISHED: dict[str, tuple[float, str]] = {}
GRID = dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16,
            per_level_scale=math.exp(math.log(2048 / 16) / 15))
MLP = dict(n_input_dims=32, n_output_dims=16, n_neurons=64, n_hidden_layers=2)
SAMPLES_PER_RAY = 64


def _fail(code: int, message: str) -> int:
    print(f"gpu_kernels: {message}", file=sys.stderr)
    return code


# ---- probe -------------------------------------------------------------------------------------------------------


def probe() -> int:
    """Exit 0 when torch sees a GPU and CuPy compiles and launches a kernel on it; else one line and exit 5.
    Imports nothing of ngp, so a broken checkout cannot be mistaken for a missing GPU."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means "no usable GPU stack"
        return _fail(NO_GPU, f"no usable GPU: torch does not import ({type(exc).__name__}: {exc})")
    if not torch.cuda.is_available():
        return _fail(NO_GPU, f"no usable GPU: torch.cuda.is_available() is False (torch {torch.__version__})")
    try:
        import cupy

        kernel = cupy.RawKernel(r'extern "C" __global__ void ngp_session_probe(float* x) '
                                r'{ x[threadIdx.x] = 2.0f * threadIdx.x; }', "ngp_session_probe")
        x = cupy.zeros(32, dtype=cupy.float32)
        kernel((1,), (32,), (x,))
        cupy.cuda.runtime.deviceSynchronize()
        if float(x[31].get()) != 62.0:
            return _fail(NO_GPU, "no usable GPU: a CuPy probe kernel ran but wrote wrong values")
    except Exception as exc:  # noqa: BLE001 - no CuPy, no NVRTC, no driver: all "unusable"
        return _fail(NO_GPU, f"no usable GPU: a CuPy kernel launch failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})")
    print(f"gpu_kernels: GPU usable: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"CuPy {cupy.__version__}")
    return 0


# ---- info --------------------------------------------------------------------------------------------------------


def _nvidia_smi(query: str) -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [v.strip() for v in out.splitlines()[0].split(",")] if out.strip() else []


def info() -> dict:
    """The environment the session's figures come from: driver, CUDA/NVRTC, include dirs, GPU and clocks."""
    import platform

    import torch

    from ngp_cli.cuda import nvrtc, runtime
    from ngp_cli.machine import machine_info

    doc: dict = {"machine": machine_info(), "python": sys.executable, "platform": platform.platform()}
    fields = ("driver_version", "name", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
              "memory.total", "power.limit")
    values = _nvidia_smi(",".join(fields))
    doc["nvidia_smi"] = dict(zip(fields, values, strict=False))
    doc["torch_cuda"] = torch.version.cuda
    nv = runtime.nvrtc_version()
    doc["nvrtc_version"] = None if nv is None else f"{nv[0]}.{nv[1]}"
    # The header set the cuda target compiles with (private on purpose: it is the runtime's choice, shown as is).
    doc["cuda_include_dirs"] = nvrtc._cuda_include_dirs()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        doc["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "multiprocessors": props.multi_processor_count,
                      "memory_gib": round(props.total_memory / 2**30, 1)}
    try:
        import cupy

        doc["cupy"] = cupy.__version__
    except ImportError:
        doc["cupy"] = None
    return doc


# ---- check -------------------------------------------------------------------------------------------------------


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(n: int, which: tuple[str, ...], device: str) -> int:
    """Compile and launch the hash-grid and fused-MLP kernels on ``device``'s target for ``n`` points (forward and
    backward) and compare them with the torch references on the CPU; exit 1 with one line per mismatch."""
    import torch

    from ngp_cli.cuda.fused_mlp import fused_mlp
    from ngp_cli.cuda.hashgrid import encode
    from ngp_cli.nn.encodings import HashGridEncoding
    from ngp_cli.nn.mlp import FullyFusedMLP

    target = "cuda" if device == "cuda" else "cpu"
    gen = torch.Generator().manual_seed(0)
    problems: list[str] = []
    if "hashgrid" in which:
        enc = HashGridEncoding(3, **GRID, generator=gen)
        x = torch.rand(n, 3, generator=gen)
        g = torch.randn(n, enc.n_output_dims, generator=gen)
        ref = enc(x)
        (ref_grad,) = torch.autograd.grad(ref, enc.params, g)
        params = enc.params.detach().to(device).requires_grad_(True)
        t0 = time.perf_counter()
        out = encode(x.to(device), params, enc.levels, "Linear", target)
        (grad,) = torch.autograd.grad(out, params, g.to(device))
        err_out, err_grad = _rel(out.cpu(), ref), _rel(grad.cpu(), ref_grad)
        print(f"check hashgrid ({target}, 2^{int(math.log2(n))} points, compile+run {time.perf_counter() - t0:.1f} s):"
              f" forward rel. error {err_out:.2e}, table gradient {err_grad:.2e}")
        if not (err_out < 1e-5 and err_grad < 1e-4):
            problems.append(f"hash grid on the {target} target differs from the torch reference "
                            f"(forward {err_out:.2e}, gradient {err_grad:.2e})")
    if "mlp" in which:
        ref_mlp = FullyFusedMLP(**MLP, generator=gen)
        with torch.no_grad():  # fp16-representable weights and inputs: the kernel's operands are fp16
            for w in ref_mlp.weights:
                w.copy_(w.half().float())
        x = torch.rand(n, MLP["n_input_dims"], generator=gen).half().float()
        g = torch.randn(n, MLP["n_output_dims"], generator=gen) / n
        ref = ref_mlp(x)
        ref_grads = torch.autograd.grad(ref, list(ref_mlp.weights), g)
        weights = [w.detach().to(device).requires_grad_(True) for w in ref_mlp.weights]
        t0 = time.perf_counter()
        out = fused_mlp(x.to(device), weights, "ReLU", "None", target=target)
        grads = torch.autograd.grad(out, weights, g.to(device))
        err_out = _rel(out.cpu(), ref)
        err_grad = max(_rel(a.cpu(), b) for a, b in zip(grads, ref_grads, strict=True))
        print(f"check fused MLP ({target}, 2^{int(math.log2(n))} rows, compile+run {time.perf_counter() - t0:.1f} s): "
              f"forward rel. error {err_out:.2e}, weight gradients {err_grad:.2e} (fp16 operands)")
        # Loose on purpose (tests/cuda/test_fused_mlp.py holds the tight ones): ReLU units near zero flip under the
        # fp16 rounding of hidden activations, which moves weight gradients by percents; a broken build is off by O(1).
        if not (err_out < 3e-3 and err_grad < 0.1):
            problems.append(f"fused MLP on the {target} target differs from the torch reference "
                            f"(forward {err_out:.2e}, gradients {err_grad:.2e})")
    for p in problems:
        print(f"gpu_kernels: CHECK FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


# ---- time --------------------------------------------------------------------------------------------------------


def _occupancy(device):
    """One cascade of occupancy bits: the cells inside a sphere of radius 0.25 around the centre."""
    import torch

    from ngp_cli.volrend.constants import GRID_SIZE

    u = ((torch.arange(GRID_SIZE, device=device) + 0.5) / GRID_SIZE - 0.5) ** 2
    return ((u[None, None, :] + u[None, :, None] + u[:, None, None]).reshape(-1) < 0.0625).to(torch.uint8)


def _rays(n: int, gen, device):
    """Rays from a sphere of radius 1.5 around the box centre, aimed at random points of the box."""
    import torch

    o = torch.randn(n, 3, generator=gen)
    o = 0.5 + o / o.norm(dim=1, keepdim=True) * 1.5
    d = torch.rand(n, 3, generator=gen) - o
    return o.to(device), (d / d.norm(dim=1, keepdim=True)).to(device)


def time_kernels(device: str, log2_sizes: list[int], warmup: int, repeats: int, only: list[str]) -> list[dict]:
    """The timings described in the module docstring, one dict per (kernel, size): ``kernel``, ``n``, ``unit``,
    ``median_s``, ``ns_per_element``, ``runs_s``, ``impl`` (what ran) and kernel-specific details."""
    import torch

    from ngp_cli.bench import _timer
    from ngp_cli.cuda import nerf
    from ngp_cli.cuda.fused_mlp import mlp_forward
    from ngp_cli.cuda.hashgrid import encode
    from ngp_cli.nn.encodings import HashGridEncoding
    from ngp_cli.nn.mlp import FullyFusedMLP
    from ngp_cli.nn.optim import Adam
    from ngp_cli.volrend.constants import MIN_CONE_STEPSIZE

    dev = torch.device(device)
    target = "cuda" if dev.type == "cuda" else "cpu"
    gen = torch.Generator().manual_seed(0)
    results: list[dict] = []

    def record(kernel: str, n: int, fn, impl: str, **extra) -> None:
        if kernel not in only:
            return
        times = _timer(dev, fn, warmup, repeats)
        med = statistics.median(times)
        row = {"kernel": kernel, "n": n, "log2_n": int(math.log2(n)), "unit": UNITS[kernel], "median_s": med,
               "ns_per_element": med / n * 1e9, "impl": impl, "runs_s": [round(t, 7) for t in times], **extra}
        published = TCNN_PUBLISHED.get(kernel)
        row["tcnn_ns_per_element"], row["tcnn_source"] = published if published else (None, None)
        results.append(row)
        print(f"time {kernel:<20} 2^{row['log2_n']:<3} {med * 1e3:9.3f} ms {row['ns_per_element']:9.3f} "
              f"ns/{UNITS[kernel]}  ({impl})", flush=True)

    enc = HashGridEncoding(3, **GRID, generator=gen)
    params = enc.params.detach().to(dev).requires_grad_(True)
    ref_mlp = FullyFusedMLP(**MLP, generator=gen)
    weights = [w.detach().to(dev).requires_grad_(True) for w in ref_mlp.weights]
    mlp_impl = "fused_mlp.cu" if target == "cuda" else "cpu_mlp (torch matmuls, the cpu backend's MLP path)"
    occupancy = _occupancy(dev)
    for log2_n in log2_sizes:
        n = 1 << log2_n
        x = torch.rand(n, 3, generator=gen).to(dev)
        with torch.no_grad():
            record("hashgrid_forward", n, lambda x=x: encode(x, params, enc.levels, "Linear", target), "hashgrid.cu")
        if "hashgrid_backward" in only:
            y = encode(x, params, enc.levels, "Linear", target)
            g = torch.randn(y.shape, generator=gen).to(dev)
            record("hashgrid_backward", n, lambda y=y, g=g: torch.autograd.grad(y, params, g, retain_graph=True),
                   "hashgrid.cu (table gradient, zeroed table included)")
            del y, g
        del x
        h = torch.rand(n, MLP["n_input_dims"], generator=gen).to(dev)
        with torch.no_grad():
            record("fused_mlp_forward", n, lambda h=h: mlp_forward(h, weights, "ReLU", "None", target), mlp_impl)
        if "fused_mlp_backward" in only:
            hg = h.clone().requires_grad_(True)
            y = mlp_forward(hg, weights, "ReLU", "None", target)
            g = torch.randn(y.shape, generator=gen).to(dev) / n
            record("fused_mlp_backward", n,
                   lambda y=y, g=g, hg=hg: torch.autograd.grad(y, [hg, *weights], g, retain_graph=True),
                   mlp_impl + " (input and weight gradients)")
            del hg, y, g
        del h
        if "march_rays" in only:
            o, d = _rays(n, gen, dev)
            out = nerf.march_rays(o, d, occupancy, 1, cone_angle=0.0, near_distance=0.0, max_samples=SAMPLES_PER_RAY,
                                  target=target)
            record("march_rays", n, lambda o=o, d=d: nerf.march_rays(o, d, occupancy, 1, cone_angle=0.0,
                                                                     near_distance=0.0, max_samples=SAMPLES_PER_RAY,
                                                                     target=target),
                   "nerf.cu (march_rays_count + march_rays_write)",
                   samples_per_ray=round(float(out[3][-1]) / n, 2), max_samples=SAMPLES_PER_RAY)
            del o, d, out
        if {"composite_forward", "composite_backward"} & set(only):
            n_rays = max(1, n // SAMPLES_PER_RAY)
            offsets = (torch.arange(n_rays + 1, dtype=torch.int64) * SAMPLES_PER_RAY).to(dev)
            s = n_rays * SAMPLES_PER_RAY
            # Half the rays dense enough to terminate early, as surfaces do.
            sigma = (torch.rand(s, generator=gen) * 20 + (torch.arange(s) // SAMPLES_PER_RAY % 2) * 500).to(dev)
            rgb, dts = torch.rand(s, 3, generator=gen).to(dev), torch.full((s,), MIN_CONE_STEPSIZE, device=dev)
            with torch.no_grad():
                record("composite_forward", s,
                       lambda sigma=sigma, rgb=rgb, dts=dts, offsets=offsets: nerf.composite(sigma, rgb, dts, offsets,
                                                                                             target),
                       "nerf.cu (composite_forward)", samples_per_ray=SAMPLES_PER_RAY)
            if "composite_backward" in only:
                sg, cg = sigma.clone().requires_grad_(True), rgb.clone().requires_grad_(True)
                colour, opacity = nerf.composite(sg, cg, dts, offsets, target)
                grads = (torch.randn(colour.shape, generator=gen).to(dev),
                         torch.randn(opacity.shape, generator=gen).to(dev))
                record("composite_backward", s,
                       lambda outs=(colour, opacity), ins=(sg, cg), grads=grads: torch.autograd.grad(
                           outs, ins, grads, retain_graph=True),
                       "nerf.cu (composite_backward)", samples_per_ray=SAMPLES_PER_RAY)
                del sg, cg, colour, opacity, grads
            del sigma, rgb, dts, offsets
        if "adam_step" in only:
            p = torch.nn.Parameter(torch.randn(n, generator=gen).to(dev))
            p.grad = (torch.randn(n, generator=gen) * (torch.rand(n, generator=gen) < 0.5)).to(dev)
            opt = Adam([{"params": [p], "skip_zero_grad": True}], lr=1e-2, target=target)
            record("adam_step", n, opt.step, "adam.cu through ngp_cli.nn.optim.Adam (per-element steps)")
            del p, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return results


def kernels_markdown(doc: dict) -> str:
    """The timings of :func:`time_kernels` as a markdown table beside tiny-cuda-nn's published figures."""
    m = doc["machine"]
    lines = [f"# Kernel timings ({doc['device']}: {m.get('gpu') or m.get('cpu')})", "",
             f"`python benchmarks/gpu_kernels.py time --device {doc['device']}`; median of {doc['repeats']} runs after "
             f"{doc['warmup']} warm-up runs, timed with {doc['timer']}; torch {m.get('torch')}"
             + (f", CuPy {m['cupy']}" if m.get("cupy") else "") + ". Sizes: " + ", ".join(
                 f"2^{k}" for k in doc["log2_sizes"]) + ".", "",
             "| kernel | N | element | median ms | ns / element | tiny-cuda-nn ns / element | what ran |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in doc["results"]:
        tcnn = "" if r["tcnn_ns_per_element"] is None else f"{r['tcnn_ns_per_element']:.3f} ({r['tcnn_source']})"
        lines.append(f"| {r['kernel']} | 2^{r['log2_n']} | {r['unit']} | {r['median_s'] * 1e3:.3f} | "
                     f"{r['ns_per_element']:.3f} | {tcnn} | {r['impl']} |")
    lines += ["", "The tiny-cuda-nn column is empty where no per-kernel figure is published that could be cited: its "
              "README shows the fully fused MLP's throughput only as a plot (RTX 3090), and the instant-ngp paper "
              "gives whole-task times.", ""]
    return "\n".join(lines)


def run_time(args) -> int:
    """``time``: kernels.json and kernels.md under ``args.out``."""
    import torch

    from ngp_cli.machine import machine_info

    if args.device == "cuda" and not torch.cuda.is_available():
        return _fail(NO_GPU, "--device cuda: no usable GPU (torch.cuda.is_available() is False)")
    only = list(args.only or KERNELS)
    results = time_kernels(args.device, args.log2_sizes, args.warmup, args.repeats, only)
    doc = {"device": args.device, "machine": machine_info(), "log2_sizes": args.log2_sizes, "warmup": args.warmup,
           "repeats": args.repeats, "timer": "CUDA events" if args.device == "cuda" else "time.perf_counter",
           "results": results}
    from ngp_cli.runs import atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "kernels.json", json.dumps(doc, indent=1) + "\n")
    atomic_write_text(out / "kernels.md", kernels_markdown(doc))
    print(f"gpu_kernels: wrote {out / 'kernels.json'} and {out / 'kernels.md'}")
    return 0


# ---- report ------------------------------------------------------------------------------------------------------


def _json_lines(path: Path) -> list[dict]:
    rows = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def report(work: Path, out: Path) -> int:
    """``session.json`` and ``summary.md`` under ``out`` from a session's work folder: ``steps.jsonl`` (one line per
    step: name, status, rc, seconds, timeout_s, reason), ``info.json``, ``kernels.json``, ``bench.json``,
    ``render.json`` (``ngp bench --run`` on the nerf step's run) and each task step's stdout (``<step>.out``, JSON
    lines ending with ``done``)."""
    steps = _json_lines(work / "steps.jsonl")
    doc: dict = {"date": time.strftime("%Y-%m-%d"), "steps": steps, "info": _load(work / "info.json") or {},
                 "kernels": _load(out / "kernels.json"), "runs": {}}
    bench = _load(out / "bench.json")
    if bench:
        doc["bench"] = [{k: r.get(k) for k in ("benchmark", "dims", "batch", "median_s", "ns_per_element",
                                                "ceiling_fraction")} for r in bench.get("results", [])]
    render = _load(out / "render.json")
    if render:
        doc["render"] = [{k: r.get(k) for k in ("benchmark", "batch", "median_s", "ns_per_element")}
                         for r in render.get("results", [])]
    for s in steps:
        done = [e for e in _json_lines(work / f"{s['step']}.out") if e.get("event") == "done"]
        if done:
            doc["runs"][s["step"]] = {"metrics": done[-1].get("metrics"), "step": done[-1].get("step")}
    info_doc = doc["info"]
    smi = info_doc.get("nvidia_smi", {})
    gpu = (info_doc.get("gpu") or {}).get("name") or smi.get("name") or "no GPU"
    md = [f"# GPU session {doc['date']}: {gpu}", "",
          "`bash benchmarks/gpu_session.sh` (one command, at most 10 minutes). Environment: driver "
          f"{smi.get('driver_version', '?')}, NVRTC {info_doc.get('nvrtc_version', '?')}, torch "
          f"{(info_doc.get('machine') or {}).get('torch', '?')} (CUDA {info_doc.get('torch_cuda', '?')}), CuPy "
          f"{info_doc.get('cupy', '?')}; SM clock {smi.get('clocks.sm', '?')} (max {smi.get('clocks.max.sm', '?')}), "
          f"memory clock {smi.get('clocks.mem', '?')}; CUDA include dirs: "
          f"{', '.join(info_doc.get('cuda_include_dirs') or []) or '?'}.", "",
          "## Steps", "", "| step | status | seconds | timeout s | note |", "|---|---|---:|---:|---|"]
    for s in steps:
        reason = (s.get("reason") or "").replace("|", "\\|")
        md.append(f"| {s['step']} | {s['status']} | {s.get('seconds', '')} | {s.get('timeout_s', '')} | {reason} |")
    if doc["runs"]:
        md += ["", "## Task runs", "", "| step | final step | metrics |", "|---|---:|---|"]
        for name, run in doc["runs"].items():
            metrics = run["metrics"] or {}
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                              if isinstance(v, (int, float, str)) and not isinstance(v, bool))
            md.append(f"| {name} | {run['step']} | {shown} |")
    if doc.get("bench"):
        md += ["", "## ngp bench --backend cuda", "",
               "| benchmark | D | batch | median ms | ns / element | ceiling % |", "|---|---|---|---:|---:|---:|"]
        for r in doc["bench"]:
            frac = "" if r["ceiling_fraction"] is None else f"{100 * r['ceiling_fraction']:.1f}"
            md.append(f"| {r['benchmark']} | {r['dims'] or ''} | 2^{int(math.log2(r['batch']))} | "
                      f"{r['median_s'] * 1e3:.3f} | {r['ns_per_element']:.3f} | {frac} |")
    if doc.get("render"):
        md += ["", "## Rendering one held-out view of the nerf run (ngp bench --run)", "",
               "`render_network`: as ngp eval renders it (rays stop at transmittance 1e-4); `render_frame`: as ngp "
               "render does (0.01).", "",
               "| benchmark | pixels | median ms | ms per megapixel |", "|---|---:|---:|---:|"]
        for r in doc["render"]:
            md.append(f"| {r['benchmark']} | {r['batch']} | {r['median_s'] * 1e3:.2f} | {r['ns_per_element']:.2f} |")
    scaling = _json_lines(work / "scaling.jsonl")
    if scaling:
        doc["scaling"] = scaling
        md += _scaling_markdown(scaling)
    if doc["kernels"]:
        md += ["", kernels_markdown(doc["kernels"]).replace("# Kernel timings", "## Kernel timings", 1)]
    from ngp_cli.runs import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "session.json", json.dumps(doc, indent=1) + "\n")
    atomic_write_text(out / "summary.md", "\n".join(md) + "\n")
    print(f"gpu_kernels: wrote {out / 'session.json'} and {out / 'summary.md'}")
    return 0


def scaling_line(gpus: int, run: Path) -> dict:
    """One ``scaling.jsonl`` line of ``gpu_session.sh --multi-gpu``: the training rate and the gradient all-reduce
    time per step of a data-parallel run on ``gpus`` GPUs, from its last metrics line (rank 0's)."""
    records = [r for r in _json_lines(run / "metrics.jsonl") if "loss" in r]
    if not records:
        return {"gpus": gpus, "run": str(run), "error": "no metrics logged"}
    last = records[-1]
    steps = last["step"]
    return {"gpus": gpus, "run": str(run), "steps": steps, "steps_per_s": last.get("steps_per_s"),
            "samples_per_s": last.get("samples_per_s"), "train_s": last.get("elapsed_s"),
            "comm_ms_per_step": 1e3 * last["comm_s"] / steps if "comm_s" in last else 0.0,
            "batch_psnr": last.get("psnr")}


def _scaling_markdown(lines: list[dict]) -> list[str]:
    md = ["", "## Data-parallel scaling (NCCL, lego_400, 45 s each)", "",
          "| GPUs | steps | steps/s | samples/s | all-reduce ms/step | batch PSNR |", "|---:|---:|---:|---:|---:|---:|"]
    for r in lines:
        if "error" in r:
            md.append(f"| {r['gpus']} | {r['error']} | | | | |")
            continue
        md.append(f"| {r['gpus']} | {r['steps']} | {r['steps_per_s']:.2f} | {r['samples_per_s']:.3g} | "
                  f"{r['comm_ms_per_step']:.2f} | {r['batch_psnr']:.2f} |")
    return md


# ---- main --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe", help="is a GPU usable (torch sees it, a CuPy kernel runs)? exit 5 if not")
    p_info = sub.add_parser("info", help="driver, NVRTC, CUDA include dirs, GPU name and clocks")
    p_info.add_argument("--out", help="also write them to this JSON file")
    p_check = sub.add_parser("check", help="hash grid and fused MLP kernels against the torch references")
    p_check.add_argument("--log2-n", type=int, default=16)
    p_check.add_argument("--only", choices=("hashgrid", "mlp"), action="append")
    p_check.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p_time = sub.add_parser("time", help="per-kernel timings: kernels.json + kernels.md")
    p_time.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p_time.add_argument("--log2-sizes", type=int, nargs="+", default=[18, 21])
    p_time.add_argument("--warmup", type=int, default=3)
    p_time.add_argument("--repeats", type=int, default=10)
    p_time.add_argument("--only", choices=KERNELS, action="append")
    p_time.add_argument("--out", default=os.environ.get("OUT", "gpu-results"))
    p_scaling = sub.add_parser("scaling-line", help="one scaling.jsonl line from a data-parallel run's metrics")
    p_scaling.add_argument("gpus", type=int)
    p_scaling.add_argument("run", type=Path)
    p_report = sub.add_parser("report", help="session.json + summary.md from a session's work folder")
    p_report.add_argument("work", type=Path)
    p_report.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "probe":
        return probe()
    if args.command == "info":
        doc = info()
        print(json.dumps(doc, indent=1))
        if args.out:
            from ngp_cli.runs import atomic_write_text

            atomic_write_text(Path(args.out), json.dumps(doc, indent=1) + "\n")
        return 0
    if args.command == "check":
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return _fail(NO_GPU, "--device cuda: no usable GPU (torch.cuda.is_available() is False)")
        return check(1 << args.log2_n, tuple(args.only or ("hashgrid", "mlp")), args.device)
    if args.command == "time":
        if not all(1 <= k <= 26 for k in args.log2_sizes) or args.repeats < 1 or args.warmup < 0:
            parser.error("--log2-sizes must be in 1..26, --repeats >= 1, --warmup >= 0")
        return run_time(args)
    if args.command == "scaling-line":
        print(json.dumps(scaling_line(args.gpus, args.run)))
        return 0
    return report(args.work, args.out)


if __name__ == "__main__":
    sys.exit(main())

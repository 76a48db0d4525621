"""benchmarks/gpu_session.sh (the lent GPU's one command) and benchmarks/gpu_kernels.py, on a machine without a GPU:
the dry run's steps and timeouts, the early stop without a usable GPU, and the kernel timings on the cpu target."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"
STEP_LINE = re.compile(r"^step (\d+) (\S+)\s+timeout\s+(\d+) s: (.+)$")
needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _gpu_kernels():
    spec = importlib.util.spec_from_file_location("gpu_kernels", REPO / "benchmarks" / "gpu_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _path_without_nvidia_smi(extra: Path | None = None) -> str:
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "nvidia-smi").exists()]
    return os.pathsep.join(([str(extra)] if extra else []) + dirs)


def _session(*args: str, path: str, out: Path, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PATH": path, "OUT": str(out), "PYTHON": sys.executable}
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                         cwd=REPO)
    return res, time.monotonic() - t0


@needs_bash
def test_script_parses():
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@needs_bash
def test_dry_run_lists_every_step_with_timeouts_within_ten_minutes(tmp_path):
    out = tmp_path / "out"
    res, _ = _session("--dry-run", path=_path_without_nvidia_smi(), out=out)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    steps = [STEP_LINE.match(line) for line in lines[:-1]]
    assert all(steps), lines
    names = [m.group(2) for m in steps]
    assert names == ["probe", "info", "wheels", "install", "cuda-target", "pytest-gpu", "memcheck", "racecheck",
                     "kernels", "bench", "nerf", "sdf", "image", "report"]
    timeouts = [int(m.group(3)) for m in steps]
    assert all(t > 0 for t in timeouts)
    assert sum(timeouts) <= 600
    assert lines[-1].startswith(f"total of timeouts: {sum(timeouts)} s")
    commands = {m.group(2): m.group(4) for m in steps}
    assert "CUDA_LAUNCH_BLOCKING=1" in commands["pytest-gpu"] and "-m gpu -x" in commands["pytest-gpu"]
    assert "--backend cuda" in commands["bench"] and "train.max_time_s=50" in commands["nerf"]
    assert "--only render_network --only render_frame" in commands["nerf"]
    assert "--no-index --no-deps --no-build-isolation -e ." in commands["install"]
    assert not out.exists()  # a dry run writes nothing


@needs_bash
def test_dry_run_honours_only_and_refuses_unknown_steps(tmp_path):
    res, _ = _session("--dry-run", "--only", "kernels,bench", path=_path_without_nvidia_smi(), out=tmp_path)
    assert res.returncode == 0, res.stderr
    assert [STEP_LINE.match(line).group(2) for line in res.stdout.splitlines()[:-1]] == [
        "probe", "kernels", "bench", "report"]
    res, _ = _session("--dry-run", "--skip", "nerff", path=_path_without_nvidia_smi(), out=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown step 'nerff'" in res.stderr


@needs_bash
def test_without_nvidia_smi_it_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "out"
    res, seconds = _session(path=_path_without_nvidia_smi(), out=out)
    assert res.returncode == 5, (res.stdout, res.stderr)
    assert seconds < 30
    assert res.stderr.splitlines() == ["gpu_session: no usable GPU: nvidia-smi not found (run this on the lent GPU "
                                       "machine)"]
    assert res.stdout == "" and not out.exists()


@needs_bash
def test_with_a_driver_but_no_cuda_torch_it_stops_within_30_s(tmp_path):
    """nvidia-smi answers (a fake one), but torch sees no GPU: the Python probe stops the session."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    out = tmp_path / "out"
    res, seconds = _session(path=_path_without_nvidia_smi(fake), out=out)
    assert res.returncode == 5, (res.stdout, res.stderr)
    assert seconds < 30
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_session: no usable GPU: ") and "torch" in lines[0], lines
    assert not out.exists()


@needs_bash
def test_a_broken_driver_stops_the_session(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (fake / "nvidia-smi").chmod(0o755)
    res, seconds = _session(path=_path_without_nvidia_smi(fake), out=tmp_path / "out")
    assert res.returncode == 5 and seconds < 30
    assert res.stderr.splitlines() == ["gpu_session: no usable GPU: 'nvidia-smi -L' failed or timed out (no driver?)"]


def test_probe_reports_no_gpu_with_exit_5(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert _gpu_kernels().main(["probe"]) == 5
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "torch.cuda.is_available() is False" in err[0]


def test_kernel_timings_on_the_cpu_target_name_every_kernel(tmp_path, host_cxx):
    gk = _gpu_kernels()
    assert gk.main(["time", "--device", "cpu", "--log2-sizes", "8", "10", "--warmup", "0", "--repeats", "1",
                    "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "kernels.json").read_text())
    assert doc["device"] == "cpu" and doc["timer"] == "time.perf_counter"
    got = {(r["kernel"], r["log2_n"]) for r in doc["results"]}
    assert got == {(k, n) for k in gk.KERNELS for n in (8, 10)}
    for r in doc["results"]:
        assert r["median_s"] > 0 and r["ns_per_element"] == pytest.approx(r["median_s"] / r["n"] * 1e9)
        assert r["unit"] == gk.UNITS[r["kernel"]] and len(r["runs_s"]) == 1
    march = [r for r in doc["results"] if r["kernel"] == "march_rays"]
    assert all(0 < r["samples_per_ray"] <= gk.SAMPLES_PER_RAY for r in march)  # the rays do hit the sphere
    md = (tmp_path / "kernels.md").read_text()
    assert "tiny-cuda-nn ns / element" in md
    assert all(f"| {k} | 2^10 |" in md for k in gk.KERNELS)


def test_cuda_target_check_catches_a_wrong_kernel(monkeypatch, host_cxx, capsys):
    gk = _gpu_kernels()
    assert gk.check(1 << 10, ("hashgrid", "mlp"), "cpu") == 0
    from ngp_cli.cuda import hashgrid

    real = hashgrid.encode
    monkeypatch.setattr(hashgrid, "encode", lambda *a, **k: real(*a, **k) * 1.001)
    assert gk.check(1 << 10, ("hashgrid",), "cpu") == 1
    assert "CHECK FAILED: hash grid on the cpu target differs" in capsys.readouterr().err


def test_report_writes_summary_and_session_json(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    steps = [{"step": "probe", "status": "ok", "rc": 0, "seconds": 1, "timeout_s": 25, "reason": ""},
             {"step": "nerf", "status": "ok", "rc": 0, "seconds": 70, "timeout_s": 75, "reason": ""},
             {"step": "sdf", "status": "skipped", "rc": 77, "seconds": 0, "timeout_s": 75,
              "reason": "trimesh is not installed"},
             {"step": "bench", "status": "failed", "rc": 1, "seconds": 3, "timeout_s": 35, "reason": "exit 1: a|b"}]
    (work / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (work / "info.json").write_text(json.dumps({"nvidia_smi": {"name": "NVIDIA H100 80GB HBM3",
                                                               "driver_version": "580.1"}, "nvrtc_version": "13.0"}))
    (work / "nerf.out").write_text('{"event":"step","step":10}\n{"event":"done","step":900,'
                                   '"metrics":{"psnr":31.25,"ssim":0.95,"n_views":10}}\n')
    out.mkdir()
    (out / "render.json").write_text(json.dumps({"results": [
        {"benchmark": "render_network", "batch": 160000, "median_s": 0.0123, "ns_per_element": 76.875},
        {"benchmark": "render_frame", "batch": 160000, "median_s": 0.0101, "ns_per_element": 63.125}]}))
    assert _gpu_kernels().main(["report", str(work), str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert "| render_network | 160000 | 12.30 | 76.88 |" in md and "| render_frame | 160000 | 10.10 | 63.12 |" in md
    assert md.startswith("# GPU session ") and "NVIDIA H100 80GB HBM3" in md and "NVRTC 13.0" in md
    assert "| sdf | skipped | 0 | 75 | trimesh is not installed |" in md
    assert "exit 1: a\\|b" in md  # a pipe in a reason does not break the table
    assert "| nerf | 900 | psnr 31.25, ssim 0.95, n_views 10 |" in md
    doc = json.loads((out / "session.json").read_text())
    assert [s["step"] for s in doc["steps"]] == ["probe", "nerf", "sdf", "bench"]
    assert doc["runs"]["nerf"]["metrics"]["psnr"] == 31.25


@needs_bash
def test_multi_gpu_dry_run_lists_the_scaling_step_within_ten_minutes(tmp_path):
    res, _ = _session("--multi-gpu", "--dry-run", path=_path_without_nvidia_smi(), out=tmp_path / "out")
    assert res.returncode == 0, res.stderr
    steps = [STEP_LINE.match(line) for line in res.stdout.splitlines()[:-1]]
    assert [m.group(2) for m in steps] == ["probe", "info", "wheels", "install", "cuda-target", "scaling", "report"]
    assert sum(int(m.group(3)) for m in steps) <= 570
    scaling = next(m.group(4) for m in steps if m.group(2) == "scaling")
    assert "--nproc k" in scaling and "--backend cuda" in scaling


def test_the_scaling_table_comes_from_each_runs_metrics(tmp_path):
    gk = _gpu_kernels()
    work, out = tmp_path / "work", tmp_path / "out"
    lines = []
    for gpus, rate, comm in ((1, 40.0, None), (2, 76.0, 0.3)):
        run = work / "runs" / "nerf" / f"x-scaling-{gpus}"
        run.mkdir(parents=True)
        rec = {"step": 100, "loss": 0.01, "psnr": 25.5, "steps_per_s": rate, "samples_per_s": rate * 262144,
               "elapsed_s": 45.0, **({"comm_s": comm} if comm is not None else {})}
        (run / "metrics.jsonl").write_text(json.dumps({"step": 50, "loss": 0.1}) + "\n" + json.dumps(rec) + "\n")
        lines.append(gk.scaling_line(gpus, run))
    assert lines[1]["comm_ms_per_step"] == pytest.approx(3.0) and lines[0]["comm_ms_per_step"] == 0.0
    (work / "scaling.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (work / "steps.jsonl").write_text(json.dumps({"step": "scaling", "status": "ok", "rc": 0, "seconds": 200,
                                                  "timeout_s": 340, "reason": ""}) + "\n")
    assert gk.main(["report", str(work), str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert "## Data-parallel scaling" in md and "| 2 | 100 | 76.00 | 1.99e+07 | 3.00 | 25.50 |" in md

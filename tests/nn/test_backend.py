"""The backend switch: auto → cuda → cpu → torch, and the errors of impossible requests."""

from __future__ import annotations

import pytest
import torch

from ngp_cli.errors import ConfigError, NoGPUError
from ngp_cli.nn import backend as backend_mod
from ngp_cli.nn.backend import resolve_backend


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(backend_mod, "cuda_available", lambda: False)


def test_auto_prefers_cpu_kernels_then_torch(no_gpu, monkeypatch):
    monkeypatch.setattr(backend_mod, "cpu_kernels_available", lambda: True)
    b = resolve_backend("auto")
    assert (b.name, b.device.type, b.kernel_target) == ("cpu", "cpu", "cpu")
    monkeypatch.setattr(backend_mod, "cpu_kernels_available", lambda: False)
    b = resolve_backend("auto")
    assert (b.name, b.device.type, b.kernel_target) == ("torch", "cpu", None)


def test_auto_prefers_cuda_kernels_with_a_gpu(monkeypatch):
    monkeypatch.setattr(backend_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(backend_mod, "cuda_kernels_available", lambda: True)
    monkeypatch.setattr(backend_mod, "resolve_device", lambda d: torch.device("cuda" if d in ("auto", "cuda") else d))
    assert resolve_backend("auto").name == "cuda"
    monkeypatch.setattr(backend_mod, "cuda_kernels_available", lambda: False)  # GPU without CuPy: torch on the GPU
    b = resolve_backend("auto")
    assert (b.name, b.device.type) == ("torch", "cuda")


def test_explicit_requests_and_their_errors(no_gpu, monkeypatch):
    assert resolve_backend("torch").name == "torch"
    with pytest.raises(NoGPUError, match="needs an NVIDIA GPU"):
        resolve_backend("cuda")
    monkeypatch.setattr(backend_mod, "cpu_kernels_available", lambda: False)
    monkeypatch.setattr("ngp_cli.cuda.runtime.cpu_target_problem", lambda: "no host C++ compiler")
    with pytest.raises(ConfigError, match="cannot build its kernels: no host C\\+\\+ compiler"):
        resolve_backend("cpu")
    monkeypatch.setattr(backend_mod, "cpu_kernels_available", lambda: True)
    assert resolve_backend("cpu", "cpu").kernel_target == "cpu"
    with pytest.raises(ConfigError, match="runs on the CPU"):
        resolve_backend("cpu", "cuda")
    with pytest.raises(ConfigError, match="backend must be one of"):
        resolve_backend("gpu")


def test_host_compiler_probe_follows_cxx(monkeypatch):
    from ngp_cli.cuda.runtime import host_compiler

    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert host_compiler() is None


def test_a_broken_compiler_falls_back_under_auto_and_fails_cleanly_when_asked_for(astronaut_crop, tmp_path):
    """CXX=/bin/false: `auto` trains with the torch backend; `--backend cpu` exits 3 with one line naming the cause."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, CXX="/bin/false", NGP_CACHE_DIR=str(tmp_path / "cache"))
    base = [sys.executable, "-m", "ngp_cli", "fit-image", str(astronaut_crop), "--runs-dir", str(tmp_path / "runs"),
            "--steps", "2"]
    auto = subprocess.run(base, capture_output=True, text=True, env=env, timeout=300)
    assert auto.returncode == 0, auto.stderr
    assert "backend torch on cpu" in auto.stderr
    cpu = subprocess.run([*base, "--backend", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    lines = [x for x in cpu.stderr.splitlines() if x.startswith("ngp:")]
    assert cpu.returncode == 3 and len(lines) == 1 and "cannot build its kernels" in lines[0], cpu.stderr
    assert "Traceback" not in cpu.stderr

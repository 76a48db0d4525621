"""The kernel-backend switch: ``auto | cuda | cpu | torch``.

- ``torch``: the pure-PyTorch reference implementation (ngp_cli.nn), on any torch device.
- ``cuda``: the CuPy RawModule kernels of ngp_cli/cuda on an NVIDIA GPU.
- ``cpu``: the same kernel sources compiled by the host C++ compiler.
- ``auto``: ``cuda`` when a GPU and CuPy are usable, else ``cpu`` when a host C++ compiler exists, else ``torch``
  (on the GPU when torch sees one).

The ``cuda`` and ``cpu`` backends run the same sources (docs/kernels.md); the models take the choice through
:attr:`Backend.kernel_target`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngp_cli.config import BACKENDS
from ngp_cli.errors import ConfigError, NoGPUError


@dataclass(frozen=True)
class Backend:
    """A resolved backend: its name and the torch device its tensors live on."""

    name: str
    device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def kernel_target(self) -> str | None:
        """"cpu" or "cuda" for the kernel backends (the target of ngp_cli.cuda.runtime), None for ``torch``."""
        return self.name if self.name in ("cpu", "cuda") else None


def cuda_available() -> bool:
    """True when torch can use a CUDA GPU (a real probe, not just an installed CUDA build)."""
    try:
        return torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception:  # a broken driver install reports through exceptions
        return False


def resolve_device(device: str) -> torch.device:
    """Map the ``device`` config value (auto, cpu, cuda, cuda:N, mps) to a torch.device.

    Raises NoGPUError for a CUDA device without a GPU, ConfigError for an unknown device string.
    """
    if device == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got '{device}'") from None
    if dev.type == "cuda":
        if not cuda_available():
            raise NoGPUError(f"device '{device}' needs an NVIDIA GPU, and none is usable "
                             "(torch.cuda.is_available() is False); use --set device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise NoGPUError(f"device '{device}' does not exist ({torch.cuda.device_count()} GPU(s) visible)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise NoGPUError("device 'mps' is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got '{device}'")
    return dev


def cuda_kernels_available() -> bool:
    """True when the ``cuda`` backend can run: a usable GPU and an importable CuPy (probed, never raising)."""
    if not cuda_available():
        return False
    from ngp_cli.cuda.runtime import cuda_target_available

    return cuda_target_available()


def cpu_kernels_available() -> bool:
    """True when the ``cpu`` backend can run: a host C++ compiler (``$CXX``, g++ or clang++) builds the kernel launcher
    (probed, never raising)."""
    from ngp_cli.cuda.runtime import cpu_target_available

    return cpu_target_available()


def resolve_backend(backend: str, device: str = "auto") -> Backend:
    """Resolve the ``--backend`` choice and the ``device`` key into a :class:`Backend`.

    ``auto`` takes ``cuda`` (GPU + CuPy), then ``cpu`` (host compiler; only when ``device`` is auto or cpu), then
    ``torch`` on ``device``. ``cuda`` needs ``device`` auto or cuda[:N]; ``cpu`` needs ``device`` auto or cpu.

    Raises NoGPUError (``cuda`` without a GPU), ConfigError (unknown name, CuPy or a host compiler missing for the
    backend asked for, or a backend/device conflict).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "torch":
        return Backend("torch", resolve_device(device))
    if backend == "cuda":
        if not cuda_available():
            raise NoGPUError("--backend cuda needs an NVIDIA GPU, and none is usable "
                             "(torch.cuda.is_available() is False); use --backend auto, cpu or torch")
        dev = resolve_device("cuda" if device == "auto" else device)
        if dev.type != "cuda":
            raise ConfigError(f"--backend cuda runs on the GPU, but device is '{device}'; drop the device setting")
        if not cuda_kernels_available():
            raise ConfigError("--backend cuda needs CuPy: pip install 'ngp-cli[cuda]' (CUDA 12) or "
                              "'ngp-cli[cuda13]' (CUDA 13); --backend torch runs on the GPU without it")
        return Backend("cuda", dev)
    if backend == "cpu":
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--backend cpu runs on the CPU, but device is '{device}'; drop the device setting")
        if not cpu_kernels_available():
            from ngp_cli.cuda.runtime import cpu_target_problem

            raise ConfigError(f"--backend cpu cannot build its kernels: {cpu_target_problem()}; "
                              "--backend torch needs no compiler")
        return Backend("cpu", torch.device("cpu"))
    # auto
    dev = resolve_device(device)
    if dev.type == "cuda" and cuda_kernels_available():
        return Backend("cuda", dev)
    if dev.type == "cpu" and cpu_kernels_available():
        return Backend("cpu", dev)
    return Backend("torch", dev)

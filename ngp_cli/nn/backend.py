"""The kernel-backend switch: ``auto | cuda | cpu | torch``.

- ``torch``: the pure-PyTorch reference implementation (ngp_cli.nn), on any torch device.
- ``cuda``: the CuPy RawModule kernels of ngp_cli/cuda on an NVIDIA GPU.
- ``cpu``: the same kernel sources compiled by the host C++ compiler.
- ``auto``: the fastest available one (today: ``torch``, on the GPU when there is one).

The ``cuda`` and ``cpu`` kernel backends are not part of this release yet; asking for them fails with a clear message
(and ``cuda`` without a GPU fails with the no-GPU exit code first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngp_cli.errors import ConfigError, NoGPUError

BACKENDS = ("auto", "cuda", "cpu", "torch")


@dataclass(frozen=True)
class Backend:
    """A resolved backend: its name and the torch device its tensors live on."""

    name: str
    device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


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


def resolve_backend(backend: str, device: str = "auto") -> Backend:
    """Resolve the ``--backend`` choice and the ``device`` key into a :class:`Backend`.

    Raises NoGPUError (``cuda`` without a GPU), ConfigError (unknown name, or a kernel backend not yet available).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "cuda":
        if not cuda_available():
            raise NoGPUError("--backend cuda needs an NVIDIA GPU, and none is usable "
                             "(torch.cuda.is_available() is False); use --backend auto or torch")
        raise ConfigError("--backend cuda (CuPy kernels) is not available in this release yet; "
                          "--backend torch runs on the GPU")
    if backend == "cpu":
        raise ConfigError("--backend cpu (compiled kernels) is not available in this release yet; use --backend torch")
    return Backend("torch", resolve_device(device))

"""Where a number was measured: the CPU model and its ISA features, threads, versions, the GPU, and the code paths ngp
chose on this machine. ``ngp bench`` and every run's ``summary.json`` record :func:`machine_info`, so a speed or a
PSNR can be traced to the CPU kind it came from (AVX2-only and AVX-512-BF16/AMX machines take different MLP paths).

The CPU facts come from :mod:`ngp_cli.hardware`; :func:`machine_info` imports torch.
"""

from __future__ import annotations

import platform
from typing import Any

from ngp_cli.hardware import cpuinfo, isa_features

__all__ = ["machine_info"]

def machine_info() -> dict[str, Any]:
    """``{"platform", "python", "torch", "cpu", "isa", "threads", "paths": {"cpu_mlp": {...}}, ["gpu", "cupy"]}``: the
    CPU model and its :func:`isa_features`, torch's intra-op threads, and the MLP path the cpu backend runs here:
    ``{"path": "bf16" | "fp32" | "torch", "how": "measured" | "cached" | "env"[, "median_ms": {path: ms},
    "cpu_share": float]}``
    (:func:`ngp_cli.cuda.cpu_mlp.cpu_mlp_path`; the first call in a process may run its micro-benchmark, under 2 s,
    unless an earlier one is cached). An invalid ``NGP_CPU_MLP`` is recorded as ``{"path": None, "how": "env",
    "error": message}`` rather than raised: the record is written at the end of runs that may not use the cpu MLP."""
    import torch

    from ngp_cli.cuda.cpu_mlp import cpu_mlp_path
    from ngp_cli.errors import ConfigError
    from ngp_cli.nn.backend import cuda_available

    try:
        cpu_mlp: dict[str, Any] = cpu_mlp_path().as_dict()
    except ConfigError as exc:
        cpu_mlp = {"path": None, "how": "env", "error": str(exc)}
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpu": cpuinfo()[0], "isa": isa_features(),
                            "threads": torch.get_num_threads(), "paths": {"cpu_mlp": cpu_mlp}}
    if cuda_available():
        info["gpu"] = torch.cuda.get_device_name()
        try:
            import cupy

            info["cupy"] = cupy.__version__
        except ImportError:
            pass
    return info

"""The kernel runtime: one CUDA source, two targets (docs/kernels.md).

- ``cuda``: the source is compiled by NVRTC through CuPy (``cupy.RawModule``) and launched on torch's current CUDA
  stream, tensors passed zero-copy as raw device pointers. CuPy caches the binaries on disk (``CUPY_CACHE_DIR``).
- ``cpu``: the same source is compiled by the host C++ compiler (``$CXX``, else g++, else clang++) with
  ``cpu_emu.h`` force-included and ``NGP_CPU`` defined, into a shared library under ``$NGP_CACHE_DIR`` (default
  ``~/.cache/ngp/kernels``; a private directory checked by :func:`kernel_cache_dir`), loaded with ctypes only when
  its SHA-256 matches the manifest entry written when it was built. Per kernel, a block runner is generated in the
  same translation unit (``NGP_EMU_EXPORT_KERNEL``), so the kernel is inlined into the loop over a block's threads;
  blocks are spread over ``torch.get_num_threads()`` workers by the pool in ``cpu_launch.cpp``.

Every kernel is ``extern "C" __global__ void name(...)`` with its parameter list written out; the runtime parses
these signatures (with the module's ``defines`` substituted) and checks every launch argument on both targets:
pointer parameters take a contiguous tensor of the matching dtype on the module's device (or None), value
parameters a NumPy scalar of exactly the declared type.

Only this package imports CuPy, and only inside functions. This module imports numpy at import time and torch on
first use; ``import ngp_cli`` imports neither.

The pieces: :mod:`.signature` (sources, signatures, argument checks), :mod:`.cpu_build` (the cpu target),
:mod:`.nvrtc` (the cuda target), :mod:`.kernel_cache` (the cache directory, manifests, logs, compile clock). This
module loads modules through them, caches them per process, probes the targets, and is the API the rest of ngp
imports.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping

from .cpu_build import KernelLaunchError, _load_cpu, _pool_lib, host_compiler
from .kernel_cache import _headers, cache_dir, compile_seconds, kernel_cache_dir, stats
from .nvrtc import _load_cuda, cuda_compile_options, nvrtc_compile_check, nvrtc_version
from .signature import (
    CUDA_DIR,
    KernelCompileError,
    KernelModule,
    _normalize_defines,
    _resolve_source,
    _torch,
    parse_kernels,
)

__all__ = [
    "CUDA_DIR",
    "POISON_OUTPUTS",
    "TARGETS",
    "KernelCompileError",
    "KernelLaunchError",
    "KernelModule",
    "cache_dir",
    "compile_seconds",
    "cpu_target_available",
    "cpu_target_problem",
    "cuda_compile_options",
    "cuda_target_available",
    "host_compiler",
    "kernel_cache_dir",
    "load_module",
    "nvrtc_compile_check",
    "nvrtc_version",
    "output_buffer",
    "parse_kernels",
    "stats",
]

TARGETS = ("cpu", "cuda")

_lock = threading.RLock()
_modules: dict[tuple, KernelModule] = {}
_fast_modules: dict[tuple, KernelModule] = {}
_key_locks: dict[tuple, threading.Lock] = {}


def load_module(source: str | os.PathLike, target: str, defines: Mapping[str, object] | None = None) -> KernelModule:
    """Compile (or fetch from the caches) kernel source ``source`` for ``target`` ("cpu" or "cuda").

    ``source`` is a file name in ``ngp_cli/cuda/`` or an absolute path; ``defines`` become ``-DNAME=VALUE`` for both
    compilers and are substituted into the kernel signatures. Each distinct (source, headers, defines, target,
    compiler, flags, CPU) is compiled once per process and cached on disk (CPU: ``$NGP_CACHE_DIR``; CUDA: CuPy's
    ``CUPY_CACHE_DIR``). Raises KernelCompileError (with ``.log``) when compilation fails or no compiler / CuPy is
    available, FileNotFoundError for a missing source, ValueError for an unknown target.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    defs = _normalize_defines(defines)
    device = _torch().cuda.current_device() if target == "cuda" else None
    # Fast path: a module already loaded for exactly this request. Launch sites call load_module for every launch, and
    # resolving the source and hashing its headers costs milliseconds; sources are taken as fixed for the life of a
    # process once loaded (_clear_process_cache forgets them).
    fast_key = (str(source), target, tuple(sorted(defs.items())), device, os.environ.get("NGP_CACHE_DIR"))
    module = _fast_modules.get(fast_key)
    if module is not None:
        return module
    path = _resolve_source(source)
    text = path.read_text(encoding="utf-8")
    deps = _headers(path, [CUDA_DIR / "cpu_emu.h"] if target == "cpu" else [])
    header_state = tuple((str(h), h.stat().st_mtime_ns, h.stat().st_size) for h in deps)
    key = (str(path), target, tuple(sorted(defs.items())), text, header_state, device, os.environ.get("NGP_CACHE_DIR"))
    with _lock:
        module = _modules.get(key)
        if module is not None:
            _fast_modules[fast_key] = module
            return module
        key_lock = _key_locks.setdefault(key, threading.Lock())
    # Different modules compile concurrently (e.g. from a thread pool); the same module only once.
    with key_lock:
        with _lock:
            module = _modules.get(key)
        if module is not None:
            return module
        kernels = parse_kernels(text, defs)
        if not kernels:
            raise KernelCompileError(f'{path.name} declares no extern "C" __global__ kernels')
        loader = _load_cpu if target == "cpu" else _load_cuda
        module = loader(path, text, defs, kernels)
        with _lock:
            _modules[key] = module
            _fast_modules[fast_key] = module
        return module


def _clear_process_cache() -> None:
    """Forget the modules loaded in this process (tests: the next load_module goes to the disk caches)."""
    with _lock:
        _modules.clear()
        _fast_modules.clear()
        _key_locks.clear()


# Test hook shared by the kernel bindings (nerf.py, mesh.py): when True, :func:`output_buffer` fills every output a
# kernel is supposed to write in full with NaN (float) or -1 (integer), so a test can check nothing was left unwritten.
POISON_OUTPUTS = False


def output_buffer(shape, dtype, device):
    """``torch.empty(shape, dtype, device)`` for a kernel output, poisoned when :data:`POISON_OUTPUTS` is set."""
    t = _torch().empty(shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        t.fill_(float("nan") if dtype.is_floating_point else -1)
    return t


@functools.lru_cache(maxsize=1)
def cpu_target_problem() -> str | None:
    """Why the cpu target cannot run, in one line, or None when it can: a host C++ compiler must exist and build the
    launcher library (a real probe; the library is cached on disk, so after the first run the probe only loads it)."""
    if host_compiler() is None:
        return "no host C++ compiler (g++ or clang++ on PATH, or $CXX)"
    try:
        _pool_lib()
    except (KernelCompileError, OSError) as exc:
        return str(exc)
    return None


def cpu_target_available() -> bool:
    """True when :func:`cpu_target_problem` finds none."""
    return cpu_target_problem() is None


def cuda_target_available() -> bool:
    """True when the cuda target can run: CuPy imports, torch sees a GPU, and a probe kernel compiles with NVRTC and
    runs (a real probe, cached per process)."""
    try:
        import cupy

        torch = _torch()
        if not torch.cuda.is_available() or cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        probe = cupy.RawKernel(r'extern "C" __global__ void ngp_probe(float* x) { x[0] = 1.0f; }', "ngp_probe")
        x = cupy.zeros(1, dtype=cupy.float32)
        probe((1,), (1,), (x,))
        return float(x.get()[0]) == 1.0
    except Exception:  # noqa: BLE001 - any failure (no driver, no NVRTC, no device) means "not available"
        return False

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
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ngp_cli.console import warn
from ngp_cli.errors import EXIT_INTERNAL, NgpError, OutputError

CUDA_DIR = Path(__file__).resolve().parent
"""Directory of the kernel sources and headers (``-I`` for both compilers)."""

TARGETS = ("cpu", "cuda")

CPU_FLAGS = (
    "-O3",
    "-march=native",
    "-std=c++17",
    "-fPIC",
    "-shared",
    "-pthread",
    "-fvisibility=hidden",
    "-fno-semantic-interposition",
    "-fno-math-errno",
    "-ffp-contract=fast",
)
"""Host-compiler flags of the CPU target (plus ``-include cpu_emu.h -I<cuda dir> -DNGP_CPU -D<defines>``)."""

_LAUNCHER_FLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden")
_FLAG_FIBERS = 1
_FLAG_EXCLUSIVE_Y = 2
_CACHE_VERSION = "ngp-kernels-2"  # 2: libraries come with a SHA-256 manifest entry

stats = {"cpu_compiles": 0, "cuda_loads": 0}
"""Counters for tests: host-compiler runs (cache misses) and CUDA module builds in this process."""

_compile_time = [0.0]  # seconds; a list so the timers can add to it under _compile_time_lock
_compile_time_lock = threading.Lock()


def compile_seconds() -> float:
    """Cumulative wall-clock seconds this process has spent compiling kernels: host-compiler runs of the CPU target
    (cache misses in the kernel cache) and NVRTC/CuPy module builds of the cuda target (CuPy's disk-cache hits
    included, as they are short). Concurrent compilations each add their own duration. Never decreases."""
    with _compile_time_lock:
        return _compile_time[0]


class _CompileTimer:
    """Adds the wall-clock time of its ``with`` block to :func:`compile_seconds` (also when the block raises)."""

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        elapsed = time.perf_counter() - self._start
        with _compile_time_lock:
            _compile_time[0] += elapsed


class KernelCompileError(NgpError):
    """A kernel source failed to compile (or declares a kernel parameter the runtime cannot check).

    ``str(err)`` is one line; ``err.log`` holds the compiler's full output.
    """

    exit_code = EXIT_INTERNAL
    kind = "kernel compile error"

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


def _saved_log(message: str, log: str) -> KernelCompileError:
    """A KernelCompileError whose one-line message names a file holding the full compiler log (best effort: the
    message stands alone when the cache directory cannot be written)."""
    try:
        path = kernel_cache_dir() / "last-compile-error.log"
        # A new file renamed over the name: a symlink planted there is replaced, never written through.
        _write_replacing(path, log.encode("utf-8", errors="replace"))
        message = f"{message} (full log: {path})"
    except (OSError, OutputError):
        pass
    return KernelCompileError(message, log)


class KernelLaunchError(NgpError):
    """A CPU-target launch failed inside the kernel runtime (e.g. ``__syncthreads`` without ``sync_threads=True``,
    a barrier deadlock, ``__trap()``)."""

    exit_code = EXIT_INTERNAL
    kind = "kernel launch error"


# ------------------------------------------------------------------------------------------------------------------
# Signatures
# ------------------------------------------------------------------------------------------------------------------

# Pointee type -> accepted torch dtype names ("*" = any dtype).
_POINTER_DTYPES: dict[str, tuple[str, ...]] = {
    "void": ("*",),
    "float": ("float32",),
    "float2": ("float32",),
    "float3": ("float32",),
    "float4": ("float32",),
    "double": ("float64",),
    "__half": ("float16",),
    "half": ("float16",),
    "__half2": ("float16",),
    "half2": ("float16",),
    "__nv_bfloat16": ("bfloat16",),
    "int": ("int32",),
    "int32_t": ("int32",),
    "int2": ("int32",),
    "int4": ("int32",),
    "unsigned int": ("int32", "uint32"),
    "uint32_t": ("int32", "uint32"),
    "uint2": ("int32", "uint32"),
    "uint4": ("int32", "uint32"),
    "int64_t": ("int64",),
    "long long": ("int64",),
    "uint64_t": ("int64", "uint64"),
    "unsigned long long": ("int64", "uint64"),
    "int16_t": ("int16",),
    "short": ("int16",),
    "uint16_t": ("int16", "uint16"),
    "unsigned short": ("int16", "uint16"),
    "int8_t": ("int8",),
    "signed char": ("int8",),
    "char": ("int8", "uint8"),
    "uint8_t": ("uint8", "bool"),
    "unsigned char": ("uint8", "bool"),
    "bool": ("uint8", "bool"),
}

# Value type -> the NumPy scalar dtype it takes.
_VALUE_DTYPES: dict[str, str] = {
    "int": "int32",
    "int32_t": "int32",
    "unsigned int": "uint32",
    "uint32_t": "uint32",
    "float": "float32",
    "double": "float64",
    "int64_t": "int64",
    "long long": "int64",
    "uint64_t": "uint64",
    "unsigned long long": "uint64",
    "size_t": "uint64",
    "bool": "bool",
    "__half": "float16",
    "half": "float16",
    "int16_t": "int16",
    "short": "int16",
    "uint16_t": "uint16",
    "unsigned short": "uint16",
    "int8_t": "int8",
    "uint8_t": "uint8",
    "unsigned char": "uint8",
}

_TYPE_ALIASES = {
    "unsigned": "unsigned int",
    "signed": "int",
    "signed int": "int",
    "long long int": "long long",
    "signed long long": "long long",
    "long long signed": "long long",
    "unsigned long long int": "unsigned long long",
    "long long unsigned": "unsigned long long",
    "long long unsigned int": "unsigned long long",
    "short int": "short",
    "unsigned short int": "unsigned short",
    "std::size_t": "size_t",
    "std::int32_t": "int32_t",
    "std::uint32_t": "uint32_t",
    "std::int64_t": "int64_t",
    "std::uint64_t": "uint64_t",
}

_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict", "struct"}

_KERNEL_RE = re.compile(
    r'extern\s*"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)\s*)?'
    r"([A-Za-z_]\w*)\s*\(([^)]*)\)"
)
_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_IDENT_RE = re.compile(r"^[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Param:
    """One kernel parameter: ``name``, its base type (qualifiers dropped, defines substituted), whether it is a
    pointer, and the dtypes it accepts (torch dtype names for pointers, one NumPy dtype name for values)."""

    name: str
    type: str
    pointer: bool
    dtypes: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.type}{'*' if self.pointer else ''} {self.name}"


@dataclass(frozen=True)
class KernelSignature:
    """A parsed ``extern "C" __global__ void name(params)``."""

    name: str
    params: tuple[Param, ...]


def _substitute(text: str, defines: Mapping[str, object]) -> str:
    for key, value in defines.items():
        text = re.sub(rf"\b{re.escape(key)}\b", str(value), text)
    return text


def _parse_param(kernel: str, text: str) -> Param:
    tokens = re.findall(r"::|[A-Za-z_]\w*|\*|&|\[|\]", text)
    words: list[str] = []
    pointer = 0
    for tok in tokens:
        if tok in _QUALIFIERS:
            continue
        if tok in ("*", "["):
            pointer += 1
        elif tok in ("]", "&"):
            continue
        elif tok == "::":
            if words:
                words[-1] += "::"
        elif words and words[-1].endswith("::"):
            words[-1] += tok
        else:
            words.append(tok)
    if len(words) < 2:
        raise KernelCompileError(f"kernel {kernel}: cannot parse parameter '{text.strip()}'")
    name = words[-1]
    base = " ".join(words[:-1])
    base = _TYPE_ALIASES.get(base, base)
    if pointer > 1:
        raise KernelCompileError(f"kernel {kernel}: parameter '{text.strip()}': pointers to pointers are not supported")
    table = _POINTER_DTYPES if pointer else _VALUE_DTYPES
    if base not in table:
        kind = "pointee" if pointer else "value"
        raise KernelCompileError(
            f"kernel {kernel}: parameter '{text.strip()}': unsupported {kind} type '{base}' "
            f"(supported: {', '.join(sorted(table))})"
        )
    dtypes = table[base] if pointer else (table[base],)
    return Param(name=name, type=base, pointer=bool(pointer), dtypes=tuple(dtypes))


def parse_kernels(source_text: str, defines: Mapping[str, object] | None = None) -> dict[str, KernelSignature]:
    """Find every ``extern "C" __global__ void NAME(PARAMS)`` in ``source_text`` (``__launch_bounds__(...)`` allowed
    before the name), substitute ``defines`` as whole identifiers in the parameter list and parse it.

    Raises KernelCompileError for a parameter type the runtime cannot check (see docs/kernels.md).
    """
    text = _COMMENT_RE.sub(" ", source_text)
    kernels: dict[str, KernelSignature] = {}
    for match in _KERNEL_RE.finditer(text):
        name, params_text = match.group(1), _substitute(match.group(2), defines or {})
        parts = [p for p in params_text.split(",") if p.strip()]
        if len(parts) == 1 and parts[0].strip() == "void":
            parts = []
        kernels[name] = KernelSignature(name, tuple(_parse_param(name, p) for p in parts))
    return kernels


# ------------------------------------------------------------------------------------------------------------------
# Launch-argument checking
# ------------------------------------------------------------------------------------------------------------------


def _dim3(value, what: str) -> tuple[int, int, int]:
    if type(value) is tuple and len(value) == 3 and all(type(d) is int and d >= 0 for d in value):
        return value  # the common case, checked fast
    if isinstance(value, (int, np.integer)):
        dims = (value,)
    elif isinstance(value, (tuple, list)):
        dims = tuple(value)
    else:
        raise TypeError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise TypeError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return dims  # type: ignore[return-value]


def _check_config(kernel: str, grid, block, shared_mem) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    g = _dim3(grid, f"kernel {kernel}: grid")
    b = _dim3(block, f"kernel {kernel}: block")
    if min(b) < 1 or b[0] * b[1] * b[2] > 1024 or b[2] > 64:
        raise ValueError(f"kernel {kernel}: block {b} must have 1 to 1024 threads (z at most 64)")
    if g[0] > 2**31 - 1 or g[1] > 65535 or g[2] > 65535:
        raise ValueError(f"kernel {kernel}: grid {g} exceeds CUDA's limits (2^31-1, 65535, 65535)")
    if type(shared_mem) is not int and (not isinstance(shared_mem, np.integer)):
        raise TypeError(f"kernel {kernel}: shared_mem must be a non-negative int, got {shared_mem!r}")
    if shared_mem < 0:
        raise ValueError(f"kernel {kernel}: shared_mem must be a non-negative int, got {shared_mem!r}")
    return g, b


@functools.lru_cache(maxsize=1)
def _torch():
    import torch

    return torch


_CTYPES_OF = {
    "int32": ctypes.c_int32,
    "uint32": ctypes.c_uint32,
    "float32": ctypes.c_float,
    "float64": ctypes.c_double,
    "int64": ctypes.c_int64,
    "uint64": ctypes.c_uint64,
    "bool": ctypes.c_bool,
    "int16": ctypes.c_int16,
    "uint16": ctypes.c_uint16,
    "int8": ctypes.c_int8,
    "uint8": ctypes.c_uint8,
}


@dataclass(frozen=True)
class _ParamPlan:
    param: Param
    torch_dtypes: frozenset | None  # pointers: accepted torch dtypes (None = any)
    np_type: type | None  # values: the exact NumPy scalar type
    to_ctypes: object  # values: numpy scalar -> ctypes object (CPU target)


@functools.cache
def _plan(sig: KernelSignature) -> tuple[_ParamPlan, ...]:
    torch = _torch()
    plans = []
    for p in sig.params:
        if p.pointer:
            dts = None if p.dtypes == ("*",) else frozenset(getattr(torch, d) for d in p.dtypes if hasattr(torch, d))
            plans.append(_ParamPlan(p, dts, None, None))
        else:
            name = p.dtypes[0]
            np_type = np.dtype(name).type
            if name == "float16":

                def conv(v):
                    return ctypes.c_uint16(int(v.view(np.uint16)))

            else:
                ct = _CTYPES_OF[name]

                def conv(v, ct=ct):
                    return ct(v.item())

            plans.append(_ParamPlan(p, None, np_type, conv))
    return tuple(plans)


def _arg_error(sig: KernelSignature, plan: _ParamPlan, arg: object, device_type: str, device) -> Exception:
    torch = _torch()
    param = plan.param
    where = f"kernel {sig.name}, parameter {param.describe()}"
    if param.pointer:
        if not isinstance(arg, torch.Tensor):
            return TypeError(f"{where}: expected a torch.Tensor or None, got {type(arg).__name__}")
        if plan.torch_dtypes is not None and arg.dtype not in plan.torch_dtypes:
            return TypeError(f"{where}: expected a tensor of dtype {' or '.join(param.dtypes)}, got {arg.dtype}")
        if arg.device.type != device_type:
            return ValueError(f"{where}: expected a tensor on {device_type}, got one on {arg.device}")
        if device is not None and arg.device != device:
            return ValueError(f"{where}: tensors on different devices ({device} and {arg.device})")
        return ValueError(f"{where}: the tensor must be contiguous (shape {tuple(arg.shape)}, strides {arg.stride()})")
    if isinstance(arg, np.generic):
        return TypeError(f"{where}: expected a NumPy {param.dtypes[0]} scalar, got numpy {arg.dtype.name}")
    return TypeError(
        f"{where}: expected a NumPy {param.dtypes[0]} scalar (np.{param.dtypes[0]}(...)), got Python "
        f"{type(arg).__name__} (CuPy would pass a Python number as a 64-bit value)"
    )


def _check_args(
    sig: KernelSignature, plans: tuple[_ParamPlan, ...], args: Sequence[object], device_type: str
) -> list[tuple[_ParamPlan, object]]:
    """Check ``args`` against ``sig`` (``plans`` = _plan(sig)); returns (plan, data pointer or NumPy scalar) per
    parameter. Raises TypeError / ValueError naming the kernel and parameter."""
    torch = _torch()
    if len(args) != len(plans):
        listing = ", ".join(p.describe() for p in sig.params)
        raise TypeError(f"kernel {sig.name} takes {len(plans)} arguments ({listing}), got {len(args)}")
    out: list[tuple[_ParamPlan, object]] = []
    device = None
    tensor_type = torch.Tensor
    for plan, arg in zip(plans, args, strict=True):
        if plan.np_type is None:
            if arg is None:
                out.append((plan, 0))
                continue
            if (
                not isinstance(arg, tensor_type)
                or (plan.torch_dtypes is not None and arg.dtype not in plan.torch_dtypes)
                or arg.device.type != device_type
                or (device is not None and arg.device != device)
                or not arg.is_contiguous()
            ):
                raise _arg_error(sig, plan, arg, device_type, device)
            device = arg.device
            out.append((plan, arg.data_ptr()))
        else:
            if type(arg) is not plan.np_type:
                raise _arg_error(sig, plan, arg, device_type, device)
            out.append((plan, arg))
    return out


# ------------------------------------------------------------------------------------------------------------------
# Modules
# ------------------------------------------------------------------------------------------------------------------


class KernelModule:
    """A compiled kernel source for one target. ``kernels`` maps each kernel name to its parsed signature."""

    target: str = ""

    def __init__(self, path: Path, defines: dict[str, str], kernels: dict[str, KernelSignature]) -> None:
        self.path = path
        self.defines = defines
        self.kernels = kernels
        self._plans = {name: _plan(sig) for name, sig in kernels.items()}

    def __repr__(self) -> str:
        return f"<KernelModule {self.path.name} target={self.target} defines={self.defines}>"

    def _signature(self, name: str) -> KernelSignature:
        try:
            return self.kernels[name]
        except KeyError:
            raise KeyError(f"{self.path.name} has no kernel '{name}' (kernels: {', '.join(self.kernels)})") from None

    def launch(
        self,
        name: str,
        grid: int | Sequence[int],
        block: int | Sequence[int],
        args: Sequence[object],
        shared_mem: int = 0,
        *,
        sync_threads: bool = False,
        exclusive_y: bool = False,
    ) -> None:
        """Launch kernel ``name`` over ``grid`` blocks of ``block`` threads (ints or 1-3 tuples) with ``shared_mem``
        bytes of dynamic shared memory. A grid with a zero dimension launches nothing.

        ``sync_threads`` (CPU only): the kernel uses ``__syncthreads``, warp intrinsics or ``__syncwarp``, so a block's
        threads run as fibers. ``exclusive_y`` (CPU only): each worker owns whole ``blockIdx.y`` rows and ``atomicAdd``
        is a plain read-modify-write.

        Raises TypeError / ValueError for a wrong launch configuration or argument (Python numbers for value
        parameters, wrong dtype, non-contiguous or wrong-device tensors, wrong count), KernelLaunchError for a failure
        inside the CPU runtime.
        """
        raise NotImplementedError


class _LaunchDesc(ctypes.Structure):
    # Must match ngp_emu::LaunchDesc in cpu_emu.h.
    _fields_ = [
        ("pool_run", ctypes.c_void_p),
        ("nthreads", ctypes.c_longlong),
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared_bytes", ctypes.c_ulonglong),
        ("params", ctypes.POINTER(ctypes.c_void_p)),
        ("flags", ctypes.c_longlong),
        ("err", ctypes.c_void_p),
        ("err_len", ctypes.c_longlong),
    ]


class CpuKernelModule(KernelModule):
    """A kernel source compiled by the host compiler and loaded with ctypes."""

    target = "cpu"

    def __init__(self, path, defines, kernels, library: Path) -> None:
        super().__init__(path, defines, kernels)
        self.library = library
        self._lib = ctypes.CDLL(str(library))
        self._funcs = {}
        for name in kernels:
            fn = getattr(self._lib, f"ngp_launch_{name}")
            fn.argtypes = [ctypes.POINTER(_LaunchDesc)]
            fn.restype = ctypes.c_int
            self._funcs[name] = fn
        self._pool = _pool_run_address()
        self._tls = threading.local()

    def _err_buffer(self):
        buf = getattr(self._tls, "err", None)
        if buf is None:
            buf = self._tls.err = ctypes.create_string_buffer(1024)
        buf[0] = b"\0"
        return buf

    def launch(self, name, grid, block, args, shared_mem=0, *, sync_threads=False, exclusive_y=False) -> None:
        sig = self._signature(name)
        g, b = _check_config(name, grid, block, shared_mem)
        checked = _check_args(sig, self._plans[name], args, "cpu")
        if 0 in g:
            return
        holders = [ctypes.c_void_p(v) if plan.np_type is None else plan.to_ctypes(v) for plan, v in checked]
        params = (ctypes.c_void_p * max(1, len(holders)))(*[ctypes.addressof(h) for h in holders])
        err = self._err_buffer()
        desc = _LaunchDesc(
            self._pool,
            max(1, _torch().get_num_threads()),
            (ctypes.c_uint * 3)(*g),
            (ctypes.c_uint * 3)(*b),
            shared_mem,
            params,
            (_FLAG_FIBERS if sync_threads else 0) | (_FLAG_EXCLUSIVE_Y if exclusive_y else 0),
            ctypes.addressof(err),
            len(err),
        )
        rc = self._funcs[name](ctypes.byref(desc))
        if rc != 0:
            msg = err.value.decode(errors="replace") or f"error code {rc}"
            raise KernelLaunchError(f"kernel {name} ({self.path.name}, cpu): {msg}")


class CudaKernelModule(KernelModule):
    """A kernel source compiled by NVRTC through CuPy, launched on torch's current stream of ``device``."""

    target = "cuda"

    def __init__(self, path, defines, kernels, raw_module, device_index: int) -> None:
        super().__init__(path, defines, kernels)
        self._raw = raw_module
        self.device_index = device_index
        self._funcs = {name: raw_module.get_function(name) for name in kernels}
        self._streams: dict[int, object] = {}
        self._opted_in: dict[str, int] = {}

    def launch(self, name, grid, block, args, shared_mem=0, *, sync_threads=False, exclusive_y=False) -> None:
        import cupy

        torch = _torch()
        sig = self._signature(name)
        g, b = _check_config(name, grid, block, shared_mem)
        checked = _check_args(sig, self._plans[name], args, "cuda")
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.device.index != self.device_index:
                raise ValueError(f"kernel {name}: tensor on {arg.device}, module loaded for cuda:{self.device_index}")
        if 0 in g:
            return
        kargs = tuple(np.uint64(v) if plan.np_type is None else v for plan, v in checked)
        func = self._funcs[name]
        torch_stream = torch.cuda.current_stream(self.device_index)
        handle = torch_stream.cuda_stream
        # Everything below acts on the current CuPy device (the kernel attribute, the stream, the launch), which need
        # not be torch's: make it the module's.
        with cupy.cuda.Device(self.device_index):
            stream = self._streams.get(handle)
            if stream is None:
                stream = self._streams[handle] = _cupy_stream(cupy, torch_stream, handle, self.device_index)
            if shared_mem > 48 * 1024 and self._opted_in.get(name, 0) < shared_mem:
                func.max_dynamic_shared_size_bytes = int(shared_mem)  # opt in to more than 48 KiB
                self._opted_in[name] = int(shared_mem)
            with stream:
                func(g, b, kargs, shared_mem=int(shared_mem))


def _cupy_stream(cupy, torch_stream, handle: int, device_index: int):
    """A CuPy stream for torch's ``torch_stream`` (raw ``handle``): ``cupy.cuda.Stream.from_external`` (CuPy >= 14,
    the CUDA stream protocol; ``ExternalStream`` is deprecated there) when torch's stream implements
    ``__cuda_stream__``, else ``cupy.cuda.ExternalStream``."""
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None and hasattr(torch_stream, "__cuda_stream__"):
        return from_external(torch_stream)
    return cupy.cuda.ExternalStream(handle, device_index)


# ------------------------------------------------------------------------------------------------------------------
# Compilers and caches
# ------------------------------------------------------------------------------------------------------------------


def host_compiler() -> str | None:
    """The host C++ compiler of the CPU target: ``$CXX`` when set and found, else g++, else clang++ on PATH;
    None when there is none."""
    cxx = os.environ.get("CXX")
    if cxx:
        found = shutil.which(cxx)
        if found:
            return found
    for name in ("g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


@functools.cache
def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_identity() -> str:
    """The CPU a library was built for (``-march=native``): part of every cache key."""
    from ngp_cli.machine import cpuinfo

    model, flags = cpuinfo()
    return f"{platform.machine()}|{platform.processor()}|{model}|{' '.join(flags)}"


def cache_dir() -> Path:
    """The configured CPU kernel cache: ``$NGP_CACHE_DIR`` or ``~/.cache/ngp/kernels``. Not created or checked here;
    :func:`kernel_cache_dir` is the directory actually used."""
    return Path(os.environ.get("NGP_CACHE_DIR") or Path.home() / ".cache" / "ngp" / "kernels")


_checked_dirs: dict[str, Path] = {}


def _make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700 (existing ones are left as they are). Raises OSError."""
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # a concurrent process made it; _private_dir_problem checks what it is
        os.chmod(d, 0o700)  # mkdir's mode is masked by the umask


def _private_dir_problem(path: Path) -> str | None:
    """Create ``path`` (0700) when missing and say why it must not hold loadable libraries, or None when it may: it
    must be a directory (a symlink is followed) owned by the effective user and writable by nobody else."""
    try:
        _make_private_dirs(path)
        st = os.stat(path)
    except OSError as exc:
        return f"cannot be created or read ({exc.strerror or exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    if uid is not None and st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if st.st_mode & 0o022:
        who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if st.st_mode & bit)
        return f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def kernel_cache_dir() -> Path:
    """The directory CPU kernel libraries are built into and loaded from: :func:`cache_dir`, created with mode 0700
    (with the parents ngp creates), when it is a directory owned by the current user and not group/world-writable.
    Otherwise one warning line goes to stderr and a private directory is used instead:
    ``<tempdir>/ngp-kernels-<uid>`` when it passes the same checks, else a fresh ``tempfile.mkdtemp``. Decided once
    per process and configured path."""
    configured = cache_dir()
    key = str(configured)
    with _lock:
        found = _checked_dirs.get(key)
        if found is None:
            found = _checked_dirs[key] = _choose_cache_dir(configured)
    return found


def _choose_cache_dir(configured: Path) -> Path:
    problem = _private_dir_problem(configured)
    if problem is None:
        return configured
    uid = os.geteuid() if hasattr(os, "geteuid") else os.getpid()
    fallback = Path(tempfile.gettempdir()) / f"ngp-kernels-{uid}"
    if _private_dir_problem(fallback) is not None:
        fallback = Path(tempfile.mkdtemp(prefix="ngp-kernels-"))  # 0700, ours, new: safe by construction
    warn(f"kernel cache {configured} {problem}; not used, kernels go to {fallback}")
    return fallback


def _write_replacing(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file beside ``path`` (``O_EXCL``: never an existing file or a symlink) and rename it
    onto ``path``, replacing whatever is there (a symlink included) without following it. Raises OutputError."""
    from ngp_cli.runs import atomic_write

    def write(tmp: str) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)


_MANIFEST_SUFFIX = ".sha256"
_SHA256_RE = re.compile(r"^([0-9a-f]{64})  ")


def _sha256_of(path: Path | str) -> str | None:
    """Hex SHA-256 of the regular file at ``path`` (a symlink is not followed: None), or None when unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()


def _manifest_entry(library: Path) -> str | None:
    """The SHA-256 recorded for ``library`` in its manifest entry ``<library>.sha256`` (``sha256sum`` format), or
    None when there is no readable, well-formed entry."""
    try:
        fd = os.open(str(library) + _MANIFEST_SUFFIX, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            text = fh.read(4096).decode("ascii", errors="replace")
    except OSError:
        return None
    m = _SHA256_RE.match(text)
    return m.group(1) if m else None


def _library_problem(library: Path) -> str | None:
    """Why the cached ``library`` must not be loaded ("absent" when there is nothing at that name), or None when its
    SHA-256 matches its manifest entry."""
    if not os.path.lexists(library):
        return "absent"
    expected = _manifest_entry(library)
    if expected is None:
        return "it has no manifest entry"
    actual = _sha256_of(library)
    if actual is None:
        return "it is not a readable regular file"
    if actual != expected:
        return "its SHA-256 does not match its manifest entry"
    return None


_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*["<]([^">]+)[">]', re.M)


def _headers(source: Path, extra: Sequence[Path] = ()) -> list[Path]:
    """The files ``source`` includes, transitively, that resolve in its own directory or in ``ngp_cli/cuda`` (system
    and CUDA headers are covered by the compiler version), plus ``extra`` (e.g. the force-included cpu_emu.h)."""
    search = (source.parent, CUDA_DIR)
    found: dict[Path, None] = {}
    todo = [source, *extra]
    while todo:
        current = todo.pop()
        try:
            text = current.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for name in _INCLUDE_RE.findall(text):
            for base in (current.parent, *search):
                candidate = (base / name).resolve()
                if candidate.is_file():
                    if candidate not in found and candidate != source:
                        found[candidate] = None
                        todo.append(candidate)
                    break
    for e in extra:
        found.setdefault(e.resolve(), None)
    return sorted(found)


def _define_flags(defines: Mapping[str, str]) -> list[str]:
    return [f"-D{k}={v}" for k, v in sorted(defines.items())]


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if "error" in line.lower():
            return line.strip()
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[0] if lines else "no compiler output"


def _compile_cached(
    stem: str, key_parts: Sequence[bytes | str], cmd_prefix: list[str], source_file: Path, what: str
) -> Path:
    """Compile ``source_file`` with ``cmd_prefix + [source, -o, out]`` into the cache unless already there."""
    h = hashlib.sha256()
    for part in key_parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    directory = kernel_cache_dir()
    out = directory / f"{stem}-{h.hexdigest()[:24]}.so"
    # The name is predictable, so a file found there is loaded (its constructors run in this process) only when its
    # content is what a build of ours recorded; anything else is rebuilt over.
    problem = _library_problem(out)
    if problem is None:
        return out
    if problem != "absent":
        warn(f"kernel cache: {out} not loaded: {problem}; rebuilding it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".so.tmp", dir=directory)
    except OSError as exc:
        raise KernelCompileError(f"cannot write to the kernel cache directory {directory}: {exc}") from exc
    os.close(fd)
    cmd = [*cmd_prefix, str(source_file), "-o", tmp]
    from ngp_cli.console import info

    info(f"compiling {what} for the CPU (first use; cached in {directory})")
    try:
        with _CompileTimer():
            proc = subprocess.run(cmd, capture_output=True, text=True)
        stats["cpu_compiles"] += 1
        if proc.returncode != 0:
            log = f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
            raise _saved_log(f"{what} failed to compile for the cpu target: {_first_error(proc.stderr)}", log)
        digest = _sha256_of(tmp)
        os.replace(tmp, out)
        try:
            _write_replacing(Path(str(out) + _MANIFEST_SUFFIX), f"{digest}  {out.name}\n".encode())
        except NgpError as exc:  # the library is sound; without its entry it is rebuilt next time
            warn(f"kernel cache: cannot record the SHA-256 of {out.name}: {exc}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


_lock = threading.RLock()
_modules: dict[tuple, KernelModule] = {}
_fast_modules: dict[tuple, KernelModule] = {}
_key_locks: dict[tuple, threading.Lock] = {}


@functools.lru_cache(maxsize=1)
def _pool_lib() -> ctypes.CDLL:
    cxx = host_compiler()
    if cxx is None:
        raise KernelCompileError("no host C++ compiler found for the cpu kernel target (set $CXX or install g++)")
    src = CUDA_DIR / "cpu_launch.cpp"

    def build(flags: tuple[str, ...]) -> ctypes.CDLL:
        key = [_CACHE_VERSION, src.read_bytes(), cxx, _compiler_version(cxx), " ".join(flags)]
        return ctypes.CDLL(str(_compile_cached("cpu_launch", key, [cxx, *flags], src, "cpu_launch.cpp")))

    if _torch_uses_openmp():
        try:  # the workers become torch's own OpenMP threads (see cpu_launch.cpp)
            return build((*_LAUNCHER_FLAGS, "-fopenmp"))
        except KernelCompileError:
            pass  # plain threads
    return build(_LAUNCHER_FLAGS)


def _torch_uses_openmp() -> bool:
    """Whether torch runs its CPU ops on libgomp threads (Linux wheels), so the launcher can share that team."""
    return "parallel backend: OpenMP" in _torch().__config__.parallel_info() and sys.platform.startswith("linux")


def _pool_run_address() -> int:
    return ctypes.cast(_pool_lib().ngp_pool_run, ctypes.c_void_p).value  # type: ignore[return-value]


def _resolve_source(source: str | os.PathLike) -> Path:
    path = Path(source)
    if not path.is_absolute():
        path = CUDA_DIR / path
    if not path.is_file():
        raise FileNotFoundError(f"kernel source not found: {path}")
    return path.resolve()


def _normalize_defines(defines: Mapping[str, object] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (defines or {}).items():
        if not _IDENT_RE.match(key):
            raise ValueError(f"define name must be an identifier, got {key!r}")
        if isinstance(value, bool):
            value = int(value)
        text = str(value)
        if "\n" in text:
            raise ValueError(f"define {key} must be a single line")
        out[key] = text
    return out


def _load_cpu(path: Path, text: str, defines: dict[str, str], kernels: dict[str, KernelSignature]) -> KernelModule:
    cxx = host_compiler()
    if cxx is None:
        raise KernelCompileError("no host C++ compiler found for the cpu kernel target (set $CXX or install g++)")
    includes = ["-include", str(CUDA_DIR / "cpu_emu.h"), f"-I{CUDA_DIR}", f"-I{path.parent}"]
    flags = [*CPU_FLAGS, *includes, "-DNGP_CPU", *_define_flags(defines)]
    wrapper = f'#include "{path}"\n' + "".join(f"NGP_EMU_EXPORT_KERNEL({name})\n" for name in kernels)
    key: list[bytes | str] = [_CACHE_VERSION, "cpu", text, wrapper, cxx, _compiler_version(cxx), " ".join(flags)]
    for header in _headers(path, [CUDA_DIR / "cpu_emu.h"]):
        key += [str(header.name), header.read_bytes()]
    key.append(_cpu_identity())
    with tempfile.TemporaryDirectory(prefix="ngp-kernel-") as tmp:
        wrapper_file = Path(tmp) / f"{path.stem}_cpu.cpp"
        wrapper_file.write_text(wrapper)
        library = _compile_cached(path.stem, key, [cxx, *flags, "-x", "c++"], wrapper_file, path.name)
    try:
        return CpuKernelModule(path, defines, kernels, library)
    except (OSError, AttributeError) as exc:
        raise KernelCompileError(f"cannot load the compiled kernels of {path.name} ({library}): {exc}") from exc


@functools.lru_cache(maxsize=1)
def nvrtc_version() -> tuple[int, int] | None:
    """(major, minor) of the NVRTC library CuPy loads, or None when CuPy or NVRTC is unavailable. Needs no GPU."""
    try:
        from cupy_backends.cuda.libs import nvrtc  # type: ignore[import-not-found]

        major, minor = nvrtc.getVersion()
        return int(major), int(minor)
    except Exception:  # noqa: BLE001 - no CuPy, no libnvrtc, or a broken install: all mean "unavailable"
        return None


_CUDA_VERSION_RE = re.compile(r"#\s*define\s+(?:CUDART_VERSION|CUDA_VERSION)\s+(\d+)")


def _header_set_version(dirs: Sequence[Path]) -> tuple[int, int] | None:
    for d in dirs:
        for name in ("cuda_runtime_api.h", "cuda.h"):
            try:
                m = _CUDA_VERSION_RE.search((d / name).read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue
            if m:
                v = int(m.group(1))
                return v // 1000, v % 1000 // 10
    return None


def _cuda_header_sets() -> list[list[Path]]:
    """Candidate CUDA header sets, each a list of include dirs that belong together: a toolkit's include dir
    ($CUDA_PATH/$CUDA_HOME/$CUDA_ROOT, CuPy's CUDA path, /usr/local/cuda; CUDA 13 pip wheels' unified nvidia/cu13),
    or CUDA 12 pip wheels' split layout (nvidia/cuda_runtime/include with cuda_fp16.h and mma.h, plus
    nvidia/cuda_nvcc/include with the crt/ headers that mma.h includes)."""
    sets: list[list[Path]] = []
    for var in ("CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"):
        if os.environ.get(var):
            sets.append([Path(os.environ[var]) / "include"])
    try:
        import nvidia  # type: ignore[import-not-found]  # namespace package of NVIDIA's pip wheels

        for base in map(Path, nvidia.__path__):
            sets.extend([d] for d in sorted(base.glob("cu[0-9]*/include")))
            if (base / "cuda_runtime" / "include").is_dir():
                sets.append([base / "cuda_runtime" / "include", base / "cuda_nvcc" / "include"])
    except Exception:  # noqa: BLE001 - no wheels installed
        pass
    try:
        import cupy

        cuda_path = cupy.cuda.get_cuda_path()
        if cuda_path:
            sets.append([Path(cuda_path) / "include"])
    except Exception:  # noqa: BLE001 - CuPy's toolkit discovery is best effort
        pass
    sets.append([Path("/usr/local/cuda/include")])
    return sets


def _has(dirs: Sequence[Path], name: str) -> bool:
    return any((d / name).is_file() for d in dirs)


def _cuda_include_dirs() -> list[str]:
    """The CUDA include dirs to put before CuPy's own (which come after ours in NVRTC's search order, and whose
    cuda_fp16.h may not match the toolkit's mma.h: CuPy issue #8146): one header set with cuda_fp16.h, mma.h and
    crt/mma.h, from a CUDA release of NVRTC's major version (headers of another major version are used only when
    no matching set exists). Preference: NVRTC's exact major.minor, then its major, then any complete set, then a
    set with mma.h but no crt/ (the compile error then names the missing header)."""
    nv = nvrtc_version()
    complete: list[tuple[int, list[Path]]] = []
    partial: list[list[Path]] = []
    seen: set[tuple[str, ...]] = set()
    for hs in _cuda_header_sets():
        dirs = [d for d in hs if d.is_dir()]
        key = tuple(str(d.resolve()) for d in dirs)
        if not dirs or key in seen or not _has(dirs, "mma.h") or not _has(dirs, "cuda_fp16.h"):
            continue
        seen.add(key)
        if not _has(dirs, "crt/mma.h"):
            partial.append(dirs)
            continue
        version = _header_set_version(dirs)
        rank = 2
        if nv is not None and version is not None and version[0] == nv[0]:
            rank = 0 if version == nv else 1
        complete.append((rank, dirs))
    if complete:
        return [str(d) for d in min(complete, key=lambda item: item[0])[1]]
    return [str(d) for d in partial[0]] if partial else []


def cuda_compile_options(source: str | os.PathLike, defines: Mapping[str, object] | None = None) -> tuple[str, ...]:
    """The options the cuda target passes to ``cupy.RawModule`` for ``source`` with ``defines``: ``-std=c++17``,
    ``-I`` the CUDA header set of :func:`_cuda_include_dirs`, ``-I ngp_cli/cuda``, ``-I`` the source's directory,
    ``-DNAME=VALUE``. CuPy adds its own include dirs around these (after them: its cuda_fp16.h and CUDA runtime
    headers) and ``-ftz=true -arch=sm_XX --device-as-default-execution-space``."""
    path = _resolve_source(source)
    return (
        "-std=c++17",
        *(f"-I{d}" for d in _cuda_include_dirs()),
        f"-I{CUDA_DIR}",
        f"-I{path.parent}",
        *_define_flags(_normalize_defines(defines)),
    )


def _cuda_code(path: Path, text: str) -> str:
    # Headers are textually part of the program: name the include-dir contents in the source so that CuPy's cache
    # key changes when a header does.
    digest = hashlib.sha256()
    for header in _headers(path):
        digest.update(header.name.encode() + b"\0" + header.read_bytes())
    return f'// ngp headers {digest.hexdigest()}\n#line 1 "{path.name}"\n{text}'


_MISSING_HEADER_HINT = (
    " (NVRTC needs the CUDA headers: cuda_fp16.h and mma.h come with nvidia-cuda-runtime-cu12, the crt/ headers "
    "mma.h includes with nvidia-cuda-nvcc-cu12; CUDA 13: nvidia-cuda-runtime and nvidia-cuda-crt; or set CUDA_PATH "
    "to a toolkit of NVRTC's major version)"
)


def _compile_error(path: Path, log: str, what: str) -> KernelCompileError:
    first = _first_error(log)
    if "cannot open source file" in log:
        first += _MISSING_HEADER_HINT
    return _saved_log(f"{path.name} failed to compile {what}: {first}", log)


def nvrtc_compile_check(
    source: str | os.PathLike, arch: str | int, defines: Mapping[str, object] | None = None
) -> dict[str, object]:
    """Compile ``source`` with NVRTC as the cuda target does (:func:`cuda_compile_options`, CuPy's include dirs
    around them and the options CuPy's RawModule adds), for ``arch`` ("sm_80", "80" or 80), without loading it:
    no GPU needed. Returns ``{"nvrtc_version", "options", "log", "cubin_bytes"}``.

    Raises KernelCompileError with NVRTC's log when the source fails to compile, or when CuPy or NVRTC is
    unavailable (check :func:`nvrtc_version` first to skip).
    """
    version = nvrtc_version()
    if version is None:
        raise KernelCompileError("nvrtc_compile_check needs CuPy and the NVRTC library (nvrtc_version() is None)")
    from cupy._core import core  # type: ignore[import-not-found]
    from cupy_backends.cuda.libs import nvrtc  # type: ignore[import-not-found]

    arch_s = str(arch).removeprefix("sm_")
    path = _resolve_source(source)
    defs = _normalize_defines(defines)
    options = cuda_compile_options(path, defs)
    # CuPy >= 14 exposes the include dirs it adds around the user's options (compile_with_cache uses it).
    assemble = getattr(core, "assemble_cupy_compiler_options", None)
    if assemble is not None:
        options = tuple(assemble(options))
    options += ("-ftz=true", f"-arch=sm_{arch_s}", "--device-as-default-execution-space")
    prog = nvrtc.createProgram(_cuda_code(path, path.read_text(encoding="utf-8")), path.name, (), ())
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog) or str(exc)
            raise _compile_error(path, log, f"with NVRTC {version[0]}.{version[1]} for sm_{arch_s}") from None
        log = nvrtc.getProgramLog(prog)
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return {"nvrtc_version": version, "options": options, "log": log, "cubin_bytes": len(cubin)}


def _load_cuda(path: Path, text: str, defines: dict[str, str], kernels: dict[str, KernelSignature]) -> KernelModule:
    try:
        import cupy
    except ImportError as exc:
        raise KernelCompileError(f"the cuda kernel target needs CuPy: {exc}") from exc
    torch = _torch()
    device_index = torch.cuda.current_device()
    options = cuda_compile_options(path, defines)
    code = _cuda_code(path, text)
    try:
        # RawModule compiles lazily: the first get_function (in CudaKernelModule) runs NVRTC, so time both.
        with cupy.cuda.Device(device_index), _CompileTimer():
            raw = cupy.RawModule(code=code, options=options, backend="nvrtc")
            module = CudaKernelModule(path, defines, kernels, raw, device_index)
    except cupy.cuda.compiler.CompileException as exc:
        log = exc.get_message() if hasattr(exc, "get_message") else str(exc)
        raise _compile_error(path, log, "for the cuda target") from exc
    stats["cuda_loads"] += 1
    return module


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


# ------------------------------------------------------------------------------------------------------------------
# nvcc compile check (register use and spills per architecture)
# ------------------------------------------------------------------------------------------------------------------


def nvcc_path() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME/$CUDA_PATH or /usr/local/cuda; None when absent."""
    found = shutil.which("nvcc")
    if found:
        return found
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if base and (Path(base) / "bin" / "nvcc").is_file():
            return str(Path(base) / "bin" / "nvcc")
    return None


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PTXAS_PROPS = re.compile(r"Function properties for (\S+)")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def nvcc_compile_check(
    source: str | os.PathLike, arch: str | int, defines: Mapping[str, object] | None = None
) -> dict[str, dict[str, int]]:
    """Compile ``source`` with ``nvcc -cubin -arch=sm_XX -Xptxas -v`` and report, per kernel, its ``registers``,
    ``spill_stores``, ``spill_loads`` (bytes), ``stack_bytes`` and static ``shared_bytes``.

    ``arch`` is "sm_80", "80" or 80. Raises KernelCompileError with the nvcc log on failure or when nvcc is absent.
    """
    nvcc = nvcc_path()
    if nvcc is None:
        raise KernelCompileError("nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda)")
    arch_s = str(arch)
    if not arch_s.startswith("sm_"):
        arch_s = f"sm_{arch_s}"
    path = _resolve_source(source)
    defs = _normalize_defines(defines)
    kernels = parse_kernels(path.read_text(encoding="utf-8"), defs)
    with tempfile.TemporaryDirectory(prefix="ngp-nvcc-") as tmp:
        cmd = [
            nvcc,
            "-cubin",
            f"-arch={arch_s}",
            "-Xptxas",
            "-v",
            "-std=c++17",
            f"-I{CUDA_DIR}",
            f"-I{path.parent}",
            *_define_flags(defs),
            "-o",
            str(Path(tmp) / "out.cubin"),
            "-x",
            "cu",
            str(path),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log = f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    if proc.returncode != 0:
        raise KernelCompileError(
            f"{path.name} failed to compile with nvcc for {arch_s}: {_first_error(proc.stderr)}", log
        )
    results: dict[str, dict[str, int]] = {}
    current: str | None = None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = _PTXAS_ENTRY.search(line) or _PTXAS_PROPS.search(line)
        if m:
            current = m.group(1)
            if current in kernels:
                results.setdefault(
                    current, {"registers": 0, "spill_stores": 0, "spill_loads": 0, "stack_bytes": 0, "shared_bytes": 0}
                )
            continue
        if current not in results:
            continue
        entry = results[current]
        m = _PTXAS_SPILL.search(line)
        if m:
            entry["stack_bytes"], entry["spill_stores"], entry["spill_loads"] = (int(x) for x in m.groups())
        m = _PTXAS_USED.search(line)
        if m:
            entry["registers"] = int(m.group(1))
            s = _PTXAS_SMEM.search(line)
            entry["shared_bytes"] = int(s.group(1)) if s else 0
    missing = [k for k in kernels if k not in results]
    if missing:
        raise KernelCompileError(f"nvcc reported no ptxas info for {', '.join(missing)} ({arch_s})", log)
    return results

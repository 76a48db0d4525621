"""Kernel sources and their signatures (docs/kernels.md): where a source is found (:data:`CUDA_DIR`), its
``defines``, the parsed ``extern "C" __global__`` signatures, the launch configuration and argument checks every
launch goes through on both targets, and :class:`KernelModule`, the interface both targets' modules implement.

Imports numpy at import time and torch on first use."""

from __future__ import annotations

import ctypes
import functools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ngp_cli.errors import EXIT_INTERNAL, NgpError

CUDA_DIR = Path(__file__).resolve().parent
"""Directory of the kernel sources and headers (``-I`` for both compilers)."""


class KernelCompileError(NgpError):
    """A kernel source failed to compile (or declares a kernel parameter the runtime cannot check).

    ``str(err)`` is one line; ``err.log`` holds the compiler's full output.
    """

    exit_code = EXIT_INTERNAL
    kind = "kernel compile error"

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


# ------------------------------------------------------------------------------------------------------------------
# Sources and defines
# ------------------------------------------------------------------------------------------------------------------


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


def _define_flags(defines: Mapping[str, str]) -> list[str]:
    return [f"-D{k}={v}" for k, v in sorted(defines.items())]


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

"""The cpu target (docs/kernels.md): the host C++ compiler builds a kernel source with ``cpu_emu.h`` force-included
into a shared library in the kernel cache, :class:`CpuKernelModule` loads it with ctypes and launches its kernels on
the worker pool of ``cpu_launch.cpp`` (built once, into its own cached library)."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from ngp_cli.console import warn
from ngp_cli.errors import EXIT_INTERNAL, NgpError

from .kernel_cache import (
    _MANIFEST_SUFFIX,
    _CompileTimer,
    _first_error,
    _headers,
    _library_problem,
    _saved_log,
    _sha256_of,
    _write_replacing,
    kernel_cache_dir,
    stats,
)
from .signature import (
    CUDA_DIR,
    KernelCompileError,
    KernelModule,
    KernelSignature,
    _check_args,
    _check_config,
    _define_flags,
    _torch,
)

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
    "-fno-trapping-math",
    "-ffp-contract=fast",
)
"""Host-compiler flags of the CPU target (plus ``-include cpu_emu.h -I<cuda dir> -DNGP_CPU -D<defines>``).

``-fno-trapping-math`` lets GCC vectorise floor and float/int conversions (hashgrid.cu's batched cells); values are
unchanged, only floating-point exception flags may differ, which no kernel reads. It is a flag of the whole build, not
a ``#pragma GCC optimize`` in one source: functions compiled under different optimisation options are not inlined
into each other, and with such a pragma in hashgrid.cu the emulation's ``__half`` conversions (cpu_emu.h) became
calls, one per table value: an fp16 table read 3× slower than an fp32 one."""

_LAUNCHER_FLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden")
_FLAG_FIBERS = 1
_FLAG_EXCLUSIVE_Y = 2
_CACHE_VERSION = "ngp-kernels-2"  # 2: libraries come with a SHA-256 manifest entry


class KernelLaunchError(NgpError):
    """A CPU-target launch failed inside the kernel runtime (e.g. ``__syncthreads`` without ``sync_threads=True``,
    a barrier deadlock, ``__trap()``)."""

    exit_code = EXIT_INTERNAL
    kind = "kernel launch error"


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


# ------------------------------------------------------------------------------------------------------------------
# Compiler and builds
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
    from ngp_cli.hardware import cpuinfo

    model, flags = cpuinfo()
    return f"{platform.machine()}|{platform.processor()}|{model}|{' '.join(flags)}"


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

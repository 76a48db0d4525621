"""The cuda target (docs/kernels.md): NVRTC through CuPy (``cupy.RawModule``, binaries cached by CuPy in
``CUPY_CACHE_DIR``) with one matching set of CUDA headers, :class:`CudaKernelModule` launching on torch's current
stream, and :func:`nvrtc_compile_check` (an NVRTC build without a GPU).

Only this package imports CuPy, and only inside functions."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .kernel_cache import _CompileTimer, _first_error, _headers, _saved_log, stats
from .signature import (
    CUDA_DIR,
    KernelCompileError,
    KernelModule,
    KernelSignature,
    _check_args,
    _check_config,
    _define_flags,
    _normalize_defines,
    _resolve_source,
    _torch,
)


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
# NVRTC and the CUDA headers
# ------------------------------------------------------------------------------------------------------------------


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

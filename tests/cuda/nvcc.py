"""A test helper: compile a kernel source with nvcc and report each kernel's registers, spills, stack and static
shared memory per architecture (the register/spill budget tests). Skips are the callers' (``nvcc_path() is None``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ngp_cli.cuda.kernel_cache import _first_error
from ngp_cli.cuda.signature import (
    CUDA_DIR,
    KernelCompileError,
    _define_flags,
    _normalize_defines,
    _resolve_source,
    parse_kernels,
)


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

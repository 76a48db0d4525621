"""Fixtures of the kernel-runtime tests: toy kernel sources, and the skips of targets this machine lacks.

- ``gpu``-marked tests run only when :func:`ngp_cli.cuda.runtime.cuda_target_available` (a real probe: CuPy, a GPU,
  NVRTC) says so;
- CPU-target tests (the ``cpu_module`` fixture) skip when no host C++ compiler exists;
- nvcc tests (the ``nvcc`` fixture) skip when nvcc is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parent / "kernels"
ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")  # the GPU architectures every kernel must compile for


def nvcc_reports(source: str) -> dict[str, dict]:
    """``nvcc_compile_check`` of ``source`` for every architecture in :data:`ARCHS` (two compilations at a time),
    as ``{arch: {kernel: report}}``; skips the calling test when nvcc is absent."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.cuda.nvcc import nvcc_compile_check, nvcc_path

    if nvcc_path() is None:
        pytest.skip("nvcc not found")
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(ARCHS, pool.map(lambda a: nvcc_compile_check(source, a), ARCHS), strict=True))


def pytest_collection_modifyitems(config, items):
    gpu_items = [
        item for item in items if item.get_closest_marker("gpu") and str(item.path).startswith(str(KERNELS.parent))
    ]
    if not gpu_items:
        return
    from ngp_cli.cuda.runtime import cuda_target_available

    if not cuda_target_available():
        skip = pytest.mark.skip(reason="no usable CUDA GPU with CuPy (probe failed)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kernels_dir() -> Path:
    return KERNELS


@pytest.fixture(scope="session")
def nvcc() -> str:
    from tests.cuda.nvcc import nvcc_path

    path = nvcc_path()
    if path is None:
        pytest.skip("nvcc not installed")
    return path


"""Kernel sources with many kernels compile with nvcc for every supported GPU architecture (sm_75..sm_90) without
register spills, and declare exactly the kernels their bindings launch. Skips without nvcc."""

from __future__ import annotations

import functools

import pytest

from tests.cuda.conftest import ARCHS, nvcc_reports

SOURCES = {
    "nerf.cu": {"march_rays_count", "march_rays_write", "march_rays_slots", "compact_samples", "composite_forward",
                "composite_backward", "occupancy_splat", "occupancy_ema", "occupancy_bits"},
    "mesh.cu": {"mesh_closest_point", "mesh_winding_number", "mesh_raycast"},
    "baked.cu": {"baked_render"},
}


@functools.cache
def _reports(source: str) -> dict:
    return nvcc_reports(source)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_nvcc_compiles_without_spills(source, arch):
    report = _reports(source)[arch]
    assert set(report) == SOURCES[source]
    for name, info in report.items():
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, (source, arch, name, info)

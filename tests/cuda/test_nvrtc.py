"""The production GPU compile path: NVRTC through CuPy, with the options the cuda target uses, no GPU needed.

Every ``*.cu`` file in ngp_cli/cuda is compiled with every variant the code can request (:data:`VARIANTS`; a test fails
when a source has none). CI installs the ``dev`` extra, which brings CuPy and NVIDIA's NVRTC and header wheels
(the ``cuda13`` extra), so these tests run there for sm_80 and sm_90; ``NGP_NVRTC_ARCHS=all`` (or a comma-separated
list such as ``sm_75,sm_86``) compiles for other architectures. Only a missing CuPy skips them: with CuPy installed,
an NVRTC library or CUDA headers that do not load fail the tests. The include-dir selection tests run everywhere.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from ngp_cli.cuda import nvrtc, runtime
from ngp_cli.cuda.baked import module_defines as baked_defines
from ngp_cli.cuda.fused_mlp import kernel_variant
from ngp_cli.cuda.hashgrid import INTERPOLATION_CODES, module_defines
from ngp_cli.nn.activations import ACTIVATION_CODES
from tests.cuda.conftest import ARCHS as ALL_ARCHS

CI_ARCHS = ("sm_80", "sm_90")  # the A100 and H100 generations; sm_75..sm_89 compile the same code paths


def _archs() -> tuple[str, ...]:
    value = os.environ.get("NGP_NVRTC_ARCHS", "").strip()
    if not value:
        return CI_ARCHS
    if value == "all":
        return ALL_ARCHS
    return tuple(a if a.startswith("sm_") else f"sm_{a}" for a in (v.strip() for v in value.split(",")) if a)


ARCHS = _archs()

HASHGRID = [
    module_defines(dims, feats, dtype, "Linear")
    for dtype, dims, feats in itertools.product((torch.float32, torch.float16, torch.float64), (2, 3, 4), (1, 2, 4, 8))
] + [module_defines(3, 2, torch.float16, interp) for interp in INTERPOLATION_CODES if interp != "Linear"]

MLP = [kernel_variant(w, n_in, n_out).defines for w in (16, 32, 64, 128) for n_in, n_out in ((32, 3), (3, 16), (64, 4))]
MLP += [
    kernel_variant(64, 32, 3, act, out).defines
    for act, out in zip(ACTIVATION_CODES, reversed(ACTIVATION_CODES), strict=True)
]
MLP += [kernel_variant(16, 70, 20).defines, kernel_variant(128, 128, 16, "ReLU", "Sigmoid").defines]

# Every kernel source and the defines of each variant the code loads it with (the cuda target's, where the CPU
# target asks for others: adam.py's ADAM_CHUNK is 1 on the GPU). A new .cu file must get an entry here.
VARIANTS: dict[str, list[dict]] = {
    "adam.cu": [{"ADAM_CHUNK": 1}],
    "baked.cu": [baked_defines(s, degree) for s in (1, 2, 3, 4) for degree in (1, 2)],
    "fused_mlp.cu": MLP,
    "hashgrid.cu": HASHGRID,
    "mesh.cu": [{}],
    "mlp_bf16_cpu.cu": [{}],  # a CPU kernel: its GPU build is an empty kernel, compiled to keep the source valid for both
    "nerf.cu": [{}],
}

SOURCES = sorted(p.name for p in runtime.CUDA_DIR.glob("*.cu"))

needs_cupy = pytest.mark.skipif(
    importlib.util.find_spec("cupy") is None, reason="CuPy is not installed (pip install -e '.[dev]' brings it)"
)


def test_every_kernel_source_has_variants():
    assert SOURCES, f"no .cu files found in {runtime.CUDA_DIR}"
    assert sorted(VARIANTS) == SOURCES, "VARIANTS must list exactly the .cu files of ngp_cli/cuda"
    assert all(VARIANTS.values()), "every source needs at least one variant"


def _unique(variants: list[dict]) -> list[dict]:
    return list({tuple(sorted(d.items())): d for d in variants}.values())


@needs_cupy
def test_nvrtc_loads_when_cupy_is_installed():
    # CuPy without a loadable NVRTC would otherwise surface only as compile errors; name the cause.
    assert runtime.nvrtc_version() is not None, (
        "CuPy is installed but its NVRTC library does not load: install the NVRTC wheel of CuPy's CUDA major "
        "(pip install -e '.[dev]' or '.[cuda13]')"
    )


@needs_cupy
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_variant_compiles_with_nvrtc(arch, source):
    variants = _unique(VARIANTS.get(source, []))
    assert variants, f"{source} has no entry in VARIANTS"

    def check(defines):
        try:
            return runtime.nvrtc_compile_check(source, arch, defines)
        except runtime.KernelCompileError as exc:
            return exc

    # NVRTC releases the GIL: one thread per core compiles the variants side by side.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(check, variants))
    failures = [f"{defines}: {r}" for defines, r in zip(variants, results, strict=True) if isinstance(r, Exception)]
    assert not failures, f"{source} for {arch}: {len(failures)} variant(s) fail to compile:\n" + "\n".join(failures)
    for defines, result in zip(variants, results, strict=True):
        assert result["cubin_bytes"] > 0, (source, defines)
        assert "warning" not in result["log"].lower(), f"{source} {defines}: {result['log']}"


@needs_cupy
def test_nvrtc_compile_check_reports_errors(kernels_dir):
    with pytest.raises(runtime.KernelCompileError) as info:
        runtime.nvrtc_compile_check(kernels_dir / "broken.cu", 80)
    assert "broken.cu" in str(info.value) and "error" in info.value.log


@needs_cupy
def test_nvrtc_check_uses_the_load_options():
    result = runtime.nvrtc_compile_check("adam.cu", "sm_80", {"ADAM_CHUNK": 1})
    options = result["options"]
    own = runtime.cuda_compile_options("adam.cu", {"ADAM_CHUNK": 1})
    start = options.index(own[0])
    assert options[start : start + len(own)] == own
    assert "-arch=sm_80" in options
    # Our CUDA header set comes before CuPy's include dirs.
    cupy_dirs = [o for o in options[start + len(own) :] if o.startswith("-I")]
    assert all(options.index(o) > start for o in cupy_dirs)


# --- include-dir selection (no CuPy needed) ------------------------------------------------------------------------


def _toolkit(root: Path, version: int, crt: bool = True) -> Path:
    inc = root / "include"
    (inc / "crt").mkdir(parents=True)
    (inc / "mma.h").write_text('#include "crt/mma.h"\n')
    (inc / "cuda_fp16.h").write_text("\n")
    (inc / "cuda_runtime_api.h").write_text(f"#define CUDART_VERSION  {version}\n")
    if crt:
        (inc / "crt" / "mma.h").write_text("\n")
    return inc


def test_include_dirs_follow_nvrtc_major_version(tmp_path, monkeypatch):
    cuda13 = _toolkit(tmp_path / "cuda13", 13000)
    cuda12 = _toolkit(tmp_path / "cuda12", 12040)
    cuda129 = _toolkit(tmp_path / "cuda129", 12090)
    sets = [[cuda13], [cuda12], [cuda129]]
    monkeypatch.setattr(nvrtc, "_cuda_header_sets", lambda: sets)
    monkeypatch.setattr(nvrtc, "nvrtc_version", lambda: (12, 9))
    assert nvrtc._cuda_include_dirs() == [str(cuda129)]
    monkeypatch.setattr(nvrtc, "nvrtc_version", lambda: (12, 6))
    assert nvrtc._cuda_include_dirs() == [str(cuda12)]  # same major, first found
    monkeypatch.setattr(nvrtc, "nvrtc_version", lambda: (11, 8))
    assert nvrtc._cuda_include_dirs() == [str(cuda13)]  # no match: any complete set
    monkeypatch.setattr(nvrtc, "nvrtc_version", lambda: None)
    assert nvrtc._cuda_include_dirs() == [str(cuda13)]


def test_include_dirs_join_split_pip_wheels(tmp_path, monkeypatch):
    # CUDA 12 pip wheels: cuda_fp16.h and mma.h in nvidia/cuda_runtime, crt/mma.h in nvidia/cuda_nvcc.
    rt_inc = _toolkit(tmp_path / "cuda_runtime", 12090, crt=False)
    nvcc_inc = tmp_path / "cuda_nvcc" / "include"
    (nvcc_inc / "crt").mkdir(parents=True)
    (nvcc_inc / "crt" / "mma.h").write_text("\n")
    toolkit13 = _toolkit(tmp_path / "cuda13", 13000)
    monkeypatch.setattr(nvrtc, "nvrtc_version", lambda: (12, 9))
    monkeypatch.setattr(nvrtc, "_cuda_header_sets", lambda: [[rt_inc, nvcc_inc], [toolkit13]])
    assert nvrtc._cuda_include_dirs() == [str(rt_inc), str(nvcc_inc)]
    # Without the crt/ headers the runtime wheel is still named (the compile error then says what is missing),
    # unless a complete set exists.
    monkeypatch.setattr(nvrtc, "_cuda_header_sets", lambda: [[rt_inc, tmp_path / "missing"]])
    assert nvrtc._cuda_include_dirs() == [str(rt_inc)]
    monkeypatch.setattr(nvrtc, "_cuda_header_sets", lambda: [[rt_inc], [toolkit13]])
    assert nvrtc._cuda_include_dirs() == [str(toolkit13)]


def test_cuda_compile_options_order(monkeypatch):
    monkeypatch.setattr(nvrtc, "_cuda_include_dirs", lambda: ["/cuda/include"])
    options = runtime.cuda_compile_options("adam.cu", {"ADAM_CHUNK": 1, "B": True})
    assert options == (
        "-std=c++17",
        "-I/cuda/include",
        f"-I{runtime.CUDA_DIR}",
        f"-I{runtime.CUDA_DIR}",
        "-DADAM_CHUNK=1",
        "-DB=1",
    )

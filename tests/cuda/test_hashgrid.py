"""hashgrid.cu against the PyTorch reference (ngp_cli.nn.encodings.HashGridEncoding, and simplex_encode for the
SimplexGrid variant, interpolation "Simplex"), on the CPU target through the emulation header, and on the GPU under
``@pytest.mark.gpu``.

Inputs are fresh random numbers on every run: the seed is printed (``-s`` shows it) and can be pinned with
``NGP_TEST_SEED``.
"""

from __future__ import annotations

import os
import random
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from ngp_cli.cuda import hashgrid, runtime
from ngp_cli.cuda.hashgrid import encode
from ngp_cli.nn.encodings import HashGridEncoding, SimplexGridEncoding
from tests.cuda.nvcc import nvcc_compile_check, nvcc_path

SEED = int(os.environ.get("NGP_TEST_SEED", random.randrange(2**31)))
print(f"test_hashgrid seed: {SEED} (NGP_TEST_SEED={SEED} reproduces)")

needs_cxx = pytest.mark.skipif(runtime.host_compiler() is None, reason="no host C++ compiler for the cpu target")

# A grid with dense coarse levels and hashed fine ones (checked in test_grid_mixes_dense_and_hashed).
GRID = dict(n_levels=6, log2_hashmap_size=10, base_resolution=3, per_level_scale=1.9)
# The simplex lattice's levels have more vertices (GridLevels, lattice="simplex"): a larger T keeps dense levels.
GRID_SIMPLEX = dict(GRID, log2_hashmap_size=12)
N_POINTS = 3000

# (D, F, interpolation) of the float32 variants: every F at D=3, every D at F=2, every interpolation at D=3, F=2.
F32_CASES = [
    (3, 1, "Linear"),
    (3, 2, "Linear"),
    (3, 4, "Linear"),
    (3, 8, "Linear"),
    (2, 2, "Linear"),
    (4, 2, "Linear"),
    (3, 2, "Smoothstep"),
    (3, 2, "Nearest"),
    (3, 2, "Simplex"),
    (2, 2, "Simplex"),
    (4, 2, "Simplex"),
    (3, 8, "Simplex"),
]
# fp16: __half2 atomics on feature pairs (F=8), __half atomics (F=1).
F16_CASES = [(3, 8, "Linear"), (2, 1, "Smoothstep"), (3, 2, "Simplex")]
F64_CASES = [(3, 2, "Linear"), (2, 1, "Smoothstep"), (3, 2, "Smoothstep"), (3, 2, "Simplex"), (2, 1, "Simplex"),
             (4, 2, "Simplex")]


def _gen(tag: str) -> torch.Generator:
    # crc32, not hash(): Python salts str hashes per process, so NGP_TEST_SEED would not reproduce a failure.
    return torch.Generator().manual_seed((SEED * 1_000_003 + zlib.crc32(tag.encode())) % (2**63))


def _points(n: int, d: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Mostly in [0, 1]^D, a tenth in [-1.5, 2.5]^D (exercises the uint32 wrap-around)."""
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    k = n // 10
    x[:k] = x[:k] * 4.0 - 1.5
    return x.to(dtype)


def _encoding(d: int, f: int, interp: str, gen: torch.Generator, dtype=torch.float32, **grid) -> HashGridEncoding:
    if interp == "Simplex":
        enc = SimplexGridEncoding(d, n_features_per_level=f, dtype=dtype, **(grid or GRID_SIMPLEX))
    else:
        enc = HashGridEncoding(d, n_features_per_level=f, interpolation=interp, dtype=dtype, **(grid or GRID))
    with torch.no_grad():
        enc.params.copy_(torch.rand(enc.params.shape, generator=gen, dtype=torch.float64) * 2 - 1)
    return enc


def _ref_and_kernel(enc: HashGridEncoding, x: torch.Tensor, gout: torch.Tensor, params=None):
    """(out, dL/dparams, dL/dx) of the reference and of the CPU kernels for L = sum(out * gout)."""
    results = []
    for target in (None, "cpu"):
        p = (enc.params if params is None else params).detach().clone().requires_grad_(True)
        xx = x.clone().requires_grad_(True)
        if target is None:
            saved = enc.params
            enc.params = torch.nn.Parameter(p.detach().clone())
            out = enc(xx)
            out.backward(gout)
            results.append((out.detach(), enc.params.grad, xx.grad))
            enc.params = saved
        else:
            out = encode(xx, p, enc.levels, enc.interpolation, "cpu")
            out.backward(gout)
            results.append((out.detach(), p.grad, xx.grad))
    return results


@needs_cxx
def test_grid_mixes_dense_and_hashed():
    for d in (2, 3, 4):
        for cls, grid in ((HashGridEncoding, GRID), (SimplexGridEncoding, GRID_SIMPLEX)):
            enc = cls(d, **grid)
            assert any(enc.levels.hashed) and not all(enc.levels.hashed), (cls, d, enc.levels.hashed)


@needs_cxx
@pytest.mark.parametrize("d,f,interp", F32_CASES)
def test_float32_matches_reference(d, f, interp):
    gen = _gen(f"f32-{d}-{f}-{interp}")
    enc = _encoding(d, f, interp, gen)
    x = _points(N_POINTS, d, gen)
    gout = torch.randn(N_POINTS, enc.n_output_dims, generator=gen)
    (o_ref, gp_ref, gx_ref), (o, gp, gx) = _ref_and_kernel(enc, x, gout)
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gp, gp_ref, rtol=1e-4, atol=1e-4)
    # dL/dx carries factors up to the finest scale: compare relative to its magnitude.
    scale = gx_ref.abs().max().clamp_min(1.0)
    torch.testing.assert_close(gx / scale, gx_ref / scale, rtol=1e-4, atol=1e-5)
    if interp == "Nearest":
        assert torch.count_nonzero(gx) == 0


@needs_cxx
def test_float16_tables_convert_inline():
    # The emulation's __half conversions are inlined into the kernels, not called once per table value (a
    # `#pragma GCC optimize` in hashgrid.cu once kept them out of line: an fp16 table read 3x slower than fp32).
    spec = hashgrid._Spec(_encoding(3, 2, "Linear", _gen("f16-inline")).levels, "Linear", "cpu")
    library = hashgrid._module(spec, torch.float16).library
    assert b"half2float" not in library.read_bytes() and b"float2half" not in library.read_bytes()


@needs_cxx
@pytest.mark.parametrize("d,f,interp", F16_CASES)
def test_float16_tables_match_reference(d, f, interp):
    gen = _gen(f"f16-{d}-{f}-{interp}")
    enc = _encoding(d, f, interp, gen)
    master = enc.params.detach().clone().requires_grad_(True)
    n = 1000
    x = _points(n, d, gen)
    gout = torch.randn(n, enc.n_output_dims, generator=gen)
    # The reference on the fp16-rounded table in fp32.
    (o_ref, gp_ref, gx_ref), _ = _ref_and_kernel(enc, x, gout.half().float(), params=master.detach().half().float())
    xx = x.clone().requires_grad_(True)
    out = encode(xx, master.half(), enc.levels, interp, "cpu")
    assert out.dtype == torch.float16
    out.backward(gout.half())
    assert master.grad.dtype == torch.float32 and xx.grad.dtype == torch.float32
    torch.testing.assert_close(out.float(), o_ref, rtol=2e-3, atol=2e-3)
    # fp16 atomics accumulate in fp16: errors grow with the number of contributions per entry, and their order
    # follows the threads' scheduling (1.04e-2 seen once under load for 2-1-Smoothstep); a wrong kernel is off by O(1).
    mag = gp_ref.abs().max()
    torch.testing.assert_close(master.grad / mag, gp_ref / mag, rtol=0, atol=2e-2)
    mag = gx_ref.abs().max().clamp_min(1.0)
    torch.testing.assert_close(xx.grad / mag, gx_ref / mag, rtol=0, atol=1e-3)


@needs_cxx
@pytest.mark.parametrize("d,f,interp", F64_CASES)
def test_float64_matches_reference(d, f, interp):
    gen = _gen(f"f64-{d}-{f}-{interp}")
    enc = _encoding(d, f, interp, gen, dtype=torch.float64)
    x = _points(500, d, gen, torch.float64)
    gout = torch.randn(500, enc.n_output_dims, generator=gen, dtype=torch.float64)
    (o_ref, gp_ref, gx_ref), (o, gp, gx) = _ref_and_kernel(enc, x, gout)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gp, gp_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-9, atol=1e-9)


def _small_grid(d: int, interp: str = "Linear") -> dict:
    # A dense first level and hashed ones after (the simplex lattice's levels have more vertices: a larger T).
    t = {2: 5, 3: 7, 4: 10}[d] if interp == "Simplex" else {2: 5, 3: 6, 4: 8}[d]
    return dict(n_levels=3, log2_hashmap_size=t, base_resolution=2, per_level_scale=2.0)


@needs_cxx
@pytest.mark.parametrize("d,f,interp", F64_CASES)
def test_float64_gradcheck_and_gradgradcheck(d, f, interp):
    gen = _gen(f"gradcheck-{d}-{f}-{interp}")
    enc = _encoding(d, f, interp, gen, dtype=torch.float64, **_small_grid(d, interp))
    assert any(enc.levels.hashed) and not all(enc.levels.hashed)
    x = _points(6, d, gen, torch.float64).requires_grad_(True)
    p = enc.params.detach().clone().requires_grad_(True)

    def fn(x, p):
        return encode(x, p, enc.levels, interp, "cpu")

    assert torch.autograd.gradcheck(fn, (x, p), eps=1e-7, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (x, p), eps=1e-7, atol=1e-5, rtol=1e-4)


@needs_cxx
def test_eikonal_gradient_float32_vs_float64():
    """d/dparams of an eikonal-style loss on dL/dx (create_graph=True): float32 kernels vs float64 kernels."""
    d, f, interp = 3, 2, "Smoothstep"
    gen = _gen("eikonal")
    enc = _encoding(d, f, interp, gen, dtype=torch.float64)
    x64 = _points(400, d, gen, torch.float64)
    grads = []
    for dt in (torch.float64, torch.float32):
        p = enc.params.detach().to(dt).requires_grad_(True)
        x = x64.to(dt).requires_grad_(True)
        out = encode(x, p, enc.levels, interp, "cpu")
        (gx,) = torch.autograd.grad(out[:, ::2].sum() + out[:, 1::2].sum() * 0.5, x, create_graph=True)
        loss = ((gx.norm(dim=1) - 1.0) ** 2).sum() + out.square().sum() * 1e-2
        (gp,) = torch.autograd.grad(loss, p)
        grads.append(gp.double())
    mag = grads[0].abs().max()
    assert mag > 0
    torch.testing.assert_close(grads[1] / mag, grads[0] / mag, rtol=0, atol=1e-4)


@needs_cxx
@pytest.mark.parametrize("interp", ["Linear", "Simplex"])
def test_every_output_element_written(interp):
    """Outputs the kernels fully write are poisoned with NaN before the launch; none may remain."""
    d, f = 3, 2
    gen = _gen(f"poison-{interp}")
    enc = _encoding(d, f, interp, gen)
    n = 1237  # not a multiple of any block or chunk size
    x = _points(n, d, gen)
    spec = hashgrid._Spec(enc.levels, interp, "cpu")
    params = enc.params.detach()
    scales, meta = hashgrid._level_consts(enc.levels, params.device, torch.float32)
    g = torch.randn(n, enc.n_output_dims, generator=gen)
    v = torch.randn(n, d, generator=gen)
    nan = float("nan")
    out = torch.full((n, enc.n_output_dims), nan)
    hashgrid._launch(spec, torch.float32, "hashgrid_forward", n, [x, scales, meta, params, out, np.uint32(0)], True,
                     False)
    out_fm = torch.full((enc.n_output_dims, n), nan)  # the feature-major layout, (L*F, N)
    hashgrid._launch(spec, torch.float32, "hashgrid_forward", n, [x, scales, meta, params, out_fm, np.uint32(1)],
                     True, False)
    gx = torch.full((enc.levels.n_levels, n, d), nan)
    hashgrid._launch(spec, torch.float32, "hashgrid_backward_input", n,
                     [x, scales, meta, params, g, np.uint32(0), gx], True, False)
    gx_fm = torch.full((enc.levels.n_levels, n, d), nan)  # grad_out read feature-major, (L*F, N)
    hashgrid._launch(spec, torch.float32, "hashgrid_backward_input", n,
                     [x, scales, meta, params, g.t().contiguous(), np.uint32(1), gx_fm], True, False)
    ggo = torch.full((n, enc.n_output_dims), nan)
    hashgrid._launch(
        spec, torch.float32, "hashgrid_backward_backward", n, [x, scales, meta, params, g, v, None, ggo], True, False
    )
    gx2 = torch.full((n, d), nan)
    hashgrid._launch(
        spec, torch.float32, "hashgrid_backward_backward_input", n, [x, scales, meta, params, g, v, gx2], False, False
    )
    for name, t in (("out", out), ("out_fm", out_fm), ("grad_x", gx), ("grad_x_fm", gx_fm), ("grad_grad_out", ggo),
                    ("grad_x2", gx2)):
        assert not torch.isnan(t).any(), name
    torch.testing.assert_close(out, enc(x).detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(out_fm.t(), out)
    assert torch.equal(gx_fm, gx)


@needs_cxx
@pytest.mark.parametrize("interp", ["Linear", "Simplex"])
def test_the_feature_major_layout_holds_the_same_values(interp):
    """``encode(..., feature_major=True)``: the same values bit for bit, as the transpose of an (L*F, N) buffer, with
    or without a gradient; the backward takes ``grad_out`` in either layout (the feature-major one is what
    ``torch.ones_like`` of such an output gives) with the same gradients bit for bit, and stays differentiable."""
    d, f = 3, 2
    gen = _gen(f"feature-major-{interp}")
    enc = _encoding(d, f, interp, gen)
    n = 3001
    x = _points(n, d, gen)
    params = enc.params.detach()
    with torch.no_grad():
        rows = hashgrid.encode(x, params, enc.levels, interp, "cpu")
        cols = hashgrid.encode(x, params, enc.levels, interp, "cpu", feature_major=True)
    assert rows.is_contiguous() and cols.stride() == (1, n) and cols.t().is_contiguous()
    assert torch.equal(cols, rows)
    torch.testing.assert_close(cols, enc._reference(x, params), rtol=1e-5, atol=1e-5)
    g = torch.randn(n, enc.n_output_dims, generator=gen)
    grads = {}
    for out_fm in (False, True):
        for grad_fm in (False, True):
            table = params.clone().requires_grad_(True)
            xx = x.clone().requires_grad_(True)
            out = hashgrid.encode(xx, table, enc.levels, interp, "cpu", feature_major=out_fm)
            assert out.requires_grad and torch.equal(out.detach(), rows)
            assert out.is_contiguous() != out_fm
            gout = g.t().contiguous().t() if grad_fm else g
            assert gout.is_contiguous() != grad_fm
            gx, gp = torch.autograd.grad(out, (xx, table), gout, create_graph=True)
            (ggx,) = torch.autograd.grad(gp.square().sum() + gx.square().sum(), xx)  # second order, either layout
            grads[out_fm, grad_fm] = (gx.detach(), gp.detach(), ggx)
    first = grads[False, False]
    assert first[1].abs().sum() > 0 and first[0].abs().sum() > 0
    for key, got in grads.items():
        for a, b in zip(got, first, strict=True):
            assert torch.equal(a, b), key


@needs_cxx
def test_module_dispatch_matches_torch_path():
    gen = _gen("dispatch")
    enc = _encoding(3, 8, "Linear", gen)  # variants the other tests compile too (float32 and float16)
    x = _points(700, 3, gen).requires_grad_(True)
    out_ref = enc(x)
    (gx_ref, gp_ref) = torch.autograd.grad(out_ref.square().sum(), (x, enc.params))
    enc.kernel_target = "cpu"
    out = enc(x)
    (gx, gp) = torch.autograd.grad(out.square().sum(), (x, enc.params))
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gp, gp_ref, rtol=1e-4, atol=1e-4)
    mag = gx_ref.abs().max()
    torch.testing.assert_close(gx / mag, gx_ref / mag, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), out_ref.detach(), rtol=1e-5, atol=1e-5)
    # fp16 tables read by the kernels, fp32 master weights.
    enc.kernel_dtype = torch.float16
    out16 = enc(x)
    assert out16.dtype == torch.float16
    out16.float().square().sum().backward()
    assert enc.params.grad.dtype == torch.float32 and torch.count_nonzero(enc.params.grad) > 0
    torch.testing.assert_close(out16.float(), out_ref.detach(), rtol=2e-3, atol=2e-3)
    enc.kernel_target, enc.kernel_dtype = None, None
    assert enc(x).grad_fn is not None
    with pytest.raises(ValueError, match="kernel_target"):
        HashGridEncoding(3, kernel_target="gpu")


@needs_cxx
def test_empty_batch():
    enc = HashGridEncoding(2, **GRID)
    x = torch.zeros(0, 2, requires_grad=True)
    p = enc.params.detach().clone().requires_grad_(True)
    out = encode(x, p, enc.levels, "Linear", "cpu")
    assert out.shape == (0, enc.n_output_dims)
    out.sum().backward()
    assert p.grad is not None and torch.count_nonzero(p.grad) == 0


@needs_cxx
def test_errors():
    enc = HashGridEncoding(3, **GRID)
    p = enc.params.detach()
    with pytest.raises(ValueError, match="shape"):
        encode(torch.zeros(4, 2), p, enc.levels, "Linear", "cpu")
    with pytest.raises(ValueError, match="params of shape"):
        encode(torch.zeros(4, 3), p[1:], enc.levels, "Linear", "cpu")
    with pytest.raises(ValueError, match="interpolation"):
        encode(torch.zeros(4, 3), p, enc.levels, "Cubic", "cpu")
    with pytest.raises(ValueError, match="float32, float16 and float64"):
        encode(torch.zeros(4, 3), p.bfloat16(), enc.levels, "Linear", "cpu")
    with pytest.raises(ValueError, match="target"):
        encode(torch.zeros(4, 3), p, enc.levels, "Linear", "tpu")
    with pytest.raises(ValueError, match="cuda device"):
        encode(torch.zeros(4, 3), p, enc.levels, "Linear", "cuda")


# ---- nvcc: every shipped kernel compiles for the supported architectures, without spills ------------------------

ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")
NVCC_VARIANTS = [
    dict(N_DIMS=3, N_FEATURES=2, PARAM_T="__half", POS_T="float", INTERPOLATION=0),  # tcnn's default
    dict(N_DIMS=4, N_FEATURES=8, PARAM_T="double", POS_T="double", INTERPOLATION=1),  # the heaviest
    dict(N_DIMS=2, N_FEATURES=1, PARAM_T="float", POS_T="float", INTERPOLATION=2),
    dict(N_DIMS=3, N_FEATURES=2, PARAM_T="__half", POS_T="float", INTERPOLATION=3),  # SimplexGrid
    dict(N_DIMS=4, N_FEATURES=8, PARAM_T="double", POS_T="double", INTERPOLATION=3),
]


def _nvcc_jobs():
    """One representative variant per architecture (all archs see every kernel), plus the extremes on sm_80."""
    jobs = [(arch, NVCC_VARIANTS[0]) for arch in ARCHS]
    jobs += [("sm_80", v) for v in NVCC_VARIANTS[1:]]
    return jobs


@pytest.fixture(scope="module")
def nvcc_reports():
    if nvcc_path() is None:
        pytest.skip("nvcc not found")
    jobs = _nvcc_jobs()
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda j: nvcc_compile_check("hashgrid.cu", j[0], j[1]), jobs))
    return list(zip(jobs, reports, strict=True))


def test_nvcc_compiles_without_spills(nvcc_reports):
    kernels = {
        "hashgrid_forward",
        "hashgrid_backward_params",
        "hashgrid_backward_input",
        "hashgrid_backward_backward",
        "hashgrid_backward_backward_input",
    }
    for (arch, defines), report in nvcc_reports:
        assert set(report) == kernels, (arch, defines)
        for name, info in report.items():
            assert info["spill_stores"] == 0 and info["spill_loads"] == 0, (arch, defines, name, info)
            assert info["registers"] <= 255
            if defines["INTERPOLATION"] == 3 and defines["POS_T"] == "float":
                # the simplex's vertex order is ranks and selects, never an index into a local array
                assert info["stack_bytes"] == 0, (arch, defines, name, info)


# ---- GPU: the cuda target against the reference and against the cpu target -------------------------------------


def _cuda_ready() -> bool:
    return runtime.cuda_target_available()


@pytest.mark.gpu
@pytest.mark.parametrize(
    "d,f,dtype,interp",
    [
        (3, 2, torch.float32, "Linear"),
        (2, 4, torch.float32, "Smoothstep"),
        (3, 2, torch.float16, "Linear"),
        (3, 1, torch.float64, "Smoothstep"),
        (4, 8, torch.float32, "Nearest"),
        (3, 2, torch.float32, "Simplex"),
        (2, 2, torch.float16, "Simplex"),
    ],
)
def test_gpu_matches_cpu_and_reference(d, f, dtype, interp):
    if not _cuda_ready():
        pytest.skip("no usable CUDA target")
    gen = _gen(f"gpu-{d}-{f}-{dtype}-{interp}")
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    enc = _encoding(d, f, interp, gen, dtype=ref_dtype)
    n = 20000
    x = _points(n, d, gen, ref_dtype)
    gout = torch.randn(n, enc.n_output_dims, generator=gen, dtype=ref_dtype)
    results = {}
    for target, dev in (("cpu", "cpu"), ("cuda", "cuda")):
        master = enc.params.detach().to(dev).requires_grad_(True)
        xx = x.to(dev).requires_grad_(True)
        out = encode(xx, master.to(dtype), enc.levels, interp, target)
        (gx,) = torch.autograd.grad(out, xx, gout.to(dev, dtype), create_graph=True)
        gx.square().sum().backward()
        out2 = encode(xx.detach(), master.to(dtype), enc.levels, interp, target)
        out2.backward(gout.to(dev, dtype))
        results[target] = [t.detach().cpu().double() for t in (out, gx, master.grad)]
    o_ref = enc(x).detach().double()
    tol = {torch.float16: 2e-3, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    torch.testing.assert_close(results["cuda"][0], o_ref, rtol=tol, atol=tol)
    for a, b in zip(results["cuda"], results["cpu"], strict=True):
        mag = b.abs().max().clamp_min(1.0)
        torch.testing.assert_close(
            a / mag, b / mag, rtol=0, atol=max(tol, 1e-5) * (10 if dtype == torch.float16 else 1)
        )

"""The CPU's fused bf16 inference MLP kernel (``mlp_bf16_cpu.cu``, :mod:`ngp_cli.cuda.mlp_bf16`) against a torch
reference that rounds as it does (bf16 inputs, weights and hidden activations, sums in float64), in its vector code
(AVX-512-BF16; skipped on CPUs without it) and its scalar code (every CPU), on every input layout, with every output
element checked as written. Inputs are fresh random numbers on every run; the seed is printed and can be pinned with
``NGP_TEST_SEED``."""

from __future__ import annotations

import os
import random

import pytest
import torch

from ngp_cli.cuda import cpu_mlp as cm
from ngp_cli.cuda import mlp_bf16 as mb
from ngp_cli.cuda import runtime

SEED = int(os.environ.get("NGP_TEST_SEED", random.randrange(2**31)))
print(f"test_mlp_bf16 seed: {SEED} (NGP_TEST_SEED={SEED} reproduces)")

CODES = [pytest.param(True, id="vector", marks=pytest.mark.skipif(not mb.available(), reason="no AVX-512-BF16")),
         pytest.param(False, id="scalar")]
# (first layer's inputs, hidden layers, outputs): the NeRF density and colour networks, the bench MLP, an SDF-like
# network, and a single product (no hidden layer).
NETWORKS = [(32, 1, 16), (32, 2, 3), (32, 2, 16), (64, 3, 1), (64, 0, 16), (16, 1, 4)]


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).double()


def _reference(x: torch.Tensor, weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's arithmetic in float64 (rounding the input, the weights and each hidden activation to bf16), and
    the sum of the magnitudes of each output's products (the scale its float32 sums' error grows with)."""
    h = _bf16(x)
    for w in weights[:-1]:
        h = _bf16(torch.relu(h @ _bf16(w).t()))
    last = _bf16(weights[-1])
    return h @ last.t(), h.abs() @ last.abs().t()


def _network(n_in: int, hidden: int, n_out: int, gen: torch.Generator) -> list[torch.Tensor]:
    shapes = [(64, n_in)] + [(64, 64)] * (hidden - 1) + [(n_out, 64)] if hidden else [(n_out, n_in)]
    return [torch.randn(o, i, generator=gen) * (2.0 / i) ** 0.5 for o, i in shapes]


def _check(got: torch.Tensor, x: torch.Tensor, weights: list[torch.Tensor]) -> None:
    ref, scale = _reference(x, weights)
    assert got.dtype == torch.float32 and got.shape == ref.shape and torch.isfinite(got).all()
    # float32 sums of at most 64 products: |error| <= ~64 * 2^-24 * scale; a hidden value whose float32 sum lands on
    # the other side of a bf16 rounding boundary than the float64 one moves by 2^-8 of itself, and the outputs by
    # that times its weight: well under 2^-8 of the scale. A kernel that pairs the wrong halves or columns is off by
    # the order of the scale.
    err = (got.double() - ref).abs()
    assert (err <= 2.0**-8 * scale + 1e-6).all(), float((err / scale.clamp_min(1e-12)).max())


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(runtime, "POISON_OUTPUTS", True)  # unwritten outputs would stay NaN


@pytest.mark.parametrize("vector", CODES)
@pytest.mark.parametrize("network", NETWORKS, ids=[f"{a}-{b}x64-{c}" for a, b, c in NETWORKS])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 333, 5000])
def test_the_kernel_matches_the_reference_on_row_major_input(vector, network, n):
    gen = torch.Generator().manual_seed(SEED + n)
    weights = _network(*network, gen)
    x = torch.randn(n, network[0], generator=gen)
    _check(mb.fused_inference_mlp([x], weights, vector=vector), x, weights)


@pytest.mark.parametrize("vector", CODES)
@pytest.mark.parametrize("n", [1, 29, 4097])
def test_every_input_layout_gives_the_same_values(vector, n):
    # Row-major, the hash grid's feature-major output (the transpose of a contiguous (32, N)), two column blocks (a
    # NeRF's colour network: density output and direction encoding), a strided view (copied first): each row's
    # arithmetic is the same, so the values are equal bit for bit; and they are the reference's.
    gen = torch.Generator().manual_seed(SEED + 7 * n)
    weights = _network(32, 2, 16, gen)
    x = torch.randn(n, 32, generator=gen)
    rows = mb.fused_inference_mlp([x], weights, vector=vector)
    _check(rows, x, weights)
    feature_major = x.t().contiguous().t()
    strided = torch.stack([x, -x], 2)[:, :, 0]  # (N, 32) with strides (64, 2)
    both = torch.cat([x, -x], 1)
    layouts = {"feature-major": [feature_major], "blocks": [x[:, :16].contiguous(), x[:, 16:].contiguous()],
               "feature-major blocks": [x[:, :16].t().contiguous().t(), x[:, 16:].t().contiguous().t()],
               "strided": [strided], "narrow views": [both[:, :16], both[:, 16:32]]}
    assert torch.equal(strided, x) and not strided.is_contiguous()
    if n > 1:
        assert not feature_major.is_contiguous() and not both[:, :16].is_contiguous()
    for name, blocks in layouts.items():
        assert torch.equal(mb.fused_inference_mlp(blocks, weights, vector=vector), rows), name
    swapped = mb.fused_inference_mlp([x[:, 16:].contiguous(), x[:, :16].contiguous()], weights, vector=vector)
    assert float((swapped - rows).abs().max()) > 1e-2  # the blocks' order matters: the test can tell


@pytest.mark.skipif(not mb.available(), reason="no AVX-512-BF16")
def test_the_vector_and_scalar_code_agree():
    gen = torch.Generator().manual_seed(SEED + 1)
    weights = _network(32, 2, 3, gen)
    x = torch.randn(2000, 32, generator=gen)
    vector, scalar = (mb.fused_inference_mlp([x], weights, vector=v) for v in (True, False))
    ref, scale = _reference(x, weights)
    assert ((vector.double() - scalar.double()).abs() <= 2.0**-7 * scale + 1e-6).all()


def test_inference_mlp_takes_the_kernel_where_it_fits(monkeypatch):
    # cpu_mlp's inference path (no autograd, bf16, ReLU) runs the tasks' networks on the kernel when the CPU has the
    # instructions, and every other call on oneDNN's matmuls.
    calls: list[int] = []
    real = mb.fused_inference_mlp
    monkeypatch.setattr(mb, "available", lambda: True)
    monkeypatch.setattr(mb, "fused_inference_mlp", lambda b, w, vector=True: calls.append(1) or real(b, w, False))
    gen = torch.Generator().manual_seed(SEED + 2)
    weights = _network(32, 2, 16, gen)
    x = torch.randn(100, 32, generator=gen)
    with torch.no_grad():
        out = cm.cpu_mlp(x, weights, "ReLU", "None", dtype=torch.bfloat16)
        assert calls == [1]
        _check(out, x, weights)
        cm.cpu_mlp(x, weights, "Tanh", "None", dtype=torch.bfloat16)
        cm.cpu_mlp(x, weights, "ReLU", "None", dtype=torch.float32)
        cm.cpu_mlp(x, _network(32, 2, 17, gen), "ReLU", "None", dtype=torch.bfloat16)
    assert calls == [1]


@pytest.mark.parametrize("case", ["fp32", "tanh", "width 32", "17 outputs", "odd block", "three blocks",
                                  "wide block", "widths mismatch", "float64 input"])
def test_what_the_kernel_does_not_evaluate_is_refused(case):
    gen = torch.Generator().manual_seed(3)
    weights = _network(32, 2, 16, gen)
    x = torch.randn(10, 32, generator=gen)
    blocks, dtype, activation = [x], torch.bfloat16, "ReLU"
    if case == "fp32":
        dtype = torch.float32
    elif case == "tanh":
        activation = "Tanh"
    elif case == "width 32":
        weights = [torch.randn(32, 32), torch.randn(16, 32)]
    elif case == "17 outputs":
        weights = _network(32, 2, 17, gen)
    elif case == "odd block":
        blocks = [x[:, :15], x[:, 15:]]
    elif case == "three blocks":
        blocks = [x[:, :10], x[:, 10:20], x[:, 20:]]
    elif case == "wide block":
        blocks, weights = [torch.randn(10, 66)], [torch.randn(64, 66), torch.randn(16, 64)]
    elif case == "widths mismatch":
        blocks = [x[:, :16]]
    else:
        blocks = [x.double()]
    assert not mb.fits(blocks, weights, activation, dtype)
    assert not mb.supports(blocks, weights, activation, dtype)
    if dtype == torch.bfloat16 and activation == "ReLU":
        with pytest.raises(ValueError, match="not one the kernel evaluates"):
            mb.fused_inference_mlp(blocks, weights)


def test_blocks_of_different_lengths_are_refused():
    weights = _network(32, 1, 16, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="rows"):
        mb.fused_inference_mlp([torch.zeros(5, 16), torch.zeros(6, 16)], weights)


def test_weights_are_packed_as_bf16_pairs_per_output():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    words = mb.pack_weights([w]).view(torch.int16).view(torch.bfloat16).float().reshape(2, 16, 2)  # [pair][out][2]
    assert words[0, 0].tolist() == [1.0, 2.0] and words[1, 0].tolist() == [3.0, 4.0]
    assert words[0, 1].tolist() == [5.0, 6.0] and words[1, 1].tolist() == [7.0, 8.0]
    assert (words[:, 2:] == 0).all()  # the last layer padded to 16 outputs


# --- the NeRF rendering kernel (mlp_bf16_nerf) --------------------------------------------------------------------


def _nerf_reference(x: torch.Tensor, dw: list[torch.Tensor], cw: list[torch.Tensor], sh: torch.Tensor,
                    rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two networks in float64 with the kernel's rounding (the density outputs rounded to bf16 as the colour
    network's input, each sample's direction encoding its ray's row): (log-density, rgb, their error scales)."""
    geo, geo_scale = _reference(x, dw)
    rgb, rgb_scale = _reference(torch.cat([geo.float(), sh[rows]], 1), cw)
    return geo[:, 0], rgb, geo_scale[:, 0], rgb_scale


@pytest.mark.parametrize("vector", CODES)
@pytest.mark.parametrize("hidden", [(1, 2), (2, 1), (0, 3)], ids=["instant-ngp", "2-1", "0-3"])
@pytest.mark.parametrize("n", [1, 16, 37, 4097])
@pytest.mark.parametrize("layout", ["feature-major", "row-major"])
def test_the_nerf_kernel_matches_the_two_networks(vector, hidden, n, layout):
    # Fresh networks, features, per-ray direction encodings and sample-to-ray rows: both outputs match the float64
    # reference of the two networks within the bf16 rounding bound, and every output element is written (the outputs
    # start as NaN).
    gen = torch.Generator().manual_seed(SEED + 11 * n + hidden[0])
    dw = _network(32, hidden[0], 16, gen)
    cw = _network(32, hidden[1], 3, gen)
    x = torch.randn(n, 32, generator=gen)
    if layout == "feature-major":
        x = x.t().contiguous().t()
    r = max(1, n // 5)
    sh = torch.randn(r, 16, generator=gen)
    rows = torch.randint(0, r, (n,), generator=gen)
    features = torch.cat([torch.randn(r, 3, generator=gen), mb.direction_sums(sh, cw)], 1)  # sums after 3 columns
    log_density, rgb = mb.fused_nerf(x, dw, cw, features, rows, sums_column=3, vector=vector)
    ref_d, ref_rgb, scale_d, scale_rgb = _nerf_reference(x, dw, cw, sh, rows)
    assert log_density.shape == (n,) and rgb.shape == (n, 3)
    assert torch.isfinite(log_density).all() and torch.isfinite(rgb).all()
    assert ((log_density.double() - ref_d).abs() <= 2.0**-8 * scale_d + 1e-6).all()
    # A density output on the other side of a bf16 rounding boundary moves the colour input by 2^-8 of itself.
    assert ((rgb.double() - ref_rgb).abs() <= 2.0**-7 * scale_rgb + 1e-5).all()


def test_the_nerf_kernel_reads_each_samples_own_ray():
    # Rows shuffled: the colours follow the rows (a kernel that read the sums in sample order would not).
    gen = torch.Generator().manual_seed(SEED + 5)
    dw, cw = _network(32, 1, 16, gen), _network(32, 2, 3, gen)
    x = torch.randn(64, 32, generator=gen).expand(64, 32).contiguous()
    x[:] = x[0]  # every sample at the same point: only the direction tells them apart
    sums = mb.direction_sums(torch.randn(8, 16, generator=gen), cw)
    rows = torch.randint(0, 8, (64,), generator=gen)
    _, rgb = mb.fused_nerf(x, dw, cw, sums, rows)
    _, by_ray = mb.fused_nerf(x[:8], dw, cw, sums, torch.arange(8))
    assert torch.equal(rgb, by_ray[rows])
    assert float((by_ray[1:] - by_ray[0]).abs().max()) > 1e-3  # the rays' colours differ: the test can tell


@pytest.mark.parametrize("case", ["16 features", "15 density outputs", "no colour hidden layer", "odd directions",
                                  "rows int32", "rows short", "sums 32 wide", "sums column past the end"])
def test_what_the_nerf_kernel_does_not_evaluate_is_refused(case):
    gen = torch.Generator().manual_seed(6)
    x, dw, cw = torch.randn(10, 32), _network(32, 1, 16, gen), _network(32, 2, 3, gen)
    sums, rows, column = torch.zeros(4, 64), torch.zeros(10, dtype=torch.int64), 0
    if case == "16 features":
        x = torch.randn(10, 16)
    elif case == "15 density outputs":
        dw = _network(32, 1, 15, gen)
    elif case == "no colour hidden layer":
        cw = _network(32, 0, 3, gen)
    elif case == "odd directions":
        cw = _network(33, 2, 3, gen)
    elif case == "rows int32":
        rows = rows.int()
    elif case == "rows short":
        rows = rows[:9]
    elif case == "sums 32 wide":
        sums = torch.zeros(4, 32)
    else:
        column = 1
    fits = mb.nerf_fits(x, dw, cw)
    assert fits == (case in ("rows int32", "rows short", "sums 32 wide", "sums column past the end"))
    with pytest.raises(ValueError, match="fused_nerf"):
        mb.fused_nerf(x, dw, cw, sums, rows, sums_column=column)

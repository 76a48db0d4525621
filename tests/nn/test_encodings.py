"""HashGridEncoding against a naive per-point reference, gradients, and the Frequency / SH encodings."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ngp_cli.nn.encodings as enc_mod
from ngp_cli.errors import ConfigError
from ngp_cli.nn.encodings import FrequencyEncoding, HashGridEncoding, SphericalHarmonicsEncoding
from ngp_cli.nn.grid import PRIMES

# Per-D configurations with both dense and hashed levels (asserted in _make).
CONFIGS = {
    2: dict(n_levels=5, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0),  # r = 4..64, T = 256
    3: dict(n_levels=4, log2_hashmap_size=9, base_resolution=3, per_level_scale=2.0),  # r = 3, 6, 12, 24
    4: dict(n_levels=4, log2_hashmap_size=10, base_resolution=3, per_level_scale=1.5),  # r = 3, 5, 7, 11
}


def _make(n_dims, n_features=2, interpolation="Linear", dtype=torch.float64, seed=0, **over):
    cfg = dict(CONFIGS[n_dims])
    cfg.update(over)
    gen = torch.Generator().manual_seed(seed)
    enc = HashGridEncoding(
        n_dims, n_features_per_level=n_features, interpolation=interpolation, dtype=dtype, generator=gen, **cfg
    )
    # Features of order 1 make absolute tolerances meaningful (the default init is only 1e-4).
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0, generator=gen)
    return enc


def _ref_index(coords, r, size, hashed):
    """tcnn grid_index with Python integers (uint32 arithmetic via % 2**32)."""
    if hashed:
        h = 0
        for d, c in enumerate(coords):
            h ^= ((c % 2**32) * PRIMES[d]) % 2**32
        return h % size
    return (sum(c * r**d for d, c in enumerate(coords)) % 2**32) % size


def _ref_position(xd, scale, float32):
    if float32:
        # fmaf(scale, x, 0.5): the float64 product of float32 values is exact, one rounding to float32.
        pos = float(np.float32(float(np.float32(xd)) * scale + 0.5))
    else:
        pos = xd * scale + 0.5
    grid = math.floor(pos)
    return grid, pos - grid


def _reference(enc, x):
    """Naive per-point, per-level, per-corner loop in float64 (paper §3; tcnn kernel_grid)."""
    lv = enc.levels
    table = enc.params.detach().double().numpy()
    x = x.detach().double().numpy()
    float32 = enc.params.dtype == torch.float32
    n_feat = lv.n_features_per_level
    out = np.zeros((x.shape[0], lv.n_levels * n_feat))
    for n in range(x.shape[0]):
        for level in range(lv.n_levels):
            s, r = lv.scales[level], lv.resolutions[level]
            size, off = lv.level_size(level), lv.offsets[level]
            grid, frac = zip(*(_ref_position(x[n, d], s, float32) for d in range(lv.n_dims)), strict=True)
            if enc.interpolation == "Nearest":
                corners = [(0,) * lv.n_dims]
            else:
                corners = itertools.product((0, 1), repeat=lv.n_dims)
            if enc.interpolation == "Smoothstep":
                frac = [f * f * (3 - 2 * f) for f in frac]
            for corner in corners:
                w = 1.0
                if enc.interpolation != "Nearest":
                    for d in range(lv.n_dims):
                        w *= frac[d] if corner[d] else 1.0 - frac[d]
                coords = [grid[d] + corner[d] for d in range(lv.n_dims)]
                idx = _ref_index(coords, r, size, lv.hashed[level])
                out[n, level * n_feat : (level + 1) * n_feat] += w * table[off + idx]
    return out


def _random_points(n, n_dims, seed, lo=0.0, hi=1.0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, size=(n, n_dims))
    if lo == 0.0 and hi == 1.0:
        x[0] = 0.0
        x[1] = 1.0
        x[2] = 0.5
    return torch.from_numpy(x)


@pytest.mark.parametrize("interpolation", ["Linear", "Smoothstep", "Nearest"])
@pytest.mark.parametrize("n_features", [1, 2, 4, 8])
@pytest.mark.parametrize("n_dims", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_matches_naive_reference(n_dims, n_features, interpolation, dtype):
    enc = _make(n_dims, n_features, interpolation, dtype, seed=n_dims * 10 + n_features)
    assert any(enc.levels.hashed) and not all(enc.levels.hashed)
    x = _random_points(24, n_dims, seed=1000 + n_dims * 10 + n_features)
    if dtype == torch.float32:
        x = x.float()
    out = enc(x)
    assert out.shape == (24, enc.levels.n_levels * n_features) == (24, enc.n_output_dims)
    assert out.dtype == dtype
    ref = _reference(enc, x)
    # float64 agrees to rounding; float32 weights carry ~1e-7 relative error on O(1) features.
    atol = 1e-12 if dtype == torch.float64 else 3e-6
    np.testing.assert_allclose(out.detach().double().numpy(), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("n_dims", [2, 3])
def test_inputs_outside_unit_cube_wrap_like_uint32(n_dims):
    enc = _make(n_dims, 2, "Linear", torch.float64)
    x = _random_points(20, n_dims, seed=7, lo=-0.7, hi=1.6)
    np.testing.assert_allclose(enc(x).detach().numpy(), _reference(enc, x), rtol=0, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    n_dims=st.integers(2, 4),
    n_levels=st.integers(1, 4),
    log2_t=st.integers(3, 10),
    base=st.integers(1, 9),
    scale=st.floats(1.0, 2.5),
    grid_type=st.sampled_from(["Hash", "Dense"]),
    seed=st.integers(0, 2**31),
)
def test_forward_random_configs(n_dims, n_levels, log2_t, base, scale, grid_type, seed):
    gen = torch.Generator().manual_seed(seed)
    enc = HashGridEncoding(
        n_dims, n_levels, 2, log2_t, base, scale, grid_type=grid_type, dtype=torch.float64, generator=gen
    )
    with torch.no_grad():
        enc.params.uniform_(-1, 1, generator=gen)
    x = torch.rand(6, n_dims, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(enc(x).detach().numpy(), _reference(enc, x), rtol=0, atol=1e-12)


def _interior_points(enc, n, seed, margin=0.02):
    """Random points whose fractional cell position is in [margin, 1 - margin] on every level and axis."""
    rng = np.random.default_rng(seed)
    scales = np.array(enc.levels.scales)
    pts = []
    while len(pts) < n:
        p = rng.uniform(0, 1, size=enc.n_input_dims)
        frac = np.modf(np.outer(scales, p) + 0.5)[0]
        if frac.min() > margin and frac.max() < 1 - margin:
            pts.append(p)
    return torch.tensor(np.array(pts), dtype=torch.float64)


@pytest.mark.parametrize("interpolation", ["Linear", "Smoothstep"])
@pytest.mark.parametrize("n_dims", [2, 3])
def test_gradcheck_params_and_x(n_dims, interpolation):
    gen = torch.Generator().manual_seed(3)
    # Tiny tables (a few hundred parameters) keep the numerical Jacobian cheap; level 0 dense, the rest hashed.
    enc = HashGridEncoding(n_dims, 3, 2, 5, 2, 3.0, interpolation=interpolation, dtype=torch.float64, generator=gen)
    assert enc.levels.hashed[0] is False and enc.levels.hashed[-1] is True
    with torch.no_grad():
        enc.params.uniform_(-1, 1, generator=gen)
    x = _interior_points(enc, 4, seed=5).requires_grad_()

    def f(x, params):
        return enc_mod._HashGridFunction.apply(x, params, enc)

    assert torch.autograd.gradcheck(f, (x, enc.params), eps=1e-6, atol=1e-7, rtol=1e-6)


def _torch_reference(enc, x):
    """Differentiable reference: indices from the naive integer code, autograd through advanced indexing."""
    lv = enc.levels
    n_feat = lv.n_features_per_level
    outs = []
    for level in range(lv.n_levels):
        s, r, size, off = lv.scales[level], lv.resolutions[level], lv.level_size(level), lv.offsets[level]
        pos = x * s + 0.5
        grid = torch.floor(pos.detach())
        frac = pos - grid
        if enc.interpolation == "Smoothstep":
            frac = frac * frac * (3 - 2 * frac)
        acc = torch.zeros(x.shape[0], n_feat, dtype=x.dtype)
        for corner in itertools.product((0, 1), repeat=lv.n_dims):
            w = torch.ones(x.shape[0], dtype=x.dtype)
            for d in range(lv.n_dims):
                w = w * (frac[:, d] if corner[d] else 1 - frac[:, d])
            idx = [
                off + _ref_index([int(grid[n, d]) + corner[d] for d in range(lv.n_dims)], r, size, lv.hashed[level])
                for n in range(x.shape[0])
            ]
            acc = acc + w[:, None] * enc.params[torch.tensor(idx)]
        outs.append(acc)
    return torch.cat(outs, 1)


@pytest.mark.parametrize("interpolation", ["Linear", "Smoothstep"])
@pytest.mark.parametrize("n_dims", [2, 3, 4])
def test_backward_matches_autograd_reference(n_dims, interpolation):
    enc = _make(n_dims, 2, interpolation, torch.float64, seed=11)
    x = torch.rand(150, n_dims, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    g = torch.randn(150, enc.n_output_dims, dtype=torch.float64, generator=torch.Generator().manual_seed(13))

    x1 = x.clone().requires_grad_()
    enc(x1).backward(g)
    grad_params, grad_x = enc.params.grad.clone(), x1.grad.clone()

    enc.params.grad = None
    x2 = x.clone().requires_grad_()
    _torch_reference(enc, x2).backward(g)
    # Many points share table entries, so this exercises the scatter's accumulation.
    assert (enc.params.grad != 0).sum() < 150 * enc.levels.n_levels * 2**n_dims * 2
    torch.testing.assert_close(grad_params, enc.params.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_x, x2.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n_features", [1, 2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_params_grad_every_feature_width(n_features, dtype):
    # Each F packs table rows into a different scatter unit (float, complex64/128, several columns).
    enc = _make(2, n_features, "Linear", dtype, seed=61)
    x = torch.rand(120, 2, dtype=dtype, generator=torch.Generator().manual_seed(62))
    g = torch.randn(120, enc.n_output_dims, dtype=dtype, generator=torch.Generator().manual_seed(63))
    enc(x).backward(g)
    got = enc.params.grad.double()
    ref = _make(2, n_features, "Linear", torch.float64, seed=61)
    with torch.no_grad():
        ref.params.copy_(enc.params.double())
    _torch_reference(ref, x.double()).backward(g.double())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, ref.params.grad, rtol=tol, atol=tol)


def test_float32_backward_close_to_float64():
    enc = _make(3, 2, "Linear", torch.float32, seed=21)
    x = torch.rand(300, 3, generator=torch.Generator().manual_seed(22)).requires_grad_()
    g = torch.randn(300, enc.n_output_dims, generator=torch.Generator().manual_seed(23))
    enc(x).backward(g)
    enc64 = _make(3, 2, "Linear", torch.float64, seed=21)
    with torch.no_grad():
        enc64.params.copy_(enc.params.double())
    x64 = x.detach().double().requires_grad_()
    enc64(x64).backward(g.double())
    torch.testing.assert_close(enc.params.grad.double(), enc64.params.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-3)
    assert x.grad.dtype == torch.float32


def test_x_grad_only_and_params_grad_only():
    enc = _make(2, 2, "Linear", torch.float64, seed=31)
    x = torch.rand(50, 2, dtype=torch.float64).requires_grad_()
    enc.params.requires_grad_(False)
    enc(x).sum().backward()
    assert x.grad is not None and enc.params.grad is None
    enc.params.requires_grad_(True)
    x2 = x.detach()
    enc(x2).sum().backward()
    assert enc.params.grad is not None and enc.params.grad.shape == enc.params.shape


def test_nearest_gradients():
    enc = _make(2, 2, "Nearest", torch.float64, seed=41)
    x = torch.rand(40, 2, dtype=torch.float64).requires_grad_()
    g = torch.randn(40, enc.n_output_dims, dtype=torch.float64)
    enc(x).backward(g)
    assert torch.count_nonzero(x.grad) == 0  # piecewise constant in x
    # Each point adds its output gradient to exactly one entry per level.
    assert torch.allclose(enc.params.grad.sum(0), g.view(40, -1, 2).sum((0, 1)))


def test_chunked_recomputed_and_threaded_paths_agree(monkeypatch):
    enc = _make(3, 4, "Smoothstep", torch.float64, seed=51)
    x = torch.rand(203, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(52))
    g = torch.randn(203, enc.n_output_dims, dtype=torch.float64, generator=torch.Generator().manual_seed(53))

    def run():
        enc.params.grad = None
        xr = x.clone().requires_grad_()
        out = enc(xr)
        out.backward(g)
        return out.detach(), enc.params.grad.clone(), xr.grad.clone()

    base = run()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(enc_mod, "_MIN_CORNERS_FOR_THREADS", 0)
        threaded = run()
        monkeypatch.setattr(enc_mod, "_CORNERS_PER_CHUNK", 4 * 32 * 8)  # 32 points per chunk: 7 chunks, last short
        chunked = run()
        monkeypatch.setattr(enc_mod, "_MAX_SAVED_CORNERS", 0)  # backward recomputes corners
        recomputed = run()
    finally:
        torch.set_num_threads(threads)
    for other in (threaded, chunked, recomputed):
        for a, b in zip(base, other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    assert torch.equal(base[0], threaded[0]) and torch.equal(base[1], threaded[1])  # same per-level order
    np.testing.assert_allclose(chunked[0].numpy(), _reference(enc, x), rtol=0, atol=1e-12)


def test_empty_and_shape_errors():
    enc = _make(2, 2, "Linear", torch.float32)
    out = enc(torch.zeros(0, 2))
    assert out.shape == (0, enc.n_output_dims)
    with pytest.raises(ValueError):
        enc(torch.zeros(5, 3))
    with pytest.raises(ValueError):
        enc(torch.zeros(5))
    with pytest.raises(ValueError):
        enc(torch.zeros(5, 2, dtype=torch.int64))


def test_every_output_written_and_inputs_cast():
    enc = HashGridEncoding(2, 16, 2, 19, 16, 1.5)
    x = torch.rand(1000, 2, dtype=torch.float64)
    out = enc(x)
    assert out.dtype == torch.float32 and out.shape == (1000, 32)
    assert torch.isfinite(out).all()
    assert (out.abs() <= 1e-4 + 1e-9).all()  # convex combinations of U(-1e-4, 1e-4) entries
    assert (out != 0).float().mean() > 0.99
    # Non-contiguous input gives the same answer as the contiguous one.
    xt = x.t().contiguous().t()
    torch.testing.assert_close(enc(xt), out, rtol=0, atol=0)
    # float64 x is cast to float32 first, like tcnn.
    torch.testing.assert_close(enc(x.float()), out, rtol=0, atol=0)


def test_init_range_and_generator_determinism():
    a = HashGridEncoding(3, 4, 2, 12, 8, 2.0, generator=torch.Generator().manual_seed(7))
    b = HashGridEncoding(3, 4, 2, 12, 8, 2.0, generator=torch.Generator().manual_seed(7))
    c = HashGridEncoding(3, 4, 2, 12, 8, 2.0, generator=torch.Generator().manual_seed(8))
    assert a.params.shape == (a.levels.n_entries, 2)
    assert a.params.numel() == a.levels.n_params
    assert torch.equal(a.params, b.params)
    assert not torch.equal(a.params, c.params)
    p = a.params.detach()
    assert p.abs().max() <= 1e-4
    assert p.std().item() == pytest.approx(2e-4 / math.sqrt(12), rel=0.05)
    assert isinstance(a.params, torch.nn.Parameter)
    assert [n for n, _ in a.named_parameters()] == ["params"]


def test_hash_grid_config_errors():
    with pytest.raises(ConfigError, match=r"encoding\.n_features_per_level must be one of 1, 2, 4, 8, got 3"):
        HashGridEncoding(2, n_features_per_level=3)
    with pytest.raises(ConfigError, match=r"encoding\.interpolation"):
        HashGridEncoding(2, interpolation="Cubic")
    with pytest.raises(ConfigError, match=r"encoding\.type"):
        HashGridEncoding(2, grid_type="Tiled")
    with pytest.raises(ValueError):
        HashGridEncoding(2, dtype=torch.float16)


def test_dense_grid_encoding_is_exact_multilinear_interpolation():
    # A Dense single-level grid holding f(x, y) = x + 2y at its vertices reproduces it exactly inside the domain.
    enc = HashGridEncoding(2, 1, 1, 4, 5, 1.0, grid_type="Dense", dtype=torch.float64)
    lv = enc.levels
    r, s = lv.resolutions[0], lv.scales[0]
    with torch.no_grad():
        for i, j in itertools.product(range(r), range(r)):
            # vertex (i, j) sits at x = (i - 0.5) / s because of tcnn's +0.5 offset
            enc.params[i + j * r, 0] = (i - 0.5) / s + 2 * (j - 0.5) / s
    # pos = 4 x + 0.5 must stay below r - 1 = 4: beyond, the upper corner is coordinate r, which tcnn wraps.
    x = torch.rand(100, 2, dtype=torch.float64) * 0.8 + 0.05
    torch.testing.assert_close(enc(x)[:, 0], x[:, 0] + 2 * x[:, 1])


def test_frequency_encoding_exact_values():
    enc = FrequencyEncoding(2, n_frequencies=3)
    assert enc.n_output_dims == 12
    x = torch.tensor([[0.25, 0.5]], dtype=torch.float64)
    out = enc(x)[0]
    s2 = math.sqrt(0.5)
    # dim 0: sin/cos of pi/4, pi/2, pi; dim 1: of pi/2, pi, 2 pi
    expected = [s2, s2, 1, 0, 0, -1, 1, 0, 0, -1, 0, 1]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def test_frequency_encoding_layout():
    enc = FrequencyEncoding(3, n_frequencies=4)
    x = torch.rand(10, 3, dtype=torch.float64)
    out = enc(x)
    for j in range(enc.n_output_dims):
        dim, k, phase = j // 8, (j // 2) % 4, (j % 2) * math.pi / 2
        torch.testing.assert_close(out[:, j], torch.sin(x[:, dim] * 2**k * math.pi + phase))
    with pytest.raises(ConfigError, match=r"encoding\.n_frequencies"):
        FrequencyEncoding(3, 0)


def _unit_directions(n, seed):
    d = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=1, keepdim=True)


def test_spherical_harmonics_explicit_values():
    enc = SphericalHarmonicsEncoding(3, degree=4)
    assert enc.n_output_dims == 16
    c0, c1 = 0.28209479177387814, 0.48860251190291987
    up = enc(torch.tensor([[0.5, 0.5, 1.0]], dtype=torch.float64))[0]  # direction (0, 0, 1)
    expected = torch.zeros(16, dtype=torch.float64)
    expected[0] = c0
    expected[2] = c1
    expected[6] = math.sqrt(5) * 2 / (4 * math.sqrt(math.pi))  # sqrt(5)(3z^2 - 1)/(4 sqrt(pi))
    expected[12] = math.sqrt(7) * 2 / (4 * math.sqrt(math.pi))  # sqrt(7) z (5z^2 - 3)/(4 sqrt(pi))
    torch.testing.assert_close(up, expected, atol=1e-12, rtol=0)
    x_axis = enc(torch.tensor([[1.0, 0.5, 0.5]], dtype=torch.float64))[0]  # direction (1, 0, 0)
    assert x_axis[3].item() == pytest.approx(-c1)  # tcnn's sign convention: -C1 * x
    assert x_axis[1].item() == 0 and x_axis[2].item() == 0
    assert x_axis[8].item() == pytest.approx(math.sqrt(15) / (4 * math.sqrt(math.pi)))
    assert x_axis[15].item() == pytest.approx(-math.sqrt(70) / (8 * math.sqrt(math.pi)))
    y_axis = enc(torch.tensor([[0.5, 1.0, 0.5]], dtype=torch.float64))[0]
    assert y_axis[1].item() == pytest.approx(-c1)
    assert y_axis[9].item() == pytest.approx(math.sqrt(70) / (8 * math.sqrt(math.pi)))


def test_spherical_harmonics_orthonormal():
    d = _unit_directions(400_000, seed=3)
    y = SphericalHarmonicsEncoding(3, 4)((d + 1) / 2)
    gram = 4 * math.pi * (y.t() @ y) / d.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.02, rtol=0)


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_spherical_harmonics_degrees_are_prefixes(degree):
    x = (_unit_directions(20, seed=4) + 1) / 2
    full = SphericalHarmonicsEncoding(3, 4)(x)
    part = SphericalHarmonicsEncoding(3, degree)(x)
    assert part.shape == (20, degree**2)
    torch.testing.assert_close(part, full[:, : degree**2])


def test_spherical_harmonics_errors_and_grad():
    with pytest.raises(ConfigError, match=r"encoding\.degree"):
        SphericalHarmonicsEncoding(3, 5)
    with pytest.raises(ConfigError):
        SphericalHarmonicsEncoding(2, 4)
    x = ((_unit_directions(8, seed=6) + 1) / 2).requires_grad_()
    assert torch.autograd.gradcheck(SphericalHarmonicsEncoding(3, 4), (x,))

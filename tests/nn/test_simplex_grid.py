"""The SimplexGrid encoding (Wen & Yang 2023): properties that hold for any correct simplex interpolation, checked on
the PyTorch reference (``simplex_encode``) and the cpu kernels (hashgrid.cu, INTERPOLATION 3); the kernel-against-
reference comparisons, gradcheck and the nvcc builds are in tests/cuda/test_hashgrid.py.

Inputs are fresh random numbers on every run; the seed is printed and can be pinned with ``NGP_TEST_SEED``.
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

from ngp_cli.config import EncodingConfig
from ngp_cli.cuda import runtime
from ngp_cli.cuda.hashgrid import encode
from ngp_cli.errors import ConfigError
from ngp_cli.nn.encodings import HashGridEncoding, SimplexGridEncoding, simplex_encode
from ngp_cli.nn.model import build_encoding

SEED = int(os.environ.get("NGP_TEST_SEED", random.randrange(2**31)))
print(f"test_simplex_grid seed: {SEED} (NGP_TEST_SEED={SEED} reproduces)")

needs_cxx = pytest.mark.skipif(runtime.host_compiler() is None, reason="no host C++ compiler for the cpu target")
TARGETS = [None, pytest.param("cpu", marks=needs_cxx)]


def _gen(tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(SEED * 7919 + sum(map(ord, tag)))


def _random_grid(d: int, gen: torch.Generator, **grid) -> SimplexGridEncoding:
    """A SimplexGrid with table values uniform in [-1, 1] (F = 2 unless given; float32 unless given)."""
    enc = SimplexGridEncoding(d, **grid)
    with torch.no_grad():
        enc.params.uniform_(-1, 1, generator=gen)
    return enc


def _encode(enc: SimplexGridEncoding, x: torch.Tensor, target: str | None) -> torch.Tensor:
    if target is None:
        return simplex_encode(x, enc.params, enc.levels)
    return encode(x, enc.params, enc.levels, "Simplex", target)


def _skew(p: torch.Tensor) -> torch.Tensor:
    d = p.shape[1]
    return p + (math.sqrt(d + 1) - 1) / d * p.sum(1, keepdim=True)


def _unskew(q: torch.Tensor) -> torch.Tensor:
    d = q.shape[1]
    return q - (1 - 1 / math.sqrt(d + 1)) / d * q.sum(1, keepdim=True)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("d", [2, 3, 4])
def test_reproduces_affine_functions_of_the_skewed_position(d, target):
    """A table holding a·v + c at every vertex v of a dense level is interpolated to a·p' + c exactly, p' the skewed
    position: only weights that are barycentric coordinates of p' among the right vertices do that."""
    gen = _gen(f"affine-{d}")
    # F = 2 (two affine functions): the kernel variant the other float64 tests here build, not one of its own.
    enc = SimplexGridEncoding(d, n_levels=1, n_features_per_level=2, log2_hashmap_size=20, base_resolution=6,
                              per_level_scale=1.0, dtype=torch.float64)
    lv = enc.levels
    assert not lv.hashed[0]
    r = lv.resolutions[0]
    i = torch.arange(lv.n_entries, dtype=torch.int64)
    coords = torch.stack([(i // r**k) % r for k in range(d)], 1).double()
    a, c = torch.randn(d, 2, generator=gen, dtype=torch.float64), torch.tensor([0.25, -0.5], dtype=torch.float64)
    with torch.no_grad():
        enc.params.copy_((coords @ a + c).reshape(enc.params.shape))
    x = torch.rand(4000, d, generator=gen, dtype=torch.float64)
    expected = _skew(x * lv.scales[0] + 0.5) @ a + c
    torch.testing.assert_close(_encode(enc, x, target), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("d", [2, 3, 4])
def test_a_lattice_vertex_reads_its_table_row(d, target):
    """At a vertex of a level's skewed lattice one weight is 1: the level's output is that vertex's row."""
    gen = _gen(f"vertex-{d}")
    enc = _random_grid(d, gen, n_levels=1, log2_hashmap_size=20, base_resolution=5, per_level_scale=1.0,
                       dtype=torch.float64)
    lv = enc.levels
    r = lv.resolutions[0]
    v = torch.randint(1, 4, (200, d), generator=gen, dtype=torch.int64)
    x = (_unskew(v.double()) - 0.5) / lv.scales[0]
    inside = ((x >= 0) & (x <= 1)).all(1)
    x, v = x[inside], v[inside]
    assert len(x) > 20
    rows = enc.params[(v * torch.tensor([r**k for k in range(d)])).sum(1)]
    torch.testing.assert_close(_encode(enc, x, target), rows.detach(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("d", [2, 3, 4])
def test_continuous_across_simplex_boundaries(d, target):
    """Along random segments sampled finely, consecutive outputs differ by at most the slope times the step: no
    jump where a segment crosses from one simplex (or cube cell) into the next, at any level, dense or hashed. A wrong
    vertex or weight anywhere makes an O(1) jump."""
    gen = _gen(f"continuity-{d}")
    enc = _random_grid(d, gen, n_levels=4, log2_hashmap_size=10, base_resolution=3, per_level_scale=2.0)
    assert any(enc.levels.hashed)
    n = 20000
    for _ in range(3):
        # from near one corner of the unit cube to near the opposite one: long enough to cross many simplices
        a, b = torch.rand(d, generator=gen) * 0.25, 0.75 + torch.rand(d, generator=gen) * 0.25
        t = torch.linspace(0, 1, n).unsqueeze(1)
        x = (a + t * (b - a)).requires_grad_(True)
        out = _encode(enc, x, target)
        # the slope along the segment of every output, from the encoding's own x-gradient (piecewise constant)
        slope = torch.stack([torch.autograd.grad(out[:, j].sum(), x, retain_graph=True)[0] @ (b - a)
                             for j in range(out.shape[1])], 1).detach()
        # (a step may cross a sliver of a third simplex between two samples: the bound is the segment's steepest
        # slope, twice; a wrong vertex jumps by about the table values' spread, 0.1-1 here, 20x more than the bound)
        step = out.detach().diff(dim=0).abs()
        bound = 2 * slope.abs().amax(0) / (n - 1)
        assert bool((bound < 0.05).all()) and bool((step <= bound + 1e-5).all()), float((step - bound).max())
        # the segments do cross simplices: the slope changes along them
        assert int((slope.diff(dim=0).abs() > 1e-3).any(1).sum()) > 10


@needs_cxx
def test_second_derivative_in_x_is_zero_and_params_get_the_mixed_term():
    gen = _gen("second")
    enc = _random_grid(3, gen, n_levels=3, log2_hashmap_size=8, base_resolution=3, per_level_scale=2.0)
    p = enc.params.detach().clone().requires_grad_(True)
    x = torch.rand(500, 3, generator=gen).requires_grad_(True)
    out = encode(x, p, enc.levels, "Simplex", "cpu")
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    gxx, gp = torch.autograd.grad(gx.square().sum(), (x, p))
    assert torch.count_nonzero(gxx) == 0 and torch.count_nonzero(gp) > 0
    # the same mixed term through the reference's autograd
    p2 = enc.params.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    (gx2,) = torch.autograd.grad(simplex_encode(x2, p2, enc.levels).sum(), x2, create_graph=True)
    (gp2,) = torch.autograd.grad(gx2.square().sum(), p2)
    mag = gp2.abs().max()
    torch.testing.assert_close(gp / mag, gp2 / mag, rtol=0, atol=1e-5)


@needs_cxx
def test_module_dispatch_and_the_simplex_has_d_plus_one_vertices():
    gen = _gen("dispatch")
    enc = _random_grid(3, gen, n_levels=4, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)
    x = torch.rand(900, 3, generator=gen)
    ref = enc(x)
    enc.kernel_target = "cpu"
    torch.testing.assert_close(enc(x), ref, rtol=1e-5, atol=1e-5)
    # the gradient of one point reaches exactly D + 1 rows per level (a cube cell would reach 2^D)
    enc.params.grad = None
    enc(x[:1]).sum().backward()
    assert int((enc.params.grad.abs().sum(1) > 0).sum()) <= 4 * enc.levels.n_levels
    assert enc.interpolation == "Simplex" and "Simplex" in repr(enc)


def test_bad_configurations_are_config_errors():
    for d in (1, 5):
        with pytest.raises(ConfigError, match="SimplexGrid encodes 2 to 4 input dimensions"):
            SimplexGridEncoding(d)
    with pytest.raises(ConfigError, match="interpolation must be Linear"):
        EncodingConfig(otype="SimplexGrid", interpolation="Smoothstep")
    assert isinstance(build_encoding(EncodingConfig(otype="SimplexGrid", log2_hashmap_size=10), 3), SimplexGridEncoding)
    with pytest.raises(ValueError, match="does not go with levels"):
        encode(torch.rand(4, 3), HashGridEncoding(3).params.detach(), HashGridEncoding(3).levels, "Simplex", "cpu")

"""Level math and hashing of the multiresolution grid against tiny-cuda-nn's conventions (golden numbers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ngp_cli.errors import ConfigError
from ngp_cli.nn.grid import (
    PRIMES,
    coherent_prime_hash,
    grid_index,
    grid_levels,
    per_level_scale_from_max_resolution,
)

MASK = 2**32 - 1


def test_primes_are_tcnns():
    assert PRIMES == (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)


def test_golden_3d_levels():
    # D=3, N_min=32, T=2^16, b=1.5, L=20, F=2 (numbers worked out by hand from tcnn's grid.h).
    g = grid_levels(3, 20, 2, 16, 32, 1.5)
    assert g.resolutions[0] == 32
    assert g.scales[0] == 31.0
    assert g.level_size(0) == 32 * 32 * 32 == 32768
    assert not g.hashed[0]
    assert g.resolutions[1] == 48 and g.resolutions[2] == 72
    assert g.hashed[1] and g.hashed[2]  # 48^3 and 72^3 exceed 2^16
    assert g.level_size(1) == 65536 and g.level_size(2) == 65536
    assert g.offsets[0] == 0
    assert g.offsets[1] == 32768
    assert g.offsets[2] == 32768 + 65536
    assert len(g.offsets) == 21
    assert g.n_entries == g.offsets[-1] == 32768 + 19 * 65536
    assert g.n_params == 2_555_904


def test_scales_are_float32_exp2_log2():
    g = grid_levels(2, 16, 2, 19, 16, 1.5)
    log2b = np.log2(np.float32(1.5), dtype=np.float32)
    for level, (s, r) in enumerate(zip(g.scales, g.resolutions, strict=True)):
        expected = np.float32(np.exp2(np.float32(level) * log2b, dtype=np.float32) * np.float32(16)) - np.float32(1)
        assert s == float(np.float32(expected))
        assert r == math.ceil(s) + 1
    assert g.resolutions[:4] == (16, 24, 36, 54)


def test_entries_rounded_up_to_multiple_of_8():
    g = grid_levels(2, 2, 1, 19, 3, 2.0)  # r = 3, 6 -> 9 -> 16 and 36 -> 40 entries
    assert g.resolutions == (3, 6)
    assert [g.level_size(i) for i in range(2)] == [16, 40]
    assert g.hashed == (False, False)


def test_dense_grid_type_has_no_cap():
    g = grid_levels(3, 3, 2, 4, 8, 2.0, grid_type="Dense")  # T = 16 would cap every level of a Hash grid
    assert g.resolutions == (8, 16, 32)
    assert [g.level_size(i) for i in range(3)] == [512, 4096, 32768]
    assert g.hashed == (False, False, False)
    h = grid_levels(3, 3, 2, 4, 8, 2.0, grid_type="Hash")
    assert [h.level_size(i) for i in range(3)] == [16, 16, 16]
    assert h.hashed == (True, True, True)


def test_dense_level_beyond_uint32_half_is_rejected():
    with pytest.raises(ConfigError, match="Dense grid level 0"):
        grid_levels(3, 1, 2, 19, 2000, 1.0, grid_type="Dense")  # 2000^3 entries
    g = grid_levels(3, 1, 2, 19, 2000, 1.0, grid_type="Hash")
    assert g.hashed == (True,) and g.level_size(0) == 2**19


def test_hashed_iff_dense_count_exceeds_entries():
    g = grid_levels(2, 6, 2, 8, 4, 2.0)  # r = 4, 8, 16, 32, 64, 128; T = 256
    assert g.resolutions == (4, 8, 16, 32, 64, 128)
    assert g.hashed == (False, False, False, True, True, True)  # 16^2 = 256 = T still fits
    for level in range(g.n_levels):
        assert g.hashed[level] == (g.resolutions[level] ** 2 > g.level_size(level))


def test_level_size_out_of_range():
    g = grid_levels(2, 2, 2, 8, 4, 2.0)
    with pytest.raises(IndexError):
        g.level_size(2)


def test_hash_by_hand():
    assert int(coherent_prime_hash(torch.tensor([3, 5]))) == 3 ^ ((5 * 2654435761) % 2**32)
    # 5 * 2654435761 = 13272178805 = 3 * 2**32 + 387276917, and 387276917 ^ 3 = 387276918.
    assert int(coherent_prime_hash(torch.tensor([3, 5]))) == 387276918
    h3 = 7 ^ ((11 * 2654435761) % 2**32) ^ ((13 * 805459861) % 2**32)
    assert int(coherent_prime_hash(torch.tensor([7, 11, 13]))) == h3
    h4 = 1 ^ ((2 * 2654435761) % 2**32) ^ ((3 * 805459861) % 2**32) ^ ((4 * 3674653429) % 2**32)
    assert int(coherent_prime_hash(torch.tensor([1, 2, 3, 4]))) == h4
    # Negative coordinates act as uint32: -1 -> 0xFFFFFFFF.
    assert int(coherent_prime_hash(torch.tensor([-1, 0]))) == 0xFFFFFFFF
    assert int(coherent_prime_hash(torch.tensor([0, -1]))) == (0xFFFFFFFF * 2654435761) % 2**32


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(-(2**31), 2**32 - 1), min_size=4, max_size=4), min_size=1, max_size=8),
    st.integers(1, 4),
)
def test_hash_matches_python_ints(rows, n_dims):
    coords = torch.tensor([r[:n_dims] for r in rows], dtype=torch.int64)
    expected = []
    for r in rows:
        h = 0
        for d in range(n_dims):
            h ^= ((r[d] & MASK) * PRIMES[d]) & MASK
        expected.append(h)
    got = coherent_prime_hash(coords)
    assert got.dtype == torch.int64
    assert got.tolist() == expected


def test_dense_index_row_major_x_fastest():
    r = 7
    coords2 = torch.tensor([[3, 4], [0, 0], [6, 6]])
    assert grid_index(coords2, r, 56, False).tolist() == [3 + 4 * r, 0, 6 + 6 * r]
    coords3 = torch.tensor([[1, 2, 3], [6, 0, 5]])
    size3 = (r**3 + 7) // 8 * 8
    assert grid_index(coords3, r, size3, False).tolist() == [1 + 2 * r + 3 * r * r, 6 + 5 * r * r]
    # The +0.5 offset can reach coordinate r: tcnn wraps it with the modulo instead of clamping.
    assert grid_index(torch.tensor([[r, r - 1]]), r, r * r, False).tolist() == [(r + (r - 1) * r) % (r * r)]


def test_hashed_index_is_hash_mod_size():
    coords = torch.tensor([[3, 5], [100, 7]])
    idx = grid_index(coords, 1000, 256, True)
    assert idx.tolist() == [(3 ^ ((5 * 2654435761) % 2**32)) % 256, (100 ^ ((7 * 2654435761) % 2**32)) % 256]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.integers(2, 40), st.integers(3, 12), st.booleans(), st.integers(0, 2**31))
def test_grid_index_in_range(n_dims, r, log2_size, hashed, seed):
    size = 1 << log2_size
    gen = torch.Generator().manual_seed(seed)
    coords = torch.randint(0, r + 1, (32, n_dims), generator=gen)
    idx = grid_index(coords, r, size, hashed)
    assert idx.shape == (32,)
    assert int(idx.min()) >= 0 and int(idx.max()) < size


def test_per_level_scale_from_max_resolution():
    b = per_level_scale_from_max_resolution(16, 2048, 16)
    assert b == pytest.approx(math.exp(math.log(128) / 15), rel=1e-15)
    assert b == pytest.approx(128 ** (1 / 15))
    assert per_level_scale_from_max_resolution(16, 16 * 1.5**7, 8) == pytest.approx(1.5)
    assert per_level_scale_from_max_resolution(16, 4096, 1) == 1.0
    with pytest.raises(ConfigError):
        per_level_scale_from_max_resolution(16, 8, 4)
    with pytest.raises(ConfigError):
        per_level_scale_from_max_resolution(0, 8, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_features_per_level": 3}, "encoding.n_features_per_level must be one of 1, 2, 4, 8, got 3"),
        ({"n_dims": 5}, "encoding.n_dims_to_encode"),
        ({"n_dims": 1}, "encoding.n_dims_to_encode"),
        ({"n_levels": 0}, "encoding.n_levels"),
        ({"log2_hashmap_size": 32}, "encoding.log2_hashmap_size"),
        ({"base_resolution": 0}, "encoding.base_resolution"),
        ({"per_level_scale": 0.9}, "encoding.per_level_scale"),
        ({"per_level_scale": float("nan")}, "encoding.per_level_scale"),
        ({"grid_type": "Tiled"}, "encoding.type"),
    ],
)
def test_invalid_hyper_parameters(kwargs, message):
    args = {
        "n_dims": 2,
        "n_levels": 4,
        "n_features_per_level": 2,
        "log2_hashmap_size": 10,
        "base_resolution": 4,
        "per_level_scale": 2.0,
        "grid_type": "Hash",
    }
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        grid_levels(**args)


def test_levels_are_frozen():
    g = grid_levels(2, 2, 2, 8, 4, 2.0)
    with pytest.raises(AttributeError):
        g.n_levels = 3

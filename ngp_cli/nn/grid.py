"""Level math and spatial hashing of the multiresolution hash grid.

Everything here follows tiny-cuda-nn bit for bit, because trained tables are only portable between the torch and
CUDA backends if both agree on which table entry a grid vertex lands in:

* ``include/tiny-cuda-nn/encodings/grid.h`` -- per-level table sizes and offsets (``GridEncodingTemplated``
  constructor), and ``grid_scale`` / ``grid_resolution``;
* ``include/tiny-cuda-nn/common_device.h`` -- ``coherent_prime_hash`` and ``grid_index``.

Terminology (Müller et al. 2022, §3): ``L`` levels, table size ``T = 2**log2_hashmap_size`` entries per level,
``F`` features per level, coarsest resolution ``N_min`` (``base_resolution``) and per-level scale ``b``.
tiny-cuda-nn departs from the paper's eq. (2)-(3) in one way that matters: ``N_min`` counts grid *vertices*, so the
scale of level ``l`` is ``s_l = b**l * N_min - 1`` (computed in float32) and its resolution ``r_l = ceil(s_l) + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ngp_cli.config import GRID_TYPES
from ngp_cli.errors import ConfigError

__all__ = [
    "PRIMES",
    "GRID_TYPES",
    "GridLevels",
    "grid_levels",
    "per_level_scale_from_max_resolution",
    "coherent_prime_hash",
    "grid_index",
]

#: Per-dimension factors of tcnn's ``coherent_prime_hash`` (common_device.h); the first is 1 so that consecutive
#: x coordinates stay adjacent in memory (the "coherent" part, paper §3 eq. (4)).
PRIMES: tuple[int, ...] = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)

#: Grid types supported (tcnn also has "Tiled", which is not implemented here).

_U32_MASK = 0xFFFFFFFF
# tcnn clamps the dense entry count of a level to uint32 max / 2 before rounding up to a multiple of 8.
_MAX_LEVEL_ENTRIES = (2**32 - 1) // 2


@dataclass(frozen=True)
class GridLevels:
    """Static description of every level of a multiresolution grid (tcnn ``encodings/grid.h``).

    All sizes count table *entries*; each entry holds ``F = n_features_per_level`` parameters.

    Attributes:
        n_dims: input dimensionality ``D`` (2..4).
        n_levels: number of levels ``L``.
        n_features_per_level: ``F``.
        log2_hashmap_size: ``log2(T)``; caps the entries of a "Hash" level.
        base_resolution: ``N_min``.
        per_level_scale: ``b``.
        grid_type: ``"Hash"`` or ``"Dense"`` (dense levels are never capped at ``T``).
        scales: ``s_l`` per level, float32 values stored as Python floats.
        resolutions: ``r_l = ceil(s_l) + 1`` vertices per axis.
        offsets: length ``L + 1``; level ``l`` owns entries ``[offsets[l], offsets[l + 1])``.
        hashed: whether level ``l`` is indexed by the spatial hash (``r_l**D`` exceeds its entry count).
        lattice: ``"cubic"`` (the hash grid's cells) or ``"simplex"`` (the skewed simplex lattice of
            :class:`~ngp_cli.nn.encodings.SimplexGridEncoding`, whose vertices reach farther: see :func:`grid_levels`).
    """

    n_dims: int
    n_levels: int
    n_features_per_level: int
    log2_hashmap_size: int
    base_resolution: int
    per_level_scale: float
    grid_type: str
    scales: tuple[float, ...]
    resolutions: tuple[int, ...]
    offsets: tuple[int, ...]
    hashed: tuple[bool, ...]
    lattice: str = "cubic"

    @property
    def n_entries(self) -> int:
        """Total table entries over all levels (``offsets[-1]``)."""
        return self.offsets[-1]

    @property
    def n_params(self) -> int:
        """Total trainable parameters: ``n_entries * F``."""
        return self.offsets[-1] * self.n_features_per_level

    def level_size(self, level: int) -> int:
        """Entries owned by ``level`` (0-based); raises IndexError for a level outside ``[0, L)``."""
        if not 0 <= level < self.n_levels:
            raise IndexError(f"level {level} outside [0, {self.n_levels})")
        return self.offsets[level + 1] - self.offsets[level]


def _level_scale_f32(level: int, log2_b: np.float32, base_resolution: int) -> np.float32:
    # Mirrors tcnn's grid_scale: exp2f(level * log2_per_level_scale) * base_resolution - 1.0f, all in float32.
    with np.errstate(over="ignore"):
        e = np.exp2(np.float32(level) * log2_b, dtype=np.float32)
        return np.float32(np.float32(e * np.float32(base_resolution)) - np.float32(1.0))


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"encoding.{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"encoding.{name} must be {rng}, got {value}")
    return value


def grid_levels(
    n_dims: int,
    n_levels: int,
    n_features_per_level: int,
    log2_hashmap_size: int,
    base_resolution: int,
    per_level_scale: float,
    grid_type: str = "Hash",
    lattice: str = "cubic",
) -> GridLevels:
    """Compute scales, resolutions, per-level entry counts and offsets of a multiresolution grid.

    Follows the ``GridEncodingTemplated`` constructor of tcnn ``include/tiny-cuda-nn/encodings/grid.h``: a level
    needs ``r_l**D`` entries (clamped to ``(2**32 - 1) // 2``), rounded up to a multiple of 8; a "Hash" level is then
    capped at ``T = 2**log2_hashmap_size``. A level is hashed iff ``r_l**D`` exceeds its entry count, which is
    exactly when tcnn's ``grid_index`` falls back to the hash.

    Args:
        n_dims: ``D``, 2..4.
        n_levels: ``L >= 1``.
        n_features_per_level: ``F`` in {1, 2, 4, 8}.
        log2_hashmap_size: ``log2(T)`` in [1, 31].
        base_resolution: ``N_min >= 1`` (vertices per axis of the coarsest level).
        per_level_scale: ``b >= 1`` (paper eq. (3); tcnn accepts smaller values, but they make no pyramid).
        grid_type: "Hash" or "Dense".
        lattice: "cubic" (tcnn's grid) or "simplex": the vertices of the skewed lattice of
            :class:`~ngp_cli.nn.encodings.SimplexGridEncoding`, where level ``l``'s point ``p = s_l x + 0.5`` is
            skewed to ``p + K_D Σ_d p_d`` (``K_D = (sqrt(D + 1) - 1) / D``), so for ``x`` in ``[0, 1]^D`` a vertex
            coordinate reaches ``floor((s_l + 0.5) sqrt(D + 1)) + 1``: ``r_l`` is that plus one (the same
            scales ``s_l``; dense levels index ``r_l**D`` vertices).

    Returns:
        A frozen :class:`GridLevels`.

    Raises:
        ConfigError: any hyper-parameter outside the ranges above; the message names the tcnn key.
    """
    n_dims = _check_int("n_dims_to_encode", n_dims, 2, 4)
    n_levels = _check_int("n_levels", n_levels, 1, 128)
    if n_features_per_level not in (1, 2, 4, 8) or isinstance(n_features_per_level, bool):
        raise ConfigError(f"encoding.n_features_per_level must be one of 1, 2, 4, 8, got {n_features_per_level!r}")
    n_features_per_level = int(n_features_per_level)
    log2_hashmap_size = _check_int("log2_hashmap_size", log2_hashmap_size, 1, 31)
    base_resolution = _check_int("base_resolution", base_resolution, 1)
    try:
        b = float(per_level_scale)
    except (TypeError, ValueError):
        raise ConfigError(f"encoding.per_level_scale must be a number, got {per_level_scale!r}") from None
    if not math.isfinite(b) or b < 1.0:
        raise ConfigError(f"encoding.per_level_scale must be a finite number >= 1, got {per_level_scale!r}")
    if grid_type not in GRID_TYPES:
        raise ConfigError(f"encoding.type must be one of {', '.join(GRID_TYPES)}, got {grid_type!r}")
    if lattice not in ("cubic", "simplex"):
        raise ValueError(f"lattice must be 'cubic' or 'simplex', got {lattice!r}")
    stretch = math.sqrt(n_dims + 1)  # the simplex skew's factor along the diagonal: 1 + D K_D

    hashmap_size = 1 << log2_hashmap_size
    log2_b = np.log2(np.float32(b), dtype=np.float32)  # tcnn: std::log2(float) -> float
    scales, resolutions, offsets, hashed = [], [], [0], []
    for level in range(n_levels):
        s = _level_scale_f32(level, log2_b, base_resolution)
        if not np.isfinite(s) or s >= 2.0**31:
            raise ConfigError(
                f"encoding.per_level_scale {b} with {n_levels} levels gives level {level} an overflowing scale"
            )
        if lattice == "simplex":
            r = int(math.floor((float(s) + 0.5) * stretch)) + 2
        else:
            r = int(math.ceil(float(s))) + 1
        dense = r**n_dims
        if grid_type == "Dense" and dense > _MAX_LEVEL_ENTRIES:
            # tcnn would clamp the level and index it with a truncated row-major sum; nobody wants 8 GiB levels.
            raise ConfigError(
                f"encoding: Dense grid level {level} needs {dense} entries (more than 2**31 - 1); "
                "use a Hash grid, fewer levels or a smaller per_level_scale"
            )
        entries = _MAX_LEVEL_ENTRIES if dense > _MAX_LEVEL_ENTRIES else dense
        entries = (entries + 7) // 8 * 8
        if grid_type == "Hash":
            entries = min(entries, hashmap_size)
        scales.append(float(s))
        resolutions.append(r)
        hashed.append(grid_type == "Hash" and dense > entries)
        offsets.append(offsets[-1] + entries)

    return GridLevels(
        n_dims=n_dims,
        n_levels=n_levels,
        n_features_per_level=n_features_per_level,
        log2_hashmap_size=log2_hashmap_size,
        base_resolution=base_resolution,
        per_level_scale=b,
        grid_type=grid_type,
        scales=tuple(scales),
        resolutions=tuple(resolutions),
        offsets=tuple(offsets),
        hashed=tuple(hashed),
        lattice=lattice,
    )


def per_level_scale_from_max_resolution(base_resolution: float, max_resolution: float, n_levels: int) -> float:
    """Per-level scale ``b = exp((ln N_max - ln N_min) / (L - 1))`` (paper §3, eq. (3)); ``b = 1`` when ``L == 1``.

    Args:
        base_resolution: ``N_min > 0``.
        max_resolution: ``N_max >= N_min``.
        n_levels: ``L >= 1``.

    Returns:
        ``b`` as a Python float (>= 1).

    Raises:
        ConfigError: non-positive resolutions, ``N_max < N_min`` or ``L < 1``.
    """
    n_levels = _check_int("n_levels", n_levels, 1)
    n_min, n_max = float(base_resolution), float(max_resolution)
    if not (n_min > 0 and math.isfinite(n_min)):
        raise ConfigError(f"encoding.base_resolution must be > 0, got {base_resolution!r}")
    if not (math.isfinite(n_max) and n_max >= n_min):
        raise ConfigError(
            f"encoding.max_resolution must be >= base_resolution ({base_resolution!r}), got {max_resolution!r}"
        )
    if n_levels == 1:
        return 1.0
    return math.exp((math.log(n_max) - math.log(n_min)) / (n_levels - 1))


def coherent_prime_hash(coords: torch.Tensor) -> torch.Tensor:
    """tcnn's ``coherent_prime_hash`` (common_device.h; paper §3 eq. (4)) in uint32 arithmetic.

    ``h(x) = XOR_d (x_d * PRIMES[d]) mod 2**32``.

    Args:
        coords: ``(..., D)`` integer tensor of grid vertex coordinates, ``1 <= D <= 7``. Negative values are
            taken modulo ``2**32`` (the uint32 wraparound tcnn gets for out-of-range inputs).

    Returns:
        ``(...,)`` int64 tensor with values in ``[0, 2**32)``.

    Raises:
        ValueError: non-integer dtype, or ``D`` outside 1..7.
    """
    if coords.dtype.is_floating_point or coords.dtype.is_complex or coords.dtype == torch.bool:
        raise ValueError(f"coords must be an integer tensor, got {coords.dtype}")
    n_dims = coords.shape[-1] if coords.dim() else 0
    if not 1 <= n_dims <= len(PRIMES):
        raise ValueError(f"coords must have shape (..., D) with 1 <= D <= {len(PRIMES)}, got {tuple(coords.shape)}")
    coords = coords.to(torch.int64)
    # int64 products wrap modulo 2**64, so their low 32 bits are the uint32 products tcnn computes.
    result = coords[..., 0] * PRIMES[0]
    for d in range(1, n_dims):
        result = result ^ (coords[..., d] * PRIMES[d])
    return result & _U32_MASK


def grid_index(coords: torch.Tensor, resolution: int, level_size: int, hashed: bool) -> torch.Tensor:
    """Entry index of grid vertices within one level (tcnn ``grid_index`` in common_device.h).

    Dense levels use row-major order with x fastest: ``x + y*r + z*r*r (+ w*r**3)``; hashed levels use
    :func:`coherent_prime_hash`. The result is taken modulo ``level_size`` in both cases (uint32 arithmetic), so
    the vertex at coordinate ``r`` that the +0.5 offset can reach wraps around as in tcnn.

    Args:
        coords: ``(..., D)`` integer tensor of vertex coordinates (non-negative for inputs in ``[0, 1]^D``).
        resolution: ``r_l`` of the level.
        level_size: entries of the level (``GridLevels.level_size``).
        hashed: ``GridLevels.hashed[l]``.

    Returns:
        ``(...,)`` int64 tensor with values in ``[0, level_size)`` (not including the level's offset).

    Raises:
        ValueError: non-integer coords or non-positive ``level_size``.
    """
    if level_size <= 0:
        raise ValueError(f"level_size must be positive, got {level_size}")
    if hashed:
        idx = coherent_prime_hash(coords)
    else:
        if coords.dtype.is_floating_point or coords.dtype.is_complex or coords.dtype == torch.bool:
            raise ValueError(f"coords must be an integer tensor, got {coords.dtype}")
        coords = coords.to(torch.int64)
        idx = torch.zeros(coords.shape[:-1], dtype=torch.int64, device=coords.device)
        stride = 1
        for d in range(coords.shape[-1]):
            idx = idx + coords[..., d] * stride
            stride *= resolution
        idx = idx & _U32_MASK
    return idx % level_size

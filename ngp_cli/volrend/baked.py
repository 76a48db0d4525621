"""Baked sparse voxel grids (``ngp bake``, docs/baked.md): a NeRF's density and view-dependent colour stored at the
fine voxels of the occupied cells of its occupancy grid, rendered with no network: trilinear density and spherical-
harmonics colour of degree ≤ 2, as PlenOctrees (Yu et al. 2021, §4: SH colour fitted from the network at sampled
directions) and Plenoxels (Fridovich-Keil et al. 2022: trilinear σ and SH on a sparse voxel grid), baked from a
trained instant-ngp NeRF without fine-tuning.

Frame: the ngp frame of :mod:`ngp_cli.volrend.grid` (the dataset's world frame scaled by ``scale`` and offset by
``offset``, which the grid records); σ is per unit of its length.

Structure (:class:`BakedGrid`): cell ``c`` of cascade ``k`` (the occupancy grid's flat index, cell size 2^k/128) that
has a block holds ``S³`` fine voxels (``S`` = ``subdivisions``, 1..4; 512³ over cascade 0 for S = 4), of size
``2^k/(128 S)``, the values at their centres. Fine voxel ``(x, y, z)`` of a block (each in ``[0, S)``) is stored
when bit ``x + S·(y + S·z)`` of the block's 64-bit mask is set, at row ``offset + popcount(mask & ((1 << bit) - 1))``
of ``density`` (σ, float16) and ``sh`` ((V, 3, (degree + 1)²) float16, the r, g, b coefficients). A fetch outside
any stored voxel is σ = 0, colour 0. Samples are taken where marching (:func:`~ngp_cli.volrend.march.march_rays`)
finds a cell with a block: σ and the SH coefficients are interpolated trilinearly between the 8 fine-voxel centres
around the sample (in the cascade marching chose for it), the colour is ``clamp(Σ_k c_k Y_k(d), 0, 1)`` for the
ray's unit direction ``d``.

SH basis (:func:`sh_basis`): the real spherical harmonics of tiny-cuda-nn's ``SphericalHarmonics`` encoding
(``ngp_cli.nn.encodings.SphericalHarmonicsEncoding``; the same order, signs and normalisation) of the direction
itself: ``0.28209479, -0.48860251 y, 0.48860251 z, -0.48860251 x`` for degree 1 (4 coefficients), then
``1.09254843 xy, -1.09254843 yz, 0.94617470 z² - 0.31539157, -1.09254843 xz, 0.54627422 (x² - y²)`` for degree 2
(9 coefficients). Orthonormal on the unit sphere.

This module imports nothing from ``ngp_cli.tasks``; the kernel (``ngp_cli/cuda/baked.cu``) is imported when used.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ngp_cli.errors import ConfigError, DataError, UsageError
from ngp_cli.volrend.composite import composite_reference
from ngp_cli.volrend.constants import GRID_CELLS, GRID_SIZE
from ngp_cli.volrend.grid import empty_distance, mip_from_dt, n_cascades
from ngp_cli.volrend.march import march_rays_reference

__all__ = ["DEFAULT_MIN_ALPHA", "DEFAULT_N_DIRECTIONS", "FORMAT", "FORMAT_VERSION",
           "BakedGrid", "bake_grid", "fibonacci_directions", "format_bytes", "load_baked",
           "parse_bytes", "render_baked", "render_baked_reference", "save_baked", "sh_basis",
           "sh_count"]

FORMAT = "ngp-baked"
#: The file format version this code writes and the newest it reads.
FORMAT_VERSION = 1
#: Voxels are stored where the opacity of one fine voxel, ``1 - exp(-σ · voxel size)``, reaches this (or next to
#: such a voxel); chosen by measurement (docs/baked.md).
DEFAULT_MIN_ALPHA = 0.1
#: Directions of the SH fit per voxel (Fibonacci sphere); chosen by measurement (docs/baked.md).
DEFAULT_N_DIRECTIONS = 32
# float16's largest finite value is 65504: larger σ (τ > 100 over the smallest step: opaque anyway) is clamped.
_MAX_SIGMA = 6.0e4
# Ridge of the per-voxel least-squares SH fit with per-voxel directions (relative to the direction count).
_RIDGE = 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# SH basis and directions


def sh_count(degree: int) -> int:
    """Coefficients per colour channel of SH bands 0..``degree``: ``(degree + 1)²``."""
    return (degree + 1) ** 2


def sh_basis(directions: Tensor, degree: int) -> Tensor:
    """The real SH basis (module docstring: tcnn's order and signs) of unit ``directions`` (N, 3) → (N, (degree+1)²)
    in their dtype (float32 or float64). Raises ValueError for a degree other than 1 or 2, or a bad shape."""
    if degree not in (1, 2):
        raise ValueError(f"sh degree must be 1 or 2, got {degree}")
    if directions.shape[-1] != 3:
        raise ValueError(f"sh_basis expects directions of shape (..., 3), got {tuple(directions.shape)}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814), -0.48860251190291987 * y, 0.48860251190291987 * z,
           -0.48860251190291987 * x]
    if degree == 2:
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z, 0.94617469575755997 * z * z
                - 0.31539156525251999, -1.0925484305920792 * x * z, 0.54627421529603959 * x * x
                - 0.54627421529603959 * y * y]
    return torch.stack(out, -1)


def fibonacci_directions(n: int) -> Tensor:
    """``n`` unit directions spread evenly over the sphere (the Fibonacci lattice: z uniform in (-1, 1), golden-angle
    longitudes), (n, 3) float64."""
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * k / n
    r = torch.sqrt((1.0 - z * z).clamp_min(0.0))
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


# ---------------------------------------------------------------------------------------------------------------------
# Sizes

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 10**3, "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
          "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40, "tb": 10**12}


def parse_bytes(text: str, option: str = "--max-memory") -> int:
    """A byte count from ``2GiB``, ``512MiB``, ``1.5G``, ``800MB``, ``4096``: KiB/MiB/GiB/TiB and K/M/G/T are powers
    of 1024, KB/MB/GB/TB powers of 1000 (case-insensitive). Raises UsageError naming ``option`` otherwise."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise UsageError(f"{option} must be a size such as 2GiB, 512MiB or 800MB, got '{text}'")
    value = float(m.group(1)) * _UNITS[unit]
    if not value >= 1 or value > 1 << 60:
        raise UsageError(f"{option} must be between 1 byte and 1 EiB, got '{text}'")
    return int(value)


def format_bytes(n: float) -> str:
    """``n`` bytes as ``1.23 GiB`` / ``456.7 MiB`` / ``12.0 KiB`` / ``100 B``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------------------------------------------------------------
# The grid


def _popcount64(x: Tensor) -> Tensor:
    """Set bits of each int64 (the sign bit counted), as int64. SWAR on the low 63 bits, which never overflows."""
    low = x & 0x7FFFFFFFFFFFFFFF
    low = low - ((low >> 1) & 0x5555555555555555)
    low = (low & 0x3333333333333333) + ((low >> 2) & 0x3333333333333333)
    low = (low + (low >> 4)) & 0x0F0F0F0F0F0F0F0F
    low = low + (low >> 8)
    low = low + (low >> 16)
    low = low + (low >> 32)
    return (low & 0x7F) + (x < 0).long()


def _pack_bits(flags: Tensor) -> Tensor:
    """(32·N,) bool → (N,) int32 words, flag ``i`` at bit ``i % 32`` of word ``i // 32``."""
    words = (flags.view(-1, 32).long() << torch.arange(32, device=flags.device)).sum(1)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


@dataclass(eq=False)
class BakedGrid:
    """A baked grid (module docstring) and the tables the ``baked_render`` kernel reads.

    Attributes:
        block_cell: (B,) int64 flat occupancy-grid cell of each block, strictly increasing (block ids in cell order).
        block_mask: (B,) int64, the stored fine voxels of each block (bit ``x + S·(y + S·z)``).
        density: (V,) float16 σ ≥ 0 (finite) per unit ngp-frame length, V = the set bits of all masks.
        sh: (V, 3, (sh_degree + 1)²) float16 SH coefficients of r, g, b (:func:`sh_basis`).
        aabb_scale: the scene box size (power of two, 1..128); cascades = log2(aabb_scale) + 1.
        subdivisions: S, 1..4; sh_degree: 1 or 2.
        cone_angle, near_distance: the marching of the run it was baked from (ngp-frame units).
        scale, offset: the dataset's world → ngp frame (``p_ngp = p_world · scale + offset``).
        meta: the rest of the file header (source_run, source_step, bake_s, ...).

    Derived on construction, on the same device: ``density_rows`` (V + 1,) and ``sh_rows`` (V + 1, 3, C), the arrays
    ``density`` and ``sh`` are views of, with a last row of zeros (what the kernel reads for a voxel not stored),
    ``block_index`` (cascades·128³,) int32 (-1: no block),
    ``block_offset`` (B,) int32 first row of each block, ``occupancy_bits`` (cascades·128³/32,) int32,
    ``occupancy_rank`` (cascades·128³/32,) int32 (the blocks before each word of bits: block ids by rank queries) and
    ``empty_distance`` (cascades·128³,) uint8 (:func:`empty_distance`).

    Raises:
        ValueError: inconsistent shapes, dtypes or values (the message says which).
    """

    block_cell: Tensor
    block_mask: Tensor
    density: Tensor
    sh: Tensor
    aabb_scale: int
    subdivisions: int = 4
    sh_degree: int = 2
    cone_angle: float = 0.0
    near_distance: float = 0.0
    scale: float = 0.33
    offset: tuple[float, float, float] = (0.5, 0.5, 0.5)
    meta: dict[str, Any] = field(default_factory=dict)
    block_index: Tensor = field(init=False, repr=False)
    block_offset: Tensor = field(init=False, repr=False)
    occupancy_bits: Tensor = field(init=False, repr=False)
    empty_distance: Tensor = field(init=False, repr=False)
    occupancy_rank: Tensor = field(init=False, repr=False)
    density_rows: Tensor = field(init=False, repr=False)
    sh_rows: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.cascades = n_cascades(int(self.aabb_scale))
        s, degree = self.subdivisions, self.sh_degree
        if s not in (1, 2, 3, 4) or degree not in (1, 2):
            raise ValueError(f"subdivisions must be 1..4 and sh_degree 1 or 2, got {s} and {degree}")
        n_cells = self.cascades * GRID_CELLS
        cell, mask = self.block_cell, self.block_mask
        if cell.dim() != 1 or mask.shape != cell.shape or mask.dtype != torch.int64:
            raise ValueError(f"block_cell and block_mask must be (B,) with int64 masks, got {tuple(cell.shape)} and "
                             f"{mask.dtype} {tuple(mask.shape)}")
        if cell.is_floating_point() or cell.dtype == torch.bool:
            raise ValueError(f"block_cell must be integers, got {cell.dtype}")
        self.block_cell = cell = cell.long()
        if cell.numel() and (int(cell[0]) < 0 or int(cell[-1]) >= n_cells or not bool((cell[1:] > cell[:-1]).all())):
            raise ValueError(f"block_cell must be strictly increasing cells in [0, {n_cells})")
        bits = s ** 3
        if bits < 64 and cell.numel() and bool((mask >> bits).ne(0).any()):
            raise ValueError(f"block_mask has bits past the {bits} voxels of a block")
        counts = _popcount64(mask)
        n_voxels = int(counts.sum())
        if n_voxels >= 2**31:
            raise ValueError(f"{n_voxels} voxels: at most 2^31 - 1")
        c = sh_count(degree)
        if self.density.dtype != torch.float16 or tuple(self.density.shape) != (n_voxels,):
            raise ValueError(f"density must be float16 ({n_voxels},) (the masks' voxels), got {self.density.dtype} "
                             f"{tuple(self.density.shape)}")
        if self.sh.dtype != torch.float16 or tuple(self.sh.shape) != (n_voxels, 3, c):
            raise ValueError(f"sh must be float16 ({n_voxels}, 3, {c}), got {self.sh.dtype} {tuple(self.sh.shape)}")
        if not bool(torch.isfinite(self.density).all()) or bool((self.density < 0).any()):
            raise ValueError("density must be finite and >= 0")
        if not bool(torch.isfinite(self.sh).all()):
            raise ValueError("sh must be finite")
        dev = cell.device
        # The kernel's arrays have one more row, of zeros, for the voxels not stored; density and sh are views of them.
        self.density_rows = torch.zeros(n_voxels + 1, dtype=torch.float16, device=dev)
        self.density_rows[:n_voxels] = self.density
        self.density = self.density_rows[:n_voxels]
        self.sh_rows = torch.empty((n_voxels + 1, 3, c), dtype=torch.float16, device=dev)
        self.sh_rows[:n_voxels] = self.sh
        self.sh_rows[n_voxels] = 0.0
        self.sh = self.sh_rows[:n_voxels]
        self.block_index = torch.full((n_cells,), -1, dtype=torch.int32, device=dev)
        self.block_index[cell] = torch.arange(cell.numel(), dtype=torch.int32, device=dev)
        self.block_offset = (torch.cumsum(counts, 0) - counts).to(torch.int32)
        occupied = self.block_index >= 0
        self.occupancy_bits = _pack_bits(occupied)
        counts = occupied.view(-1, 32).sum(1, dtype=torch.int32)
        self.occupancy_rank = (torch.cumsum(counts, 0, dtype=torch.int32) - counts).to(torch.int32)
        self.empty_distance = empty_distance(occupied, self.cascades)
        self.offset = tuple(float(v) for v in self.offset)

    @property
    def n_blocks(self) -> int:
        return int(self.block_cell.numel())

    @property
    def n_voxels(self) -> int:
        return int(self.density.numel())

    @property
    def device(self) -> torch.device:
        return self.block_cell.device

    def occupancy(self) -> Tensor:
        """(cascades·128³,) uint8, 1 for the cells with a block: what marching samples."""
        return (self.block_index >= 0).to(torch.uint8)

    def nbytes(self) -> int:
        """Bytes of the stored tensors (block_cell as int32, masks, density, sh)."""
        return self.n_blocks * 12 + self.density.numel() * 2 + self.sh.numel() * 2

    def to(self, device: torch.device | str) -> BakedGrid:
        """This grid on ``device`` (itself when already there)."""
        if torch.device(device) == self.device:
            return self
        out = object.__new__(BakedGrid)
        out.__dict__.update({k: (v.to(device) if isinstance(v, Tensor) and k not in ("density", "sh") else v)
                             for k, v in self.__dict__.items()})
        out.density, out.sh = out.density_rows[:self.n_voxels], out.sh_rows[:self.n_voxels]
        return out

    def header(self) -> dict[str, Any]:
        """The file's JSON header (docs/baked.md)."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "aabb_scale": self.aabb_scale, "cascades": self.cascades,
                "subdivisions": self.subdivisions, "sh_degree": self.sh_degree, "sh_basis": "tcnn-real",
                "cone_angle": self.cone_angle, "near_distance": self.near_distance, "scale": self.scale,
                "offset": list(self.offset), "n_blocks": self.n_blocks, "n_voxels": self.n_voxels, **self.meta}


# ---------------------------------------------------------------------------------------------------------------------
# File format

_HEADER_KEYS = ("format", "version", "aabb_scale", "cascades", "subdivisions", "sh_degree", "sh_basis", "cone_angle",
                "near_distance", "scale", "offset", "n_blocks", "n_voxels")


def save_baked(grid: BakedGrid, path: Path) -> int:
    """Write ``grid`` to ``path`` (docs/baked.md): one safetensors file with the tensors ``block_cell`` (B,) int32,
    ``block_mask`` (B,) int64, ``density`` (V,) float16 and ``sh`` (V, 3, C) float16, and the JSON header
    (:meth:`BakedGrid.header`) as the string metadata ``ngp-baked``; atomically (a temporary file beside ``path``,
    then renamed: an earlier file there is replaced only by a complete one). Returns the file's size in bytes.
    Raises OutputError."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from ngp_cli.runs import atomic_write

    tensors = {"block_cell": grid.block_cell.to(torch.int32), "block_mask": grid.block_mask, "density": grid.density,
               "sh": grid.sh}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {FORMAT: json.dumps(grid.header())}

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as exc:  # not an OSError: its message carries the OS error, e.g. ENOSPC
            m = re.search(r"os error (\d+)", str(exc))
            if m:
                raise OSError(int(m.group(1)), os.strerror(int(m.group(1)))) from None
            raise OSError(f"safetensors: {' '.join(str(exc).split())[:160]}") from None

    atomic_write(Path(path), write)
    return Path(path).stat().st_size


def _header_of(path: Path) -> tuple[dict[str, Any], Any]:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise DataError(f"{path}: not a baked grid (unreadable safetensors: {' '.join(str(exc).split())[:120]})") \
            from None
    raw = (handle.metadata() or {}).get(FORMAT)
    if raw is None:
        raise DataError(f"{path}: not a baked grid (no '{FORMAT}' header; make one with 'ngp bake RUN')")
    try:
        header = json.loads(raw)
    except ValueError:
        raise DataError(f"{path}: corrupt baked grid header (not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path}: corrupt baked grid header (format is not '{FORMAT}')")
    version = header.get("version")
    if type(version) is not int or version < 1:
        raise DataError(f"{path}: corrupt baked grid header (version {version!r})")
    if version > FORMAT_VERSION:
        raise DataError(f"{path}: baked format version {version} is newer than this ngp reads ({FORMAT_VERSION}); "
                        "update ngp, or bake the run again with this one")
    return header, handle


def load_baked(path: str | os.PathLike, device: torch.device | str | None = None) -> BakedGrid:
    """Read a baked grid written by :func:`save_baked` (safetensors, no pickle), onto ``device`` (default CPU).

    Raises DataError: no such file, not a baked grid, a format version newer than :data:`FORMAT_VERSION`, or a
    corrupt file (missing tensors, inconsistent header or values)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such baked grid file" + (" (a folder)" if path.is_dir() else ""))
    header, handle = _header_of(path)
    missing = [k for k in _HEADER_KEYS if k not in header]
    if missing:
        raise DataError(f"{path}: corrupt baked grid header (missing {', '.join(missing)})")
    try:
        names = set(handle.keys())
        need = {"block_cell", "block_mask", "density", "sh"}
        if not need <= names:
            raise ValueError(f"missing tensors {', '.join(sorted(need - names))}")
        t = {k: handle.get_tensor(k) for k in need}
        offset = header["offset"]
        if not (isinstance(offset, list) and len(offset) == 3):
            raise ValueError("offset must be a list of 3 numbers")
        meta = {k: v for k, v in header.items() if k not in _HEADER_KEYS}
        grid = BakedGrid(t["block_cell"], t["block_mask"], t["density"], t["sh"], aabb_scale=int(header["aabb_scale"]),
                         subdivisions=int(header["subdivisions"]), sh_degree=int(header["sh_degree"]),
                         cone_angle=float(header["cone_angle"]), near_distance=float(header["near_distance"]),
                         scale=float(header["scale"]), offset=tuple(float(v) for v in offset), meta=meta)
        if grid.cascades != header["cascades"] or grid.n_blocks != header["n_blocks"] or \
                grid.n_voxels != header["n_voxels"]:
            raise ValueError("the header's cascades, n_blocks or n_voxels do not match the tensors")
        if not (math.isfinite(grid.scale) and grid.scale > 0 and all(math.isfinite(v) for v in grid.offset)
                and 0 <= grid.cone_angle <= 1 and 0 <= grid.near_distance < 1e6):
            raise ValueError("bad scale, offset, cone_angle or near_distance")
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{path}: corrupt baked grid: {' '.join(str(exc).split())[:160]}") from None
    except Exception as exc:  # safetensors' own errors on a truncated file
        raise DataError(f"{path}: corrupt baked grid: {' '.join(str(exc).split())[:160]}") from None
    return grid.to(device) if device is not None else grid


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


def _fetch_reference(grid: BakedGrid, positions: Tensor, mip: Tensor, directions: Tensor,
                     rows: Tensor) -> tuple[Tensor, Tensor]:
    """σ (S,) and colour (S, 3) of samples at ``positions`` (S, 3) in cascades ``mip`` (S,), seen along
    ``directions`` (S, 3); ``rows``: (B, S³) int64 row of each (block, bit), -1 where not stored."""
    s = grid.subdivisions
    res = GRID_SIZE * s
    scale = torch.ldexp(torch.ones_like(positions[:, 0]), -mip.to(torch.int32)).unsqueeze(-1)
    g = ((positions - 0.5) * scale + 0.5) * res - 0.5
    i0 = torch.floor(g)
    f = g - i0
    i0 = i0.long()
    basis = sh_basis(directions.float(), grid.sh_degree)  # (S, C)
    sigma = torch.zeros(positions.shape[0], device=positions.device)
    colour = torch.zeros(positions.shape[0], 3, device=positions.device)
    for k in range(8):
        corner = torch.tensor([k & 1, (k >> 1) & 1, k >> 2], device=positions.device)
        c = i0 + corner
        w = torch.where(corner.bool(), f, 1.0 - f).prod(-1)
        valid = ((c >= 0) & (c < res)).all(-1)
        c = c.clamp(0, res - 1)
        cell, local = c // s, c % s
        flat = mip.long() * GRID_CELLS + cell[:, 0] + GRID_SIZE * (cell[:, 1] + GRID_SIZE * cell[:, 2])
        blk = grid.block_index[flat].long()
        valid &= blk >= 0
        bit = local[:, 0] + s * (local[:, 1] + s * local[:, 2])
        row = rows[blk.clamp_min(0), bit]
        valid &= row >= 0
        row = row.clamp_min(0)
        sigma += torch.where(valid, w * grid.density[row].float(), 0.0)
        c_k = (grid.sh[row].float() * basis.unsqueeze(1)).sum(-1)  # (S, 3)
        colour += torch.where(valid.unsqueeze(-1), w.unsqueeze(-1) * c_k, 0.0)
    return sigma, colour.clamp(0.0, 1.0)


def _row_table(grid: BakedGrid) -> Tensor:
    """(B, S³) int64: the row of each (block, voxel bit), -1 where the voxel is not stored (from the masks alone)."""
    bits = grid.subdivisions ** 3
    stored = ((grid.block_mask.unsqueeze(-1) >> torch.arange(bits, device=grid.device)) & 1).bool()
    return torch.where(stored, torch.cumsum(stored.reshape(-1), 0).view_as(stored) - 1, -1)


@torch.no_grad()
def render_baked_reference(grid: BakedGrid, origins: Tensor, directions: Tensor, background: Tensor | None = None, *,
                           chunk_rays: int = 4096) -> dict[str, Tensor]:
    """Torch reference of the ``baked_render`` kernel: :func:`~ngp_cli.volrend.march.march_rays_reference` over the
    cells with a block (no sample cap), the trilinear fetch of σ and SH at each sample (cascade
    :func:`~ngp_cli.volrend.grid.mip_from_dt`), the colour ``clamp(Σ_k c_k Y_k(d), 0, 1)``, and
    :func:`~ngp_cli.volrend.composite.composite_reference` (stopping at transmittance 1e-4).

    Args:
        grid: the baked grid, on the rays' device.
        origins, directions: (R, 3) float32 rays in the grid's ngp frame, unit directions.
        background: (3,) or (R, 3) colour added as ``(1 - opacity) · background``, or None (black).
        chunk_rays: rays marched at a time (memory).

    Returns:
        ``{"rgb": (R, 3), "depth": (R,) Σ w t (ngp-frame units), "opacity": (R,) Σ w}``, float32.
    """
    n, dev = origins.shape[0], origins.device
    occ = grid.occupancy()
    rows = _row_table(grid)
    rgb = torch.zeros(n, 3, device=dev)
    depth = torch.zeros(n, device=dev)
    opacity = torch.zeros(n, device=dev)
    for s in range(0, n, chunk_rays):
        o, d = origins[s:s + chunk_rays].float(), directions[s:s + chunk_rays].float()
        samples = march_rays_reference(o, d, occ, grid.aabb_scale, cone_angle=grid.cone_angle,
                                       near_distance=grid.near_distance, max_samples=2**31 - 1)
        mip = mip_from_dt(samples.dts, samples.positions, grid.cascades - 1)
        sigma, colour = _fetch_reference(grid, samples.positions, mip, d[samples.ray_index], rows)
        c, op = composite_reference(sigma, colour, samples.dts, samples.offsets)
        ts = samples.ts.unsqueeze(-1).expand(-1, 3).contiguous()
        depth[s:s + chunk_rays] = composite_reference(sigma, ts, samples.dts, samples.offsets)[0][:, 0]
        if background is not None:
            bg = background.to(dev).float()
            c = c + (1.0 - op).unsqueeze(-1) * (bg if bg.dim() == 1 else bg[s:s + chunk_rays])
        rgb[s:s + chunk_rays] = c
        opacity[s:s + chunk_rays] = op
    return {"rgb": rgb, "depth": depth, "opacity": opacity}


@torch.no_grad()
def render_baked(grid: BakedGrid, origins: Tensor, directions: Tensor, background: Tensor | None = None, *,
                 kernel_target: str | None = None) -> dict[str, Tensor]:
    """Render rays through ``grid`` on the ``baked_render`` kernel (``kernel_target`` "cpu"/"cuda": one fused
    kernel, one thread per ray, the whole view at once) or the torch reference (None). Arguments and result as
    :func:`render_baked_reference`; the grid and the rays on the target's device."""
    if kernel_target is None:
        return render_baked_reference(grid, origins, directions, background)
    from ngp_cli.cuda.baked import render as render_kernel

    rgb, depth, opacity = render_kernel(
        origins, directions, occupancy_bits=grid.occupancy_bits, occupancy_rank=grid.occupancy_rank,
        empty_distance=grid.empty_distance,
        block_mask=grid.block_mask, block_offset=grid.block_offset, density=grid.density_rows, sh=grid.sh_rows,
        aabb_scale=grid.aabb_scale, subdivisions=grid.subdivisions, sh_degree=grid.sh_degree,
        cone_angle=grid.cone_angle, near_distance=grid.near_distance, background=background, target=kernel_target)
    return {"rgb": rgb, "depth": depth, "opacity": opacity}


# ---------------------------------------------------------------------------------------------------------------------
# Baking

#: Working bytes per network evaluation (a NeRF density or colour query, encoding and MLP activations), for the tile
#: sizes under ``max_memory``; measured on ngp's NeRF (docs/baked.md).
BYTES_PER_QUERY = 1024
_MAX_TILE_QUERIES = 1 << 18


def _voxel_positions(cells: Tensor, bits: Tensor, s: int) -> Tensor:
    """(N, 3) float32 ngp-frame centres of fine voxel ``bits`` (N,) of the blocks of ``cells`` (N,) (int64)."""
    cascade = cells // GRID_CELLS
    local = cells % GRID_CELLS
    ijk = torch.stack([local % GRID_SIZE, (local // GRID_SIZE) % GRID_SIZE, local // (GRID_SIZE * GRID_SIZE)], -1)
    sub = torch.stack([bits % s, (bits // s) % s, bits // (s * s)], -1)
    scale = torch.ldexp(torch.ones(cells.shape[0], dtype=torch.float64, device=cells.device),
                        cascade.to(torch.int32)).unsqueeze(-1)
    pos = ((ijk.double() + (sub.double() + 0.5) / s) / GRID_SIZE - 0.5) * scale + 0.5
    return pos.float()


def _dilate(kept: Tensor, cells: Tensor, block_of_cell: Tensor, s: int, chunk: int = 1 << 16) -> Tensor:
    """Voxels within one fine voxel (the 3×3×3 neighbourhood, across block faces) of a kept voxel: (B, S³) bool.
    ``kept`` (B, S³) bool per block of ``cells`` (B,); ``block_of_cell`` (cascades·128³,) int64 block of each cell
    (-1: none). Voxels of cells without a block are never stored (marching never samples there)."""
    b = kept.shape[0]
    kept3 = kept.view(b, s, s, s)  # [block, z, y, x]
    out = torch.zeros_like(kept3)
    n_cells = block_of_cell.numel()
    ranges = {-1: (slice(0, 1), slice(s - 1, s)), 0: (slice(1, s + 1), slice(0, s)), 1: (slice(s + 1, s + 2),
                                                                                       slice(0, 1))}
    for start in range(0, b, chunk):
        c = cells[start:start + chunk]
        n = c.numel()
        cascade, local = c // GRID_CELLS, c % GRID_CELLS
        xyz = torch.stack([local % GRID_SIZE, (local // GRID_SIZE) % GRID_SIZE, local // (GRID_SIZE * GRID_SIZE)], -1)
        padded = torch.zeros(n, s + 2, s + 2, s + 2, dtype=torch.bool, device=kept.device)
        for oz in (-1, 0, 1):
            for oy in (-1, 0, 1):
                for ox in (-1, 0, 1):
                    q = xyz + torch.tensor([ox, oy, oz], device=kept.device)
                    inside = ((q >= 0) & (q < GRID_SIZE)).all(-1)
                    q = q.clamp(0, GRID_SIZE - 1)
                    nb = block_of_cell[(cascade * GRID_CELLS + q[:, 0] + GRID_SIZE * (q[:, 1] + GRID_SIZE * q[:, 2]))
                                       .clamp(0, n_cells - 1)]
                    nb = torch.where(inside, nb, -1)
                    (pz, sz), (py, sy), (px, sx) = ranges[oz], ranges[oy], ranges[ox]
                    src = kept3[nb.clamp_min(0)][:, sz, sy, sx]
                    padded[:, pz, py, px] = src & (nb >= 0).view(-1, 1, 1, 1)
        acc = torch.zeros(n, s, s, s, dtype=torch.bool, device=kept.device)
        for dz in range(3):
            for dy in range(3):
                for dx in range(3):
                    acc |= padded[:, dz:dz + s, dy:dy + s, dx:dx + s]
        out[start:start + n] = acc
    return out.view(b, s ** 3)


def _fit_sh(rgb: Tensor, directions: Tensor, degree: int, pinv: Tensor | None) -> Tensor:
    """Least-squares SH coefficients (T, 3, C) of colours ``rgb`` (T, M, 3) seen along ``directions``: (M, 3) shared
    (``pinv`` (C, M) their basis' pseudo-inverse) or (T, M, 3) per voxel (normal equations with a small ridge)."""
    if pinv is not None:
        return torch.matmul(pinv, rgb.float()).transpose(1, 2)  # (C, M) @ (T, M, 3) -> (T, 3, C)
    basis = sh_basis(directions.float(), degree)  # (T, M, C)
    gram = basis.transpose(1, 2) @ basis
    gram = gram + _RIDGE * basis.shape[1] * torch.eye(gram.shape[-1], device=gram.device)
    rhs = basis.transpose(1, 2) @ rgb.float()  # (T, C, 3)
    return torch.linalg.solve(gram, rhs).transpose(1, 2)


@torch.no_grad()
def bake_grid(occupancy: Tensor, aabb_scale: int, *, density_fn: Callable[[Tensor], Tensor],
              feature_fn: Callable[[Tensor], Tensor], colour_fn: Callable[[Tensor, Tensor], Tensor],
              directions: Tensor | Callable[[Tensor], Tensor] | None = None, subdivisions: int = 4,
              sh_degree: int = 2, min_alpha: float = DEFAULT_MIN_ALPHA, max_memory: int = 2 << 30,
              cone_angle: float = 0.0, near_distance: float = 0.0, scale: float = 0.33,
              offset: tuple[float, float, float] = (0.5, 0.5, 0.5), bytes_per_query: int = BYTES_PER_QUERY,
              log: Callable[[str], None] | None = None,
              progress: Callable[[int | None, str], Any] | None = None) -> BakedGrid:
    """Bake a field into a :class:`BakedGrid` over the occupied cells of ``occupancy``, in bounded memory.

    1. Every occupied cell becomes a block of ``S³`` fine voxels; σ = ``density_fn`` at every voxel centre, in tiles.
    2. A voxel is kept when ``1 - exp(-σ · voxel size) ≥ min_alpha``; the stored set is the kept set dilated by one
       fine voxel (3×3×3, across block faces), so trilinear interpolation next to a kept voxel reads stored
       neighbours. Blocks left with no stored voxel are dropped (their cells count as empty).
    3. Per stored voxel, ``h = feature_fn(centre)``, ``rgb = colour_fn(h, dirs)`` at the directions of the SH fit,
       and the SH coefficients by least squares (:func:`sh_basis`), in tiles.

    Args:
        occupancy: (cascades·128³,) uint8/bool occupancy bits (the run's :class:`~ngp_cli.volrend.grid.OccupancyGrid`).
        aabb_scale: the scene box size (power of two).
        density_fn: positions (N, 3) float32 ngp frame → σ (N,) ≥ 0 per unit length.
        feature_fn: positions (N, 3) → features (N, F) for ``colour_fn``.
        colour_fn: (features (T, F), directions (M, 3) or (T, M, 3)) → rgb (T, M, 3) in [0, 1].
        directions: the fit's view directions: (M, 3) unit vectors shared by every voxel, a callable positions
            (T, 3) → (T, M, 3) per voxel, or None for :data:`DEFAULT_N_DIRECTIONS` :func:`fibonacci_directions`.
        subdivisions, sh_degree: S (1..4) and the SH degree (1 or 2).
        min_alpha: the keep threshold (0 keeps every voxel of every occupied cell).
        max_memory: bytes for the bake's own buffers: the tables, the per-block arrays (σ and flags), the output
            (2 + 6·C bytes per voxel) and the network's working set per tile (``bytes_per_query`` per query); the
            field's parameters and the caller's data are not counted.
        cone_angle, near_distance, scale, offset: recorded in the grid (the run's marching and the dataset frame).
        log: one line per stage (stderr), or None; progress: ``ngp_cli.console.progress``-like context manager
            factory ``(total, label)`` yielding ``advance(n)``, or None.

    Returns:
        The grid (on the occupancy's device), with ``meta``: ``occupied_cells``, ``kept_voxels``, ``min_alpha``,
        ``n_directions``, ``density_s``, ``colour_s``.

    Raises:
        ConfigError: ``max_memory`` below what the occupied cells need (before any evaluation) or what their stored
            voxels need (after the density pass); the message names the need. ValueError: bad arguments.
    """
    log = log or (lambda _msg: None)
    if progress is None:
        def progress(_total, _label):
            return contextlib.nullcontext(lambda n=1, **_kw: None)
    s = int(subdivisions)
    if s not in (1, 2, 3, 4) or sh_degree not in (1, 2) or not 0.0 <= min_alpha < 1.0:
        raise ValueError(f"bad bake settings: subdivisions {s}, sh_degree {sh_degree}, min_alpha {min_alpha}")
    cascades = n_cascades(aabb_scale)
    dev = occupancy.device
    n_cells = cascades * GRID_CELLS
    if occupancy.numel() != n_cells:
        raise ValueError(f"occupancy must have {n_cells} cells for aabb_scale {aabb_scale}, got {occupancy.numel()}")
    if directions is None:
        directions = fibonacci_directions(DEFAULT_N_DIRECTIONS)
    shared = isinstance(directions, Tensor)
    n_dirs = int(directions.shape[0]) if shared else None
    c = sh_count(sh_degree)
    bits = s ** 3
    cells = torch.nonzero(occupancy.reshape(-1)).squeeze(1)
    n0 = int(cells.numel())
    fixed = n_cells * (1 + 8) + n0 * 8  # occupancy + block-of-cell table, cell list
    per_block = bits * (4 + 2) + (s + 2) ** 3 + 24  # σ float32, kept/stored flags, the dilation's padding, ids
    per_voxel = 2 + 6 * c
    min_queries = max(4096, 64 * (n_dirs or DEFAULT_N_DIRECTIONS))
    need = fixed + n0 * per_block + min_queries * bytes_per_query
    log(f"bake: {n0:,} occupied cells of {cascades} cascade(s) → blocks of {s}³ voxels "
        f"({n0 * bits:,} voxels to evaluate), SH degree {sh_degree}")
    if need > max_memory:
        raise ConfigError(f"--max-memory {format_bytes(max_memory)} is too small: the {n0:,} occupied cells at {s}³ "
                          f"voxels each need at least {format_bytes(need)}")
    # 1. σ at every voxel of every block.
    t0 = time.perf_counter()
    sigma = torch.empty(n0, bits, device=dev)
    work = max_memory - fixed - n0 * per_block
    tile = max(1, min(work // bytes_per_query, _MAX_TILE_QUERIES) // bits)
    all_bits = torch.arange(bits, device=dev)
    with progress(n0, f"bake: density of {n0:,} blocks ({n0 * bits:,} voxels)") as advance:
        for start in range(0, n0, tile):
            cb = cells[start:start + tile]
            pos = _voxel_positions(cb.repeat_interleave(bits), all_bits.repeat(cb.numel()), s)
            sigma[start:start + cb.numel()] = density_fn(pos).float().reshape(cb.numel(), bits)
            advance(cb.numel())
    size = torch.ldexp(torch.full((n0, 1), 1.0 / (GRID_SIZE * s), device=dev),
                       (cells // GRID_CELLS).to(torch.int32).unsqueeze(1))
    threshold = -math.log1p(-min_alpha)  # σ · size ≥ threshold ⇔ 1 - exp(-σ · size) ≥ min_alpha
    kept = torch.nan_to_num(sigma, nan=0.0) * size >= threshold
    if min_alpha == 0.0:
        kept = torch.ones_like(kept)
    # 2. The stored set: kept voxels dilated by one; drop blocks left empty.
    block_of_cell = torch.full((n_cells,), -1, dtype=torch.int64, device=dev)
    block_of_cell[cells] = torch.arange(n0, device=dev)
    stored = _dilate(kept, cells, block_of_cell, s)
    del block_of_cell
    nonempty = stored.any(1)
    cells, stored, sigma = cells[nonempty], stored[nonempty], sigma[nonempty]
    n_voxels = int(stored.sum())
    density_s = time.perf_counter() - t0
    log(f"bake: {int(kept.sum()):,} voxels with alpha ≥ {min_alpha:g}, {n_voxels:,} stored after dilation "
        f"({n_voxels / max(1, n0 * bits):.1%}) in {int(cells.numel()):,} blocks ({density_s:.1f} s)")
    need = fixed + n0 * per_block + n_voxels * per_voxel + min_queries * bytes_per_query
    if need > max_memory:
        raise ConfigError(f"--max-memory {format_bytes(max_memory)} is too small: the {n_voxels:,} voxels to store "
                          f"need at least {format_bytes(need)}")
    if n_voxels >= 2**31:
        raise ConfigError(f"{n_voxels:,} voxels to store: at most 2^31 - 1 (lower --subdivisions or raise "
                          "--min-alpha)")
    masks = (stored.long() << all_bits).sum(1)
    density = torch.nan_to_num(sigma[stored], nan=0.0).clamp(0.0, _MAX_SIGMA).to(torch.float16)
    voxel_block, voxel_bit = torch.nonzero(stored, as_tuple=True)  # rows: block-major, bits ascending
    del sigma, stored
    # 3. Colour: SH fit per stored voxel.
    t1 = time.perf_counter()
    sh = torch.empty(n_voxels, 3, c, dtype=torch.float16, device=dev)
    pinv = None
    if shared:
        dirs = directions.to(dev, torch.float64)
        pinv = torch.linalg.pinv(sh_basis(dirs, sh_degree)).float()
        dirs = dirs.float()
    elif n_voxels:
        n_dirs = int(directions(_voxel_positions(cells[voxel_block[:1]], voxel_bit[:1], s)).shape[1])
    work = max_memory - fixed - n0 * per_block - n_voxels * per_voxel
    tile = max(1, min(work // bytes_per_query, _MAX_TILE_QUERIES) // max(1, n_dirs or 1))
    with progress(n_voxels, f"bake: colour of {n_voxels:,} voxels ({n_dirs} directions each)") as advance:
        for start in range(0, n_voxels, tile):
            vb = voxel_block[start:start + tile]
            pos = _voxel_positions(cells[vb], voxel_bit[start:start + tile], s)
            d = dirs if shared else directions(pos)
            coeffs = _fit_sh(colour_fn(feature_fn(pos), d), d, sh_degree, pinv)
            sh[start:start + vb.numel()] = torch.nan_to_num(coeffs).clamp(-_MAX_SIGMA, _MAX_SIGMA).to(torch.float16)
            advance(vb.numel())
    colour_s = time.perf_counter() - t1
    log(f"bake: SH colour fitted at {n_dirs} directions per voxel ({colour_s:.1f} s)")
    meta = {"occupied_cells": n0, "kept_voxels": int(kept.sum()), "min_alpha": min_alpha, "n_directions": n_dirs,
            "density_s": round(density_s, 3), "colour_s": round(colour_s, 3)}
    return BakedGrid(cells, masks, density, sh, aabb_scale=aabb_scale, subdivisions=s, sh_degree=sh_degree,
                     cone_angle=float(cone_angle), near_distance=float(near_distance), scale=float(scale),
                     offset=tuple(float(v) for v in offset), meta=meta)

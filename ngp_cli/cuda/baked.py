"""The baked sparse-voxel renderer of ``baked.cu`` (``baked_render``) on the ``cuda`` and ``cpu`` targets.

Semantics are those of the torch reference the tests compare against,
:func:`ngp_cli.volrend.baked.render_baked_reference`; the grid's tables are built by
:class:`ngp_cli.volrend.baked.BakedGrid`, which calls :func:`render` with them. This module does not import
``ngp_cli.tasks`` nor :mod:`ngp_cli.volrend.baked` (which imports it): it takes plain tensors.

Frame: instant-ngp's "ngp frame" (the scene at ``aabb_scale`` 1 in the unit cube around 0.5); lengths (``t``,
``Δt``, ``near_distance``, depth) are in its units and σ is per unit of that length.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ngp_cli.cuda.runtime import load_module
from ngp_cli.cuda.runtime import output_buffer as _out
from ngp_cli.volrend.constants import GRID_CELLS, GRID_SIZE, MIN_CONE_STEPSIZE, MIN_TRANSMITTANCE, N_STEPS

__all__ = ["module_defines", "render"]

_GPU_BLOCK = 128
_CPU_RAY_BLOCK = 32  # rays per emulated block (each ray is a long serial loop; small blocks balance the workers)


def module_defines(subdivisions: int, sh_degree: int) -> dict[str, int]:
    """The defines of the ``baked.cu`` variant for ``subdivisions`` (1..4) fine voxels per cell side and SH bands
    0..``sh_degree`` (1 or 2). Raises ValueError outside those."""
    if subdivisions not in (1, 2, 3, 4):
        raise ValueError(f"subdivisions must be 1..4, got {subdivisions}")
    if sh_degree not in (1, 2):
        raise ValueError(f"sh_degree must be 1 or 2, got {sh_degree}")
    return {"SUBDIV": int(subdivisions), "SH_DEGREE": int(sh_degree)}


def _check(name: str, t: Tensor, dtype: torch.dtype, shape: tuple, target: str) -> None:
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise ValueError(f"baked render expects {name} {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
    if t.device.type != target:
        raise ValueError(f"target {target!r} needs tensors on a {target} device, got {name} on {t.device}")


def render(origins: Tensor, directions: Tensor, *, occupancy_bits: Tensor, occupancy_rank: Tensor,
           empty_distance: Tensor, block_mask: Tensor, block_offset: Tensor, density: Tensor, sh: Tensor,
           aabb_scale: int, subdivisions: int, sh_degree: int, cone_angle: float, near_distance: float,
           background: Tensor | None = None, target: str) -> tuple[Tensor, Tensor, Tensor]:
    """Render rays through a baked grid with the ``baked_render`` kernel: marching as
    :func:`ngp_cli.volrend.march.march_rays_reference` over the cells with a block (no sample cap), a trilinear fetch
    of σ and of the SH colour at each sample, front-to-back compositing stopped at transmittance 1e-4.

    Args:
        origins: (R, 3) ray origins in the ngp frame (cast to float32).
        directions: (R, 3) unit directions (cast to float32); zero components are allowed.
        occupancy_bits: (cascades·128³ / 32,) int32, bit ``c % 32`` of word ``c // 32`` set for each cell with a block.
        occupancy_rank: (cascades·128³ / 32,) int32, the set bits before each word (blocks are numbered in cell order:
            cell c's block is ``rank[c // 32] + popcount`` of the bits below it in its word).
        empty_distance: (cascades·128³,) uint8, per cell 0 (it has a block) or the radius + 1 of the cube around it
            that is empty in every cascade (:func:`ngp_cli.volrend.baked.empty_distance`).
        block_mask: (B,) int64, the stored voxels of each block (bit ``x + S·(y + S·z)``).
        block_offset: (B,) int32, each block's first row in ``density`` / ``sh``.
        density: (V + 1,) float16 σ ≥ 0 per unit length; sh: (V + 1, 3, (sh_degree + 1)²) float16 SH coefficients
            of r, g, b; row V is zeros (what a voxel not stored reads: :attr:`BakedGrid.density_rows
            <ngp_cli.volrend.baked.BakedGrid>`).
        aabb_scale: scene box size, a power of two in 1..128 (the box is ``[0.5 - s/2, 0.5 + s/2]³``).
        subdivisions: S, fine voxels per cell side (1..4); sh_degree: 1 or 2.
        cone_angle: step growth (Δt = clamp(t · cone_angle, √3/1024, Δt_max)); near_distance: marching starts at
            ``max(t_entry, near_distance)``.
        background: (3,) or (R, 3) colour added times the transmittance left, or None (black).
        target: "cpu" or "cuda"; every tensor on that device.

    Returns:
        ``(rgb (R, 3), depth (R,) = Σ w t, opacity (R,) = Σ w)``, float32.

    Raises:
        ValueError: bad shapes, dtypes, target, device, aabb_scale, subdivisions or sh_degree.
    """
    if target not in ("cpu", "cuda"):
        raise ValueError(f"target must be 'cpu' or 'cuda', got {target!r}")
    if aabb_scale < 1 or aabb_scale > 128 or aabb_scale & (aabb_scale - 1):
        raise ValueError(f"aabb_scale must be a power of two in 1..128, got {aabb_scale}")
    defines = module_defines(subdivisions, sh_degree)
    if origins.dim() != 2 or origins.shape[1] != 3 or directions.shape != origins.shape:
        raise ValueError(f"baked render expects origins and directions of shape (R, 3), got {tuple(origins.shape)} "
                         f"and {tuple(directions.shape)}")
    n_rays = origins.shape[0]
    if n_rays >= 2**31:
        raise ValueError(f"baked render supports fewer than 2**31 rays, got {n_rays}")
    cascades = empty_distance.numel() // GRID_CELLS
    n_blocks, n_voxels = block_mask.shape[0] if block_mask.dim() == 1 else -1, density.shape[0] - 1
    if cascades < 1 or empty_distance.numel() != cascades * GRID_CELLS or (1 << (cascades - 1)) != aabb_scale:
        raise ValueError(f"baked render expects tables of log2(aabb_scale)+1 cascades of {GRID_CELLS} cells, got "
                         f"{empty_distance.numel()} cells for aabb_scale {aabb_scale}")
    if n_voxels >= 2**31:
        raise ValueError(f"baked render supports fewer than 2**31 voxels, got {n_voxels}")
    n_coeffs = (sh_degree + 1) ** 2
    _check("occupancy_bits", occupancy_bits, torch.int32, (cascades * GRID_CELLS // 32,), target)
    _check("occupancy_rank", occupancy_rank, torch.int32, (cascades * GRID_CELLS // 32,), target)
    _check("empty_distance", empty_distance, torch.uint8, (cascades * GRID_CELLS,), target)
    _check("block_mask", block_mask, torch.int64, (n_blocks,), target)
    _check("block_offset", block_offset, torch.int32, (n_blocks,), target)
    if n_voxels < 0:
        raise ValueError("baked render expects density with its zero row (V + 1 rows), got none")
    _check("density", density, torch.float16, (n_voxels + 1,), target)
    _check("sh", sh, torch.float16, (n_voxels + 1, 3, n_coeffs), target)
    device = origins.device
    if directions.device != device or device.type != target:
        raise ValueError(f"target {target!r} needs origins and directions on a {target} device")
    rgb = _out((n_rays, 3), torch.float32, device)
    depth = _out(n_rays, torch.float32, device)
    opacity = _out(n_rays, torch.float32, device)
    if n_rays == 0:
        return rgb, depth, opacity
    bg, stride = None, 0
    if background is not None:
        bg = background.detach().to(device=device, dtype=torch.float32).contiguous()
        if tuple(bg.shape) == (3,):
            stride = 0
        elif tuple(bg.shape) == (n_rays, 3):
            stride = 3
        else:
            raise ValueError(f"baked render expects background (3,) or ({n_rays}, 3), got {tuple(bg.shape)}")
    o = origins.detach().to(torch.float32).contiguous()
    d = directions.detach().to(torch.float32).contiguous()
    lo, hi = 0.5 - 0.5 * aabb_scale, 0.5 + 0.5 * aabb_scale
    dt_max = MIN_CONE_STEPSIZE * (1 << (cascades - 1)) * N_STEPS / GRID_SIZE
    block = _GPU_BLOCK if target == "cuda" else _CPU_RAY_BLOCK
    grid = ((n_rays + block - 1) // block, 1, 1)
    tables = [t.contiguous() for t in (occupancy_bits, occupancy_rank, empty_distance, block_mask, block_offset,
                                       density, sh)]
    load_module("baked.cu", target, defines).launch("baked_render", grid, (block, 1, 1), [
        o, d, np.uint32(n_rays), *tables, np.int32(n_voxels), np.int32(cascades), np.float32(lo), np.float32(hi),
        np.float32(cone_angle), np.float32(near_distance), np.float32(MIN_CONE_STEPSIZE), np.float32(dt_max),
        np.float32(MIN_TRANSMITTANCE), bg, np.int32(stride), rgb, depth, opacity])
    return rgb, depth, opacity

"""NeRF kernels of ``nerf.cu`` on the ``cuda`` and ``cpu`` targets: occupancy-grid ray marching, front-to-back
compositing (an autograd Function) and the occupancy-grid update.

Semantics are those of the torch references, which the tests compare against:
:func:`ngp_cli.volrend.march.march_rays_reference`, :func:`ngp_cli.volrend.composite.composite_reference`
and the tail of :meth:`ngp_cli.volrend.grid.OccupancyGrid.update` (after instant-ngp's
``src/testbed_nerf.cu``). This module does not import ``ngp_cli.tasks``: the grid constants come from
:mod:`ngp_cli.volrend.constants`, and :func:`march_rays` returns a plain tuple that
:func:`ngp_cli.volrend.march.march_rays` wraps into ``RaySamples``.

Frame: instant-ngp's "ngp frame" (the scene at ``aabb_scale`` 1 in the unit cube around 0.5); lengths (``t``,
``Δt``, ``near_distance``) are in its units and σ is per unit of that length.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ngp_cli.cuda.runtime import load_module
from ngp_cli.cuda.runtime import output_buffer as _out
from ngp_cli.volrend.constants import GRID_CELLS, GRID_SIZE, MIN_CONE_STEPSIZE, MIN_TRANSMITTANCE, N_STEPS

__all__ = ["composite", "march_rays", "occupancy_update", "sample_buffers"]

_GPU_BLOCK = 128
_CPU_RAY_BLOCK = 32  # rays per emulated block (each ray is a long serial loop; small blocks balance the workers)
_CPU_PER_THREAD = 8192  # elements per emulated thread in the elementwise occupancy kernels (1 on the GPU)

def _check_target(target: str, *tensors: Tensor) -> None:
    if target not in ("cpu", "cuda"):
        raise ValueError(f"target must be 'cpu' or 'cuda', got {target!r}")
    for t in tensors:
        if t.device.type != target:
            raise ValueError(f"target {target!r} needs tensors on a {target} device, got one on {t.device}")


def _module(target: str):
    return load_module("nerf.cu", target)


def _ray_launch(target: str, n: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    block = _GPU_BLOCK if target == "cuda" else _CPU_RAY_BLOCK
    return ((n + block - 1) // block, 1, 1), (block, 1, 1)


def _elementwise_launch(target: str, n: int) -> tuple[tuple[int, int, int], tuple[int, int, int], np.uint32]:
    if target == "cuda":
        return ((n + _GPU_BLOCK - 1) // _GPU_BLOCK, 1, 1), (_GPU_BLOCK, 1, 1), np.uint32(1)
    return ((n + _CPU_PER_THREAD - 1) // _CPU_PER_THREAD, 1, 1), (1, 1, 1), np.uint32(_CPU_PER_THREAD)


def _f32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32).contiguous()


# ---- ray marching ------------------------------------------------------------------------------------------------


def march_rays(origins: Tensor, directions: Tensor, occupancy: Tensor, aabb_scale: int, *, cone_angle: float,
               near_distance: float, jitter: Tensor | None = None, t_start: Tensor | None = None,
               max_samples: int = N_STEPS, n_active: Tensor | None = None, capacity: int | None = None,
               empty_distance: Tensor | None = None, target: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Occupancy-grid ray marching with the ``march_rays_count`` / ``march_rays_write`` kernels (instant-ngp
    ``generate_training_samples_nerf``, ``advance_to_next_voxel``, ``mip_from_dt``); the algorithm of
    :func:`ngp_cli.volrend.march.march_rays_reference`, one GPU thread per ray, in two passes (count, then
    an exclusive cumsum to offsets on the device with torch, then write). Without ``capacity`` and ``n_active``, when
    the rays' ``max_samples`` slots fit :data:`ONE_PASS_MAX_SLOTS` (rendering's rounds), in one pass instead
    (``march_rays_slots`` into per-ray slots, then ``compact_samples``): the same outputs, one march.

    With ``capacity`` (training) nothing waits for the device: the outputs have ``capacity`` rows, allocated before
    marching; a ray whose samples would end past ``capacity`` writes none (its ``offsets`` still say where they would
    have gone), and rows no ray wrote hold position (0.5, 0.5, 0.5), Δt = t = 0 and ray 0. Without it the outputs are
    sized exactly, which reads the total back (one synchronisation).

    Args:
        origins: (R, 3) ray origins in the ngp frame (cast to float32).
        directions: (R, 3) unit directions (cast to float32); zero components are allowed.
        occupancy: (cascades·128³,) uint8 or bool occupancy bits, cascades = numel / 128³.
        aabb_scale: scene box size, a power of two in 1..128; marching stops when a position leaves
            ``[0.5 - s/2, 0.5 + s/2]^3``.
        cone_angle: step growth (Δt = clamp(t · cone_angle, √3/1024, Δt_max)); 0 for constant steps.
        near_distance: marching starts at ``max(t_entry, near_distance)``.
        jitter: (R,) start offsets in [0, 1) in units of the first step, or None (no offset).
        t_start: (R,) per-ray lower bound of the start distance (applied before the jitter), or None; resuming a ray
            at its last sample's ``t + Δt`` continues it on the same step lattice.
        max_samples: at most this many samples per ray (≥ 0).
        n_active: (1,) or 0-dim int64 device tensor, or None: only rays ``r < n_active`` are marched (the others get
            no samples), a count the host need not know.
        capacity: rows of the outputs (≥ 0), or None for exactly the samples taken.
        empty_distance: (cascades·128³,) uint8 empty-space distances of ``occupancy``
            (:func:`ngp_cli.volrend.grid.empty_distance`), or None: from an empty cell, the empty cube around it is
            skipped whole, which takes the same samples in fewer steps (rendering).
        target: "cpu" or "cuda"; every tensor on that device.

    Returns:
        ``(positions (S, 3) float32, dts (S,) float32 step lengths, ts (S,) float32 distances along the ray,
        offsets (R + 1,) int64 — ray r owns samples offsets[r]:offsets[r+1] —, ray_index (S,) int64)``, packed ray
        after ray, front to back; S = ``capacity`` when given.

    Raises:
        ValueError: bad shapes, aabb_scale, max_samples, capacity, target or device.
    """
    _check_target(target, origins, directions, occupancy,
                  *(t for t in (jitter, t_start, n_active, empty_distance) if t is not None))
    if origins.dim() != 2 or origins.shape[1] != 3 or directions.shape != origins.shape:
        raise ValueError(f"march_rays expects origins and directions of shape (R, 3), got {tuple(origins.shape)} "
                         f"and {tuple(directions.shape)}")
    n_rays = origins.shape[0]
    if jitter is not None and tuple(jitter.shape) != (n_rays,):
        raise ValueError(f"march_rays expects jitter of shape ({n_rays},), got {tuple(jitter.shape)}")
    if t_start is not None and tuple(t_start.shape) != (n_rays,):
        raise ValueError(f"march_rays expects t_start of shape ({n_rays},), got {tuple(t_start.shape)}")
    if occupancy.dtype not in (torch.uint8, torch.bool) or occupancy.numel() == 0 or occupancy.numel() % GRID_CELLS:
        raise ValueError(f"march_rays expects uint8/bool occupancy of cascades·{GRID_CELLS} cells, got "
                         f"{occupancy.dtype} with {occupancy.numel()} elements")
    if aabb_scale < 1 or aabb_scale > 128 or aabb_scale & (aabb_scale - 1):
        raise ValueError(f"aabb_scale must be a power of two in 1..128, got {aabb_scale}")
    if not 0 <= max_samples < 2**31:
        raise ValueError(f"max_samples must be in [0, 2**31), got {max_samples}")
    if n_rays >= 2**32:
        raise ValueError(f"march_rays supports fewer than 2**32 rays, got {n_rays}")
    if capacity is not None and not 0 <= capacity < 2**62:
        raise ValueError(f"march_rays capacity must be in [0, 2**62), got {capacity}")
    if n_active is not None and (n_active.dtype != torch.int64 or n_active.numel() != 1):
        raise ValueError(f"march_rays expects n_active as one int64 element, got {n_active.dtype} "
                         f"{tuple(n_active.shape)}")
    device = origins.device
    cascades = occupancy.numel() // GRID_CELLS
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64, device=device)
    if n_rays == 0:
        positions, dts, ts, ray_index = sample_buffers(capacity or 0, device)
        return positions, dts, ts, offsets, ray_index
    o, d = _f32(origins), _f32(directions)
    jit = None if jitter is None else _f32(jitter)
    occ = occupancy.contiguous()
    lo, hi = 0.5 - 0.5 * aabb_scale, 0.5 + 0.5 * aabb_scale
    dt_max = MIN_CONE_STEPSIZE * (1 << (cascades - 1)) * N_STEPS / GRID_SIZE
    t0 = None if t_start is None else _f32(t_start)
    common = [o, d, jit, t0, occ, np.uint32(n_rays), np.int32(cascades), np.float32(lo), np.float32(hi),
              np.float32(cone_angle), np.float32(near_distance), np.float32(MIN_CONE_STEPSIZE), np.float32(dt_max),
              np.int32(max_samples)]
    mod = _module(target)
    grid, block = _ray_launch(target, n_rays)
    counts = _out(n_rays, torch.int32, device)
    active = None if n_active is None else n_active.reshape(1).contiguous()
    empty = None
    if empty_distance is not None:
        if empty_distance.dtype != torch.uint8 or empty_distance.numel() != occupancy.numel():
            raise ValueError(f"march_rays expects uint8 empty-space distances of {occupancy.numel()} cells, got "
                             f"{empty_distance.dtype} with {empty_distance.numel()} elements")
        empty = empty_distance.contiguous()
    if capacity is None and active is None and 0 < max_samples and n_rays * max_samples <= ONE_PASS_MAX_SLOTS:
        return _march_one_pass(mod, grid, block, common, empty, counts, offsets, n_rays, max_samples, device)
    mod.launch("march_rays_count", grid, block, common + [active, empty, counts])
    offsets[1:] = torch.cumsum(counts, 0, dtype=torch.int64)
    if capacity is None:
        n_samples = int(offsets[-1])  # the one synchronisation, without a capacity
        positions = _out((n_samples, 3), torch.float32, device)
        dts, ts = _out(n_samples, torch.float32, device), _out(n_samples, torch.float32, device)
        ray_index = _out(n_samples, torch.int64, device)
        if not n_samples:
            return positions, dts, ts, offsets, ray_index
    else:
        positions, dts, ts, ray_index = sample_buffers(capacity, device)
    mod.launch("march_rays_write", grid, block, common + [offsets, np.int64(positions.shape[0]), positions, dts, ts,
                                                          ray_index, empty])
    return positions, dts, ts, offsets, ray_index


#: Rendering marches each round once (``march_rays_slots`` + ``compact_samples``) when its rays' slots, ``R ·
#: max_samples`` rows of 20 bytes, stay within this many rows (80 MiB); else count + write, which needs no slots.
#: One march instead of two: on the fox at 270×480 (2-core Xeon), 0.92 s of marching per view in count + write.
ONE_PASS_MAX_SLOTS = 1 << 22


def _march_one_pass(mod, grid, block, common: list, empty: Tensor | None, counts: Tensor, offsets: Tensor,
                    n_rays: int, max_samples: int, device: torch.device) -> tuple[Tensor, ...]:
    """:func:`march_rays` without a capacity in one march: each ray's samples to its own ``max_samples`` slots, then
    packed at the offsets. The samples and their order are those of count + write."""
    slots = n_rays * max_samples
    slot_pos = _out((slots, 3), torch.float32, device)
    slot_dts, slot_ts = _out(slots, torch.float32, device), _out(slots, torch.float32, device)
    mod.launch("march_rays_slots", grid, block, common + [empty, counts, slot_pos, slot_dts, slot_ts])
    offsets[1:] = torch.cumsum(counts, 0, dtype=torch.int64)
    n_samples = int(offsets[-1])
    positions = _out((n_samples, 3), torch.float32, device)
    dts, ts = _out(n_samples, torch.float32, device), _out(n_samples, torch.float32, device)
    ray_index = _out(n_samples, torch.int64, device)
    if n_samples:
        mod.launch("compact_samples", grid, block, [offsets, np.uint32(n_rays), np.int32(max_samples),
                                                    np.int64(n_samples), slot_pos, slot_dts, slot_ts, positions, dts,
                                                    ts, ray_index])
    return positions, dts, ts, offsets, ray_index


def sample_buffers(capacity: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training sample buffers of ``capacity`` rows (positions (C, 3), dts (C,), ts (C,) float32, ray_index (C,)
    int64), filled with what rows no ray writes hold: position (0.5, 0.5, 0.5) (inside every scene box, so the network
    sees finite inputs), Δt = t = 0, ray 0."""
    return (torch.full((capacity, 3), 0.5, device=device), torch.zeros(capacity, device=device),
            torch.zeros(capacity, device=device), torch.zeros(capacity, dtype=torch.int64, device=device))


# ---- compositing -------------------------------------------------------------------------------------------------


class _CompositeFn(torch.autograd.Function):
    """forward(sigma, rgb, dts, offsets, target) -> (colour, opacity); backward by ``composite_backward``."""

    @staticmethod
    def forward(ctx, sigma: Tensor, rgb: Tensor, dts: Tensor, offsets: Tensor, target: str):
        s, c, dt = _f32(sigma), _f32(rgb), _f32(dts)
        off = offsets.detach().to(torch.int64).contiguous()
        n_rays = off.numel() - 1
        device = s.device
        colour = _out((n_rays, 3), torch.float32, device)
        opacity = _out(n_rays, torch.float32, device)
        n_used = _out(n_rays, torch.int32, device)
        if n_rays:
            grid, block = _ray_launch(target, n_rays)
            _module(target).launch("composite_forward", grid, block, [
                s, c, dt, off, np.uint32(n_rays), np.int64(s.numel()), np.float32(MIN_TRANSMITTANCE), colour, opacity,
                n_used])
        ctx.target = target
        ctx.dtypes = (sigma.dtype, rgb.dtype)
        ctx.save_for_backward(s, c, dt, off, n_used, colour, opacity)
        ctx.mark_non_differentiable(n_used)
        return colour.to(rgb.dtype), opacity.to(rgb.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_colour: Tensor | None, grad_opacity: Tensor | None):
        s, c, dt, off, n_used, colour, opacity = ctx.saved_tensors
        n_rays = off.numel() - 1
        gc = torch.zeros_like(colour) if grad_colour is None else _f32(grad_colour)
        go = torch.zeros_like(opacity) if grad_opacity is None else _f32(grad_opacity)
        # Zeros, not empty: rows in no ray's range (a training batch's padding) get no write from the kernel.
        grad_sigma = torch.zeros(s.shape, dtype=torch.float32, device=s.device)
        grad_rgb = torch.zeros(c.shape, dtype=torch.float32, device=s.device)
        if n_rays and s.numel():
            grid, block = _ray_launch(ctx.target, n_rays)
            _module(ctx.target).launch("composite_backward", grid, block, [
                s, c, dt, off, n_used, colour, opacity, gc, go, np.uint32(n_rays), np.int64(s.numel()), grad_sigma,
                grad_rgb])
        sigma_dtype, rgb_dtype = ctx.dtypes
        return grad_sigma.to(sigma_dtype), grad_rgb.to(rgb_dtype), None, None, None


def composite(sigma: Tensor, rgb: Tensor, dts: Tensor, offsets: Tensor, target: str) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing with early termination (instant-ngp ``compute_loss_kernel_train_nerf`` /
    ``composite_kernel_nerf``), the ``composite_forward`` / ``composite_backward`` kernels; the semantics of
    :func:`ngp_cli.volrend.composite.composite_reference`, differentiable in ``sigma`` and ``rgb``.

    Per ray: ``τ_j = σ_j Δt_j``, ``T_j = exp(-Σ_{k<j} τ_k)`` (the sum kept as a compensated float32 sum),
    ``w_j = T_j (1 - exp(-τ_j))``, the ray stopping before the first sample with ``T_j < 1e-4``;
    ``colour = Σ w_j c_j``, ``opacity = Σ w_j``.

    Args:
        sigma: (S,) densities σ ≥ 0 per unit length (computed in float32).
        rgb: (S, 3) sample colours.
        dts: (S,) step lengths.
        offsets: (R + 1,) integer packed-ray offsets, non-decreasing, ``offsets[0] = 0``, ``offsets[R] = S`` (not
            checked, to avoid a device synchronisation; the kernels clamp every ray's range to [0, S), so malformed
            offsets give wrong results, never out-of-bounds accesses).
        target: "cpu" or "cuda"; every tensor on that device.

    Returns:
        ``(colour (R, 3), opacity (R,))`` in rgb's dtype. Gradients: dL/dσ (S,) and dL/drgb (S, 3), zero for
        samples past a ray's termination and for rows in no ray's range (a padded training batch).

    Raises:
        ValueError: bad shapes, target or device.
    """
    _check_target(target, sigma, rgb, dts, offsets)
    n = sigma.shape[0] if sigma.dim() == 1 else -1
    if sigma.dim() != 1 or tuple(rgb.shape) != (n, 3) or tuple(dts.shape) != (n,):
        raise ValueError(f"composite expects sigma (S,), rgb (S, 3), dts (S,), got {tuple(sigma.shape)}, "
                         f"{tuple(rgb.shape)}, {tuple(dts.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.dtype.is_floating_point:
        raise ValueError(f"composite expects integer offsets of shape (R + 1,), got {offsets.dtype} "
                         f"{tuple(offsets.shape)}")
    if offsets.numel() - 1 >= 2**32:
        raise ValueError("composite supports fewer than 2**32 rays")
    return _CompositeFn.apply(sigma, rgb, dts, offsets, target)


# ---- occupancy grid ----------------------------------------------------------------------------------------------


def occupancy_update(density: Tensor, occupancy: Tensor, idx: Tensor, thickness: Tensor, decay: float,
                     threshold: float, target: str) -> None:
    """The tail of one density-grid update (instant-ngp ``splat_grid_samples_nerf_max_nearest_neighbor``,
    ``ema_grid_samples_nerf``, ``grid_to_bitfield``), in place, as :meth:`OccupancyGrid.update
    <ngp_cli.volrend.grid.OccupancyGrid.update>` after its density evaluations:

    ``splat = per-cell max(0, thickness)`` over ``idx`` (NaN → 0, like ``torch.nan_to_num``); ``density =
    density < 0 ? density : max(decay · density, splat)``; ``occupancy = density > min(threshold,
    mean(max(density[:128³], 0)))``.

    Args:
        density: (C·128³,) float32, contiguous; updated in place. -1 marks cells no camera sees (kept).
        occupancy: (C·128³,) uint8 or bool, contiguous; overwritten.
        idx: (N,) int64 flat cell indices (duplicates allowed; indices outside [0, C·128³) are ignored, not
            checked, to avoid a device synchronisation).
        thickness: (N,) float optical thicknesses ``σ · Δt_min · 2^cascade`` (≥ 0; negatives never win the max).
        decay: EMA decay (instant-ngp 0.95).
        threshold: occupancy threshold (instant-ngp NERF_MIN_OPTICAL_THICKNESS 0.01).
        target: "cpu" or "cuda"; every tensor on that device.

    Raises:
        ValueError: bad shapes, dtypes, non-contiguous buffers, target or device.
    """
    _check_target(target, density, occupancy, idx, thickness)
    n = density.numel()
    if density.dtype != torch.float32 or density.dim() != 1 or n == 0 or n % GRID_CELLS or n >= 2**32:
        raise ValueError(f"occupancy_update expects float32 density of shape (C·{GRID_CELLS},), got {density.dtype} "
                         f"{tuple(density.shape)}")
    if occupancy.dtype not in (torch.uint8, torch.bool) or tuple(occupancy.shape) != (n,):
        raise ValueError(f"occupancy_update expects uint8/bool occupancy of shape ({n},), got {occupancy.dtype} "
                         f"{tuple(occupancy.shape)}")
    if not (density.is_contiguous() and occupancy.is_contiguous()):
        raise ValueError("occupancy_update updates density and occupancy in place: they must be contiguous")
    if idx.dim() != 1 or idx.dtype != torch.int64 or tuple(thickness.shape) != tuple(idx.shape):
        raise ValueError(f"occupancy_update expects int64 idx (N,) and thickness (N,), got {idx.dtype} "
                         f"{tuple(idx.shape)} and {tuple(thickness.shape)}")
    if idx.numel() >= 2**32:
        raise ValueError("occupancy_update supports fewer than 2**32 samples")
    mod = _module(target)
    splat = torch.zeros(n, dtype=torch.float32, device=density.device)
    n_samples = idx.numel()
    if n_samples:
        grid, block, per_thread = _elementwise_launch(target, n_samples)
        mod.launch("occupancy_splat", grid, block, [idx.contiguous(), _f32(thickness), np.uint32(n_samples),
                                                    np.uint32(n), per_thread, splat])
    grid, block, per_thread = _elementwise_launch(target, n)
    mod.launch("occupancy_ema", grid, block, [density, splat, np.uint32(n), per_thread, np.float32(decay)])
    mean = density[:GRID_CELLS].clamp_min(0).mean().reshape(1)
    mod.launch("occupancy_bits", grid, block, [density, mean, np.uint32(n), per_thread, np.float32(threshold),
                                               occupancy])
    # The kernels wrote through raw pointers: tell torch, so what is keyed on the version (the renderers' cache of
    # empty-space distances, autograd's checks) sees the new grid.
    torch.autograd.graph.increment_version((density, occupancy))

"""Occupancy-grid ray marching of instant-ngp (paper §5.4, Appendix E.2): the torch reference and the dispatch between
it and the ``march_rays`` kernels of ``ngp_cli/cuda/nerf.cu``. Frame and cascades as in :mod:`ngp_cli.volrend.grid`.

The marching here (:func:`march_rays_reference`) is the torch twin of the ``march_rays`` kernel of
``ngp_cli/cuda/nerf.cu`` and follows instant-ngp's ``generate_training_samples_nerf``: steps of
``Δt = clamp(t · cone_angle, √3/1024, Δt_max)`` from the ray's entry into the scene box, a sample at every step whose
cell (at the cascade chosen by ``mip_from_dt``) is occupied, and a jump over an empty cell to the first step past its
far face (``advance_to_next_voxel``), keeping samples on the step lattice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ngp_cli.volrend.constants import GRID_CELLS, GRID_SIZE, MIN_CONE_STEPSIZE, N_STEPS
from ngp_cli.volrend.grid import aabb_bounds, cell_index, mip_from_dt

__all__ = ["RaySamples", "calc_dt", "march_rays", "march_rays_reference", "max_cone_stepsize", "ray_aabb"]


def max_cone_stepsize(cascades: int) -> float:
    """Largest step, ``Δt_min · 2^(cascades-1) · 1024 / 128`` (instant-ngp's MAX_CONE_STEPSIZE with this scene's
    cascade count instead of the compile-time 8)."""
    return MIN_CONE_STEPSIZE * (1 << (cascades - 1)) * N_STEPS / GRID_SIZE


def calc_dt(t: Tensor, cone_angle: float, dt_max: float) -> Tensor:
    """Step length at distance ``t``: ``clamp(t · cone_angle, √3/1024, dt_max)`` (float32)."""
    return (t * cone_angle).clamp(MIN_CONE_STEPSIZE, dt_max)


def _distance_to_next_voxel(pos: Tensor, d: Tensor, inv_d: Tensor, mip: Tensor) -> Tensor:
    res = torch.ldexp(torch.full_like(pos[:, 0], float(GRID_SIZE)), -mip.to(torch.int32)).unsqueeze(-1)
    p = res * (pos - 0.5)
    t = (torch.floor(p + 0.5 + 0.5 * torch.copysign(torch.ones_like(d), d)) - p) * inv_d
    t = torch.fmin(torch.fmin(t[:, 0], t[:, 1]), t[:, 2])
    return torch.clamp_min(t / res[:, 0], 0.0)


@dataclass
class RaySamples:
    """Samples of a batch of rays, packed ray after ray, front to back.

    Attributes:
        positions: (S, 3) float32 sample positions in the ngp frame.
        dts: (S,) float32 step length Δt of each sample (the segment it stands for).
        ts: (S,) float32 distance of each sample along its (unit-length) ray.
        offsets: (R + 1,) int64; ray ``r`` owns samples ``offsets[r]:offsets[r+1]``.
        ray_index: (S,) int64 ray of each sample.
        ray_ok: with a fixed capacity (training batches), (R,) bool: the ray was marched and all its samples fit
            (a ray cut off by the capacity has no samples here, and ``ray_ok`` False); else None.
        requested: with a fixed capacity, a 0-dim int64 tensor: the samples the marched rays took before the cut
            (what the ray count adapts to); else None.
        ray_counts: with a fixed capacity, (R,) int64: the samples each marched ray took, whether they fitted or not
            (0 for the rays not marched); else None.
    """

    positions: Tensor
    dts: Tensor
    ts: Tensor
    offsets: Tensor
    ray_index: Tensor
    ray_ok: Tensor | None = None
    requested: Tensor | None = None
    ray_counts: Tensor | None = None

    @property
    def n_samples(self) -> int:
        return int(self.positions.shape[0])


def ray_aabb(origins: Tensor, directions: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """Slab test of rays against the cube ``[lo, hi]^3``: ``(t_near, t_far)`` (R,) float32; ``t_far < t_near`` when
    the ray misses. Zero direction components follow IEEE rules (``fmin``/``fmax`` ignore the NaNs of ``0·inf``)."""
    inv = 1.0 / directions
    t0 = (lo - origins) * inv
    t1 = (hi - origins) * inv
    tmin = torch.fmin(t0, t1)
    tmax = torch.fmax(t0, t1)
    t_near = torch.fmax(torch.fmax(tmin[:, 0], tmin[:, 1]), tmin[:, 2])
    t_far = torch.fmin(torch.fmin(tmax[:, 0], tmax[:, 1]), tmax[:, 2])
    return t_near, t_far


def march_rays_reference(origins: Tensor, directions: Tensor, occupancy: Tensor, aabb_scale: int, *,
                         cone_angle: float, near_distance: float, jitter: Tensor | None = None,
                         t_start: Tensor | None = None, max_samples: int = N_STEPS) -> RaySamples:
    """Occupancy-grid ray marching, torch reference of the ``march_rays`` kernel (instant-ngp
    ``generate_training_samples_nerf`` / ``advance_to_next_voxel``).

    Args:
        origins: (R, 3) float32 ray origins, ngp frame.
        directions: (R, 3) float32 unit directions.
        occupancy: (cascades·128³,) uint8 occupancy bits (:attr:`OccupancyGrid.occupancy`).
        aabb_scale: scene box size (power of two); marching stops when the position leaves the box.
        cone_angle: 0 for constant steps √3/1024; instant-ngp uses 1/256 when aabb_scale > 1.
        near_distance: marching starts at ``max(t_entry, near_distance)``.
        jitter: (R,) float32 in [0, 1): start offset in units of the first step (training), or None (0).
        t_start: (R,) float32 lower bound of each ray's start, or None: a ray resumed at its last sample's
            ``t + Δt`` continues on the same step lattice (rendering in rounds).
        max_samples: at most this many samples per ray (NERF_STEPS).

    Returns:
        :class:`RaySamples` on the inputs' device.
    """
    device = origins.device
    n_rays = origins.shape[0]
    cascades = occupancy.numel() // GRID_CELLS
    max_cascade = cascades - 1
    dt_max = max_cone_stepsize(cascades)
    lo, hi = aabb_bounds(aabb_scale)
    margin = 1e-5 * (hi - lo)
    o = origins.float()
    d = directions.float()
    inv_d = 1.0 / d
    t_near, t_far = ray_aabb(o, d, lo, hi)
    t = torch.clamp_min(t_near, near_distance)
    if t_start is not None:
        t = torch.maximum(t, t_start.float())
    hit = t_far > t
    if jitter is not None:
        t = t + calc_dt(t, cone_angle, dt_max) * jitter.float()
    occ = occupancy.bool()
    count = torch.zeros(n_rays, dtype=torch.int64, device=device)
    rays = torch.nonzero(hit).squeeze(1)
    t = t[rays]
    out_ray, out_pos, out_dt, out_t = [], [], [], []
    while rays.numel():
        o_r, d_r = o[rays], d[rays]
        pos = o_r + t.unsqueeze(-1) * d_r
        # Margin of 1e-5 box sizes: the entry point rounds to either side of the face (see nerf.cu).
        inside = ((pos >= lo - margin) & (pos <= hi + margin)).all(dim=-1) & (count[rays] < max_samples)
        rays, t, pos, o_r, d_r = rays[inside], t[inside], pos[inside], o_r[inside], d_r[inside]
        if not rays.numel():
            break
        dt = calc_dt(t, cone_angle, dt_max)
        mip = mip_from_dt(dt, pos, max_cascade)
        idx = cell_index(pos, mip)
        occupied = (idx >= 0) & occ[idx.clamp_min(0)]
        out_ray.append(rays[occupied])
        out_pos.append(pos[occupied])
        out_dt.append(dt[occupied])
        out_t.append(t[occupied])
        count[rays[occupied]] += 1
        # Occupied: one step. Empty: step until past the cell's far face, on the step lattice.
        t_target = torch.where(occupied, t, t + _distance_to_next_voxel(pos, d_r, inv_d[rays], mip))
        t_prev = t
        t = t + dt
        moving = t > t_prev
        behind = (t < t_target) & moving
        while behind.any():
            t_next = torch.where(behind, t + calc_dt(t, cone_angle, dt_max), t)
            moving = moving & ~(behind & ~(t_next > t))
            behind = (t_next < t_target) & moving
            t = t_next
        # A skip that cannot advance t (t so large that t + dt == t) ends the ray, as in the kernel.
        keep = occupied | moving
        rays, t = rays[keep], t[keep]
    if out_ray:
        ray_index = torch.cat(out_ray)
        order = torch.sort(ray_index, stable=True).indices
        ray_index = ray_index[order]
        positions, dts, ts = torch.cat(out_pos)[order], torch.cat(out_dt)[order], torch.cat(out_t)[order]
    else:
        ray_index = torch.zeros(0, dtype=torch.int64, device=device)
        positions = torch.zeros(0, 3, device=device)
        dts = ts = torch.zeros(0, device=device)
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(count, 0)
    return RaySamples(positions, dts, ts, offsets, ray_index)


def march_rays(origins: Tensor, directions: Tensor, occupancy: Tensor, aabb_scale: int, *, cone_angle: float,
               near_distance: float, jitter: Tensor | None = None, t_start: Tensor | None = None,
               max_samples: int = 1024, n_active: Tensor | None = None, capacity: int | None = None,
               empty_distance: Tensor | None = None, kernel_target: str | None = None) -> RaySamples:
    """Occupancy-grid ray marching on the kernels or the torch reference; arguments and result as
    :func:`march_rays_reference`, plus, for training batches:

    * ``n_active``: a one-element int64 tensor on the rays' device, or None: only rays ``r < n_active`` are marched;
    * ``capacity``: the number of sample rows (None: exactly the samples taken). With it the kernels never wait for the
      device (the torch reference does): the samples of the rays that fit come first, in ray order, the remaining rows
      are padding (position (0.5, 0.5, 0.5), Δt 0, ray 0, in no ray's range), rays that do not fit get empty ranges,
      and the result's ``ray_ok`` / ``requested`` say which rays count and how many samples they asked for;
    * ``empty_distance``: the grid's empty-space distances (:func:`ngp_cli.volrend.grid.empty_distance`), or None: the
      kernels skip the empty cube around an empty cell whole (same samples, fewer steps); the torch reference needs no
      such help and ignores them.
    """
    if kernel_target is None:
        samples = _march_reference(origins, directions, occupancy, aabb_scale, cone_angle=cone_angle,
                                   near_distance=near_distance, jitter=jitter, t_start=t_start,
                                   max_samples=max_samples, n_active=n_active, capacity=capacity)
    else:
        from ngp_cli.cuda.nerf import march_rays as march_kernel

        samples = RaySamples(*march_kernel(origins, directions, occupancy, aabb_scale, cone_angle=cone_angle,
                                           near_distance=near_distance, jitter=jitter, t_start=t_start,
                                           max_samples=max_samples, n_active=n_active, capacity=capacity,
                                           empty_distance=empty_distance, target=kernel_target))
    if capacity is None:
        return samples
    offsets = samples.offsets
    n_rays = offsets.numel() - 1
    ok = offsets[1:] <= capacity
    if n_active is not None:
        ok &= torch.arange(n_rays, device=offsets.device) < n_active.reshape(())
    # The rays that fit end at the largest offset <= capacity; clamping there empties the ranges of those cut off.
    fitted = torch.where(offsets <= capacity, offsets, 0).amax()
    samples.requested = offsets[-1]
    samples.ray_counts = offsets[1:] - offsets[:-1]
    samples.offsets = torch.minimum(offsets, fitted)
    samples.ray_ok = ok
    return samples


def _march_reference(origins: Tensor, directions: Tensor, occupancy: Tensor, aabb_scale: int, *,
                     n_active: Tensor | None, capacity: int | None, jitter: Tensor | None, t_start: Tensor | None,
                     **kwargs) -> RaySamples:
    """:func:`march_rays_reference` with ``n_active`` and ``capacity`` applied as the kernels apply them (reading
    both back)."""
    n_rays = origins.shape[0]
    n = n_rays if n_active is None else min(int(n_active.reshape(())), n_rays)
    samples = march_rays_reference(origins[:n], directions[:n], occupancy, aabb_scale,
                                   jitter=None if jitter is None else jitter[:n],
                                   t_start=None if t_start is None else t_start[:n], **kwargs)
    if n < n_rays:
        samples.offsets = torch.cat([samples.offsets, samples.offsets[-1:].expand(n_rays - n)])
    if capacity is None:
        return samples
    from ngp_cli.cuda.nerf import sample_buffers

    offsets = samples.offsets
    fitted = int(offsets[offsets <= capacity].max())
    positions, dts, ts, ray_index = sample_buffers(capacity, origins.device)
    out = RaySamples(positions, dts, ts, offsets, ray_index)
    out.positions[:fitted] = samples.positions[:fitted]
    out.dts[:fitted] = samples.dts[:fitted]
    out.ts[:fitted] = samples.ts[:fitted]
    out.ray_index[:fitted] = samples.ray_index[:fitted]
    return out

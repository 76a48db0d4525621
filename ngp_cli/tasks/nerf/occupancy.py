"""The cascaded occupancy grid and occupancy-grid ray marching of instant-ngp (paper §5.4, Appendix E.2), torch
reference.

Frame: the "ngp frame" of :mod:`ngp_cli.tasks.nerf.cameras` (positions scaled and offset so that the scene at
``aabb_scale`` 1 lies in the unit cube around 0.5). The scene box is ``[0.5 - s/2, 0.5 + s/2]^3`` for ``s =
aabb_scale``; cascade ``k`` (``k = 0 .. log2(s)``) covers ``[0.5 - 2^(k-1), 0.5 + 2^(k-1)]^3`` with 128³ cells, so cell
size is ``2^k / 128``. Cell ``(x, y, z)`` of cascade ``k`` has the flat index ``k·128³ + x + 128·(y + 128·z)``.

The grid stores, per cell, an exponential moving average of the *optical thickness* ``σ · Δt_min · 2^k`` of the
density network at random points in the cell (instant-ngp ``splat_grid_samples_nerf_max_nearest_neighbor`` and
``ema_grid_samples_nerf``), and a cell is occupied when its value exceeds ``min(0.01, mean of cascade 0)``
(``grid_to_bitfield``). Cells that no training camera sees are marked -1 and stay empty
(``mark_untrained_density_grid``).

The marching here (:func:`march_rays_reference`) is the torch twin of the ``march_rays`` kernel of
``ngp_cli/cuda/nerf.cu`` and follows instant-ngp's ``generate_training_samples_nerf``: steps of
``Δt = clamp(t · cone_angle, √3/1024, Δt_max)`` from the ray's entry into the scene box, a sample at every step whose
cell (at the cascade chosen by ``mip_from_dt``) is occupied, and a jump over an empty cell to the first step past its
far face (``advance_to_next_voxel``), keeping samples on the step lattice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SQRT3 = 1.7320508075688772
GRID_SIZE = 128  # NERF_GRIDSIZE: cells per cascade side
GRID_CELLS = GRID_SIZE ** 3
N_STEPS = 1024  # NERF_STEPS: steps along the unit cube's diagonal
MIN_CONE_STEPSIZE = SQRT3 / N_STEPS
MIN_OPTICAL_THICKNESS = 0.01  # NERF_MIN_OPTICAL_THICKNESS: occupancy threshold

__all__ = [
    "GRID_SIZE",
    "MIN_CONE_STEPSIZE",
    "N_STEPS",
    "OccupancyGrid",
    "RaySamples",
    "aabb_bounds",
    "calc_dt",
    "march_rays_reference",
    "max_cone_stepsize",
    "n_cascades",
]


def n_cascades(aabb_scale: int) -> int:
    """Number of cascades, ``log2(aabb_scale) + 1``. Raises ValueError unless aabb_scale is a power of two in
    1..128."""
    if aabb_scale < 1 or aabb_scale > 128 or aabb_scale & (aabb_scale - 1):
        raise ValueError(f"aabb_scale must be a power of two in 1..128, got {aabb_scale}")
    return int(math.log2(aabb_scale)) + 1


def aabb_bounds(aabb_scale: int) -> tuple[float, float]:
    """(min, max) of the cubic scene box along every axis: ``0.5 ∓ aabb_scale / 2``."""
    return 0.5 - 0.5 * aabb_scale, 0.5 + 0.5 * aabb_scale


def max_cone_stepsize(cascades: int) -> float:
    """Largest step, ``Δt_min · 2^(cascades-1) · 1024 / 128`` (instant-ngp's MAX_CONE_STEPSIZE with this scene's
    cascade count instead of the compile-time 8)."""
    return MIN_CONE_STEPSIZE * (1 << (cascades - 1)) * N_STEPS / GRID_SIZE


def calc_dt(t: Tensor, cone_angle: float, dt_max: float) -> Tensor:
    """Step length at distance ``t``: ``clamp(t · cone_angle, √3/1024, dt_max)`` (float32)."""
    return (t * cone_angle).clamp(MIN_CONE_STEPSIZE, dt_max)


def _frexp_exponent(x: Tensor) -> Tensor:
    return torch.frexp(x).exponent.to(torch.int32)


def mip_from_pos(pos: Tensor, max_cascade: int) -> Tensor:
    """Cascade of a position: the smallest ``k`` with ``max|pos - 0.5| < 2^(k-1)``, clamped to ``max_cascade``."""
    maxval = (pos - 0.5).abs().amax(dim=-1)
    return (_frexp_exponent(maxval) + 1).clamp(0, max_cascade)


def mip_from_dt(dt: Tensor, pos: Tensor, max_cascade: int) -> Tensor:
    """Cascade for a step: at least :func:`mip_from_pos`, and coarse enough that a step spans at most ~2 cells."""
    mip = mip_from_pos(pos, max_cascade)
    scaled = dt * (2 * GRID_SIZE)
    by_dt = torch.minimum(torch.full_like(mip, max_cascade), torch.maximum(_frexp_exponent(scaled), mip))
    return torch.where(scaled < 1.0, mip, by_dt)


def cell_index(pos: Tensor, mip: Tensor) -> Tensor:
    """Flat cell index (int64) of each position in cascade ``mip``; -1 outside that cascade."""
    scale = torch.ldexp(torch.ones_like(pos[:, 0]), -mip.to(torch.int32)).unsqueeze(-1)
    p = ((pos - 0.5) * scale + 0.5) * GRID_SIZE
    i = torch.floor(p)
    inside = ((i >= 0) & (i < GRID_SIZE)).all(dim=-1)
    i = i.clamp(0, GRID_SIZE - 1).to(torch.int64)
    idx = mip.to(torch.int64) * GRID_CELLS + i[:, 0] + GRID_SIZE * (i[:, 1] + GRID_SIZE * i[:, 2])
    return torch.where(inside, idx, torch.full_like(idx, -1))


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
    """

    positions: Tensor
    dts: Tensor
    ts: Tensor
    offsets: Tensor
    ray_index: Tensor
    ray_ok: Tensor | None = None
    requested: Tensor | None = None

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


class OccupancyGrid(nn.Module):
    """Cascaded occupancy grid (instant-ngp's density grid + bitfield), as module buffers so it is checkpointed.

    Buffers:
        density: (cascades·128³,) float32 EMA of optical thickness; -1 marks cells no training camera sees.
        occupancy: (cascades·128³,) uint8, 1 where ``density > min(0.01, mean(max(density[cascade 0], 0)))``.

    Args:
        aabb_scale: power of two in 1..128.
        device: buffer device.

    Raises:
        ValueError: bad aabb_scale.
    """

    def __init__(self, aabb_scale: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.aabb_scale = int(aabb_scale)
        self.cascades = n_cascades(self.aabb_scale)
        n = self.cascades * GRID_CELLS
        self.register_buffer("density", torch.zeros(n, device=device))
        self.register_buffer("occupancy", torch.ones(n, dtype=torch.uint8, device=device))

    @property
    def n_cells(self) -> int:
        return self.cascades * GRID_CELLS

    def cell_positions(self, idx: Tensor, jitter: Tensor) -> Tensor:
        """World (ngp-frame) positions of flat cell indices ``idx`` (N,) int64, at offset ``jitter`` (N, 3) in
        [0, 1)³ inside each cell (0.5 = centre). Returns (N, 3) float32."""
        cascade = idx // GRID_CELLS
        local = idx % GRID_CELLS
        ijk = torch.stack([local % GRID_SIZE, (local // GRID_SIZE) % GRID_SIZE, local // (GRID_SIZE * GRID_SIZE)], -1)
        scale = torch.ldexp(torch.ones_like(jitter[:, 0]), cascade.to(torch.int32)).unsqueeze(-1)
        return ((ijk.to(jitter.dtype) + jitter) / GRID_SIZE - 0.5) * scale + 0.5

    @torch.no_grad()
    def mark_untrained(self, c2w: Tensor, intrinsics: Tensor, width: int, height: int, near: float = 0.0,
                       chunk: int = 1 << 20) -> int:
        """Set ``density = -1`` for cells whose centre projects into no training camera (instant-ngp
        ``mark_untrained_density_grid``). c2w (N, 3, 4) OpenGL camera-to-world, intrinsics (N, 4) fx, fy, cx, cy in
        pixels. Returns the number of cells marked."""
        dev = self.density.device
        rot = c2w[:, :, :3].to(dev).float()
        eye = c2w[:, :, 3].to(dev).float()
        fx, fy, cx, cy = intrinsics.to(dev).float().unbind(-1)
        marked = 0
        for s in range(0, self.n_cells, chunk):
            idx = torch.arange(s, min(s + chunk, self.n_cells), device=dev)
            p = self.cell_positions(idx, torch.full((idx.numel(), 3), 0.5, device=dev))
            seen = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)
            for k in range(rot.shape[0]):
                local = (p - eye[k]) @ rot[k]  # camera coordinates, OpenGL: looks down -z
                z = -local[:, 2]
                u = local[:, 0] / z.clamp_min(1e-6) * fx[k] + cx[k]
                v = -local[:, 1] / z.clamp_min(1e-6) * fy[k] + cy[k]
                seen |= (z > near) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
            unseen = ~seen
            self.density[s:s + idx.numel()][unseen] = -1.0
            marked += int(unseen.sum())
        self._update_occupancy(MIN_OPTICAL_THICKNESS)
        return marked

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], generator: torch.Generator, *, all_cells: bool,
               decay: float = 0.95, threshold: float = MIN_OPTICAL_THICKNESS, chunk: int = 1 << 18,
               kernel_target: str | None = None) -> None:
        """One density-grid update (instant-ngp ``update_density_grid_nerf``).

        ``all_cells``: evaluate every cell (instant-ngp's first 256 steps); otherwise a quarter of the cells drawn
        uniformly plus as many drawn among the occupied ones. Each chosen cell gets ``density_fn`` (positions (N, 3)
        → densities σ (N,), in units of 1/length of the ngp frame) at a uniform random point inside it; the cell's
        value becomes ``max(decay · old, σ · Δt_min · 2^cascade)`` (cells not drawn decay), -1 cells stay -1, and the
        occupancy bits are recomputed with threshold ``min(threshold, mean)``. Randomness comes from ``generator``,
        on the CPU or on the grid's device. ``kernel_target`` "cpu"/"cuda" runs the splat, EMA and threshold as the
        ``occupancy_update`` kernels. Nothing waits for the device: the occupied cells are listed into a fixed-size
        buffer (``nonzero_static``) and drawn from by their count, both on the device; with none occupied, the second
        quarter is uniform too.
        """
        dev = self.density.device
        gen_dev = generator.device
        n = self.n_cells
        if all_cells:
            idx = torch.arange(n, device=gen_dev)
        else:
            uniform = torch.randint(0, n, (2, n // 4), generator=generator, device=gen_dev)
            occ = self.occupancy.to(gen_dev)
            occupied = torch.nonzero_static(occ, size=n, fill_value=0).squeeze(1)
            count = torch.count_nonzero(occ)
            pick = (torch.rand(n // 4, generator=generator, device=gen_dev, dtype=torch.float64) * count).long()
            idx = torch.cat([uniform[0], torch.where(count > 0, occupied[pick.clamp_max(n - 1)], uniform[1])])
        jitter = torch.rand(idx.numel(), 3, generator=generator, device=gen_dev)
        idx, jitter = idx.to(dev), jitter.to(dev)
        thickness = torch.empty(idx.numel(), device=dev)
        for s in range(0, idx.numel(), chunk):
            i = idx[s:s + chunk]
            sigma = density_fn(self.cell_positions(i, jitter[s:s + chunk])).float().reshape(-1)
            thickness[s:s + chunk] = sigma * MIN_CONE_STEPSIZE * torch.ldexp(torch.ones_like(sigma),
                                                                             (i // GRID_CELLS).to(torch.int32))
        if kernel_target is not None:
            from ngp_cli.cuda.nerf import occupancy_update

            occupancy_update(self.density, self.occupancy, idx, thickness, decay, threshold, kernel_target)
            return
        splat = torch.zeros(n, device=dev)
        splat.scatter_reduce_(0, idx, torch.nan_to_num(thickness, nan=0.0), reduce="amax")
        self.density.copy_(torch.where(self.density < 0, self.density, torch.maximum(self.density * decay, splat)))
        self._update_occupancy(threshold)

    def _update_occupancy(self, threshold: float) -> None:
        mean = self.density[:GRID_CELLS].clamp_min(0).mean()
        # min(threshold, mean) on the device, NaN giving threshold as Python's min and the kernel's fminf do.
        bound = torch.nan_to_num(mean, nan=threshold).clamp(max=threshold)
        self.occupancy.copy_((self.density > bound).to(torch.uint8))

    def occupied(self, positions: Tensor) -> Tensor:
        """(N,) bool: whether the cell of each (N, 3) ngp-frame position, in the finest cascade that contains it
        (:func:`mip_from_pos`), is occupied; False outside the outermost cascade."""
        idx = cell_index(positions, mip_from_pos(positions, self.cascades - 1))
        return (idx >= 0) & (self.occupancy[idx.clamp_min(0)] > 0)

    def occupied_fraction(self) -> float:
        """Fraction of occupied cells over all cascades."""
        return float(self.occupancy.float().mean())

"""The cascaded occupancy grid of instant-ngp (paper §5.4, Appendix E.2), torch reference, and its cell math.

Frame: the "ngp frame" of :mod:`ngp_cli.tasks.nerf.cameras` (positions scaled and offset so that the scene at
``aabb_scale`` 1 lies in the unit cube around 0.5). The scene box is ``[0.5 - s/2, 0.5 + s/2]^3`` for ``s =
aabb_scale``; cascade ``k`` (``k = 0 .. log2(s)``) covers ``[0.5 - 2^(k-1), 0.5 + 2^(k-1)]^3`` with 128³ cells, so cell
size is ``2^k / 128``. Cell ``(x, y, z)`` of cascade ``k`` has the flat index ``k·128³ + x + 128·(y + 128·z)``.

The grid stores, per cell, an exponential moving average of the *optical thickness* ``σ · Δt_min · 2^k`` of the
density network at random points in the cell (instant-ngp ``splat_grid_samples_nerf_max_nearest_neighbor`` and
``ema_grid_samples_nerf``), and a cell is occupied when its value exceeds ``min(0.01, mean of cascade 0)``
(``grid_to_bitfield``). Cells that no training camera sees are marked -1 and stay empty
(``mark_untrained_density_grid``). Optionally (ngp's own, ``nerf.occupancy_init: points``) the grid starts from the cells
around a sparse point cloud instead (:meth:`OccupancyGrid.seed_from_points`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ngp_cli.volrend.constants import (
    GRID_CELLS,
    GRID_SIZE,
    MIN_CONE_STEPSIZE,
    MIN_OPTICAL_THICKNESS,
    SEED_OPTICAL_THICKNESS,
)

__all__ = ["EMPTY_DISTANCE_CAP", "OccupancyGrid", "aabb_bounds", "cell_index", "empty_distance", "mip_from_dt",
           "mip_from_pos", "n_cascades"]

#: The largest empty-space distance stored (:func:`empty_distance`), in cells.
EMPTY_DISTANCE_CAP = 64


def n_cascades(aabb_scale: int) -> int:
    """Number of cascades, ``log2(aabb_scale) + 1``. Raises ValueError unless aabb_scale is a power of two in
    1..128."""
    if aabb_scale < 1 or aabb_scale > 128 or aabb_scale & (aabb_scale - 1):
        raise ValueError(f"aabb_scale must be a power of two in 1..128, got {aabb_scale}")
    return int(math.log2(aabb_scale)) + 1


def aabb_bounds(aabb_scale: int) -> tuple[float, float]:
    """(min, max) of the cubic scene box along every axis: ``0.5 ∓ aabb_scale / 2``."""
    return 0.5 - 0.5 * aabb_scale, 0.5 + 0.5 * aabb_scale


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
    def restrict(self, cells: Tensor) -> None:
        """Keep only ``cells`` ((cascades·128³,) bool): every other cell is marked -1, as cells no camera sees are,
        so it stays empty through every update (a spatially partitioned model's part keeps its region's cells,
        :mod:`ngp_cli.tasks.nerf.partition`). The occupancy bits are recomputed."""
        self.density.masked_fill_(~cells.to(self.density.device), -1.0)
        self._update_occupancy(MIN_OPTICAL_THICKNESS)

    @torch.no_grad()
    def point_cells(self, points: Tensor, dilation: int) -> Tensor:
        """The cells around ``points``: (cascades·128³,) bool, True for every cell within ``dilation`` cells (Chebyshev
        distance: a (2·dilation + 1)³ block, clipped at the cascade's faces) of a cell holding a point, in every
        cascade whose box holds that point (a point of the unit cube marks its cell in all cascades, since marching
        looks up coarser cascades for longer steps, :func:`mip_from_dt`). Cells of a point are found as
        :func:`cell_index` finds them. ``points``: (N, 3) float ngp-frame positions (float32 on the grid's device is
        used); points outside the outermost cascade mark nothing. Raises ValueError for a negative dilation."""
        if dilation < 0:
            raise ValueError(f"dilation must be >= 0, got {dilation}")
        dev = self.density.device
        p = points.to(device=dev, dtype=torch.float32).reshape(-1, 3)
        mask = torch.zeros(self.n_cells, dtype=torch.bool, device=dev)
        k = 2 * int(dilation) + 1
        for cascade in range(self.cascades):
            cells = torch.floor(((p - 0.5) * 2.0 ** -cascade + 0.5) * GRID_SIZE)
            inside = ((cells >= 0) & (cells < GRID_SIZE)).all(dim=-1)
            ijk = cells[inside].to(torch.int64)
            if ijk.numel() == 0:
                continue
            volume = torch.zeros(GRID_CELLS, device=dev)
            volume[ijk[:, 0] + GRID_SIZE * (ijk[:, 1] + GRID_SIZE * ijk[:, 2])] = 1.0
            volume = volume.view(1, 1, GRID_SIZE, GRID_SIZE, GRID_SIZE)  # [z, y, x]
            if dilation:  # a cube dilation is separable: one max filter per axis
                for kernel in ((k, 1, 1), (1, k, 1), (1, 1, k)):
                    pad = tuple(s // 2 for s in kernel)
                    volume = torch.nn.functional.max_pool3d(volume, kernel, stride=1, padding=pad)
            mask[cascade * GRID_CELLS:(cascade + 1) * GRID_CELLS] = volume.reshape(-1) > 0
        return mask

    @torch.no_grad()
    def seed_from_points(self, points: Tensor, dilation: int, value: float = SEED_OPTICAL_THICKNESS) -> int:
        """Start the grid from the cells around a sparse point cloud instead of a full grid (``nerf.occupancy_init:
        points``; ngp's own, after the geometry-prior idea of issue 16): the cells of :meth:`point_cells` that a
        training camera sees (density not -1) get the optical thickness ``value``, every other seen cell 0, and the
        occupancy bits are recomputed, so exactly those cells are occupied. Cells marked -1 stay -1. The grid updates
        then proceed as usual: a seeded cell decays by ``decay`` per update unless the network's density keeps it,
        and the other cells become occupied once the network's thickness there exceeds the threshold (with
        ``value`` = 1 and seeded cells over 1% of cascade 0, the threshold stays at its cap, above the untrained
        network's thickness).

        Call after :meth:`mark_untrained`, before training. ``points``: (N, 3) ngp-frame positions. Returns the number
        of cells seeded; when that is 0 (no point near a seen cell) the grid is left as it was.
        """
        seeded = self.point_cells(points, dilation) & (self.density >= 0)
        count = int(seeded.sum())
        if count == 0:
            return 0
        self.density.copy_(torch.where(seeded, torch.full_like(self.density, float(value)),
                                       torch.where(self.density < 0, self.density, torch.zeros_like(self.density))))
        self._update_occupancy(MIN_OPTICAL_THICKNESS)
        return count

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
        self.threshold_occupancy(threshold, self.density[:GRID_CELLS].clamp_min(0).mean())

    @torch.no_grad()
    def threshold_occupancy(self, threshold: float, mean: Tensor) -> None:
        """Recompute the occupancy bits as ``density > min(threshold, mean)`` with a given cascade-0 ``mean`` (a 0-dim
        tensor): a spatially partitioned model's parts threshold against the whole scene's mean, as one model's grid
        would (:mod:`ngp_cli.tasks.nerf.partition`); :meth:`update` uses this grid's own."""
        mean = mean.to(self.density.device, torch.float32)
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


def _blocked_cells(occ: Tensor, c: int) -> Tensor:
    """(128, 128, 128) [z, y, x] bool: the cells of cascade ``c``'s grid that an occupied cell of *any* cascade
    overlaps (``occ``: (cascades, 128, 128, 128) bool). Cascade grids are aligned (faces at 0.5 + j·2^k/128), so a cell
    of a finer cascade k < c lies inside one cell of c, and a cell of c inside one cell of a coarser k > c."""
    cascades = occ.shape[0]
    dev = occ.device
    blocked = occ[c].clone()
    centres = None
    for k in range(cascades):
        if k < c:  # each occupied cell of k marks the cell of c holding it
            ijk = torch.nonzero(occ[k]).flip(-1).double()  # (x, y, z)
            world = ((ijk + 0.5) / GRID_SIZE - 0.5) * 2.0 ** k + 0.5
            m = torch.floor(((world - 0.5) * 2.0 ** -c + 0.5) * GRID_SIZE).long()
            blocked[m[:, 2], m[:, 1], m[:, 0]] = True
        elif k > c:  # each cell of c takes the flag of the cell of k holding it
            if centres is None:
                g = torch.arange(GRID_SIZE, device=dev, dtype=torch.float64)
                zz, yy, xx = torch.meshgrid(g, g, g, indexing="ij")
                centres = torch.stack([xx, yy, zz], -1).reshape(-1, 3)
                centres = ((centres + 0.5) / GRID_SIZE - 0.5) * 2.0 ** c + 0.5
            cell = torch.floor(((centres - 0.5) * 2.0 ** -k + 0.5) * GRID_SIZE).long()
            blocked |= occ[k][cell[:, 2], cell[:, 1], cell[:, 0]].view(GRID_SIZE, GRID_SIZE, GRID_SIZE)
    return blocked


def empty_distance(occupied: Tensor, cascades: int, cap: int = EMPTY_DISTANCE_CAP) -> Tensor:
    """The marching kernel's empty-space map, one byte per cell of every cascade (flat index as the occupancy grid's):
    0 when the cell itself is occupied (marching samples it); 1 when it has none but a cell of another cascade that
    overlaps it has one (the kernel then skips the cell alone, as cell-by-cell marching does); else the Chebyshev
    distance in cells, at most ``cap``, to the nearest cell of its cascade's grid overlapped by an occupied cell, or
    to the grid's edge for an inner cascade (the cells beyond are another cascade's). Every cell within
    ``distance - 1`` of a cell is then empty in every cascade, so the march kernels (``nerf.cu`` when rendering,
    ``baked.cu``) skip that cube at once: marching looks a lattice point up in the cascade its position and step choose
    (:func:`mip_from_dt`), and whichever it is, the point's cell there is empty — no sample is changed. ``occupied``: (cascades·128³,) bool/uint8. Returns (cascades·128³,) uint8 on its device. The distance is
    scipy's exact chessboard distance transform (``scipy.ndimage.distance_transform_cdt``), on the CPU."""
    from scipy import ndimage

    g = GRID_SIZE
    occ = occupied.bool().view(cascades, g, g, g).cpu()  # [k, z, y, x]
    out = torch.empty(cascades, g, g, g, dtype=torch.uint8)
    for c in range(cascades):
        blocked = _blocked_cells(occ, c).numpy()
        inner = c < cascades - 1
        free = np.ones((g + 2, g + 2, g + 2), dtype=bool)
        if inner:  # the grid's edge blocks: the cells beyond are another cascade's
            free[0, :, :] = free[-1, :, :] = free[:, 0, :] = free[:, -1, :] = free[:, :, 0] = free[:, :, -1] = False
        free[1:-1, 1:-1, 1:-1] = ~blocked
        if free.all():
            dist = np.full((g, g, g), cap)
        else:
            dist = ndimage.distance_transform_cdt(free, metric="chessboard")[1:-1, 1:-1, 1:-1]
        dist = np.minimum(dist, cap)
        dist[blocked] = 1  # overlapped by a block of another cascade: skip this cell alone ...
        dist[occ[c].numpy()] = 0  # ... unless it has its own block
        out[c] = torch.from_numpy(dist.astype(np.uint8))
    return out.reshape(-1).to(occupied.device)

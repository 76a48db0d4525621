"""Rendering rays for evaluation: occupancy-grid marching (:mod:`ngp_cli.volrend.march`) and compositing
(:mod:`ngp_cli.volrend.composite`) in rounds, with early ray termination, on the kernels or the torch references.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ngp_cli.volrend.composite import composite
from ngp_cli.volrend.constants import MIN_TRANSMITTANCE
from ngp_cli.volrend.march import march_rays

__all__ = ["render_rays"]


@torch.no_grad()
def render_rays(field: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], origins: Tensor, directions: Tensor,
                occupancy: Tensor, aabb_scale: int, *, cone_angle: float, near_distance: float,
                background: Tensor | None, chunk_rays: int = 4096, samples_per_round: int = 64,
                kernel_target: str | None = None) -> Tensor:
    """Render rays for evaluation: march, query ``field(positions (S,3), directions (S,3)) -> (σ (S,), rgb (S,3))``,
    composite, add ``background`` ((3,) or (R, 3), or None for black). Returns (R, 3) float32.

    Rays are marched in rounds of at most ``samples_per_round`` samples, each round resuming where the last stopped
    (same step lattice), and a ray stops once its transmittance falls below 1e-4, so opaque surfaces hide what lies
    behind them from the network (instant-ngp's inference marching does the same with compaction). ``chunk_rays``
    rays at a time, so memory stays bounded.
    """
    out = torch.empty(origins.shape[0], 3, device=origins.device)
    for s in range(0, origins.shape[0], chunk_rays):
        o, d = origins[s:s + chunk_rays], directions[s:s + chunk_rays]
        colour = torch.zeros(o.shape[0], 3, device=o.device)
        transmittance = torch.ones(o.shape[0], device=o.device)
        active = torch.arange(o.shape[0], device=o.device)
        t_start = None
        while active.numel():
            samples = march_rays(o[active], d[active], occupancy, aabb_scale, cone_angle=cone_angle,
                                 near_distance=near_distance, t_start=t_start, max_samples=samples_per_round,
                                 kernel_target=kernel_target)
            if not samples.n_samples:
                break
            sigma, rgb = field(samples.positions, d[active][samples.ray_index])
            c, opacity = composite(sigma, rgb, samples.dts, samples.offsets, kernel_target)
            colour[active] += transmittance[active].unsqueeze(-1) * c
            transmittance[active] *= 1.0 - opacity
            counts = samples.offsets[1:] - samples.offsets[:-1]
            going = (counts == samples_per_round) & (transmittance[active] >= MIN_TRANSMITTANCE)
            last = (samples.offsets[1:] - 1).clamp_min(0)[going]
            t_start = samples.ts[last] + samples.dts[last]
            active = active[going]
        if background is not None:
            bg = background if background.dim() == 1 else background[s:s + chunk_rays]
            colour = colour + transmittance.unsqueeze(-1) * bg
        out[s:s + chunk_rays] = colour
    return out

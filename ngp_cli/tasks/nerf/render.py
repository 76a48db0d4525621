"""Volume rendering of packed ray samples: front-to-back alpha compositing with early termination (NeRF eq. 3 as in
instant-ngp's ``compute_loss_kernel_train_nerf`` / ``composite_kernel_nerf``), and the dispatch between the torch
reference and the kernels of ``ngp_cli/cuda/nerf.cu``.

Compositing, per ray with samples ``j = 0 .. n-1`` (front to back): ``τ_j = σ_j Δt_j``, ``α_j = 1 - exp(-τ_j)``,
transmittance ``T_j = exp(-Σ_{k<j} τ_k)``, weight ``w_j = T_j α_j``; colour ``C = Σ w_j c_j`` and opacity
``O = Σ w_j``, summed only over samples reached with ``T_j ≥ 1e-4`` (instant-ngp stops a ray there). A background
``b`` is added by the caller as ``C + (1 - O) b``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ngp_cli.tasks.nerf.occupancy import RaySamples, march_rays_reference

MIN_TRANSMITTANCE = 1e-4  # instant-ngp's EPSILON for early ray termination

__all__ = ["MIN_TRANSMITTANCE", "composite", "composite_reference", "march_rays", "render_rays"]


def composite_reference(sigma: Tensor, rgb: Tensor, dts: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Torch reference of the compositing kernels (differentiable through autograd).

    Args:
        sigma: (S,) float32 densities σ ≥ 0 (after the exp activation), per unit length of the ngp frame.
        rgb: (S, 3) float32 sample colours.
        dts: (S,) float32 step lengths.
        offsets: (R + 1,) int64 packed-ray offsets (:class:`~ngp_cli.tasks.nerf.occupancy.RaySamples`);
            ``offsets[R]`` may be less than S (trailing rows in no ray's range, the padding of a training batch: they
            get zero gradients).

    Returns:
        ``(colour (R, 3), opacity (R,))`` float32.
    """
    total = int(offsets[-1])
    if total < sigma.shape[0]:
        return composite_reference(sigma[:total], rgb[:total], dts[:total], offsets)
    n_rays = offsets.numel() - 1
    counts = offsets[1:] - offsets[:-1]
    ray_index = torch.repeat_interleave(torch.arange(n_rays, device=sigma.device), counts)
    # τ ≥ 30 already ends the ray (T < 1e-4 after it); the clamp keeps an infinite σ from turning the packed
    # cumulative sum into NaN for every later ray.
    tau = (sigma * dts).double().clamp(max=30.0)
    inclusive = torch.cumsum(tau, 0)
    start = torch.cat([inclusive.new_zeros(1), inclusive])[offsets[:-1]]
    exclusive = inclusive - tau - start[ray_index]  # Σ_{k<j} τ_k within the ray
    transmittance = torch.exp(-exclusive).float()
    alive = (transmittance >= MIN_TRANSMITTANCE).float()
    weights = transmittance * (1.0 - torch.exp(-sigma * dts)) * alive
    colour = torch.zeros(n_rays, 3, device=sigma.device, dtype=rgb.dtype).index_add_(0, ray_index,
                                                                                     weights.unsqueeze(-1) * rgb)
    opacity = torch.zeros(n_rays, device=sigma.device, dtype=weights.dtype).index_add_(0, ray_index, weights)
    return colour, opacity


def composite(sigma: Tensor, rgb: Tensor, dts: Tensor, offsets: Tensor,
              kernel_target: str | None = None) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing (see the module docstring) on the ``cpu``/``cuda`` kernels or the torch reference
    (``kernel_target=None``). Same arguments and results as :func:`composite_reference`; differentiable in ``sigma``
    and ``rgb``."""
    if kernel_target is None:
        return composite_reference(sigma, rgb, dts, offsets)
    from ngp_cli.cuda.nerf import composite as composite_kernel

    return composite_kernel(sigma, rgb, dts, offsets, kernel_target)


def march_rays(origins: Tensor, directions: Tensor, occupancy: Tensor, aabb_scale: int, *, cone_angle: float,
               near_distance: float, jitter: Tensor | None = None, t_start: Tensor | None = None,
               max_samples: int = 1024, n_active: Tensor | None = None, capacity: int | None = None,
               kernel_target: str | None = None) -> RaySamples:
    """Occupancy-grid ray marching on the kernels or the torch reference; arguments and result as
    :func:`~ngp_cli.tasks.nerf.occupancy.march_rays_reference`, plus, for training batches:

    * ``n_active``: a one-element int64 tensor on the rays' device, or None: only rays ``r < n_active`` are marched;
    * ``capacity``: the number of sample rows (None: exactly the samples taken). With it the kernels never wait for the
      device (the torch reference does): the samples of the rays that fit come first, in ray order, the remaining rows
      are padding (position (0.5, 0.5, 0.5), Δt 0, ray 0, in no ray's range), rays that do not fit get empty ranges,
      and the result's ``ray_ok`` / ``requested`` say which rays count and how many samples they asked for.
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
                                           target=kernel_target))
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

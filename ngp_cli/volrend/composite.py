"""Volume rendering of packed ray samples: front-to-back alpha compositing with early termination (NeRF eq. 3 as in
instant-ngp's ``compute_loss_kernel_train_nerf`` / ``composite_kernel_nerf``), and the dispatch between the torch
reference and the kernels of ``ngp_cli/cuda/nerf.cu``.

Compositing, per ray with samples ``j = 0 .. n-1`` (front to back): ``τ_j = σ_j Δt_j``, ``α_j = 1 - exp(-τ_j)``,
transmittance ``T_j = exp(-Σ_{k<j} τ_k)``, weight ``w_j = T_j α_j``; colour ``C = Σ w_j c_j`` and opacity
``O = Σ w_j``, summed only over samples reached with ``T_j ≥ 1e-4`` (instant-ngp stops a ray there). A background
``b`` is added by the caller as ``C + (1 - O) b``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ngp_cli.volrend.constants import MIN_TRANSMITTANCE

__all__ = ["composite", "composite_reference"]


def composite_reference(sigma: Tensor, rgb: Tensor, dts: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Torch reference of the compositing kernels (differentiable through autograd).

    Args:
        sigma: (S,) float32 densities σ ≥ 0 (after the exp activation), per unit length of the ngp frame.
        rgb: (S, 3) float32 sample colours.
        dts: (S,) float32 step lengths.
        offsets: (R + 1,) int64 packed-ray offsets (:class:`~ngp_cli.volrend.march.RaySamples`);
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

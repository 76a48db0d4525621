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

__all__ = ["combine_segments", "composite", "composite_reference", "segment_entries"]


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


def segment_entries(ts: Tensor, offsets: Tensor) -> Tensor:
    """Where each ray's samples begin: (R,) float32, the distance ``ts`` of its first sample, +inf for a ray without
    samples. ``ts`` (S,) float32 and ``offsets`` (R + 1,) int64 as in :func:`composite_reference`. A distance inside
    a ray's segment of one region, by which :func:`combine_segments` orders the segments."""
    counts = offsets[1:] - offsets[:-1]
    first = ts.index_select(0, offsets[:-1].clamp(max=max(ts.shape[0] - 1, 0))) if ts.numel() else \
        torch.zeros(counts.shape[0], device=ts.device, dtype=torch.float32)
    return torch.where(counts > 0, first.float(), torch.full_like(first, float("inf"), dtype=torch.float32))


def combine_segments(values: Tensor, opacity: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
    """Composite K segments of each ray, given separately, into the whole ray (NeRF-XL, Li et al. 2024, §4: the
    scene cut into K disjoint regions, each composited on its own).

    Segment ``k`` of ray ``r`` is the part of the ray inside region ``k``, composited front to back from a
    transmittance of 1 at its start: ``values[k, r] = Σ_j w_j v_j`` (colour, depth, ...; weights ``w_j = T_j α_j``
    within the segment) and ``opacity[k, r] = 1 - T_k``, ``T_k`` the transmittance through the segment. With the
    segments of a ray sorted front to back by ``order`` (any distance inside each segment: its first sample, or its
    expected depth; regions are convex, so each meets the ray in one interval, and the intervals are disjoint), the
    whole ray's ``value = Σ_k (Π_{m<k} T_m) values_k`` and ``opacity = 1 - Π_k T_k``: exactly the compositing of all
    the samples in one pass (eq. 3 of the NeRF paper, the exponential splitting into a product over segments).

    Early termination as in one pass, at segment granularity: a segment the ray reaches with ``Π_{m<k} T_m`` below
    1e-4 adds nothing, and gets an exactly zero gradient, as the samples one pass would not reach (so the hash-table
    entries only such samples touch are left alone by the optimizer's zero-gradient skip, instead of being moved by
    Adam's normalised steps on gradients of 1e-5 and less).

    Args:
        values: (K, R, C) float32 per-segment composited values.
        opacity: (K, R) float32 per-segment opacity ``1 - T_k`` (0 for a ray that does not meet region ``k``).
        order: (K, R) float32 sort key of each segment along its ray (+inf where it holds no sample).

    Returns:
        ``(values (R, C), opacity (R,))`` float32, differentiable in ``values`` and ``opacity`` (autograd).

    Raises:
        ValueError: mismatched shapes.
    """
    if values.dim() != 3 or opacity.shape != values.shape[:2] or order.shape != opacity.shape:
        raise ValueError(f"combine_segments takes values (K, R, C), opacity and order (K, R); got "
                         f"{tuple(values.shape)}, {tuple(opacity.shape)}, {tuple(order.shape)}")
    rank = torch.argsort(order, dim=0, stable=True)
    values = values.gather(0, rank.unsqueeze(-1).expand_as(values))
    through = 1.0 - opacity.gather(0, rank)
    left = torch.ones_like(through[0])
    total = torch.zeros_like(values[0])
    for k in range(values.shape[0]):
        reached = left >= MIN_TRANSMITTANCE
        total = total + torch.where(reached, left, 0.0).unsqueeze(-1) * values[k]
        left = torch.where(reached, left * through[k], left)
    return total, 1.0 - left

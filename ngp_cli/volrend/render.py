"""Rendering rays for evaluation: occupancy-grid marching (:mod:`ngp_cli.volrend.march`) and compositing
(:mod:`ngp_cli.volrend.composite`) in rounds, with early ray termination, on the kernels or the torch references.

Besides colour, :func:`render_ray_maps` composites other per-sample quantities with the same weights ``w_j`` (the
compositing kernels take them as a "colour"): the expected distance ``Σ w_j t_j`` (a depth map), the opacity ``Σ w_j``
(accumulation) and the weighted mean of the unit normals ``n_j = -∇σ_j / |∇σ_j|`` (instant-ngp's Depth and Normals
render modes; nerfstudio's expected depth, which also composites the sample distances).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ngp_cli.volrend.composite import composite
from ngp_cli.volrend.constants import GRID_CELLS, MIN_TRANSMITTANCE
from ngp_cli.volrend.march import march_rays

__all__ = ["MAX_ROUND_SAMPLES_PER_RAY", "MIN_CHUNK_RAYS", "RAY_MAPS", "REFERENCE_STEPS_PER_ROUND",
           "ROUND_OVERHEAD_SAMPLES", "STEPS_PER_ROUND", "RayRows", "render_ray_maps", "render_rays", "round_steps"]

#: What :func:`render_ray_maps` can composite.
RAY_MAPS = ("rgb", "depth", "opacity", "normals")

#: The fewest rays the task renderers march together (``nerf.eval_chunk_rays`` below it is raised to it): the adaptive
#: rounds take about one sample per live ray at first, so the chunk sets the network's batch. Measured on the fox at
#: 270×480 (2-core Xeon): 14.4 s per view with 8192-ray chunks, 6.0 s with 2^17.
MIN_CHUNK_RAYS = 1 << 17

#: Bounds on the samples per live ray in one round of :func:`render_ray_maps` on the kernels. instant-ngp's
#: MIN/MAX_STEPS_INBETWEEN_COMPACTION are 1 and 8; the upper bound here is 32, for the rounds that
#: :data:`ROUND_OVERHEAD_SAMPLES` lengthens and for the last few rays of a chunk (lego_400: the last 30 of 50 rounds
#: march fewer than 1000 rays each, and a round costs its kernel launches whatever its size).
STEPS_PER_ROUND = (1, 32)
#: What a round costs a live ray beyond its samples (marching resumed: the box test and the ray's cell found again;
#: the live rays' compaction), in samples' worth of work: the constant ``c`` of :func:`round_steps`'s rule. Measured
#: on the cpu backend (2-core Zen 4, issue 17): a fox view at 270×480 renders in 2.86 s with c = 1 and 0.5–2 within
#: 1 % of it, against 3.70 s with instant-ngp's rule alone. 0 turns the rule off.
ROUND_OVERHEAD_SAMPLES = 1.0
#: A round takes at most this many samples per ray of its chunk (memory; instant-ngp's rule alone keeps a round within
#: one sample per chunk ray). A fox view's render peaks 380 MB above the loaded run with it, 150 MB without (cpu).
MAX_ROUND_SAMPLES_PER_RAY = 8
#: The same for the torch reference (``kernel_target=None``): its marching costs a Python loop per step of every
#: round, so it keeps few long rounds (64 samples per live ray, ngp's schedule before issue 17).
REFERENCE_STEPS_PER_ROUND = (64, 64)


@dataclass(frozen=True)
class RayRows:
    """Per-ray values seen from the samples, without the per-sample copy: ``features`` (R, C) one row per ray, and
    ``rows`` (S,) int64 the row of each sample. What :func:`render_ray_maps` passes a field in the place of the
    directions when it has ``ray_features`` (a field that only needs the (S, C) rows calls :meth:`gather`; the NeRF
    network's rendering kernel reads the rays' rows as it goes). ``ray_rows[index]`` is a :class:`RayRows` of the
    samples ``index`` selects (a boolean mask or an index tensor), as a tensor of the gathered rows would be."""

    features: Tensor
    rows: Tensor

    def gather(self) -> Tensor:
        """The (S, C) per-sample rows."""
        return self.features.index_select(0, self.rows)

    def __getitem__(self, index) -> RayRows:
        return RayRows(self.features, self.rows[index])

    def __len__(self) -> int:
        return self.rows.shape[0]


Field = Callable[[Tensor, Tensor | RayRows], tuple[Tensor, Tensor]]

_empty_cache: dict[str, tuple[Tensor, int, Tensor]] = {}


def _empty_distances(occupancy: Tensor) -> Tensor:
    """The empty-space distances of an occupancy bitfield for the marching kernels, remembered for the last grid seen
    (the tensor itself, held so its storage cannot be reused by another, and its version: every grid update bumps
    it, the kernels' too), so the views of one render share them."""
    from ngp_cli.volrend.grid import empty_distance

    cached = _empty_cache.get("last")
    if cached is None or cached[0] is not occupancy or cached[1] != occupancy._version:
        cached = (occupancy, occupancy._version, empty_distance(occupancy, occupancy.numel() // GRID_CELLS))
        _empty_cache["last"] = cached
    return cached[2]


def _density_normals(field: Field, positions: Tensor, directions: Tensor | RayRows) -> tuple[Tensor, Tensor, Tensor]:
    """σ, rgb and the unit normals ``-∇σ / |∇σ|`` (zero where the gradient vanishes) at the samples, by
    backpropagating σ to the positions."""
    with torch.enable_grad():
        x = positions.detach().requires_grad_(True)
        sigma, rgb = field(x, directions)
        (grad,) = torch.autograd.grad(sigma.float().sum(), x)
    norm = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)
    normals = torch.where(norm > 0, -grad / norm.clamp_min(1e-30), torch.zeros_like(grad))
    return sigma.detach(), rgb.detach(), normals.float().contiguous()


def round_steps(chunk_rays: int, live: int, steps_per_round: tuple[int, int], end_rate: float | None = None,
                overhead: float = ROUND_OVERHEAD_SAMPLES) -> int:
    """The samples per live ray of the next round of :func:`render_ray_maps`: at least instant-ngp's
    ``clamp(chunk_rays // live, lo, hi)`` (``NerfTracer::trace``: about one network batch of ``chunk_rays`` samples a
    round), and, when the rays of the last round ended slowly, up to ``sqrt(2 c / p)``.

    The second term balances the two costs of a round's length ``s`` for rays that end with probability ``p`` per
    sample (``end_rate``: the rays that took samples last round and ended, over those samples; None on the first
    round): each round costs a ray ``c`` samples' worth of overhead (``overhead``, :data:`ROUND_OVERHEAD_SAMPLES`), so
    ``c / s`` per sample, and a ray that ends within a round wastes on average ``(s - 1) / 2`` samples behind its end,
    ``p (s - 1) / 2`` per sample; their sum is least at ``s = sqrt(2 c / p)``. Rays through thin density everywhere
    (the fog of a real capture: the fox's rays end at ~0.3 % a sample) take long rounds; rays that end on surfaces a
    few samples in (lego) keep instant-ngp's. The round's samples stay within ``MAX_ROUND_SAMPLES_PER_RAY ×
    chunk_rays`` (memory), and ``s`` within ``steps_per_round`` ``(lo, hi)``.
    """
    lo, hi = steps_per_round
    steps = max(lo, min(hi, chunk_rays // max(live, 1)))
    if end_rate is not None and overhead > 0.0:
        balanced = int(math.sqrt(2.0 * overhead / max(end_rate, 1e-9)))
        steps = max(steps, min(hi, balanced, MAX_ROUND_SAMPLES_PER_RAY * chunk_rays // max(live, 1)))
    return steps


@torch.no_grad()
def render_ray_maps(field: Field, origins: Tensor, directions: Tensor, occupancy: Tensor, aabb_scale: int, *,
                    cone_angle: float, near_distance: float, background: Tensor | None,
                    maps: Iterable[str] = ("rgb",), chunk_rays: int = MIN_CHUNK_RAYS,
                    steps_per_round: tuple[int, int] | None = None, kernel_target: str | None = None,
                    ray_features: Callable[[Tensor], Tensor] | None = None,
                    min_transmittance: float = MIN_TRANSMITTANCE,
                    round_overhead: float = ROUND_OVERHEAD_SAMPLES) -> dict[str, Tensor]:
    """Render rays for evaluation: march, query ``field(positions (S,3), directions (S,3)) -> (σ (S,), rgb (S,3))``,
    composite, and return the requested ``maps`` (a subset of :data:`RAY_MAPS`), each over the R rays:

    * ``rgb``: (R, 3) float32, colour plus ``background`` ((3,) or (R, 3), or None for black) times the
      transmittance left;
    * ``depth``: (R,) float32 ``Σ w_j t_j``, the expected distance along the ray in the units of the ray's
      parameter (the ngp frame's for unit directions); a ray through empty space gives 0, a half-covered pixel half
      its surface's distance (divide by ``opacity`` for the distance given a hit);
    * ``opacity``: (R,) float32 ``Σ w_j = 1 - transmittance`` left (accumulation);
    * ``normals``: (R, 3) float32 ``Σ w_j n_j`` with ``n_j = -∇σ_j / |∇σ_j|`` (∇ by autograd through ``field``, so
      it must be differentiable in the positions), not normalised.

    ``ray_features``: when given, ``ray_features(directions (R', 3)) -> (R', C)`` is evaluated once per ray, and the
    field receives its samples' rows of it, a :class:`RayRows`, in the place of the directions (the NeRF network's
    spherical harmonics of the view direction, the same for every sample of a ray, so computed per ray instead of per
    sample).

    Rays are marched in rounds, each round resuming where the last stopped (same step lattice), and a ray stops once
    its transmittance falls below ``min_transmittance`` (default 1e-4, what instant-ngp's ``scripts/run.py`` sets to
    score test views; its testbed renders frames at 0.01, ``render_min_transmittance``), so opaque surfaces hide what
    lies behind them from the network. The test is made between rounds: the samples of the round in which a ray
    crosses it are all composited (down to 1e-4 of the round's transmittance), so a higher threshold saves the
    rounds after it, never the accuracy of the samples already computed. A pixel changes by at most
    ``min_transmittance`` times its colours' largest distance from the background, which takes that share. As in
    instant-ngp's inference marching (``NerfTracer::trace``: compaction of the live rays, then
    ``clamp(n_rays / n_alive, MIN_STEPS_INBETWEEN_COMPACTION, MAX_STEPS_INBETWEEN_COMPACTION)`` steps per ray), a round
    takes at least ``clamp(rays of the chunk // live rays, *steps_per_round)`` samples per live ray: few while most
    rays are alive (a ray that ends on a surface after three samples wastes little), more as rays end, so each round's
    network batch stays near ``chunk_rays`` samples (``steps_per_round`` None: :data:`STEPS_PER_ROUND` on the kernels,
    :data:`REFERENCE_STEPS_PER_ROUND` on the torch reference). Where the last round's rays ended slowly, a round is
    longer, up to ``MAX_ROUND_SAMPLES_PER_RAY × chunk_rays`` samples (:func:`round_steps`, with ``round_overhead`` its
    constant ``c``; 0: instant-ngp's rule alone). The live rays' state (origin, direction, transmittance, composited
    maps) is compacted after each round, so a round touches only live rays; a ray's maps are written out when it
    stops. ``chunk_rays`` rays at a time, so memory stays bounded. Each map is composited by
    :func:`~ngp_cli.volrend.composite.composite` (the kernels or the torch reference) with the sample distances or
    normals in the place of the colours.

    Raises ``ValueError`` for a map not in :data:`RAY_MAPS`, a bad ``steps_per_round`` or a ``min_transmittance``
    outside [0, 1).
    """
    maps = tuple(maps)
    if not 0.0 <= min_transmittance < 1.0:
        raise ValueError(f"min_transmittance must be in [0, 1), got {min_transmittance}")
    if steps_per_round is None:
        steps_per_round = STEPS_PER_ROUND if kernel_target is not None else REFERENCE_STEPS_PER_ROUND
    lo_steps, hi_steps = steps_per_round
    if not 1 <= lo_steps <= hi_steps:
        raise ValueError(f"steps_per_round must be (lo, hi) with 1 <= lo <= hi, got {steps_per_round}")
    unknown = [m for m in maps if m not in RAY_MAPS]
    if unknown:
        raise ValueError(f"unknown ray maps {unknown}; choose from {RAY_MAPS}")
    n, dev = origins.shape[0], origins.device
    # Per ray: transmittance in column 0, then the composited maps' columns (opacity comes from the transmittance).
    columns: dict[str, slice] = {}
    width = 1
    for m, w in (("rgb", 3), ("depth", 1), ("normals", 3)):
        if m in maps:
            columns[m], width = slice(width, width + w), width + w
    state = torch.empty(n, width, device=dev)
    empty = None if kernel_target is None else _empty_distances(occupancy)
    for s in range(0, n, chunk_rays):
        o, d = origins[s:s + chunk_rays].float().contiguous(), directions[s:s + chunk_rays].float().contiguous()
        r = o.shape[0]
        feats = d if ray_features is None else ray_features(d)
        live = torch.arange(r, device=dev)
        acc = torch.zeros(r, width, device=dev)
        acc[:, 0] = 1.0
        t_start, end_rate = None, None
        while live.numel():
            steps = round_steps(r, live.numel(), steps_per_round, end_rate, round_overhead)
            samples = march_rays(o, d, occupancy, aabb_scale, cone_angle=cone_angle, near_distance=near_distance,
                                 t_start=t_start, max_samples=steps, empty_distance=empty,
                                 kernel_target=kernel_target)
            if not samples.n_samples:
                state[s + live] = acc
                break
            rows = live.index_select(0, samples.ray_index)
            per_sample = feats.index_select(0, rows) if ray_features is None else RayRows(feats, rows)
            if "normals" in maps:
                sigma, rgb, normals = _density_normals(field, samples.positions, per_sample)
            else:
                sigma, rgb = field(samples.positions, per_sample)
            weight = acc[:, :1]
            c, opacity = composite(sigma, rgb, samples.dts, samples.offsets, kernel_target)
            for m, cols in columns.items():
                if m == "rgb":
                    value = c
                elif m == "depth":
                    ts = samples.ts.unsqueeze(-1).expand(-1, 3).contiguous()
                    value = composite(sigma, ts, samples.dts, samples.offsets, kernel_target)[0][:, :1]
                else:
                    value = composite(sigma, normals, samples.dts, samples.offsets, kernel_target)[0]
                acc[:, cols].addcmul_(weight, value)
            acc[:, 0] *= 1.0 - opacity
            ends = samples.offsets[1:]
            counts = ends - samples.offsets[:-1]
            going = (counts == steps) & (acc[:, 0] >= min_transmittance)
            # Row indices once, then index_select: each boolean-mask index would search the mask again.
            kept = going.nonzero().squeeze(1)
            ended = int(torch.count_nonzero(counts)) - kept.numel()  # rays that took samples and ended
            end_rate = max(ended, 0.5) / samples.n_samples
            done = (~going).nonzero().squeeze(1)
            state.index_copy_(0, live.index_select(0, done).add_(s), acc.index_select(0, done))
            last = ends.index_select(0, kept).sub_(1)
            t_start = samples.ts.index_select(0, last).add_(samples.dts.index_select(0, last))
            live, o, d, acc = (v.index_select(0, kept) for v in (live, o, d, acc))
    out: dict[str, Tensor] = {}
    transmittance = state[:, 0]
    for m, cols in columns.items():
        out[m] = state[:, cols].squeeze(-1) if m == "depth" else state[:, cols]
    if "rgb" in maps and background is not None:
        out["rgb"] = out["rgb"] + transmittance.unsqueeze(-1) * background
    if "opacity" in maps:
        out["opacity"] = 1.0 - transmittance
    return {m: out[m].contiguous() for m in maps}


def render_rays(field: Field, origins: Tensor, directions: Tensor, occupancy: Tensor, aabb_scale: int, *,
                cone_angle: float, near_distance: float, background: Tensor | None, chunk_rays: int = MIN_CHUNK_RAYS,
                steps_per_round: tuple[int, int] | None = None, kernel_target: str | None = None,
                ray_features: Callable[[Tensor], Tensor] | None = None,
                min_transmittance: float = MIN_TRANSMITTANCE,
                round_overhead: float = ROUND_OVERHEAD_SAMPLES) -> Tensor:
    """The colour of rays (R, 3) float32: :func:`render_ray_maps` with ``maps=("rgb",)``."""
    return render_ray_maps(field, origins, directions, occupancy, aabb_scale, cone_angle=cone_angle,
                           near_distance=near_distance, background=background, maps=("rgb",), chunk_rays=chunk_rays,
                           steps_per_round=steps_per_round, kernel_target=kernel_target,
                           ray_features=ray_features, min_transmittance=min_transmittance,
                           round_overhead=round_overhead)["rgb"]

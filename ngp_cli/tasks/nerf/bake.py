"""``ngp bake RUN``: bake a trained NeRF run into a sparse voxel grid of density and spherical-harmonics colour that
renders without the network (``ngp render RUN --baked FILE``, ``ngp eval RUN --baked FILE``). The grid, the file
format and the baking algorithm are in :mod:`ngp_cli.volrend.baked`; docs/baked.md describes them and the choice
against a FastNeRF-style factorised cache.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ngp_cli.console import emit, info, progress, warn
from ngp_cli.errors import OutputError, UsageError
from ngp_cli.metrics import peak_rss_mib
from ngp_cli.runs import RunDir
from ngp_cli.volrend.baked import (
    DEFAULT_MIN_ALPHA,
    DEFAULT_N_DIRECTIONS,
    bake_grid,
    fibonacci_directions,
    format_bytes,
    parse_bytes,
    save_baked,
)

__all__ = ["BAKED_FILE", "DEFAULT_DIRECTIONS", "DIRECTION_SETS", "MIN_CAMERAS", "NerfBakeField", "bake_command",
           "bake_run", "fit_directions"]

#: The default output of ``ngp bake RUN``, in the run directory.
BAKED_FILE = "baked.safetensors"
#: The SH fit's direction set, chosen by measurement on lego (docs/baked.md).
DEFAULT_DIRECTIONS = "cameras"
#: Fewer training cameras than this: the "cameras" fit uses the sphere instead (9 coefficients need enough views).
MIN_CAMERAS = 18


class NerfBakeField:
    """The callables :func:`~ngp_cli.volrend.baked.bake_grid` queries, from a :class:`~ngp_cli.tasks.nerf.model.
    NerfNetwork` (its own modules, in inference: ``encoding``, ``density_network``, ``dir_encoding``,
    ``rgb_network``):

    * ``density(x)``: σ (N,) at (N, 3) ngp-frame positions, as rendering sees it (``NerfNetwork.density``);
    * ``features(x)``: the density network's 16 outputs (N, 16), computed once per voxel;
    * ``colour(h, dirs)``: rgb (T, M, 3) of the colour network on features ``h`` (T, 16) seen along unit directions
      ``dirs`` (M, 3) (encoded once) or (T, M, 3), exactly as ``NerfNetwork.forward`` feeds it.
    """

    def __init__(self, model) -> None:
        self.model = model

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.density(x).float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model._features(x).float()

    def colour(self, h: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        model = self.model
        t, f = h.shape
        if dirs.dim() == 2:
            enc = model.dir_encoding((dirs.float() + 1.0) * 0.5).float()
            m = enc.shape[0]
            enc = enc.unsqueeze(0).expand(t, m, enc.shape[1])
        else:
            m = dirs.shape[1]
            enc = model.dir_encoding((dirs.reshape(-1, 3).float() + 1.0) * 0.5).float().view(t, m, -1)
        x = torch.cat([h.unsqueeze(1).expand(t, m, f), enc], -1).reshape(t * m, -1)
        return model.rgb_network(x).float().view(t, m, 3)


class PartitionedBakeField(NerfBakeField):
    """:class:`NerfBakeField` of a spatially partitioned model holding every part
    (:class:`~ngp_cli.tasks.nerf.partition.PartitionedNerf`): ``features(x)`` are the 16 outputs of the part of each
    position's region with the region's index appended (N, 17), and ``colour`` runs each row through its part's colour
    network, so the bake sees the piecewise field as rendering does."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        from ngp_cli.tasks.nerf.partition import region_of

        model = self.model
        h = model._route(x, lambda part, rows: (part._features(x[rows]).float(),), (16,))[0]
        return torch.cat([h, region_of(x, model.n_parts).float().unsqueeze(1)], 1)

    def colour(self, h: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        region = h[:, -1].round().long()
        out = torch.zeros(h.shape[0], dirs.shape[-2], 3, device=h.device)
        for k, part in self.model.owned():
            rows = torch.nonzero(region == k).squeeze(1)
            if rows.numel():
                d = dirs if dirs.dim() == 2 else dirs[rows]
                out[rows] = NerfBakeField(part).colour(h[rows, :-1], d)
        return out


#: How the SH fit's view directions are chosen (:func:`fit_directions`).
DIRECTION_SETS = ("sphere", "seen", "cameras")


def fit_directions(kind: str, camera_centres: torch.Tensor, camera_forward: torch.Tensor,
                   n: int = DEFAULT_N_DIRECTIONS, max_angle_deg: float = 30.0):
    """The view directions of the SH fit, :func:`~ngp_cli.volrend.baked.bake_grid`'s ``directions``:

    * ``sphere``: ``n`` :func:`~ngp_cli.volrend.baked.fibonacci_directions` over the whole sphere (PlenOctrees'
      projection of a NeRF onto SH), (n, 3);
    * ``seen``: of 8n Fibonacci directions, those within ``max_angle_deg`` of a training camera's viewing axis
      (``camera_forward`` (K, 3), the cameras' -z), thinned to about ``n`` evenly spread ones, (≤ n, 3): the fit ignores
      the directions no training view looked along (where the network's colour was never constrained);
    * ``cameras``: per voxel, the directions from ``n`` training cameras (evenly chosen among ``camera_centres``
      (K, 3), ngp frame) to the voxel: a callable positions (T, 3) → (T, n, 3); the views the network was trained
      on, so the fit reproduces what it learnt and extrapolates smoothly elsewhere. With fewer than
      :data:`MIN_CAMERAS` cameras, ``sphere`` instead.

    Raises ValueError for another kind."""
    if kind == "sphere":
        return fibonacci_directions(n)
    if kind == "seen":
        dense = fibonacci_directions(8 * n)
        fwd = camera_forward.double() / camera_forward.double().norm(dim=-1, keepdim=True)
        near = (dense @ fwd.T).amax(1) >= math.cos(math.radians(max_angle_deg))
        chosen = dense[near]
        if chosen.shape[0] > n:
            chosen = chosen[torch.linspace(0, chosen.shape[0] - 1, n).round().long()]
        return chosen if chosen.shape[0] >= 16 else fibonacci_directions(n)
    if kind == "cameras":
        k = camera_centres.shape[0]
        if k < MIN_CAMERAS:
            return fibonacci_directions(n)
        centres = camera_centres.float()[torch.linspace(0, k - 1, min(n, k)).round().long()]

        def per_voxel(pos: torch.Tensor) -> torch.Tensor:
            d = pos.unsqueeze(1) - centres.to(pos.device).unsqueeze(0)
            return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)

        return per_voxel
    raise ValueError(f"directions must be one of {DIRECTION_SETS}, got {kind!r}")


def bake_run(problem, *, subdivisions: int = 4, sh_degree: int = 2, min_alpha: float = DEFAULT_MIN_ALPHA,
             max_memory: int = 2 << 30, directions: str = DEFAULT_DIRECTIONS, n_directions: int = DEFAULT_N_DIRECTIONS,
             source_run: str = "", source_step: int = 0, quiet: bool = False):
    """Bake ``problem``'s model (a loaded :class:`~ngp_cli.tasks.nerf.fit.NerfProblem`) over its occupancy grid:
    :func:`~ngp_cli.volrend.baked.bake_grid` with the run's marching settings and the dataset's frame recorded, the
    SH fit at ``n_directions`` directions of kind ``directions`` (:func:`fit_directions`, from the training cameras).
    Returns the :class:`~ngp_cli.volrend.baked.BakedGrid` (``meta`` with ``source_run``, ``source_step``,
    ``bake_s``, ``directions``). Raises ConfigError (the memory budget)."""
    model = problem.model
    from ngp_cli.tasks.nerf.partition import PartitionedNerf

    field = PartitionedBakeField(model) if isinstance(model, PartitionedNerf) else NerfBakeField(model)
    ds = problem.dataset
    c2w = ds.c2w.float().cpu()
    if directions == "cameras" and c2w.shape[0] < MIN_CAMERAS:
        directions = "sphere"  # what fit_directions falls back to
    dirs = fit_directions(directions, c2w[:, :, 3], -c2w[:, :, 2], n_directions)
    t0 = time.perf_counter()
    with torch.no_grad():
        grid = bake_grid(model.grid.occupancy, problem.aabb_scale, density_fn=field.density,
                         feature_fn=field.features, colour_fn=field.colour, directions=dirs,
                         subdivisions=subdivisions, sh_degree=sh_degree, min_alpha=min_alpha, max_memory=max_memory,
                         cone_angle=problem.cone_angle, near_distance=problem.cfg.nerf.near_distance,
                         scale=float(ds.scale), offset=tuple(float(v) for v in ds.offset),
                         log=None if quiet else info, progress=None if quiet else progress)
    grid.meta.update({"source_run": source_run, "source_step": int(source_step), "directions": directions,
                      "bake_s": round(time.perf_counter() - t0, 3)})
    return grid


def bake_command(task, run_path: Path, *, out: Path | None = None, subdivisions: int = 4, sh_degree: int = 2,
                 max_memory: str = "2GiB", min_alpha: float = DEFAULT_MIN_ALPHA, overwrite: bool = False,
                 backend: str | None = None, data: Path | None = None) -> None:
    """``ngp bake RUN [--out FILE] [--subdivisions S] [--sh-degree 1|2] [--max-memory SIZE] [--min-alpha A]
    [--overwrite] [--backend B] [--data PATH]``: bake the run's newest checkpoint (its EMA weights when it keeps one)
    into ``--out`` (default ``RUN/baked.safetensors``), written atomically; progress per stage on stderr, then the
    ``done`` line with ``n_blocks``, ``n_voxels``, ``bytes``, ``bake_s``.

    Raises UsageError (a bad --max-memory, an existing --out without --overwrite; before the run is loaded),
    ConfigError (--max-memory below the need: nothing is written), DataError (not a NeRF run, no checkpoint),
    OutputError (--out's folder missing or not writable).
    """
    from ngp_cli.tasks.nerf.evaluate import load_run

    budget = parse_bytes(max_memory)
    if subdivisions not in (1, 2, 3, 4):
        raise UsageError(f"--subdivisions must be 1..4, got {subdivisions}")
    if sh_degree not in (1, 2):
        raise UsageError(f"--sh-degree must be 1 or 2, got {sh_degree}")
    if not 0.0 <= min_alpha < 1.0:
        raise UsageError(f"--min-alpha must be in [0, 1), got {min_alpha:g}")
    target = Path(out).expanduser() if out is not None else RunDir.open(run_path).path / BAKED_FILE
    if target.is_dir():
        raise UsageError(f"--out {target}: a folder; give a file name such as baked.safetensors")
    if target.exists() and not overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it (the new file replaces it only once "
                         "complete)")
    if not target.parent.is_dir():
        raise OutputError(f"{target.parent}: no such folder for --out")
    run, problem, step = load_run(task, run_path, backend, data)
    info(f"baking {run.path} (step {step}) into {target}: {subdivisions}³ voxels per occupied cell, SH degree "
         f"{sh_degree}, at most {format_bytes(budget)}")
    grid = bake_run(problem, subdivisions=subdivisions, sh_degree=sh_degree, min_alpha=min_alpha, max_memory=budget,
                    source_run=str(run.path.resolve()), source_step=step)
    if grid.n_voxels == 0:
        warn(f"{run.path}: no voxel reaches alpha {min_alpha:g}: the baked grid is empty (renders the background)")
    size = save_baked(grid, target)
    meta: dict[str, Any] = grid.meta
    info(f"wrote {target}: {grid.n_blocks:,} blocks, {grid.n_voxels:,} voxels, {format_bytes(size)} "
         f"({meta['bake_s']:.1f} s)")
    emit("done", run_dir=str(run.path), step=step, metrics={
        "n_blocks": grid.n_blocks, "n_voxels": grid.n_voxels, "bytes": size, "bake_s": meta["bake_s"],
        "occupied_cells": meta["occupied_cells"], "subdivisions": subdivisions, "sh_degree": sh_degree,
        "min_alpha": min_alpha, "density_s": meta["density_s"], "colour_s": meta["colour_s"],
        "peak_rss_mib": round(peak_rss_mib(), 1)}, artifacts={"baked": str(target)})

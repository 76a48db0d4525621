"""Rendering and scoring dataset views of a NeRF problem: PSNR/SSIM per view against its photo (the periodic and final
evaluations, ``ngp eval``), and the depth, accumulation and normal maps of a view (``ngp render --output``).

Metrics are computed on 8-bit-range float images in [0, 1]: PSNR = -10 log10(MSE) per view, averaged over views (the
NeRF papers' convention), and SSIM with an 11×11 Gaussian window, σ = 1.5 (scikit-image, as the NeRF evaluation
code; null for images under 11 pixels a side, which no full window fits). Views with alpha (NeRF-synthetic) are
composited on white, the rendering on the same white background.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ngp_cli.console import info
from ngp_cli.images import write_image
from ngp_cli.metrics import SSIM_MIN_SIDE, mse_to_psnr, ssim
from ngp_cli.tasks.nerf.data import NerfDataset
from ngp_cli.volrend.render import render_ray_maps, render_rays

__all__ = ["VIEW_MAPS", "evaluate_views", "format_ssim", "render_view", "render_view_map"]

#: The outputs of :func:`render_view_map` (``ngp render --output`` on NeRF runs).
VIEW_MAPS = ("rgb", "depth", "accumulation", "normals")


def _rays_and_grid(problem, origins: torch.Tensor, directions: torch.Tensor) -> tuple:
    """The positional arguments of the volrend renderers for ``problem``: field, rays on its device, grid, box."""
    dev = problem.device
    return problem.field, origins.to(dev), directions.to(dev), problem.model.grid.occupancy, problem.aabb_scale


def _marching(problem) -> dict:
    """The marching keywords of the volrend renderers, as ``problem`` trains with them."""
    return {"cone_angle": problem.cone_angle, "near_distance": problem.cfg.nerf.near_distance,
            "chunk_rays": problem.cfg.nerf.eval_chunk_rays, "kernel_target": problem.kernel_target}


def render_view(problem, origins: torch.Tensor, directions: torch.Tensor, height: int, width: int,
                background: tuple[float, float, float] | None) -> np.ndarray:
    """Render (H·W) rays of one view with ``problem``'s model and occupancy grid → (H, W, 3) float32 in [0, 1]."""
    dev = problem.device
    bg = torch.tensor(background, dtype=torch.float32, device=dev) if background is not None else None
    rgb = render_rays(*_rays_and_grid(problem, origins, directions), background=bg, **_marching(problem))
    return rgb.clamp(0.0, 1.0).reshape(height, width, 3).cpu().numpy()


def render_view_map(problem, origins: torch.Tensor, directions: torch.Tensor, height: int, width: int,
                    background: tuple[float, float, float] | None, output: str) -> np.ndarray:
    """One map of a view of (H·W) rays (ngp frame, unit directions), with ``problem``'s model and occupancy grid:

    * ``rgb``: (H, W, 3) float32 in [0, 1], exactly :func:`render_view`;
    * ``depth``: (H, W) float32, the expected distance along each ray ``Σ w_i t_i`` in the dataset's world units (the
      ngp frame's distances divided by the dataset's ``scale``; not the z-depth): 0 where the ray meets nothing, and
      a fraction of the surface's distance on partly covered pixels;
    * ``accumulation``: (H, W) float32 opacity ``Σ w_i`` in [0, 1];
    * ``normals``: (H, W, 3) float32, the composited unit normals ``-∇σ / |∇σ|`` normalised again (unit vectors in the
      dataset's world axes, which the ngp frame shares; zero where nothing was hit).

    Source: instant-ngp's Depth / Normals render modes (testbed_nerf.cu), composited with the colour's weights
    (:func:`ngp_cli.volrend.render.render_ray_maps`). Raises ``ValueError`` for another ``output``.
    """
    if output == "rgb":
        return render_view(problem, origins, directions, height, width, background)
    if output not in VIEW_MAPS:
        raise ValueError(f"unknown output {output!r}; choose from {VIEW_MAPS}")
    key = {"depth": "depth", "accumulation": "opacity", "normals": "normals"}[output]
    result = render_ray_maps(*_rays_and_grid(problem, origins, directions), background=None, maps=(key,),
                             **_marching(problem))[key]
    if output == "depth":
        result = result / float(problem.dataset.scale)
    elif output == "normals":
        norm = torch.linalg.vector_norm(result, dim=-1, keepdim=True)
        result = torch.where(norm > 1e-12, result / norm.clamp_min(1e-12), torch.zeros_like(result))
    else:
        result = result.clamp(0.0, 1.0)
    shape = (height, width, 3) if output == "normals" else (height, width)
    return result.reshape(shape).float().cpu().numpy()


def evaluate_views(problem, dataset: NerfDataset, views: Iterable[int], *, with_ssim: bool = True,
                   renders_dir: Path | None = None, n_renders: int = 0,
                   on_view: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """PSNR (and SSIM) of the rendering of each view in ``views`` against its photo.

    Views with alpha are compared on white. The first ``n_renders`` renderings are written to ``renders_dir`` as
    ``<split>_<name>.png``. ``on_view(row)`` is called as each view finishes (per-view output, progress).
    Returns ``{"psnr": mean, "ssim": mean or None, "views": [...], "eval_s": seconds}``; SSIM is None without
    ``with_ssim`` and for images under :data:`~ngp_cli.metrics.SSIM_MIN_SIDE` pixels a side.
    """
    t0 = time.perf_counter()
    background = (1.0, 1.0, 1.0) if dataset.white_background else (0.0, 0.0, 0.0)
    rows = []
    for k, i in enumerate(views):
        origins, directions = dataset.image_rays(i)
        pred = render_view(problem, origins, directions, dataset.height, dataset.width, background)
        target = dataset.image_float(i, background).numpy()
        mse = float(np.mean((pred - target) ** 2))
        row = {"view": i, "name": dataset.file_paths[i].stem, "psnr": mse_to_psnr(mse), "mse": mse}
        if with_ssim:
            row["ssim"] = ssim(pred, target)
        rows.append(row)
        if renders_dir is not None and k < n_renders:
            write_image(renders_dir / f"{dataset.split}_{dataset.file_paths[i].stem}.png",
                        (pred * 255.0 + 0.5).astype(np.uint8))
        if on_view is not None:
            on_view(row)
    psnr = float(np.mean([r["psnr"] for r in rows])) if rows else math.nan
    ssims = [r["ssim"] for r in rows if r.get("ssim") is not None]
    mean_ssim = float(np.mean(ssims)) if ssims else None
    if with_ssim and rows and not ssims:
        info(f"SSIM not computed: the {dataset.width}x{dataset.height} images are smaller than its "
             f"{SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} window (reported as null)")
    return {"psnr": psnr, "ssim": mean_ssim, "views": rows, "eval_s": round(time.perf_counter() - t0, 3)}


def format_ssim(value: float | None) -> str:
    """SSIM for a log line: 4 decimals, or ``n/a`` when it was not computed."""
    return "n/a" if value is None else f"{value:.4f}"

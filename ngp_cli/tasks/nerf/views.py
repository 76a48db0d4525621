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
from ngp_cli.distributed import World, gather_objects
from ngp_cli.images import write_image
from ngp_cli.metrics import SSIM_MIN_SIDE, mse_to_psnr, ssim
from ngp_cli.tasks.nerf.data import NerfDataset
from ngp_cli.volrend.constants import MIN_TRANSMITTANCE
from ngp_cli.volrend.render import render_ray_maps

__all__ = ["VIEW_MAPS", "baked_frame_rays", "camera_rays", "evaluate_views", "evaluate_views_baked", "format_ssim",
           "render_camera", "render_view", "render_view_baked", "render_view_map"]

#: The outputs of :func:`render_view_map` (``ngp render --output`` on NeRF runs).
VIEW_MAPS = ("rgb", "depth", "accumulation", "normals")


def _render_args(problem, origins: torch.Tensor, directions: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
    """The arguments of the volrend renderers for ``problem``: positional (field, rays on its device, grid, box) and
    keyword (``problem.render_options()``, the per-ray direction encoding)."""
    dev = problem.device
    field, ray_features = problem.render_field()
    args = (field, origins.to(dev), directions.to(dev), problem.model.grid.occupancy, problem.aabb_scale)
    return args, {**problem.render_options(), "ray_features": ray_features}


def _ray_maps(problem, origins: torch.Tensor, directions: torch.Tensor, maps: tuple[str, ...],
              background: tuple[float, float, float] | None,
              min_transmittance: float = MIN_TRANSMITTANCE) -> dict[str, torch.Tensor]:
    """:func:`~ngp_cli.volrend.render.render_ray_maps` of ``problem``'s rays, or, for a spatially partitioned model
    spread over processes, its ``render_segments`` (every process renders its part's segments of the same rays)."""
    bg = torch.tensor(background, dtype=torch.float32, device=problem.device) if background is not None else None
    segments = getattr(problem, "render_segments", None)
    if segments is not None:
        return segments(origins, directions, maps, bg, min_transmittance=min_transmittance)
    args, kwargs = _render_args(problem, origins, directions)
    return render_ray_maps(*args, background=bg, maps=maps, min_transmittance=min_transmittance, **kwargs)


def render_view(problem, origins: torch.Tensor, directions: torch.Tensor, height: int, width: int,
                background: tuple[float, float, float] | None,
                min_transmittance: float = MIN_TRANSMITTANCE) -> np.ndarray:
    """Render (H·W) rays of one view with ``problem``'s model and occupancy grid → (H, W, 3) float32 in [0, 1].
    Rays stop once their transmittance falls below ``min_transmittance`` (1e-4, the evaluation's; ``ngp render``
    passes ``nerf.render_min_transmittance``)."""
    rgb = _ray_maps(problem, origins, directions, ("rgb",), background, min_transmittance)["rgb"]
    return rgb.clamp(0.0, 1.0).reshape(height, width, 3).cpu().numpy()


def render_view_map(problem, origins: torch.Tensor, directions: torch.Tensor, height: int, width: int,
                    background: tuple[float, float, float] | None, output: str,
                    min_transmittance: float = MIN_TRANSMITTANCE) -> np.ndarray:
    """One map of a view of (H·W) rays (ngp frame, unit directions), with ``problem``'s model and occupancy grid,
    rays stopping below ``min_transmittance`` as in :func:`render_view`:

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
        return render_view(problem, origins, directions, height, width, background, min_transmittance)
    if output not in VIEW_MAPS:
        raise ValueError(f"unknown output {output!r}; choose from {VIEW_MAPS}")
    key = {"depth": "depth", "accumulation": "opacity", "normals": "normals"}[output]
    result = _ray_maps(problem, origins, directions, (key,), None, min_transmittance)[key]
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
                   on_view: Callable[[dict[str, Any]], None] | None = None,
                   world: World | None = None) -> dict[str, Any] | None:
    """PSNR (and SSIM) of the rendering of each view in ``views`` against its photo.

    Views with alpha are compared on white. The first ``n_renders`` renderings are written to ``renders_dir`` as
    ``<split>_<name>.png``. ``on_view(row)`` is called as each view finishes (per-view output, progress).
    Returns ``{"psnr": mean, "ssim": mean or None, "views": [...], "eval_s": seconds}``; SSIM is None without
    ``with_ssim`` and for images under :data:`~ngp_cli.metrics.SSIM_MIN_SIDE` pixels a side.

    With a data-parallel ``world`` (:mod:`ngp_cli.distributed`; every process calls this), process ``r`` renders
    views ``r, r + W, ...`` of ``views``; rank 0 gathers the rows (and the renderings to write), writes the renderings
    and returns the result in ``views`` order; the other processes return None.
    """
    t0 = time.perf_counter()
    views = list(views)
    world = world or World()
    background = (1.0, 1.0, 1.0) if dataset.white_background else (0.0, 0.0, 0.0)
    rows: list[tuple[int, dict[str, Any]]] = []
    images: dict[int, np.ndarray] = {}
    for k in range(world.rank, len(views), world.size):
        i = views[k]
        origins, directions = dataset.image_rays(i)
        pred = render_view(problem, origins, directions, dataset.height, dataset.width, background)
        target = dataset.image_float(i, background).numpy()
        mse = float(np.mean((pred - target) ** 2))
        row = {"view": i, "name": dataset.file_paths[i].stem, "psnr": mse_to_psnr(mse), "mse": mse}
        if with_ssim:
            row["ssim"] = ssim(pred, target)
        rows.append((k, row))
        if renders_dir is not None and k < n_renders:
            images[k] = (pred * 255.0 + 0.5).astype(np.uint8)
        if on_view is not None:
            on_view(row)
    if world.distributed:
        gathered = gather_objects((rows, images), world)
        if not world.is_main:
            return None
        rows = sorted((r for part_rows, _ in gathered for r in part_rows), key=lambda kr: kr[0])
        images = {k: img for _, part_images in gathered for k, img in part_images.items()}
    for k in sorted(images):
        write_image(renders_dir / f"{dataset.split}_{dataset.file_paths[views[k]].stem}.png", images[k])
    rows = [row for _, row in rows]
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


# ---------------------------------------------------------------------------------------------------------------------
# The baked branch (``ngp render/eval RUN --baked FILE``): the same views from a baked grid (ngp_cli.volrend.baked)


def camera_rays(c2w: torch.Tensor, focal: float, width: int, height: int,
                rows: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rays of a pinhole camera, one per pixel, row-major: ``c2w`` (3, 4) OpenGL camera-to-world in the ngp frame,
    ``focal`` in pixels (square pixels), the principal point at the image centre; origins and unit directions (N, 3)
    float32 (:func:`~ngp_cli.tasks.nerf.cameras.generate_rays`). ``rows`` ``(top, count)``: only those rows of the
    width × height image (N = count · width); None: all of them."""
    from ngp_cli.tasks.nerf.cameras import generate_rays, pixel_grid

    pixels = pixel_grid(width, height)
    if rows is not None:
        pixels = pixels[rows[0] * width:(rows[0] + rows[1]) * width]
    intr = torch.tensor([[focal, focal, width / 2.0, height / 2.0]], dtype=torch.float32).expand(pixels.shape[0], 4)
    return generate_rays(c2w.reshape(1, 3, 4).expand(pixels.shape[0], 3, 4), intr, pixels, None)


def render_camera(problem, c2w: torch.Tensor, focal: float, width: int, height: int, output: str = "rgb", *,
                  baked=None, min_transmittance: float = MIN_TRANSMITTANCE,
                  rows: tuple[int, int] | None = None) -> np.ndarray:
    """One map of the view of a pinhole camera (:func:`camera_rays`), as ``ngp render`` renders its frames: from the
    baked grid ``baked`` when given (:func:`render_view_baked`), else the network (:func:`render_view_map`, rays
    stopping below ``min_transmittance``), on the dataset's background. Shapes as :func:`render_view_map`, with
    ``rows`` ``(top, count)`` giving only those rows of the image (count × width). Raises ``ValueError`` for an output
    the source cannot give."""
    origins, directions = camera_rays(c2w, focal, width, height, rows)
    ds = problem.dataset
    background = (1.0, 1.0, 1.0) if ds.white_background else (0.0, 0.0, 0.0)
    h = height if rows is None else rows[1]
    if baked is not None:
        return render_view_baked(baked, origins, directions, h, width, background, output, scale=ds.scale,
                                 offset=ds.offset, kernel_target=problem.kernel_target)
    return render_view_map(problem, origins, directions, h, width, background, output, min_transmittance)


def baked_frame_rays(baked, scale: float, offset, origins: torch.Tensor,
                     directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays (R, 3) of a dataset's ngp frame (``p = p_world · scale + offset``) in the frame of ``baked`` (a
    :class:`~ngp_cli.volrend.baked.BakedGrid`, which records its dataset's scale and offset), on the grid's device:
    unchanged when the two agree; else origins mapped through the world frame (directions are unit vectors of the
    same world axes either way)."""
    dev = baked.device
    origins, directions = origins.to(dev, torch.float32), directions.to(dev, torch.float32)
    same = abs(float(scale) - baked.scale) <= 1e-9 * baked.scale and all(
        abs(float(a) - b) <= 1e-9 for a, b in zip(offset, baked.offset, strict=True))
    if not same:
        off = torch.tensor([float(v) for v in offset], dtype=torch.float64, device=dev)
        boff = torch.tensor(baked.offset, dtype=torch.float64, device=dev)
        origins = ((origins.double() - off) / float(scale) * baked.scale + boff).float()
    return origins, directions


def render_view_baked(baked, origins: torch.Tensor, directions: torch.Tensor, height: int, width: int,
                      background: tuple[float, float, float] | None, output: str = "rgb", *, scale: float, offset,
                      kernel_target: str | None) -> np.ndarray:
    """One map of a view of (H·W) rays (a dataset's ngp frame of ``scale``/``offset``, unit directions) rendered from
    the baked grid ``baked`` (:func:`ngp_cli.volrend.baked.render_baked`: the ``baked_render`` kernel on
    ``kernel_target`` "cpu"/"cuda", the torch reference for None), as :func:`render_view_map` gives it from the
    network: ``rgb`` (H, W, 3) in [0, 1] on ``background``; ``depth`` (H, W), ``Σ w_i t_i`` in the dataset's world
    units; ``accumulation`` (H, W) opacity. Raises ``ValueError`` for another output (``normals``: the grid stores no
    gradients)."""
    from ngp_cli.volrend.baked import render_baked

    if output not in ("rgb", "depth", "accumulation"):
        raise ValueError(f"output {output!r} is not available from a baked grid; choose rgb, depth or accumulation")
    o, d = baked_frame_rays(baked, scale, offset, origins, directions)
    bg = None
    if output == "rgb" and background is not None:
        bg = torch.tensor(background, dtype=torch.float32, device=baked.device)
    maps = render_baked(baked, o, d, bg, kernel_target=kernel_target)
    if output == "rgb":
        return maps["rgb"].clamp(0.0, 1.0).reshape(height, width, 3).cpu().numpy()
    if output == "depth":
        return (maps["depth"] / baked.scale).reshape(height, width).float().cpu().numpy()
    return maps["opacity"].clamp(0.0, 1.0).reshape(height, width).float().cpu().numpy()


def evaluate_views_baked(problem, baked, dataset: NerfDataset, views: Iterable[int], *, with_ssim: bool = True,
                         on_view: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """PSNR (and SSIM) of each view in ``views`` rendered from the baked grid ``baked`` *and* from ``problem``'s network
    (:func:`render_view`), against its photo (views with alpha on white), with each render's wall time. ``on_view(row)``
    as each view finishes. Returns ``{"psnr_baked", "psnr_network", "psnr_loss_db" (network - baked), "ssim_baked",
    "ssim_network", "views": [...], "baked_s", "network_s" (rendering seconds summed over the views), "eval_s"}``;
    SSIMs None as in :func:`evaluate_views`."""
    t0 = time.perf_counter()
    background = (1.0, 1.0, 1.0) if dataset.white_background else (0.0, 0.0, 0.0)
    rows = []
    baked_s = network_s = 0.0
    for i in views:
        origins, directions = dataset.image_rays(i)
        t = time.perf_counter()
        net = render_view(problem, origins, directions, dataset.height, dataset.width, background)
        t_net = time.perf_counter() - t
        t = time.perf_counter()
        bak = render_view_baked(baked, origins, directions, dataset.height, dataset.width, background,
                                scale=dataset.scale, offset=dataset.offset, kernel_target=problem.kernel_target)
        t_bak = time.perf_counter() - t
        network_s, baked_s = network_s + t_net, baked_s + t_bak
        target = dataset.image_float(i, background).numpy()
        mse_net = float(np.mean((net - target) ** 2))
        mse_bak = float(np.mean((bak - target) ** 2))
        row = {"view": i, "name": dataset.file_paths[i].stem, "psnr_baked": mse_to_psnr(mse_bak),
               "psnr_network": mse_to_psnr(mse_net), "mse_baked": mse_bak, "mse_network": mse_net,
               "baked_s": round(t_bak, 4), "network_s": round(t_net, 4)}
        if with_ssim:
            row["ssim_baked"], row["ssim_network"] = ssim(bak, target), ssim(net, target)
        rows.append(row)
        if on_view is not None:
            on_view(row)

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    psnr_baked, psnr_network = mean("psnr_baked"), mean("psnr_network")
    loss = psnr_network - psnr_baked if psnr_baked is not None and psnr_network is not None else None
    return {"psnr_baked": psnr_baked, "psnr_network": psnr_network, "psnr_loss_db": loss,
            "ssim_baked": mean("ssim_baked"), "ssim_network": mean("ssim_network"), "views": rows,
            "baked_s": round(baked_s, 3), "network_s": round(network_s, 3),
            "eval_s": round(time.perf_counter() - t0, 3)}

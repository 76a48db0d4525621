"""Render benchmarks of a trained NeRF run for ``ngp bench --run RUN`` (issue 17): the time to render one held-out
view on a backend, by the inference path of :func:`ngp_cli.volrend.render.render_ray_maps`, by the schedule it
replaced, and (with ``--baked FILE``) from a baked file.

* ``render_network``: :func:`ngp_cli.tasks.nerf.views.render_view` as ``ngp eval`` runs it (rays stop at
  transmittance 1e-4).
* ``render_frame``: the same as ``ngp render`` runs it, rays stopping at the run's ``nerf.render_min_transmittance``
  (0.01 by default, instant-ngp's for rendered frames).
* ``render_network_legacy``: the same renderer with the schedule of ngp 0.1 before issue 17 (64 samples per live
  ray per round, 8192-ray chunks), so one ``ngp bench`` run measures the speed-up on the same checkpoint.
* ``render_network_ingp``: ``render_network`` with instant-ngp's round lengths alone (``NerfTracer::trace``: 1 to 8
  samples per live ray, a round within one sample per chunk ray), without the longer rounds that
  :func:`ngp_cli.volrend.render.round_steps` gives rays that end slowly.
* ``render_baked``: the baked file's renderer (:mod:`ngp_cli.volrend.baked`).

The figures are per view: ``batch`` is the view's pixel count, so the bench's ns per element is milliseconds per
megapixel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

#: ngp 0.1's evaluation schedule (before issue 17): fixed 64-sample rounds over chunks of 8192 rays.
LEGACY_SCHEDULE = {"steps_per_round": (64, 64), "chunk_rays": 8192}
#: instant-ngp's inference schedule (MIN/MAX_STEPS_INBETWEEN_COMPACTION 1 and 8, no end-rate term).
INGP_SCHEDULE = {"steps_per_round": (1, 8), "round_overhead": 0.0}


def render_benchmarks(task, run_path: Path, backend: str, which: list[str], baked: Path | None = None,
                      data: Path | None = None) -> tuple[Any, list[tuple[str, int, Callable[[], Any]]]]:
    """The render benchmarks in ``which`` (names of :data:`ngp_cli.bench.RENDER_BENCHMARKS`) of the NeRF run ``run_path`` on
    ``backend`` ("torch", "cpu", "cuda"), each as ``(name, pixels, fn)`` where ``fn()`` renders the first view of the
    run's held-out split (its training split if it has none) at the dataset's resolution; and the device they run on.
    ``render_baked`` needs ``baked``; ``data`` replaces the run's recorded dataset path (``--data``, as
    :func:`ngp_cli.pipeline.load_trained` takes it). Raises what :func:`~ngp_cli.pipeline.load_trained` raises, and
    DataError for an unreadable baked file."""
    import torch

    from ngp_cli.errors import DataError
    from ngp_cli.pipeline import load_trained
    from ngp_cli.tasks.nerf.data import load_split
    from ngp_cli.tasks.nerf.views import _render_args, render_view
    from ngp_cli.volrend.render import render_rays

    _, problem, _ = load_trained(task, run_path, backend, data)
    try:
        dataset = load_split(problem.cfg, problem.cfg.nerf.eval_split)
    except DataError:
        dataset = problem.dataset
    origins, directions = dataset.image_rays(0)
    h, w = dataset.height, dataset.width
    white = (1.0, 1.0, 1.0) if dataset.white_background else (0.0, 0.0, 0.0)
    bg = torch.tensor(white, dtype=torch.float32, device=problem.device)
    out: list[tuple[str, int, Callable[[], Any]]] = []
    if "render_network" in which:
        out.append(("render_network", h * w, lambda: render_view(problem, origins, directions, h, w, white)))
    if "render_frame" in which:
        t_min = problem.cfg.nerf.render_min_transmittance
        out.append(("render_frame", h * w, lambda: render_view(problem, origins, directions, h, w, white, t_min)))
    if "render_network_legacy" in which:
        args, kwargs = _render_args(problem, origins, directions)
        legacy = {**kwargs, **LEGACY_SCHEDULE}
        out.append(("render_network_legacy", h * w, lambda: render_rays(*args, background=bg, **legacy)))
    if "render_network_ingp" in which:
        args, kwargs = _render_args(problem, origins, directions)
        ingp = {**kwargs, **INGP_SCHEDULE}
        out.append(("render_network_ingp", h * w, lambda: render_rays(*args, background=bg, **ingp)))
    if "render_baked" in which and baked is not None:
        from ngp_cli.tasks.nerf.views import render_view_baked
        from ngp_cli.volrend.baked import load_baked

        grid = load_baked(baked, device=problem.device)
        ds = problem.dataset
        out.append(("render_baked", h * w, lambda: render_view_baked(
            grid, origins, directions, h, w, white, scale=ds.scale, offset=ds.offset,
            kernel_target=problem.kernel_target)))
    return problem.device, out

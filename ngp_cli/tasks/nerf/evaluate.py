"""Evaluation and rendering of NeRF runs: held-out PSNR/SSIM per view (``ngp eval``), the final evaluation of
``ngp train-nerf``, and novel-view videos or frames (``ngp render``). The per-view rendering and metrics are in
:mod:`ngp_cli.tasks.nerf.views`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ngp_cli.commands import parse_resolution
from ngp_cli.console import emit, info, progress, set_quiet, to_json, warn
from ngp_cli.distributed import current_world, init_world, leave_quietly, pin_local_gpu, shared_tiles, shutdown_world
from ngp_cli.errors import DataError, UsageError
from ngp_cli.metrics import peak_rss_mib
from ngp_cli.pipeline import load_trained
from ngp_cli.runs import RunDir, atomic_write_text
from ngp_cli.tasks.nerf.data import load_split
from ngp_cli.tasks.nerf.views import evaluate_views, format_ssim, render_view


def _write_eval_json(run: RunDir, split: str, result: dict[str, Any], step: int) -> Path:
    path = run.path / f"eval_{split}.json"
    data = {"split": split, "step": step, "n_views": len(result["views"]), "psnr": result["psnr"],
            "ssim": result["ssim"], "eval_s": result["eval_s"], "views": result["views"]}
    atomic_write_text(path, to_json(data) + "\n")  # NaN/inf (a perfect view) become null
    return path


def final_views(n_views: int, wanted: int | None) -> list[int]:
    """The held-out views the final evaluation renders for ``train.final_eval_views = wanted``: all ``n_views`` for
    None (or ``wanted >= n_views``), none for 0, else ``wanted`` views evenly spaced over the split (the first and
    the last included), so a subset still spans an orbit-like val set instead of one arc of it."""
    if wanted is None or wanted >= n_views:
        return list(range(n_views))
    if wanted <= 0:
        return []
    if wanted == 1:
        return [0]
    return [int(v) for v in np.linspace(0, n_views - 1, wanted).round().astype(int)]


def final_evaluation(problem, run: RunDir, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate the held-out split after training, as ``train.final_eval_views`` says (:func:`final_views`), write
    eval_<split>.json and renders of the first ``nerf.render_views`` evaluated views, with progress on stderr.

    In a data-parallel run every process calls this and renders its share of the views; rank 0 writes and returns
    the results, the others return ``({}, {})``.

    Returns ``(metrics, artifacts)``. Without held-out views, or with ``train.final_eval_views = 0``, psnr and ssim
    are None, ``n_views`` is 0 and ``eval_skipped`` says why (one line on stderr too)."""
    cfg = problem.cfg
    split = cfg.nerf.eval_split
    skipped = {"psnr": None, "ssim": None, "n_views": 0, "split": split}
    if cfg.train.final_eval_views == 0:
        reason = "final evaluation skipped (train.final_eval_views=0)"
        info(reason)
        return {**skipped, "eval_skipped": reason}, {}
    try:
        dataset = load_split(cfg, split)
    except DataError as err:
        info(f"no held-out evaluation: {err}")
        return {**skipped, "eval_skipped": f"no held-out views in split '{split}'"}, {}
    views = final_views(len(dataset), cfg.train.final_eval_views)
    world = current_world()  # data parallel: the views are shared out, rank 0 writes (evaluate_views)
    # A spatially partitioned run's processes render every view together, each its part's segments.
    together = getattr(problem, "render_segments", None) is not None
    with progress(len(views), f"evaluating {split}") as advance, torch.no_grad():
        # (data parallel: every process renders its views' images and rank 0 writes them; together: rank 0's copy)
        renders = run.renders_dir if world.is_main or not together else None
        result = evaluate_views(problem, dataset, views, renders_dir=renders,
                                n_renders=cfg.nerf.render_views, on_view=lambda row: advance(),
                                world=None if together else world)
    if result is None or not world.is_main:
        return {}, {}
    path = _write_eval_json(run, split, result, step)
    metrics = {"psnr": result["psnr"], "ssim": result["ssim"], "n_views": len(result["views"]), "split": split,
               "eval_s": result["eval_s"]}
    if len(views) < len(dataset):
        metrics["split_views"] = len(dataset)
    return metrics, {"eval": str(path), "renders": str(run.renders_dir)}


# ---------------------------------------------------------------------------------------------------------------------
# Loading a trained run


def load_run(task, run_path: Path, backend: str | None, data: Path | None = None):
    """A NeRF run's problem (its training split, the model with the newest checkpoint's weights) and step:
    :func:`ngp_cli.pipeline.load_trained`."""
    run, problem, meta = load_trained(task, run_path, backend, data)
    return run, problem, int(meta["step"])


def _baked_on(grid, baked: Path, run: RunDir, step: int, problem):
    """The baked grid ``grid`` (read from ``--baked FILE``) on ``problem``'s device, with a warning line when it was
    baked from another run or another step of this one (a PSNR loss is then not against the network it came from)."""
    grid = grid.to(problem.device)
    source, source_step = grid.meta.get("source_run"), grid.meta.get("source_step")
    if source and Path(source) != run.path.resolve():
        warn(f"{baked} was baked from {source}, not {run.path}")
    elif source_step is not None and source_step != step:
        warn(f"{baked} was baked from step {source_step} of {run.path}, whose newest checkpoint is step {step}")
    return grid


def _eval_baked(run: RunDir, problem, dataset, split: str, step: int, baked: Path, grid) -> None:
    """``ngp eval RUN --baked FILE``: the split rendered from the baked grid and from the network, both scored; written
    to ``RUN/eval_<split>_baked.json`` (the network's eval file is left alone) and the ``done`` line."""
    from ngp_cli.tasks.nerf.views import evaluate_views_baked

    info(f"evaluating {baked} ({grid.n_voxels:,} voxels) against the network of {run.path} (step {step}) on "
         f"{len(dataset)} {split} views")
    with progress(len(dataset), f"evaluating {split} (baked and network)") as advance, torch.no_grad():
        def on_view(row: dict[str, Any]) -> None:
            emit("view", split=split, **row)
            advance()

        result = evaluate_views_baked(problem, grid, dataset, range(len(dataset)), on_view=on_view)
    n = len(result["views"])
    metrics = {k: result[k] for k in ("psnr_baked", "psnr_network", "psnr_loss_db", "ssim_baked", "ssim_network",
                                      "baked_s", "network_s", "eval_s")}
    metrics.update({"n_views": n, "baked_ms_per_view": round(1000 * result["baked_s"] / max(1, n), 2),
                    "network_ms_per_view": round(1000 * result["network_s"] / max(1, n), 2)})
    path = run.path / f"eval_{split}_baked.json"
    atomic_write_text(path, to_json({"split": split, "step": step, "baked": str(baked), "n_voxels": grid.n_voxels,
                                     **metrics, "views": result["views"]}) + "\n")
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    info(f"{split}: baked PSNR {fmt(result['psnr_baked'])} dB, network {fmt(result['psnr_network'])} dB (loss "
         f"{fmt(result['psnr_loss_db'])} dB) over {n} views; {metrics['baked_ms_per_view']:.0f} ms per baked view, "
         f"{metrics['network_ms_per_view']:.0f} ms per network view; {path}")
    emit("done", run_dir=str(run.path), step=step, split=split, metrics=metrics,
         artifacts={"eval": str(path), "baked": str(baked)})


def eval_command(task, run_path: Path, *, split: str | None = None, baked: Path | None = None,
                 backend: str | None = None, data: Path | None = None, nproc: int = 1) -> None:
    """``ngp eval RUN [--split val|test] [--baked FILE] [--data PATH]``: PSNR and SSIM per view, a ``view`` line as
    each view finishes (with progress on stderr), their means written to ``RUN/eval_<split>.json`` and the ``done``
    line. With ``--baked FILE`` (``ngp bake``'s grid) every view is rendered from the grid and from the network:
    ``psnr_baked``, ``psnr_network`` and ``psnr_loss_db`` (their difference) per view and in the mean, written to
    ``RUN/eval_<split>_baked.json``. With ``--nproc N`` (or under torchrun) the views are shared out over N
    processes (:func:`~ngp_cli.tasks.nerf.views.evaluate_views`); rank 0 prints and writes. Raises UsageError (bad
    split, ``--baked`` with several processes), DataError (no such split, dataset gone, see
    :func:`ngp_cli.commands.relocated_input`; a bad or newer baked file)."""
    if split is not None and split not in ("val", "test", "train"):
        raise UsageError(f"--split must be val, test or train, got '{split}'")
    from ngp_cli.launch import relaunched, under_launcher

    if nproc > 1 and baked is not None and not under_launcher():
        raise UsageError("--baked renders in one process: drop --nproc")
    if relaunched(nproc):
        return
    pin_local_gpu()
    grid = None
    if baked is not None:
        from ngp_cli.volrend.baked import load_baked

        grid = load_baked(baked)  # a bad or newer file is refused before the run is loaded
    run, problem, step = load_run(task, run_path, backend, data)
    world = init_world(problem.device.type, problem.cfg.distributed.timeout_s)
    if not world.is_main:
        set_quiet(True)
    if baked is not None and world.distributed:
        raise UsageError("--baked renders in one process: run it without torchrun")
    split = split or problem.cfg.nerf.eval_split
    dataset = load_split(problem.cfg, split)
    if baked is not None:
        _eval_baked(run, problem, dataset, split, step, baked, _baked_on(grid, baked, run, step, problem))
        return
    info(f"evaluating {run.path} (step {step}) on {len(dataset)} {split} views"
         + (f" in {world.size} processes" if world.distributed else ""))
    with progress(len(dataset), f"evaluating {split}") as advance, torch.no_grad():
        def on_view(row: dict[str, Any]) -> None:
            if not world.distributed:  # several processes: rank 0 emits every view once they are gathered
                emit("view", split=split, **row)
            advance()

        result = evaluate_views(problem, dataset, range(len(dataset)), on_view=on_view, world=world)
    if result is None:  # rank > 0: its views went to rank 0
        leave_quietly()
    if world.distributed:
        for row in result["views"]:
            emit("view", split=split, **row)
    shutdown_world()
    path = _write_eval_json(run, split, result, step)
    info(f"{split}: PSNR {result['psnr']:.2f} dB, SSIM {format_ssim(result['ssim'])} over {len(result['views'])} "
         f"views ({result['eval_s']:.1f} s); {path}")
    emit("done", run_dir=str(run.path), step=step, split=split,
         metrics={"psnr": result["psnr"], "ssim": result["ssim"], "n_views": len(result["views"]),
                  "eval_s": result["eval_s"]}, artifacts={"eval": str(path)})


def render_command(task, run_path: Path, *, camera_path: Path | None = None,
                   dataparser_transforms: Path | None = None, seconds: float | None = None, orbit: int | None = None,
                   resolution: str | None = None, out: Path | None = None, fps: int | None = None,
                   output: str = "rgb", baked: Path | None = None, backend: str | None = None,
                   data: Path | None = None, nproc: int = 1, min_transmittance: float | None = None) -> None:
    """``ngp render RUN (--camera-path FILE | --orbit N) [--output rgb|depth|accumulation|normals] [--resolution WxH]
    [--fps F] [--seconds S] [--dataparser-transforms FILE] [--out video.mp4|frames/] [--baked FILE] [--data PATH]
    [--min-transmittance T]``, with progress per frame written. Network frames stop a ray once its transmittance
    falls below ``T`` (default: the run's ``nerf.render_min_transmittance``, 0.01, instant-ngp's testbed default for
    rendered frames; 1e-4 renders exactly what ``ngp eval`` scores). With ``--baked FILE`` (``ngp bake``'s grid)
    the frames come from the grid (:func:`ngp_cli.tasks.nerf.views.render_view_baked`; rgb, depth or
    accumulation), the run giving the cameras, and the default output names end in ``_baked``.

    The camera path (:func:`ngp_cli.tasks.nerf.camera_path.load_camera_path`: transforms.json-style frames,
    nerfstudio's camera_path.json, instant-ngp's base_cam.json) is read before the run, so a bad file costs nothing.
    ``--fps`` and ``--resolution`` override the file's values (its frame rate, else 30; its render size, else the
    training images'); a keyframed path is sampled at ``--fps`` over ``--seconds``. Each frame is
    :func:`ngp_cli.tasks.nerf.views.render_view_map` of ``output``, written by
    :class:`ngp_cli.mesh.shade.MapFrameWriter` (depth: colour-mapped frames, plus float32 EXRs in a frame folder).

    With ``--nproc N`` (or under torchrun) the frames are dealt out over N processes; rank 0 receives them in order and
    writes the video or frames (:func:`ngp_cli.distributed.shared_tiles`).

    Raises UsageError (neither or both of --camera-path/--orbit, an option that does not apply to the path's format,
    a non-positive --seconds, --output normals with --baked, --min-transmittance outside [0, 1) or with --baked),
    DataError (bad camera path or dataparser transforms, dataset gone, a bad or newer baked file), OutputError.
    """
    from ngp_cli.launch import relaunched
    from ngp_cli.mesh.shade import MapFrameWriter
    from ngp_cli.tasks.nerf.camera_path import DEFAULT_FPS, load_camera_path, orbit_path
    from ngp_cli.tasks.nerf.cameras import nerf_matrix_to_ngp
    from ngp_cli.tasks.nerf.views import VIEW_MAPS, render_camera

    if (camera_path is None) == (orbit is None):
        raise UsageError("give exactly one of --camera-path FILE or --orbit N")
    if relaunched(nproc):
        return
    pin_local_gpu()
    if orbit is not None and orbit < 1:
        raise UsageError(f"--orbit must be at least 1 frame, got {orbit}")
    if output not in VIEW_MAPS:
        raise UsageError(f"--output must be one of {', '.join(VIEW_MAPS)}, got '{output}'")
    if seconds is not None and not seconds > 0:
        raise UsageError(f"--seconds must be positive, got {seconds:g}")
    if min_transmittance is not None:
        if not 0.0 <= min_transmittance < 1.0:  # nan included
            raise UsageError(f"--min-transmittance must be in [0, 1), got {min_transmittance:g}")
        if baked is not None:
            raise UsageError("--min-transmittance applies to the network's frames; the baked grid renders down to "
                             "transmittance 1e-4 (drop one of the two)")
    for flag, value in (("--seconds", seconds), ("--dataparser-transforms", dataparser_transforms)):
        if value is not None and orbit is not None:
            raise UsageError(f"{flag} applies to --camera-path, not to --orbit")
    path = None
    if camera_path is not None:
        path = load_camera_path(camera_path, fps=fps, seconds=seconds, dataparser_transforms=dataparser_transforms)
        if seconds is not None and path.kind == "transforms":
            raise UsageError(f"--seconds applies to keyframed paths (nerfstudio, instant-ngp base_cam.json); "
                             f"{camera_path} lists its frames")
        if dataparser_transforms is not None and path.kind != "nerfstudio":
            raise UsageError(f"--dataparser-transforms applies to nerfstudio camera paths; {camera_path} is "
                             f"{'an instant-ngp base_cam.json' if path.kind == 'instant-ngp' else 'transforms.json-style'}")
        for note in path.notes:
            warn(note)
        if path.dataparser is not None:
            info(f"nerfstudio poses mapped to the dataset's frame through {path.dataparser}")
    grid = None
    if baked is not None:
        if output == "normals":
            raise UsageError("--output normals is not available with --baked (the baked grid stores no density "
                             "gradients); choose rgb, depth or accumulation")
        from ngp_cli.volrend.baked import load_baked

        grid = load_baked(baked)  # a bad or newer file is refused before the run is loaded
    run, problem, step = load_run(task, run_path, backend, data)
    world = init_world(problem.device.type, problem.cfg.distributed.timeout_s)
    if not world.is_main:
        set_quiet(True)
    ds = problem.dataset
    if grid is not None:
        grid = _baked_on(grid, baked, run, step, problem)
    if path is None:
        width, height = parse_resolution(resolution, (ds.width, ds.height))
        c2w = torch.as_tensor(orbit_path(ds.c2w, orbit), dtype=torch.float32)
        focals = None
    else:
        width, height = parse_resolution(resolution, (path.width or ds.width, path.height or ds.height))
        if path.frame == "ngp":  # instant-ngp's unit-cube frame, already taken into ours
            c2w = torch.as_tensor(path.c2w, dtype=torch.float32)
        else:
            c2w = nerf_matrix_to_ngp(torch.as_tensor(path.c2w, dtype=torch.float64), ds.scale,
                                     torch.tensor(ds.offset, dtype=torch.float64))
        focals = path.focal_lengths(width, height)
    fps_out = fps if fps is not None else ((path.fps if path is not None else None) or DEFAULT_FPS)
    # Without a focal length in the path: the first training camera's, scaled to the output width.
    fx_default = float(ds.intrinsics[0, 0]) * width / ds.width
    suffix = ("" if output == "rgb" else f"_{output}") + ("_baked" if grid is not None else "")
    out = out if out is not None else run.renders_dir / f"{'orbit' if orbit is not None else 'camera_path'}{suffix}.mp4"
    n_frames = int(c2w.shape[0])
    t_min = problem.cfg.nerf.render_min_transmittance if min_transmittance is None else min_transmittance
    t0 = time.perf_counter()

    def frame(k: int) -> tuple[np.ndarray]:
        fx = fx_default if focals is None else float(focals[k])
        return (render_camera(problem, c2w[k], fx, width, height, output, baked=grid, min_transmittance=t_min),)

    shape = (height, width, 3) if output in ("rgb", "normals") else (height, width)
    frames = shared_tiles([(k,) for k in range(n_frames)], frame, lambda k: [(shape, np.float32)], world)
    if not world.is_main:  # rank > 0 renders its frames and sends them to rank 0
        for _ in frames:
            pass
        leave_quietly()
    # Opened first: a destination that cannot be written is refused before any line or any rendering.
    with MapFrameWriter(out, fps_out, output) as writer, progress(n_frames, "rendering") as advance:
        source = f"{baked} ({grid.n_voxels:,} voxels)" if grid is not None else f"{run.path} (step {step})"
        info(f"rendering {n_frames} {'' if output == 'rgb' else output + ' '}frames at {width}x{height} from "
             f"{source} to {out}" + (f" in {world.size} processes" if world.distributed else ""))
        for _, (image,) in frames:
            writer.write(image)
            advance()
    shutdown_world()
    seconds_taken = time.perf_counter() - t0
    info(f"wrote {out} ({n_frames} frames, {seconds_taken:.1f} s)" + (
        f"; depth colours from 0 to {writer.vmax:.4g} world units" if writer.vmax is not None else ""))
    metrics: dict[str, Any] = {"frames": n_frames, "width": width, "height": height, "fps": fps_out, "output": output,
                               "render_s": round(seconds_taken, 3)}
    if grid is None:
        metrics["min_transmittance"] = t_min
    if path is not None:
        metrics.update({"path_format": path.kind, "keyframes": path.keyframes})
    if writer.vmax is not None:
        metrics["depth_vmax"] = writer.vmax
    artifacts = {"out": str(out)}
    if grid is not None:
        artifacts["baked"] = str(baked)
    emit("done", run_dir=str(run.path), step=step, metrics=metrics, artifacts=artifacts)


def extract_mesh_command(task, run_path: Path, *, resolution: int = 256, threshold: float = 2.5,
                         out: Path | None = None, normals: bool = True, colors: bool = True,
                         min_component: float = 0.0, backend: str | None = None, data: Path | None = None) -> None:
    """``ngp extract-mesh RUN [--data PATH]`` for a NeRF run: marching cubes of the density σ = ``threshold``
    (instant-ngp's 2.5) over the scene box, σ taken as 0 in cells the occupancy grid marks empty (as ray marching does: the network is
    never trained there, so its density is arbitrary), written in the dataset's world frame, with vertex normals −∇σ
    and vertex colours from the colour network seen head-on (view direction −normal), and shaded renders in
    ``renders/``."""
    from ngp_cli.mesh.bvh import MeshBVH
    from ngp_cli.mesh.extract import extract_isosurface, field_gradients, unit_normals
    from ngp_cli.mesh.io import check_output_path, write_mesh
    from ngp_cli.mesh.shade import render_views

    if not threshold > 0.0:
        raise UsageError(f"--threshold must be a positive density, got {threshold}")
    if out is not None:
        out = check_output_path(out)
    run, problem, step = load_run(task, run_path, backend, data)
    model, device = problem.model, problem.device
    ds = problem.dataset
    lo = np.full(3, model.aabb_lo)
    hi = lo + model.aabb_size
    out = out if out is not None else run.mesh_path(resolution)
    info(f"extracting the σ = {threshold:g} surface of {run.path} (step {step}) at {resolution}³ over "
         f"[{lo[0]:g}, {hi[0]:g}]³")

    def field(x: torch.Tensor) -> torch.Tensor:  # negative inside; what rendering sees: σ = 0 in empty cells
        return threshold - model.density(x) * model.grid.occupied(x)

    t0 = time.perf_counter()
    with progress(None, f"marching cubes {resolution}³ (slabs)") as advance:
        verts, faces, stats = extract_isosurface(field, resolution, lo, hi, device=device,
                                                 chunk=1 << 18,
                                                 min_component=min_component,
                                                 progress=lambda done, total: advance(total=total))
    if not len(faces):
        raise DataError(f"the density of {run.path} never crosses {threshold:g}: nothing to extract")
    vnormals = unit_normals(field_gradients(field, verts.astype(np.float32), device=device)) \
        if normals or colors else None
    vcolors = None
    if colors:
        vcolors = np.empty((len(verts), 3), dtype=np.float32)
        chunk = 1 << 16
        with torch.no_grad():
            for s in range(0, len(verts), chunk):
                x = torch.from_numpy(verts[s:s + chunk].astype(np.float32)).to(device)
                d = -torch.from_numpy(vnormals[s:s + chunk]).to(device)
                vcolors[s:s + chunk] = model(x, d)[1].clamp(0, 1).cpu().numpy()
    stats["extract_s"] = round(time.perf_counter() - t0, 3)
    world = (verts - np.asarray(ds.offset, dtype=np.float64)) / ds.scale
    path = write_mesh(out, world, faces, vnormals if normals else None, vcolors)
    bvh = MeshBVH(world, faces, device=device)
    renders = render_views(bvh, world, run.renders_dir, f"mesh_{resolution}", up=np.array([0.0, 0.0, 1.0]))
    metrics = {"vertices": len(verts), "faces": len(faces), "resolution": resolution, "threshold": threshold,
               **stats, "peak_rss_mib": round(peak_rss_mib(), 1)}
    info(f"wrote {path}: {len(verts):,} vertices, {len(faces):,} triangles ({stats['extract_s']:.1f} s)")
    emit("done", run_dir=str(run.path), step=step, metrics=metrics, artifacts={"mesh": str(path), "renders": renders})


__all__ = ["eval_command", "evaluate_views", "extract_mesh_command", "final_evaluation", "final_views", "format_ssim",
           "load_run", "render_command", "render_view"]

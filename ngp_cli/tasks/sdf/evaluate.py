"""Meshes and metrics of SDF runs: the final evaluation of ``ngp train-sdf``, ``ngp extract-mesh`` and ``ngp eval``.

Metrics (:mod:`ngp_cli.mesh.metrics`) are computed in the unit-cube frame the network was trained in: the IoU of the
network's inside (SDF < 0) at ``sdf.iou_points`` uniform points (the paper's metric), and the Chamfer distance and
normal consistency between the extracted mesh and the input. Meshes are written in the input mesh's own frame.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ngp_cli.commands import parse_resolution
from ngp_cli.console import emit, info, progress, to_json
from ngp_cli.errors import DataError
from ngp_cli.mesh.extract import extract_isosurface, field_gradients, unit_normals
from ngp_cli.mesh.io import UnitFrame, check_output_path, write_mesh
from ngp_cli.metrics import peak_rss_mib
from ngp_cli.pipeline import load_trained
from ngp_cli.runs import RunDir, atomic_write_text

SPARSE_BLOCK = 8  # cells per block side of the sparse marching-cubes evaluation


def _up_vector(up: str) -> np.ndarray:
    v = np.zeros(3)
    v["xyz".index(up[1])] = 1.0 if up[0] == "+" else -1.0
    return v


def extract(problem, resolution: int, level: float = 0.0, normals: bool = True,
            min_component: float = 0.0) -> dict[str, Any]:
    """Marching cubes on the network's SDF − ``level`` over the unit cube (sparse, bounded memory), without the
    pieces smaller than ``min_component`` × the largest (:func:`ngp_cli.mesh.extract.drop_small_components`), with
    progress per slab on stderr.

    Returns ``{"unit_vertices", "vertices" (input frame), "faces", "normals" or None, "stats"}``.
    """
    t0 = time.perf_counter()
    device = problem.device

    def field(x: torch.Tensor) -> torch.Tensor:
        return problem.field(x) - level

    with progress(None, f"marching cubes {resolution}³ (slabs)") as advance:
        verts, faces, stats = extract_isosurface(field, resolution, np.zeros(3), np.ones(3), device=device,
                                                 chunk=problem.cfg.sdf.query_chunk, sparse_block=SPARSE_BLOCK,
                                                 min_component=min_component,
                                                 progress=lambda done, total: advance(total=total))
    vnormals = None
    if normals and len(verts):
        vnormals = unit_normals(field_gradients(problem.field, verts.astype(np.float32), device=device))
    stats = {**stats, "extract_s": round(time.perf_counter() - t0, 3)}
    return {"unit_vertices": verts, "vertices": problem.frame.from_unit(verts), "faces": faces, "normals": vnormals,
            "stats": stats}


def mesh_report(problem, mesh: dict[str, Any], renders_dir: Path, prefix: str) -> tuple[dict[str, Any], list[str]]:
    """Chamfer distance and normal consistency of an extracted mesh against the input, and its shaded renders.
    Returns ``(metrics, render paths)``."""
    from ngp_cli.mesh.bvh import MeshBVH
    from ngp_cli.mesh.metrics import surface_metrics
    from ngp_cli.mesh.shade import render_views

    sc = problem.cfg.sdf
    sampler = problem.sampler
    t0 = time.perf_counter()
    metrics = surface_metrics(mesh["unit_vertices"], mesh["faces"], sampler.bvh, sampler.vertices, sampler.faces,
                              n_points=sc.chamfer_points)
    metrics["chamfer_s"] = round(time.perf_counter() - t0, 3)
    renders: list[str] = []
    if sc.render_views and len(mesh["faces"]):
        bvh = MeshBVH(mesh["vertices"], mesh["faces"], device=problem.device)
        renders = render_views(bvh, mesh["vertices"], renders_dir, prefix, up=_up_vector(sc.up),
                               n_views=sc.render_views, size=sc.render_size)
    return metrics, renders


def iou_metrics(problem) -> dict[str, Any]:
    """``iou`` at ``sdf.iou_points`` fixed uniform points (the paper's metric), ``iou_points`` and ``iou_s``."""
    t0 = time.perf_counter()
    n = problem.cfg.sdf.iou_points
    return {"iou": problem.iou(n), "iou_points": n, "iou_s": round(time.perf_counter() - t0, 3)}


def final_evaluation(problem, run: RunDir) -> tuple[dict[str, Any], dict[str, Any]]:
    """After training: IoU at ``sdf.iou_points``, the mesh at ``sdf.mesh_resolution`` written to
    ``meshes/mesh_<res>.ply`` with its Chamfer distance and renders. Returns ``(metrics, artifacts)``."""
    sc = problem.cfg.sdf
    metrics = iou_metrics(problem)
    mesh = extract(problem, sc.mesh_resolution)
    path = write_mesh(run.mesh_path(sc.mesh_resolution), mesh["vertices"], mesh["faces"], mesh["normals"])
    report, renders = mesh_report(problem, mesh, run.renders_dir, f"mesh_{sc.mesh_resolution}")
    metrics.update(report)
    metrics.update({"mesh_resolution": sc.mesh_resolution, "mesh_vertices": len(mesh["vertices"]),
                    "mesh_faces": len(mesh["faces"])})
    return metrics, {"mesh": str(path), "renders": renders}


# ---------------------------------------------------------------------------------------------------------------------
# Loading a trained run


def load_run(task, run_path: Path, backend: str | None, data: Path | None = None):
    """An SDF run's problem (the input mesh, the model with the newest checkpoint's weights) and checkpoint meta:
    :func:`ngp_cli.pipeline.load_trained`, and a check that the mesh still has the bounding box the run was trained
    in. Raises DataError (the mesh changed), and what ``load_trained`` raises."""
    run, problem, meta = load_trained(task, run_path, backend, data)
    saved = UnitFrame(tuple(float(c) for c in problem.model.frame_centre), float(problem.model.frame_scale[0]))
    if not np.allclose(saved.centre, problem.frame.centre, rtol=0, atol=1e-9 / saved.scale) or \
            not np.isclose(saved.scale, problem.frame.scale, rtol=1e-9):
        raise DataError(f"{problem.cfg.sdf.path} has changed since {run.path} was trained (its bounding box differs)")
    return run, problem, meta


def eval_command(task, run_path: Path, *, backend: str | None = None, data: Path | None = None) -> None:
    """``ngp eval RUN`` for an SDF run: IoU at ``sdf.iou_points`` points, then the mesh at ``sdf.mesh_resolution``
    and its Chamfer distance and normal consistency; written to ``RUN/eval.json`` and the ``done`` line."""
    run, problem, meta = load_run(task, run_path, backend, data)
    sc = problem.cfg.sdf
    step = int(meta["step"])
    info(f"evaluating {run.path} (step {step}) against {sc.path}")
    metrics = iou_metrics(problem)
    mesh = extract(problem, sc.mesh_resolution, normals=False)
    report, _ = mesh_report(problem, mesh, run.renders_dir, f"mesh_{sc.mesh_resolution}")
    metrics.update(report)
    metrics.update({"mesh_resolution": sc.mesh_resolution, "mesh_faces": len(mesh["faces"]),
                    "train_s": float(meta.get("elapsed_s", 0.0))})
    path = run.path / "eval.json"
    atomic_write_text(path, to_json({"step": step, **metrics}) + "\n")
    info(f"IoU {metrics['iou']:.5f}, Chamfer {metrics['chamfer']:.3e}, normal consistency "
         f"{metrics['normal_consistency']:.4f} at step {step} ({metrics['train_s']:.1f} s of training); {path}")
    emit("done", run_dir=str(run.path), step=step, metrics=metrics, artifacts={"eval": str(path)})


def extract_mesh_command(task, run_path: Path, *, resolution: int = 256, level: float = 0.0, out: Path | None = None,
                         normals: bool = True, min_component: float = 0.0, backend: str | None = None,
                         data: Path | None = None) -> None:
    """``ngp extract-mesh RUN [--data MESH]`` for an SDF run: marching cubes of SDF = ``level``, written in the
    input's frame, with its Chamfer distance to the input and shaded renders; pieces under ``min_component`` × the largest are dropped."""
    if out is not None:
        out = check_output_path(out)
    run, problem, meta = load_run(task, run_path, backend, data)
    out = out if out is not None else run.mesh_path(resolution)
    info(f"extracting the SDF = {level:g} surface of {run.path} (step {meta['step']}) at {resolution}³")
    mesh = extract(problem, resolution, level, normals, min_component)
    if not len(mesh["faces"]):
        raise DataError(f"the SDF of {run.path} has no zero crossing at level {level:g}: nothing to extract")
    path = write_mesh(out, mesh["vertices"], mesh["faces"], mesh["normals"])
    report, renders = mesh_report(problem, mesh, run.renders_dir, f"mesh_{resolution}")
    metrics = {"vertices": len(mesh["vertices"]), "faces": len(mesh["faces"]), "resolution": resolution,
               "level": level, **mesh["stats"], **report, "peak_rss_mib": round(peak_rss_mib(), 1)}
    info(f"wrote {path}: {metrics['vertices']:,} vertices, {metrics['faces']:,} triangles "
         f"({metrics['extract_s']:.1f} s); Chamfer {report['chamfer']:.3e}, normal consistency "
         f"{report['normal_consistency']:.4f}")
    emit("done", run_dir=str(run.path), step=int(meta["step"]), metrics=metrics,
         artifacts={"mesh": str(path), "renders": renders})


SDF_OUTPUTS = ("rgb", "depth", "normals")


def sdf_view_map(problem, origin: np.ndarray, rotation: np.ndarray, width: int, height: int,
                 output: str) -> np.ndarray:
    """Depth or normals of the network's SDF itself, seen by a pinhole camera at ``origin`` (the input mesh's frame)
    with ``rotation`` (columns right, up, forward) and :func:`ngp_cli.mesh.shade.render_mesh`'s field of view: the
    rays of :func:`~ngp_cli.mesh.shade.pinhole_rays`, taken into the unit cube and sphere traced there
    (:func:`~ngp_cli.mesh.shade.sphere_trace`).

    Returns ``depth`` (H, W) float32, the distance along each ray to the surface in the input mesh's units (0 where
    the ray misses), or ``normals`` (H, W, 3) float32, the unit gradient of the SDF at the hit (outward, in the input
    frame's axes, which the unit cube shares; zero where the ray misses). Raises ``ValueError`` for another output.
    """
    from ngp_cli.mesh.extract import field_gradients, unit_normals
    from ngp_cli.mesh.shade import pinhole_rays, sphere_trace

    if output not in ("depth", "normals"):
        raise ValueError(f"sdf_view_map renders depth or normals, not {output!r}")
    frame, device = problem.frame, problem.device
    dirs = torch.from_numpy(pinhole_rays(rotation, width, height).astype(np.float32)).to(device)
    o = torch.from_numpy(frame.to_unit(np.asarray(origin)[None]).astype(np.float32)).to(device).expand_as(dirs)
    t, hit = sphere_trace(problem.field, o.contiguous(), dirs, chunk=problem.cfg.sdf.query_chunk)
    if output == "depth":
        return (t / frame.scale).reshape(height, width).cpu().numpy().astype(np.float32)
    normals = np.zeros((width * height, 3), dtype=np.float32)
    ok = hit.cpu().numpy()
    if ok.any():
        points = (o + t.unsqueeze(-1) * dirs)[hit].cpu().numpy()
        normals[ok] = unit_normals(field_gradients(problem.field, points, device=device,
                                                   chunk=problem.cfg.sdf.query_chunk))
    return normals.reshape(height, width, 3)


def render_command(task, run_path: Path, *, orbit: int | None = None, resolution: str | None = None,
                   out: Path | None = None, fps: int | None = None, output: str = "rgb", backend: str | None = None,
                   data: Path | None = None) -> None:
    """``ngp render RUN --orbit N [--output rgb|depth|normals] [--resolution WxH] [--out video.mp4|frames/]
    [--data MESH]`` for an SDF run: N cameras on a circle around the mesh at ``sdf.mesh_resolution`` (20° above its
    equator, up axis ``sdf.up``, framing its bounding box). ``rgb``: that mesh shaded and ray cast; ``depth`` and
    ``normals``: of the SDF network itself, sphere traced (:func:`sdf_view_map`), with the same cameras, so the
    outputs line up pixel for pixel. Camera paths are for NeRF runs.

    Raises UsageError (no orbit, ``--output accumulation``: an SDF has no opacity), DataError, OutputError.
    """
    from ngp_cli.errors import UsageError
    from ngp_cli.mesh.bvh import MeshBVH
    from ngp_cli.mesh.shade import MapFrameWriter, mesh_orbit, render_mesh

    if output not in SDF_OUTPUTS:
        raise UsageError(f"--output {output} is not rendered for SDF runs (an SDF has no opacity); they render "
                         f"{', '.join(SDF_OUTPUTS)}")
    if orbit is None or orbit < 1:
        raise UsageError("give --orbit N (N >= 1 frames)")
    width, height = parse_resolution(resolution, (512, 512))
    fps = fps if fps is not None else 30
    run, problem, meta = load_run(task, run_path, backend, data)
    suffix = "" if output == "rgb" else f"_{output}"
    out = out if out is not None else run.renders_dir / f"orbit{suffix}.mp4"
    t0 = time.perf_counter()
    # Opened first: a destination that cannot be written is refused before any line or any work.
    with MapFrameWriter(out, fps, output) as writer:
        mesh = extract(problem, problem.cfg.sdf.mesh_resolution, normals=False)
        if not len(mesh["faces"]):
            raise DataError(f"the SDF of {run.path} has no zero crossing: nothing to render")
        cameras = mesh_orbit(mesh["vertices"], _up_vector(problem.cfg.sdf.up), orbit)
        bvh = MeshBVH(mesh["vertices"], mesh["faces"], device=problem.device) if output == "rgb" else None
        what = f"the {problem.cfg.sdf.mesh_resolution}³ mesh" if output == "rgb" else f"the SDF's {output}"
        info(f"rendering {orbit} frames at {width}x{height} of {what} of {run.path} (step {meta['step']}) to {out}")
        with progress(orbit, "rendering") as advance:
            for origin, rotation in cameras:
                if bvh is not None:
                    writer.write(render_mesh(bvh, origin, rotation, width, height))
                else:
                    writer.write(sdf_view_map(problem, origin, rotation, width, height, output))
                advance()
    seconds = time.perf_counter() - t0
    info(f"wrote {out} ({orbit} frames, {seconds:.1f} s)")
    metrics = {"frames": orbit, "width": width, "height": height, "fps": fps, "output": output,
               "render_s": round(seconds, 3)}
    if writer.vmax is not None:
        metrics["depth_vmax"] = writer.vmax
    emit("done", run_dir=str(run.path), step=int(meta["step"]), metrics=metrics, artifacts={"out": str(out)})


__all__ = ["SDF_OUTPUTS", "eval_command", "extract", "extract_mesh_command", "final_evaluation", "iou_metrics",
           "load_run", "mesh_report", "render_command", "sdf_view_map"]

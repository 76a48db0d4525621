"""The neural SDF task (paper §5.2): fit a hash encoding + MLP to the signed distance of a triangle mesh,
``ngp train-sdf MESH``; ``ngp extract-mesh``, ``ngp eval`` and ``ngp render`` work on its runs.

This module is imported by the plugin registry on every ``ngp`` call, so it holds only the command declaration and the
config dataclass; the work is imported inside the commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ngp_cli.commands import (
    AllowInputChangeOpt,
    BackendOpt,
    JsonOpt,
    NameOpt,
    PresetOpt,
    ResumeOpt,
    RunsDirOpt,
    SaveOptimizerOpt,
    SetOpt,
    StepsOpt,
    TrainOptions,
)
from ngp_cli.config import RunConfig, opt, section
from ngp_cli.tasks import Task

UP_AXES = ("+x", "+y", "+z", "-x", "-y", "-z")


@dataclass
class SdfSection:
    """Settings of the SDF task (training samples, evaluation, meshes)."""

    path: str = opt("", "the input mesh (filled in from the command's MESH argument)")
    surface_fraction: float = opt(0.5, "share of a batch on the surface (SDF 0), uniform by area (paper: 4/8)",
                                  ge=0.0, le=1.0)
    perturbed_fraction: float = opt(0.375, "share of a batch on the surface plus a Gaussian offset (paper: 3/8); "
                                           "the rest is uniform in the unit cube", ge=0.0, le=1.0)
    perturbation: float = opt(1.0 / 1024.0, "standard deviation of the offset, unit-cube units (scene scale/1024)",
                              gt=0.0, le=0.5)
    sample_bank: int = opt(0, "0: exact signed distances of every batch's off-surface points; N: draw them from a "
                              "bank of N points computed at the start, refreshed by sdf.bank_refresh per step "
                              "(at most 2^27)", ge=0, le=1 << 27)
    bank_refresh: int = opt(0, "bank points replaced by fresh ones each step (at most 2^27)", ge=0, le=1 << 27)
    iou_points: int = opt(1 << 20, "uniform points of the final IoU (the paper's metric; at most 2^28)", ge=1024,
                          le=1 << 28)
    eval_iou_points: int = opt(1 << 18, "uniform points of the periodic IoU (train.eval_every; at most 2^28)",
                               ge=1024, le=1 << 28)
    mesh_resolution: int = opt(256, "marching-cubes resolution of the mesh written after training and by 'ngp "
                                    "eval'", ge=16, le=2048)
    chamfer_points: int = opt(1 << 18, "surface points per direction of the Chamfer distance (at most 2^24)",
                              ge=1024, le=1 << 24)
    render_views: int = opt(4, "shaded views of the extracted mesh written to renders/ (at most 1000)", ge=0, le=1000)
    render_size: int = opt(512, "side of the shaded views in pixels", ge=16, le=8192)
    up: str = opt("+y", "the mesh's up axis, for the shaded views", choices=UP_AXES)
    query_chunk: int = opt(1 << 18, "points per network evaluation when extracting meshes and computing the IoU "
                                    "(at most 2^24)", ge=1024, le=1 << 24)


@dataclass
class SdfConfig(RunConfig):
    """Config of ``ngp train-sdf``."""

    sdf: SdfSection = section(SdfSection, "SDF task settings")


class SdfTask(Task):
    name = "sdf"
    summary = "Signed distance function of a triangle mesh, marching-cubes meshes, IoU and Chamfer (paper §5.2)"
    commands = ("train-sdf", "extract-mesh", "eval", "render")
    default_preset = "sdf"
    default_preset_cpu = "sdf-cpu"
    run_commands_module = "ngp_cli.tasks.sdf.evaluate"

    def config_class(self) -> type:
        return SdfConfig

    def register(self, app: typer.Typer) -> None:
        task = self

        @app.command("train-sdf")
        def train_sdf(
            mesh: Annotated[Path | None, typer.Argument(
                help="Triangle mesh: OBJ, PLY, STL, GLB/GLTF or OFF (multi-part scenes are merged). "
                     "Default: a built-in torus (trimesh).", show_default=False)] = None,
            preset: PresetOpt = None,
            set_: SetOpt = None,
            runs_dir: RunsDirOpt = Path("runs"),
            name: NameOpt = None,
            resume: ResumeOpt = None,
            json_events: JsonOpt = False,
            backend: BackendOpt = None,
            steps: StepsOpt = None,
            allow_input_change: AllowInputChangeOpt = False,
            save_optimizer: SaveOptimizerOpt = True,
        ) -> None:
            """Train a hash-grid + MLP signed distance function of a mesh; write checkpoints, the IoU, an extracted
            mesh with its Chamfer distance to the input, and shaded renders.

            stdout: JSON lines (a final {"event":"done",...}); stderr: progress and logs.
            """
            from ngp_cli.tasks.sdf.fit import train_sdf as run_train

            opts = TrainOptions(preset=preset, sets=list(set_ or []), runs_dir=runs_dir, name=name, resume=resume,
                                json=json_events, backend=backend, steps=steps,
                                allow_input_change=allow_input_change, save_optimizer=save_optimizer)
            run_train(task, opts, mesh)

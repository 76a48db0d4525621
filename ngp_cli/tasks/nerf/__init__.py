"""The NeRF task (paper §5.4): ``ngp train-nerf [DATASET]`` on instant-ngp/NeRF ``transforms.json`` captures, with
``ngp eval`` and ``ngp render`` for its runs.

Imported by the plugin registry on every ``ngp`` call: only the config dataclasses and the command declarations live
here; torch and the pipeline are imported inside the commands.
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
from ngp_cli.config import EncodingConfig, NetworkConfig, RunConfig, opt, section
from ngp_cli.tasks import Task


@dataclass
class NerfSection:
    """Settings of the NeRF task (dataset, occupancy grid, ray marching, evaluation)."""

    path: str = opt("", "dataset directory or transforms JSON (filled in from the command's DATASET argument)")
    downscale: int = opt(1, "load images reduced by this integer factor (box filter; intrinsics scaled)", ge=1, le=64)
    aabb_scale: int | None = opt(None, "scene box size, a power of two 1..128; null: the dataset's (default 1)",
                                 ge=1, le=128)
    holdout_every: int = opt(8, "with a single transforms.json, every k-th frame is held out as the val/test split "
                                "(0: none held out)", ge=0, le=10**6)
    allow_outside_root: bool = opt(False, "accept file_path entries that resolve outside the dataset folder")
    cone_angle: float | None = opt(None, "step growth t·cone_angle; null: 0 for aabb_scale 1, 1/256 otherwise "
                                         "(instant-ngp)", ge=0.0, le=0.1)
    snap_to_pixel_centers: bool = opt(False, "train on rays through pixel centres only; false (instant-ngp's "
                                             "default): through a uniform random point of each drawn pixel, so "
                                             "the field is constrained between the training rays")
    near_distance: float = opt(0.1, "rays start this far from the camera (ngp-frame units, at most 1000)", ge=0.0,
                               le=1000.0)
    n_rays_initial: int = opt(4096, "rays in the first batch; later batches adapt so that a batch holds about "
                                    "train.batch_size samples (instant-ngp; at most 2^24)", ge=64, le=1 << 24)
    grid_update_interval: int = opt(16, "steps between occupancy-grid updates", ge=1, le=10**9)
    grid_warmup_steps: int = opt(256, "steps during which every update evaluates every cell", ge=0, le=10**9)
    grid_decay: float = opt(0.95, "EMA decay of the occupancy grid per update", gt=0.0, lt=1.0)
    grid_threshold: float = opt(0.01, "occupancy threshold on optical thickness (capped by the grid's mean)", gt=0.0)
    eval_split: str = opt("val", "held-out split for the periodic and final evaluation: val or test "
                                 "(the dataset's transforms_<split>.json, or its held-out frames)",
                          choices=("val", "test"))
    eval_views: int = opt(4, "views of eval_split used by the periodic evaluation (train.eval_every); the final "
                             "evaluation uses all", ge=1, le=10**6)
    render_views: int = opt(8, "views of eval_split whose renders are written to renders/ at the end", ge=0,
                            le=10**6)
    eval_chunk_rays: int = opt(8192, "rays per chunk when rendering for evaluation (at most 2^24)", ge=256,
                               le=1 << 24)


@dataclass
class NerfConfig(RunConfig):
    """Config of ``ngp train-nerf``: ``encoding``/``network`` are the position grid and density MLP, ``dir_encoding``
    and ``rgb_network`` the colour branch (instant-ngp's NeRF JSON names)."""

    nerf: NerfSection = section(NerfSection, "NeRF task settings")
    dir_encoding: EncodingConfig = section(EncodingConfig, "view-direction encoding (SphericalHarmonics)")
    rgb_network: NetworkConfig = section(NetworkConfig, "colour MLP")


class NerfTask(Task):
    name = "nerf"
    summary = "Neural radiance field from posed photos, occupancy-grid ray marching (paper §5.4)"
    commands = ("train-nerf", "eval", "render", "extract-mesh")
    default_preset = "nerf"
    default_preset_cpu = "nerf-cpu"
    run_commands_module = "ngp_cli.tasks.nerf.evaluate"

    def config_class(self) -> type:
        return NerfConfig

    def register(self, app: typer.Typer) -> None:
        task = self

        @app.command("train-nerf")
        def train_nerf(
            dataset: Annotated[Path | None, typer.Argument(
                help="Dataset folder (transforms.json or transforms_{train,val,test}.json) or a transforms JSON. "
                     "Default: the built-in synthetic scene (generated once, no download).",
                show_default=False)] = None,
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
            downscale: Annotated[int | None, typer.Option(
                "--downscale", min=1, help="Load images reduced N times (shorthand for --set nerf.downscale=N).")] = None,
            allow_outside_root: Annotated[bool, typer.Option(
                "--allow-outside-root", help="Accept frames whose file_path leaves the dataset folder.")] = False,
        ) -> None:
            """Train a NeRF (hash grid + density/colour MLPs + occupancy grid) and write checkpoints, held-out PSNR,
            renders of held-out views and the summary.

            stdout: JSON lines (a final {"event":"done",...}); stderr: progress and logs.
            """
            from ngp_cli.tasks.nerf.fit import train_nerf as run_train

            sets = list(set_ or [])
            if downscale is not None:
                sets.append(f"nerf.downscale={downscale}")
            if allow_outside_root:
                sets.append("nerf.allow_outside_root=true")
            opts = TrainOptions(preset=preset, sets=sets, runs_dir=runs_dir, name=name, resume=resume,
                                json=json_events, backend=backend, steps=steps,
                                allow_input_change=allow_input_change, save_optimizer=save_optimizer)
            run_train(task, opts, dataset)

"""The neural radiance caching task (Müller et al. 2021, with instant-ngp's hash encoding of the position):
``ngp train-nrc [SCENE]`` renders a scene progressively with a path tracer whose paths end in an online-trained
cache, and compares it with plain path tracing at equal time against a converged reference.

This module is imported by the plugin registry on every ``ngp`` call, so it holds only the command declaration and the
config dataclass; the work is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ngp_cli.commands import (
    VIEW_OPTIONS,
    VIEW_SIZE_OPTION,
    BackendOpt,
    NameOpt,
    NprocOpt,
    PresetOpt,
    RunsDirOpt,
    SetOpt,
    TrainOptions,
)
from ngp_cli.tasks import RunCommand, Task
from ngp_cli.tasks.nrc.config import NrcConfig, NrcSection

__all__ = ["NrcConfig", "NrcSection", "NrcTask"]


class NrcTask(Task):
    name = "nrc"
    summary = "Neural radiance caching in a path tracer, trained online (Müller et al. 2021, hash-encoded)"
    commands = ("train-nrc", "view")
    run_commands = (
        RunCommand("view", "ngp_cli.tasks.nrc.viewer:view_command", """Serve a web viewer of an NRC run (viser, the
        'viewer' extra): its frames one at a time, and the cache's mean image, the path tracer at equal time and the
        reference, each fitted to the browser's window.""", options=(*VIEW_OPTIONS, VIEW_SIZE_OPTION)),
    )
    default_preset = "nrc"
    default_preset_cpu = "nrc"
    extra_input_paths = ("nrc.scene",)  # trained by its own loop: no train_input


    def config_class(self) -> type:
        return NrcConfig

    def register(self, app: typer.Typer) -> None:
        task = self

        @app.command("train-nrc")
        def train_nrc(
            scene: Annotated[Path | None, typer.Argument(
                help="Scene file (YAML/JSON: meshes, materials, camera; docs/nrc.md). Default: the built-in "
                     "Cornell box.", show_default=False)] = None,
            frames: Annotated[int | None, typer.Option(
                "--frames", min=1, help="Frames rendered while the cache trains (--set nrc.frames=N); the NRC image "
                                        "averages those after nrc.warmup_frames (default 8): give more (fewer: a "
                                        "warning, and only the last frame).")] = None,
            spp: Annotated[int | None, typer.Option(
                "--spp", min=1, help="Samples per pixel per frame (--set nrc.spp=K).")] = None,
            preset: PresetOpt = None,
            set_: SetOpt = None,
            runs_dir: RunsDirOpt = Path("runs"),
            name: NameOpt = None,
            json_events: Annotated[bool, typer.Option(
                "--json", help="Also emit one {\"event\":\"frame\"} JSON line per rendered frame (time, loss, "
                               "relMSE, cache share).")] = False,
            backend: BackendOpt = None,
            nproc: NprocOpt = 1,
        ) -> None:
            """Render a scene progressively with a neural radiance cache trained online, and compare it with path
            tracing at equal time against a converged reference (relMSE).

            Data parallel with --nproc N (or under torchrun): the processes share out each frame's training paths
            and image samples, and train one cache (docs/distributed.md).

            stdout: JSON lines ({"event":"frame",...} per frame with --json, a final {"event":"done",...});
            stderr: progress and logs.
            """
            from ngp_cli.launch import relaunched

            if relaunched(nproc):
                return
            from ngp_cli.tasks.nrc.fit import train_nrc as run_train

            sets = list(set_ or [])
            if frames is not None:
                sets.append(f"nrc.frames={frames}")
            if spp is not None:
                sets.append(f"nrc.spp={spp}")
            opts = TrainOptions(preset=preset, sets=sets, runs_dir=runs_dir, name=name, json=json_events,
                                backend=backend)
            run_train(task, opts, scene)

"""The neural radiance caching task (Müller et al. 2021, with instant-ngp's hash encoding of the position):
``ngp train-nrc [SCENE]`` renders a scene progressively with a path tracer whose paths end in an online-trained
cache, and compares it with plain path tracing at equal time against a converged reference.

This module is imported by the plugin registry on every ``ngp`` call, so it holds only the command declaration and the
config dataclass; the work is imported inside the command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ngp_cli.commands import BackendOpt, NameOpt, PresetOpt, RunsDirOpt, SetOpt, TrainOptions
from ngp_cli.config import EncodingConfig, RunConfig, opt, section
from ngp_cli.tasks import Task


@dataclass
class NrcSection:
    """Settings of the radiance-caching task (image, frames, training paths, reference)."""

    scene: str = opt("", "scene file (YAML/JSON, docs/nrc.md) or empty for the built-in Cornell box (filled in from "
                         "the command's SCENE argument)")
    width: int = opt(128, "image width in pixels", ge=8, le=4096)
    height: int = opt(128, "image height in pixels", ge=8, le=4096)
    frames: int = opt(32, "frames rendered while the cache trains (at most 10^6)", ge=1, le=10**6)
    spp: int = opt(2, "samples per pixel per frame (NRC and the equal-time path tracer)", ge=1, le=4096)
    warmup_frames: int = opt(8, "first frames left out of the accumulated NRC image (the cache is still poor); "
                                "their time still counts", ge=0, le=10**6)
    spread_c: float = opt(0.01, "path-spread threshold c: a path ends in the cache once its spread exceeds c·a0 "
                                "(the paper's 0.01)", gt=0.0)
    train_paths: int = opt(8192, "training paths per frame, from random pixels (at most 2^24)", ge=16, le=1 << 24)
    train_steps: int = opt(4, "optimizer steps per frame; the frame's training vertices are split between them",
                           ge=1, le=1024)
    unbiased_fraction: float = opt(1.0 / 16.0, "share of training paths not ended in the cache (only by Russian "
                                               "roulette)", ge=0.0, le=1.0)
    suffix: int = opt(2, "vertices a training path goes on for past the spread threshold before it ends in the "
                         "cache (self-training)", ge=0, le=16)
    max_depth: int = opt(32, "path vertices at most", ge=1, le=256)
    rr_depth: int = opt(3, "Russian roulette from this many vertices on", ge=1, le=256)
    reference_spp: int = opt(2048, "samples per pixel of the reference image (cached per scene, size and spp; at "
                                   "most 2^20)", ge=1, le=1 << 20)
    chunk: int = opt(1 << 16, "paths traced at once (at most 2^24)", ge=1024, le=1 << 24)


@dataclass
class NrcConfig(RunConfig):
    """Config of ``ngp train-nrc``: ``encoding`` is the position grid, ``dir_encoding`` encodes the outgoing direction
    and the normal, ``network`` is the cache MLP."""

    nrc: NrcSection = section(NrcSection, "radiance-caching settings")
    dir_encoding: EncodingConfig = section(EncodingConfig, "direction and normal encoding (SphericalHarmonics)")


class NrcTask(Task):
    name = "nrc"
    summary = "Neural radiance caching in a path tracer, trained online (Müller et al. 2021, hash-encoded)"
    commands = ("train-nrc",)
    default_preset = "nrc"
    default_preset_cpu = "nrc"

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
        ) -> None:
            """Render a scene progressively with a neural radiance cache trained online, and compare it with path
            tracing at equal time against a converged reference (relMSE).

            stdout: JSON lines ({"event":"frame",...} per frame with --json, a final {"event":"done",...});
            stderr: progress and logs.
            """
            from ngp_cli.tasks.nrc.fit import train_nrc as run_train

            sets = list(set_ or [])
            if frames is not None:
                sets.append(f"nrc.frames={frames}")
            if spp is not None:
                sets.append(f"nrc.spp={spp}")
            opts = TrainOptions(preset=preset, sets=sets, runs_dir=runs_dir, name=name, json=json_events,
                                backend=backend)
            run_train(task, opts, scene)

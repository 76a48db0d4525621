"""The gigapixel image task (paper §5.1): fit a hash encoding + MLP to one photo, ``ngp fit-image PHOTO``.

This module is imported by the plugin registry on every ``ngp`` call, so it holds only the command declaration and the
config dataclass; the work (torch, images) is imported inside the command.
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


@dataclass
class ImageSection:
    """Settings of the image task."""

    path: str = opt("", "the photo being fitted (filled in from the command's PHOTO argument)")
    max_resolution_factor: float = opt(
        0.5, "finest grid resolution N_max as a multiple of max(W, H), used when encoding.per_level_scale and "
             "encoding.max_resolution are both null (instant-ngp's image mode: 0.5)", gt=0.0, le=64.0)
    render_scale: float = opt(1.0, "size of the written reconstruction relative to the photo", gt=0.0, le=16.0)
    tile_pixels: int = opt(1 << 18, "pixels per inference tile when rendering and computing the full-image PSNR "
                                    "(at most 2^26)", ge=1024, le=1 << 26)
    max_pixels: int = opt(1 << 28, "largest photo accepted, in pixels (width x height, read from the file's header "
                                   "before decoding; 0 = no limit)", ge=0, le=1 << 40)


@dataclass
class ImageConfig(RunConfig):
    """Config of ``ngp fit-image``."""

    image: ImageSection = section(ImageSection, "image task settings")


def default_photo() -> Path:
    """scikit-image's bundled 512×512 RGB ``astronaut.png`` (public domain, NASA), the no-argument demo photo."""
    from importlib import resources

    return Path(str(resources.files("skimage.data") / "astronaut.png"))


class GigapixelTask(Task):
    name = "image"
    summary = "Fit a multiresolution hash encoding + MLP to a photo (paper §5.1 gigapixel image)"
    commands = ("fit-image",)
    default_preset = "image"
    default_preset_cpu = "image-cpu"

    def config_class(self) -> type:
        return ImageConfig

    def benchmark_step(self, backend, batch_size: int):
        """One fit-image training step on the bundled astronaut, for ``ngp bench``: the CPU preset's model with the
        paper's T=2^19 at ``batch_size``, on ``backend``. Returns a zero-argument callable."""
        from ngp_cli.tasks.gigapixel.fit import benchmark_step

        return benchmark_step(backend, batch_size)

    def register(self, app: typer.Typer) -> None:
        task = self

        @app.command("fit-image")
        def fit_image(
            photo: Annotated[Path | None, typer.Argument(
                help="PNG, JPEG, TIFF or EXR photo (8/16-bit, gray/RGB/RGBA, or float). "
                     "Default: scikit-image's bundled astronaut.png.", show_default=False)] = None,
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
            render_scale: Annotated[float | None, typer.Option(
                "--render-scale", help="Write the reconstruction at this scale (shorthand for "
                                       "--set image.render_scale=S).")] = None,
            max_pixels: Annotated[int | None, typer.Option(
                "--max-pixels", min=0, help="Accept photos of up to N pixels (default 2^28 = 268,435,456; 0 = no "
                                            "limit; shorthand for --set image.max_pixels=N).")] = None,
        ) -> None:
            """Train a hash-grid + MLP image model and write the reconstruction, an error heat-map and metrics.

            stdout: JSON lines (a final {"event":"done",...}); stderr: progress and logs.
            """
            from ngp_cli.tasks.gigapixel.fit import fit_image as run_fit

            sets = list(set_ or [])
            if render_scale is not None:
                sets.append(f"image.render_scale={render_scale}")
            if max_pixels is not None:
                sets.append(f"image.max_pixels={max_pixels}")
            opts = TrainOptions(preset=preset, sets=sets, runs_dir=runs_dir, name=name, resume=resume,
                                json=json_events, backend=backend, steps=steps,
                                allow_input_change=allow_input_change, save_optimizer=save_optimizer)
            run_fit(task, opts, photo)

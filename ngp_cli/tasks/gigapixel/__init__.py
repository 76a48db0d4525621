"""The gigapixel image task (paper §5.1): fit a hash encoding + MLP to one photo, ``ngp fit-image PHOTO``.

This module is imported by the plugin registry on every ``ngp`` call, so it holds only the task's declaration; the
work (torch, images) is imported inside its hooks, from :mod:`ngp_cli.tasks.gigapixel.fit`.
"""

from __future__ import annotations

from typing import Any

from ngp_cli.commands import VIEW_OPTIONS, VIEW_SIZE_OPTION
from ngp_cli.tasks import RunCommand, Shorthand, Task, TrainInput
from ngp_cli.tasks.gigapixel.config import ImageConfig, ImageSection, default_photo

__all__ = ["GigapixelTask", "ImageConfig", "ImageSection", "default_photo"]


class GigapixelTask(Task):
    name = "image"
    summary = "Fit a multiresolution hash encoding + MLP to a photo (paper §5.1 gigapixel image)"
    commands = ("fit-image", "view")
    run_commands = (
        RunCommand("view", "ngp_cli.tasks.gigapixel.viewer:view_command", """Serve a web viewer of an image run (viser,
        the 'viewer' extra): the reconstruction, the photo or the error map at any zoom, evaluated for the pixels on
        screen.""", options=(*VIEW_OPTIONS, VIEW_SIZE_OPTION)),
    )
    parallel_evaluation = True  # data parallel: the tiles are dealt out (fit.evaluate)
    default_preset = "image"
    default_preset_cpu = "image-cpu"
    train_command = "fit-image"
    train_help = """Train a hash-grid + MLP image model and write the reconstruction, an error heat-map and metrics.

    stdout: JSON lines (a final {"event":"done",...}); stderr: progress and logs.
    """
    train_input = TrainInput(
        "photo", "image.path", help="PNG, JPEG, TIFF or EXR photo (8/16-bit, gray/RGB/RGBA, or float). Default: "
                                    "scikit-image's bundled astronaut.png.", default=default_photo)
    shorthands = (
        Shorthand("--render-scale", "image.render_scale", "Write the reconstruction at this scale (shorthand for "
                                                          "--set image.render_scale=S).", float),
        Shorthand("--max-pixels", "image.max_pixels", "Accept photos of up to N pixels (default 2^28 = 268,435,456; 0 "
                                                      "= no limit; shorthand for --set image.max_pixels=N).", min=0),
    )

    def config_class(self) -> type:
        return ImageConfig

    def load_input(self, cfg: ImageConfig, fresh: bool) -> Any:
        from ngp_cli.tasks.gigapixel.fit import load_target

        return load_target(cfg, fresh)

    def build_problem(self, cfg: ImageConfig, backend: Any, data: Any) -> Any:
        from ngp_cli.tasks.gigapixel.fit import ImageProblem

        return ImageProblem(data, cfg, backend)

    def describe(self, cfg: ImageConfig, data: Any, problem: Any) -> str:
        from pathlib import Path

        return (f"photo {Path(cfg.image.path).name}: {data.width}x{data.height}, {data.channels} channel(s), "
                f"{data.image.dtype}")

    def live_viewer(self, server: Any, problem: Any, run_dir: Any) -> Any:
        from ngp_cli.tasks.gigapixel.viewer import ImageViewer

        return ImageViewer(server, problem, run_dir, None, threaded=False)

    def evaluate(self, problem: Any, run: Any, state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from ngp_cli.tasks.gigapixel.fit import final_evaluation

        return final_evaluation(problem, run, state)

    def result_line(self, cfg: ImageConfig, metrics: dict[str, Any], artifacts: dict[str, Any], state: Any) -> str:
        return (f"PSNR {metrics['psnr']:.2f} dB after {state.step} steps ({metrics['train_s']:.1f} s training); "
                f"reconstruction {artifacts['reconstruction']}")

    def benchmark_step(self, backend, batch_size: int):
        """One fit-image training step on the bundled astronaut, for ``ngp bench``: the CPU preset's model with the
        paper's T=2^19 at ``batch_size``, on ``backend``. Returns a zero-argument callable."""
        from ngp_cli.tasks.gigapixel.fit import benchmark_step

        return benchmark_step(backend, batch_size)

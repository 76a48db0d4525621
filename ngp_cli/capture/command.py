"""The ``ngp process-data`` command (typer). Importing this module imports neither pycolmap nor numpy, so ``ngp --help``
stays fast; the work is in :mod:`ngp_cli.capture.process`, imported when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ngp_cli.commands import choices, plain_choice
from ngp_cli.console import emit, info
from ngp_cli.errors import Interrupted, UsageError

__all__ = ["CAPTURE_EXTRA_HINT", "register", "require_pycolmap"]

CAPTURE_EXTRA_HINT = "pip install 'ngp-cli[capture]'"
MatchingChoice = choices("MatchingChoice", ("exhaustive", "sequential"))


def require_pycolmap() -> None:
    """Raise :class:`~ngp_cli.errors.UsageError` (exit 2, one line naming the extra) when pycolmap cannot be
    imported."""
    try:
        import pycolmap  # noqa: F401
    except ImportError:
        raise UsageError(f"ngp process-data needs pycolmap, which is not installed: {CAPTURE_EXTRA_HINT}") from None


def register(app: typer.Typer) -> None:
    """Add ``process-data`` to the ``ngp`` app."""

    @app.command("process-data")
    def process_data_cmd(
        input_path: Annotated[Path, typer.Argument(
            metavar="INPUT", help="A video file, or a folder of .jpg/.jpeg/.png photos (at least 3).")],
        out_dir: Annotated[Path, typer.Argument(
            metavar="OUT_DIR", help="Output folder (new or empty; see --overwrite).")],
        matching: Annotated[MatchingChoice, typer.Option(
            "--matching", callback=plain_choice,
            help="exhaustive (every pair; photos) or sequential (neighbours in name/time order; video).")
        ] = "exhaustive",
        num_frames: Annotated[int | None, typer.Option(
            "--num-frames", min=3,
            help="Video: frames to keep, the sharpest of each of N equal windows (default 100).")] = None,
        downscale: Annotated[int, typer.Option(
            "--downscale", min=1, help="Shrink the images by an N x N box filter before structure from motion.")] = 1,
        overwrite: Annotated[bool, typer.Option(
            "--overwrite", help="Replace a non-empty OUT_DIR (only once the new one is complete).")] = False,
    ) -> None:
        r"""Photos or a video -> camera poses (COLMAP through pycolmap) -> OUT_DIR/transforms.json for ngp train-nerf.

        Writes OUT_DIR/transforms.json (instant-ngp colmap2nerf conventions), images/, sparse_points.ply and
        colmap/sparse/0. stdout: one {"event":"done",...} line; stderr: progress stage by stage. Needs the capture
        extra: pip install 'ngp-cli\[capture]'.
        """
        require_pycolmap()
        from ngp_cli.capture.process import process_data

        try:
            result = process_data(input_path, out_dir, matching=matching, num_frames=num_frames,
                                  downscale=downscale, overwrite=overwrite)
        except KeyboardInterrupt:  # the temporary folder is already gone; OUT_DIR was not touched
            raise Interrupted(f"process-data stopped by Ctrl-C; nothing written to {out_dir}") from None
        info(f"done: {result.images_registered} of {result.images_given} images registered, mean reprojection "
             f"error {result.mean_reprojection_error_px:.3f} px, aabb_scale {result.aabb_scale}, "
             f"{result.points} points -> {result.out_dir}/transforms.json "
             f"({result.timings_s.get('total', 0.0):.1f} s)")
        emit("done", out_dir=str(result.out_dir), transforms=str(result.out_dir / "transforms.json"),
             source=result.source, images_given=result.images_given, images_registered=result.images_registered,
             unregistered=result.unregistered, mean_reprojection_error_px=result.mean_reprojection_error_px,
             aabb_scale=result.aabb_scale, points=result.points, frames_decoded=result.frames_decoded,
             mapping_runs=result.mapping_runs, pairs_checked=result.pairs_checked,
             pairs_contradicted=result.pairs_contradicted, timings_s=result.timings_s)

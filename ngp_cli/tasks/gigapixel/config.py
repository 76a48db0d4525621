"""The image task's config: the ``image`` section and ``ImageConfig`` (``ngp fit-image``), and the demo photo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ngp_cli.config import RunConfig, opt, section


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

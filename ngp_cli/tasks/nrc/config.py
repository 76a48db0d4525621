"""The radiance-caching task's config: the ``nrc`` section and ``NrcConfig`` (``ngp train-nrc``)."""

from __future__ import annotations

from dataclasses import dataclass

from ngp_cli.config import EncodingConfig, RunConfig, opt, section


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

"""The NeRF task's config: the ``nerf`` section and ``NerfConfig`` (``ngp train-nerf``), and the values derived from
it (the cone angle, the scene box)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ngp_cli.config import EncodingConfig, NetworkConfig, RunConfig, opt, section
from ngp_cli.errors import ConfigError


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
    occupancy_init: str = opt("auto", "how a new run's occupancy grid starts: full (instant-ngp: every cell a "
                                      "training camera sees), points (only the cells around the dataset's sparse "
                                      "points, nerf.sparse_points, dilated by nerf.occupancy_dilation cells), or auto "
                                      "(points when the dataset has them, as 'ngp process-data' writes them; else "
                                      "full). A new run records the choice made",
                              choices=("auto", "full", "points"))
    sparse_points: str = opt("", "PLY point cloud in the dataset's world frame for occupancy_init=points; empty: "
                                 "sparse_points.ply beside the dataset's transforms JSON (a new run records the path)")
    occupancy_dilation: int = opt(3, "occupancy_init=points: cells within this many cells (per axis) of a point's "
                                     "cell start occupied, in every cascade", ge=0, le=64)
    eval_split: str = opt("val", "held-out split for the periodic and final evaluation: val or test "
                                 "(the dataset's transforms_<split>.json, or its held-out frames)",
                          choices=("val", "test"))
    eval_views: int = opt(4, "views of eval_split used by the periodic evaluation (train.eval_every); the final "
                             "evaluation uses all", ge=1, le=10**6)
    render_views: int = opt(8, "views of eval_split whose renders are written to renders/ at the end", ge=0,
                            le=10**6)
    eval_chunk_rays: int = opt(1 << 17, "rays rendered together for evaluation and renders (at most 2^24; at least "
                                        "2^17 are used, see docs/nerf.md: a round's network batch is at most this "
                                        "many samples)", ge=256, le=1 << 24)
    render_min_transmittance: float = opt(0.01, "ngp render stops a ray once its transmittance falls below this "
                                                "(instant-ngp's testbed default for rendered frames; ngp eval and "
                                                "training always use 1e-4, as instant-ngp scores test views)",
                                          ge=0.0, lt=1.0)
    saliency_prune: bool = opt(False, "HollowNeRF: a coarse saliency mask multiplies the hash features and the "
                                      "density, trained jointly and pruned by ADMM to saliency_target of its "
                                      "vertices; samples where it is zero skip their table lookups (docs/nerf.md)")
    saliency_target: float = opt(0.2, "fraction of the mask's vertices kept non-zero by the pruner, in (0, 1]",
                                 gt=0.0, le=1.0)
    saliency_resolution: int = opt(64, "vertices per axis of the saliency mask over the scene box", ge=4, le=256)
    saliency_rho: float = opt(1.0e-6, "ADMM penalty weight rho of rho/2 |m - z + u|^2, added to the loss", gt=0.0,
                              le=1.0e6)
    saliency_start: int = opt(256, "step at which the ADMM phase starts (the mask trains freely before it)", ge=0,
                              le=10**9)
    saliency_admm_interval: int = opt(16, "steps between ADMM's z and dual updates", ge=1, le=10**6)
    saliency_prune_step: int = opt(3000, "step at which the mask is pruned to its kept vertices for good (the "
                                         "ADMM phase ends); must come after saliency_start", ge=1, le=10**9)

    def __post_init__(self) -> None:
        if self.saliency_prune and self.saliency_prune_step <= self.saliency_start:
            raise ConfigError(f"nerf.saliency_prune_step ({self.saliency_prune_step}) must come after "
                              f"nerf.saliency_start ({self.saliency_start})")


@dataclass
class NerfConfig(RunConfig):
    """Config of ``ngp train-nerf``: ``encoding``/``network`` are the position grid and density MLP, ``dir_encoding``
    and ``rgb_network`` the colour branch (instant-ngp's NeRF JSON names)."""

    nerf: NerfSection = section(NerfSection, "NeRF task settings")
    dir_encoding: EncodingConfig = section(EncodingConfig, "view-direction encoding (SphericalHarmonics)")
    rgb_network: NetworkConfig = section(NetworkConfig, "colour MLP")

    def __post_init__(self) -> None:
        if self.nerf.saliency_prune and self.distributed.partition > 1:
            raise ConfigError(f"nerf.saliency_prune with distributed.partition={self.distributed.partition}: the "
                              "saliency mask covers the whole scene box; prune unpartitioned runs")


def cone_angle(cfg: NerfConfig, aabb_scale: int) -> float:
    """The configured cone angle, or instant-ngp's default: 0 at aabb_scale 1, 1/256 otherwise."""
    if cfg.nerf.cone_angle is not None:
        return cfg.nerf.cone_angle
    return 0.0 if aabb_scale == 1 else 1.0 / 256.0


def scene_aabb_scale(cfg: NerfConfig, dataset: Any) -> int:
    """``nerf.aabb_scale`` or the dataset's. Raises ConfigError unless a power of two in 1..128."""
    scale = cfg.nerf.aabb_scale if cfg.nerf.aabb_scale is not None else dataset.aabb_scale
    if scale < 1 or scale > 128 or scale & (scale - 1):
        raise ConfigError(f"nerf.aabb_scale must be a power of two in 1..128, got {scale}")
    return scale

"""The SDF task's config: the ``sdf`` section and ``SdfConfig`` (``ngp train-sdf``)."""

from __future__ import annotations

from dataclasses import dataclass

from ngp_cli.config import RunConfig, opt, section

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

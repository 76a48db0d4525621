"""``ngp train-nerf``: the NeRF training problem (random rays → occupancy-grid marching → network → compositing) run by
the shared :class:`~ngp_cli.train.Trainer`, then the held-out evaluation and renders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ngp_cli.commands import TrainOptions, create_run, finish, prepare, restore, resumed_input
from ngp_cli.console import info, is_quiet
from ngp_cli.errors import ConfigError, DataError
from ngp_cli.nn.backend import Backend
from ngp_cli.tasks.nerf import NerfConfig
from ngp_cli.tasks.nerf.data import NerfDataset, load_dataset
from ngp_cli.tasks.nerf.model import NerfNetwork
from ngp_cli.tasks.nerf.render import composite, march_rays
from ngp_cli.train import Trainer

# instant-ngp rounds the adaptive ray count to this granularity (BATCH_SIZE_GRANULARITY).
_RAY_GRANULARITY = 128


def cone_angle(cfg: NerfConfig, aabb_scale: int) -> float:
    """The configured cone angle, or instant-ngp's default: 0 at aabb_scale 1, 1/256 otherwise."""
    if cfg.nerf.cone_angle is not None:
        return cfg.nerf.cone_angle
    return 0.0 if aabb_scale == 1 else 1.0 / 256.0


def scene_aabb_scale(cfg: NerfConfig, dataset: NerfDataset) -> int:
    """``nerf.aabb_scale`` or the dataset's. Raises ConfigError unless a power of two in 1..128."""
    scale = cfg.nerf.aabb_scale if cfg.nerf.aabb_scale is not None else dataset.aabb_scale
    if scale < 1 or scale > 128 or scale & (scale - 1):
        raise ConfigError(f"nerf.aabb_scale must be a power of two in 1..128, got {scale}")
    return scale


def load_split(cfg: NerfConfig, split: str) -> NerfDataset:
    """Load ``split`` of the run's dataset with the run's loading options. Raises DataError."""
    return load_dataset(Path(cfg.nerf.path), split, downscale=cfg.nerf.downscale,
                        holdout_every=cfg.nerf.holdout_every, allow_outside_root=cfg.nerf.allow_outside_root)


class NerfProblem:
    """Random training rays of ``dataset`` against :class:`NerfNetwork` (paper §5.4).

    A batch draws ``n_rays`` random pixels of random training views (a ray through a uniform random point of each,
    unless ``nerf.snap_to_pixel_centers``), marches their rays through the occupancy grid,
    composites the network's samples onto a random background colour per ray (the target's alpha is composited onto
    the same colour, so transparent pixels teach empty space), and adapts ``n_rays`` so a batch holds about
    ``train.batch_size`` samples (instant-ngp's ``n_rays_per_batch`` rule).
    """

    def __init__(self, dataset: NerfDataset, cfg: NerfConfig, backend: Backend, aabb_scale: int) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.device = backend.device
        self.kernel_target = backend.kernel_target
        init = torch.Generator().manual_seed(cfg.seed)
        self.model = NerfNetwork(cfg, aabb_scale, generator=init, kernel_target=backend.kernel_target).to(self.device)
        self.model.register_buffer("n_rays", torch.tensor(cfg.nerf.n_rays_initial, dtype=torch.int64))
        self.aabb_scale = aabb_scale
        self.cone_angle = cone_angle(cfg, aabb_scale)
        self.eval_set: NerfDataset | bool | None = None  # False: the dataset has no held-out views
        self.last_samples = 0

    def prepare_grid(self) -> int:
        """Mark cells no training camera sees (before the first step of a new run). Returns their number."""
        ds = self.dataset
        return self.model.grid.mark_untrained(ds.c2w, ds.intrinsics, ds.width, ds.height,
                                              near=self.cfg.nerf.near_distance)

    def before_step(self, step: int, generator: torch.Generator) -> None:
        nc = self.cfg.nerf
        if step % nc.grid_update_interval == 0:
            self.model.grid.update(self.model.density, generator, all_cells=step < nc.grid_warmup_steps,
                                   decay=nc.grid_decay, threshold=nc.grid_threshold,
                                   kernel_target=self.kernel_target)

    def batch_loss(self, batch_size: int, generator: torch.Generator,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, float]:
        n_rays = int(self.model.n_rays)
        image, pixels, colour = self.dataset.sample(n_rays, generator)
        if not self.cfg.nerf.snap_to_pixel_centers:  # a random point of the pixel, its colour (instant-ngp)
            pixels = pixels + torch.rand(n_rays, 2, generator=generator) - 0.5
        origins, directions = self.dataset.rays(image, pixels)
        jitter = torch.rand(n_rays, generator=generator)
        background = torch.rand(n_rays, 3, generator=generator)
        dev = self.device
        origins, directions, jitter = origins.to(dev), directions.to(dev), jitter.to(dev)
        background, colour = background.to(dev), colour.to(dev)
        samples = march_rays(origins, directions, self.model.grid.occupancy, self.aabb_scale,
                             cone_angle=self.cone_angle, near_distance=self.cfg.nerf.near_distance, jitter=jitter,
                             kernel_target=self.kernel_target)
        if colour.shape[1] == 4:
            alpha = colour[:, 3:4]
            target = colour[:, :3] * alpha + background * (1.0 - alpha)
        else:
            target = colour[:, :3]
        if samples.n_samples:
            sigma, rgb = self.model(samples.positions, directions[samples.ray_index])
            pred, opacity = composite(sigma, rgb, samples.dts, samples.offsets, self.kernel_target)
            pred = pred + (1.0 - opacity).unsqueeze(-1) * background
        else:
            # No ray reached an occupied cell: the loss still flows into nothing, keep the step harmless.
            pred = background + 0.0 * sum(p.sum() for p in self.model.parameters())
        loss = loss_fn(pred, target)
        self.last_samples = samples.n_samples
        measured = max(samples.n_samples, 1)
        new_rays = int(n_rays * batch_size / measured) // _RAY_GRANULARITY * _RAY_GRANULARITY
        self.model.n_rays.fill_(min(max(new_rays, _RAY_GRANULARITY), 1 << 20))
        with torch.no_grad():
            mse = float((pred.detach() - target).square().mean())
        return loss, mse

    def evaluate_held_out(self) -> dict:
        """PSNR on the first ``nerf.eval_views`` views of the held-out split (the periodic evaluation)."""
        from ngp_cli.tasks.nerf.evaluate import evaluate_views

        split = self.cfg.nerf.eval_split
        if self.eval_set is None:
            try:
                self.eval_set = load_split(self.cfg, split)
            except DataError as err:  # no held-out views (e.g. nerf.holdout_every=0): nothing to evaluate
                info(f"no periodic evaluation: {err}")
                self.eval_set = False
        if self.eval_set is False:
            return {"split": split, "n_views": 0}
        n = min(self.cfg.nerf.eval_views, len(self.eval_set))
        result = evaluate_views(self, self.eval_set, range(n), with_ssim=False)
        return {"split": split, "n_views": n, "psnr": result["psnr"], "eval_s": result["eval_s"]}

    def field(self, positions: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(positions, directions)


def _dataset_path(dataset: Path | None) -> Path:
    if dataset is not None:
        return dataset.expanduser().resolve()
    from ngp_cli.tasks.nerf.synthetic import ensure_synthetic_scene

    path = ensure_synthetic_scene()
    info(f"no dataset given: training on the built-in synthetic scene {path}")
    return path


def train_nerf(task, opts: TrainOptions, dataset: Path | None) -> None:
    """The ``ngp train-nerf`` command body. Raises NgpError subclasses on bad input."""
    from ngp_cli.tasks.nerf.evaluate import final_evaluation, format_ssim

    prep = prepare(task, opts)
    cfg: NerfConfig = prep.cfg
    if prep.run is None:
        path = _dataset_path(dataset)
        cfg.nerf.path = str(path)
        train_set = load_split(cfg, "train")
        aabb_scale = scene_aabb_scale(cfg, train_set)
        cfg.nerf.aabb_scale = aabb_scale
        if cfg.nerf.cone_angle is None:
            cfg.nerf.cone_angle = cone_angle(cfg, aabb_scale)
        name = path.stem if path.is_file() else path.name
        run = None
    else:
        run = prep.run
        resumed_input(prep, dataset, cfg.nerf.path, "nerf.path", "dataset")
        train_set = load_split(cfg, "train")
        aabb_scale = scene_aabb_scale(cfg, train_set)
    problem = NerfProblem(train_set, cfg, prep.backend, aabb_scale)
    if run is None:
        run = create_run(task, opts, cfg, default_name=name)
    n_params = sum(p.numel() for p in problem.model.parameters())
    info(f"dataset {cfg.nerf.path}: {len(train_set)} training views {train_set.width}x{train_set.height}, "
         f"aabb_scale {aabb_scale}; backend {prep.backend.name} on {prep.backend.device}; {n_params:,} parameters")

    trainer = Trainer(problem, cfg, run, json_events=opts.json, quiet=is_quiet(), save_optimizer=opts.save_optimizer)
    if not restore(trainer, prep):
        marked = problem.prepare_grid()
        info(f"occupancy grid: {problem.model.grid.cascades} cascade(s) of 128³, {marked:,} cells unseen by any "
             "training camera")
    state = trainer.fit()
    with trainer.evaluation_weights():
        metrics, artifacts = final_evaluation(problem, run, state.step)
    metrics = {**metrics, "loss": (state.last or {}).get("loss"), "steps": state.step,
               "train_s": round(state.elapsed_s, 3), "compile_s": round(state.compile_s, 3),
               "occupied_fraction": problem.model.grid.occupied_fraction()}
    checkpoints = run.checkpoints()
    artifacts["checkpoint"] = str(checkpoints[-1][1].with_suffix(".safetensors")) if checkpoints else None
    if metrics["n_views"]:
        info(f"{cfg.nerf.eval_split} PSNR {metrics['psnr']:.2f} dB, SSIM {format_ssim(metrics['ssim'])} over "
             f"{metrics['n_views']} views after {state.step} steps ({metrics['train_s']:.1f} s training)")
    else:
        info(f"trained {state.step} steps ({metrics['train_s']:.1f} s); {metrics['eval_skipped']}")
    finish(run, state.step, metrics, artifacts)

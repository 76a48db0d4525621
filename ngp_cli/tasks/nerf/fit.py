"""``ngp train-nerf``: the NeRF training problem (random rays → occupancy-grid marching → network → compositing) run by
the shared :class:`~ngp_cli.train.Trainer`, then the held-out evaluation and renders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ngp_cli.console import info, warn
from ngp_cli.errors import DataError
from ngp_cli.nn.backend import Backend
from ngp_cli.tasks.nerf.config import NerfConfig, cone_angle
from ngp_cli.tasks.nerf.data import NerfDataset, load_split
from ngp_cli.tasks.nerf.model import NerfNetwork
from ngp_cli.volrend.composite import composite
from ngp_cli.volrend.grid import OccupancyGrid, aabb_bounds
from ngp_cli.volrend.march import march_rays
from ngp_cli.volrend.render import MIN_CHUNK_RAYS

# instant-ngp rounds the adaptive ray count to this granularity (BATCH_SIZE_GRANULARITY).
_RAY_GRANULARITY = 128
_MAX_RAYS = 1 << 20


def _rays_to_draw(wanted: int) -> int:
    """Rays the host draws for a wanted ray count: 25% headroom for the device's adaptation between log steps,
    rounded to the granularity, at most 2^20."""
    headroom = -(-int(wanted) * 5 // 4 // _RAY_GRANULARITY) * _RAY_GRANULARITY
    return min(max(headroom, _RAY_GRANULARITY), _MAX_RAYS)


class _Rays(NamedTuple):
    """A training batch's rays on the model's device: ``n`` rays, origins/directions (n, 3), marching jitter (n,),
    random background (n, 3) and the target colour (n, 3) composited on it."""

    n: int
    origins: torch.Tensor
    directions: torch.Tensor
    jitter: torch.Tensor
    background: torch.Tensor
    target: torch.Tensor


class NerfProblem:
    """Random training rays of ``dataset`` against :class:`NerfNetwork` (paper §5.4).

    A batch draws random pixels of random training views (a ray through a uniform random point of each, unless
    ``nerf.snap_to_pixel_centers``), marches their rays through the occupancy grid into buffers of ``train.batch_size``
    samples, composites the network's samples onto a random background colour per ray (the target's alpha is composited
    onto the same colour, so transparent pixels teach empty space), and adapts the ray count so a batch holds about
    ``train.batch_size`` samples (instant-ngp's ``n_rays_per_batch`` rule, and like instant-ngp's fixed-size compacted
    batch, rays that do not fit are left out of the loss).

    Nothing in a step waits for the device (where the backend is cuda, batches are drawn and rays generated on the
    GPU): the ray count adapts on the device (the ``n_rays`` buffer) within the ``rays_drawn`` rays the host draws, and
    the host resizes that draw from the device's count on log steps only (:meth:`log_metrics`), to 1.25x the count.
    """

    #: Model state each data-parallel process keeps for itself (its batches' adaptive ray count), left out of the
    #: replica check (:func:`ngp_cli.distributed.check_replicas`); rank 0's is checkpointed.
    replica_local = ("n_rays",)

    def __init__(self, dataset: NerfDataset, cfg: NerfConfig, backend: Backend, aabb_scale: int) -> None:
        self.device = backend.device
        self.generator_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        self.dataset = dataset.to(self.generator_device)
        self.dataset.has_distortion  # noqa: B018 (computed now, once: the steps then never read the device for it)
        self.cfg = cfg
        self.kernel_target = backend.kernel_target
        self.model = self.build_model(cfg, aabb_scale, backend.kernel_target).to(self.device)
        self.model.register_buffer("n_rays", torch.tensor(cfg.nerf.n_rays_initial, dtype=torch.int64,
                                                          device=self.device))
        self.rays_drawn = _rays_to_draw(cfg.nerf.n_rays_initial)
        self.aabb_scale = aabb_scale
        self.cone_angle = cone_angle(cfg, aabb_scale)
        self.eval_set: NerfDataset | bool | None = None  # False: the dataset has no held-out views
        self._last: dict[str, torch.Tensor] = {}
        self._admm_active = False  # whether this step's loss carries the ADMM term (nerf.saliency_prune)

    def build_model(self, cfg: NerfConfig, aabb_scale: int, kernel_target: str | None) -> torch.nn.Module:
        """The model trained: :class:`NerfNetwork` initialised from the run seed."""
        init = torch.Generator().manual_seed(cfg.seed)
        return NerfNetwork(cfg, aabb_scale, generator=init, kernel_target=kernel_target)

    def prepare_grid(self) -> int:
        """Before the first step of a new run: mark the cells no training camera sees, and with
        ``nerf.occupancy_init: points`` seed the grid from the sparse points (:meth:`seed_grid`). Returns the number
        of unseen cells. Raises DataError (an unreadable point cloud)."""
        return self._prepare(self.model.grid)

    def _prepare(self, grid: OccupancyGrid) -> int:
        ds = self.dataset
        marked = grid.mark_untrained(ds.c2w, ds.intrinsics, ds.width, ds.height, near=self.cfg.nerf.near_distance)
        if self.cfg.nerf.occupancy_init == "points":
            self.seed_grid(grid)
        return marked

    def seed_grid(self, grid: OccupancyGrid | None = None) -> int:
        """Seed the occupancy grid from ``nerf.sparse_points`` (default ``sparse_points.ply`` beside the transforms
        JSON): the points are mapped into the ngp frame with the dataset's ``scale``/``offset`` exactly as the camera
        positions are (:func:`~ngp_cli.tasks.nerf.placement.points_to_ngp`), and the cells within
        ``nerf.occupancy_dilation`` cells of them start occupied, the others empty
        (:meth:`~ngp_cli.volrend.grid.OccupancyGrid.seed_from_points`). One info line gives the counts; when no
        point lies in a cell a training camera sees, the grid stays full (with a warning). Returns the cells seeded.
        Raises DataError."""
        from ngp_cli.tasks.nerf.placement import points_to_ngp, read_sparse_points, sparse_points_path

        nc = self.cfg.nerf
        ds = self.dataset
        path = sparse_points_path(nc.sparse_points, ds.root)
        world = read_sparse_points(path)
        points = torch.from_numpy(points_to_ngp(world, ds.scale, ds.offset))
        lo, hi = aabb_bounds(self.aabb_scale)
        outside = int((~((points >= lo) & (points < hi)).all(dim=1)).sum())
        grid = self.model.grid if grid is None else grid
        seeded = grid.seed_from_points(points, nc.occupancy_dilation)
        if seeded == 0:
            warn(f"{path}: none of its {len(points):,} points lies in a cell a training camera sees inside the scene "
                 "box: the occupancy grid starts full (nerf.occupancy_init=points ignored)")
            return 0
        info(f"occupancy grid seeded from {len(points):,} sparse points ({outside:,} outside the scene box) dilated "
             f"by {nc.occupancy_dilation} cells: {seeded:,} cells occupied ({grid.occupied_fraction():.2%})")
        return seeded

    def before_step(self, step: int, generator: torch.Generator) -> None:
        if step % self.cfg.nerf.grid_update_interval == 0:
            self._update_grid(self.model.grid, self.model.density, step, generator)
        if self._mask is not None:
            self._saliency_schedule(step)

    @property
    def _mask(self):
        """The model's saliency mask (None: no pruning, or a partitioned model, which has none)."""
        return getattr(self.model, "saliency", None)

    def _saliency_schedule(self, step: int) -> None:
        """HollowNeRF's pruning schedule (:mod:`ngp_cli.tasks.nerf.saliency`) before step ``step``: project the mask
        into [0, 1] and its support; from ``nerf.saliency_start``, ADMM's z and dual updates every
        ``nerf.saliency_admm_interval`` steps and the penalty in the loss; at ``nerf.saliency_prune_step``, the hard
        prune (once; a resumed run knows from the checkpoint's ``pruned`` flag). Once pruned, the mask is a constant
        and nothing here runs."""
        nc = self.cfg.nerf
        mask = self._mask
        self._admm_active = False
        if mask.is_pruned():
            return
        if step >= nc.saliency_prune_step:
            mask.prune()
            return
        mask.project()
        if step >= nc.saliency_start:
            if (step - nc.saliency_start) % nc.saliency_admm_interval == 0:
                mask.admm_update()
            self._admm_active = True

    def _update_grid(self, grid: OccupancyGrid, density: Callable[[torch.Tensor], torch.Tensor], step: int,
                     generator: torch.Generator) -> None:
        nc = self.cfg.nerf
        grid.update(density, generator, all_cells=step < nc.grid_warmup_steps, decay=nc.grid_decay,
                    threshold=nc.grid_threshold, kernel_target=self.kernel_target)

    def parameter_counts(self) -> dict:
        """For the summary: ``table_params``, the hash tables' parameters (L·F per entry, every level), and with a
        saliency mask ``saliency_kept`` (the fraction of its R³ vertices non-zero) and ``saliency_params`` (those
        vertices: what a pruned mask stores besides its R³-bit support). Nothing for a model without one grid
        (a spatially partitioned one)."""
        if not isinstance(self.model, NerfNetwork):
            return {}
        counts = {"table_params": self.model.encoding.levels.n_params}
        mask = self._mask
        if mask is not None:
            kept = mask.kept_fraction()
            counts |= {"saliency_kept": kept, "saliency_params": round(kept * mask.n_vertices)}
        return counts

    def occupied_fraction(self) -> float:
        """Fraction of the occupancy grid's cells occupied (over all cascades)."""
        return self.model.grid.occupied_fraction()

    def _draw_rays(self, generator: torch.Generator) -> _Rays:
        """The batch's ``rays_drawn`` random rays on the model's device (see the class docstring)."""
        n = self.rays_drawn
        gen_dev = generator.device
        image, pixels, colour = self.dataset.sample(n, generator)
        if not self.cfg.nerf.snap_to_pixel_centers:  # a random point of the pixel, its colour (instant-ngp)
            pixels = pixels + torch.rand(n, 2, generator=generator, device=gen_dev) - 0.5
        origins, directions = self.dataset.rays(image, pixels)
        jitter = torch.rand(n, generator=generator, device=gen_dev)
        background = torch.rand(n, 3, generator=generator, device=gen_dev)
        dev = self.device
        background, colour = background.to(dev), colour.to(dev)
        if colour.shape[1] == 4:
            alpha = colour[:, 3:4]
            target = colour[:, :3] * alpha + background * (1.0 - alpha)
        else:
            target = colour[:, :3]
        return _Rays(n, origins.to(dev), directions.to(dev), jitter.to(dev), background, target)

    def batch_loss(self, batch_size: int, generator: torch.Generator,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rays = self._draw_rays(generator)
        n_active = self.model.n_rays.clamp(max=rays.n)
        samples = march_rays(rays.origins, rays.directions, self.model.grid.occupancy, self.aabb_scale,
                             cone_angle=self.cone_angle, near_distance=self.cfg.nerf.near_distance,
                             jitter=rays.jitter, n_active=n_active, capacity=batch_size,
                             kernel_target=self.kernel_target)
        sigma, rgb = self.model(samples.positions, rays.directions[samples.ray_index])
        pred, opacity = composite(sigma, rgb, samples.dts, samples.offsets, self.kernel_target)
        loss, mse = self._loss(rays, pred, opacity, samples.ray_ok, samples.requested, n_active, batch_size, loss_fn)
        if self._admm_active:  # the m-step of ADMM is this step: the augmented-Lagrangian term joins the gradient
            penalty = self.model.saliency.penalty(self.cfg.nerf.saliency_rho)
            loss = loss + (penalty - penalty.detach())  # (the value logged stays the photometric loss)
        return loss, mse

    def _loss(self, rays: _Rays, pred: torch.Tensor, opacity: torch.Tensor, ray_ok: torch.Tensor,
              requested: torch.Tensor, n_active: torch.Tensor, batch_size: int,
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss and mse from the composited colour and opacity (R, 3), (R,) of its rays, and the ray
        count's adaptation from the ``requested`` samples."""
        n, target = rays.n, rays.target
        pred = pred + (1.0 - opacity).unsqueeze(-1) * rays.background
        # The loss is the mean over the rays that count: the others predict their target (no loss, no gradient), and
        # the mean over all n is rescaled by n / (rays that count).
        pred = torch.where(ray_ok.unsqueeze(-1), pred, target)
        n_ok = ray_ok.sum().clamp_min(1)
        loss = loss_fn(pred, target) * (n / n_ok)
        with torch.no_grad():
            mse = (pred - target).square().sum() / (3 * n_ok)
            # instant-ngp's rule on the device: rays for the next batch = rays x target samples / samples taken.
            new_rays = n_active * batch_size // requested.clamp_min(1) // _RAY_GRANULARITY * _RAY_GRANULARITY
            self.model.n_rays.copy_(new_rays.clamp(_RAY_GRANULARITY, _MAX_RAYS))
        self._last = {"rays": n_ok, "samples": requested}
        return loss, mse

    def log_metrics(self) -> dict:
        """On log steps (the loop reads the device then anyway): the last batch's ray and sample counts, and the
        host's draw resized from the device's adapted ray count."""
        wanted, rays, samples = torch.stack([self.model.n_rays, self._last["rays"], self._last["samples"]]).tolist()
        self.rays_drawn = _rays_to_draw(wanted)
        extra = {}
        if self._mask is not None:  # the share of the mask's vertices kept, and of the last batch's samples encoded
            salient, queried = self.model.last_salient
            extra = {"saliency_kept": self._mask.kept_fraction(), "salient_samples": salient / max(queried, 1)}
        return {"rays_per_batch": rays, "samples_per_batch": samples, **extra}

    def host_state(self) -> dict:
        return {"rays_drawn": self.rays_drawn}

    def load_host_state(self, state: dict | None) -> None:
        """Restore :meth:`host_state`; a checkpoint from before it existed sizes the draw from the ``n_rays``
        buffer."""
        drawn = (state or {}).get("rays_drawn")
        self.rays_drawn = int(drawn) if isinstance(drawn, int) and drawn > 0 else _rays_to_draw(int(self.model.n_rays))

    def evaluate_held_out(self) -> dict:
        """PSNR on the first ``nerf.eval_views`` views of the held-out split (the periodic evaluation)."""
        from ngp_cli.tasks.nerf.views import evaluate_views

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

    def render_options(self) -> dict:
        """The keyword arguments of :func:`~ngp_cli.volrend.render.render_ray_maps` that render as this problem
        trains: its marching (cone angle, near distance), its kernels, and at least
        :data:`~ngp_cli.volrend.render.MIN_CHUNK_RAYS` rays per chunk (runs made before issue 17 recorded 8192,
        which the adaptive rounds would turn into thousands of small network batches)."""
        return {"cone_angle": self.cone_angle, "near_distance": self.cfg.nerf.near_distance,
                "chunk_rays": max(self.cfg.nerf.eval_chunk_rays, MIN_CHUNK_RAYS), "kernel_target": self.kernel_target}

    def render_field(self) -> tuple:
        """What the renderers query: ``(field, ray_features)``, the network taking encoded directions and the
        per-ray direction encoding (``ray_features`` of :func:`ngp_cli.volrend.render.render_ray_maps`)."""
        return self.model.forward_encoded, self.model.ray_features

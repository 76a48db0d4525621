"""Spatial partitioning of a NeRF over processes (NeRF-XL, Li et al. 2024; issue 19 part 2):
``--set distributed.partition=K``.

The scene box is cut into ``K`` ∈ {2, 4, 8} regions by the planes through its centre (x = 0.5, then y, then z, in
the ngp frame). Each region has its own *part*: a hash grid and an occupancy grid, in a
:class:`~ngp_cli.tasks.nerf.model.NerfNetwork` whose hash tables hold ``T / K`` entries per level (``log2_hashmap_size``
less ``log2 K``), so the parts together have the tables of one model and each process holds ``1/K`` of them. The two
small MLPs (37 KB) are one pair shared by every part, their gradients summed over the processes each step as in data
parallelism (:meth:`PartitionedNerfProblem.after_backward`). NeRF-XL gives each part MLPs of its own, and so did the
first version here, which on a small scene often pruned an object early and ended 10 dB lower
(docs/benchmarks/2026-12-06-cpu-2core-xeon-amx-issue19-partition.md); separate tables with shared MLPs track one
model.
A part's occupancy grid keeps only the cells of its region (the others are marked -1 and stay empty): the planes are
cell faces of every cascade, so each cell lies in one region, and marching a ray through a part's grid yields exactly
the samples of the ray inside that region, on the same step lattice.

Training (:class:`PartitionedNerfProblem`): every process draws the same rays; process ``k`` marches them through
part ``k``'s grid, queries part ``k`` and composites its segment of each ray to (colour, opacity, where the segment
starts); one all-gather brings every segment to every process, and :func:`~ngp_cli.volrend.composite.combine_segments`
composites them in ray order into the pixel colour, as in NeRF-XL. Each process then holds the whole batch's loss;
the gradient of its own part flows back through the combination (the other parts' segments are constants there):
its tables' gradient is complete, and the shared MLPs' gradients are summed over the processes. The occupancy grid updates draw the same cells on every process, each scoring its own.

Run on ``K`` processes (``--nproc K`` or torchrun), process ``k`` holds part ``k``; on one process it holds them all
and computes the same steps one part after another. The checkpoint is the same either way (rank 0 gathers the parts),
so ``--resume``, ``ngp eval``, ``ngp render``, ``ngp extract-mesh`` and ``ngp bake`` work on one process or on K.
A process holding every part renders with the parts as one piecewise field (:class:`PartitionedNerf`), exactly as one
model would be rendered; K processes render each its segments and combine them (:meth:`PartitionedNerfProblem.
render_segments`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from ngp_cli.distributed import World, all_gather, all_reduce_gradients, all_reduce_sum, current_world, gather_to_main
from ngp_cli.errors import ConfigError
from ngp_cli.nn.backend import Backend
from ngp_cli.tasks.nerf.config import NerfConfig
from ngp_cli.tasks.nerf.data import NerfDataset
from ngp_cli.tasks.nerf.fit import NerfProblem
from ngp_cli.tasks.nerf.model import NerfNetwork
from ngp_cli.volrend.composite import combine_segments, composite, segment_entries
from ngp_cli.volrend.constants import GRID_CELLS, MIN_TRANSMITTANCE
from ngp_cli.volrend.grid import OccupancyGrid
from ngp_cli.volrend.march import march_rays
from ngp_cli.volrend.render import RayRows, render_ray_maps

__all__ = ["PARTITIONS", "PartitionedNerf", "PartitionedNerfProblem", "owned_parts", "part_config", "region_of"]

#: The region counts: the box halved along x, then y, then z.
PARTITIONS = (1, 2, 4, 8)


def region_of(positions: Tensor, parts: int) -> Tensor:
    """The region (N,) int64 of (N, 3) ngp-frame positions among ``parts`` regions: bit 0 is ``x >= 0.5``, bit 1
    ``y >= 0.5``, bit 2 ``z >= 0.5``, for the first ``log2(parts)`` axes. Raises ValueError for a count not in
    :data:`PARTITIONS`."""
    if parts not in PARTITIONS:
        raise ValueError(f"parts must be one of {PARTITIONS}, got {parts}")
    region = torch.zeros(positions.shape[0], dtype=torch.int64, device=positions.device)
    for axis in range(int(math.log2(parts))):
        region |= (positions[:, axis] >= 0.5).to(torch.int64) << axis
    return region


def region_cells(grid: OccupancyGrid, parts: int, k: int) -> Tensor:
    """(cascades·128³,) bool: the cells of ``grid`` (every cascade) whose centre lies in region ``k``; since the
    region planes are cell faces of every cascade, each cell lies wholly in one region."""
    idx = torch.arange(grid.n_cells, device=grid.density.device)
    centres = grid.cell_positions(idx, torch.full((idx.numel(), 3), 0.5, device=idx.device))
    return region_of(centres, parts) == k


def part_config(cfg: NerfConfig, parts: int) -> NerfConfig:
    """The config of one part: ``cfg`` with ``encoding.log2_hashmap_size`` less ``log2(parts)`` (at least 2), so the
    parts' tables together hold one model's entries. Raises ConfigError for a count not in :data:`PARTITIONS`."""
    if parts not in PARTITIONS:
        raise ConfigError(f"distributed.partition must be one of {', '.join(map(str, PARTITIONS))}, got {parts}")
    part = copy.deepcopy(cfg)
    part.encoding.log2_hashmap_size = max(2, cfg.encoding.log2_hashmap_size - int(math.log2(parts)))
    return part


def owned_parts(parts: int, world: World) -> list[int]:
    """The parts this process holds: all of them on one process, part ``rank`` on ``parts`` processes. Raises
    ConfigError for another process count (a partitioned run is not also data parallel)."""
    if not world.distributed:
        return list(range(parts))
    if world.size != parts:
        raise ConfigError(f"distributed.partition={parts} runs on 1 process or on {parts} (one part each), not on "
                          f"{world.size}: use --nproc {parts}")
    return [world.rank]


class PartitionedNerf(nn.Module):
    """The parts this process holds (``parts``: an ``nn.ModuleDict`` of :class:`~ngp_cli.tasks.nerf.model.NerfNetwork`
    keyed by part index, so the state-dict names ``parts.<k>.…`` are the same on any process count).

    Holding every part, it is one piecewise field with :class:`NerfNetwork`'s interface: ``forward``,
    ``forward_encoded``, ``density`` route each (N, 3) position to the part of its region (:func:`region_of`), and
    ``grid`` is the union of the parts' occupancy grids (an :class:`~ngp_cli.volrend.grid.OccupancyGrid` rebuilt when
    a part's grid changes). Holding some parts only, those raise RuntimeError.
    """

    def __init__(self, cfg: NerfConfig, aabb_scale: int, n_parts: int, owned: list[int], *,
                 kernel_target: str | None = None) -> None:
        super().__init__()
        part_cfg = part_config(cfg, n_parts)
        self.n_parts = n_parts
        parts = {}
        for k in owned:
            # Every part starts from the run seed: as copies of one model, whichever process builds them.
            init = torch.Generator().manual_seed(cfg.seed)
            parts[str(k)] = NerfNetwork(part_cfg, aabb_scale, generator=init, kernel_target=kernel_target)
        first = next(iter(parts.values()))
        # The MLPs are one pair shared by every part (registered first, so they lead parameters() and the optimizer).
        self.density_network = first.density_network
        self.rgb_network = first.rgb_network
        for part in parts.values():
            part.density_network, part.rgb_network = self.density_network, self.rgb_network
        self.parts = nn.ModuleDict(parts)
        # The state dict names the shared MLPs once (``density_network.*``, ``rgb_network.*``; safetensors refuses
        # tensors under two names), and loading hands them to every part again.
        self.register_state_dict_post_hook(_drop_part_mlps)
        self.register_load_state_dict_pre_hook(_give_part_mlps)
        self.aabb_scale, self.aabb_lo, self.aabb_size = first.aabb_scale, first.aabb_lo, first.aabb_size
        self._merged: tuple[tuple, OccupancyGrid] | None = None  # (the parts' grid versions, their union)

    @property
    def kernel_target(self) -> str | None:
        return next(iter(self.parts.values())).kernel_target

    @kernel_target.setter
    def kernel_target(self, target: str | None) -> None:
        for part in self.parts.values():
            part.kernel_target = target

    def owned(self) -> Iterator[tuple[int, NerfNetwork]]:
        """(part index, part) of the parts held, in index order."""
        for k, part in self.parts.items():
            yield int(k), part

    @property
    def whole(self) -> bool:
        """Whether every part is held here."""
        return len(self.parts) == self.n_parts

    def _require_whole(self) -> None:
        if not self.whole:
            raise RuntimeError(f"this process holds part(s) {sorted(int(k) for k in self.parts)} of {self.n_parts}: "
                               "query the field through the segment renderer")

    @property
    def grid(self) -> OccupancyGrid:
        """The union of the held parts' occupancy grids (density: the cell's own part's value; -1 in no part)."""
        grids = [part.grid for _, part in self.owned()]
        key = tuple((g.density.data_ptr(), g.density._version, g.occupancy._version) for g in grids)
        if self._merged is None or self._merged[0] != key:
            merged = OccupancyGrid(self.aabb_scale, device=grids[0].density.device)
            merged.density.copy_(torch.stack([g.density for g in grids]).amax(0))
            merged.occupancy.copy_(torch.stack([g.occupancy for g in grids]).amax(0))
            self._merged = (key, merged)
        return self._merged[1]

    def _route(self, positions: Tensor, query: Callable[[NerfNetwork, Tensor], tuple[Tensor, ...]],
               widths: tuple[int, ...]) -> tuple[Tensor, ...]:
        """``query(part, rows)`` for each part on the rows of ``positions`` in its region, put back in row order
        (differentiable: ``index_copy``). ``widths``: each output's columns (0: a vector)."""
        self._require_whole()
        region = region_of(positions, self.n_parts)
        n = positions.shape[0]
        outs = [positions.new_zeros((n, w) if w else (n,), dtype=torch.float32) for w in widths]
        for k, part in self.owned():
            rows = torch.nonzero(region == k).squeeze(1)
            if rows.numel():
                values = query(part, rows)
                outs = [o.index_copy(0, rows, v.to(o.dtype)) for o, v in zip(outs, values, strict=True)]
        return tuple(outs)

    def density(self, positions: Tensor) -> Tensor:
        """σ (N,) float32 at (N, 3) positions, each from its region's part."""
        return self._route(positions, lambda part, rows: (part.density(positions[rows]),), (0,))[0]

    @property
    def shared_directions(self) -> bool:
        """Whether the parts' direction encodings have no parameters (the spherical harmonics of every preset), so
        one :meth:`encode_directions` serves every part."""
        return not any(p.numel() for _, part in self.owned() for p in part.dir_encoding.parameters())

    def encode_directions(self, directions: Tensor) -> Tensor:
        """The direction encoding shared by the parts (:attr:`shared_directions`; RuntimeError otherwise)."""
        if not self.shared_directions:
            raise RuntimeError("the parts' direction encodings have parameters of their own: use forward()")
        return next(iter(self.parts.values())).encode_directions(directions)

    def ray_features(self, directions: Tensor) -> Tensor:
        """The renderers' per-ray features (:meth:`NerfNetwork.ray_features`), the same for every part: they share
        the direction encoding (:attr:`shared_directions`; RuntimeError otherwise) and the MLPs."""
        if not self.shared_directions:
            raise RuntimeError("the parts' direction encodings have parameters of their own: use forward()")
        return next(iter(self.parts.values())).ray_features(directions)

    def forward_encoded(self, positions: Tensor, encoded_directions: Tensor | RayRows) -> tuple[Tensor, Tensor]:
        """(σ (N,), rgb (N, 3)) float32, each sample from its region's part (a
        :class:`~ngp_cli.volrend.render.RayRows` goes to each part with its samples' rows)."""
        return self._route(positions, lambda part, rows: part.forward_encoded(positions[rows],
                                                                              encoded_directions[rows]), (0, 3))

    def forward(self, positions: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        """(σ (N,), rgb (N, 3)) float32 at (N, 3) positions seen along (N, 3) unit directions, each sample from its
        region's part."""
        return self._route(positions, lambda part, rows: part(positions[rows], directions[rows]), (0, 3))

    def param_groups(self, l2_reg: float) -> list[dict]:
        """The shared MLPs (L2 ``l2_reg``), then the held parts' hash tables in part order (no L2, sparse Adam), as
        :meth:`NerfNetwork.param_groups` separates them."""
        nets = list(self.density_network.parameters()) + list(self.rgb_network.parameters())
        tables = [p for _, part in self.owned() for p in part.encoding.parameters()]
        return [{"params": nets, "weight_decay": l2_reg, "name": "network"},
                {"params": tables, "weight_decay": 0.0, "name": "encoding"}]

    def whole_indices(self) -> tuple[list[int], list[int]]:
        """Where this process's parameters stand in a process holding every part: for each local index, the index in
        the whole model's optimizer order (:meth:`param_groups`) and in its ``parameters()`` order (the EMA's). The
        identity when every part is held."""
        names = {id(p): n for n, p in self.named_parameters()}
        local_params = [n for n, _ in self.named_parameters()]
        local_optim = [names[id(p)] for g in self.param_groups(0.0) for p in g["params"]]
        if self.whole:
            return list(range(len(local_optim))), list(range(len(local_params)))
        (k, _), = self.owned()

        def whole(order: list[str]) -> list[str]:  # the shared names, then every part's names in part order
            shared = [n for n in order if not n.startswith("parts.")]
            own = [n for n in order if n.startswith(f"parts.{k}.")]
            return shared + [n.replace(f"parts.{k}.", f"parts.{j}.", 1) for j in range(self.n_parts) for n in own]

        optim, params = whole(local_optim), whole(local_params)
        return [optim.index(n) for n in local_optim], [params.index(n) for n in local_params]


class PartitionedNerfProblem(NerfProblem):
    """:class:`~ngp_cli.tasks.nerf.fit.NerfProblem` over a :class:`PartitionedNerf` (see the module docstring).

    The Trainer sees ``model_parallel``: one sampling stream shared by every process, no replica check, the shared
    MLPs' gradients summed by :meth:`after_backward` (the tables' need nothing), and the checkpoint assembled by
    :meth:`checkpoint_tensors` / split by :meth:`local_tensors`.
    """

    model_parallel = True

    def __init__(self, dataset: NerfDataset, cfg: NerfConfig, backend: Backend, aabb_scale: int) -> None:
        self.world = current_world()
        self.n_parts = cfg.distributed.partition
        part_config(cfg, self.n_parts)  # ConfigError for a bad count, before anything is built
        self.owned_indices = owned_parts(self.n_parts, self.world)
        super().__init__(dataset, cfg, backend, aabb_scale)
        self._shared_mlps = nn.ModuleList([self.model.density_network, self.model.rgb_network])

    def build_model(self, cfg: NerfConfig, aabb_scale: int, kernel_target: str | None) -> nn.Module:
        return PartitionedNerf(cfg, aabb_scale, self.n_parts, self.owned_indices, kernel_target=kernel_target)

    # -- the occupancy grids

    def prepare_grid(self) -> int:
        """Every held part's grid as one model's (:meth:`NerfProblem.prepare_grid`), then restricted to its
        region. Returns the cells no training camera sees (counted once)."""
        marked = 0
        for k, part in self.model.owned():
            marked = self._prepare(part.grid)
            part.grid.restrict(region_cells(part.grid, self.n_parts, k))
        self._threshold_parts()
        return marked

    def before_step(self, step: int, generator: torch.Generator) -> None:
        """Each held part updates its grid from the same draws (the generator is rewound for each), so one process
        holding every part draws what K processes draw."""
        if step % self.cfg.nerf.grid_update_interval:
            return
        start = generator.get_state()
        for _, part in self.model.owned():
            generator.set_state(start)
            self._update_grid(part.grid, part.density, step, generator)
        self._threshold_parts()

    def _threshold_parts(self) -> None:
        """A cell is occupied above min(threshold, mean of cascade 0) over the whole scene, as in one model: a part's
        own mean (its other cells empty) would let a foggy region keep every cell. A collective."""
        sums = torch.stack([part.grid.density[:GRID_CELLS].clamp_min(0).double().sum()
                            for _, part in self.model.owned()]).sum().reshape(1)
        mean = (all_reduce_sum(sums.cpu(), self.world) / GRID_CELLS)[0]
        for _, part in self.model.owned():
            part.grid.threshold_occupancy(self.cfg.nerf.grid_threshold, mean)

    def occupied_fraction(self) -> float:
        """Fraction of occupied cells of the whole scene (summed over the processes' parts)."""
        count = torch.tensor([float(part.grid.occupancy.sum()) for _, part in self.model.owned()]).sum()
        total = all_reduce_sum(count.reshape(1).double(), self.world)[0]
        return float(total) / self.model.parts[str(self.owned_indices[0])].grid.n_cells

    # -- training

    def batch_loss(self, batch_size: int, generator: torch.Generator,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rays = self._draw_rays(generator)
        n_active = self.model.n_rays.clamp(max=rays.n)
        local = {}
        for k, part in self.model.owned():
            samples = march_rays(rays.origins, rays.directions, part.grid.occupancy, self.aabb_scale,
                                 cone_angle=self.cone_angle, near_distance=self.cfg.nerf.near_distance,
                                 jitter=rays.jitter, n_active=n_active, capacity=batch_size,
                                 kernel_target=self.kernel_target)
            sigma, rgb = part(samples.positions, rays.directions[samples.ray_index])
            colour, opacity = composite(sigma, rgb, samples.dts, samples.offsets, self.kernel_target)
            local[k] = (colour, opacity, segment_entries(samples.ts, samples.offsets), samples.ray_counts.double(),
                        samples.requested)
        colour, opacity, entry, counts, requested = self._exchange(local, rays.n)
        pred, pred_opacity = combine_segments(colour, opacity, entry)
        # The rays one model would take: in order, while the samples of all parts together fit train.batch_size
        # (each part's own share of them then fits its buffer); the ray count adapts to all the samples, as one
        # model's does.
        marched = torch.arange(rays.n, device=counts.device) < n_active
        ok = (torch.cumsum(counts.sum(0), 0) <= batch_size) & marched
        return self._loss(rays, pred, pred_opacity, ok, requested.sum(), n_active, batch_size, loss_fn)

    def _exchange(self, local: dict, n: int) -> tuple[Tensor, ...]:
        """Every part's segments ``(colour (K, n, 3), opacity (K, n), entry (K, n), samples per ray (K, n) float64,
        requested (K,))``:
        this process's own with their autograd graph, the others' from one all-gather (constants here)."""
        if self.world.distributed:
            (k,) = local
            c, o, e, cnt, req = local[k]
            packed = torch.cat([c.detach().double(), o.detach().double().unsqueeze(1), e.double().unsqueeze(1),
                                cnt.double().unsqueeze(1), req.double().expand(n, 1)], 1)
            for r, other in enumerate(all_gather(packed, self.world)):
                if r != k:
                    local[r] = (other[:, :3].float(), other[:, 3].float(), other[:, 4].float(), other[:, 5],
                                other[0, 6].round().long())
        order = range(self.n_parts)
        return (torch.stack([local[k][0] for k in order]), torch.stack([local[k][1] for k in order]),
                torch.stack([local[k][2] for k in order]), torch.stack([local[k][3] for k in order]),
                torch.stack([local[k][4].reshape(()) for k in order]))

    def after_backward(self) -> None:
        """On K processes: sum the shared MLPs' gradients (each process back-propagated its own segments), so
        every process takes the same MLP step, as one process holding every part does. A collective."""
        if self.world.distributed:
            all_reduce_gradients(self._shared_mlps, self.world)

    # -- the checkpoint, the same on any process count

    def checkpoint_tensors(self, tensors: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """The whole model's checkpoint from this process's ``tensors`` (:func:`ngp_cli.train.state_tensors` of its
        parts): on K processes, rank 0 gathers the others' and renumbers their optimizer and EMA entries as one
        process holding every part numbers them (:meth:`PartitionedNerf.whole_indices`). A collective; returns None
        on ranks > 0."""
        if not self.world.distributed:
            return tensors
        gathered = gather_to_main(({k: v.cpu() for k, v in tensors.items()}, self.model.whole_indices()), self.world)
        if gathered is None:
            return None
        whole: dict[str, Tensor] = {}
        for part_tensors, maps in gathered:
            for key, value in part_tensors.items():
                whole[_renumber(key, maps)] = value
        return whole

    def local_tensors(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """This process's share of a whole-model checkpoint (the inverse of :meth:`checkpoint_tensors`): its parts'
        weights and their optimizer and EMA entries, numbered from 0."""
        if not self.world.distributed:
            return tensors
        (k,) = self.owned_indices
        optim, params = self.model.whole_indices()
        inverse = ({w: i for i, w in enumerate(optim)}, {w: i for i, w in enumerate(params)})
        mine: dict[str, Tensor] = {}
        for key, value in tensors.items():
            if key.startswith("model.parts."):
                if key.split(".")[2] == str(k):
                    mine[key] = value
                continue
            index = _index_of(key)
            if index is None:
                mine[key] = value
            elif index in inverse[key.startswith("ema.")]:
                mine[_renumber(key, inverse)] = value
        return mine

    # -- rendering

    def render_field(self) -> tuple:
        """:meth:`NerfProblem.render_field` of the piecewise model: the encoded-direction path where the parts share
        their direction encoding, else ``forward`` with no per-ray features."""
        if self.model.shared_directions:
            return self.model.forward_encoded, self.model.ray_features
        return self.model.forward, None

    @property
    def render_segments(self) -> Callable | None:
        """None when this process holds every part (the renderers then query :class:`PartitionedNerf` as one
        field); else :meth:`_render_segments`, which every process calls with the same rays."""
        return None if self.model.whole else self._render_segments

    def _render_segments(self, origins: Tensor, directions: Tensor, maps: tuple[str, ...],
                         background: Tensor | None, *, min_transmittance: float = MIN_TRANSMITTANCE
                         ) -> dict[str, Tensor]:
        """The maps of :func:`~ngp_cli.volrend.render.render_ray_maps` from K processes: each renders its part's
        segments (its own grid, background none), the segments are all-gathered and combined in ray order (ordered
        by each segment's expected depth, a distance inside it). A collective."""
        dev = self.device
        wanted = ("rgb", "depth", "opacity") + (("normals",) if "normals" in maps else ())
        (k, part), = self.model.owned()
        out = render_ray_maps(part.forward_encoded, origins.to(dev), directions.to(dev), part.grid.occupancy,
                              self.aabb_scale, background=None, maps=wanted, ray_features=part.ray_features,
                              min_transmittance=min_transmittance, **self.render_options())
        values = [out["rgb"], out["depth"].unsqueeze(1)] + ([out["normals"]] if "normals" in maps else [])
        packed = torch.cat(values + [out["opacity"].unsqueeze(1)], 1)
        segments = torch.stack(all_gather(packed, self.world))
        opacity = segments[:, :, -1]
        depth = segments[:, :, 3]
        order = torch.where(opacity > 0, depth / opacity.clamp_min(1e-30), torch.full_like(depth, float("inf")))
        combined, total = combine_segments(segments[:, :, :-1].contiguous(), opacity, order)
        result = {"rgb": combined[:, :3], "depth": combined[:, 3], "opacity": total}
        if "normals" in maps:
            result["normals"] = combined[:, 4:7]
        if background is not None:
            result["rgb"] = result["rgb"] + (1.0 - total).unsqueeze(-1) * background
        return {m: result[m].contiguous() for m in maps}


_MLPS = ("density_network.", "rgb_network.")


def _drop_part_mlps(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "parts.")]:
        if key[len(prefix) + len("parts."):].split(".", 1)[1].startswith(_MLPS):
            del state_dict[key]


def _give_part_mlps(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                    error_msgs) -> None:
    shared = {k[len(prefix):]: v for k, v in state_dict.items() if k[len(prefix):].startswith(_MLPS)}
    for name in module.parts:
        for key, value in shared.items():
            state_dict.setdefault(f"{prefix}parts.{name}.{key}", value)


def _index_of(key: str) -> int | None:
    """The parameter index of an optimizer (``optim.<i>.<name>``) or EMA (``ema.<i>``) checkpoint entry; None for
    the others."""
    head, _, rest = key.partition(".")
    if head in ("optim", "ema"):
        return int(rest.split(".", 1)[0])
    return None


def _renumber(key: str, maps) -> str:
    """``key`` with its optimizer (``maps[0]``) or EMA (``maps[1]``) index mapped; other keys unchanged."""
    index = _index_of(key)
    if index is None:
        return key
    head, _, rest = key.partition(".")
    tail = rest.split(".", 1)[1:]
    return ".".join([head, str(maps[head == "ema"][index]), *tail])

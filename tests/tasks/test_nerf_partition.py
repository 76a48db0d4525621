"""NeRF-XL spatial partitioning (issue 19 part 2, ngp_cli/tasks/nerf/partition.py): the combination of per-region
segments against one-pass compositing of the same fields, the regions against the occupancy grid's cells, marching
through a part's grid, the piecewise model and the checkpoint numbering. The multi-process runs are in
tests/test_distributed.py."""

from __future__ import annotations

import math

import pytest
import torch

from ngp_cli.volrend.composite import combine_segments, composite, segment_entries
from ngp_cli.volrend.constants import GRID_CELLS
from ngp_cli.volrend.grid import OccupancyGrid
from ngp_cli.volrend.march import march_rays_reference


def _seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


def _analytic_field(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed field over the unit cube: two Gaussian blobs of density (one on each side of every region plane) and
    a colour varying with position, so every segment carries something."""
    a = torch.tensor([0.35, 0.4, 0.6])
    b = torch.tensor([0.62, 0.58, 0.37])
    sigma = 12.0 * torch.exp(-((positions - a) ** 2).sum(-1) / 0.01) + 8.0 * torch.exp(
        -((positions - b) ** 2).sum(-1) / 0.02) + 0.3
    rgb = torch.stack([positions[:, 0], 1.0 - positions[:, 1], 0.5 + 0.5 * torch.sin(6.0 * positions[:, 2])], -1)
    return sigma, rgb


def _rays(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from a sphere of radius 1.5 around the cube's centre towards random points near it."""
    d0 = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    origins = 0.5 + 1.5 * d0
    target = 0.5 + 0.3 * (torch.rand(n, 3, generator=g) - 0.5)
    return origins, torch.nn.functional.normalize(target - origins, dim=-1)


def _split(mask: torch.Tensor, ray_index: torch.Tensor, n_rays: int) -> torch.Tensor:
    counts = torch.zeros(n_rays, dtype=torch.int64).index_add_(0, ray_index[mask],
                                                                torch.ones(int(mask.sum()), dtype=torch.int64))
    return torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])


@pytest.mark.parametrize("parts", [2, 4, 8])
@pytest.mark.parametrize("kernel", [False, True])
def test_combined_segments_equal_one_pass_compositing(parts, kernel, request):
    """The issue's equality: a fixed analytic field, its samples cut into ``parts`` regions, each region composited
    alone and the segments combined in ray order, against compositing every sample in one pass; colour, opacity
    and the gradients with respect to every sample's σ and colour."""
    from ngp_cli.tasks.nerf.partition import region_of

    target = None
    if kernel:
        target = request.getfixturevalue("cpu_target")
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    origins, directions = _rays(300, g)
    grid = OccupancyGrid(1)
    samples = march_rays_reference(origins, directions, grid.occupancy, 1, cone_angle=0.0, near_distance=0.0,
                                   jitter=torch.rand(300, generator=g))
    sigma0, rgb0 = _analytic_field(samples.positions)
    sigma = sigma0.clone().requires_grad_(True)
    rgb = rgb0.clone().requires_grad_(True)
    weights = torch.randn(300, 3, generator=g)
    colour, opacity = composite(sigma, rgb, samples.dts, samples.offsets, target)
    # The field stays translucent enough (T > 1e-4 at every sample) that early termination cuts nothing.
    assert float(opacity.detach().max()) < 0.999 and float(opacity.detach().mean()) > 0.3
    ((colour * weights).sum() + opacity.sum()).backward()
    want = (colour.detach(), opacity.detach(), sigma.grad.clone(), rgb.grad.clone())

    sigma.grad, rgb.grad = None, None
    region = region_of(samples.positions, parts)
    values, opacities, entries = [], [], []
    for k in reversed(range(parts)):  # any order in: combine_segments sorts along each ray
        mask = region == k
        offsets = _split(mask, samples.ray_index, 300)
        c, o = composite(sigma[mask], rgb[mask], samples.dts[mask], offsets, target)
        values.append(c)
        opacities.append(o)
        entries.append(segment_entries(samples.ts[mask], offsets))
    combined, total = combine_segments(torch.stack(values), torch.stack(opacities), torch.stack(entries))
    ((combined * weights).sum() + total.sum()).backward()
    got = (combined.detach(), total.detach(), sigma.grad, rgb.grad)
    meets = (torch.stack(opacities) > 0).sum(0)
    assert int((meets >= 2).sum()) > 50, "too few rays cross a region plane to test anything"
    for name, a, b in zip(("colour", "opacity", "dσ", "drgb"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6, msg=lambda m, n=name: f"{n}, seed {seed}: {m}")


def test_combine_segments_orders_by_distance_and_checks_shapes():
    values = torch.tensor([[[1.0]], [[10.0]]])  # (K=2, R=1, C=1)
    opacity = torch.tensor([[0.5], [0.25]])
    front_first = combine_segments(values, opacity, torch.tensor([[1.0], [2.0]]))
    back_first = combine_segments(values, opacity, torch.tensor([[2.0], [1.0]]))
    assert front_first[0].item() == pytest.approx(1.0 + 0.5 * 10.0)
    assert back_first[0].item() == pytest.approx(10.0 + 0.75 * 1.0)
    assert front_first[1].item() == pytest.approx(back_first[1].item()) == pytest.approx(1 - 0.5 * 0.75)
    with pytest.raises(ValueError, match="combine_segments"):
        combine_segments(values, opacity[:, :0], opacity)


def test_segment_entries_are_first_samples_or_inf():
    ts = torch.tensor([0.5, 0.75, 0.25])
    offsets = torch.tensor([0, 2, 2, 3])
    assert segment_entries(ts, offsets).tolist() == [0.5, math.inf, 0.25]
    assert segment_entries(torch.zeros(0), torch.zeros(3, dtype=torch.int64)).tolist() == [math.inf, math.inf]


@pytest.mark.parametrize("aabb_scale", [1, 4])
def test_every_cell_lies_in_one_region(aabb_scale):
    """The region planes are cell faces in every cascade: points anywhere in a cell share its centre's region."""
    from ngp_cli.tasks.nerf.partition import region_cells, region_of

    grid = OccupancyGrid(aabb_scale)
    cells = region_cells(grid, 8, 5)
    assert int(cells.sum()) == grid.n_cells // 8
    g = torch.Generator().manual_seed(_seed())
    idx = torch.randint(0, grid.n_cells, (20000,), generator=g)
    for corner in (0.0, 0.999):
        pos = grid.cell_positions(idx, torch.full((idx.numel(), 3), corner))
        assert torch.equal(region_of(pos, 8) == 5, cells[idx])
    assert region_of(torch.tensor([[0.5, 0.2, 0.9], [0.49, 0.5, 0.5]]), 4).tolist() == [1, 2]
    with pytest.raises(ValueError, match="parts"):
        region_of(torch.zeros(1, 3), 3)


def test_marching_a_parts_grid_gives_the_samples_of_its_region():
    """Marching through a grid restricted to a region yields the one-model march's samples in that region, on the
    same step lattice (the union over the regions is the whole march)."""
    from ngp_cli.tasks.nerf.partition import region_cells, region_of

    g = torch.Generator().manual_seed(_seed())
    origins, directions = _rays(200, g)
    jitter = torch.rand(200, generator=g)
    whole = OccupancyGrid(1)
    whole.occupancy.copy_((torch.rand(GRID_CELLS, generator=g) < 0.3).to(torch.uint8))
    ref = march_rays_reference(origins, directions, whole.occupancy, 1, cone_angle=0.0, near_distance=0.0,
                               jitter=jitter)
    ref_region = region_of(ref.positions, 2)
    for k in range(2):
        part = OccupancyGrid(1)
        part.occupancy.copy_(whole.occupancy * region_cells(part, 2, k).to(torch.uint8))
        got = march_rays_reference(origins, directions, part.occupancy, 1, cone_angle=0.0, near_distance=0.0,
                                   jitter=jitter)
        mine = ref_region == k
        assert got.n_samples == int(mine.sum()) > 100
        assert torch.equal(got.ray_index, ref.ray_index[mine])
        torch.testing.assert_close(got.ts, ref.ts[mine], rtol=0, atol=2e-5)


def _tiny_cfg(parts: int):
    from ngp_cli.config import resolve
    from ngp_cli.tasks.nerf.config import NerfConfig

    cfg = resolve(NerfConfig, "nerf", "nerf")
    cfg.encoding.log2_hashmap_size = 12
    cfg.encoding.n_levels = 4
    cfg.distributed.partition = parts
    return cfg


def test_the_whole_model_routes_each_sample_to_its_regions_part():
    from ngp_cli.tasks.nerf.partition import PartitionedNerf, region_of

    model = PartitionedNerf(_tiny_cfg(4), 1, 4, [0, 1, 2, 3])
    assert model.whole and [k for k, _ in model.owned()] == [0, 1, 2, 3]
    assert model.parts["0"].encoding.levels.log2_hashmap_size == 10  # T / 4 per part
    g = torch.Generator().manual_seed(_seed())
    x = torch.rand(500, 3, generator=g)
    d = torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=-1)
    sigma, rgb = model(x, d)
    region = region_of(x, 4)
    encoded = model.forward_encoded(x, model.encode_directions(d))
    assert torch.equal(encoded[0], sigma) and torch.equal(encoded[1], rgb)
    for k, part in model.owned():
        rows = region == k
        s, c = part(x[rows], d[rows])
        assert torch.equal(sigma[rows], s) and torch.equal(rgb[rows], c)
        assert torch.equal(model.density(x)[rows], part.density(x[rows]))
    # Parts start as copies of one model (the run seed), whichever process builds them.
    assert torch.equal(model.parts["0"].encoding.params, model.parts["3"].encoding.params)
    one = PartitionedNerf(_tiny_cfg(4), 1, 4, [2])
    assert torch.equal(one.parts["2"].encoding.params, model.parts["2"].encoding.params)  # the same on any process
    with pytest.raises(RuntimeError, match="holds part"):
        one.density(x)


def test_the_whole_models_grid_is_the_union_of_the_parts():
    from ngp_cli.tasks.nerf.partition import PartitionedNerf, region_cells

    model = PartitionedNerf(_tiny_cfg(2), 1, 2, [0, 1])
    for k, part in model.owned():
        part.grid.density.fill_(1.0)
        part.grid.restrict(region_cells(part.grid, 2, k))
    assert bool(model.grid.occupancy.all()) and float(model.parts["0"].grid.occupancy.float().mean()) == 0.5
    first = model.grid
    model.parts["1"].grid.restrict(torch.zeros(GRID_CELLS, dtype=torch.bool))  # part 1 now empty
    assert model.grid is not first and float(model.grid.occupancy.float().mean()) == 0.5


def test_a_partition_must_be_a_power_of_two_up_to_8():
    from ngp_cli.distributed import World
    from ngp_cli.errors import ConfigError
    from ngp_cli.tasks.nerf.partition import owned_parts, part_config

    with pytest.raises(ConfigError, match="distributed.partition must be one of"):
        part_config(_tiny_cfg(3), 3)
    assert owned_parts(4, World()) == [0, 1, 2, 3] and owned_parts(4, World(rank=2, size=4)) == [2]
    with pytest.raises(ConfigError, match="--nproc 4"):
        owned_parts(4, World(rank=0, size=2))


def test_checkpoint_entries_are_renumbered_as_one_process_numbers_them():
    """Process k's optimizer and EMA entries get the indices a process holding every part gives the same
    parameters; the MLPs are shared by the parts."""
    from ngp_cli.tasks.nerf.partition import PartitionedNerf, _index_of, _renumber

    whole = PartitionedNerf(_tiny_cfg(4), 1, 4, [0, 1, 2, 3])
    assert whole.parts["0"].density_network is whole.parts["3"].density_network is whole.density_network
    optim_names = {id(p): n for n, p in whole.named_parameters()}
    whole_optim = [optim_names[id(p)] for g in whole.param_groups(0.0) for p in g["params"]]
    whole_params = [n for n, _ in whole.named_parameters()]
    assert whole.whole_indices() == (list(range(len(whole_optim))), list(range(len(whole_params))))
    one = PartitionedNerf(_tiny_cfg(4), 1, 4, [2])
    names = {id(p): n for n, p in one.named_parameters()}
    local_optim = [names[id(p)] for g in one.param_groups(0.0) for p in g["params"]]
    local_params = [n for n, _ in one.named_parameters()]
    optim, params = one.whole_indices()
    assert [whole_optim[i] for i in optim] == local_optim and [whole_params[i] for i in params] == local_params
    assert "parts.2.encoding.params" in local_optim and len(set(optim)) == len(optim)
    maps = (optim, params)
    i = local_optim.index("parts.2.encoding.params")
    assert _renumber(f"optim.{i}.exp_avg", maps) == f"optim.{optim[i]}.exp_avg"
    assert _renumber("ema.0", maps) == f"ema.{params[0]}"
    assert _renumber("model.parts.2.encoding.params", maps) == "model.parts.2.encoding.params"
    assert _index_of("rng.generator") is None and _index_of("optim.12.step") == 12


def test_the_bake_field_of_a_partitioned_model_answers_from_each_regions_part():
    from ngp_cli.tasks.nerf.bake import NerfBakeField, PartitionedBakeField
    from ngp_cli.tasks.nerf.partition import PartitionedNerf, region_of

    model = PartitionedNerf(_tiny_cfg(2), 1, 2, [0, 1])
    with torch.no_grad():  # parts that differ, so a row answered by the wrong part shows
        model.parts["1"].encoding.params.uniform_(-1.0, 1.0)
    field = PartitionedBakeField(model)
    g = torch.Generator().manual_seed(_seed())
    x = torch.rand(300, 3, generator=g)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=-1)
    h = field.features(x)
    region = region_of(x, 2)
    assert h.shape == (300, 17) and torch.equal(h[:, -1].long(), region)
    rgb = field.colour(h, dirs)
    torch.testing.assert_close(field.density(x), model.density(x))
    for k, part in model.owned():
        rows = region == k
        want = NerfBakeField(part).colour(part._features(x[rows]).float(), dirs)
        torch.testing.assert_close(rgb[rows], want)


def test_the_renderers_empty_space_cache_follows_the_grid(cpu_target):
    """The empty-space distances are remembered per grid tensor and version: an in-place update (the kernels' too:
    they bump the version) or another grid gives new ones. A stale cache skipped cells occupied since."""
    from ngp_cli.cuda.nerf import occupancy_update
    from ngp_cli.volrend.grid import empty_distance
    from ngp_cli.volrend.render import _empty_distances

    grid = OccupancyGrid(1)
    grid.density.zero_()
    grid.density[GRID_CELLS // 2] = 1.0
    grid.threshold_occupancy(0.01, torch.tensor(0.0))
    first = _empty_distances(grid.occupancy)
    assert _empty_distances(grid.occupancy) is first  # remembered
    occupancy_update(grid.density, grid.occupancy, torch.tensor([7]), torch.tensor([5.0]), 0.95, 0.01, cpu_target)
    second = _empty_distances(grid.occupancy)
    assert second is not first and torch.equal(second, empty_distance(grid.occupancy, 1))
    other = grid.occupancy.clone()
    assert _empty_distances(other) is not second

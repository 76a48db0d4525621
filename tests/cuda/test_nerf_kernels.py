"""The NeRF kernels (ngp_cli/cuda/nerf.cu through ngp_cli/cuda/nerf.py) against their torch references:
``march_rays_reference`` (ngp_cli/volrend/march.py), ``OccupancyGrid.update`` (ngp_cli/volrend/grid.py) and
``composite_reference`` (ngp_cli/volrend/composite.py). CPU-target tests run everywhere (host C++ compiler); ``gpu`` tests compare the cuda
target with the reference and the cpu target; nvcc builds are checked in test_nvcc_builds.py.

Inputs are drawn fresh every run; the seed is in every failure message.
"""

from __future__ import annotations

import math

import pytest
import torch

from ngp_cli.cuda import nerf, runtime
from ngp_cli.volrend import constants
from ngp_cli.volrend.composite import composite_reference
from ngp_cli.volrend.constants import GRID_CELLS, GRID_SIZE, MIN_TRANSMITTANCE
from ngp_cli.volrend.grid import aabb_bounds, n_cascades
from ngp_cli.volrend.march import RaySamples, march_rays_reference


def _seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


@pytest.fixture
def poison(monkeypatch):
    """Outputs the kernels must write in full start as NaN / -1."""
    monkeypatch.setattr(runtime, "POISON_OUTPUTS", True)


def test_constants_match_the_reference():
    assert nerf.GRID_SIZE == GRID_SIZE and nerf.GRID_CELLS == GRID_CELLS
    assert nerf.MIN_CONE_STEPSIZE == constants.MIN_CONE_STEPSIZE and nerf.N_STEPS == constants.N_STEPS
    assert nerf.MIN_TRANSMITTANCE == MIN_TRANSMITTANCE


# ---- ray marching ------------------------------------------------------------------------------------------------


def _grid(kind: str, aabb_scale: int, g: torch.Generator) -> torch.Tensor:
    cascades = n_cascades(aabb_scale)
    if kind == "random":
        return (torch.rand(cascades * GRID_CELLS, generator=g) < 0.3).to(torch.uint8)
    # Cells whose centre lies in a sphere of radius 0.3 around the centre, plus a random 10% of the outer cascades'.
    u = ((torch.arange(GRID_SIZE) + 0.5) / GRID_SIZE - 0.5) ** 2  # (centre - 0.5)^2 along an axis, cascade 0
    r2 = u[None, None, :] + u[None, :, None] + u[:, None, None]  # [z, y, x]: flat index x + 128 (y + 128 z)
    inside = torch.cat([(r2.reshape(-1) * 4**k < 0.09) for k in range(cascades)])
    noise = torch.rand(cascades * GRID_CELLS, generator=g) < 0.1
    noise[:GRID_CELLS] = False
    return (inside | noise).to(torch.uint8)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _rays(aabb_scale: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from outside the box (aimed into it, or anywhere), from inside, and axis-aligned ones (zero and -0
    components, some starting on cell faces)."""
    lo, hi = aabb_bounds(aabb_scale)
    n_out, n_in = n // 2, n // 4
    n_axis = n - n_out - n_in
    # Outside: on a sphere of radius 1.5·s around the centre, aimed at a random point of the box (80%) or anywhere.
    o_out = 0.5 + _unit(torch.randn(n_out, 3, generator=g)) * 1.5 * aabb_scale
    aim = lo + (hi - lo) * torch.rand(n_out, 3, generator=g)
    d_out = _unit(aim - o_out)
    anywhere = torch.rand(n_out, generator=g) < 0.2
    d_out[anywhere] = _unit(torch.randn(int(anywhere.sum()), 3, generator=g))
    # Inside.
    o_in = lo + (hi - lo) * torch.rand(n_in, 3, generator=g)
    d_in = _unit(torch.randn(n_in, 3, generator=g))
    # Axis-aligned (±x, ±y, ±z, and diagonals of two axes), -0.0 components, origins on the grid's cell faces.
    axes = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [1, 1, 0], [0, -1, 1],
                         [-1, 0, -1]], dtype=torch.float32)
    d_axis = _unit(axes[torch.randint(0, axes.shape[0], (n_axis,), generator=g)])
    d_axis = torch.where((d_axis == 0) & (torch.rand(n_axis, 3, generator=g) < 0.5), -0.0, d_axis)
    o_axis = lo + (hi - lo) * torch.rand(n_axis, 3, generator=g)
    on_face = torch.rand(n_axis, 3, generator=g) < 0.3
    o_axis = torch.where(on_face, torch.floor(o_axis * GRID_SIZE) / GRID_SIZE, o_axis)
    # Half of the axis-aligned rays start outside: pushed back along their direction.
    back = torch.rand(n_axis, generator=g) < 0.5
    o_axis[back] -= d_axis[back] * 2.0 * aabb_scale
    return torch.cat([o_out, o_in, o_axis]), torch.cat([d_out, d_in, d_axis])


def _compare_samples(out, ref, seed, max_diff: int = 2, min_exact: float = 0.99) -> float:
    positions, dts, ts, offsets, ray_index = out
    n_rays = offsets.numel() - 1
    counts, ref_counts = offsets.diff(), ref.offsets.diff()
    msg = f"seed {seed}"
    assert offsets.dtype == torch.int64 and ray_index.dtype == torch.int64, msg
    assert offsets[0] == 0 and positions.shape == (int(offsets[-1]), 3), msg
    assert dts.shape == ts.shape == ray_index.shape == (positions.shape[0],), msg
    # Every element written (the outputs started as NaN / -1), and ray_index agrees with offsets.
    for t in (positions, dts, ts):
        assert not torch.isnan(t).any(), msg
    assert torch.equal(ray_index, torch.repeat_interleave(torch.arange(n_rays), counts)), msg
    same = counts == ref_counts
    exact = float(same.float().mean())
    assert exact >= min_exact, f"{msg}: only {exact:.4f} of the rays have the reference's sample count"
    assert int((counts - ref_counts).abs().max()) <= max_diff, msg
    ours, theirs = same[ray_index], same[ref.ray_index]
    assert torch.equal(ray_index[ours], ref.ray_index[theirs]), msg
    torch.testing.assert_close(positions[ours], ref.positions[theirs], rtol=0, atol=1e-5, msg=lambda s: f"{msg}: {s}")
    torch.testing.assert_close(dts[ours], ref.dts[theirs], rtol=0, atol=1e-5, msg=lambda s: f"{msg}: {s}")
    torch.testing.assert_close(ts[ours], ref.ts[theirs], rtol=0, atol=1e-5, msg=lambda s: f"{msg}: {s}")
    return exact


@pytest.mark.parametrize(
    "aabb_scale, cone_angle, kind, jittered",
    [
        (1, 0.0, "random", False),
        (1, 0.0, "sphere", True),
        (1, 1 / 256, "random", True),
        (4, 1 / 256, "random", False),
        (4, 1 / 256, "sphere", True),
        (4, 0.0, "sphere", False),
    ],
)
def test_march_matches_reference(cpu_target, poison, aabb_scale, cone_angle, kind, jittered):
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    grid = _grid(kind, aabb_scale, g)
    origins, directions = _rays(aabb_scale, 768 if aabb_scale == 1 else 384, g)
    jitter = torch.rand(origins.shape[0], generator=g) if jittered else None
    near = 0.05
    ref = march_rays_reference(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=near,
                               jitter=jitter)
    out = nerf.march_rays(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=near,
                          jitter=jitter, target=cpu_target)
    assert ref.n_samples > 1000, f"seed {seed}: too few samples to test anything"
    _compare_samples(out, ref, seed)


@pytest.mark.parametrize("aabb_scale, cone_angle", [(1, 0.0), (4, 1 / 256), (4, 0.0)])
def test_march_skipping_empty_space_takes_the_reference_samples(cpu_target, poison, aabb_scale, cone_angle):
    """With the empty-space distances (rendering), the empty cube around an empty cell is crossed in one skip: same
    samples as the reference's cell-by-cell marching, resumed rounds included."""
    from ngp_cli.volrend.grid import empty_distance

    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    grid = _grid("sphere", aabb_scale, g)
    empty = empty_distance(grid, n_cascades(aabb_scale))
    assert (empty > 2).any() and (empty == 0).any()  # long skips and occupied cells both met
    origins, directions = _rays(aabb_scale, 768 if aabb_scale == 1 else 384, g)
    ref = march_rays_reference(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=0.05,
                               max_samples=24)
    out = nerf.march_rays(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=0.05,
                          max_samples=24, empty_distance=empty, target=cpu_target)
    assert ref.n_samples > 1000, f"seed {seed}: too few samples to test anything"
    _compare_samples(out, ref, seed)
    # Resumed where the first round stopped (rendering in rounds).
    last = (ref.offsets[1:] - 1).clamp_min(0)
    t_start = torch.where(ref.offsets.diff() > 0, ref.ts[last] + ref.dts[last],
                          torch.zeros_like(last, dtype=torch.float32))
    ref2 = march_rays_reference(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=0.05,
                                max_samples=24, t_start=t_start)
    out2 = nerf.march_rays(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=0.05,
                           max_samples=24, t_start=t_start, empty_distance=empty, target=cpu_target)
    _compare_samples(out2, ref2, seed)
    with pytest.raises(ValueError, match="empty-space distances"):
        nerf.march_rays(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=0.05,
                        empty_distance=empty[:-1], target=cpu_target)


@pytest.mark.parametrize("aabb_scale, cone_angle, max_samples", [(1, 0.0, 1), (4, 1 / 256, 8), (4, 0.0, 24)])
def test_one_pass_marching_equals_count_then_write(cpu_target, poison, monkeypatch, aabb_scale, cone_angle,
                                                   max_samples):
    """Rendering marches once into per-ray slots and packs them (march_rays_slots + compact_samples); the outputs must
    be those of count + write bit for bit, first rounds and resumed ones, with and without empty-space skipping."""
    from ngp_cli.volrend.grid import empty_distance

    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    grid = _grid("sphere", aabb_scale, g)
    origins, directions = _rays(aabb_scale, 512, g)
    kwargs = dict(cone_angle=cone_angle, near_distance=0.05, max_samples=max_samples, target=cpu_target)
    t_start = None
    for empty in (None, empty_distance(grid, n_cascades(aabb_scale))):
        for _ in range(3):  # three rounds, each resuming after the last sample of the round before
            assert origins.shape[0] * max_samples <= nerf.ONE_PASS_MAX_SLOTS
            one = nerf.march_rays(origins, directions, grid, aabb_scale, t_start=t_start, empty_distance=empty,
                                  **kwargs)
            with monkeypatch.context() as m:
                m.setattr(nerf, "ONE_PASS_MAX_SLOTS", 0)
                two = nerf.march_rays(origins, directions, grid, aabb_scale, t_start=t_start, empty_distance=empty,
                                      **kwargs)
            assert int(two[3][-1]) > 0, f"seed {seed}: no samples to compare"
            for a, b in zip(one, two, strict=True):
                assert a.dtype == b.dtype and torch.equal(a, b), f"seed {seed}"
            positions, dts, ts, offsets, _ = one
            last = (offsets[1:] - 1).clamp_min(0)
            t_start = torch.where(offsets.diff() > 0, ts[last] + dts[last], torch.full_like(dts[:1], 1e4).expand(
                offsets.numel() - 1)) if ts.numel() else None
        t_start = None


def test_march_truncates_at_max_samples_and_near_distance(cpu_target, poison):
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    grid = torch.ones(GRID_CELLS, dtype=torch.uint8)  # everything occupied: every ray hits the limit
    origins, directions = _rays(1, 512, g)
    for max_samples, near in ((7, 0.0), (0, 0.0), (1024, 0.6)):
        ref = march_rays_reference(origins, directions, grid, 1, cone_angle=0.0, near_distance=near,
                                   max_samples=max_samples)
        out = nerf.march_rays(origins, directions, grid, 1, cone_angle=0.0, near_distance=near,
                              max_samples=max_samples, target=cpu_target)
        assert int(out[3].diff().max()) <= max_samples
        _compare_samples(out, ref, seed)
    assert int(out[3].diff().max()) > 7


@pytest.mark.parametrize("aabb_scale, cone_angle", [(1, 0.0), (4, 1 / 256)])
def test_march_resumed_rays_match_reference_and_continue_the_lattice(cpu_target, poison, aabb_scale, cone_angle):
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    grid = _grid("sphere", aabb_scale, g)
    origins, directions = _rays(aabb_scale, 384, g)
    first = march_rays_reference(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=0.05,
                                 max_samples=5)
    counts = first.offsets.diff()
    last = (first.offsets[1:] - 1).clamp_min(0)
    # Rays that filled the round resume after their last sample; the others start beyond the box (no samples).
    t_start = torch.where(counts == 5, first.ts[last] + first.dts[last], torch.full_like(counts, 1e4, dtype=torch.float32))
    ref = march_rays_reference(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=0.05,
                               t_start=t_start)
    out = nerf.march_rays(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=0.05,
                          t_start=t_start, target=cpu_target)
    _compare_samples(out, ref, seed)
    # The two rounds together are exactly the single-pass marching.
    whole = march_rays_reference(origins, directions, grid, aabb_scale, cone_angle=cone_angle, near_distance=0.05)
    assert torch.equal(counts + ref.offsets.diff(), whole.offsets.diff())
    resumed = torch.cat([first.ts.reshape(-1), ref.ts])[torch.argsort(torch.cat([first.ray_index, ref.ray_index]),
                                                                       stable=True)]
    torch.testing.assert_close(resumed, whole.ts, rtol=0, atol=1e-6)


def test_march_edge_cases(cpu_target):
    grid = torch.ones(GRID_CELLS, dtype=torch.uint8)
    # No rays.
    pos, dts, ts, offsets, ray_index = nerf.march_rays(torch.zeros(0, 3), torch.zeros(0, 3), grid, 1, cone_angle=0.0,
                                                       near_distance=0.0, target=cpu_target)
    assert pos.shape == (0, 3) and dts.shape == ts.shape == ray_index.shape == (0,) and offsets.tolist() == [0]
    # Rays that miss, one pointing away, one parallel to a face outside the box: no samples.
    o = torch.tensor([[2.0, 2.0, 2.0], [0.5, 0.5, -1.0], [0.5, 1.5, 0.5]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    out = nerf.march_rays(o, d, grid, 1, cone_angle=0.0, near_distance=0.0, target=cpu_target)
    assert out[3].tolist() == [0, 0, 0, 0] and out[0].shape == (0, 3)
    # A ray through the centre along +z: samples on the Δt lattice from the entry face.
    o = torch.tensor([[0.5, 0.5, -1.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]])
    pos, dts, ts, offsets, _ = nerf.march_rays(o, d, grid, 1, cone_angle=0.0, near_distance=0.0, target=cpu_target)
    ref = march_rays_reference(o, d, grid, 1, cone_angle=0.0, near_distance=0.0)
    assert torch.equal(offsets, ref.offsets) and torch.equal(ts, ref.ts) and torch.equal(pos, ref.positions)
    assert float(ts[0]) == 1.0 and math.isclose(float(dts[0]), constants.MIN_CONE_STEPSIZE, rel_tol=1e-6)


def test_render_dispatcher_wraps_the_kernel(cpu_target):
    from ngp_cli.volrend.march import march_rays as dispatch

    g = torch.Generator().manual_seed(5)
    grid = _grid("random", 1, g)
    o, d = _rays(1, 64, g)
    samples = dispatch(o, d, grid, 1, cone_angle=0.0, near_distance=0.0, kernel_target=cpu_target)
    assert isinstance(samples, RaySamples) and samples.offsets.numel() == 65
    assert samples.n_samples == int(samples.offsets[-1])


def test_march_rejects_bad_arguments():
    grid = torch.ones(GRID_CELLS, dtype=torch.uint8)
    o, d = torch.zeros(4, 3), torch.ones(4, 3)
    kw = dict(cone_angle=0.0, near_distance=0.0)
    with pytest.raises(ValueError, match="target"):
        nerf.march_rays(o, d, grid, 1, target="tpu", **kw)
    with pytest.raises(ValueError, match="cuda device"):
        nerf.march_rays(o, d, grid, 1, target="cuda", **kw)
    with pytest.raises(ValueError, match="shape"):
        nerf.march_rays(o[:, :2], d, grid, 1, target="cpu", **kw)
    with pytest.raises(ValueError, match="occupancy"):
        nerf.march_rays(o, d, grid[:100], 1, target="cpu", **kw)
    with pytest.raises(ValueError, match="aabb_scale"):
        nerf.march_rays(o, d, grid, 3, target="cpu", **kw)
    with pytest.raises(ValueError, match="jitter"):
        nerf.march_rays(o, d, grid, 1, target="cpu", jitter=torch.zeros(3), **kw)


# ---- compositing -------------------------------------------------------------------------------------------------


def _composite_case(seed: int, n_rays: int = 600):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 80, (n_rays,), generator=g)
    counts[torch.rand(n_rays, generator=g) < 0.1] = 0
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    s = int(offsets[-1])
    sigma = torch.rand(s, generator=g) ** 3 * 200.0  # mostly small: most rays stay transparent
    dense_ray = (torch.rand(n_rays, generator=g) < 0.3).repeat_interleave(counts)
    sigma[dense_ray] = torch.rand(int(dense_ray.sum()), generator=g) * 2000.0  # these terminate early
    dts = constants.MIN_CONE_STEPSIZE * (1 + 7 * torch.rand(s, generator=g))
    rgb = torch.rand(s, 3, generator=g)
    return sigma, rgb, dts, offsets


def test_composite_matches_reference(cpu_target, poison):
    seed = _seed()
    sigma, rgb, dts, offsets = _composite_case(seed)
    g = torch.Generator().manual_seed(seed + 1)
    gc = torch.randn(offsets.numel() - 1, 3, generator=g)
    go = torch.randn(offsets.numel() - 1, generator=g)
    msg = f"seed {seed}"

    s_ref, c_ref = sigma.clone().requires_grad_(True), rgb.clone().requires_grad_(True)
    colour_ref, opacity_ref = composite_reference(s_ref, c_ref, dts, offsets)
    ((colour_ref * gc).sum() + (opacity_ref * go).sum()).backward()

    s, c = sigma.clone().requires_grad_(True), rgb.clone().requires_grad_(True)
    colour, opacity = nerf.composite(s, c, dts, offsets, cpu_target)
    ((colour * gc).sum() + (opacity * go).sum()).backward()

    for t in (colour, opacity, s.grad, c.grad):
        assert not torch.isnan(t).any(), msg
    torch.testing.assert_close(colour, colour_ref, rtol=1e-5, atol=1e-6, msg=lambda m: f"{msg}: {m}")
    torch.testing.assert_close(opacity, opacity_ref, rtol=1e-5, atol=1e-6, msg=lambda m: f"{msg}: {m}")
    torch.testing.assert_close(s.grad, s_ref.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{msg}: {m}")
    torch.testing.assert_close(c.grad, c_ref.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"{msg}: {m}")
    # Early termination happened, and exactly the reference's samples past it have zero gradients.
    counts = offsets.diff()
    ray = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    tau = (sigma * dts).double()
    before = torch.cumsum(tau, 0) - tau
    before -= torch.cat([before.new_zeros(1), torch.cumsum(tau, 0)])[offsets[:-1]][ray]
    dead = torch.exp(-before).float() < MIN_TRANSMITTANCE
    assert dead.sum() > 100, msg
    assert torch.all(s.grad[dead] == 0) and torch.all(c.grad[dead] == 0), msg
    assert torch.all(opacity[counts == 0] == 0) and torch.all(colour[counts == 0] == 0), msg


def test_composite_single_output_and_no_samples(cpu_target, poison):
    sigma, rgb, dts, offsets = _composite_case(11, 50)
    s = sigma.clone().requires_grad_(True)
    _, opacity = nerf.composite(s, rgb, dts, offsets, cpu_target)  # rgb without grad, colour unused
    opacity.sum().backward()
    s_ref = sigma.clone().requires_grad_(True)
    composite_reference(s_ref, rgb, dts, offsets)[1].sum().backward()
    torch.testing.assert_close(s.grad, s_ref.grad, rtol=1e-4, atol=1e-5)
    # Rays without any sample at all.
    empty = torch.zeros(0)
    colour, opacity = nerf.composite(empty, torch.zeros(0, 3), empty, torch.zeros(4, dtype=torch.int64), cpu_target)
    assert colour.shape == (3, 3) and torch.all(colour == 0) and torch.all(opacity == 0)


def test_composite_rejects_bad_arguments():
    sigma, rgb, dts, offsets = _composite_case(3, 8)
    with pytest.raises(ValueError, match="target"):
        nerf.composite(sigma, rgb, dts, offsets, "tpu")
    with pytest.raises(ValueError, match="rgb"):
        nerf.composite(sigma, rgb[:, :2], dts, offsets, "cpu")
    with pytest.raises(ValueError, match="offsets"):
        nerf.composite(sigma, rgb, dts, offsets.float(), "cpu")
    # Malformed offsets (not checked, to avoid a device sync) are clamped to the samples: no out-of-bounds access.
    bad = offsets.clone()
    bad[3], bad[-1] = -50, bad[-1] + 10**6
    colour, opacity = nerf.composite(sigma.requires_grad_(True), rgb, dts, bad, "cpu")
    opacity.sum().backward()
    assert torch.isfinite(colour).all() and torch.isfinite(sigma.grad).all()


# ---- occupancy-grid update ---------------------------------------------------------------------------------------


def _update_twin(density, idx, thickness, decay, threshold):
    """The maths of the tail of OccupancyGrid.update, on copies."""
    splat = torch.zeros_like(density)
    splat.scatter_reduce_(0, idx, torch.nan_to_num(thickness, nan=0.0), reduce="amax")
    density = torch.where(density < 0, density, torch.maximum(density * decay, splat))
    mean = float(density[:GRID_CELLS].clamp_min(0).mean())
    return density, (density > min(threshold, mean)).to(torch.uint8)


@pytest.mark.parametrize("threshold", [0.01, 1.0, 1e-4])
def test_occupancy_update_matches_torch(cpu_target, threshold):
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    n = 2 * GRID_CELLS
    density = torch.rand(n, generator=g) * 0.03
    density[torch.rand(n, generator=g) < 0.1] = -1.0
    density[torch.rand(n, generator=g) < 0.1] = 0.0
    m = n // 2
    # Many duplicates: half the draws fall into a small set of cells.
    idx = torch.cat([torch.randint(0, n, (m // 2,), generator=g), torch.randint(0, 5000, (m // 2,), generator=g)])
    thickness = torch.rand(m, generator=g) ** 2 * 0.05
    thickness[torch.rand(m, generator=g) < 0.01] = float("nan")
    thickness[:3] = torch.tensor([float("inf"), 0.0, 1e-30])
    idx[0] = GRID_CELLS + 5  # the inf (-> FLT_MAX) outside cascade 0, whose mean sets the threshold
    ref_density, ref_occ = _update_twin(density, idx, thickness, 0.95, threshold)
    occupancy = torch.full((n,), 7, dtype=torch.uint8)
    versions = density._version, occupancy._version
    nerf.occupancy_update(density, occupancy, idx, thickness, 0.95, threshold, cpu_target)
    # Written in place by the kernels, and torch told so: the renderers' empty-space cache keys on the version.
    assert density._version > versions[0] and occupancy._version > versions[1]
    assert torch.equal(density, ref_density), f"seed {seed}"
    assert torch.equal(occupancy, ref_occ), f"seed {seed}"
    assert torch.all(density[ref_density == -1] == -1) and 0.05 < float(occupancy.float().mean()) < 0.95


def test_occupancy_update_edge_cases(cpu_target):
    density = torch.zeros(GRID_CELLS)
    density[:4] = torch.tensor([-1.0, 0.5, 0.2, 0.0])
    occupancy = torch.zeros(GRID_CELLS, dtype=torch.uint8)
    idx = torch.tensor([0, 2, 2, 2, 3, 3], dtype=torch.int64)
    thickness = torch.tensor([9.0, 0.1, 0.7, 0.3, float("nan"), 0.0])
    nerf.occupancy_update(density, occupancy, idx, thickness, 0.5, 0.01, cpu_target)
    assert density[:4].tolist() == [-1.0, 0.25, pytest.approx(0.7), 0.0]
    assert occupancy[:4].tolist() == [0, 1, 1, 0]
    # No samples: decay only.
    nerf.occupancy_update(density, occupancy, idx[:0], thickness[:0], 0.5, 0.01, cpu_target)
    assert density[:4].tolist() == [-1.0, 0.125, pytest.approx(0.35), 0.0]
    with pytest.raises(ValueError, match="contiguous"):
        nerf.occupancy_update(torch.zeros(2 * GRID_CELLS)[::2], occupancy, idx, thickness, 0.5, 0.01, "cpu")
    with pytest.raises(ValueError, match="int64"):
        nerf.occupancy_update(density, occupancy, idx.int(), thickness, 0.5, 0.01, "cpu")


# ---- GPU: the cuda target against the reference and the cpu target -----------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("aabb_scale, cone_angle", [(1, 0.0), (4, 1 / 256)])
def test_gpu_march_matches_reference_and_cpu(aabb_scale, cone_angle):
    g = torch.Generator().manual_seed(21)
    grid = _grid("random", aabb_scale, g)
    origins, directions = _rays(aabb_scale, 4096, g)
    jitter = torch.rand(origins.shape[0], generator=g)
    kw = dict(cone_angle=cone_angle, near_distance=0.05, jitter=jitter)
    ref = march_rays_reference(origins, directions, grid, aabb_scale, **kw)
    cpu = nerf.march_rays(origins, directions, grid, aabb_scale, target="cpu", **kw)
    kw["jitter"] = jitter.cuda()
    gpu = nerf.march_rays(origins.cuda(), directions.cuda(), grid.cuda(), aabb_scale, target="cuda", **kw)
    gpu = tuple(t.cpu() for t in gpu)
    _compare_samples(gpu, ref, 21)
    _compare_samples(gpu, RaySamples(*cpu), 21)


@pytest.mark.gpu
def test_gpu_composite_matches_reference():
    sigma, rgb, dts, offsets = _composite_case(5, 4000)
    g = torch.Generator().manual_seed(6)
    gc, go = torch.randn(4000, 3, generator=g), torch.randn(4000, generator=g)
    s_ref, c_ref = sigma.clone().requires_grad_(True), rgb.clone().requires_grad_(True)
    colour_ref, opacity_ref = composite_reference(s_ref, c_ref, dts, offsets)
    ((colour_ref * gc).sum() + (opacity_ref * go).sum()).backward()
    s, c = sigma.cuda().requires_grad_(True), rgb.cuda().requires_grad_(True)
    colour, opacity = nerf.composite(s, c, dts.cuda(), offsets.cuda(), "cuda")
    ((colour * gc.cuda()).sum() + (opacity * go.cuda()).sum()).backward()
    torch.testing.assert_close(colour.cpu(), colour_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opacity.cpu(), opacity_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.grad.cpu(), s_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c.grad.cpu(), c_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_occupancy_update_matches_torch():
    g = torch.Generator().manual_seed(8)
    n = 3 * GRID_CELLS
    density = torch.rand(n, generator=g) * 0.03
    density[torch.rand(n, generator=g) < 0.1] = -1.0
    idx = torch.randint(0, n, (n // 2,), generator=g)
    thickness = torch.rand(n // 2, generator=g) * 0.05
    ref_density, ref_occ = _update_twin(density, idx, thickness, 0.95, 0.01)
    d, o = density.cuda(), torch.zeros(n, dtype=torch.uint8, device="cuda")
    nerf.occupancy_update(d, o, idx.cuda(), thickness.cuda(), 0.95, 0.01, "cuda")
    assert torch.equal(d.cpu(), ref_density) and torch.equal(o.cpu(), ref_occ)

"""The NeRF task: the torch references of marching/compositing/occupancy against first principles, the model, and
``ngp train-nerf`` / ``ngp eval`` / ``ngp render`` end to end on a small synthetic scene, with bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ngp_cli.volrend.composite import composite_reference
from ngp_cli.volrend.constants import GRID_CELLS, GRID_SIZE, MIN_CONE_STEPSIZE, MIN_TRANSMITTANCE
from ngp_cli.volrend.grid import OccupancyGrid, cell_index, mip_from_pos
from ngp_cli.volrend.march import march_rays_reference

# ---------------------------------------------------------------------------------------------------------------------
# Compositing


def _composite_loop(sigma, rgb, dts, offsets):
    """Front-to-back compositing as instant-ngp's loop writes it: stop once the transmittance drops below 1e-4."""
    colours, opacities = [], []
    for r in range(offsets.numel() - 1):
        T, c = 1.0, torch.zeros(3, dtype=torch.float64)
        for j in range(int(offsets[r]), int(offsets[r + 1])):
            if T < MIN_TRANSMITTANCE:
                break
            alpha = 1.0 - math.exp(-float(sigma[j]) * float(dts[j]))
            c += T * alpha * rgb[j].double()
            T *= 1.0 - alpha
        colours.append(c)
        opacities.append(1.0 - T)
    return torch.stack(colours).float(), torch.tensor(opacities, dtype=torch.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_composite_reference_matches_the_front_to_back_loop(seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 40, (30,), generator=g)
    counts[3] = 0  # a ray without samples
    offsets = torch.zeros(31, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    n = int(offsets[-1])
    sigma = torch.rand(n, generator=g) * 200.0  # dense enough that many rays terminate early
    dts = torch.full((n,), MIN_CONE_STEPSIZE * 4)
    rgb = torch.rand(n, 3, generator=g)
    colour, opacity = composite_reference(sigma, rgb, dts, offsets)
    want_c, want_o = _composite_loop(sigma, rgb, dts, offsets)
    torch.testing.assert_close(colour, want_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(opacity, want_o, rtol=1e-5, atol=1e-5)
    assert opacity[3] == 0 and (colour[3] == 0).all()


def test_composite_reference_survives_infinite_density():
    sigma = torch.tensor([1.0, math.inf, 1.0, 2.0])
    offsets = torch.tensor([0, 2, 4])
    colour, opacity = composite_reference(sigma, torch.ones(4, 3), torch.full((4,), 0.01), offsets)
    assert torch.isfinite(colour).all() and torch.isfinite(opacity).all()
    assert opacity[0] == pytest.approx(1.0, abs=1e-6)
    assert opacity[1] == pytest.approx(1.0 - math.exp(-0.03), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Marching


def _grid(occupied_cells=None, cascades=1):
    occ = torch.zeros(cascades * GRID_CELLS, dtype=torch.uint8)
    if occupied_cells is None:
        occ[:] = 1
    else:
        occ[occupied_cells] = 1
    return occ


def test_marching_a_full_grid_steps_evenly_through_the_box():
    origins = torch.tensor([[-0.5, 0.31, 0.62]])
    directions = torch.tensor([[1.0, 0.0, 0.0]])
    s = march_rays_reference(origins, directions, _grid(), 1, cone_angle=0.0, near_distance=0.0)
    # Entry at x = 0 (t = 0.5), then one sample every √3/1024 until x leaves [0, 1].
    expected = math.floor(1.0 / MIN_CONE_STEPSIZE) + 1
    assert abs(s.n_samples - expected) <= 1
    torch.testing.assert_close(s.ts, 0.5 + MIN_CONE_STEPSIZE * torch.arange(s.n_samples, dtype=torch.float32),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(s.positions[:, 1:], origins[:, 1:].expand(s.n_samples, 2))
    assert s.offsets.tolist() == [0, s.n_samples]
    assert (s.dts == torch.tensor(MIN_CONE_STEPSIZE, dtype=torch.float32)).all()


def test_marching_an_empty_grid_gives_no_samples_and_a_missed_box_none():
    origins = torch.tensor([[-0.5, 0.5, 0.5], [-0.5, 3.0, 0.5]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    s = march_rays_reference(origins, directions, _grid([]), 1, cone_angle=0.0, near_distance=0.0)
    assert s.n_samples == 0 and s.offsets.tolist() == [0, 0, 0]
    s = march_rays_reference(origins, directions, _grid(), 1, cone_angle=0.0, near_distance=0.0)
    assert s.offsets[2] == s.offsets[1]  # the second ray misses the box


def test_marching_samples_only_the_occupied_cell():
    cell = (70, 64, 64)
    flat = cell[0] + GRID_SIZE * (cell[1] + GRID_SIZE * cell[2])
    g = torch.Generator().manual_seed(3)
    directions = torch.nn.functional.normalize(torch.randn(256, 3, generator=g) * 0.05 + torch.tensor([1.0, 0, 0]),
                                               dim=-1)
    target = (torch.tensor(cell, dtype=torch.float32) + 0.5) / GRID_SIZE
    origins = target - 2.0 * directions
    s = march_rays_reference(origins, directions, _grid([flat]), 1, cone_angle=0.0, near_distance=0.0,
                             jitter=torch.rand(256, generator=g))
    assert s.n_samples > 256  # the cell is ~4.4 steps long: every ray through its centre samples it
    idx = cell_index(s.positions, mip_from_pos(s.positions, 0))
    assert (idx == flat).all()
    counts = (s.offsets[1:] - s.offsets[:-1]).float()
    assert 3 <= counts.min() and counts.max() <= 7


@pytest.mark.parametrize("aabb_scale", [1, 4])
def test_no_ray_through_an_occupied_box_is_lost_at_its_entry(aabb_scale):
    """Regression: the entry point o + t_near·d rounds to either side of the face; rays whose first position fell
    outside used to end with no sample (19% of the object's rays in some lego views)."""
    from ngp_cli.volrend.march import ray_aabb

    g = torch.Generator().manual_seed(11)
    n = 4000
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 1.3 * aabb_scale + 0.5
    lo, hi = 0.5 - aabb_scale / 2, 0.5 + aabb_scale / 2
    targets = lo + torch.rand(n, 3, generator=g) * (hi - lo)
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    cascades = {1: 1, 4: 3}[aabb_scale]
    s = march_rays_reference(origins, directions, _grid(cascades=cascades), aabb_scale, cone_angle=0.0,
                             near_distance=0.0)
    t_near, t_far = ray_aabb(origins, directions, lo, hi)
    counts = s.offsets.diff()
    long_enough = (t_far - t_near) > 4 * MIN_CONE_STEPSIZE
    assert long_enough.sum() > 3000
    assert (counts[long_enough] >= 1).all()
    expected = ((t_far - t_near) / MIN_CONE_STEPSIZE).floor().clamp(max=1024)
    assert ((counts - expected)[long_enough].abs() <= 2).all()


def test_marching_respects_max_samples_and_cascades():
    origins = torch.tensor([[-3.0, 0.5, 0.5]])
    directions = torch.tensor([[1.0, 0.0, 0.0]])
    s = march_rays_reference(origins, directions, _grid(), 1, cone_angle=0.0, near_distance=0.0, max_samples=10)
    assert s.n_samples == 10
    # aabb_scale 4: three cascades, cone stepping; the ray spans [-1.5, 2.5] and steps grow with t.
    s = march_rays_reference(origins, directions, _grid(cascades=3), 4, cone_angle=1 / 256, near_distance=0.0)
    assert s.positions[:, 0].min() >= -1.5 and s.positions[:, 0].max() <= 2.5
    assert (s.dts[1:] >= s.dts[:-1] - 1e-7).all() and s.dts[-1] > s.dts[0]


def test_rendering_in_rounds_equals_a_single_pass():
    from ngp_cli.volrend.render import render_rays

    g = torch.Generator().manual_seed(5)
    occupancy = (torch.rand(GRID_CELLS, generator=g) < 0.3).to(torch.uint8)
    origins = torch.rand(300, 3, generator=g) * 0.2 - 0.6
    directions = torch.nn.functional.normalize(0.5 - origins + 0.1 * torch.randn(300, 3, generator=g), dim=-1)

    def field(p, d):  # a thin medium: rays rarely stop early, so both renderings see every sample
        return 2.0 + p[:, 0], torch.stack([p[:, 0], p[:, 1], d[:, 2].abs()], -1)

    kwargs = dict(cone_angle=0.0, near_distance=0.0, background=torch.tensor([1.0, 0.5, 0.0]))
    one = render_rays(field, origins, directions, occupancy, 1, steps_per_round=(1024, 1024), **kwargs)
    rounds = render_rays(field, origins, directions, occupancy, 1, steps_per_round=(7, 7), chunk_rays=128, **kwargs)
    torch.testing.assert_close(rounds, one, rtol=1e-4, atol=1e-5)
    # instant-ngp's schedule: 1 step per live ray while most are alive, up to 8 as they end
    adaptive = render_rays(field, origins, directions, occupancy, 1, steps_per_round=(1, 8), chunk_rays=128, **kwargs)
    torch.testing.assert_close(adaptive, one, rtol=1e-4, atol=1e-5)
    assert one.std(0).min() > 0.01  # the rays do see different things


def test_round_steps_lengthens_rounds_where_rays_end_slowly():
    from ngp_cli.volrend.render import MAX_ROUND_SAMPLES_PER_RAY, round_steps

    # instant-ngp's rule: about one sample per chunk ray, within (lo, hi); the first round has no end rate
    assert [round_steps(1000, live, (1, 8)) for live in (1000, 400, 100, 10)] == [1, 2, 8, 8]
    assert round_steps(1000, 1000, (3, 8)) == 3
    # sqrt(2c / p): c = 1, rays ending at 5 % a sample -> 6 samples a round, 2 % -> 10
    assert round_steps(1000, 500, (1, 32), end_rate=0.05) == 6
    assert round_steps(1000, 500, (1, 32), end_rate=0.02) == 10
    assert round_steps(1000, 500, (1, 32), end_rate=0.02, overhead=4.0) == 16  # 20, within 8 x 1000 samples
    assert round_steps(1000, 100, (1, 32), end_rate=0.02, overhead=4.0) == 20
    assert round_steps(100, 10, (1, 16), end_rate=0.02, overhead=4.0) == 16  # within hi
    assert round_steps(1000, 500, (1, 32), end_rate=0.02, overhead=0.0) == 2  # off: instant-ngp's alone
    assert round_steps(1000, 1000, (1, 1024), end_rate=1e-6) == MAX_ROUND_SAMPLES_PER_RAY  # memory: 8 x chunk
    assert round_steps(1000, 100, (1, 1024), end_rate=1e-6) == 10 * MAX_ROUND_SAMPLES_PER_RAY
    # rays ending fast (on surfaces) keep instant-ngp's length, never shorter
    assert round_steps(1000, 1000, (1, 32), end_rate=0.9) == 1
    assert round_steps(1000, 100, (1, 32), end_rate=0.9) == 10


def test_rendering_thin_media_takes_fewer_longer_rounds_with_the_same_colours():
    """Rays through a thin medium never end early: the end-rate rule lengthens their rounds (fewer network batches
    than instant-ngp's schedule), every batch within MAX_ROUND_SAMPLES_PER_RAY samples per chunk ray, the colours
    those of a single pass."""
    from ngp_cli.volrend.render import MAX_ROUND_SAMPLES_PER_RAY, render_rays

    g = torch.Generator().manual_seed(7)
    occupancy = torch.ones(GRID_CELLS, dtype=torch.uint8)
    origins = torch.rand(200, 3, generator=g) * 0.2 - 0.6
    directions = torch.nn.functional.normalize(0.5 - origins + 0.1 * torch.randn(200, 3, generator=g), dim=-1)
    batches: list[int] = []

    def field(p, d):
        batches.append(p.shape[0])
        return 0.5 + p[:, 1].abs(), torch.stack([p[:, 0], p[:, 2], d[:, 1].abs()], -1)

    kwargs = dict(cone_angle=0.0, near_distance=0.0, background=torch.tensor([0.2, 0.5, 1.0]), chunk_rays=64)
    one = render_rays(field, origins, directions, occupancy, 1, steps_per_round=(1024, 1024), **kwargs)
    batches.clear()
    ingp = render_rays(field, origins, directions, occupancy, 1, steps_per_round=(1, 8), round_overhead=0.0, **kwargs)
    n_ingp, batches[:] = len(batches), []
    rule = render_rays(field, origins, directions, occupancy, 1, steps_per_round=(1, 32), **kwargs)
    torch.testing.assert_close(ingp, one, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rule, one, rtol=1e-4, atol=1e-5)
    assert len(batches) < 0.5 * n_ingp
    assert max(batches) <= MAX_ROUND_SAMPLES_PER_RAY * 64 and max(batches) > 64  # longer than one per chunk ray


def test_rendering_opaque_rays_queries_few_samples_past_the_surface():
    """Rays that end on an opaque surface: the adaptive rounds give the single pass's colours while the network sees
    a fraction of the samples (instant-ngp's inference schedule; the single pass evaluates every sample up to 1024)."""
    from ngp_cli.volrend.render import render_ray_maps

    g = torch.Generator().manual_seed(6)
    occupancy = torch.ones(GRID_CELLS, dtype=torch.uint8)
    origins = torch.rand(256, 3, generator=g) * 0.2 - 0.6
    directions = torch.nn.functional.normalize(0.5 - origins + 0.1 * torch.randn(256, 3, generator=g), dim=-1)
    seen = []

    def field(p, d):  # opaque beyond the plane x = 0.4, colours varying along it
        seen.append(p.shape[0])
        return torch.where(p[:, 0] > 0.4, 5e4, 0.0), torch.stack([p[:, 1], p[:, 2], d[:, 0].abs()], -1)

    kwargs = dict(cone_angle=0.0, near_distance=0.0, background=torch.tensor([0.0, 0.0, 1.0]),
                  maps=("rgb", "opacity"))
    one = render_ray_maps(field, origins, directions, occupancy, 1, steps_per_round=(1024, 1024), **kwargs)
    n_one, seen[:] = sum(seen), []
    adaptive = render_ray_maps(field, origins, directions, occupancy, 1, steps_per_round=(1, 8), **kwargs)
    torch.testing.assert_close(adaptive["rgb"], one["rgb"], rtol=0, atol=2e-4)
    assert (one["opacity"] > 0.999).float().mean() > 0.9  # most rays end on the plane
    assert sum(seen) < 0.5 * n_one


# ---------------------------------------------------------------------------------------------------------------------
# Occupancy grid


def test_occupancy_update_takes_the_max_and_decays():
    grid = OccupancyGrid(1)
    g = torch.Generator().manual_seed(0)
    grid.update(lambda p: torch.full((p.shape[0],), 10.0), g, all_cells=True)
    assert torch.allclose(grid.density, torch.full_like(grid.density, 10.0 * MIN_CONE_STEPSIZE))
    assert grid.occupancy.all()  # optical thickness 0.017 > 0.01
    # Density where x > 0.5 only: the other half decays by 0.95 per update, below 0.01 after 11 updates.
    for _ in range(11):
        grid.update(lambda p: (p[:, 0] > 0.5).float() * 10.0, g, all_cells=True, decay=0.95)
    low = grid.density.view(GRID_SIZE, GRID_SIZE, GRID_SIZE)[:, :, :GRID_SIZE // 2 - 1]  # (z, y, x) order
    assert torch.allclose(low, torch.full_like(low, 10.0 * MIN_CONE_STEPSIZE * 0.95 ** 11))
    assert grid.occupancy.view(GRID_SIZE, GRID_SIZE, GRID_SIZE)[:, :, :GRID_SIZE // 2 - 1].sum() == 0
    assert grid.occupancy.view(GRID_SIZE, GRID_SIZE, GRID_SIZE)[:, :, GRID_SIZE // 2 + 1:].all()


def test_cells_no_camera_sees_are_marked_and_stay_empty():
    grid = OccupancyGrid(1)
    # One camera at +z looking down -z at the cube centre, narrow field of view: only a central column is seen.
    c2w = torch.tensor([[[1.0, 0, 0, 0.5], [0, 1, 0, 0.5], [0, 0, 1, 3.0]]])
    intrinsics = torch.tensor([[100.0, 100.0, 10.0, 10.0]])  # 20x20 px at f=100: ±0.1 rad
    marked = grid.mark_untrained(c2w, intrinsics, 20, 20)
    assert 0 < marked < GRID_CELLS
    centre = 64 + GRID_SIZE * (64 + GRID_SIZE * 64)
    corner = 0
    assert grid.density[centre] == 0 and grid.density[corner] == -1
    grid.update(lambda p: torch.full((p.shape[0],), 100.0), torch.Generator().manual_seed(0), all_cells=True)
    assert grid.density[corner] == -1 and grid.occupancy[corner] == 0 and grid.occupancy[centre] == 1


# ---------------------------------------------------------------------------------------------------------------------
# Model


def test_nerf_network_shapes_ranges_and_groups():
    from ngp_cli.config import resolve
    from ngp_cli.tasks.nerf import NerfConfig
    from ngp_cli.tasks.nerf.model import NerfNetwork

    cfg = resolve(NerfConfig, "nerf", "nerf-cpu", ["encoding.log2_hashmap_size=12"], default_preset="nerf-cpu")
    model = NerfNetwork(cfg, 2, generator=torch.Generator().manual_seed(0))
    assert model.encoding.n_output_dims == 32 and model.rgb_network.n_input_dims == 32
    p = torch.rand(100, 3) * 2 - 0.5
    d = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    sigma, rgb = model(p, d)
    assert sigma.shape == (100,) and rgb.shape == (100, 3)
    assert (sigma > 0).all() and (rgb > 0).all() and (rgb < 1).all()
    torch.testing.assert_close(model.density(p), sigma)
    groups = model.param_groups(1e-6)
    assert [g["name"] for g in groups] == ["encoding", "network"] and groups[1]["weight_decay"] == 1e-6
    assert "grid.density" in model.state_dict() and "grid.occupancy" in model.state_dict()


def test_rendering_on_the_cpu_kernels_runs_both_networks_in_one_kernel(host_cxx, monkeypatch):
    """Where the fused bf16 kernel applies (cpu kernels, bf16 MLP path, AVX-512-BF16), the renderers' per-ray
    features carry the colour network's direction sums and :meth:`forward_encoded` of a RayRows runs the kernel; it
    gives what the two networks give on the per-sample rows, within bf16 rounding. Under autograd (normal maps) and
    with per-sample rows the networks run as before."""
    from ngp_cli.config import resolve
    from ngp_cli.cuda import mlp_bf16
    from ngp_cli.tasks.nerf import NerfConfig
    from ngp_cli.tasks.nerf.model import NerfNetwork
    from ngp_cli.volrend.render import RayRows

    if not mlp_bf16.available():
        pytest.skip("no AVX-512-BF16: rendering keeps the two networks apart")
    monkeypatch.setenv("NGP_CPU_MLP", "bf16")
    cfg = resolve(NerfConfig, "nerf", "nerf-cpu", ["encoding.log2_hashmap_size=12"], default_preset="nerf-cpu")
    model = NerfNetwork(cfg, 2, generator=torch.Generator().manual_seed(0), kernel_target="cpu")
    with torch.no_grad():
        for w in [*model.density_network.weights, *model.rgb_network.weights]:
            w.mul_(4.0)  # colours away from 0.5, so that a wrong direction or row shows
        model.encoding.params.uniform_(-1.0, 1.0)
    gen = torch.Generator().manual_seed(1)
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen), dim=-1)
    rows = torch.randint(0, 50, (400,), generator=gen)
    p = torch.rand(400, 3, generator=gen) * 2 - 0.5
    calls = []
    real = mlp_bf16.fused_nerf
    monkeypatch.setattr(mlp_bf16, "fused_nerf", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        features = model.ray_features(d)
        assert features.shape == (50, 16 + 64)
        torch.testing.assert_close(features[:, :16], model.encode_directions(d), atol=0, rtol=0)
        sigma, rgb = model.forward_encoded(p, RayRows(features, rows))
        assert calls == [1]
        ref_sigma, ref_rgb = model.forward_encoded(p, model.encode_directions(d)[rows])
        assert calls == [1]
    assert rgb.std(0).min() > 0.05  # varied colours
    torch.testing.assert_close(sigma, ref_sigma, rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(rgb, ref_rgb, rtol=0, atol=2e-2)
    with torch.enable_grad():  # the normals' autograd pass: the networks, differentiable
        x = p.clone().requires_grad_(True)
        s, _ = model.forward_encoded(x, RayRows(features, rows))
        (g,) = torch.autograd.grad(s.sum(), x)
    assert calls == [1] and torch.isfinite(g).all() and g.abs().max() > 0


# ---------------------------------------------------------------------------------------------------------------------
# Commands


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    return make_synthetic_scene(tmp_path_factory.mktemp("scene"), n_train=16, n_val=3, resolution=32)


_FAST = ["--set", "train.log_every=5", "--set", "nerf.grid_warmup_steps=16", "--set", "train.eval_every=10",
         "--set", "nerf.eval_views=1", "--set", "nerf.render_views=2", "--set", "train.batch_size=65536",
         "--set", "nerf.n_rays_initial=512", "--set", "encoding.log2_hashmap_size=15"]


@pytest.fixture(scope="module")
def trained(scene, tmp_path_factory, app):
    """A 40-step run on the small synthetic scene (module-scoped: eval/render/resume tests share it)."""
    from typer.testing import CliRunner

    from tests.conftest import Invocation

    runs = tmp_path_factory.mktemp("runs")
    result = Invocation(CliRunner().invoke(app, ["train-nerf", str(scene), "--steps", "40", "--runs-dir", str(runs),
                                                 "--json", *_FAST]))
    assert result.exit_code == 0, result.stderr
    return result


def test_train_nerf_writes_a_complete_run(trained):
    done = trained.last("done")
    run = Path(done["run_dir"])
    assert done["step"] == 40 and done["metrics"]["n_views"] == 3 and done["metrics"]["split"] == "val"
    # A sanity bound: 40 steps of ~100 rays (a batch holds 2^16 samples, and the fresh occupancy grid gives a ray
    # ~600) do not fit the held-out views yet; the training loss below shows the learning.
    assert 7.0 < done["metrics"]["psnr"] < 60.0 and 0.0 < done["metrics"]["ssim"] <= 1.0
    assert json.loads((run / "summary.json").read_text())["metrics"]["psnr"] == done["metrics"]["psnr"]
    ev = json.loads((run / "eval_val.json").read_text())
    assert ev["n_views"] == 3 and len(ev["views"]) == 3 and ev["psnr"] == pytest.approx(done["metrics"]["psnr"])
    assert sorted(p.name for p in (run / "renders").iterdir()) == ["curves.png", "val_r_0.png", "val_r_1.png"]
    assert Path(done["artifacts"]["checkpoint"]).is_file()
    evals = [e for e in trained.events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [10, 20, 30, 40] and all(e["eval"]["n_views"] == 1 for e in evals)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval" in x] == [10, 20, 30, 40]
    # The fit improves on the untrained start: the batch loss falls (to 0.5-0.8x over seeds 0-4).
    losses = [x["loss"] for x in lines if "loss" in x and "eval" not in x]
    assert sum(losses[-2:]) < 0.85 * sum(losses[:2])
    # The sample-capped batch: the ray count adapts on the device, and log steps report it.
    assert all(x["rays_per_batch"] > 0 and x["samples_per_batch"] > 0 for x in lines if "loss" in x)


def test_eval_recomputes_the_final_metrics(trained, ngp):
    run = trained.last("done")["run_dir"]
    result = ngp("eval", run, "--split", "val")
    assert result.exit_code == 0, result.stderr
    done = result.last("done")
    assert done["metrics"]["psnr"] == pytest.approx(trained.last("done")["metrics"]["psnr"], abs=1e-4)
    assert len([e for e in result.events if e["event"] == "view"]) == 3


def test_render_orbit_to_video_and_frames(trained, ngp, tmp_path):
    import imageio.v3 as iio

    run = trained.last("done")["run_dir"]
    video = tmp_path / "orbit.mp4"
    result = ngp("render", run, "--orbit", "3", "--resolution", "32x24", "--out", video)
    assert result.exit_code == 0, result.stderr
    import imageio.v2 as iio2

    reader = iio2.get_reader(video)
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == 3 and frames[0].shape == (24, 32, 3)
    result = ngp("render", run, "--orbit", "2", "--resolution", "20x16", "--out", tmp_path / "frames")
    assert result.exit_code == 0, result.stderr
    pngs = sorted((tmp_path / "frames").glob("*.png"))
    assert len(pngs) == 2 and iio.imread(pngs[0]).shape == (16, 20, 3)
    # The object is in view: the frame is not a flat background.
    assert np.asarray(iio.imread(pngs[0])).std() > 5


def test_render_camera_path_in_dataset_frame(trained, ngp, scene, tmp_path):
    meta = json.loads((scene / "transforms_val.json").read_text())
    path = tmp_path / "path.json"
    path.write_text(json.dumps({"camera_angle_x": meta["camera_angle_x"], "frames": meta["frames"][:1]}))
    result = ngp("render", trained.last("done")["run_dir"], "--camera-path", path, "--out", tmp_path / "cp")
    assert result.exit_code == 0, result.stderr
    import imageio.v3 as iio

    ours = iio.imread(tmp_path / "cp" / "frame_00000.png").astype(np.float32) / 255
    view = iio.imread(Path(trained.last("done")["run_dir"]) / "renders" / "val_r_0.png").astype(np.float32) / 255
    # Same camera as val view 0, same resolution: the same image up to the background (black vs white here).
    fg = view.mean(axis=2) < 0.98
    assert np.abs(ours[fg] - view[fg]).mean() < 0.05


def test_resume_continues_from_the_checkpoint(trained, ngp):
    run = trained.last("done")["run_dir"]
    result = ngp("train-nerf", "--resume", run, "--steps", "45", "--json")
    assert result.exit_code == 0, result.stderr
    steps = [e["step"] for e in result.events if e["event"] == "step"]
    assert steps == [45] and result.last("done")["step"] == 45


def test_a_dataset_without_held_out_views_trains_and_says_so(ngp, scene, tmp_path):
    import shutil

    # Like lego_800_train: only transforms_train.json, so there is no val split to evaluate on.
    train_only = tmp_path / "train_only"
    shutil.copytree(scene / "train", train_only / "train")
    shutil.copy(scene / "transforms_train.json", train_only / "transforms_train.json")
    result = ngp("train-nerf", train_only, "--steps", "10", "--runs-dir", tmp_path / "runs", *_FAST, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.last("eval")["eval"]["n_views"] == 0 and result.last("done")["metrics"]["n_views"] == 0
    assert result.last("done")["metrics"]["psnr"] is None
    assert "no held-out evaluation" in result.stderr
    summary = json.loads((Path(result.last("done")["run_dir"]) / "summary.json").read_text())
    assert summary["metrics"]["psnr"] is None


def test_train_nerf_without_dataset_uses_the_builtin_scene(ngp, tmp_path):
    result = ngp("train-nerf", "--steps", "2", "--runs-dir", tmp_path, *_FAST, "--set", "nerf.render_views=0")
    assert result.exit_code == 0, result.stderr
    cfg = (Path(result.last("done")["run_dir"]) / "config.yaml").read_text()
    assert "synthetic-v1" in cfg and "built-in synthetic scene" in result.stderr


# ---------------------------------------------------------------------------------------------------------------------
# After training: progress, --data, final_eval_views, held-out views, tiny images (issue 13)


def test_eval_and_render_show_progress_per_view_and_frame(trained, ngp, tmp_path):
    run = trained.last("done")["run_dir"]
    res = ngp("eval", run)
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("evaluating val ")]
    assert [ln.split(" (")[0] for ln in lines] == ["evaluating val 1/3", "evaluating val 2/3", "evaluating val 3/3"]
    assert all("ETA" in ln for ln in lines)
    assert [e["view"] for e in res.events if e["event"] == "view"] == [0, 1, 2]
    res = ngp("render", run, "--orbit", "2", "--resolution", "16x16", "--out", tmp_path / "f")
    assert res.exit_code == 0, res.stderr
    assert [ln.split(" (")[0] for ln in res.stderr.splitlines() if ln.startswith("rendering ") and "/" in ln
            and "frames at" not in ln] == ["rendering 1/2", "rendering 2/2"]
    res = ngp("-q", "render", run, "--orbit", "2", "--resolution", "16x16", "--out", tmp_path / "g")
    assert res.exit_code == 0 and res.stderr == ""


def test_evaluate_views_reports_each_view_as_it_finishes(trained):
    """``ngp eval`` emits a view's line when that view is done, not all at the end: on_view sees the views in order,
    each before the next one is rendered."""
    from ngp_cli.tasks.nerf import evaluate, views

    seen: list[int] = []
    real = views.render_view
    rendered: list[int] = []

    def spy(*args, **kwargs):
        rendered.append(len(seen))  # how many views were reported when this one started
        return real(*args, **kwargs)

    from ngp_cli.tasks import discover_tasks

    run, problem, _ = evaluate.load_run(discover_tasks()["nerf"], Path(trained.last("done")["run_dir"]), "torch")
    from ngp_cli.tasks.nerf.data import load_split

    ds = load_split(problem.cfg, "val")
    views.render_view = spy
    try:
        views.evaluate_views(problem, ds, range(3), with_ssim=False, on_view=lambda row: seen.append(row["view"]))
    finally:
        views.render_view = real
    assert seen == [0, 1, 2] and rendered == [0, 1, 2]


def _moved_run(trained, tmp_path) -> Path:
    """A copy of the trained run whose recorded dataset no longer exists (as after moving the dataset)."""
    import shutil

    run = tmp_path / "runs" / "nerf" / "moved"
    shutil.copytree(trained.last("done")["run_dir"], run)
    cfg = run / "config.yaml"
    cfg.write_text(re.sub(r"(?m)^(  path: ).*$", r"\g<1>" + str(tmp_path / "gone"), cfg.read_text(), count=1))
    return run


def test_a_moved_dataset_is_named_and_data_overrides_it(trained, ngp, scene, tmp_path):
    run = _moved_run(trained, tmp_path)
    config = (run / "config.yaml").read_text()
    for command in (["eval"], ["render", "--orbit", "1", "--resolution", "8x8", "--out", tmp_path / "o"],
                    ["extract-mesh", "--resolution", "16"]):
        res = ngp(command[0], run, *command[1:])
        line = _one_line(res, 4)
        assert str(tmp_path / "gone") in line and "--data" in line
    res = ngp("eval", run, "--data", scene)
    assert res.exit_code == 0, res.stderr
    original = ngp("eval", trained.last("done")["run_dir"])  # the same checkpoint, its dataset where it was
    assert res.last("done")["metrics"]["psnr"] == pytest.approx(original.last("done")["metrics"]["psnr"], abs=1e-6)
    res = ngp("render", run, "--orbit", "1", "--resolution", "8x8", "--out", tmp_path / "o", "--data", scene)
    assert res.exit_code == 0, res.stderr
    assert (run / "config.yaml").read_text() == config  # --data never rewrites the run's config


def test_final_eval_views_subsets_or_skips_the_final_evaluation(ngp, scene, tmp_path):
    from ngp_cli.tasks.nerf.evaluate import final_views

    assert final_views(10, None) == list(range(10)) and final_views(10, 0) == []
    assert final_views(10, 3) == [0, 4, 9] and final_views(10, 1) == [0] and final_views(3, 8) == [0, 1, 2]
    base = ["train-nerf", scene, "--steps", "2", "--runs-dir", tmp_path, *_FAST, "--set", "nerf.render_views=0",
            "--set", "train.eval_every=0"]
    res = ngp(*base, "--set", "train.final_eval_views=2")
    assert res.exit_code == 0, res.stderr
    m = res.last("done")["metrics"]
    assert m["n_views"] == 2 and m["split_views"] == 3 and math.isfinite(m["psnr"])
    ev = json.loads((Path(res.last("done")["run_dir"]) / "eval_val.json").read_text())
    assert [v["view"] for v in ev["views"]] == [0, 2]
    res = ngp(*base, "--set", "train.final_eval_views=0")
    assert res.exit_code == 0, res.stderr
    m = res.last("done")["metrics"]
    assert m["n_views"] == 0 and m["psnr"] is None and "final_eval_views=0" in m["eval_skipped"]
    run = Path(res.last("done")["run_dir"])
    assert json.loads((run / "summary.json").read_text())["metrics"]["eval_skipped"] == m["eval_skipped"]
    assert not (run / "eval_val.json").exists() and "final evaluation skipped" in res.stderr


def test_holdout_every_0_has_no_held_out_views(ngp, scene, tmp_path):
    """Regression: nerf.holdout_every=0 evaluated the training frames as 'val'."""
    import shutil

    ds = tmp_path / "single"  # one transforms.json (an instant-ngp capture), its frames' paths unchanged
    shutil.copytree(scene / "train", ds / "train")
    shutil.copy(scene / "transforms_train.json", ds / "transforms.json")
    res = ngp("train-nerf", ds, "--steps", "2", "--runs-dir", tmp_path / "runs", *_FAST,
              "--set", "nerf.holdout_every=0", "--json")
    assert res.exit_code == 0, res.stderr
    m = res.last("done")["metrics"]
    assert m["n_views"] == 0 and m["psnr"] is None and "no held-out views" in m["eval_skipped"]
    assert "no held-out" in res.stderr
    run = res.last("done")["run_dir"]
    assert not (Path(run) / "eval_val.json").exists()
    line = _one_line(ngp("eval", run), 4)
    assert "no held-out views" in line and "holdout_every=0" in line


def test_a_dataset_of_8x8_images_trains_and_gets_its_summary(ngp, tmp_path):
    """Regression: SSIM's 11x11 window crashed on 8x8 images after training, leaving no summary.json."""
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    tiny = make_synthetic_scene(tmp_path / "tiny", n_train=6, n_val=2, resolution=8)
    res = ngp("train-nerf", tiny, "--steps", "2", "--runs-dir", tmp_path / "runs", *_FAST)
    assert res.exit_code == 0, res.stderr
    m = res.last("done")["metrics"]
    assert m["n_views"] == 2 and math.isfinite(m["psnr"]) and m["ssim"] is None
    run = Path(res.last("done")["run_dir"])
    assert json.loads((run / "summary.json").read_text())["metrics"]["ssim"] is None
    assert "SSIM not computed" in res.stderr
    res = ngp("eval", run)
    assert res.exit_code == 0, res.stderr and res.last("done")["metrics"]["ssim"] is None


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 4 (data) / 2 (usage) / 3 (config), nothing earlier lost


def _one_line(result, code):
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = [x for x in result.stderr.splitlines() if x.startswith("ngp:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def test_malformed_json_and_missing_frames(ngp, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "transforms.json").write_text('{"camera_angle_x": 0.7, "frames": [')
    line = _one_line(ngp("train-nerf", bad, "--runs-dir", tmp_path / "runs"), 4)
    assert "transforms.json" in line and "line" in line
    (bad / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": [
        {"file_path": "./nope", "transform_matrix": np.eye(4).tolist()}]}))
    line = _one_line(ngp("train-nerf", bad, "--runs-dir", tmp_path / "runs"), 4)
    assert "no" in line.lower()
    assert not (tmp_path / "runs").exists()  # nothing was created for a run that could not start


def test_file_path_outside_root_needs_the_flag(ngp, scene, tmp_path):
    meta = json.loads((scene / "transforms_train.json").read_text())
    ds = tmp_path / "ds"
    ds.mkdir()
    for f in meta["frames"]:
        f["file_path"] = str(scene / f["file_path"])
    (ds / "transforms.json").write_text(json.dumps(meta))
    line = _one_line(ngp("train-nerf", ds, "--runs-dir", tmp_path / "runs", "--steps", "1", *_FAST), 4)
    assert "--allow-outside-root" in line
    result = ngp("train-nerf", ds, "--runs-dir", tmp_path / "runs", "--steps", "1", "--allow-outside-root", *_FAST,
                 "--set", "nerf.render_views=0", "--set", "nerf.holdout_every=4")
    assert result.exit_code == 0, result.stderr


def test_eval_and_render_refuse_bad_arguments(ngp, trained, tmp_path):
    run = trained.last("done")["run_dir"]
    _one_line(ngp("render", run), 2)
    _one_line(ngp("render", run, "--orbit", "2", "--resolution", "big"), 2)
    assert str(tmp_path) in _one_line(ngp("eval", tmp_path), 4)  # a folder that is not a run
    _one_line(ngp("eval", tmp_path / "missing"), 4)
    bad_path = tmp_path / "path.json"
    bad_path.write_text("{]")
    _one_line(ngp("render", run, "--camera-path", bad_path, "--out", tmp_path / "x"), 4)
    assert not (tmp_path / "x").exists()


def test_bad_aabb_scale_is_a_config_error(ngp, scene, tmp_path):
    _one_line(ngp("train-nerf", scene, "--runs-dir", tmp_path, "--set", "nerf.aabb_scale=3"), 3)


@pytest.mark.parametrize("name", ["lego_400"])
def test_real_lego_trains_a_few_steps(ngp, shared_data_dir, tmp_path, name):
    result = ngp("train-nerf", shared_data_dir / "nerf" / name, "--steps", "12", "--runs-dir", tmp_path,
                 "--downscale", "8", *_FAST, "--set", "nerf.render_views=1")
    assert result.exit_code == 0, result.stderr
    done = result.last("done")
    assert done["metrics"]["n_views"] == 100 and math.isfinite(done["metrics"]["psnr"])

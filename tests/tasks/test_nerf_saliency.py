"""HollowNeRF's saliency pruning (``nerf.saliency_prune``, ngp_cli/tasks/nerf/saliency.py): the mask against a
hand-written trilinear reference, the compacted model against the dense computation, the skipped lookups, the ADMM
steps, the hard prune, a training run end to end, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ngp_cli.config import resolve
from ngp_cli.tasks.nerf.config import NerfConfig
from ngp_cli.tasks.nerf.model import NerfNetwork
from ngp_cli.tasks.nerf.saliency import INITIAL_SALIENCY, SaliencyMask


def _trilinear(values: torch.Tensor, resolution: int, x: torch.Tensor) -> torch.Tensor:
    """s(x) from first principles: vertex (i, j, k) is row i + R j + R² k, and a point's grid coordinate per axis is
    p = (R - 2) x + 0.5 (tcnn's s·x + 0.5 on x scaled by (R - 2)/(R - 1)), interpolating vertices floor(p) and +1."""
    r = resolution
    grid = values[: r**3].double().view(r, r, r)  # [k, j, i]
    p = x.double() * (r - 2) + 0.5
    base = p.floor()
    f = p - base
    i0 = base.long()
    assert int(i0.min()) >= 0 and int(i0.max()) + 1 <= r - 1  # every corner is a vertex of the grid
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    for corner in range(8):
        d = torch.tensor([(corner >> a) & 1 for a in range(3)])
        w = torch.where(d.bool(), f, 1.0 - f).prod(1)
        c = i0 + d
        out += w * grid[c[:, 2], c[:, 1], c[:, 0]]
    return out


@pytest.mark.parametrize("target", [None, "cpu"])
def test_mask_matches_trilinear_interpolation_of_its_vertices(target):
    torch.manual_seed(0)
    mask = SaliencyMask(9, 0.5)
    mask.kernel_target = target
    with torch.no_grad():
        mask.grid.params.uniform_(-0.2, 1.2)  # the effective values clamp these to [0, 1]
    x = torch.rand(4000, 3)
    x[:50] = 1.0  # the far corner
    x[50:100, 0] = 0.0
    s = mask(x)
    assert s.shape == (4000,) and s.dtype == torch.float32
    expected = _trilinear(mask.effective().detach(), 9, x)
    assert expected.min() >= 0 and expected.max() <= 1
    torch.testing.assert_close(s.double(), expected, atol=2e-6, rtol=0)
    # The gradient to the vertices is the point's trilinear weights (they sum to 1; at most 8 non-zero).
    with torch.no_grad():
        mask.grid.params.uniform_(0.05, 0.95)
    for k in range(100, 104):
        grad, = torch.autograd.grad(mask(x[k : k + 1]).sum(), mask.grid.params)
        assert grad.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert (grad >= 0).all() and 1 <= int((grad > 0).sum()) <= 8


def _model(*sets: str, kernel_target=None) -> NerfNetwork:
    cfg = resolve(NerfConfig, "nerf", "nerf-cpu", ["nerf.saliency_prune=true", "encoding.log2_hashmap_size=14",
                                                   "nerf.saliency_resolution=8", *sets])
    return NerfNetwork(cfg, 1, generator=torch.Generator().manual_seed(3), kernel_target=kernel_target)


def _zero_half(model: NerfNetwork) -> None:
    """Zero the mask's vertices with i < 4 (the half x < ~0.5 of the box), random values elsewhere."""
    with torch.no_grad():
        m = model.saliency.values()
        m.uniform_(0.1, 1.0)
        m.view(-1)[: 8**3].view(8, 8, 8)[:, :, :4] = 0.0


@pytest.mark.parametrize("target", [None, "cpu"])
def test_compacted_field_equals_the_dense_computation(target):
    model = _model(kernel_target=target)
    _zero_half(model)
    torch.manual_seed(1)
    positions = torch.rand(3000, 3)
    dirs = torch.nn.functional.normalize(torch.randn(3000, 3), dim=1)
    sigma, rgb = model(positions, dirs)
    # The reference with autograd as well: the same MLP arithmetic as the model's training forward (without autograd
    # the cpu kernels' MLP sums in another order, equal only to bf16 precision).
    x = model._unit(positions)
    s = model.saliency(x)
    h = model.density_network(model.encoding(x) * s[:, None])
    sigma_ref = (torch.exp(h[:, 0].float().clamp(max=15.0)) * s).detach()
    rgb_ref = model.rgb_network(torch.cat([h.float(), model.encode_directions(dirs)], 1)).float().detach()
    s = s.detach()
    zero = s == 0
    assert 500 < int(zero.sum()) < 2500
    torch.testing.assert_close(sigma[~zero], sigma_ref[~zero], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rgb[~zero], rgb_ref[~zero], rtol=1e-5, atol=1e-6)
    assert (sigma[zero] == 0).all() and (rgb[zero] == 0).all()
    torch.testing.assert_close(model.density(positions), sigma.detach(), rtol=1e-5, atol=1e-6)


def test_samples_with_zero_saliency_skip_their_lookups_and_table_gradients():
    model = _model()
    _zero_half(model)
    torch.manual_seed(2)
    positions = torch.rand(2000, 3)
    dirs = torch.nn.functional.normalize(torch.randn(2000, 3), dim=1)
    seen = []
    hook = model.encoding.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    sigma, rgb = model(positions, dirs)
    hook.remove()
    s = model.saliency(model._unit(positions)).detach()
    active = s > 0
    m = int(active.sum())
    assert seen == [min(-(-m // 256) * 256, 2000)]  # only the salient samples were encoded (and padding)
    (sigma.sum() + rgb.sum()).backward()
    grad_all = model.encoding.params.grad.clone()
    # The same loss over the salient samples alone writes the same table gradient: the others wrote nothing.
    model.zero_grad()
    sigma_a, rgb_a = model(positions[active], dirs[active])
    (sigma_a.sum() + rgb_a.sum()).backward()
    torch.testing.assert_close(grad_all, model.encoding.params.grad, rtol=1e-5, atol=1e-8)
    assert model.saliency.grid.params.grad.abs().sum() > 0  # and the mask trains
    # No sample left: the outputs are zero and still depend on the parameters.
    with torch.no_grad():
        model.saliency.values().zero_()
    sigma0, rgb0 = model(positions[:10], dirs[:10])
    assert (sigma0 == 0).all() and (rgb0 == 0).all() and sigma0.requires_grad


def test_admm_update_projects_onto_the_k_largest_and_steps_the_dual():
    mask = SaliencyMask(6, 0.1)
    torch.manual_seed(4)
    with torch.no_grad():
        mask.values().uniform_(0.0, 1.0).mul_(mask.support)
        mask.u.copy_(torch.randn_like(mask.u) * 0.3 * mask.support)
    m, u = mask.values().detach().clone(), mask.u.clone()
    mask.admm_update()
    k = mask.kept
    assert k == 22  # ceil(0.1 * 216)
    v = (m + u)[:216]
    top = torch.topk(v, k).indices
    expected = torch.zeros_like(m)
    expected[top] = v[top].clamp(0.0, 1.0)
    torch.testing.assert_close(mask.z, expected)
    torch.testing.assert_close(mask.u, u + m - expected)
    assert int((mask.z != 0).sum()) <= k
    assert mask.penalty(2.0).item() == pytest.approx((m - mask.z + mask.u).square().sum().item(), rel=1e-5)


def test_prune_fixes_the_support_for_good():
    mask = SaliencyMask(6, 0.25)
    torch.manual_seed(5)
    with torch.no_grad():
        mask.values().uniform_(0.0, 1.0)
    with torch.no_grad():
        mask.u.copy_(torch.randn_like(mask.u))  # the dual does not decide the prune: m does
    order = torch.argsort(mask.values().detach()[:216], descending=True)
    mask.prune()
    k = mask.kept
    assert bool(mask.pruned) and int(mask.support.sum()) == k
    assert set(torch.nonzero(mask.support).squeeze(1).tolist()) == set(order[:k].tolist())
    assert mask.kept_fraction() == pytest.approx(k / 216)
    assert torch.equal(mask.values(), mask.support.float())  # binary from now on
    with torch.no_grad():  # the optimizer moving m changes nothing the field sees
        mask.values().add_(torch.rand_like(mask.values()) * 0.3 - 0.6)
    x = torch.rand(500, 3)
    torch.testing.assert_close(mask(x).double(), _trilinear(mask.support.float(), 6, x), atol=2e-6, rtol=0)
    assert mask.kept_fraction() == pytest.approx(k / 216)
    assert not mask(x).requires_grad  # a constant now: no gradient, no optimizer step for m
    loaded = SaliencyMask(6, 0.25)
    loaded.load_state_dict(mask.state_dict())  # a checkpoint of a pruned mask is binary too
    assert torch.equal(loaded(x), mask(x)) and not loaded(x).requires_grad


def test_initial_mask_scales_every_sample_alike():
    mask = SaliencyMask(5, 1.0)
    s = mask(torch.rand(100, 3))
    torch.testing.assert_close(s, torch.full((100,), INITIAL_SALIENCY))


# ---------------------------------------------------------------------------------------------------------------------
# Commands

_FAST = ["--set", "train.log_every=5", "--set", "nerf.grid_warmup_steps=16", "--set", "train.eval_every=0",
         "--set", "nerf.render_views=0", "--set", "train.batch_size=65536", "--set", "nerf.n_rays_initial=512",
         "--set", "encoding.log2_hashmap_size=15"]
_PRUNE = ["--set", "nerf.saliency_prune=true", "--set", "nerf.saliency_start=8", "--set",
          "nerf.saliency_prune_step=24", "--set", "nerf.saliency_resolution=16", "--set", "nerf.saliency_target=0.2",
          "--set", "nerf.saliency_admm_interval=4"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    return make_synthetic_scene(tmp_path_factory.mktemp("scene"), n_train=12, n_val=2, resolution=32)


def test_pruned_run_trains_evaluates_and_resumes(ngp, scene, tmp_path):
    from safetensors.torch import load_file

    result = ngp("train-nerf", scene, "--steps", "32", "--runs-dir", tmp_path, "--json", *_FAST, *_PRUNE)
    assert result.exit_code == 0, result.stderr
    done = result.last("done")
    metrics = done["metrics"]
    k = -(-2 * 16**3 // 10)  # ceil(0.2 * 4096)
    assert metrics["saliency_params"] <= k and metrics["saliency_kept"] == pytest.approx(metrics["saliency_params"]
                                                                                         / 16**3)
    assert metrics["table_params"] > 0
    run = Path(done["run_dir"])
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    kept = {x["step"]: x["saliency_kept"] for x in steps if "saliency_kept" in x}
    salient = [x["salient_samples"] for x in steps if "saliency_kept" in x]
    assert salient[0] == 1.0 and all(0.0 <= v <= 1.0 for v in salient)  # the share of a batch's samples encoded
    assert kept[5] == 1.0 and kept[30] <= k / 16**3  # every vertex at first (0.5), at most k once pruned
    tensors = load_file(done["artifacts"]["checkpoint"])
    support = tensors["model.saliency.support"]
    assert int(support.sum()) == k and bool(tensors["model.saliency.pruned"])
    again = ngp("eval", run)
    assert again.exit_code == 0, again.stderr
    assert again.last("done")["metrics"]["psnr"] == pytest.approx(metrics["psnr"], abs=1e-4)
    resumed = ngp("train-nerf", "--resume", run, "--steps", "40", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    after = load_file(resumed.last("done")["artifacts"]["checkpoint"])
    assert torch.equal(after["model.saliency.support"], support)  # pruned once, kept on resume


def _one_line(result, code):
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = [x for x in result.stderr.splitlines() if x.startswith("ngp:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", ".nan"])
def test_saliency_target_outside_0_1_is_a_config_error(ngp, scene, tmp_path, value):
    line = _one_line(ngp("train-nerf", scene, "--runs-dir", tmp_path, "--set", "nerf.saliency_prune=true",
                         "--set", f"nerf.saliency_target={value}"), 3)
    assert "nerf.saliency_target" in line
    assert not tmp_path.joinpath("nerf").exists()


def test_bad_pruning_schedules_and_combinations_are_config_errors(ngp, scene, tmp_path):
    line = _one_line(ngp("train-nerf", scene, "--runs-dir", tmp_path, *_PRUNE, "--set",
                         "nerf.saliency_prune_step=8"), 3)
    assert "nerf.saliency_prune_step" in line
    line = _one_line(ngp("train-nerf", scene, "--runs-dir", tmp_path, *_PRUNE, "--set", "distributed.partition=2"), 3)
    assert "distributed.partition" in line
    assert not tmp_path.joinpath("nerf").exists()


@pytest.mark.parametrize("command", ["fit-image", "train-sdf", "train-nrc"])
def test_pruning_asked_of_a_task_without_a_volume_is_a_config_error(ngp, tmp_path, command):
    line = _one_line(ngp(command, "--runs-dir", tmp_path, "--set", "nerf.saliency_prune=true"), 3)
    assert "nerf.saliency_prune" in line and "volume" in line
    assert not any(tmp_path.iterdir())

"""The training loop's pieces: tcnn losses, the ExponentialDecay schedule, the EMA, optimizer parameter groups."""

from __future__ import annotations

import pytest
import torch

from ngp_cli.config import EncodingConfig, LossConfig, NetworkConfig, OptimizerConfig
from ngp_cli.nn.model import NetworkWithInputEncoding
from ngp_cli.train import EMA, learning_rate, make_loss, make_optimizer


def test_losses_match_tiny_cuda_nn_definitions():
    p, t = torch.randn(64, 3), torch.randn(64, 3)
    assert torch.allclose(make_loss(LossConfig("L2"))(p, t), ((p - t) ** 2).mean())
    assert torch.allclose(make_loss(LossConfig("L1"))(p, t), (p - t).abs().mean())
    assert torch.allclose(make_loss(LossConfig("RelativeL2"))(p, t), (((p - t) ** 2) / (p ** 2 + 0.01)).mean())
    assert torch.allclose(make_loss(LossConfig("RelativeL1"))(p, t), ((p - t).abs() / (p.abs() + 0.01)).mean())


def test_exponential_decay_schedule():
    cfg = OptimizerConfig(learning_rate=1e-2, decay_start=100, decay_interval=50, decay_base=0.5)
    assert learning_rate(cfg, 0) == 1e-2 and learning_rate(cfg, 99) == 1e-2
    # tcnn multiplies by the base at decay_start, decay_start + interval, ...
    assert learning_rate(cfg, 100) == pytest.approx(5e-3)
    assert learning_rate(cfg, 149) == pytest.approx(5e-3)
    assert learning_rate(cfg, 150) == pytest.approx(2.5e-3)
    assert learning_rate(OptimizerConfig(learning_rate=3e-3), 10**6) == 3e-3  # decay_base 1: off


def test_ema_is_bias_corrected_and_restores_weights():
    w = torch.nn.Parameter(torch.randn(5))
    ema = EMA([w], decay=0.9)
    history = []
    for _ in range(4):
        with torch.no_grad():
            w.add_(torch.randn(5))
        history.append(w.detach().clone())
        ema.update()
    weights = torch.tensor([0.9 ** (3 - i) * 0.1 for i in range(4)])
    expected = sum(wi * h for wi, h in zip(weights, history, strict=True)) / (1 - 0.9 ** 4)
    current = w.detach().clone()
    with ema.applied():
        assert torch.allclose(w, expected, atol=1e-6)
    assert torch.equal(w.detach(), current)


def test_l2_applies_to_the_mlp_only():
    model = NetworkWithInputEncoding(2, 3, EncodingConfig(n_levels=2, log2_hashmap_size=8, per_level_scale=2.0),
                                     NetworkConfig(n_neurons=16), generator=torch.Generator().manual_seed(0))
    opt = make_optimizer(model, OptimizerConfig(l2_reg=1e-6))
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model.encoding.params)] == 0.0
    assert all(decays[id(p)] == 1e-6 for p in model.network.parameters())
    assert opt.defaults["betas"] == (0.9, 0.99) and opt.defaults["eps"] == 1e-15


@pytest.mark.parametrize("kernel_target, skip, expected", [
    (None, False, torch.optim.Adam),   # torch backend, dense steps: torch's fast foreach Adam
    (None, True, "tcnn"),              # torch backend, paper's sparse steps: the torch reference of tcnn's Adam
    ("cpu", False, "tcnn"),            # kernel backends: the adam_step kernel, dense or sparse
    ("cpu", True, "tcnn"),
])
def test_optimizer_choice_follows_backend_and_skip_zero_grad(kernel_target, skip, expected):
    from ngp_cli.nn.optim import Adam

    model = NetworkWithInputEncoding(2, 3, EncodingConfig(n_levels=2, log2_hashmap_size=8, per_level_scale=2.0),
                                     NetworkConfig(n_neurons=16), generator=torch.Generator().manual_seed(0),
                                     kernel_target=kernel_target)
    opt = make_optimizer(model, OptimizerConfig(skip_zero_grad=skip))
    if expected is torch.optim.Adam:
        assert type(opt) is torch.optim.Adam
        return
    assert isinstance(opt, Adam) and opt.target == kernel_target
    skips = {id(p): g["skip_zero_grad"] for g in opt.param_groups for p in g["params"]}
    assert skips[id(model.encoding.params)] is skip  # only the hash tables skip, and only when asked
    assert not any(skips[id(p)] for p in model.network.parameters())


def test_cpu_and_torch_backends_agree_on_a_real_fit(ngp, astronaut_crop, tmp_path):
    """Same model, same algorithm, two implementations: the full-image PSNR after 150 steps agrees within 0.3 dB."""
    from ngp_cli.nn.backend import cpu_kernels_available

    if not cpu_kernels_available():
        pytest.skip("no host C++ compiler for the cpu backend")
    psnr = {}
    for backend in ("cpu", "torch"):
        res = ngp("fit-image", astronaut_crop, "--runs-dir", tmp_path / backend, "--steps", "150", "--backend",
                  backend, "--set", "encoding.log2_hashmap_size=16", "--set", "train.batch_size=8192")
        assert res.exit_code == 0, res.stderr
        assert f"backend {backend} on cpu" in res.stderr
        psnr[backend] = res.last("done")["metrics"]["psnr"]
    assert abs(psnr["cpu"] - psnr["torch"]) <= 0.3, psnr


def test_ema_run_resumes_exactly(ngp, astronaut_crop, tmp_path):
    from safetensors.torch import load_file

    fast = ["--set", "encoding.n_levels=4", "--set", "encoding.log2_hashmap_size=12", "--set",
            "network.n_neurons=16", "--set", "train.batch_size=1024", "--set", "optimizer.ema_decay=0.9"]
    a = ngp("fit-image", astronaut_crop, "--runs-dir", tmp_path / "a", *fast, "--steps", "4").last("done")
    b = ngp("fit-image", astronaut_crop, "--runs-dir", tmp_path / "b", *fast, "--steps", "2").last("done")
    b = ngp("fit-image", "--resume", b["run_dir"], "--steps", "4").last("done")
    ta, tb = load_file(a["artifacts"]["checkpoint"]), load_file(b["artifacts"]["checkpoint"])
    assert any(k.startswith("ema.") for k in ta)
    assert ta.keys() == tb.keys()
    for key in ta:  # weights, Adam moments, EMA and the sampling generator's state
        assert torch.equal(ta[key], tb[key]), key
    assert a["metrics"]["psnr"] == b["metrics"]["psnr"]  # evaluated with the EMA weights in both

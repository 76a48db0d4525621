"""FullyFusedMLP (torch reference of tcnn's src/fully_fused_mlp.cu) and tcnn's activations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ngp_cli.errors import ConfigError
from ngp_cli.nn.activations import ACTIVATIONS, activation_fn
from ngp_cli.nn.mlp import FullyFusedMLP


def test_activation_names():
    assert ACTIVATIONS == (
        "None",
        "ReLU",
        "LeakyReLU",
        "Exponential",
        "Sine",
        "Sigmoid",
        "Squareplus",
        "Softplus",
        "Tanh",
    )


@pytest.mark.parametrize(
    ("name", "formula"),
    [
        ("None", lambda x: x),
        ("ReLU", lambda x: x if x > 0 else 0.0),
        ("LeakyReLU", lambda x: x if x > 0 else 0.01 * x),
        ("Exponential", math.exp),
        ("Sine", math.sin),
        ("Sigmoid", lambda x: 1 / (1 + math.exp(-x))),
        ("Squareplus", lambda x: 0.5 * (10 * x + math.sqrt(100 * x * x + 4)) / 10),
        ("Softplus", lambda x: math.log(math.exp(10 * x) + 1) / 10),
        ("Tanh", math.tanh),
    ],
)
def test_activation_values(name, formula):
    xs = [-3.0, -0.7, -0.05, 0.0, 0.05, 0.3, 1.5, 4.0]
    got = activation_fn(name)(torch.tensor(xs, dtype=torch.float64))
    expected = torch.tensor([formula(x) for x in xs], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_unknown_activation():
    with pytest.raises(ConfigError, match="network.activation"):
        activation_fn("Swish")
    with pytest.raises(ConfigError, match="network.activation"):
        FullyFusedMLP(4, 2, activation="relu")
    with pytest.raises(ConfigError, match="network.output_activation"):
        FullyFusedMLP(4, 2, output_activation="Softmax")


@pytest.mark.parametrize("n_hidden_layers", [1, 2, 4])
@pytest.mark.parametrize("n_neurons", [16, 32, 64, 128])
def test_shapes_and_no_biases(n_neurons, n_hidden_layers):
    mlp = FullyFusedMLP(32, 3, n_neurons=n_neurons, n_hidden_layers=n_hidden_layers)
    assert len(mlp.weights) == n_hidden_layers + 1
    shapes = [tuple(w.shape) for w in mlp.weights]
    assert shapes == [(n_neurons, 32)] + [(n_neurons, n_neurons)] * (n_hidden_layers - 1) + [(3, n_neurons)]
    assert all(p.dim() == 2 for p in mlp.parameters())  # no bias vectors anywhere
    assert len(list(mlp.parameters())) == n_hidden_layers + 1
    assert mlp.n_params == sum(a * b for a, b in shapes)
    out = mlp(torch.rand(7, 32))
    assert out.shape == (7, 3) and out.dtype == torch.float32
    assert mlp(torch.rand(0, 32)).shape == (0, 3)


def test_config_errors():
    with pytest.raises(ConfigError, match="network.n_neurons must be one of 16, 32, 64, 128"):
        FullyFusedMLP(4, 2, n_neurons=48)
    with pytest.raises(ConfigError, match="network.n_hidden_layers"):
        FullyFusedMLP(4, 2, n_hidden_layers=0)
    with pytest.raises(ConfigError, match="network.n_input_dims"):
        FullyFusedMLP(0, 2)
    with pytest.raises(ValueError):
        FullyFusedMLP(4, 2)(torch.rand(3, 5))


def _reference(mlp, activation, output_activation):
    layers = []
    for i, w in enumerate(mlp.weights):
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
        layers.append(lin)
        last = i == len(mlp.weights) - 1
        layers.append(_torch_act(output_activation if last else activation))
    return nn.Sequential(*layers)


def _torch_act(name):
    return {
        "None": nn.Identity(),
        "ReLU": nn.ReLU(),
        "LeakyReLU": nn.LeakyReLU(0.01),
        "Sigmoid": nn.Sigmoid(),
        "Tanh": nn.Tanh(),
        "Softplus": nn.Softplus(beta=10),
    }[name]


@pytest.mark.parametrize(
    ("activation", "output_activation"),
    [("ReLU", "None"), ("LeakyReLU", "Sigmoid"), ("Tanh", "Softplus"), ("Softplus", "None")],
)
def test_matches_plain_torch_reference(activation, output_activation):
    mlp = FullyFusedMLP(
        16, 4, 32, 3, activation, output_activation, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    ref = _reference(mlp, activation, output_activation)
    x = torch.randn(64, 16, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(64, 4, dtype=torch.float64)
    out, ref_out = mlp(x1), ref(x2)
    torch.testing.assert_close(out, ref_out)
    out.backward(g)
    ref_out.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)
    for w, lin in zip(mlp.weights, ref[::2], strict=True):
        torch.testing.assert_close(w.grad, lin.weight.grad)


def test_gradcheck():
    mlp = FullyFusedMLP(5, 2, 16, 2, "Tanh", "Sigmoid", dtype=torch.float64)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mlp, (x,))


def test_xavier_init_bounds_and_generator():
    a = FullyFusedMLP(32, 1, 64, 2, generator=torch.Generator().manual_seed(5))
    b = FullyFusedMLP(32, 1, 64, 2, generator=torch.Generator().manual_seed(5))
    c = FullyFusedMLP(32, 1, 64, 2, generator=torch.Generator().manual_seed(6))
    for wa, wb, wc in zip(a.weights, b.weights, c.weights, strict=True):
        assert torch.equal(wa, wb) and not torch.equal(wa, wc)
        fan_out, fan_in = wa.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert wa.abs().max() <= bound
        assert wa.abs().max() > 0.8 * bound  # actually spans the range
    # U(-a, a) has standard deviation a / sqrt(3).
    w = a.weights[1].detach()
    assert w.std().item() == pytest.approx(math.sqrt(6 / 128) / math.sqrt(3), rel=0.1)


def test_sine_uses_siren_init():
    mlp = FullyFusedMLP(8, 2, 64, 2, "Sine", generator=torch.Generator().manual_seed(1))
    first, hidden = mlp.weights[0].detach(), mlp.weights[1].detach()
    assert first.abs().max() <= 30 / 8 and first.abs().max() > 0.8 * 30 / 8
    assert hidden.abs().max() <= math.sqrt(6 / 64)


def test_float64_casts_input():
    mlp = FullyFusedMLP(4, 2, 16, 1, dtype=torch.float64)
    assert mlp(torch.rand(3, 4)).dtype == torch.float64

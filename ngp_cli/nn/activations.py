"""tiny-cuda-nn's activations, in one table for every backend: names, torch functions (out of place and in place),
derivatives through the output, and the codes of the fused kernel.

Source: tiny-cuda-nn ``include/tiny-cuda-nn/common_device.h`` (``warp_activation``, ``warp_activation_backward``,
``activation_backward_output``). Users: :mod:`ngp_cli.config` (the names, to validate ``network.activation``),
:mod:`ngp_cli.nn.mlp` (the torch reference), :mod:`ngp_cli.cuda.cpu_mlp` (the in-place variants and derivatives)
and :mod:`ngp_cli.cuda.fused_mlp` (the codes of ``fused_mlp.cu``).

The config module imports this one while ``ngp --help`` runs, which must import no torch: torch is imported inside
the functions that need it (most activations are tensor methods), never at module level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ngp_cli.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_CODES",
    "K_ACT",
    "activate_",
    "activation_backward_",
    "activation_derivative",
    "activation_fn",
]

# tcnn's Activation enum, in its order (config values are case-sensitive, tcnn spelling).
ACTIVATIONS = ("None", "ReLU", "LeakyReLU", "Exponential", "Sine", "Sigmoid", "Squareplus", "Softplus", "Tanh")

# The codes of fused_mlp.cu, the values of its ACTIVATION / OUTPUT_ACTIVATION defines that select the branches of its
# activation<A>() and activation_derivative<A>() (tcnn's enum values). Sine (4) is missing: its derivative cannot be
# expressed through the activation's output, the only thing the kernels keep (tcnn's FullyFusedMLP lacks it too).
ACTIVATION_CODES = {
    "None": 0, "ReLU": 1, "LeakyReLU": 2, "Exponential": 3, "Sigmoid": 5, "Squareplus": 6, "Softplus": 7, "Tanh": 8,
}

# tcnn's K_ACT: sharpness of Squareplus and Softplus.
K_ACT = 10.0
LEAKY_SLOPE = 0.01  # LeakyReLU's slope for x <= 0


# --- out of place (differentiable) --------------------------------------------------------------------------------


def _identity(x: Tensor) -> Tensor:
    return x


def _leaky_relu(x: Tensor) -> Tensor:
    import torch.nn.functional as F

    return F.leaky_relu(x, LEAKY_SLOPE)


def _squareplus(x: Tensor) -> Tensor:
    kx = x * K_ACT
    return 0.5 * (kx + (kx * kx + 4.0).sqrt()) / K_ACT


def _softplus(x: Tensor) -> Tensor:
    import torch.nn.functional as F

    # tcnn: logf(expf(K x) + 1) / K, which overflows to inf for x > ~8.9 in float32; torch's softplus is the same
    # function evaluated stably (linear once K x > 20, where the two differ by < 1e-9).
    return F.softplus(x, beta=K_ACT)


_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "None": _identity,
    "ReLU": lambda x: x.relu(),
    "LeakyReLU": _leaky_relu,
    "Exponential": lambda x: x.exp(),
    "Sine": lambda x: x.sin(),
    "Sigmoid": lambda x: x.sigmoid(),
    "Squareplus": _squareplus,
    "Softplus": _softplus,
    "Tanh": lambda x: x.tanh(),
}


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """Elementwise activation of tcnn by name (``warp_activation`` in ``include/tiny-cuda-nn/common_device.h``).

    None: ``x``; ReLU: ``max(x, 0)``; LeakyReLU: ``x`` if ``x > 0`` else ``0.01 x``; Exponential: ``exp(x)``;
    Sine: ``sin(x)`` (no frequency factor); Sigmoid: ``1 / (1 + exp(-x))``; Squareplus:
    ``0.5 (K x + sqrt((K x)^2 + 4)) / K``; Softplus: ``log(exp(K x) + 1) / K``; Tanh: ``tanh(x)``; with ``K = 10``.

    Args:
        name: one of :data:`ACTIVATIONS` (case-sensitive, tcnn spelling).

    Returns:
        A differentiable callable ``Tensor -> Tensor`` preserving shape and dtype.

    Raises:
        ConfigError: unknown name.
    """
    try:
        return _FUNCTIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"network.activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}") from None


# --- derivatives through the output -------------------------------------------------------------------------------


def _d_none(y: Tensor) -> Tensor:
    import torch

    return torch.ones_like(y)


def _d_leaky_relu(y: Tensor) -> Tensor:
    import torch

    return torch.where(y > 0, 1.0, LEAKY_SLOPE).to(y.dtype)


def _d_squareplus(y: Tensor) -> Tensor:
    u = K_ACT * y
    return u * u / (u * u + 1.0)


_DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "None": _d_none,
    "ReLU": lambda y: (y > 0).to(y.dtype),
    "LeakyReLU": _d_leaky_relu,
    "Exponential": lambda y: y,
    "Sigmoid": lambda y: y * (1.0 - y),
    "Squareplus": _d_squareplus,
    "Softplus": lambda y: -(-K_ACT * y).expm1(),
    "Tanh": lambda y: 1.0 - y * y,
}


def activation_derivative(name: str, y: Tensor) -> Tensor:
    """d act / d x through the activation's output ``y`` (tcnn's ``activation_backward_output``), for hidden and output
    activations alike: the backward passes of the fused kernel and of the CPU path keep only the outputs.

    Args:
        name: an activation of :data:`ACTIVATIONS` other than Sine (whose derivative its output does not give).
        y: the activation's output, any shape, floating point.

    Returns:
        The derivative, ``y``'s shape and dtype.

    Raises:
        ValueError: Sine or an unknown name.
    """
    try:
        derivative = _DERIVATIVES[name]
    except (KeyError, TypeError):
        raise ValueError(f"activation_derivative: activation {name!r} has no derivative through its output") from None
    return derivative(y)


# --- in place, on buffers the caller owns (the CPU MLP path) ------------------------------------------------------


def _leaky_relu_(h: Tensor) -> Tensor:
    import torch.nn.functional as F

    return F.leaky_relu_(h, LEAKY_SLOPE)


# Activations with an in-place torch op; the others are computed out of place and copied back.
_IN_PLACE: dict[str, Callable[[Tensor], object]] = {
    "None": _identity,
    "ReLU": lambda h: h.relu_(),
    "LeakyReLU": _leaky_relu_,
    "Exponential": lambda h: h.exp_(),
    "Sigmoid": lambda h: h.sigmoid_(),
    "Tanh": lambda h: h.tanh_(),
}


def activate_(h: Tensor, name: str) -> None:
    """``h = act(h)`` in place (not differentiable: for buffers outside autograd, such as the CPU MLP path's).

    Raises:
        ConfigError: unknown name.
    """
    in_place = _IN_PLACE.get(name)
    if in_place is not None:
        in_place(h)
    else:
        h.copy_(activation_fn(name)(h))


def activation_backward_(g: Tensor, y: Tensor, name: str) -> None:
    """``g *= act'(x)`` in place, the derivative taken through the activation's output ``y`` (as the kernels do):
    ReLU by ``threshold_backward`` writing into ``g``, the others by :func:`activation_derivative` in float32, cast
    to ``g``'s dtype.

    Raises:
        ValueError: Sine or an unknown name.
    """
    if name == "ReLU":
        import torch

        torch.ops.aten.threshold_backward.grad_input(g, y, 0, grad_input=g)
    elif name != "None":
        g.mul_(activation_derivative(name, y.float()).to(g.dtype))

"""Torch reference of tiny-cuda-nn's "FullyFusedMLP" (``src/fully_fused_mlp.cu``); its activations are in
:mod:`ngp_cli.nn.activations`.

The fully fused MLP of Müller et al. 2021/2022 (paper §4) is a bias-free stack of equally wide matrices; on the
GPU it runs as one kernel keeping activations in shared memory. Here it is a plain sequence of ``x @ W.T`` with the
same parameterisation, activations (``include/tiny-cuda-nn/common_device.h``, ``warp_activation``) and
initialisation, so parameters can be moved between backends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ngp_cli.config import NETWORK_WIDTHS
from ngp_cli.errors import ConfigError
from ngp_cli.nn.activations import ACTIVATIONS, activation_fn

__all__ = ["FullyFusedMLP"]


def _uniform(shape: tuple[int, int], bound: float, dtype, generator, device) -> Tensor:
    gen_device = "cpu" if generator is None else generator.device
    w = torch.rand(shape, generator=generator, dtype=dtype, device=gen_device) * (2.0 * bound) - bound
    return w.to(device)


class FullyFusedMLP(nn.Module):
    """Bias-free MLP with tcnn "FullyFusedMLP" semantics (``src/fully_fused_mlp.cu``).

    ``n_hidden_layers`` hidden layers of width ``n_neurons`` means ``n_hidden_layers + 1`` weight matrices:
    input->hidden ``(n_neurons, n_input_dims)``, ``n_hidden_layers - 1`` times hidden->hidden
    ``(n_neurons, n_neurons)`` and hidden->output ``(n_output_dims, n_neurons)``. ``activation`` follows every
    hidden layer, ``output_activation`` the last matrix.

    Initialisation as tcnn's ``initialize_params``: Xavier-uniform ``U(-a, a)``, ``a = sqrt(6 / (fan_in +
    fan_out))`` per matrix; for ``activation="Sine"`` SIREN's scheme instead (first matrix ``a = 30 / fan_in``, the
    others ``a = sqrt(6 / fan_in)``). Deviation: tcnn pads input and output widths to multiples of 16 and uses the
    padded fans; here the matrices have the unpadded shapes and fans.

    Args:
        n_input_dims: input width (>= 1).
        n_output_dims: output width (>= 1).
        n_neurons: hidden width, one of 16, 32, 64, 128.
        n_hidden_layers: >= 1.
        activation, output_activation: names from :data:`ACTIVATIONS`.
        dtype: parameter dtype (tcnn computes in half precision; float32 is the reference here).
        generator: optional ``torch.Generator`` for the initialisation.
        device: parameter device.
        kernel_target: ``None`` (this torch reference), ``"cuda"`` (the fully fused kernel of
            ``ngp_cli/cuda/fused_mlp.cu`` on the GPU: fp16 tensor cores, loss-scaled backward) or ``"cpu"`` (the
            fastest CPU path measured on this CPU, :func:`ngp_cli.cuda.cpu_mlp.cpu_mlp`).
            Parameters stay float32 masters either way. The kernels lack ``Sine`` (as tcnn's FullyFusedMLP does):
            with it the torch reference runs whatever the target. May be reassigned after construction.

    Attributes:
        weights: ``nn.ParameterList`` of ``(out, in)`` matrices in evaluation order.

    Raises:
        ConfigError: unsupported width, layer count or activation (message names the tcnn key), or an unknown
            kernel target.
    """

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        n_neurons: int = 64,
        n_hidden_layers: int = 2,
        activation: str = "ReLU",
        output_activation: str = "None",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        kernel_target: str | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("n_input_dims", n_input_dims), ("n_output_dims", n_output_dims)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"network.{key} must be a positive integer, got {value!r}")
        if isinstance(n_neurons, bool) or n_neurons not in NETWORK_WIDTHS:
            raise ConfigError(
                f"network.n_neurons must be one of {', '.join(map(str, NETWORK_WIDTHS))} for FullyFusedMLP, "
                f"got {n_neurons!r}"
            )
        if isinstance(n_hidden_layers, bool) or not isinstance(n_hidden_layers, int) or n_hidden_layers < 1:
            raise ConfigError(f"network.n_hidden_layers must be an integer >= 1, got {n_hidden_layers!r}")
        self._act = activation_fn(activation)
        if output_activation not in ACTIVATIONS:
            raise ConfigError(
                f"network.output_activation must be one of {', '.join(ACTIVATIONS)}, got {output_activation!r}"
            )
        self._out_act = activation_fn(output_activation)
        if kernel_target not in (None, "cuda", "cpu"):
            raise ConfigError(f"FullyFusedMLP kernel_target must be None, 'cuda' or 'cpu', got {kernel_target!r}")
        self.kernel_target = kernel_target
        self._loss_scale = None  # the fused kernel's LossScale, made on the device of the first cuda forward
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        self.n_neurons = n_neurons
        self.n_hidden_layers = n_hidden_layers
        self.activation = activation
        self.output_activation = output_activation

        shapes = [(n_neurons, n_input_dims)] + [(n_neurons, n_neurons)] * (n_hidden_layers - 1)
        shapes.append((n_output_dims, n_neurons))
        mats = []
        for i, (fan_out, fan_in) in enumerate(shapes):
            if activation == "Sine":
                bound = 30.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in)
            else:
                bound = math.sqrt(6.0 / (fan_in + fan_out))
            mats.append(nn.Parameter(_uniform((fan_out, fan_in), bound, dtype, generator, device)))
        self.weights = nn.ParameterList(mats)

    @property
    def n_params(self) -> int:
        """Total number of weights."""
        return sum(w.numel() for w in self.weights)

    def extra_repr(self) -> str:
        return (
            f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, n_neurons={self.n_neurons}, "
            f"n_hidden_layers={self.n_hidden_layers}, activation={self.activation!r}, "
            f"output_activation={self.output_activation!r}"
        )

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        """``(N, n_input_dims)`` -> ``(N, n_output_dims)`` in the weights' dtype (inputs are cast to it). ``x`` may
        also be a sequence of (N, n_i) column blocks whose widths sum to ``n_input_dims``: the input is their
        concatenation, which the cpu kernels' inference path never builds in float32 (each block is converted into
        its columns of the MLP's own input buffer).

        Raises:
            ValueError: ``x`` not of shape ``(N, n_input_dims)``, or blocks of unequal rows or the wrong total width.
        """
        if not isinstance(x, Tensor):
            blocks = list(x)
            if (not blocks or any(b.dim() != 2 or b.shape[0] != blocks[0].shape[0] for b in blocks)
                    or sum(b.shape[1] for b in blocks) != self.n_input_dims):
                raise ValueError(f"FullyFusedMLP expects column blocks (N, n_i) with n_i summing to "
                                 f"{self.n_input_dims}, got {[tuple(b.shape) for b in blocks]}")
            if self.kernel_target != "cpu" or "Sine" in (self.activation, self.output_activation):
                return self.forward(torch.cat(blocks, dim=1))
            from ngp_cli.cuda.cpu_mlp import cpu_mlp

            return cpu_mlp(blocks, list(self.weights), self.activation, self.output_activation)
        if x.dim() != 2 or x.shape[1] != self.n_input_dims:
            raise ValueError(f"FullyFusedMLP expects x of shape (N, {self.n_input_dims}), got {tuple(x.shape)}")
        if self.kernel_target is not None and "Sine" not in (self.activation, self.output_activation):
            from ngp_cli.cuda.fused_mlp import LossScale, mlp_forward

            if self.kernel_target == "cuda" and (self._loss_scale is None or self._loss_scale.scale.device != x.device):
                self._loss_scale = LossScale(x.device)
            return mlp_forward(x, list(self.weights), self.activation, self.output_activation, self.kernel_target,
                               loss_scale=self._loss_scale)
        h = x.to(self.weights[0].dtype)
        last = len(self.weights) - 1
        for i, w in enumerate(self.weights):
            h = h @ w.t()
            h = self._out_act(h) if i == last else self._act(h)
        return h

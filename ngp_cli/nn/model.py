"""Encoding + MLP assembled from config: tiny-cuda-nn's ``NetworkWithInputEncoding``.

Source: tiny-cuda-nn include/tiny-cuda-nn/network_with_input_encoding.h; paper §3 (encoding y = enc(x; θ) fed to m(y; Φ)).
"""

from __future__ import annotations

import torch
from torch import nn

from ngp_cli.config import EncodingConfig, NetworkConfig
from ngp_cli.errors import ConfigError
from ngp_cli.nn.encodings import FrequencyEncoding, HashGridEncoding, SimplexGridEncoding, SphericalHarmonicsEncoding
from ngp_cli.nn.grid import per_level_scale_from_max_resolution
from ngp_cli.nn.mlp import FullyFusedMLP


def grid_per_level_scale(cfg: EncodingConfig, natural_max_resolution: float | None = None) -> float:
    """Per-level scale b from the config: ``per_level_scale`` if set, else derived from ``max_resolution`` (or the task's
    natural N_max, e.g. max(W, H)/2 for images, when both are null). Raises ConfigError when none is available."""
    if cfg.per_level_scale is not None:
        return float(cfg.per_level_scale)
    n_max = cfg.max_resolution if cfg.max_resolution is not None else natural_max_resolution
    if n_max is None:
        raise ConfigError("encoding.per_level_scale or encoding.max_resolution must be set")
    n_max = max(float(n_max), float(cfg.base_resolution))
    return per_level_scale_from_max_resolution(cfg.base_resolution, n_max, cfg.n_levels)


def build_encoding(cfg: EncodingConfig, n_input_dims: int, *, natural_max_resolution: float | None = None,
                   generator: torch.Generator | None = None, device: torch.device | None = None) -> nn.Module:
    """Instantiate the encoding named by ``cfg.otype`` for ``n_input_dims``-D inputs in [0, 1]^D."""
    if cfg.otype == "SimplexGrid":  # (EncodingConfig refuses another interpolation)
        return SimplexGridEncoding(
            n_input_dims, n_levels=cfg.n_levels, n_features_per_level=cfg.n_features_per_level,
            log2_hashmap_size=cfg.log2_hashmap_size, base_resolution=cfg.base_resolution,
            per_level_scale=grid_per_level_scale(cfg, natural_max_resolution), generator=generator, device=device)
    if cfg.is_grid:
        return HashGridEncoding(
            n_input_dims, n_levels=cfg.n_levels, n_features_per_level=cfg.n_features_per_level,
            log2_hashmap_size=cfg.log2_hashmap_size, base_resolution=cfg.base_resolution,
            per_level_scale=grid_per_level_scale(cfg, natural_max_resolution), interpolation=cfg.interpolation,
            grid_type=cfg.grid_type, generator=generator, device=device)
    if cfg.otype == "Frequency":
        return FrequencyEncoding(n_input_dims, n_frequencies=cfg.n_frequencies)
    if cfg.otype == "SphericalHarmonics":
        return SphericalHarmonicsEncoding(n_input_dims, degree=cfg.degree)
    raise ConfigError(f"encoding.otype '{cfg.otype}' is not supported")


class KernelTargetMixin:
    """A module whose ``kernel_target`` ("cpu"/"cuda"/None) is handed on to its submodules named in
    ``_kernel_modules`` (those that have one: the grid encodings and the fully fused MLPs), whenever it is set."""

    _kernel_modules: tuple[str, ...] = ()

    @property
    def kernel_target(self) -> str | None:
        return self._kernel_target

    @kernel_target.setter
    def kernel_target(self, target: str | None) -> None:
        self._kernel_target = target
        for name in self._kernel_modules:
            module = getattr(self, name)
            if hasattr(module, "kernel_target"):
                module.kernel_target = target


def encode_for_mlp(encoding: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``encoding(x)`` (N, n_output_dims) as the input of a :class:`~ngp_cli.nn.mlp.FullyFusedMLP` on the same kernel
    target. On the cpu kernels a grid encoding comes in its feature-major layout, for training as for rendering: the
    same values, which the kernel writes faster and the MLP's first matmul reads as they lie; the MLP's backward
    returns dL/d(encoding) in the same layout, which the grid's backward reads faster too
    (:func:`ngp_cli.cuda.hashgrid.encode`, :class:`ngp_cli.cuda.cpu_mlp.CPUMLPFunction`,
    :func:`ngp_cli.cuda.cpu_mlp.inference_mlp`)."""
    if isinstance(encoding, HashGridEncoding) and getattr(encoding, "kernel_target", None) == "cpu":
        return encoding(x, feature_major=True)
    return encoding(x)


class NetworkWithInputEncoding(KernelTargetMixin, nn.Module):
    """x (N, n_input_dims) float32 in [0,1]^D → encoding → FullyFusedMLP → (N, n_output_dims) float32.

    Parameters live in ``encoding`` (the grid tables) and ``network`` (MLP weights); :meth:`param_groups` separates them
    so L2 regularisation applies to the MLP only (paper §4). ``kernel_target`` ("cpu"/"cuda"/None) selects the kernels
    of ngp_cli/cuda or the torch reference (see :class:`ngp_cli.nn.backend.Backend`).
    """

    def __init__(self, n_input_dims: int, n_output_dims: int, encoding: EncodingConfig, network: NetworkConfig, *,
                 natural_max_resolution: float | None = None, generator: torch.Generator | None = None,
                 device: torch.device | None = None, kernel_target: str | None = None) -> None:
        super().__init__()
        self.encoding = build_encoding(encoding, n_input_dims, natural_max_resolution=natural_max_resolution,
                                       generator=generator, device=device)
        self.network = FullyFusedMLP(
            self.encoding.n_output_dims, n_output_dims, n_neurons=network.n_neurons,
            n_hidden_layers=network.n_hidden_layers, activation=network.activation,
            output_activation=network.output_activation, generator=generator, device=device)
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        # The hash grid and the MLP run as kernels on the "cpu"/"cuda" backends (other encodings stay in torch).
        self.kernel_target = kernel_target

    _kernel_modules = ("encoding", "network")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(encode_for_mlp(self.encoding, x))

    def param_groups(self, l2_reg: float) -> list[dict]:
        """Optimizer parameter groups: encoding (no L2), network (``weight_decay=l2_reg``, i.e. L2 added to the grad)."""
        groups = [{"params": list(self.encoding.parameters()), "weight_decay": 0.0, "name": "encoding"},
                  {"params": list(self.network.parameters()), "weight_decay": l2_reg, "name": "network"}]
        return [g for g in groups if g["params"]]

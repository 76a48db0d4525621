"""instant-ngp's NeRF network (paper §5.4, instant-ngp ``nerf_network.h``): a hash grid over the scene box, a density
MLP whose first output is log-density, and a colour MLP on its 16 outputs plus the spherical harmonics of the view
direction; the cascaded occupancy grid is part of the module so a checkpoint holds it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ngp_cli.nn.mlp import FullyFusedMLP
from ngp_cli.nn.model import KernelTargetMixin, build_encoding
from ngp_cli.volrend.grid import OccupancyGrid, aabb_bounds

# exp of the log-density is clamped here (torch-ngp's trunc_exp idea) so an early large activation cannot overflow.
_MAX_LOG_DENSITY = 15.0


class NerfNetwork(KernelTargetMixin, nn.Module):
    """(positions (N, 3) float32 ngp frame, unit view directions (N, 3)) → (σ (N,) float32 ≥ 0 per unit length,
    rgb (N, 3) float32 in [0, 1]).

    * ``encoding``: the config's grid over the scene box ``[0.5 - s/2, 0.5 + s/2]^3`` (``s = aabb_scale``), positions
      mapped to [0, 1]³; its N_max defaults to ``2048 · aabb_scale`` (instant-ngp's NeRF setting) when
      ``encoding.max_resolution`` and ``per_level_scale`` are null.
    * ``density_network``: encoding → ``network`` MLP → 16 outputs; σ = exp(output 0) (instant-ngp's Exponential
      density activation).
    * ``dir_encoding``: SphericalHarmonics (degree 4) of the direction mapped to [0, 1]³ (tcnn's convention).
    * ``rgb_network``: the 16 density outputs (instant-ngp feeds all of them, log-density included) + the SH →
      ``rgb_network`` MLP → 3 outputs with its output activation (Sigmoid).
    * ``grid``: :class:`~ngp_cli.volrend.grid.OccupancyGrid`.

    ``kernel_target`` ("cpu"/"cuda"/None) selects the kernels of ngp_cli/cuda for the grid encoding, the MLPs, ray
    marching and compositing, or the torch references.

    Raises:
        ConfigError: from the encoding/MLP constructors.
    """

    def __init__(self, cfg, aabb_scale: int, *, generator: torch.Generator | None = None,
                 kernel_target: str | None = None) -> None:
        super().__init__()
        self.aabb_scale = int(aabb_scale)
        self.aabb_lo, aabb_hi = aabb_bounds(self.aabb_scale)
        self.aabb_size = aabb_hi - self.aabb_lo
        self.encoding = build_encoding(cfg.encoding, 3, natural_max_resolution=2048.0 * self.aabb_scale,
                                       generator=generator)
        net = cfg.network
        self.density_network = FullyFusedMLP(self.encoding.n_output_dims, 16, n_neurons=net.n_neurons,
                                             n_hidden_layers=net.n_hidden_layers, activation=net.activation,
                                             output_activation="None", generator=generator)
        self.dir_encoding = build_encoding(cfg.dir_encoding, 3)
        rgb = cfg.rgb_network
        self.rgb_network = FullyFusedMLP(16 + self.dir_encoding.n_output_dims, 3, n_neurons=rgb.n_neurons,
                                         n_hidden_layers=rgb.n_hidden_layers, activation=rgb.activation,
                                         output_activation=rgb.output_activation, generator=generator)
        self.grid = OccupancyGrid(self.aabb_scale)
        self.kernel_target = kernel_target

    _kernel_modules = ("encoding", "density_network", "rgb_network")

    def _features(self, positions: Tensor) -> Tensor:
        x = ((positions - self.aabb_lo) / self.aabb_size).clamp(0.0, 1.0)
        return self.density_network(self.encoding(x))

    @staticmethod
    def _sigma(h: Tensor) -> Tensor:
        return torch.exp(h[:, 0].float().clamp(max=_MAX_LOG_DENSITY))

    def density(self, positions: Tensor) -> Tensor:
        """σ (N,) at (N, 3) positions (for the occupancy-grid update and mesh extraction)."""
        return self._sigma(self._features(positions))

    def encode_directions(self, directions: Tensor) -> Tensor:
        """The colour network's direction input: (N, 3) unit directions → (N, C) float32 (the spherical harmonics
        of ``dir_encoding``), what :meth:`forward_encoded` takes; the same for every sample of a ray, so renderers
        compute it once per ray (``ray_features`` of :func:`ngp_cli.volrend.render.render_ray_maps`)."""
        return self.dir_encoding((directions.float() + 1.0) * 0.5).float()

    def forward_encoded(self, positions: Tensor, encoded_directions: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` with the directions already encoded by :meth:`encode_directions` ((N, C) float32)."""
        h = self._features(positions)
        rgb = self.rgb_network(torch.cat([h.float(), encoded_directions], dim=-1))
        return self._sigma(h), rgb.float()

    def forward(self, positions: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_encoded(positions, self.encode_directions(directions))

    def param_groups(self, l2_reg: float) -> list[dict]:
        """Optimizer groups: the grid tables (no L2, sparse Adam) and the MLPs (L2 ``l2_reg``), as in the paper §4."""
        nets = list(self.density_network.parameters()) + list(self.rgb_network.parameters())
        return [{"params": list(self.encoding.parameters()), "weight_decay": 0.0, "name": "encoding"},
                {"params": nets, "weight_decay": l2_reg, "name": "network"}]

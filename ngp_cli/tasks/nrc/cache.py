"""The neural radiance cache (Müller et al. 2021, §4): scattered radiance at a path vertex from its position
(hash-encoded as instant-ngp does), the outgoing direction and surface normal (spherical harmonics), roughness and
the diffuse and specular albedos, through a 64-wide fully fused MLP.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ngp_cli.nn.mlp import FullyFusedMLP
from ngp_cli.nn.model import KernelTargetMixin, build_encoding


class NeuralRadianceCache(KernelTargetMixin, nn.Module):
    """(N, 16) vertex features (:func:`ngp_cli.tasks.nrc.tracer.features`: position in the scene frame, unit ω_o,
    unit normal, roughness, k_d, k_s) → (N, 3) float32 scattered radiance (linear RGB, unbounded).

    * position: mapped from the scene's bounding box [lo, lo + size] to [0, 1]³ and encoded by the config's
      ``encoding`` (a hash grid);
    * ω_o and the normal: ``dir_encoding`` (SphericalHarmonics, degree 4) of (v + 1)/2, as tcnn expects;
    * roughness r as 1 − exp(−r) (the paper's input transform), albedos as they are.

    ``kernel_target`` selects the kernels of ngp_cli/cuda (grid encoding, MLP) or the torch references.

    Raises:
        ConfigError: from the encoding/MLP constructors.
    """

    def __init__(self, cfg, lo: Tensor, size: Tensor, *, generator: torch.Generator | None = None,
                 kernel_target: str | None = None) -> None:
        super().__init__()
        self.encoding = build_encoding(cfg.encoding, 3, natural_max_resolution=512.0, generator=generator)
        self.dir_encoding = build_encoding(cfg.dir_encoding, 3)
        n_in = self.encoding.n_output_dims + 2 * self.dir_encoding.n_output_dims + 7
        net = cfg.network
        self.network = FullyFusedMLP(n_in, 3, n_neurons=net.n_neurons, n_hidden_layers=net.n_hidden_layers,
                                     activation=net.activation, output_activation=net.output_activation,
                                     generator=generator)
        self.register_buffer("lo", lo.detach().float().clone())
        self.register_buffer("size", size.detach().float().clone())
        self.kernel_target = kernel_target

    _kernel_modules = ("encoding", "network")

    def forward(self, features: Tensor) -> Tensor:
        x = ((features[:, :3] - self.lo) / self.size).clamp(0.0, 1.0)
        h = torch.cat([self.encoding(x).float(), self.dir_encoding((features[:, 3:6] + 1) * 0.5).float(),
                       self.dir_encoding((features[:, 6:9] + 1) * 0.5).float(),
                       1.0 - torch.exp(-features[:, 9:10]), features[:, 10:16]], dim=1)
        return self.network(h).float()

    def param_groups(self, l2_reg: float) -> list[dict]:
        """Optimizer groups: the grid tables (no L2) and the MLP (L2 ``l2_reg``)."""
        return [{"params": list(self.encoding.parameters()), "weight_decay": 0.0, "name": "encoding"},
                {"params": list(self.network.parameters()), "weight_decay": l2_reg, "name": "network"}]

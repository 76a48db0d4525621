"""instant-ngp's NeRF network (paper §5.4, instant-ngp ``nerf_network.h``): a hash grid over the scene box, a density
MLP whose first output is log-density, and a colour MLP on its 16 outputs plus the spherical harmonics of the view
direction; the cascaded occupancy grid is part of the module so a checkpoint holds it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ngp_cli.nn.activations import activation_fn
from ngp_cli.nn.mlp import FullyFusedMLP
from ngp_cli.nn.model import KernelTargetMixin, build_encoding, encode_for_mlp
from ngp_cli.tasks.nerf.saliency import SaliencyMask
from ngp_cli.volrend.grid import OccupancyGrid, aabb_bounds
from ngp_cli.volrend.render import RayRows

# exp of the log-density is clamped here (torch-ngp's trunc_exp idea) so an early large activation cannot overflow.
_MAX_LOG_DENSITY = 15.0
# The compacted samples of a saliency-pruned model are padded to a multiple of this many rows.
_ROWS = 256


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
    * ``saliency``: with ``nerf.saliency_prune``, HollowNeRF's mask :class:`~ngp_cli.tasks.nerf.saliency.SaliencyMask`
      ``s(x)`` in [0, 1] (else None). It multiplies the hash features (the density network sees ``s(x) · enc(x)``)
      and the density (σ = ``s(x) · exp(output 0)``, so the field stays continuous where ``s`` reaches 0 and a pruned
      point is empty space). Samples with ``s(x) = 0`` are not encoded at all (:meth:`forward_encoded` and
      :meth:`density` compact the others; σ = 0, rgb = 0 there): no table lookups, no table gradients.

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
        nc = getattr(cfg, "nerf", None)
        self.saliency = (SaliencyMask(nc.saliency_resolution, nc.saliency_target)
                         if nc is not None and nc.saliency_prune else None)
        self.last_salient = (0, 0)  # (samples with s > 0, samples) of the last masked query
        self.kernel_target = kernel_target

    _kernel_modules = ("encoding", "density_network", "rgb_network", "saliency")

    def _unit(self, positions: Tensor) -> Tensor:
        return ((positions - self.aabb_lo) / self.aabb_size).clamp(0.0, 1.0)

    def _encoded(self, x: Tensor, s: Tensor | None) -> Tensor:
        """The density network's (N, 16) outputs at unit-cube points ``x``, the features scaled by ``s`` (N,).
        On the cpu kernels the grid's features come feature-major, training and rendering
        (:func:`~ngp_cli.nn.model.encode_for_mlp`); the mask's product keeps that layout, and so does its gradient."""
        h = encode_for_mlp(self.encoding, x)
        return self.density_network(h if s is None else h * s.unsqueeze(1).to(h.dtype))

    def _features(self, positions: Tensor) -> Tensor:
        """The density network's (N, 16) outputs at (N, 3) positions (every point encoded, the mask applied)."""
        x = self._unit(positions)
        return self._encoded(x, None if self.saliency is None else self.saliency(x))

    @staticmethod
    def _sigma(h: Tensor, s: Tensor | None = None) -> Tensor:
        sigma = torch.exp(h[:, 0].float().clamp(max=_MAX_LOG_DENSITY))
        return sigma if s is None else sigma * s

    def _salient(self, positions: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """``(x, s, rows, gather)``: the unit-cube points to encode, their saliency (None without a mask) and, when
        some samples have ``s = 0``, the (M,) int64 rows of the others and the rows encoded, ``gather`` (None, None:
        every row). ``gather`` holds ``rows`` first, then as many rows of ``s = 0`` (their ``s`` kept at 0) as round
        the count up to a multiple of :data:`_ROWS` (at least one row, so that the outputs still depend on the
        parameters); ``x`` and ``s`` are those rows'."""
        x = self._unit(positions)
        if self.saliency is None:
            return x, None, None, None
        s = self.saliency(x)
        rows = torch.nonzero(s > 0).squeeze(1)  # (on a GPU this reads the count back: the compaction needs it)
        n, m = s.numel(), rows.numel()
        self.last_salient = (m, n)
        if m == n:
            return x, s, None, None
        # Rounded up to a multiple of _ROWS with rows of s = 0 (their outputs are 0, their gradients too): the MLPs'
        # matrix products run markedly slower on row counts that are not (measured on the cpu backend).
        padded = min(-(-max(m, 1) // _ROWS) * _ROWS, n)
        gather = torch.cat([rows, torch.nonzero(s == 0).squeeze(1)[: padded - m]])
        return x[gather], torch.where(torch.arange(padded, device=s.device) < m, s[gather], 0.0), rows, gather

    @staticmethod
    def _scatter(values: Tensor, rows: Tensor | None, n: int) -> Tensor:
        """Rows ``rows`` of (N, ...) zeros set to the first ``len(rows)`` of ``values`` (the padding dropped)."""
        if rows is None:
            return values
        return values.new_zeros((n, *values.shape[1:])).index_copy(0, rows, values[: rows.numel()])

    def density(self, positions: Tensor) -> Tensor:
        """σ (N,) at (N, 3) positions (for the occupancy-grid update and mesh extraction)."""
        x, s, rows, _ = self._salient(positions)
        return self._scatter(self._sigma(self._encoded(x, s), s), rows, positions.shape[0])

    def encode_directions(self, directions: Tensor) -> Tensor:
        """The colour network's direction input: (N, 3) unit directions → (N, C) float32 (the spherical harmonics
        of ``dir_encoding``), what :meth:`forward_encoded` takes; the same for every sample of a ray, so renderers
        compute it once per ray (``ray_features`` of :func:`ngp_cli.volrend.render.render_ray_maps`)."""
        return self.dir_encoding((directions.float() + 1.0) * 0.5).float()

    def _fused_rendering(self) -> bool:
        """Whether rendering runs both networks in one kernel (:func:`ngp_cli.cuda.mlp_bf16.fused_nerf`): the cpu
        kernels with the bf16 MLP path on a CPU with AVX-512-BF16, networks the kernel evaluates, no saliency mask."""
        if self.kernel_target != "cpu" or self.saliency is not None:
            return False
        from ngp_cli.cuda import mlp_bf16
        from ngp_cli.cuda.cpu_mlp import cpu_mlp_path

        if not mlp_bf16.available() or cpu_mlp_path().path != "bf16":
            return False
        probe = torch.empty(0, self.encoding.n_output_dims)
        return (self.density_network.activation == self.rgb_network.activation == "ReLU"
                and self.density_network.output_activation == "None"
                and mlp_bf16.nerf_fits(probe, list(self.density_network.weights), list(self.rgb_network.weights)))

    def ray_features(self, directions: Tensor) -> Tensor:
        """The per-ray input of the colour network for the renderers (``ray_features`` of
        :func:`ngp_cli.volrend.render.render_ray_maps`): :meth:`encode_directions` (R, C) float32, followed, where
        rendering runs the fused kernel, by the colour network's first-layer sums over them (R, 64) float32
        (:func:`ngp_cli.cuda.mlp_bf16.direction_sums`: computed once per ray instead of once per sample).
        :meth:`forward_encoded` takes either."""
        encoded = self.encode_directions(directions)
        if not self._fused_rendering():
            return encoded
        from ngp_cli.cuda.mlp_bf16 import direction_sums

        return torch.cat([encoded, direction_sums(encoded, list(self.rgb_network.weights))], dim=1)

    def _render_fused(self, positions: Tensor, ray_rows: RayRows) -> tuple[Tensor, Tensor]:
        """σ (N,) and rgb (N, 3) float32 from the fused kernel, the per-ray sums read through ``ray_rows``."""
        from ngp_cli.cuda.mlp_bf16 import fused_nerf

        c = self.dir_encoding.n_output_dims
        h = encode_for_mlp(self.encoding, self._unit(positions))
        log_density, rgb = fused_nerf(h, list(self.density_network.weights), list(self.rgb_network.weights),
                                      ray_rows.features, ray_rows.rows, sums_column=c)
        return self._sigma(log_density.unsqueeze(1)), activation_fn(self.rgb_network.output_activation)(rgb)

    def forward_encoded(self, positions: Tensor, encoded_directions: Tensor | RayRows) -> tuple[Tensor, Tensor]:
        """:meth:`forward` with the directions already encoded: (N, C) float32 rows of :meth:`encode_directions`, or
        a :class:`~ngp_cli.volrend.render.RayRows` of per-ray rows of :meth:`encode_directions` or
        :meth:`ray_features` (with the colour network's direction sums, which rendering without autograd reads in the
        fused kernel; elsewhere only the first C columns count)."""
        if isinstance(encoded_directions, RayRows):
            c = self.dir_encoding.n_output_dims
            features = encoded_directions.features
            if features.shape[1] > c and not torch.is_grad_enabled() and self._fused_rendering():
                return self._render_fused(positions, encoded_directions)
            encoded_directions = features[:, :c].index_select(0, encoded_directions.rows)
        x, s, rows, gather = self._salient(positions)
        if gather is not None:
            encoded_directions = encoded_directions[gather]
        h = self._encoded(x, s)
        rgb = self.rgb_network((h, encoded_directions)).float()
        if s is not None:  # 0 only on padding rows
            rgb = rgb * (s > 0).unsqueeze(1)
        n = positions.shape[0]
        return self._scatter(self._sigma(h, s), rows, n), self._scatter(rgb, rows, n)

    def forward(self, positions: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_encoded(positions, self.encode_directions(directions))

    def param_groups(self, l2_reg: float) -> list[dict]:
        """Optimizer groups: the grid tables (no L2, sparse Adam) and the MLPs (L2 ``l2_reg``), as in the paper §4;
        the saliency mask's values (no L2, dense Adam: the ADMM term moves every vertex) when there is one."""
        nets = list(self.density_network.parameters()) + list(self.rgb_network.parameters())
        groups = [{"params": list(self.encoding.parameters()), "weight_decay": 0.0, "name": "encoding"},
                  {"params": nets, "weight_decay": l2_reg, "name": "network"}]
        if self.saliency is not None:
            groups.append({"params": list(self.saliency.parameters()), "weight_decay": 0.0, "name": "saliency"})
        return groups

"""HollowNeRF's trainable saliency mask and its ADMM pruner (Xie et al. 2023, "HollowNeRF: Pruning Hashgrid-Based
NeRFs with Trainable Collision Mitigation", ICCV, arXiv:2308.10122), ``nerf.saliency_prune: true``.

A coarse dense grid of saliency values ``m`` in [0, 1] over the scene box, trilinearly interpolated to ``s(x)``,
multiplies the hash features of every sample (and its density, see :class:`~ngp_cli.tasks.nerf.model.NerfNetwork`),
trained jointly with the field. An ADMM pruner (Boyd et al. 2011 §9.1, the cardinality-constrained form that
Zhang et al. 2018 use to prune networks) drives ``m`` towards at most ``k = ceil(nerf.saliency_target · n)``
non-zero vertices of the ``n``:

* the m-step is the training itself, the gradient of the augmented-Lagrangian term ``ρ/2 ‖m − z + u‖²`` added to
  the loss's (:meth:`SaliencyMask.penalty`);
* every ``nerf.saliency_admm_interval`` steps, the z-step projects ``m + u`` onto the k-sparse set (the k largest
  entries kept, the others zero) and the dual step adds ``m − z`` to ``u`` (:meth:`SaliencyMask.admm_update`);
* at ``nerf.saliency_prune_step`` the k largest vertices of ``m`` become the mask's support for good, and the mask
  becomes binary (1 there, 0 elsewhere, :meth:`SaliencyMask.prune`).

Where ``s(x) = 0`` the sample is empty space and its hash-grid lookups are skipped (the model compacts the samples
it encodes, :meth:`~ngp_cli.tasks.nerf.model.NerfNetwork.forward_encoded`): pruned regions write no gradients into
the tables, so the entries they collided with serve the rest of the scene (the paper's collision mitigation).

The grid is a one-level ``DenseGrid`` of :class:`~ngp_cli.nn.encodings.HashGridEncoding` with one feature (the
project's grid kernels, the same on every backend), of ``R = nerf.saliency_resolution`` vertices per axis.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ngp_cli.nn.encodings import HashGridEncoding
from ngp_cli.nn.model import KernelTargetMixin

#: The mask's starting value: mid-range, so that before and during ADMM the loss can raise the vertices it needs and
#: lower the ones it does not (from 1, every needed vertex would sit at the clamp, tied with the unimportant ones).
INITIAL_SALIENCY = 0.5


class SaliencyMask(KernelTargetMixin, nn.Module):
    """``s(x)``: (N, 3) float32 positions in the unit cube of the scene box → (N,) float32 saliency in [0, 1].

    Args:
        resolution: ``R``, vertices per axis (4..256). Positions are scaled by ``(R − 2) / (R − 1)`` before the
            grid's ``p = (R − 1) x + 0.5``, so every interpolation corner lies inside the ``R³`` vertices (no wrap of
            the dense index) and a cell is ``1 / (R − 2)`` of the box wide.
        target: the fraction of the ``R³`` vertices the pruner keeps non-zero, in (0, 1].

    Attributes:
        grid: the one-level, one-feature dense :class:`~ngp_cli.nn.encodings.HashGridEncoding`; ``grid.params``
            (n_entries, 1) float32 holds ``m``, initialised to :data:`INITIAL_SALIENCY` on the ``R³`` vertices and 0
            on the padding rows the grid rounds its level up with.
        z, u: (n_entries,) float32 buffers, ADMM's sparse copy and scaled dual variable.
        support: (n_entries,) bool buffer, the vertices allowed to be non-zero (all real vertices until
            :meth:`prune`).
        pruned: 0-dim bool buffer, whether :meth:`prune` has run.
    """

    def __init__(self, resolution: int, target: float) -> None:
        super().__init__()
        if not 4 <= resolution <= 256:
            raise ValueError(f"saliency resolution must be in 4..256, got {resolution}")
        if not 0.0 < target <= 1.0:
            raise ValueError(f"saliency target must be in (0, 1], got {target}")
        self.resolution = int(resolution)
        self.target = float(target)
        self.grid = HashGridEncoding(3, n_levels=1, n_features_per_level=1, log2_hashmap_size=31,
                                     base_resolution=self.resolution, per_level_scale=1.0, grid_type="Dense")
        n_real = self.resolution ** 3
        support = torch.zeros(self.grid.levels.n_entries, dtype=torch.bool)
        support[:n_real] = True
        with torch.no_grad():
            self.grid.params.copy_(support.float()[:, None] * INITIAL_SALIENCY)
        self.register_buffer("support", support)
        self.register_buffer("z", support.float() * INITIAL_SALIENCY)
        self.register_buffer("u", torch.zeros(self.grid.levels.n_entries))
        self.register_buffer("pruned", torch.tensor(False))
        self._x_scale = (self.resolution - 2) / (self.resolution - 1)
        self._binary: bool | None = False  # host copy of ``pruned`` (None: read it at the next use)
        self.kernel_target = None

    _kernel_modules = ("grid",)

    @property
    def n_vertices(self) -> int:
        """``R³``, the vertices (the parameters the mask adds, before pruning)."""
        return self.resolution ** 3

    @property
    def kept(self) -> int:
        """``k = ceil(target · R³)``, the vertices the pruner keeps."""
        return max(1, math.ceil(self.target * self.n_vertices))

    def forward(self, x: Tensor) -> Tensor:
        """``s(x)`` for (N, 3) float32 positions in [0, 1]³ → (N,) float32 in [0, 1], interpolated from the
        :meth:`effective` values (differentiable in ``m``)."""
        return self.grid(x * self._x_scale, self.effective().unsqueeze(1))[:, 0].float()

    def values(self) -> Tensor:
        """``m`` as a (n_entries,) view of the grid's parameters."""
        return self.grid.params[:, 0]

    def effective(self) -> Tensor:
        """The mask as the field sees it, (n_entries,) float32: until :meth:`prune`, ``m`` clamped to [0, 1] and zero
        outside the support; after it, the support itself (1 on the kept vertices, 0 elsewhere), a constant: ``m``
        gets no gradient any more, and the optimizer leaves it alone."""
        if self.is_pruned():
            return self.support.float()
        return self.values().clamp(0.0, 1.0) * self.support

    def is_pruned(self) -> bool:
        """Whether :meth:`prune` has run: the ``pruned`` buffer, read from the device once after each load."""
        if self._binary is None:
            self._binary = bool(self.pruned)
        return self._binary

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._binary = None  # a checkpoint's ``pruned`` flag: read at the next use

    def penalty(self, rho: float) -> Tensor:
        """The augmented-Lagrangian term ``ρ/2 ‖m − z + u‖²``, a 0-dim float32 tensor differentiable in ``m``."""
        return 0.5 * rho * (self.values() - self.z + self.u).square().sum()

    @torch.no_grad()
    def project(self) -> None:
        """Keep ``m`` feasible: clamp it to [0, 1] and zero it outside :attr:`support` (run before every step)."""
        m = self.values()
        m.clamp_(0.0, 1.0).mul_(self.support)

    @torch.no_grad()
    def admm_update(self) -> None:
        """ADMM's z- and dual steps: ``z = Π_k(m + u)`` (``m + u`` clamped to [0, 1], its :attr:`kept` largest
        entries among the support kept, the others 0), then ``u += m − z``."""
        m = self.values()
        w, keep = self._largest(m + self.u)
        z = torch.zeros_like(m)
        z[keep] = w[keep]
        self.z.copy_(z)
        self.u.add_(m - z)

    def _largest(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """``v`` clamped to [0, 1] and the indices of the :attr:`kept` largest entries of ``v`` within the support
        (the projection onto the k-sparse vectors of [0, 1]^n; ranked before clamping, so the dual's history still
        orders the vertices the clamp would tie)."""
        ranked = torch.where(self.support, v, torch.full_like(v, -math.inf))
        return v.clamp(0.0, 1.0), torch.topk(ranked, self.kept, sorted=False).indices

    @torch.no_grad()
    def prune(self) -> None:
        """End of the ADMM phase: the support becomes the :attr:`kept` vertices of largest ``m`` (the mask the field
        has been trained with; ranking ``m + u`` instead keeps vertices whose dual has pushed ``m`` to 0 and drops
        ones in use, measured on lego), and the mask becomes binary: 1 on the support, 0 elsewhere, for the rest of
        training (``m`` is set so too, and the dual reset). A trained ``m`` settles well below 1 (mean 0.2 on lego:
        Adam's fixed-size steps on a noisy gradient, clamped at both ends), which scales every feature and density
        down; the binary mask keeps only the pruning."""
        m = self.values()
        keep = self._largest(m)[1]
        support = torch.zeros_like(self.support)
        support[keep] = True
        self.support.copy_(support)
        self.u.zero_()
        self.pruned.fill_(True)
        self._binary = True
        m.copy_(support.float())
        self.z.copy_(m)

    def kept_fraction(self) -> float:
        """Fraction of the ``R³`` vertices whose :meth:`effective` saliency is non-zero (reads the device)."""
        return float((self.effective() > 0).sum()) / self.n_vertices

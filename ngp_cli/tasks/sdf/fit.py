"""``ngp train-sdf``: the SDF training problem (paper §5.2) run by the shared :class:`~ngp_cli.train.Trainer`, then the
final IoU, mesh, Chamfer distance and renders.

Training data, as in the paper: each batch holds ``sdf.surface_fraction`` points on the surface (uniform by area,
target 0), ``sdf.perturbed_fraction`` surface points moved by a Gaussian of standard deviation ``sdf.perturbation``,
and uniform points in the unit cube; the targets of the last two are exact signed distances from the mesh's BVH
(negative inside, the generalized winding number deciding the sign). The loss is MAPE, |p − t| / (|t| + 0.01).

Exact distances cost 4 to 9 µs per point on a 2-core CPU (docs/benchmarks), more than the training step itself
at 2^16 points: ``sdf.sample_bank`` draws the off-surface points from a bank computed once at the start instead,
``sdf.bank_refresh`` of which are replaced by fresh ones every step (the ``sdf-cpu`` preset). On a GPU every batch
gets fresh exact distances.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ngp_cli.console import info
from ngp_cli.errors import ConfigError
from ngp_cli.mesh.bvh import MeshBVH
from ngp_cli.mesh.io import InputMesh, UnitFrame, load_mesh
from ngp_cli.nn.backend import Backend
from ngp_cli.nn.model import NetworkWithInputEncoding
from ngp_cli.tasks.sdf.config import SdfConfig
from ngp_cli.train import Trainer


class SurfaceSampler:
    """Training points of a mesh in the unit cube, drawn from a torch generator (reproducible on any device).

    Args:
        mesh: the input mesh; ``frame``: its :class:`UnitFrame`; ``device``: where the BVH and the outputs live.
    """

    def __init__(self, mesh: InputMesh, frame: UnitFrame, device: torch.device) -> None:
        self.vertices = frame.to_unit(mesh.vertices)
        self.faces = mesh.faces
        self.device = device
        self.bvh = MeshBVH(self.vertices, self.faces, device=device)
        tri = torch.from_numpy(self.vertices[self.faces])  # float64 (F, 3, 3)
        self.corner = tri[:, 0].float()
        self.edge1 = (tri[:, 1] - tri[:, 0]).float()
        self.edge2 = (tri[:, 2] - tri[:, 0]).float()
        area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1)
        cdf = torch.cumsum(area, 0)
        self.cdf = cdf / cdf[-1]

    def surface(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, 3) float32 points uniform by area on the surface (CPU)."""
        face = torch.searchsorted(self.cdf, torch.rand(n, generator=generator, dtype=torch.float64))
        face = face.clamp_max(self.cdf.numel() - 1)
        uv = torch.rand(n, 2, generator=generator)
        flip = uv.sum(1) > 1
        uv[flip] = 1 - uv[flip]
        return self.corner[face] + uv[:, :1] * self.edge1[face] + uv[:, 1:] * self.edge2[face]

    def off_surface(self, n_perturbed: int, n_uniform: int, sigma: float, generator: torch.Generator) -> Tensor:
        """(n_perturbed + n_uniform, 3) float32 points: surface + N(0, σ²) per axis, then uniform in [0, 1]³ (CPU)."""
        near = self.surface(n_perturbed, generator) + sigma * torch.randn(n_perturbed, 3, generator=generator)
        return torch.cat([near, torch.rand(n_uniform, 3, generator=generator)])

    def signed_distance(self, points: Tensor) -> Tensor:
        """Exact signed distances (N,) float32 on ``device`` of (N, 3) points."""
        return self.bvh.signed_distance(points.to(self.device))


class SampleBank:
    """``size`` off-surface points with exact signed distances, drawn from at random; ``refresh`` of them are replaced
    by new points at random slots after every draw (a slot drawn twice in one refresh is replaced once, so a run
    repeats itself bit for bit). Perturbed and uniform points keep their batch proportions."""

    def __init__(self, sampler: SurfaceSampler, size: int, perturbed_share: float, sigma: float,
                 generator: torch.Generator, chunk: int = 1 << 16) -> None:
        self.sampler = sampler
        self.sigma = sigma
        self.perturbed_share = perturbed_share
        n_perturbed = round(size * perturbed_share)
        points = sampler.off_surface(n_perturbed, size - n_perturbed, sigma, generator).to(sampler.device)
        self.points = points
        self.sdf = torch.cat([sampler.signed_distance(points[s:s + chunk]) for s in range(0, size, chunk)])

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, self.points.shape[0], (n,), generator=generator).to(self.points.device)
        return self.points[idx], self.sdf[idx]

    def refresh(self, n: int, generator: torch.Generator) -> None:
        if n <= 0:
            return
        n_perturbed = round(n * self.perturbed_share)
        points = self.sampler.off_surface(n_perturbed, n - n_perturbed, self.sigma, generator).to(self.points.device)
        slots = torch.randint(0, self.points.shape[0], (n,), generator=generator).to(self.points.device)
        # A slot drawn twice (about 4 of every 4096 from 2^21) keeps its first new point: assigning both leaves the
        # winner to the threads of index_put_, each tensor on its own, so a point could get another's distance and
        # a run would not repeat itself.
        slots, inverse = torch.unique(slots, return_inverse=True)
        first = torch.full_like(slots, n).scatter_reduce_(0, inverse, torch.arange(n, device=slots.device), "amin")
        points = points[first]
        self.points[slots] = points
        self.sdf[slots] = self.sampler.signed_distance(points)


class SdfProblem:
    """Regress the mesh's signed distance in the unit cube: x (N, 3) → SDF (N, 1), unit-cube units (paper §5.2).

    The model is :class:`~ngp_cli.nn.model.NetworkWithInputEncoding` (3 → 1) with two buffers, ``frame_centre`` (3,)
    and ``frame_scale`` (1,), holding the mesh → unit-cube similarity, so a checkpoint alone maps results back to the
    mesh's frame.
    """

    progress_metric = None  # a PSNR of signed distances under MAPE means nothing: the progress line shows the loss

    def __init__(self, mesh: InputMesh, cfg: SdfConfig, backend: Backend, frame: UnitFrame | None = None) -> None:
        sc = cfg.sdf
        if sc.surface_fraction + sc.perturbed_fraction > 1.0 + 1e-9:
            raise ConfigError("sdf.surface_fraction + sdf.perturbed_fraction must not exceed 1, got "
                              f"{sc.surface_fraction} + {sc.perturbed_fraction}")
        self.mesh = mesh
        self.cfg = cfg
        self.device = backend.device
        self.frame = frame or UnitFrame.fit(mesh.vertices)
        init = torch.Generator().manual_seed(cfg.seed)
        self.model = NetworkWithInputEncoding(3, 1, cfg.encoding, cfg.network, generator=init,
                                              kernel_target=backend.kernel_target).to(self.device)
        self.model.register_buffer("frame_centre", torch.tensor(self.frame.centre, dtype=torch.float64))
        self.model.register_buffer("frame_scale", torch.tensor([self.frame.scale], dtype=torch.float64))
        self.sampler = SurfaceSampler(mesh, self.frame, self.device)
        self.bank: SampleBank | None = None
        self._eval_points: tuple[Tensor, Tensor] | None = None

    def prepare_bank(self, generator: torch.Generator) -> None:
        """Fill the sample bank (``sdf.sample_bank`` > 0) from ``generator``."""
        sc = self.cfg.sdf
        if sc.sample_bank:
            off = 1.0 - sc.surface_fraction
            share = sc.perturbed_fraction / off if off > 0 else 1.0
            self.bank = SampleBank(self.sampler, sc.sample_bank, share, sc.perturbation, generator)

    def field(self, x: Tensor) -> Tensor:
        """The network's signed distance (N,) at (N, 3) unit-cube positions."""
        return self.model(x)[:, 0].float()

    def batch_loss(self, batch_size: int, generator: torch.Generator,
                   loss_fn: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        sc = self.cfg.sdf
        n_surface = round(batch_size * sc.surface_fraction)
        n_perturbed = round(batch_size * sc.perturbed_fraction)
        n_uniform = batch_size - n_surface - n_perturbed
        surface = self.sampler.surface(n_surface, generator).to(self.device)
        if self.bank is not None:
            off, off_sdf = self.bank.draw(n_perturbed + n_uniform, generator)
            self.bank.refresh(sc.bank_refresh, generator)
        else:
            off = self.sampler.off_surface(n_perturbed, n_uniform, sc.perturbation, generator).to(self.device)
            off_sdf = self.sampler.signed_distance(off)
        x = torch.cat([surface, off])
        target = torch.cat([torch.zeros(n_surface, device=self.device), off_sdf]).unsqueeze(1)
        pred = self.model(x).float()
        loss = loss_fn(pred, target)
        with torch.no_grad():
            mse = (pred - target).square().mean()
        return loss, mse

    def iou_points(self, n: int) -> tuple[Tensor, Tensor]:
        """The first ``n`` of the fixed IoU points (uniform in the unit cube, seed 0, the same for every run) and the
        mesh's inside/outside at them; computed once per process for the largest ``n`` asked."""
        if self._eval_points is None or self._eval_points[0].shape[0] < n:
            points = torch.rand(n, 3, generator=torch.Generator().manual_seed(0)).to(self.device)
            inside = torch.cat([self.sampler.bvh.contains(points[s:s + (1 << 18)])
                                for s in range(0, n, 1 << 18)])
            self._eval_points = (points, inside)
        return self._eval_points[0][:n], self._eval_points[1][:n]

    @torch.no_grad()
    def iou(self, n: int) -> float:
        """IoU of the network's inside (SDF < 0) against the mesh's at ``n`` fixed uniform points."""
        from ngp_cli.mesh.metrics import iou

        points, inside = self.iou_points(n)
        chunk = self.cfg.sdf.query_chunk
        pred = torch.cat([self.field(points[s:s + chunk]) < 0 for s in range(0, n, chunk)])
        return iou(pred, inside)

    def evaluate_held_out(self) -> dict:
        """IoU on ``sdf.eval_iou_points`` points (the periodic evaluation)."""
        return {"iou": self.iou(self.cfg.sdf.eval_iou_points), "n_points": self.cfg.sdf.eval_iou_points}


def default_mesh() -> Path:
    """The no-argument demo mesh: a torus (trimesh), written once to ``$NGP_CACHE_DIR/meshes/torus.ply`` (else
    ``~/.cache/ngp/meshes``). Raises OutputError when the cache cannot be written."""
    import trimesh

    from ngp_cli.mesh.io import write_mesh
    from ngp_cli.runs import cache_dir

    path = cache_dir("meshes") / "torus.ply"
    if not path.is_file():
        from ngp_cli.errors import OutputError

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{path.parent}: cannot create the demo mesh cache: {exc.strerror or exc}") from None
        torus = trimesh.creation.torus(major_radius=0.6, minor_radius=0.25, major_sections=96, minor_sections=48)
        write_mesh(path, torus.vertices, torus.faces)
    return path


def load_input(cfg: SdfConfig, report: bool = True) -> InputMesh:
    """Load ``sdf.path`` and, with ``report``, say what was found. Raises DataError."""
    mesh = load_mesh(Path(cfg.sdf.path))
    if not report:  # a command on a trained run: training already reported the mesh
        return mesh
    notes = []
    if mesh.parts > 1:
        notes.append(f"{mesh.parts} parts merged")
    if mesh.reoriented:
        notes.append("faces re-oriented consistently outward")
    if mesh.dropped_faces:
        notes.append(f"{mesh.dropped_faces} degenerate faces dropped")
    if not mesh.watertight:
        notes.append(f"not watertight ({mesh.boundary_edges} boundary edges): inside means generalized winding "
                     "number > 1/2")
    info(f"mesh {mesh.path.name}: {len(mesh.vertices):,} vertices, {len(mesh.faces):,} triangles"
         + (f"; {'; '.join(notes)}" if notes else ""))
    return mesh


def prepare_bank(problem: SdfProblem, trainer: Trainer) -> None:
    """Fill the sample bank (``sdf.sample_bank`` points with exact signed distances) before training continues; its
    generator is seeded by the step, so a resumed run draws as an uninterrupted one would."""
    cfg = problem.cfg
    if cfg.sdf.sample_bank and trainer.state.step < cfg.train.n_steps:
        t0 = time.perf_counter()
        bank_gen = torch.Generator().manual_seed(cfg.seed + 2 + trainer.state.step)
        problem.prepare_bank(bank_gen)
        info(f"sample bank: {cfg.sdf.sample_bank:,} exact signed distances in {time.perf_counter() - t0:.1f} s")


__all__ = ["SampleBank", "SdfProblem", "SurfaceSampler", "default_mesh", "load_input", "prepare_bank"]

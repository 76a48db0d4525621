"""``ngp bake`` and the baked sparse-voxel renderer (ngp_cli/volrend/baked.py, ngp_cli/cuda/baked.cu): the kernel
against its torch reference on fresh random grids, the exact lattice skip of volrend.cuh, the bake of an analytic
field, the file format, and the commands (bake, eval --baked, render --baked) on a tiny trained run.

Random inputs are drawn fresh every run; the seed is in every failure message.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ngp_cli.cuda import runtime
from ngp_cli.errors import ConfigError, DataError, UsageError
from ngp_cli.volrend import baked as vb
from ngp_cli.volrend.constants import GRID_CELLS, GRID_SIZE, MIN_CONE_STEPSIZE, N_STEPS
from ngp_cli.volrend.grid import EMPTY_DISTANCE_CAP, aabb_bounds, empty_distance, n_cascades


def _seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


@pytest.fixture(scope="module")
def cpu_target(host_cxx) -> str:
    """The "cpu" kernel target (skips without a host C++ compiler)."""
    return "cpu"


@pytest.fixture
def poison(monkeypatch):
    """Outputs the kernels must write in full start as NaN."""
    monkeypatch.setattr(runtime, "POISON_OUTPUTS", True)


def test_constants_match():
    from ngp_cli.tasks import discover_tasks

    assert 1 <= EMPTY_DISTANCE_CAP <= 255  # stored as uint8
    options = {name: default for name, _, default in discover_tasks()["nerf"].run_command("bake").options}
    assert options["min_alpha"] == vb.DEFAULT_MIN_ALPHA and options["subdivisions"] == 4
    assert options["sh_degree"] == 2


def test_sh_basis_is_tcnns_encoding():
    from ngp_cli.nn.encodings import SphericalHarmonicsEncoding

    d = torch.randn(500, 3, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    for degree in (1, 2):
        ours = vb.sh_basis(d, degree)
        theirs = SphericalHarmonicsEncoding(3, degree + 1)((d + 1.0) * 0.5)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    # Orthonormal on the sphere: the Gram matrix over many even directions is the identity.
    f = vb.fibonacci_directions(4000)
    y = vb.sh_basis(f, 2)
    torch.testing.assert_close(y.T @ y * (4 * math.pi / 4000), torch.eye(9, dtype=torch.float64), rtol=0, atol=2e-3)


def test_parse_bytes():
    assert vb.parse_bytes("2GiB") == 2 << 30
    assert vb.parse_bytes("512mib") == 512 << 20
    assert vb.parse_bytes("1.5G") == 3 << 29
    assert vb.parse_bytes("800MB") == 800 * 10**6
    assert vb.parse_bytes("4096") == 4096
    for bad in ("", "2XB", "-1G", "0", "G", "1e9"):
        with pytest.raises(UsageError, match="--max-memory"):
            vb.parse_bytes(bad)


# ---- the exact lattice skip (volrend.cuh advance_on_lattice) --------------------------------------------------------

_PROBE = r"""
#include "common.cuh"
#include "volrend.cuh"
extern "C" __global__ void lattice_probe(const float* __restrict__ t0, const float* __restrict__ target,
                                         const unsigned int n, const float cone_angle, const float min_dt,
                                         const float dt_max, float* __restrict__ out, int* __restrict__ ok) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float t = t0[i];
    ok[i] = advance_on_lattice(t, target[i], cone_angle, min_dt, dt_max) ? 1 : 0;
    out[i] = t;
}
"""


def _lattice_reference(t: torch.Tensor, target: torch.Tensor, cone_angle: float, dt_max: float):
    """The empty-cell skip of march_rays_reference, one step at a time: (t, moving)."""
    def calc_dt(x):
        return (x * cone_angle).clamp(MIN_CONE_STEPSIZE, dt_max)

    t_prev = t
    t = t + calc_dt(t)
    moving = t > t_prev
    behind = (t < target) & moving
    while behind.any():
        t_next = torch.where(behind, t + calc_dt(t), t)
        moving = moving & ~(behind & ~(t_next > t))
        behind = (t_next < target) & moving
        t = t_next
    return t, moving


@pytest.mark.parametrize("cone_angle, cascades", [(0.0, 1), (1 / 256, 3), (1 / 128, 8)])
def test_lattice_skip_is_bit_exact(cpu_target, tmp_path, cone_angle, cascades):
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    source = tmp_path / "lattice_probe.cu"
    source.write_text(_PROBE)
    mod = runtime.load_module(source, cpu_target)
    n = 6000
    dt_max = MIN_CONE_STEPSIZE * (1 << (cascades - 1)) * N_STEPS / GRID_SIZE
    # Starts across several binades (and next to their edges), targets up to ~2000 steps away; a few NaN targets.
    t0 = torch.exp(torch.empty(n).uniform_(math.log(1e-3), math.log(40.0), generator=g))
    edges = 2.0 ** torch.randint(-3, 5, (n // 4,), generator=g).float()
    t0[: n // 4] = edges - torch.rand(n // 4, generator=g) * 0.01
    target = t0 + torch.rand(n, generator=g) ** 2 * 4.0
    target[:20] = float("nan")
    target[20:40] = t0[20:40]  # one step
    t0[40:50] = 3e7  # steps of dt_min are lost in rounding there (cone 0: the ray is stuck)
    target[40:50] = t0[40:50] + 5.0
    out = torch.full((n,), float("nan"))
    ok = torch.full((n,), -1, dtype=torch.int32)
    mod.launch("lattice_probe", ((n + 31) // 32, 1, 1), (32, 1, 1), [
        t0, target, np.uint32(n), np.float32(cone_angle), np.float32(MIN_CONE_STEPSIZE), np.float32(dt_max), out, ok])
    ref, moving = _lattice_reference(t0, target, cone_angle, dt_max)
    assert torch.equal(ok.bool(), moving), f"seed {seed}"
    bad = (out != ref) & moving
    assert not bad.any(), f"seed {seed}: {int(bad.sum())} of {n} skips differ, e.g. t0={t0[bad][:3].tolist()} " \
                          f"target={target[bad][:3].tolist()} got={out[bad][:3].tolist()} want={ref[bad][:3].tolist()}"


# ---- the kernel against the reference -------------------------------------------------------------------------------


def _shell(radius: float, width_cells: float) -> torch.Tensor:
    u = ((torch.arange(GRID_SIZE) + 0.5) / GRID_SIZE - 0.5) ** 2
    r = (u[None, None, :] + u[None, :, None] + u[:, None, None]).sqrt()  # [z, y, x]
    return ((r - radius).abs() < width_cells / GRID_SIZE).reshape(-1)


def _random_grid(aabb_scale: int, s: int, degree: int, g: torch.Generator, cone_angle: float = 0.0,
                 near: float = 0.05, noise: float = 0.002) -> vb.BakedGrid:
    """A shell of blocks of radius 0.15 in cascade 0 plus a fraction ``noise`` of random cells of every cascade, random
    masks (40% of the voxels stored, at least one per block), σ log-uniform in [0.1, 2000], random SH."""
    cascades = n_cascades(aabb_scale)
    occ = torch.rand(cascades * GRID_CELLS, generator=g) < noise
    occ[:GRID_CELLS] |= _shell(0.15, 1.5)
    cells = torch.nonzero(occ).squeeze(1)
    bits = s ** 3
    stored = torch.rand(cells.numel(), bits, generator=g) < 0.4
    stored[torch.arange(cells.numel()), torch.randint(0, bits, (cells.numel(),), generator=g)] = True
    masks = (stored.long() << torch.arange(bits)).sum(1)
    v = int(stored.sum())
    density = torch.exp(torch.empty(v).uniform_(math.log(0.1), math.log(2000.0), generator=g)).half()
    c = vb.sh_count(degree)
    sh = torch.randn(v, 3, c, generator=g) * 0.4
    sh[:, :, 0] += 1.5
    return vb.BakedGrid(cells, masks, density, sh.half(), aabb_scale=aabb_scale, subdivisions=s, sh_degree=degree,
                        cone_angle=cone_angle, near_distance=near)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _rays(aabb_scale: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from outside the box aimed at the shell or anywhere in the box, from inside, and axis-aligned ones."""
    lo, hi = aabb_bounds(aabb_scale)
    n_out, n_in = n // 2, n // 4
    n_axis = n - n_out - n_in
    o_out = 0.5 + _unit(torch.randn(n_out, 3, generator=g)) * 1.5 * aabb_scale
    aim = torch.where(torch.rand(n_out, 1, generator=g) < 0.7, 0.5 + 0.2 * (torch.rand(n_out, 3, generator=g) - 0.5),
                      lo + (hi - lo) * torch.rand(n_out, 3, generator=g))
    d_out = _unit(aim - o_out)
    o_in = 0.5 + (torch.rand(n_in, 3, generator=g) - 0.5) * min(aabb_scale, 0.6)
    d_in = _unit(torch.randn(n_in, 3, generator=g))
    axes = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [1, 1, 0]],
                        dtype=torch.float32)
    d_axis = _unit(axes[torch.randint(0, axes.shape[0], (n_axis,), generator=g)])
    o_axis = 0.5 + (torch.rand(n_axis, 3, generator=g) - 0.5) * 0.4 - d_axis * aabb_scale
    return torch.cat([o_out, o_in, o_axis]), torch.cat([d_out, d_in, d_axis])


def _compare(out: dict, ref: dict, seed: int, min_exact: float = 0.99) -> None:
    msg = f"seed {seed}"
    for k in ("rgb", "depth", "opacity"):
        assert not torch.isnan(out[k]).any(), f"{msg}: {k} not written everywhere"
    close = ((out["rgb"] - ref["rgb"]).abs().amax(-1) <= 2e-3) & ((out["opacity"] - ref["opacity"]).abs() <= 2e-3) \
        & ((out["depth"] - ref["depth"]).abs() <= 2e-3 * (1.0 + ref["depth"].abs()))
    frac = float(close.float().mean())
    assert frac >= min_exact, f"{msg}: only {frac:.4f} of the rays match the reference"
    # The test means something: rays that hit (opaque and translucent) and rays that miss.
    op = ref["opacity"]
    assert (op > 0.5).float().mean() > 0.05 and (op < 0.05).float().mean() > 0.03, msg
    assert ((op > 0.05) & (op < 0.9)).float().mean() > 0.02, msg


@pytest.mark.parametrize("aabb_scale, s, degree, cone_angle", [
    (1, 4, 2, 0.0),
    (4, 3, 1, 1 / 256),
    (2, 4, 2, 1 / 128),
])
def test_kernel_matches_reference(cpu_target, poison, aabb_scale, s, degree, cone_angle):
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    grid = _random_grid(aabb_scale, s, degree, g, cone_angle=cone_angle)
    origins, directions = _rays(aabb_scale, 384, g)
    background = torch.rand(origins.shape[0], 3, generator=g)
    ref = vb.render_baked_reference(grid, origins, directions, background)
    out = vb.render_baked(grid, origins, directions, background, kernel_target=cpu_target)
    _compare(out, ref, seed)
    # A constant background, and no background.
    for bg in (torch.tensor([0.2, 0.5, 1.0]), None):
        out = vb.render_baked(grid, origins[:64], directions[:64], bg, kernel_target=cpu_target)
        ref = vb.render_baked_reference(grid, origins[:64], directions[:64], bg)
        torch.testing.assert_close(out["rgb"], ref["rgb"], rtol=0, atol=2e-3, msg=lambda m: f"seed {seed}: {m}")


def test_empty_space_skip_changes_nothing(cpu_target):
    """Without the empty-space distances (every empty cell 1) the kernel visits every empty cell; the samples, and so
    every output bit, are the same."""
    from ngp_cli.cuda.baked import render

    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    for aabb_scale, cone in ((1, 0.0), (4, 1 / 256)):
        grid = _random_grid(aabb_scale, 2, 2, g, cone_angle=cone, noise=0.0002)
        assert (grid.empty_distance > 4).float().mean() > 0.3, f"seed {seed}: the distances skip little"
        origins, directions = _rays(aabb_scale, 512, g)
        args = dict(occupancy_bits=grid.occupancy_bits, occupancy_rank=grid.occupancy_rank, block_mask=grid.block_mask,
                    block_offset=grid.block_offset, density=grid.density_rows, sh=grid.sh_rows, aabb_scale=aabb_scale,
                    subdivisions=2, sh_degree=2, cone_angle=cone, near_distance=0.05, target=cpu_target)
        fast = render(origins, directions, empty_distance=grid.empty_distance, **args)
        cells = grid.empty_distance.clamp(max=1)  # 0 where a block is, else 1: skip one cell at a time
        slow = render(origins, directions, empty_distance=cells, **args)
        for a, b in zip(fast, slow, strict=True):
            assert torch.equal(a, b), f"seed {seed}, aabb_scale {aabb_scale}"


def test_empty_distance():
    g = GRID_SIZE
    occ = torch.zeros(2 * GRID_CELLS, dtype=torch.bool)
    occ[40 + g * (50 + g * 60)] = True  # cascade 0, cell (40, 50, 60)
    occ[GRID_CELLS + 100 + g * (64 + g * 64)] = True  # cascade 1, cell (100, 64, 64), outside cascade 0's box
    dist = empty_distance(occ, 2, cap=40).view(2, g, g, g)  # [c, z, y, x]
    d0 = dist[0]
    assert d0[60, 50, 40] == 0 and d0[60, 50, 45] == 5 and d0[63, 47, 40] == 3 and d0[60 + 7, 50 - 7, 40 + 7] == 7
    # Cascade 0 is an inner cascade: its grid's edge counts as blocked (the cells beyond are cascade 1's).
    assert d0[60, 50, 127] == 1 and d0[60, 50, 120] == 8 and d0[0, 0, 0] == 1
    # Cascade 1: its own cell (0: a block), and the cell (52, 57, 62) of its grid holding the cascade-0 cell (1: no
    # block of its own, skipped alone), are blocked; its outer edge is the scene box's (not blocked), and far cells
    # are capped.
    d1 = dist[1]
    assert d1[64, 64, 100] == 0 and d1[62, 57, 52] == 1 and d1[64, 64, 110] == 10 and d1[62, 57, 54] == 2
    assert d1[0, 0, 0] == 40 and d1[127, 127, 127] == 40
    assert d1.float().mean() > 25


# ---- baking ----------------------------------------------------------------------------------------------------------

_COEFFS = torch.tensor([[0.5 / 0.28209479, 0.1, -0.1, 0.05, 0.1, -0.05, 0.08, 0.02, -0.1],
                        [0.4 / 0.28209479, -0.1, 0.1, 0.1, -0.05, 0.05, -0.08, 0.1, 0.05],
                        [0.6 / 0.28209479, 0.05, 0.0, -0.1, 0.0, 0.1, 0.05, -0.05, 0.1]], dtype=torch.float64)


def _ball_density(x: torch.Tensor) -> torch.Tensor:
    r = (x.double() - 0.5).norm(dim=-1)
    return (400.0 * torch.sigmoid((0.04 - r) / 0.002)).float()


def _sh_colour(h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    rgb = (vb.sh_basis(d.double(), 2) @ _COEFFS.T).float()
    return rgb.expand(h.shape[0], *rgb.shape) if d.dim() == 2 else rgb


def _bake_ball(max_memory: int, s: int = 2, min_alpha: float = 1e-3, **kw) -> vb.BakedGrid:
    u = ((torch.arange(GRID_SIZE) + 0.5) / GRID_SIZE - 0.5) ** 2
    occ = ((u[None, None, :] + u[None, :, None] + u[:, None, None]).sqrt() < 0.07).reshape(-1).to(torch.uint8)
    return vb.bake_grid(occ, 1, density_fn=_ball_density, feature_fn=lambda x: x, colour_fn=_sh_colour,
                        subdivisions=s, sh_degree=2, min_alpha=min_alpha, max_memory=max_memory, **kw)


def test_bake_of_an_analytic_field():
    grid = _bake_ball(64 << 20)
    assert grid.meta["occupied_cells"] > grid.n_blocks > 500
    # Every voxel of a block whose alpha reaches min_alpha is stored, and every stored one is within one voxel of one.
    s = grid.subdivisions
    size = 1.0 / (GRID_SIZE * s)
    occ_cells = torch.nonzero(grid.block_index >= 0).squeeze(1)
    bits = torch.arange(s ** 3)
    pos = vb._voxel_positions(occ_cells.repeat_interleave(s ** 3), bits.repeat(occ_cells.numel()), s)
    alpha = 1.0 - torch.exp(-_ball_density(pos) * size)
    stored = ((grid.block_mask.repeat_interleave(s ** 3) >> bits.repeat(occ_cells.numel())) & 1).bool()
    assert stored[alpha >= 1e-3].all()
    assert (stored & (alpha >= 1e-3)).sum() < stored.sum()  # the dilation added neighbours
    r = (pos - 0.5).norm(dim=-1)
    reach = r[alpha >= 1e-3].max() + math.sqrt(3.0) * size + 1e-6  # one voxel diagonal past the farthest kept voxel
    assert (r[stored] <= reach).all() and (r > reach).any()
    # The SH fit recovers the colour's coefficients (a degree-2 function: exact up to float16).
    torch.testing.assert_close(grid.sh.double(), _COEFFS.expand(grid.n_voxels, 3, 9), rtol=2e-3, atol=2e-3)
    dens = _ball_density(vb._voxel_positions(occ_cells.repeat_interleave(s ** 3)[stored],
                                             bits.repeat(occ_cells.numel())[stored], s))
    torch.testing.assert_close(grid.density.float(), dens.clamp(max=6e4), rtol=1e-3, atol=1e-3)
    # Rendered head-on, the opaque ball shows the colour of the view direction.
    d = _unit(torch.randn(200, 3, dtype=torch.float64)).float()
    o = 0.5 - d * 0.3
    out = vb.render_baked_reference(grid, o, d, torch.ones(3))
    assert (out["opacity"] > 0.999).all()
    want = (vb.sh_basis(d.double(), 2) @ _COEFFS.T).float()
    torch.testing.assert_close(out["rgb"], want, rtol=0, atol=5e-3)
    # Depth: the ball's surface, 0.3 - 0.04 from the origin (to within its soft edge).
    assert ((out["depth"] - 0.26).abs() < 0.004).all(), out["depth"]
    # Smaller tiles (a tighter budget) bake the same grid.
    tight = _bake_ball(grid.meta["occupied_cells"] * 300 + GRID_CELLS * 9 + (8 << 20))
    for a, b in ((tight.block_cell, grid.block_cell), (tight.block_mask, grid.block_mask),
                 (tight.density, grid.density)):
        assert torch.equal(a, b)
    torch.testing.assert_close(tight.sh, grid.sh, rtol=0, atol=1e-3)


def test_bake_refuses_a_budget_below_the_need():
    with pytest.raises(ConfigError, match=r"--max-memory 8.0 MiB is too small: .* need at least \d"):
        _bake_ball(8 << 20)
    # Enough for the cells (about 25 MB at 4³ voxels), not for their voxels (about 36 MB): min_alpha 0 keeps them all.
    with pytest.raises(ConfigError, match="voxels to store need at least"):
        _bake_ball(30 << 20, s=4, min_alpha=0.0)


def test_per_voxel_directions_fit():
    """Directions given per voxel (a callable) fit the same coefficients."""
    dirs = vb.fibonacci_directions(24).float()

    def per_voxel(pos):
        return dirs.expand(pos.shape[0], *dirs.shape)

    grid = _bake_ball(64 << 20, s=1, directions=per_voxel)
    assert grid.meta["n_directions"] == 24
    torch.testing.assert_close(grid.sh.double(), _COEFFS.expand(grid.n_voxels, 3, 9), rtol=3e-3, atol=3e-3)


# ---- file format ----------------------------------------------------------------------------------------------------


def test_file_roundtrip_and_refusals(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(_seed())
    grid = _random_grid(2, 2, 1, g, cone_angle=1 / 256, near=0.2)
    grid.meta.update({"source_run": "/runs/x", "source_step": 7, "bake_s": 1.5})
    path = tmp_path / "baked.safetensors"
    size = vb.save_baked(grid, path)
    assert size == path.stat().st_size and not list(tmp_path.glob(".*tmp*"))
    back = vb.load_baked(path)
    for k in ("block_cell", "block_mask", "density", "sh", "block_index", "block_offset", "occupancy_bits",
              "empty_distance"):
        assert torch.equal(getattr(back, k), getattr(grid, k)), k
    assert (back.aabb_scale, back.subdivisions, back.sh_degree, back.cone_angle, back.near_distance) == \
        (2, 2, 1, 1 / 256, 0.2)
    assert back.meta["source_step"] == 7
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["ngp-baked"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert header["format"] == "ngp-baked" and header["version"] == vb.FORMAT_VERSION
    assert header["n_voxels"] == grid.n_voxels and tensors["block_cell"].dtype == torch.int32

    def write(name: str, hdr: dict, ts: dict | None = None) -> Path:
        p = tmp_path / name
        save_file(ts or tensors, str(p), metadata={"ngp-baked": json.dumps(hdr)})
        return p

    with pytest.raises(DataError, match="version 2 is newer than this ngp reads"):
        vb.load_baked(write("v2.safetensors", {**header, "version": 2}))
    with pytest.raises(DataError, match="corrupt baked grid"):
        vb.load_baked(write("short.safetensors", header, {**tensors, "density": tensors["density"][:-1]}))
    with pytest.raises(DataError, match="not a baked grid"):
        save_file(tensors, str(tmp_path / "plain.safetensors"))
        vb.load_baked(tmp_path / "plain.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError):
        vb.load_baked(tmp_path / "trunc.safetensors")
    with pytest.raises(DataError, match="no such baked grid"):
        vb.load_baked(tmp_path / "missing.safetensors")


# ---- the commands on a tiny trained run -----------------------------------------------------------------------------

_NERF_FAST = ["--backend", "torch", "--steps", "4", "--set", "train.log_every=4", "--set", "train.eval_every=0",
              "--set", "train.final_eval_views=0", "--set", "nerf.render_views=0", "--set", "train.batch_size=8192",
              "--set", "nerf.n_rays_initial=256", "--set", "encoding.log2_hashmap_size=12",
              "--set", "encoding.n_levels=4", "--set", "nerf.grid_warmup_steps=16", "--set", "nerf.cone_angle=0.02"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, app) -> Path:
    """A NeRF run of 4 steps on a 16-pixel synthetic scene, its occupancy grid then cut down to a ball of ~2000 cells
    around the scene (so baking it takes a moment)."""
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene
    from tests.conftest import Invocation

    scene = make_synthetic_scene(tmp_path_factory.mktemp("scene"), n_train=6, n_val=2, resolution=16, seed=3)
    runs = tmp_path_factory.mktemp("runs")
    res = Invocation(CliRunner().invoke(app, ["train-nerf", str(scene), "--runs-dir", str(runs), *_NERF_FAST]))
    assert res.exit_code == 0, res.stderr
    run = Path(res.last("done")["run_dir"])
    weights = sorted((run / "checkpoints").glob("*.safetensors"))[-1]
    tensors = load_file(str(weights))
    occ = tensors["model.grid.occupancy"]
    ball = _shell(0.0, 10.0).to(occ.dtype)  # cells within 10 cells of the centre
    tensors["model.grid.occupancy"] = torch.cat([ball, torch.zeros(occ.numel() - ball.numel(), dtype=occ.dtype)])
    save_file(tensors, str(weights), metadata={"format": "ngp-checkpoint-v1"})
    return run


def test_bake_eval_and_render_a_run(tiny_run, ngp, tmp_path):
    # 4 steps leave the density below the default --min-alpha everywhere: an empty grid, said in a warning line.
    res = ngp("bake", tiny_run)
    assert res.exit_code == 0 and "the baked grid is empty" in res.stderr, res.stderr
    empty = vb.load_baked(tiny_run / "baked.safetensors")
    assert empty.n_blocks == empty.n_voxels == res.last("done")["metrics"]["n_voxels"] == 0
    o, d = torch.zeros(3, 3), _unit(torch.ones(3, 3))
    assert torch.equal(vb.render_baked_reference(empty, o, d, torch.ones(3))["rgb"], torch.ones(3, 3))
    res = ngp("bake", tiny_run, "--subdivisions", "2", "--min-alpha", "0.001", "--overwrite")
    assert res.exit_code == 0, res.stderr
    done = res.last("done")
    baked = tiny_run / "baked.safetensors"
    assert done["artifacts"]["baked"] == str(baked) and baked.is_file()
    m = done["metrics"]
    assert 0 < m["n_blocks"] <= 4400 and m["n_voxels"] > 0 and m["bytes"] == baked.stat().st_size and m["bake_s"] > 0
    grid = vb.load_baked(baked)
    assert grid.n_voxels == m["n_voxels"] and grid.meta["source_step"] == done["step"] == 4
    assert grid.meta["source_run"] == str(tiny_run.resolve())
    assert "bake: " in res.stderr  # progress by stage
    # Earlier results are never destroyed: an existing file needs --overwrite.
    again = ngp("bake", tiny_run, "--subdivisions", "2")
    assert again.exit_code == 2 and "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert ngp("bake", tiny_run, "--subdivisions", "1", "--overwrite", "--sh-degree", "1", "--min-alpha",
               "0.001").exit_code == 0
    assert vb.load_baked(baked).sh_degree == 1
    # eval --baked: both PSNRs and the loss, in their own file.
    res = ngp("eval", tiny_run, "--baked", baked)
    assert res.exit_code == 0, res.stderr
    metrics = res.last("done")["metrics"]
    assert math.isclose(metrics["psnr_loss_db"], metrics["psnr_network"] - metrics["psnr_baked"], abs_tol=1e-9)
    assert metrics["n_views"] == 2 and len([e for e in res.events if e["event"] == "view"]) == 2
    assert (tiny_run / "eval_val_baked.json").is_file() and not (tiny_run / "eval_val.json").exists()
    # render --baked: colour and depth frames; normals refused in one line.
    res = ngp("render", tiny_run, "--baked", baked, "--orbit", "2", "--resolution", "12x10", "--output", "depth",
              "--out", tmp_path / "frames")
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [
        "frame_00000.exr", "frame_00000.png", "frame_00001.exr", "frame_00001.png"]
    res = ngp("render", tiny_run, "--baked", baked, "--orbit", "2", "--output", "normals")
    assert res.exit_code == 2 and "normals" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_bake_bad_input(tiny_run, ngp, tmp_path):
    def one_line(res, code):  # one error line (after any progress lines), and it is the last
        assert res.exit_code == code, res.stderr
        lines = res.stderr.strip().splitlines()
        assert [ln for ln in lines if ln.startswith("ngp: ")] == lines[-1:], res.stderr

    out = tmp_path / "b.safetensors"
    res = ngp("bake", tiny_run, "--max-memory", "4MiB", "--out", out)
    one_line(res, 3)
    assert "--max-memory 4.0 MiB is too small" in res.stderr and "need at least" in res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
    one_line(ngp("bake", tiny_run, "--max-memory", "lots", "--out", out), 2)
    one_line(ngp("bake", tiny_run, "--out", tmp_path / "missing" / "b.safetensors"), 6)
    # A baked file of a newer format version: exit 4, before the run is loaded.
    g = torch.Generator().manual_seed(1)
    grid = _random_grid(1, 1, 1, g)
    vb.save_baked(grid, out)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(out), framework="pt") as f:
        header = json.loads(f.metadata()["ngp-baked"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(out), metadata={"ngp-baked": json.dumps({**header, "version": vb.FORMAT_VERSION + 1})})
    for cmd in (["eval", tiny_run], ["render", tiny_run, "--orbit", "1"]):
        res = ngp(*cmd, "--baked", out)
        one_line(res, 4)
        assert "newer than this ngp reads" in res.stderr
    # ngp bake on a run of another task: the dispatcher refuses it.
    sdf = tmp_path / "sdf_run"
    sdf.mkdir()
    (sdf / "config.yaml").write_text("task: sdf\n")
    res = ngp("bake", sdf)
    one_line(res, 2)
    assert "'sdf' runs have no 'ngp bake'" in res.stderr

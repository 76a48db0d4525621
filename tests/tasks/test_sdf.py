"""The SDF task and the shared mesh code: reading and normalising meshes, signs on closed and open meshes, the
training samples, marching cubes (dense and sparse), the metrics, the renders, and ``ngp train-sdf`` /
``ngp extract-mesh`` / ``ngp eval`` end to end (also extract-mesh on a NeRF run), with bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from ngp_cli.errors import DataError
from ngp_cli.mesh.bvh import MeshBVH, winding_number_reference
from ngp_cli.mesh.extract import drop_small_components, extract_isosurface, field_gradients, unit_normals
from ngp_cli.mesh.io import UNIT_MARGIN, UnitFrame, load_mesh, write_mesh
from ngp_cli.mesh.metrics import iou, sample_surface, surface_metrics


def _seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


# ---------------------------------------------------------------------------------------------------------------------
# Reading meshes


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".stl", ".glb", ".off"])
def test_load_mesh_reads_every_format(tmp_path, suffix):
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    path = tmp_path / f"box{suffix}"
    box.export(path)
    mesh = load_mesh(path)
    assert len(mesh.faces) == 12 and mesh.watertight and mesh.boundary_edges == 0
    np.testing.assert_allclose(mesh.vertices.min(0), [-1.0, -0.5, -0.25], atol=1e-6)


def test_load_mesh_merges_scene_parts_with_their_transforms(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box(), transform=trimesh.transformations.translation_matrix([5, 0, 0]))
    scene.add_geometry(trimesh.creation.icosphere(subdivisions=1))
    path = tmp_path / "scene.glb"
    scene.export(path)
    mesh = load_mesh(path)
    assert mesh.parts == 2 and len(mesh.faces) == 12 + 80
    assert mesh.vertices[:, 0].max() == pytest.approx(5.5)


def test_load_mesh_drops_degenerate_faces_and_reports_holes(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    faces = np.concatenate([sphere.faces[1:], [[0, 0, 1]]])  # one face removed (a hole), one degenerate added
    path = tmp_path / "holey.ply"
    trimesh.Trimesh(sphere.vertices, faces, process=False).export(path)
    mesh = load_mesh(path)
    assert mesh.dropped_faces == 1 and len(mesh.faces) == len(sphere.faces) - 1
    assert not mesh.watertight and mesh.boundary_edges == 3


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no triangles"),
    ("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "degenerate"),
    ("v 0 0 0\nv 1 0 nan\nv 0 1 0\nf 1 2 3\n", "non-finite"),
])
def test_load_mesh_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.obj"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_mesh(path)


def test_load_mesh_rejects_corrupt_and_unsupported_files(tmp_path):
    corrupt = tmp_path / "corrupt.ply"
    corrupt.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n\x00\x01")
    with pytest.raises(DataError):
        load_mesh(corrupt)
    other = tmp_path / "mesh.xyz"
    other.write_text("0 0 0\n")
    with pytest.raises(DataError, match="unsupported mesh format"):
        load_mesh(other)


@pytest.mark.parametrize("damage", ["inverted", "mixed"])
def test_load_mesh_orients_faces_outward(tmp_path, damage):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    faces = np.asarray(sphere.faces).copy()
    if damage == "inverted":
        faces = faces[:, ::-1]
    else:
        faces[::3] = faces[::3, ::-1]
    path = tmp_path / "bad.ply"
    trimesh.Trimesh(sphere.vertices, faces, process=False).export(path)
    mesh = load_mesh(path)
    assert mesh.reoriented
    bvh = MeshBVH(mesh.vertices, mesh.faces)
    assert bvh.contains(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.1, -0.2]])).all()
    assert not bvh.contains(torch.tensor([[2.0, 0.0, 0.0]])).any()
    assert not load_mesh(_export_box(tmp_path)).reoriented


def _export_box(tmp_path) -> Path:
    path = tmp_path / "box.obj"
    trimesh.creation.box().export(path)
    return path


def test_unit_frame_round_trip_and_margin():
    seed = _seed()
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(100, 3)) * [3.0, 1.0, 0.5] + [10.0, -4.0, 2.0]
    frame = UnitFrame.fit(v)
    u = frame.to_unit(v)
    extent = u.max(0) - u.min(0)
    assert extent.max() == pytest.approx(1 - 2 * UNIT_MARGIN), seed
    np.testing.assert_allclose((u.max(0) + u.min(0)) / 2, 0.5, atol=1e-12)
    np.testing.assert_allclose(frame.from_unit(u), v, atol=1e-9)


def test_write_mesh_is_atomic_and_keeps_attributes(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=1)
    colors = np.random.default_rng(0).random((len(sphere.vertices), 3))
    path = write_mesh(tmp_path / "s.ply", sphere.vertices, sphere.faces, sphere.vertex_normals, colors)
    back = trimesh.load(path, process=False)
    assert len(back.faces) == len(sphere.faces)
    np.testing.assert_array_equal(back.visual.vertex_colors[:, :3], (colors * 255 + 0.5).astype(np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["s.ply"]  # no temporary left behind


# ---------------------------------------------------------------------------------------------------------------------
# Signs on open meshes, marching cubes, metrics, renders


def test_open_mesh_signs_follow_the_generalized_winding_number():
    """A sphere with a missing cap: points deep inside stay inside (w ≈ 1 - cap solid angle/4π > 1/2), points outside
    stay outside; the BVH's sign agrees with the exact winding number everywhere off the surface."""
    seed = _seed()
    sphere = trimesh.creation.icosphere(subdivisions=3)
    v = np.asarray(sphere.vertices) * 0.4 + 0.5
    keep = v[sphere.faces].mean(axis=1)[:, 2] < 0.85  # a hole around the top
    bvh = MeshBVH(v, sphere.faces[keep])
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(4000, 3, generator=g)
    ref = winding_number_reference(bvh.triangles, q)
    dist = bvh.closest_point(q)[0]
    # away from the surface, and where w is not within the fast approximation's error (< 0.05) of 1/2 (near the hole)
    clear = (dist > 0.02) & ((ref - 0.5).abs() > 0.05)
    assert torch.equal(bvh.contains(q)[clear], (ref > 0.5)[clear]), seed
    r = (q - 0.5).norm(dim=1)
    assert bvh.contains(q)[(r < 0.3)].all() and not bvh.contains(q)[(r > 0.45)].any(), seed


@pytest.mark.parametrize("sparse", [None, 4])
def test_extract_isosurface_of_a_sphere(sparse):
    radius = 0.31

    def field(x):
        return (x - 0.5).norm(dim=1) - radius

    verts, faces, stats = extract_isosurface(field, 65, np.zeros(3), np.ones(3), device=torch.device("cpu"),
                                             slab=8, sparse_block=sparse)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=5e-3)  # positive: outward faces
    assert np.abs(np.linalg.norm(verts - 0.5, axis=1) - radius).max() < 2e-3
    if sparse:
        assert stats["evaluated"] < 0.5 * stats["nodes"]
    normals = unit_normals(field_gradients(field, verts.astype(np.float32), device=torch.device("cpu")))
    np.testing.assert_allclose(normals, (verts - 0.5) / np.linalg.norm(verts - 0.5, axis=1, keepdims=True),
                               atol=1e-4)


def test_small_pieces_are_dropped_by_their_share_of_the_largest():
    """A big sphere plus two floaters (a small sphere in another slab, a tiny one in the same slab): the filter keeps
    what the fraction says, and the surviving faces index the same positions as before."""
    spheres = torch.tensor([[0.4, 0.5, 0.5, 0.25], [0.85, 0.2, 0.2, 0.07], [0.85, 0.8, 0.8, 0.035]])

    def field(x):
        return ((x[:, None] - spheres[None, :, :3]).norm(dim=2) - spheres[None, :, 3]).min(dim=1).values

    verts, faces, _ = extract_isosurface(field, 64, np.zeros(3), np.ones(3), device=torch.device("cpu"), slab=8)
    per_piece = trimesh.Trimesh(verts, faces, process=False).split(only_watertight=False)
    sizes = sorted(len(m.faces) for m in per_piece)
    assert len(sizes) == 3 and sizes[0] < sizes[1] < 0.2 * sizes[2]
    keep, kept_faces, stats = drop_small_components(faces, len(verts), 0.0)
    assert np.array_equal(keep, np.arange(len(verts))) and np.array_equal(kept_faces, faces)
    assert stats == {"components_dropped": 0, "faces_dropped": 0}
    between = (sizes[0] + sizes[1]) / 2 / sizes[2]  # drops the tiny sphere only
    for fraction, kept in ((between, sizes[1:]), (0.5, sizes[2:]), (1.0, sizes[2:])):
        keep, kept_faces, stats = drop_small_components(faces, len(verts), fraction)
        assert stats["components"] == 3 and stats["components_dropped"] == 3 - len(kept)
        assert len(kept_faces) == sum(kept) and stats["faces_dropped"] == len(faces) - sum(kept)
        # the same triangles as before, re-indexed: every surviving face is one of the input's faces
        before = {tuple(sorted(map(tuple, t))) for t in np.round(verts[faces], 6)}
        after = {tuple(sorted(map(tuple, t))) for t in np.round(verts[keep][kept_faces], 6)}
        assert after <= before and len(np.unique(kept_faces)) == len(keep)
    with pytest.raises(ValueError, match="min_fraction"):
        drop_small_components(faces, len(verts), 1.5)


def test_sparse_extraction_matches_dense():
    seed = _seed()
    rng = np.random.default_rng(seed)
    centres = torch.from_numpy(rng.uniform(0.3, 0.7, (3, 3)).astype(np.float32))

    def field(x):  # a union of three spheres: an exact SDF outside, a bound inside
        return ((x[:, None] - centres[None]).norm(dim=2) - 0.15).min(dim=1).values

    dense = extract_isosurface(field, 49, np.zeros(3), np.ones(3), device=torch.device("cpu"), slab=16)
    sparse = extract_isosurface(field, 49, np.zeros(3), np.ones(3), device=torch.device("cpu"), slab=16,
                                sparse_block=4)
    np.testing.assert_array_equal(dense[0], sparse[0])
    np.testing.assert_array_equal(dense[1], sparse[1])


def test_extract_isosurface_without_crossing_is_empty():
    verts, faces, _ = extract_isosurface(lambda x: torch.ones(x.shape[0]), 9, np.zeros(3), np.ones(3),
                                         device=torch.device("cpu"))
    assert verts.shape == (0, 3) and faces.shape == (0, 3)
    with pytest.raises(ValueError, match="non-finite"):
        extract_isosurface(lambda x: torch.full((x.shape[0],), math.nan), 9, np.zeros(3), np.ones(3),
                           device=torch.device("cpu"))


def test_surface_metrics_of_concentric_spheres():
    """Two concentric spheres of radii 0.3 and 0.32: every point is 0.02 from the other surface, normals agree."""
    s = trimesh.creation.icosphere(subdivisions=5)
    a_v, b_v = np.asarray(s.vertices) * 0.3 + 0.5, np.asarray(s.vertices) * 0.32 + 0.5
    ref = MeshBVH(a_v, s.faces)
    m = surface_metrics(b_v, s.faces, ref, a_v, s.faces, n_points=20000)
    assert m["chamfer_pred_to_ref"] == pytest.approx(0.02, abs=5e-4)
    assert m["chamfer_ref_to_pred"] == pytest.approx(0.02, abs=5e-4)
    assert m["normal_consistency"] > 0.999
    same = surface_metrics(a_v, s.faces, ref, a_v, s.faces, n_points=20000)
    assert same["chamfer"] < 1e-6 and same["normal_consistency"] > 0.999


def test_iou_and_surface_sampling():
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    assert iou(a, b) == pytest.approx(1 / 3) and iou(a, a) == 1.0 and iou(~(a | b), ~(a | b)) == 1.0
    s = trimesh.creation.icosphere(subdivisions=3)
    pts, nrm = sample_surface(np.asarray(s.vertices), s.faces, 5000, np.random.default_rng(_seed()))
    assert np.abs(np.linalg.norm(pts, axis=1) - 1).max() < 0.02
    assert (np.sum(pts * nrm, axis=1) > 0.9).all()  # outward face normals


def test_render_views_show_the_mesh(tmp_path):
    from ngp_cli.mesh.shade import render_views

    s = trimesh.creation.icosphere(subdivisions=2)
    v = np.asarray(s.vertices) * 0.3 + 0.5
    paths = render_views(MeshBVH(v, s.faces), v, tmp_path, "sphere", up=np.array([0.0, 1.0, 0.0]), n_views=2,
                         size=64)
    import imageio.v3 as iio

    for p in paths:
        img = iio.imread(p)
        assert img.shape == (64, 64, 3)
        assert (img[32, 32] < 250).all() and (img[0, 0] == 255).all()  # the sphere in the middle, white corners


# ---------------------------------------------------------------------------------------------------------------------
# Training samples


def test_sampler_draws_the_paper_mix_with_exact_targets():
    from ngp_cli.config import resolve
    from ngp_cli.mesh.io import InputMesh
    from ngp_cli.nn.backend import resolve_backend
    from ngp_cli.tasks.sdf import SdfConfig
    from ngp_cli.tasks.sdf.fit import SdfProblem

    s = trimesh.creation.icosphere(subdivisions=3)
    mesh = InputMesh(np.asarray(s.vertices) * 2.0, np.asarray(s.faces), Path("sphere"), True, 0, 1, 0)
    cfg = resolve(SdfConfig, "sdf", "sdf-cpu", ["encoding.log2_hashmap_size=12", "sdf.sample_bank=0"],
                  default_preset="sdf-cpu")
    problem = SdfProblem(mesh, cfg, resolve_backend("auto", "cpu"))
    g = torch.Generator().manual_seed(_seed())
    surface = problem.sampler.surface(4000, g)
    r = (surface - 0.5).norm(dim=1)
    radius = problem.frame.scale * 2.0
    assert (r - radius).abs().max() < 0.01 * radius  # on the (faceted) sphere
    off = problem.sampler.off_surface(3000, 1000, 1 / 1024, g)
    sdf = problem.sampler.signed_distance(off)
    near = sdf[:3000]
    assert near.abs().mean() == pytest.approx(1 / 1024 * math.sqrt(2 / math.pi), rel=0.15)  # |N(0, σ²)| · |cos|
    uniform = off[3000:]
    assert (uniform >= 0).all() and (uniform <= 1).all()
    want = (uniform - 0.5).norm(dim=1) - radius
    assert (sdf[3000:] - want).abs().max() < 0.01 * radius


def test_a_bank_refresh_replaces_a_slot_drawn_twice_once_with_its_first_point():
    # 2048 new points into 256 slots: every slot is drawn several times. Each replaced slot holds the first of its new
    # points with that point's exact distance, the same in every run (index_put_ with repeated indices leaves the
    # winner to its threads, each of the two tensors on its own).
    from ngp_cli.config import resolve
    from ngp_cli.mesh.io import InputMesh
    from ngp_cli.nn.backend import resolve_backend
    from ngp_cli.tasks.sdf import SdfConfig
    from ngp_cli.tasks.sdf.fit import SampleBank, SdfProblem

    s = trimesh.creation.icosphere(subdivisions=3)
    mesh = InputMesh(np.asarray(s.vertices) * 2.0, np.asarray(s.faces), Path("sphere"), True, 0, 1, 0)
    cfg = resolve(SdfConfig, "sdf", "sdf-cpu", ["encoding.log2_hashmap_size=12", "sdf.sample_bank=0"],
                  default_preset="sdf-cpu")
    sampler = SdfProblem(mesh, cfg, resolve_backend("auto", "cpu")).sampler
    seed = _seed()
    banks = []
    for _ in range(2):
        bank = SampleBank(sampler, 256, 0.5, 1 / 128, torch.Generator().manual_seed(seed))
        before = bank.points.clone()
        g = torch.Generator().manual_seed(seed + 1)
        replay = torch.Generator().manual_seed(seed + 1)
        bank.refresh(2048, g)
        banks.append((bank.points.clone(), bank.sdf.clone()))
    new = sampler.off_surface(1024, 1024, 1 / 128, replay)
    slots = torch.randint(0, 256, (2048,), generator=replay)
    want = before.clone()
    for i in reversed(range(2048)):  # the first point drawn for a slot is the one kept
        want[slots[i]] = new[i]
    points, sdf = banks[0]
    assert torch.equal(points, want) and not torch.equal(points, before)
    assert torch.equal(sdf, sampler.signed_distance(points))
    assert torch.equal(banks[1][0], points) and torch.equal(banks[1][1], sdf)


# ---------------------------------------------------------------------------------------------------------------------
# End to end

_FAST = ["--set", "encoding.log2_hashmap_size=14", "--set", "train.batch_size=8192", "--set", "train.log_every=10",
         "--set", "train.eval_every=40", "--set", "sdf.iou_points=65536", "--set", "sdf.eval_iou_points=16384",
         "--set", "sdf.mesh_resolution=48", "--set", "sdf.chamfer_points=8192", "--set", "sdf.render_views=2",
         "--set", "sdf.render_size=64", "--set", "sdf.sample_bank=32768", "--set", "sdf.bank_refresh=512",
         "--set", "optimizer.learning_rate=1e-3"]  # converges faster than the preset's 1e-4 in these short runs


@pytest.fixture(scope="module")
def blob_path(tmp_path_factory) -> Path:
    """A bumpy closed mesh in its own (non-unit) frame, as OBJ."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    v = np.asarray(sphere.vertices)
    v = v * (1.0 + 0.2 * np.sin(3 * v[:, :1])) * [3.0, 2.0, 2.0] + [100.0, 0.0, -50.0]
    path = tmp_path_factory.mktemp("mesh") / "blob.obj"
    trimesh.Trimesh(v, sphere.faces, process=False).export(path)
    return path


@pytest.fixture(scope="module")
def trained(blob_path, tmp_path_factory, app):
    from typer.testing import CliRunner

    from tests.conftest import Invocation

    runs = tmp_path_factory.mktemp("runs")
    result = Invocation(CliRunner().invoke(app, ["train-sdf", str(blob_path), "--preset", "sdf-cpu", "--steps", "160",
                                                 "--runs-dir", str(runs), "--json", *_FAST]))
    assert result.exit_code == 0, result.stderr
    return result


def test_train_sdf_writes_a_complete_run(trained, blob_path):
    done = trained.last("done")
    run = Path(done["run_dir"])
    m = done["metrics"]
    assert done["step"] == 160 and m["iou_points"] == 65536
    assert m["iou"] > 0.8 and m["chamfer"] < 0.05 and m["normal_consistency"] > 0.7  # untrained: IoU ~0.2
    assert json.loads((run / "summary.json").read_text())["metrics"]["iou"] == m["iou"]
    evals = [e for e in trained.events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [40, 80, 120, 160] and all(0 < e["eval"]["iou"] <= 1 for e in evals)
    mesh = trimesh.load(done["artifacts"]["mesh"], process=False)
    ref = trimesh.load(blob_path, process=False)
    # written back in the input's frame: the bounding boxes agree to a few grid cells
    np.testing.assert_allclose(mesh.bounds, ref.bounds, atol=0.1 * np.ptp(ref.vertices, axis=0).max())
    assert len(done["artifacts"]["renders"]) == 2 and all(Path(p).is_file() for p in done["artifacts"]["renders"])
    assert Path(done["artifacts"]["checkpoint"]).is_file()


@pytest.mark.parametrize("suffix", [".obj", ".glb"])
def test_extract_mesh_writes_the_requested_format(trained, ngp, tmp_path, suffix, blob_path):
    run = trained.last("done")["run_dir"]
    out = tmp_path / f"m{suffix}"
    res = ngp("extract-mesh", run, "--resolution", "40", "--out", out)
    assert res.exit_code == 0, res.stderr
    done = res.last("done")
    assert done["artifacts"]["mesh"] == str(out) and done["metrics"]["resolution"] == 40
    assert done["metrics"]["faces"] > 100 and done["metrics"]["chamfer"] < 0.05 and done["metrics"]["peak_rss_mib"] > 0
    mesh = trimesh.load(out, force="mesh", process=False)
    assert len(mesh.faces) == done["metrics"]["faces"]
    assert abs(mesh.bounds.mean(axis=0)[0] - 100.0) < 1.0  # input frame (centre x = 100)


def test_extract_mesh_level_moves_the_surface_outward(trained, ngp, tmp_path):
    run = trained.last("done")["run_dir"]
    sizes = []
    for level in ("0", "0.03"):
        res = ngp("extract-mesh", run, "--resolution", "32", "--level", level, "--no-normals",
                  "--out", tmp_path / f"l{level}.ply")
        assert res.exit_code == 0, res.stderr
        sizes.append(trimesh.load(tmp_path / f"l{level}.ply", process=False).volume)
    assert sizes[1] > sizes[0] > 0


def test_eval_sdf_run(trained, ngp):
    run = Path(trained.last("done")["run_dir"])
    res = ngp("eval", run)
    assert res.exit_code == 0, res.stderr
    m = res.last("done")["metrics"]
    assert m["iou"] == pytest.approx(trained.last("done")["metrics"]["iou"])
    assert m["train_s"] > 0 and m["chamfer"] < 0.05
    assert json.loads((run / "eval.json").read_text())["iou"] == m["iou"]
    bad = ngp("eval", run, "--split", "val")
    assert bad.exit_code == 2 and "nerf runs" in bad.stderr


def test_render_sdf_run_orbit(trained, ngp, tmp_path):
    import imageio.v3 as iio

    run = trained.last("done")["run_dir"]
    res = ngp("render", run, "--orbit", "3", "--resolution", "40x30", "--out", tmp_path / "frames")
    assert res.exit_code == 0, res.stderr
    assert res.last("done")["metrics"]["frames"] == 3
    frames = sorted((tmp_path / "frames").iterdir())
    assert [p.name for p in frames] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    img = iio.imread(frames[0])
    assert img.shape == (30, 40, 3) and (img < 250).any() and (img[0, 0] == 255).all()  # the mesh, white corners
    bad = ngp("render", run, "--camera-path", tmp_path / "path.json")
    assert bad.exit_code == 2 and "--orbit" in bad.stderr


def test_extract_mesh_shows_progress_and_data_finds_a_moved_mesh(trained, ngp, tmp_path, blob_path):
    import re
    import shutil

    run = tmp_path / "runs" / "sdf" / "moved"
    shutil.copytree(trained.last("done")["run_dir"], run)
    cfg = run / "config.yaml"
    cfg.write_text(re.sub(r"(?m)^(  path: ).*$", r"\g<1>" + str(tmp_path / "gone.obj"), cfg.read_text(), count=1))
    config = cfg.read_text()
    for command in (["extract-mesh", "--resolution", "40"], ["eval"], ["render", "--orbit", "1"]):
        res = ngp(command[0], run, *command[1:])
        assert res.exit_code == 4, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("ngp:")]
        assert len(lines) == 1 and str(tmp_path / "gone.obj") in lines[0] and "--data" in lines[0]
    res = ngp("extract-mesh", run, "--resolution", "40", "--out", tmp_path / "m.ply", "--data", blob_path)
    assert res.exit_code == 0, res.stderr
    slabs = [ln.split(" (")[0] for ln in res.stderr.splitlines() if ln.startswith("marching cubes 40³")]
    assert slabs == ["marching cubes 40³", "marching cubes 40³"] and "2/2 (100%)" in res.stderr
    res = ngp("render", run, "--orbit", "2", "--resolution", "16x16", "--out", tmp_path / "f", "--data", blob_path)
    assert res.exit_code == 0 and "rendering 2/2 (100%)" in res.stderr
    assert cfg.read_text() == config  # --data never rewrites the run's config
    other = tmp_path / "other.obj"
    trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(other)
    res = ngp("eval", run, "--data", other)
    assert res.exit_code == 4 and "has changed since" in res.stderr


@pytest.mark.parametrize("args, code, message", [
    (["missing.obj"], 4, "no such file"),
    (["{bad}"], 4, "degenerate"),
    (["{mesh}", "--set", "sdf.perturbed_fractoin=0.3"], 3, "perturbed_fractoin"),
    (["{mesh}", "--set", "sdf.surface_fraction=0.9"], 3, "must not exceed 1"),
])
def test_train_sdf_bad_input(ngp, tmp_path, blob_path, args, code, message):
    bad = tmp_path / "flat.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    args = [a.format(bad=bad, mesh=blob_path) if a.startswith("{") else
            (str(tmp_path / a) if a.endswith(".obj") else a) for a in args]
    res = ngp("train-sdf", *args, "--runs-dir", tmp_path / "runs", "--steps", "1", *_FAST)
    assert res.exit_code == code, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("ngp:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))


def test_extract_mesh_bad_input(trained, ngp, tmp_path):
    run = trained.last("done")["run_dir"]
    res = ngp("extract-mesh", run, "--out", tmp_path / "m.xyz")
    assert res.exit_code == 2 and "mesh format" in res.stderr
    res = ngp("extract-mesh", run, "--out", tmp_path / "nowhere" / "m.ply")
    assert res.exit_code == 6
    res = ngp("extract-mesh", tmp_path)
    assert res.exit_code == 4


def test_extract_mesh_from_a_nerf_run(tmp_path, ngp):
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    scene = make_synthetic_scene(tmp_path / "scene", n_train=12, n_val=2, resolution=32)
    res = ngp("train-nerf", scene, "--steps", "30", "--runs-dir", tmp_path / "runs", "--set",
              "nerf.grid_warmup_steps=16", "--set", "train.batch_size=131072", "--set", "nerf.n_rays_initial=512",
              "--set", "encoding.log2_hashmap_size=15", "--set", "nerf.render_views=0", "--set", "train.eval_every=0")
    assert res.exit_code == 0, res.stderr
    run = res.last("done")["run_dir"]
    out = tmp_path / "nerf.ply"
    res = ngp("extract-mesh", run, "--resolution", "48", "--threshold", "1", "--out", out)
    assert res.exit_code == 0, res.stderr
    mesh = trimesh.load(out, process=False)
    assert len(mesh.faces) == res.last("done")["metrics"]["faces"] > 0
    colors = mesh.visual.vertex_colors
    assert colors.shape == (len(mesh.vertices), 4) and colors[:, :3].std() > 0
    assert len(res.last("done")["artifacts"]["renders"]) == 4
    assert ngp("extract-mesh", run, "--level", "0.1").exit_code == 2
    # --min-component 1 keeps only the largest piece: never more triangles, and the drop is accounted for
    largest = ngp("extract-mesh", run, "--resolution", "48", "--threshold", "1", "--min-component", "1",
                  "--no-colors", "--out", tmp_path / "largest.ply")
    assert largest.exit_code == 0, largest.stderr
    m = largest.last("done")["metrics"]
    assert m["faces"] + m["faces_dropped"] == len(mesh.faces) and m["components"] > m["components_dropped"] >= 0
    assert len(trimesh.load(tmp_path / "largest.ply", process=False).faces) == m["faces"]
    bad = ngp("extract-mesh", run, "--min-component", "1.5")
    assert bad.exit_code == 2 and "--min-component" in bad.stderr

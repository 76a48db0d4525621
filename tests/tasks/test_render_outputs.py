"""``ngp render`` beyond colour orbits (issue 16, part 2): camera paths from nerfstudio and instant-ngp, ``--fps`` /
``--resolution`` / ``--seconds``, and ``--output depth|accumulation|normals`` for NeRF runs and SDF runs, against
analytic fields and a tiny trained run of each task."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ngp_cli.images import from_float, read_image
from ngp_cli.mesh.shade import map_image, pinhole_rays, sphere_trace
from ngp_cli.volrend.constants import GRID_CELLS
from ngp_cli.volrend.render import MIN_CHUNK_RAYS, RayRows, render_ray_maps, render_rays

_DOCS = Path(__file__).resolve().parents[2] / "docs" / "examples"

# ---------------------------------------------------------------------------------------------------------------------
# Analytic fields


def _plane_field(x0: float = 0.6, width: float = 0.002, peak: float = 2e4):
    """A smooth wall of density rising across the plane x = x0 (a sigmoid ``width`` thick), grey."""

    def field(p: torch.Tensor, d: torch.Tensor):
        sigma = peak * torch.sigmoid((p[:, 0] - x0) / width)
        return sigma, torch.full((p.shape[0], 3), 0.5)

    return field


# Where rays stop on that wall: the density's exponential foot A e^((x - x0)/w) in front of it makes the stopping point
# Gumbel distributed, with mean x0 - w (ln(A w) + γ) (8.5e-3 before the wall here).
_STOP = 0.6 - 0.002 * (math.log(2e4 * 0.002) + 0.5772156649)


def _rays_towards_plus_x(n: int = 64, tilt: float = 0.4):
    g = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(
        torch.cat([torch.ones(n, 1), (torch.rand(n, 2, generator=g) - 0.5) * 2 * tilt], dim=1), dim=-1)
    origins = torch.tensor([0.1, 0.5, 0.5]).expand(n, 3) + 0.05 * (torch.rand(n, 3, generator=g) - 0.5)
    origins[:, 0] = 0.1
    return origins.contiguous(), directions


def test_depth_opacity_and_normals_of_a_plane():
    origins, directions = _rays_towards_plus_x()
    occupancy = torch.ones(GRID_CELLS, dtype=torch.uint8)
    kwargs = dict(cone_angle=0.0, near_distance=0.0, background=torch.ones(3))
    maps = render_ray_maps(_plane_field(), origins, directions, occupancy, 1,
                           maps=("rgb", "depth", "opacity", "normals"), steps_per_round=(16, 16), **kwargs)
    expected = (_STOP - 0.1) / directions[:, 0]
    assert (maps["depth"] - expected).abs().max() < 1.5e-3  # within a marching step (√3/1024)
    torch.testing.assert_close(maps["opacity"], torch.ones(64), atol=1e-3, rtol=0)
    normals = torch.nn.functional.normalize(maps["normals"], dim=-1)
    torch.testing.assert_close(normals, torch.tensor([-1.0, 0, 0]).expand(64, 3), atol=1e-3, rtol=0)  # -∇σ
    # The colour is unchanged by the extra maps: exactly what render_rays gives.
    torch.testing.assert_close(maps["rgb"], render_rays(_plane_field(), origins, directions, occupancy, 1,
                                                        steps_per_round=(16, 16), **kwargs), atol=0, rtol=0)
    # A ray that misses the wall: depth and opacity 0, its colour the background.
    miss = render_ray_maps(_plane_field(), torch.tensor([[0.1, 0.5, 0.5]]), torch.tensor([[-1.0, 0.0, 0.0]]),
                           occupancy, 1, maps=("depth", "opacity", "rgb"), **kwargs)
    assert miss["depth"].item() == 0 and miss["opacity"].item() == 0 and (miss["rgb"] == 1).all()
    with pytest.raises(ValueError, match="unknown ray maps"):
        render_ray_maps(_plane_field(), origins, directions, occupancy, 1, maps=("albedo",), **kwargs)


@pytest.mark.parametrize("kernel_target", [None, "cpu"])
def test_per_ray_features_give_the_per_sample_result(kernel_target, request):
    """``ray_features`` (the NeRF network's SH of the view direction, computed once per ray) must render exactly what
    the field gives when it computes them per sample, for every map, in rounds and in two chunks."""
    if kernel_target == "cpu":
        request.getfixturevalue("host_cxx")
    origins, directions = _rays_towards_plus_x(48, tilt=0.5)
    occupancy = torch.ones(GRID_CELLS, dtype=torch.uint8)
    wall = _plane_field(x0=0.5, width=0.05, peak=40.0)  # a soft wall: rays take many samples over several rounds

    def features(d):  # (R, 3) -> (R, 4), a nonlinear function of the direction
        return torch.cat([torch.sin(3.0 * d), d[:, :1] * d[:, 1:2]], dim=-1)

    def colour(f):
        return torch.sigmoid(f[:, :3] + f[:, 3:])

    def per_sample(p, d):
        return wall(p, d)[0], colour(features(d))

    def per_ray(p, rays):  # the field gets the rays' rows and which row each sample reads
        assert isinstance(rays, RayRows) and len(rays) == p.shape[0] and rays.features.shape[1] == 4
        f = rays.gather()
        return wall(p, f)[0], colour(f)

    kwargs = dict(cone_angle=0.0, near_distance=0.0, background=torch.tensor([0.2, 0.4, 0.6]),
                  maps=("rgb", "depth", "opacity", "normals"), steps_per_round=(1, 8), chunk_rays=32,
                  kernel_target=kernel_target)
    ref = render_ray_maps(per_sample, origins, directions, occupancy, 1, **kwargs)
    out = render_ray_maps(per_ray, origins, directions, occupancy, 1, ray_features=features, **kwargs)
    assert ref["opacity"].min() > 0.5 and ref["rgb"].std(0).max() > 1e-3  # the rays saw the wall, in varied colours
    for key in ref:
        assert out[key].shape == ref[key].shape and torch.isfinite(out[key]).all()
        torch.testing.assert_close(out[key], ref[key], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kernel_target", [None, "cpu"])
def test_min_transmittance_stops_rays_sooner_within_its_bound(kernel_target, request):
    """A higher ``min_transmittance`` (instant-ngp's 0.01 for rendered frames) must query fewer samples and change a
    pixel by at most that transmittance times its colour's distance from the background; 0 marches every ray out of
    the box. Soft walls of varied colour, so that rays cross the threshold in the middle of rounds."""
    if kernel_target == "cpu":
        request.getfixturevalue("host_cxx")
    origins, directions = _rays_towards_plus_x(64, tilt=0.5)
    occupancy = torch.ones(GRID_CELLS, dtype=torch.uint8)
    wall = _plane_field(x0=0.4, width=0.05, peak=30.0)
    rows = []

    def field(p, d):
        rows.append(p.shape[0])
        return wall(p, d)[0], torch.sigmoid(torch.cat([4.0 * p[:, 1:], d[:, :1]], dim=1))

    background = torch.tensor([0.1, 0.9, 0.3])
    kwargs = dict(cone_angle=0.0, near_distance=0.0, background=background, maps=("rgb", "opacity"),
                  steps_per_round=(1, 8), kernel_target=kernel_target)
    out = {}
    for t in (0.0, 1e-4, 0.05):
        rows.clear()
        out[t] = (render_ray_maps(field, origins, directions, occupancy, 1, min_transmittance=t, **kwargs),
                  sum(rows))
    ref, n_ref = out[1e-4]
    assert ref["opacity"].min() > 0.99  # every ray ends in the wall
    assert out[0.0][1] > n_ref > out[0.05][1]  # fewer samples as the threshold rises
    for t, (maps, _) in out.items():
        left = ref["opacity"] - maps["opacity"]  # the transmittance given up, ≤ t (both stop within a round)
        assert float(left.abs().max()) <= max(t, 1e-4) + 1e-6, t
        bound = max(t, 1e-4) * float((1 - background).abs().max().clamp_min(background.max())) + 1e-6
        assert float((maps["rgb"] - ref["rgb"]).abs().max()) <= bound, t
    assert float((out[0.05][0]["rgb"] - ref["rgb"]).abs().max()) > 1e-4  # the difference is there to be seen
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="min_transmittance"):
            render_ray_maps(field, origins, directions, occupancy, 1, min_transmittance=bad, **kwargs)


def test_view_maps_are_in_world_units():
    from ngp_cli.tasks.nerf.views import render_view_map

    origins, directions = _rays_towards_plus_x(16, tilt=0.0)  # straight along +x from x = 0.1
    options = {"cone_angle": 0.0, "near_distance": 0.0, "chunk_rays": MIN_CHUNK_RAYS, "kernel_target": None}
    problem = SimpleNamespace(device=torch.device("cpu"), render_field=lambda: (_plane_field(), None), aabb_scale=1,
                              render_options=lambda: options,
                              model=SimpleNamespace(grid=SimpleNamespace(occupancy=torch.ones(GRID_CELLS,
                                                                                              dtype=torch.uint8))),
                              dataset=SimpleNamespace(scale=0.25))
    depth = render_view_map(problem, origins, directions, 4, 4, None, "depth")
    assert depth.shape == (4, 4) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, (_STOP - 0.1) / 0.25, atol=6e-3)  # world units: the ngp distance / scale
    acc = render_view_map(problem, origins, directions, 4, 4, None, "accumulation")
    np.testing.assert_allclose(acc, 1.0, atol=1e-3)
    normals = render_view_map(problem, origins, directions, 4, 4, None, "normals")
    np.testing.assert_allclose(normals.reshape(-1, 3), np.tile([-1.0, 0, 0], (16, 1)), atol=1e-3)
    img = map_image("normals", normals)
    assert img.dtype == np.uint8 and (img[..., 0] == 0).all() and (img[..., 1:] == 128).all()  # (n + 1) / 2


def test_maps_on_the_cpu_kernels_match_the_torch_reference(host_cxx):
    origins, directions = _rays_towards_plus_x(32)
    occupancy = torch.ones(GRID_CELLS, dtype=torch.uint8)
    kwargs = dict(cone_angle=0.0, near_distance=0.0, background=None, maps=("rgb", "depth", "opacity", "normals"),
                  steps_per_round=(16, 16))
    ref = render_ray_maps(_plane_field(), origins, directions, occupancy, 1, **kwargs)
    ker = render_ray_maps(_plane_field(), origins, directions, occupancy, 1, kernel_target="cpu", **kwargs)
    for key in ref:
        torch.testing.assert_close(ker[key], ref[key], atol=2e-4, rtol=1e-4)


def _sphere_sdf(centre=(0.5, 0.5, 0.5), radius=0.3):
    c = torch.tensor(centre)
    return lambda x: torch.linalg.vector_norm(x - c, dim=-1) - radius


def test_sphere_tracing_an_analytic_sphere():
    from ngp_cli.mesh.shade import orbit_cameras

    (origin, rotation), = orbit_cameras(np.array([0.5, 0.5, 0.5]), 0.3, np.array([0.0, 0.0, 1.0]), 1)
    dirs = pinhole_rays(rotation, 24, 20)
    o = np.broadcast_to(origin, dirs.shape)
    t, hit = sphere_trace(_sphere_sdf(), torch.tensor(o, dtype=torch.float32), torch.tensor(dirs, dtype=torch.float32))
    # The exact first intersection of each ray with the sphere.
    oc = o - 0.5
    b = (oc * dirs).sum(1)
    disc = b * b - ((oc * oc).sum(1) - 0.09)
    want_hit = disc > 0
    assert (hit.numpy() == want_hit).mean() > 0.98 and want_hit.sum() > 100  # (silhouette pixels may differ)
    both = hit.numpy() & want_hit & (disc > 1e-3)
    np.testing.assert_allclose(t.numpy()[both], (-b - np.sqrt(np.maximum(disc, 0)))[both], atol=2e-5)
    assert (t.numpy()[~hit.numpy()] == 0).all()
    # A ray starting inside the surface is a miss; one along an edge of the box never reaches it.
    t, hit = sphere_trace(_sphere_sdf(), torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.0, -1.0]]),
                          torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    assert not hit.any() and (t == 0).all()


def test_sdf_depth_and_normals_in_the_mesh_frame():
    from ngp_cli.mesh.io import UnitFrame
    from ngp_cli.tasks.sdf.evaluate import sdf_view_map

    frame = UnitFrame((100.0, 0.0, -50.0), 0.1)  # the unit cube is a 10-unit box around (100, 0, -50)
    problem = SimpleNamespace(frame=frame, device=torch.device("cpu"), field=_sphere_sdf(),
                              cfg=SimpleNamespace(sdf=SimpleNamespace(query_chunk=4096)))
    # A camera 20 units in front of the sphere (radius 3 units), looking at its centre along -y.
    rotation = np.stack([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]], axis=1)  # right = forward × up, up, forward
    origin = np.array([100.0, 20.0, -50.0])
    depth = sdf_view_map(problem, origin, rotation, 9, 9, "depth")
    assert depth.shape == (9, 9) and depth[4, 4] == pytest.approx(20.0 - 3.0, abs=1e-3)  # in the mesh's units
    assert depth[0, 0] == 0  # the corner rays miss
    normals = sdf_view_map(problem, origin, rotation, 9, 9, "normals")
    np.testing.assert_allclose(normals[4, 4], [0, 1, 0], atol=1e-4)  # outward, towards the camera
    hit = depth > 0
    np.testing.assert_allclose(np.linalg.norm(normals[hit], axis=-1), 1.0, atol=1e-5)
    assert (normals[~hit] == 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# A tiny trained NeRF run (torch backend, a few steps: these tests compare renders, not quality)

_NERF_FAST = ["--backend", "torch", "--steps", "5", "--set", "train.log_every=5", "--set", "train.eval_every=0",
              "--set", "train.final_eval_views=0", "--set", "nerf.render_views=0", "--set", "train.batch_size=16384",
              "--set", "nerf.n_rays_initial=256", "--set", "encoding.log2_hashmap_size=14",
              "--set", "nerf.grid_warmup_steps=16", "--set", "nerf.cone_angle=0.02"]  # steps up to 8x longer: fast


@pytest.fixture(scope="module")
def nerf_scene(tmp_path_factory) -> Path:
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    return make_synthetic_scene(tmp_path_factory.mktemp("scene"), n_train=8, n_val=2, resolution=16, seed=5)


@pytest.fixture(scope="module")
def nerf_run(nerf_scene, tmp_path_factory, app) -> Path:
    from typer.testing import CliRunner

    from tests.conftest import Invocation

    runs = tmp_path_factory.mktemp("runs")
    res = Invocation(CliRunner().invoke(app, ["train-nerf", str(nerf_scene), "--runs-dir", str(runs), *_NERF_FAST]))
    assert res.exit_code == 0, res.stderr
    return Path(res.last("done")["run_dir"])


def _val_view(nerf_scene: Path, k: int) -> tuple[np.ndarray, float]:
    meta = json.loads((nerf_scene / "transforms_val.json").read_text())
    return np.array(meta["frames"][k]["transform_matrix"], dtype=np.float64), float(meta["camera_angle_x"])


def _eval_view_pixels(run: Path, k: int) -> np.ndarray:
    """Held-out view k as ``ngp eval`` renders it (views.render_view on the val split), as 8-bit pixels."""
    from ngp_cli.tasks import discover_tasks
    from ngp_cli.tasks.nerf.data import load_split
    from ngp_cli.tasks.nerf.evaluate import load_run
    from ngp_cli.tasks.nerf.views import render_view

    _, problem, _ = load_run(discover_tasks()["nerf"], run, "torch")
    val = load_split(problem.cfg, "val")
    origins, directions = val.image_rays(k)
    background = (1.0, 1.0, 1.0) if val.white_background else (0.0, 0.0, 0.0)
    with torch.no_grad():
        pred = render_view(problem, origins, directions, val.height, val.width, background)
    return from_float(pred, np.uint8)


def _ingp_keyframe(c2w: np.ndarray, fov_deg: float) -> dict:
    """A base_cam.json keyframe for a NeRF-frame camera (instant-ngp's nerf_matrix_to_ngp with its default scale
    0.33 and offset 0.5, which the synthetic scene shares)."""
    from scipy.spatial.transform import Rotation

    m = c2w[:3].copy()
    m[:, 1:3] *= -1.0
    m[:, 3] = m[:, 3] * 0.33 + 0.5
    m = m[[1, 2, 0]]
    return {"R": Rotation.from_matrix(m[:, :3]).as_quat().tolist(), "T": m[:, 3].tolist(), "fov": fov_deg,
            "slice": 0.0, "scale": 1.5, "dof": 0.0}


def test_one_keyframe_paths_reproduce_the_eval_view(nerf_run, nerf_scene, ngp, tmp_path):
    c2w, fov = _val_view(nerf_scene, 1)  # square images: the vertical fov is the horizontal one
    paths = {
        "transforms": {"camera_angle_x": fov, "frames": [{"transform_matrix": c2w.tolist()}]},
        "nerfstudio": {"camera_type": "perspective", "render_width": 16, "render_height": 16, "fps": 24,
                       "camera_path": [{"camera_to_world": c2w.ravel().tolist(), "fov": math.degrees(fov)}]},
        "instant-ngp": {"loop": False, "path": [_ingp_keyframe(c2w, math.degrees(fov))]},
    }
    want = _eval_view_pixels(nerf_run, 1)
    for kind, doc in paths.items():
        (tmp_path / f"{kind}.json").write_text(json.dumps(doc))
        # Rays stopped at eval's transmittance (1e-4): what ngp eval scores, pixel for pixel.
        res = ngp("render", nerf_run, "--camera-path", tmp_path / f"{kind}.json", "--out", tmp_path / kind,
                  "--backend", "torch", "--min-transmittance", "1e-4")
        assert res.exit_code == 0, res.stderr
        m = res.last("done")["metrics"]
        assert (m["frames"], m["width"], m["height"], m["path_format"], m["min_transmittance"]) == \
            (1, 16, 16, kind, 1e-4)
        got = read_image(tmp_path / kind / "frame_00000.png")
        diff = np.abs(got.astype(int) - want.astype(int))
        if kind == "instant-ngp":  # a quaternion round trip: rays equal to float32 rounding
            assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (kind, diff.max())
        else:  # the very same rays: the very same pixels
            assert diff.max() == 0, (kind, diff.max())
    # By default frames stop at instant-ngp's 0.01: at most 1 % of the range away from the scored pixels.
    res = ngp("render", nerf_run, "--camera-path", tmp_path / "transforms.json", "--out", tmp_path / "default",
              "--backend", "torch")
    assert res.exit_code == 0 and res.last("done")["metrics"]["min_transmittance"] == 0.01, res.stderr
    got = read_image(tmp_path / "default" / "frame_00000.png")
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 3  # 0.01 · 255, plus rounding


def test_camera_path_videos_with_fps_resolution_and_seconds(nerf_run, nerf_scene, ngp, tmp_path):
    from ngp_cli.video import count_video_frames

    a, fov = _val_view(nerf_scene, 0)
    b, _ = _val_view(nerf_scene, 1)
    ns = tmp_path / "camera_path.json"
    ns.write_text(json.dumps({"camera_type": "perspective", "render_width": 12, "render_height": 8, "fps": 2,
                              "seconds": 1.0, "camera_path": [{"camera_to_world": m.ravel().tolist(),
                                                               "fov": math.degrees(fov)} for m in (a, b)]}))
    ingp = tmp_path / "base_cam.json"
    ingp.write_text(json.dumps({"path": [_ingp_keyframe(a, 40.0), _ingp_keyframe(b, 40.0)]}))
    cases = [  # (path, extra options, frames, fps, width, height)
        (ns, [], 2, 2, 12, 8),  # the file's frames, size and rate
        (ns, ["--fps", "4", "--resolution", "10x6"], 4, 4, 10, 6),  # resampled over the same second, resized
        (ingp, ["--fps", "3", "--resolution", "8x6"], 3, 3, 8, 6),  # 1 s per transition by default
        (ingp, ["--seconds", "2", "--fps", "2", "--resolution", "8x6"], 4, 2, 8, 6),
        (_DOCS / "base_cam.json", ["--fps", "1", "--resolution", "8x6"], 3, 1, 8, 6),  # the documented examples
        (_DOCS / "camera_path.json", ["--resolution", "8x6", "--seconds", "1.5"], 3, 2, 8, 6),
    ]
    for i, (path, extra, frames, fps, width, height) in enumerate(cases):
        out = tmp_path / f"v{i}.mp4"
        res = ngp("render", nerf_run, "--camera-path", path, "--out", out, "--backend", "torch", *extra)
        assert res.exit_code == 0, res.stderr
        m = res.last("done")["metrics"]
        assert (m["frames"], m["fps"], m["width"], m["height"]) == (frames, fps, width, height), (i, m)
        assert count_video_frames(out) == frames


def test_depth_accumulation_and_normal_outputs(nerf_run, ngp, tmp_path):
    out = tmp_path / "depth"
    common = ["--resolution", "8x6", "--backend", "torch"]
    res = ngp("render", nerf_run, "--orbit", "2", *common, "--output", "depth", "--out", out)
    assert res.exit_code == 0, res.stderr
    vmax = res.last("done")["metrics"]["depth_vmax"]
    assert sorted(p.name for p in out.iterdir()) == [f"frame_0000{k}.{e}" for k in range(2) for e in ("exr", "png")]
    depth = read_image(out / "frame_00000.exr")
    assert depth.shape == (6, 8, 1) and depth.dtype == np.float32 and (depth >= 0).all() and depth.max() > 0
    # The scene box is ~3 world units wide around the origin, the orbit ~4 units away: distances of a few units.
    assert 0.5 < vmax < 10.0
    np.testing.assert_array_equal(read_image(out / "frame_00000.png"), map_image("depth", depth[..., 0], vmax))
    # A shorter render into the same folder replaces the frames and removes the stale ones, EXRs included.
    res = ngp("render", nerf_run, "--orbit", "1", *common, "--output", "depth", "--out", out)
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["frame_00000.exr", "frame_00000.png"]
    # Depth as a video: the colour-mapped frames, by default beside the run's other renders.
    res = ngp("render", nerf_run, "--orbit", "1", *common, "--output", "depth")
    assert res.exit_code == 0, res.stderr
    assert res.last("done")["artifacts"]["out"].endswith("renders/orbit_depth.mp4")
    res = ngp("render", nerf_run, "--orbit", "1", *common, "--output", "accumulation", "--out", tmp_path / "acc")
    assert res.exit_code == 0, res.stderr
    acc = read_image(tmp_path / "acc" / "frame_00000.png")
    assert (acc[..., 0] == acc[..., 1]).all() and (acc[..., 1] == acc[..., 2]).all() and acc.max() > 0
    res = ngp("render", nerf_run, "--orbit", "1", *common, "--output", "normals", "--out", tmp_path / "n")
    assert res.exit_code == 0, res.stderr
    n = read_image(tmp_path / "n" / "frame_00000.png").astype(np.float64) / 255.0 * 2.0 - 1.0
    lengths = np.linalg.norm(n, axis=-1)
    assert np.abs(lengths[lengths > 0.5] - 1.0).max() < 0.02 and (lengths > 0.5).mean() > 0.5  # unit vectors


def _one_line(res, code: int) -> str:
    assert res.exit_code == code, (res.exit_code, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_bad_camera_paths_and_options_are_refused_before_rendering(nerf_run, ngp, tmp_path):
    out = tmp_path / "out"
    cases = [
        ("{]", [], 4, "malformed JSON"),
        (json.dumps({"path": []}), [], 4, "no keyframes ('path' is empty)"),
        (json.dumps({"keyframes": []}), [], 4, "no keyframes ('keyframes' is empty)"),
        (json.dumps({"path": [{"R": [0, 0, 0, 0], "T": [0, 0, 0], "fov": 50}]}), [], 4, "zero quaternion"),
        (json.dumps({"camera_path": [{"camera_to_world": [0] * 16, "fov": 50}]}), [], 4, "degenerate rotation"),
        (json.dumps({"frames": [{"transform_matrix": np.eye(4).tolist()}]}), ["--seconds", "2"], 2,
         "--seconds applies to keyframed paths"),
        (json.dumps({"path": [{"R": [0, 0, 0, 1], "T": [0, 0, 0], "fov": 50}]}),
         ["--dataparser-transforms", tmp_path / "dp.json"], 2, "--dataparser-transforms applies to nerfstudio"),
        (json.dumps({"path": [{"R": [0, 0, 0, 1], "T": [0, 0, 0], "fov": 50}]}), ["--seconds", "0"], 2,
         "--seconds must be positive"),
        (json.dumps({"camera_path": [{"camera_to_world": np.eye(4).ravel().tolist(), "fov": 50}]}),
         ["--dataparser-transforms", tmp_path / "missing.json"], 4, "missing.json: file does not exist"),
    ]
    for text, extra, code, message in cases:
        path = tmp_path / "path.json"
        path.write_text(text)
        line = _one_line(ngp("render", nerf_run, "--camera-path", path, "--out", out, *extra), code)
        assert message in line, line
    _one_line(ngp("render", nerf_run, "--orbit", "2", "--seconds", "3"), 2)
    _one_line(ngp("render", nerf_run, "--orbit", "2", "--output", "albedo"), 2)
    for value in ("1", "-0.5", "nan"):
        assert "--min-transmittance must be in [0, 1)" in _one_line(
            ngp("render", nerf_run, "--orbit", "2", "--min-transmittance", value, "--out", out), 2)
    assert "--min-transmittance applies to the network's frames" in _one_line(
        ngp("render", nerf_run, "--orbit", "2", "--min-transmittance", "0.1", "--baked", tmp_path / "b.safetensors",
            "--out", out), 2)
    assert not out.exists()  # nothing written
    image_run = tmp_path / "image_run"  # a task without any render: no depth either
    image_run.mkdir()
    (image_run / "config.yaml").write_text("task: image\n")
    assert "'image' runs have no 'ngp render'" in _one_line(ngp("render", image_run, "--orbit", "1", "--output",
                                                                "depth"), 2)


# ---------------------------------------------------------------------------------------------------------------------
# A tiny trained SDF run

_SDF_FAST = ["--backend", "torch", "--preset", "sdf-cpu", "--steps", "30", "--set", "encoding.log2_hashmap_size=14",
             "--set", "train.batch_size=8192", "--set", "train.log_every=10", "--set", "train.eval_every=0",
             "--set", "sdf.iou_points=4096", "--set", "sdf.mesh_resolution=32", "--set", "sdf.chamfer_points=2048",
             "--set", "sdf.render_views=0", "--set", "sdf.sample_bank=16384", "--set", "sdf.bank_refresh=512",
             "--set", "optimizer.learning_rate=1e-3"]


@pytest.fixture(scope="module")
def sdf_run(tmp_path_factory, app) -> Path:
    import trimesh
    from typer.testing import CliRunner

    from tests.conftest import Invocation

    folder = tmp_path_factory.mktemp("sdf")
    sphere = trimesh.creation.icosphere(subdivisions=3)
    mesh = folder / "blob.obj"
    trimesh.Trimesh(np.asarray(sphere.vertices) * [3.0, 2.0, 2.0] + [100.0, 0.0, -50.0], sphere.faces,
                    process=False).export(mesh)
    res = Invocation(CliRunner().invoke(app, ["train-sdf", str(mesh), "--runs-dir", str(folder / "runs"),
                                              *_SDF_FAST]))
    assert res.exit_code == 0, res.stderr
    return Path(res.last("done")["run_dir"])


def test_sdf_run_renders_depth_and_normals_of_its_sdf(sdf_run, ngp, tmp_path):
    common = ["--orbit", "2", "--resolution", "20x16", "--backend", "torch"]
    res = ngp("render", sdf_run, *common, "--out", tmp_path / "rgb")
    assert res.exit_code == 0, res.stderr
    res = ngp("render", sdf_run, *common, "--output", "depth", "--out", tmp_path / "depth")
    assert res.exit_code == 0, res.stderr
    depth = read_image(tmp_path / "depth" / "frame_00000.exr")[..., 0]
    shaded = read_image(tmp_path / "rgb" / "frame_00000.png")
    mesh_hit = (shaded < 255).any(axis=-1)  # the marching-cubes mesh, ray cast from the same cameras
    assert mesh_hit.sum() > 20
    assert (depth[mesh_hit] > 0).mean() > 0.9  # the SDF's own surface is where its mesh is
    # The blob (6 x 4 x 4 units) framed by an orbit: distances of the order of its size, in the mesh's units.
    assert 3.0 < np.median(depth[mesh_hit]) < 40.0
    np.testing.assert_array_equal(read_image(tmp_path / "depth" / "frame_00000.png"),
                                  map_image("depth", depth, res.last("done")["metrics"]["depth_vmax"]))
    res = ngp("render", sdf_run, *common, "--output", "normals", "--out", tmp_path / "n")
    assert res.exit_code == 0, res.stderr
    n = read_image(tmp_path / "n" / "frame_00000.png").astype(np.float64) / 255.0 * 2.0 - 1.0
    lengths = np.linalg.norm(n, axis=-1)
    hit = depth > 0
    assert np.abs(lengths[hit] - 1.0).max() < 0.02 and np.abs(lengths[~hit]).max() < 0.01  # misses: grey
    line = _one_line(ngp("render", sdf_run, *common, "--output", "accumulation", "--out", tmp_path / "a"), 2)
    assert "rgb, depth, normals" in line and not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------------------------------------------------
# ngp bench --run: the render benchmarks of a trained run (issue 17)


def test_bench_times_a_runs_view_on_the_inference_path_and_the_legacy_schedule(nerf_run, ngp):
    res = ngp("bench", "--backend", "torch", "--run", nerf_run, "--only", "render_network", "--only",
              "render_network_legacy", "--only", "render_frame", "--only", "render_network_ingp", "--repeats", "2",
              "--warmup", "0")
    assert res.exit_code == 0, res.stderr
    rows = {e["benchmark"]: e for e in res.events if e["event"] == "bench"}
    assert set(rows) == {"render_network", "render_network_legacy", "render_frame", "render_network_ingp"}
    for r in rows.values():  # one 16x16 held-out view; ns per pixel is ms per megapixel
        assert r["batch"] == 256 and r["median_s"] > 0 and r["backend"] == "torch"
    ratio = rows["render_network_legacy"]["median_s"] / rows["render_network"]["median_s"]
    frame = rows["render_network"]["median_s"] / rows["render_frame"]["median_s"]
    rounds = rows["render_network_ingp"]["median_s"] / rows["render_network"]["median_s"]
    assert res.last("done")["ratios"] == {"render_network": {"torch@cpu": round(ratio, 3)},
                                          "render_frame": {"torch@cpu": round(frame, 3)},
                                          "render_network_rounds": {"torch@cpu": round(rounds, 3)}}
    assert "render speed-ups (this run): render_network over render_network_legacy on torch@cpu" in res.stderr
    assert "render_network over render_network_ingp on torch@cpu" in res.stderr


def test_bench_renders_a_run_whose_dataset_moved_with_data(nerf_run, nerf_scene, ngp, tmp_path):
    import shutil

    from ngp_cli.errors import EXIT_DATA, EXIT_USAGE

    moved = tmp_path / "moved_scene"
    shutil.copytree(nerf_scene, moved)
    run = tmp_path / "run"
    shutil.copytree(nerf_run, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(str(nerf_scene), str(tmp_path / "gone")))
    args = ("bench", "--backend", "torch", "--run", run, "--only", "render_frame", "--repeats", "1", "--warmup", "0")
    res = ngp(*args)
    assert res.exit_code == EXIT_DATA and "--data PATH" in res.stderr, res.stderr
    res = ngp(*args, "--data", moved)
    assert res.exit_code == 0, res.stderr
    assert [e["benchmark"] for e in res.events if e["event"] == "bench"] == ["render_frame"]
    res = ngp("bench", "--backend", "torch", "--only", "mlp_inference", "--data", moved)
    assert res.exit_code == EXIT_USAGE and "--data needs --run RUN" in res.stderr


def test_bench_render_requests_need_a_nerf_run(nerf_run, sdf_run, ngp, tmp_path):
    from ngp_cli.errors import EXIT_DATA, EXIT_USAGE

    res = ngp("bench", "--backend", "torch", "--only", "render_network")
    assert res.exit_code == EXIT_USAGE and "render_network measures a trained NeRF run: give --run RUN" in res.stderr
    res = ngp("bench", "--backend", "torch", "--baked", tmp_path / "x.safetensors")
    assert res.exit_code == EXIT_USAGE and "--baked needs --run RUN" in res.stderr
    res = ngp("bench", "--backend", "torch", "--run", nerf_run, "--only", "render_baked")
    assert res.exit_code == EXIT_USAGE and "render_baked needs --baked FILE" in res.stderr
    res = ngp("bench", "--backend", "torch", "--run", nerf_run, "--baked", tmp_path / "missing.safetensors")
    assert res.exit_code == EXIT_DATA and "no such file" in res.stderr
    res = ngp("bench", "--backend", "torch", "--run", sdf_run, "--only", "render_network")
    assert res.exit_code == EXIT_USAGE and "'sdf' runs have no render benchmarks" in res.stderr
    assert "Traceback" not in res.stderr

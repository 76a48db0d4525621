"""Neural radiance caching: the path tracer against known answers (furnace, BSDF sampling), the cache learning a
synthetic radiance field, scene files with bad input, and ``ngp train-nrc`` end to end on a tiny image."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from ngp_cli.errors import DataError
from ngp_cli.tasks.nrc.scene import Camera as SceneCamera
from ngp_cli.tasks.nrc.scene import Material, Scene, cornell_box, load_scene
from ngp_cli.tasks.nrc.tracer import Camera, Hit, SceneTensors, bsdf_eval, bsdf_sample, render_image


def _seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


@pytest.mark.parametrize("albedo", [0.5, 0.8])
def test_furnace_closed_diffuse_emitting_sphere(albedo):
    """Inside a closed sphere whose every point emits Le = 1 and reflects diffusely with albedo a, the radiance is
    Le / (1 − a) everywhere: emission, next-event estimation and Russian roulette together must reproduce it."""
    seed = _seed()
    s = trimesh.creation.icosphere(subdivisions=2)
    scene = Scene("furnace", np.asarray(s.vertices), np.asarray(s.faces)[:, ::-1].copy(),  # normals point inwards
                  np.zeros(len(s.faces), dtype=np.int64), [Material(diffuse=(albedo,) * 3, emission=(1.0, 1.0, 1.0))],
                  SceneCamera(origin=(0.2, -0.1, 0.0), target=(1.0, 0.3, 0.2), up=(0, 1, 0), fov=70))
    st = SceneTensors(scene, torch.device("cpu"))
    camera = Camera.from_scene(scene, 16, 16, torch.device("cpu"))
    image, _ = render_image(st, camera, 128, torch.Generator().manual_seed(seed), max_depth=256)
    expected = 1.0 / (1.0 - albedo)
    assert abs(float(image.mean()) - expected) < 0.02 * expected, (seed, float(image.mean()))
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("kd, ks, roughness", [(0.8, 0.0, 0.5), (0.3, 0.6, 0.2), (0.0, 0.9, 0.35)])
def test_bsdf_sampling_matches_its_density(kd, ks, roughness):
    """The directional albedo ∫ f cos dω estimated with bsdf_sample's weights (f cos / p) equals the estimate by
    uniform hemisphere sampling of bsdf_eval: the sampler's pdf is the density it samples from."""
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    n = 400_000
    normal = torch.nn.functional.normalize(torch.tensor([[0.3, 1.0, -0.2]]), dim=1).expand(n, 3)
    wo = torch.nn.functional.normalize(torch.tensor([[0.5, 0.8, 0.1]]), dim=1).expand(n, 3)
    exponent = max(2.0 / roughness**2 - 2.0, 1.0)
    h = Hit(x=torch.zeros(n, 3), n=normal, cos_in=torch.ones(n), kd=torch.full((n, 3), kd),
            ks=torch.full((n, 3), ks), exponent=torch.full((n,), exponent), roughness=torch.full((n,), roughness),
            emitted=torch.zeros(n, 3))
    _, weight, _ = bsdf_sample(h, wo, torch.rand(n, 3, generator=g))
    by_sampling = float(weight[:, 0].mean())
    u = torch.randn(n, 3, generator=g)
    wi = torch.nn.functional.normalize(u, dim=1)
    wi = torch.where(((wi * normal).sum(1) < 0).unsqueeze(1), -wi, wi)
    f, pdf = bsdf_eval(h, wo, wi)
    uniform = float((f[:, 0] * (wi * normal).sum(1) * 2 * math.pi).mean())
    assert by_sampling == pytest.approx(uniform, rel=0.03), seed
    assert by_sampling <= kd + ks + 0.02, seed  # energy conservation


def test_cache_learns_a_synthetic_radiance_field():
    from ngp_cli.config import resolve
    from ngp_cli.nn.backend import resolve_backend
    from ngp_cli.tasks.nrc import NrcConfig
    from ngp_cli.tasks.nrc.cache import NeuralRadianceCache
    from ngp_cli.train import make_loss, make_optimizer

    seed = _seed()
    cfg = resolve(NrcConfig, "nrc", "nrc", ["encoding.log2_hashmap_size=12", "network.n_hidden_layers=2"],
                  default_preset="nrc")
    backend = resolve_backend("auto", "cpu")
    model = NeuralRadianceCache(cfg, torch.zeros(3), torch.ones(3), generator=torch.Generator().manual_seed(seed),
                                kernel_target=backend.kernel_target)
    opt = make_optimizer(model, cfg.optimizer)
    loss_fn = make_loss(cfg.loss)
    g = torch.Generator().manual_seed(seed)

    def batch(n):
        x = torch.rand(n, 3, generator=g)
        wo = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
        nrm = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
        rough = torch.rand(n, 1, generator=g)
        kd = torch.rand(n, 3, generator=g) * 0.8
        ks = torch.rand(n, 3, generator=g) * 0.2
        feats = torch.cat([x, wo, nrm, rough, kd, ks], dim=1)
        radiance = (1.2 + torch.sin(4 * x[:, :1]) * torch.cos(3 * x[:, 1:2])) * (0.6 + 0.4 * nrm[:, 1:2]) * (kd + ks)
        return feats, radiance

    test_x, test_y = batch(4096)

    def rel_error():
        with torch.no_grad():
            return float(((model(test_x) - test_y).norm(dim=1) / test_y.norm(dim=1)).mean())

    before = rel_error()
    for _ in range(300):
        x, y = batch(4096)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = rel_error()
    assert after < 0.1 and after < 0.2 * before, (seed, before, after)


def test_cornell_box_is_closed_with_one_light():
    scene = cornell_box()
    mats = scene.material_arrays()
    emissive = np.nonzero(mats["emission"].max(axis=1) > 0)[0]
    assert len(emissive) == 1
    lit = scene.face_material == emissive[0]
    assert lit.sum() == 2
    st = SceneTensors(scene, torch.device("cpu"))
    assert torch.allclose(st.normal[torch.from_numpy(lit)], torch.tensor([0.0, -1.0, 0.0]))  # the light faces down
    assert st.light_area_total == pytest.approx(0.22 * 0.22, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Scene files

_GOOD = """
camera: {origin: [0.5, 0.5, 2.0], target: [0.5, 0.5, 0.0], fov: 45}
objects:
  - mesh: box.obj
    transform: {scale: 0.3, translate: [0.5, 0.15, 0.5]}
    material: {diffuse: [0.6, 0.6, 0.6], specular: [0.2, 0.2, 0.2], roughness: 0.3}
  - quad: [[0, 0, 1], [1, 0, 1], [1, 0, 0], [0, 0, 0]]
  - quad: [[0.3, 1, 0.3], [0.7, 1, 0.3], [0.7, 1, 0.7], [0.3, 1, 0.7]]
    material: {emission: [5, 5, 5]}
"""


@pytest.fixture
def scene_dir(tmp_path) -> Path:
    trimesh.creation.box().export(tmp_path / "box.obj")
    (tmp_path / "scene.yaml").write_text(_GOOD)
    return tmp_path


def test_load_scene(scene_dir):
    scene = load_scene(scene_dir / "scene.yaml")
    assert len(scene.faces) == 12 + 2 + 2 and len(scene.materials) == 3
    assert scene.camera.fov == 45.0 and scene.materials[0].roughness == 0.3
    assert np.allclose(scene.vertices[:8].max(axis=0), [0.65, 0.3, 0.65])


@pytest.mark.parametrize("text, message", [
    ("objects: [1, 2\n", "malformed YAML"),
    ("objects: []\n", "non-empty list"),
    ("objcts: []\n", "did you mean 'objects'"),
    ("objects:\n  - mesh: nope.obj\n", "no such file"),
    ("objects:\n  - quad: [[0,0,0],[1,0,0],[1,1,0],[0,1,0]]\n    material: {diffuse: [0.8, 0.8, 0.8], "
     "specular: [0.5, 0.5, 0.5]}\n", r"diffuse \+ specular <= 1"),
    ("objects:\n  - quad: [[0,0,0],[1,0,0],[1,1,0],[0,1,0]]\n    material: {roughness: 0}\n", "roughness"),
    ("objects:\n  - quad: [[0,0,0],[1,0,0],[1,1,0],[0,1,0]]\n    material: {emision: [1, 1, 1]}\n",
     "did you mean 'emission'"),
    ("objects:\n  - quad: [[0,0,0],[1,0,0],[1,1,0],[0,1,0]]\n", "no object has an emission"),
    ("camera: {fov: 500}\nobjects:\n  - quad: [[0,0,0],[1,0,0],[1,1,0],[0,1,0]]\n", "fov"),
    ("objects:\n  - quad: [[0,0,0],[1,0,0],[1,1,0]]\n    material: {emission: [1, 1, 1]}\n", "4 corners"),
])
def test_bad_scene_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_scene(path)


# ---------------------------------------------------------------------------------------------------------------------
# End to end

_TINY = ["--set", "nrc.width=24", "--set", "nrc.height=20", "--set", "nrc.warmup_frames=1", "--set",
         "nrc.train_paths=512", "--set", "nrc.reference_spp=16", "--set", "encoding.log2_hashmap_size=12",
         "--set", "network.n_hidden_layers=2"]


def test_train_nrc_on_the_cornell_box(ngp, tmp_path):
    res = ngp("train-nrc", "--frames", "3", "--spp", "1", "--runs-dir", tmp_path / "runs", "--json", *_TINY)
    assert res.exit_code == 0, res.stderr
    frames = [e for e in res.events if e["event"] == "frame"]
    assert [f["frame"] for f in frames] == [1, 2, 3] and all(f["train_vertices"] > 512 for f in frames)
    done = res.last("done")
    m = done["metrics"]
    for key in ("relmse_nrc", "relmse_pt_equal_time", "mse_nrc", "mse_pt_equal_time"):
        assert math.isfinite(m[key]) and m[key] > 0, key
    assert m["nrc_frames_accumulated"] == 2 and m["pt_frames"] >= 1 and m["pt_time_s"] >= m["nrc_time_s"]
    assert 0.0 < m["cache_share"] < 1.0
    run = Path(done["run_dir"])
    # the one frame naming scheme of ngp render and train-nrc: frame_00000.png is the frame of the "frame": 1 line
    assert sorted(p.name for p in (run / "frames").iterdir()) == ["frame_00000.png", "frame_00001.png",
                                                                 "frame_00002.png"]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temporary frame folder
    import imageio.v3 as iio

    side = iio.imread(done["artifacts"]["side_by_side"])
    assert side.shape == (20, 3 * 24 + 2 * 4, 3)
    assert done["artifacts"]["checkpoint"].endswith(".safetensors") and Path(done["artifacts"]["checkpoint"]).is_file()
    assert json.loads((run / "summary.json").read_text())["metrics"]["relmse_nrc"] == m["relmse_nrc"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == [1, 2, 3]


def test_train_nrc_with_fewer_frames_than_the_warmup_warns_and_keeps_the_last(ngp, tmp_path):
    """Regression: --frames below nrc.warmup_frames accumulated nothing and compared an empty image, silently."""
    res = ngp("train-nrc", "--frames", "2", "--spp", "1", "--runs-dir", tmp_path / "runs", *_TINY,
              "--set", "nrc.warmup_frames=4")
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "nrc.frames=2" in warnings[0] and "nrc.warmup_frames=4" in warnings[0]
    m = res.last("done")["metrics"]
    assert m["nrc_frames_accumulated"] == 1 and m["warmup_frames"] == 1 and m["relmse_nrc"] < 10.0
    quiet = ngp("train-nrc", "--frames", "3", "--spp", "1", "--runs-dir", tmp_path / "runs", *_TINY)
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr  # _TINY: warmup 1 < 3 frames


def test_train_nrc_help_describes_its_json_lines(app):
    import typer

    command = typer.main.get_command(app).commands["train-nrc"]
    text = next(p.help for p in command.params if "--json" in p.opts)
    assert '{"event":"frame"} JSON line per rendered frame' in text and "step" not in text


def test_train_nrc_with_a_scene_file(ngp, tmp_path, scene_dir):
    res = ngp("train-nrc", scene_dir / "scene.yaml", "--frames", "2", "--spp", "1", "--runs-dir", tmp_path / "runs",
              *_TINY)
    assert res.exit_code == 0, res.stderr
    assert res.last("done")["run_dir"].endswith("-scene")


def test_train_nrc_bad_scene_is_one_line(ngp, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objects: [1, 2\n")
    res = ngp("train-nrc", bad, "--frames", "1", "--runs-dir", tmp_path / "runs", *_TINY)
    assert res.exit_code == 4
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("ngp:")]
    assert len(lines) == 1 and "malformed YAML" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()

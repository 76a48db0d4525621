"""``ngp fit-image``: the sampler, the run directory it writes, resume, Ctrl-C, formats and a real fit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ngp_cli.images import read_image, write_image
from ngp_cli.tasks.gigapixel.data import ImageTarget, pixel_centers

# Small and fast: the whole CLI path on a CPU in a second or two.
FAST = ["--set", "encoding.n_levels=4", "--set", "encoding.log2_hashmap_size=12", "--set", "network.n_neurons=16",
        "--set", "train.batch_size=1024", "--set", "train.log_every=2"]


# -- the sampler -------------------------------------------------------------------------------------------------------

def _sample(t: ImageTarget, uv: np.ndarray) -> np.ndarray:
    return t.sample(torch.from_numpy(uv)).numpy()


def test_bilinear_lookup_hits_texels_at_centres_and_blends_between():
    rng = np.random.default_rng()
    img = rng.integers(0, 65535, (7, 5, 3), dtype=np.uint16)
    t = ImageTarget(img)
    uv = pixel_centers(7, 5, 0, 7)
    np.testing.assert_allclose(_sample(t, uv), img.reshape(-1, 3) / 65535.0, atol=2e-6)
    # halfway between columns 1 and 2 of row 3: the mean of the two texels
    mid = np.array([[2.0 / 5, 3.5 / 7]], dtype=np.float32)
    np.testing.assert_allclose(_sample(t, mid)[0], (img[3, 1].astype(np.float64) + img[3, 2]) / 2 / 65535, atol=2e-6)
    # the border texels extend outwards
    corner = np.array([[0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(_sample(t, corner), np.stack([img[0, 0], img[-1, -1]]) / 65535.0, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float16, np.float32])
def test_bilinear_lookup_matches_a_float64_reference_for_every_texel_dtype(dtype):
    rng = np.random.default_rng()
    h, w = 9, 13
    if np.dtype(dtype).kind == "u":
        img = rng.integers(0, np.iinfo(dtype).max + 1, (h, w, 3)).astype(dtype)  # the top values too (uint16 sign bit)
        scale = float(np.iinfo(dtype).max)
    else:
        img = rng.uniform(-0.5, 4.0, (h, w, 3)).astype(dtype)  # HDR values above 1 are kept
        scale = 1.0
    uv = rng.uniform(-0.1, 1.1, (500, 2)).astype(np.float32)
    px = np.clip(uv[:, 0].astype(np.float64) * w - 0.5, 0, w - 1)  # clamping the position = extending the border
    py = np.clip(uv[:, 1].astype(np.float64) * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (px - x0)[:, None], (py - y0)[:, None]
    ref = img.astype(np.float64) / scale
    want = ((ref[y0, x0] * (1 - fx) + ref[y0, x1] * fx) * (1 - fy) + (ref[y1, x0] * (1 - fx) + ref[y1, x1] * fx) * fy)
    got = _sample(ImageTarget(img), uv)
    assert got.dtype == np.float32 and got.shape == (500, 3)
    np.testing.assert_allclose(got, want, atol=5e-6 * max(1.0, np.abs(ref).max()))


def test_sampler_keeps_the_stored_dtype_and_matches_rows():
    img = np.random.default_rng().integers(0, 255, (4, 6, 1), dtype=np.uint8)
    t = ImageTarget(img)
    assert t.image.dtype == np.uint8 and t.image is img
    np.testing.assert_allclose(t.rows(1, 3), img[1:3] / 255.0, rtol=1e-6)  # float32 reciprocal rounding
    assert pixel_centers(4, 6, 1, 3).shape == (12, 2)
    assert t.natural_max_resolution() == 3 and t.natural_max_resolution(2.0) == 12


# -- the command -------------------------------------------------------------------------------------------------------

def fit(ngp, photo, runs, *extra):
    res = ngp("fit-image", photo, "--runs-dir", runs, *FAST, *extra)
    assert res.exit_code == 0, (res.stderr, res.exception)
    return res


def test_fit_image_writes_a_complete_run_directory(ngp, astronaut_crop, tmp_path):
    res = fit(ngp, astronaut_crop, tmp_path / "runs", "--steps", "6", "--json")
    kinds = [e["event"] for e in res.events]
    assert kinds == ["start", "step", "step", "step", "done"]
    done = res.last("done")
    run = Path(done["run_dir"])
    assert run.parent == tmp_path / "runs" / "image" and run.name.endswith("astro_crop")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "input.json", "metrics.jsonl",
                                                     "renders", "summary.json"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4, 6]
    for m in metrics:
        assert {"step", "loss", "psnr", "samples_per_s", "elapsed_s"} <= set(m)
    assert json.loads((run / "summary.json").read_text())["metrics"] == done["metrics"]
    assert done["metrics"]["steps"] == 6
    assert 0.0 <= done["metrics"]["compile_s"] and 0.0 < done["metrics"]["train_s"]  # compiling is not training
    from ngp_cli.hardware import cpuinfo, isa_features

    assert done["machine"]["cpu"] == cpuinfo()[0] and done["machine"]["isa"] == isa_features()
    assert done["machine"]["paths"]["cpu_mlp"]["path"] in ("bf16", "fp32", "torch")
    rec = read_image(done["artifacts"]["reconstruction"])
    assert rec.shape == (96, 128, 3) and rec.dtype == np.uint8
    # The reported full-image PSNR is that of the written reconstruction (up to its 8-bit rounding).
    from ngp_cli.metrics import psnr

    ref = read_image(astronaut_crop) / 255.0
    assert abs(psnr(rec / 255.0, ref) - done["metrics"]["psnr"]) < 0.1
    assert read_image(done["artifacts"]["error_map"]).shape == (96, 128, 3)
    ckpt = load_file(done["artifacts"]["checkpoint"])
    assert "model.encoding.params" in ckpt and "rng.generator" in ckpt
    assert "step" in res.stderr or "PSNR" in res.stderr  # human text goes to stderr


def test_without_json_stdout_has_only_the_done_line(ngp, astronaut_crop, tmp_path):
    res = fit(ngp, astronaut_crop, tmp_path / "runs", "--steps", "2", "--render-scale", "0.5")
    assert [e["event"] for e in res.events] == ["done"]
    assert read_image(res.last("done")["artifacts"]["reconstruction"]).shape == (48, 64, 3)


def test_resume_equals_an_uninterrupted_run(ngp, astronaut_crop, tmp_path):
    straight = fit(ngp, astronaut_crop, tmp_path / "a", "--steps", "6").last("done")
    first = fit(ngp, astronaut_crop, tmp_path / "b", "--steps", "3").last("done")
    resumed = ngp("fit-image", "--resume", first["run_dir"], "--steps", "6")
    assert resumed.exit_code == 0, resumed.stderr
    second = resumed.last("done")
    assert second["run_dir"] == first["run_dir"]
    a, b = load_file(straight["artifacts"]["checkpoint"]), load_file(second["artifacts"]["checkpoint"])
    for key in a:
        if key.startswith(("model.", "optim.")):
            assert torch.equal(a[key], b[key]), key
    assert second["metrics"]["psnr"] == straight["metrics"]["psnr"]
    run = Path(second["run_dir"])
    assert (run / "summary-step3.json").is_file()  # the earlier result is archived, not destroyed
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [2, 3, 4, 6]


def test_max_resolution_follows_the_photo_size(ngp, astronaut_crop, tmp_path):
    import yaml

    runs = []
    for extra in ([], ["--set", "image.max_resolution_factor=0.5"], ["--set", "encoding.max_resolution=77"]):
        done = fit(ngp, astronaut_crop, tmp_path / "runs", "--steps", "1", *extra).last("done")
        runs.append(yaml.safe_load((Path(done["run_dir"]) / "config.yaml").read_text())["encoding"])
    assert [r["max_resolution"] for r in runs] == [256, 64, 77]  # 128x96 photo: image-cpu's 2x, 0.5x, or as set
    assert all(r["per_level_scale"] is None for r in runs)


def test_resume_rejects_model_changes(ngp, astronaut_crop, tmp_path):
    first = fit(ngp, astronaut_crop, tmp_path / "r", "--steps", "2").last("done")
    res = ngp("fit-image", "--resume", first["run_dir"], "--set", "encoding.n_levels=8")
    assert res.exit_code == 3 and "cannot change on --resume" in res.stderr


@pytest.mark.parametrize("shape, dtype, suffix", [
    ((40, 56, 1), np.uint16, ".png"),
    ((40, 56, 4), np.uint8, ".png"),
    ((40, 56, 3), np.float32, ".exr"),
    ((40, 56, 3), np.uint8, ".tif"),
])
def test_formats_round_trip_through_fit(ngp, tmp_path, shape, dtype, suffix):
    rng = np.random.default_rng()
    img = (rng.random(shape) * (np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0)).astype(dtype)
    photo = tmp_path / f"photo{suffix}"
    write_image(photo, img)
    done = fit(ngp, photo, tmp_path / "runs", "--steps", "2").last("done")
    rec = read_image(done["artifacts"]["reconstruction"])
    assert rec.shape == shape and rec.dtype == dtype
    assert Path(done["artifacts"]["reconstruction"]).suffix == {".png": ".png", ".exr": ".exr", ".tif": ".tif"}[suffix]


def test_nan_loss_is_reported_as_diverged(ngp, astronaut_crop, tmp_path):
    res = ngp("-q", "fit-image", astronaut_crop, "--runs-dir", tmp_path / "runs", *FAST, "--steps", "50",
              "--set", "optimizer.learning_rate=1e30", "--set", "network.output_activation=Exponential")
    assert res.exit_code == 7, res.stderr
    assert "loss is" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "runs").glob("**/summary.json"))


def test_ctrl_c_writes_a_checkpoint_then_resume_finishes(astronaut_crop, tmp_path):
    cmd = [sys.executable, "-m", "ngp_cli", "fit-image", str(astronaut_crop), "--runs-dir", str(tmp_path / "runs"),
           *FAST, "--steps", "100000", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    start = json.loads(proc.stdout.readline())
    assert start["event"] == "start"
    json.loads(proc.stdout.readline())  # the first step line: training is under way
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = json.loads(out.splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 130
    run = Path(start["run_dir"])
    assert not (run / "summary.json").exists()
    steps = [s for s in sorted((run / "checkpoints").glob("step-*.json"))]
    assert steps, "no checkpoint written on Ctrl-C"
    step = json.loads(steps[-1].read_text())["step"]
    assert step >= 2
    proc = subprocess.run([sys.executable, "-m", "ngp_cli", "fit-image", "--resume", str(run), "--steps",
                           str(step + 2)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["metrics"]["steps"] == step + 2


PSNR_THRESHOLD = 33.0  # measured 34.07, 34.35, 34.08 dB with seeds 1-3 (2 s each) on the 2-core CI machine


def test_real_fit_reaches_psnr_threshold(ngp, astronaut_crop, tmp_path):
    """A 96x128 crop of the astronaut photo with the paper's image model (T shrunk to 2^16, batch 2^13)."""
    t0 = time.perf_counter()
    res = ngp("fit-image", astronaut_crop, "--runs-dir", tmp_path / "runs", "--steps", "200",
              "--set", "encoding.log2_hashmap_size=16", "--set", "train.batch_size=8192")
    assert res.exit_code == 0, res.stderr
    psnr = res.last("done")["metrics"]["psnr"]
    assert psnr >= PSNR_THRESHOLD, f"PSNR {psnr:.2f} dB after 200 steps ({time.perf_counter() - t0:.1f} s)"


def test_real_hdr_photo_from_shared_data(ngp, shared_data_dir, tmp_path):
    """albert.exr (1024x1024 float32 RGBA, instant-ngp's sample image) with the CPU preset for 100 steps."""
    photo = shared_data_dir / "image" / "albert" / "albert.exr"
    if not photo.is_file():
        pytest.skip(f"{photo} not present")
    res = ngp("fit-image", photo, "--runs-dir", tmp_path / "runs", "--steps", "100")
    assert res.exit_code == 0, res.stderr
    done = res.last("done")
    # measured 35.75 and 35.11 dB with seeds 1 and 2 (9 s of training each on the 2-core CI machine)
    assert done["metrics"]["psnr"] >= 34.0
    rec = read_image(done["artifacts"]["reconstruction"])
    assert rec.shape == (1024, 1024, 4) and rec.dtype == np.float32


def test_resume_may_switch_between_torch_and_kernel_backends(ngp, astronaut_crop, tmp_path):
    """torch.optim.Adam and the kernels' tcnn Adam read each other's checkpoints (scalar vs per-entry step counts)."""
    from ngp_cli.nn.backend import cpu_kernels_available

    if not cpu_kernels_available():
        pytest.skip("no host C++ compiler for the cpu backend")
    first = fit(ngp, astronaut_crop, tmp_path / "r", "--steps", "2", "--backend", "torch").last("done")
    for backend, steps in (("cpu", 4), ("torch", 6)):
        res = ngp("fit-image", "--resume", first["run_dir"], "--backend", backend, "--steps", str(steps))
        assert res.exit_code == 0, res.stderr
        assert f"backend {backend} on cpu" in res.stderr and res.last("done")["metrics"]["steps"] == steps
    ckpt = load_file(res.last("done")["artifacts"]["checkpoint"])
    assert all(torch.isfinite(v).all() for k, v in ckpt.items() if k.startswith("model."))

"""``ngp view`` (issue 18): the viewer's camera conversions and camera-path export, the server's address rules, and the
whole viewer in a real browser (headless Chromium, Debian's package; skipped with a reason when it is absent)."""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from ngp_cli.tasks.nerf.viewer import _path_name, nerfstudio_camera_path
from ngp_cli.viewer.frames import ViewCamera, c2w_to_viser, fit_size, viser_to_c2w
from ngp_cli.viewer.server import is_loopback

viser = pytest.importorskip("viser", reason="the viewer extra (viser) is not installed")


def _random_c2w(rng: np.random.Generator) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return np.concatenate([Rotation.random(random_state=rng).as_matrix(), rng.normal(size=(3, 1))], axis=1)


def test_viser_camera_conversion_round_trips_and_follows_opencv_axes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        c2w = _random_c2w(rng)
        wxyz, pos = c2w_to_viser(c2w)
        assert np.allclose(viser_to_c2w(wxyz, pos), c2w, atol=1e-12)
    # viser's identity camera looks down world +z with y down (OpenCV); in OpenGL axes it looks down -z_cam = +z.
    c2w = viser_to_c2w((1.0, 0.0, 0.0, 0.0), (1.0, 2.0, 3.0))
    assert np.allclose(-c2w[:, 2], [0.0, 0.0, 1.0]) and np.allclose(c2w[:, 1], [0.0, -1.0, 0.0])
    assert np.allclose(c2w[:, 3], [1.0, 2.0, 3.0])


def test_fit_size_keeps_aspect_and_never_scales_up():
    assert fit_size(640, 480, 10**6) == (640, 480)
    w, h = fit_size(1920, 1080, 320 * 180)
    assert w * h <= 320 * 180 and abs(w / h - 16 / 9) < 0.02 and w >= 318
    assert fit_size(50, 50, 100) == (10, 10) and fit_size(3, 3, 0) == (1, 1)


class _FakeTab:
    """A browser tab as the frame schedule sees it: a still camera, and the images it was sent."""

    def __init__(self, width: int, height: int) -> None:
        from types import SimpleNamespace

        self.client_id = 0
        self.camera = SimpleNamespace(wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, 0.0), fov=0.8,
                                      image_width=width, image_height=height)
        self.sent: list[tuple[int, int, str]] = []
        self.scene = SimpleNamespace(set_background_image=lambda image, format, **_: self.sent.append(
            (image.shape[1], image.shape[0], format)))


def test_full_frames_come_in_bands_of_the_set_time_and_a_model_change_is_not_kept(monkeypatch):
    import ngp_cli.viewer.frames as frames

    clock = [0.0]
    monkeypatch.setattr(frames.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(frames.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(frames, "emit", lambda *a, **k: None)
    bands: list[tuple[int, int]] = []

    class Server(frames.FrameServer):
        def render_band(self, cam, width, height, rows, settings):
            clock[0] += 2e-3 + 1e-5 * rows[1] * width  # 2 ms a band, 10 µs a pixel
            bands.append((*rows, width))
            return np.full((rows[1], width, 3), 0.5, np.float32)

        def to_image(self, value, settings):
            return (value * 255).astype(np.uint8)

    server = Server(None, threaded=False)
    tab = frames._Tab(_FakeTab(400, 300))
    server._tabs[0] = tab
    assert server.poll() >= 0 and tab.handle.sent[-1][2] == "jpeg"  # a preview first
    clock[0] += 1.0  # the camera has settled
    while not tab.handle.sent or tab.handle.sent[-1][2] != "png":
        server.poll(max_bands=1)
    full = bands[1:]
    assert sum(r[1] for r in full) == 300 and full[0][0] == 0  # every row once, in order
    assert all(a[0] + a[1] == b[0] for a, b in zip(full, full[1:], strict=False))
    assert bands[0][1] * bands[0][2] <= frames.FIRST_FRAME_PIXELS  # the preview, before any cost is known
    assert all(r[2] == 400 for r in full)
    seconds = [2e-3 + 1e-5 * r[1] * 400 for r in full[:-1]]  # sized from the preview's cost, then the bands'
    assert all(0.5 * frames.BAND_SECONDS <= s <= 1.5 * frames.BAND_SECONDS for s in seconds), seconds
    assert tab.full is not None
    # The model changes in the middle of a full-size frame: it is finished and sent, but not kept as current.
    server.invalidate()
    server.poll()  # the preview of the new model
    clock[0] += 1.0
    server.poll(max_bands=1)
    server.invalidate()
    sent = len(tab.handle.sent)
    while len(tab.handle.sent) == sent:
        server.poll(max_bands=1)
    assert tab.handle.sent[-1][2] == "png" and tab.full is None and tab.preview is None
    server.poll()
    assert tab.handle.sent[-1][2] == "jpeg"  # a preview of the changed model comes next


def test_camera_path_names_stay_inside_the_run():
    assert _path_name("orbit") == "orbit.json" and _path_name("a_b-1.json") == "a_b-1.json"
    from ngp_cli.errors import UsageError

    for bad in ("../x", "a/b", "/etc/passwd", "..json", "", ".hidden"):
        with pytest.raises(UsageError):
            _path_name(bad)


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


def test_exported_camera_path_reads_back_as_the_keyframes(tmp_path):
    from ngp_cli.tasks.nerf.camera_path import load_camera_path
    from ngp_cli.tasks.nerf.cameras import nerf_matrix_to_ngp

    rng = np.random.default_rng(1)
    scale, offset = 0.33, (0.5, 0.4, 0.6)
    keys = [ViewCamera.of(_random_c2w(rng), math.radians(40 + 5 * i), 320, 240) for i in range(3)]
    doc = nerfstudio_camera_path(keys, scale=scale, offset=offset, width=320, height=240, fps=10.0, seconds=2.0)
    path = tmp_path / "camera_path.json"
    path.write_text(json.dumps(doc))
    loaded = load_camera_path(path)
    assert loaded.kind == "nerfstudio" and len(loaded) == 20 and (loaded.width, loaded.height) == (320, 240)
    # Keyframes at t = 0, 1, 2 s: frames 0 and 10 are keyframes 0 and 1 (the end, keyframe 2, is not a frame).
    ngp = nerf_matrix_to_ngp(torch.as_tensor(loaded.c2w), scale, torch.tensor(offset, dtype=torch.float64))
    for frame, key in ((0, keys[0]), (10, keys[1])):
        assert np.allclose(ngp[frame].double().numpy(), key.matrix, atol=1e-5)
        assert math.isclose(loaded.fov_y[frame], key.fov_y, rel_tol=1e-9)
    with pytest.raises(ValueError):
        nerfstudio_camera_path([], scale=1.0, offset=(0, 0, 0), width=1, height=1, fps=1.0, seconds=1.0)


def test_view_without_viser_names_the_extra(ngp, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "viser", None)  # import viser raises ImportError
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: nerf\n")
    res = ngp("view", run)
    assert res.exit_code == 2 and "pip install 'ngp-cli[viewer]'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.last("error")["exit_code"] == 2
    monkeypatch.delitem(sys.modules, "viser")  # viser back: a bad --max-resolution is named as given
    (run / "config.yaml").write_text("task: image\n")
    res = ngp("view", run, "--max-resolution", "12")
    assert res.exit_code == 2 and "--max-resolution must be WIDTHxHEIGHT" in res.stderr
    (run / "config.yaml").write_text("task: sdf\n")  # options a task's viewer has no use for are not offered
    for option in ("--no-helpers", "--max-resolution"):
        res = ngp("view", run, option, *(["800x600"] if option == "--max-resolution" else []))
        assert res.exit_code == 2 and option in res.stderr


def test_a_public_host_gets_a_warning(capsys):
    from ngp_cli.viewer.server import start_server, stop_server, url_of

    server = start_server("0.0.0.0", _free_port())
    try:
        err = capsys.readouterr()
        assert "anyone who can reach this machine" in err.err and err.out == ""
        assert url_of(server).startswith("http://127.0.0.1:")
    finally:
        stop_server(server)
    stop_server(start_server("127.0.0.1", _free_port()))
    assert "warning" not in capsys.readouterr().err


# --- a trained run, the viewer's own rendering and export, and the real browser -----------------------------------

_TRAIN = ["--backend", "cpu", "--steps", "150", "--set", "train.log_every=50", "--set", "train.eval_every=0",
          "--set", "train.final_eval_views=0", "--set", "nerf.render_views=0", "--set", "train.batch_size=16384",
          "--set", "encoding.log2_hashmap_size=14", "--set", "encoding.n_levels=8", "--set", "seed=0"]


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory, app, host_cxx) -> Path:
    """A NeRF run of 150 steps on the 48-pixel synthetic scene (cpu kernels): enough structure that a shifted or
    scaled view would not match."""
    from typer.testing import CliRunner

    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene
    from tests.conftest import Invocation

    scene = make_synthetic_scene(tmp_path_factory.mktemp("scene"), n_train=12, n_val=2, resolution=48, seed=5)
    runs = tmp_path_factory.mktemp("runs")
    res = Invocation(CliRunner().invoke(app, ["train-nerf", str(scene), "--runs-dir", str(runs), *_TRAIN]))
    assert res.exit_code == 0, res.stderr
    return Path(res.last("done")["run_dir"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) / 255.0 - b.astype(np.float64) / 255.0) ** 2))
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def test_export_then_ngp_render_round_trips(scene_run, ngp, tmp_path):
    import imageio.v3 as iio

    from ngp_cli.pipeline import load_trained
    from ngp_cli.tasks import discover_tasks
    from ngp_cli.tasks.nerf.viewer import NerfViewer
    from ngp_cli.viewer.server import start_server, stop_server

    _, problem, meta = load_trained(discover_tasks()["nerf"], scene_run, "cpu")
    server = start_server("127.0.0.1", _free_port())
    viewer = NerfViewer(server, problem, scene_run, int(meta["step"]))
    try:
        ds = problem.dataset
        fov = 2.0 * math.atan(0.5 * ds.height / float(ds.intrinsics[0, 1]))
        keys = [ViewCamera.of(ds.c2w[i].double().numpy(), fov, 40, 30) for i in (0, 3, 6)]
        with pytest.raises(ValueError):
            viewer.export_camera_path("path", 4.0, 1.0)  # no keyframe yet
        for k in keys:
            viewer.add_keyframe(k)
        first = viewer.export_camera_path("path", 4.0, 2.0)
        second = viewer.export_camera_path("path.json", 4.0, 2.0)
        assert first == scene_run / "camera_paths" / "path.json" and second.name == "path-1.json"
        assert first.read_text() == second.read_text()  # the earlier file is kept, the new one numbered
        expected = [viewer.render(k, 40, 30, "network", "rgb") for k in keys[:2]]
    finally:
        viewer.stop()
        stop_server(server)
    res = ngp("render", scene_run, "--camera-path", first, "--out", tmp_path / "frames", "--backend", "cpu")
    assert res.exit_code == 0, res.stderr
    assert res.last("done")["metrics"]["frames"] == 8  # 2 s at 4 fps
    frames = sorted((tmp_path / "frames").glob("frame_*.png"))
    assert len(frames) == 8
    # Keyframes 0 and 1 sit at frames 0 and 4 (keyframes spread evenly over the 2 s).
    for frame, image in zip((frames[0], frames[4]), expected, strict=True):
        got = iio.imread(frame)
        assert got.shape == image.shape == (30, 40, 3)
        assert np.abs(got.astype(int) - image.astype(int)).max() <= 1


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Browser:
    """Headless Chromium driven over the DevTools protocol (websockets, which viser brings)."""

    def __init__(self, width: int, height: int, nice: int = 0) -> None:
        self.profile = tempfile.mkdtemp(prefix="ngp-chromium-")
        self.proc = subprocess.Popen(
            [_chromium(), "--headless=new", "--no-sandbox", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
             "--no-first-run", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.nice(nice)) if nice else None)
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (marker.is_file() and marker.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = int(marker.read_text().split()[0])
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        from websockets.sync.client import connect

        self.ws = connect([p for p in pages if p["type"] == "page"][0]["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=120))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def screenshot(self) -> np.ndarray:
        import imageio.v3 as iio

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return iio.imread(data)[..., :3]

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def _view_process(args: list[str]) -> tuple[subprocess.Popen, list[str], list[dict], threading.Thread]:
    """``python -m ngp_cli ARGS`` with its stdout read on a thread: the raw lines and the JSON events so far."""
    # SIGINT restored to its default in the child: a test run started in the background (CI) has it ignored, and
    # Python then never turns it into KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "ngp_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    raw: list[str] = []
    events: list[dict] = []

    def read() -> None:
        for line in proc.stdout:
            raw.append(line)
            if line.startswith("{"):
                events.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return proc, raw, events, reader


def _wait_for(events: list[dict], event: str, proc: subprocess.Popen, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while not any(e["event"] == event for e in events):
        assert proc.poll() is None and time.monotonic() < deadline, f"no {event!r} line; {proc.stderr.read()}"
        time.sleep(0.05)
    return next(e for e in events if e["event"] == event)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium (Debian's 'chromium' package) is not installed")
def test_the_browser_shows_what_ngp_render_renders(scene_run, tmp_path):
    """ngp view in a real browser: the first full-size frame's screenshot, in a region clear of the floating panel
    and of viser's notices, matches ngp render of the same camera (from the viewer's {"event": "frame"} line) at
    >= 30 dB."""
    import imageio.v3 as iio

    port = _free_port()
    view, raw, events, reader = _view_process(["view", str(scene_run), "--port", str(port), "--no-helpers",
                                               "--backend", "cpu", "--max-resolution", "2000x2000"])
    browser = None
    try:
        url = _wait_for(events, "serving", view, 120)["url"]
        assert url == f"http://127.0.0.1:{port}"
        browser = _Browser(800, 600)
        browser.call("Page.navigate", url=url)
        frame = _wait_for(events, "frame", view, 120)
        time.sleep(2.0)  # the PNG's way to the canvas
        shot = browser.screenshot()
    finally:
        if browser is not None:
            browser.close()
        view.send_signal(signal.SIGINT)
        try:
            view.wait(timeout=30)
        except subprocess.TimeoutExpired:
            view.kill()
    assert view.returncode == 130, view.stderr.read()
    reader.join(timeout=10)
    assert [json.loads(line)["event"] for line in raw][:2] == ["serving", "frame"]  # stdout: JSON lines only
    w, h = frame["width"], frame["height"]
    assert shot.shape[:2] == (h, w) and frame["source"] == "network" and frame["output"] == "rgb"
    path = tmp_path / "camera.json"
    path.write_text(json.dumps({"fl_x": frame["fl_x"], "w": w, "h": h,
                                "frames": [{"transform_matrix": frame["c2w"] + [[0, 0, 0, 1]]}]}))
    out = tmp_path / "frames"
    res = subprocess.run([sys.executable, "-m", "ngp_cli", "render", str(scene_run), "--camera-path", str(path),
                          "--out", str(out), "--backend", "cpu"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    expected = iio.imread(out / "frame_00000.png")[..., :3]
    assert expected.shape == shot.shape
    # Left of the floating panel (about 330 px wide at the top right), below viser's notices (top left).
    region = (slice(h // 3, h - 60), slice(60, w - 360))
    assert expected[region].std() > 10  # a view with structure: a shifted image would not match
    assert _psnr(shot[region], expected[region]) >= 30.0


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium (Debian's 'chromium' package) is not installed")
def test_training_with_the_viewer_open_gives_the_same_weights(tmp_path, app):
    """train-nerf --viewer with a browser watching renders frames between steps, and ends with the very weights of
    the same run without the viewer."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene
    from tests.conftest import Invocation

    scene = make_synthetic_scene(tmp_path / "scene", n_train=8, n_val=2, resolution=32, seed=2)
    args = ["train-nerf", str(scene), "--runs-dir", str(tmp_path / "runs"), *_TRAIN[:2], "--steps", "400",
            *_TRAIN[4:]]
    plain = Invocation(CliRunner().invoke(app, [*args, "--name", "plain"]))
    assert plain.exit_code == 0, plain.stderr
    port = _free_port()
    proc, raw, events, reader = _view_process([*args, "--name", "viewed", "--viewer", "--viewer-port", str(port),
                                               "--viewer-share", "0.5", "--json"])
    browser = None
    try:
        url = _wait_for(events, "serving", proc, 120)["url"]
        browser = _Browser(400, 300)  # a small canvas: an untrained NeRF costs ~70 µs a pixel
        browser.call("Page.navigate", url=url)
        _wait_for(events, "frame", proc, 120)
        proc.wait(timeout=600)
    finally:
        if browser is not None:
            browser.close()
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    assert proc.returncode == 0, proc.stderr.read()
    kinds = [json.loads(line)["event"] for line in raw]  # stdout: JSON lines only
    assert "serving" in kinds and kinds[-1] == "done" and "frame" in kinds
    # Frames came during training: a frame line before the last step line.
    assert kinds.index("frame") < len(kinds) - 1 - kinds[::-1].index("step")
    a, b = (load_file(str(sorted((Path(r) / "checkpoints").glob("*.safetensors"))[-1])) for r in (
        plain.last("done")["run_dir"], events[-1]["run_dir"]))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_live_viewer_keeps_to_its_share_of_the_training_time(monkeypatch):
    import ngp_cli.viewer.live as live

    clock = [0.0]
    monkeypatch.setattr(live.time, "perf_counter", lambda: clock[0])

    class Frames:
        polls = shown = 0

        def poll(self, max_bands):
            self.polls += 1
            clock[0] += 0.05  # a band

        def show_training(self, record):
            self.shown += 1

    frames = Frames()
    view = live.LiveView(frames, server=None, share=0.1)
    training = 1000.0  # a resumed run: its earlier training time gives the viewer no budget
    for step in range(2000):
        clock[0] += 0.08  # a step
        training += 0.08
        training += view.between_steps({"step": step, "loss": 1.0} if step % 50 == 0 else None, training)
    used = view.spent / (training - 1000.0)
    assert 0.09 <= used <= 0.1 + 0.05 / (training - 1000.0), used
    assert frames.shown == 40 and frames.polls == round(view.spent / 0.05)
    assert view.contended == 0.0  # no tab was open


@pytest.mark.parametrize("cpu_threads, tab, lost", [(2, True, 0.05), (2, True, 0.25), (2, False, 0.05),
                                                     (None, True, 0.05)])
def test_the_live_viewer_counts_the_cpu_a_tab_takes_from_a_cpu_training(monkeypatch, cpu_threads, tab, lost):
    """A browser tab beside a CPU training takes ``lost`` of the training threads' CPU: that time is charged to the
    share (only on a CPU training, only while a tab is open), and the viewer renders within what is left."""
    import ngp_cli.viewer.live as live

    clock, cpu = [0.0], [0.0]
    monkeypatch.setattr(live.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(live.time, "process_time", lambda: cpu[0])

    class Server:  # viser's: the connected tabs by id
        def get_clients(self):
            return {0: object()} if tab else {}

    class Frames:
        polls = 0

        def poll(self, max_bands):
            self.polls += 1
            clock[0] += 0.05
            cpu[0] += 0.05 * 2

        def show_training(self, record):
            pass

    frames = Frames()
    view = live.LiveView(frames, server=Server(), share=0.1, cpu_threads=cpu_threads)
    training = 0.0
    steps_s = 0.0
    for _ in range(4000):
        clock[0] += 0.08
        cpu[0] += 0.08 * 2 * (1.0 - lost)
        training += 0.08
        steps_s += 0.08
        training += view.between_steps(None, training)
    charged = tab and cpu_threads is not None
    assert view.contended == pytest.approx(lost * steps_s if charged else 0.0, rel=1e-3, abs=1e-9)
    expect_spent = max(0.0, 0.1 * training - view.contended)
    assert expect_spent - 0.06 <= view.spent <= expect_spent + 0.06, (view.spent, expect_spent)
    assert (frames.polls == 1) == (charged and lost > 0.1)  # a tab taking more than the share: one band, then none


def test_viewer_is_refused_where_a_task_has_none_and_for_a_bad_share(ngp, tmp_path, monkeypatch):
    from ngp_cli.tasks.gigapixel import GigapixelTask

    monkeypatch.setattr(GigapixelTask, "live_viewer", None)  # a task plugin without a viewer
    res = ngp("fit-image", "--viewer", "--runs-dir", tmp_path / "runs", "--steps", "1")
    assert res.exit_code == 2 and "--viewer is not available for image runs" in res.stderr
    res = ngp("train-nerf", "--viewer", "--viewer-share", "0", "--runs-dir", tmp_path / "runs", "--steps", "1")
    assert res.exit_code == 2 and "--viewer-share must be in (0, 1]" in res.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_image_viewer_shows_the_model_and_the_photo_where_the_rays_meet_them(ngp, tmp_path, astronaut_crop):
    """A camera square on the photo, its frustum exactly the photo: each pixel shows the model (or the photo, or the
    error map) at that pixel's centre; outside the photo the frame is grey. And fit-image --viewer serves while it
    trains."""
    from ngp_cli.images import colormap, from_float
    from ngp_cli.pipeline import load_trained
    from ngp_cli.tasks import discover_tasks
    from ngp_cli.tasks.gigapixel.data import pixel_centers
    from ngp_cli.tasks.gigapixel.viewer import ImageViewer, image_rect
    from ngp_cli.viewer.server import start_server, stop_server

    res = ngp("fit-image", astronaut_crop, "--runs-dir", tmp_path / "runs", "--steps", "20", "--backend", "cpu",
              "--viewer", "--viewer-port", str(_free_port()))
    assert res.exit_code == 0, res.stderr
    assert [e["event"] for e in res.events][-1] == "done" and res.last("serving")["url"].startswith("http://127.0.0.1:")
    run = Path(res.last("done")["run_dir"])
    _, problem, meta = load_trained(discover_tasks()["image"], run, "cpu")
    t = problem.target
    server = start_server("127.0.0.1", _free_port())
    viewer = ImageViewer(server, problem, run, int(meta["step"]))
    try:
        sx, sy = image_rect(t.width, t.height)
        fov = math.radians(40.0)
        c2w = np.eye(4)[:3]
        c2w[:, 3] = (sx / 2, -sy / 2, 0.5 * sy / math.tan(fov / 2))  # looking down -z at the photo's centre
        cam = ViewCamera.of(c2w, fov, t.width, t.height)
        uv = pixel_centers(t.height, t.width, 0, t.height)
        pred = problem.predict(uv, 1 << 16)
        ref = t.sample(torch.from_numpy(uv)).numpy()
        for output, expected in (
                ("reconstruction", from_float(np.clip(pred[:, :3], 0, 1), np.uint8)),
                ("photo", from_float(np.clip(ref[:, :3], 0, 1), np.uint8)),
                ("error", colormap(np.abs(pred - ref).mean(axis=1)[None], vmax=viewer.error_vmax)[0])):
            got = viewer.render_band(cam, t.width, t.height, (0, t.height), (output,)).reshape(-1, 3)
            assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, output
        wide = ViewCamera.of(c2w, math.radians(80.0), 64, 64)  # sees beyond the photo's edges
        band = viewer.render_band(wide, 64, 64, (0, 64), ("reconstruction",))
        assert (band[0, 0] == 40).all() and (band[32, 32] != 40).any()
    finally:
        viewer.stop()
        stop_server(server)


def test_sdf_slice_colours_and_points():
    from ngp_cli.tasks.sdf.viewer import CONTOUR_STEP, SLICE_RANGE, SdfViewer, slice_image

    img = slice_image(np.array([[SLICE_RANGE, -SLICE_RANGE, 0.0, 0.5 * CONTOUR_STEP]]))
    assert img.shape == (1, 4, 3) and img.dtype == np.uint8
    assert img[0, 0, 0] > img[0, 0, 2] + 50 and img[0, 1, 2] > img[0, 1, 0] + 50  # outside red, inside blue
    assert (img[0, 2] == 0).all() and img[0, 3].max() > 100  # the surface black, half a step off it not
    pts = SdfViewer.slice_points(None, np.array([1.0, 0, 0, 0]), np.array([0.5, 0.5, 0.5]), n=4)
    assert pts.shape == (4, 4, 3) and np.allclose(pts[..., 2], 0.5)
    assert np.allclose(pts[0, 0], [0.125, 0.875, 0.5]) and np.allclose(pts[-1, -1], [0.875, 0.125, 0.5])


def test_sdf_viewer_shows_the_network_on_the_slice_and_its_mesh(ngp, tmp_path):
    """The viewer of an SDF run: the slice shows the network's own values at the slice's points, the mesh is sent,
    and train-sdf --viewer serves while it trains."""
    from ngp_cli.tasks import discover_tasks
    from ngp_cli.tasks.sdf.evaluate import load_run
    from ngp_cli.tasks.sdf.viewer import SdfViewer, slice_image
    from ngp_cli.viewer.server import start_server, stop_server

    res = ngp("train-sdf", "--runs-dir", tmp_path / "runs", "--steps", "30", "--backend", "cpu", "--viewer",
              "--viewer-port", str(_free_port()), "--set", "sdf.mesh_resolution=32", "--set", "sdf.iou_points=4096")
    assert res.exit_code == 0, res.stderr
    assert res.last("serving")["url"].startswith("http://127.0.0.1:")
    run, problem, meta = load_run(discover_tasks()["sdf"], Path(res.last("done")["run_dir"]), "cpu")
    server = start_server("127.0.0.1", _free_port())
    viewer = SdfViewer(server, problem, run.path, int(meta["step"]), resolution=32)
    try:
        assert viewer.meshes_sent == 1
        deadline = time.monotonic() + 30
        while viewer.slices_sent < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert viewer.slices_sent >= 1
        wxyz, pos = viewer.pose()
        pts = viewer.slice_points(wxyz, pos, n=16)
        with torch.no_grad():
            direct = problem.field(torch.from_numpy(pts.reshape(-1, 3))).float().numpy().reshape(16, 16)
        assert np.allclose(viewer.slice_sdf(pts), direct, atol=1e-6)
        assert np.array_equal(slice_image(viewer.slice_sdf(pts)), slice_image(direct))
    finally:
        viewer.stop()
        stop_server(server)


def test_nrc_viewer_offers_the_runs_own_images_only(ngp, tmp_path):
    import imageio.v3 as iio

    from ngp_cli.errors import DataError
    from ngp_cli.tasks.nrc.viewer import NrcViewer, letterbox, run_images
    from ngp_cli.viewer.server import start_server, stop_server

    img = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    box = letterbox(img, 8, 8)  # 4×2 scaled ×2 into 8×8: rows 2..5 hold it, grey above and below
    assert box.shape == (8, 8, 3) and (box[0] == 40).all() and (box[7] == 40).all()
    assert np.array_equal(box[2:6:2, ::2], img) and np.array_equal(box[3:6:2, 1::2], img)
    with pytest.raises(DataError):
        run_images(tmp_path)
    res = ngp("train-nrc", "--runs-dir", tmp_path / "runs", "--set", "nrc.frames=2", "--set", "nrc.width=16",
              "--set", "nrc.height=12", "--set", "nrc.warmup_frames=1")
    assert res.exit_code == 0, res.stderr
    run = Path(res.last("done")["run_dir"])
    outside = tmp_path / "secret.png"
    iio.imwrite(outside, img)
    (run / "frames" / "frame_00099.png").symlink_to(outside)  # a link out of the run: never offered
    images = run_images(run)
    assert list(images) == ["NRC (mean of frames)", "path tracer, equal time", "reference", "frame 1", "frame 2"]
    server = start_server("127.0.0.1", _free_port())
    viewer = NrcViewer(server, run, images)
    try:
        first = viewer.image("frame 1")
        assert np.array_equal(first, iio.imread(run / "frames" / "frame_00000.png")[..., :3])
        band = viewer.render_band(None, 32, 24, (0, 24), ("reference",))
        assert band.shape == (24, 32, 3) and band.dtype == np.uint8
    finally:
        viewer.stop()
        stop_server(server)

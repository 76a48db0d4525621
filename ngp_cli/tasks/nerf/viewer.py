"""``ngp view`` of a NeRF run: progressive rendering from each browser's camera, the training cameras and the scene
box, a choice of output, and keyframes exported as a nerfstudio ``camera_path.json``.

The viewer's world is the run's ngp frame (the dataset's world scaled by ``scale`` and shifted by ``offset``,
:mod:`ngp_cli.tasks.nerf.cameras`), so rays come straight from viser's camera. viser reports a camera as
``P_world = [R | t] P_camera`` with OpenCV camera axes (x right, y down, looking down +z); the renderers take OpenGL
ones (y up, looking down -z): ``R_gl = R_cv · diag(1, -1, -1)`` (:func:`viser_to_c2w`).

Rendering (one thread for every browser tab, so the renders never compete for the two cores): while a camera moves,
frames are rendered at a preview size chosen from the measured cost of the last frames, so that one takes about
:data:`PREVIEW_SECONDS` (instant-ngp's dynamic resolution does the same); once the camera has been still for
:data:`SETTLE_SECONDS`, the full-size frame follows (the browser's canvas, capped by ``--max-resolution``), in bands
of rows so that a camera that moves again interrupts it. A full-size frame is sent as PNG (lossless), previews as
JPEG, and each full-size frame writes a ``{"event": "frame"}`` line to stdout with its camera in the dataset's world
frame (transforms.json conventions: OpenGL ``c2w``, ``fl_x`` in pixels), so a script can render the same view with
``ngp render --camera-path``.

The baked grid (``ngp bake``) is the source when the run has one (``RUN/baked.safetensors`` or ``--baked FILE``);
the GUI switches between it and the network.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ngp_cli.console import emit, info
from ngp_cli.errors import OutputError, UsageError

__all__ = ["PREVIEW_SECONDS", "SETTLE_SECONDS", "NerfViewer", "ViewCamera", "c2w_to_viser", "fit_size",
           "nerfstudio_camera_path", "view_command", "viser_to_c2w"]

#: The time one preview frame should take while the camera moves (about 10 frames per second).
PREVIEW_SECONDS = 0.1
#: How long a camera stays still before the full-size frame is rendered.
SETTLE_SECONDS = 0.15
#: Preview frames never go below this many pixels on their shorter side.
MIN_PREVIEW_SIDE = 48
#: Rows of a full-size frame are rendered in bands of about this many pixels, the camera checked between bands.
BAND_PIXELS = 1 << 16
#: The outputs the viewer shows (the network also gives normals; the baked grid does not, so they are left out).
OUTPUTS = ("rgb", "depth", "accumulation")
_OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])


def viser_to_c2w(wxyz: Any, position: Any) -> np.ndarray:
    """A viser camera (``wxyz`` quaternion and ``position`` of ``P_world = [R | t] P_camera``, OpenCV camera axes) as a
    (3, 4) float64 OpenGL camera-to-world matrix."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = (float(v) for v in wxyz)
    rot = Rotation.from_quat([x, y, z, w]).as_matrix() @ _OPENCV_TO_OPENGL
    return np.concatenate([rot, np.asarray(position, dtype=np.float64).reshape(3, 1)], axis=1)


def c2w_to_viser(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, 4) OpenGL camera-to-world → viser's ``(wxyz, position)`` (the inverse of :func:`viser_to_c2w`)."""
    from scipy.spatial.transform import Rotation

    c2w = np.asarray(c2w, dtype=np.float64)
    x, y, z, w = Rotation.from_matrix(c2w[:, :3] @ _OPENCV_TO_OPENGL).as_quat()
    return np.array([w, x, y, z]), c2w[:, 3].copy()


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` scaled down, aspect kept, to at most ``max_pixels`` pixels (never up, at least 1×1)."""
    if width * height <= max_pixels:
        return max(1, width), max(1, height)
    s = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * s)), max(1, int(height * s))


@dataclass(frozen=True)
class ViewCamera:
    """A browser's camera: ``c2w`` (3, 4) float64 OpenGL camera-to-world in the ngp frame, the vertical field of view
    ``fov_y`` in radians and the canvas size in pixels."""

    c2w: tuple
    fov_y: float
    width: int
    height: int

    @staticmethod
    def of(c2w: np.ndarray, fov_y: float, width: int, height: int) -> ViewCamera:
        return ViewCamera(tuple(np.asarray(c2w, dtype=np.float64).reshape(-1).tolist()), float(fov_y), int(width),
                          int(height))

    @property
    def matrix(self) -> np.ndarray:
        return np.array(self.c2w, dtype=np.float64).reshape(3, 4)

    def focal(self, height: int) -> float:
        """The focal length in pixels of an image ``height`` pixels high."""
        return 0.5 * height / math.tan(0.5 * self.fov_y)


def _world(c2w_ngp: np.ndarray, scale: float, offset: Any) -> np.ndarray:
    """A (.., 3, 4) ngp-frame camera-to-world in the dataset's world frame (translation ``(t - offset) / scale``)."""
    out = np.array(c2w_ngp, dtype=np.float64, copy=True)
    out[..., :, 3] = (out[..., :, 3] - np.asarray(offset, dtype=np.float64)) / float(scale)
    return out


def nerfstudio_camera_path(keyframes: list[ViewCamera], *, scale: float, offset: Any, width: int, height: int,
                           fps: float, seconds: float) -> dict[str, Any]:
    """nerfstudio's ``camera_path.json`` (its viewer's export, read by ``ns-render camera-path`` and ``ngp render
    --camera-path``) for ``keyframes`` (ngp frame), in the dataset's world frame (no dataparser transform): the
    keyframes (row-major 4×4 ``matrix``, vertical ``fov`` in degrees) and ``camera_path``, one entry per frame of
    ``seconds`` at ``fps``, interpolated through them as ``ngp render`` interpolates keyframes
    (:func:`~ngp_cli.tasks.nerf.camera_path.interpolate_keyframes`: spline positions, slerped rotations, linear fov),
    the keyframes spread evenly over the path. Raises ValueError without keyframes."""
    from ngp_cli.tasks.nerf.camera_path import frame_times, interpolate_keyframes

    if not keyframes:
        raise ValueError("a camera path needs at least one keyframe")
    mats = _world(np.stack([k.matrix for k in keyframes]), scale, offset)
    fovs = np.array([math.degrees(k.fov_y) for k in keyframes])
    n = len(keyframes)
    times = np.linspace(0.0, seconds, n) if n > 1 else np.zeros(1)
    c2w, fov = interpolate_keyframes(times, mats, fovs, frame_times(seconds, fps))
    aspect = width / height

    def flat(m: np.ndarray) -> list[float]:
        return np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]]).reshape(-1).tolist()

    return {
        "camera_type": "perspective", "render_width": width, "render_height": height, "fps": fps,
        "seconds": seconds, "is_cycle": False, "smoothness_value": 0.0, "default_fov": float(fovs[0]),
        "default_transition_sec": seconds / (n - 1) if n > 1 else seconds,
        "keyframes": [{"matrix": flat(m), "fov": float(f), "aspect": aspect, "override_transition_enabled": False,
                       "override_transition_sec": None} for m, f in zip(mats, fovs, strict=True)],
        "camera_path": [{"camera_to_world": flat(m), "fov": float(f), "aspect": aspect}
                        for m, f in zip(c2w, fov, strict=True)],
    }


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _path_name(text: str) -> str:
    """A camera-path file name from the GUI: a plain name (letters, digits, ``._-``), ``.json`` added. Raises
    UsageError for anything else (a path, ``..``): the client cannot name a file outside the run's folder."""
    name = text.strip()
    if not name.endswith(".json"):
        name += ".json"
    if not _NAME.match(name) or ".." in name:
        raise UsageError(f"camera path names are plain names (letters, digits, '.', '_', '-'), got {text!r}")
    return name


class _Client:
    """What the render thread knows of one browser tab."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.changed_at = time.monotonic()
        self.preview: tuple | None = None  # (camera, settings) of the last preview sent
        self.full: tuple | None = None  # (camera, settings) of the last full-size frame sent


class NerfViewer:
    """The viewer of one NeRF run on a started ``viser.ViserServer``.

    Args:
        server: the server (:func:`ngp_cli.viewer.server.start_server`).
        problem: the run's NeRF problem with its trained weights (:func:`ngp_cli.pipeline.load_trained`).
        run_dir: the run directory (camera paths are written to ``run_dir/camera_paths/``).
        step: the checkpoint's step (shown).
        baked: a :class:`~ngp_cli.volrend.baked.BakedGrid` on the problem's device, or None.
        max_pixels: the most pixels a full-size frame has (the canvas is scaled down, aspect kept, beyond it).
        helpers: show the training cameras and the scene box at start (the GUI toggles them).
    """

    def __init__(self, server: Any, problem: Any, run_dir: Path, step: int, baked: Any = None,
                 max_pixels: int = 1920 * 1080, helpers: bool = True) -> None:
        self.server, self.problem, self.run_dir, self.baked = server, problem, Path(run_dir), baked
        self.max_pixels, self.helpers = int(max_pixels), bool(helpers)
        ds = problem.dataset
        self.scale, self.offset = float(ds.scale), tuple(float(v) for v in ds.offset)
        self.white = bool(ds.white_background)
        self.keyframes: list[ViewCamera] = []
        self._clients: dict[int, _Client] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seconds_per_pixel: dict[str, float] = {}
        self._depth_vmax: float | None = None
        self.frames_sent = 0
        self._scene(ds)
        self._gui(step)
        server.on_client_connect(self._connect)
        server.on_client_disconnect(self._disconnect)
        self._thread = threading.Thread(target=self._render_loop, name="ngp-view-render", daemon=True)
        self._thread.start()

    # -- scene and GUI ------------------------------------------------------------------------------------------
    def _scene(self, ds: Any) -> None:
        from ngp_cli.tasks.nerf.camera_path import scene_center, up_axis

        c2w = ds.c2w.detach().cpu().double().numpy()
        up = up_axis(c2w)
        center = scene_center(c2w)
        self.server.scene.set_up_direction(up)
        lo = 0.5 - 0.5 * self.problem.aabb_scale
        size = float(self.problem.aabb_scale)
        self._box = self.server.scene.add_box("/scene_box", color=(255, 160, 0), dimensions=(size, size, size),
                                              wireframe=True, position=(lo + size / 2,) * 3,
                                              visible=self.helpers, cast_shadow=False, receive_shadow=False)
        intr = ds.intrinsics.detach().cpu().double().numpy()
        span = float(np.linalg.norm(c2w[:, :, 3] - center, axis=1).mean())
        self._frusta = []
        for i in range(c2w.shape[0]):
            fy = float(intr[i, 1] if intr.ndim == 2 else intr[1])
            wxyz, pos = c2w_to_viser(c2w[i])
            self._frusta.append(self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}", fov=2.0 * math.atan(0.5 * ds.height / fy), aspect=ds.width / ds.height,
                scale=0.03 * span, thickness=1.5, thickness_units="screen", color=(40, 90, 200), wxyz=wxyz,
                position=pos, visible=self.helpers, cast_shadow=False, receive_shadow=False))
        first = c2w[0]
        cam = self.server.initial_camera
        cam.up = up
        cam.position = first[:, 3]
        cam.look_at = center
        fy0 = float(intr[0, 1] if intr.ndim == 2 else intr[1])
        cam.fov = 2.0 * math.atan(0.5 * ds.height / fy0)

    def _gui(self, step: int) -> None:
        gui = self.server.gui
        gui.add_markdown(f"**{self.run_dir.name}**, step {step}")
        sources = ["baked", "network"] if self.baked is not None else ["network"]
        self._source = gui.add_dropdown("Source", sources, initial_value=sources[0])
        self._output = gui.add_dropdown("Output", OUTPUTS, initial_value="rgb")
        self._show_cameras = gui.add_checkbox("Training cameras", initial_value=self.helpers)
        self._show_box = gui.add_checkbox("Scene box", initial_value=self.helpers)
        self._status = gui.add_markdown("")
        for handle in (self._source, self._output):
            handle.on_update(lambda _event: self._invalidate())
        self._show_cameras.on_update(lambda _e: [setattr(f, "visible", self._show_cameras.value)
                                                 for f in self._frusta])
        self._show_box.on_update(lambda _e: setattr(self._box, "visible", self._show_box.value))
        with gui.add_folder("Camera path"):
            self._n_keys = gui.add_markdown("0 keyframes")
            add = gui.add_button("Add keyframe")
            clear = gui.add_button("Clear keyframes")
            self._seconds = gui.add_number("Seconds", initial_value=4.0, min=0.1, max=3600.0, step=0.1)
            self._fps = gui.add_number("FPS", initial_value=24.0, min=1.0, max=240.0, step=1.0)
            self._path_name = gui.add_text("File", initial_value="camera_path.json")
            export = gui.add_button("Export")
            self._export_status = gui.add_markdown("")
        add.on_click(lambda event: self._add_keyframe(event.client))
        clear.on_click(lambda _event: self._clear_keyframes())
        export.on_click(lambda _event: self._export_clicked())

    # -- clients ----------------------------------------------------------------------------------------------
    def _connect(self, client: Any) -> None:
        state = _Client(client)

        def moved(_camera: Any) -> None:
            state.changed_at = time.monotonic()

        client.camera.on_update(moved)
        with self._lock:
            self._clients[client.client_id] = state

    def _disconnect(self, client: Any) -> None:
        with self._lock:
            self._clients.pop(client.client_id, None)

    def _invalidate(self) -> None:
        with self._lock:
            for state in self._clients.values():
                state.preview = state.full = None
                state.changed_at = time.monotonic()

    @staticmethod
    def camera_of(client: Any) -> ViewCamera | None:
        """The camera of a browser tab, or None before its first report (no canvas size yet)."""
        cam = client.camera
        width, height = int(cam.image_width or 0), int(cam.image_height or 0)
        if width <= 0 or height <= 0:
            return None
        return ViewCamera.of(viser_to_c2w(cam.wxyz, cam.position), float(cam.fov), width, height)

    # -- keyframes --------------------------------------------------------------------------------------------
    def _add_keyframe(self, client: Any) -> None:
        cam = self.camera_of(client) if client is not None else None
        if cam is not None:
            self.add_keyframe(cam)

    def add_keyframe(self, cam: ViewCamera) -> None:
        """Append ``cam`` to the camera path's keyframes."""
        self.keyframes.append(cam)
        self._n_keys.content = f"{len(self.keyframes)} keyframe{'s' if len(self.keyframes) != 1 else ''}"

    def _clear_keyframes(self) -> None:
        self.keyframes.clear()
        self._n_keys.content = "0 keyframes"

    def _export_clicked(self) -> None:
        try:
            out = self.export_camera_path(self._path_name.value, float(self._fps.value), float(self._seconds.value))
        except (UsageError, OutputError, ValueError) as e:
            self._export_status.content = f"not written: {e}"
            return
        self._export_status.content = f"wrote {out.relative_to(self.run_dir)}"

    def export_camera_path(self, name: str, fps: float, seconds: float) -> Path:
        """Write the keyframes as nerfstudio's ``camera_path.json`` (:func:`nerfstudio_camera_path`, the size of the
        last keyframe's canvas) to ``RUN/camera_paths/<name>``; an existing file is kept and the new one gets a
        numbered name (``name-1.json``, ...). Written atomically. Emits ``{"event": "camera_path"}``. Returns the
        path. Raises UsageError for a bad name, ValueError without keyframes, OutputError when it cannot be
        written."""
        name = _path_name(name)
        if not self.keyframes:
            raise ValueError("add a keyframe first")
        last = self.keyframes[-1]
        doc = nerfstudio_camera_path(self.keyframes, scale=self.scale, offset=self.offset, width=last.width,
                                     height=last.height, fps=fps, seconds=seconds)
        folder = self.run_dir / "camera_paths"
        stem, k = name[:-5], 0
        out = folder / name
        try:
            folder.mkdir(exist_ok=True)
            while out.exists():
                k += 1
                out = folder / f"{stem}-{k}.json"
            tmp = out.with_name(f".{out.name}.tmp")
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, out)
        except OSError as e:
            raise OutputError(f"{out}: cannot write the camera path: {e.strerror or e}") from None
        info(f"wrote {out} ({len(self.keyframes)} keyframes, {len(doc['camera_path'])} frames)")
        emit("camera_path", path=str(out), keyframes=len(self.keyframes), frames=len(doc["camera_path"]))
        return out

    # -- rendering --------------------------------------------------------------------------------------------
    def settings(self) -> tuple[str, str]:
        """``(source, output)`` chosen in the GUI."""
        return str(self._source.value), str(self._output.value)

    def render(self, cam: ViewCamera, width: int, height: int, source: str, output: str,
               still: Any = None) -> np.ndarray | None:
        """The (height, width, 3) uint8 image of ``cam`` (its field of view, at this size) from ``source``
        ("network" or "baked"), ``output`` mapped to colours as ``ngp render`` maps it. Rendered in bands of rows;
        ``still()`` is asked between bands and a False stops the frame (None returned)."""
        from ngp_cli.mesh.shade import depth_scale, map_image
        from ngp_cli.tasks.nerf.views import render_camera

        focal = cam.focal(height)
        baked = self.baked if source == "baked" else None
        band_rows = max(1, BAND_PIXELS // width)
        t_min = self.problem.cfg.nerf.render_min_transmittance
        c2w = torch.as_tensor(cam.matrix, dtype=torch.float32)
        parts = []
        for top in range(0, height, band_rows):
            rows = (top, min(band_rows, height - top))
            parts.append(render_camera(self.problem, c2w, focal, width, height, output, baked=baked,
                                       min_transmittance=t_min, rows=rows))
            if still is not None and sum(rows) < height and not still():
                return None
        value = np.concatenate(parts, axis=0)
        if output == "depth" and self._depth_vmax is None:
            self._depth_vmax = depth_scale(value)
        return map_image(output, value, self._depth_vmax or 1.0)

    def _preview_size(self, cam: ViewCamera, source: str) -> tuple[int, int]:
        """A preview's size: the pixels that take about :data:`PREVIEW_SECONDS` at the measured cost of ``source``
        (64 × 64 before any measurement), at least :data:`MIN_PREVIEW_SIDE` on the shorter side, at most full size."""
        per_pixel = self._seconds_per_pixel.get(source)
        budget = 64 * 64 if per_pixel is None else int(PREVIEW_SECONDS / per_pixel)
        floor = MIN_PREVIEW_SIDE * MIN_PREVIEW_SIDE * max(cam.width, cam.height) // max(min(cam.width, cam.height), 1)
        return fit_size(cam.width, cam.height, min(max(budget, floor), self.max_pixels))

    def _measured(self, source: str, seconds: float, pixels: int) -> None:
        new = seconds / max(pixels, 1)
        old = self._seconds_per_pixel.get(source)
        self._seconds_per_pixel[source] = new if old is None else 0.5 * old + 0.5 * new

    def _render_loop(self) -> None:
        while not self._stop.is_set():
            worked = False
            with self._lock:
                states = list(self._clients.values())
            for state in states:
                try:
                    worked |= self._serve(state)
                except Exception as e:  # a tab that went away mid-frame, or a render error shown to the user
                    self._status.content = f"render failed: {type(e).__name__}: {e}"[:300]
            if not worked:
                self._stop.wait(0.01)

    def _serve(self, state: _Client) -> bool:
        """Render one frame for a tab if it needs one: a preview while its camera moves, the full-size frame once it
        has settled. Returns whether a frame was rendered."""
        cam = self.camera_of(state.handle)
        if cam is None:
            return False
        settings = self.settings()
        key = (cam, settings)
        source, output = settings
        if output == "normals" or (source == "baked" and self.baked is None):
            return False
        settled = time.monotonic() - state.changed_at >= SETTLE_SECONDS
        if state.full == key:
            return False
        if not settled:
            if state.preview == key:
                return False
            width, height = self._preview_size(cam, source)
            t0 = time.perf_counter()
            image = self.render(cam, width, height, source, output)
            self._measured(source, time.perf_counter() - t0, width * height)
            state.handle.scene.set_background_image(image, format="jpeg", jpeg_quality=85)
            state.preview = key
            return True
        width, height = fit_size(cam.width, cam.height, self.max_pixels)
        t0 = time.perf_counter()
        image = self.render(cam, width, height, source, output,
                            still=lambda: self.camera_of(state.handle) == cam and self.settings() == settings)
        seconds = time.perf_counter() - t0
        if image is None:  # the camera moved: previews again
            return True
        self._measured(source, seconds, width * height)
        state.handle.scene.set_background_image(image, format="png")
        state.full = state.preview = key
        self.frames_sent += 1
        c2w = _world(cam.matrix, self.scale, self.offset)
        self._status.content = f"{width}×{height} in {seconds:.2f} s ({source})"
        emit("frame", client=state.handle.client_id, width=width, height=height, source=source, output=output,
             render_s=round(seconds, 4), c2w=c2w.tolist(), fl_x=cam.focal(height), fov_y=cam.fov_y)
        return True

    def stop(self) -> None:
        """Stop the render thread (the server is the caller's)."""
        self._stop.set()
        self._thread.join(timeout=30)


def view_command(task: Any, run_path: Path, *, host: str, port: int, baked: Path | None = None,
                 max_resolution: str | None = None, helpers: bool = True, backend: str | None = None,
                 data: Path | None = None) -> None:
    """``ngp view RUN`` for a NeRF run: serve the viewer until interrupted (Ctrl-C: exit 130). stdout: a
    ``{"event": "serving", "url": ...}`` line once the server listens, then ``{"event": "frame"}`` per full-size frame
    and ``{"event": "camera_path"}`` per export. Raises UsageError (viser missing, bad options), DataError (the run or
    its baked file), NoGPUError."""
    from ngp_cli.commands import parse_resolution
    from ngp_cli.tasks.nerf.evaluate import _baked_on, load_run
    from ngp_cli.viewer import require_viser
    from ngp_cli.viewer.server import start_server, stop_server, url_of
    from ngp_cli.volrend.baked import load_baked

    require_viser()
    max_w, max_h = parse_resolution(max_resolution, (1920, 1080))
    run, problem, step = load_run(task, run_path, backend, data)
    grid = None
    source = baked if baked is not None else run.path / "baked.safetensors"
    if baked is not None or source.is_file():
        grid = _baked_on(load_baked(source), source, run, step, problem)
    server = start_server(host, port)
    viewer = NerfViewer(server, problem, run.path, step, grid, max_pixels=max_w * max_h, helpers=helpers)
    url = url_of(server)
    info(f"viewing {run.path} (step {step}{', baked grid ' + str(source) if grid is not None else ''}) at {url}; "
         f"Ctrl-C stops")
    emit("serving", url=url, run_dir=str(run.path), step=step, baked=str(source) if grid is not None else None)
    try:
        while True:
            time.sleep(3600)
    finally:
        viewer.stop()
        stop_server(server)

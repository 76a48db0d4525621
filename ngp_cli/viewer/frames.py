"""Progressive frames for ``ngp view``: each browser tab's camera rendered by the run's task and sent back as the
scene's background image, small while the camera moves and full size once it stops.

viser reports a tab's camera as ``P_world = [R | t] P_camera`` with OpenCV camera axes (x right, y down, looking down
+z); the renderers take OpenGL ones (y up, looking down -z): ``R_gl = R_cv · diag(1, -1, -1)``
(:func:`viser_to_c2w`).

The schedule (:class:`FrameServer`): while a camera moves, frames are rendered at a preview size chosen from the
measured cost of the last frames, so that one takes about :data:`PREVIEW_SECONDS` (instant-ngp's dynamic resolution
does the same); once the camera has been still for :data:`SETTLE_SECONDS`, the full-size frame follows (the tab's
canvas, capped by ``max_pixels``), in bands of rows that take about :data:`BAND_SECONDS` each at the cost of its
preview and the bands before, so that a camera that moves again drops it and a training step is never kept waiting
long. A change of the settings or of the model (:meth:`FrameServer.invalidate`) gets a preview first. Full-size frames
go out as PNG (lossless), previews as JPEG, and each full-size frame writes a ``{"event": "frame"}`` line to stdout.
Frames are rendered either on a thread of their own (``ngp view``) or between training steps (``--viewer``: a band
at a time, :meth:`FrameServer.poll`), never two at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ngp_cli.console import emit

__all__ = ["BAND_SECONDS", "DEFAULT_MAX_PIXELS", "FIRST_FRAME_PIXELS", "MIN_PREVIEW_SIDE", "PREVIEW_SECONDS",
           "SETTLE_SECONDS", "BackgroundLoop", "FrameServer", "ViewCamera", "c2w_to_viser", "fit_size", "frame_pixels",
           "viser_to_c2w"]

#: The time one preview frame should take while the camera moves (12.5 frames per second; what the transfer and the
#: browser add keeps the rate above 10).
PREVIEW_SECONDS = 0.08
#: How long a camera stays still before the full-size frame is rendered.
SETTLE_SECONDS = 0.15
#: Preview frames never go below this many pixels on their shorter side.
MIN_PREVIEW_SIDE = 48
#: The most pixels a full-size frame has unless ``--max-resolution`` says otherwise (1920×1080).
DEFAULT_MAX_PIXELS = 1920 * 1080
#: Full-size frames are rendered in bands of rows that take about this long at the cost of the frame's preview and
#: bands before: the most a moving camera waits for the band in progress, and the most a band overshoots the live
#: viewer's share of the training time (an untrained NeRF costs ~70 µs a pixel, a trained one ~2 µs and ~10 ms a
#: band).
BAND_SECONDS = 0.1
#: The pixels of a frame (or band) rendered before any cost is known.
FIRST_FRAME_PIXELS = 64 * 64
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


def frame_pixels(max_resolution: str | None) -> int:
    """``--max-resolution WIDTHxHEIGHT`` as a pixel count (:data:`DEFAULT_MAX_PIXELS` when not given). Raises
    UsageError naming the option."""
    from ngp_cli.commands import parse_resolution

    if max_resolution is None:
        return DEFAULT_MAX_PIXELS
    width, height = parse_resolution(max_resolution, (0, 0), "--max-resolution")
    return width * height


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` scaled down, aspect kept, to at most ``max_pixels`` pixels (never up; at least 1 pixel a
    side)."""
    if width * height <= max_pixels:
        return max(1, width), max(1, height)
    s = math.sqrt(max(max_pixels, 0) / (width * height))
    return max(1, int(width * s)), max(1, int(height * s))


@dataclass(frozen=True)
class ViewCamera:
    """A browser's camera: ``c2w`` (12 floats: a (3, 4) OpenGL camera-to-world, row-major) in the viewer's world,
    the vertical field of view ``fov_y`` in radians and the canvas size in pixels. Hashable: frames are keyed by it."""

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
        """(3, 4) float64 camera-to-world."""
        return np.array(self.c2w, dtype=np.float64).reshape(3, 4)

    def focal(self, height: int) -> float:
        """The focal length in pixels of an image ``height`` pixels high."""
        return 0.5 * height / math.tan(0.5 * self.fov_y)


class BackgroundLoop:
    """A daemon thread that calls ``step()`` until :meth:`stop`: after a step that did nothing (returned False) it
    sleeps until :meth:`wake` or ``idle_seconds()`` pass. The viewers' render threads."""

    def __init__(self, name: str, step: Any, idle_seconds: Any = lambda: 1.0) -> None:
        self._step, self._idle = step, idle_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._step():
                self._wake.wait(self._idle())
                self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread (waits for the step in progress, at most 30 s)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)


class _Tab:
    """What the frame schedule knows of one browser tab."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.changed_at = time.monotonic()
        self.preview: tuple | None = None  # key (camera, settings) of the last preview sent
        self.full: tuple | None = None  # key of the last full-size frame sent
        self.job: Iterator[None] | None = None  # the frame being rendered, a band per step
        self.job_key: tuple | None = None


class FrameServer:
    """The progressive frame schedule on a started ``viser.ViserServer`` (see the module docstring); a task's viewer
    subclasses it and gives :meth:`settings`, :meth:`render_band`, :meth:`to_image` and :meth:`frame_fields`.

    Args:
        server: the server (:func:`ngp_cli.viewer.server.start_server`).
        max_pixels: the most pixels a full-size frame has (the canvas is scaled down, aspect kept, beyond it).
        threaded: render on a thread of this object's (``ngp view``); False: only in :meth:`poll`, which the
            training loop calls between steps.
    """

    def __init__(self, server: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, threaded: bool = True) -> None:
        self.server = server
        self.max_pixels = int(max_pixels)
        self.frames_sent = 0
        self._tabs: dict[int, _Tab] = {}
        self._lock = threading.Lock()
        self._changed_at = time.monotonic()
        self._seconds_per_pixel: dict[Any, float] = {}
        self._status: Any = None
        self._training: Any = None
        self._loop: BackgroundLoop | None = None
        self._threaded = threaded
        self._generation = 0  # counts invalidations: a frame begun before one is sent but not taken as current

    def start(self) -> None:
        """Follow the server's tabs (and start the render thread when threaded). Call once the scene is built."""
        self._status = self.server.gui.add_markdown("")
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)
        if self._threaded:  # asleep until a tab changes, or a camera may have settled
            self._loop = BackgroundLoop("ngp-view-render", self._render_all, lambda: (
                0.02 if time.monotonic() - self._changed_at < 2 * SETTLE_SECONDS else 1.0))

    # -- what a task's viewer gives -------------------------------------------------------------------------------
    def settings(self) -> tuple:
        """The GUI choices an image depends on (hashable); a change re-renders every tab."""
        return ()

    def render_band(self, cam: ViewCamera, width: int, height: int, rows: tuple[int, int],
                    settings: tuple) -> np.ndarray:
        """Rows ``rows`` ``(top, count)`` of the width × height view of ``cam``: (count, width[, C]) numbers."""
        raise NotImplementedError

    def to_image(self, value: np.ndarray, settings: tuple) -> np.ndarray:
        """A whole rendered view (the bands stacked) as an (H, W, 3) uint8 image."""
        raise NotImplementedError

    def frame_fields(self, cam: ViewCamera, width: int, height: int) -> dict[str, Any]:
        """Extra fields of a full-size frame's ``{"event": "frame"}`` line (its camera, in the task's terms)."""
        return {}

    # -- tabs -----------------------------------------------------------------------------------------------------
    def _connect(self, client: Any) -> None:
        tab = _Tab(client)

        def moved(_camera: Any) -> None:
            tab.changed_at = time.monotonic()
            self._woken()

        client.camera.on_update(moved)
        with self._lock:
            self._tabs[client.client_id] = tab
        self._woken()

    def _woken(self) -> None:
        self._changed_at = time.monotonic()
        if self._loop is not None:
            self._loop.wake()

    def _disconnect(self, client: Any) -> None:
        with self._lock:
            self._tabs.pop(client.client_id, None)

    def invalidate(self) -> None:
        """Render every tab again, at full size where its camera is still (the settings or the model changed)."""
        with self._lock:
            self._generation += 1
            for tab in self._tabs.values():
                tab.preview = tab.full = None
        self._woken()

    def show_training(self, record: dict[str, Any]) -> None:
        """A training log record (``--viewer``): shown in the panel (step, loss, batch PSNR when the task has one),
        and every tab rendered again, the model having changed."""
        if self._training is None:
            self._training = self.server.gui.add_markdown("")
        psnr = record.get("batch_psnr")
        self._training.content = (f"step {record['step']}, loss {record['loss']:.4g}"
                                  + (f", batch PSNR {psnr:.2f} dB" if psnr is not None else ""))
        self.invalidate()

    @staticmethod
    def camera_of(client: Any) -> ViewCamera | None:
        """The camera of a browser tab, or None before its first report (no canvas size yet)."""
        cam = client.camera
        width, height = int(cam.image_width or 0), int(cam.image_height or 0)
        if width <= 0 or height <= 0:
            return None
        return ViewCamera.of(viser_to_c2w(cam.wxyz, cam.position), float(cam.fov), width, height)

    # -- the schedule ---------------------------------------------------------------------------------------------
    def _preview_size(self, cam: ViewCamera, settings: tuple) -> tuple[int, int]:
        """A preview's size: the pixels that take about :data:`PREVIEW_SECONDS` at the measured cost of these
        settings (:data:`FIRST_FRAME_PIXELS` before any measurement), at least :data:`MIN_PREVIEW_SIDE` on the
        shorter side, at most full size."""
        per_pixel = self._seconds_per_pixel.get(settings)
        budget = FIRST_FRAME_PIXELS if per_pixel is None else int(PREVIEW_SECONDS / per_pixel)
        floor = MIN_PREVIEW_SIDE * MIN_PREVIEW_SIDE * max(cam.width, cam.height) // max(min(cam.width, cam.height), 1)
        return fit_size(cam.width, cam.height, min(max(budget, floor), self.max_pixels))

    def _frame(self, tab: _Tab, key: tuple, width: int, height: int, full: bool) -> Iterator[None]:
        """Render and send one frame of ``key`` (camera, settings), yielding after each band."""
        cam, settings = key
        generation = self._generation
        parts, seconds, top = [], 0.0, 0
        per_pixel = self._seconds_per_pixel.get(settings)  # the next band's cost, followed band by band
        while top < height:
            rows = height - top
            if full:
                pixels = FIRST_FRAME_PIXELS if per_pixel is None else BAND_SECONDS / per_pixel
                rows = min(rows, max(1, int(pixels // width)))
            t0 = time.perf_counter()
            parts.append(self.render_band(cam, width, height, (top, rows), settings))
            band = time.perf_counter() - t0
            seconds += band
            per_pixel = band / (rows * width) if per_pixel is None else 0.5 * (per_pixel + band / (rows * width))
            top += rows
            if top < height:
                yield
        image = self.to_image(np.concatenate(parts, axis=0), settings)
        new = seconds / (width * height)
        old = self._seconds_per_pixel.get(settings)
        self._seconds_per_pixel[settings] = new if old is None else 0.5 * (old + new)
        current = generation == self._generation  # else the model changed while it was rendered: shown, not kept
        if not full:
            tab.handle.scene.set_background_image(image, format="jpeg", jpeg_quality=85)
            tab.preview = key if current else None
            return
        tab.handle.scene.set_background_image(image, format="png")
        if current:
            tab.full = tab.preview = key
        self.frames_sent += 1
        if self._status is not None:
            self._status.content = f"{width}×{height} in {seconds:.2f} s"
        emit("frame", client=tab.handle.client_id, width=width, height=height, render_s=round(seconds, 4),
             **self.frame_fields(cam, width, height))

    def _serve(self, tab: _Tab, max_bands: int | None) -> bool:
        """Advance ``tab``'s frame by up to ``max_bands`` bands (None: to its end), starting a new one if the tab
        needs it: a preview while its camera moves, the full-size frame once it has settled. Returns whether anything
        was rendered."""
        cam = self.camera_of(tab.handle)
        if cam is None:
            return False
        key = (cam, self.settings())
        if tab.job is not None and tab.job_key != key:  # moved (or new settings) mid-frame: drop it
            tab.job = None
        if tab.job is None:
            if tab.full == key:
                return False
            if tab.preview != key:  # a quick look first: while moving, and after the settings or the model changed
                width, height = self._preview_size(cam, key[1])
                tab.job = self._frame(tab, key, width, height, full=False)
            elif time.monotonic() - tab.changed_at >= SETTLE_SECONDS:
                width, height = fit_size(cam.width, cam.height, self.max_pixels)
                tab.job = self._frame(tab, key, width, height, full=True)
            else:
                return False
            tab.job_key = key
        bands = 0
        for _ in tab.job:
            bands += 1
            if (max_bands is not None and bands >= max_bands) or self.camera_of(tab.handle) != cam:
                return True
        tab.job = None
        return True

    def poll(self, max_bands: int = 1) -> float:
        """Render up to ``max_bands`` bands for the first tab that needs a frame (the training loop's call between
        steps). Returns the seconds spent."""
        t0 = time.perf_counter()
        with self._lock:
            tabs = list(self._tabs.values())
        for tab in tabs:
            if self._guarded(tab, max_bands):
                break
        return time.perf_counter() - t0

    def _guarded(self, tab: _Tab, max_bands: int | None) -> bool:
        try:
            return self._serve(tab, max_bands)
        except Exception as e:  # noqa: BLE001 - a tab that went away mid-frame, or a render error: shown, not fatal
            tab.job = None
            if self._status is not None:
                self._status.content = f"render failed: {type(e).__name__}: {e}"[:300]
            return False

    def _render_all(self) -> bool:
        """One round over the tabs on the render thread; whether any frame work was done."""
        with self._lock:
            tabs = list(self._tabs.values())
        worked = False
        for tab in tabs:
            worked |= self._guarded(tab, None)
        return worked

    def stop(self) -> None:
        """Stop the render thread (the server is the caller's)."""
        if self._loop is not None:
            self._loop.stop()

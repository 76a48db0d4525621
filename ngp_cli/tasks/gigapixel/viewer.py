"""``ngp view`` of an image run and ``ngp fit-image --viewer``: the reconstruction, the photo or the error map, at any
zoom, rendered for the pixels the browser shows.

The photo lies in the viewer's world as a rectangle in the plane z = 0: u (right) along +x, v (down) along -y, the
longer side 1 long, from (0, 0) at the top left corner. Each pixel's ray from the browser's camera meets the plane at
some (u, v); the network is evaluated there (the model is continuous, so zooming in shows what it makes of the space
between texels), the photo sampled bilinearly (:meth:`~ngp_cli.tasks.gigapixel.data.ImageTarget.sample`), and the
error map is their mean absolute difference over channels through the heat-map palette, saturating at 3 × the run's
final RMSE (the run's own error map: 3 × its last batch's). Outside the photo the frame is dark grey. Frames come
from the progressive schedule of :class:`~ngp_cli.viewer.frames.FrameServer`: only the visible part is ever evaluated,
a band of rows at a time, so a gigapixel photo costs what the screen costs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ngp_cli.viewer.frames import DEFAULT_MAX_PIXELS, FrameServer, ViewCamera, frame_pixels

__all__ = ["OUTPUTS", "ImageViewer", "image_rect", "view_command"]

#: What the viewer shows.
OUTPUTS = ("reconstruction", "photo", "error")
_OUTSIDE = np.array([40, 40, 40], dtype=np.uint8)


def image_rect(width: int, height: int) -> tuple[float, float]:
    """The photo's extent ``(sx, sy)`` in the viewer's world: its longer side 1."""
    m = float(max(width, height))
    return width / m, height / m


class ImageViewer(FrameServer):
    """The viewer of an image problem (:class:`~ngp_cli.tasks.gigapixel.fit.ImageProblem`) on a started viser server.

    Args:
        server: the server (:func:`ngp_cli.viewer.server.start_server`).
        problem: the problem, trained or training.
        run_dir: the run directory (its ``summary.json`` gives the error map's scale).
        step: the checkpoint's step, or None while training.
        max_pixels, threaded: as :class:`FrameServer`.
    """

    def __init__(self, server: Any, problem: Any, run_dir: Path, step: int | None, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 threaded: bool = True) -> None:
        super().__init__(server, max_pixels=max_pixels, threaded=threaded)
        self.problem, self.run_dir = problem, Path(run_dir)
        target = problem.target
        self.sx, self.sy = image_rect(target.width, target.height)
        self.error_vmax = _error_vmax(self.run_dir)
        gui = server.gui
        gui.add_markdown(f"**{self.run_dir.name}**" + (f", step {step}" if step is not None else ", training")
                         + f"; {target.width}×{target.height}")
        self._output = gui.add_dropdown("Output", OUTPUTS, initial_value="reconstruction")
        self._output.on_update(lambda _event: self.invalidate())
        server.scene.set_up_direction("+y")
        cam = server.initial_camera
        fov = math.radians(50.0)
        distance = 0.55 * max(self.sy, self.sx / 1.5) / math.tan(0.5 * fov)
        cam.up = (0.0, 1.0, 0.0)
        cam.position = (self.sx / 2, -self.sy / 2, distance)
        cam.look_at = (self.sx / 2, -self.sy / 2, 0.0)
        cam.fov = fov
        self.start()

    def settings(self) -> tuple[str]:
        return (str(self._output.value),)

    def render_band(self, cam: ViewCamera, width: int, height: int, rows: tuple[int, int],
                    settings: tuple) -> np.ndarray:
        """(count, width, 3) uint8: the output at the (u, v) where each pixel's ray meets the photo's plane."""
        c2w = cam.matrix
        f = cam.focal(height)
        ys = np.arange(rows[0], rows[0] + rows[1], dtype=np.float64) + 0.5
        xs = np.arange(width, dtype=np.float64) + 0.5
        px, py = np.meshgrid(xs, ys)
        d = np.stack([(px - width / 2) / f, -(py - height / 2) / f, -np.ones_like(px)], axis=-1) @ c2w[:, :3].T
        o = c2w[:, 3]
        out = np.empty((rows[1], width, 3), dtype=np.uint8)
        out[:] = _OUTSIDE
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -o[2] / d[..., 2]
        hit = np.isfinite(t) & (t > 0)
        x = o[0] + t * d[..., 0]
        y = o[1] + t * d[..., 1]
        u, v = x / self.sx, -y / self.sy
        hit &= (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
        if not hit.any():
            return out
        uv = np.stack([u[hit], v[hit]], axis=-1).astype(np.float32)
        out[hit] = self._colours(uv, settings[0])
        return out

    def _colours(self, uv: np.ndarray, output: str) -> np.ndarray:
        from ngp_cli.images import colormap, from_float

        if output != "reconstruction":
            ref = self.problem.target.sample(torch.from_numpy(uv)).numpy()
        if output != "photo":
            pred = self.problem.predict(uv, 1 << 18)
        if output == "error":
            return colormap(np.abs(pred - ref).mean(axis=1)[None], vmax=self.error_vmax)[0]
        value = pred if output == "reconstruction" else ref
        rgb = value[:, :3] if value.shape[1] >= 3 else np.repeat(value[:, :1], 3, axis=1)
        return from_float(np.clip(rgb, 0.0, 1.0), np.uint8)

    def to_image(self, value: np.ndarray, settings: tuple) -> np.ndarray:
        return value

    def frame_fields(self, cam: ViewCamera, width: int, height: int) -> dict[str, Any]:
        return {"output": self.settings()[0], "c2w": cam.matrix.tolist(), "fl_x": cam.focal(height)}


def _error_vmax(run_dir: Path) -> float:
    """The error map's saturation (:func:`~ngp_cli.tasks.gigapixel.fit.error_vmax`) at the run's final full-image
    MSE (its summary's ``mse``; the run's own error map used its last batch's); 0.1 when the run has none yet."""
    from ngp_cli.tasks.gigapixel.fit import error_vmax

    try:
        return error_vmax(float(json.loads((run_dir / "summary.json").read_text())["metrics"]["mse"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0.1


def view_command(task: Any, run_path: Path, *, host: str, port: int, max_resolution: str | None = None,
                 backend: str | None = None, data: Path | None = None) -> None:
    """``ngp view RUN`` for an image run: serve the viewer until interrupted (Ctrl-C: exit 130). stdout: a
    ``{"event": "serving"}`` line, then ``{"event": "frame"}`` per full-size frame. Raises UsageError (viser missing,
    bad options), DataError (the run or its photo), NoGPUError."""
    from ngp_cli.pipeline import load_trained
    from ngp_cli.viewer import require_viser
    from ngp_cli.viewer.server import serve, start_server

    require_viser()
    pixels = frame_pixels(max_resolution)
    run, problem, meta = load_trained(task, run_path, backend, data)
    server = start_server(host, port)
    viewer = ImageViewer(server, problem, run.path, int(meta["step"]), max_pixels=pixels)
    serve(server, viewer, run.path, int(meta["step"]))

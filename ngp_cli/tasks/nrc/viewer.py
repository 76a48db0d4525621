"""``ngp view`` of an NRC run: its frames, one at a time, and the three final images (the cache's mean image, the path
tracer at equal time and the reference), each fitted into the browser's canvas.

What it shows is what the run wrote: ``RUN/frames/frame_NNNNN.png`` (each frame as it was rendered while the cache
trained) and ``RUN/renders/{nrc,pt_equal_time,reference}.exr`` (linear HDR, tone-mapped as the run's own PNGs:
:func:`ngp_cli.tasks.nrc.fit.tonemap`). Only files inside the run directory are read. Frames come from the progressive
schedule of :class:`~ngp_cli.viewer.frames.FrameServer`, so each browser tab gets its image at its canvas's size
(viser stretches a background image to the canvas; letterboxing it here keeps the aspect).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ngp_cli.errors import DataError
from ngp_cli.viewer.frames import DEFAULT_MAX_PIXELS, FrameServer, ViewCamera, frame_pixels

__all__ = ["FINAL_IMAGES", "NrcViewer", "letterbox", "run_images", "view_command"]

#: The run's final images: (label, file under RUN/renders/).
FINAL_IMAGES = (("NRC (mean of frames)", "nrc.exr"), ("path tracer, equal time", "pt_equal_time.exr"),
                ("reference", "reference.exr"))
_BORDER = np.array([40, 40, 40], dtype=np.uint8)


def run_images(run_dir: Path) -> dict[str, Path]:
    """The images of an NRC run the viewer offers, label → file: its final images, then its frames in order. Files
    that resolve outside ``run_dir`` (a link out of it) are left out. Raises DataError when there is none."""
    root = Path(run_dir).resolve()
    found: dict[str, Path] = {}
    candidates = [(label, root / "renders" / name) for label, name in FINAL_IMAGES]
    frames = sorted((root / "frames").glob("frame_*.png")) if (root / "frames").is_dir() else []
    candidates += [(f"frame {i + 1}", p) for i, p in enumerate(frames)]
    for label, path in candidates:
        real = path.resolve()
        if real.is_file() and real.is_relative_to(root):
            found[label] = real
    if not found:
        raise DataError(f"{run_dir}: no frames/ or renders/ images to show (is the run finished?)")
    return found


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w, 3) uint8 → (height, width, 3) uint8: scaled to fit (nearest texel, aspect kept), centred on grey."""
    h, w = image.shape[:2]
    s = min(width / w, height / h)
    fw, fh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = _BORDER
    ys = np.minimum((np.arange(fh) + 0.5) * h / fh, h - 1).astype(np.int64)
    xs = np.minimum((np.arange(fw) + 0.5) * w / fw, w - 1).astype(np.int64)
    y0, x0 = (height - fh) // 2, (width - fw) // 2
    out[y0:y0 + fh, x0:x0 + fw] = image[ys[:, None], xs[None, :]]
    return out


class NrcViewer(FrameServer):
    """The viewer of an NRC run's images on a started viser server (a dropdown picks the image); ``images``: the run's
    :func:`run_images`."""

    def __init__(self, server: Any, run_dir: Path, images: dict[str, Path], *,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(server, max_pixels=max_pixels)
        self.images = images
        self._cache: dict[str, np.ndarray] = {}
        gui = server.gui
        gui.add_markdown(f"**{Path(run_dir).name}**: {len(self.images)} images")
        labels = list(self.images)
        self._choice = gui.add_dropdown("Image", labels, initial_value=labels[0])
        self._choice.on_update(lambda _event: self.invalidate())
        self.start()

    def image(self, label: str) -> np.ndarray:
        """The (h, w, 3) uint8 image of ``label`` (HDR files tone-mapped), read once."""
        if label not in self._cache:
            import torch

            from ngp_cli.images import read_image
            from ngp_cli.tasks.nrc.fit import tonemap

            path = self.images[label]
            a = np.asarray(read_image(path))
            if path.suffix == ".exr":
                a = tonemap(torch.from_numpy(np.ascontiguousarray(a[..., :3], dtype=np.float32)))
            self._cache[label] = np.ascontiguousarray(a[..., :3]).astype(np.uint8)
        return self._cache[label]

    def settings(self) -> tuple[str]:
        return (str(self._choice.value),)

    def render_band(self, cam: ViewCamera, width: int, height: int, rows: tuple[int, int],
                    settings: tuple) -> np.ndarray:
        return letterbox(self.image(settings[0]), width, height)[rows[0]:rows[0] + rows[1]]

    def to_image(self, value: np.ndarray, settings: tuple) -> np.ndarray:
        return value

    def frame_fields(self, cam: ViewCamera, width: int, height: int) -> dict[str, Any]:
        return {"image": self.settings()[0]}


def view_command(task: Any, run_path: Path, *, host: str, port: int, max_resolution: str | None = None,
                 backend: str | None = None, data: Path | None = None) -> None:
    """``ngp view RUN`` for an NRC run: serve its images until interrupted (Ctrl-C: exit 130). No model is loaded
    (``backend`` and ``data``, every run command's options, do not apply). Raises UsageError (viser missing),
    DataError (not a run, or nothing to show)."""
    from ngp_cli.runs import RunDir
    from ngp_cli.viewer import require_viser
    from ngp_cli.viewer.server import serve, start_server

    require_viser()
    pixels = frame_pixels(max_resolution)
    run = RunDir(run_path)
    images = run_images(run.path)  # nothing to show: refused before the server starts
    server = start_server(host, port)
    viewer = NrcViewer(server, run.path, images, max_pixels=pixels)
    step = len([k for k in images if k.startswith("frame ")])
    serve(server, viewer, run.path, step, f", {len(images)} images")

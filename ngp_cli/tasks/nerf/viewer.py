"""``ngp view`` of a NeRF run and ``ngp train-nerf --viewer``: progressive frames from each browser's camera
(:class:`~ngp_cli.viewer.frames.FrameServer`), the training cameras and the scene box, a choice of output, and
keyframes exported as a nerfstudio ``camera_path.json``.

The viewer's world is the run's ngp frame (the dataset's world scaled by ``scale`` and shifted by ``offset``,
:mod:`ngp_cli.tasks.nerf.cameras`), so rays come straight from viser's camera. Each full-size frame's
``{"event": "frame"}`` line gives its camera in the dataset's world frame (transforms.json conventions: OpenGL
``c2w``, ``fl_x`` in pixels), so a script can render the same view with ``ngp render --camera-path``.

The baked grid (``ngp bake``) is the source when the run has one (``RUN/baked.safetensors`` or ``--baked FILE``); the
panel switches between it and the network. During training (``--viewer``) the network is the source, the panel shows
the step, the loss and the batch PSNR, and frames are rendered between steps within the time share the trainer
allows (:class:`ngp_cli.viewer.live.LiveView`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ngp_cli.console import emit, info
from ngp_cli.errors import OutputError, UsageError
from ngp_cli.viewer.frames import DEFAULT_MAX_PIXELS, FrameServer, ViewCamera, c2w_to_viser, frame_pixels

__all__ = ["OUTPUTS", "NerfViewer", "nerfstudio_camera_path", "view_command"]

#: The outputs the viewer shows (the network also gives normals; the baked grid does not, so they are left out).
OUTPUTS = ("rgb", "depth", "accumulation")


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


class NerfViewer(FrameServer):
    """The viewer of one NeRF problem on a started ``viser.ViserServer`` (frames: :class:`FrameServer`).

    Args:
        server: the server (:func:`ngp_cli.viewer.server.start_server`).
        problem: the NeRF problem, trained (:func:`ngp_cli.pipeline.load_trained`) or training.
        run_dir: the run directory (camera paths are written to ``run_dir/camera_paths/``).
        step: the checkpoint's step (shown), or None while training.
        baked: a :class:`~ngp_cli.volrend.baked.BakedGrid` on the problem's device, or None.
        max_pixels: the most pixels a full-size frame has.
        helpers: show the training cameras and the scene box at start (the panel toggles them).
        threaded: as :class:`FrameServer` (False while training: frames come from :meth:`poll`).
    """

    def __init__(self, server: Any, problem: Any, run_dir: Path, step: int | None, baked: Any = None, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, helpers: bool = True, threaded: bool = True) -> None:
        super().__init__(server, max_pixels=max_pixels, threaded=threaded)
        self.problem, self.run_dir, self.baked, self.helpers = problem, Path(run_dir), baked, bool(helpers)
        ds = problem.dataset
        self.scale, self.offset = float(ds.scale), tuple(float(v) for v in ds.offset)
        self.keyframes: list[ViewCamera] = []
        self._depth_vmax: float | None = None
        self._scene(ds)
        self._gui(step)
        self.start()

    # -- scene and panel ------------------------------------------------------------------------------------------
    def _scene(self, ds: Any) -> None:
        from ngp_cli.tasks.nerf.camera_path import scene_center, up_axis

        c2w = ds.c2w.detach().cpu().double().numpy()
        up = up_axis(c2w)
        center = scene_center(c2w)
        self.server.scene.set_up_direction(up)
        size = float(self.problem.aabb_scale)  # the scene box: aabb_scale wide, centred on the unit cube's centre
        self._box = self.server.scene.add_box("/scene_box", color=(255, 160, 0), dimensions=(size, size, size),
                                              wireframe=True, position=(0.5, 0.5, 0.5),
                                              visible=self.helpers, cast_shadow=False, receive_shadow=False)
        intr = ds.intrinsics.detach().cpu().double().numpy().reshape(-1, 4)
        span = float(np.linalg.norm(c2w[:, :, 3] - center, axis=1).mean())
        self._frusta = []
        for i in range(c2w.shape[0]):
            wxyz, pos = c2w_to_viser(c2w[i])
            self._frusta.append(self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}", fov=2.0 * math.atan(0.5 * ds.height / float(intr[min(i, len(intr) - 1), 1])),
                aspect=ds.width / ds.height, scale=0.03 * span, thickness=1.5, thickness_units="screen",
                color=(40, 90, 200), wxyz=wxyz, position=pos, visible=self.helpers, cast_shadow=False,
                receive_shadow=False))
        cam = self.server.initial_camera
        cam.up = up
        cam.position = c2w[0, :, 3]
        cam.look_at = center
        cam.fov = 2.0 * math.atan(0.5 * ds.height / float(intr[0, 1]))

    def _gui(self, step: int | None) -> None:
        gui = self.server.gui
        gui.add_markdown(f"**{self.run_dir.name}**" + (f", step {step}" if step is not None else ", training"))
        sources = ["baked", "network"] if self.baked is not None else ["network"]
        self._source = gui.add_dropdown("Source", sources, initial_value=sources[0])
        self._output = gui.add_dropdown("Output", OUTPUTS, initial_value="rgb")
        show_cameras = gui.add_checkbox("Training cameras", initial_value=self.helpers)
        show_box = gui.add_checkbox("Scene box", initial_value=self.helpers)
        for handle in (self._source, self._output):
            handle.on_update(lambda _event: self.invalidate())
        show_cameras.on_update(lambda _e: [setattr(f, "visible", show_cameras.value) for f in self._frusta])
        show_box.on_update(lambda _e: setattr(self._box, "visible", show_box.value))
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

    # -- keyframes ------------------------------------------------------------------------------------------------
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
        from ngp_cli.runs import atomic_write_text

        folder = self.run_dir / "camera_paths"
        stem, k = name[:-5], 0
        out = folder / name
        try:
            folder.mkdir(exist_ok=True)
        except OSError as e:
            raise OutputError(f"{folder}: cannot create the camera-path folder: {e.strerror or e}") from None
        while out.exists():
            k += 1
            out = folder / f"{stem}-{k}.json"
        atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
        info(f"wrote {out} ({len(self.keyframes)} keyframes, {len(doc['camera_path'])} frames)")
        emit("camera_path", path=str(out), keyframes=len(self.keyframes), frames=len(doc["camera_path"]))
        return out

    # -- frames ---------------------------------------------------------------------------------------------------
    def settings(self) -> tuple[str, str]:
        """``(source, output)`` chosen in the panel."""
        return str(self._source.value), str(self._output.value)

    def render_band(self, cam: ViewCamera, width: int, height: int, rows: tuple[int, int],
                    settings: tuple) -> np.ndarray:
        """Rows of the view of ``cam`` from the network or the baked grid: the output's numbers
        (:func:`~ngp_cli.tasks.nerf.views.render_camera`)."""
        from ngp_cli.tasks.nerf.views import render_camera

        source, output = settings
        c2w = torch.as_tensor(cam.matrix, dtype=torch.float32)
        return render_camera(self.problem, c2w, cam.focal(height), width, height, output,
                             baked=self.baked if source == "baked" else None,
                             min_transmittance=self.problem.cfg.nerf.render_min_transmittance, rows=rows)

    def to_image(self, value: np.ndarray, settings: tuple) -> np.ndarray:
        """The output's colours as ``ngp render`` maps them (depth: one scale for the session, from its first
        depth frame)."""
        from ngp_cli.mesh.shade import depth_scale, map_image

        output = settings[1]
        if output == "depth" and self._depth_vmax is None:
            self._depth_vmax = depth_scale(value)
        return map_image(output, value, self._depth_vmax or 1.0)

    def render(self, cam: ViewCamera, width: int, height: int, source: str = "network",
               output: str = "rgb") -> np.ndarray:
        """The whole (height, width, 3) uint8 image of ``cam`` at this size, as a tab would get it."""
        settings = (source, output)
        return self.to_image(self.render_band(cam, width, height, (0, height), settings), settings)

    def frame_fields(self, cam: ViewCamera, width: int, height: int) -> dict[str, Any]:
        source, output = self.settings()
        return {"source": source, "output": output, "c2w": _world(cam.matrix, self.scale, self.offset).tolist(),
                "fl_x": cam.focal(height), "fov_y": cam.fov_y}


def view_command(task: Any, run_path: Path, *, host: str, port: int, baked: Path | None = None,
                 max_resolution: str | None = None, helpers: bool = True, backend: str | None = None,
                 data: Path | None = None) -> None:
    """``ngp view RUN`` for a NeRF run: serve the viewer until interrupted (Ctrl-C: exit 130). stdout: a
    ``{"event": "serving", "url": ...}`` line once the server listens, then ``{"event": "frame"}`` per full-size frame
    and ``{"event": "camera_path"}`` per export. Raises UsageError (viser missing, bad options), DataError (the run or
    its baked file), NoGPUError."""
    from ngp_cli.tasks.nerf.evaluate import _baked_on, load_run
    from ngp_cli.viewer import require_viser
    from ngp_cli.viewer.server import serve, start_server
    from ngp_cli.volrend.baked import load_baked

    require_viser()
    pixels = frame_pixels(max_resolution)
    run, problem, step = load_run(task, run_path, backend, data)
    grid = None
    source = baked if baked is not None else run.path / "baked.safetensors"
    if baked is not None or source.is_file():
        grid = _baked_on(load_baked(source), source, run, step, problem)
    server = start_server(host, port)
    viewer = NerfViewer(server, problem, run.path, step, grid, max_pixels=pixels, helpers=helpers)
    serve(server, viewer, run.path, step, f", baked grid {source}" if grid is not None else "",
          baked=str(source) if grid is not None else None)

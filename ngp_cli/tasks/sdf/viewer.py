"""``ngp view`` of an SDF run and ``ngp train-sdf --viewer``: the extracted mesh, and a movable slice plane coloured by
the network's signed distance.

The viewer's world is the run's unit cube (the input mesh's frame scaled into [0, 1]³, :class:`~ngp_cli.mesh.io.
UnitFrame`), where the network is defined. The mesh is its zero level set by marching cubes
(:func:`ngp_cli.tasks.sdf.evaluate.extract`); viser draws it, so moving the camera costs the server nothing. The slice
is a square as wide as the cube, in the local xy plane of a gizmo the user drags and turns; the signed distance is
evaluated at :data:`SLICE_PIXELS`² points of it, shown through a diverging palette (red outside, blue inside,
saturating at :data:`SLICE_RANGE` cube units) with dark contour lines every :data:`CONTOUR_STEP` and the surface
itself black. During training (``--viewer``) the slice follows the model at every log step, and the mesh is extracted
again, at :data:`LIVE_MESH_RESOLUTION`³, once the time share allows it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ngp_cli.viewer.frames import BackgroundLoop

__all__ = ["CONTOUR_STEP", "LIVE_MESH_RESOLUTION", "SLICE_PIXELS", "SLICE_RANGE", "SdfViewer", "slice_image",
           "view_command"]

#: The slice's side in samples.
SLICE_PIXELS = 256
#: Signed distances (unit-cube units) at which the slice's palette saturates.
SLICE_RANGE = 0.25
#: The slice's contour lines, every this many unit-cube units (the surface, 0, drawn black).
CONTOUR_STEP = 0.02
#: Marching-cubes resolution of the mesh shown while training.
LIVE_MESH_RESOLUTION = 128


def slice_image(sdf: np.ndarray) -> np.ndarray:
    """(H, W) signed distances (unit-cube units) → (H, W, 3) uint8: red outside, blue inside (matplotlib's ``RdBu``
    reversed, saturating at ±:data:`SLICE_RANGE`), darkened along contours every :data:`CONTOUR_STEP`, black on the
    surface (within a quarter step)."""
    from matplotlib import colormaps

    rgb = colormaps["RdBu_r"](np.clip(0.5 + 0.5 * sdf / SLICE_RANGE, 0.0, 1.0))[..., :3]
    phase = np.abs(sdf / CONTOUR_STEP - np.round(sdf / CONTOUR_STEP))
    rgb = rgb * np.where(phase < 0.06, 0.55, 1.0)[..., None]
    rgb[np.abs(sdf) < 0.25 * CONTOUR_STEP] = 0.0
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class SdfViewer:
    """The viewer of an SDF problem (:class:`~ngp_cli.tasks.sdf.fit.SdfProblem`) on a started viser server.

    Args:
        server: the server (:func:`ngp_cli.viewer.server.start_server`).
        problem: the problem, trained or training.
        run_dir: the run directory (shown).
        step: the checkpoint's step, or None while training.
        resolution: the mesh's marching-cubes resolution.
        threaded: slice updates on a thread of their own (``ngp view``); False: in :meth:`poll`, between training
            steps.
    """

    def __init__(self, server: Any, problem: Any, run_dir: Path, step: int | None, *, resolution: int = 256,
                 threaded: bool = True) -> None:
        self.server, self.problem, self.resolution = server, problem, int(resolution)
        self.meshes_sent = self.slices_sent = 0
        self._slice_pose: tuple | None = None  # the pose the slice image shows
        self._mesh_stale = True
        self._loop: BackgroundLoop | None = None
        gui = server.gui
        gui.add_markdown(f"**{Path(run_dir).name}**" + (f", step {step}" if step is not None else ", training"))
        self._training = gui.add_markdown("") if step is None else None
        self._show_mesh = gui.add_checkbox("Mesh", initial_value=True)
        self._show_slice = gui.add_checkbox("Slice", initial_value=True)
        self._status = gui.add_markdown("")
        server.scene.set_up_direction("+z")
        server.scene.add_box("/unit_cube", color=(255, 160, 0), dimensions=(1.0, 1.0, 1.0), wireframe=True,
                             position=(0.5, 0.5, 0.5), cast_shadow=False, receive_shadow=False)
        self._gizmo = server.scene.add_transform_controls("/slice", scale=0.35, position=(0.5, 0.5, 0.5),
                                                          depth_test=False)
        self._gizmo.on_update(lambda _event: self._loop is not None and self._loop.wake())
        self._slice = None
        self._mesh = None
        self._show_mesh.on_update(lambda _e: self._mesh is not None and setattr(
            self._mesh, "visible", self._show_mesh.value))
        self._show_slice.on_update(lambda _e: self._slice is not None and setattr(
            self._slice, "visible", self._show_slice.value))
        cam = server.initial_camera
        cam.up = (0.0, 0.0, 1.0)
        cam.position = (1.9, -1.2, 1.4)
        cam.look_at = (0.5, 0.5, 0.5)
        if threaded:
            self.update_mesh(self.resolution)
            self._loop = BackgroundLoop("ngp-view-slice", self._slice_step)

    def pose(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The slice gizmo's ``(wxyz, position)`` as tuples of floats (hashable: the slice image is keyed by it)."""
        return tuple(float(v) for v in self._gizmo.wxyz), tuple(float(v) for v in self._gizmo.position)

    def slice_points(self, wxyz: Any, position: Any, n: int = SLICE_PIXELS) -> np.ndarray:
        """(n, n, 3) float32 unit-cube points of the slice with that pose: the square [-0.5, 0.5]² of the gizmo's
        local xy plane, pixel centres, row 0 at local +y (the top of the image viser draws)."""
        from scipy.spatial.transform import Rotation

        w, x, y, z = (float(v) for v in wxyz)
        rot = Rotation.from_quat([x, y, z, w]).as_matrix()
        s = (np.arange(n, dtype=np.float64) + 0.5) / n - 0.5
        lx, ly = np.meshgrid(s, -s)
        local = np.stack([lx, ly, np.zeros_like(lx)], axis=-1)
        return (local @ rot.T + np.asarray(position, dtype=np.float64)).astype(np.float32)

    def slice_sdf(self, points: np.ndarray) -> np.ndarray:
        """The network's signed distance at (..., 3) float32 unit-cube points, float32 of the same leading shape."""
        from ngp_cli.mesh.extract import evaluate_field

        values = evaluate_field(self.problem.field, np.ascontiguousarray(points.reshape(-1, 3), dtype=np.float32),
                                self.problem.cfg.sdf.query_chunk, self.problem.device)
        return values.reshape(points.shape[:-1])

    def update_slice(self) -> None:
        """Evaluate and send the slice at the gizmo's pose."""
        pose = self.pose()
        image = slice_image(self.slice_sdf(self.slice_points(*pose)))
        self._slice = self.server.scene.add_image("/slice/sdf", image, 1.0, 1.0, format="png",
                                                  visible=self._show_slice.value, cast_shadow=False,
                                                  receive_shadow=False)
        self._slice_pose = pose
        self.slices_sent += 1

    def update_mesh(self, resolution: int) -> None:
        """Extract the zero level set at ``resolution``³ and send it."""
        from ngp_cli.tasks.sdf.evaluate import extract

        t0 = time.perf_counter()
        mesh = extract(self.problem, resolution, normals=False)
        verts, faces = mesh["unit_vertices"].astype(np.float32), mesh["faces"].astype(np.int32)
        if len(faces):
            self._mesh = self.server.scene.add_mesh_simple("/mesh", verts, faces, color=(200, 200, 210),
                                                           visible=self._show_mesh.value)
        self._status.content = f"mesh {resolution}³: {len(faces):,} triangles ({time.perf_counter() - t0:.1f} s)"
        self._mesh_stale = False
        self.meshes_sent += 1

    def poll(self, max_bands: int = 1) -> float:
        """One piece of work, if any is due and a browser is connected (the training loop's call between steps): the
        slice when the gizmo moved or the model changed, else the mesh when the model changed. Returns the seconds
        spent."""
        t0 = time.perf_counter()
        if not self.server.get_clients():  # nobody watching: nothing to keep up to date
            return 0.0
        if self._slice_pose != self.pose():
            self.update_slice()
        elif self._mesh_stale:
            self.update_mesh(min(self.resolution, LIVE_MESH_RESOLUTION))
        return time.perf_counter() - t0

    def show_training(self, record: dict[str, Any]) -> None:
        """A training log record: shown, and the slice and the mesh marked out of date."""
        if self._training is not None:
            self._training.content = f"step {record['step']}, loss {record['loss']:.4g}"
        self._slice_pose = None
        self._mesh_stale = True

    def _slice_step(self) -> bool:
        """The slice thread's step: the slice again if the gizmo moved; whether it did."""
        pose = self.pose()
        if self._slice_pose == pose:
            return False
        try:
            self.update_slice()
        except Exception as e:  # noqa: BLE001 - shown in the panel, not fatal
            self._status.content = f"slice failed: {type(e).__name__}: {e}"[:300]
            self._slice_pose = pose
        return True

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()


def view_command(task: Any, run_path: Path, *, host: str, port: int, resolution: int = 256,
                 backend: str | None = None, data: Path | None = None) -> None:
    """``ngp view RUN`` for an SDF run: serve the viewer until interrupted (Ctrl-C: exit 130). stdout: a
    ``{"event": "serving"}`` line once the mesh is extracted and the server listens (the browser draws the mesh: no
    frame size or helpers to set). Raises UsageError (viser missing), DataError (the run or its mesh), NoGPUError."""
    from ngp_cli.tasks.sdf.evaluate import load_run
    from ngp_cli.viewer import require_viser
    from ngp_cli.viewer.server import serve, start_server

    require_viser()
    run, problem, meta = load_run(task, run_path, backend, data)
    server = start_server(host, port)
    viewer = SdfViewer(server, problem, run.path, int(meta["step"]), resolution=resolution)
    serve(server, viewer, run.path, int(meta["step"]), f", mesh {resolution}³")


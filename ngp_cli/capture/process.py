"""``ngp process-data INPUT OUT_DIR``: a video or a folder of photos -> camera poses -> ``OUT_DIR/transforms.json``.

Output folder (loads with ``ngp train-nerf OUT_DIR``, and with instant-ngp's testbed)::

    transforms.json       intrinsics (fl_x fl_y cx cy w h, camera_angle_x/y, k1 k2 p1 p2), aabb_scale,
                          ply_file_path, and one frame per registered image: file_path (images/<name>), sharpness,
                          transform_matrix (4x4 OpenGL camera-to-world, instant-ngp's colmap2nerf frame)
    images/               every image given (also the unregistered ones), copied or box-downscaled
    sparse_points.ply     COLMAP's 3-D points with their colours, in the frame of transform_matrix
    colmap/sparse/0/      the COLMAP model (cameras.bin, images.bin, points3D.bin, ...), in COLMAP's own frame

When the images do not all have one size, each frame carries its own intrinsics (and a warning says that
``ngp train-nerf`` needs one size). Writing is atomic: everything is built in a hidden temporary folder beside
``OUT_DIR`` (``.<name>.<random>.tmp``) and renamed into place only once complete; on any failure (fewer than 3
registered images included) the temporary folder is removed and ``OUT_DIR`` is left as it was. An existing ``OUT_DIR``
must be empty, unless ``overwrite``: the old folder is then replaced only after the new one is complete.

Source: instant-ngp scripts/colmap2nerf.py (the pipeline and every convention), nerfstudio ``ns-process-data``
(``ply_file_path``, the sharpest frame per window of a video).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ngp_cli.console import info, is_quiet, progress, warn
from ngp_cli.errors import DataError, OutputError, UsageError

from .convert import choose_aabb_scale, intrinsics, normalize_scene
from .frames import (
    DEFAULT_NUM_FRAMES,
    IMAGE_SUFFIXES,
    CapturedImage,
    extract_video_frames,
    import_images,
    list_images,
    probe_video,
)
from .sfm import DEFAULT_THREADS, run_sfm

__all__ = ["MIN_REGISTERED", "ProcessResult", "check_out_dir", "process_data"]

MIN_REGISTERED = 3
_STAGES = 5
_MAX_NAMES = 10  # unregistered images named in the warning line


@dataclass
class ProcessResult:
    """What :func:`process_data` made (the ``done`` line's fields).

    Attributes:
        out_dir: the published folder.
        source: ``"video"`` or ``"images"``.
        images_given: images written to ``images/`` (the frames kept from a video, or the folder's photos).
        images_registered: images with a pose in the largest COLMAP model (the frames of transforms.json).
        unregistered: names of the others.
        mean_reprojection_error_px: COLMAP's mean reprojection error of the model's 3-D points, in pixels.
        aabb_scale: the chosen power of two (see :func:`~ngp_cli.capture.convert.choose_aabb_scale`).
        points: sparse 3-D points written to sparse_points.ply.
        frames_decoded: frames decoded from the video (None for a folder).
        mapping_runs: incremental mapping runs made (more than 1 when a model contradicted its matches).
        pairs_checked: verified image pairs the model was checked against.
        pairs_contradicted: those whose matches the kept model contradicts (mostly false matches when few).
        timings_s: seconds per stage (frames, features, matching, mapping, write).
    """

    out_dir: Path
    source: str
    images_given: int
    images_registered: int
    unregistered: list[str]
    mean_reprojection_error_px: float
    aabb_scale: int
    points: int
    frames_decoded: int | None
    mapping_runs: int = 1
    pairs_checked: int = 0
    pairs_contradicted: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (symlinks resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_out_dir(out_dir: Path, overwrite: bool, input_path: Path) -> None:
    """Refuse an ``OUT_DIR`` that cannot be (re)placed, before any work.

    Raises:
        OutputError: ``out_dir`` exists and is not a folder.
        UsageError: ``out_dir`` is a non-empty folder and ``overwrite`` is False; or ``overwrite`` would delete the
            input (``input_path`` is ``out_dir`` or inside it).
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder; give a new or empty folder for the output")
    if _within(input_path, out_dir):
        raise UsageError(f"{input_path}: the input is inside OUT_DIR {out_dir}; give another output folder")
    try:
        empty = next(out_dir.iterdir(), None) is None
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot read the folder: {exc.strerror or exc}") from None
    if not empty and not overwrite:
        raise UsageError(f"{out_dir}: the folder exists and is not empty; pass --overwrite to replace it")


def _make_temp(out_dir: Path) -> Path:
    """A new hidden folder ``.<name>.<8 hex>.tmp`` beside ``out_dir`` (parents created), with the usual
    umask-derived permissions (unlike mkdtemp's 0o700), since it becomes ``out_dir``. Raises OutputError."""
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            tmp = parent / f".{out_dir.name}.{secrets.token_hex(4)}.tmp"
            try:
                tmp.mkdir()
            except FileExistsError:
                continue
            return tmp
        raise FileExistsError(f"no free temporary name beside {out_dir}")
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create a folder beside it: {exc.strerror or exc}") from None


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the complete ``tmp`` to ``out_dir``; an existing ``out_dir`` is set aside first and deleted only after the
    rename succeeded (restored if it failed). Raises OutputError."""
    old: Path | None = None
    try:
        if out_dir.exists() or out_dir.is_symlink():
            old = out_dir.parent / f".{out_dir.name}.{secrets.token_hex(4)}.old"
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if old is not None:
                os.rename(old, out_dir)
                old = None
            raise
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot move the result into place: {exc.strerror or exc}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _stage(k: int, text: str) -> None:
    info(f"process-data [{k}/{_STAGES}] {text}")


def _names_line(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f" and {len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else "")


def _frame_intrinsics(rec: Any, image: Any) -> dict[str, float]:
    cam = rec.cameras[image.camera_id]
    return intrinsics(cam.model.name, cam.width, cam.height, cam.params)


def _write_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY of float32 x y z and uint8 red green blue alpha (trimesh). Raises OutputError."""
    import trimesh

    rgba = np.concatenate([colors.astype(np.uint8).reshape(-1, 3),
                           np.full((len(colors), 1), 255, dtype=np.uint8)], axis=1)
    try:
        if len(points):
            data = trimesh.PointCloud(points.astype(np.float64), colors=rgba).export(file_type="ply")
        else:  # trimesh cannot export an empty cloud: the same header with no vertices
            data = (b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                    b"property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
                    b"property uchar alpha\nend_header\n")
        path.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _transforms(rec: Any, registered: list[Any], scene: Any, captured: dict[str, CapturedImage], aabb_scale: int,
                ) -> dict[str, Any]:
    """The transforms.json document: shared intrinsics at the top level when every registered image uses one camera,
    else per frame."""
    per_frame = len({im.camera_id for im in registered}) > 1
    doc: dict[str, Any] = {}
    if not per_frame:
        doc.update(_frame_intrinsics(rec, registered[0]))
    doc["aabb_scale"] = int(aabb_scale)
    doc["ply_file_path"] = "sparse_points.ply"
    frames = []
    for k, im in enumerate(registered):
        frame: dict[str, Any] = {"file_path": f"images/{im.name}", "sharpness": captured[im.name].sharpness}
        if per_frame:
            frame.update(_frame_intrinsics(rec, im))
        frame["transform_matrix"] = scene.c2w[k].tolist()
        frames.append(frame)
    doc["frames"] = frames
    return doc


def process_data(input_path: Path, out_dir: Path, *, matching: str = "exhaustive", num_frames: int | None = None,
                 downscale: int = 1, overwrite: bool = False, threads: int = DEFAULT_THREADS) -> ProcessResult:
    """Turn a video or a folder of photos into a NeRF dataset in ``out_dir`` (see the module for the layout).

    Args:
        input_path: a video file (anything ffmpeg decodes) or a folder of .jpg/.jpeg/.png photos (at least 3).
        out_dir: output folder: new, empty, or replaced when ``overwrite``.
        matching: ``"exhaustive"`` (every pair; photos) or ``"sequential"`` (neighbours in name order; video).
        num_frames: frames to keep from a video, the sharpest of each of that many equal windows (default
            :data:`~ngp_cli.capture.frames.DEFAULT_NUM_FRAMES`); ignored, with a warning, for a folder.
        downscale: box-filter factor >= 1 for the written images (COLMAP then runs on the smaller images).
        overwrite: replace a non-empty ``out_dir``.
        threads: COLMAP threads (default 2).
    Returns:
        a :class:`ProcessResult`.
    Raises:
        DataError (exit 4): a missing input, a single image as input, a folder without images or with fewer than 3,
            an unreadable image, a video that does not decode or has no frames, fewer than 3 registered images.
        UsageError (exit 2): a non-empty ``out_dir`` without ``overwrite``, an input inside ``out_dir``.
        OutputError (exit 6): ``out_dir`` is a file, or the output cannot be written.
    Nothing is written to ``out_dir`` unless the whole run succeeds.
    """
    t_start = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    if not input_path.exists():
        raise DataError(f"{input_path}: no such file or folder (expected a video file or a folder of images)")
    is_video = not input_path.is_dir()
    if is_video and input_path.suffix.lower() in IMAGE_SUFFIXES:
        raise DataError(f"{input_path}: a single image; give a folder of at least {MIN_REGISTERED} images or a video")
    check_out_dir(out_dir, overwrite, input_path)
    photos: list[Path] = []
    if is_video:
        width, height = probe_video(input_path)
        if width < downscale or height < downscale:
            raise DataError(f"{input_path}: frames are {width}x{height}, smaller than --downscale {downscale}")
    else:
        if num_frames is not None:
            warn("--num-frames applies to videos; ignored for a folder of images")
        photos = list_images(input_path)
        if len(photos) < MIN_REGISTERED:
            raise DataError(f"{input_path}: {len(photos)} image(s); structure from motion needs at least "
                            f"{MIN_REGISTERED}")
    timings: dict[str, float] = {}
    tmp = _make_temp(out_dir)
    try:
        images_dir = tmp / "images"
        images_dir.mkdir()
        t0 = time.perf_counter()
        frames_decoded: int | None = None
        if is_video:
            n_keep = DEFAULT_NUM_FRAMES if num_frames is None else int(num_frames)
            _stage(1, f"decoding {input_path}, keeping the sharpest of {n_keep} windows")
            with progress(None, "frames") as advance:
                captured_list, frames_decoded = extract_video_frames(input_path, images_dir, n_keep, downscale,
                                                                     advance)
            if len(captured_list) < MIN_REGISTERED:
                raise DataError(f"{input_path}: {len(captured_list)} frame(s); structure from motion needs at least "
                                f"{MIN_REGISTERED}")
        else:
            if downscale > 1:
                _stage(1, f"downscaling {len(photos)} images from {input_path} by {downscale}")
            else:
                _stage(1, f"copying {len(photos)} images from {input_path}")
            with progress(len(photos), "images") as advance:
                captured_list = import_images(photos, images_dir, downscale, advance)
        timings["frames"] = time.perf_counter() - t0
        captured = {c.name: c for c in captured_list}
        sizes = {(c.width, c.height) for c in captured_list}
        if len(sizes) > 1:
            listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
            warn(f"images of mixed sizes ({listed}{', ...' if len(sizes) > 4 else ''}): COLMAP gets one camera per "
                 "image, but ngp train-nerf needs one size; resize them to one size to train")

        work = tmp / "colmap"
        work.mkdir()
        labels = {"features": (2, "SIFT features"), "matching": (3, f"{matching} matching"),
                  "mapping": (4, "incremental mapping")}
        marks: dict[str, float] = {}
        advance_mapping: list[Any] = []
        advance_matching: list[Any] = []

        with contextlib.ExitStack() as stack:

            def stage(name: str) -> None:
                k, text = labels[name]
                if name == "mapping" and advance_mapping:
                    text += f" (run {len(advance_mapping) + 1})"
                _stage(k, text)
                marks.setdefault(name, time.perf_counter())
                if name == "mapping":  # progress counts registered images, from the start of each mapping run
                    advance_mapping.append(stack.enter_context(progress(len(captured_list), "registered")))
                if name == "matching":  # progress counts matched image pairs (their number comes with the first)
                    advance_matching.append(stack.enter_context(progress(None, "pairs")))

            def registered() -> None:
                if advance_mapping:
                    advance_mapping[-1]()

            def matched(n: int, total: int) -> None:
                if advance_matching:
                    advance_matching[0](n, total=total)

            sfm = run_sfm(images_dir, work, matching=matching, single_camera=len(sizes) == 1, threads=threads,
                          quiet=is_quiet(), stage=stage, registered=registered, note=warn, matched=matched)
        rec, consistency = sfm.reconstruction, sfm.consistency
        t_sfm = time.perf_counter()
        timings["features"] = marks.get("matching", t_sfm) - marks.get("features", t_sfm)
        timings["matching"] = marks.get("mapping", t_sfm) - marks.get("matching", t_sfm)
        timings["mapping"] = t_sfm - marks.get("mapping", t_sfm)

        n_given = len(captured_list)
        n_reg = 0 if rec is None else rec.num_reg_images()
        if n_reg < MIN_REGISTERED:
            raise DataError(f"{input_path}: COLMAP registered {n_reg} of {n_given} images, at least {MIN_REGISTERED} "
                            "are needed (more overlap between views, more texture, or --matching exhaustive may "
                            "help); nothing written")
        assert rec is not None
        _stage(5, "writing transforms.json, sparse_points.ply and the COLMAP model")
        reg_images = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
        reg_names = {im.name for im in reg_images}
        unregistered = [c.name for c in captured_list if c.name not in reg_names]
        if unregistered:
            warn(f"{len(unregistered)} of {n_given} images not registered (left out of transforms.json): "
                 f"{_names_line(unregistered)}")
        if consistency.strong:
            a, b, n = consistency.strong[0]
            warn(f"after {sfm.attempts} mapping runs the model still contradicts the matches of "
                 f"{len(consistency.strong)} image pair(s) (e.g. {a} - {b}, {n} inliers): some poses may be wrong; "
                 "more overlapping views, or removing views of repeated structure, may help")
        cam_from_world = np.stack([im.cam_from_world().matrix() for im in reg_images])
        point_ids = sorted(rec.points3D.keys())
        xyz = np.array([rec.points3D[i].xyz for i in point_ids], dtype=np.float64).reshape(-1, 3)
        rgb = np.array([rec.points3D[i].color for i in point_ids], dtype=np.uint8).reshape(-1, 3)
        try:
            scene = normalize_scene(cam_from_world, xyz)
        except ValueError as exc:
            raise DataError(f"{input_path}: COLMAP's model cannot be used: {exc}") from None
        aabb_scale = choose_aabb_scale(scene.points)
        doc = _transforms(rec, reg_images, scene, captured, aabb_scale)
        error = float(rec.compute_mean_reprojection_error())

        shutil.rmtree(work)  # the database and every model; the kept one is written again below
        model_dir = tmp / "colmap" / "sparse" / "0"
        model_dir.mkdir(parents=True)
        rec.write(model_dir)
        _write_ply(tmp / "sparse_points.ply", scene.points, rgb)
        try:
            (tmp / "transforms.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{tmp / 'transforms.json'}: cannot write: {exc.strerror or exc}") from None
        timings["write"] = time.perf_counter() - t_sfm
        _publish(tmp, out_dir)
    except OSError as exc:  # a scratch folder that cannot be made or removed
        raise OutputError(f"{out_dir}: cannot write: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    timings["total"] = time.perf_counter() - t_start
    return ProcessResult(out_dir=out_dir, source="video" if is_video else "images", images_given=n_given,
                         images_registered=n_reg, unregistered=unregistered, mean_reprojection_error_px=error,
                         aabb_scale=aabb_scale, points=int(len(point_ids)), frames_decoded=frames_decoded,
                         mapping_runs=sfm.attempts, pairs_checked=consistency.pairs,
                         pairs_contradicted=len(consistency.contradicted),
                         timings_s={k: round(v, 3) for k, v in timings.items()})

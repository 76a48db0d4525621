"""Structure from motion through pycolmap (COLMAP's Python bindings): SIFT, matching, incremental mapping, and a
check of the model against the matches.

The same steps as instant-ngp's scripts/colmap2nerf.py runs with the ``colmap`` binary (``feature_extractor``,
``exhaustive_matcher``/``sequential_matcher``, ``mapper``), through pycolmap's API instead, so no COLMAP install is
needed:

1. :func:`pycolmap.extract_features`: SIFT on the CPU, camera model ``OPENCV`` (fx, fy, cx, cy, k1, k2, p1, p2; as
   colmap2nerf's default), one camera shared by all images when they have one size (``CameraMode.SINGLE``, as
   colmap2nerf's ``--ImageReader.single_camera 1``), else one per image;
2. matching of every pair (exhaustive; for photos) or of each image with its neighbours in name order (sequential;
   for video frames), as :func:`pycolmap.match_exhaustive` / :func:`pycolmap.match_sequential` pair them, in chunks
   (see :func:`_match`). colmap2nerf turns on guided matching (matching again under the verified two-view geometry);
   here it is on only when the images have at most :data:`GUIDED_MAX_KEYPOINTS` (2000) SIFT keypoints on average,
   because on the CPU its cost grows with the square of the keypoints (45 pairs of the fox photos: 1298 keypoints an
   image 0.7 -> 1.4 s, 3996 keypoints 2.2 -> 16.7 s, 7700 keypoints at 1080x1920 2.4 -> 35 s), while on small images it
   pays (the 200 px synthetic test video: rotation errors at most 0.39 degree instead of 0.88);
3. :func:`pycolmap.incremental_mapping`, which may give several models; the one with the most registered images
   is kept (ties: the one with more 3-D points). COLMAP 4's structure-less registration fallback is turned off:
   images are registered through 3-D points only, as in COLMAP 3 and colmap2nerf.
4. :func:`check_consistency`: every verified image pair of the database whose images are both registered is checked
   against the model: the pair's inlier matches must mostly (half or more) lie within 4 px of the epipolar lines of
   the model's relative pose. A mapping run can glue a group of views in at a wrong place through false matches
   (repeated or symmetric structure): of 8 runs on instant-ngp's fox photos, two put a group of views (10 and 19 of
   the 50) about 6.7 units away with the right rotations, contradicting pairs of up to 906 inliers, while their
   reprojection error stayed 0.83 px; good runs contradict only pairs of at most 137 inliers (false matches), where
   three quarters of the pairs have fewer than 254. When the model contradicts a pair with more inliers than three
   quarters of the checked pairs, mapping runs again with another seed (at most :data:`MAPPING_ATTEMPTS` runs in all)
   and the model that contradicts the least is kept.

COLMAP's threads are limited to :data:`DEFAULT_THREADS` (2) unless told otherwise, and every step runs on the CPU
(``Device.cpu``, ``use_gpu = False``), so the result does not depend on a GPU being present. Random seeds are fixed
(:data:`SEED` for the matches' RANSAC and the first mapping run); multi-threaded runs can still differ slightly from
run to run. COLMAP's own log lines (glog, on stderr) are limited to warnings and errors, errors only with ``--quiet``.

pycolmap is imported inside the functions: this module can be imported without it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CAMERA_MODEL",
    "DEFAULT_THREADS",
    "EPIPOLAR_PX",
    "GUIDED_MAX_KEYPOINTS",
    "MAPPING_ATTEMPTS",
    "MATCHING",
    "SEED",
    "Consistency",
    "SfmResult",
    "check_consistency",
    "run_sfm",
]

CAMERA_MODEL = "OPENCV"
DEFAULT_THREADS = 2
MATCHING: tuple[str, ...] = ("exhaustive", "sequential")
SEED = 0
MAPPING_ATTEMPTS = 3
EPIPOLAR_PX = 4.0  # COLMAP's RANSAC threshold for two-view geometry (TwoViewGeometryOptions.ransac.max_error)
_MIN_PAIR_INLIERS = 15  # COLMAP's default TwoViewGeometryOptions.min_num_inliers
_MAX_MATCH_CALLS = 20  # matching runs in at most this many chunks of pairs (Ctrl-C is seen between them) ...
_MIN_PAIRS_PER_CALL = 64  # ... of at least this many pairs (sequential matching)
GUIDED_MAX_KEYPOINTS = 2000  # guided matching only up to this mean number of SIFT keypoints an image
_EXHAUSTIVE_GROUPS = 5  # exhaustive matching: images in 5 groups, one chunk per pair of groups (15 chunks)


@dataclass
class Consistency:
    """How well a model agrees with the verified matches of its database (see :func:`check_consistency`).

    Attributes:
        pairs: verified image pairs checked (both images registered, at least 15 inlier matches).
        inliers: their inlier matches, in all.
        contradicted: pairs whose inliers mostly disagree with the model, as (name, name, inliers), most inliers
            first.
        upper_quartile: the 75th percentile of the checked pairs' inlier counts.
    """

    pairs: int = 0
    inliers: int = 0
    contradicted: list[tuple[str, str, int]] = field(default_factory=list)
    upper_quartile: float = 0.0

    @property
    def contradicted_inliers(self) -> int:
        """Inlier matches of the contradicted pairs."""
        return sum(n for _, _, n in self.contradicted)

    @property
    def contradicted_share(self) -> float:
        """Share (0..1) of the checked inlier matches that belong to contradicted pairs."""
        return self.contradicted_inliers / self.inliers if self.inliers else 0.0

    @property
    def strong(self) -> list[tuple[str, str, int]]:
        """Contradicted pairs with more inliers than three quarters of the checked pairs: a sign of misplaced views
        (false matches rarely reach that many)."""
        return [p for p in self.contradicted if p[2] > self.upper_quartile]


@dataclass
class SfmResult:
    """What :func:`run_sfm` found.

    Attributes:
        reconstruction: the kept :class:`pycolmap.Reconstruction` (None when mapping built no model).
        consistency: its :class:`Consistency` with the matches (empty when there is no model).
        attempts: mapping runs made (1 to :data:`MAPPING_ATTEMPTS`).
    """

    reconstruction: Any | None
    consistency: Consistency
    attempts: int


@contextlib.contextmanager
def _cancel_on_ctrl_c() -> Iterator[Any]:
    """A :class:`pycolmap.CancellationToken` that Ctrl-C (SIGINT) cancels while the block runs; the block's
    ``InterruptedError`` (what pycolmap raises when cancelled) becomes ``KeyboardInterrupt``.

    pycolmap checks for signals inside its long calls but, left alone, swallows Ctrl-C (measured: the run went on to
    the end); with the token it stops within seconds. Outside the main thread no handler can be installed and the
    token is never cancelled."""
    import pycolmap

    token = pycolmap.CancellationToken()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda signum, frame: token.cancel())
    try:
        yield token
    except InterruptedError:
        if _cancelled(token):
            raise KeyboardInterrupt from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if _cancelled(token):
        raise KeyboardInterrupt


def _cancelled(token: Any) -> bool:
    """Whether ``token`` was cancelled (``is_cancelled`` is a property in pycolmap 4, a method in some releases)."""
    value = token.is_cancelled
    return bool(value() if callable(value) else value)


def _quiet_colmap(quiet: bool) -> None:
    """glog's threshold: warnings and errors (1), or errors only (2) when ``quiet``."""
    import pycolmap

    pycolmap.logging.minloglevel = 2 if quiet else 1


def check_consistency(reconstruction: Any, database_path: Path, threshold_px: float = EPIPOLAR_PX) -> Consistency:
    """Check a model against the verified matches of its COLMAP database.

    For every verified pair (at least 15 inlier matches) whose two images the model registered, the inlier
    keypoints are unprojected with the model's cameras (distortion removed) and their distance to the epipolar
    lines of the model's relative pose is measured, in pixels of the second image (normalised distance times its mean
    focal length). The pair is contradicted when fewer than half of its inliers lie within ``threshold_px``.

    Args:
        reconstruction: a :class:`pycolmap.Reconstruction` of the database's images (matched by image name).
        database_path: the COLMAP database (SQLite) with keypoints and two-view geometries.
        threshold_px: epipolar distance in pixels (default 4, COLMAP's RANSAC threshold).
    Returns:
        a :class:`Consistency`.
    Source: the epipolar constraint x_j^T E x_i = 0 with E = [t]x R (Hartley & Zisserman, Multiple View Geometry,
        9.6); COLMAP's database layout.
    """
    import pycolmap

    registered = {image.name: image for image in reconstruction.images.values() if image.has_pose}
    poses = {name: np.asarray(image.cam_from_world().matrix(), dtype=np.float64) for name, image in registered.items()}
    db = pycolmap.Database.open(str(database_path))
    try:
        names = {int(image.image_id): image.name for image in db.read_all_images()}
        pair_ids, geometries = db.read_two_view_geometries()
        keypoints: dict[int, np.ndarray] = {}

        def points(image_id: int, idx: np.ndarray) -> np.ndarray:
            if image_id not in keypoints:
                keypoints[image_id] = np.asarray(db.read_keypoints(image_id), dtype=np.float64)[:, :2]
            return keypoints[image_id][idx]

        counts: list[int] = []
        contradicted: list[tuple[str, str, int]] = []
        for pair_id, geometry in zip(pair_ids, geometries, strict=True):
            i, j = (int(v) for v in pycolmap.pair_id_to_image_pair(pair_id))
            name_i, name_j = names.get(i), names.get(j)
            matches = np.asarray(geometry.inlier_matches)
            if len(matches) < _MIN_PAIR_INLIERS or name_i not in poses or name_j not in poses:
                continue
            a, b = poses[name_i], poses[name_j]
            rot = b[:, :3] @ a[:, :3].T
            t = b[:, 3] - rot @ a[:, 3]
            norm = np.linalg.norm(t)
            if norm < 1e-12:  # same centre: no epipolar geometry to check
                continue
            t = t / norm
            essential = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]]) @ rot
            cam_i, cam_j = registered[name_i].camera, registered[name_j].camera
            xi = cam_i.cam_from_img(points(i, matches[:, 0]))
            xj = cam_j.cam_from_img(points(j, matches[:, 1]))
            xi = np.concatenate([xi, np.ones((len(xi), 1))], axis=1)
            xj = np.concatenate([xj, np.ones((len(xj), 1))], axis=1)
            lines = xi @ essential.T
            dist = np.abs((lines * xj).sum(axis=1)) / np.maximum(np.linalg.norm(lines[:, :2], axis=1), 1e-12)
            counts.append(len(matches))
            if np.mean(dist * cam_j.mean_focal_length() <= threshold_px) < 0.5:
                contradicted.append((name_i, name_j, len(matches)))
    finally:
        db.close()
    contradicted.sort(key=lambda p: -p[2])
    return Consistency(pairs=len(counts), inliers=int(sum(counts)), contradicted=contradicted,
                       upper_quartile=float(np.percentile(counts, 75)) if counts else 0.0)


def _rank(result: tuple[Any, Consistency]) -> tuple[int, int, float]:
    """Sort key, best first: no strongly contradicted pair, then more registered images, then the smaller
    contradicted share."""
    rec, cons = result
    return (1 if cons.strong else 0, -int(rec.num_reg_images()), cons.contradicted_share)


def run_sfm(
    image_dir: Path,
    work_dir: Path,
    *,
    matching: str = "exhaustive",
    single_camera: bool = True,
    threads: int = DEFAULT_THREADS,
    quiet: bool = False,
    stage: Callable[[str], None] | None = None,
    registered: Callable[[], None] | None = None,
    note: Callable[[str], None] | None = None,
    matched: Callable[[int, int], None] | None = None,
) -> SfmResult:
    """Run SIFT extraction, matching, incremental mapping and its check on every image of ``image_dir``.

    Args:
        image_dir: folder of images (names are COLMAP's image names; sequential matching follows their order).
        work_dir: existing empty scratch folder for COLMAP's database (``database.db``) and models.
        matching: ``"exhaustive"`` or ``"sequential"``.
        single_camera: one camera for all images (they must share a size), else one per image.
        threads: COLMAP threads for every step (>= 1).
        quiet: only COLMAP's error lines on stderr.
        stage: called with a short label as each step starts (``"features"``, ``"matching"``, then ``"mapping"``
            once per mapping run).
        registered: called each time the mapper registers another image (progress).
        note: called with a one-line explanation before a mapping run is repeated.
        matched: called as ``matched(n, total)`` after each chunk of ``n`` of the ``total`` image pairs is matched.
    Returns:
        an :class:`SfmResult`. The model's poses are COLMAP's: ``image.cam_from_world()`` maps world points to OpenCV
        camera coordinates (x right, y down, z forward), world units arbitrary.
    Raises:
        ValueError: an unknown ``matching`` or ``threads < 1`` (programming errors).
        ImportError: pycolmap is not installed (callers check first).
        KeyboardInterrupt: Ctrl-C (pycolmap's current step is cancelled, within seconds).
    Source: instant-ngp scripts/colmap2nerf.py ``run_colmap``; pycolmap's ``extract_features``, ``match_*``,
        ``incremental_mapping``.
    """
    if matching not in MATCHING:
        raise ValueError(f"matching must be one of {', '.join(MATCHING)}, got {matching!r}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    _quiet_colmap(quiet)
    with _cancel_on_ctrl_c() as token:
        return _run(image_dir, Path(work_dir), matching, single_camera, threads, stage, registered, note, token,
                    matched)


def _chunks(pairs: list[tuple[int, int]], names: dict[int, str], matching: str) -> list[list[tuple[int, int]]]:
    """Split ``pairs`` (image ids) into the chunks :func:`_match` matches one call each.

    Each call loads the descriptors of every image in its chunk (about 0.05 s an image for 8192 SIFT features on a
    busy 2-core machine), so chunks should touch few images. Sequential pairs are local already: runs of at least
    :data:`_MIN_PAIRS_PER_CALL` in the generator's order, at most :data:`_MAX_MATCH_CALLS` of them. Exhaustive pairs
    are grouped into blocks: the images, in name order, are cut into 5 groups, and each chunk is the pairs between
    two groups (15 chunks, each touching at most 2/5 of the images).
    """
    if matching == "sequential":
        size = max(_MIN_PAIRS_PER_CALL, -(-len(pairs) // _MAX_MATCH_CALLS))
        return [pairs[k:k + size] for k in range(0, len(pairs), size)]
    rank = {image_id: k for k, image_id in enumerate(sorted(names, key=lambda i: names[i]))}
    block = max(1, -(-len(rank) // _EXHAUSTIVE_GROUPS))
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, j in pairs:
        a, b = sorted((rank[i] // block, rank[j] // block))
        groups.setdefault((a, b), []).append((i, j))
    return [groups[key] for key in sorted(groups)]


def _match(database: Path, matching: str, options: Any, verification: Any, threads: int, token: Any,
           matched: Callable[[int, int], None] | None) -> None:
    """Match and verify the image pairs of ``matching`` (pycolmap's exhaustive or sequential pair generator), in
    chunks of pairs (:func:`pycolmap.match_image_pairs`, chunks from :func:`_chunks`), so that Ctrl-C is seen between
    chunks: pycolmap's matchers hold on to the signal until they finish (measured: 130 s on the fox photos). The same
    pairs and, with the seeded RANSAC, the same matches as one :func:`pycolmap.match_exhaustive` call (measured on 10
    fox photos). Names with white space cannot go into COLMAP's pair list file: then one uninterruptible call does it
    all."""
    import pycolmap

    cpu = pycolmap.Device.cpu
    db = pycolmap.Database.open(str(database))
    try:
        names = {int(image.image_id): image.name for image in db.read_all_images()}
        if matching == "sequential":
            pairing = pycolmap.SequentialPairingOptions()
            pairing.num_threads = threads
            pairs = pycolmap.SequentialPairGenerator(pairing, db).all_pairs()
        else:
            pairs = pycolmap.ExhaustivePairGenerator(pycolmap.ExhaustivePairingOptions(), db).all_pairs()
    finally:
        db.close()
    if any(len(name.split()) != 1 for name in names.values()):
        if matching == "sequential":
            pycolmap.match_sequential(database, matching_options=options, pairing_options=pairing,
                                      verification_options=verification, device=cpu, cancellation_token=token)
        else:
            pycolmap.match_exhaustive(database, matching_options=options, verification_options=verification,
                                      device=cpu, cancellation_token=token)
        if matched:
            matched(len(pairs), len(pairs))
        return
    pair_file = database.parent / "pairs.txt"
    for part in _chunks([(int(i), int(j)) for i, j in pairs], names, matching):
        if _cancelled(token):
            raise KeyboardInterrupt
        pair_file.write_text("".join(f"{names[int(i)]} {names[int(j)]}\n" for i, j in part), encoding="utf-8")
        imported = pycolmap.ImportedPairingOptions()
        imported.match_list_path = str(pair_file)
        pycolmap.match_image_pairs(database, matching_options=options, pairing_options=imported,
                                   verification_options=verification, device=cpu, cancellation_token=token)
        if matched:
            matched(len(part), len(pairs))


def _run(image_dir: Path, work_dir: Path, matching: str, single_camera: bool, threads: int,
         stage: Callable[[str], None] | None, registered: Callable[[], None] | None,
         note: Callable[[str], None] | None, token: Any,
         matched: Callable[[int, int], None] | None = None) -> SfmResult:
    """:func:`run_sfm`'s steps, every pycolmap call cancellable through ``token``."""
    import pycolmap

    pycolmap.set_random_seed(SEED)
    database = Path(work_dir) / "database.db"
    cpu = pycolmap.Device.cpu

    if stage:
        stage("features")
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = CAMERA_MODEL
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.use_gpu = False
    mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE
    pycolmap.extract_features(database, image_dir, camera_mode=mode, reader_options=reader,
                              extraction_options=extraction, device=cpu, cancellation_token=token)

    if stage:
        stage("matching")
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = threads
    options.use_gpu = False
    db = pycolmap.Database.open(str(database))
    try:
        mean_keypoints = db.num_keypoints() / max(db.num_images(), 1)
    finally:
        db.close()
    options.guided_matching = bool(mean_keypoints <= GUIDED_MAX_KEYPOINTS)
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = SEED
    _match(database, matching, options, verification, threads, token, matched)

    results: list[tuple[Any, Consistency]] = []
    attempts = 0
    for attempt in range(MAPPING_ATTEMPTS):
        attempts += 1
        if stage:
            stage("mapping")
        seed = SEED + attempt
        pycolmap.set_random_seed(seed)
        mapping = pycolmap.IncrementalPipelineOptions()
        mapping.num_threads = threads
        mapping.random_seed = seed
        mapping.mapper.num_threads = threads
        mapping.mapper.random_seed = seed
        mapping.triangulation.random_seed = seed
        if hasattr(mapping, "structure_less_registration_fallback"):
            mapping.structure_less_registration_fallback = False
        models = Path(work_dir) / f"sparse-{attempt}"
        models.mkdir()
        callback = (lambda: registered()) if registered else None
        reconstructions = pycolmap.incremental_mapping(database, image_dir, models, options=mapping,
                                                       next_image_callback=callback, cancellation_token=token)
        if not reconstructions:
            break  # another seed rarely helps a database that gives no model at all
        rec = max(reconstructions.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
        consistency = check_consistency(rec, database)
        results.append((rec, consistency))
        if not consistency.strong:
            break
        if note and attempt + 1 < MAPPING_ATTEMPTS:
            a, b, n = consistency.strong[0]
            note(f"the model contradicts the matches of {len(consistency.strong)} image pair(s) (e.g. {a} - {b}, "
                 f"{n} inliers): some views are misplaced; mapping again with another seed "
                 f"({attempt + 2}/{MAPPING_ATTEMPTS})")
    if not results:
        return SfmResult(None, Consistency(), attempts)
    rec, consistency = min(results, key=_rank)
    return SfmResult(rec, consistency, attempts)

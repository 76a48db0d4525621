"""The NeRF task (paper §5.4): ``ngp train-nerf [DATASET]`` on instant-ngp/NeRF ``transforms.json`` captures, with
``ngp eval`` and ``ngp render`` for its runs.

Imported by the plugin registry on every ``ngp`` call: only the task's declaration lives here; torch and the work are
imported inside its hooks, from :mod:`ngp_cli.tasks.nerf.fit` and :mod:`ngp_cli.tasks.nerf.evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ngp_cli.commands import (
    MESH_OPTIONS,
    ORBIT_OPTION,
    RENDER_OPTIONS,
    VIEW_HELPERS_OPTION,
    VIEW_OPTIONS,
    VIEW_SIZE_OPTION,
    NprocOpt,
    choices,
    plain_choice,
)
from ngp_cli.console import info, warn
from ngp_cli.tasks import RunCommand, Shorthand, Task, TrainInput
from ngp_cli.tasks.nerf.config import NerfConfig, NerfSection

__all__ = ["NerfConfig", "NerfSection", "NerfTask"]


def _default_scene() -> Path:
    from ngp_cli.tasks.nerf.synthetic import ensure_synthetic_scene

    path = ensure_synthetic_scene()
    info(f"no dataset given: training on the built-in synthetic scene {path}")
    return path


SplitChoice = choices("SplitChoice", ("val", "test", "train"))
_EVALUATE = "ngp_cli.tasks.nerf.evaluate"
_BAKED_EVAL = ("baked", Annotated[Path | None, typer.Option(
    "--baked", help="Also render every view from this baked grid (ngp bake) and report both PSNRs and the loss, in "
                    "RUN/eval_<split>_baked.json.")], None)
_BAKED_RENDER = ("baked", Annotated[Path | None, typer.Option(
    "--baked", help="Render from this baked grid (ngp bake) instead of the network: rgb, depth or accumulation.")],
                 None)
_BAKE_OPTIONS = (
    ("out", Annotated[Path | None, typer.Option(
        "--out", help="The .safetensors file to write (default: RUN/baked.safetensors).")], None),
    ("subdivisions", Annotated[int, typer.Option(
        "--subdivisions", min=1, max=4, help="Fine voxels per occupied cell side (4: 512³ over the unit cube).")], 4),
    ("sh_degree", Annotated[int, typer.Option(
        "--sh-degree", min=1, max=2, help="Spherical-harmonics degree of the colour (1: 4 coefficients per channel, "
                                          "2: 9).")], 2),
    ("max_memory", Annotated[str, typer.Option(
        "--max-memory", help="Memory budget of the bake's own buffers, e.g. 2GiB, 512MiB.")], "2GiB"),
    ("min_alpha", Annotated[float, typer.Option(
        "--min-alpha", min=0.0, max=0.999, help="Store the voxels whose opacity over one voxel reaches this, and their "
                                                "neighbours.")], 0.1),
    ("overwrite", Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing --out (only once the new file is complete).")], False),
)


class NerfTask(Task):
    name = "nerf"
    summary = "Neural radiance field from posed photos, occupancy-grid ray marching (paper §5.4)"
    commands = ("train-nerf", "eval", "render", "extract-mesh", "bake", "view")
    parallel_evaluation = True  # data parallel: the held-out views are shared out (views.evaluate_views)
    partitioned = True  # distributed.partition: ngp_cli.tasks.nerf.partition
    default_preset = "nerf"
    default_preset_cpu = "nerf-cpu"
    run_commands = (
        RunCommand("eval", f"{_EVALUATE}:eval_command", """Evaluate a NeRF run on held-out views: PSNR and SSIM per view
        (a {"event":"view"} line each), their means in RUN/eval_<split>.json and the final {"event":"done"} line.""",
                   options=(("split", Annotated[SplitChoice | None, typer.Option(
                       "--split", callback=plain_choice, help="The split to evaluate (default: the run's "
                                                              "nerf.eval_split).")], None),
                            _BAKED_EVAL, ("nproc", NprocOpt, 1))),
        RunCommand("render", f"{_EVALUATE}:render_command", """Render novel views of a NeRF run along a camera path or
        an orbit, to a video or PNG frames: colour, depth, accumulation or normals.""", options=(
            ("camera_path", Annotated[Path | None, typer.Option(
                "--camera-path", help="Camera path JSON: transforms.json-style frames, nerfstudio's camera_path.json "
                                      "or instant-ngp's base_cam.json (docs/examples/).")], None),
            ("dataparser_transforms", Annotated[Path | None, typer.Option(
                "--dataparser-transforms", help="nerfstudio's dataparser_transforms.json, to map a nerfstudio path "
                                                "from its normalised frame to the dataset's (default: the one beside "
                                                "the path file, if any).")], None),
            ("seconds", Annotated[float | None, typer.Option(
                "--seconds", help="Duration of a keyframed path (default: nerfstudio's own; instant-ngp: 1 s per "
                                  "keyframe transition).")], None),
            ORBIT_OPTION, *RENDER_OPTIONS, _BAKED_RENDER,
            ("min_transmittance", Annotated[float | None, typer.Option(
                "--min-transmittance", help="Stop a ray once its transmittance falls below this, in [0, 1) "
                                            "(default: the run's nerf.render_min_transmittance, 0.01 as instant-ngp "
                                            "renders frames; 1e-4 renders what ngp eval scores).")], None),
            ("nproc", NprocOpt, 1))),
        RunCommand("extract-mesh", f"{_EVALUATE}:extract_mesh_command", """Extract the density level set of a NeRF
        run as a triangle mesh (marching cubes), in the dataset's world frame, with vertex colours and shaded renders
        in RUN/renders/.""", options=(
            *MESH_OPTIONS,
            ("threshold", Annotated[float, typer.Option(
                "--threshold", help="The density iso-level (instant-ngp's default 2.5).")], 2.5),
            ("colors", Annotated[bool, typer.Option(
                "--colors/--no-colors", help="Vertex colours from the colour network, viewed along the "
                                             "normal.")], True))),
        RunCommand("view", "ngp_cli.tasks.nerf.viewer:view_command", """Serve a web viewer of a NeRF run (viser, the
        'viewer' extra): progressive rendering from the browser's camera, from the baked grid when the run has one,
        the training cameras and the scene box, rgb/depth/accumulation, and keyframes exported as a nerfstudio
        camera_path.json into RUN/camera_paths/.""", options=(
            *VIEW_OPTIONS, VIEW_SIZE_OPTION, VIEW_HELPERS_OPTION, ("baked", Annotated[Path | None, typer.Option(
                "--baked", help="Show this baked grid (ngp bake) (default: RUN/baked.safetensors when it "
                                 "exists).")], None))),
        RunCommand("bake", "ngp_cli.tasks.nerf.bake:bake_command", """Bake a NeRF run into a sparse voxel grid
        (density and spherical-harmonics colour at the fine voxels of its occupied cells, docs/baked.md) that renders
        without the network: RUN/baked.safetensors, for ngp render/eval RUN --baked FILE.""", options=_BAKE_OPTIONS),
    )
    input_value_keys = ("nerf.aabb_scale",)
    train_command = "train-nerf"
    train_help = """Train a NeRF (hash grid + density/colour MLPs + occupancy grid) and write checkpoints, held-out PSNR,
    renders of held-out views and the summary.

    stdout: JSON lines (a final {"event":"done",...}); stderr: progress and logs.
    """
    train_input = TrainInput(
        "dataset", "nerf.path", help="Dataset folder (transforms.json or transforms_{train,val,test}.json) or a "
                                     "transforms JSON. Default: the built-in synthetic scene (generated once, no "
                                     "download).", default=_default_scene)
    shorthands = (
        Shorthand("--downscale", "nerf.downscale", "Load images reduced N times (shorthand for --set nerf.downscale=N).",
                  min=1),
        Shorthand("--allow-outside-root", "nerf.allow_outside_root",
                  "Accept frames whose file_path leaves the dataset folder.", bool),
    )

    def config_class(self) -> type:
        return NerfConfig

    def load_input(self, cfg: NerfConfig, fresh: bool) -> Any:
        """The training split and the scene box; a fresh run records the box, the cone angle, the occupancy start
        (``nerf.occupancy_init``'s ``auto`` becomes ``points`` when ``nerf.sparse_points`` is set or the dataset holds
        ``sparse_points.ply``, as ``ngp process-data`` writes it, else ``full``) and, with ``points``, the sparse
        points' path (after reading them, so a missing or corrupt PLY is a DataError before anything is written).
        Warns, one line per finding, when the cameras sit far outside the scene box or look at a point off its centre
        (:mod:`ngp_cli.tasks.nerf.placement`), on a fresh run."""
        from ngp_cli.tasks.nerf.config import cone_angle, scene_aabb_scale
        from ngp_cli.tasks.nerf.data import load_split
        from ngp_cli.tasks.nerf.placement import (
            measure_placement,
            placement_findings,
            read_sparse_points,
            sparse_points_path,
        )

        train_set = load_split(cfg, "train")
        aabb_scale = scene_aabb_scale(cfg, train_set)
        if fresh:  # said once, when the run is made (not on --resume, eval or render)
            placement = measure_placement(train_set.c2w, aabb_scale, train_set.intrinsics, train_set.width,
                                          train_set.height)
            for finding in placement_findings(placement, train_set.scale, train_set.offset):
                warn(f"camera placement: {finding}")
            cfg.nerf.aabb_scale = aabb_scale
            if cfg.nerf.cone_angle is None:
                cfg.nerf.cone_angle = cone_angle(cfg, aabb_scale)
            if cfg.nerf.occupancy_init == "auto":  # points where the capture has them (issue 16's measurement)
                found = sparse_points_path(cfg.nerf.sparse_points, train_set.root).is_file()
                cfg.nerf.occupancy_init = "points" if found or cfg.nerf.sparse_points else "full"
            if cfg.nerf.occupancy_init == "points":
                path = sparse_points_path(cfg.nerf.sparse_points, train_set.root)
                read_sparse_points(path)  # read again by NerfProblem.prepare_grid; here only to fail early
                cfg.nerf.sparse_points = str(path)
            elif cfg.nerf.sparse_points:
                warn(f"nerf.sparse_points is set but nerf.occupancy_init is {cfg.nerf.occupancy_init}: the points are "
                     "not used (set nerf.occupancy_init=points to seed the occupancy grid from them)")
        return train_set, aabb_scale

    def build_problem(self, cfg: NerfConfig, backend: Any, data: Any) -> Any:
        train_set, aabb_scale = data
        if cfg.distributed.partition > 1:  # NeRF-XL's spatial partitioning (issue 19)
            from ngp_cli.tasks.nerf.partition import PartitionedNerfProblem

            return PartitionedNerfProblem(train_set, cfg, backend, aabb_scale)
        from ngp_cli.tasks.nerf.fit import NerfProblem

        return NerfProblem(train_set, cfg, backend, aabb_scale)

    def describe(self, cfg: NerfConfig, data: Any, problem: Any) -> str:
        train_set, aabb_scale = data
        return (f"dataset {cfg.nerf.path}: {len(train_set)} training views {train_set.width}x{train_set.height}, "
                f"aabb_scale {aabb_scale}")

    def before_fit(self, problem: Any, trainer: Any, restored: bool) -> None:
        if not restored:
            marked = problem.prepare_grid()
            info(f"occupancy grid: {problem.model.grid.cascades} cascade(s) of 128³, {marked:,} cells unseen by any "
                 "training camera")

    def live_viewer(self, server: Any, problem: Any, run_dir: Any) -> Any:
        from ngp_cli.tasks.nerf.viewer import NerfViewer

        return NerfViewer(server, problem, run_dir, None, threaded=False)

    def evaluate(self, problem: Any, run: Any, state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from ngp_cli.tasks.nerf.evaluate import final_evaluation

        metrics, artifacts = final_evaluation(problem, run, state.step)
        counts = problem.parameter_counts() if hasattr(problem, "parameter_counts") else {}
        return {**metrics, "occupied_fraction": problem.occupied_fraction(), **counts}, artifacts

    def benchmark_renders(self, run_path: Path, backend: str, which: list[str], baked: Path | None = None,
                          data: Path | None = None):
        """The render benchmarks of a NeRF run for ``ngp bench --run RUN [--data PATH]``
        (:func:`ngp_cli.tasks.nerf.bench.render_benchmarks`)."""
        from ngp_cli.tasks.nerf.bench import render_benchmarks

        return render_benchmarks(self, run_path, backend, which, baked, data)

    def result_line(self, cfg: NerfConfig, metrics: dict[str, Any], artifacts: dict[str, Any], state: Any) -> str:
        from ngp_cli.tasks.nerf.views import format_ssim

        if metrics["n_views"]:
            return (f"{cfg.nerf.eval_split} PSNR {metrics['psnr']:.2f} dB, SSIM {format_ssim(metrics['ssim'])} over "
                    f"{metrics['n_views']} views after {state.step} steps ({metrics['train_s']:.1f} s training)")
        return f"trained {state.step} steps ({metrics['train_s']:.1f} s); {metrics['eval_skipped']}"

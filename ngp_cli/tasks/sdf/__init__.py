"""The neural SDF task (paper §5.2): fit a hash encoding + MLP to the signed distance of a triangle mesh,
``ngp train-sdf MESH``; ``ngp extract-mesh``, ``ngp eval`` and ``ngp render`` work on its runs.

This module is imported by the plugin registry on every ``ngp`` call, so it holds only the task's declaration; the
work is imported inside its hooks, from :mod:`ngp_cli.tasks.sdf.fit` and :mod:`ngp_cli.tasks.sdf.evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ngp_cli.commands import MESH_OPTIONS, ORBIT_OPTION, RENDER_OPTIONS, VIEW_OPTIONS
from ngp_cli.tasks import RunCommand, Task, TrainInput
from ngp_cli.tasks.sdf.config import UP_AXES, SdfConfig, SdfSection

__all__ = ["UP_AXES", "SdfConfig", "SdfSection", "SdfTask"]


def _default_mesh() -> Path:
    from ngp_cli.tasks.sdf.fit import default_mesh

    return default_mesh()


_EVALUATE = "ngp_cli.tasks.sdf.evaluate"


class SdfTask(Task):
    name = "sdf"
    summary = "Signed distance function of a triangle mesh, marching-cubes meshes, IoU and Chamfer (paper §5.2)"
    commands = ("train-sdf", "extract-mesh", "eval", "render", "view")
    default_preset = "sdf"
    default_preset_cpu = "sdf-cpu"
    run_commands = (
        RunCommand("eval", f"{_EVALUATE}:eval_command", """Evaluate an SDF run against its input mesh: IoU at
        sdf.iou_points points, then the mesh at sdf.mesh_resolution with its Chamfer distance and normal consistency,
        in RUN/eval.json and the final {"event":"done"} line."""),
        RunCommand("render", f"{_EVALUATE}:render_command", """Render an orbit around an SDF run's mesh (at
        sdf.mesh_resolution), shaded and ray cast, to a video or PNG frames (default 512x512).""",
                   options=(ORBIT_OPTION, *RENDER_OPTIONS)),
        RunCommand("extract-mesh", f"{_EVALUATE}:extract_mesh_command", """Extract an SDF run's level set as a
        triangle mesh (marching cubes), in the input mesh's frame, with its Chamfer distance to the input and shaded
        renders in RUN/renders/.""", options=(
            *MESH_OPTIONS,
            ("level", Annotated[float, typer.Option(
                "--level", help="The iso-level, in unit-cube units (0: the surface).")], 0.0))),
        RunCommand("view", "ngp_cli.tasks.sdf.viewer:view_command", """Serve a web viewer of an SDF run (viser, the
        'viewer' extra): the extracted mesh and a slice plane you move, coloured by the network's signed
        distance.""", options=(*VIEW_OPTIONS, ("resolution", Annotated[int, typer.Option(
            "--resolution", min=16, max=1024, help="The mesh's marching-cubes resolution.")], 256))),
    )
    train_command = "train-sdf"
    train_help = """Train a hash-grid + MLP signed distance function of a mesh; write checkpoints, the IoU, an extracted
    mesh with its Chamfer distance to the input, and shaded renders.

    stdout: JSON lines (a final {"event":"done",...}); stderr: progress and logs.
    """
    train_input = TrainInput("mesh", "sdf.path", help="Triangle mesh: OBJ, PLY, STL, GLB/GLTF or OFF (multi-part "
                                                      "scenes are merged). Default: a built-in torus (trimesh).",
                             default=_default_mesh)

    def config_class(self) -> type:
        return SdfConfig

    def load_input(self, cfg: SdfConfig, fresh: bool) -> Any:
        from ngp_cli.tasks.sdf.fit import load_input

        return load_input(cfg, report=fresh)

    def live_viewer(self, server: Any, problem: Any, run_dir: Any) -> Any:
        from ngp_cli.tasks.sdf.viewer import SdfViewer

        return SdfViewer(server, problem, run_dir, None, threaded=False)

    def build_problem(self, cfg: SdfConfig, backend: Any, data: Any) -> Any:
        from ngp_cli.tasks.sdf.fit import SdfProblem

        return SdfProblem(data, cfg, backend)

    def describe(self, cfg: SdfConfig, data: Any, problem: Any) -> str:
        return f"mesh {Path(cfg.sdf.path).name} in the unit cube at scale {problem.frame.scale:.6g}"

    def before_fit(self, problem: Any, trainer: Any, restored: bool) -> None:
        from ngp_cli.tasks.sdf.fit import prepare_bank

        prepare_bank(problem, trainer)

    def evaluate(self, problem: Any, run: Any, state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from ngp_cli.tasks.sdf.evaluate import final_evaluation

        return final_evaluation(problem, run)

    def result_line(self, cfg: SdfConfig, metrics: dict[str, Any], artifacts: dict[str, Any], state: Any) -> str:
        return (f"IoU {metrics['iou']:.5f} ({cfg.sdf.iou_points:,} points), Chamfer {metrics['chamfer']:.3e} after "
                f"{state.step} steps ({metrics['train_s']:.1f} s training); mesh {artifacts.get('mesh')}")

"""What every training command shares: its options, config resolution, the run directory and the final ``done`` line.

Task plugins declare their command with the ``*Opt`` aliases below and call :func:`prepare` then :func:`finish`, so
``--preset``, ``--set``, ``--runs-dir``, ``--name``, ``--resume``, ``--json``, ``--backend`` and ``--steps`` mean the
same thing in every task. Imports no torch at module level.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ngp_cli.config import BACKENDS, build, clip, resolve, to_dict
from ngp_cli.console import emit, info, warn
from ngp_cli.errors import ConfigError, DataError, UsageError
from ngp_cli.runs import RunDir, identity_change, input_identity
from ngp_cli.viewer.live import DEFAULT_SHARE
from ngp_cli.viewer.server import DEFAULT_HOST, DEFAULT_PORT

if TYPE_CHECKING:
    from ngp_cli.nn.backend import Backend
    from ngp_cli.runs import LoadedCheckpoint
    from ngp_cli.tasks import Task


def choices(name: str, values: Sequence[str]) -> type[enum.Enum]:
    """An Enum of ``values`` to annotate a typer option with, so --help lists the choices and any other value is a usage
    error (exit 2) naming them. Declare the option with ``callback=plain_choice`` so the command receives plain
    strings (typer >= 0.12 handles Enum options; Literal ones only in later releases)."""
    return enum.Enum(name, {v: v for v in values}, type=str)


def plain_choice(value: Any) -> Any:
    """typer callback of a :func:`choices` option: the chosen member's string (a list of them for a repeatable
    option; None stays None)."""
    if isinstance(value, list | tuple):
        return [plain_choice(v) for v in value]
    return value.value if isinstance(value, enum.Enum) else value


def _plain_run_name(value: str | None) -> str | None:
    # A name is one folder inside <runs-dir>/<task>/: a path in it is refused, not silently rewritten.
    if value is not None and ("/" in value or "\\" in value or value.strip() in ("", ".", "..")):
        raise typer.BadParameter(f"'{value}' is not a plain name (no '/', '\\', '.' or '..'): the run directory is "
                                 f"always created inside --runs-dir")
    return value


def _runs_dir(value: str | Path) -> Path:
    # Taken as text because Path("") is Path("."): an empty --runs-dir (an unset "$VAR") would silently put the runs
    # in the current folder.
    if not str(value).strip():
        raise typer.BadParameter("is empty; give a folder (default: runs)")
    return Path(value)


BackendChoice = choices("BackendChoice", BACKENDS)

PresetOpt = Annotated[str | None, typer.Option(
    "--preset", help="Preset name (see 'ngp presets list') or a YAML/JSON file; tiny-cuda-nn JSON configs work as is. "
                     "Default: the task's GPU or CPU preset.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override one config key, KEY.PATH=VALUE (VALUE parsed as YAML); repeatable.")]
RunsDirOpt = Annotated[str, typer.Option(
    "--runs-dir", callback=_runs_dir, metavar="DIR", help="Root of the run directories (runs/<task>/<time>-<name>).")]
NameOpt = Annotated[str | None, typer.Option(
    "--name", callback=_plain_run_name, help="Run name, a plain name without '/' (default: the input's file stem).")]
ResumeOpt = Annotated[Path | None, typer.Option(
    "--resume", help="Continue RUN_DIR from its last checkpoint (only train.* keys, --steps and --backend may change).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Also emit one {\"event\":\"step\"} JSON line per log step.")]
BackendOpt = Annotated[BackendChoice | None, typer.Option(
    "--backend", callback=plain_choice, help="Kernel backend (auto: cuda, else cpu, else torch).")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Training steps (shorthand for --set train.n_steps=N).")]
AllowInputChangeOpt = Annotated[bool, typer.Option(
    "--allow-input-change", help="With --resume: accept a changed input (a --set of the input's path, or the input "
                                 "file changed on disk since the run was created); recorded in the run.")]
NprocOpt = Annotated[int, typer.Option(
    "--nproc", min=1, max=1024, help="Train data-parallel in this many processes on this machine (starts torchrun's "
                                     "agent; for several machines run torchrun yourself: docs/distributed.md).")]
ViewerOpt = Annotated[bool, typer.Option(
    "--viewer", help="Serve the web viewer while training (the 'viewer' extra; frames between steps, within "
                     "--viewer-share of the training time; stops with the run).")]
ViewerShareOpt = Annotated[float, typer.Option(
    "--viewer-share", help="The most of the training time the viewer may take, in (0, 1]: its frames, "
                           "and on a CPU the time a browser tab on this machine takes from the training.")]
ViewerHostOpt = Annotated[str, typer.Option("--viewer-host", help="The viewer's address (see ngp view --host).")]
ViewerPortOpt = Annotated[int, typer.Option("--viewer-port", help="The viewer's port (the next free one when taken).")]
SaveOptimizerOpt = Annotated[bool, typer.Option(
    "--save-optimizer/--no-save-optimizer", help="Keep the Adam state in the final checkpoint (needed for a "
                                                 "bit-exact --resume; without it the moments restart).")]


# Options of the commands on trained runs (ngp_cli.run_commands) that several tasks declare, as the
# (parameter, annotation, default) triples of ngp_cli.tasks.RunCommand.options; every run command also has
# RUN_OPTIONS (--backend, --data).
DataOpt = Annotated[Path | None, typer.Option(
    "--data", help="The run's input dataset or mesh, when it moved since training (default: the path in its "
                   "config.yaml).")]
ORBIT_OPTION = ("orbit", Annotated[int | None, typer.Option(
    "--orbit", min=1, help="Render an N-frame orbit around the scene.")], None)
RenderOutputChoice = choices("RenderOutputChoice", ("rgb", "depth", "accumulation", "normals"))
RENDER_OPTIONS = (
    ("resolution", Annotated[str | None, typer.Option(
        "--resolution", help="WIDTHxHEIGHT (default: a NeRF camera path's size, else the training images'; SDF "
                             "runs: 512x512).")], None),
    ("out", Annotated[Path | None, typer.Option(
        "--out", help="video.mp4 (or .gif) or a folder for PNG frames (default: RUN/renders/orbit.mp4, "
                      "orbit_<output>.mp4 for other outputs).")], None),
    ("fps", Annotated[int | None, typer.Option(
        "--fps", min=1, help="Frame rate (default: the camera path's, else 30); a keyframed path is sampled at "
                             "it.")], None),
    ("output", Annotated[RenderOutputChoice, typer.Option(
        "--output", callback=plain_choice,
        help="What the frames show: rgb; depth (distance along the ray in world units, colour-mapped; a frame folder "
             "also gets float32 EXRs); accumulation (opacity, NeRF only); normals (mapped from [-1, 1]).")], "rgb"),
)
MESH_OPTIONS = (
    ("resolution", Annotated[int, typer.Option(
        "--resolution", min=16, max=2048, help="Marching-cubes grid nodes per axis (256..1024 typical).")], 256),
    ("out", Annotated[Path | None, typer.Option(
        "--out", help="mesh.ply, .obj, .glb, .stl or .off (default: RUN/meshes/mesh_<resolution>.ply).")], None),
    ("normals", Annotated[bool, typer.Option(
        "--normals/--no-normals", help="Vertex normals from the field's gradient.")], True),
    ("min_component", Annotated[float, typer.Option(
        "--min-component", min=0.0, max=1.0,
        help="Drop connected pieces with fewer triangles than this fraction of the largest piece's (floaters; "
             "e.g. 0.05). 0 keeps every piece.")], 0.0),
)
RUN_OPTIONS = (("backend", BackendOpt, None), ("data", DataOpt, None))

# ngp view's options (every task's viewer).
VIEW_OPTIONS = (
    ("host", Annotated[str, typer.Option(
        "--host", help="Address to listen on; anything but loopback is reachable from other machines (a warning "
                       "says so), e.g. 0.0.0.0.")], DEFAULT_HOST),
    ("port", Annotated[int, typer.Option(
        "--port", help="Port to listen on (the next free one when taken; the {\"event\":\"serving\"} line gives the "
                       "address).")], DEFAULT_PORT),
)
VIEW_SIZE_OPTION = (
    "max_resolution", Annotated[str | None, typer.Option(
        "--max-resolution", help="WIDTHxHEIGHT: the most pixels a full-size frame has (the browser's canvas is scaled "
                                 "down to it, aspect kept; default 1920x1080).")], None)
VIEW_HELPERS_OPTION = (
    "helpers", Annotated[bool, typer.Option(
        "--helpers/--no-helpers", help="Show the input's cameras and the scene box at start (the viewer's panel "
                                       "toggles them).")], True)


# Keys that define what a checkpoint contains or how it was trained: fixed once a run exists.
_FROZEN_ON_RESUME = ("task", "seed", "encoding", "network", "optimizer", "loss")


@dataclass
class TrainOptions:
    """The shared options of a training command, as parsed by typer."""

    preset: str | None = None
    sets: list[str] = field(default_factory=list)
    runs_dir: Path = Path("runs")
    name: str | None = None
    resume: Path | None = None
    json: bool = False
    backend: str | None = None
    steps: int | None = None
    allow_input_change: bool = False
    save_optimizer: bool = True
    viewer: bool = False
    viewer_share: float = DEFAULT_SHARE
    viewer_host: str = DEFAULT_HOST
    viewer_port: int = DEFAULT_PORT

    def overrides(self) -> list[str]:
        """``--set`` assignments including the shorthands ``--backend`` and ``--steps``."""
        extra = []
        if self.backend is not None:
            extra.append(f"backend={self.backend}")
        if self.steps is not None:
            extra.append(f"train.n_steps={self.steps}")
        return list(self.sets) + extra


@dataclass
class Prepared:
    """A validated config, its backend, and for --resume: the existing run directory, its newest intact checkpoint
    (loaded and validated), the input keys ``--set`` changed (``{key: (old, new)}``, accepted with
    ``--allow-input-change``) and the input identities to record in the run once training resumes."""

    cfg: Any
    backend: Backend
    run: RunDir | None
    checkpoint: LoadedCheckpoint | None = None
    input_changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    allow_input_change: bool = False
    pinned: dict[str, Any] | None = None  # the run's input.json, validated (None: a run made before inputs were pinned)
    new_identities: dict[str, dict[str, Any]] = field(default_factory=dict)


def default_preset(task: Task, opts: TrainOptions) -> str:
    """The task's built-in preset for these options: its GPU preset when a GPU will be used, else its CPU one."""
    from ngp_cli.nn.backend import cuda_available

    wants_gpu = opts.backend == "cuda" or (opts.backend in (None, "auto", "torch") and cuda_available())
    return task.default_preset if wants_gpu else (task.default_preset_cpu or task.default_preset)


def prepare(task: Task, opts: TrainOptions) -> Prepared:
    """Resolve and validate the config (new run or ``--resume``) and the backend. Creates nothing on disk.

    For ``--resume`` it also validates what the run directory holds (config.yaml, summary.json, metrics.jsonl,
    input.json) and loads its newest intact checkpoint, so a bad run is refused before any work or output.

    Raises ConfigError (a frozen or, without ``--allow-input-change``, an input key changed), UsageError,
    DataError (the resume target is not a run of this task, or holds malformed files) or NoGPUError.
    """
    from ngp_cli.config import apply_sets
    from ngp_cli.nn.backend import resolve_backend

    cls = task.config_class()
    if opts.resume is None:
        default = default_preset(task, opts)
        cfg = resolve(cls, task.name, opts.preset or default, opts.overrides(), default_preset=default)
        return Prepared(cfg=cfg, backend=resolve_backend(cfg.backend, cfg.device), run=None)
    if opts.preset is not None:
        raise UsageError("--preset cannot be combined with --resume (the run keeps its config.yaml)")
    run = RunDir.open(opts.resume)
    recorded = run.read_config()
    _check_task(run, recorded, task)
    for assignment in opts.sets:
        key = assignment.partition("=")[0].strip()
        if key.split(".")[0] in _FROZEN_ON_RESUME:
            raise ConfigError(f"--set {key} cannot change on --resume: the checkpoint was trained with "
                              f"the run's {key.split('.')[0]} settings")
    raw = apply_sets(recorded, opts.overrides())
    path_keys = task.input_path_keys()
    changes = {k: (_lookup(recorded, k), _lookup(raw, k)) for k in (*path_keys, *task.input_value_keys)
               if _input_value(k in path_keys, _lookup(recorded, k)) != _input_value(k in path_keys, _lookup(raw, k))}
    if changes and not opts.allow_input_change:
        key, (old, new) = next(iter(changes.items()))
        raise ConfigError(f"--set {key} changes the run's input ({clip(old, 80)} -> {clip(new, 80)}); add "
                          "--allow-input-change to resume on it")
    cfg = build(cls, raw)
    for key in changes:
        if key in path_keys and changes[key][1]:  # recorded absolute, as a new run records its input
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, str(Path(changes[key][1]).expanduser().resolve()))
            changes[key] = (changes[key][0], getattr(getattr(cfg, section), name))
    backend = resolve_backend(cfg.backend, cfg.device)
    run.read_summary()
    run.check_metrics()
    pinned = run.read_inputs()
    checkpoint = run.latest_checkpoint()
    for key, (old, new) in changes.items():
        warn(f"{key} changes from {clip(old, 80)} to {clip(new, 80)} on --resume (--allow-input-change); "
             "recorded in the run")
    return Prepared(cfg=cfg, backend=backend, run=run, checkpoint=checkpoint, input_changes=changes,
                    allow_input_change=opts.allow_input_change, pinned=pinned)


def _input_value(is_path: bool, value: Any) -> Any:
    # the same file written another way (relative, ~) is no change
    if is_path and isinstance(value, str) and value:
        return Path(value).expanduser().resolve()
    return value


def _lookup(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _check_task(run: RunDir, raw: dict[str, Any], task: Task) -> None:
    """Refuse another task's run before its config is built against this task's schema. Raises DataError."""
    name = raw.get("task")
    if not isinstance(name, str) or not name:
        raise DataError(f"{run.config_path}: names no task (task: {clip(name, 40)})")
    if name != task.name:
        article = "an" if name[:1].lower() in "aeiou" else "a"
        raise DataError(f"{run.path} is {article} '{clip(name, 40)}' run, not '{task.name}'")


def create_run(task: Task, opts: TrainOptions, cfg: Any, default_name: str) -> RunDir:
    """Create the new run directory, write its config.yaml and input.json (the identity of every input path in
    ``cfg``: the task's :meth:`~ngp_cli.tasks.Task.input_path_keys`). Raises OutputError, DataError (an input cannot
    be read)."""
    identities = {}
    raw = to_dict(cfg)
    for key in task.input_path_keys():
        value = _lookup(raw, key)
        if isinstance(value, str) and value and Path(value).exists():
            identities[key] = input_identity(Path(value))
    run = RunDir.create(opts.runs_dir, task.name, opts.name or default_name)
    run.write_config(raw)
    if identities:
        run.write_inputs({"inputs": identities, "changes": []})
    info(f"run directory: {run.path}")
    if opts.json:
        emit("start", run_dir=str(run.path), task=task.name)
    return run


def finish(run: RunDir, step: int, metrics: dict[str, Any], artifacts: dict[str, Any]) -> None:
    """Draw ``renders/curves.png`` (:func:`ngp_cli.curves.write_curves`: loss and held-out metric against training
    time, from metrics.jsonl; listed in the artifacts as ``curves``; none when no step was logged), then write
    summary.json (last, atomically) and emit the final ``done`` JSON line. A picture that cannot be drawn or written
    is a warning, never a lost run. Both carry ``machine`` (:func:`ngp_cli.machine.machine_info`: CPU model and ISA
    features, threads, versions, the cpu MLP's precision), so every result names the machine it came from."""
    from ngp_cli.machine import machine_info

    artifacts = {"config": str(run.config_path), "metrics": str(run.metrics_path), **artifacts}
    curves = run.renders_dir / "curves.png"
    try:
        from ngp_cli.curves import write_curves

        if write_curves(run.metrics_path, curves, title=f"{run.path.parent.name}/{run.path.name}"):
            artifacts["curves"] = str(curves)
    except Exception as exc:  # noqa: BLE001 (matplotlib, a full disk: the run's results matter more than its picture)
        warn(f"{curves}: training curves not drawn ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})")
    summary = {"run_dir": str(run.path), "step": step, "metrics": metrics, "artifacts": artifacts,
               "machine": machine_info()}
    run.write_summary(summary)
    emit("done", **summary)


def resumed_input(prep: Prepared, given: Path | None, recorded: str, key: str, what: str) -> Path:
    """The input file of a run being resumed: ``recorded`` (the config's ``key``), checked against the identity the
    run pinned at creation (input.json; runs made before that are not checked). A changed input is accepted with
    ``--allow-input-change`` (a warning line; recorded by :func:`restore`).

    Raises UsageError when the command names another ``what`` than the run's, DataError when the config records
    none or the input changed on disk without ``--allow-input-change``."""
    run = prep.run
    assert run is not None
    if given is not None and given.expanduser().resolve() != Path(recorded):
        raise UsageError(f"--resume continues the run on {recorded}; do not pass another {what}")
    if not recorded:
        raise DataError(f"{run.config_path}: {key} is empty")
    path = Path(recorded)
    entry = (prep.pinned or {}).get("inputs", {}).get(key)
    if not path.exists() or (entry is None and key not in prep.input_changes):
        return path  # a missing input is the loader's error; an unpinned one (an older run) resumes as before
    current = input_identity(path)
    change = identity_change(entry, current) if entry is not None else "newly pinned"
    if change is not None and key not in prep.input_changes:
        if not prep.allow_input_change:
            raise DataError(f"{what} {path} changed since the run was created ({change}); add --allow-input-change "
                            "to resume on it")
        warn(f"{what} {path} changed since the run was created ({change}); resuming on it (--allow-input-change)")
    if change is not None:
        prep.new_identities[key] = current
    return path


def restore(trainer: Any, prep: Prepared) -> bool:
    """For ``--resume``: remove crash leftovers, load the run's newest intact checkpoint into ``trainer`` (a corrupt
    newer one is set aside as ``*.corrupt``), record an accepted input change, and keep the run's earlier summary
    when it is extended. Returns True when a checkpoint was loaded (False for a new run, or a run without one)."""
    if prep.run is None:
        return False
    run = prep.run
    removed = run.remove_stale_temporaries()
    if removed:
        info(f"removed {removed} temporary file(s) left in {run.path} by an interrupted run")
    resumed = trainer.restore(prep.checkpoint)
    if prep.checkpoint is not None:
        run.set_aside(prep.checkpoint.skipped)
        prep.checkpoint = None  # the tensors now live in the trainer
    info(f"resuming {run.path} from step {trainer.state.step}" if resumed
         else f"{run.path} has no checkpoint yet: training from step 0")
    if prep.input_changes or prep.new_identities:
        _record_input_change(run, prep, trainer.state.step)
    if trainer.state.step < trainer.cfg.train.n_steps:
        run.archive_summary()
    return resumed


def _record_input_change(run: RunDir, prep: Prepared, step: int) -> None:
    """Write the accepted input change into config.yaml and input.json (new identity, and a ``changes`` entry)."""
    raw = run.read_config()
    for key, (_, new) in prep.input_changes.items():
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = new
    pinned = prep.pinned or {"inputs": {}, "changes": []}
    for key in sorted(set(prep.input_changes) | set(prep.new_identities)):
        before = pinned["inputs"].get(key)
        if key in prep.new_identities:
            pinned["inputs"][key] = prep.new_identities[key]
        old, new = prep.input_changes.get(key, ((before or {}).get("path"), pinned["inputs"][key]["path"]))
        pinned["changes"].append({"step": step, "key": key, "from": old, "to": new, "previous_identity": before})
    run.write_config(raw)
    run.write_inputs(pinned)


def open_run(task: Task, run_path: Path, backend: str | None) -> tuple[RunDir, Any, Backend]:
    """Open a trained run of ``task`` for ``eval``/``render``/``extract-mesh``: its directory, its config (with
    ``--backend`` applied) and the resolved backend. Raises DataError (not a run, or another task's), ConfigError,
    NoGPUError."""
    from ngp_cli.nn.backend import resolve_backend

    run = RunDir.open(run_path)
    raw = run.read_config()
    _check_task(run, raw, task)
    cfg = build(task.config_class(), raw)
    if backend is not None:
        cfg.backend = backend
    return run, cfg, resolve_backend(cfg.backend, cfg.device)


def relocated_input(cfg: Any, key: str, data: Path | None, what: str) -> None:
    """For a command on a trained run: point the input path ``key`` of the run's config ``cfg`` at ``data``
    (``--data``: the input's new place; config.yaml is not rewritten), or check that the recorded input still exists.
    ``what`` names the input in messages ("dataset"). Raises DataError naming the path and suggesting ``--data``."""
    from ngp_cli.config import config_value, set_config_value

    if data is not None:
        data = data.expanduser().resolve()
        if not data.exists():
            raise DataError(f"{data}: --data: no such file or directory (expected the run's {what})")
        set_config_value(cfg, key, str(data))
    elif not Path(config_value(cfg, key)).exists():
        raise DataError(f"{config_value(cfg, key)}: the run's {what} ({key}) is gone; if it was moved, give its new "
                        "place with --data PATH")


def parse_resolution(text: str | None, default: tuple[int, int], option: str = "--resolution") -> tuple[int, int]:
    """``--resolution WIDTHxHEIGHT`` (or the ``option`` named so) as ``(width, height)``, or ``default`` when not
    given. Raises UsageError naming ``option``."""
    if text is None:
        return default
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"{option} must be WIDTHxHEIGHT, e.g. 800x600, got '{text}'") from None
    if not (1 <= w <= 16384 and 1 <= h <= 16384):
        raise UsageError(f"{option} {text} is out of range (1..16384 per side)")
    return w, h

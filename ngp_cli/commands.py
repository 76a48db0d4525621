"""What every training command shares: its options, config resolution, the run directory and the final ``done`` line.

Task plugins declare their command with the ``*Opt`` aliases below and call :func:`prepare` then :func:`finish`, so
``--preset``, ``--set``, ``--runs-dir``, ``--name``, ``--resume``, ``--json``, ``--backend`` and ``--steps`` mean the
same thing in every task. Imports no torch at module level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ngp_cli.config import build, resolve, to_dict
from ngp_cli.console import emit, info
from ngp_cli.errors import ConfigError, UsageError
from ngp_cli.runs import RunDir

if TYPE_CHECKING:
    from ngp_cli.nn.backend import Backend
    from ngp_cli.tasks import Task

PresetOpt = Annotated[str | None, typer.Option(
    "--preset", help="Preset name (see 'ngp presets list') or a YAML/JSON file; tiny-cuda-nn JSON configs work as is. "
                     "Default: the task's GPU or CPU preset.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override one config key, KEY.PATH=VALUE (VALUE parsed as YAML); repeatable.")]
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="Root of the run directories (runs/<task>/<time>-<name>).")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Run name (default: the input's file stem).")]
ResumeOpt = Annotated[Path | None, typer.Option(
    "--resume", help="Continue RUN_DIR from its last checkpoint (only train.* keys, --steps and --backend may change).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Also emit one {\"event\":\"step\"} JSON line per log step.")]
BackendOpt = Annotated[str | None, typer.Option("--backend", help="Kernel backend: auto, cuda, cpu or torch.")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Training steps (shorthand for --set train.n_steps=N).")]


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
    """A validated config, its backend, and (for --resume) the existing run directory."""

    cfg: Any
    backend: Backend
    run: RunDir | None


def default_preset(task: Task, opts: TrainOptions) -> str:
    """The task's built-in preset for these options: its GPU preset when a GPU will be used, else its CPU one."""
    from ngp_cli.nn.backend import cuda_available

    wants_gpu = opts.backend == "cuda" or (opts.backend in (None, "auto", "torch") and cuda_available())
    return task.default_preset if wants_gpu else (task.default_preset_cpu or task.default_preset)


def prepare(task: Task, opts: TrainOptions) -> Prepared:
    """Resolve and validate the config (new run or ``--resume``) and the backend. Creates nothing on disk.

    Raises ConfigError, UsageError, DataError (resume target is not a run) or NoGPUError.
    """
    from ngp_cli.config import apply_sets
    from ngp_cli.nn.backend import resolve_backend

    cls = task.config_class()
    if opts.resume is not None:
        if opts.preset is not None:
            raise UsageError("--preset cannot be combined with --resume (the run keeps its config.yaml)")
        run = RunDir.open(opts.resume)
        for assignment in opts.sets:
            key = assignment.partition("=")[0].strip()
            if key.split(".")[0] in _FROZEN_ON_RESUME:
                raise ConfigError(f"--set {key} cannot change on --resume: the checkpoint was trained with "
                                  f"the run's {key.split('.')[0]} settings")
        raw = apply_sets(run.read_config(), opts.overrides())
        cfg = build(cls, raw)
        if cfg.task != task.name:
            raise ConfigError(f"{opts.resume} is a '{cfg.task}' run, not '{task.name}'")
    else:
        default = default_preset(task, opts)
        cfg = resolve(cls, task.name, opts.preset or default, opts.overrides(), default_preset=default)
        run = None
    return Prepared(cfg=cfg, backend=resolve_backend(cfg.backend, cfg.device), run=run)


def create_run(task: Task, opts: TrainOptions, cfg: Any, default_name: str) -> RunDir:
    """Create the new run directory and write its config.yaml. Raises OutputError."""
    run = RunDir.create(opts.runs_dir, task.name, opts.name or default_name)
    run.write_config(to_dict(cfg))
    info(f"run directory: {run.path}")
    if opts.json:
        emit("start", run_dir=str(run.path), task=task.name)
    return run


def finish(run: RunDir, step: int, metrics: dict[str, Any], artifacts: dict[str, Any]) -> None:
    """Write summary.json (last, atomically) and emit the final ``done`` JSON line."""
    artifacts = {"config": str(run.config_path), "metrics": str(run.metrics_path), **artifacts}
    summary = {"run_dir": str(run.path), "step": step, "metrics": metrics, "artifacts": artifacts}
    run.write_summary(summary)
    emit("done", **summary)


def resumed_input(run: RunDir, given: Path | None, recorded: str, key: str, what: str) -> Path:
    """The input file of a run being resumed: ``recorded`` (the config's ``key``). Raises UsageError when the command
    names another ``what`` than the run's, DataError when the config records none."""
    from ngp_cli.errors import DataError

    if given is not None and given.expanduser().resolve() != Path(recorded):
        raise UsageError(f"--resume continues the run on {recorded}; do not pass another {what}")
    if not recorded:
        raise DataError(f"{run.config_path}: {key} is empty")
    return Path(recorded)


def restore(trainer: Any, prep: Prepared) -> bool:
    """For ``--resume``: load the run's newest checkpoint into ``trainer`` and keep the run's earlier summary when it is
    extended. Returns True when a checkpoint was loaded (False for a new run, or a run without one)."""
    if prep.run is None:
        return False
    resumed = trainer.restore()
    info(f"resuming {prep.run.path} from step {trainer.state.step}" if resumed
         else f"{prep.run.path} has no checkpoint yet: training from step 0")
    if trainer.state.step < trainer.cfg.train.n_steps:
        prep.run.archive_summary()
    return resumed


def open_run(task: Task, run_path: Path, backend: str | None) -> tuple[RunDir, Any, Backend]:
    """Open a trained run of ``task`` for ``eval``/``render``/``extract-mesh``: its directory, its config (with
    ``--backend`` applied) and the resolved backend. Raises DataError (not a run, or another task's), ConfigError,
    NoGPUError."""
    from ngp_cli.errors import DataError
    from ngp_cli.nn.backend import resolve_backend

    run = RunDir.open(run_path)
    raw = run.read_config()
    if raw.get("task") != task.name:
        raise DataError(f"{run.path} is a '{raw.get('task')}' run, not a '{task.name}' run")
    cfg = build(task.config_class(), raw)
    if backend is not None:
        cfg.backend = backend
    return run, cfg, resolve_backend(cfg.backend, cfg.device)


def parse_resolution(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
    """``--resolution WIDTHxHEIGHT`` as ``(width, height)``, or ``default`` when not given. Raises UsageError."""
    if text is None:
        return default
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--resolution must be WIDTHxHEIGHT, e.g. 800x600, got '{text}'") from None
    if not (1 <= w <= 16384 and 1 <= h <= 16384):
        raise UsageError(f"--resolution {text} is out of range (1..16384 per side)")
    return w, h

"""Task plugins: the interface every task implements, and their discovery through entry points.

A task is a class (or instance) registered under the entry-point group ``ngp_cli.tasks``; ngp's own tasks are
registered the same way in pyproject.toml, so a third-party package adds a task with one line::

    [project.entry-points."ngp_cli.tasks"]
    mytask = "my_pkg.task:MyTask"

Discovery (after nerfstudio's ``plugins/registry.py``) type-checks each entry and warns on stderr about a broken plugin
instead of crashing the CLI. A checkout that is importable but not installed (no entry points) still has ngp's own
tasks: :data:`BUILTIN_TASKS`. Task modules must keep torch/CuPy imports inside their command bodies so that importing
them (``ngp --help``) stays fast and needs no GPU. Nothing outside this module imports ``ngp_cli.tasks.*``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import typer

ENTRY_POINT_GROUP = "ngp_cli.tasks"

#: ngp's own tasks, as pyproject.toml registers them (tests/test_tasks.py keeps the two lists equal). Used when the
#: entry-point group holds none of them: a checkout run from PYTHONPATH without ``pip install`` (the GPU machines'
#: copy of the working tree, where the gitignored ``*.egg-info`` does not travel) has no metadata at all.
BUILTIN_TASKS = {
    "image": "ngp_cli.tasks.gigapixel:GigapixelTask",
    "nerf": "ngp_cli.tasks.nerf:NerfTask",
    "sdf": "ngp_cli.tasks.sdf:SdfTask",
    "nrc": "ngp_cli.tasks.nrc:NrcTask",
}


@dataclass(frozen=True)
class TrainInput:
    """The training command's positional argument: a file or folder, recorded (absolute) in the config at ``key``,
    which ``--resume`` reads it back from.

    Attributes:
        name: the argument's name in ``--help`` and in messages ("photo", "mesh", "dataset").
        key: the config key, ``section.name`` ("image.path").
        help: the argument's help text.
        default: the input used when none is given (a demo input), or None: then the argument is required for new
            runs. Called only when needed.
    """

    name: str
    key: str
    help: str
    default: Callable[[], Path] | None = None


@dataclass(frozen=True)
class Shorthand:
    """A task option standing for one ``--set``: ``--downscale 2`` is ``--set nerf.downscale=2``.

    Attributes:
        flag: the option ("--downscale").
        key: the config key it sets.
        help: the option's help text.
        type: ``int``, ``float`` (the option's value is the key's) or ``bool`` (a flag that sets the key to true).
        min: the smallest value accepted (ints and floats), or None.
    """

    flag: str
    key: str
    help: str
    type: type = int
    min: float | None = None

    @property
    def parameter(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def annotation(self) -> Any:
        if self.type is bool:
            return Annotated[bool, typer.Option(self.flag, help=self.help)]
        return Annotated[self.type | None, typer.Option(self.flag, help=self.help, min=self.min)]

    def assignment(self, value: Any) -> str | None:
        """The ``--set`` assignment for the option's parsed value, or None when it was not given."""
        if self.type is bool:
            return f"{self.key}=true" if value else None
        return None if value is None else f"{self.key}={value}"


@dataclass(frozen=True)
class RunCommand:
    """``ngp <name> RUN`` on a task's trained runs, declared by the task (nerfstudio's spec idea): the root command
    reads RUN's task and parses the rest with only that task's options (:mod:`ngp_cli.run_commands`).

    Attributes:
        name: the command ("eval", "render", "extract-mesh", or a plugin's own).
        function: what serves it, called as ``function(task, run_path, **options)`` with every option below plus
            ``backend`` (str or None) and ``data`` (Path or None: ``--data``, the input's new place): a callable or
            ``"module:function"``, imported only when the command runs (``ngp --help`` stays torch-free).
        help: its ``--help`` text on this task's runs (first line: the summary).
        options: its own options as ``(parameter, typer annotation, default)`` triples; those several tasks share are
            in :mod:`ngp_cli.commands` (``RENDER_OPTIONS``, ...).
    """

    name: str
    function: Callable[..., None] | str
    help: str
    options: tuple[tuple[str, Any, Any], ...] = ()

    def load(self) -> Callable[..., None]:
        """The function, imported when given as ``"module:function"``."""
        if callable(self.function):
            return self.function
        module, _, attr = self.function.partition(":")
        return getattr(importlib.import_module(module), attr)


class Task:
    """Base class of a task plugin.

    Attributes:
        name: short task name; also the run-directory folder (``runs/<name>/``) and the ``task:`` key of its presets.
        summary: one line for ``ngp tasks``.
        commands: the CLI commands the task adds (for ``ngp tasks``).
        default_preset: built-in preset used without ``--preset``; ``default_preset_cpu`` when no GPU is used.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    commands: ClassVar[tuple[str, ...]] = ()
    default_preset: ClassVar[str] = ""
    default_preset_cpu: ClassVar[str] = ""

    #: The commands on this task's trained runs (``ngp eval RUN``, ``ngp render RUN``, ``ngp extract-mesh RUN``; a
    #: plugin may add its own name): each with its own options, shown by ``ngp <command> RUN --help``.
    run_commands: ClassVar[tuple[RunCommand, ...]] = ()

    def run_command(self, name: str) -> RunCommand | None:
        """The declaration of ``ngp <name> RUN`` on this task's runs, or None when the task has none."""
        return next((c for c in self.run_commands if c.name == name), None)

    def config_class(self) -> type:
        """The task's config dataclass (a :class:`ngp_cli.config.RunConfig` subclass with the task's own section)."""
        from ngp_cli.config import RunConfig

        return RunConfig

    # --- the training command, run by the one pipeline (ngp_cli.pipeline) -------------------------------------------
    #: The training command's name ("fit-image"); empty: the task registers its own commands (:meth:`register`).
    train_command: ClassVar[str] = ""
    #: Its --help text (first line: the summary).
    train_help: ClassVar[str] = ""
    #: Its positional input.
    train_input: ClassVar[TrainInput | None] = None
    #: Its own options, each a ``--set``.
    shorthands: ClassVar[tuple[Shorthand, ...]] = ()

    #: Whether :meth:`evaluate` runs on every process of a data-parallel run, each taking its share of the work and
    #: rank 0 writing (NeRF: the held-out views); otherwise rank 0 evaluates alone.
    parallel_evaluation: ClassVar[bool] = False
    #: Whether the task's model can be partitioned spatially over processes (``distributed.partition``, NeRF-XL);
    #: otherwise a partition above 1 is a config error.
    partitioned: ClassVar[bool] = False
    #: Config keys of the files a run trains on, beyond ``train_input.key``: pinned in the run's input.json (path,
    #: size, SHA-256 of the first MiB) when it is created; a change on ``--resume`` needs ``--allow-input-change``.
    extra_input_paths: ClassVar[tuple[str, ...]] = ()
    #: Other config keys that decide what a run trains on (a change on ``--resume`` needs ``--allow-input-change``).
    input_value_keys: ClassVar[tuple[str, ...]] = ()

    def input_path_keys(self) -> tuple[str, ...]:
        """The config keys of the files a run trains on: ``train_input.key`` and :attr:`extra_input_paths`."""
        return ((self.train_input.key,) if self.train_input is not None else ()) + self.extra_input_paths

    def load_input(self, cfg: Any, fresh: bool) -> Any:
        """Read the input the config names (``train_input.key``, absolute) into whatever :meth:`build_problem` needs.
        On a ``fresh`` run it may also record what the input decides in ``cfg`` (e.g. N_max from a photo's size), so
        config.yaml alone rebuilds the model. Raises DataError."""
        raise NotImplementedError

    def build_problem(self, cfg: Any, backend: Any, data: Any) -> Any:
        """The :class:`ngp_cli.train.Problem` to train on ``backend``."""
        raise NotImplementedError

    def describe(self, cfg: Any, data: Any, problem: Any) -> str:
        """The start of the info line before training (the pipeline adds the backend and the parameter count)."""
        from ngp_cli.config import config_value

        return f"{self.train_input.name} {config_value(cfg, self.train_input.key)}"

    def before_fit(self, problem: Any, trainer: Any, restored: bool) -> None:
        """Work after the checkpoint is restored (``restored``: one was) and before the first step."""

    #: ``live_viewer(server, problem, run_dir)``: the viewer ``--viewer`` serves while ``problem``
    #: trains (:mod:`ngp_cli.viewer.live`; a :class:`~ngp_cli.viewer.frames.FrameServer` made with
    #: ``threaded=False``, or anything with its ``poll``, ``show_training`` and ``stop``). None: the task has none
    #: (its training command refuses ``--viewer``).
    live_viewer: Callable[..., Any] | None = None

    def evaluate(self, problem: Any, run: Any, state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The final evaluation (run under the evaluation weights): ``(metrics, artifacts)`` for summary.json. The
        pipeline adds ``loss``, ``steps``, ``train_s``, ``compile_s`` and the checkpoint."""
        raise NotImplementedError

    def result_line(self, cfg: Any, metrics: dict[str, Any], artifacts: dict[str, Any], state: Any) -> str:
        """The info line after the evaluation."""
        return f"trained {state.step} steps ({metrics['train_s']:.1f} s)"

    def register(self, app: typer.Typer) -> None:
        """Add this task's commands to the ``ngp`` app: by default its training command, through the pipeline."""
        if not self.train_command:
            raise NotImplementedError(f"task {self.name!r} declares no train_command and registers nothing")
        from ngp_cli.pipeline import register

        register(self, app)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed ``ngp_cli.tasks`` entry points, plus :data:`BUILTIN_TASKS` when none of them is ngp's own (no
    ``ngp_cli.*`` value: the package is not installed, only importable)."""
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if not any(ep.value.split(":", 1)[0].startswith("ngp_cli.") for ep in eps):
        eps += [importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)
                for name, value in BUILTIN_TASKS.items()]
    return eps


def discover_tasks(warn=None) -> dict[str, Task]:
    """Load every ``ngp_cli.tasks`` entry point into ``{name: Task instance}``; ngp's own tasks
    (:data:`BUILTIN_TASKS`) come from the code itself when the package's metadata is not installed.

    A plugin that fails to import, is not a :class:`Task`, or repeats a name is skipped, and ``warn(message)`` is called
    (default: a line on stderr).
    """
    if warn is None:
        from ngp_cli.console import warn

    tasks: dict[str, Task] = {}
    for ep in sorted(_entry_points(), key=lambda e: e.name):
        try:
            obj = ep.load()
            task = obj() if isinstance(obj, type) else obj
        except Exception as exc:  # a broken third-party plugin must not take the CLI down
            warn(f"task plugin '{ep.name}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(task, Task) or not task.name:
            warn(f"task plugin '{ep.name}' ({ep.value}) is not an ngp_cli.tasks.Task with a name; skipped")
            continue
        if task.name in tasks:
            warn(f"task plugin '{ep.name}' ({ep.value}) repeats the task name '{task.name}'; skipped")
            continue
        tasks[task.name] = task
    return tasks

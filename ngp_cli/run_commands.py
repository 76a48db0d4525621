"""The commands on trained runs: ``ngp eval RUN``, ``ngp render RUN``, ``ngp extract-mesh RUN``, and any other a task
plugin declares.

Each task declares its own (:class:`ngp_cli.tasks.RunCommand`): the function that serves it and its options. The root
command reads RUN first, finds its task in ``RUN/config.yaml``, then parses the rest with that task's options alone,
plus ``--backend`` and ``--data`` (:data:`ngp_cli.commands.RUN_OPTIONS`), which every run command has. So
``ngp eval RUN --help`` shows the options of RUN's task; ``ngp eval --help`` without RUN lists every task's, and an
option of another task's runs is refused in one line that says whose it is.

Imports no torch (``ngp --help`` builds these commands).
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from ngp_cli.commands import RUN_OPTIONS
from ngp_cli.errors import DataError, UsageError
from ngp_cli.runs import RunDir

if TYPE_CHECKING:
    from ngp_cli.tasks import RunCommand, Task

__all__ = ["RUN_COMMAND_HELP", "add_run_commands", "task_command"]

#: The summary of each standard run command in ``ngp --help`` and ``ngp <command> --help`` (a plugin's own run
#: command is summarised by its first task's help).
RUN_COMMAND_HELP = {
    "eval": "Evaluate a trained run; metrics go to a JSON file in the run and to the final {\"event\":\"done\"} line.",
    "render": "Render novel views of a trained run to a video or PNG frames.",
    "extract-mesh": "Extract a triangle mesh (marching cubes) from a trained run, in the input's coordinate frame, with "
                    "shaded renders in RUN/renders/.",
    "view": "Serve a web viewer of a trained run (viser; the 'viewer' extra) at http://127.0.0.1:7007.",
}

_RUN_HELP = "A run directory (runs/<task>/<name>)."
_ARGS = "ngp.run_args"  # ctx.meta key: the command line after the command's name, parsed by the task's command


def task_command(task: Task, spec: RunCommand) -> Any:
    """The click command of ``ngp <spec.name> RUN`` on ``task``'s runs: RUN, the task's options and
    :data:`~ngp_cli.commands.RUN_OPTIONS`; its body calls ``spec``'s function with the task and every option."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("run", kind, annotation=Annotated[Path, typer.Argument(help=_RUN_HELP,
                                                                                       show_default=False)])]
    params += [inspect.Parameter(name, kind, default=default, annotation=annotation)
               for name, annotation, default in (*spec.options, *RUN_OPTIONS)]

    def command(run: Path, **options: Any) -> None:
        spec.load()(task, run, **options)

    command.__signature__ = inspect.Signature(params)  # what typer reads the options from
    command.__doc__ = spec.help
    app = typer.Typer(add_completion=False, rich_markup_mode="rich")
    app.command(spec.name)(command)
    return typer.main.get_command(app)  # one command and no callback: the command itself


class _RunDispatch(TyperCommand):
    """``ngp <name> ...``: reads RUN, then hands the whole command line to the command of RUN's task
    (:func:`task_command`). ``tasks`` is set on the subclass :func:`add_run_commands` makes per command."""

    tasks: dict[str, Task] = {}

    def _commands(self) -> dict[str, Any]:
        return {name: task_command(task, spec) for name, task in self.tasks.items()
                if (spec := task.run_command(self.name)) is not None}

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[_ARGS] = list(args)  # parsed in invoke, by the task's own command
        return []

    def invoke(self, ctx: Any) -> Any:
        args: list[str] = ctx.meta[_ARGS]
        commands = self._commands()
        flags = {name: _option_flags(cmd) for name, cmd in commands.items()}  # each task's, computed once
        help_flags = set(ctx.parent.help_option_names) if ctx.parent is not None else {"--help"}
        run, asked_help = _scan(args, flags, help_flags, self.name)
        if run is None:
            if asked_help:
                typer.echo(ctx.get_help(), color=ctx.color)
                ctx.exit()
            raise UsageError(f"Missing argument 'run': a run directory (see 'ngp {self.name} --help')")
        task_name = RunDir.open(run).read_config().get("task")
        if task_name not in self.tasks:
            raise DataError(f"{run}: its task '{task_name}' is not installed (installed: {', '.join(self.tasks)})")
        if task_name not in commands:
            raise UsageError(f"'{task_name}' runs have no 'ngp {self.name}'")
        cmd = commands[task_name]
        _refuse_other_tasks_options(args, cmd, flags, task_name, self.name)
        cmd.params += [p for p in self.params if "--quiet" in p.opts]  # the root's -q, added to every command
        with cmd.make_context(ctx.info_name, list(args), parent=ctx.parent) as sub:
            return cmd.invoke(sub)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """``ngp <name> --help`` without RUN: the summary, then the options of each task's runs."""
        commands = self._commands()
        formatter.write_usage(ctx.command_path, "RUN [OPTIONS]")
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(self.help or "")
            formatter.write_paragraph()
            formatter.write_text(f"The options depend on RUN's task: 'ngp {self.name} RUN --help' shows those of "
                                 "RUN's alone.")
        shared = {name for name, _, _ in RUN_OPTIONS}
        common: list[tuple[str, str]] = []
        for task_name, cmd in commands.items():
            sub = type(ctx)(cmd, info_name=self.name, parent=ctx.parent)
            records = [r for p in cmd.params if p.name not in shared and p.param_type_name == "option"
                       and (r := p.get_help_record(sub))]
            with formatter.section(f"Options on {task_name} runs"):
                formatter.write_dl(records or [("(none)", "")])
            common = [r for p in cmd.params if p.name in shared and (r := p.get_help_record(sub))]
        with formatter.section("Options on every run"):
            quiet = [r for p in self.params if "--quiet" in p.opts and (r := p.get_help_record(ctx))]
            helps = sorted(ctx.parent.help_option_names if ctx.parent is not None else ["--help"], key=len)
            formatter.write_dl([*common, *quiet, (", ".join(helps), "Show this message and exit.")])


def _option_flags(cmd: Any) -> dict[str, bool]:
    """``{flag: takes a value}`` for every option of the click command ``cmd``."""
    flags: dict[str, bool] = {}
    for p in cmd.params:
        if getattr(p, "param_type_name", "") != "option":
            continue
        for flag in (*p.opts, *p.secondary_opts):
            flags[flag] = not (p.is_flag or p.count)
    return flags


def _scan(args: list[str], flags: dict[str, dict[str, bool]], help_flags: set[str],
          name: str) -> tuple[str | None, bool]:
    """RUN (the first argument that is neither an option nor an option's value) and whether help was asked for;
    ``flags``: each task's :func:`_option_flags`. Raises UsageError for an option no task's ``ngp <name>`` has (with
    the nearest one)."""
    known = {"-q": False, "--quiet": False, **{f: False for f in help_flags}}
    for task_flags in flags.values():
        known.update(task_flags)
    run, asked_help, i = None, False, 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return (args[i + 1] if i + 1 < len(args) and run is None else run), asked_help
        if arg.startswith("-") and len(arg) > 1:
            flag = arg.split("=", 1)[0]
            if flag not in known:
                near = difflib.get_close_matches(flag, list(known), n=1)
                raise UsageError(f"No such option: {flag}" + (f" (did you mean {near[0]}?)" if near else "")
                                 + f" (see 'ngp {name} --help')")
            asked_help |= flag in help_flags
            i += 2 if known[flag] and "=" not in arg else 1
            continue
        if run is None:
            run = arg
        i += 1
    return run, asked_help


def _refuse_other_tasks_options(args: list[str], cmd: Any, flags: dict[str, dict[str, bool]], task_name: str,
                                name: str) -> None:
    """Raise UsageError, saying whose option it is, for an option ``task_name``'s ``ngp <name>`` (``cmd``) does not
    have; ``flags``: each task's :func:`_option_flags`."""
    own = flags[task_name]
    for arg in args:
        if arg == "--":
            return
        flag = arg.split("=", 1)[0]
        if not arg.startswith("--") or flag in own:
            continue
        owners = [t for t, task_flags in flags.items() if flag in task_flags]
        if owners:
            theirs = [p.opts[0] for p in cmd.params if getattr(p, "param_type_name", "") == "option"]
            raise UsageError(f"{flag} is for {' and '.join(owners)} runs, not {task_name} runs; 'ngp {name}' on "
                             f"{task_name} runs takes {', '.join(theirs)}")


def add_run_commands(app: typer.Typer, tasks: dict[str, Task]) -> None:
    """Add ``ngp <name> RUN`` to ``app`` for every run command an installed task declares (the standard three in
    :data:`RUN_COMMAND_HELP`'s order first)."""
    names = list(RUN_COMMAND_HELP)
    names += sorted({c.name for t in tasks.values() for c in t.run_commands} - set(names))
    for name in names:
        declared = [c for t in tasks.values() for c in t.run_commands if c.name == name]
        help_text = RUN_COMMAND_HELP.get(name) or (declared[0].help if declared else "")
        cls = type(f"RunDispatch_{name.replace('-', '_')}", (_RunDispatch,), {"tasks": tasks})

        def dispatch() -> None:  # never called: _RunDispatch.invoke hands the command line to the run's task
            raise AssertionError

        app.command(name, cls=cls, help=help_text, add_help_option=False,
                    context_settings={"ignore_unknown_options": True, "allow_extra_args": True})(dispatch)

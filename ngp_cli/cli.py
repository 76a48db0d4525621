"""The ``ngp`` command: a typer app whose commands come from task plugins, plus ``tasks`` and ``presets``.

Errors: every :class:`~ngp_cli.errors.NgpError` becomes one ``ngp: <kind>: <message>`` line on stderr (at most
:data:`MAX_ERROR_LINE` characters), a ``{"event": "error", ...}`` JSON line on stdout and its documented exit code
(docs/cli.md); usage errors become one line and exit 2; anything unexpected is an internal error (exit 1, traceback only
with ``NGP_DEBUG=1``). ``-h`` is ``--help`` and ``-q`` is ``--quiet``, before or after the command, on every command,
task plugins' included. This module imports neither torch nor CuPy.
"""

from __future__ import annotations

import copy
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ngp_cli import __version__
from ngp_cli.bench import BENCHMARKS
from ngp_cli.capture.command import register as register_process_data
from ngp_cli.commands import BACKENDS, choices, plain_choice
from ngp_cli.console import emit, error_line, is_quiet, set_quiet, warn
from ngp_cli.errors import EXIT_DISTRIBUTED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, NGP_EXIT_CODES, NgpError
from ngp_cli.launch import leave_after_distributed_failure, under_launcher
from ngp_cli.run_commands import add_run_commands

#: The longest error line ngp prints: the values quoted in messages are cut at 200 characters where they are made
#: (config.py); this cap is the backstop for every other message, keeping its head.
MAX_ERROR_LINE = 280

FormatChoice = choices("FormatChoice", ("json", "yaml"))
BenchBackendChoice = choices("BenchBackendChoice", tuple(b for b in BACKENDS if b != "auto"))
BenchmarkChoice = choices("BenchmarkChoice", BENCHMARKS)
# The paper's largest batch is 2^21; 2^24 (2 GiB of encoder output) leaves headroom, and a typo such as 10^12 is a
# usage error instead of a failed allocation.
MAX_BENCH_BATCH = 1 << 24

def one_line(message: str, limit: int) -> str:
    """``message`` as one line of at most ``limit`` characters: every line break (anything ``str.splitlines`` splits
    on) becomes a space, and a longer text keeps its head and ends in ``...``."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    if len(text) > limit:
        text = text[: max(limit - 3, 0)].rstrip() + "..."
    return text


# Errors every process of a data-parallel run meets alike (the same config, data and outputs; the agreed stop and
# divergence): only rank 0 reports them, so the user reads one line and one JSON event, not one per process. A
# distributed failure is each process's own.
_SHARED_ERROR_CODES = NGP_EXIT_CODES - {EXIT_DISTRIBUTED}


def _fail(exit_code: int, kind: str, message: str) -> None:
    if os.environ.get("RANK", "0") not in ("", "0") and exit_code in _SHARED_ERROR_CODES:
        sys.exit(exit_code)
    prefix = f"ngp: {kind}: "
    message = one_line(message, MAX_ERROR_LINE - len(prefix))
    error_line(prefix + message)
    emit("error", exit_code=exit_code, kind=kind, message=message)
    if exit_code == EXIT_DISTRIBUTED and under_launcher():
        leave_after_distributed_failure(exit_code)
    sys.exit(exit_code)


def _quiet_callback(ctx: Any, param: Any, value: bool) -> None:
    if value:
        set_quiet(True)


def _add_quiet_flag(group: Any, template: Any) -> None:
    """Give every command and sub-group under ``group`` a copy of the root's ``-q/--quiet`` flag (``template``), so it
    also works after the command name (``ngp fit-image -q``); task plugins' commands need not declare it."""
    for cmd in group.commands.values():
        if hasattr(cmd, "commands"):
            _add_quiet_flag(cmd, template)
        taken = {name for p in cmd.params for name in (*p.opts, *p.secondary_opts)}
        if taken & set(template.opts):
            continue  # the command defines its own -q or --quiet
        flag = copy.copy(template)
        flag.expose_value = False  # the command's function has no such parameter
        flag.callback = _quiet_callback
        cmd.params.append(flag)


class NgpGroup(TyperGroup):
    """Click group that turns every failure into one stderr line plus a documented exit code, and gives every command
    the root's ``-q/--quiet``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_quiet_flag(self, next(p for p in self.params if p.name == "quiet"))

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        # typer >= 0.2x vendors click; older releases use click itself. Both expose the base through BadParameter.
        click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except NgpError as err:
            _fail(err.exit_code, err.kind, str(err))
        except click_exception as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `ngp` / `ngp presets`: show the help
                err.show()
                sys.exit(EXIT_USAGE)
            code = getattr(err, "exit_code", EXIT_USAGE) or EXIT_USAGE
            # typer's enum conversion words a bad choice "Value error, 'gpu' is not one of ..."; drop its prefix.
            message = " ".join(err.format_message().split()).replace("Value error, ", "")
            ctx = getattr(err, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(code, "usage error", message + hint)
        except (typer.Abort, KeyboardInterrupt):
            _fail(EXIT_INTERRUPTED, "interrupted", "aborted by the user")
        except Exception as err:  # noqa: BLE001 - last line of defence: one line, no traceback
            if os.environ.get("NGP_DEBUG"):
                traceback.print_exc()
            _fail(EXIT_INTERNAL, "internal error",
                  f"{type(err).__name__}: {err} (set NGP_DEBUG=1 for the traceback; please report it)")
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        sys.exit(0)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"ngp {__version__}\n")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """Build the ``ngp`` app: built-in commands plus every discovered task plugin's commands."""
    from ngp_cli.tasks import discover_tasks

    app = typer.Typer(
        cls=NgpGroup,
        name="ngp",
        help="Instant neural graphics primitives: multiresolution hash encoding + fully fused MLP.\n\n"
             "stdout carries JSON lines only; human output goes to stderr. Exit codes: 0 ok, 1 internal, 2 usage, "
             "3 config, 4 data, 5 no GPU, 6 output, 7 diverged, 130 interrupted.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        # click hands help_option_names down to every sub-context: -h works on every command, plugins' included.
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _root(
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No informational output on stderr.")] = False,
        version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                              help="Print the version and exit.")] = False,
    ) -> None:
        set_quiet(quiet)
        from ngp_cli.allocator import tune_cpu_allocator

        tune_cpu_allocator()  # before any model exists: its tables get the huge pages (NGP_NO_HUGEPAGES=1 opts out)

    tasks = discover_tasks()

    @app.command("tasks")
    def tasks_cmd() -> None:
        """List the installed tasks: one JSON line each on stdout, a table on stderr."""
        from rich.table import Table

        from ngp_cli.console import stderr_console

        table = Table("task", "commands", "summary")
        for task in tasks.values():
            emit("task", name=task.name, commands=list(task.commands), summary=task.summary,
                 plugin=f"{type(task).__module__}.{type(task).__qualname__}")
            table.add_row(task.name, ", ".join(task.commands), task.summary)
        if not is_quiet():  # the table repeats the JSON lines for humans
            stderr_console().print(table)

    presets_app = typer.Typer(help="List and show the built-in presets.", no_args_is_help=True)

    @presets_app.command("list")
    def presets_list() -> None:
        """List built-in presets: one JSON line each on stdout, a table on stderr."""
        from rich.table import Table

        from ngp_cli.config import list_presets
        from ngp_cli.console import stderr_console

        table = Table("preset", "task", "extends", "description")
        for p in list_presets():
            emit("preset", **p)
            table.add_row(p["name"], str(p["task"] or ""), str(p["extends"] or ""), p["description"])
        if not is_quiet():  # the table repeats the JSON lines for humans
            stderr_console().print(table)

    @presets_app.command("show")
    def presets_show(
        name: Annotated[str, typer.Argument(help="Preset name or path (.yaml/.yml/.json).")],
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override KEY.PATH=VALUE (YAML value).")] = None,
        task_name: Annotated[str | None, typer.Option(
            "--task", help="Task to resolve for, when the file has no 'task:' key (a tiny-cuda-nn JSON); one of "
                           "'ngp tasks'.")] = None,
        fmt: Annotated[FormatChoice, typer.Option(
            "--format", callback=plain_choice, help="json (one line) or yaml.")] = "json",
    ) -> None:
        """Print one preset fully resolved (inheritance, defaults and --set applied) and validated."""
        from ngp_cli.commands import TrainOptions, default_preset
        from ngp_cli.config import dump_yaml, load_preset, resolve, to_dict
        from ngp_cli.errors import ConfigError, UsageError

        if task_name is not None and task_name not in tasks:  # a typo on the command line, not in the preset
            raise UsageError(f"--task must be an installed task ({', '.join(tasks)}), got '{task_name}'")
        task_name = task_name or load_preset(name).get("task")
        if task_name is None:
            raise UsageError(f"preset '{name}' has no 'task:' key; say which task with --task "
                             f"({', '.join(tasks)})")
        if task_name not in tasks:
            raise ConfigError(f"task '{task_name}' of preset '{name}' is not installed (installed: {', '.join(tasks)})")
        task = tasks[task_name]
        cfg = resolve(task.config_class(), task_name, name, set_ or [],
                      default_preset=default_preset(task, TrainOptions()))
        data = to_dict(cfg)
        if fmt == "yaml":
            sys.stdout.write(dump_yaml(data))
        else:
            emit("preset", name=name, config=data)

    app.add_typer(presets_app, name="presets")

    @app.command("bench")
    def bench_cmd(
        backend: Annotated[list[BenchBackendChoice] | None, typer.Option(
            "--backend", callback=plain_choice,
            help="Backend(s) to measure (repeatable; default every available one).")] = None,
        batch: Annotated[list[int] | None, typer.Option(
            "--batch", min=1, max=MAX_BENCH_BATCH,
            help="Batch size(s) (repeatable; default 2^14 and 2^16 on the CPU, 2^16 to 2^21 on a GPU).")] = None,
        dims: Annotated[list[int] | None, typer.Option(
            "--dims", min=2, max=3, help="Encoding input dims, 2 or 3 (repeatable; default both).")] = None,
        only: Annotated[list[BenchmarkChoice] | None, typer.Option(
            "--only", callback=plain_choice, help="Benchmark(s) to run (repeatable; default all).")] = None,
        repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per figure (median reported).")] = 5,
        warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 2,
        out: Annotated[Path | None, typer.Option("--out", help="Also write all results as one JSON file.")] = None,
        output: Annotated[Path | None, typer.Option(
            "--output", hidden=True, help="Deprecated spelling of --out.")] = None,
        run: Annotated[Path | None, typer.Option(
            "--run", help="A trained NeRF run: also time rendering one of its held-out views (render_network, "
                          "render_frame, render_network_legacy, render_network_ingp; ns/elem is then ms per "
                          "megapixel).")] = None,
        baked: Annotated[Path | None, typer.Option(
            "--baked", help="A file 'ngp bake' made from --run: also time render_baked.")] = None,
        data: Annotated[Path | None, typer.Option(
            "--data", help="--run's dataset, when it has moved from the path the run recorded.")] = None,
    ) -> None:
        """Measure throughput of the encoding, the MLP and a fit-image training step on every available backend, and
        with --run the render time of a NeRF run's view.

        stdout: one {"event":"bench",...} JSON line per figure, then {"event":"done",...}; stderr: a table.
        """
        from ngp_cli.bench import run_bench
        from ngp_cli.errors import UsageError

        if output is not None:
            if out is not None:
                raise UsageError("give --out only (--output is its deprecated spelling)")
            warn("--output is deprecated; use --out")
            out = output
        run_bench(tasks, backend, batch, dims, only, repeats, warmup, out, run=run, baked=baked, data=data)

    register_process_data(app)  # ngp process-data (ngp_cli/capture)
    add_run_commands(app, tasks)
    for task in tasks.values():
        task.register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``ngp``)."""
    from ngp_cli.launch import COMMAND_LINE

    COMMAND_LINE[:] = list(argv) if argv is not None else sys.argv[1:]  # what --nproc hands to its processes
    app = build_app()
    typer.main.get_command(app).main(args=argv, prog_name="ngp")


if __name__ == "__main__":  # pragma: no cover
    main()

"""Output channels: JSON lines on stdout for machines, rich text on stderr for humans.

The contract (docs/cli.md): stdout carries only JSON lines, so ``ngp ... | jq`` always works; every human-facing message,
table and progress bar goes to stderr, and the progress bar only appears when stderr is a terminal (:func:`progress`
prints plain lines with an ETA otherwise).
Imports only rich and the standard library, so ``ngp --help`` stays fast.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence informational stderr output (errors are still printed)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    """Whether ``--quiet`` was given."""
    return _quiet


def stderr_console() -> Console:
    """A rich Console bound to the *current* ``sys.stderr`` (test runners swap it), never to stdout."""
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """Print one human-readable line on stderr (rich markup allowed), unless ``--quiet``."""
    if not _quiet:
        stderr_console().print(message)


def error_line(message: str) -> None:
    """Print one plain error line on stderr; markup is not interpreted so paths with brackets survive."""
    stderr_console().print(message, markup=False)


def warn(message: str) -> None:
    """Print one ``ngp: warning: <message>`` line on stderr (even with ``--quiet``: a warning is not information)."""
    error_line(f"ngp: warning: {message}")


class _PlainProgress:
    """``label i/N (p%), elapsed, ETA`` lines on stderr: the first and last item, then one line per tenth of the
    work or per ``_PLAIN_EVERY_S`` seconds, whichever comes first (enough to see it move in a log, few enough to
    read)."""

    def __init__(self, total: int | None, label: str) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.t0 = time.perf_counter()
        self.last_line = self.t0
        self.last_tenth = -1

    def __call__(self, n: int = 1, *, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self.done += n
        now = time.perf_counter()
        tenth = self.done * 10 // self.total if self.total else -1
        if not (self.done == n or self.done == self.total or tenth != self.last_tenth
                or now - self.last_line >= _PLAIN_EVERY_S):
            return
        self.last_tenth, self.last_line = tenth, now
        elapsed = now - self.t0
        if self.total:
            eta = elapsed / self.done * (self.total - self.done)
            info(f"{self.label} {self.done}/{self.total} ({100 * self.done // self.total}%), {elapsed:.1f} s, "
                 f"ETA {eta:.1f} s")
        else:
            info(f"{self.label} {self.done}, {elapsed:.1f} s")


_PLAIN_EVERY_S = 10.0


@contextmanager
def progress(total: int | None, label: str) -> Iterator[Callable[..., None]]:
    """Progress with an ETA on stderr for long work after training (``ngp eval``/``render``/``extract-mesh``, the
    final evaluation).

    Yields ``advance(n=1, *, total=None)``: call it as each of the ``total`` items finishes (``total`` may be None
    and given later through ``advance``'s keyword, for work that learns its size as it goes). Shows a rich progress
    bar when stderr is a terminal, else plain ``label i/N (p%), elapsed, ETA`` lines (:class:`_PlainProgress`'s
    cadence); nothing with ``--quiet``. stdout is never touched, so JSON lines emitted meanwhile stay intact.
    """
    if _quiet:
        yield lambda n=1, *, total=None: None
        return
    console = stderr_console()
    if not console.is_terminal:
        yield _PlainProgress(total, label)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(label.replace("[", r"\[")), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=console, redirect_stdout=False,
                   redirect_stderr=False, transient=False)
    task = bar.add_task(label, total=total)

    def advance(n: int = 1, *, total: int | None = None) -> None:
        if total is not None:
            bar.update(task, total=total)
        bar.advance(task, n)

    with bar:
        yield advance


def _jsonable(value: Any) -> Any:
    # NaN/inf are not valid JSON: emit null so consumers' parsers never choke.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def to_json(obj: dict[str, Any]) -> str:
    """Serialise ``obj`` as one compact JSON line (non-finite floats become null)."""
    return json.dumps(_jsonable(obj), separators=(",", ":"), allow_nan=False)


def emit(event: str, **fields: Any) -> None:
    """Write one ``{"event": event, ...}`` JSON line to stdout and flush it (for shell pipelines)."""
    sys.stdout.write(to_json({"event": event, **fields}) + "\n")
    sys.stdout.flush()

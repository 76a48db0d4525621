"""Output channels: JSON lines on stdout for machines, rich text on stderr for humans.

The contract (docs/cli.md): stdout carries only JSON lines, so ``ngp ... | jq`` always works; every human-facing message,
table and progress bar goes to stderr, and the progress bar only appears when stderr is a terminal.
Imports only rich and the standard library, so ``ngp --help`` stays fast.
"""

from __future__ import annotations

import json
import math
import sys
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

"""The checks every NeRF JSON input shares: training captures (``transforms.json``, :mod:`ngp_cli.tasks.nerf.data`)
and camera paths (:mod:`ngp_cli.tasks.nerf.camera_path`).

Each check raises :class:`~ngp_cli.errors.DataError` with one line that starts with the file's path and names the
place in it (``where``: ``frame 3 (images/r_3.png): 'transform_matrix'``, ``frames[3].fl_x``), so a bad value is
found without reading code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ngp_cli.errors import DataError

__all__ = ["frame_list", "is_number", "matrix", "number", "read_json", "read_object", "vector"]


def is_number(value: Any) -> bool:
    """A JSON number (``bool`` is not one, though Python says it is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file (UTF-8, optional BOM).

    Raises:
        DataError: missing, a directory, unreadable, empty, not UTF-8, or malformed JSON (with line and column);
            ``what`` ("a transforms JSON file") completes the message.
    """
    try:
        text = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{path}: file does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected {what}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e.strerror or e}") from None
    try:
        decoded = text.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}), expected {what}") from None
    if not decoded.strip():
        raise DataError(f"{path}: file is empty, expected {what}")
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: malformed JSON: nested too deeply") from None


def read_object(path: Path, what: str) -> dict[str, Any]:
    """:func:`read_json`, and a JSON object at the top level (else DataError)."""
    doc = read_json(path, what)
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object at the top level ({what}), got {type(doc).__name__}")
    return doc


def frame_list(path: Path, doc: dict[str, Any], key: str, what: str = "frames") -> list[Any]:
    """``doc[key]`` (present): a non-empty list (else DataError; ``what`` names its entries in the message: "no
    keyframes ('path' is empty)")."""
    frames = doc[key]
    if not isinstance(frames, list):
        raise DataError(f"{path}: '{key}' must be a list, got {type(frames).__name__}")
    if not frames:
        raise DataError(f"{path}: no {what} ('{key}' is empty)")
    return frames


def number(path: Path, where: str, value: Any, *, positive: bool = False, below: float | None = None) -> float:
    """``value`` as a finite float; ``positive``: > 0; ``below``: in (0, below). Else DataError naming ``where``."""
    if not is_number(value):
        raise DataError(f"{path}: {where} must be a number, got {json.dumps(value)[:40]}")
    v = float(value)
    if not math.isfinite(v):
        raise DataError(f"{path}: {where} is not finite ({value})")
    if (positive or below is not None) and (v <= 0.0 or (below is not None and v >= below)):
        bound = f" in (0, {below:g})" if below is not None else " > 0"
        raise DataError(f"{path}: {where} must be a finite number{bound}, got {value}")
    return v


def vector(path: Path, where: str, value: Any, n: int) -> np.ndarray:
    """``value`` as (n,) float64: a list of ``n`` finite numbers (else DataError naming ``where``, e.g. ``path[2].T``)."""
    if not isinstance(value, list) or len(value) != n or not all(map(is_number, value)):
        raise DataError(f"{path}: {where} must be a list of {n} numbers, got {json.dumps(value)[:60]}")
    v = np.array(value, dtype=np.float64)
    if not np.isfinite(v).all():
        raise DataError(f"{path}: {where} contains NaN or infinite values")
    return v


def matrix(path: Path, where: str, value: Any, *, flat_ok: bool = False) -> np.ndarray:
    """A camera-to-world matrix: 3x4 or 4x4 nested lists of finite numbers (``flat_ok``: or 16 numbers, row-major,
    as nerfstudio writes them) with an invertible rotation part. The last row of a 4x4 is dropped unchecked.

    Returns (3, 4) float64. Raises DataError naming ``where`` (e.g. ``frames[2].transform_matrix``).
    """
    want = "a 3x4 or 4x4 matrix" + (" or 16 numbers" if flat_ok else "")
    if not isinstance(value, list) or not all(is_number(x) or isinstance(x, list) and all(map(is_number, x))
                                              for x in value):
        raise DataError(f"{path}: {where} must be {want} of numbers")
    try:
        m = np.array(value, dtype=np.float64)
    except ValueError:  # ragged rows
        raise DataError(f"{path}: {where} must be {want}, got rows of different lengths") from None
    if flat_ok and m.shape == (16,):
        m = m.reshape(4, 4)
    if m.shape not in ((4, 4), (3, 4)):
        raise DataError(f"{path}: {where} must be {want}, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise DataError(f"{path}: {where} contains NaN or infinite values")
    det = float(np.linalg.det(m[:3, :3]))
    if abs(det) < 1e-6:
        raise DataError(f"{path}: {where} has a degenerate rotation (determinant {det:.3g})")
    return m[:3]

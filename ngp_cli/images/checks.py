"""The checks every image reader shares: the declared-size limit (``max_pixels``) and one-line failure reasons."""

from __future__ import annotations

from ngp_cli.errors import DataError

DEFAULT_MAX_PIXELS = 1 << 28
"""Largest width x height :func:`read_image` accepts by default (268,435,456 pixels: 16384 x 16384, ~800 MB as 8-bit
RGB, ~2 GB as 16-bit RGBA); ``ngp fit-image --max-pixels N`` raises it (0 = no limit)."""


def _short_reason(exc: BaseException) -> str:
    """One short line describing ``exc`` (library messages can span lines or be empty)."""
    text = str(exc).strip().strip("'\"")
    line = " ".join(text.split()) if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse a declared ``width`` x ``height`` that is empty or over ``max_pixels`` (0 = no limit): DataError."""
    if width <= 0 or height <= 0:
        raise DataError(f"{name}: image has zero size ({width}x{height})")
    if max_pixels and width * height > max_pixels:
        raise DataError(
            f"{name}: image is {width}x{height} ({width * height:,} pixels), more than the limit of {max_pixels:,} "
            "pixels (--max-pixels N raises it, 0 = no limit)"
        )

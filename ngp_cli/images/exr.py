"""OpenEXR through its 3.x bindings (``OpenEXR.File``): reading the first part, writing half/float images."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from ngp_cli.errors import DataError, OutputError

from .checks import _check_size, _short_reason
from .dtypes import _F16, _F32


@contextlib.contextmanager
def _capture_native_output(sink: list[str]):
    """Collect what OpenEXR prints (a Python-level warning on stdout, C-level errors on fd 2) into ``sink``.

    Why: a corrupt EXR otherwise prints two extra lines around our one-line error; the C-level text is also the most
    precise reason available. Redirecting fd 2 is process-wide, so keep the guarded region short.
    """
    saved = tmp = None
    with contextlib.suppress(OSError):
        tmp = tempfile.TemporaryFile()
        saved = os.dup(2)
    py_out = io.StringIO()
    try:
        if saved is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
        with contextlib.redirect_stdout(py_out):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))
        if tmp is not None:
            tmp.close()
        sink.append(py_out.getvalue())


def _native_reason(sink: list[str], name: str) -> str | None:
    """Most specific line of captured OpenEXR output, without the leading file name."""
    lines = [ln.strip() for text in sink for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    lines.sort(key=lambda ln: "EXR_ERR" not in ln)  # the C library's coded error first
    line = lines[0]
    line = line[len(name) + 1 :].strip() if line.startswith(name + ":") else line
    return line.replace(f"'{name}'", "the file")  # the error line starts with the path already


def _exr_channel_order(names: list[str]) -> list[str] | None:
    """Channel names in R,G,B[,A] or Y[,A] order (default layer, else the only layer), a lone channel, or None."""
    layers: dict[str, dict[str, str]] = {}
    for n in names:
        layer, _, base = n.rpartition(".")
        layers.setdefault(layer, {})[base.upper()] = n
    candidates = [layers.get("", {})]
    if len(layers) == 1 and "" not in layers:
        candidates = list(layers.values())
    for m in candidates:
        alpha = [m["A"]] if "A" in m else []
        if {"R", "G", "B"} <= m.keys():
            return [m["R"], m["G"], m["B"], *alpha]
        if "Y" in m:
            return [m["Y"], *alpha]
    if len(names) == 1:
        return list(names)
    return None


def _read_exr(name: str, max_pixels: int) -> np.ndarray:
    import OpenEXR

    sink: list[str] = []
    try:
        with _capture_native_output(sink):
            window = OpenEXR.File(name, header_only=True).header()["dataWindow"]
    except Exception as e:
        raise ValueError(_native_reason(sink, name) or _short_reason(e)) from e
    (x0, y0), (x1, y1) = (tuple(int(v) for v in corner) for corner in window)
    _check_size(name, x1 - x0 + 1, y1 - y0 + 1, max_pixels)
    sink = []
    try:
        with _capture_native_output(sink):
            exr = OpenEXR.File(name, separate_channels=True)
            chans = exr.channels()
    except Exception as e:
        raise ValueError(_native_reason(sink, name) or _short_reason(e)) from e
    stray = "".join(sink).strip()
    if stray:  # warnings on success: pass them on unchanged
        sys.stderr.write(stray + "\n")
    if not chans:
        raise ValueError("no channels (or deep data, which is unsupported)")
    order = _exr_channel_order(list(chans))
    if order is None:
        raise DataError(
            f"{name}: unsupported EXR channel layout {sorted(chans)} (expected R,G,B[,A], Y[,A] or a single channel)"
        )
    planes = []
    for n in order:
        p = chans[n].pixels
        if p is None or p.ndim != 2:
            raise ValueError(f"channel '{n}' has no scanline pixel data")
        if p.dtype not in (_F16, _F32):
            raise DataError(f"{name}: unsupported EXR pixel type {p.dtype} in channel '{n}' (expected half or float)")
        planes.append(p)
    if len({p.shape for p in planes}) != 1:
        raise DataError(f"{name}: unsupported EXR with subsampled channels {order}")
    dtype = _F16 if all(p.dtype == _F16 for p in planes) else _F32
    if len(planes) == 1:
        return planes[0].astype(dtype, copy=False)[..., None]
    return np.stack([p.astype(dtype, copy=False) for p in planes], axis=-1)


def _write_exr(path: Path, tmp: Path, buf: np.ndarray) -> None:
    """Encode ``buf`` (H, W, C) float16/float32 as a ZIP-compressed scanline EXR into ``tmp``; OutputError names
    ``path`` (the destination)."""
    import OpenEXR

    h, w, channels = buf.shape
    # OpenEXR's bindings silently write garbage for strided arrays: pass contiguous planes only.
    if channels == 1:
        chans = {"Y": buf.reshape(h, w)}
    elif channels == 2:
        chans = {"Y": np.ascontiguousarray(buf[..., 0]), "A": np.ascontiguousarray(buf[..., 1])}
    else:
        chans = {"RGB" if channels == 3 else "RGBA": buf}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    sink: list[str] = []
    try:
        with _capture_native_output(sink):
            OpenEXR.File(header, chans).write(str(tmp))
    except Exception as e:
        reason = _native_reason(sink, str(tmp)) or _short_reason(e)
        raise OutputError(f"{path}: cannot write EXR: {reason}") from e

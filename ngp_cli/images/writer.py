"""Writing images: :class:`ImageWriter` (tile by tile, published atomically), :func:`write_image` (a whole array) and
:class:`TempFileOutput`, the temporary-file lifecycle they share with the video writers."""

from __future__ import annotations

import contextlib
import errno
import math
import os
from pathlib import Path

import numpy as np

from ngp_cli.errors import OutputError

from .dtypes import _F16, _F32, _STORED_DTYPES, _U8, _U16
from .exr import _write_exr
from .png import _write_png

# Output formats and the dtypes each can store.
_WRITE_DTYPES = {
    ".png": (_U8, _U16),
    ".tif": _STORED_DTYPES,
    ".tiff": _STORED_DTYPES,
    ".exr": (_F16, _F32),
}


class TempFileOutput:
    """The lifecycle of an output written to a temporary file beside its destination and renamed onto it by
    ``close()``, so an earlier file is never destroyed by a failed write: used as a context manager it closes on
    success and ``abort()``s (removing the temporary file) on an exception, and a writer dropped unfinished aborts.

    Subclasses implement ``close()`` and ``abort()`` and keep ``_tmp`` (the temporary path or None) and
    ``_finished`` (True once closed or aborted).
    """

    _tmp: Path | None = None
    _finished: bool = True

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def _remove_temp(self) -> None:
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # Last resort for writers dropped without close/abort: never leave a stray temporary file behind.
        if not getattr(self, "_finished", True):
            with contextlib.suppress(Exception):
                self.abort()


class ImageWriter(TempFileOutput):
    """Write an ``(H, W, C)`` image tile by tile, then publish it atomically.

    ``with ImageWriter(path, h, w, c, dtype) as out: out[r0:r1] = tile`` — tiles are ``(r1 - r0, W, C)`` arrays in
    exactly ``dtype`` (``(r1 - r0, W)`` is accepted when C == 1), written in any order; rows never written stay 0.

    Formats by suffix: ``.png`` (uint8, uint16; C 1..4; adaptive-filter zlib level 6), ``.tif``/``.tiff`` (uint8,
    uint16, float16, float32; uncompressed contiguous, BigTIFF above 4 GiB), ``.exr`` (float16 -> half, float32 ->
    float; ZIP compression; channels Y, Y+A, R+G+B or R+G+B+A). TIFF pixels go straight into a ``tifffile.memmap`` of
    the output (disk space reserved up front), so no in-memory copy is needed; PNG and EXR encoders need the whole
    image, which is assembled in memory (H*W*C*itemsize bytes).

    Data goes to a hidden temporary file in the destination directory; on successful exit it replaces ``path`` with
    ``os.replace`` (readers never see a partial file). If the block raises, the temporary file is removed and an
    existing file at ``path`` is left untouched. Outside a ``with`` block call :meth:`close` (publish) or
    :meth:`abort` (discard).

    Raises :class:`OutputError` for an unsupported suffix or suffix/dtype combination, a missing or unwritable
    destination directory, a destination that is a directory, and write failures (disk full, ...). Bad tile shapes,
    dtypes or row ranges are programming errors: ``ValueError``/``TypeError``.
    """

    def __init__(self, path: str | os.PathLike, height: int, width: int, channels: int, dtype) -> None:
        self.path = Path(os.fsdecode(os.fspath(path)))
        self.height, self.width, self.channels = int(height), int(width), int(channels)
        self.dtype = np.dtype(dtype)
        self._tmp: Path | None = None
        self._buf: np.ndarray | None = None
        self._memmap = None
        self._finished = False
        suffix = self.path.suffix.lower()
        self._suffix = suffix
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a directory, expected an output file path")
        if suffix not in _WRITE_DTYPES:
            raise OutputError(
                f"{self.path}: unsupported output format '{suffix or '(no suffix)'}' "
                f"(supported: {', '.join(_WRITE_DTYPES)})"
            )
        if self.dtype not in _WRITE_DTYPES[suffix]:
            allowed = ", ".join(str(d) for d in _WRITE_DTYPES[suffix])
            raise OutputError(f"{self.path}: cannot write {self.dtype} images as {suffix} (supported: {allowed})")
        if self.height <= 0 or self.width <= 0 or not 1 <= self.channels <= 4:
            raise ValueError(f"invalid image size {self.width}x{self.height}x{self.channels} (need H, W > 0, C 1..4)")
        parent = self.path.parent
        if not parent.is_dir():
            raise OutputError(f"{self.path}: output directory {parent} does not exist")
        self._tmp = self._create_temp(parent)
        try:
            self._open_buffer()
        except BaseException:
            self._remove_temp()
            raise

    def _create_temp(self, parent: Path) -> Path:
        from ngp_cli.runs import create_temp_beside

        try:
            return create_temp_beside(self.path, self._suffix)  # the real suffix last: some encoders look at it
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write to directory {parent}: {e.strerror or e}") from e

    def _open_buffer(self) -> None:
        shape = (self.height, self.width, self.channels)
        if self._suffix in (".tif", ".tiff"):
            import tifffile

            nbytes = math.prod(shape) * self.dtype.itemsize
            kwargs: dict = {
                "photometric": "rgb" if self.channels >= 3 else "minisblack",
                "planarconfig": "contig",
                "bigtiff": nbytes > (1 << 32) - (1 << 24),  # classic TIFF offsets are 32-bit
            }
            if self.channels in (2, 4):
                kwargs["extrasamples"] = [2]  # unassociated alpha
            mshape = shape if self.channels > 1 else shape[:2]
            try:
                self._memmap = tifffile.memmap(str(self._tmp), shape=mshape, dtype=self.dtype, **kwargs)
                _reserve_disk_space(self._tmp)
            except OSError as e:
                raise OutputError(f"{self.path}: cannot create output file: {e.strerror or e}") from e
            self._buf = self._memmap.reshape(shape)
        else:
            try:
                self._buf = np.zeros(shape, self.dtype)
            except MemoryError as e:
                raise OutputError(f"{self.path}: not enough memory to assemble a {shape} {self.dtype} image") from e

    def __setitem__(self, rows: slice | int, tile: np.ndarray) -> None:
        """Store rows ``rows`` (a step-1 slice, or an int for one row) from ``tile`` of shape (n, W, C) in ``dtype``."""
        if self._finished or self._buf is None:
            raise ValueError(f"{self.path}: writer is already closed")
        if isinstance(rows, (int, np.integer)):
            rows = slice(int(rows), int(rows) + 1)
        if not isinstance(rows, slice):
            raise TypeError(f"rows must be a slice, got {type(rows).__name__}")
        start, stop, step = rows.indices(self.height)
        if step != 1 or stop <= start:
            raise ValueError(f"rows must be a non-empty step-1 slice within 0..{self.height}, got {rows}")
        tile = np.asarray(tile)
        if tile.ndim == 2 and self.channels == 1:
            tile = tile[..., None]
        want = (stop - start, self.width, self.channels)
        if tile.shape != want:
            raise ValueError(f"tile for rows {start}:{stop} must have shape {want}, got {tile.shape}")
        if tile.dtype != self.dtype:
            raise TypeError(f"tile dtype {tile.dtype} does not match the writer's dtype {self.dtype}")
        self._buf[start:stop] = tile

    def close(self) -> None:
        """Encode (PNG/EXR), flush (TIFF) and atomically move the file into place. Idempotent."""
        if self._finished:
            return
        try:
            self._finalise()
            os.replace(self._tmp, self.path)
        except OutputError:
            self.abort()
            raise
        except OSError as e:
            self.abort()
            raise OutputError(f"{self.path}: cannot write image: {e.strerror or e}") from e
        except BaseException:
            self.abort()
            raise
        self._finished = True
        self._buf = self._memmap = None

    def _finalise(self) -> None:
        if self._memmap is not None:
            self._memmap.flush()
            self._buf = self._memmap = None  # unmap before the rename
        elif self._suffix == ".png":
            with open(self._tmp, "wb") as fh:
                _write_png(fh, self._buf)
        else:
            _write_exr(self.path, self._tmp, self._buf)

    def abort(self) -> None:
        """Discard the output: remove the temporary file, keep whatever was at ``path``. Idempotent."""
        self._finished = True
        self._buf = self._memmap = None
        self._remove_temp()


def _reserve_disk_space(path: Path) -> None:
    """Allocate the memmapped file's blocks now: a full disk then fails here as OSError, not later as SIGBUS."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        # EOPNOTSUPP/EINVAL: the filesystem cannot preallocate; carry on with a sparse file.
    finally:
        os.close(fd)


def write_image(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a whole ``(H, W, C)`` (or ``(H, W)`` gray) array through :class:`ImageWriter` (same formats and errors)."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected an (H, W, C) or (H, W) array, got shape {a.shape}")
    with ImageWriter(path, a.shape[0], a.shape[1], a.shape[2], a.dtype) as out:
        if a.shape[0] > 0:
            out[0 : a.shape[0]] = a

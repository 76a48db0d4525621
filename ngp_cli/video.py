"""Writing rendered frames: a video file (mp4/mov/mkv through imageio-ffmpeg, gif through Pillow) or a PNG directory.

:class:`FrameWriter` streams frames as they are rendered, so a long render never holds all its frames in memory.
A video goes to a temporary file in the destination's directory and is renamed onto the destination only when the
writer closes successfully: an earlier video at that path survives a failed or interrupted render. A directory gets
``frame_00000.png``, ``frame_00001.png``, ... each written atomically as it arrives.

Encoding: H.264 (``libx264``, yuv420p, imageio quality 8 of 10) for ``.mp4``/``.mov``/``.mkv``, with
``macro_block_size=1`` so frames are never rescaled; yuv420p needs even sizes, so a frame with an odd width or height
is padded by repeating its last column/row. GIFs loop forever with a frame duration of ``1000 / fps`` ms (GIF stores
hundredths of a second, so the fps is approximate).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np

from ngp_cli.errors import OutputError
from ngp_cli.images import TempFileOutput, from_float, write_image
from ngp_cli.runs import create_temp_beside

__all__ = ["VIDEO_SUFFIXES", "FrameWriter", "write_frames"]

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".gif")
_FRAME_RE = re.compile(r"^frame_(\d{5,})\.png$")


def _reason(exc: BaseException) -> str:
    """One short line from an exception (ffmpeg errors span many lines)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


class FrameWriter(TempFileOutput):
    """Context manager writing RGB frames to a video file or a directory of PNGs.

    Args:
        out: destination. A path ending in ``.mp4``, ``.mov``, ``.mkv`` or ``.gif`` (any case) is a video file; any
            other path is a directory that receives ``frame_00000.png``, ... . Missing parent directories (and the
            frame directory) are created.
        fps: frames per second of the video (ignored for PNG directories), > 0.

    ``paths`` lists the files written so far: each PNG as it is written; for a video, the video path once
    :meth:`close` succeeded (empty before). ``count`` is the number of frames written.

    On an exception inside the ``with`` block the temporary video is removed and ``out`` is left as it was; PNG frames
    already written stay. A successful close of a PNG directory removes stale ``frame_NNNNN.png`` files numbered beyond
    the frames just written (left by an earlier, longer render), so the directory holds exactly this render.

    Raises :class:`OutputError` (one line, starting with the path) when the destination cannot be created or written,
    when the encoder fails, or when a video is closed with no frames (the old file is then kept). ``ValueError`` for a
    non-positive fps or a frame of the wrong shape / dtype / size.
    """

    def __init__(self, out: str | os.PathLike, fps: int = 30) -> None:
        self.out = Path(out)
        if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0 and np.isfinite(fps)):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.fps = fps
        self.paths: list[Path] = []
        self.count = 0
        self.is_video = self.out.suffix.lower() in VIDEO_SUFFIXES
        self._size: tuple[int, int] | None = None
        self._tmp: Path | None = None
        self._writer = None
        self._finished = False
        if self.is_video:
            self._open_video()
        else:
            self._open_directory()

    # -- setup ---------------------------------------------------------------------------------------------------------
    def _open_video(self) -> None:
        if self.out.is_dir():
            raise OutputError(f"{self.out}: is a directory, expected a video file path")
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.out}: cannot create directory {parent}: {e.strerror or e}") from None
        try:  # the real suffix last: imageio picks the format from it
            self._tmp = tmp = create_temp_beside(self.out, self.out.suffix.lower())
        except OSError as e:
            raise OutputError(f"{self.out}: cannot write to directory {parent}: {e.strerror or e}") from None
        import imageio

        try:
            if self.out.suffix.lower() == ".gif":
                self._writer = imageio.v2.get_writer(tmp, mode="I", duration=1000.0 / self.fps, loop=0)
            else:
                self._writer = imageio.v2.get_writer(
                    tmp,
                    format="FFMPEG",
                    mode="I",
                    fps=self.fps,
                    codec="libx264",
                    quality=8,
                    macro_block_size=1,
                    ffmpeg_log_level="error",
                )
        except Exception as e:
            self._remove_temp()
            raise OutputError(f"{self.out}: cannot open video writer: {_reason(e)}") from None

    def _open_directory(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(
                f"{self.out}: exists and is not a directory (frames go to a directory; "
                f"use a {'/'.join(VIDEO_SUFFIXES)} name for a video)"
            )
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.out}: cannot create directory: {e.strerror or e}") from None

    # -- writing -------------------------------------------------------------------------------------------------------
    def _as_uint8(self, frame) -> np.ndarray:
        a = np.asarray(frame)
        if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"frame must have shape (H, W, 3), got {a.shape}")
        if a.dtype == np.uint8:
            pass
        elif a.dtype.kind == "f":
            a = from_float(a, np.uint8)  # clip to [0, 1], round; NaN -> 0
        else:
            raise ValueError(f"frame must be uint8 or float in [0, 1], got dtype {a.dtype}")
        size = (int(a.shape[0]), int(a.shape[1]))
        if self._size is None:
            self._size = size
        elif size != self._size:
            raise ValueError(
                f"frame {self.count} is {size[1]}x{size[0]}, earlier frames are {self._size[1]}x{self._size[0]}"
            )
        return a

    def write(self, frame) -> None:
        """Append one frame: (H, W, 3) uint8, or float (values in [0, 1]; clipped, rounded, NaN -> 0).

        All frames must have the same size. Raises OutputError when writing fails, ValueError for a bad frame.
        """
        if self._finished:
            raise ValueError(f"{self.out}: frame writer is already closed")
        a = self._as_uint8(frame)
        if not self.is_video:
            path = self.out / f"frame_{self.count:05d}.png"
            write_image(path, a)
            self.paths.append(path)
            self.count += 1
            return
        if self.out.suffix.lower() != ".gif" and (a.shape[0] % 2 or a.shape[1] % 2):
            a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge")
        try:
            self._writer.append_data(np.ascontiguousarray(a))
        except Exception as e:
            self.abort()
            raise OutputError(f"{self.out}: cannot encode frame {self.count}: {_reason(e)}") from None
        self.count += 1

    # -- finishing -----------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Finish: encode and move the video into place, or prune stale PNG frames. Idempotent."""
        if self._finished:
            return
        if not self.is_video:
            self._finished = True
            self._prune_stale_frames()
            return
        if self.count == 0:
            self.abort()
            raise OutputError(f"{self.out}: no frames were written; the video was not created")
        try:
            self._writer.close()
            self._writer = None
            os.replace(self._tmp, self.out)
        except Exception as e:
            self.abort()
            raise OutputError(f"{self.out}: cannot write video: {_reason(e)}") from None
        self._tmp = None
        self._finished = True
        self.paths.append(self.out)

    def _prune_stale_frames(self) -> None:
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.out):
                m = _FRAME_RE.match(entry.name)
                if m and int(m.group(1)) >= self.count and entry.is_file():
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def abort(self) -> None:
        """Discard an unfinished video (the temporary file; ``out`` is untouched). PNG frames stay. Idempotent."""
        self._finished = True
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        self._remove_temp()


def write_frames(out: str | os.PathLike, frames, fps: int = 30) -> int:
    """Write every frame of the iterable ``frames`` (rendered lazily, one at a time) through :class:`FrameWriter` and
    return how many were written. Raises OutputError, also for an OSError while the frames are produced or written."""
    try:
        with FrameWriter(out, fps=fps) as writer:
            for frame in frames:
                writer.write(frame)
            return writer.count
    except OSError as err:
        raise OutputError(f"{out}: {err.strerror or err}") from None

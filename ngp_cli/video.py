"""Writing rendered frames: a video file (mp4/mov/mkv through imageio-ffmpeg, gif through Pillow) or a PNG directory.

:class:`FrameWriter` streams frames as they are rendered, so a long render never holds all its frames in memory.
Nothing is published before the whole render succeeded, and an earlier result at the destination survives any failure:

- a video goes to a temporary file beside the destination; on close it is encoded, **probed** (its frames counted by
  decoding it with ffmpeg; a GIF decoded to its trailer) and checked against the frames written, fsynced, and only
  then renamed onto the destination. A short or unreadable file (a full disk, a killed encoder) is an
  :class:`~ngp_cli.errors.OutputError` (exit 6) and the temporary file is removed.
- PNG frames go to a temporary folder beside the destination folder, named :func:`frame_name` (``frame_00000.png``,
  ``frame_00001.png``, ..., the first frame numbered 0: the one scheme of ``ngp render`` and ``ngp train-nrc``). On
  close the temporary folder is renamed to the destination when that does not exist yet; otherwise each frame is
  renamed into it (atomically, one by one) and ``frame_NNNNN.png`` files numbered beyond this render are removed, other
  files in it are left alone. A failed render removes the temporary folder and leaves the destination as it was.

Encoding: H.264 (``libx264``, yuv420p, imageio quality 8 of 10) for ``.mp4``/``.mov``/``.mkv``, with
``macro_block_size=1`` so frames are never rescaled; yuv420p needs even sizes, so a frame with an odd width or height
is padded by repeating its last column/row. GIFs loop forever with a frame duration of ``1000 / fps`` ms (GIF stores
hundredths of a second, so the fps is approximate).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np

from ngp_cli.errors import OutputError
from ngp_cli.images import TempFileOutput, from_float, write_image
from ngp_cli.runs import create_temp_beside

__all__ = ["VIDEO_SUFFIXES", "FrameWriter", "count_video_frames", "frame_name"]

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".gif")
_FRAME_RE = re.compile(r"^frame_(\d{5,})\.png$")


def frame_name(index: int) -> str:
    """The file name of frame ``index`` (0 for the first) in a folder of PNG frames: ``frame_00000.png``."""
    return f"frame_{int(index):05d}.png"


def count_video_frames(path: str | os.PathLike) -> int:
    """Frames in a video file, by decoding it (ffmpeg through imageio-ffmpeg; Pillow for a GIF).

    A GIF is decoded to its last frame and must end with the GIF trailer; Pillow merges identical consecutive frames
    when it writes one, so its count can be below the frames given to the writer. Raises ``RuntimeError`` (or an
    ``OSError``) when the file is truncated or cannot be decoded.
    """
    path = Path(path)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\x3b":
                raise RuntimeError("the GIF has no trailer (truncated)")
        with Image.open(path) as im:
            n = int(getattr(im, "n_frames", 1))
            im.seek(n - 1)
            im.load()
        return n
    import imageio_ffmpeg

    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return int(frames)


def _reason(exc: BaseException) -> str:
    """One short line from an exception (ffmpeg errors span many lines)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


class FrameWriter(TempFileOutput):
    """Context manager writing RGB frames to a video file or a folder of PNGs, published only once complete.

    Args:
        out: destination. A path ending in ``.mp4``, ``.mov``, ``.mkv`` or ``.gif`` (any case) is a video file; any
            other path is a folder that receives :func:`frame_name` files. Missing parent folders are created.
        fps: frames per second of the video (ignored for PNG folders), > 0.

    ``paths`` lists the published files once :meth:`close` succeeded (the video, or every frame in order; empty
    before). ``count`` is the number of frames written so far.

    On an exception inside the ``with`` block (or :meth:`abort`) the temporary video or folder is removed and ``out``
    is left exactly as it was. See the module docstring for how a render is verified and published.

    Raises :class:`OutputError` (one line, starting with the path) when the destination cannot be created or written,
    when the encoder fails, when the encoded video is short or unreadable, or when closed with no frames (the old
    file is then kept). ``ValueError`` for a non-positive fps or a frame of the wrong shape / dtype / size.
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
    def _make_parent(self) -> None:
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.out}: cannot create directory {parent}: {e.strerror or e}") from None

    def _open_video(self) -> None:
        if self.out.is_dir():
            raise OutputError(f"{self.out}: is a directory, expected a video file path")
        self._make_parent()
        try:  # the real suffix last: imageio picks the format from it
            self._tmp = tmp = create_temp_beside(self.out, self.out.suffix.lower())
        except OSError as e:
            raise OutputError(f"{self.out}: cannot write to directory {self.out.parent}: {e.strerror or e}") from None
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
        self._make_parent()
        # Beside the destination, so that publishing is a rename on one file system.
        tmp = self.out.parent / f".{self.out.name}.{secrets.token_hex(4)}.tmp"
        try:
            tmp.mkdir()
        except OSError as e:
            raise OutputError(f"{self.out}: cannot write to directory {self.out.parent}: {e.strerror or e}") from None
        self._tmp = tmp

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

        All frames must have the same size. Raises OutputError when writing fails (the render is then aborted),
        ValueError for a bad frame.
        """
        if self._finished:
            raise ValueError(f"{self.out}: frame writer is already closed")
        a = self._as_uint8(frame)
        if not self.is_video:
            try:
                write_image(self._tmp / frame_name(self.count), a)
            except (OutputError, OSError) as e:
                self.abort()
                raise OutputError(f"{self.out}: cannot write frame {self.count}: {_reason(e)}") from None
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
        """Finish: encode, verify and move the video into place, or publish the PNG frames. Idempotent.
        Raises OutputError (after removing the temporary output) when that fails."""
        if self._finished:
            return
        if self.count == 0:
            self.abort()
            what = "the video was not created" if self.is_video else "the folder was left as it was"
            raise OutputError(f"{self.out}: no frames were written; {what}")
        if not self.is_video:
            self._publish_frames()
            return
        try:
            self._writer.close()
            self._writer = None
            self._verify_video()
            with open(self._tmp, "rb+") as fh:  # a full disk may only show here
                os.fsync(fh.fileno())
            os.replace(self._tmp, self.out)
        except OutputError:
            self.abort()
            raise
        except Exception as e:
            self.abort()
            raise OutputError(f"{self.out}: cannot write video: {_reason(e)}") from None
        self._tmp = None
        self._finished = True
        self.paths.append(self.out)

    def _verify_video(self) -> None:
        """Compare the encoded file's frames with the frames written (OutputError when short or unreadable)."""
        try:
            found = count_video_frames(self._tmp)
        except Exception as e:
            raise OutputError(f"{self.out}: the encoded video cannot be read back ({_reason(e)}); "
                              "the disk may be full; nothing was written") from None
        gif = self.out.suffix.lower() == ".gif"  # Pillow merges identical consecutive frames
        if found > self.count or found < (1 if gif else self.count):
            raise OutputError(f"{self.out}: the encoded video has {found} of {self.count} frames; the disk may be "
                              "full; nothing was written")

    def _publish_frames(self) -> None:
        tmp = self._tmp
        names = [frame_name(k) for k in range(self.count)]
        try:
            if not self.out.exists():
                os.rename(tmp, self.out)  # the whole folder at once
            else:
                for name in names:
                    os.replace(tmp / name, self.out / name)
                tmp.rmdir()
                self._prune_stale_frames()
        except OSError as e:
            self.abort()
            raise OutputError(f"{self.out}: cannot move the frames into place: {e.strerror or e}") from None
        self._tmp = None
        self._finished = True
        self.paths = [self.out / name for name in names]

    def _prune_stale_frames(self) -> None:
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.out):
                m = _FRAME_RE.match(entry.name)
                if m and int(m.group(1)) >= self.count and entry.is_file():
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _remove_temp(self) -> None:
        if self._tmp is not None and not self.is_video:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        super()._remove_temp()

    def abort(self) -> None:
        """Discard an unfinished render (the temporary video or frame folder; ``out`` is untouched). Idempotent."""
        self._finished = True
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        self._remove_temp()


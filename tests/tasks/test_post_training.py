"""The shared pieces of the work after training (issue 13): progress with ETA on stderr, and renders published only
once complete and verified (videos probed for their frame count, PNG frames through a temporary folder)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from ngp_cli import console
from ngp_cli.errors import OutputError
from ngp_cli.video import FrameWriter, count_video_frames, frame_name

# -- progress -------------------------------------------------------------------------------------------------------


@pytest.fixture
def stderr(monkeypatch, capsys):
    """Captured stderr (not a terminal: plain lines), --quiet off."""
    monkeypatch.setattr(console, "_quiet", False)
    return lambda: capsys.readouterr().err


def test_progress_prints_plain_lines_with_an_eta_per_tenth(stderr):
    with console.progress(40, "rendering") as advance:
        for _ in range(40):
            advance()
    lines = stderr().splitlines()
    # the first item, then one line per tenth (4 items each), the last one at 100 %
    assert len(lines) == 11, lines
    assert lines[0].startswith("rendering 1/40 (2%)") and "ETA" in lines[0]
    assert lines[-1].startswith("rendering 40/40 (100%)") and re.search(r"ETA 0\.0 s$", lines[-1])
    done = [int(re.match(r"rendering (\d+)/40", ln).group(1)) for ln in lines]
    assert done == sorted(done) and done[1:] == [4 * k for k in range(1, 11)]


def test_progress_learns_its_total_late_and_is_silent_when_quiet(stderr, monkeypatch):
    with console.progress(None, "marching cubes") as advance:
        for _ in range(3):
            advance(total=3)
    assert stderr().splitlines()[-1].startswith("marching cubes 3/3 (100%)")
    monkeypatch.setattr(console, "_quiet", True)
    with console.progress(5, "evaluating val") as advance:
        for _ in range(5):
            advance()
    assert stderr() == ""


def test_progress_bar_on_a_terminal_keeps_stdout_clean(monkeypatch, capsys):
    from rich.console import Console

    monkeypatch.setattr(console, "_quiet", False)
    buf = io.StringIO()
    monkeypatch.setattr(console, "stderr_console",
                        lambda: Console(file=buf, force_terminal=True, width=100, highlight=False))
    with console.progress(3, "rendering") as advance:
        for k in range(3):
            console.emit("frame", k=k)
            advance()
    out = capsys.readouterr().out
    assert out.splitlines() == ['{"event":"frame","k":0}', '{"event":"frame","k":1}', '{"event":"frame","k":2}']
    assert "rendering" in buf.getvalue() and "3/3" in buf.getvalue()


# -- renders: verified, atomic ----------------------------------------------------------------------------------------


def _frames(n, h=16, w=16):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, k, axis=1) for k in range(n)]


def test_one_frame_name_scheme():
    assert frame_name(0) == "frame_00000.png" and frame_name(123) == "frame_00123.png"


def test_video_failing_mid_way_keeps_the_earlier_file(tmp_path, monkeypatch):
    """A write error in the encoder (a full disk) is an OutputError; no file at the final name changes."""
    out = tmp_path / "orbit.mp4"
    out.write_bytes(b"earlier video")
    fw = FrameWriter(out)
    real = fw._writer.append_data
    calls = []

    def failing(frame):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(frame)

    monkeypatch.setattr(fw._writer, "append_data", failing)
    with pytest.raises(OutputError, match=r"orbit\.mp4: cannot encode frame 2: .*No space left"):
        with fw:
            for f in _frames(5):
                fw.write(f)
    assert out.read_bytes() == b"earlier video"
    assert [p.name for p in tmp_path.iterdir()] == ["orbit.mp4"]


def test_truncated_video_is_refused_not_published(tmp_path, monkeypatch):
    """Regression: under a full disk the encoder 'succeeded' with a short file, which was published with exit 0.
    The encoded file is now probed: fewer frames than written is an OutputError and the file is not published."""
    out = tmp_path / "orbit.mp4"
    out.write_bytes(b"earlier video")
    fw = FrameWriter(out)
    tmp = fw._tmp
    real_close = fw._writer.close

    def close_then_lose_the_tail():  # what a full disk does to the last bytes of the file
        real_close()
        data = tmp.read_bytes()
        tmp.write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(fw._writer, "close", close_then_lose_the_tail)
    for f in _frames(6):
        fw.write(f)
    with pytest.raises(OutputError, match=r"orbit\.mp4: the encoded video"):
        fw.close()
    assert out.read_bytes() == b"earlier video" and [p.name for p in tmp_path.iterdir()] == ["orbit.mp4"]



def write_frames(out, frames) -> int:
    """Every frame of ``frames`` through a FrameWriter, as the render commands write them; returns the count."""
    with FrameWriter(out) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.count

def test_short_video_is_refused(tmp_path, monkeypatch):
    import ngp_cli.video as video

    monkeypatch.setattr(video, "count_video_frames", lambda path: 4)
    with pytest.raises(OutputError, match=r"has 4 of 5 frames"):
        write_frames(tmp_path / "v.mp4", _frames(5))
    assert list(tmp_path.iterdir()) == []


def test_video_frame_count_is_verified_and_gif_duplicates_pass(tmp_path):
    out = tmp_path / "v.mp4"
    assert write_frames(out, _frames(7)) == 7 and count_video_frames(out) == 7
    # Pillow merges identical consecutive GIF frames: still a complete, published GIF
    same = [np.zeros((8, 8, 3), np.uint8)] * 4
    assert write_frames(tmp_path / "same.gif", same) == 4 and (tmp_path / "same.gif").is_file()


def test_png_frames_failing_mid_way_leave_the_folder_untouched(tmp_path, monkeypatch):
    import ngp_cli.video as video

    out = tmp_path / "frames"
    out.mkdir()
    (out / "frame_00000.png").write_bytes(b"earlier frame 0")
    (out / "frame_00004.png").write_bytes(b"earlier frame 4")
    (out / "notes.txt").write_text("mine")
    real = video.write_image
    calls = []

    def failing(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OutputError(f"{path}: cannot write: No space left on device")
        real(path, array)

    monkeypatch.setattr(video, "write_image", failing)
    with pytest.raises(OutputError, match=r"frames: cannot write frame 2"):
        write_frames(out, _frames(5))
    assert sorted(p.name for p in out.iterdir()) == ["frame_00000.png", "frame_00004.png", "notes.txt"]
    assert (out / "frame_00000.png").read_bytes() == b"earlier frame 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]  # no temporary folder left
    # A new folder that failed is not created at all.
    with pytest.raises(OutputError):
        calls.clear()
        write_frames(tmp_path / "new", _frames(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_png_frames_replace_an_earlier_render_and_keep_other_files(tmp_path):
    out = tmp_path / "frames"
    out.mkdir()
    (out / "frame_00009.png").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    with FrameWriter(out) as fw:
        for f in _frames(2):
            fw.write(f)
    assert fw.paths == [out / "frame_00000.png", out / "frame_00001.png"]
    assert sorted(p.name for p in out.iterdir()) == ["frame_00000.png", "frame_00001.png", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]

"""The bad-input audit as a test suite (issue 13, part 7): shared assertions and small trained runs.

Every case asserts the same contract (docs/cli.md, "Exit codes"):

- the documented exit code;
- exactly one line on stderr, under 300 characters, with no traceback;
- stdout holds JSON lines only, the last one ``{"event": "error", "exit_code": <code>, ...}``;
- run directories the command was pointed at are unchanged, byte for byte (:func:`unchanged`).

Cases run in-process through typer's CliRunner (the ``ngp`` fixture of tests/conftest.py) unless they need a real
process (signals, file descriptors, a fresh interpreter): :func:`ngp_subprocess`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MAX_ERROR_LINE = 300


def assert_refused(res, code: int, needle: str | None = None) -> str:
    """Check the failure contract on an :class:`tests.conftest.Invocation` (or a :class:`Proc`); return the line."""
    assert res.exit_code == code, (res.exit_code, res.stderr, getattr(res, "exception", None))
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{res.stderr}"
    line = lines[0]
    assert len(line) < MAX_ERROR_LINE, f"{len(line)} characters: {line}"
    if needle is not None:
        assert needle.lower() in line.lower(), line
    assert res.events, "no JSON line on stdout"
    last = res.events[-1]
    assert last["event"] == "error" and last["exit_code"] == code, last
    return line


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256 or 'dir' or 'link -> target'}`` of everything under ``root`` (hidden files included),
    with each entry's permission bits: equal digests mean the tree is unchanged byte for byte."""
    root = Path(root)
    out: dict[str, str] = {}
    if not root.exists() and not root.is_symlink():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            mode = oct(stat.S_IMODE(st.st_mode))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link -> {os.readlink(p)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = f"dir {mode}"
            else:
                out[rel] = f"{hashlib.sha256(p.read_bytes()).hexdigest()} {mode}"
    return out


@contextmanager
def unchanged(*roots: Path) -> Iterator[None]:
    """Assert that nothing under ``roots`` changes inside the block."""
    before = [tree_digest(r) for r in roots]
    yield
    for root, b in zip(roots, before, strict=True):
        after = tree_digest(root)
        assert after == b, f"{root} changed: " + json.dumps(
            {k: (b.get(k), after.get(k)) for k in set(b) | set(after) if b.get(k) != after.get(k)})[:2000]


class Proc:
    """Result of ``ngp`` run as a real process: the same fields as :class:`tests.conftest.Invocation`."""

    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.exit_code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.events = [json.loads(line) for line in proc.stdout.splitlines()]


def ngp_subprocess(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                   timeout: float = 300) -> Proc:
    """Run ``python -m ngp_cli ARGS`` in a fresh interpreter."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "ngp_cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)
    return Proc(proc)


def _train(app, argv: list[str]) -> Path:
    from typer.testing import CliRunner

    from tests.conftest import Invocation

    res = Invocation(CliRunner().invoke(app, argv))
    assert res.exit_code == 0, res.stderr
    return Path(res.last("done")["run_dir"])


@pytest.fixture(scope="session")
def photo(tmp_path_factory) -> Path:
    """A 48×64 crop of scikit-image's astronaut, as PNG."""
    import imageio.v3 as iio
    import numpy as np
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astro.png"
    iio.imwrite(path, np.ascontiguousarray(data.astronaut()[40:88, 200:264]))
    return path


_IMAGE_FAST = ["--backend", "torch", "--set", "train.batch_size=1024", "--set", "encoding.log2_hashmap_size=12",
               "--set", "encoding.n_levels=4", "--set", "train.log_every=5"]


@pytest.fixture(scope="session")
def image_run_master(app, photo, tmp_path_factory) -> Path:
    """A finished 10-step fit-image run (torch backend, a tiny model). Never modified: copy it (:func:`image_run`)."""
    runs = tmp_path_factory.mktemp("master-runs")
    return _train(app, ["fit-image", str(photo), "--steps", "10", "--runs-dir", str(runs), *_IMAGE_FAST])


@pytest.fixture
def image_run(image_run_master, tmp_path) -> Path:
    """A private copy of the finished fit-image run, for cases that corrupt it."""
    dest = tmp_path / "runs" / "image" / image_run_master.name
    shutil.copytree(image_run_master, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def image_fast_args() -> list[str]:
    """Options that make a fit-image run take a second or two."""
    return list(_IMAGE_FAST)

"""The kernel caches' bookkeeping (docs/kernels.md): the private CPU kernel cache directory
(:func:`kernel_cache_dir`), the SHA-256 manifest entries a cached library must match to be loaded, the saved compile
logs, the files a source includes (part of every cache key), and the compile counters and clock
(:func:`compile_seconds`)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ngp_cli.console import warn
from ngp_cli.errors import OutputError

from .signature import CUDA_DIR, KernelCompileError

stats = {"cpu_compiles": 0, "cuda_loads": 0}
"""Counters for tests: host-compiler runs (cache misses) and CUDA module builds in this process."""

_compile_time = [0.0]  # seconds; a list so the timers can add to it under _compile_time_lock
_compile_time_lock = threading.Lock()


def compile_seconds() -> float:
    """Cumulative wall-clock seconds this process has spent compiling kernels: host-compiler runs of the CPU target
    (cache misses in the kernel cache) and NVRTC/CuPy module builds of the cuda target (CuPy's disk-cache hits
    included, as they are short). Concurrent compilations each add their own duration. Never decreases."""
    with _compile_time_lock:
        return _compile_time[0]


class _CompileTimer:
    """Adds the wall-clock time of its ``with`` block to :func:`compile_seconds` (also when the block raises)."""

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        elapsed = time.perf_counter() - self._start
        with _compile_time_lock:
            _compile_time[0] += elapsed


def _saved_log(message: str, log: str) -> KernelCompileError:
    """A KernelCompileError whose one-line message names a file holding the full compiler log (best effort: the
    message stands alone when the cache directory cannot be written)."""
    try:
        path = kernel_cache_dir() / "last-compile-error.log"
        # A new file renamed over the name: a symlink planted there is replaced, never written through.
        _write_replacing(path, log.encode("utf-8", errors="replace"))
        message = f"{message} (full log: {path})"
    except (OSError, OutputError):
        pass
    return KernelCompileError(message, log)


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if "error" in line.lower():
            return line.strip()
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[0] if lines else "no compiler output"


# ------------------------------------------------------------------------------------------------------------------
# The CPU kernel cache directory
# ------------------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The configured CPU kernel cache: ``$NGP_CACHE_DIR`` or ``~/.cache/ngp/kernels``. Not created or checked here;
    :func:`kernel_cache_dir` is the directory actually used."""
    return Path(os.environ.get("NGP_CACHE_DIR") or Path.home() / ".cache" / "ngp" / "kernels")


_checked_dirs: dict[str, Path] = {}
_dirs_lock = threading.RLock()


def _make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700 (existing ones are left as they are). Raises OSError."""
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # a concurrent process made it; _private_dir_problem checks what it is
        os.chmod(d, 0o700)  # mkdir's mode is masked by the umask


def _private_dir_problem(path: Path) -> str | None:
    """Create ``path`` (0700) when missing and say why it must not hold loadable libraries, or None when it may: it
    must be a directory (a symlink is followed) owned by the effective user and writable by nobody else."""
    try:
        _make_private_dirs(path)
        st = os.stat(path)
    except OSError as exc:
        return f"cannot be created or read ({exc.strerror or exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    if uid is not None and st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if st.st_mode & 0o022:
        who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if st.st_mode & bit)
        return f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def kernel_cache_dir() -> Path:
    """The directory CPU kernel libraries are built into and loaded from: :func:`cache_dir`, created with mode 0700
    (with the parents ngp creates), when it is a directory owned by the current user and not group/world-writable.
    Otherwise one warning line goes to stderr and a private directory is used instead:
    ``<tempdir>/ngp-kernels-<uid>`` when it passes the same checks, else a fresh ``tempfile.mkdtemp``. Decided once
    per process and configured path."""
    configured = cache_dir()
    key = str(configured)
    with _dirs_lock:
        found = _checked_dirs.get(key)
        if found is None:
            found = _checked_dirs[key] = _choose_cache_dir(configured)
    return found


def _choose_cache_dir(configured: Path) -> Path:
    problem = _private_dir_problem(configured)
    if problem is None:
        return configured
    uid = os.geteuid() if hasattr(os, "geteuid") else os.getpid()
    fallback = Path(tempfile.gettempdir()) / f"ngp-kernels-{uid}"
    if _private_dir_problem(fallback) is not None:
        fallback = Path(tempfile.mkdtemp(prefix="ngp-kernels-"))  # 0700, ours, new: safe by construction
    warn(f"kernel cache {configured} {problem}; not used, kernels go to {fallback}")
    return fallback


# ------------------------------------------------------------------------------------------------------------------
# Manifests and cache keys
# ------------------------------------------------------------------------------------------------------------------


def _write_replacing(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file beside ``path`` (``O_EXCL``: never an existing file or a symlink) and rename it
    onto ``path``, replacing whatever is there (a symlink included) without following it. Raises OutputError."""
    from ngp_cli.runs import atomic_write

    def write(tmp: str) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)


_MANIFEST_SUFFIX = ".sha256"
_SHA256_RE = re.compile(r"^([0-9a-f]{64})  ")


def _sha256_of(path: Path | str) -> str | None:
    """Hex SHA-256 of the regular file at ``path`` (a symlink is not followed: None), or None when unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()


def _manifest_entry(library: Path) -> str | None:
    """The SHA-256 recorded for ``library`` in its manifest entry ``<library>.sha256`` (``sha256sum`` format), or
    None when there is no readable, well-formed entry."""
    try:
        fd = os.open(str(library) + _MANIFEST_SUFFIX, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            text = fh.read(4096).decode("ascii", errors="replace")
    except OSError:
        return None
    m = _SHA256_RE.match(text)
    return m.group(1) if m else None


def _library_problem(library: Path) -> str | None:
    """Why the cached ``library`` must not be loaded ("absent" when there is nothing at that name), or None when its
    SHA-256 matches its manifest entry."""
    if not os.path.lexists(library):
        return "absent"
    expected = _manifest_entry(library)
    if expected is None:
        return "it has no manifest entry"
    actual = _sha256_of(library)
    if actual is None:
        return "it is not a readable regular file"
    if actual != expected:
        return "its SHA-256 does not match its manifest entry"
    return None


_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*["<]([^">]+)[">]', re.M)


def _headers(source: Path, extra: Sequence[Path] = ()) -> list[Path]:
    """The files ``source`` includes, transitively, that resolve in its own directory or in ``ngp_cli/cuda`` (system
    and CUDA headers are covered by the compiler version), plus ``extra`` (e.g. the force-included cpu_emu.h)."""
    search = (source.parent, CUDA_DIR)
    found: dict[Path, None] = {}
    todo = [source, *extra]
    while todo:
        current = todo.pop()
        try:
            text = current.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for name in _INCLUDE_RE.findall(text):
            for base in (current.parent, *search):
                candidate = (base / name).resolve()
                if candidate.is_file():
                    if candidate not in found and candidate != source:
                        found[candidate] = None
                        todo.append(candidate)
                    break
    for e in extra:
        found.setdefault(e.resolve(), None)
    return sorted(found)

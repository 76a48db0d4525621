"""Self-describing run directories: ``runs/<task>/<timestamp>-<name>/``.

Layout::

    config.yaml          the fully resolved config (re-validated on --resume)
    input.json           the input's identity at creation: path, size and SHA-256 of the first MiB of each file
    metrics.jsonl        one JSON object per log step: step, loss, psnr, samples_per_s, elapsed_s, ...
    checkpoints/         step-00000300.safetensors (weights, optimizer state, RNG state) + step-00000300.json (metadata)
    renders/             task outputs (reconstructions, error maps, ...)
    summary.json         written last, atomically: its presence means the run completed

A new run never reuses a directory (``os.mkdir`` is the uniqueness test). Every file that could be read half-written is
written to a temporary sibling and moved into place with ``os.replace``. Checkpoints load through safetensors (no pickle).
Everything read back from a run directory is untrusted input: it is validated (:func:`check_step` and the readers
below), a bad value is a DataError, and no path is ever built from a value read back (the one such name,
``summary-step<N>.json``, takes a validated integer). Imports torch/safetensors lazily so the CLI stays light.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ngp_cli.config import clipped_repr
from ngp_cli.errors import ConfigError, DataError, OutputError

_CKPT_RE = re.compile(r"^step-(\d{8,})\.json$")
# Crash leftovers: create_temp_beside's ``.<name>.<8 hex>.tmp<suffix>``, and safetensors' own ``.tmp<6 chars>``
# (it writes beside the path it is given and renames).
_TEMP_RE = re.compile(r"^(\..+\.[0-9a-f]{8}\.tmp.*|\.tmp[A-Za-z0-9]{6})$")
# Files older than this process are leftovers of an earlier one; younger ones may be another writer's, in progress.
_PROCESS_START = time.time()
_PIN_BYTES = 1 << 20
INPUT_FILE = "input.json"


def cache_dir(name: str) -> Path:
    """Folder ``name`` of ngp's cache (generated demo scenes and meshes, rendered references):
    ``$NGP_CACHE_DIR/<name>``, else ``~/.cache/ngp/<name>``. Not created here."""
    root = os.environ.get("NGP_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "ngp") / name


def create_temp_beside(path: Path, suffix: str = "") -> Path:
    """Create an empty temporary file ``.<name>.<random>.tmp<suffix>`` in ``path``'s folder, for writing and then
    ``os.replace``-ing onto ``path`` (same folder: the rename is atomic). Mode 0o666 (not mkstemp's 0o600), so the
    final file gets the usual umask-derived permissions; ``suffix`` keeps the real extension last for writers that
    look at it. Raises OSError."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def atomic_write(path: Path, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` (:func:`create_temp_beside`, ending in
    ``suffix``), fsync it and move it into place with ``os.replace``: readers see the old file or the new one, never a
    partial one. The file keeps the temporary's umask-derived mode even when ``write`` replaces it with a file of its
    own (safetensors writes 0o600). Raises OutputError."""
    tmp = None
    try:
        tmp = str(create_temp_beside(path, suffix))
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file + ``os.replace``). Raises OutputError."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned[:64] or "run"


def check_step(value: Any, where: str) -> int:
    """``value`` as a training step: an int >= 0 (a bool is not one). Raises DataError naming ``where``."""
    if type(value) is not int or value < 0:
        raise DataError(f"{where}: step must be an integer >= 0, got {clipped_repr(value, 60)}")
    return value


def _check_number(meta: dict[str, Any], key: str, where: str) -> None:
    value = meta.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DataError(f"{where}: {key} must be a number >= 0, got {clipped_repr(value, 60)}")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: malformed {what}: {' '.join(str(exc).split())[:120]}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: malformed {what}: expected a JSON object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------------------------------
# Input identity


def pinned_files(path: Path) -> list[Path]:
    """The files that stand for input ``path`` in its identity: the file itself, or for a folder (a NeRF dataset)
    its ``transforms*.json`` files, sorted. Missing paths give no files."""
    if path.is_dir():
        return sorted(p for p in path.glob("transforms*.json") if p.is_file())
    return [path] if path.is_file() else []


def input_identity(path: Path) -> dict[str, Any]:
    """``{"path": str, "files": {name: {"size": bytes, "sha256_first_mib": hex}}}`` of input ``path`` (names relative
    to a folder; ``""`` for the file itself). Hashing the first MiB catches a replaced file at any size in
    milliseconds; the size catches appended data. Raises DataError when a file cannot be read."""
    path = Path(path)
    files: dict[str, dict[str, Any]] = {}
    for f in pinned_files(path):
        try:
            with open(f, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                digest = hashlib.sha256(fh.read(_PIN_BYTES)).hexdigest()
        except OSError as exc:
            raise DataError(f"{f}: cannot read: {exc.strerror or exc}") from None
        files["" if f == path else f.name] = {"size": size, "sha256_first_mib": digest}
    return {"path": str(path), "files": files}


def _check_identity(entry: Any, where: str) -> dict[str, Any]:
    ok = isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("files"), dict)
    if ok:
        for name, f in entry["files"].items():
            ok = ok and isinstance(name, str) and isinstance(f, dict) and type(f.get("size")) is int \
                and f["size"] >= 0 and isinstance(f.get("sha256_first_mib"), str) \
                and re.fullmatch(r"[0-9a-f]{64}", f["sha256_first_mib"]) is not None
    if not ok:
        raise DataError(f"{where}: malformed input identity (expected path, files with size and sha256_first_mib)")
    return entry


def identity_change(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """How ``current`` (:func:`input_identity`) differs from ``recorded``, in words, or None when it does not."""
    if recorded["path"] != current["path"]:
        return f"path {recorded['path']} is now {current['path']}"
    old, new = recorded["files"], current["files"]
    for name in sorted(set(old) | set(new)):
        label = name or Path(current["path"]).name
        if name not in new:
            return f"{label} is gone"
        if name not in old:
            return f"{label} is new"
        if old[name]["size"] != new[name]["size"]:
            return f"{label} size {old[name]['size']} -> {new[name]['size']} bytes"
        if old[name]["sha256_first_mib"] != new[name]["sha256_first_mib"]:
            return f"{label} content differs (SHA-256 of the first MiB)"
    return None


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back and validated: its step, tensors, metadata, and the newer ones skipped as corrupt."""

    step: int
    json_path: Path
    tensors: dict[str, Any]
    meta: dict[str, Any]
    skipped: list[Path] = field(default_factory=list)


class RunDir:
    """One run directory. Create with :meth:`create` (new run) or :meth:`open` (``--resume``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- paths ---------------------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def input_path(self) -> Path:
        return self.path / INPUT_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def renders_dir(self) -> Path:
        return self.path / "renders"

    def mesh_path(self, resolution: int) -> Path:
        """Where ``ngp extract-mesh`` puts a mesh extracted at ``resolution`` by default: ``meshes/mesh_<res>.ply``
        (the folder is created). Raises OutputError."""
        folder = self.path / "meshes"
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create: {exc.strerror or exc}") from None
        return folder / f"mesh_{resolution}.ply"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    # -- creation ------------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, runs_root: str | os.PathLike, task: str, name: str) -> RunDir:
        """Make a fresh ``<runs_root>/<task>/<YYYYmmdd-HHMMSS>-<name>[-k]`` directory. Raises OutputError."""
        parent = Path(runs_root).expanduser() / task
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{parent}: cannot create runs directory: {exc.strerror or exc}") from None
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{_safe_name(name)}"
        for k in range(1, 1000):
            path = parent / (stem if k == 1 else f"{stem}-{k}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError(f"{path}: cannot create run directory: {exc.strerror or exc}") from None
            run = cls(path)
            for sub in (run.checkpoints_dir, run.renders_dir):
                sub.mkdir()
            return run
        raise OutputError(f"{parent}: too many runs named {stem}")

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """Open an existing run directory (``--resume``, ``eval``, ...). Raises DataError when it is not a run
        directory, or its ``checkpoints``/``renders`` is not a folder; OutputError when they cannot be created."""
        run = cls(Path(path).expanduser())
        if not run.path.is_dir():
            if os.path.lexists(run.path):
                raise DataError(f"{run.path}: a file, not a run directory")
            raise DataError(f"{run.path}: run directory does not exist")
        if not run.config_path.is_file():
            raise DataError(f"{run.path}: not a run directory (no config.yaml)")
        for sub in (run.checkpoints_dir, run.renders_dir):
            if sub.is_dir():
                continue
            if os.path.lexists(sub):
                raise DataError(f"{sub}: not a folder (a run keeps its {sub.name} there)")
            try:
                sub.mkdir()
            except OSError as exc:
                raise OutputError(f"{sub}: cannot create: {exc.strerror or exc}") from None
        return run

    # -- config / inputs / metrics / summary ---------------------------------------------------------------------------
    def write_config(self, data: dict[str, Any]) -> None:
        from ngp_cli.config import dump_yaml

        atomic_write_text(self.config_path, dump_yaml(data))

    def read_config(self) -> dict[str, Any]:
        """The raw mapping in config.yaml. Raises ConfigError when it is malformed (:func:`ngp_cli.config.load_yaml`:
        YAML errors and bounds) or unreadable."""
        from ngp_cli.config import load_yaml

        try:
            data = load_yaml(self.config_path.read_text(encoding="utf-8"), self.config_path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.config_path}: cannot read run config: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config_path}: run config must be a mapping")
        return data

    def write_inputs(self, data: dict[str, Any]) -> None:
        """Write input.json (atomically): ``{"inputs": {config key: identity}, "changes": [...]}``."""
        atomic_write_text(self.input_path, json.dumps(data, indent=2) + "\n")

    def read_inputs(self) -> dict[str, Any] | None:
        """input.json validated (each identity as :func:`input_identity` makes it), or None for a run made before
        inputs were pinned. Raises DataError when it is malformed."""
        if not os.path.lexists(self.input_path):
            return None
        data = _read_json_object(self.input_path, "input identity file")
        inputs, changes = data.get("inputs"), data.get("changes", [])
        if not isinstance(inputs, dict) or not isinstance(changes, list):
            raise DataError(f"{self.input_path}: malformed input identity file (expected 'inputs' and 'changes')")
        for key, entry in inputs.items():
            _check_identity(entry, f"{self.input_path}: {key}")
        return {"inputs": inputs, "changes": changes}

    def append_metrics(self, record: dict[str, Any]) -> None:
        from ngp_cli.console import to_json

        try:
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(to_json(record) + "\n")
        except OSError as exc:
            raise OutputError(f"{self.metrics_path}: cannot write: {exc.strerror or exc}") from None

    def _metric_lines(self) -> list[tuple[str, dict[str, Any]]]:
        """``(line, record)`` of metrics.jsonl, validated; a last line cut by a crash (no newline, not JSON) is
        dropped. Raises DataError for any other line that is not a JSON object with a valid ``step``."""
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.metrics_path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        lines = text.split("\n")
        out = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if n == len(lines):  # the unterminated last line: an append cut by a crash
                    continue
                raise DataError(f"{self.metrics_path}: line {n} is not JSON; fix or delete that line") from None
            if not isinstance(record, dict):
                raise DataError(f"{self.metrics_path}: line {n} is not a JSON object; fix or delete that line")
            check_step(record.get("step"), f"{self.metrics_path}: line {n}")
            out.append((line, record))
        return out

    def check_metrics(self) -> None:
        """Validate metrics.jsonl (see :meth:`read_metrics`). Raises DataError."""
        self._metric_lines()

    def truncate_metrics(self, last_step: int) -> None:
        """Drop metric lines after ``last_step`` (written after the checkpoint we resume from), and a last line cut by
        a crash. Raises DataError (a malformed line), OutputError."""
        if not self.metrics_path.exists():
            return
        kept = [line for line, record in self._metric_lines() if record["step"] <= last_step]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl, each a JSON object with an int ``step`` >= 0. Raises DataError."""
        return [record for _, record in self._metric_lines()]

    def write_summary(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(data, indent=2, allow_nan=False) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        """summary.json validated (a JSON object with an int ``step`` >= 0), or None when the run has none.
        Raises DataError when it is malformed."""
        if not os.path.lexists(self.summary_path):
            return None
        if not self.summary_path.is_file():
            raise DataError(f"{self.summary_path}: not a file")
        data = _read_json_object(self.summary_path, "summary")
        check_step(data.get("step"), str(self.summary_path))
        return data

    def archive_summary(self) -> Path | None:
        """Keep an earlier summary (a finished run being extended) as ``summary-step<N>.json`` instead of deleting it,
        never replacing an existing file: ``-2``, ``-3``... are appended when that name is taken, and a summary whose
        step is not a valid integer is kept as ``summary-previous.json``. Returns the new path (None: no summary).
        Raises OutputError."""
        if not os.path.lexists(self.summary_path):
            return None
        try:
            stem = f"summary-step{self.read_summary()['step']}"
        except DataError:
            stem = "summary-previous"  # never a name built from an unvalidated value
        for k in range(1, 10000):
            dest = self.path / (f"{stem}.json" if k == 1 else f"{stem}-{k}.json")
            if os.path.lexists(dest):
                continue
            try:
                os.replace(self.summary_path, dest)
            except OSError as exc:
                raise OutputError(f"{self.summary_path}: cannot rename: {exc.strerror or exc}") from None
            return dest
        raise OutputError(f"{self.path}: too many archived summaries named {stem}")

    def remove_stale_temporaries(self) -> int:
        """Delete the temporary files a crash left (:func:`create_temp_beside`'s and safetensors' names) in the run
        root, ``checkpoints/``, ``renders/`` and ``meshes/`` that are older than this process. Returns how many."""
        removed = 0
        for folder in (self.path, self.checkpoints_dir, self.renders_dir, self.path / "meshes"):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                try:
                    if (_TEMP_RE.match(entry.name) and entry.is_file(follow_symlinks=False)
                            and entry.stat(follow_symlinks=False).st_mtime < _PROCESS_START):
                        os.unlink(entry.path)
                        removed += 1
                except OSError:
                    continue
        return removed

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as ``(step, json_path)``, oldest first (a checkpoint is complete once its JSON exists).
        Listed by file name; :meth:`load_checkpoint` validates the contents."""
        out = []
        for p in self.checkpoints_dir.glob("step-*.json"):
            m = _CKPT_RE.match(p.name)
            if m and p.with_suffix(".safetensors").is_file():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest_weights(self) -> str | None:
        """The newest complete checkpoint's weights file (``checkpoints/step-<N>.safetensors``) as a string, or None
        when the run has none: what a summary's ``artifacts.checkpoint`` names."""
        found = self.checkpoints()
        return str(found[-1][1].with_suffix(".safetensors")) if found else None

    def save_checkpoint(self, step: int, tensors: dict[str, Any], meta: dict[str, Any], keep: int) -> Path:
        """Write ``step-<step>.safetensors`` (tensors) then ``step-<step>.json`` (meta), both atomically, and delete
        all but the ``keep`` newest checkpoints. ``tensors`` maps names to contiguous CPU torch tensors.
        Raises OutputError (e.g. disk full), leaving no partial file."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        def write(tmp: str) -> None:
            try:
                save_file(tensors, tmp, metadata={"format": "ngp-checkpoint-v1"})
            except SafetensorError as exc:  # not an OSError: its message carries the OS error, e.g. ENOSPC
                m = re.search(r"os error (\d+)", str(exc))
                if m:
                    raise OSError(int(m.group(1)), os.strerror(int(m.group(1)))) from None
                raise OSError(f"safetensors: {' '.join(str(exc).split())[:160]}") from None

        stem = self.checkpoints_dir / f"step-{step:08d}"
        weights = stem.with_suffix(".safetensors")
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(weights, write)
        try:
            atomic_write_text(stem.with_suffix(".json"), json.dumps({"step": step, **meta}, indent=2) + "\n")
        except OutputError:
            weights.unlink(missing_ok=True)  # weights without metadata are no checkpoint: leave no partial one
            raise
        for _, old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
        return weights

    def load_checkpoint(self, json_path: Path) -> LoadedCheckpoint:
        """Read and validate one checkpoint (``step-<N>.json`` + its ``.safetensors``): the metadata must be a JSON
        object whose ``step`` is the file name's N, with numbers where numbers belong. Raises DataError."""
        from safetensors.torch import load_file

        m = _CKPT_RE.match(json_path.name)
        if m is None:
            raise DataError(f"{json_path}: not a checkpoint file name")
        meta = _read_json_object(json_path, "checkpoint metadata")
        step = check_step(meta.get("step"), str(json_path))
        if step != int(m.group(1)):
            raise DataError(f"{json_path}: step {step} does not match the file name")
        for key in ("elapsed_s", "compile_s"):
            _check_number(meta, key, str(json_path))
        ema_steps = meta.get("ema_steps", 0)
        if type(ema_steps) is not int or ema_steps < 0:
            raise DataError(f"{json_path}: ema_steps must be an integer >= 0, got {clipped_repr(ema_steps, 60)}")
        last = meta.get("last")
        if last is not None and (not isinstance(last, dict) or any(
                isinstance(v, bool) or not isinstance(v, (int, float, type(None))) for v in last.values())
                or not isinstance(last.get("psnr", 0.0), (int, float))):
            raise DataError(f"{json_path}: 'last' must be an object of numbers")
        weights = json_path.with_suffix(".safetensors")
        try:
            tensors = load_file(str(weights))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise DataError(f"{weights}: corrupt checkpoint: {' '.join(str(exc).split())[:160]}") from None
        return LoadedCheckpoint(step, json_path, tensors, meta)

    def latest_checkpoint(self) -> LoadedCheckpoint | None:
        """The newest checkpoint that loads, or None when there is none. A newer corrupt one is skipped with a warning
        line on stderr and listed in ``skipped`` (see :meth:`set_aside`). Raises DataError when every checkpoint is
        corrupt (with the newest one's problem)."""
        from ngp_cli.console import warn

        found = self.checkpoints()
        first_error: DataError | None = None
        skipped: list[Path] = []
        for _, json_path in reversed(found):
            try:
                loaded = self.load_checkpoint(json_path)
            except DataError as exc:
                first_error = first_error or exc
                skipped.append(json_path)
                continue
            if skipped:
                warn(f"{first_error}; using the newest intact checkpoint, step {loaded.step}"[:276])
            loaded.skipped = skipped
            return loaded
        if first_error is not None:
            raise first_error
        return None

    def set_aside(self, corrupt: list[Path]) -> None:
        """Rename corrupt checkpoints (their ``.json`` paths) to ``*.corrupt``: kept for inspection, but no longer
        listed, loaded or counted by pruning once training resumed from an older one. Raises OutputError."""
        for json_path in corrupt:
            for f in (json_path, json_path.with_suffix(".safetensors")):
                try:
                    if os.path.lexists(f):
                        os.replace(f, f.with_name(f.name + ".corrupt"))
                except OSError as exc:
                    raise OutputError(f"{f}: cannot rename: {exc.strerror or exc}") from None

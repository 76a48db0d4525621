"""Self-describing run directories: ``runs/<task>/<timestamp>-<name>/``.

Layout::

    config.yaml          the fully resolved config (re-validated on --resume)
    metrics.jsonl        one JSON object per log step: step, loss, psnr, samples_per_s, elapsed_s, ...
    checkpoints/         step-00000300.safetensors (weights, optimizer state, RNG state) + step-00000300.json (metadata)
    renders/             task outputs (reconstructions, error maps, ...)
    summary.json         written last, atomically: its presence means the run completed

A new run never reuses a directory (``os.mkdir`` is the uniqueness test). Every file that could be read half-written is
written to a temporary sibling and moved into place with ``os.replace``. Checkpoints load through safetensors (no pickle).
Imports torch/safetensors lazily so the CLI stays light.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ngp_cli.errors import ConfigError, DataError, OutputError

_CKPT_RE = re.compile(r"^step-(\d{8,})\.json$")


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
    partial one. Raises OutputError."""
    tmp = None
    try:
        tmp = str(create_temp_beside(path, suffix))
        write(tmp)
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


class RunDir:
    """One run directory. Create with :meth:`create` (new run) or :meth:`open` (``--resume``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- paths ---------------------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

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
        """Open an existing run directory for ``--resume``. Raises DataError when it is not a run directory."""
        run = cls(Path(path).expanduser())
        if not run.path.is_dir():
            raise DataError(f"{run.path}: run directory does not exist")
        if not run.config_path.is_file():
            raise DataError(f"{run.path}: not a run directory (no config.yaml)")
        run.checkpoints_dir.mkdir(exist_ok=True)
        run.renders_dir.mkdir(exist_ok=True)
        return run

    # -- config / metrics / summary ------------------------------------------------------------------------------------
    def write_config(self, data: dict[str, Any]) -> None:
        from ngp_cli.config import dump_yaml

        atomic_write_text(self.config_path, dump_yaml(data))

    def read_config(self) -> dict[str, Any]:
        """The raw mapping in config.yaml. Raises ConfigError when it is malformed."""
        import yaml

        try:
            data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{self.config_path}: cannot read run config: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config_path}: run config must be a mapping")
        return data

    def append_metrics(self, record: dict[str, Any]) -> None:
        from ngp_cli.console import to_json

        try:
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(to_json(record) + "\n")
        except OSError as exc:
            raise OutputError(f"{self.metrics_path}: cannot write: {exc.strerror or exc}") from None

    def truncate_metrics(self, last_step: int) -> None:
        """Drop metric lines after ``last_step`` (written after the checkpoint we resume from)."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= last_step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text(encoding="utf-8").splitlines() if line]

    def write_summary(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(data, indent=2, allow_nan=False) + "\n")

    def archive_summary(self) -> None:
        """Keep an earlier summary (a finished run being extended) as ``summary-step<N>.json`` instead of deleting it."""
        if self.summary_path.exists():
            step = json.loads(self.summary_path.read_text(encoding="utf-8")).get("step", "unknown")
            os.replace(self.summary_path, self.path / f"summary-step{step}.json")

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as ``(step, json_path)``, oldest first (a checkpoint is complete once its JSON exists)."""
        out = []
        for p in self.checkpoints_dir.glob("step-*.json"):
            m = _CKPT_RE.match(p.name)
            if m and p.with_suffix(".safetensors").is_file():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def save_checkpoint(self, step: int, tensors: dict[str, Any], meta: dict[str, Any], keep: int) -> Path:
        """Write ``step-<step>.safetensors`` (tensors) then ``step-<step>.json`` (meta), both atomically, and delete
        all but the ``keep`` newest checkpoints. ``tensors`` maps names to contiguous CPU torch tensors."""
        from safetensors.torch import save_file

        stem = self.checkpoints_dir / f"step-{step:08d}"
        weights = stem.with_suffix(".safetensors")
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": "ngp-checkpoint-v1"}))
        atomic_write_text(stem.with_suffix(".json"), json.dumps({"step": step, **meta}, indent=2) + "\n")
        for _, old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
        return weights

    def load_latest_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(tensors, meta)`` of the newest complete checkpoint, or None. Raises DataError for a corrupt file."""
        from safetensors.torch import load_file

        found = self.checkpoints()
        if not found:
            return None
        _, meta_path = found[-1]
        weights = meta_path.with_suffix(".safetensors")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = load_file(str(weights))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise DataError(f"{weights}: corrupt checkpoint: {' '.join(str(exc).split())}") from None
        return tensors, meta

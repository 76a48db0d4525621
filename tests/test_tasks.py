"""Task plugin discovery through the ``ngp_cli.tasks`` entry-point group (after nerfstudio's plugin registry)."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ngp_cli.tasks import ENTRY_POINT_GROUP, Task, discover_tasks


class EchoTask(Task):
    name = "echo"
    summary = "a third-party test task"
    commands = ("echo-task",)

    def register(self, app: typer.Typer) -> None:
        @app.command("echo-task")
        def echo_task(word: str) -> None:
            from ngp_cli.console import emit

            emit("echo", word=word)


def _fake_entry_points(monkeypatch, specs: dict[str, str]) -> None:
    module = types.ModuleType("fake_ngp_plugin")
    module.EchoTask = EchoTask
    module.NotATask = object
    module.Duplicate = type("Duplicate", (EchoTask,), {})
    sys.modules["fake_ngp_plugin"] = module
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        if kwargs.get("group") == ENTRY_POINT_GROUP:
            return list(real(**kwargs)) + [
                importlib.metadata.EntryPoint(name=n, value=v, group=ENTRY_POINT_GROUP) for n, v in specs.items()]
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_builtin_image_task_is_discovered():
    tasks = discover_tasks(warn=lambda m: (_ for _ in ()).throw(AssertionError(m)))
    assert tasks["image"].commands == ("fit-image", "view")


def test_third_party_task_adds_its_command(monkeypatch):
    _fake_entry_points(monkeypatch, {"echo": "fake_ngp_plugin:EchoTask"})
    from ngp_cli.cli import build_app

    result = CliRunner().invoke(build_app(), ["echo-task", "hello"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == '{"event":"echo","word":"hello"}'
    result = CliRunner().invoke(build_app(), ["tasks"])
    assert '"name":"echo"' in result.stdout


def test_broken_plugins_warn_instead_of_crashing(monkeypatch):
    _fake_entry_points(monkeypatch, {"broken": "no_such_module_xyz:Task", "plain": "fake_ngp_plugin:NotATask",
                                     "echo": "fake_ngp_plugin:EchoTask", "zdup": "fake_ngp_plugin:Duplicate"})
    warnings: list[str] = []
    tasks = discover_tasks(warn=warnings.append)
    assert set(tasks) == {"image", "nerf", "nrc", "sdf", "echo"}
    assert len(warnings) == 3
    assert any("'broken'" in w and "failed to load" in w for w in warnings)
    assert any("'plain'" in w and "not an ngp_cli.tasks.Task" in w for w in warnings)
    assert any("'zdup'" in w and "repeats the task name 'echo'" in w for w in warnings)


def _no_entry_points(monkeypatch, extra: dict[str, str] | None = None) -> None:
    """entry_points() as in a checkout on PYTHONPATH without ``pip install``: none of ngp's own (``extra``: third-party
    ones that are installed)."""
    sys.modules.setdefault("fake_ngp_plugin", types.ModuleType("fake_ngp_plugin")).EchoTask = EchoTask
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        if kwargs.get("group") == ENTRY_POINT_GROUP:
            return [importlib.metadata.EntryPoint(name=n, value=v, group=ENTRY_POINT_GROUP)
                    for n, v in (extra or {}).items()]
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_builtin_tasks_without_installed_entry_points(monkeypatch):
    _no_entry_points(monkeypatch)
    tasks = discover_tasks(warn=lambda m: (_ for _ in ()).throw(AssertionError(m)))
    assert set(tasks) == {"image", "nerf", "sdf", "nrc"}
    assert tasks["image"].commands == ("fit-image", "view")
    from ngp_cli.cli import build_app

    # The commands exist (not typer's "No such command"): --help of each exits 0.
    for command in ("fit-image", "train-nerf", "train-sdf", "train-nrc"):
        result = CliRunner().invoke(build_app(), [command, "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_builtin_tasks_beside_a_third_party_plugin_without_ngp_metadata(monkeypatch):
    _no_entry_points(monkeypatch, {"echo": "fake_ngp_plugin:EchoTask"})
    assert set(discover_tasks(warn=lambda m: None)) == {"image", "nerf", "sdf", "nrc", "echo"}


def test_builtin_task_list_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from ngp_cli.tasks import BUILTIN_TASKS

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"][ENTRY_POINT_GROUP] == BUILTIN_TASKS

"""The wheel ships every subpackage and the presets (setuptools cannot discover the remapped presets/ itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ngp_cli").rglob("__init__.py")}
    assert found | {"ngp_cli.presets"} == listed


def test_presets_resolve_through_the_installed_package():
    from ngp_cli.config import list_presets, presets_dir

    assert (presets_dir() / "defaults.yaml").is_file()
    assert {p["name"] for p in list_presets()} >= {"defaults", "image", "image-cpu"}

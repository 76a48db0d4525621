"""Shared fixtures: the CLI runner, small real photos, and the optional ../shared/data directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# Compiled kernels go to a cache of this test session (inherited by the CLI subprocesses), so the suite always
# exercises the compile path and never depends on, or fills, the user's ~/.cache/ngp. It is removed when the session
# ends (hundreds of leftover caches once filled the disk of a machine that runs the suite all day).
if "NGP_TEST_KEEP_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["NGP_CACHE_DIR"] = tempfile.mkdtemp(prefix="ngp-test-kernels-")
    atexit.register(shutil.rmtree, os.environ["NGP_CACHE_DIR"], ignore_errors=True)


def shared_data() -> Path:
    """../shared/data beside the repository (override with NGP_SHARED_DATA); tests needing it skip when absent."""
    return Path(os.environ.get("NGP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data_dir() -> Path:
    path = shared_data()
    if not path.is_dir():
        pytest.skip(f"shared data not present at {path}")
    return path


@pytest.fixture(scope="session")
def host_cxx() -> str:
    """The host C++ compiler of the cpu kernel target; skips the test when there is none."""
    from ngp_cli.cuda.runtime import host_compiler

    cxx = host_compiler()
    if cxx is None:
        pytest.skip("no host C++ compiler (g++/clang++) for the cpu kernel target")
    return cxx


@pytest.fixture(scope="session")
def cpu_target(host_cxx) -> str:
    """The "cpu" kernel target (skips without a host C++ compiler)."""
    return "cpu"


@pytest.fixture(scope="session")
def app():
    from ngp_cli.cli import build_app

    return build_app()


class Invocation:
    """Result of one CLI call: exit code, parsed stdout JSON lines, stderr text."""

    def __init__(self, result) -> None:
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception
        # The contract: every stdout line is a JSON object.
        self.events = [json.loads(line) for line in self.stdout.splitlines()]

    def last(self, event: str) -> dict:
        matches = [e for e in self.events if e["event"] == event]
        assert matches, f"no {event!r} event in {self.events}; stderr: {self.stderr}"
        return matches[-1]


@pytest.fixture
def ngp(app):
    """Call ``ngp ARGS...`` in-process through typer's CliRunner."""
    from typer.testing import CliRunner

    runner = CliRunner()

    def call(*args: str) -> Invocation:
        return Invocation(runner.invoke(app, [str(a) for a in args]))

    return call


@pytest.fixture
def astronaut_crop(tmp_path) -> Path:
    """A 96×128 crop of scikit-image's bundled astronaut photo, saved as PNG (a small real photo)."""
    import imageio.v3 as iio
    from skimage import data

    path = tmp_path / "astro_crop.png"
    iio.imwrite(path, np.ascontiguousarray(data.astronaut()[40:136, 200:328]))
    return path


@pytest.fixture
def tcnn_image_json(tmp_path) -> Path:
    """tiny-cuda-nn's data/config_hash.json (its image-fitting config), written as a file."""
    path = tmp_path / "config_hash.json"
    path.write_text(json.dumps({
        "loss": {"otype": "RelativeL2"},
        "optimizer": {"otype": "Adam", "learning_rate": 1e-2, "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15,
                      "l2_reg": 1e-6},
        "encoding": {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 15,
                     "base_resolution": 16, "per_level_scale": 1.5},
        "network": {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None", "n_neurons": 64,
                    "n_hidden_layers": 2},
    }))
    return path

"""The CPU kernel cache as an attacker sees it (issue 13, item 2): its library names are predictable, so a library
planted under one, a cache directory others can write to, or a symlink where the compile log goes must not get
code or writes into ngp. None of these is a refusal: ngp warns on stderr and keeps working, so these cases check
that the kernel still runs and that nothing was loaded from, or written through, the planted file.

Libraries are dlopen-ed once per process (and the launcher is lru-cached), so the planted-library cases run a fresh
interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.bad_input.conftest import unchanged

KERNELS = Path(__file__).resolve().parents[1] / "cuda" / "kernels"

# Loads basic.cu for the cpu target in a fresh process and runs saxpy: prints the result on the last line.
_RUN_SAXPY = textwrap.dedent(
    """
    import sys
    import numpy as np, torch
    from ngp_cli.cuda.runtime import load_module
    m = load_module(sys.argv[1], "cpu")
    y = torch.ones(8)
    m.launch("saxpy", 1, 8, [y, torch.arange(8, dtype=torch.float32), np.float32(2.0), np.uint32(8)])
    print(y.tolist())
    """
)


@pytest.fixture(scope="module")
def loaded_names(host_cxx) -> dict[str, str]:
    """The file names the runtime itself loads for basic.cu and for the launcher, read off the loaded libraries (so
    the name is computed exactly the way the runtime does), built in the session's kernel cache."""
    from ngp_cli.cuda import cpu_build, runtime

    module = runtime.load_module(KERNELS / "basic.cu", "cpu")
    return {"kernel-module": Path(module.library).name, "launcher": Path(cpu_build._pool_lib()._name).name}


def _private_cache(tmp_path: Path) -> Path:
    """A fresh 0700 cache seeded with the session cache's libraries (and whatever records them), so the subprocess
    has only the planted library to rebuild."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    session = Path(os.environ["NGP_CACHE_DIR"])
    for entry in session.iterdir():
        if entry.is_file() and not entry.name.startswith(".") and entry.suffix in (".so", ".sha256"):
            shutil.copy2(entry, cache / entry.name)
    return cache


def _planted_library(cxx: str, tmp_path: Path, marker: Path) -> Path:
    """A shared library whose constructor writes ``marker``: what an attacker would drop in the cache."""
    src = tmp_path / "evil.cpp"
    src.write_text(
        "#include <cstdio>\n"
        "__attribute__((constructor)) static void planted() {\n"
        f'    if (FILE* f = std::fopen("{marker}", "w")) {{ std::fputs("ran", f); std::fclose(f); }}\n'
        "}\n"
    )
    out = tmp_path / "evil.so"
    subprocess.run([cxx, "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("which", ["kernel-module", "launcher"])
def test_a_library_planted_under_the_loaded_name_is_not_loaded(host_cxx, loaded_names, tmp_path, which):
    cache = _private_cache(tmp_path)
    marker = tmp_path / "constructor-ran"
    target = cache / loaded_names[which]
    shutil.copyfile(_planted_library(host_cxx, tmp_path, marker), target)
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_SAXPY, str(KERNELS / "basic.cu")],
        capture_output=True,
        text=True,
        env={**os.environ, "NGP_CACHE_DIR": str(cache)},
        timeout=600,
    )
    assert not marker.exists(), "the planted library's constructor ran inside ngp"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == str([1.0 + 2.0 * i for i in range(8)])
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and target.name in warnings[0] and "rebuilding" in warnings[0], proc.stderr
    # Rebuilt in place: a real library (no constructor writing files) now sits under the name.
    assert b"constructor-ran" not in target.read_bytes()


@pytest.fixture
def fresh_process_state(monkeypatch, tmp_path):
    """The runtime's per-process state for a new NGP_CACHE_DIR, with the per-user fallback under ``tmp_path`` (not
    the machine's temp dir)."""
    from ngp_cli.cuda import runtime

    fallback_root = tmp_path / "tmp"
    fallback_root.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(fallback_root))
    yield runtime, fallback_root
    runtime._clear_process_cache()


@pytest.mark.parametrize(
    "mode, fake_owner",
    [(0o777, False), (0o770, False), (0o700, True)],
    ids=["world-writable", "group-writable", "owned-by-another-user"],
)
def test_a_cache_dir_others_control_is_not_used(host_cxx, fresh_process_state, monkeypatch, capsys, tmp_path, mode,
                                                fake_owner):
    runtime, fallback_root = fresh_process_state
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(mode)
    monkeypatch.setenv("NGP_CACHE_DIR", str(shared))
    if fake_owner:  # the directory is ours; the runtime is made to see another user
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)
    source = tmp_path / "tiny.cu"
    source.write_text('extern "C" __global__ void tiny(float* out) { out[threadIdx.x] = 5.0f; }\n')
    with unchanged(shared):
        module = runtime.load_module(source, "cpu")
        import torch

        out = torch.zeros(3)
        module.launch("tiny", 1, 3, [out])
    assert out.tolist() == [5.0, 5.0, 5.0]
    library = Path(module.library)
    assert shared not in library.parents
    assert fallback_root in library.parents, library
    assert (library.parent.stat().st_mode & 0o777) == 0o700
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and str(shared) in warnings[0] and "not used" in warnings[0], warnings


def test_the_cache_dir_and_the_parents_ngp_creates_are_private(fresh_process_state, monkeypatch, tmp_path):
    runtime, _ = fresh_process_state
    root = tmp_path / "home-cache"
    monkeypatch.setenv("NGP_CACHE_DIR", str(root / "ngp" / "kernels"))
    old = os.umask(0o022)  # the usual umask would leave new directories 0755
    try:
        assert runtime.kernel_cache_dir() == root / "ngp" / "kernels"
    finally:
        os.umask(old)
    for d in (root, root / "ngp", root / "ngp" / "kernels"):
        assert (d.stat().st_mode & 0o777) == 0o700, (d, oct(d.stat().st_mode))


def test_a_symlinked_compile_log_is_not_written_through(host_cxx, fresh_process_state, monkeypatch, tmp_path):
    runtime, _ = fresh_process_state
    from ngp_cli.cuda.runtime import KernelCompileError

    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "settings.json"
    victim.write_text('{"precious": true}\n')
    (cache / "last-compile-error.log").symlink_to(victim)
    monkeypatch.setenv("NGP_CACHE_DIR", str(cache))
    with unchanged(outside), pytest.raises(KernelCompileError) as info:
        runtime.load_module(KERNELS / "broken.cu", "cpu")
    log = cache / "last-compile-error.log"
    assert not log.is_symlink() and "ngp_undefined_identifier" in log.read_text()
    assert str(log) in str(info.value)

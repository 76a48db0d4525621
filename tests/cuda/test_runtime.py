"""The kernel runtime (ngp_cli/cuda/runtime.py, cpu_emu.h, cpu_launch.cpp) on toy kernels in tests/cuda/kernels.

CPU-target tests need a host C++ compiler; ``gpu`` tests run the same kernels through the CUDA target and compare
with the CPU target; nvcc tests check that the toy kernels compile for every supported architecture without spills.
Each toy module is compiled once per session (module-scoped fixtures; the disk cache is the session's NGP_CACHE_DIR).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from ngp_cli.cuda import cpu_build, runtime, signature
from ngp_cli.cuda.kernel_cache import CUDA_DIR, _headers
from ngp_cli.cuda.runtime import KernelCompileError, KernelLaunchError, load_module, parse_kernels
from ngp_cli.errors import EXIT_INTERNAL, NgpError
from tests.cuda.nvcc import nvcc_compile_check

u32 = np.uint32


@pytest.fixture(scope="module")
def basic(host_cxx, kernels_dir):
    return load_module(kernels_dir / "basic.cu", "cpu")


@pytest.fixture(scope="module")
def sync(host_cxx, kernels_dir):
    return load_module(kernels_dir / "sync.cu", "cpu")


@pytest.fixture(scope="module")
def wmma(host_cxx, kernels_dir):
    return load_module(kernels_dir / "wmma.cu", "cpu", {"B_COL_MAJOR": 1})


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_cpu_workers_are_torchs_own_openmp_threads(basic, two_threads):
    """Where torch runs on libgomp, launches run on its OpenMP team: one libgomp in the process, not a second pool
    whose threads would fight torch's spinning ones for the cores (and a launch still splits over both workers)."""
    if not cpu_build._torch_uses_openmp():
        pytest.skip("torch does not use OpenMP here")
    lib = cpu_build._pool_lib()
    assert lib.ngp_pool_openmp() == 1
    with open("/proc/self/maps") as f:
        gomp = {line.split()[-1] for line in f if "libgomp" in line}
    # A wheel's private copy (auditwheel names it libgomp-<hash>.so.*, e.g. pycolmap's, loaded when the capture tests
    # run in this process) is linked by that wheel's own libraries only; the pool resolves libgomp.so.1.
    shared = {p for p in gomp if not re.fullmatch(r"libgomp-[0-9a-f]{8}\.so.*", os.path.basename(p))}
    assert len(shared) == 1, f"more than one OpenMP runtime loaded: {sorted(gomp)}"
    n = 1 << 16
    out = torch.zeros(n)
    basic.launch("saxpy", (n + 127) // 128, 128, [out, torch.ones(n), np.float32(3.0), u32(n)])
    assert torch.equal(out, torch.full((n,), 3.0))


def test_launcher_falls_back_to_plain_threads_when_openmp_does_not_build(host_cxx, monkeypatch):
    if not cpu_build._torch_uses_openmp():
        pytest.skip("torch does not use OpenMP here: the plain build is the only one")
    real = cpu_build._compile_cached

    def no_openmp(stem, key, cmd, *args):
        if "-fopenmp" in cmd:
            raise KernelCompileError("g++: error: unsupported option '-fopenmp'")
        return real(stem, key, cmd, *args)

    monkeypatch.setattr(cpu_build, "_compile_cached", no_openmp)
    cpu_build._pool_lib.cache_clear()
    try:
        assert cpu_build._pool_lib().ngp_pool_openmp() == 0
    finally:
        monkeypatch.undo()
        cpu_build._pool_lib.cache_clear()  # later launches load the OpenMP build again
    assert cpu_build._pool_lib().ngp_pool_openmp() == 1


def _launch_in_child(module, queue):
    # numpy-backed tensors: torch's own parallel ops hang in a child forked after its OpenMP team ran (libgomp is not
    # fork-safe), which is torch's limitation, not the launcher's
    n = 1 << 16
    out, ones = np.zeros(n, dtype=np.float32), np.ones(n, dtype=np.float32)
    module.launch("saxpy", (n + 127) // 128, 128, [torch.from_numpy(out), torch.from_numpy(ones), np.float32(2.0),
                                                   u32(n)])
    queue.put(float(out.sum()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_launches_on_its_own_workers(basic, two_threads):
    """After the parent's workers ran (an OpenMP team or the thread pool), a fork()ed child's launch still completes:
    neither kind of worker survives fork, and the child must not wait for them."""
    import multiprocessing

    n = 1 << 16
    out = torch.zeros(n)
    basic.launch("saxpy", (n + 127) // 128, 128, [out, torch.ones(n), np.float32(1.0), u32(n)])
    assert float(out.sum()) == n
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_launch_in_child, args=(basic, queue))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child's launch hung")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == 2.0 * n


# ---------------------------------------------------------------------------------------------------------------
# Indexing, atomics, __half, math
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_3d_grid_writes_every_element_exactly_once(basic, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        nx, ny, nz = 37, 19, 11
        block = (8, 4, 2)
        grid = (-(-nx // 8), -(-ny // 4), -(-nz // 2))
        out = torch.full((nz * ny * nx,), -1, dtype=torch.int32)
        count = torch.zeros_like(out)
        basic.launch("index3d", grid, block, [out, count, u32(nx), u32(ny), u32(nz)])
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out, torch.arange(nz * ny * nx, dtype=torch.int32))
    assert torch.equal(count, torch.ones_like(count))


def test_saxpy_and_launch_shapes(basic):
    n = 1000
    x = torch.arange(n, dtype=torch.float32)
    y = torch.ones(n)
    basic.launch("saxpy", (n + 127) // 128, 128, [y, x, np.float32(2.0), u32(n)])  # ints for grid and block
    assert torch.equal(y, 2 * x + 1)
    basic.launch("saxpy", (0, 1, 1), (128,), [y, x, np.float32(2.0), u32(n)])  # an empty grid launches nothing
    assert torch.equal(y, 2 * x + 1)


def test_atomic_add_contention_is_exact(basic, two_threads):
    n, slots = 7000, 7  # 1000 adds per slot: exact in fp16 too
    f = torch.zeros(slots)
    d = torch.zeros(slots, dtype=torch.float64)
    h2 = torch.zeros(2 * slots, dtype=torch.float16)
    h = torch.zeros(slots, dtype=torch.float16)
    iv = torch.zeros(slots, dtype=torch.int32)
    uv = torch.zeros(slots, dtype=torch.int32)
    basic.launch("atomic_counts", n // 64 + 1, 64, [f, d, h2, h, iv, uv, u32(n), u32(slots)])
    per = n // slots
    assert torch.equal(f, torch.full((slots,), float(per)))
    assert torch.equal(d, torch.full((slots,), float(per), dtype=torch.float64))
    assert torch.equal(h2.view(slots, 2).float(), torch.tensor([[per, 2 * per]] * slots, dtype=torch.float32))
    assert torch.equal(h.float(), torch.full((slots,), float(per)))
    assert torch.equal(iv, torch.full((slots,), per, dtype=torch.int32))
    assert torch.equal(uv, torch.full((slots,), 2 * per, dtype=torch.int32))


@pytest.mark.parametrize("exclusive_y", [False, True])
def test_atomic_rows_with_and_without_exclusive_y(basic, two_threads, exclusive_y):
    rows, slots, n = 16, 64, 64 * 500
    out = torch.zeros(rows * slots)
    basic.launch("atomic_rows", (n // 64, rows), 64, [out, u32(n), u32(slots)], exclusive_y=exclusive_y)
    assert torch.equal(out, torch.full((rows * slots,), float(n // slots)))


def test_half_conversions_match_numpy(basic):
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 6.1e-5, 5.96e-8, 2.9e-8, 1e-9, 0.1, 1 / 3]
    x = np.concatenate([special, rng.normal(size=500) * 10.0 ** rng.integers(-6, 5, size=500)]).astype(np.float32)
    n = len(x)
    h = torch.zeros(n, dtype=torch.float16)
    back = torch.zeros(n)
    pairs = torch.zeros(n + 1, dtype=torch.float16)
    pair_back = torch.zeros(n)
    basic.launch("half_roundtrip", (n + 63) // 64, 64, [torch.from_numpy(x), h, back, pairs, pair_back, u32(n)])
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16)
    assert np.array_equal(h.numpy().view(np.uint16), expected.view(np.uint16))
    assert np.array_equal(back.numpy(), expected.astype(np.float32))
    even = n - (n % 2)
    assert np.array_equal(pairs.numpy()[:even].view(np.uint16), expected[:even].view(np.uint16))
    assert np.array_equal(pair_back.numpy()[:even], expected[:even].astype(np.float32))


def test_math_functions(basic):
    x = torch.linspace(-3, 3, 101)
    out = torch.zeros(101 * 8)
    basic.launch("math_funcs", 2, 64, [x, out, u32(101)])
    o = out.view(101, 8).numpy()
    v = x.numpy().astype(np.float64)
    np.testing.assert_allclose(o[:, 0], np.exp(v), rtol=1e-6)
    np.testing.assert_allclose(o[:, 1], np.sqrt(np.abs(v)), rtol=1e-6)
    np.testing.assert_allclose(o[:, 2], 1 / np.sqrt(np.abs(v) + 1), rtol=1e-6)
    np.testing.assert_allclose(o[:, 3], np.minimum(v, 0.5) + np.maximum(v, -0.5), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(o[:, 4], np.floor(x.numpy() * np.float32(3)))
    np.testing.assert_allclose(o[:, 5], np.tanh(v), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(o[:, 6], np.clip(x.numpy(), 0, 1))
    np.testing.assert_array_equal(o[:, 7], np.minimum((x.numpy() * np.float32(10)).astype(np.int32), 3) + 2)


@pytest.mark.parametrize("param_t,np_t", [("float", np.float32), ("__half", np.float16)])
def test_value_parameters_of_every_type(host_cxx, kernels_dir, param_t, np_t):
    mod = load_module(kernels_dir / "scalars.cu", "cpu", {"PARAM_T": param_t})
    assert [p.type for p in mod.kernels["scalars"].params][-2:] == [param_t, "bool"]
    out = torch.zeros(8, dtype=torch.float64)
    args = [
        out,
        np.int32(-7),
        u32(4000000000),
        np.float32(1.5),
        np.float64(-2.25),
        np.int64(-(2**40)),
        np.uint64(2**63),
        np_t(0.5),
        np.bool_(True),
    ]
    mod.launch("scalars", 1, 1, args)
    assert out.tolist() == [-7, 4000000000, 1.5, -2.25, -(2**40), 2**63, 0.5, 1.0]


# ---------------------------------------------------------------------------------------------------------------
# Shared memory, barriers, fibers, warp intrinsics
# ---------------------------------------------------------------------------------------------------------------


def test_block_reduction_with_static_shared_memory(sync, two_threads):
    n = 5000
    x = torch.randn(n, generator=torch.Generator().manual_seed(1))
    nb = -(-n // 256)
    sums = torch.zeros(nb)
    sync.launch("block_sum", nb, 256, [x, sums, u32(n)], sync_threads=True)
    ref = torch.nn.functional.pad(x, (0, nb * 256 - n)).view(nb, 256).double().sum(1).float()
    torch.testing.assert_close(sums, ref, rtol=1e-5, atol=1e-4)


def test_dynamic_shared_memory_is_poisoned_per_block(sync):
    blocks, threads = 5, 64
    x = torch.randn(blocks * threads)
    first = torch.zeros_like(x)
    rev = torch.zeros_like(x)
    sync.launch("dyn_shared", blocks, threads, [x, first, rev], threads * 4, sync_threads=True)
    assert torch.isnan(first).all()  # read before written: the 0xFF poison of every block
    assert torch.equal(rev.view(blocks, threads), x.view(blocks, threads).flip(1))


def test_syncthreads_without_sync_threads_is_a_launch_error(sync):
    out = torch.zeros(32)
    with pytest.raises(KernelLaunchError, match=r"__syncthreads\(\).*sync_threads=True") as info:
        sync.launch("needs_sync", 1, 32, [out])
    assert isinstance(info.value, NgpError) and info.value.exit_code == EXIT_INTERNAL
    sync.launch("needs_sync", 1, 1, [out])  # one thread per block: __syncthreads is a no-op
    assert out[0] == 0
    sync.launch("needs_sync", 1, 32, [out], sync_threads=True)  # the module still works after the error
    assert torch.equal(out, (torch.arange(32) + 1) % 32.0)


def test_divergent_barriers_are_reported_not_hung(sync):
    with pytest.raises(KernelLaunchError, match="deadlock"):
        sync.launch("divergent", 1, 64, [torch.zeros(64)], sync_threads=True)


def test_exited_threads_leave_the_barrier(sync):
    out = torch.zeros(2 * 128)
    sync.launch("early_exit", 2, 128, [out, u32(100)], sync_threads=True)
    expected = torch.cat([torch.arange(99, -1, -1, dtype=torch.float32), torch.zeros(28)])
    assert torch.equal(out.view(2, 128), expected.expand(2, 128))


def _warp_reference(x: np.ndarray, block: int) -> np.ndarray:
    n = len(x)
    ref = np.zeros((n, 7), np.float32)
    for i in range(n):
        t = i % block
        lane, w0 = t % 32, i - t + (t // 32) * 32
        wn = min(32, block - (t // 32) * 32)
        warp = x[w0 : w0 + wn]
        ref[i, 0] = warp.sum()
        ref[i, 1] = x[i + 1] if lane + 1 < wn else x[i]
        ref[i, 2] = x[i - 2] if lane >= 2 else x[i]
        ref[i, 3] = warp[3]
        ref[i, 4] = wn // 2
        ref[i, 5] = (1 << min(5, wn)) - 1
        ref[i, 6] = warp.max()
    return ref


def test_warp_intrinsics(sync, two_threads):
    block = 96
    x = torch.randn(4 * block, generator=torch.Generator().manual_seed(2)).round()  # integer values: exact sums
    out = torch.zeros(4 * block * 7)
    sync.launch("warp_ops", 4, block, [x, out], sync_threads=True)
    np.testing.assert_array_equal(out.view(-1, 7).numpy(), _warp_reference(x.numpy(), block))


def test_warp_intrinsics_in_plain_mode_are_a_launch_error(sync):
    with pytest.raises(KernelLaunchError, match="warp shuffle"):
        sync.launch("warp_ops", 1, 32, [torch.zeros(32), torch.zeros(32 * 7)])


def test_ucontext_fibers(host_cxx, kernels_dir):
    """The portable fiber switch (ucontext; used where the x86-64 assembly switch is unavailable)."""
    mod = load_module(kernels_dir / "sync.cu", "cpu", {"NGP_EMU_UCONTEXT": 1})
    x = torch.randn(512)
    sums = torch.zeros(2)
    mod.launch("block_sum", 2, 256, [x, sums, u32(512)], sync_threads=True)
    torch.testing.assert_close(sums, x.view(2, 256).sum(1), rtol=1e-5, atol=1e-4)
    with pytest.raises(KernelLaunchError, match="deadlock"):
        mod.launch("divergent", 1, 64, [torch.zeros(64)], sync_threads=True)


@pytest.mark.parametrize("block", [32, 1])
def test_wmma_tile_matches_fp32_matmul(wmma, block):
    g = torch.Generator().manual_seed(3)
    tiles = 3
    a = torch.randn(tiles, 16, 16, generator=g).half()
    b = torch.randn(tiles, 16, 16, generator=g).half()  # column-major B: element (k, n) at b[n, k]
    c_in = torch.randn(tiles, 16, 16, generator=g)
    c = torch.zeros(tiles, 16, 16)
    c_half = torch.zeros(tiles, 16, 16, dtype=torch.float16)
    wmma.launch("mma_tile", tiles, block, [a, b, c_in, c, c_half], sync_threads=True)
    prod = a.numpy().astype(np.float32) @ b.numpy().astype(np.float32).transpose(0, 2, 1)
    np.testing.assert_allclose(c.numpy(), 2 * (prod + c_in.numpy()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c_half.numpy().astype(np.float32).transpose(0, 2, 1), prod, rtol=1e-3, atol=1e-2)


# ---------------------------------------------------------------------------------------------------------------
# Signatures and argument checking
# ---------------------------------------------------------------------------------------------------------------


def test_signature_parsing():
    src = """
    // extern "C" __global__ void commented_out(int x) {}
    extern "C" __global__ void __launch_bounds__(128, 2) k1(const PARAM_T* __restrict__ a, unsigned n, void* raw) {}
    extern "C"
    __global__ void k2(const unsigned int* idx, long long m, __half2* h) {}
    extern "C" __global__ void k3() {}
    """
    ks = parse_kernels(src, {"PARAM_T": "__half"})
    assert list(ks) == ["k1", "k2", "k3"]
    p = ks["k1"].params
    assert [(x.name, x.type, x.pointer) for x in p] == [
        ("a", "__half", True),
        ("n", "unsigned int", False),
        ("raw", "void", True),
    ]
    assert p[0].dtypes == ("float16",) and p[1].dtypes == ("uint32",) and p[2].dtypes == ("*",)
    assert [x.dtypes for x in ks["k2"].params] == [("int32", "uint32"), ("int64",), ("float16",)]
    assert ks["k3"].params == ()
    with pytest.raises(KernelCompileError, match="unsupported value type 'MyStruct'"):
        parse_kernels('extern "C" __global__ void bad(MyStruct s) {}')


def test_argument_checking(basic):
    n = 64
    x, y = torch.zeros(n), torch.zeros(n)
    good = [y, x, np.float32(1), u32(n)]
    with pytest.raises(TypeError, match=r"kernel saxpy, parameter unsigned int n: .*Python int"):
        basic.launch("saxpy", 1, 64, [y, x, np.float32(1), n])
    with pytest.raises(TypeError, match=r"parameter float a: .*Python float"):
        basic.launch("saxpy", 1, 64, [y, x, 1.0, u32(n)])
    with pytest.raises(TypeError, match=r"parameter float a: .*Python bool"):
        basic.launch("saxpy", 1, 64, [y, x, True, u32(n)])
    with pytest.raises(TypeError, match=r"parameter unsigned int n: .*numpy int32"):
        basic.launch("saxpy", 1, 64, [y, x, np.float32(1), np.int32(n)])
    with pytest.raises(TypeError, match=r"parameter float\* y: expected a tensor of dtype float32, got torch.float64"):
        basic.launch("saxpy", 1, 64, [y.double(), x, np.float32(1), u32(n)])
    with pytest.raises(ValueError, match=r"parameter float\* x: the tensor must be contiguous"):
        basic.launch("saxpy", 1, 64, [y, torch.zeros(n, 2)[:, 0], np.float32(1), u32(n)])
    with pytest.raises(TypeError, match=r"parameter float\* x: expected a torch.Tensor or None, got ndarray"):
        basic.launch("saxpy", 1, 64, [y, x.numpy(), np.float32(1), u32(n)])
    with pytest.raises(TypeError, match="kernel saxpy takes 4 arguments"):
        basic.launch("saxpy", 1, 64, good[:3])
    with pytest.raises(KeyError, match="no kernel 'nope'"):
        basic.launch("nope", 1, 64, good)
    with pytest.raises(ValueError, match="1 to 1024 threads"):
        basic.launch("saxpy", 1, 2048, good)
    with pytest.raises(TypeError, match="grid must be"):
        basic.launch("saxpy", 1.5, 64, good)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="expected a tensor on cpu"):
            basic.launch("saxpy", 1, 64, [y.cuda(), x, np.float32(1), u32(n)])
    # None is a null pointer; int32 tensors are accepted for unsigned pointees.
    checked = signature._check_args(
        basic.kernels["index3d"],
        basic._plans["index3d"],
        [None, torch.zeros(1, dtype=torch.int32), u32(1), u32(1), u32(1)],
        "cpu",
    )
    assert checked[0][1] == 0
    basic.launch("saxpy", 1, 64, good)


def test_load_module_errors(host_cxx, kernels_dir):
    with pytest.raises(ValueError, match="target must be one of"):
        load_module(kernels_dir / "basic.cu", "gpu")
    with pytest.raises(FileNotFoundError):
        load_module("no_such_kernel.cu", "cpu")
    with pytest.raises(KernelCompileError) as info:
        load_module(kernels_dir / "broken.cu", "cpu")
    err = info.value
    assert "broken.cu failed to compile for the cpu target" in str(err) and "\n" not in str(err)
    assert "ngp_undefined_identifier" in err.log and "error" in err.log
    assert err.exit_code == EXIT_INTERNAL
    # The one line names a file with the whole log, so a CLI user can read it.
    log_path = str(err).rsplit("(full log: ", 1)[1].rstrip(")")
    assert "ngp_undefined_identifier" in open(log_path, encoding="utf-8").read()


def test_disk_cache_is_reused(basic, kernels_dir):
    compiles = runtime.stats["cpu_compiles"]
    mtime = basic.library.stat().st_mtime_ns
    runtime._clear_process_cache()
    again = load_module(kernels_dir / "basic.cu", "cpu")
    assert again is not basic and again.library == basic.library
    assert runtime.stats["cpu_compiles"] == compiles
    assert again.library.stat().st_mtime_ns == mtime
    assert load_module(kernels_dir / "basic.cu", "cpu") is again  # per-process cache
    assert str(basic.library).startswith(str(runtime.cache_dir()))


def test_cache_key_headers_cover_every_emu_part():
    # cpu_emu.h is an umbrella over emu/*.h: the cpu cache key must follow its includes, so editing a part recompiles.
    emu = set((CUDA_DIR / "emu").glob("*.h"))
    assert len(emu) > 1
    headers = set(_headers(CUDA_DIR / "hashgrid.cu", [CUDA_DIR / "cpu_emu.h"]))
    assert {p.resolve() for p in emu} <= headers
    assert (CUDA_DIR / "cpu_emu.h").resolve() in headers and (CUDA_DIR / "common.cuh").resolve() in headers


def test_compile_seconds_counts_compiler_runs_not_cache_hits(host_cxx, tmp_path):
    source = tmp_path / "tiny.cu"
    source.write_text('extern "C" __global__ void tiny(float* out) { out[threadIdx.x] = 2.0f; }\n')
    before = runtime.compile_seconds()
    compiles = runtime.stats["cpu_compiles"]
    module = load_module(source, "cpu")
    after_compile = runtime.compile_seconds()
    assert runtime.stats["cpu_compiles"] == compiles + 1
    # A host-compiler run of a kernel takes well over 10 ms (cpu_emu.h alone), and the counter only grows.
    assert after_compile - before > 0.01
    out = torch.zeros(4)
    module.launch("tiny", 1, 4, [out])
    assert torch.equal(out, torch.full((4,), 2.0))
    runtime._clear_process_cache()
    load_module(source, "cpu")  # a disk-cache hit: no compiler run, no compile time
    assert runtime.compile_seconds() == after_compile


def test_import_ngp_cli_cuda_is_light():
    code = "import sys, ngp_cli.cuda; print(sorted(m for m in ('torch', 'numpy', 'cupy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------
# nvcc: every toy kernel compiles for every supported architecture, without spills
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"])
def test_nvcc_compile_check(nvcc, kernels_dir, arch):
    info = nvcc_compile_check(kernels_dir / "sync.cu", arch)
    assert set(info) == set(parse_kernels((kernels_dir / "sync.cu").read_text()))
    for name, entry in info.items():
        assert entry["registers"] > 0, name
        assert entry["spill_stores"] == 0 and entry["spill_loads"] == 0, (name, entry)
    assert info["block_sum"]["shared_bytes"] == 256 * 4


def test_nvcc_compile_check_of_the_other_toys(nvcc, kernels_dir):
    for source, defines in (("basic.cu", None), ("scalars.cu", {"PARAM_T": "__half"}), ("wmma.cu", {"B_COL_MAJOR": 0})):
        info = nvcc_compile_check(kernels_dir / source, 80, defines)
        assert all(e["spill_stores"] == 0 for e in info.values()), (source, info)
    with pytest.raises(KernelCompileError, match="failed to compile with nvcc") as err:
        nvcc_compile_check(kernels_dir / "broken.cu", "sm_80")
    assert "ngp_undefined_identifier" in err.value.log


# ---------------------------------------------------------------------------------------------------------------
# GPU: the CUDA target agrees with the CPU target
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_modules(kernels_dir):
    return {
        "basic": load_module(kernels_dir / "basic.cu", "cuda"),
        "sync": load_module(kernels_dir / "sync.cu", "cuda"),
        "wmma": load_module(kernels_dir / "wmma.cu", "cuda", {"B_COL_MAJOR": 1}),
    }


@pytest.mark.gpu
def test_gpu_basic_kernels_match_cpu(gpu_modules, basic):
    g = gpu_modules["basic"]
    nx, ny, nz = 37, 19, 11
    out = torch.full((nz * ny * nx,), -1, dtype=torch.int32, device="cuda")
    count = torch.zeros_like(out)
    g.launch("index3d", (5, 5, 6), (8, 4, 2), [out, count, u32(nx), u32(ny), u32(nz)])
    assert torch.equal(out.cpu(), torch.arange(nz * ny * nx, dtype=torch.int32))
    assert bool((count == 1).all())
    x = torch.randn(1000)
    outs = {}
    for target, mod, dev in (("cpu", basic, "cpu"), ("cuda", g, "cuda")):
        h = torch.zeros(1000, dtype=torch.float16, device=dev)
        back = torch.zeros(1000, device=dev)
        pairs = torch.zeros(1000, dtype=torch.float16, device=dev)
        pb = torch.zeros(1000, device=dev)
        mod.launch("half_roundtrip", 16, 64, [x.to(dev), h, back, pairs, pb, u32(1000)])
        m = torch.zeros(1000 * 8, device=dev)
        mod.launch("math_funcs", 16, 64, [x.to(dev), m, u32(1000)])
        outs[target] = (h.cpu(), back.cpu(), pairs.cpu(), pb.cpu(), m.cpu())
    for a, b in zip(outs["cpu"][:4], outs["cuda"][:4], strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(outs["cpu"][4], outs["cuda"][4], rtol=2e-6, atol=1e-6)
    f = torch.zeros(7, device="cuda")
    d = torch.zeros(7, dtype=torch.float64, device="cuda")
    h2 = torch.zeros(14, dtype=torch.float16, device="cuda")
    h = torch.zeros(7, dtype=torch.float16, device="cuda")
    iv = torch.zeros(7, dtype=torch.int32, device="cuda")
    uv = torch.zeros(7, dtype=torch.int32, device="cuda")
    g.launch("atomic_counts", 110, 64, [f, d, h2, h, iv, uv, u32(7000), u32(7)])
    assert f.cpu().tolist() == [1000.0] * 7 and h2.view(7, 2).float().cpu().tolist() == [[1000.0, 2000.0]] * 7
    assert (
        iv.cpu().tolist() == [1000] * 7 and uv.cpu().tolist() == [2000] * 7 and h.float().cpu().tolist() == [1000] * 7
    )
    with pytest.raises(TypeError, match="Python int"):
        g.launch("saxpy", 1, 64, [f, f, np.float32(1), 7])


@pytest.mark.gpu
def test_gpu_sync_kernels_match_cpu(gpu_modules, sync):
    g = gpu_modules["sync"]
    x = torch.randn(5000)
    sums_gpu = torch.zeros(20, device="cuda")
    g.launch("block_sum", 20, 256, [x.cuda(), sums_gpu, u32(5000)])
    sums_cpu = torch.zeros(20)
    sync.launch("block_sum", 20, 256, [x, sums_cpu, u32(5000)], sync_threads=True)
    torch.testing.assert_close(sums_gpu.cpu(), sums_cpu, rtol=1e-5, atol=1e-4)
    xw = torch.randn(4 * 96).round()
    out = torch.zeros(4 * 96 * 7, device="cuda")
    g.launch("warp_ops", 4, 96, [xw.cuda(), out])
    np.testing.assert_array_equal(out.view(-1, 7).cpu().numpy(), _warp_reference(xw.numpy(), 96))
    xd = torch.randn(4 * 64, device="cuda")
    first, rev = torch.zeros_like(xd), torch.zeros_like(xd)
    g.launch("dyn_shared", 4, 64, [xd, first, rev], 64 * 4)
    assert torch.equal(rev.view(4, 64), xd.view(4, 64).flip(1))


@pytest.mark.gpu
def test_gpu_wmma_matches_cpu(gpu_modules, wmma):
    a = torch.randn(3, 16, 16).half()
    b = torch.randn(3, 16, 16).half()
    c_in = torch.randn(3, 16, 16)
    res = {}
    for target, mod, dev, block in (("cpu", wmma, "cpu", 1), ("cuda", gpu_modules["wmma"], "cuda", 32)):
        c = torch.zeros(3, 16, 16, device=dev)
        ch = torch.zeros(3, 16, 16, dtype=torch.float16, device=dev)
        mod.launch("mma_tile", 3, block, [a.to(dev), b.to(dev), c_in.to(dev), c, ch], sync_threads=True)
        res[target] = (c.cpu(), ch.cpu())
    torch.testing.assert_close(res["cuda"][0], res["cpu"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res["cuda"][1].float(), res["cpu"][1].float(), rtol=2e-3, atol=2e-2)

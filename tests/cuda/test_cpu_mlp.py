"""The cpu backend's MLP paths (bf16, fp32, torch) against the torch reference, and the measured choice between them:
selection with fake timings, its cache file, and the NGP_CPU_MLP override. Nothing here depends on real timings."""

from __future__ import annotations

import json

import pytest
import torch

from ngp_cli.cuda import cpu_mlp as cm
from ngp_cli.cuda import fused_mlp as fmlp
from ngp_cli.errors import ConfigError
from ngp_cli.nn.mlp import FullyFusedMLP

# Relative L2 error of (output, gradients). bf16: its rounding flips the ReLU mask of near-zero pre-activations, so
# some gradients move by a few percent (the path is the one fit-image used before, unchanged).
TOL = {"torch": (0.0, 0.0), "fp32": (1e-5, 1e-5), "bf16": (1e-2, 8e-2)}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(cm.ENV_VAR, raising=False)
    monkeypatch.setattr(cm, "_chosen", {})
    monkeypatch.setattr(cm, "_MIN_CPU_SHARE", 0.0)  # how busy the test machine is must not matter


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _grads(out: torch.Tensor, x: torch.Tensor, weights, seed: int) -> list[torch.Tensor]:
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)))
    return [x.grad, *(w.grad for w in weights)]


@pytest.mark.parametrize("path", cm.PATHS)
@pytest.mark.parametrize(("activation", "output_activation", "n", "seed"), [
    ("ReLU", "None", 300, 1),
    ("Tanh", "Sigmoid", 200, 2),
    ("Squareplus", "None", 130, 3),
    ("LeakyReLU", "Exponential", 64, 4),
])
def test_every_path_agrees_with_the_torch_reference(path, activation, output_activation, n, seed):
    gen = torch.Generator().manual_seed(seed)
    ref = FullyFusedMLP(32, 16, 64, 2, activation, output_activation, generator=gen)
    x = torch.rand(n, 32, generator=gen) * 2 - 1
    weights = [w.detach().clone().requires_grad_(True) for w in ref.weights]
    x_ref, x_k = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref, out = ref(x_ref), cm.cpu_mlp(x_k, weights, activation, output_activation, path=path)
    assert out.dtype == torch.float32 and out.shape == (n, 16)
    assert _rel(out, out_ref) <= TOL[path][0]
    for g, g_ref in zip(_grads(out, x_k, weights, 7), _grads(out_ref, x_ref, ref.weights, 7), strict=True):
        assert _rel(g, g_ref) <= TOL[path][1]


@pytest.mark.parametrize("path", ["bf16", "fp32"])
@pytest.mark.parametrize(("activation", "n", "seed"), [("ReLU", 1000, 11), ("Tanh", 257, 12), ("ReLU", 1, 13)])
def test_the_inference_forward_equals_the_autograd_forward(path, activation, n, seed):
    # Under no_grad cpu_mlp skips autograd (inference_mlp: oneDNN matmul + ReLU post-op); the values must be those of
    # the training forward: the same matmuls in the same dtype, so equal up to summation order.
    gen = torch.Generator().manual_seed(seed)
    ref = FullyFusedMLP(32, 16, 64, 2, activation, "Sigmoid", generator=gen)
    x = torch.rand(n, 32, generator=gen) * 2 - 1
    trained = cm.cpu_mlp(x, list(ref.weights), activation, "Sigmoid", path=path)
    with torch.no_grad():
        fast = cm.cpu_mlp(x, list(ref.weights), activation, "Sigmoid", path=path)
    assert fast.shape == (n, 16) and fast.dtype == torch.float32 and not fast.requires_grad
    assert torch.isfinite(fast).all()
    assert float((fast - trained.detach()).abs().max()) <= (1e-2 if path == "bf16" else 1e-6)
    assert _rel(fast, trained) <= TOL[path][0]


@pytest.mark.parametrize("path", cm.PATHS)
@pytest.mark.parametrize("grad", [False, True])
def test_column_blocks_are_the_concatenated_input(path, grad):
    # A NeRF's colour network takes (density output, direction encoding) as two blocks: the result must be exactly
    # that of their concatenation, on every path, with and without autograd (inference converts each block into its
    # columns of the input buffer, elementwise as the whole input would be).
    gen = torch.Generator().manual_seed(21)
    mlp = FullyFusedMLP(32, 3, 64, 2, "ReLU", "Sigmoid", generator=gen, kernel_target="cpu")
    a, b = torch.rand(777, 16, generator=gen) - 0.5, torch.rand(777, 16, generator=gen) - 0.5
    with torch.set_grad_enabled(grad):
        whole = cm.cpu_mlp(torch.cat([a, b], 1), list(mlp.weights), "ReLU", "Sigmoid", path=path)
        blocks = cm.cpu_mlp((a, b), list(mlp.weights), "ReLU", "Sigmoid", path=path)
        swapped = cm.cpu_mlp((b, a), list(mlp.weights), "ReLU", "Sigmoid", path=path)
    assert blocks.shape == (777, 3) and blocks.requires_grad == grad
    assert torch.equal(blocks.detach(), whole.detach())
    assert float((swapped - whole).detach().abs().max()) > 1e-3  # the column order matters: the test can tell


def test_mlp_module_checks_and_concatenates_column_blocks():
    mlp = FullyFusedMLP(32, 3, 64, 2, generator=torch.Generator().manual_seed(2), kernel_target="cpu")
    x = torch.rand(5, 16, generator=torch.Generator().manual_seed(3))
    for bad in ((x, x[:4]), (x,), (x, x, x), ()):
        with pytest.raises(ValueError, match="column blocks"):
            mlp(bad)
    with torch.no_grad():
        assert torch.equal(mlp((x, 1 - x)), mlp(torch.cat([x, 1 - x], 1)))


@pytest.mark.parametrize("path", cm.PATHS)
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_a_feature_major_input_gives_the_row_major_result(path, layers):
    # The hash grid's inference layout (hashgrid.encode(feature_major=True): (L*F, N) in memory, the (N, L*F) input
    # its transposed view) goes into the first matmul as a transposed operand: the values of the row-major input.
    gen = torch.Generator().manual_seed(31)
    weights = list(FullyFusedMLP(32, 16, 64, 2, "ReLU", "None", generator=gen).weights)[-layers:]
    n_in = weights[0].shape[1]
    xt = torch.rand(n_in, 3001, generator=gen) - 0.5
    with torch.no_grad():
        rows = cm.cpu_mlp(xt.t().contiguous(), weights, "ReLU", "None", path=path)
        cols = cm.cpu_mlp(xt.t(), weights, "ReLU", "None", path=path)
        block = cm.cpu_mlp([xt.t()], weights, "ReLU", "None", path=path)  # as the one column block of a sequence
    assert cols.shape == (3001, 16) and torch.isfinite(cols).all() and torch.equal(block, cols)
    torch.testing.assert_close(cols, rows, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("path", cm.PATHS)
@pytest.mark.parametrize("layers", [1, 3])
def test_a_feature_major_input_trains_as_the_row_major_one(path, layers):
    # Training on the hash grid's feature-major layout (encode_for_mlp with a gradient): the same output and weight
    # gradients as the row-major input, and dL/dx the same values, returned feature-major by the hand-written paths
    # (the grid's backward reads it in contiguous streams).
    gen = torch.Generator().manual_seed(37)
    weights = list(FullyFusedMLP(32, 16, 64, 2, "ReLU", "None", generator=gen).weights)[-layers:]
    n_in = weights[0].shape[1]
    xt = torch.rand(n_in, 3001, generator=gen) - 0.5
    g = torch.randn(3001, 16, generator=gen)
    results = []
    for x0 in (xt.t().contiguous(), xt.t()):
        x = x0.clone().requires_grad_(True) if x0.is_contiguous() else x0.t().clone().t().requires_grad_(True)
        ws = [w.detach().clone().requires_grad_(True) for w in weights]
        out = cm.cpu_mlp(x, ws, "ReLU", "None", path=path)
        out.backward(g)
        results.append((x, out.detach(), x.grad, [w.grad for w in ws]))
    (xr, out_r, gx_r, gw_r), (xc, out_c, gx_c, gw_c) = results
    assert not xc.is_contiguous() and xc.t().is_contiguous()
    if path != "torch":
        assert gx_c.t().is_contiguous() and not gx_c.is_contiguous()
    assert gx_r.abs().sum() > 0
    torch.testing.assert_close(out_c, out_r, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_c, gx_r, rtol=1e-6, atol=1e-6)
    for a, b in zip(gw_c, gw_r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_inference_rows_are_padded_to_few_sizes():
    sizes = {cm.bucket_rows(n) for n in range(1, 300_000, 37)}
    for n in (1, 1023, 1024, 1025, 8191, 8193, 30_001, 131_072, 131_073, 2_000_003):
        b = cm.bucket_rows(n)
        assert n <= b <= max(n + 1023, n * 9 // 8), n
    assert len(sizes) < 120  # oneDNN makes one primitive per size: a bounded set, not one per sample count


@pytest.mark.parametrize("path", ["bf16", "fp32"])
def test_weight_gradients_without_an_input_gradient(path):
    ref = FullyFusedMLP(8, 3, 16, 3, generator=torch.Generator().manual_seed(3))
    x = torch.rand(120, 8, generator=torch.Generator().manual_seed(4))
    weights = [w.detach().clone().requires_grad_(True) for w in ref.weights]
    cm.cpu_mlp(x, weights, path=path).sum().backward()
    ref(x).sum().backward()
    assert x.grad is None
    for w, wr in zip(weights, ref.weights, strict=True):
        assert _rel(w.grad, wr.grad) <= TOL[path][1]


def test_mlp_forward_runs_the_chosen_path(monkeypatch):
    ref = FullyFusedMLP(32, 16, 64, 2, generator=torch.Generator().manual_seed(5))
    x = torch.rand(100, 32, generator=torch.Generator().manual_seed(6))
    monkeypatch.setenv(cm.ENV_VAR, "torch")
    assert torch.equal(fmlp.mlp_forward(x, list(ref.weights), "ReLU", "None", "cpu"), ref(x))  # the same ops
    monkeypatch.setenv(cm.ENV_VAR, "fp32")
    fast = FullyFusedMLP(32, 16, 64, 2, kernel_target="cpu")
    fast.load_state_dict(ref.state_dict())
    out = fast(x)
    assert type(out.grad_fn).__name__ == "CPUMLPFunctionBackward" and _rel(out, ref(x)) < 1e-5
    assert fmlp.cpu_mlp is cm.cpu_mlp and fmlp.CPUMLPFunction is cm.CPUMLPFunction  # re-exported


def test_cpu_mlp_refuses_an_unknown_path():
    with pytest.raises(ValueError, match="path must be one of bf16, fp32, torch"):
        cm.cpu_mlp(torch.zeros(4, 2), [torch.zeros(16, 2), torch.zeros(1, 16)], path="fp16")


# --- choosing by measuring -------------------------------------------------------------------------------------


class FakeTimer:
    """``time_once`` with fixed seconds per path; records the call order."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.calls = seconds, []

    def __call__(self, path: str) -> float:
        self.calls.append(path)
        return self.seconds[path]


def _no_timing(path: str) -> float:
    raise AssertionError(f"measured {path} although the choice should not need a measurement")


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(cm, "cpu_compute_dtype", lambda: torch.bfloat16)


@pytest.fixture
def avx2_cpu(monkeypatch):
    monkeypatch.setattr(cm, "cpu_compute_dtype", lambda: torch.float32)


def test_candidates_follow_the_bf16_probe(monkeypatch):
    monkeypatch.setattr(cm, "cpu_compute_dtype", lambda: torch.bfloat16)
    assert cm.candidate_paths() == ["bf16", "fp32", "torch"]
    monkeypatch.setattr(cm, "cpu_compute_dtype", lambda: torch.float32)
    assert cm.candidate_paths() == ["fp32", "torch"]


def test_measure_paths_alternates_and_takes_medians():
    seq = iter([5.0, 1.0, 9.0, 3.0, 2.0, 1.0, 4.0, 3.0])  # fp32 times 5 (warmup), 9, 2, 4; torch 1 (warmup), 3, 1, 3
    calls = []

    def time_once(path):
        calls.append(path)
        return next(seq)

    medians, share = cm.measure_paths(["fp32", "torch"], time_once, warmup=1, rounds=3)
    assert calls == ["fp32", "torch"] * 4
    assert medians == {"fp32": 4.0, "torch": 3.0} and share >= 0


def test_measure_paths_stops_at_the_budget_after_min_rounds():
    timer = FakeTimer({"fp32": 1.0, "torch": 1.0})
    cm.measure_paths(["fp32", "torch"], timer, warmup=1, rounds=7, min_rounds=3, budget_s=0.0)
    assert len(timer.calls) == 2 * (1 + 3)


@pytest.mark.parametrize(("seconds", "best"), [
    ({"bf16": 0.010, "fp32": 0.020, "torch": 0.030}, "bf16"),
    ({"bf16": 0.030, "fp32": 0.020, "torch": 0.010}, "torch"),
    ({"bf16": 0.030, "fp32": 0.015, "torch": 0.020}, "fp32"),
    ({"bf16": 0.020, "fp32": 0.020, "torch": 0.020}, "bf16"),  # a tie goes to the first candidate
])
def test_the_fastest_candidate_is_chosen(bf16_cpu, tmp_path, seconds, best):
    choice = cm.select_cpu_mlp_path(FakeTimer(seconds), tmp_path / "c.json")
    assert (choice.path, choice.how) == (best, "measured")
    assert choice.median_ms == {p: s * 1e3 for p, s in seconds.items()} and choice.cpu_share >= 0


def test_without_bf16_instructions_bf16_is_never_timed(avx2_cpu, tmp_path):
    timer = FakeTimer({"bf16": 0.001, "fp32": 0.05, "torch": 0.03})
    choice = cm.select_cpu_mlp_path(timer, tmp_path / "c.json")
    assert choice.path == "torch" and "bf16" not in timer.calls and set(choice.median_ms) == {"fp32", "torch"}


def test_cache_miss_then_hit(avx2_cpu, tmp_path):
    cache = tmp_path / "c.json"
    first = cm.select_cpu_mlp_path(FakeTimer({"fp32": 0.02, "torch": 0.01}), cache)
    assert (first.path, first.how) == ("torch", "measured")
    entries = json.loads(cache.read_text())["entries"]
    assert list(entries) == [cm.cache_key()] and entries[cm.cache_key()]["path"] == "torch"
    again = cm.select_cpu_mlp_path(_no_timing, cache)
    assert (again.path, again.how, again.median_ms) == ("torch", "cached", first.median_ms)
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary file left behind


def test_a_changed_key_measures_again_and_keeps_both_entries(avx2_cpu, monkeypatch, tmp_path):
    cache = tmp_path / "c.json"
    cm.select_cpu_mlp_path(FakeTimer({"fp32": 0.02, "torch": 0.01}), cache)
    old_key = cm.cache_key()
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # a torch upgrade (threads, CPU and ISA are in the key too)
    assert cm.cache_key() != old_key
    choice = cm.select_cpu_mlp_path(FakeTimer({"fp32": 0.01, "torch": 0.02}), cache)
    assert (choice.path, choice.how) == ("fp32", "measured")
    entries = json.loads(cache.read_text())["entries"]
    assert {k: e["path"] for k, e in entries.items()} == {old_key: "torch", cm.cache_key(): "fp32"}


def test_thread_count_is_part_of_the_key(monkeypatch):
    key = cm.cache_key()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 977)
    assert cm.cache_key() != key and "977" in cm.cache_key()


@pytest.mark.parametrize("content", [
    b"\x00\xff not json",
    b'{"entries": [1, 2]}',
    b"[]",
    b"",
    "KEY_PATH_FP16",  # an entry naming a path that does not exist
    "KEY_PATH_BF16",  # an entry naming bf16 on a CPU without bf16 instructions
    "KEY_NO_TIMES",
], ids=["binary", "entries-not-a-dict", "not-an-object", "empty", "unknown-path", "not-a-candidate", "no-medians"])
def test_a_corrupt_cache_is_ignored_and_rewritten(avx2_cpu, tmp_path, content):
    cache = tmp_path / "c.json"
    entry = {"KEY_PATH_FP16": {"path": "fp16", "median_ms": {}}, "KEY_PATH_BF16": {"path": "bf16", "median_ms": {}},
             "KEY_NO_TIMES": {"path": "fp32", "median_ms": "fast"}}.get(content)
    cache.write_bytes(json.dumps({"entries": {cm.cache_key(): entry}}).encode() if entry else content)
    choice = cm.select_cpu_mlp_path(FakeTimer({"fp32": 0.02, "torch": 0.01}), cache)
    assert (choice.path, choice.how) == ("torch", "measured")
    assert json.loads(cache.read_text())["entries"][cm.cache_key()]["path"] == "torch"
    assert cm.select_cpu_mlp_path(_no_timing, cache).how == "cached"


def test_a_measurement_on_a_busy_machine_is_used_but_not_cached(avx2_cpu, monkeypatch, tmp_path):
    monkeypatch.setattr(cm, "_MIN_CPU_SHARE", 100.0)  # no measurement reaches it: the machine always looks busy
    cache = tmp_path / "c.json"
    choice = cm.select_cpu_mlp_path(FakeTimer({"fp32": 0.02, "torch": 0.01}), cache)
    assert (choice.path, choice.how) == ("torch", "measured") and not cache.exists()
    monkeypatch.setattr(cm, "_MIN_CPU_SHARE", 0.0)
    assert cm.select_cpu_mlp_path(FakeTimer({"fp32": 0.01, "torch": 0.02}), cache).path == "fp32"
    assert cm.select_cpu_mlp_path(_no_timing, cache).as_dict()["cpu_share"] >= 0  # recorded with the entry


def test_an_unwritable_cache_only_means_no_caching(avx2_cpu, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = blocker / "c.json"  # its folder is a file: reading and writing both fail
    for _ in range(2):
        choice = cm.select_cpu_mlp_path(FakeTimer({"fp32": 0.02, "torch": 0.01}), cache)
        assert (choice.path, choice.how) == ("torch", "measured")


def test_the_cache_keeps_the_newest_entries(avx2_cpu, monkeypatch, tmp_path):
    cache = tmp_path / "c.json"
    old = {f"old-{i}": {"path": "fp32", "median_ms": {"fp32": 1.0}} for i in range(cm._MAX_ENTRIES + 5)}
    cache.write_text(json.dumps({"entries": old}))
    cm.select_cpu_mlp_path(FakeTimer({"fp32": 0.02, "torch": 0.01}), cache)
    entries = list(json.loads(cache.read_text())["entries"])
    assert len(entries) == cm._MAX_ENTRIES and entries[-1] == cm.cache_key() and entries[-2] == "old-20"


def test_the_default_cache_lives_in_the_kernel_cache_dir(avx2_cpu, monkeypatch, tmp_path):
    monkeypatch.setenv("NGP_CACHE_DIR", str(tmp_path / "kc"))
    first = cm.select_cpu_mlp_path(FakeTimer({"fp32": 0.01, "torch": 0.02}))
    assert first.how == "measured" and (tmp_path / "kc" / "cpu_mlp_path.json").is_file()
    assert cm.select_cpu_mlp_path(_no_timing).how == "cached"


@pytest.mark.parametrize(("value", "path"), [("bf16", "bf16"), ("fp32", "fp32"), ("torch", "torch"),
                                             (" FP32 ", "fp32")])
def test_the_environment_overrides_without_measuring(bf16_cpu, monkeypatch, tmp_path, value, path):
    monkeypatch.setenv(cm.ENV_VAR, value)
    choice = cm.select_cpu_mlp_path(_no_timing, tmp_path / "c.json")
    assert (choice.path, choice.how, choice.median_ms) == (path, "env", {})
    assert cm.cpu_mlp_path() == choice and not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("value", ["", "auto", "AUTO"])
def test_auto_measures(avx2_cpu, monkeypatch, tmp_path, value):
    monkeypatch.setenv(cm.ENV_VAR, value)
    assert cm.select_cpu_mlp_path(FakeTimer({"fp32": 0.01, "torch": 0.02}), tmp_path / "c.json").how == "measured"


def test_an_invalid_environment_value_is_a_config_error(monkeypatch):
    monkeypatch.setenv(cm.ENV_VAR, "fp16")
    with pytest.raises(ConfigError) as err:
        cm.cpu_mlp_path()
    assert str(err.value) == "NGP_CPU_MLP must be one of auto, bf16, fp32, torch, got 'fp16'"
    with pytest.raises(ConfigError):
        cm.cpu_mlp(torch.zeros(4, 2), [torch.zeros(16, 2), torch.zeros(1, 16)])


def test_the_process_chooses_once(avx2_cpu, monkeypatch, tmp_path):
    calls = []

    def select():
        calls.append(1)
        return cm.CPUMLPChoice("fp32", "measured", {"fp32": 1.0, "torch": 2.0})

    monkeypatch.setattr(cm, "select_cpu_mlp_path", select)
    assert cm.cpu_mlp_path().path == "fp32" and cm.cpu_mlp_path().how == "measured" and len(calls) == 1
    monkeypatch.setenv(cm.ENV_VAR, "torch")  # the environment is read on every call
    assert cm.cpu_mlp_path() == cm.CPUMLPChoice("torch", "env")


def test_the_real_micro_benchmark_runs_inside_no_grad_and_inference_mode(monkeypatch, tmp_path):
    monkeypatch.setitem(cm.BENCH_MLP, "batch", 256)  # the outcome is not asserted, only that it runs and caches
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    with torch.inference_mode():
        choice = cm.select_cpu_mlp_path(cache_file=tmp_path / "c.json")
    assert torch.equal(torch.rand(3), expected)  # a run's random stream does not depend on measuring
    assert choice.how == "measured" and choice.path in cm.candidate_paths()
    assert set(choice.median_ms) == set(cm.candidate_paths()) and all(v > 0 for v in choice.median_ms.values())
    with torch.no_grad():
        assert cm.select_cpu_mlp_path(cache_file=tmp_path / "c.json").how == "cached"


@pytest.mark.parametrize("dims", [2, 3])
def test_an_encoded_network_renders_the_same_from_the_feature_major_layout(dims, monkeypatch):
    # NetworkWithInputEncoding on the cpu kernels takes the hash grid's feature-major layout (encode_for_mlp):
    # without a gradient (mesh extraction, image renders) the outputs of the row layout bit for bit, and with one
    # (training) the outputs and gradients of the row layout.
    from ngp_cli.config import EncodingConfig, NetworkConfig
    from ngp_cli.nn import model as nn_model

    enc = EncodingConfig(n_levels=8, log2_hashmap_size=14)
    net = nn_model.NetworkWithInputEncoding(dims, 3, enc, NetworkConfig(), generator=torch.Generator().manual_seed(7),
                                            kernel_target="cpu")
    x = torch.rand(5003, dims, generator=torch.Generator().manual_seed(8))
    seen = []
    real = nn_model.encode_for_mlp
    monkeypatch.setattr(nn_model, "encode_for_mlp", lambda e, v: seen.append(real(e, v)) or seen[-1])
    with torch.no_grad():
        fast = net(x)
    monkeypatch.setattr(nn_model, "encode_for_mlp", lambda e, v: e(v))
    with torch.no_grad():
        rows = net(x)
    assert seen and seen[0].stride() == (1, x.shape[0])  # the feature-major layout was taken
    assert torch.equal(fast, rows)
    grads = []
    for take in (real, lambda e, v: e(v)):
        monkeypatch.setattr(nn_model, "encode_for_mlp", take)
        net.zero_grad(set_to_none=True)
        trained = net(x)
        assert trained.requires_grad
        torch.testing.assert_close(trained.detach(), rows, rtol=2e-2, atol=2e-2)
        trained.square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert grads[0][0].abs().sum() > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

"""fused_mlp.cu (the fully fused MLP) against the torch reference (ngp_cli.nn.mlp.FullyFusedMLP), on the CPU target
through the emulation header, and on the GPU under ``@pytest.mark.gpu``; plus the bf16 CPU path and the dispatch.

The reference gets the fp16-rounded input and weights the kernel sees, so what remains is the fp16 rounding of the
hidden activations (forward) and of the hidden gradients (backward): relative errors of a few 1e-4 per layer.
Inputs are fresh random numbers on every run: the seed is printed (``-s`` shows it) and can be pinned with
``NGP_TEST_SEED``.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ngp_cli.cuda import fused_mlp as fmlp
from ngp_cli.cuda.fused_mlp import fused_mlp, kernel_variant
from ngp_cli.nn.mlp import FullyFusedMLP

SEED = int(os.environ.get("NGP_TEST_SEED", random.randrange(2**31)))
print(f"test_fused_mlp seed: {SEED} (NGP_TEST_SEED={SEED} reproduces)")

N_IN, N_OUT = 19, 3  # padded to 32 and 16
N_ROWS = 200  # not a multiple of the 128-row padding
WIDTHS = (16, 32, 64, 128)
WIDE_IN, WIDE_OUT = 70, 20  # at width 16: two weight slabs (64 + 16) for the first layer, two column rounds at the end
# (activation, output_activation) pairs beyond ReLU/None, each one more compiled variant (at width 32).
ACTIVATION_CASES = [("ReLU", "Sigmoid"), ("Softplus", "Exponential"), ("Tanh", "None")]
# The variants shipped for the GPU compile check: every width for a hash-grid-sized input, and a wide input.
SHIPPED = [(w, 32, 16, "ReLU", "None") for w in WIDTHS] + [(64, 128, 16, "ReLU", "Sigmoid"), (128, 64, 16, "ReLU",
                                                                                                  "None")]


def _variants():
    out = [kernel_variant(w, N_IN, N_OUT) for w in WIDTHS]
    out += [kernel_variant(32, N_IN, N_OUT, a, o) for a, o in ACTIVATION_CASES]
    out.append(kernel_variant(16, WIDE_IN, WIDE_OUT))
    return out


@pytest.fixture(scope="module")
def compiled(host_cxx):
    """Compile every CPU variant the tests use up front, two at a time (skips without a host C++ compiler)."""
    from ngp_cli.cuda.runtime import load_module

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda v: load_module("fused_mlp.cu", "cpu", v.defines), _variants()))


def _gen(salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(SEED * 7919 + salt)


def _case(width: int, n_hidden: int, activation="ReLU", output_activation="None", n=N_ROWS, salt=0, device="cpu",
          n_in=N_IN, n_out=N_OUT):
    """A reference MLP holding fp16-representable weights, and an fp16-representable input."""
    g = _gen(salt)
    ref = FullyFusedMLP(n_in, n_out, width, n_hidden, activation, output_activation, generator=g)
    with torch.no_grad():
        for w in ref.weights:
            w.copy_(w.half().float())
    x = (torch.rand(n, n_in, generator=g) * 2 - 1).half().float()
    return ref.to(device), x.to(device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _r16(t):
    return t.half().double()


def _fp16_hidden(x, weights, activation):
    """The hidden layers as the kernel computes them, in float64 torch: fp16 operands, each activation rounded to
    fp16. Returns (the fp16 weights, [input, hidden activations...], [hidden pre-activations])."""
    from ngp_cli.nn.activations import activation_fn

    act = activation_fn(activation)
    ws = [_r16(w.detach()) for w in weights]
    hs, pres = [_r16(x)], []
    for w in ws[:-1]:
        pres.append(hs[-1] @ w.t())
        hs.append(_r16(act(pres[-1])))
    return ws, hs, pres


def _fp16_model(x, weights, activation, output_activation, grad_out, loss_scale):
    """The kernel's arithmetic in float64 torch: fp16 operands, hidden activations rounded to fp16 after the
    activation, the loss-scaled gradients rounded to fp16 after each layer. Returns (out, dx, [dW])."""
    from ngp_cli.nn.activations import activation_derivative, activation_fn

    out_act = activation_fn(output_activation)
    ws, hs, _ = _fp16_hidden(x, weights, activation)
    pre_v = (hs[-1] @ ws[-1].t()).requires_grad_(True)
    out = out_act(pre_v)
    out.backward(grad_out.double())
    dpre = pre_v.grad
    g = _r16(dpre * loss_scale)
    grads = [None] * len(ws)
    grads[-1] = dpre.t() @ hs[-1]
    g = _r16((g @ ws[-1]) * activation_derivative(activation, hs[-1]))
    for i in range(len(ws) - 2, 0, -1):
        grads[i] = g.t() @ hs[i] / loss_scale
        g = _r16((g @ ws[i]) * activation_derivative(activation, hs[i]))
    grads[0] = g.t() @ hs[0] / loss_scale
    dx = g @ ws[0] / loss_scale
    return out.detach(), dx, grads


def _without_kink_ties(x, ref, margin=1e-5):
    """The rows of ``x`` whose hidden pre-activations (fp16 operands, float64 sums, as :func:`_fp16_model`) all lie
    farther than ``margin`` from 0. At a pre-activation within rounding of 0 (6.4e-8 for one seed) the kernel's
    float32 sum and the model's float64 one may fall on either side of ReLU's kink, and that row's gradient differs
    by O(1): a tie, not a kernel error, so such rows (a pre-activation in about 10^5 lies within 1e-5) are left
    out."""
    _, _, pres = _fp16_hidden(x, list(ref.weights), ref.activation)
    keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for pre in pres:
        keep &= (pre.abs() > margin).all(dim=1)
    return x[keep]


def _check_training(ref, x, target, lanes=1, grad_scale=1.0, loss_scale=128.0):
    """Training forward + backward of the kernel against the fp16 model of its arithmetic (tight: 2e-3; observed
    1e-7..3e-5) and against the float32 torch reference (fp16 tolerances: 3e-3 forward; gradients 3e-2 for smooth
    activations, and only a sanity bound of 0.25 for ReLU: units near zero flip under the fp16 rounding of the hidden
    activations, which moves ReLU gradients of these random nets by up to 12% at width 16)."""
    grad_tol = 0.25 if ref.activation in ("ReLU", "LeakyReLU") else 3e-2
    n = x.shape[0]
    x = _without_kink_ties(x, ref)
    assert x.shape[0] >= n - n // 20  # ties are rare (a few rows at width 128): the test still covers the batch
    g = _gen(99)
    x_ref = x.clone().requires_grad_(True)
    out_ref = ref(x_ref)
    grad_out = (torch.randn(out_ref.shape, generator=g) * grad_scale).to(x.device)
    out_ref.backward(grad_out)
    out16, dx16, dw16 = _fp16_model(x, list(ref.weights), ref.activation, ref.output_activation, grad_out, loss_scale)

    weights = [w.detach().clone().requires_grad_(True) for w in ref.weights]
    x_k = x.clone().requires_grad_(True)
    out = fused_mlp(x_k, weights, ref.activation, ref.output_activation, target=target, lanes=lanes)
    assert out.shape == out_ref.shape and out.dtype == torch.float32
    out.backward(grad_out)
    msg = f"seed {SEED}, width {ref.n_neurons}, {ref.n_hidden_layers} hidden, {ref.activation}/{ref.output_activation}"
    assert _rel(out, out16) < 2e-3 and _rel(out, out_ref) < 3e-3, msg
    assert _rel(x_k.grad, dx16) < 2e-3 and _rel(x_k.grad, x_ref.grad) < grad_tol, msg
    for i, (w, w16, wr) in enumerate(zip(weights, dw16, ref.weights, strict=True)):
        assert torch.isfinite(w.grad).all()
        assert _rel(w.grad, w16) < 2e-3 and _rel(w.grad, wr.grad) < grad_tol, f"{msg}: matrix {i}"


# --- the CPU target ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_hidden", [1, 3])
@pytest.mark.parametrize("width", WIDTHS)
def test_inference_forward_matches_reference(compiled, width, n_hidden):
    ref, x = _case(width, n_hidden, salt=width + n_hidden)
    with torch.no_grad():
        out = fused_mlp(x, list(ref.weights), target="cpu")
        expected = ref(x)
    assert out.shape == (N_ROWS, N_OUT) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3 * float(expected.abs().max()),
                               msg=lambda s: f"seed {SEED}: {s}")


@pytest.mark.parametrize("n_hidden", [1, 2])
@pytest.mark.parametrize("width", WIDTHS)
def test_training_forward_and_backward_match_reference(compiled, width, n_hidden):
    ref, x = _case(width, n_hidden, salt=100 + width + n_hidden)
    _check_training(ref, x, "cpu")


@pytest.mark.parametrize("activation, output_activation", ACTIVATION_CASES)
def test_activations(compiled, activation, output_activation):
    ref, x = _case(32, 2, activation, output_activation, salt=200)
    with torch.no_grad():
        torch.testing.assert_close(fused_mlp(x, list(ref.weights), activation, output_activation, target="cpu"),
                                   ref(x), rtol=3e-3, atol=1e-3, msg=lambda s: f"seed {SEED}: {s}")
    _check_training(ref, x, "cpu")


def test_layers_wider_than_the_network(compiled):
    """Input and output wider than the hidden layers: k-chunked first layer, output and input-gradient layers done in
    several rounds of the block's columns."""
    ref, x = _case(16, 2, n=150, salt=250, n_in=WIDE_IN, n_out=WIDE_OUT)
    v = kernel_variant(16, WIDE_IN, WIDE_OUT)
    assert v.in_width > v.k_chunk and v.out_width > 16
    _check_training(ref, x, "cpu")


def test_full_warps_match_one_lane_per_warp(compiled):
    """blockDim.x == 32 exercises the lane-striding of the copies and epilogues; results are identical."""
    ref, x = _case(32, 2, n=130, salt=300)
    outs, grads = [], []
    for lanes in (1, 32):
        weights = [w.detach().clone().requires_grad_(True) for w in ref.weights]
        xk = x.clone().requires_grad_(True)
        out = fused_mlp(xk, weights, target="cpu", lanes=lanes)
        out.backward(torch.ones_like(out))
        outs.append(out.detach())
        grads.append([xk.grad] + [w.grad for w in weights])
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
    _check_training(ref, x, "cpu", lanes=32)


@pytest.mark.parametrize("width", [16, 64])
def test_every_output_element_is_written(compiled, width):
    """Outputs poisoned with NaN before the launch (padding rows and columns included) come back finite."""
    ref, x = _case(width, 2, n=256, salt=400 + width)
    v = kernel_variant(width, N_IN, N_OUT)
    x16 = torch.zeros(256, v.in_width, dtype=torch.float16)
    x16[:, :N_IN] = x
    first, hidden_w, last = fmlp._pad_weights(list(ref.weights), v)
    out = torch.full((256, v.out_width), float("nan"))
    hidden = torch.full((2, 256, width), float("nan"), dtype=torch.float16)  # 2 hidden layers
    fmlp._launch_forward(v, "cpu", 1, x16, first, hidden_w, last, out, hidden)
    assert torch.isfinite(out).all() and torch.isfinite(hidden).all()
    assert (out[:, N_OUT:] == 0).all()  # zero padding rows of the last matrix

    dl_dout = torch.zeros(256, v.out_width)
    dl_dout[:, :N_OUT] = torch.randn(256, N_OUT, generator=_gen(401))
    dl_dhidden = torch.full_like(hidden, float("nan"))
    dx = torch.full((256, v.in_width), float("nan"))
    wt = (first.t().contiguous(), hidden_w.transpose(1, 2).contiguous(), last.t().contiguous())
    fmlp._launch_backward(v, "cpu", 1, dl_dout.half(), *wt, hidden, dl_dhidden, dx)
    assert torch.isfinite(dl_dhidden).all() and torch.isfinite(dx).all()
    assert (dx[:, N_IN:] == 0).all()


def test_empty_and_single_row_batches(compiled):
    ref, _ = _case(16, 1, salt=500)
    for n in (0, 1):
        x = torch.rand(n, N_IN, generator=_gen(501)).half().float().requires_grad_(True)
        out = fused_mlp(x, list(ref.weights), target="cpu")
        assert out.shape == (n, N_OUT)
        out.sum().backward()
        assert x.grad.shape == (n, N_IN)


def test_loss_scaling_keeps_tiny_gradients(compiled):
    """Gradients ~1e-6 are subnormal in fp16 (step 6e-8); the loss scale lifts them into the normal range."""
    ref, x = _case(64, 2, salt=600)
    _check_training(ref, x, "cpu", grad_scale=1e-6)
    # Without the scale the same gradients lose most of their precision: the check above is not vacuous.
    weights = [w.detach().clone().requires_grad_(True) for w in ref.weights]
    x_ref = x.clone().requires_grad_(True)
    grad_out = torch.randn(N_ROWS, N_OUT, generator=_gen(99)) * 1e-6
    ref(x_ref).backward(grad_out)
    fused_mlp(x, weights, target="cpu", loss_scale=1.0).backward(grad_out)
    assert _rel(weights[0].grad, ref.weights[0].grad) > 3e-3


def test_overflow_zeroes_the_step_and_halves_the_scale_on_the_device(compiled):
    """x128 of these gradients overflows fp16's 65504: the step's MLP gradients come back as zeros, the LossScale
    halves, and once it is small enough the gradients are those of the fp16 model at that scale. No host read."""
    from ngp_cli.cuda.fused_mlp import LossScale

    ref, x = _case(16, 1, salt=700)
    grad_out = torch.randn(N_ROWS, N_OUT, generator=_gen(99)) * 1500.0
    scaler = LossScale("cpu")
    scales, zeroed = [], []
    for _ in range(12):
        weights = [w.detach().clone().requires_grad_(True) for w in ref.weights]
        x_k = x.clone().requires_grad_(True)
        used = float(scaler.scale)
        fused_mlp(x_k, weights, target="cpu", loss_scale=scaler).backward(grad_out)
        scales.append(used)
        zeroed.append(all(bool((w.grad == 0).all()) for w in weights) and bool((x_k.grad == 0).all()))
        if not zeroed[-1]:
            break
    assert zeroed[0] and not zeroed[-1], (scales, zeroed)
    assert scales == [128.0 / 2**i for i in range(len(scales))]  # halved once per overflowing step
    assert int(scaler.overflows) == len(scales) - 1
    _, dx16, dw16 = _fp16_model(x, list(ref.weights), "ReLU", "None", grad_out, scales[-1])
    assert _rel(x_k.grad, dx16) < 2e-3
    for w, w16 in zip(weights, dw16, strict=True):
        assert torch.isfinite(w.grad).all() and _rel(w.grad, w16) < 2e-3


def test_loss_scale_grows_back_after_clean_steps():
    from ngp_cli.cuda.fused_mlp import LossScale

    scaler = LossScale("cpu", initial=8.0)
    scaler.growth_interval = 3
    scaler.update(torch.tensor(True))
    assert float(scaler.scale) == 4.0
    for expected in (4.0, 4.0, 8.0, 8.0, 8.0, 8.0):  # doubles after 3 clean steps, never above the initial scale
        scaler.update(torch.tensor(False))
        assert float(scaler.scale) == expected


def test_non_finite_incoming_gradient_passes_through(compiled):
    """A diverged loss is not an overflow: its non-finite gradients reach the weights (the trainer stops on them)
    and the scale stays."""
    from ngp_cli.cuda.fused_mlp import LossScale

    ref, x = _case(16, 1, salt=701)
    weights = [w.detach().clone().requires_grad_(True) for w in ref.weights]
    scaler = LossScale("cpu")
    out = fused_mlp(x, weights, target="cpu", loss_scale=scaler)
    grad_out = torch.zeros_like(out)
    grad_out[3, 1] = float("nan")
    out.backward(grad_out)
    assert not torch.isfinite(weights[0].grad).all()
    assert float(scaler.scale) == 128.0 and int(scaler.overflows) == 0


# --- variants, errors, dispatch ----------------------------------------------------------------------------------

def test_variants_fit_the_default_shared_memory():
    for width in WIDTHS:
        for n_in in (1, 16, 32, 64, 128, 256):
            v = kernel_variant(width, n_in, 16)
            assert v.shared_bytes <= 48 * 1024 and 128 % v.rows_per_block == 0
    assert kernel_variant(64, 32, 3).n_iters == 8  # the common case keeps tcnn's 128-row blocks


def test_unsupported_configurations_raise():
    with pytest.raises(ValueError, match="Sine"):
        kernel_variant(64, 32, 3, "Sine")
    with pytest.raises(ValueError, match="n_neurons"):
        kernel_variant(48, 32, 3)
    w = [torch.zeros(16, 4), torch.zeros(3, 16)]
    with pytest.raises(ValueError, match="shape"):
        fused_mlp(torch.zeros(5, 3), w, target="cpu")


def test_cpu_path_matches_reference():
    """kernel_target="cpu" runs the hand-written torch path, bf16 on CPUs with bf16 instructions: bf16 (8-bit
    mantissa) tolerances. ReLU gradients are the loosest: the bf16 rounding of input and weights alone moves them by
    2-5% here (units near zero switch sides)."""
    for act, out_act in (("ReLU", "None"), ("Sigmoid", "Sigmoid"), ("Squareplus", "None")):
        tol = 0.15 if act == "ReLU" else 3e-2
        ref, x = _case(64, 2, act, out_act, n=300, salt=800)
        fast = FullyFusedMLP(N_IN, N_OUT, 64, 2, act, out_act, kernel_target="cpu")
        fast.load_state_dict(ref.state_dict())
        x_ref, x_fast = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out_ref, out_fast = ref(x_ref), fast(x_fast)
        assert out_fast.dtype == torch.float32
        grad_out = torch.randn(out_ref.shape, generator=_gen(801))
        out_ref.backward(grad_out)
        out_fast.backward(grad_out)
        assert _rel(out_fast, out_ref) < 1e-2
        assert _rel(x_fast.grad, x_ref.grad) < tol
        for w, wr in zip(fast.weights, ref.weights, strict=True):
            assert w.grad.dtype == torch.float32 and _rel(w.grad, wr.grad) < tol, f"seed {SEED}: {act}"


def test_kernel_target_validation_and_sine_fallback():
    from ngp_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="kernel_target"):
        FullyFusedMLP(4, 3, 16, 1, kernel_target="gpu")
    sine = FullyFusedMLP(4, 3, 16, 1, "Sine", kernel_target="cpu", generator=_gen(900))
    x = torch.rand(10, 4, generator=_gen(901))
    out = sine(x)
    sine.kernel_target = None
    assert torch.equal(out, sine(x))  # Sine runs the torch reference


# --- the GPU ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"])
def test_shipped_variants_compile_without_spills(nvcc, arch):
    """Spill budget: zero bytes for every shipped variant (ptxas: 80-130 registers, no local memory). sm_80 checks
    every shipped variant, the other architectures the smallest and the largest (time)."""
    from tests.cuda.nvcc import nvcc_compile_check

    cases = SHIPPED if arch == "sm_80" else [SHIPPED[0], SHIPPED[-1]]

    def check(case):
        width, n_in, n_out, act, out_act = case
        v = kernel_variant(width, n_in, n_out, act, out_act)
        return v, nvcc_compile_check("fused_mlp.cu", arch, v.defines)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for v, usage in pool.map(check, cases):
            assert set(usage) == {"fused_mlp_forward", "fused_mlp_backward"}
            for name, u in usage.items():
                assert u["spill_stores"] == 0 and u["spill_loads"] == 0, f"{arch} {v}: {name} spills {u}"


@pytest.mark.gpu
@pytest.mark.parametrize("n_hidden", [1, 3])
@pytest.mark.parametrize("width", WIDTHS)
def test_gpu_matches_reference(width, n_hidden):
    ref, x = _case(width, n_hidden, n=5000, salt=1000 + width, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(fused_mlp(x, list(ref.weights), target="cuda"), ref(x), rtol=2e-3,
                                   atol=2e-3 * float(ref(x).abs().max()), msg=lambda s: f"seed {SEED}: {s}")
    _check_training(ref, x, "cuda")


@pytest.mark.gpu
def test_gpu_kernel_target_trains_like_reference():
    ref, x = _case(64, 2, "ReLU", "Sigmoid", n=1 << 16, salt=1100, device="cuda")
    fast = FullyFusedMLP(N_IN, N_OUT, 64, 2, "ReLU", "Sigmoid", kernel_target="cuda").cuda()
    fast.load_state_dict(ref.state_dict())
    x_ref, x_fast = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    grad_out = torch.randn(x.shape[0], N_OUT, device="cuda") * 1e-5  # a mean loss over 2^16 rows
    ref(x_ref).backward(grad_out)
    fast(x_fast).backward(grad_out)
    for w, wr in zip(fast.weights, ref.weights, strict=True):
        assert _rel(w.grad, wr.grad) < 3e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_path_in_both_dtypes(dtype):
    ref, x = _case(32, 2, "Tanh", "Sigmoid", n=100, salt=850)
    weights = [w.detach().clone().requires_grad_(True) for w in ref.weights]
    x_ref, x_k = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref, out = ref(x_ref), fmlp.cpu_mlp(x_k, weights, "Tanh", "Sigmoid", dtype=dtype)
    grad_out = torch.randn(out.shape, generator=_gen(851))
    out_ref.backward(grad_out)
    out.backward(grad_out)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert _rel(out, out_ref) < tol and _rel(x_k.grad, x_ref.grad) < tol
    for w, wr in zip(weights, ref.weights, strict=True):
        assert _rel(w.grad, wr.grad) < tol

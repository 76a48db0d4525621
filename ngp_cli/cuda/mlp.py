"""The fully fused MLP kernel (``fused_mlp.cu``): launch bindings and the autograd Function around them.

Source: tiny-cuda-nn ``src/fully_fused_mlp.cu`` (``kernel_mlp_fused_forward`` / ``kernel_mlp_fused_backward``) and
paper §4 (Müller et al. 2022): one kernel evaluates every layer of a bias-free MLP for a block of batch rows whose
activations stay in shared memory; tensor cores through ``nvcuda::wmma`` with fp16 operands and fp32 accumulation.
The backward kernel produces dL/d(input) and every hidden layer's dL/d(pre-activation); the weight gradients are then
``grad^T @ activation`` products done by torch (cuBLAS on the GPU), as tcnn does with CUTLASS.

Precision (as tcnn): inputs, weights and the saved hidden activations/gradients are fp16 copies (the float32 master
weights stay in the module); the loss gradient is multiplied by :data:`LOSS_SCALE` before it enters fp16 and the
weight and input gradients are divided by it afterwards, so gradients far below fp16's normal range (6e-5) survive.
When the scaled gradients overflow fp16, the backward pass is redone once without scaling; if gradients are still
non-finite a :class:`RuntimeWarning` is issued and the non-finite values are returned (the trainer then stops on the
non-finite loss or parameters, as for any divergence).

Memory: torch allocates everything (padded copies of the input and weights, outputs, the saved activations); the
runtime passes the tensors to the kernel zero-copy.

On the ``cpu`` target, :func:`mlp_forward` does not run the emulated kernel but a hand-written torch path
(:class:`CPUMLPFunction`, in bf16 where the CPU has bf16 instructions). Forward + backward of a 2x64 ReLU MLP (32
inputs, 3 outputs) at batch 2^16 on a 2-core AMD EPYC with AVX-512-BF16, medians: this bf16 path 11.6 ms, bf16
autocast 12.0 ms, the float32 torch reference 32.8 ms, torch.compile of it 27.4 ms, fp16 torch matmuls ~420 ms, the
emulated fused kernel 289 ms. Fitting the astronaut photo (``image-cpu``, 300 steps) reached 41.64 dB with the bf16
MLP against 41.69 dB with float32. :func:`fused_mlp` with ``target="cpu"`` still runs the kernel itself through the
CPU emulation (the tests use it).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ngp_cli.nn.mlp import K_ACT, activation_fn

__all__ = [
    "ACTIVATION_CODES",
    "BATCH_GRANULARITY",
    "LOSS_SCALE",
    "CPUMLPFunction",
    "FusedMLPFunction",
    "KernelVariant",
    "cpu_compute_dtype",
    "cpu_mlp",
    "fused_mlp",
    "kernel_variant",
    "mlp_forward",
]

# Activation codes of fused_mlp.cu (ACTIVATION / OUTPUT_ACTIVATION). Sine is missing: its derivative cannot be
# expressed through the activation's output, the only thing the kernels keep (tcnn's FullyFusedMLP lacks it too).
ACTIVATION_CODES = {
    "None": 0, "ReLU": 1, "LeakyReLU": 2, "Exponential": 3, "Sigmoid": 5, "Squareplus": 6, "Softplus": 7, "Tanh": 8,
}
BATCH_GRANULARITY = 128  # the batch is padded to a multiple of this (every variant's rows per block divides it)
LOSS_SCALE = 128.0  # tcnn's default fp16 loss scale
_SHARED_LIMIT = 48 * 1024  # bytes of dynamic shared memory a kernel gets without an opt-in on every GPU
_WIDTHS = (16, 32, 64, 128)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


@dataclass(frozen=True)
class KernelVariant:
    """One compiled variant of ``fused_mlp.cu`` and its launch shape."""

    width: int
    in_width: int  # padded to a multiple of 16
    out_width: int  # padded to a multiple of 16
    n_iters: int  # 16-row tiles per block
    k_chunk: int  # k-extent of the staged weight slab
    activation: int
    output_activation: int

    @property
    def rows_per_block(self) -> int:
        return 16 * self.n_iters

    @property
    def shared_bytes(self) -> int:
        """Dynamic shared memory of a block (mirrors the layout comment of fused_mlp.cu)."""
        act_ld = max(self.in_width, self.width, self.out_width) + 8
        return 2 * (self.rows_per_block * act_ld + self.width * (self.k_chunk + 8))

    @property
    def defines(self) -> dict[str, int]:
        return {"WIDTH": self.width, "IN_WIDTH": self.in_width, "OUT_WIDTH": self.out_width,
                "N_ITERS": self.n_iters, "K_CHUNK": self.k_chunk, "ACTIVATION": self.activation,
                "OUTPUT_ACTIVATION": self.output_activation}


def _activation_code(name: str, key: str) -> int:
    try:
        return ACTIVATION_CODES[name]
    except KeyError:
        raise ValueError(f"fused MLP kernel: {key} {name!r} is not supported "
                         f"(supported: {', '.join(ACTIVATION_CODES)})") from None


def kernel_variant(width: int, n_input_dims: int, n_output_dims: int, activation: str = "ReLU",
                   output_activation: str = "None") -> KernelVariant:
    """The kernel variant for an MLP: padded widths, and the largest row block (then weight slab) whose shared
    memory stays within 48 KiB.

    Raises:
        ValueError: unsupported width or activation, or an input/output too wide for any variant.
    """
    if width not in _WIDTHS:
        raise ValueError(f"fused MLP kernel: n_neurons must be one of {_WIDTHS}, got {width}")
    act, out_act = _activation_code(activation, "activation"), _activation_code(output_activation, "output_activation")
    in_w, out_w = _round_up(n_input_dims, 16), _round_up(n_output_dims, 16)
    for n_iters in (8, 4, 2, 1):
        for k_chunk in (64, 32):
            v = KernelVariant(width, in_w, out_w, n_iters, k_chunk, act, out_act)
            if v.shared_bytes <= _SHARED_LIMIT:
                return v
    raise ValueError(f"fused MLP kernel: input width {n_input_dims} / output width {n_output_dims} need more than "
                     f"{_SHARED_LIMIT} bytes of shared memory")


def _module(variant: KernelVariant, target: str):
    from ngp_cli.cuda.runtime import load_module

    return load_module("fused_mlp.cu", target, variant.defines)


def _default_lanes(target: str) -> int:
    # The GPU needs full warps; the CPU emulation computes whole wmma tiles per fiber, so one fiber per warp.
    return 32 if target == "cuda" else 1


def _pad_weights(weights: Sequence[Tensor], v: KernelVariant) -> tuple[Tensor, Tensor | None, Tensor]:
    """fp16 copies of the (out, in) matrices, zero-padded to the kernel's widths."""
    w_first, w_last = weights[0], weights[-1]
    first = torch.zeros(v.width, v.in_width, dtype=torch.float16, device=w_first.device)
    first[:, : w_first.shape[1]] = w_first.detach()
    last = torch.zeros(v.out_width, v.width, dtype=torch.float16, device=w_last.device)
    last[: w_last.shape[0]] = w_last.detach()
    hidden = (torch.stack([w.detach() for w in weights[1:-1]]).to(torch.float16).contiguous()
              if len(weights) > 2 else None)
    return first, hidden, last


def _launch_shape(v: KernelVariant, n_rows: int, lanes: int):
    return (n_rows // v.rows_per_block, 1, 1), (lanes, v.width // 16, 1)


def _forward(x: Tensor, weights: Sequence[Tensor], v: KernelVariant, target: str, lanes: int, save: bool):
    """Runs ``fused_mlp_forward``; returns (padded fp16 input, padded fp16 weights, float32 output (n_pad,
    out_width), hidden activations (n_layers, n_pad, width) fp16 or None)."""
    n = x.shape[0]
    n_pad = max(_round_up(n, BATCH_GRANULARITY), BATCH_GRANULARITY)
    x16 = torch.zeros(n_pad, v.in_width, dtype=torch.float16, device=x.device)
    x16[:n, : x.shape[1]] = x.detach()
    first, hidden_w, last = _pad_weights(weights, v)
    n_hidden_matmuls = len(weights) - 2
    out = torch.empty(n_pad, v.out_width, dtype=torch.float32, device=x.device)
    hidden = (torch.empty(n_hidden_matmuls + 1, n_pad, v.width, dtype=torch.float16, device=x.device)
              if save else None)
    _launch_forward(v, target, lanes, x16, first, hidden_w, last, out, hidden)
    return x16, (first, hidden_w, last), out, hidden


def _launch_forward(v: KernelVariant, target: str, lanes: int, x16: Tensor, first: Tensor, hidden_w: Tensor | None,
                    last: Tensor, out: Tensor, hidden: Tensor | None) -> None:
    """``fused_mlp_forward`` on padded buffers (shapes: see fused_mlp.cu); ``hidden`` None for inference."""
    n_pad = x16.shape[0]
    n_hidden_matmuls = 0 if hidden_w is None else hidden_w.shape[0]
    grid, block = _launch_shape(v, n_pad, lanes)
    _module(v, target).launch(
        "fused_mlp_forward", grid=grid, block=block, shared_mem=v.shared_bytes, sync_threads=True,
        args=[x16, first, hidden_w, last, out, hidden, np.uint32(n_pad), np.uint32(n_hidden_matmuls)])


def _launch_backward(v: KernelVariant, target: str, lanes: int, dl_dout16: Tensor, wt_first: Tensor,
                     wt_hidden: Tensor | None, wt_last: Tensor, forward: Tensor, dl_dhidden: Tensor,
                     dx: Tensor | None) -> None:
    """``fused_mlp_backward`` on padded buffers (shapes: see fused_mlp.cu); ``dx`` None skips dL/d(input)."""
    n_pad = dl_dout16.shape[0]
    grid, block = _launch_shape(v, n_pad, lanes)
    _module(v, target).launch(
        "fused_mlp_backward", grid=grid, block=block, shared_mem=v.shared_bytes, sync_threads=True,
        args=[dl_dout16, wt_first, wt_hidden, wt_last, forward, dl_dhidden, dx, np.uint32(n_pad),
              np.uint32(forward.shape[0] - 1)])


def _activation_derivative(name: str, y: Tensor) -> Tensor:
    """d act / d x through the activation's output y (tcnn's activation_backward_output), for hidden and output
    activations alike."""
    if name == "None":
        return torch.ones_like(y)
    if name == "ReLU":
        return (y > 0).to(y.dtype)
    if name == "LeakyReLU":
        return torch.where(y > 0, 1.0, 0.01).to(y.dtype)
    if name == "Exponential":
        return y
    if name == "Sigmoid":
        return y * (1.0 - y)
    if name == "Squareplus":
        u = K_ACT * y
        return u * u / (u * u + 1.0)
    if name == "Softplus":
        return -torch.expm1(-K_ACT * y)
    if name == "Tanh":
        return 1.0 - y * y
    raise ValueError(f"fused MLP kernel: activation {name!r} is not supported")


class FusedMLPFunction(torch.autograd.Function):
    """Training forward + backward of the fused MLP kernel.

    ``apply(x, variant, target, lanes, loss_scale, output_activation, *weights)``: ``x`` (N, n_in) float tensor,
    ``weights`` the (out, in) matrices in evaluation order; returns (N, n_out) in the weights' dtype. Gradients flow
    to ``x`` and every weight matrix.
    """

    @staticmethod
    def forward(ctx, x, variant, target, lanes, loss_scale, output_activation, *weights):
        x16, padded, out, hidden = _forward(x, weights, variant, target, lanes, save=True)
        ctx.variant, ctx.target, ctx.lanes, ctx.loss_scale = variant, target, lanes, loss_scale
        ctx.output_activation = output_activation
        ctx.shapes = (x.shape, x.dtype, [w.shape for w in weights], weights[-1].dtype)
        ctx.save_for_backward(x16, out, hidden, *padded)
        n, n_out = x.shape[0], weights[-1].shape[0]
        return out[:n, :n_out].to(weights[-1].dtype).contiguous()

    @staticmethod
    def backward(ctx, grad_out):
        x16, out, hidden, first, hidden_w, last = ctx.saved_tensors
        v: KernelVariant = ctx.variant
        x_shape, x_dtype, w_shapes, w_dtype = ctx.shapes
        n, n_in = x_shape
        n_out = w_shapes[-1][0]
        n_pad = out.shape[0]

        # dL/d(pre output activation), float32, padding rows/columns zero.
        dpre = torch.zeros(n_pad, v.out_width, dtype=torch.float32, device=out.device)
        dpre[:n, :n_out] = grad_out.float() * _activation_derivative(ctx.output_activation,
                                                                              out[:n, :n_out])
        wt_first = first.t().contiguous()
        wt_hidden = hidden_w.transpose(1, 2).contiguous() if hidden_w is not None else None
        wt_last = last.t().contiguous()
        need_dx = ctx.needs_input_grad[0]

        scale = ctx.loss_scale
        for attempt in range(2):
            dl_dhidden, dx = _backward(dpre, scale, wt_first, wt_hidden, wt_last, hidden, v, ctx.target, ctx.lanes,
                                       need_dx)
            grads = _weight_grads(dpre, dl_dhidden, hidden, x16, n, n_in, n_out, 1.0 / scale)
            finite = bool(torch.stack([g.sum() for g in grads]).isfinite().all())
            if finite or attempt == 1 or scale == 1.0 or not bool(grad_out.isfinite().all()):
                break
            scale = 1.0  # the scaled gradients overflowed fp16: redo without scaling
        if not finite:
            warnings.warn("FusedMLPFunction: non-finite MLP gradients (fp16 overflow or non-finite loss gradient)",
                          RuntimeWarning, stacklevel=2)
        dx_out = dx[:n, :n_in].mul(1.0 / scale).to(x_dtype) if need_dx else None
        return (dx_out, None, None, None, None, None, *(g.to(w_dtype) for g in grads))


def _backward(dpre, scale, wt_first, wt_hidden, wt_last, hidden, v, target, lanes, need_dx):
    dl_dout16 = (dpre * scale).to(torch.float16)
    dl_dhidden = torch.empty_like(hidden)
    dx = torch.empty(dpre.shape[0], v.in_width, dtype=torch.float32, device=dpre.device) if need_dx else None
    _launch_backward(v, target, lanes, dl_dout16, wt_first, wt_hidden, wt_last, hidden, dl_dhidden, dx)
    return dl_dhidden, dx


def _weight_grads(dpre, dl_dhidden, hidden, x16, n, n_in, n_out, inv_scale) -> list[Tensor]:
    """Unscaled float32 weight gradients ``dL/dW = g^T @ a`` over the n real rows, in evaluation order."""
    n_layers = hidden.shape[0]
    grads = [_mm_f32(dl_dhidden[0, :n].t(), x16[:n, :n_in])]
    for j in range(1, n_layers):
        grads.append(_mm_f32(dl_dhidden[j, :n].t(), hidden[j - 1, :n]))
    grads = [g.mul_(inv_scale) for g in grads]
    grads.append(torch.mm(dpre[:n, :n_out].t(), hidden[n_layers - 1, :n].float()))  # dpre is unscaled
    return grads


def _mm_f32(a: Tensor, b: Tensor) -> Tensor:
    """float32 ``a @ b`` of fp16 matrices: cuBLAS with fp32 output on the GPU, float32 copies elsewhere."""
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch < 2.8
            pass
    return torch.mm(a.float(), b.float())


def fused_mlp(x: Tensor, weights: Sequence[Tensor], activation: str = "ReLU", output_activation: str = "None", *,
              target: str, loss_scale: float = LOSS_SCALE, lanes: int | None = None) -> Tensor:
    """Evaluates a tcnn FullyFusedMLP with the fused kernel; differentiable when grad is enabled.

    Args:
        x: (N, n_in) floating tensor on the target's device (N >= 0; padded internally to a multiple of 128).
        weights: n_hidden_layers + 1 (out, in) matrices as :class:`ngp_cli.nn.mlp.FullyFusedMLP` holds them:
            (width, n_in), (width, width)..., (n_out, width); width one of 16, 32, 64, 128.
        activation, output_activation: tcnn names from :data:`ACTIVATION_CODES`.
        target: "cuda" (CuPy, the GPU) or "cpu" (the kernel through the CPU emulation: slow, for testing).
        loss_scale: fp16 loss scale of the backward pass.
        lanes: threads per warp in the launch (default 32 on the GPU, 1 on the CPU emulation).

    Returns:
        (N, n_out) in the last weight's dtype. Without grad (inference), no activations are saved.

    Raises:
        ValueError: bad shapes, unsupported width/activation.
        KernelCompileError / RuntimeError: from the runtime.
    """
    if len(weights) < 2:
        raise ValueError("fused_mlp: needs at least 2 weight matrices (n_hidden_layers >= 1)")
    width = weights[0].shape[0]
    if x.dim() != 2 or x.shape[1] != weights[0].shape[1]:
        raise ValueError(f"fused_mlp: x must have shape (N, {weights[0].shape[1]}), got {tuple(x.shape)}")
    for i, w in enumerate(weights[1:-1], 1):
        if tuple(w.shape) != (width, width):
            raise ValueError(f"fused_mlp: hidden matrix {i} must be ({width}, {width}), got {tuple(w.shape)}")
    if weights[-1].shape[1] != width:
        raise ValueError(f"fused_mlp: last matrix must have {width} columns, got {tuple(weights[-1].shape)}")
    if x.shape[0] >= 2**31:
        raise ValueError("fused_mlp: more than 2**31 - 1 rows")
    v = kernel_variant(width, x.shape[1], weights[-1].shape[0], activation, output_activation)
    lanes = _default_lanes(target) if lanes is None else lanes
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights))
    if needs_grad:
        return FusedMLPFunction.apply(x, v, target, lanes, loss_scale, output_activation, *weights)
    _, _, out, _ = _forward(x, weights, v, target, lanes, save=False)
    return out[: x.shape[0], : weights[-1].shape[0]].to(weights[-1].dtype).contiguous()


# --- the CPU path ------------------------------------------------------------------------------------------------

# In-place versions of the reference activations, where torch has them (the CPU path owns its intermediates).
_IN_PLACE_ACTS = {
    "ReLU": torch.relu_,
    "LeakyReLU": lambda h: torch.nn.functional.leaky_relu_(h, 0.01),
    "Exponential": torch.exp_,
    "Sigmoid": torch.sigmoid_,
    "Tanh": torch.tanh_,
}


class CPUMLPFunction(torch.autograd.Function):
    """The MLP as a hand-written forward/backward in ``dtype`` matmuls: bfloat16 (float32 accumulation in oneDNN) on
    CPUs with bf16 instructions (AVX-512-BF16, AMX), float32 elsewhere (see :func:`cpu_compute_dtype`).

    Same structure as the kernel: hidden activations saved after the activation, whose derivative comes from them;
    weight gradients ``g^T @ a`` (rounded to ``dtype``, then returned as float32); no loss scaling (bf16 has float32's
    range). ``apply(x, activation, dtype, *weights)`` returns the (N, n_out) float32 output *before* the output
    activation.
    """

    @staticmethod
    def forward(ctx, x, activation, dtype, *weights):
        act = _IN_PLACE_ACTS.get(activation) or activation_fn(activation)
        wl = [w.detach().to(dtype) for w in weights]
        h = x.detach().to(dtype)
        saved = [h]
        for w in wl[:-1]:
            h = act(torch.mm(h, w.t()))
            saved.append(h)
        ctx.activation = activation
        ctx.dtypes = (x.dtype, [w.dtype for w in weights])
        ctx.save_for_backward(*saved, *wl)
        return torch.mm(h, wl[-1].t()).float()

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        n = len(saved) // 2
        acts, wl = saved[:n], saved[n:]
        g = grad_out.to(wl[0].dtype).contiguous()
        grads: list[Tensor | None] = [None] * len(wl)
        for i in range(len(wl) - 1, -1, -1):
            grads[i] = torch.mm(g.t(), acts[i])
            if i == 0 and not ctx.needs_input_grad[0]:
                break
            g = torch.mm(g, wl[i])
            if i > 0:
                if ctx.activation == "ReLU":
                    g = torch.ops.aten.threshold_backward(g, acts[i], 0)
                elif ctx.activation != "None":
                    g = g * _activation_derivative(ctx.activation, acts[i].float()).to(g.dtype)
        x_dtype, w_dtypes = ctx.dtypes
        dx = g.to(x_dtype) if ctx.needs_input_grad[0] else None
        return (dx, None, None, *(gr.to(dt) for gr, dt in zip(grads, w_dtypes, strict=True)))


@functools.lru_cache(maxsize=1)
def cpu_compute_dtype() -> torch.dtype:
    """bfloat16 when the CPU has bf16 matmul instructions (AVX-512-BF16 or AMX), else float32 (emulated bf16 would be
    slower than float32)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        fast = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    except Exception:  # a probe that fails means no fast path
        fast = False
    return torch.bfloat16 if fast else torch.float32


def cpu_mlp(x: Tensor, weights: Sequence[Tensor], activation: str = "ReLU", output_activation: str = "None",
            dtype: torch.dtype | None = None) -> Tensor:
    """The CPU path (:class:`CPUMLPFunction`, in :func:`cpu_compute_dtype` unless ``dtype`` is given) plus the output
    activation in float32 torch autograd. Activations: those of :data:`ACTIVATION_CODES`."""
    out = CPUMLPFunction.apply(x, activation, dtype or cpu_compute_dtype(), *weights)
    return activation_fn(output_activation)(out).to(weights[-1].dtype)


def mlp_forward(x: Tensor, weights: Sequence[Tensor], activation: str, output_activation: str, target: str) -> Tensor:
    """The fastest implementation for ``target``: "cuda" the fused kernel, "cpu" :func:`cpu_mlp`."""
    if target == "cuda":
        return fused_mlp(x, weights, activation, output_activation, target="cuda")
    if target == "cpu":
        return cpu_mlp(x, weights, activation, output_activation)
    raise ValueError(f"mlp_forward: target must be 'cuda' or 'cpu', got {target!r}")

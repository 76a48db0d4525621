"""The fully fused MLP kernel (``fused_mlp.cu``): launch bindings and the autograd Function around them.

Source: tiny-cuda-nn ``src/fully_fused_mlp.cu`` (``kernel_mlp_fused_forward`` / ``kernel_mlp_fused_backward``) and
paper §4 (Müller et al. 2022): one kernel evaluates every layer of a bias-free MLP for a block of batch rows whose
activations stay in shared memory; tensor cores through ``nvcuda::wmma`` with fp16 operands and fp32 accumulation.
The backward kernel produces dL/d(input) and every hidden layer's dL/d(pre-activation); the weight gradients are then
``grad^T @ activation`` products done by torch (cuBLAS on the GPU), as tcnn does with CUTLASS.

Precision (as tcnn): inputs, weights and the saved hidden activations/gradients are fp16 copies (the float32 master
weights stay in the module); the loss gradient is multiplied by a loss scale (:data:`LOSS_SCALE` to start with)
before it enters fp16 and the weight and input gradients are divided by it afterwards, so gradients far below fp16's
normal range (6e-5) survive. The backward pass never waits for the device: a :class:`LossScale` keeps the scale and an
overflow flag in device memory. When the scaled gradients overflow fp16 (non-finite while the incoming gradient is
finite), that step's MLP gradients are returned as zeros (the step is skipped for the MLP) and the scale is halved for
the next step; after :attr:`LossScale.growth_interval` clean steps it doubles again, up to :data:`LOSS_SCALE`. A
non-finite incoming gradient (a diverged loss) passes through as it is, for the trainer to stop on.

Memory: torch allocates everything (padded copies of the input and weights, outputs, the saved activations); the
runtime passes the tensors to the kernel zero-copy.

On the ``cpu`` target, :func:`mlp_forward` does not run the emulated kernel but the fastest of three torch paths
on this CPU (:mod:`ngp_cli.cuda.cpu_mlp`, re-exported here: :class:`CPUMLPFunction` in bf16 where the CPU has bf16
instructions, the same in float32, or plain torch autograd), chosen by a micro-benchmark cached per CPU model, ISA,
torch version and thread count; ``NGP_CPU_MLP`` overrides it. Forward + backward of a 2x64 ReLU MLP (32 inputs, 3
outputs) at batch 2^16 on a 2-core AMD EPYC with AVX-512-BF16, medians: the bf16 path 11.6 ms, bf16 autocast
12.0 ms, the float32 torch reference 32.8 ms, torch.compile of it 27.4 ms, fp16 torch matmuls ~420 ms, the emulated
fused kernel 289 ms. On a Zen 3 without bf16 the first float32 version of the hand-written path lost to torch
autograd (51.1 against 36.7 ms, 16 outputs), hence the measuring. Fitting the astronaut photo (``image-cpu``, 300
steps) reached 41.64 dB with the bf16 MLP against 41.69 dB with float32. :func:`fused_mlp` with ``target="cpu"``
still runs the kernel itself through the CPU emulation (the tests use it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ngp_cli.cuda.cpu_mlp import CPUMLPFunction, cpu_compute_dtype, cpu_mlp
from ngp_cli.nn.activations import ACTIVATION_CODES, activation_derivative

__all__ = [
    "BATCH_GRANULARITY",
    "LOSS_SCALE",
    "CPUMLPFunction",
    "FusedMLPFunction",
    "KernelVariant",
    "LossScale",
    "cpu_compute_dtype",
    "cpu_mlp",
    "fused_mlp",
    "kernel_variant",
    "mlp_forward",
]

BATCH_GRANULARITY = 128  # the batch is padded to a multiple of this (every variant's rows per block divides it)
LOSS_SCALE = 128.0  # tcnn's default fp16 loss scale
_SHARED_LIMIT = 48 * 1024  # bytes of dynamic shared memory a kernel gets without an opt-in on every GPU
_WIDTHS = (16, 32, 64, 128)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


class LossScale:
    """The fp16 loss scale of the fused MLP's backward pass, kept in device memory so that no step waits for the device
    to learn whether its gradients overflowed (tcnn checks its fp16 gradients on the device as well; the scale follows
    PyTorch's ``GradScaler`` rule: halve on overflow, double after ``growth_interval`` clean steps).

    Attributes:
        scale: 0-dim float32 tensor on the MLP's device, the scale of the next backward pass (starts at ``initial``,
            never above it).
        clean_steps: 0-dim int64 tensor, backward passes since the last overflow.
        overflows: 0-dim int64 tensor, how many backward passes overflowed so far (for logging; reading it syncs).
    """

    growth_interval = 1000

    def __init__(self, device: torch.device | str, initial: float = LOSS_SCALE) -> None:
        self.initial = float(initial)
        self.scale = torch.full((), self.initial, dtype=torch.float32, device=device)
        self.clean_steps = torch.zeros((), dtype=torch.int64, device=device)
        self.overflows = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, overflow: Tensor) -> None:
        """Account one backward pass; ``overflow`` a 0-dim bool tensor. Device ops only."""
        self.overflows.add_(overflow.long())
        self.clean_steps.copy_(torch.where(overflow, 0, self.clean_steps + 1))
        grow = self.clean_steps >= self.growth_interval
        self.scale.copy_(torch.where(overflow, self.scale * 0.5,
                                     torch.where(grow, (self.scale * 2.0).clamp_max(self.initial), self.scale)))
        self.clean_steps.copy_(torch.where(grow, 0, self.clean_steps))


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


class FusedMLPFunction(torch.autograd.Function):
    """Training forward + backward of the fused MLP kernel.

    ``apply(x, variant, target, lanes, loss_scale, output_activation, *weights)``: ``x`` (N, n_in) float tensor,
    ``loss_scale`` a float or a :class:`LossScale`, ``weights`` the (out, in) matrices in evaluation order; returns
    (N, n_out) in the weights' dtype. Gradients flow to ``x`` and every weight matrix; the backward pass makes no host
    synchronisation (overflow handling: see the module docstring).
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
        dpre[:n, :n_out] = grad_out.float() * activation_derivative(ctx.output_activation,
                                                                              out[:n, :n_out])
        wt_first = first.t().contiguous()
        wt_hidden = hidden_w.transpose(1, 2).contiguous() if hidden_w is not None else None
        wt_last = last.t().contiguous()
        need_dx = ctx.needs_input_grad[0]

        loss_scale: LossScale | None = ctx.loss_scale if isinstance(ctx.loss_scale, LossScale) else None
        scale = loss_scale.scale if loss_scale is not None else ctx.loss_scale
        dl_dhidden, dx = _backward(dpre, scale, wt_first, wt_hidden, wt_last, hidden, v, ctx.target, ctx.lanes, need_dx)
        grads = _weight_grads(dpre, dl_dhidden, hidden, x16, n, n_in, n_out, 1.0 / scale)
        dx_out = dx[:n, :n_in].mul(1.0 / scale) if need_dx else None
        # Overflow: the fp16 gradients went non-finite although the incoming gradient is finite. Checked on the device
        # (no host synchronisation): the step's MLP gradients become zeros and the scale drops for the next step.
        results = grads + ([dx_out] if need_dx else [])
        finite_out = torch.isfinite(dpre.sum())
        overflow = ~torch.isfinite(torch.stack([g.sum() for g in results]).sum()) & finite_out
        results = [torch.where(overflow, 0.0, g) for g in results]
        if loss_scale is not None:
            loss_scale.update(overflow)
        grads = results[: len(grads)]
        dx_out = results[-1].to(x_dtype) if need_dx else None
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
              target: str, loss_scale: float | LossScale = LOSS_SCALE, lanes: int | None = None) -> Tensor:
    """Evaluates a tcnn FullyFusedMLP with the fused kernel; differentiable when grad is enabled.

    Args:
        x: (N, n_in) floating tensor on the target's device (N >= 0; padded internally to a multiple of 128).
        weights: n_hidden_layers + 1 (out, in) matrices as :class:`ngp_cli.nn.mlp.FullyFusedMLP` holds them:
            (width, n_in), (width, width)..., (n_out, width); width one of 16, 32, 64, 128.
        activation, output_activation: tcnn names from :data:`ngp_cli.nn.activations.ACTIVATION_CODES`.
        target: "cuda" (CuPy, the GPU) or "cpu" (the kernel through the CPU emulation: slow, for testing).
        loss_scale: fp16 loss scale of the backward pass: a fixed number, or a :class:`LossScale` that the backward
            pass adjusts on the device (halved after an overflow, whose step then gets zero MLP gradients).
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


def mlp_forward(x: Tensor, weights: Sequence[Tensor], activation: str, output_activation: str, target: str,
                loss_scale: float | LossScale | None = None) -> Tensor:
    """The fastest implementation for ``target``: "cuda" the fused kernel (with ``loss_scale``; None: a fixed
    :data:`LOSS_SCALE`), "cpu"
    :func:`~ngp_cli.cuda.cpu_mlp.cpu_mlp` (the path measured fastest on this CPU,
    :func:`ngp_cli.cuda.cpu_mlp.cpu_mlp_path`). Raises ConfigError for an invalid ``NGP_CPU_MLP`` (cpu), ValueError
    for another target."""
    if target == "cuda":
        return fused_mlp(x, weights, activation, output_activation, target="cuda",
                         loss_scale=LOSS_SCALE if loss_scale is None else loss_scale)
    if target == "cpu":
        return cpu_mlp(x, weights, activation, output_activation)
    raise ValueError(f"mlp_forward: target must be 'cuda' or 'cpu', got {target!r}")

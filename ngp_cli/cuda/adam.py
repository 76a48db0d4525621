"""Launch of the ``adam_step`` kernel (``adam.cu``); the optimizer around it is :class:`ngp_cli.nn.optim.Adam`."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ngp_cli.cuda.runtime import load_module

_BLOCK = 256
# Elements per thread on the CPU target: a contiguous run the compiler vectorises (1 on the GPU).
_CPU_CHUNK = 1024


def adam_step(weights: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, steps: Tensor, correction: Tensor,
              *, lr: float, beta1: float, beta2: float, eps: float, l2_reg: float, skip_zero_grad: bool,
              target: str, inv_loss_scale: float = 1.0) -> None:
    """One tcnn Adam step over every element of ``weights``, in place (semantics: :mod:`ngp_cli.nn.optim`).

    Args:
        weights, grad, exp_avg, exp_avg_sq: contiguous float32 tensors of one shape on the target's device.
        steps: int32 tensor of that shape, each element's step count; or a 0-dim int32 CPU tensor, the one count of
            every element (dense steps only: ``skip_zero_grad`` False). Incremented in place either way.
        correction: float32 table from :func:`ngp_cli.nn.optim.bias_correction_table`, longer than any step count.
        target: "cpu" or "cuda".

    Raises:
        ValueError: mismatched shapes, a shared count with ``skip_zero_grad``, or more than 2**32 - 1 elements.
    """
    n = weights.numel()
    uniform = steps.dim() == 0
    if uniform and skip_zero_grad:
        raise ValueError("adam_step: skipped entries need per-element step counts, got one shared count")
    for name, t in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)) + (() if uniform else
                                                                                        (("steps", steps),)):
        if t.shape != weights.shape:
            raise ValueError(f"adam_step: {name} has shape {tuple(t.shape)}, weights {tuple(weights.shape)}")
    if n >= 2**32:
        raise ValueError(f"adam_step: {n} elements exceed the kernel's 32-bit index")
    if n == 0:
        return
    uniform_step = 0
    if uniform:
        uniform_step = int(steps) + 1
        steps.fill_(uniform_step)
        steps = weights.new_empty(1, dtype=steps.dtype)  # never read: the kernel gets the count instead
    grad = grad.contiguous()
    chunk = _CPU_CHUNK if target == "cpu" else 1
    mod = load_module("adam.cu", target, {"ADAM_CHUNK": chunk})
    per_block = _BLOCK * chunk
    mod.launch("adam_step", grid=((n + per_block - 1) // per_block, 1, 1), block=(_BLOCK, 1, 1), args=[
        np.uint32(n), np.float32(lr), np.float32(beta1), np.float32(beta2), np.float32(eps), np.float32(l2_reg),
        np.float32(inv_loss_scale), np.uint32(1 if skip_zero_grad else 0), np.uint32(correction.numel() - 1),
        np.uint32(uniform_step), correction, weights, grad, exp_avg, exp_avg_sq, steps])


__all__ = ["adam_step"]

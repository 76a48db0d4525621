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
        steps: int32 tensor of that shape, each element's step count.
        correction: float32 table from :func:`ngp_cli.nn.optim.bias_correction_table`, longer than any step count.
        target: "cpu" or "cuda".

    Raises:
        ValueError: mismatched shapes, or more than 2**32 - 1 elements.
    """
    n = weights.numel()
    for name, t in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("steps", steps)):
        if t.shape != weights.shape:
            raise ValueError(f"adam_step: {name} has shape {tuple(t.shape)}, weights {tuple(weights.shape)}")
    if n >= 2**32:
        raise ValueError(f"adam_step: {n} elements exceed the kernel's 32-bit index")
    if n == 0:
        return
    grad = grad.contiguous()
    chunk = _CPU_CHUNK if target == "cpu" else 1
    mod = load_module("adam.cu", target, {"ADAM_CHUNK": chunk})
    per_block = _BLOCK * chunk
    mod.launch("adam_step", grid=((n + per_block - 1) // per_block, 1, 1), block=(_BLOCK, 1, 1), args=[
        np.uint32(n), np.float32(lr), np.float32(beta1), np.float32(beta2), np.float32(eps), np.float32(l2_reg),
        np.float32(inv_loss_scale), np.uint32(1 if skip_zero_grad else 0), np.uint32(correction.numel() - 1),
        correction, weights, grad, exp_avg, exp_avg_sq, steps])


__all__ = ["adam_step"]

"""Launch of the ``adam_step`` kernel (``adam.cu``) over many tensors at once; the optimizer around it is
:class:`ngp_cli.nn.optim.Adam`.

Source: tiny-cuda-nn ``include/tiny-cuda-nn/optimizers/adam.h`` for the per-element update; the one launch over every
tensor of a step follows PyTorch's ``multi_tensor_apply`` (a host-built table of per-tensor records the kernel walks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ngp_cli.cuda.runtime import load_module

_BLOCK = 256
# Elements per thread on the CPU target: a contiguous run the compiler vectorises (1 on the GPU).
_CPU_CHUNK = 1024

# adam.cu's struct AdamTensor, field for field (pointers as uint64); the kernel static_asserts the same size.
_RECORD = np.dtype([("weights", np.uint64), ("gradients", np.uint64), ("first_moments", np.uint64),
                    ("second_moments", np.uint64), ("param_steps", np.uint64), ("correction", np.uint64),
                    ("start", np.uint64), ("n", np.uint64), ("uniform_step", np.uint32), ("max_step", np.uint32),
                    ("skip_zero_grad", np.uint32), ("learning_rate", np.float32), ("beta1", np.float32),
                    ("beta2", np.float32), ("epsilon", np.float32), ("l2_reg", np.float32)], align=True)
assert _RECORD.itemsize == 96


class AdamTensor(NamedTuple):
    """One tensor's share of :func:`multi_tensor_adam_step` (semantics: :mod:`ngp_cli.nn.optim`).

    ``weights``, ``grad``, ``exp_avg``, ``exp_avg_sq``: float32 tensors of one shape on the target's device
    (``grad`` may be non-contiguous; the others are updated in place and must be contiguous).
    ``param_steps``: int32 tensor of that shape, each element's step count (incremented in place where the element is
    updated); or None for a dense tensor whose every element reaches ``uniform_step`` with this step (``uniform_step``
    >= 1, ``skip_zero_grad`` False; the caller keeps the count). ``uniform_step`` is ignored with ``param_steps``.
    ``correction``: float32 table from :func:`ngp_cli.nn.optim.bias_correction_table` on the same device, longer than
    any step count this step reaches.
    """

    weights: Tensor
    grad: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    param_steps: Tensor | None
    uniform_step: int
    correction: Tensor
    lr: float
    beta1: float
    beta2: float
    eps: float
    l2_reg: float
    skip_zero_grad: bool


def to_device_async(host: Tensor, device: torch.device) -> Tensor:
    """``host`` (a CPU tensor) on ``device`` without waiting for the device: staged through pinned memory and copied
    with ``non_blocking=True`` on cuda (the caching host allocator keeps the pinned block until the copy is done)."""
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def _check(k: int, t: AdamTensor, device: torch.device) -> None:
    w = t.weights
    arrays = [("weights", w), ("grad", t.grad), ("exp_avg", t.exp_avg), ("exp_avg_sq", t.exp_avg_sq)]
    for name, a in arrays:
        if a.dtype != torch.float32 or a.device != device or a.shape != w.shape:
            raise ValueError(f"multi_tensor_adam_step: tensor {k}: {name} is {a.dtype} {tuple(a.shape)} on "
                             f"{a.device}, expected float32 {tuple(w.shape)} on {device}")
    for name, a in arrays[:1] + arrays[2:]:
        if not a.is_contiguous():
            raise ValueError(f"multi_tensor_adam_step: tensor {k}: {name} is not contiguous")
    if t.param_steps is None:
        if t.skip_zero_grad or t.uniform_step < 1:
            raise ValueError(f"multi_tensor_adam_step: tensor {k}: a shared count needs uniform_step >= 1 and "
                             "skip_zero_grad False (skipped entries need per-element step counts)")
    elif (t.param_steps.dtype != torch.int32 or t.param_steps.device != device or t.param_steps.shape != w.shape
          or not t.param_steps.is_contiguous()):
        raise ValueError(f"multi_tensor_adam_step: tensor {k}: param_steps must be a contiguous int32 tensor of shape "
                         f"{tuple(w.shape)} on {device}")
    c = t.correction
    if c.dtype != torch.float32 or c.device != device or c.dim() != 1 or not 2 <= c.numel() <= 2**32:
        raise ValueError(f"multi_tensor_adam_step: tensor {k}: correction must be a 1-d float32 table on {device}")


def multi_tensor_adam_step(tensors: Sequence[AdamTensor], *, target: str, inv_loss_scale: float = 1.0) -> None:
    """One tcnn Adam step over every element of every tensor in ``tensors``, in place, as ONE ``adam_step`` launch
    (none when there is no element).

    The per-tensor records (pointers, counts, hyper-parameters) go to the kernel as a ``(len(tensors), 12)`` int64
    table built on the host; on cuda it is copied with ``non_blocking=True`` from pinned memory, so the call reads
    no tensor and never waits for the device. The tensors (and a contiguous copy of a non-contiguous gradient) are
    used by the launch on the current stream; torch's caching allocator orders their reuse after it.

    Args:
        tensors: the tensors' shares (:class:`AdamTensor`), all on one device of ``target``.
        target: "cpu" or "cuda".
        inv_loss_scale: every gradient is multiplied by this first.

    Raises:
        ValueError: a tensor of the wrong dtype, shape, device or layout, or a shared count with ``skip_zero_grad``.
    """
    tensors = [t for t in tensors if t.weights.numel()]
    if not tensors:
        return
    device = tensors[0].weights.device
    if device.type != target:
        raise ValueError(f"multi_tensor_adam_step: target {target!r} but the tensors are on {device}")
    records = np.zeros(len(tensors), _RECORD)
    grads = []  # keeps contiguous copies alive until the launch has been issued
    start = 0
    for k, t in enumerate(tensors):
        _check(k, t, device)
        grad = t.grad.contiguous()
        grads.append(grad)
        n = t.weights.numel()
        records[k] = (t.weights.data_ptr(), grad.data_ptr(), t.exp_avg.data_ptr(), t.exp_avg_sq.data_ptr(),
                      0 if t.param_steps is None else t.param_steps.data_ptr(), t.correction.data_ptr(), start, n,
                      0 if t.param_steps is not None else t.uniform_step, t.correction.numel() - 1,
                      1 if t.skip_zero_grad else 0, t.lr, t.beta1, t.beta2, t.eps, t.l2_reg)
        start += n
    table = to_device_async(torch.from_numpy(records.view(np.int64)), device)
    chunk = _CPU_CHUNK if target == "cpu" else 1
    mod = load_module("adam.cu", target, {"ADAM_CHUNK": chunk})
    per_block = _BLOCK * chunk
    mod.launch("adam_step", grid=((start + per_block - 1) // per_block, 1, 1), block=(_BLOCK, 1, 1), args=[
        np.uint64(start), np.uint32(len(tensors)), np.float32(inv_loss_scale), table])


__all__ = ["AdamTensor", "multi_tensor_adam_step", "to_device_async"]

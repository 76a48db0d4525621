"""tiny-cuda-nn's Adam: sparse steps for hash-grid tables and per-element bias correction.

Source: tiny-cuda-nn ``include/tiny-cuda-nn/optimizers/adam.h`` (``adam_step``) and the paper §4 ("we skip Adam steps
for hash table entries whose gradient is exactly 0"). Per element ``i`` with gradient ``g`` (divided by the loss
scale)::

    if skip_zero_grad and g == 0: nothing changes (moments and step count included)
    g += l2_reg * w
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    t = ++steps[i]
    w -= lr * sqrt(1 - beta2**t) / (1 - beta1**t) / (sqrt(v) + eps) * m

This differs from ``torch.optim.Adam`` in three ways: untouched table entries keep their moments instead of decaying
them, each element counts its own steps, and ``eps`` is added to ``sqrt(v)`` before the bias correction.

On the ``cpu``/``cuda`` kernel backends a step is ONE launch of the ``adam_step`` kernel (``ngp_cli/cuda/adam.cu``)
over every parameter with a gradient (:func:`ngp_cli.cuda.adam.multi_tensor_adam_step`), with no device
synchronisation and no tensor read on the host; otherwise each tensor runs :func:`adam_step_reference` (plain torch).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Adam", "adam_step_reference", "bias_correction_table", "torch_adam_state"]


def bias_correction_table(beta1: float, beta2: float, max_step: int) -> Tensor:
    """``(max_step + 1,)`` float32 table of ``sqrt(1 - beta2**t) / (1 - beta1**t)`` for ``t = 0..max_step``.

    Entry 0 is unused (set to 0). Computed in float64 and rounded once. Raises ValueError for ``max_step < 1`` or betas
    outside [0, 1).
    """
    if max_step < 1:
        raise ValueError(f"max_step must be >= 1, got {max_step}")
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must lie in [0, 1), got ({beta1}, {beta2})")
    t = torch.arange(max_step + 1, dtype=torch.float64)
    table = torch.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
    table[0] = 0.0
    return table.float()


@torch.no_grad()
def adam_step_reference(weights: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, steps: Tensor, *,
                        lr: float, beta1: float, beta2: float, eps: float, l2_reg: float, skip_zero_grad: bool,
                        inv_loss_scale: float = 1.0) -> None:
    """One tcnn Adam step in plain torch, in place (the reference the ``adam_step`` kernel is tested against).

    Args:
        weights, grad, exp_avg, exp_avg_sq: float32 tensors of one shape (``weights``/moments updated in place).
        steps: int32 tensor of the same shape: each element's step count (updated in place).
        lr, beta1, beta2, eps, l2_reg: Adam hyper-parameters (tcnn names).
        skip_zero_grad: leave elements with an exactly-zero gradient untouched (hash-grid tables).
        inv_loss_scale: the gradient is multiplied by this first.
    """
    g = grad * inv_loss_scale if inv_loss_scale != 1.0 else grad.clone()
    active = (g != 0) if skip_zero_grad else None
    if l2_reg != 0.0:
        g.add_(weights, alpha=l2_reg)
    new_m = exp_avg * beta1 + g * (1.0 - beta1)
    new_v = exp_avg_sq * beta2 + g * g * (1.0 - beta2)
    new_t = steps + 1
    t = new_t.double()
    corr = (torch.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)).float()
    new_w = weights - (lr * corr) / (torch.sqrt(new_v) + eps) * new_m
    if active is None:
        exp_avg.copy_(new_m), exp_avg_sq.copy_(new_v), steps.copy_(new_t), weights.copy_(new_w)
    else:
        exp_avg.copy_(torch.where(active, new_m, exp_avg))
        exp_avg_sq.copy_(torch.where(active, new_v, exp_avg_sq))
        steps.copy_(torch.where(active, new_t, steps))
        weights.copy_(torch.where(active, new_w, weights))


class Adam(torch.optim.Optimizer):
    """tiny-cuda-nn's Adam (see the module docstring) as a ``torch.optim.Optimizer``.

    Parameter groups take ``lr``, ``betas``, ``eps``, ``weight_decay`` (tcnn's ``l2_reg``: added to the gradient) and
    ``skip_zero_grad`` (True for hash-grid tables). State per parameter: ``exp_avg``, ``exp_avg_sq`` (float32) and
    the step counts: ``param_steps`` (int32 per element) in sparse groups; ``step`` (one int32 CPU scalar, as torch
    keeps it) in dense groups, where every element counts the same steps (the kernel then moves 28 instead of 36
    bytes per element). On the kernel targets also ``max_step``, a Python int the host keeps so that a step reads no
    tensor: the shared count where there is ``step``, an upper bound of the ``param_steps`` otherwise (it sizes the
    bias-correction table). All checkpointable as plain tensors.

    Args:
        params: parameters or parameter groups (float32 only).
        lr, betas, eps: defaults for the groups.
        target: "cpu" or "cuda" to run the ``adam_step`` kernel (one launch per step for all parameters), None for
            :func:`adam_step_reference` per parameter.

    Raises:
        ValueError: a non-float32 parameter, or an unknown ``target``.
    """

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-15,
                 target: str | None = None) -> None:
        if target not in (None, "cpu", "cuda"):
            raise ValueError(f"target must be None, 'cpu' or 'cuda', got {target!r}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0, skip_zero_grad=False))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dtype != torch.float32:
                    raise ValueError(f"Adam supports float32 parameters only, got {p.dtype}")
        self.target = target
        self._tables: dict[tuple[float, float, str], Tensor] = {}

    def _correction(self, beta1: float, beta2: float, device: torch.device, max_step: int) -> Tensor:
        from ngp_cli.cuda.adam import to_device_async

        key = (beta1, beta2, str(device))
        table = self._tables.get(key)
        if table is None or table.numel() <= max_step:
            # Grown in powers of two: a new table (and its copy to the device) every doubling of the step count.
            size = max(1024, 1 << math.ceil(math.log2(max_step + 1)))
            table = to_device_async(bias_correction_table(beta1, beta2, size - 1), device)
            self._tables[key] = table
        return table

    def _state(self, p: Tensor, dense: bool) -> dict:
        state = self.state[p]
        if "param_steps" not in state and "step" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            if dense:
                state["step"] = torch.zeros((), dtype=torch.int32)
            else:
                state["param_steps"] = torch.zeros(p.shape, dtype=torch.int32, device=p.device)
            if self.target is not None:
                state["max_step"] = 0
        elif "step" in state and not dense:  # the group turned sparse: every element starts from the shared count
            state["param_steps"] = torch.full(p.shape, int(state.pop("step")), dtype=torch.int32, device=p.device)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        # Accept torch.optim.Adam states too (a scalar ``step``; no ``skip_zero_grad``). Dense groups keep one shared
        # count (``step``, as torch does) when every element's count is equal, sparse groups one per element.
        for saved, current in zip(state_dict["param_groups"], self.param_groups, strict=False):
            saved.setdefault("skip_zero_grad", current["skip_zero_grad"])
        super().load_state_dict(state_dict)
        dense_params = {id(p) for g in self.param_groups if not g["skip_zero_grad"] for p in g["params"]}
        for p, state in self.state.items():
            state.pop("max_step", None)  # the saved bound; derived again from the counts below
            steps = state.pop("param_steps", None)
            if steps is None:
                steps = state.pop("step", None)
            if steps is None:
                continue
            # torch casts every state tensor of a float parameter to the parameter's dtype: restore the counters.
            steps = steps.round().to(torch.int32)
            if id(p) in dense_params and (steps.dim() == 0 or steps.numel() == 0 or bool(steps.min() == steps.max())):
                state["step"] = steps.max().cpu().reshape(()) if steps.numel() else torch.zeros((), dtype=torch.int32)
            elif steps.shape != p.shape:  # one shared count: every element has seen that many steps
                state["param_steps"] = torch.full(p.shape, int(steps.max()), dtype=torch.int32, device=p.device)
            else:
                state["param_steps"] = steps.to(device=p.device)
            if self.target is not None:  # the host's mirror, read once here so that step() reads no tensor
                counts = state["step"] if "step" in state else state["param_steps"]
                state["max_step"] = int(counts.max()) if counts.numel() else 0

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim.Optimizer API)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.target is not None:
            from ngp_cli.cuda.adam import AdamTensor, multi_tensor_adam_step
        work = []
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            kwargs = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], l2_reg=group["weight_decay"],
                          skip_zero_grad=bool(group["skip_zero_grad"]))
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p, dense=not group["skip_zero_grad"])
                if self.target is None:
                    steps = state["step"] if "step" in state else state["param_steps"]
                    adam_step_reference(p, p.grad, state["exp_avg"], state["exp_avg_sq"], steps, **kwargs)
                    continue
                # Counted on the host: every element's count after this step is at most max_step (exactly it where
                # the state keeps one shared count, whose checkpointable tensor follows it).
                state["max_step"] += 1
                shared = "step" in state
                if shared:
                    state["step"].fill_(state["max_step"])
                work.append(AdamTensor(p, p.grad, state["exp_avg"], state["exp_avg_sq"],
                                       None if shared else state["param_steps"], state["max_step"],
                                       self._correction(beta1, beta2, p.device, state["max_step"]), **kwargs))
        if work:
            multi_tensor_adam_step(work, target=self.target)
        return loss


def torch_adam_state(state: dict) -> dict:
    """One parameter's state of :class:`Adam` in ``torch.optim.Adam``'s form (a float scalar ``step``: the largest
    per-element count), for resuming a kernel-backend checkpoint on the torch backend. Other states pass unchanged."""
    if "param_steps" not in state and not ("step" in state and not state["step"].is_floating_point()):
        return state
    out = {k: v for k, v in state.items() if k not in ("param_steps", "max_step", "step")}
    steps = state["param_steps"] if "param_steps" in state else state["step"]
    out["step"] = steps.max().float().reshape(()).cpu()
    return out

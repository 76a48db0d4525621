"""The ``adam_step`` kernel (ngp_cli/cuda/adam.cu, one launch over many tensors) against its torch reference
(ngp_cli.nn.optim)."""

from __future__ import annotations

import pytest
import torch

from ngp_cli.nn.optim import Adam, adam_step_reference, bias_correction_table

ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")
# Sizes around the CPU target's 1024-element chunk: tensors start and end inside chunks, one chunk spans three
# tensors, the second tensor is the chunk's last element alone.
SIZES = (1023, 1, 1025, 5000, 3, 10_007)
KW = dict(beta1=0.9, beta2=0.99, eps=1e-15)


def _case(seed: int, n: int, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    m = torch.randn(n, generator=g) * 0.1
    v = torch.rand(n, generator=g) * 0.01
    steps = torch.randint(0, 50, (n,), dtype=torch.int32, generator=g)
    grad = torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.5)  # half exactly zero
    return [t.to(device) for t in (w, grad, m, v, steps)]


def _fresh_seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())  # fresh inputs every run; the seed is in the failure message


def _launches(monkeypatch, target: str) -> list:
    """Patches the loaded adam.cu module of ``target`` to record each launch's kernel name (and still launch)."""
    from ngp_cli.cuda import adam

    mod = adam.load_module("adam.cu", target, {"ADAM_CHUNK": adam._CPU_CHUNK if target == "cpu" else 1})
    calls, launch = [], mod.launch
    monkeypatch.setattr(mod, "launch", lambda name, *a, **k: (calls.append(name), launch(name, *a, **k)))
    return calls


def test_multi_tensor_step_matches_reference_over_steps(cpu_target, monkeypatch):
    """Tensors of mixed sizes and kinds (sparse with skipping, per-element counts without, one shared count; with and
    without L2) in one launch per step follow the reference per tensor, over several steps on fresh gradients:
    skipped elements stay bit-for-bit untouched and every other element's count and values are written."""
    from ngp_cli.cuda.adam import AdamTensor, multi_tensor_adam_step

    seed = _fresh_seed()
    g = torch.Generator().manual_seed(seed)
    table = bias_correction_table(0.9, 0.99, 1023)
    kinds = [("skip", 0.0), ("per-element", 1e-6), ("shared", 1e-6), ("skip", 1e-6), ("shared", 0.0),
             ("per-element", 0.0)]
    ours, refs, shared = [], [], []
    for k, n in enumerate(SIZES):
        w, _, m, v, steps = _case(seed + k, n)
        kind = kinds[k]
        if kind[0] == "shared":
            steps = torch.full((n,), 7, dtype=torch.int32)  # the reference's view of one shared count
            shared.append(k)
        ours.append([w, m, v, steps.clone()])
        refs.append([t.clone() for t in (w, m, v, steps)])
    calls = _launches(monkeypatch, "cpu")
    for step in range(3):
        grads = [torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.5) for n in SIZES]
        before = [[t.clone() for t in o] for o in ours]
        work = []
        for k, ((kind, l2), (w, m, v, steps), grad) in enumerate(zip(kinds, ours, grads, strict=True)):
            lr = 1e-2 / (k + 1)  # per-tensor hyper-parameters reach the right tensor
            if kind == "shared":
                work.append(AdamTensor(w, grad, m, v, None, 8 + step, table, lr=lr, l2_reg=l2, skip_zero_grad=False,
                                       **KW))
            else:
                work.append(AdamTensor(w, grad, m, v, steps, 0, table, lr=lr, l2_reg=l2,
                                       skip_zero_grad=kind == "skip", **KW))
            r = refs[k]
            adam_step_reference(r[0], grad, r[1], r[2], r[3], lr=lr, l2_reg=l2, skip_zero_grad=kind == "skip", **KW)
        multi_tensor_adam_step(work, target="cpu")
        assert calls == ["adam_step"] * (step + 1)
        for k, ((kind, _), o, r, b, grad) in enumerate(zip(kinds, ours, refs, before, grads, strict=True)):
            msg = f"seed {seed}, step {step}, tensor {k} ({kind}, {SIZES[k]} elements)"
            if kind == "shared":
                assert torch.equal(o[3], b[3]), msg  # not read, not written: the host keeps the count
            else:
                assert torch.equal(o[3], r[3]), msg
            if kind == "skip":
                zero = grad == 0
                for a, old in zip(o, b, strict=True):
                    assert torch.equal(a[zero], old[zero]), msg
            for a, ref in zip(o[:3], r[:3], strict=True):
                torch.testing.assert_close(a, ref, rtol=2e-6, atol=1e-7, msg=lambda s, msg=msg: f"{msg}: {s}")
                ref.copy_(a)  # each step from the same values: the tolerance is one step's rounding


def test_multi_tensor_step_rejects_bad_tensors(cpu_target):
    from ngp_cli.cuda.adam import AdamTensor, multi_tensor_adam_step

    w, grad, m, v, steps = _case(0, 10)
    table = bias_correction_table(0.9, 0.99, 1023)
    good = AdamTensor(w, grad, m, v, steps, 0, table, lr=1e-2, l2_reg=0.0, skip_zero_grad=True, **KW)
    for bad, needle in ((good._replace(param_steps=None, uniform_step=3), "per-element"),
                        (good._replace(param_steps=None, uniform_step=0, skip_zero_grad=False), "uniform_step"),
                        (good._replace(exp_avg=m[:5]), "exp_avg"),
                        (good._replace(weights=w.double()), "weights"),
                        (good._replace(exp_avg_sq=torch.rand(20)[::2]), "contiguous"),
                        (good._replace(param_steps=steps.long()), "param_steps"),
                        (good._replace(correction=table.double()), "correction")):
        with pytest.raises(ValueError, match=needle):
            multi_tensor_adam_step([good, bad], target="cpu")
    with pytest.raises(ValueError, match="target"):
        multi_tensor_adam_step([good], target="cuda")
    before = [t.clone() for t in (w, m, v, steps)]
    # A non-contiguous gradient is taken as a copy; an empty tensor and an empty list launch nothing.
    noncontiguous = torch.stack([grad, torch.zeros(10)], 1)[:, 0]
    multi_tensor_adam_step([good._replace(grad=noncontiguous), good._replace(weights=w[:0], grad=grad[:0],
                           exp_avg=m[:0], exp_avg_sq=v[:0], param_steps=steps[:0])], target="cpu")
    multi_tensor_adam_step([], target="cpu")
    ref = [t.clone() for t in before]
    adam_step_reference(ref[0], grad, ref[1], ref[2], ref[3], lr=1e-2, l2_reg=0.0, skip_zero_grad=True, **KW)
    assert torch.equal(steps, ref[3])
    torch.testing.assert_close(w, ref[0], rtol=2e-6, atol=1e-7)


def test_optimizer_step_is_one_launch_for_all_groups(cpu_target, monkeypatch):
    """Several groups and tensors: exactly one kernel launch per step; none when no parameter has a gradient; a
    parameter without a gradient is left alone (no state, value unchanged)."""
    g = torch.Generator().manual_seed(1)
    table = torch.nn.Parameter(torch.randn(5000, 2, generator=g))
    mats = [torch.nn.Parameter(torch.randn(n, generator=g)) for n in (1, 1023, 1025)]
    frozen = torch.nn.Parameter(torch.randn(64, generator=g))
    opt = Adam([{"params": [table], "skip_zero_grad": True},
                {"params": [*mats, frozen], "weight_decay": 1e-6, "lr": 1e-3}], lr=1e-2, target="cpu")
    calls = _launches(monkeypatch, "cpu")
    opt.step()
    assert calls == []
    frozen_before = frozen.detach().clone()
    for step in range(3):
        for p in (table, *mats):
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        assert calls == ["adam_step"] * (step + 1)
    assert torch.equal(frozen.detach(), frozen_before) and frozen not in opt.state
    assert int(opt.state[mats[0]]["step"]) == 3 and opt.state[mats[0]]["max_step"] == 3
    assert int(opt.state[table]["param_steps"].max()) == 3


def test_optimizer_on_the_kernel_follows_the_reference(cpu_target):
    """Mixed sparse/dense groups of sizes around the chunk, several steps: the kernel target equals the reference
    target (per-element counts exactly)."""
    seed = _fresh_seed()
    g = torch.Generator().manual_seed(seed)
    inits = [torch.randn(n, generator=g) for n in SIZES]
    params = {t: [torch.nn.Parameter(x.clone()) for x in inits] for t in ("cpu", None)}
    opts = {t: Adam([{"params": ps[:3], "skip_zero_grad": True}, {"params": ps[3:], "weight_decay": 1e-6}],
                    lr=1e-2, target=t) for t, ps in params.items()}
    for _ in range(4):
        grads = [torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.3) for n in SIZES]
        for t, ps in params.items():
            for p, grad in zip(ps, grads, strict=True):
                p.grad = grad.clone()
            opts[t].step()
    for k, (ours, ref) in enumerate(zip(params["cpu"], params[None], strict=True)):
        torch.testing.assert_close(ours.data, ref.data, rtol=1e-5, atol=1e-6, msg=lambda s, k=k: f"seed {seed}, "
                                   f"tensor {k}: {s}")
        for key in ("param_steps", "step"):
            if key in opts[None].state[ref]:
                assert torch.equal(opts["cpu"].state[ours][key], opts[None].state[ref][key]), f"seed {seed}"


@pytest.mark.parametrize("arch", ARCHS)
def test_adam_compiles_for_every_architecture(nvcc, arch):
    from tests.cuda.nvcc import nvcc_compile_check

    usage = nvcc_compile_check("adam.cu", arch)
    assert set(usage) == {"adam_step"}
    assert usage["adam_step"]["spill_stores"] == 0 and usage["adam_step"]["spill_loads"] == 0


@pytest.mark.gpu
def test_gpu_kernel_matches_cpu_without_synchronising():
    """The cuda target equals the cpu target over mixed tensors, and an optimizer step on cuda never waits for the
    device (torch's sync debug mode turns a synchronisation into an error)."""
    from ngp_cli.cuda.adam import AdamTensor, multi_tensor_adam_step

    tables = {d: bias_correction_table(0.9, 0.99, 1023).to(d) for d in ("cpu", "cuda")}
    cases = {"cpu": [_case(7 + k, n) for k, n in enumerate((1 << 20, *SIZES))]}
    cases["cuda"] = [[t.cuda() for t in case] for case in cases["cpu"]]
    for d, case in cases.items():
        multi_tensor_adam_step([AdamTensor(*c[:4], None if k % 3 == 2 else c[4], 5, tables[d], lr=1e-2,
                                           l2_reg=1e-6 * (k % 2), skip_zero_grad=k % 3 == 0, **KW)
                                for k, c in enumerate(case)], target=d)
    torch.cuda.synchronize()
    for a, b in zip(cases["cpu"], cases["cuda"], strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(y.cpu(), x, rtol=2e-6, atol=1e-7)
    params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in SIZES]
    opt = Adam([{"params": params[:3], "skip_zero_grad": True}, {"params": params[3:], "weight_decay": 1e-6}],
               lr=1e-2, target="cuda")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # first step: state and tables are created
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")

"""The ``adam_step`` kernel (ngp_cli/cuda/adam.cu) against its torch reference (ngp_cli.nn.optim)."""

from __future__ import annotations

import pytest
import torch

from ngp_cli.nn.optim import Adam, adam_step_reference, bias_correction_table

ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")


def _case(seed: int, n: int, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    m = torch.randn(n, generator=g) * 0.1
    v = torch.rand(n, generator=g) * 0.01
    steps = torch.randint(0, 50, (n,), dtype=torch.int32, generator=g)
    grad = torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.5)  # half exactly zero
    return [t.to(device) for t in (w, grad, m, v, steps)]


@pytest.mark.parametrize("skip, l2", [(True, 0.0), (False, 1e-6), (False, 0.0)])
def test_kernel_matches_reference(cpu_target, skip, l2):
    from ngp_cli.cuda.adam import adam_step

    seed = int(torch.randint(0, 2**31 - 1, ()).item())  # fresh inputs every run; the seed is in the failure message
    n = 10_007  # not a multiple of the block size
    w, grad, m, v, steps = _case(seed, n)
    ref = [t.clone() for t in (w, m, v, steps)]
    adam_step_reference(ref[0], grad, ref[1], ref[2], ref[3], lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15,
                        l2_reg=l2, skip_zero_grad=skip)
    table = bias_correction_table(0.9, 0.99, 1023)
    adam_step(w, grad, m, v, steps, table, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15, l2_reg=l2,
              skip_zero_grad=skip, target="cpu")
    assert torch.equal(steps, ref[3]), f"seed {seed}"
    for ours, theirs in zip((w, m, v), ref[:3], strict=False):
        torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=1e-7, msg=lambda s: f"seed {seed}: {s}")


@pytest.mark.parametrize("l2", [0.0, 1e-6])
def test_kernel_shared_step_count_matches_per_element_counts(cpu_target, l2):
    """Dense steps with one 0-dim count (the uniform_step path) equal the per-element path at equal counts."""
    from ngp_cli.cuda.adam import adam_step

    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    n = 10_007
    w, grad, m, v, _ = _case(seed, n)
    t0 = int(torch.randint(0, 40, ()).item())
    per_element = [w.clone(), m.clone(), v.clone(), torch.full((n,), t0, dtype=torch.int32)]
    ref = [w.clone(), m.clone(), v.clone(), torch.full((n,), t0, dtype=torch.int32)]
    shared = [w.clone(), m.clone(), v.clone(), torch.tensor(t0, dtype=torch.int32)]
    table = bias_correction_table(0.9, 0.99, 1023)
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15, l2_reg=l2, skip_zero_grad=False)
    adam_step(shared[0], grad, shared[1], shared[2], shared[3], table, target="cpu", **kw)
    adam_step(per_element[0], grad, per_element[1], per_element[2], per_element[3], table, target="cpu", **kw)
    adam_step_reference(ref[0], grad, ref[1], ref[2], ref[3], **kw)
    assert int(shared[3]) == t0 + 1
    for a, b, r in zip(shared[:3], per_element[:3], ref[:3], strict=True):
        # the two loops may contract multiply-adds differently (rounding-level differences)
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7, msg=lambda s: f"seed {seed}: {s}")
        torch.testing.assert_close(a, r, rtol=2e-6, atol=1e-7, msg=lambda s: f"seed {seed}: {s}")
    with pytest.raises(ValueError, match="per-element"):
        adam_step(shared[0], grad, shared[1], shared[2], shared[3], table, target="cpu",
                  **{**kw, "skip_zero_grad": True})


def test_optimizer_on_the_kernel_follows_the_reference(cpu_target):
    g = torch.Generator().manual_seed(3)
    init = torch.randn(300, 2, generator=g)
    params = {t: torch.nn.Parameter(init.clone()) for t in ("cpu", None)}
    opts = {t: Adam([{"params": [p], "skip_zero_grad": True}], lr=1e-2, target=t) for t, p in params.items()}
    for _ in range(4):
        grad = torch.randn(300, 2, generator=g) * (torch.rand(300, 2, generator=g) < 0.3)
        for t, p in params.items():
            p.grad = grad.clone()
            opts[t].step()
    torch.testing.assert_close(params["cpu"].data, params[None].data, rtol=1e-5, atol=1e-6)
    assert torch.equal(opts["cpu"].state[params["cpu"]]["param_steps"],
                       opts[None].state[params[None]]["param_steps"])


@pytest.mark.parametrize("arch", ARCHS)
def test_adam_compiles_for_every_architecture(nvcc, arch):
    from ngp_cli.cuda.runtime import nvcc_compile_check

    usage = nvcc_compile_check("adam.cu", arch)
    assert set(usage) == {"adam_step"}
    assert usage["adam_step"]["spill_stores"] == 0 and usage["adam_step"]["spill_loads"] == 0


@pytest.mark.gpu
def test_gpu_kernel_matches_reference_and_cpu():
    from ngp_cli.cuda.adam import adam_step

    n = 1 << 20
    cpu = _case(7, n)
    gpu = [t.cuda() for t in cpu]
    table = bias_correction_table(0.9, 0.99, 1023)
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15, l2_reg=0.0, skip_zero_grad=True)
    adam_step(cpu[0], cpu[1], cpu[2], cpu[3], cpu[4], table, target="cpu", **kw)
    adam_step(gpu[0], gpu[1], gpu[2], gpu[3], gpu[4], table.cuda(), target="cuda", **kw)
    torch.cuda.synchronize()
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=2e-6, atol=1e-7)
    # dense steps with one shared count (the uniform_step path)
    dense = {**kw, "skip_zero_grad": False}
    shared_cpu, shared_gpu = torch.tensor(5, dtype=torch.int32), torch.tensor(5, dtype=torch.int32)
    adam_step(cpu[0], cpu[1], cpu[2], cpu[3], shared_cpu, table, target="cpu", **dense)
    adam_step(gpu[0], gpu[1], gpu[2], gpu[3], shared_gpu, table.cuda(), target="cuda", **dense)
    torch.cuda.synchronize()
    assert int(shared_cpu) == int(shared_gpu) == 6
    for a, b in zip(cpu[:4], gpu[:4], strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=2e-6, atol=1e-7)

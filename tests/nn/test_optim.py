"""tiny-cuda-nn Adam (ngp_cli.nn.optim): the torch reference's semantics; the kernel is compared in tests/cuda."""

from __future__ import annotations

import pytest
import torch

from ngp_cli.nn.optim import Adam, adam_step_reference, bias_correction_table
from tests.host_reads import counting


def test_bias_correction_table_values():
    t = bias_correction_table(0.9, 0.99, 5)
    assert t[0] == 0
    for k in range(1, 6):
        assert t[k].item() == pytest.approx((1 - 0.99**k) ** 0.5 / (1 - 0.9**k), rel=1e-6)
    with pytest.raises(ValueError):
        bias_correction_table(0.9, 1.0, 5)
    with pytest.raises(ValueError):
        bias_correction_table(0.9, 0.99, 0)


def test_dense_steps_match_torch_adam():
    """With every gradient non-zero, tcnn's Adam equals torch's up to where eps enters (eps=1e-15 here)."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(64, 8, generator=g)
    p_ref, p_ours = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    ref = torch.optim.Adam([p_ref], lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    ours = Adam([p_ours], lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    for _ in range(5):
        grad = torch.randn(64, 8, generator=g)
        p_ref.grad, p_ours.grad = grad.clone(), grad.clone()
        ref.step()
        ours.step()
    torch.testing.assert_close(p_ours.data, p_ref.data, rtol=1e-5, atol=1e-6)
    # a dense group keeps one shared count, as torch does
    assert "param_steps" not in ours.state[p_ours] and int(ours.state[p_ours]["step"]) == 5


def test_zero_gradient_entries_are_skipped_with_their_moments():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1000, 2, generator=g)
    m, v = torch.randn(1000, 2, generator=g), torch.rand(1000, 2, generator=g)
    steps = torch.randint(0, 9, (1000, 2), dtype=torch.int32, generator=g)
    grad = torch.randn(1000, 2, generator=g) * (torch.rand(1000, 2, generator=g) < 0.3)
    before = [t.clone() for t in (w, m, v, steps)]
    adam_step_reference(w, grad, m, v, steps, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15, l2_reg=0.0,
                        skip_zero_grad=True)
    zero = grad == 0
    assert zero.any() and (~zero).any()
    for after, old in zip((w, m, v, steps), before, strict=True):
        assert torch.equal(after[zero], old[zero])
        assert not torch.equal(after[~zero], old[~zero])
    assert torch.equal(steps[~zero], before[3][~zero] + 1)
    # Without skipping, a zero gradient still decays the moments and moves the weight.
    w2, m2, v2, s2 = (t.clone() for t in before)
    adam_step_reference(w2, grad, m2, v2, s2, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15, l2_reg=0.0,
                        skip_zero_grad=False)
    assert not torch.equal(m2[zero], before[1][zero])


def test_l2_reg_is_added_to_the_gradient():
    w = torch.full((4,), 2.0)
    m, v, s = torch.zeros(4), torch.zeros(4), torch.zeros(4, dtype=torch.int32)
    adam_step_reference(w, torch.zeros(4), m, v, s, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-15, l2_reg=1e-3,
                        skip_zero_grad=False)
    torch.testing.assert_close(m, torch.full((4,), 0.1 * 2e-3))  # (1 - beta1) * l2_reg * w
    torch.testing.assert_close(w, torch.full((4,), 2.0 - 0.1))  # first step: lr * sign(g)


def test_loads_a_torch_adam_state():
    p = torch.nn.Parameter(torch.randn(3, 4))
    p.grad = torch.randn(3, 4)
    ref = torch.optim.Adam([p], lr=1e-2)
    ref.step()
    ours = Adam([p], lr=1e-2)
    ours.load_state_dict(ref.state_dict())
    p.grad = torch.randn(3, 4)
    ours.step()
    assert int(ours.state[p]["step"]) == 2
    sparse = Adam([{"params": [p], "skip_zero_grad": True}], lr=1e-2)
    sparse.load_state_dict(ref.state_dict())  # torch's one count becomes every element's count
    p.grad = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 3)
    sparse.step()
    assert sparse.state[p]["param_steps"].tolist() == [[2, 1, 2, 1]] * 3


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="target"):
        Adam([torch.nn.Parameter(torch.zeros(2))], target="gpu")
    with pytest.raises(ValueError, match="float32"):
        Adam([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])


def test_state_dict_round_trip_keeps_per_element_step_counts():
    p = torch.nn.Parameter(torch.randn(10))
    opt = Adam([{"params": [p], "skip_zero_grad": True}], lr=1e-2)
    p.grad = torch.tensor([1.0, 0.0] * 5)
    opt.step()
    fresh = Adam([{"params": [p], "skip_zero_grad": True}], lr=1e-2)
    fresh.load_state_dict(opt.state_dict())  # torch casts state of float params to float32; Adam restores int32
    steps = fresh.state[p]["param_steps"]
    assert steps.dtype == torch.int32 and steps.tolist() == [1, 0] * 5


def test_dense_state_round_trips_through_per_element_and_torch_forms():
    """Dense groups store one count; older checkpoints (per-element counts, all equal) load into it, and
    torch_adam_state hands torch.optim.Adam a float scalar it can continue from."""
    from ngp_cli.nn.optim import torch_adam_state

    p = torch.nn.Parameter(torch.randn(6))
    opt = Adam([p], lr=1e-2)
    for _ in range(3):
        p.grad = torch.randn(6)
        opt.step()
    saved = opt.state_dict()
    old_form = {**saved, "state": {0: {**saved["state"][0], "param_steps": torch.full((6,), 3.0)}}}
    del old_form["state"][0]["step"]
    fresh = Adam([p], lr=1e-2)
    fresh.load_state_dict(old_form)
    assert "param_steps" not in fresh.state[p] and int(fresh.state[p]["step"]) == 3
    as_torch = torch_adam_state(dict(fresh.state[p]))
    assert as_torch["step"].dtype == torch.float32 and float(as_torch["step"]) == 3.0
    ref = torch.optim.Adam([p], lr=1e-2)
    ref.load_state_dict({"state": {0: as_torch}, "param_groups": [{**ref.state_dict()["param_groups"][0]}]})
    p.grad = torch.randn(6)
    ref.step()
    assert float(ref.state[p]["step"]) == 4.0


def _mixed_problem(seed: int, target: str | None):
    """A NeRF-like optimizer: a sparse table group and a dense MLP group with L2, plus a parameter without gradient."""
    g = torch.Generator().manual_seed(seed)
    table = torch.nn.Parameter(torch.randn(1025, 2, generator=g))
    mats = [torch.nn.Parameter(torch.randn(n, 4, generator=g)) for n in (1, 16)]
    frozen = torch.nn.Parameter(torch.randn(3, generator=g))
    groups = [{"params": [table], "skip_zero_grad": True}, {"params": [*mats, frozen], "weight_decay": 1e-6}]
    return [table, *mats], frozen, groups, g


def _grads(params, g):
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * (torch.rand(p.shape, generator=g) < 0.5)


@pytest.fixture(params=[None, "cpu"], ids=["reference", "cpu-kernel"])
def target(request):
    if request.param == "cpu":
        request.getfixturevalue("host_cxx")
    return request.param


def test_steps_read_no_tensor_value(target, monkeypatch):
    """After the first step (and after the first step of a resumed optimizer) a step reads no tensor value on the
    host, so it never waits for the device."""
    params, _, groups, g = _mixed_problem(0, target)
    opt = Adam(groups, lr=1e-2, target=target)
    _grads(params, g)
    opt.step()
    with counting(monkeypatch) as counter:
        for _ in range(3):
            _grads(params, g)
            opt.step()
        assert counter.events == []
        int(params[0].sum())  # the counter sees a host read
        assert len(counter.events) == 1
    resumed = Adam(groups, lr=1e-2, target=target)
    resumed.load_state_dict(opt.state_dict())
    resumed.step()
    with counting(monkeypatch) as counter:
        for _ in range(2):
            _grads(params, g)
            resumed.step()
    assert counter.events == []


def test_parameters_without_gradient_are_left_alone(target):
    params, frozen, groups, g = _mixed_problem(1, target)
    before = frozen.detach().clone()
    opt = Adam(groups, lr=1e-2, target=target)
    opt.step()  # no gradient anywhere: nothing happens
    assert len(opt.state) == 0
    for _ in range(2):
        _grads(params, g)
        opt.step()
    assert torch.equal(frozen.detach(), before) and frozen not in opt.state
    assert all(p in opt.state for p in params)


def test_resume_from_state_dict_continues_the_same_steps(target):
    """Three steps, a state_dict round trip into a new optimizer, three more: the same parameters and counts as six
    uninterrupted steps (bit for bit: the same operations run), and the same state keys as before saving."""
    results = []
    for resume in (False, True):
        params, _, groups, g = _mixed_problem(2, target)
        opt = Adam(groups, lr=1e-2, target=target)
        for step in range(6):
            if resume and step == 3:
                saved = opt.state_dict()
                keys = {k: set(s) for k, s in saved["state"].items()}
                opt = Adam(groups, lr=1e-2, target=target)
                opt.load_state_dict(saved)
                assert {k: set(s) for k, s in opt.state_dict()["state"].items()} == keys
            _grads(params, g)
            opt.step()
        results.append((params, opt))
    (p_run, run), (p_resumed, resumed) = results
    for a, b in zip(p_run, p_resumed, strict=True):
        assert torch.equal(a, b)
        sa, sb = run.state[a], resumed.state[b]
        assert set(sa) == set(sb)
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    table, dense = p_run[0], p_run[1]
    assert run.state[table]["param_steps"].max() == 6 and int(run.state[dense]["step"]) == 6
    if target is not None:  # the host's mirrors: a bound of the per-element counts, the shared count
        assert run.state[table]["max_step"] == 6 and run.state[dense]["max_step"] == 6
    else:
        assert "max_step" not in run.state[table]

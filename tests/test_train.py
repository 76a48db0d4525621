"""The training loop's pieces: tcnn losses, the ExponentialDecay schedule, the EMA, optimizer parameter groups; and
what the loop does with a run: compile time, progress labels, the optimizer state, corrupt checkpoints, inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ngp_cli.config import EncodingConfig, LossConfig, NetworkConfig, OptimizerConfig
from ngp_cli.nn.model import NetworkWithInputEncoding
from ngp_cli.train import EMA, learning_rate, make_loss, make_optimizer


def test_losses_match_tiny_cuda_nn_definitions():
    p, t = torch.randn(64, 3), torch.randn(64, 3)
    assert torch.allclose(make_loss(LossConfig("L2"))(p, t), ((p - t) ** 2).mean())
    assert torch.allclose(make_loss(LossConfig("L1"))(p, t), (p - t).abs().mean())
    assert torch.allclose(make_loss(LossConfig("RelativeL2"))(p, t), (((p - t) ** 2) / (p ** 2 + 0.01)).mean())
    assert torch.allclose(make_loss(LossConfig("RelativeL1"))(p, t), ((p - t).abs() / (p.abs() + 0.01)).mean())


def test_exponential_decay_schedule():
    cfg = OptimizerConfig(learning_rate=1e-2, decay_start=100, decay_interval=50, decay_base=0.5)
    assert learning_rate(cfg, 0) == 1e-2 and learning_rate(cfg, 99) == 1e-2
    # tcnn multiplies by the base at decay_start, decay_start + interval, ...
    assert learning_rate(cfg, 100) == pytest.approx(5e-3)
    assert learning_rate(cfg, 149) == pytest.approx(5e-3)
    assert learning_rate(cfg, 150) == pytest.approx(2.5e-3)
    assert learning_rate(OptimizerConfig(learning_rate=3e-3), 10**6) == 3e-3  # decay_base 1: off


def test_ema_is_bias_corrected_and_restores_weights():
    w = torch.nn.Parameter(torch.randn(5))
    ema = EMA([w], decay=0.9)
    history = []
    for _ in range(4):
        with torch.no_grad():
            w.add_(torch.randn(5))
        history.append(w.detach().clone())
        ema.update()
    weights = torch.tensor([0.9 ** (3 - i) * 0.1 for i in range(4)])
    expected = sum(wi * h for wi, h in zip(weights, history, strict=True)) / (1 - 0.9 ** 4)
    current = w.detach().clone()
    with ema.applied():
        assert torch.allclose(w, expected, atol=1e-6)
    assert torch.equal(w.detach(), current)


def test_l2_applies_to_the_mlp_only():
    model = NetworkWithInputEncoding(2, 3, EncodingConfig(n_levels=2, log2_hashmap_size=8, per_level_scale=2.0),
                                     NetworkConfig(n_neurons=16), generator=torch.Generator().manual_seed(0))
    opt = make_optimizer(model, OptimizerConfig(l2_reg=1e-6))
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model.encoding.params)] == 0.0
    assert all(decays[id(p)] == 1e-6 for p in model.network.parameters())
    assert opt.defaults["betas"] == (0.9, 0.99) and opt.defaults["eps"] == 1e-15


@pytest.mark.parametrize("kernel_target, skip, expected", [
    (None, False, torch.optim.Adam),   # torch backend, dense steps: torch's fast foreach Adam
    (None, True, "tcnn"),              # torch backend, paper's sparse steps: the torch reference of tcnn's Adam
    ("cpu", False, "tcnn"),            # kernel backends: the adam_step kernel, dense or sparse
    ("cpu", True, "tcnn"),
])
def test_optimizer_choice_follows_backend_and_skip_zero_grad(kernel_target, skip, expected):
    from ngp_cli.nn.optim import Adam

    model = NetworkWithInputEncoding(2, 3, EncodingConfig(n_levels=2, log2_hashmap_size=8, per_level_scale=2.0),
                                     NetworkConfig(n_neurons=16), generator=torch.Generator().manual_seed(0),
                                     kernel_target=kernel_target)
    opt = make_optimizer(model, OptimizerConfig(skip_zero_grad=skip))
    if expected is torch.optim.Adam:
        assert type(opt) is torch.optim.Adam
        return
    assert isinstance(opt, Adam) and opt.target == kernel_target
    skips = {id(p): g["skip_zero_grad"] for g in opt.param_groups for p in g["params"]}
    assert skips[id(model.encoding.params)] is skip  # only the hash tables skip, and only when asked
    assert not any(skips[id(p)] for p in model.network.parameters())


def test_cpu_and_torch_backends_agree_on_a_real_fit(ngp, astronaut_crop, tmp_path):
    """Same model, same algorithm, two implementations: the full-image PSNR after 150 steps agrees within 0.3 dB."""
    from ngp_cli.nn.backend import cpu_kernels_available

    if not cpu_kernels_available():
        pytest.skip("no host C++ compiler for the cpu backend")
    psnr = {}
    for backend in ("cpu", "torch"):
        res = ngp("fit-image", astronaut_crop, "--runs-dir", tmp_path / backend, "--steps", "150", "--backend",
                  backend, "--set", "encoding.log2_hashmap_size=16", "--set", "train.batch_size=8192")
        assert res.exit_code == 0, res.stderr
        assert f"backend {backend} on cpu" in res.stderr
        psnr[backend] = res.last("done")["metrics"]["psnr"]
    assert abs(psnr["cpu"] - psnr["torch"]) <= 0.3, psnr


def test_ema_run_resumes_exactly(ngp, astronaut_crop, tmp_path):
    from safetensors.torch import load_file

    fast = ["--set", "encoding.n_levels=4", "--set", "encoding.log2_hashmap_size=12", "--set",
            "network.n_neurons=16", "--set", "train.batch_size=1024", "--set", "optimizer.ema_decay=0.9"]
    a = ngp("fit-image", astronaut_crop, "--runs-dir", tmp_path / "a", *fast, "--steps", "4").last("done")
    b = ngp("fit-image", astronaut_crop, "--runs-dir", tmp_path / "b", *fast, "--steps", "2").last("done")
    b = ngp("fit-image", "--resume", b["run_dir"], "--steps", "4").last("done")
    ta, tb = load_file(a["artifacts"]["checkpoint"]), load_file(b["artifacts"]["checkpoint"])
    assert any(k.startswith("ema.") for k in ta)
    assert ta.keys() == tb.keys()
    for key in ta:  # weights, Adam moments, EMA and the sampling generator's state
        assert torch.equal(ta[key], tb[key]), key
    assert a["metrics"]["psnr"] == b["metrics"]["psnr"]  # evaluated with the EMA weights in both


class _ToyProblem:
    """A tiny 2-D regression for the loop's own tests; ``on_step`` runs inside every batch."""

    def __init__(self, on_step=None, **attrs) -> None:
        self.model = NetworkWithInputEncoding(
            2, 1, EncodingConfig(n_levels=2, log2_hashmap_size=8, per_level_scale=2.0), NetworkConfig(n_neurons=16),
            generator=torch.Generator().manual_seed(0))
        self.on_step = on_step
        self.__dict__.update(attrs)

    def batch_loss(self, batch_size, generator, loss_fn):
        if self.on_step is not None:
            self.on_step()
        x = torch.rand(batch_size, 2, generator=generator)
        loss = loss_fn(self.model(x), x[:, :1])
        return loss, float(loss.detach())


def _toy_trainer(tmp_path, problem, n_steps=3, **kwargs):
    from ngp_cli.config import RunConfig
    from ngp_cli.runs import RunDir
    from ngp_cli.train import Trainer

    cfg = RunConfig(task="image")
    cfg.train.n_steps, cfg.train.batch_size, cfg.train.log_every = n_steps, 64, n_steps
    return Trainer(problem, cfg, RunDir.create(tmp_path, "image", "toy"), **kwargs)


def test_kernel_compile_time_is_kept_out_of_training_time_and_rate(tmp_path, monkeypatch):
    import time

    from ngp_cli.cuda import runtime

    clock = [0.0]
    monkeypatch.setattr(runtime, "compile_seconds", lambda: clock[0])

    def first_step_compiles():
        if clock[0] == 0.0:  # the first step "compiles" for 0.5 s
            time.sleep(0.5)
            clock[0] += 0.5

    trainer = _toy_trainer(tmp_path, _ToyProblem(first_step_compiles))
    state = trainer.fit()
    assert state.compile_s == pytest.approx(0.5, abs=0.05)
    assert state.elapsed_s < 0.4, state.elapsed_s  # three tiny steps, without the compile
    (record,) = trainer.run.read_metrics()
    assert record["compile_s"] == pytest.approx(0.5, abs=0.05)
    assert record["steps_per_s"] > 3 / 0.4, record  # with the compile inside the window it would be < 6
    meta = trainer.run.latest_checkpoint().meta
    assert meta["compile_s"] == pytest.approx(state.compile_s)


def test_progress_line_labels_the_batch_psnr_and_omits_it_where_meaningless(tmp_path, capsys):
    _toy_trainer(tmp_path / "a", _ToyProblem()).fit()
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("step 3/3")][0]
    assert "batch PSNR" in line and "psnr" not in line
    trainer = _toy_trainer(tmp_path / "b", _ToyProblem(progress_metric=None))
    trainer.fit()
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("step 3/3")][0]
    assert "PSNR" not in line.upper() and "loss" in line
    (record,) = trainer.run.read_metrics()
    assert "psnr" in record and "batch_psnr" not in record  # the old key stays; the honest one only where it means


def _fit(ngp, photo, runs, *extra):
    fast = ["--set", "encoding.n_levels=4", "--set", "encoding.log2_hashmap_size=12", "--set", "network.n_neurons=16",
            "--set", "train.batch_size=1024", "--backend", "torch"]
    return ngp("fit-image", photo, "--runs-dir", runs, *fast, *extra)


def test_no_save_optimizer_drops_adam_state_from_the_final_checkpoint_and_still_resumes(ngp, astronaut_crop,
                                                                                        tmp_path):
    from safetensors.torch import load_file

    sizes = {}
    for flag in ("--save-optimizer", "--no-save-optimizer"):
        res = _fit(ngp, astronaut_crop, tmp_path / flag, "--steps", "4", flag)
        assert res.exit_code == 0, res.stderr
        ckpt = Path(res.last("done")["artifacts"]["checkpoint"])
        sizes[flag] = ckpt.stat().st_size
        has_optim = any(k.startswith("optim.") for k in load_file(ckpt))
        assert has_optim is (flag == "--save-optimizer")
    assert sizes["--no-save-optimizer"] < sizes["--save-optimizer"] / 2, sizes
    res = ngp("fit-image", "--resume", Path(ckpt).parents[1], "--steps", "6")
    assert res.exit_code == 0, res.stderr
    assert "no optimizer state" in res.stderr and res.last("done")["step"] == 6


def test_resume_falls_back_past_a_corrupt_checkpoint_and_clears_crash_leftovers(ngp, astronaut_crop, tmp_path):
    import os

    res = _fit(ngp, astronaut_crop, tmp_path, "--steps", "10", "--set", "train.checkpoint_every=5")
    run = Path(res.last("done")["run_dir"])
    newest = run / "checkpoints" / "step-00000010.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # torn by a crash
    leftovers = [run / "checkpoints" / ".tmpXy12Ab", run / ".metrics.jsonl.abcdef01.tmp"]
    for p in leftovers:
        p.write_text("x")
        os.utime(p, (1e9, 1e9))  # from 2001: older than this process (which runs the CLI in-process)
    res = ngp("fit-image", "--resume", run, "--steps", "12")
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "newest intact checkpoint, step 5" in warnings[0], res.stderr
    assert "removed 2 temporary file(s)" in res.stderr
    assert not any(p.exists() for p in leftovers)
    assert (run / "checkpoints" / "step-00000010.safetensors.corrupt").is_file()
    assert res.last("done")["step"] == 12
    steps = [m["step"] for m in json.loads("[" + ",".join((run / "metrics.jsonl").read_text().split()) + "]")]
    assert steps == sorted(steps) and steps.count(10) == 1  # the lines after step 5 were logged again, once


def test_allow_input_change_accepts_and_records_a_new_input(ngp, astronaut_crop, tmp_path):
    res = _fit(ngp, astronaut_crop, tmp_path / "runs", "--steps", "2")
    run = Path(res.last("done")["run_dir"])
    pinned = json.loads((run / "input.json").read_text())["inputs"]["image.path"]
    assert pinned["path"] == str(astronaut_crop.resolve()) and pinned["files"][""]["size"] > 0
    other = tmp_path / "other.png"
    other.write_bytes(astronaut_crop.read_bytes())
    res = ngp("fit-image", "--resume", run, "--steps", "4", "--set", f"image.path={other}",
              "--allow-input-change")
    assert res.exit_code == 0, res.stderr
    assert "warning: image.path changes from" in res.stderr
    assert f"path: {other}" in (run / "config.yaml").read_text()
    record = json.loads((run / "input.json").read_text())
    assert record["inputs"]["image.path"]["path"] == str(other)
    assert record["changes"][-1]["step"] == 2 and record["changes"][-1]["to"] == str(other)
    with open(other, "ab") as fh:  # and a change on disk, accepted the same way
        fh.write(b"\0")
    res = ngp("fit-image", "--resume", run, "--steps", "6", "--allow-input-change")
    assert res.exit_code == 0, res.stderr
    assert "changed since the run was created" in res.stderr
    assert json.loads((run / "input.json").read_text())["inputs"]["image.path"]["files"][""]["size"] == \
        other.stat().st_size


def test_a_run_made_before_inputs_were_pinned_resumes_as_before(ngp, astronaut_crop, tmp_path):
    res = _fit(ngp, astronaut_crop, tmp_path / "runs", "--steps", "2")
    run = Path(res.last("done")["run_dir"])
    (run / "input.json").unlink()
    res = ngp("fit-image", "--resume", run, "--steps", "3")
    assert res.exit_code == 0, res.stderr
    assert not (run / "input.json").exists() and "warning" not in res.stderr

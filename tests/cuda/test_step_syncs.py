"""No NeRF training step waits for the device outside log steps (issue 14 part 4).

On the CPU nothing waits, so the test counts the calls that would synchronise a GPU, whatever device they run on:
every read of a tensor value into Python (aten ``_local_scalar_dense``, which ``.item()``, ``int()``, ``float()`` and
``bool()`` of a tensor go through; ``.tolist()``, ``.numpy()``) and the ops whose output size depends on tensor
values (``nonzero``, ``masked_select``, boolean indexing, ``unique``, ``repeat_interleave`` without
``output_size``). The loop may read the device on log steps, before checkpoints and held-out evaluations; everything
else must count 0. On a GPU (``-m gpu``), ``torch.cuda.set_sync_debug_mode("error")`` checks the same steps for real.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.host_reads import counting


def _problem_and_trainer(scene: Path, tmp_path: Path, backend_name: str, steps: int, log_every: int):
    from ngp_cli.config import resolve
    from ngp_cli.nn.backend import resolve_backend
    from ngp_cli.runs import RunDir
    from ngp_cli.tasks.nerf import NerfConfig
    from ngp_cli.tasks.nerf.config import scene_aabb_scale
    from ngp_cli.tasks.nerf.data import load_split
    from ngp_cli.tasks.nerf.fit import NerfProblem
    from ngp_cli.train import Trainer

    sets = [f"train.n_steps={steps}", f"train.log_every={log_every}", "train.eval_every=0",
            "train.checkpoint_every=0", "train.batch_size=4096", "nerf.n_rays_initial=256",
            "nerf.grid_update_interval=2", "nerf.grid_warmup_steps=2", "encoding.log2_hashmap_size=12",
            f"nerf.path={scene}"]
    cfg = resolve(NerfConfig, "nerf", "nerf-cpu", sets)
    backend = resolve_backend(backend_name)
    train = load_split(cfg, "train")
    problem = NerfProblem(train, cfg, backend, scene_aabb_scale(cfg, train))
    problem.prepare_grid()
    trainer = Trainer(problem, cfg, RunDir.create(tmp_path, "nerf", "syncs"), quiet=True)
    return problem, trainer


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    return make_synthetic_scene(tmp_path_factory.mktemp("scene"), n_train=4, n_val=1, resolution=16)


def test_the_counter_sees_host_reads(monkeypatch):
    """The counter can fail: every kind of read it should see, it sees."""
    t = torch.arange(4.0)
    with counting(monkeypatch) as counter:
        float(t.sum()), int(t[1]), bool(t[0] == 0), t.tolist(), t[t > 1], torch.nonzero(t), t.numpy()
    seen = {what for what, _ in counter.events}
    assert {"aten._local_scalar_dense", "Tensor.tolist", "aten.index with a boolean mask", "aten.nonzero",
            "Tensor.numpy"} <= seen, seen


@pytest.mark.parametrize("backend_name", ["cpu", "torch"])
def test_nerf_steps_read_the_device_only_on_log_steps(scene, tmp_path, monkeypatch, backend_name):
    """10 steps, logging every 5th, occupancy-grid updates every 2nd (both kinds: all cells, then drawn ones).
    The kernel backend makes no host read outside log steps; the torch backend is the reference, whose marching
    and compositing size their outputs from the data: its reads are listed, not forbidden."""
    from ngp_cli.train import Trainer

    if backend_name == "cpu":
        from ngp_cli.nn.backend import cpu_kernels_available

        if not cpu_kernels_available():
            pytest.skip("no host C++ compiler for the cpu kernels")
    problem, trainer = _problem_and_trainer(scene, tmp_path, backend_name, steps=10, log_every=5)
    with counting(monkeypatch) as counter:
        for name in ("_read_back", "_check_divergence", "checkpoint"):
            original = getattr(Trainer, name)

            def windowed(self, *a, _original=original, **kw):
                with counter.allowed():
                    return _original(self, *a, **kw)

            monkeypatch.setattr(Trainer, name, windowed)
        original_log = problem.log_metrics

        def log_metrics():
            with counter.allowed():
                return original_log()

        problem.log_metrics = log_metrics
        state = trainer.fit()
    assert state.step == 10
    inside = [what for what, ok in counter.events if ok]
    assert inside, "the log steps' reads were not seen: the counter is not counting"
    if backend_name == "cpu":
        assert counter.outside() == [], f"host reads outside log steps: {counter.outside()}"
    else:
        assert counter.outside(), "the torch reference reads the device: expected some reads to be listed"
    assert [r["step"] for r in map(__import__("json").loads, trainer.run.metrics_path.read_text().splitlines())] \
        == [5, 10]


@pytest.mark.gpu
def test_nerf_steps_do_not_synchronise_the_gpu(scene, tmp_path):
    """The same steps on the GPU under CUDA's sync debug mode, where any synchronising call raises: 5 steps after a
    warm-up (kernel compilation and first allocations may synchronise), none of them a log step."""
    from ngp_cli.train import _Progress

    problem, trainer = _problem_and_trainer(scene, tmp_path, "cuda", steps=12, log_every=6)
    trainer.cfg.train.n_steps = 6
    trainer.fit()
    trainer.cfg.train.n_steps = 12
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(KeyboardInterrupt):  # the stop request after step 11, before log step 12
            trainer._loop(_Progress(12, 6, True), 0.0, 0, lambda: trainer.state.step == 11)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.state.step == 11

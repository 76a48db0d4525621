"""Data-parallel training (issue 19, part 1; ngp_cli/distributed.py): sampling shards, the gradient all-reduce, rank 0's
writes, checkpoints that resume on another process count, the replica check, and a killed process. The multi-process
tests start real processes (``--nproc 2``: torch.distributed's elastic agent, gloo on the CPU) on tiny inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ngp_cli import distributed as dist
from ngp_cli.errors import EXIT_CONFIG, EXIT_DISTRIBUTED, ConfigError, DistributedError
from ngp_cli.launch import strip_option

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")

# ---------------------------------------------------------------------------------------------------------------------
# Pieces


def test_shards_are_shared_out_evenly():
    assert dist.resolve_shards(0, 1) == 1 and dist.resolve_shards(0, 4) == 4 and dist.resolve_shards(6, 3) == 6
    with pytest.raises(ConfigError, match="sampling_shards=3 cannot be shared out over 2 processes"):
        dist.resolve_shards(3, 2)
    owned = [list(dist.local_shards(6, dist.World(rank=r, size=3))) for r in range(3)]
    assert owned == [[0, 1], [2, 3], [4, 5]]


def test_shard_seeds_differ_from_each_other_and_from_the_runs_own():
    seeds = [dist.shard_seed(1337, k) for k in range(64)]
    assert len(set(seeds)) == 64 and 1337 + 1 not in seeds and 1337 not in seeds
    assert all(0 <= s < 2**63 for s in seeds + [dist.shard_seed(2**63 - 1, 7)])


def test_strip_option_removes_both_spellings():
    args = ["fit-image", "a.png", "--nproc", "2", "--steps", "5", "--nproc=3", "--name", "x"]
    assert strip_option(args, "--nproc") == ["fit-image", "a.png", "--steps", "5", "--name", "x"]


def test_the_fingerprint_sees_every_byte_and_name():
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2, dtype=torch.uint8)}
    base = dist.state_fingerprint(a)
    assert dist.state_fingerprint({k: v.clone() for k, v in a.items()}) == base
    changed = {**a, "w": a["w"].clone()}
    changed["w"][1, 2] = torch.nextafter(changed["w"][1, 2], torch.tensor(10.0))
    assert dist.state_fingerprint(changed) != base
    assert dist.state_fingerprint({"v": a["w"], "b": a["b"]}) != base
    dist.check_replicas(a, dist.World(), 5)  # one process: nothing to compare


def test_one_process_reduces_nothing():
    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    extras = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_gradients(model, dist.World(), extras) is extras
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before, strict=True))


def _replica_worker(rank: int, port: int, same: bool, out) -> None:
    import datetime

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=60))
    world = dist.World(rank=rank, size=2)
    state = {"w": torch.arange(4.0), "grid": torch.zeros(3, dtype=torch.uint8)}
    if not same and rank == 1:
        state["grid"][2] = 1  # one occupancy cell differs
    try:
        dist.check_replicas(state, world, step=7)
        out.put((rank, "ok"))
    except DistributedError as err:
        out.put((rank, str(err)))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("same", [True, False])
def test_the_replica_check_compares_two_processes(same):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_replica_worker, args=(port, same, queue), nprocs=2, join=True)
    results = dict(queue.get() for _ in range(2))
    if same:
        assert results == {0: "ok", 1: "ok"}
    else:
        for rank in (0, 1):
            assert "at step 7 the state of process(es) [1] differs from process 0's" in results[rank]


# ---------------------------------------------------------------------------------------------------------------------
# Real processes


def _test_env() -> dict[str, str]:
    # One MLP path for every process of every run compared here: a process measures its fastest path per thread
    # count, and a 1-process run (2 threads) could otherwise pick another than the processes of a 2-process run
    # (1 thread each; those agree on rank 0's choice).
    from ngp_cli.cuda.cpu_mlp import cpu_compute_dtype

    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "NGP_CPU_MLP": "bf16" if cpu_compute_dtype() == torch.bfloat16 else "fp32"}
    env.pop("WORLD_SIZE", None)
    return env


def _ngp(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = _test_env()
    return subprocess.run([sys.executable, "-m", "ngp_cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    import imageio.v3 as iio

    root = tmp_path_factory.mktemp("dp")
    x = np.linspace(0.0, 1.0, 48)
    u, v = np.meshgrid(x, x)
    img = np.stack([u, v, np.sin(6 * u * v) * 0.5 + 0.5], -1)
    iio.imwrite(root / "img.png", (img * 255).astype(np.uint8))
    return root / "img.png"


_FIT = ["--set", "train.batch_size=2048", "--set", "train.log_every=5", "--set", "encoding.log2_hashmap_size=12",
        "-q", "--json"]


def _fit(image: Path, runs: Path, name: str, *extra: str) -> Path:
    result = _ngp("fit-image", str(image), "--runs-dir", str(runs), "--name", name, *_FIT, *extra, cwd=runs.parent)
    assert result.returncode == 0, result.stderr
    done = [json.loads(line) for line in result.stdout.splitlines() if '"event":"done"' in line]
    assert len(done) == 1, result.stdout  # one process printed the result
    return Path(done[0]["run_dir"])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run / "checkpoints").glob("step-*.safetensors"))[-1]
    return {k: v for k, v in load_file(newest).items() if k.startswith(("model.", "optim.", "rng."))}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    # Bit for bit with bf16 matmuls here; fp32 ones (CPUs without bf16) may sum in another order on 1 thread than
    # on 2, hence a tolerance far below what other samples would change (the "single" run differs by ~1e-2).
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=1e-5, rtol=0, msg=k)


def test_two_processes_train_as_one_process_with_two_shards(image, tmp_path):
    runs = tmp_path / "runs"
    tiles = ("--set", "image.tile_pixels=1024")  # 48×48: 3 tiles of 21 rows, dealt out over the processes
    two = _fit(image, runs, "two", "--steps", "30", "--nproc", "2", *tiles)
    one = _fit(image, runs, "one", "--steps", "30", "--set", "distributed.sampling_shards=2", *tiles)
    single = _fit(image, runs, "single", "--steps", "30")
    _assert_same(_weights(two), _weights(one))
    # The final evaluation's tiles were shared out and sent to rank 0: the same images and PSNR as one process.
    import imageio.v3 as iio

    for name in ("reconstruction.png", "error.png"):
        assert np.array_equal(iio.imread(two / "renders" / name), iio.imread(one / "renders" / name)), name
    psnr = [json.loads((r / "summary.json").read_text())["metrics"]["psnr"] for r in (two, one)]
    assert psnr[0] == pytest.approx(psnr[1], abs=1e-9)
    # Two shards draw other samples than one: the comparison above is not between identical runs by accident.
    assert not torch.equal(_weights(single)["model.network.weights.0"], _weights(one)["model.network.weights.0"])
    summary = json.loads((two / "summary.json").read_text())
    assert summary["metrics"]["processes"] == 2 and summary["step"] == 30
    assert "sampling_shards: 2" in (two / "config.yaml").read_text()
    lines = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [5, 10, 15, 20, 25, 30]  # rank 0 alone wrote them


@pytest.mark.parametrize("first, then", [(["--nproc", "2"], []), ([], ["--nproc", "2"])])
def test_a_run_resumes_on_another_process_count(image, tmp_path, first, then):
    runs = tmp_path / "runs"
    straight = _fit(image, runs, "straight", "--steps", "30", "--set", "distributed.sampling_shards=2")
    part = _fit(image, runs, "part", "--steps", "15", "--set", "distributed.sampling_shards=2", *first)
    result = _ngp("fit-image", "--resume", str(part), "--steps", "30", *_FIT[-2:], *then, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _assert_same(_weights(part), _weights(straight))


# A NeRF small enough for two processes on two cores, checkpointed (and so replica-checked) every 8 steps.
_NERF_2P = ("--json", "-q", "--set", "train.batch_size=4096", "--set", "nerf.n_rays_initial=256",
              "--set", "encoding.log2_hashmap_size=12", "--set", "train.checkpoint_every=8",
              "--set", "nerf.grid_update_interval=4", "--set", "nerf.grid_warmup_steps=8")


def test_a_nerf_run_keeps_its_replicas_identical_and_shares_out_the_evaluation(tmp_path):
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    scene = make_synthetic_scene(tmp_path / "scene", n_train=8, n_val=3, resolution=24)
    result = _ngp("train-nerf", str(scene), "--steps", "24", "--runs-dir", str(tmp_path / "runs"), "--nproc", "2",
                  *_NERF_2P, "--set", "nerf.render_views=2", "--set", "train.log_every=8",
                  "--set", "optimizer.ema_decay=0.9", cwd=tmp_path)
    # The replica check at every checkpoint (steps 8, 16, 24) compared the model, the occupancy grid, the EMA and the
    # optimizer state of both processes; a difference would have stopped the run with exit 8.
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["metrics"]["processes"] == 2 and done["step"] == 24 and done["metrics"]["n_views"] == 3
    run = Path(done["run_dir"])
    # The 3 val views were shared out (rank 0: views 0 and 2, rank 1: view 1); one process scores them alike (to
    # 1e-3 dB: a process of two runs on one thread, and its bf16 matmuls sum in another order than on two).
    shared = json.loads((run / "eval_val.json").read_text())
    assert sorted(p.name for p in (run / "renders").glob("val_*.png")) == ["val_r_0.png", "val_r_1.png"]
    again = _ngp("eval", str(run), "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    alone = json.loads((run / "eval_val.json").read_text())
    assert [v["view"] for v in shared["views"]] == [v["view"] for v in alone["views"]] == [0, 1, 2]
    for a, b in zip(shared["views"], alone["views"], strict=True):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-3)
    # ngp eval on 2 processes: the views shared out again, one view line each and one done line, the same numbers.
    split = _ngp("eval", str(run), "--nproc", "2", "-q", cwd=tmp_path)
    assert split.returncode == 0, split.stderr
    events = [json.loads(x) for x in split.stdout.splitlines()]
    assert sorted(e["view"] for e in events if e["event"] == "view") == [0, 1, 2]
    assert [e["event"] for e in events].count("done") == 1
    both = json.loads((run / "eval_val.json").read_text())
    for a, b in zip(both["views"], alone["views"], strict=True):
        assert a["view"] == b["view"] and a["psnr"] == pytest.approx(b["psnr"], abs=1e-3)
    # ngp render on 2 processes: frames dealt out, written in order by rank 0, the same frames as one process (up to
    # a level here and there: a process of two runs on one thread, whose matmuls sum in another order).
    import imageio.v3 as iio

    outs = {}
    for name, extra in (("one", ()), ("two", ("--nproc", "2"))):
        outs[name] = tmp_path / f"frames_{name}"
        rendered = _ngp("render", str(run), "--orbit", "3", "--out", str(outs[name]), "-q", *extra, cwd=tmp_path)
        assert rendered.returncode == 0, rendered.stderr
    frames = sorted(p.name for p in outs["one"].glob("*.png"))
    assert len(frames) == 3 and frames == sorted(p.name for p in outs["two"].glob("*.png"))
    for f in frames:
        a, b = (iio.imread(outs[n] / f).astype(int) for n in ("one", "two"))
        assert np.abs(a - b).max() <= 2 and np.mean(a != b) < 0.05, f
    assert not np.array_equal(iio.imread(outs["one"] / frames[0]), iio.imread(outs["one"] / frames[1]))  # in order


def test_a_saliency_pruned_nerf_run_keeps_its_replicas_identical_on_two_processes(tmp_path):
    # HollowNeRF's mask (issue 20): every process runs the same ADMM steps on its replica of the mask, and the prune
    # picks the same support everywhere. The replica check at every checkpoint (8, 16, 24, 32: before, during and
    # after the prune at 24) compares the mask's values and its ADMM buffers (z, u, support) with the rest.
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    scene = make_synthetic_scene(tmp_path / "scene", n_train=8, n_val=2, resolution=24)
    result = _ngp("train-nerf", str(scene), "--steps", "32", "--runs-dir", str(tmp_path / "runs"), "--nproc", "2",
                  *_NERF_2P, "--set", "nerf.render_views=0", "--set", "nerf.saliency_prune=true",
                  "--set", "nerf.saliency_resolution=16", "--set", "nerf.saliency_start=8",
                  "--set", "nerf.saliency_admm_interval=4", "--set", "nerf.saliency_prune_step=24", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["metrics"]["processes"] == 2 and done["step"] == 32
    assert done["metrics"]["saliency_kept"] == pytest.approx(0.2, abs=1e-3)  # the target share of 16^3 vertices


def test_an_sdf_run_trains_on_two_processes_with_identical_replicas(tmp_path):
    import trimesh

    mesh = tmp_path / "sphere.obj"
    trimesh.creation.icosphere(subdivisions=3).export(mesh)
    result = _ngp("train-sdf", str(mesh), "--steps", "20", "--runs-dir", str(tmp_path / "runs"), "--nproc", "2",
                  "--json", "-q", "--set", "encoding.log2_hashmap_size=12", "--set", "train.batch_size=4096",
                  "--set", "train.checkpoint_every=10", "--set", "sdf.sample_bank=16384",
                  "--set", "sdf.bank_refresh=256", "--set", "sdf.iou_points=16384", "--set", "sdf.eval_iou_points=4096",
                  "--set", "sdf.mesh_resolution=32", "--set", "sdf.chamfer_points=4096", "--set", "sdf.render_views=1",
                  "--set", "sdf.render_size=32", "--set", "optimizer.ema_decay=0.9", cwd=tmp_path)
    # Replica check at steps 10 and 20 (model, Adam state, EMA); rank 0 alone evaluated and wrote.
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["event"] == "done" and done["step"] == 20 and done["metrics"]["processes"] == 2
    assert 0.0 <= done["metrics"]["iou"] <= 1.0


_NRC = ["--frames", "3", "--spp", "1", "--json", "-q", "--set", "nrc.width=24", "--set", "nrc.height=20",
        "--set", "nrc.warmup_frames=1", "--set", "nrc.train_paths=512", "--set", "nrc.reference_spp=16",
        "--set", "encoding.log2_hashmap_size=12", "--set", "network.n_hidden_layers=2"]


def _nrc(runs: Path, name: str, *extra: str) -> tuple[Path, list[dict]]:
    result = _ngp("train-nrc", "--runs-dir", str(runs), "--name", name, *_NRC, *extra, cwd=runs.parent)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events].count("done") == 1, result.stdout  # one process printed the result
    return Path(events[-1]["run_dir"]), events


def test_an_nrc_run_trains_alike_on_two_processes_and_on_one_with_two_shards(tmp_path):
    from ngp_cli.images import read_image

    runs = tmp_path / "runs"
    two, two_events = _nrc(runs, "two", "--nproc", "2")
    one, one_events = _nrc(runs, "one", "--set", "distributed.sampling_shards=2")
    single, _ = _nrc(runs, "single")
    # The same training vertices and losses frame by frame, the same cache (the replica check at the end compared
    # both processes' caches, Adam moments and EMAs), and the same NRC image (its samples were shared out, summed).
    frames = [[(e["train_vertices"], e["loss"]) for e in ev if e["event"] == "frame"] for ev in (two_events, one_events)]
    assert len(frames[0]) == 3 and [v for v, _ in frames[0]] == [v for v, _ in frames[1]]
    assert np.allclose([x for _, x in frames[0]], [x for _, x in frames[1]], rtol=1e-5, atol=0)
    _assert_same(_weights(two), _weights(one))
    nrc = [read_image(r / "renders" / "nrc.exr") for r in (two, one)]
    assert np.allclose(nrc[0], nrc[1], rtol=1e-5, atol=1e-6)
    # The reference too (rendered in two shards, one per process, and cached under the shard count).
    ref = [read_image(r / "renders" / "reference.exr") for r in (two, one, single)]
    assert np.allclose(ref[0], ref[1], rtol=1e-5, atol=1e-6) and not np.allclose(ref[0], ref[2])
    # One shard draws other paths: the agreement above is not between identical runs by accident.
    assert not torch.equal(_weights(single)["model.network.weights.0"], _weights(one)["model.network.weights.0"])
    done = json.loads((two / "summary.json").read_text())
    assert done["metrics"]["processes"] == 2 and "sampling_shards: 2" in (two / "config.yaml").read_text()
    assert [json.loads(x)["frame"] for x in (two / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert len(list((two / "frames").glob("*.png"))) == 3  # rank 0 alone wrote


def test_shards_that_do_not_split_over_the_processes_are_a_config_error(image, tmp_path):
    result = _ngp("fit-image", str(image), "--runs-dir", str(tmp_path / "runs"), "--steps", "5", "--nproc", "2",
                  "--set", "distributed.sampling_shards=3", cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert "sampling_shards=3 cannot be shared out over 2 processes" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("ngp: config error") == 1  # rank 0's line only


def _children_with_rank(parent: int, rank: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the processes")
def test_a_killed_process_stops_the_run_with_one_line(image, tmp_path):
    runs = tmp_path / "runs"
    env = _test_env()
    proc = subprocess.Popen([sys.executable, "-m", "ngp_cli", "fit-image", str(image), "--runs-dir", str(runs),
                             "--name", "killed", "--steps", "1000000", "--nproc", "2", "--set",
                             "train.checkpoint_every=20", "--set", "distributed.timeout_s=60", *_FIT],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        victims: list[int] = []
        while time.monotonic() < deadline:
            checkpoints = list(runs.glob("image/*/checkpoints/step-*.safetensors"))
            victims = _children_with_rank(proc.pid, 1)
            if checkpoints and victims:
                break
            time.sleep(0.2)
        assert checkpoints and victims, "the run did not get going"
        os.kill(victims[0], signal.SIGKILL)
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=90)
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_DISTRIBUTED, stderr
    assert waited < 60
    assert "process 1 of 2 was killed by signal 9" in stderr and "Traceback" not in stderr
    lines = [x for x in stderr.splitlines() if x.startswith("ngp:")]
    assert 1 <= len(lines) <= 2, stderr  # the launcher's line, and rank 0's own when it noticed first
    run = next(runs.glob("image/*"))
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]  # no half-written checkpoint
    resumed = _ngp("fit-image", "--resume", str(run), "--steps", str(_last_step(run) + 5), "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def _last_step(run: Path) -> int:
    return int(sorted((run / "checkpoints").glob("step-*.safetensors"))[-1].stem.split("-")[1])


def test_distributed_error_is_exit_8():
    assert DistributedError("x").exit_code == EXIT_DISTRIBUTED == 8


def test_ctrl_c_stops_every_process_at_one_step_with_a_checkpoint(image, tmp_path):
    runs = tmp_path / "runs"
    env = _test_env()
    proc = subprocess.Popen([sys.executable, "-m", "ngp_cli", "fit-image", str(image), "--runs-dir", str(runs),
                             "--name", "ctrl-c", "--steps", "1000000", "--nproc", "2", *_FIT], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(runs.glob("image/*/metrics.jsonl")):
            time.sleep(0.2)
        time.sleep(1.0)  # a few steps logged
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the launcher (the processes have their own sessions)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    lines = [x for x in stderr.splitlines() if x.startswith("ngp:")]
    assert len(lines) == 1 and lines[0].startswith("ngp: interrupted: stopped at step "), stderr
    assert "Traceback" not in stderr and "death signal" not in stderr
    run = next(runs.glob("image/*"))
    step = _last_step(run)
    assert f"stopped at step {step};" in lines[0]  # both processes stopped at the step the checkpoint holds
    resumed = _ngp("fit-image", "--resume", str(run), "--steps", str(step + 5), "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Spatial partitioning (NeRF-XL, distributed.partition)

_TINY_NERF = ("--set", "train.batch_size=4096", "--set", "nerf.n_rays_initial=256", "--set",
              "encoding.log2_hashmap_size=12", "--set", "nerf.grid_update_interval=4", "--set",
              "nerf.grid_warmup_steps=8", "--set", "train.log_every=8", "--set", "optimizer.ema_decay=0.9", "--set",
              "nerf.render_views=1", "--set", "train.checkpoint_every=8", "--set", "distributed.partition=2")


def test_a_partitioned_nerf_trains_alike_on_two_processes_and_on_one_and_resumes_across(tmp_path):
    """Two processes (a part each, segments all-gathered and combined) take the steps one process holding both parts
    takes: the same checkpoint. It resumes on the other process count, and the 2-process evaluation (each process
    renders its segments) scores the views as one process rendering the parts as one field."""
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    scene = make_synthetic_scene(tmp_path / "scene", n_train=8, n_val=2, resolution=24)
    runs = tmp_path / "runs"

    def train(name: str, *extra: str) -> tuple[Path, dict]:
        result = _ngp("train-nerf", str(scene), "--runs-dir", str(runs), "--name", name, "--json", "-q",
                      *_TINY_NERF, *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        done = [json.loads(x) for x in result.stdout.splitlines() if '"event":"done"' in x]
        assert len(done) == 1, result.stdout
        return Path(done[0]["run_dir"]), done[0]

    two, two_done = train("two", "--steps", "16", "--nproc", "2")
    one, _ = train("one", "--steps", "16")
    _assert_same(_weights(two), _weights(one))
    weights = _weights(two)
    # One checkpoint of the whole model: both parts, each with hash tables of T / 2 entries per level.
    assert weights["model.parts.0.encoding.params"].shape == weights["model.parts.1.encoding.params"].shape
    assert not any(k.startswith("model.encoding") for k in weights)
    assert two_done["metrics"]["processes"] == 2 and "sampling_shards: 1" in (two / "config.yaml").read_text()
    # Resumed on the other process count, both continue as the straight run.
    straight, _ = train("straight", "--steps", "24")
    for run, extra in ((two, ()), (one, ("--nproc", "2"))):
        result = _ngp("train-nerf", "--resume", str(run), "--steps", "24", "-q", "--json", *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        _assert_same(_weights(run), _weights(straight))
    # The 2-process final evaluation (segments combined) against one process's piecewise rendering.
    shared = json.loads((two / "eval_val.json").read_text())
    again = _ngp("eval", str(two), "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    alone = json.loads((two / "eval_val.json").read_text())
    for a, b in zip(shared["views"], alone["views"], strict=True):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-3)


def test_a_partition_on_the_wrong_process_count_or_task_is_a_config_error(image, tmp_path):
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    scene = make_synthetic_scene(tmp_path / "scene", n_train=4, n_val=1, resolution=16)
    result = _ngp("train-nerf", str(scene), "--runs-dir", str(tmp_path / "runs"), "--steps", "2", "--nproc", "2",
                  "--set", "distributed.partition=4", "-q", cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "distributed.partition=4 runs on 1 process or on 4" in result.stderr
    assert "Traceback" not in result.stderr
    result = _ngp("fit-image", str(image), "--runs-dir", str(tmp_path / "runs"), "--steps", "2",
                  "--set", "distributed.partition=2", "-q", cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG and "only NeRF runs are partitioned" in result.stderr, result.stderr
    result = _ngp("train-nerf", str(scene), "--runs-dir", str(tmp_path / "runs"), "--steps", "2",
                  "--set", "distributed.partition=3", "-q", cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG and "must be one of 1, 2, 4, 8" in result.stderr, result.stderr
    # Radiance caching: no partition, and its training paths must split into the shards (before anything is written).
    for bad, message in (("distributed.partition=2", "only NeRF runs are partitioned"),
                         ("distributed.sampling_shards=3", "nrc.train_paths=8192 cannot be cut into")):
        result = _ngp("train-nrc", "--runs-dir", str(tmp_path / "nrc"), "--set", bad, "-q", cwd=tmp_path)
        assert result.returncode == EXIT_CONFIG and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "nrc").exists()


def test_a_two_partition_nerf_scores_as_one_model(tmp_path):
    """The issue's quality check: a 2-partition NeRF on 2 processes, against one model, on a small scene, the same
    steps and config: held-out PSNR within 0.5 dB (measured 25.05 against 25.19 dB for this seed; over four seeds the
    largest gap was 0.41 dB)."""
    from ngp_cli.tasks.nerf.synthetic import make_synthetic_scene

    scene = make_synthetic_scene(tmp_path / "scene", n_train=16, n_val=4, resolution=32)
    psnr = {}
    for parts, extra in ((1, ()), (2, ("--nproc", "2"))):
        result = _ngp("train-nerf", str(scene), "--runs-dir", str(tmp_path / "runs"), "--name", f"p{parts}",
                      "--steps", "1000", "--json", "-q", "--preset", "nerf-cpu", "--set", "train.batch_size=8192",
                      "--set", "nerf.n_rays_initial=512", "--set", "encoding.log2_hashmap_size=14",
                      "--set", f"distributed.partition={parts}", *extra, cwd=tmp_path, timeout=600)
        assert result.returncode == 0, result.stderr
        done = [json.loads(x) for x in result.stdout.splitlines() if '"event":"done"' in x]
        psnr[parts] = done[0]["metrics"]["psnr"]
    assert psnr[1] > 23.0, psnr  # the scene was learned at all
    assert abs(psnr[2] - psnr[1]) <= 0.5, psnr

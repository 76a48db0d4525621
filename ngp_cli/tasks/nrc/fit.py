"""``ngp train-nrc``: progressive rendering with a radiance cache trained online, then path tracing at equal time,
both measured against a converged reference.

Per frame (Müller et al. 2021, §5): ``nrc.train_paths`` training paths from random pixels (a fraction
``nrc.unbiased_fraction`` of them unbiased, the rest ending in the cache ``nrc.suffix`` vertices past the spread
threshold), ``nrc.train_steps`` optimizer steps on all their vertices (loss: relative L2 normalised by luminance),
then a frame at ``nrc.spp`` samples per pixel whose paths end in the cache. The NRC image is the mean of the frames
after ``nrc.warmup_frames`` (with ``nrc.frames <= nrc.warmup_frames``, one warning and only the last frame); the
path tracer then runs frames at the same spp for the same total wall time (training included), and both are compared
with the reference (``nrc.reference_spp``, cached on disk). Each frame is also written to ``frames/`` as
:func:`~ngp_cli.video.frame_name` (``frame_00000.png`` is the frame of the ``"frame": 1`` line), published when the
run completes.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ngp_cli.commands import TrainOptions, create_run, finish, prepare
from ngp_cli.config import set_config_value
from ngp_cli.console import emit, info, warn
from ngp_cli.distributed import (
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_object,
    check_replicas,
    comm_seconds,
    current_world,
    join_run,
    leave_quietly,
    local_shards,
    pin_local_gpu,
    resolve_shards,
    shard_generators,
    shutdown_world,
)
from ngp_cli.errors import ConfigError
from ngp_cli.images import write_image
from ngp_cli.metrics import luminance
from ngp_cli.runs import atomic_write, cache_dir
from ngp_cli.tasks.nrc.cache import NeuralRadianceCache
from ngp_cli.tasks.nrc.config import NrcConfig
from ngp_cli.tasks.nrc.scene import Scene, cornell_box, load_scene
from ngp_cli.tasks.nrc.tracer import Camera, SceneTensors, render_samples, trace
from ngp_cli.train import EMA, make_loss, make_optimizer, sampling_generator, state_tensors
from ngp_cli.video import FrameWriter


def relmse(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative MSE, mean over pixels and channels of (I − R)² / (R² + 0.01) (the NRC paper's metric)."""
    return float(((image - reference).square() / (reference.square() + 0.01)).double().mean())


def mse(image: torch.Tensor, reference: torch.Tensor) -> float:
    return float((image - reference).square().double().mean())


def tonemap(image: torch.Tensor) -> np.ndarray:
    """Linear (H, W, 3) → 8-bit sRGB-ish (clamp to [0, 1], gamma 2.2)."""
    return (image.clamp(0, 1).pow(1 / 2.2).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def render_shared(st: SceneTensors, camera: Camera, spp: int, generators: dict[int, torch.Generator], shards: int,
                  world, **trace_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """An (H, W, 3) float32 image at ``spp`` samples per pixel and its part from the cache, as
    :func:`~ngp_cli.tasks.nrc.tracer.render_image`, with the work shared out over the processes: the W·H·spp paths
    are cut into ``shards`` contiguous pieces, piece ``k`` traced with shard ``k``'s generator by the process owning
    it (``generators``, by shard index), and the sums all-reduced. So one shard count gives the same image
    on any number of processes (up to float summation order); one shard on one process is ``render_image`` exactly.
    A collective. Raises DistributedError."""
    w, h = camera.width, camera.height
    pieces = torch.arange(w * h * spp, device=st.device).tensor_split(shards)
    total = torch.zeros(w * h, 3, device=st.device)
    cached = torch.zeros_like(total)
    for k, generator in sorted(generators.items()):
        t, c = render_samples(st, camera, pieces[k] % (w * h), generator, **trace_kwargs)
        total += t
        cached += c
    both = all_reduce_sum(torch.stack([total, cached]), world)
    return (both[0] / spp).reshape(h, w, 3), (both[1] / spp).reshape(h, w, 3)


def reference_image(st: SceneTensors, camera: Camera, spp: int, *, shards: int = 1, world=None,
                    **trace_kwargs) -> tuple[torch.Tensor | None, float, bool]:
    """The converged reference: ``spp`` samples per pixel of plain path tracing with the run's tracer settings
    (``trace_kwargs`` of :func:`render_image`), cached on disk per scene, image size, spp, settings and sampling
    shards (``$NGP_CACHE_DIR/nrc-references``). Rendered as :func:`render_shared` with ``shards`` pieces seeded
    12345 + k, shared out over ``world``'s processes (a collective); rank 0 reads and writes the cache.

    Returns ``(image (H, W, 3) float32 on rank 0, None on the others; seconds to render; from cache)``."""
    world = world or current_world()
    settings = "-".join(f"{k}{v}" for k, v in sorted(trace_kwargs.items()) if k != "chunk")
    pieces = f"-{shards}shards" if shards > 1 else ""
    path = cache_dir("nrc-references") / (f"{st.scene.fingerprint()}-{camera.width}x{camera.height}-{spp}spp-"
                                         f"{settings}{pieces}.npy")
    image = None
    if world.is_main and path.is_file():
        try:
            image = torch.from_numpy(np.load(path, allow_pickle=False)).to(st.device)
        except (OSError, ValueError):
            pass  # a corrupt cache entry: render again
    if broadcast_object(image is not None, world):
        return image, 0.0, True
    info(f"rendering the reference: {camera.width}x{camera.height} at {spp} spp (cached for later runs)")
    t0 = time.perf_counter()
    generators = {k: torch.Generator().manual_seed(12345 + k) for k in local_shards(shards, world)}
    image, _ = render_shared(st, camera, spp, generators, shards, world, **trace_kwargs)
    seconds = time.perf_counter() - t0
    if not world.is_main:
        return None, seconds, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.save(tmp, image.cpu().numpy()), suffix=".npy")
    except Exception as exc:  # the cache is an optimisation: a read-only home must not fail the run
        info(f"could not cache the reference ({exc})")
    return image, seconds, False


def _load(scene_path: Path | None) -> tuple[Scene, str]:
    if scene_path is None:
        return cornell_box(), ""
    path = scene_path.expanduser().resolve()
    return load_scene(path), str(path)


def _side_by_side(images: list[torch.Tensor]) -> np.ndarray:
    gap = torch.ones(images[0].shape[0], 4, 3, device=images[0].device)
    row = [images[0]]
    for im in images[1:]:
        row += [gap, im]
    return tonemap(torch.cat(row, dim=1))


def train_nrc(task, opts: TrainOptions, scene_path: Path | None) -> None:
    """The ``ngp train-nrc`` command body, on one process or data-parallel under torchrun (``--nproc``): each
    frame's training paths and image samples are cut into ``distributed.sampling_shards`` shards with their own
    generators, each process traces its shards', the gradients are summed over the processes (every process then
    takes the same step, so the caches stay identical) and the images are summed; rank 0 alone writes. One shard
    count gives the same run on any process count (docs/distributed.md). Raises NgpError subclasses on bad input."""
    pin_local_gpu()
    prep = prepare(task, opts)
    cfg: NrcConfig = prep.cfg
    nc = cfg.nrc
    world = join_run(cfg, prep.backend, partitioned=False)
    shards = resolve_shards(cfg.distributed.sampling_shards, world.size)
    if nc.train_paths % shards:
        raise ConfigError(f"nrc.train_paths={nc.train_paths} cannot be cut into distributed.sampling_shards="
                          f"{shards} equal shards")
    set_config_value(cfg, "distributed.sampling_shards", shards)
    scene, recorded = _load(scene_path)
    cfg.nrc.scene = recorded
    device = prep.backend.device
    st = SceneTensors(scene, device)
    camera = Camera.from_scene(scene, nc.width, nc.height, device)
    tracing = {"chunk": nc.chunk, "max_depth": nc.max_depth, "rr_depth": nc.rr_depth}
    reference, reference_s, cached = reference_image(st, camera, nc.reference_spp, shards=shards, world=world,
                                                     **tracing)
    run = create_run(task, opts, cfg, default_name=scene.name) if world.is_main else None
    processes = f"; {world.size} processes, {shards} sampling shards" if world.distributed else ""
    info(f"scene {scene.name}: {len(scene.faces):,} triangles, {st.light_faces.numel()} emissive; "
         f"{nc.width}x{nc.height}, {nc.frames} frames at {nc.spp} spp; backend {prep.backend.name} on {device}"
         f"{processes}; reference {nc.reference_spp} spp " + ("(cached)" if cached else f"({reference_s:.1f} s)"))

    init = torch.Generator().manual_seed(cfg.seed)
    model = NeuralRadianceCache(cfg, st.lo, st.size, generator=init,
                                kernel_target=prep.backend.kernel_target).to(device)
    optimizer = make_optimizer(model, cfg.optimizer)
    # The paper renders with an exponential moving average of the weights, which steadies the cache between frames.
    ema = EMA(list(model.parameters()), cfg.optimizer.ema_decay) if cfg.optimizer.ema_decay > 0 else None
    loss_fn = make_loss(cfg.loss)
    # this process's sampling generators by shard, as the Trainer's: the run's own for one shard
    generators = {0: sampling_generator(cfg)} if shards == 1 else shard_generators(cfg.seed, shards, world)
    warmup = nc.warmup_frames
    if nc.frames <= warmup:
        # Accumulating nothing would compare an empty image; the last frame is the best the run has.
        warmup = nc.frames - 1
        warn(f"nrc.frames={nc.frames} is not more than nrc.warmup_frames={nc.warmup_frames}: "
             "the NRC image is only the last frame, rendered by a barely trained cache")

    accumulated = torch.zeros(nc.height, nc.width, 3, device=device)
    cached_sum = torch.zeros_like(accumulated)
    n_acc = 0
    nrc_time = 0.0
    frame_times, render_times, train_times = [], [], []
    loss_value = float("nan")
    # Frames are published when the loop completes; a failure leaves no partial folder.
    comm_start = comm_seconds()
    writer = FrameWriter(run.path / "frames") if world.is_main else contextlib.nullcontext()
    with writer as frame_writer:
        for frame in range(nc.frames):
            t0 = time.perf_counter()
            n_records, loss = _train_frame(model, optimizer, ema, loss_fn, st, camera, nc, generators, shards, world)
            if loss is not None:
                loss_value = loss
            t1 = time.perf_counter()
            model.eval()
            with torch.no_grad(), (ema.applied() if ema is not None else contextlib.nullcontext()):
                image, from_cache = render_shared(st, camera, nc.spp, generators, shards, world, cache=model,
                                                  spread_c=nc.spread_c, **tracing)
            t2 = time.perf_counter()
            nrc_time += t2 - t0
            frame_times.append(t2 - t0)
            train_times.append(t1 - t0)
            render_times.append(t2 - t1)
            if frame >= warmup:
                accumulated += image
                cached_sum += from_cache
                n_acc += 1
            if not world.is_main:
                continue
            share = float(luminance(from_cache).sum() / luminance(image).sum().clamp_min(1e-12))
            record = {"frame": frame + 1, "frame_s": round(t2 - t0, 4), "train_s": round(t1 - t0, 4),
                      "render_s": round(t2 - t1, 4), "train_vertices": n_records, "loss": loss_value,
                      "relmse_frame": relmse(image, reference), "cache_share": share}
            run.append_metrics(record)
            if opts.json:
                emit("frame", **record)
            frame_writer.write(tonemap(image))
            info(f"frame {frame + 1}/{nc.frames}: {record['frame_s'] * 1000:.0f} ms "
                 f"(train {record['train_s'] * 1000:.0f}, render {record['render_s'] * 1000:.0f}); "
                 f"relMSE {record['relmse_frame']:.4f}; cache share {share:.2f}")
    nrc_image = accumulated / max(n_acc, 1)
    comm_s = comm_seconds() - comm_start  # rank 0's time in the collectives of the NRC frames

    # Path tracing at equal time: frames at the same spp until it has used the NRC run's whole time (rank 0's clock
    # decides for every process).
    pt_sum = torch.zeros_like(accumulated)
    pt_frames, pt_time = 0, 0.0
    while not broadcast_object(pt_frames > 0 and pt_time >= nrc_time, world):
        t0 = time.perf_counter()
        with torch.no_grad():
            image, _ = render_shared(st, camera, nc.spp, generators, shards, world, **tracing)
        pt_sum += image
        pt_frames += 1
        pt_time += time.perf_counter() - t0
    # The caches, Adam moments and EMAs of all processes must be one (a collective; exit 8 if they are not).
    check_replicas(state_tensors(model, optimizer, ema), world, nc.frames)
    if not world.is_main:  # rank 0 writes the results
        leave_quietly()
    pt_image = pt_sum / pt_frames

    renders = run.renders_dir
    write_image(renders / "nrc.exr", nrc_image.cpu().numpy().astype(np.float32))
    write_image(renders / "pt_equal_time.exr", pt_image.cpu().numpy().astype(np.float32))
    write_image(renders / "reference.exr", reference.cpu().numpy().astype(np.float32))
    side = renders / "side_by_side.png"
    write_image(side, _side_by_side([pt_image, nrc_image, reference]))
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    ckpt = run.save_checkpoint(nc.frames, tensors, {"task": cfg.task, "frames": nc.frames, "nrc_time_s": nrc_time},
                               keep=cfg.train.keep_checkpoints)
    metrics: dict[str, Any] = {
        "relmse_nrc": relmse(nrc_image, reference), "relmse_pt_equal_time": relmse(pt_image, reference),
        "mse_nrc": mse(nrc_image, reference), "mse_pt_equal_time": mse(pt_image, reference),
        "nrc_frames_accumulated": n_acc, "warmup_frames": warmup, "nrc_time_s": round(nrc_time, 3),
        "nrc_frame_ms": round(1000 * float(np.mean(frame_times)), 2),
        "nrc_train_ms": round(1000 * float(np.mean(train_times)), 2),
        "nrc_render_ms": round(1000 * float(np.mean(render_times)), 2),
        "pt_frames": pt_frames, "pt_time_s": round(pt_time, 3), "pt_frame_ms": round(1000 * pt_time / pt_frames, 2),
        "cache_share": float(luminance(cached_sum).sum() / luminance(accumulated).sum().clamp_min(1e-12)),
        "spp_per_frame": nc.spp, "reference_spp": nc.reference_spp, "reference_s": round(reference_s, 3),
        "width": nc.width, "height": nc.height}
    if world.distributed:
        metrics["processes"] = world.size
        metrics["comm_s"] = round(comm_s, 3)
    info(f"relMSE against the {nc.reference_spp}-spp reference: NRC {metrics['relmse_nrc']:.4f} "
         f"({nc.frames} frames, {nrc_time:.1f} s), path tracing at equal time {metrics['relmse_pt_equal_time']:.4f} "
         f"({pt_frames} frames); {side}")
    artifacts = {"side_by_side": str(side), "nrc": str(renders / "nrc.exr"),
                 "pt_equal_time": str(renders / "pt_equal_time.exr"), "reference": str(renders / "reference.exr"),
                 "frames": str(run.path / "frames"), "checkpoint": str(ckpt)}
    finish(run, nc.frames, metrics, artifacts)
    shutdown_world()


def _train_frame(model, optimizer, ema, loss_fn, st: SceneTensors, camera: Camera, nc, generators, shards: int,
                 world) -> tuple[int, float | None]:
    """One frame's training (Müller et al. 2021, §5): each of this process's shards traces ``nc.train_paths /
    shards`` training paths from random pixels and shuffles their vertices into ``nc.train_steps`` batches; step
    ``j`` then trains on batch ``j`` of every shard, each shard's mean loss weighted by its share of the step's
    vertices over all processes, the gradients summed over the processes. Returns (training vertices over all
    processes, the last step's loss or None when no step had vertices). Collectives; raises DistributedError."""
    per = nc.train_paths // shards
    n_pixels = camera.width * camera.height
    device = st.device
    model.eval()
    batches = []
    for _, generator in sorted(generators.items()):
        pixels = torch.randint(0, n_pixels, (per,), generator=generator).to(device)
        o, d = camera.rays(pixels, torch.rand(per, 2, generator=generator).to(device))
        unbiased = (torch.rand(per, generator=generator) < nc.unbiased_fraction).to(device)
        records = trace(st, o, d, generator, max_depth=nc.max_depth, rr_depth=nc.rr_depth, cache=model,
                        spread_c=nc.spread_c, train=True, suffix=nc.suffix, unbiased=unbiased).records
        order = torch.randperm(records.features.shape[0], generator=generator).to(device)
        batches.append((records, order.tensor_split(nc.train_steps)))
    local = torch.tensor([[b.numel() for b in split] for _, split in batches], dtype=torch.float64).sum(0)
    counts = all_reduce_sum(local, world).tolist()
    model.train()
    loss_value = None
    for j, n_step in enumerate(counts):
        if n_step == 0:
            continue
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros(1)
        for records, split in batches:
            batch = split[j]
            if batch.numel() == 0:
                continue
            loss = loss_fn(model(records.features[batch]), records.targets[batch]) * (batch.numel() / n_step)
            loss.backward()
            step_loss += loss.detach().float().cpu()
        step_loss = all_reduce_gradients(model, world, step_loss)
        optimizer.step()
        if ema is not None:
            ema.update()
        loss_value = float(step_loss)
    return int(sum(counts)), loss_value

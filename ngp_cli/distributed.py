"""Data-parallel training on torch.distributed (issue 19, part 1): the process group, the gradient all-reduce and
the sampling shards every task's training shares through :class:`~ngp_cli.train.Trainer`.

Processes are started by torchrun (``torchrun --nproc-per-node N -m ngp_cli train-nerf ...``, multi-node through its
rendezvous) or by ``--nproc N`` on a training command, which starts torchrun's agent itself
(:func:`ngp_cli.launch.launch`). Each reads its
rank from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins
the group: NCCL on GPUs, gloo on CPUs. Nothing here manages processes or sockets of its own.

The scheme (docs/distributed.md):

* **Sampling shards.** A step's batch of ``train.batch_size`` samples is split into ``S = distributed.sampling_shards``
  shards of ``batch_size / S``, each drawn by its own generator seeded from the run seed (:func:`shard_seed`); process
  ``r`` of ``W`` draws shards ``r·S/W .. (r+1)·S/W - 1``. Randomness every process must share (the occupancy-grid
  update's cells) comes from one more generator, seeded as a single-process run's. A 1-process run with ``S`` shards
  draws exactly the samples of a ``W``-process run with ``S`` shards, and gets the same parameters up to float
  summation order.
* **Gradients.** Each process back-propagates ``loss_k / S`` for its shards (so the sum over all shards is the
  gradient of the batch's mean loss), then the gradients are summed over processes (:func:`all_reduce_gradients`:
  the hash tables in place, the small ones in one flat buffer), and every process takes the same optimizer step.
* **Writes.** Only rank 0 writes the run directory (metrics, checkpoints, renders, summary); the others read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from ngp_cli.errors import ConfigError, DistributedError

__all__ = ["World", "agree_cpu_mlp_path", "all_gather", "all_reduce_gradients", "all_reduce_sum", "broadcast_object",
           "check_replicas", "comm_seconds", "current_world", "gather_objects", "gather_to_main", "init_world",
           "join_run", "leave_quietly", "local_shards", "pin_local_gpu", "resolve_shards", "shard_generators", "shard_seed",
           "shared_tiles",
           "shutdown_world", "state_fingerprint"]

_SEED_MASK = (1 << 63) - 1
# Golden-ratio increment (splitmix64's): shard seeds far apart from each other and from the run's own seeds.
_SHARD_STRIDE = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run: ``rank`` of ``size`` (0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1


_world: list[World] = [World()]


def current_world() -> World:
    """The :class:`World` :func:`init_world` joined (one process of one before, or without torchrun)."""
    return _world[0]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def pin_local_gpu() -> None:
    """Under torchrun on a machine with GPUs, make GPU ``LOCAL_RANK`` this process's current device, before anything
    touches CUDA (the backend's device "cuda" then means that GPU). No-op otherwise."""
    if _env_int("WORLD_SIZE", 1) > 1 and torch.cuda.is_available():
        local = _env_int("LOCAL_RANK", 0)
        if local < torch.cuda.device_count():
            torch.cuda.set_device(local)


def init_world(device_type: str, timeout_s: float) -> World:
    """Join the run's process group when torchrun started this process (``WORLD_SIZE`` > 1): gloo for CPU devices,
    NCCL for CUDA ones (after selecting GPU ``LOCAL_RANK``), waiting at most ``timeout_s`` seconds for the others
    here and in every collective later. A no-op returning the one-process world otherwise, or when already joined.

    Raises:
        ConfigError: torchrun's variables are malformed.
        DistributedError: the group cannot be formed (a process missing, the rendezvous unreachable).
    """
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return current_world()
    if torch.distributed.is_initialized():
        return current_world()
    rank = _env_int("RANK", 0)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        pin_local_gpu()
    try:
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=size,
                                             timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, TimeoutError) as exc:
        raise DistributedError(f"process {rank} of {size} could not join the others ({backend}): "
                               f"{' '.join(str(exc).split())[:300]}") from None
    _world[0] = World(rank=rank, size=size)
    return _world[0]


def leave_quietly() -> None:
    """End a process of rank > 0 once its share is done: flush and exit at once (status 0), without tearing down
    torch's process-group threads. Their teardown at interpreter exit, while rank 0 still holds the group for its
    final evaluation, aborted the process in about one run in twenty (``terminate called without an active
    exception``, signal 6), which the launcher reports as a failed run. Rank > 0 writes nothing, so nothing is lost."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def agree_cpu_mlp_path(world: World) -> None:
    """Make every process run the cpu backend's MLP on rank 0's path (:func:`ngp_cli.cuda.cpu_mlp.cpu_mlp_path`,
    measured per process and thread count): left to themselves, processes measuring at the same time on shared cores
    could choose differently (bf16 against fp32), and their replicas would drift apart. Sets ``NGP_CPU_MLP`` on every
    process (unless the user set it). A collective; no-op for one process."""
    if not world.distributed or os.environ.get("NGP_CPU_MLP"):
        return
    from ngp_cli.cuda.cpu_mlp import cpu_mlp_path

    path = broadcast_object(cpu_mlp_path().path if world.is_main else None, world)
    os.environ["NGP_CPU_MLP"] = path


def join_run(cfg, backend, *, partitioned: bool) -> World:
    """What every training command does first under torchrun: refuse ``distributed.partition`` > 1 for a task that
    is not partitioned spatially (``partitioned`` False), join the process group (:func:`init_world`, on
    ``backend.device``, ``cfg.distributed.timeout_s``), silence the processes other than rank 0 (they neither print
    nor write) and, on the cpu backend, make every process use rank 0's MLP path (:func:`agree_cpu_mlp_path`).

    Raises ConfigError (a partition asked of another task) or DistributedError (the group cannot be formed)."""
    from ngp_cli.console import set_quiet

    if cfg.distributed.partition > 1 and not partitioned:
        raise ConfigError(f"distributed.partition={cfg.distributed.partition}: only NeRF runs are partitioned "
                          "spatially (leave it at 1)")
    world = init_world(backend.device.type, cfg.distributed.timeout_s)
    if not world.is_main:
        set_quiet(True)
    if backend.kernel_target == "cpu":
        agree_cpu_mlp_path(world)
    return world


def shutdown_world() -> None:
    """Leave the process group (at the end of a run); the world is one process again."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _world[0] = World()


def _collective(what: str, fn, *args, **kwargs):
    """Run a collective, turning a peer's death or a timeout into one DistributedError line."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, TimeoutError, ValueError) as exc:  # gloo/NCCL report both as RuntimeError
        world = current_world()
        raise DistributedError(f"process {world.rank} of {world.size}: {what} failed (another process died or "
                               f"stopped answering): {' '.join(str(exc).split())[:200]}") from None


def resolve_shards(configured: int, world_size: int) -> int:
    """The sampling shards of a run: ``configured`` (``distributed.sampling_shards``), or the process count for 0.

    Raises ConfigError when they cannot be shared out evenly over ``world_size`` processes."""
    shards = configured or world_size
    if shards % world_size:
        raise ConfigError(f"distributed.sampling_shards={shards} cannot be shared out over {world_size} processes: "
                          f"use a multiple of {world_size} (--set distributed.sampling_shards=...)")
    return shards


def local_shards(shards: int, world: World) -> range:
    """The shards process ``world.rank`` draws: a contiguous block of ``shards / world.size``."""
    per = shards // world.size
    return range(world.rank * per, (world.rank + 1) * per)


def shard_generators(seed: int, shards: int, world: World, device: torch.device | str = "cpu"
                     ) -> dict[int, torch.Generator]:
    """The generators of the shards process ``world.rank`` draws (:func:`local_shards`), by shard index, for a run
    seeded ``seed`` and cut into ``shards`` > 1 shards: each seeded :func:`shard_seed` on ``device``. (One shard
    draws from the run's own sampling generator, ``seed + 1``: ngp_cli.train.sampling_generator.)"""
    return {k: torch.Generator(device=device).manual_seed(shard_seed(seed, k)) for k in local_shards(shards, world)}


def shard_seed(seed: int, shard: int) -> int:
    """The sampling seed of shard ``shard`` (0-based) of a run seeded ``seed``: ``seed + 1 + (shard + 1)·φ`` mod
    2^63 (φ the 64-bit golden-ratio constant), apart from ``seed + 1``, the one-shard run's and the shared draws'."""
    return (seed + 1 + (shard + 1) * _SHARD_STRIDE) & _SEED_MASK


#: Gradients of at least this many elements are all-reduced in place, one call each; the smaller ones (the MLPs, the
#: step's loss and mse) are flattened into one buffer per dtype. A flat copy of a hash table's gradient would double
#: its memory (268 MB more for image-cpu's 2^21-entry tables), for no measurable gain in time.
IN_PLACE_ELEMENTS = 1 << 20


def all_reduce_gradients(model: nn.Module, world: World, extras: torch.Tensor | None = None) -> torch.Tensor | None:
    """Sum every parameter's gradient over the processes, in place (a gradient a process has not got counts as zero),
    and sum ``extras`` (a small float32 vector: the step's loss and batch mse) in the same exchange. Returns the summed
    ``extras`` (``extras`` itself for one process).

    Large gradients (:data:`IN_PLACE_ELEMENTS`) are all-reduced in place, the others in one flat buffer per dtype.
    Dense: the hash tables' gradients are reduced whole (docs/distributed.md gives the measured cost against
    exchanging the touched rows only). Raises DistributedError (a process died or timed out)."""
    if not world.distributed:
        return extras
    import time

    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    small: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad.numel() >= IN_PLACE_ELEMENTS and p.grad.is_contiguous():
            _collective("the gradient all-reduce", torch.distributed.all_reduce, p.grad)
        else:
            small.setdefault(p.grad.dtype, []).append(p.grad)
    if extras is not None:
        small.setdefault(extras.dtype, []).append(extras)
    for group in small.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        _collective("the gradient all-reduce", torch.distributed.all_reduce, flat)
        offset = 0
        for g in group:
            n = g.numel()
            if g is extras:
                extras = flat[offset:offset + n].view_as(g)
            else:
                g.copy_(flat[offset:offset + n].view_as(g))
            offset += n
    _COMM_SECONDS[0] += time.perf_counter() - t0
    return extras


_COMM_SECONDS = [0.0]


def comm_seconds() -> float:
    """Host seconds this process spent in :func:`all_reduce_gradients`, :func:`all_reduce_sum` and
    :func:`all_gather` so far (on the CPU the
    gloo collective itself, synchronous; with NCCL the time to enqueue it)."""
    return _COMM_SECONDS[0]


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """``values`` summed over the processes (a new tensor; the tensor itself for one process). The time counts in
    :func:`comm_seconds`. Raises DistributedError."""
    if not world.distributed:
        return values
    import time

    t0 = time.perf_counter()
    out = values.clone()
    _collective("an all-reduce", torch.distributed.all_reduce, out)
    _COMM_SECONDS[0] += time.perf_counter() - t0
    return out


def broadcast_object(obj, world: World, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every process (``obj`` itself for one process). Used for plain values the
    processes must agree on (the run directory's path), never for files."""
    if not world.distributed:
        return obj
    box = [obj]
    _collective("a broadcast", torch.distributed.broadcast_object_list, box, src=src)
    return box[0]


def gather_objects(obj, world: World) -> list:
    """Every process's ``obj``, in rank order, on every process (``[obj]`` for one process)."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    _collective("a gather", torch.distributed.all_gather_object, out, obj)
    return out


def gather_to_main(obj, world: World) -> list | None:
    """Every process's picklable ``obj`` in rank order on rank 0, None on the others (``[obj]`` for one process):
    the partitioned model's parts, brought together for rank 0's checkpoint, without a copy on every process."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size if world.is_main else None
    _collective("a gather", torch.distributed.gather_object, obj, out, dst=0)
    return out


def all_gather(tensor: torch.Tensor, world: World) -> list[torch.Tensor]:
    """Every process's ``tensor`` (same shape and dtype everywhere), in rank order, on every process; ``[tensor]`` for
    one process. Not differentiable: the partitioned NeRF keeps its own part's graph (ngp_cli.tasks.nerf.partition).
    The time counts in :func:`comm_seconds`. Raises DistributedError."""
    if not world.distributed:
        return [tensor]
    import time

    t0 = time.perf_counter()
    out = [torch.empty_like(tensor) for _ in range(world.size)]
    _collective("an all-gather", torch.distributed.all_gather, out, tensor.contiguous())
    _COMM_SECONDS[0] += time.perf_counter() - t0
    return out


def shared_tiles(spans, compute, shapes, world: World):
    """Deal tiles out over the processes and bring them to rank 0 in order (bounded memory: one tile in flight per
    process). ``spans``: the tiles, e.g. ``(y0, y1)`` row ranges; tile ``t`` is computed by process ``t % size`` as
    ``compute(*span)``, a tuple of numpy arrays of the ``(shape, numpy dtype)`` that ``shapes(*span)`` lists, which
    it sends to rank 0 (gloo/NCCL point to point). Yields ``(*span, arrays)`` for every tile on rank 0, and nothing on
    the others, which only compute and send theirs. One process: computes and yields every tile.

    Raises DistributedError (a process died or timed out)."""
    import numpy as np

    for t, span in enumerate(spans):
        owner = t % world.size
        arrays = compute(*span) if owner == world.rank else None
        if world.is_main:
            if owner != 0:
                received = []
                for shape, dtype in shapes(*span):
                    buf = torch.from_numpy(np.empty(shape, dtype=dtype))
                    _collective("a tile transfer", torch.distributed.recv, buf, src=owner)
                    received.append(buf.numpy())
                arrays = tuple(received)
            yield (*span, arrays)
        elif arrays is not None:
            for a in arrays:
                _collective("a tile transfer", torch.distributed.send, torch.from_numpy(np.ascontiguousarray(a)), dst=0)


def state_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A SHA-256 of ``tensors`` (names, dtypes, shapes and bytes, in name order): what :func:`check_replicas`
    compares between processes."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_replicas(tensors: dict[str, torch.Tensor], world: World, step: int) -> None:
    """Check that every process holds the same ``tensors`` (model, optimizer state, EMA, occupancy grid: what data
    parallelism keeps identical); a collective. Raises DistributedError naming the processes that differ from rank
    0. No-op for one process."""
    if not world.distributed:
        return
    prints = gather_objects(state_fingerprint(tensors), world)
    differ = [r for r, f in enumerate(prints) if f != prints[0]]
    if differ:
        raise DistributedError(f"at step {step} the state of process(es) {differ} differs from process 0's: the "
                               "replicas diverged (a bug: please report it)")

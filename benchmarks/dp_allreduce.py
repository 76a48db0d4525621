"""Issue 19: the gradient exchange of data-parallel training, dense all-reduce against exchanging only the hash-table
rows a step touched, on real gradients of the image task (the bundled astronaut, the ``image-cpu`` preset).

    python benchmarks/dp_allreduce.py [--log2-hashmap-size 19 21] [--batch 65536] [--repeats 5]

Starts 2 gloo processes on this machine (one thread each, as ``--nproc 2`` runs them). Each draws its own half of the
batch and back-propagates it, then both methods are timed ``--repeats`` times on the same gradients:

* ``dense``: :func:`ngp_cli.distributed.all_reduce_gradients` (one all-reduce of every gradient, flattened);
* ``touched``: the table rows with a non-zero gradient (index + F values each) gathered from every process and summed
  with ``index_add_``, the MLP weights all-reduced densely.

Prints one JSON line per table size on stdout: the touched fraction of the table, and min/median/max seconds of both.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _touched_exchange(table_grad: torch.Tensor) -> torch.Tensor:
    rows = table_grad.abs().sum(1) != 0
    idx = rows.nonzero().squeeze(1)
    values = table_grad[idx]
    count = torch.tensor([idx.numel()])
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(tdist.get_world_size())]
    tdist.all_gather(counts, count)
    most = int(max(c.item() for c in counts))
    pad_idx = torch.zeros(most, dtype=torch.int64)
    pad_idx[:idx.numel()] = idx
    pad_val = torch.zeros(most, table_grad.shape[1])
    pad_val[:idx.numel()] = values
    all_idx = [torch.empty_like(pad_idx) for _ in counts]
    all_val = [torch.empty_like(pad_val) for _ in counts]
    tdist.all_gather(all_idx, pad_idx)
    tdist.all_gather(all_val, pad_val)
    out = torch.zeros_like(table_grad)
    for c, i, v in zip(counts, all_idx, all_val, strict=True):
        n = int(c.item())
        out.index_add_(0, i[:n], v[:n])
    return out


def _worker(rank: int, port: int, args: argparse.Namespace, queue) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    from ngp_cli.config import resolve
    from ngp_cli.distributed import World, all_reduce_gradients, shard_seed
    from ngp_cli.images import read_image
    from ngp_cli.nn.backend import resolve_backend
    from ngp_cli.tasks.gigapixel.config import ImageConfig, default_photo
    from ngp_cli.tasks.gigapixel.data import ImageTarget
    from ngp_cli.tasks.gigapixel.fit import ImageProblem, record_max_resolution
    from ngp_cli.train import make_loss

    world = World(rank=rank, size=2)
    target = ImageTarget(read_image(default_photo()))
    for log2_t in args.log2_hashmap_size:
        cfg = resolve(ImageConfig, "image", "image-cpu", [f"encoding.log2_hashmap_size={log2_t}"],
                      default_preset="image-cpu")
        record_max_resolution(cfg, target)
        problem = ImageProblem(target, cfg, resolve_backend("auto"))
        g = torch.Generator().manual_seed(shard_seed(cfg.seed, rank))
        loss, _ = problem.batch_loss(args.batch // 2, g, make_loss(cfg.loss))
        loss.backward()
        table = problem.model.encoding.params
        grads = {n: p.grad.clone() for n, p in problem.model.named_parameters()}
        touched = float((table.grad.abs().sum(1) != 0).float().mean())
        times: dict[str, list[float]] = {"dense": [], "touched": []}
        for _ in range(args.repeats):
            for name in ("dense", "touched"):
                for n, p in problem.model.named_parameters():
                    p.grad.copy_(grads[n])
                tdist.barrier()
                t0 = time.perf_counter()
                if name == "dense":
                    all_reduce_gradients(problem.model, world)
                else:
                    table.grad.copy_(_touched_exchange(table.grad))
                    others = torch.cat([p.grad.reshape(-1) for n, p in problem.model.named_parameters()
                                        if p is not table])
                    tdist.all_reduce(others)
                times[name].append(time.perf_counter() - t0)
        if rank == 0:
            queue.put({"log2_hashmap_size": log2_t, "table_rows": table.shape[0], "features": table.shape[1],
                       "params": sum(p.numel() for p in problem.model.parameters()),
                       "batch": args.batch, "touched_fraction": touched,
                       **{f"{k}_s": {"min": min(v), "median": statistics.median(v), "max": max(v)}
                          for k, v in times.items()}})
    tdist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2-hashmap-size", type=int, nargs="+", default=[19, 21])
    ap.add_argument("--batch", type=int, default=1 << 16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(_free_port(), args, queue), nprocs=2, join=True)
    while not queue.empty():
        print(json.dumps(queue.get()))


if __name__ == "__main__":
    main()

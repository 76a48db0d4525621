"""Issue 19: memory per process of a spatially partitioned NeRF (``distributed.partition``) against one model, for the
tables and grids, on a real NeRF config.

    python benchmarks/partition_memory.py [--preset nerf-cpu] [--parts 2 4 8]

Builds what one process holds, without training: one model (``partition`` 1), and part 0 of K (what process 0 of a
K-process run holds), each with its Adam state allocated (one optimizer step on a dummy loss touching every
parameter) and the EMA of the preset. Counts the bytes of the model's parameters and buffers (hash tables, MLPs,
occupancy grid), Adam's moments and step counts, and the EMA shadows, by kind. The parts' hash tables hold T / K
entries per level; the occupancy grid stays 128³ per cascade (the other regions' cells empty).

Prints one JSON line per configuration on stdout, with the ratio to one model.
"""

from __future__ import annotations

import argparse
import json

import torch


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(cfg, aabb_scale: int, parts: int) -> dict:
    from ngp_cli.tasks.nerf.model import NerfNetwork
    from ngp_cli.tasks.nerf.partition import PartitionedNerf
    from ngp_cli.train import EMA, make_optimizer

    cfg.distributed.partition = parts
    if parts == 1:
        model = NerfNetwork(cfg, aabb_scale, generator=torch.Generator().manual_seed(cfg.seed))
        density = model.density
    else:
        model = PartitionedNerf(cfg, aabb_scale, parts, [0])
        density = model.parts["0"].density
    optimizer = make_optimizer(model, cfg.optimizer)
    x = torch.rand(4096, 3)
    loss = density(x).sum() + sum(p.sum() for p in model.parameters())  # every parameter gets a gradient
    loss.backward()
    optimizer.step()
    ema = EMA(list(model.parameters()), cfg.optimizer.ema_decay) if cfg.optimizer.ema_decay > 0 else None
    tables = [p for n, p in model.named_parameters() if "encoding" in n]
    nets = [p for n, p in model.named_parameters() if "encoding" not in n]
    grids = [b for n, b in model.named_buffers() if "grid" in n]
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    out = {"parts": parts, "tables": _bytes(tables), "mlps": _bytes(nets), "grids": _bytes(grids),
           "adam": _bytes(state), "ema": _bytes(ema.shadow) if ema is not None else 0}
    out["total"] = sum(v for k, v in out.items() if k != "parts")
    return out


def main() -> None:
    from ngp_cli.config import resolve
    from ngp_cli.tasks.nerf.config import NerfConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="nerf-cpu")
    ap.add_argument("--aabb-scale", type=int, default=1, help="1 for NeRF-synthetic (lego), 16 for the fox")
    ap.add_argument("--parts", type=int, nargs="+", default=[2, 4, 8])
    args = ap.parse_args()
    cfg = resolve(NerfConfig, "nerf", args.preset)
    one = measure(cfg, args.aabb_scale, 1)
    print(json.dumps({"preset": args.preset, "aabb_scale": args.aabb_scale, **one, "ratio": 1.0}), flush=True)
    for k in args.parts:
        cfg = resolve(NerfConfig, "nerf", args.preset)
        part = measure(cfg, args.aabb_scale, k)
        print(json.dumps({"preset": args.preset, "aabb_scale": args.aabb_scale, **part,
                          "ratio": round(part["total"] / one["total"], 4),
                          "ratio_tables_grids": round((part["tables"] + part["grids"] + part["adam"] + part["ema"])
                                                      / (one["tables"] + one["grids"] + one["adam"] + one["ema"]),
                                                      4)}), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Throughput of the mesh-query kernels (closest point, winding number, ray casting) on a real mesh, per query
class, on every kernel target available here (``cpu``, and ``cuda`` with a GPU), plus the BVH build time.

    python benchmarks/mesh_queries.py ../shared/data/sdf/armadillo/armadillo.obj --out result.json

``signed`` is the whole signed distance (closest point + pseudonormal sign on a closed mesh, + winding number on an
open one). Query classes, in the unit-cube frame of the SDF task: "uniform" (uniform in [0, 1]^3, the 1/8 of a batch),
"near" (surface + N(0, (1/1024)^2), the 3/8) and "rays" (from outside through the mesh's centre region).
Prints one JSON line on stdout (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ngp_cli.mesh.bvh import MeshBVH
from ngp_cli.mesh.io import UnitFrame, load_mesh
from ngp_cli.mesh.metrics import sample_surface


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, caches)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mesh", type=Path)
    ap.add_argument("--queries", type=int, default=1 << 16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", "--output", dest="out", type=Path, help="also write the JSON line to this file")
    args = ap.parse_args()

    mesh = load_mesh(args.mesh)
    vertices = UnitFrame.fit(mesh.vertices).to_unit(mesh.vertices)
    rng = np.random.default_rng(0)
    n = args.queries
    near, _ = sample_surface(vertices, mesh.faces, n, rng)
    sets = {"uniform": torch.rand(n, 3, generator=torch.Generator().manual_seed(0)),
            "near": torch.from_numpy(near) + torch.randn(n, 3, generator=torch.Generator().manual_seed(1)) / 1024}
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(2)), dim=1) * 2
    origins = origins + 0.5
    targets = 0.5 + 0.2 * torch.randn(n, 3, generator=torch.Generator().manual_seed(3))
    directions = torch.nn.functional.normalize(targets - origins, dim=1)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result = {"mesh": str(args.mesh), "triangles": len(mesh.faces), "queries": n, "machine": platform.processor()
              or platform.machine(), "threads": torch.get_num_threads(), "targets": {}}
    for device in devices:
        t0 = time.perf_counter()
        bvh = MeshBVH(vertices, mesh.faces, device=device)
        build_s = time.perf_counter() - t0
        if bvh.target is None:
            continue
        row = {"build_s": round(build_s, 4)}
        for name, q in sets.items():
            q = q.to(device)
            row[f"closest_{name}_us"] = _time(lambda b=bvh, q=q: b.closest_point(q), args.repeats) / n * 1e6
            row[f"winding_{name}_us"] = _time(lambda b=bvh, q=q: b.winding_number(q), args.repeats) / n * 1e6
            row[f"signed_{name}_us"] = _time(lambda b=bvh, q=q: b.signed_distance(q), args.repeats) / n * 1e6
        o, d = origins.to(device), directions.to(device)
        row["raycast_us"] = _time(lambda b=bvh, o=o, d=d: b.raycast(o, d), args.repeats) / n * 1e6
        result["targets"][bvh.target] = {k: round(v, 4) for k, v in row.items()}
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()

"""The grid encoding's output layout in training on the cpu kernels: an encoded network's forward + backward with the
encoding handed to the MLP row-major, (N, L·F), against feature-major, its (L·F, N) transpose
(:func:`ngp_cli.nn.model.encode_for_mlp`, which every encoded network takes), the two alternated in one process.

    python benchmarks/encoding_layout.py [--dims 2 3] [--batch 65536 262144] [--otype HashGrid SimplexGrid] [--rounds 12]

The network is the bench's: L=16, F=2, T=2^19, N_min=16 (b=2 in 2-D, N_max=2048 in 3-D), a 2×64 ReLU MLP; the loss
is the sum of squared outputs. Prints one JSON line per (dims, batch, otype) on stdout: min/median/max seconds of
both layouts over the rounds after the first two, and whether the parameter gradients came out equal.
"""

from __future__ import annotations

from ngp_cli.allocator import tune_cpu_allocator

tune_cpu_allocator()  # before torch is imported, as the training commands do (transparent huge pages)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from ngp_cli.bench import PER_LEVEL_SCALE  # noqa: E402
from ngp_cli.config import EncodingConfig, NetworkConfig  # noqa: E402
from ngp_cli.nn import model  # noqa: E402


def measure(dims: int, batch: int, otype: str, rounds: int) -> dict:
    net = model.NetworkWithInputEncoding(dims, 16, EncodingConfig(otype=otype, per_level_scale=PER_LEVEL_SCALE[dims]),
                                         NetworkConfig(), generator=torch.Generator().manual_seed(7),
                                         kernel_target="cpu")
    x = torch.rand(batch, dims, generator=torch.Generator().manual_seed(8))
    feature_major = model.encode_for_mlp
    takes = {"rows": lambda enc, v: enc(v), "feature_major": feature_major}
    times: dict[str, list[float]] = {k: [] for k in takes}
    grads: dict[str, list[torch.Tensor]] = {}
    try:
        for _ in range(rounds):
            for name, take in takes.items():
                model.encode_for_mlp = take
                net.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                net(x).square().sum().backward()
                times[name].append(time.perf_counter() - t0)
                grads[name] = [p.grad for p in net.parameters()]
    finally:
        model.encode_for_mlp = feature_major
    out = {"dims": dims, "batch": batch, "otype": otype, "rounds": rounds,
           "gradients_equal": all(torch.equal(a, b) for a, b in zip(grads["rows"], grads["feature_major"],
                                                                    strict=True))}
    for name, ts in times.items():
        kept = sorted(ts[2:])
        out[name] = {"min_s": kept[0], "median_s": statistics.median(kept), "max_s": kept[-1]}
    out["speedup"] = out["rows"]["median_s"] / out["feature_major"]["median_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--batch", type=int, nargs="+", default=[1 << 16, 1 << 18])
    ap.add_argument("--otype", nargs="+", default=["HashGrid", "SimplexGrid"])
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    for dims in args.dims:
        for batch in args.batch:
            for otype in args.otype:
                print(json.dumps(measure(dims, batch, otype, max(3, args.rounds))), flush=True)


if __name__ == "__main__":
    main()

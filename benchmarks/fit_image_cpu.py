#!/usr/bin/env python3
"""Seconds per step and peak RSS of ``ngp fit-image`` on the CPU: the baseline later backends are compared against.

Runs the real command in a child process (so peak RSS is that process's alone) and reads its metrics.jsonl.

    python benchmarks/fit_image_cpu.py                      # astronaut.png, 30 steps, batch 2^16
    python benchmarks/fit_image_cpu.py ../shared/data/image/albert/albert.jpg --steps 20 --out result.json

Prints one JSON line on stdout (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photo", nargs="?", help="photo to fit (default: the bundled astronaut)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1 << 16)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for ngp fit-image")
    ap.add_argument("--out", "--output", dest="out", type=Path, help="also write the JSON line to this file")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as runs:
        cmd = [sys.executable, "-m", "ngp_cli", "fit-image", *([args.photo] if args.photo else []),
               "--runs-dir", runs, "--steps", str(args.steps), "--backend", args.backend, "--preset", "image-cpu",
               "--set", f"train.batch_size={args.batch}", "--set", "train.log_every=1", "--set", "device=cpu",
               *[x for s in args.sets for x in ("--set", s)]]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"fit-image failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        done = json.loads(proc.stdout.splitlines()[-1])
        metrics = [json.loads(x) for x in Path(done["run_dir"], "metrics.jsonl").read_text().splitlines()]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB
    step_times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(metrics, metrics[1:], strict=False)]
    steady = step_times[len(step_times) // 5:] or step_times  # drop the warm-up fifth
    result = {
        "benchmark": "fit_image_cpu", "photo": Path(args.photo or "astronaut.png").name,
        "width": done["metrics"]["width"], "height": done["metrics"]["height"], "steps": args.steps,
        "batch_size": args.batch, "backend": args.backend,
        "s_per_step_median": statistics.median(steady), "s_per_step_mean": done["metrics"]["train_s"] / args.steps,
        "train_s": done["metrics"]["train_s"], "eval_s": done["metrics"]["eval_s"], "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak_rss_mb, 1), "psnr": done["metrics"]["psnr"],
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()

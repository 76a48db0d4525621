#!/usr/bin/env python3
"""Poses from images, end to end (issue 16's done-when): NeRF on the fox capture with the poses ``ngp process-data``
recovered, against the same NeRF on the capture's own transforms.json, with the same held-out frames.

    ngp process-data ../shared/data/nerf/fox/images /tmp/fox_processed          # first (exhaustive matching)
    python benchmarks/fox_poses.py ../shared/data/nerf/fox /tmp/fox_processed /tmp/fox_work --minutes 10

The held-out views are the capture's own (every 8th frame listed in its transforms.json, ``nerf.holdout_every``'s
rule), restricted to the images both datasets hold. Each dataset is rewritten into ``WORK/<name>/`` as
``transforms_train.json`` / ``transforms_val.json`` (per-split files: the held-out choice no longer depends on frame
order), with ``images`` (and ``sparse_points.ply``) linked to the originals. ``--prior`` adds a third run, the
processed capture with the sparse-point occupancy prior (``nerf.occupancy_init=points``). Both runs train ``--minutes`` of wall time at ``--downscale``
with the CPU preset and the same seed, one after the other (so run it on a quiet machine). Prints one JSON line per
run and a final ``{"event": "compare"}`` line with the PSNR difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def split_dataset(transforms: Path, images: Path, out: Path, held_out: set[str], names: set[str]) -> int:
    """Write ``out/transforms_{train,val}.json`` from ``transforms`` (frames whose image name is in ``names``; those in
    ``held_out`` go to val) and link ``out/images`` to ``images``. Returns the number of val frames."""
    doc = json.loads(transforms.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name, target in (("images", images), ("sparse_points.ply", transforms.parent / "sparse_points.ply")):
        link = out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        if target.exists():
            os.symlink(target.resolve(), link)
    top = {k: v for k, v in doc.items() if k != "frames"}
    frames = [dict(f, file_path=f"images/{Path(f['file_path']).name}") for f in doc["frames"]
              if Path(f["file_path"]).name in names]
    val = [f for f in frames if Path(f["file_path"]).name in held_out]
    train = [f for f in frames if Path(f["file_path"]).name not in held_out]
    (out / "transforms_train.json").write_text(json.dumps({**top, "frames": train}, indent=1))
    (out / "transforms_val.json").write_text(json.dumps({**top, "frames": val}, indent=1))
    return len(val)


def train(dataset: Path, runs: Path, name: str, budget: list[str], downscale: int, seed: int, *extra: str) -> dict:
    cmd = ["ngp", "train-nerf", str(dataset), "--runs-dir", str(runs), "--name", name, "--downscale", str(downscale),
           "--backend", "cpu", *budget, "--set", f"seed={seed}",
           "--set", "nerf.eval_split=val", "--set", "train.final_eval_views=null", *extra]
    print(" ".join(cmd), file=sys.stderr)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    done = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")][-1]
    return {"event": "run", "name": name, "run_dir": done["run_dir"], **{k: done["metrics"].get(k) for k in (
        "psnr", "ssim", "n_views", "steps", "train_s")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", type=Path, help="the capture: transforms.json + images/ (../shared/data/nerf/fox)")
    ap.add_argument("processed", type=Path, help="ngp process-data's output for the capture's images")
    ap.add_argument("work", type=Path, help="a folder for the split datasets and the runs")
    ap.add_argument("--minutes", type=float, default=10.0, help="training time of each run (a quiet machine)")
    ap.add_argument("--steps", type=int, default=0, help="train this many steps instead of --minutes (a fair "
                                                         "comparison on a machine that is not quiet)")
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("--holdout-every", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prior", action="store_true", help="also train the processed capture with the sparse-point "
                                                            "occupancy prior (nerf.occupancy_init=points)")
    args = ap.parse_args()

    original = json.loads((args.capture / "transforms.json").read_text())
    present = {Path(f["file_path"]).name for f in original["frames"]
               if (args.capture / f["file_path"]).is_file()}
    listed = [Path(f["file_path"]).name for f in original["frames"]]
    held_out = {n for i, n in enumerate(listed) if i % args.holdout_every == 0}
    processed = json.loads((args.processed / "transforms.json").read_text())
    registered = {Path(f["file_path"]).name for f in processed["frames"]}
    names = present & registered
    n_val = split_dataset(args.capture / "transforms.json", args.capture / "images", args.work / "given", held_out,
                          names)
    split_dataset(args.processed / "transforms.json", args.processed / "images", args.work / "processed", held_out,
                  names)
    print(json.dumps({"event": "split", "images": len(names), "held_out": n_val,
                      "held_out_names": sorted(held_out & names)}), flush=True)
    # Both trained at the same image size: process-data may already have downscaled its copies of the images.
    factor = original["w"] / processed.get("w", processed["frames"][0].get("w"))
    downscale = {"given": args.downscale, "processed": round(args.downscale / factor)}
    budget = (["--set", f"train.n_steps={args.steps}", "--set", "train.max_time_s=0"] if args.steps else
              ["--set", f"train.max_time_s={args.minutes * 60:g}"])
    rows = []
    for name in ("given", "processed"):
        rows.append(train(args.work / name, args.work / "runs", name, budget, downscale[name], args.seed))
        print(json.dumps(rows[-1]), flush=True)
    if args.prior:
        rows.append(train(args.work / "processed", args.work / "runs", "processed-prior", budget,
                          downscale["processed"], args.seed, "--set", "nerf.occupancy_init=points"))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"event": "compare", "psnr_given": rows[0]["psnr"], "psnr_processed": rows[1]["psnr"],
                      "difference_db": round(rows[0]["psnr"] - rows[1]["psnr"], 3)}), flush=True)


if __name__ == "__main__":
    main()

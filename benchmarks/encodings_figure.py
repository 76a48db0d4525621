"""Draw docs/encodings-psnr-time.png: training PSNR against training time of runs that differ only in
``encoding.otype`` (HashGrid against SimplexGrid), one panel per task, from the runs' metrics.jsonl.

    python benchmarks/encodings_figure.py OUT.png TITLE=RUN_HASH,RUN_SIMPLEX [TITLE=...]

Each run directory is an ``ngp fit-image`` / ``train-sdf`` / ``train-nerf`` run; its ``metrics.jsonl`` lines with
``psnr`` (the batch PSNR of the logged step, or the loss for SDF runs) and ``elapsed_s`` are plotted, and the final
held-out metric of ``summary.json`` is printed in the legend. Needs matplotlib (a dependency of ngp).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _series(run: Path) -> tuple[list[float], list[float], str]:
    t, y, key = [], [], "psnr"
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "elapsed_s" not in rec:
            continue
        if "psnr" in rec:
            t.append(rec["elapsed_s"])
            y.append(rec["psnr"])
        elif "loss" in rec:
            key = "loss"
            t.append(rec["elapsed_s"])
            y.append(rec["loss"])
    return t, y, key


def _final(run: Path) -> str:
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    for key, fmt in (("psnr", "{:.2f} dB"), ("iou", "IoU {:.4f}")):
        if key in metrics:
            return fmt.format(metrics[key])
    return ""


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, panels = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels, strict=True):
        key = "psnr"
        for run, label in zip(runs.split(","), ("HashGrid", "SimplexGrid"), strict=True):
            t, y, key = _series(Path(run))
            ax.plot(t, y, label=f"{label} (final {_final(Path(run))})")
        ax.set_title(title)
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("training-batch PSNR (dB)" if key == "psnr" else "training loss")
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Draw the figures of docs/encodings.md from measured runs that differ in ``encoding.otype`` (HashGrid against
SimplexGrid) or in ``nerf.saliency_prune``, one panel per task:

    python benchmarks/encodings_figure.py OUT.png TITLE=RUN,RUN,... [TITLE=...]
    python benchmarks/encodings_figure.py --params OUT.png TITLE=RUN,RUN,... [TITLE=...]

The first draws training PSNR against training time: each run's ``metrics.jsonl`` lines with ``psnr`` (the batch
PSNR of the logged step) and ``elapsed_s``, one line per run labelled by its encoding (and pruning), with the final
held-out metric of ``summary.json`` in the legend. The second (``--params``) draws the final held-out PSNR against
the hash tables' parameter count (read from the newest checkpoint's header; a saliency-pruned NeRF's kept mask
vertices added), one line per ``encoding.otype`` of the runs' config.yaml and per ``nerf.saliency_prune``. Runs are
``ngp fit-image`` / ``train-sdf`` / ``train-nerf`` run directories. Needs matplotlib (a dependency of ngp) and
safetensors.
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


def _table_params(run: Path) -> int:
    from safetensors import safe_open

    newest = sorted((run / "checkpoints").glob("step-*.safetensors"))[-1]
    with safe_open(newest, "pt") as f:
        shape = f.get_slice("model.encoding.params").get_shape()
    return shape[0] * shape[1]


def _label(run: Path) -> str:
    """The run's ``encoding.otype``, with " + saliency pruning" for a NeRF run with ``nerf.saliency_prune``."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    pruned = (cfg.get("nerf") or {}).get("saliency_prune")
    return cfg["encoding"]["otype"] + (" + saliency pruning" if pruned else "")


def _params_panel(ax, title: str, runs: str) -> None:
    lines: dict[str, list[tuple[int, float]]] = {}
    for run in map(Path, runs.split(",")):
        metrics = json.loads((run / "summary.json").read_text())["metrics"]
        # a pruned run's mask counts too: the vertices it keeps
        lines.setdefault(_label(run), []).append((_table_params(run) + metrics.get("saliency_params", 0),
                                                  metrics["psnr"]))
    for otype, points in sorted(lines.items()):
        points.sort()
        ax.plot([p / 1e6 for p, _ in points], [q for _, q in points], "o-", label=otype)
    ax.set_title(title)
    ax.set_xlabel("hash-table (+ kept mask) parameters (millions)")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_params = argv[0] == "--params"
    argv = argv[1:] if by_params else argv
    out, panels = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    if by_params:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for ax, (title, runs) in zip(axes[0], panels, strict=True):
            _params_panel(ax, title, runs)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        print(out)
        return 0
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels, strict=True):
        key = "psnr"
        for run in map(Path, runs.split(",")):
            t, y, key = _series(run)
            ax.plot(t, y, label=f"{_label(run)} (final {_final(run)})")
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

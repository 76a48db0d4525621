"""``renders/curves.png`` of every run: the training loss and the held-out metric against training time, drawn with
matplotlib (Agg, imported inside :func:`write_curves` so ``ngp --help`` stays fast) from the run's metrics.jsonl.

What metrics.jsonl holds (docs/cli.md, :mod:`ngp_cli.train`, ngp_cli/tasks/nrc/fit.py):

* trainer tasks (fit-image, train-sdf, train-nerf): a line per log step with ``step``, ``loss``, ``elapsed_s``
  (training time in seconds, summed over resumed sessions) and ``batch_psnr`` where a PSNR means something; a line
  per periodic evaluation with ``step``, ``elapsed_s`` and ``eval`` (``{"psnr": …}`` for NeRF, ``{"iou": …}`` for
  SDF);
* train-nrc: a line per frame with ``frame``, ``frame_s`` (seconds: the frame's training and rendering), ``loss``
  and ``relmse_frame`` (the frame's relative MSE against the reference).

The picture has the loss on the left (log scale when positive) and on the right the held-out metric: the periodic
evaluation's PSNR or IoU, else the training batch's PSNR (fit-image: its batches are random points of the photo), else
NRC's per-frame relMSE. The x axis is training time in seconds (NRC: the frames' cumulative time); lines from runs
made before ``elapsed_s`` existed fall back to the step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ngp_cli.runs import atomic_write

__all__ = ["Curves", "read_curves", "write_curves"]

# Held-out metrics in the order they are looked for in an "eval" record, with their axis labels and y scale.
_EVAL_METRICS = (("psnr", "held-out PSNR (dB)", "linear"), ("iou", "held-out IoU", "linear"),
                 ("ssim", "held-out SSIM", "linear"))


@dataclass
class Curves:
    """The series of one run. ``time_label`` names the x axis; each series is a list of (x, y) pairs in file order."""

    time_label: str = "training time (s)"
    loss: list[tuple[float, float]] = field(default_factory=list)
    metric: list[tuple[float, float]] = field(default_factory=list)
    metric_label: str = ""
    metric_scale: str = "linear"

    def empty(self) -> bool:
        """No logged step: nothing to draw."""
        return not self.loss and not self.metric


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of metrics.jsonl; lines that are not JSON objects are skipped (a picture validates nothing:
    ``--resume`` does, :meth:`ngp_cli.runs.RunDir.read_metrics`). A missing file gives none."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def read_curves(metrics_path: Path) -> Curves:
    """The loss and held-out metric series of a run's metrics.jsonl (see the module docstring). Non-finite and
    non-numeric values are left out. Raises OSError when the file exists but cannot be read."""
    records = _records(metrics_path)
    curves = Curves()
    if any("frame" in r and "step" not in r for r in records):  # train-nrc: one line per frame
        t = 0.0
        for r in records:
            frame_s = _number(r.get("frame_s"))
            if frame_s is None:
                continue
            t += frame_s
            if (loss := _number(r.get("loss"))) is not None:
                curves.loss.append((t, loss))
            if (relmse := _number(r.get("relmse_frame"))) is not None:
                curves.metric.append((t, relmse))
        curves.time_label = "time (s, frames trained and rendered)"
        curves.metric_label, curves.metric_scale = "relMSE of the frame", "log"
        return curves
    by_time = all(_number(r.get("elapsed_s")) is not None for r in records if "loss" in r or "eval" in r)
    if not by_time:
        curves.time_label = "step"

    def x(r: dict[str, Any]) -> float | None:
        return _number(r.get("elapsed_s") if by_time else r.get("step"))

    steps = [r for r in records if "eval" not in r and "loss" in r]
    evals = [r["eval"] for r in records if isinstance(r.get("eval"), dict)]
    eval_x = [x(r) for r in records if isinstance(r.get("eval"), dict)]
    for r in steps:
        if (t := x(r)) is not None and (loss := _number(r.get("loss"))) is not None:
            curves.loss.append((t, loss))
    for key, label, scale in _EVAL_METRICS:
        points = [(t, v) for t, e in zip(eval_x, evals, strict=True)
                  if t is not None and (v := _number(e.get(key))) is not None]
        if points:
            curves.metric, curves.metric_label, curves.metric_scale = points, label, scale
            return curves
    points = [(t, v) for r in steps if (t := x(r)) is not None and (v := _number(r.get("batch_psnr"))) is not None]
    if points:
        curves.metric, curves.metric_label = points, "training batch PSNR (dB)"
    return curves


def write_curves(metrics_path: Path, out_path: Path, title: str = "") -> bool:
    """Draw :func:`read_curves` of ``metrics_path`` into the PNG ``out_path`` (about 1100×420 pixels), atomically
    (a temporary file beside it, then renamed). Returns False, writing nothing, when the run logged no step.

    Raises:
        OutputError: the file cannot be written (from :func:`ngp_cli.runs.atomic_write`).
        ImportError, or whatever matplotlib raises: the caller decides (:func:`ngp_cli.commands.finish` warns and
            goes on).
    """
    curves = read_curves(metrics_path)
    if curves.empty():
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg backend, without pyplot's global state
    from matplotlib.figure import Figure

    panels = [("loss", curves.loss, "training loss", "log" if all(v > 0 for _, v in curves.loss) else "linear")]
    if curves.metric:
        panels.append(("metric", curves.metric, curves.metric_label, curves.metric_scale))
    fig = Figure(figsize=(5.5 * len(panels), 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (_, points, label, scale) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="." if len(points) < 40 else None, linewidth=1.2)
            ax.set_title(f"{label}: last {ys[-1]:.4g}", fontsize=10)
        else:
            ax.set_title(label, fontsize=10)
        ax.set_yscale(scale)
        ax.set_xlabel(curves.time_label)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    atomic_write(Path(out_path), lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    return True

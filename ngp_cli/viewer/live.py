"""``--viewer`` on the training commands: the task's viewer served while the run trains, its frames rendered between
training steps in the training process, within a share of the wall time.

Frames are never rendered beside a step, always between two (the frame schedule's :meth:`~ngp_cli.viewer.frames.
FrameServer.poll`, a band of rows at a time), with the model's weights as they stand and under ``torch.no_grad``,
and the renderers draw no random numbers: a run trains to the same weights with the viewer as without it, for the
same seed and steps (tests/test_viewer.py checks it). The share is kept as a budget: a band is rendered only while
the seconds spent rendering stay within ``share`` of the training time since the first step (the trainer's
``elapsed_s``, which counts the viewer's seconds and leaves out kernel compilation, evaluations and checkpoints), so
the overshoot is at most one band (:data:`~ngp_cli.viewer.frames.BAND_SECONDS`). The viewer's seconds count as
training time (``train.max_time_s``): a run with the viewer takes about ``share`` fewer steps in the same time, not
more time.

A training on the CPU also loses time to a browser on the same machine while a tab is open: its drawing (software
WebGL on a machine without a GPU) takes cores from the training's threads, and the steps wait for them. That time is
charged to the share as well (:meth:`LiveView.between_steps`), so the viewer renders less while a local tab costs the
training, and the steps lost to the viewer, its tab included, stay near ``share``. Measured on the 2-core machine
(docs/benchmarks/2026-12-07-cpu-2core-zen4-issue18-viewer.md): a tab open on the same machine costs lego_400
training 5-6 % of its CPU, charged to the share.
"""

from __future__ import annotations

import time
from typing import Any

from ngp_cli.errors import UsageError

__all__ = ["DEFAULT_SHARE", "LiveView", "check_share"]

#: The share of wall time the viewer may take by default (issue 18).
DEFAULT_SHARE = 0.1


def check_share(share: float) -> float:
    """``--viewer-share`` in (0, 1]; UsageError otherwise."""
    if not 0.0 < share <= 1.0:
        raise UsageError(f"--viewer-share must be in (0, 1], got {share}")
    return float(share)


class LiveView:
    """A task's viewer (a :class:`~ngp_cli.viewer.frames.FrameServer` made with ``threaded=False``) driven by the
    training loop: :meth:`between_steps` after every step; :meth:`close` at the end (stops the server).

    Args:
        frames: the task's frame server; server: the viser server it runs on; share: the budget, in (0, 1].
        cpu_threads: the threads a training on the CPU computes with (``torch.get_num_threads()``); None for a
            training on a GPU, where a browser beside it does not slow the steps and nothing is charged for it.

    Attributes:
        spent: seconds the viewer took between steps (rendering, panel updates).
        contended: seconds of training time lost to other processes while a tab was open (charged to the share).
    """

    def __init__(self, frames: Any, server: Any, share: float = DEFAULT_SHARE, cpu_threads: int | None = None) -> None:
        self.frames, self.server, self.share = frames, server, check_share(share)
        self.cpu_threads = cpu_threads
        self.trained0: float | None = None  # the training time at the first call (a resumed run has some)
        self.spent = 0.0
        self.contended = 0.0
        self._mark: tuple[float, float, float] | None = None  # (wall, process CPU, training s) at the last call's end

    def _charge_contention(self, training_s: float) -> None:
        """Add the training time lost to other processes since the last call, while a tab is open: the share of the
        interval's CPU the training's threads did not get, ``1 - process CPU / (wall × cpu_threads)``, times the
        training seconds in it (the viewer's own, already counted whole, left out). On a quiet machine the training
        keeps its threads 99.3-99.6 % busy (lego_400, armadillo, albert), so a little is charged even then."""
        wall, cpu = time.perf_counter(), time.process_time()
        if self._mark is not None and self.cpu_threads and self.server.get_clients():
            d_wall, d_cpu, d_train = wall - self._mark[0], cpu - self._mark[1], training_s - self._mark[2]
            if d_wall > 0.0:
                self.contended += max(0.0, 1.0 - d_cpu / (d_wall * self.cpu_threads)) * max(0.0, d_train)

    def between_steps(self, record: dict[str, Any] | None, training_s: float) -> float:
        """Show a log step's ``record`` (None on other steps) and render a band if the budget allows: the viewer's
        seconds so far plus the training time lost to a tab's browser (:meth:`_charge_contention`) within ``share``
        of the training time ``training_s`` (seconds, viewer included) since the first call. Returns the seconds
        taken."""
        t0 = time.perf_counter()
        if self.trained0 is None:
            self.trained0 = training_s
        self._charge_contention(training_s)
        if record is not None:
            self.frames.show_training(record)
        if self.spent + self.contended <= self.share * (training_s - self.trained0):
            self.frames.poll(max_bands=1)
        spent = time.perf_counter() - t0
        self.spent += spent
        self._mark = (time.perf_counter(), time.process_time(), training_s + spent)
        return spent

    def close(self) -> None:
        from ngp_cli.viewer.server import stop_server

        self.frames.stop()
        stop_server(self.server)

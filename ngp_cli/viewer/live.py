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
    training loop: :meth:`between_steps` after every step; :meth:`close` at the end (stops the server)."""

    def __init__(self, frames: Any, server: Any, share: float = DEFAULT_SHARE) -> None:
        self.frames, self.server, self.share = frames, server, check_share(share)
        self.trained0: float | None = None  # the training time at the first call (a resumed run has some)
        self.spent = 0.0

    def between_steps(self, record: dict[str, Any] | None, training_s: float) -> float:
        """Show a log step's ``record`` (None on other steps) and render a band if the budget allows: the viewer's
        seconds so far within ``share`` of the training time ``training_s`` (seconds, viewer included) since the first
        call. Returns the seconds taken."""
        t0 = time.perf_counter()
        if self.trained0 is None:
            self.trained0 = training_s
        if record is not None:
            self.frames.show_training(record)
        if self.spent <= self.share * (training_s - self.trained0):
            self.frames.poll(max_bands=1)
        spent = time.perf_counter() - t0
        self.spent += spent
        return spent

    def close(self) -> None:
        from ngp_cli.viewer.server import stop_server

        self.frames.stop()
        stop_server(self.server)

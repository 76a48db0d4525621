"""``ngp view``: a web viewer of trained runs, built on viser (https://viser.studio), the optional ``viewer`` extra.

The server (:mod:`ngp_cli.viewer.server`) binds 127.0.0.1 unless told otherwise and serves viser's own client; what a
browser sees of a run is what the run's task viewer (``ngp_cli/tasks/<task>/viewer.py``) builds: a scene, and frames
from :class:`~ngp_cli.viewer.frames.FrameServer` for the tasks that render images. The client can ask the server for
nothing but renders of the run and a camera-path file written into the run directory under a name the server
makes. ``--viewer`` on the training commands serves the same viewers while the run trains
(:mod:`ngp_cli.viewer.live`).

viser is imported only when the command runs (:func:`require_viser`), so ``ngp --help`` and every other command work
without it.
"""

from __future__ import annotations

from ngp_cli.errors import UsageError

__all__ = ["VIEWER_EXTRA_HINT", "require_viser"]

VIEWER_EXTRA_HINT = "pip install 'ngp-cli[viewer]'"


def require_viser() -> None:
    """Raise :class:`~ngp_cli.errors.UsageError` (exit 2, one line naming the extra) when viser cannot be imported."""
    try:
        import viser  # noqa: F401
    except ImportError:
        raise UsageError(f"ngp view needs viser, which is not installed: {VIEWER_EXTRA_HINT}") from None

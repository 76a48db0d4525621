"""The viser server of ``ngp view``: where it listens, and the one warning about it.

viser (``viser.ViserServer``) serves its bundled web client over HTTP and talks to it over a websocket on the same
port; it moves to the next free port when the one asked for is taken, so the address is read back from it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
import time
from typing import Any

from ngp_cli.console import emit, info, warn
from ngp_cli.errors import UsageError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "announce", "is_loopback", "serve", "start_server", "stop_server",
           "url_of"]

#: Loopback only, unless ``--host`` says otherwise (issue 18: nothing is exposed by default).
DEFAULT_HOST = "127.0.0.1"
#: nerfstudio's viewer port, so a user's SSH tunnel recipes carry over.
DEFAULT_PORT = 7007


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_of(server: Any) -> str:
    """The address a browser opens for a running ``viser.ViserServer``."""
    host = server.get_host()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{server.get_port()}"


def start_server(host: str, port: int) -> Any:
    """A started ``viser.ViserServer`` on ``host``:``port`` (or the next free port), its banner off (stdout is for
    JSON lines) and the share button hidden (it would publish the view through viser's relay). A host that is not a
    loopback address gets a warning line: every machine that can reach it can watch the run. Raises UsageError for a
    port outside 1..65535 or an address the server cannot bind."""
    import viser

    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be in 1..65535, got {port}")
    if not is_loopback(host):
        warn(f"serving on {host}: anyone who can reach this machine on port {port} can watch this run "
             f"(the default, {DEFAULT_HOST}, serves this machine only)")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its address banner, printed even with verbose=False
            server = viser.ViserServer(host=host, port=port, verbose=False)
    except OSError as e:
        raise UsageError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    server.gui.configure_theme(control_layout="floating", show_share_button=False)
    return server


def stop_server(server: Any) -> None:
    """Stop a server from :func:`start_server` (viser's own "Server stopped" line goes to stderr, not stdout)."""
    with contextlib.redirect_stdout(sys.stderr):
        server.stop()


def announce(server: Any, run_dir: Any, what: str, note: str = "", **fields: Any) -> None:
    """Say where a viewer is served: ``"{what} at {url}{note}"`` on stderr, and the ``{"event": "serving", "url": ...,
    "run_dir": ...}`` line on stdout with ``fields`` (``ngp view`` and ``--viewer``)."""
    url = url_of(server)
    info(f"{what} at {url}{note}")
    emit("serving", url=url, run_dir=str(run_dir), **fields)


def serve(server: Any, viewer: Any, run_dir: Any, step: int, what: str = "", **fields: Any) -> None:
    """``ngp view``'s life once its viewer is built: say where it is (:func:`announce`, with the step and
    ``fields``), then serve until interrupted (Ctrl-C: KeyboardInterrupt, exit 130), stopping the viewer's renders
    and the server on the way out. ``what``: said after the step."""
    announce(server, run_dir, f"viewing {run_dir} (step {step}{what})", "; Ctrl-C stops", step=step, **fields)
    try:
        while True:
            time.sleep(3600)
    finally:
        viewer.stop()
        stop_server(server)

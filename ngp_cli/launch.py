"""``--nproc N``: start a training command as N data-parallel processes on this machine (issue 19), with
torch.distributed's elastic agent, what torchrun runs. Imports no torch at module level (the CLI imports it for every
command); the processes themselves join their group in :mod:`ngp_cli.distributed`.
"""

from __future__ import annotations

import os

from ngp_cli.errors import NGP_EXIT_CODES, DistributedError

__all__ = ["COMMAND_LINE", "PEER_GRACE_S", "launch", "leave_after_distributed_failure", "strip_option",
           "under_launcher"]

#: The arguments of this ``ngp`` invocation (set by :func:`ngp_cli.cli.main`), which :func:`launch` hands to the
#: processes it starts.
COMMAND_LINE: list[str] = []

#: The agent's monitor interval (seconds): how often it looks for a finished process.
MONITOR_INTERVAL_S = 0.2

#: How long a process whose collective failed waits before it exits (:func:`leave_after_distributed_failure`): ten
#: monitor intervals, so the agent sees the process that failed first (and stops this one) before it sees this one.
PEER_GRACE_S = 10 * MONITOR_INTERVAL_S


def under_launcher() -> bool:
    """Whether torchrun (or :func:`launch`) started this process (``WORLD_SIZE`` is set)."""
    return "WORLD_SIZE" in os.environ


def strip_option(args: list[str], name: str) -> list[str]:
    """``args`` without the option ``name`` and its value (``--nproc 2`` or ``--nproc=2``)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def leave_after_distributed_failure(code: int) -> None:
    """End one of ``--nproc``'s processes after its collective failed (it has printed its one line): wait
    :data:`PEER_GRACE_S`, then exit with ``code`` at once.

    The wait: the agent reports one failure, the first it finds, and when the process that died (killed, say) and
    the one that noticed it have both ended by its next look, it names the lower rank, often the one that only
    noticed. Waiting lets it find the real one first (it then stops this process). The immediate exit: tearing down
    torch's process-group threads after a failed collective can abort (``terminate called``, signal 6), which would
    hide this process's documented exit code."""
    import sys
    import time

    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(PEER_GRACE_S)
    os._exit(code)


def relaunched(nproc: int) -> bool:
    """For a command given ``--nproc N``: with N > 1, outside torchrun, start the N processes on this command line
    without ``--nproc`` (:func:`launch`) and return True once they have finished (the caller returns); otherwise
    return False (one process, or already one of the N: the caller runs)."""
    if nproc <= 1 or under_launcher():
        return False
    launch(nproc, strip_option(COMMAND_LINE, "--nproc"))
    return True


def launch(nproc: int, args: list[str]) -> None:
    """Run ``ngp ARGS`` as ``nproc`` processes on this machine and wait for them: torch.distributed's elastic agent
    (what ``torchrun --standalone --nproc-per-node N`` runs) with a rendezvous on a free local port, no restarts,
    ``OMP_NUM_THREADS`` = cores / ``nproc`` unless set (so the processes do not fight over the cores).

    Ctrl-C reaches the agent, which passes SIGINT on to the processes and waits up to 2 minutes: training processes
    finish their step together, checkpoint, print one line (rank 0) and exit 130, as does this. When a process
    fails, the agent stops the others. A process that failed with one of ngp's documented exit codes
    has printed its one line; its code is passed on. Any other failure (a crash, a kill) raises DistributedError.
    """
    import logging
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent's own log lines (rendezvous, "Received 2 death signal, shutting down workers") are not ours to show.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=MONITOR_INTERVAL_S, start_method="spawn", shutdown_timeout=120)
    try:
        elastic_launch(config, sys.executable)("-m", "ngp_cli", *args)
    except SignalException as exc:
        # Ctrl-C (or a TERM) reached the agent, which passed it on to the processes (each in its own session) and
        # waited for them: training processes stop together at the end of a step, checkpoint and say so (exit 130).
        raise SystemExit(128 + int(exc.sigval)) from None  # the shell's convention: 130 for SIGINT
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code in NGP_EXIT_CODES:  # it failed cleanly and printed its one line (or rank 0 did): pass it on
            raise SystemExit(code) from None
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise DistributedError(f"process {rank} of {nproc} {how}; the others were stopped (continue from the last "
                               "checkpoint with --resume RUN_DIR)") from None

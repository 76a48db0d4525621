"""Error classes of ngp, each carrying the process exit code the CLI returns for it.

Exit codes (documented in docs/cli.md):

====  ==========================================================
code  meaning
====  ==========================================================
0     success
1     internal error (a bug: please report it; NGP_DEBUG=1 shows the traceback)
2     usage error (unknown option, missing argument, a value outside an option's choices or range)
3     config error (malformed YAML/JSON, unknown preset, unknown or ill-typed key, bad value)
4     data error (missing, unreadable, corrupt or unsupported input file)
5     no GPU (a CUDA backend or device was asked for and none is usable)
6     output error (the runs directory or an output file cannot be written)
7     training diverged (loss became NaN or infinite)
8     distributed failure (a process of a data-parallel run died or stopped answering; the others stop)
130   interrupted (Ctrl-C; a checkpoint was written first when training)
====  ==========================================================

This module imports nothing heavy: the CLI imports it before torch.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATA = 4
EXIT_NO_GPU = 5
EXIT_OUTPUT = 6
EXIT_DIVERGED = 7
EXIT_DISTRIBUTED = 8
EXIT_INTERRUPTED = 130
#: The codes an NgpError exits with (1, an internal error, is not one: it is a bug).
NGP_EXIT_CODES = frozenset({EXIT_USAGE, EXIT_CONFIG, EXIT_DATA, EXIT_NO_GPU, EXIT_OUTPUT, EXIT_DIVERGED,
                            EXIT_DISTRIBUTED, EXIT_INTERRUPTED})


class NgpError(Exception):
    """Base of all expected failures: the CLI prints ``str(err)`` as one line and exits with ``exit_code``."""

    exit_code = EXIT_INTERNAL
    kind = "error"


class UsageError(NgpError):
    """The command line itself is wrong (exit 2)."""

    exit_code = EXIT_USAGE
    kind = "usage error"


class ConfigError(NgpError):
    """A preset, config file, ``--set`` override or option value is invalid (exit 3)."""

    exit_code = EXIT_CONFIG
    kind = "config error"


class DataError(NgpError):
    """An input file is missing, unreadable, corrupt, empty or of an unsupported format (exit 4)."""

    exit_code = EXIT_DATA
    kind = "data error"


class NoGPUError(NgpError):
    """A CUDA backend or device was requested but no usable GPU exists (exit 5)."""

    exit_code = EXIT_NO_GPU
    kind = "no GPU"


class OutputError(NgpError):
    """An output location (runs directory, render, checkpoint) cannot be written (exit 6)."""

    exit_code = EXIT_OUTPUT
    kind = "output error"


class DivergedError(NgpError):
    """Training produced a non-finite loss (exit 7)."""

    exit_code = EXIT_DIVERGED
    kind = "training diverged"


class DistributedError(NgpError):
    """A process of a data-parallel run died, could not join, or did not answer within ``distributed.timeout_s``
    (exit 8); the other processes stop too, and the run resumes from its last checkpoint."""

    exit_code = EXIT_DISTRIBUTED
    kind = "distributed failure"


class Interrupted(NgpError):
    """The user pressed Ctrl-C; raised after any checkpoint was written (exit 130)."""

    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"

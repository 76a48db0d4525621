"""The CPU this process runs on, from /proc/cpuinfo: its model name and the ISA features that decide ngp's CPU code
paths. Imports nothing from the package (the kernel cache key, the CPU MLP's cache key and :mod:`ngp_cli.machine`
all read it).
"""

from __future__ import annotations

import functools
import platform

#: ISA features that decide ngp's CPU code paths (names as Linux's /proc/cpuinfo spells them; asimd/sve on Arm).
ISA_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")


@functools.lru_cache(maxsize=1)
def cpuinfo() -> tuple[str, tuple[str, ...]]:
    """``(model name, flags)`` of the first CPU in /proc/cpuinfo; ``(platform.processor() or machine, ())`` where
    there is no /proc/cpuinfo (macOS, Windows)."""
    model, flags = "", ()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not model and line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif not flags and line.startswith(("flags", "Features")):
                    flags = tuple(line.split(":", 1)[1].split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def isa_features() -> list[str]:
    """The :data:`ISA_FEATURES` this CPU has, in that order."""
    flags = set(cpuinfo()[1])
    return [f for f in ISA_FEATURES if f in flags]

"""glibc allocator setting for sampling: keep freed memory in the process instead of mapping it afresh every step.

The SS-Former's per-step tensors (complex L x L affinities) are above glibc's mmap threshold, so by default every
sampling step maps fresh pages, faults them in and has the kernel zero them: a third of a CPU ensemble's time was
system time (docs/benchmarks.md). ``keep_freed_memory`` applies, from inside the process, what
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...`` does from outside: every allocation is
served from the heap, and freed memory is kept for reuse (the process keeps its peak memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
INT_MAX = 2**31 - 1  # mallopt takes an int: trim only free top chunks above 2 GiB


def keep_freed_memory(enable: bool = True) -> bool:
    """Sets ``M_MMAP_MAX`` to 0 and ``M_TRIM_THRESHOLD`` to 2 GiB with glibc's ``mallopt`` when ``enable``; returns
    whether the setting is in force (``False`` where there is no glibc, e.g. macOS, Windows, musl)."""
    if not enable or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # e.g. musl
        logger.info("keep_freed_memory: no glibc mallopt on this platform; allocator left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1
    if not applied:
        logger.warning("keep_freed_memory: glibc refused the setting; allocator left as it is")
    return applied

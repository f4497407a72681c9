"""The process's allocator settings: glibc's mmap threshold pinned, so that freed payload buffers go back to the OS.

glibc raises its mmap threshold (up to 32 MiB) each time a large mmapped block is freed, after which
every block of that size comes from the heap, where freed memory stays in the process. Payloads and
results are such blocks: measured, 400 Submits of 256 KiB through a coordinator left its RSS 200 MiB
higher with the dynamic threshold, and 14 MiB higher with it pinned (tests/e2e/test_slow_reader.py).
Setting the threshold once turns the adjustment off. MALLOC_MMAP_THRESHOLD_ in the environment wins.
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger(__name__)

MALLOC_MMAP_THRESHOLD_BYTES = 128 << 10  # glibc's initial value
_M_MMAP_THRESHOLD = -3  # <malloc.h>


def pin_malloc_threshold() -> bool:
    """True when the threshold was set here; False off glibc or when the environment already sets it."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES))
    logger.debug("malloc mmap threshold pinned", extra={"bytes": MALLOC_MMAP_THRESHOLD_BYTES, "ok": ok})
    return ok

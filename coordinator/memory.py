"""The process's allocator and collector settings: glibc's mmap threshold pinned, the cyclic GC made rarer.

glibc raises its mmap threshold (up to 32 MiB) each time a large mmapped block is freed, after which
every block of that size comes from the heap, where freed memory stays in the process. Payloads and
results are such blocks: measured, 400 Submits of 256 KiB through a coordinator left its RSS 200 MiB
higher with the dynamic threshold, and 14 MiB higher with it pinned (tests/e2e/test_slow_reader.py).
Setting the threshold once turns the adjustment off. MALLOC_MMAP_THRESHOLD_ in the environment wins.

The cyclic garbage collector: every job allocates a few dozen container objects (protobuf wrappers,
records, futures, closures), almost none of them in cycles, and CPython's default first threshold (700
net allocations) ran a young collection every few jobs: `gc_collect_main` was 5% of the coordinator's
native profile under load, more than any function of ours. tune_gc() first freezes what start-up made
(modules, config, compiled queries: never garbage, so no collection should walk them again), then
raises the first threshold to GC_GEN0_THRESHOLD. Cycles are still collected, only in larger, rarer
passes: at most GC_GEN0_THRESHOLD objects wait in the young generation, a bounded amount of memory.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os

logger = logging.getLogger(__name__)

MALLOC_MMAP_THRESHOLD_BYTES = 128 << 10  # glibc's initial value
_M_MMAP_THRESHOLD = -3  # <malloc.h>
# Net container allocations between young collections (CPython's default is 700); the older
# generations keep CPython's default ratios (10 young collections per middle one, and so on).
GC_GEN0_THRESHOLD = 20_000


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


def tune_gc() -> None:
    """Freeze the objects start-up made and make young collections rarer (see the module docstring)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    logger.debug("gc tuned", extra={"gen0_threshold": GC_GEN0_THRESHOLD, "frozen": gc.get_freeze_count()})

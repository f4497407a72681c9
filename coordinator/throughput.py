"""Per-queue count of jobs finished in the last minute, in one-second buckets (bounded memory)."""

from __future__ import annotations

import time
from collections import defaultdict

WINDOW_S = 60


class Throughput:
    """Owned by the event loop; the completer records, ListQueues reads."""

    def __init__(self) -> None:
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * WINDOW_S)
        self._stamps: dict[str, list[int]] = defaultdict(lambda: [0] * WINDOW_S)

    def add(self, queue: str, n: int = 1, now: float | None = None) -> None:
        sec = int(now if now is not None else time.monotonic())
        i = sec % WINDOW_S
        if self._stamps[queue][i] != sec:
            self._stamps[queue][i] = sec
            self._buckets[queue][i] = 0
        self._buckets[queue][i] += n

    def last_minute(self, queue: str, now: float | None = None) -> int:
        sec = int(now if now is not None else time.monotonic())
        stamps, buckets = self._stamps.get(queue), self._buckets.get(queue)
        if stamps is None or buckets is None:
            return 0
        return sum(b for s, b in zip(stamps, buckets, strict=True) if sec - s < WINDOW_S)

    def queues(self) -> list[str]:
        return list(self._buckets)

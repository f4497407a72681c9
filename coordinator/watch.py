"""WatchHub: follows the jobs that WatchJob streams watch, with one bounded poll per interval for all of them.

A job's worker may be on any coordinator, so changes are read from Postgres, not heard in memory: every
interval the hub reads all watched jobs in one statement (watch_jobs, primary-key lookups, no bytes) and
hands each watcher the job as it is now. Each watcher holds one slot (the latest job) and an event, never
a queue: a watcher whose client does not read keeps one job in memory however much changes, sees the
latest state when it reads again, and always sees the final one (a finished job stays finished).

    handler: watch(id) --> Watcher registered --> GetJob --> send --> wait(slot) --> send --> ... finished --> close
    hub:     every WATCH_POLL_INTERVAL while any watcher: watch_jobs(ids) --> each watcher.offer(job | gone)

The number of open watchers is bounded (FAULTLINE_WATCHERS_MAX): past it, WatchJob is RESOURCE_EXHAUSTED.
The hub polls only while someone watches; with no watchers it waits for the first one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from coordinator.config import WATCH_POLL_INTERVAL, WATCHERS_MAX_DEFAULT, WATCHERS_PER_CLIENT_MAX_DEFAULT
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError, OverloadedError
from coordinator.model import Job

logger = logging.getLogger(__name__)

UNAVAILABLE_PAUSE_S = 1.0
# Jobs read per statement: a poll of many watched jobs is split so that no statement carries a huge array.
WATCH_READ_CHUNK = 5_000


def signature(job: Job) -> tuple[object, ...]:
    """What a watcher is told about: a change in any of these is a change worth a message."""
    return (job.state, job.attempts, job.lease_token, job.progress_fraction, job.progress_message,
            job.cancel_requested, job.run_at, job.finished_at, job.updated_at, job.last_error)


class Watcher:
    """One WatchJob stream's slot: the latest job the hub saw (or that it is gone), and a wake-up."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        # Owned by the hub (writes) and the stream handler (reads), both on the event loop.
        self._latest: Job | None = None
        self._gone = False
        self._event = asyncio.Event()

    def offer(self, job: Job | None) -> None:
        """The job as it is now, or None when it no longer exists (pruned); replaces what was not read."""
        if job is None:
            self._gone = True
        else:
            self._latest = job
        self._event.set()

    async def next(self) -> Job | None:
        """Wait for the hub's next look at the job: the job, or None when it is gone."""
        await self._event.wait()
        self._event.clear()
        if self._gone:
            return None
        return self._latest


@dataclass(frozen=True, slots=True)
class WatchResult:
    """What one poll did."""

    jobs: int
    gone: int


class WatchHub:
    """See the module docstring."""

    name = "watch_hub"

    def __init__(self, *, store: Store, interval_s: float = WATCH_POLL_INTERVAL.total_seconds(),
                 max_watchers: int = WATCHERS_MAX_DEFAULT,
                 max_per_client: int = WATCHERS_PER_CLIENT_MAX_DEFAULT) -> None:
        if interval_s <= 0 or max_watchers < 1 or max_per_client < 1:
            raise ValueError("interval_s must be positive, max_watchers and max_per_client at least 1")
        self._store = store
        self._interval_s = interval_s
        self._max = max_watchers
        self._max_per_client = max_per_client
        # Owned by the event loop: open watches per client (its key, or its address with auth off).
        self._by_client: dict[str, int] = {}
        # Owned by the event loop: job id -> its watchers; the count is bounded by max_watchers.
        self._watchers: dict[int, set[Watcher]] = {}
        self._count = 0
        self._first = asyncio.Event()

    @property
    def watching(self) -> int:
        return self._count

    @contextlib.contextmanager
    def watch(self, job_id: int, client: str = "") -> Iterator[Watcher]:
        """Register a watcher for the block; OverloadedError when max_watchers are open already, or when this
        client (its key, or its address) holds its share of them: one client's watches cost that client."""
        if self._count >= self._max:
            raise OverloadedError(f"{self._count} watches are open on this coordinator, the most it keeps "
                                  "(FAULTLINE_WATCHERS_MAX): retry later or use GetJob")
        mine = self._by_client.get(client, 0)
        if mine >= self._max_per_client:
            raise OverloadedError(f"this client has {mine} watches open on this coordinator, its share "
                                  "(FAULTLINE_WATCHERS_PER_CLIENT_MAX): close some, or use GetJob")
        self._by_client[client] = mine + 1
        w = Watcher(job_id)
        self._watchers.setdefault(job_id, set()).add(w)
        self._count += 1
        self._first.set()
        try:
            yield w
        finally:
            group = self._watchers.get(job_id)
            if group is not None:
                group.discard(w)
                if not group:
                    del self._watchers[job_id]
            self._count -= 1
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]

    async def run(self) -> None:
        while True:
            if not self._watchers:
                self._first.clear()
                await self._first.wait()
            try:
                await self.run_once()
                pause = self._interval_s
            except DatabaseUnavailableError as exc:
                logger.warning("watch poll paused: database unavailable", extra={"error": str(exc)})
                pause = UNAVAILABLE_PAUSE_S
            await asyncio.sleep(pause)

    async def run_once(self) -> WatchResult:
        ids = list(self._watchers)
        seen: dict[int, Job] = {}
        for i in range(0, len(ids), WATCH_READ_CHUNK):
            for job in await self._store.watch_jobs(ids[i:i + WATCH_READ_CHUNK]):
                seen[job.id] = job
        gone = 0
        for job_id in ids:
            now = seen.get(job_id)
            if now is None:
                gone += 1
            for w in tuple(self._watchers.get(job_id, ())):
                w.offer(now)
        return WatchResult(jobs=len(seen), gone=gone)

"""Notifier and Listener: tell other coordinators on the same database about ready work, and hear theirs.

Every coordinator's dispatcher is woken in memory by its own Submits, promotions and requeues. For
work that arose on another coordinator, the Notifier sends one pg_notify per flush with the queues
that got work (coalesced), and the Listener, on a connection of its own, wakes the local dispatcher
for each queue it hears about. NOTIFY is only a hint: a missed one costs at most the dispatcher's
fallback poll (FAULTLINE_DISPATCH_POLL_MS), never a job.

Payload: "<sender id> <queue>,<queue>,..." (a space cannot occur in a queue name). A listener drops
its own coordinator's notifications: its dispatcher was already woken in memory, and hearing them
again would only re-claim queues it has just found empty. After a flush the Notifier waits
NOTIFY_MIN_INTERVAL before the next one, so a busy coordinator sends a few notifications a second,
not one statement per Submit; the first announcement after a quiet spell goes out at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from coordinator import backoff
from coordinator.config import RESTART_BACKOFF_BASE, RESTART_BACKOFF_MAX
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError
from coordinator.sessions import DispatchSignal

logger = logging.getLogger(__name__)

CHANNEL = "faultline_ready"
# Least time between two flushes of the Notifier (work announced meanwhile is coalesced into the next).
NOTIFY_MIN_INTERVAL_S = 0.02
# pg_notify payloads must stay under 8000 bytes; queue names are at most 128 characters.
PAYLOAD_MAX_CHARS = 7_000
UNAVAILABLE_PAUSE_S = 1.0


class Notifier:
    """Owns the set of queues to announce; flushes them with one statement whenever any wait."""

    name = "notifier"

    def __init__(self, *, store: Store, sender: str, min_interval_s: float = NOTIFY_MIN_INTERVAL_S) -> None:
        if not sender or " " in sender:
            raise ValueError("sender must be a non-empty id without spaces")
        self._store = store
        self._sender = sender
        self._min_interval_s = min_interval_s
        # Only used from the event loop: queues waiting to be announced (bounded by the number of queues).
        self._pending: set[str] = set()
        self._event = asyncio.Event()

    def announce(self, queue: str) -> None:
        self._pending.add(queue)
        self._event.set()

    async def run(self) -> None:
        while True:
            await self._event.wait()
            await self.run_once()
            await asyncio.sleep(self._min_interval_s)

    async def run_once(self) -> int:
        self._event.clear()
        queues, self._pending = sorted(self._pending), set()
        chunks: list[list[str]] = [[]]
        for q in queues:
            if sum(len(x) + 1 for x in chunks[-1]) + len(q) > PAYLOAD_MAX_CHARS:
                chunks.append([])
            chunks[-1].append(q)
        try:
            for chunk in chunks:
                if chunk:
                    await self._store.notify_ready(f"{self._sender} {','.join(chunk)}")
        except DatabaseUnavailableError:
            # A hint lost while Postgres is away: other coordinators' fallback polls cover it.
            await asyncio.sleep(UNAVAILABLE_PAUSE_S)
        return len(queues)


class Listener:
    """Holds one LISTEN connection; reconnects with backoff when it drops."""

    name = "listener"

    def __init__(self, *, dsn: str, signal: DispatchSignal, sender: str,
                 connect: Callable[[str], Any] | None = None) -> None:
        self._dsn = dsn
        self._signal = signal
        self._sender = sender
        self._connect = connect or asyncpg.connect

    def _on_notify(self, _con: Any, _pid: int, _channel: str, payload: object) -> None:
        sender, _, queues = str(payload).partition(" ")
        if sender == self._sender:
            return
        for queue in queues.split(","):
            if queue:
                self._signal.wake(queue, announce=False)

    async def run(self) -> None:
        failures = 0
        while True:
            lost = asyncio.Event()
            try:
                con = await self._connect(self._dsn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                failures += 1
                delay = backoff.exponential(min(failures, 10), base=RESTART_BACKOFF_BASE, cap=RESTART_BACKOFF_MAX)
                logger.warning("listener cannot connect", extra={"error": str(exc), "retry_in_s":
                                                                 round(delay.total_seconds(), 2)})
                await asyncio.sleep(delay.total_seconds())
                continue
            failures = 0
            try:
                con.add_termination_listener(lambda _c, lost=lost: lost.set())
                await con.add_listener(CHANNEL, self._on_notify)
                # Work announced while we were not listening: look at every queue once.
                self._signal.wake(None)
                await lost.wait()
                logger.warning("listener connection lost; reconnecting")
            finally:
                if not con.is_closed():
                    con.terminate()

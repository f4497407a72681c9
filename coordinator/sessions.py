"""The registry of open worker sessions and the wake-up signal the dispatcher sleeps on.

A session owns its credit and its leases; the registry only indexes sessions. The dispatcher
reads credit and hands grants to sessions but keeps no copy, so a restarted dispatcher loses nothing.
The reaper's report (leases_taken_back) and the lease reconciler reach the holding sessions through
the registry, so that each session's lease set follows Postgres (INV-013).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Protocol

from coordinator.model import Job, LeaseKey


class Session(Protocol):
    """What the dispatcher and operators may ask of an open worker session."""

    session_id: str
    worker_id: str
    queues: tuple[str, ...]
    kinds: tuple[str, ...]
    # From the hello; a job's required_labels must all be among them (coordinator/policy.py).
    labels: dict[str, str]

    @property
    def credit(self) -> int: ...

    @property
    def accepting(self) -> bool:
        """Open, welcomed and not draining."""
        ...

    def take_credit(self, n: int) -> None: ...

    def return_credit(self, n: int) -> None: ...

    def deliver(self, jobs: Sequence[Job]) -> bool:
        """Queue lease grants to the worker; False when the session closed (the caller releases them)."""
        ...

    def holds(self, job_id: int) -> LeaseKey | None: ...

    def push_cancel(self, key: LeaseKey, reason: str) -> None: ...

    def revoke(self, key: LeaseKey, reason: str) -> bool:
        """Forget the lease (Postgres took it back) and tell the worker; True if it was held."""
        ...

    def lease_mark(self) -> int:
        """A mark for reconcile(): the leases held now were added before it."""
        ...

    def held_before(self, mark: int) -> list[LeaseKey]:
        """Leases held now that were added before mark."""
        ...

    def reconcile(self, gone: Collection[LeaseKey], mark: int, reason: str = ...) -> int:
        """Forget (revoke) the leases in gone that were held since mark; returns how many."""
        ...


class DispatchSignal:
    """Wakes the dispatcher: a bounded set of dirty queue names (bounded by the number of queues) plus an event."""

    def __init__(self, announce: Callable[[str], None] | None = None) -> None:
        self._event = asyncio.Event()
        # Only mutated from the event loop thread; read and cleared by the dispatcher.
        self._dirty: set[str] = set()
        self._all = False
        # Tells other coordinators (the notifier actor); None when running alone.
        self._announce = announce

    def wake(self, queue: str | None = None, *, announce: bool = True) -> None:
        """New work in `queue` (None: anything may have changed, e.g. new credit or a new session).

        Work that arose here is announced to other coordinators; work they announced (the listener
        actor passes announce=False) is not sent back, or two coordinators would echo forever."""
        if queue is None:
            self._all = True
        else:
            self._dirty.add(queue)
            if announce and self._announce is not None:
                self._announce(queue)
        self._event.set()

    def credit(self) -> None:
        """New capacity: worth a dispatch round, but no queue became non-empty."""
        self._event.set()

    async def wait(self, timeout: float) -> None:
        # asyncio.timeout, never wait_for: on Python 3.11 wait_for swallows the caller's cancellation
        # when the awaited thing completes at the same moment, and an actor that loses its
        # cancellation keeps running through shutdown.
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            self._all = True

    def take(self) -> tuple[bool, set[str]]:
        """(everything dirty, dirty queues) since the last take; clears the signal."""
        self._event.clear()
        everything, dirty = self._all, self._dirty
        self._all, self._dirty = False, set()
        return everything, dirty


class SessionRegistry:
    """Open sessions by id. Owned by the worker service; read by the dispatcher and operators."""

    def __init__(self, signal: DispatchSignal) -> None:
        self._sessions: dict[str, Session] = {}
        self.signal = signal

    def add(self, session: Session) -> None:
        self._sessions[session.session_id] = session
        self.signal.wake()

    def remove(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def leases_taken_back(self, taken: Sequence[tuple[LeaseKey, str | None, str]]) -> int:
        """Postgres took these leases back (old token, old holder, reason): the sessions holding them forget them."""
        by_worker: dict[str, list[Session]] = {}
        for s in self._sessions.values():
            by_worker.setdefault(s.worker_id, []).append(s)
        n = 0
        for key, holder, reason in taken:
            for s in by_worker.get(holder or "", ()):
                n += s.revoke(key, reason)
        return n

    def find_lease(self, job_id: int) -> tuple[Session, LeaseKey] | None:
        for s in self._sessions.values():
            key = s.holds(job_id)
            if key is not None:
                return s, key
        return None

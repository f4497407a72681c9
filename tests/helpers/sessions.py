"""A worker session whose credit and delivery the test controls, for the dispatcher and the hand-off."""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.model import Job, LeaseKey


class FakeSession:
    """Implements coordinator.sessions.Session; deliver() records the jobs, or fails while not open."""

    def __init__(self, session_id: str, credit: int, *, kinds: tuple[str, ...] = ("k",), open_: bool = True,
                 labels: dict[str, str] | None = None, queues: tuple[str, ...] = ("default",)) -> None:
        self.session_id = session_id
        self.worker_id = f"worker-{session_id}"
        self.queues = queues
        self.kinds = kinds
        self.labels = dict(labels or {})
        self._credit = credit
        self.open = open_
        self.delivered: list[Job] = []

    @property
    def credit(self) -> int:
        return self._credit

    @property
    def accepting(self) -> bool:
        return True

    def take_credit(self, n: int) -> None:
        self._credit -= n

    def return_credit(self, n: int) -> None:
        self._credit += n

    def deliver(self, jobs: Sequence[Job]) -> bool:
        if not self.open:
            return False
        self.delivered.extend(jobs)
        return True

    def holds(self, job_id: int) -> LeaseKey | None:
        return None

    def push_cancel(self, key: LeaseKey, reason: str) -> None:
        pass

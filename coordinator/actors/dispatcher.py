"""Dispatcher: pushes leases to workers with credit, claiming ready jobs in batches with SKIP LOCKED.

Each round groups accepting sessions by (queues, kinds, labels), and for each group claims from its
queues in rotation, so that every queue gets a share of the credit (fairness across queues); a claim
never asks for more jobs than the group has credit. Every claim goes through the grant policy
(coordinator/policy.py), which applies the queue's flow limits in Postgres and only gives a group jobs
its labels satisfy. Jobs are spread over the group's sessions slot by slot.

A queue that came back short is "exhausted" and is not claimed again until something says it may
have work: a Submit, a promotion, a slot of a limited queue freeing (NOTIFY from the
faultline_jobs_slot_freed trigger, on any coordinator), a settings change, or the fallback poll. A
claim cut short by a rate limit is not an empty queue: the dispatcher sets a timer for the moment the
queue's next token is due and claims again then. The dispatcher keeps no state that a restart would
lose (a lost timer is covered by the fallback poll).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from coordinator import grants, metrics
from coordinator.config import DISPATCH_FALLBACK_POLL
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError
from coordinator.model import Job
from coordinator.policy import GrantPolicy
from coordinator.sessions import DispatchSignal, Session, SessionRegistry
from coordinator.throughput import Throughput

logger = logging.getLogger(__name__)

UNAVAILABLE_PAUSE_S = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatcherConfig:
    """Dispatch limits."""

    lease_ttl_ms: int
    claim_batch_max: int
    fallback_poll_s: float = DISPATCH_FALLBACK_POLL.total_seconds()

    def __post_init__(self) -> None:
        if self.claim_batch_max < 1 or self.lease_ttl_ms < 1:
            raise ValueError("claim_batch_max and lease_ttl_ms must be positive")


@dataclass(slots=True)
class DispatchResult:
    """What one round did."""

    claimed: int = 0
    released: int = 0
    claims: int = 0
    more: bool = False


@dataclass(slots=True)
class _Group:
    queues: tuple[str, ...]
    kinds: tuple[str, ...]
    labels: dict[str, str]
    sessions: list[Session] = field(default_factory=list)


_GroupKey = tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]


class Dispatcher:
    """Claims jobs and hands them to sessions; see the module docstring."""

    name = "dispatcher"

    def __init__(
        self, *, config: DispatcherConfig, store: Store, registry: SessionRegistry, signal: DispatchSignal,
        policy: GrantPolicy, on_released: grants.OnReleased | None = None, throughput: Throughput | None = None,
    ) -> None:
        self._config = config
        self._throughput = throughput
        self._store = store
        self._registry = registry
        self._signal = signal
        self._policy = policy
        self._on_released = on_released
        # Only used by this actor: queues known to be empty for a group, where each group's rotation stands,
        # and the wake-up timer of each throttled queue (at most one per queue).
        self._exhausted: set[tuple[str, _GroupKey]] = set()
        self._rotation: dict[_GroupKey, int] = defaultdict(int)
        self._refill_timers: dict[str, asyncio.TimerHandle] = {}
        self._job_wait = metrics.Children(metrics.JOB_WAIT)

    async def run(self) -> None:
        while True:
            result = await self.run_once()
            if not result.more:
                await self._signal.wait(self._config.fallback_poll_s)

    async def run_once(self) -> DispatchResult:
        everything, dirty = self._signal.take()
        if everything:
            self._exhausted.clear()
            try:
                await self._policy.reload()  # the fallback round: settings changed elsewhere count from here on
            except DatabaseUnavailableError:
                pass  # the claims below meet the same outage and pause
        elif dirty:
            self._exhausted = {e for e in self._exhausted if e[0] not in dirty}
        result = DispatchResult()
        try:
            for gkey, group in self._groups():
                await self._dispatch_group(gkey, group, result)
        except DatabaseUnavailableError as exc:
            logger.warning("dispatch paused: database unavailable", extra={"error": str(exc)})
            await asyncio.sleep(UNAVAILABLE_PAUSE_S)
            self._signal.wake()
            return result
        if result.claimed:
            logger.debug("dispatched", extra={"claimed": result.claimed, "claims": result.claims})
        return result

    def _groups(self) -> list[tuple[_GroupKey, _Group]]:
        groups: dict[_GroupKey, _Group] = {}
        for s in self._registry:
            if s.accepting and s.credit > 0:
                key = (s.queues, s.kinds, tuple(sorted(s.labels.items())))
                groups.setdefault(key, _Group(s.queues, s.kinds, s.labels)).sessions.append(s)
        return list(groups.items())

    async def _dispatch_group(self, gkey: _GroupKey, group: _Group, result: DispatchResult) -> None:
        credit = sum(s.credit for s in group.sessions)
        queues = [q for q in group.queues if (q, gkey) not in self._exhausted]
        if not queues or credit <= 0:
            return
        start = self._rotation[gkey] % len(queues)
        self._rotation[gkey] += 1
        order = queues[start:] + queues[:start]
        for i, queue in enumerate(order):
            # An equal share of what is left for each remaining queue; what a queue leaves unused flows on.
            share = -(-credit // (len(order) - i))
            want = min(share, credit, self._config.claim_batch_max)
            if want <= 0:
                break
            slots = self._slots(group.sessions, want)
            try:
                claim = await self._policy.claim(
                    queue=queue, kinds=group.kinds, labels=group.labels, slots=[s.worker_id for s in slots],
                    lease_ttl_ms=self._config.lease_ttl_ms,
                )
            except BaseException:
                # The claim failed (Postgres down, cancelled): the reserved credit goes back to its
                # sessions, or they would never be offered work again (a worker only sends credit
                # when a slot frees, and these slots never held anything).
                for s in slots:
                    s.return_credit(1)
                raise
            result.claims += 1
            jobs = claim.jobs
            if claim.retry_in is not None:
                self._wake_at_refill(queue, claim.retry_in.total_seconds())
            if jobs:
                waited = self._job_wait(queue)
                for job, _ in jobs:  # both stamps come from Postgres now(): no clock skew in the wait
                    if job.started_at is not None:
                        waited.observe(max((job.started_at - job.run_at).total_seconds(), 0.0))
            if len(jobs) < len(slots):
                self._exhausted.add((queue, gkey))
            else:
                result.more = True
            for s in slots[len(jobs):]:
                s.return_credit(1)
            credit -= len(jobs)
            result.claimed += len(jobs)
            result.released += await self._deliver(jobs, slots)

    def _wake_at_refill(self, queue: str, delay_s: float) -> None:
        """Claim `queue` again when its next token is due (not before: a claim then would only find none)."""
        if queue in self._refill_timers:
            return

        def fire() -> None:
            self._refill_timers.pop(queue, None)
            self._signal.wake(queue, announce=False)  # every coordinator keeps its own timer

        self._refill_timers[queue] = asyncio.get_running_loop().call_later(max(delay_s, 0.0), fire)

    @staticmethod
    def _slots(sessions: list[Session], want: int) -> list[Session]:
        """Interleave sessions by their credit (A, B, A, ...) and reserve that credit now."""
        slots: list[Session] = []
        remaining = {id(s): s.credit for s in sessions}
        while len(slots) < want:
            progressed = False
            for s in sessions:
                if len(slots) >= want:
                    break
                if remaining[id(s)] > 0:
                    remaining[id(s)] -= 1
                    slots.append(s)
                    progressed = True
            if not progressed:
                break
        for s in sessions:
            taken = s.credit - remaining[id(s)]
            if taken:
                s.take_credit(taken)
        return slots

    async def _deliver(self, jobs: list[tuple[Job, int]], slots: list[Session]) -> int:
        return await grants.deliver(self._store, self._signal, [(job, slots[slot]) for job, slot in jobs],
                                    path=grants.PATH_CLAIM, on_released=self._on_released,
                                    throughput=self._throughput)

"""Completer: writes completions and failures in batches, first write wins, and says why a frame lost.

Each completion or failure is fenced on (job, token, running). Frames that match nothing are
classified in one more round trip: a repeat of the same close (DUPLICATE with the stored result),
a cancelled job, a stale token, or an unknown job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from coordinator import metrics
from coordinator.actors.batching import BatchingActor, Inbox
from coordinator.config import RetryDefaults
from coordinator.db.store import Completion, Failure, Store, Verdict
from coordinator.model import LeaseKey, Outcome
from coordinator.throughput import Throughput

logger = logging.getLogger(__name__)

CloseItem = Completion | Failure
_ACCEPTED = Verdict(Outcome.ACCEPTED)  # immutable: one answer object for every accepted close


@dataclass(frozen=True, slots=True)
class CompleterResult:
    """What one flush did."""

    succeeded: int
    failed: int
    refused: int


class Completer(BatchingActor[CloseItem, Verdict]):
    """Batches Complete and Fail frames into one statement each."""

    name = "completer"

    def __init__(
        self,
        *,
        inbox: Inbox[CloseItem, Verdict],
        store: Store,
        retry: RetryDefaults,
        max_items: int,
        on_retry_scheduled: Callable[[], None],
        on_closed: Callable[[LeaseKey, str, str | None], None] | None = None,
        throughput: Throughput | None = None,
    ) -> None:
        super().__init__(inbox=inbox, max_items=max_items)
        self._throughput = throughput
        self._store = store
        self._retry = retry
        self._on_retry_scheduled = on_retry_scheduled
        self._on_closed = on_closed
        # Only used by this actor: labelled metric children looked up once, not per completed job.
        self._completed = metrics.Children(metrics.JOBS_COMPLETED)
        self._duration = metrics.Children(metrics.JOB_DURATION)

    def unavailable(self, message: str) -> Verdict:
        return Verdict(Outcome.UNAVAILABLE, message)

    def refused(self, item: CloseItem, message: str) -> Verdict:
        return Verdict(Outcome.INVALID, message)

    async def flush(self, items: list[CloseItem]) -> list[Verdict]:
        completions = [i for i in items if isinstance(i, Completion)]
        failures = [i for i in items if isinstance(i, Failure)]
        verdicts: dict[tuple[int, LeaseKey], Verdict] = {}
        if completions:
            metrics.DB_BATCH_SIZE.labels("complete").observe(len(completions))
            rows = await self._store.complete_jobs(completions)
            accepted: set[LeaseKey] = set()
            # Counted per (queue, kind) of the batch, not per job: one counter and throughput update each.
            counts: dict[tuple[str, str], int] = {}  # (queue, kind) -> jobs
            runs: dict[str, list[float]] = {}  # queue -> run times, for the history
            for r in rows:
                key = LeaseKey(r["id"], r["lease_token"])
                accepted.add(key)
                group = (r["queue"], r["kind"])
                counts[group] = counts.get(group, 0) + 1
                if r["started_at"] is not None:
                    run_s = (r["finished_at"] - r["started_at"]).total_seconds()
                    self._duration(*group).observe(run_s)
                    runs.setdefault(group[0], []).append(run_s)
                if self._on_closed:
                    self._on_closed(key, "succeeded", None)
            per_queue: dict[str, int] = {}
            for (queue, kind), n in counts.items():
                self._completed(queue, kind, "succeeded").inc(n)
                per_queue[queue] = per_queue.get(queue, 0) + n
            if self._throughput:
                for queue, n in per_queue.items():
                    self._throughput.add(queue, n)
                    self._throughput.succeeded_many(queue, n, runs.get(queue, ()))
            await self._explain(0, {c.key: c.worker_id for c in completions}, accepted, "succeeded", verdicts)
        if failures:
            metrics.DB_BATCH_SIZE.labels("fail").observe(len(failures))
            rows = await self._store.fail_jobs(failures, self._retry)
            accepted = {LeaseKey(r["id"], r["lease_token"]) for r in rows}
            retrying = False
            errors = {f.key: f.error for f in failures}
            for r in rows:
                state = r["state"]
                self._completed(r["queue"], r["kind"], "failed" if state == "retrying" else str(state)).inc()
                run_s = (r["closed_at"] - r["started_at"]).total_seconds() if r["started_at"] is not None else None
                if run_s is not None:  # failed attempts ran too: keep the duration histogram unbiased
                    self._duration(r["queue"], r["kind"]).observe(run_s)
                if self._throughput:
                    if state != "retrying":
                        self._throughput.add(r["queue"])
                    self._throughput.ended(r["queue"], succeeded=False, failed=state != "cancelled", run_s=run_s)
                if state == "retrying":
                    metrics.RETRIES.labels(r["queue"], r["kind"]).inc()
                    retrying = True
                key = LeaseKey(r["id"], r["lease_token"])
                if self._on_closed:
                    self._on_closed(key, str(state), errors.get(key))
            if retrying:
                self._on_retry_scheduled()
            await self._explain(1, {f.key: f.worker_id for f in failures}, accepted, "failed", verdicts)
        return [verdicts[(0 if isinstance(i, Completion) else 1, i.key)] for i in items]

    async def _explain(
        self,
        tag: int,
        keys: dict[LeaseKey, str],  # lease -> the worker that sent the frame
        accepted: set[LeaseKey],
        closing_outcome: str,
        out: dict[tuple[int, LeaseKey], Verdict],
    ) -> None:
        misses: list[LeaseKey] = []
        for key in keys:
            if key in accepted and (tag, key) not in out:
                out[(tag, key)] = _ACCEPTED
            elif (tag, key) not in out:
                misses.append(key)
        if not misses:
            return
        explained = await self._store.classify(misses, closing_outcome=closing_outcome)
        frame = "complete" if tag == 0 else "fail"
        for key in misses:
            verdict = explained.get(key, Verdict(Outcome.NOT_FOUND, "no such job"))
            out[(tag, key)] = verdict
            if verdict.outcome is Outcome.STALE_LEASE:
                metrics.STALE_REJECTED.labels(frame).inc()
                logger.info(
                    "stale %s refused", frame,
                    extra={"job_id": key.job_id, "lease_token": key.token, "worker_id": keys[key],
                           "reason": verdict.message},
                )
            metrics.FRAMES_REFUSED.labels(frame, verdict.outcome.value).inc()

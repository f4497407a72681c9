"""Submitter: the one entry point through which jobs enter Faultline, whoever produces them.

Submit and SubmitBatch call it, and so must anything else that makes jobs (a cron schedule, a bulk
requeue): it opens the submit span, stores the jobs through the hand-off (which leases a job at insert
when the grant policy allows it, coordinator/grants.py and policy.py), counts them, and wakes whoever
acts next: the dispatcher for queued jobs (and, through NOTIFY, other coordinators'), the promoter for
scheduled ones. Callers validate first; what they hand in is a list of JobSpec.

    specs(trace context) -> span -> Handoff.insert -> metrics -> wake dispatcher / promoter
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from coordinator import metrics
from coordinator.errors import FaultlineError
from coordinator.grants import Handoff
from coordinator.model import Job, JobSpec, JobState
from coordinator.sessions import DispatchSignal
from coordinator.tracing import JobTracer

#: Builds the specs to store, given the W3C trace context of the submit span (None when not tracing).
SpecBuilder = Callable[[dict[str, str] | None], Sequence[JobSpec]]


class Submitter:
    """See the module docstring."""

    def __init__(
        self, *, handoff: Handoff, signal: DispatchSignal, tracer: JobTracer, promoter_wake: Callable[[], None],
    ) -> None:
        self._handoff = handoff
        self._signal = signal
        self._tracer = tracer
        self._promoter_wake = promoter_wake
        self._submitted = metrics.Children(metrics.JOBS_SUBMITTED)

    async def submit(self, specs: Sequence[JobSpec], *, origin: str, metadata: Mapping[str, str] | None = None,
                     submitted_by: str | None = None) -> list[tuple[Job, bool]]:
        """Store jobs as given (their trace_context kept); returns (job, created) in order."""
        return await self.submit_built(lambda _: specs, origin=origin, metadata=metadata, count=len(specs),
                                       submitted_by=submitted_by)

    async def submit_built(self, build: SpecBuilder, *, origin: str, metadata: Mapping[str, str] | None = None,
                           count: int, submitted_by: str | None = None) -> list[tuple[Job, bool]]:
        """Store the jobs that `build` makes inside the submit span (so each carries the span's context).

        origin names the span (faultline.<origin>: "Submit", "SubmitBatch", "Schedule", ...); metadata is
        the caller's W3C context, if any; count is how many jobs `build` will make; submitted_by is the
        submitting identity, stored with the jobs (audit; None when anonymous). A FaultlineError that
        `build` raises (a validation error) is recorded on the span and propagates.
        """
        span = self._tracer.submit_span(origin, metadata or {}, **{"faultline.jobs": count})
        try:
            specs = build(self._tracer.carrier(span) or None)
            results = await self._handoff.insert(specs, submitted_by=submitted_by)
            if len(results) == 1:
                span.set_attribute("faultline.job_id", str(results[0][0].id))
        except FaultlineError as exc:
            span.record_exception(exc)
            raise
        finally:
            span.end()
        # Counted and woken per (queue, kind) and per queue of the call, not per job: a batch is mostly one of each.
        scheduled = False
        created_n: dict[tuple[str, str], int] = {}
        queued: set[str] = set()
        for job, created in results:
            if created:
                group = (job.queue, job.kind)
                created_n[group] = created_n.get(group, 0) + 1
                if job.state is JobState.QUEUED:
                    queued.add(job.queue)
                elif job.state is JobState.SCHEDULED:
                    scheduled = True
                # RUNNING: handed off to a waiting worker at insert (coordinator/grants.py).
        for (queue, kind), n in created_n.items():
            self._submitted(queue, kind).inc(n)
        for queue in queued:
            self._signal.wake(queue)
        if scheduled:
            self._promoter_wake()
        return results

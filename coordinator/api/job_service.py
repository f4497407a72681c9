"""JobService servicer: thin; validate, convert, delegate to Store, map errors to status."""

from __future__ import annotations

import base64
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from coordinator import bulk, logs, metrics, tracing
from coordinator.actors.metrics_sampler import MetricsSampler
from coordinator.api import convert, validate
from coordinator.api.admission import SubmitAdmission
from coordinator.api.status import code_for, trailing_metadata_for
from coordinator.auth import keys as auth_keys
from coordinator.auth.keys import Scope
from coordinator.db.store import Store
from coordinator.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    FaultlineError,
    InvalidArgumentError,
    JobNotFoundError,
    PermissionDeniedError,
    ScheduleNotFoundError,
)
from coordinator.model import BulkRow, BulkTarget, Job, JobSpec, JobState, ScheduleRow
from coordinator.policy import GrantPolicy
from coordinator.schedules import SubmitJob, make_submit, next_tick, tick_spec
from coordinator.sessions import DispatchSignal, SessionRegistry
from coordinator.submit import Submitter
from coordinator.throughput import Throughput
from coordinator.watch import WatchHub, signature
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
PAGE_TOKEN_PREFIX = "v1:"
# The JobFilter.state values BulkRequeueJobs accepts: the states RequeueJob brings back.
REQUEUEABLE_STATES = frozenset({job_pb2.JOB_STATE_DEAD_LETTERED, job_pb2.JOB_STATE_CANCELLED})
# The most bytes any JobService response carries: below grpc's default 4 MiB receive limit of every client
# (grpcurl, generated stubs), so no reply is ever too big to deliver. A ListJobs page stops early at it; a
# Submit or SubmitBatch whose response could not fit is refused before anything is stored.
RESPONSE_BUDGET_BYTES = 4_000_000
# What a SubmitResponse adds to the fields it echoes from its SubmitRequest (id, state, attempts,
# timestamps, created, framing), in bytes: a generous bound used to size a reply before storing.
SUBMIT_RESPONSE_OVERHEAD_BYTES = 128
# The longest outcome_detail of a duplicate (the words, a 19-digit id, a timestamp; convert.submit_outcome).
OUTCOME_DETAIL_MAX_BYTES = 112


def _peer_host(peer: str) -> str:
    """The address part of a gRPC peer ("ipv4:127.0.0.1:5555", "ipv6:[::1]:5555"): one client, whatever its port."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def rpc(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[..., Awaitable[Resp]]:
    """Turn Faultline errors into the status that api/status.py names; anything else is INTERNAL and logged."""

    received = metrics.GRPC_MESSAGES.labels(fn.__name__, "received")
    sent = metrics.GRPC_MESSAGES.labels(fn.__name__, "sent")

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        received.inc()
        try:
            response = await fn(self, request, context)
            sent.inc()
            return response
        except FaultlineError as exc:
            code = code_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                logger.error("rpc failed", extra={"rpc": fn.__name__}, exc_info=True)
            await context.abort(code, str(exc), trailing_metadata_for(exc, code))
        raise AssertionError("unreachable")  # context.abort always raises

    return wrapper


def _encode_page_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{PAGE_TOKEN_PREFIX}{last_id}".encode()).decode()


def _page_bytes(jobs: list[Job]) -> int:
    """The bytes the store's budget counts for these jobs (see list_jobs in queries.sql)."""
    return sum(len(j.payload) + len(j.result or b"") + len(j.progress_details or b"") for j in jobs)


def _check_batch_response_fits(request: jpb.SubmitBatchRequest, *, full: bool) -> None:
    """Refuse, before storing anything, a batch whose response would pass RESPONSE_BUDGET_BYTES."""
    estimate = 0
    for r in request.jobs:
        estimate += r.ByteSize() + SUBMIT_RESPONSE_OVERHEAD_BYTES - (0 if full else len(r.payload))
        if r.idempotency_key:  # a duplicate's answer carries an outcome_detail (convert.submit_outcome)
            estimate += OUTCOME_DETAIL_MAX_BYTES
    if estimate > RESPONSE_BUDGET_BYTES:
        raise InvalidArgumentError(
            "jobs", f"the response would take about {estimate} bytes, over the {RESPONSE_BUDGET_BYTES}-byte "
                    "budget of a reply: split the batch" + ("" if not full else " or ask for view BASIC"))


def _submit_response(job: Job, created: bool, *, full: bool) -> dict[str, Any]:
    """A SubmitResponse as constructor fields, so that SubmitBatch builds its reply in one pass (convert.job_fields)."""
    outcome, detail = convert.submit_outcome(job, created)
    fields: dict[str, Any] = {"job": convert.job_fields(job, full=full), "outcome": outcome}
    if created:
        fields["created"] = True
    if detail:
        fields["outcome_detail"] = detail
    return fields


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    """See the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        signal: DispatchSignal,
        registry: SessionRegistry,
        submitter: Submitter,
        policy: GrantPolicy,
        throughput: Throughput,
        max_payload: int,
        max_attempts_default: int,
        admission: SubmitAdmission,
        watch_hub: WatchHub | None = None,
        submit_job: SubmitJob | None = None,
        auth_enabled: bool = False,
        sampler: MetricsSampler,
    ) -> None:
        self._store = store
        self._signal = signal
        self._registry = registry
        self._submitter = submitter
        self._policy = policy
        self._throughput = throughput
        self._max_payload = max_payload
        self._max_attempts_default = max_attempts_default
        self._admission = admission
        self._watch_hub = watch_hub or WatchHub(store=store)
        # Schedules submit through this one function, itself on the Submitter (coordinator/schedules.py).
        self._submit_job = submit_job or make_submit(submitter)
        # Whether the edge authenticates calls (FAULTLINE_AUTH); WhoAmI reports it.
        self._auth_enabled = auth_enabled
        self._sampler = sampler

    async def _submit(self, rpc_name: str, reqs: list[Any], context: grpc.aio.ServicerContext[Any, Any],
                      prefix: Callable[[int], str]) -> list[tuple[Job, bool]]:
        with self._admission.admit(rpc_name, len(reqs), sum(r.ByteSize() for r in reqs)):  # api/admission.py
            return await self._submit_admitted(rpc_name, reqs, context, prefix)

    async def _submit_admitted(self, rpc_name: str, reqs: list[Any], context: grpc.aio.ServicerContext[Any, Any],
                               prefix: Callable[[int], str]) -> list[tuple[Job, bool]]:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        principal = auth_keys.current()

        def build(carrier: dict[str, str] | None) -> list[JobSpec]:
            specs = [
                validate.submit(r, field=prefix(i), max_payload=self._max_payload,
                                max_attempts_default=self._max_attempts_default, trace_context=carrier)
                for i, r in enumerate(reqs)
            ]
            if principal.restricted:  # a submit key limited to queues submits only to them
                for i, spec in enumerate(specs):
                    principal.require_queue(spec.queue, f"{prefix(i)}queue")
            return specs

        return await self._submitter.submit_built(build, origin=rpc_name, metadata=metadata, count=len(reqs),
                                                  submitted_by=principal.audit)

    @rpc
    async def Submit(
        self, request: jpb.SubmitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.SubmitResponse:
        full = validate.view(request.view)
        if full:
            auth_keys.current().require(Scope.PAYLOADS, "Submit with view FULL")
        [(job, created)] = await self._submit("Submit", [request], context, lambda _: "")
        return jpb.SubmitResponse(**_submit_response(job, created, full=full))

    @rpc
    async def SubmitBatch(
        self, request: jpb.SubmitBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.SubmitBatchResponse:
        if not request.jobs:
            raise InvalidArgumentError("jobs", "at least one job is required")
        if len(request.jobs) > validate.BATCH_MAX:
            raise InvalidArgumentError("jobs", f"at most {validate.BATCH_MAX} jobs per batch, got {len(request.jobs)}")
        full = validate.view(request.view)
        if full:
            auth_keys.current().require(Scope.PAYLOADS, "SubmitBatch with view FULL")
        _check_batch_response_fits(request, full=full)
        results = await self._submit("SubmitBatch", list(request.jobs), context, lambda i: f"jobs[{i}].")
        return jpb.SubmitBatchResponse(
            results=[_submit_response(j, c, full=full) for j, c in results]
        )

    async def _get(self, job_id: int) -> Job:
        job = await self._store.get_job(job_id)
        if job is None:
            raise JobNotFoundError(f"job {job_id} not found")
        return job

    @rpc
    async def GetJob(
        self, request: jpb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.GetJobResponse:
        job = await self._get(validate.job_id(request.id))
        principal = auth_keys.current()
        principal.require_queue(job.queue, "GetJob")
        audit = await self._store.audit_of(job.id)
        # Without the payloads scope the job comes as in view BASIC: no payload, result or progress details.
        full = principal.has(Scope.PAYLOADS)
        return jpb.GetJobResponse(
            job=convert.job_to_pb(job, full=full), trace_id=tracing.trace_id_of(job.trace_context),
            audit=convert.audit_to_pb(audit) if audit is not None else None)

    @rpc
    async def ListJobs(
        self, request: jpb.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.ListJobsResponse:
        queue = validate.name(request.queue, "queue") if request.queue else None
        principal = auth_keys.current()
        if principal.restricted:
            if queue is None:
                raise PermissionDeniedError(
                    f"ListJobs: {principal.name} reads only queues {', '.join(principal.queues)}: set "
                    "ListJobsRequest.queue")
            principal.require_queue(queue, "ListJobs")
        kind = validate.name(request.kind, "kind") if request.kind else None
        labels = validate.label_filter(request.labels, "labels")
        key = validate.idempotency_key(request.idempotency_key, "idempotency_key")
        state_pb = validate.state(request.state)
        size = validate.page_size(request.page_size)
        before = validate.page_token(request.page_token, PAGE_TOKEN_PREFIX)
        full = validate.view(request.view)
        if full:
            principal.require(Scope.PAYLOADS, "ListJobs with view FULL")
        jobs = await self._store.list_jobs(
            queue=queue, kind=kind, state=convert.PB_TO_STATE[state_pb] if state_pb is not None else None,
            before_id=before, limit=size + 1, full=full, budget_bytes=RESPONSE_BUDGET_BYTES, labels=labels,
            idempotency_key=key,
        )
        # The store stopped a FULL page after the job that reached the budget (or gave size + 1 jobs); the
        # page itself stops before the first job that would take it past the budget, keeping at least one.
        page: list[Any] = []
        used = 0
        for j in jobs[:size]:
            pb = convert.job_to_pb(j, full=full)
            cost = pb.ByteSize() + 8  # the field's tag and length
            if page and used + cost > RESPONSE_BUDGET_BYTES:
                break
            page.append(pb)
            used += cost
        more = len(jobs) > len(page)
        if full and not more and len(jobs) <= size and _page_bytes(jobs) >= RESPONSE_BUDGET_BYTES:
            more = True  # the store cut this page at the budget: later jobs may follow
        return jpb.ListJobsResponse(
            jobs=page, next_page_token=_encode_page_token(int(page[-1].id)) if more and page else "",
        )

    @rpc
    async def CancelJob(
        self, request: jpb.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.CancelJobResponse:
        job_id = validate.job_id(request.id)
        principal = auth_keys.current()
        if principal.restricted:
            principal.require_queue((await self._get(job_id)).queue, "CancelJob")
        job = await self._store.cancel_job(job_id)
        if job is None:
            raise JobNotFoundError(f"job {job_id} not found")
        if principal.audit is not None and (job.state is JobState.CANCELLED or job.cancel_requested):
            await self._store.audit_cancelled(job.id, principal.audit)
        if job.state is JobState.RUNNING and job.cancel_requested:
            self._tell_holder(job.id, "cancelled by CancelJob")
        logger.info("job cancel", extra=logs.job_fields(job.id, job.lease_token, job.worker_id, state=job.state.value))
        return jpb.CancelJobResponse(job=convert.job_to_pb(job))

    def _tell_holder(self, job_id: int, reason: str) -> None:
        """Tell the worker that runs job_id, when its session is on this coordinator, that it was cancelled.

        Otherwise the holder learns it from its next heartbeat reply (it may be on another coordinator)."""
        found = self._registry.find_lease(job_id)
        if found is not None:
            session, key = found
            session.push_cancel(key, reason)

    async def _check_bulk_queues(self, rpc_name: str, target: BulkTarget) -> None:
        """A queue-limited key acts only on its queues: a filter must name one, named jobs must all be in one.

        Checked before anything changes; a job's queue never changes, so the check stays true."""
        principal = auth_keys.current()
        if not principal.restricted:
            return
        if target.filter is not None:
            if target.filter.queue is None:
                raise PermissionDeniedError(
                    f"{rpc_name}: {principal.name} acts only on queues {', '.join(principal.queues)}: set "
                    "filter.queue")
            principal.require_queue(target.filter.queue, f"{rpc_name} filter.queue")
            return
        queues = await self._store.job_queues(target.ids or ())
        for job_id in sorted(queues):
            if not principal.allows_queue(queues[job_id]):
                raise PermissionDeniedError(
                    f"{rpc_name}: ids names job {job_id} in queue {queues[job_id]!r}, which {principal.name} "
                    f"may not use (its queues: {', '.join(principal.queues)}); nothing was changed")

    @rpc
    async def BulkCancelJobs(
        self, request: jpb.BulkCancelJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.BulkCancelJobsResponse:
        target = validate.bulk_target(request)
        fp = bulk.fingerprint("cancel", target)
        cursor = bulk.decode_token(request.resume_token, fp)
        await self._check_bulk_queues("BulkCancelJobs", target)
        identity = auth_keys.current().audit
        cancelled = cancel_requested = 0

        def told(rows: list[BulkRow]) -> None:
            nonlocal cancelled, cancel_requested
            for r in rows:
                if not r.changed:
                    continue
                if r.state is JobState.RUNNING and r.cancel_requested:
                    cancel_requested += 1
                    self._tell_holder(r.id, "cancelled by BulkCancelJobs")  # as CancelJob does
                else:
                    cancelled += 1

        async def chunk(before: int | None, limit: int) -> list[BulkRow]:
            return await self._store.bulk_cancel_jobs(target, identity=identity, before_id=before, limit=limit)

        started = time.monotonic()
        walked = await bulk.walk(target, cursor, chunk, told)
        skipped = sum(1 for r in walked.rows if not r.changed) + walked.missing
        logger.info("jobs bulk cancel", extra={
            "cancelled": cancelled, "cancel_requested": cancel_requested, "skipped": skipped,
            "more": walked.next_cursor is not None, "took_s": round(time.monotonic() - started, 3)})
        return jpb.BulkCancelJobsResponse(
            cancelled=cancelled, cancel_requested=cancel_requested, skipped=skipped,
            resume_token=bulk.encode_token(walked.next_cursor, fp) if walked.next_cursor is not None else "")

    @rpc
    async def BulkRequeueJobs(
        self, request: jpb.BulkRequeueJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.BulkRequeueJobsResponse:
        extra = validate.extra_attempts(request.extra_attempts)
        target = validate.bulk_target(request, states=REQUEUEABLE_STATES)
        fp = bulk.fingerprint(f"requeue+{extra}", target)  # a token resumes the same extra_attempts only
        cursor = bulk.decode_token(request.resume_token, fp)
        await self._check_bulk_queues("BulkRequeueJobs", target)
        identity = auth_keys.current().audit
        requeued = 0

        def woken(rows: list[BulkRow]) -> None:
            nonlocal requeued
            queues = {r.queue for r in rows if r.changed and r.queue is not None}
            requeued += sum(1 for r in rows if r.changed)
            for q in sorted(queues):
                self._signal.wake(q)  # as RequeueJob does, once per queue of the chunk

        async def chunk(before: int | None, limit: int) -> list[BulkRow]:
            return await self._store.bulk_requeue_jobs(target, identity=identity, extra_attempts=extra,
                                                       before_id=before, limit=limit)

        started = time.monotonic()
        walked = await bulk.walk(target, cursor, chunk, woken)
        skipped = sum(1 for r in walked.rows if not r.changed) + walked.missing
        logger.info("jobs bulk requeue", extra={
            "requeued": requeued, "skipped": skipped, "more": walked.next_cursor is not None,
            "took_s": round(time.monotonic() - started, 3)})
        return jpb.BulkRequeueJobsResponse(
            requeued=requeued, skipped=skipped,
            resume_token=bulk.encode_token(walked.next_cursor, fp) if walked.next_cursor is not None else "")

    @rpc
    async def RequeueJob(
        self, request: jpb.RequeueJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.RequeueJobResponse:
        job_id = validate.job_id(request.id)
        extra = validate.extra_attempts(request.extra_attempts)
        principal = auth_keys.current()
        if principal.restricted:
            principal.require_queue((await self._get(job_id)).queue, "RequeueJob")
        job = await self._store.requeue_job(job_id, extra)
        if job is None:
            current = await self._get(job_id)
            raise FailedPreconditionError(
                f"job {job_id} is {current.state.value}; only dead_lettered or cancelled jobs can be requeued"
            )
        if principal.audit is not None:
            await self._store.audit_requeued(job.id, principal.audit)
        self._signal.wake(job.queue)
        logger.info("job requeued", extra=logs.job_fields(job.id, job.lease_token, max_attempts=job.max_attempts))
        return jpb.RequeueJobResponse(job=convert.job_to_pb(job))

    @rpc
    async def ListQueues(
        self, request: jpb.ListQueuesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.ListQueuesResponse:
        # The metrics sampler's last sample (actors/metrics_sampler.py), never a count per call.
        snapshot = await self._sampler.latest()
        await self._policy.reload()  # the settings other coordinators made count too
        names = set(snapshot.queues) | set(self._throughput.queues())
        names.update(s.queue for s in self._policy.all_settings())
        workers: Counter[str] = Counter()
        for session in self._registry:
            workers.update(set(session.queues))
        sampled_at = convert.timestamp(snapshot.sampled_at)
        out = []
        principal = auth_keys.current()
        for q in sorted(names):
            if not principal.allows_queue(q):
                continue
            sample = snapshot.queues.get(q)
            age = Duration()
            if sample is not None:
                age.FromTimedelta(sample.oldest_ready_age)
            out.append(jpb.QueueStats(
                name=q, depth=dict(sample.depth) if sample else {}, oldest_ready_age=age,
                finished_last_minute=self._throughput.last_minute(q),
                settings=convert.queue_settings_to_pb(self._policy.settings(q)),
                waiting_on_key=sample.waiting_on_key if sample else 0,
                requiring_labels=sample.requiring_labels if sample else 0,
                sampled_at=sampled_at, workers_connected=workers[q],
                history=[convert.queue_minute_to_pb(m) for m in self._throughput.history(q)]))
        return jpb.ListQueuesResponse(queues=out)

    def _settings_changed(self, queue: str) -> None:
        # Claims of this queue may now grant, or may have to take the other statement: this coordinator's
        # dispatcher looks at once, and the signal's announcement (NOTIFY) makes every other one look too.
        self._signal.wake(queue)

    @rpc
    async def PauseQueue(
        self, request: jpb.PauseQueueRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.PauseQueueResponse:
        queue = validate.name(request.queue, "queue")
        settings = await self._policy.pause(queue, paused=True)
        self._settings_changed(queue)
        return jpb.PauseQueueResponse(settings=convert.queue_settings_to_pb(settings))

    @rpc
    async def ResumeQueue(
        self, request: jpb.ResumeQueueRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.ResumeQueueResponse:
        queue = validate.name(request.queue, "queue")
        settings = await self._policy.pause(queue, paused=False)
        self._settings_changed(queue)
        return jpb.ResumeQueueResponse(settings=convert.queue_settings_to_pb(settings))

    @rpc
    async def SetQueueSettings(
        self, request: jpb.SetQueueSettingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.SetQueueSettingsResponse:
        queue = validate.name(request.queue, "queue")
        change = validate.queue_settings(request)
        settings = await self._policy.change(queue, change)
        self._settings_changed(queue)
        return jpb.SetQueueSettingsResponse(settings=convert.queue_settings_to_pb(settings))

    @rpc
    async def ListWorkers(
        self, request: jpb.ListWorkersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.ListWorkersResponse:
        import time as _time

        out = []
        principal = auth_keys.current()
        for s in self._registry:
            if principal.restricted and not any(principal.allows_queue(q) for q in s.queues):
                continue
            since = Duration()
            since.FromTimedelta(timedelta(seconds=max(_time.monotonic() - s.last_heartbeat, 0.0)))  # type: ignore[attr-defined]
            out.append(jpb.WorkerInfo(
                worker_id=s.worker_id, session_id=s.session_id, queues=list(s.queues), kinds=list(s.kinds),
                capacity=s.capacity, lease_ids=s.lease_ids, credit=s.credit, sdk=s.sdk,  # type: ignore[attr-defined]
                connected_at=convert.timestamp(s.connected_at), draining=not s.accepting,  # type: ignore[attr-defined]
                labels=s.labels, since_heartbeat=since,
            ))
        return jpb.ListWorkersResponse(workers=out)

    @rpc
    async def WhoAmI(
        self, request: jpb.WhoAmIRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.WhoAmIResponse:
        principal = auth_keys.current()  # ANONYMOUS, with every scope, when auth is off
        return jpb.WhoAmIResponse(
            identity=principal.identity or "", name=principal.name,
            scopes=sorted(s.value for s in principal.scopes),
            queues=list(principal.queues) if principal.restricted else [],
            auth_enabled=self._auth_enabled)

    # === time: schedules and WatchJob ===

    async def _schedule(self, name: str) -> ScheduleRow:
        row = await self._store.get_schedule(name)
        if row is None:
            raise ScheduleNotFoundError(f"schedule {name!r} not found")
        return row

    @rpc
    async def CreateSchedule(
        self, request: jpb.CreateScheduleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.CreateScheduleResponse:
        row = validate.schedule_spec(request.spec, max_payload=self._max_payload,
                                     max_attempts_default=self._max_attempts_default)
        now = await self._store.db_now()
        row = replace(row, created_at=now)
        first = next_tick(row, now)
        stored = await self._store.insert_schedule(row, first_tick=first, created_at=now)
        if stored is None:
            raise AlreadyExistsError(f"a schedule named {row.name!r} exists: delete it first or pick another name")
        logger.info("schedule created", extra={"schedule": stored.name, "next_run_at": str(stored.next_run_at)})
        return jpb.CreateScheduleResponse(schedule=convert.schedule_to_pb(stored))

    @rpc
    async def ListSchedules(
        self, request: jpb.ListSchedulesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.ListSchedulesResponse:
        return jpb.ListSchedulesResponse(
            schedules=[convert.schedule_to_pb(r) for r in await self._store.list_schedules()])

    @rpc
    async def GetSchedule(
        self, request: jpb.GetScheduleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.GetScheduleResponse:
        return jpb.GetScheduleResponse(schedule=convert.schedule_to_pb(
            await self._schedule(validate.schedule_name(request.name))))

    @rpc
    async def PauseSchedule(
        self, request: jpb.PauseScheduleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.PauseScheduleResponse:
        name = validate.schedule_name(request.name)
        row = await self._store.pause_schedule(name)
        if row is None:
            raise ScheduleNotFoundError(f"schedule {name!r} not found")
        logger.info("schedule paused", extra={"schedule": name})
        return jpb.PauseScheduleResponse(schedule=convert.schedule_to_pb(row))

    @rpc
    async def ResumeSchedule(
        self, request: jpb.ResumeScheduleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.ResumeScheduleResponse:
        name = validate.schedule_name(request.name)
        current = await self._schedule(name)
        nxt = next_tick(current, await self._store.db_now())
        row = await self._store.resume_schedule(name, nxt) if nxt is not None else current
        if row is None:
            raise ScheduleNotFoundError(f"schedule {name!r} not found")
        logger.info("schedule resumed", extra={"schedule": name, "next_run_at": str(row.next_run_at)})
        return jpb.ResumeScheduleResponse(schedule=convert.schedule_to_pb(row))

    @rpc
    async def DeleteSchedule(
        self, request: jpb.DeleteScheduleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.DeleteScheduleResponse:
        name = validate.schedule_name(request.name)
        if not await self._store.delete_schedule(name):
            raise ScheduleNotFoundError(f"schedule {name!r} not found")
        logger.info("schedule deleted", extra={"schedule": name})
        return jpb.DeleteScheduleResponse()

    @rpc
    async def TriggerSchedule(
        self, request: jpb.TriggerScheduleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jpb.TriggerScheduleResponse:
        row = await self._schedule(validate.schedule_name(request.name))
        now = await self._store.db_now()
        # No idempotency key: a trigger is an operator's explicit extra run, outside the ticks.
        job, _ = await self._submit_job(tick_spec(row, now, key=None))
        updated = await self._store.record_schedule_run(row.id, job.id, now) or row
        logger.info("schedule triggered", extra={"schedule": row.name, "job_id": job.id})
        return jpb.TriggerScheduleResponse(job=convert.job_to_pb(job, full=False),
                                           schedule=convert.schedule_to_pb(updated))

    async def WatchJob(
        self, request: jpb.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[jpb.WatchJobResponse]:
        """See job_service.proto; the hub (coordinator/watch.py) samples changes, so memory per watcher is one job."""
        try:
            job_id = validate.job_id(request.id)
            full = validate.view(request.view)
            principal = auth_keys.current()
            if full:
                principal.require(Scope.PAYLOADS, "WatchJob with view FULL")
            with self._watch_hub.watch(job_id, principal.identity or _peer_host(context.peer())) as watcher:
                metrics.WATCHERS.set(self._watch_hub.watching)
                try:
                    first = await self._get(job_id)  # registered first: no change is missed
                    principal.require_queue(first.queue, "WatchJob")  # a read key sees only its queues' jobs
                    job: Job | None = first
                    sent: tuple[object, ...] | None = None
                    while True:
                        if job is None:
                            raise JobNotFoundError(f"job {job_id} no longer exists (pruned by retention)")
                        if signature(job) != sent:
                            sent = signature(job)
                            if job.state.terminal and full:
                                job = await self._get(job_id)
                            yield jpb.WatchJobResponse(job=convert.job_to_pb(job, full=full))
                        if job.state.terminal:
                            return
                        job = await watcher.next()
                finally:
                    metrics.WATCHERS.set(self._watch_hub.watching - 1)
        except FaultlineError as exc:
            code = code_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                logger.error("rpc failed", extra={"rpc": "WatchJob"}, exc_info=True)
            await context.abort(code, str(exc), trailing_metadata_for(exc, code))

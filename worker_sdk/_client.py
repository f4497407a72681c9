"""Client: the producer and operator API (JobService unary calls) over one grpc.aio channel.

Every call carries the caller's OpenTelemetry context as W3C trace headers in its metadata, so the
coordinator can store it with a submitted job and the worker's handler span becomes its child.
gRPC status codes map onto the SDK's exceptions here and only here, keeping the server's message.

Submits and retries: a submit whose every job carries an idempotency key is retried by the client
after a transient failure (the reply lost with the connection, UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED), because the coordinator answers a repeated key in the same queue with the job
it already stored. A submit without a key is never retried: after a failure that may have reached
the coordinator it raises SubmitOutcomeUnknownError, since a retry could store the job twice.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from os import PathLike
from types import TracebackType
from typing import Self, TypeVar

import grpc
import grpc.aio

from worker_sdk import _convert
from worker_sdk._channel import auth_metadata, open_channel, resolve_api_key, retry_delay, tls_credentials
from worker_sdk._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    JobNotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    SubmitOutcomeUnknownError,
    UnauthenticatedError,
    UnavailableError,
    WaitTimeoutError,
    WorkerSDKError,
)
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from worker_sdk._tracing import outgoing_metadata
from worker_sdk._types import (
    BulkResult,
    Identity,
    Job,
    JobSpec,
    JobState,
    JobTimeouts,
    QueueSettings,
    QueueStats,
    RetryPolicy,
    Schedule,
    SubmitResult,
    WorkerInfo,
)

#: Deadline of each unary call unless the Client is given another.
CALL_TIMEOUT_DEFAULT = timedelta(seconds=10)

#: Attempts of a keyed submit (the first one included) before its transient error is raised.
SUBMIT_ATTEMPTS_DEFAULT = 4
#: Delay before the second attempt of a keyed submit; it doubles each time, up to SUBMIT_RETRY_DELAY_MAX.
SUBMIT_RETRY_DELAY = timedelta(milliseconds=200)
SUBMIT_RETRY_DELAY_MAX = timedelta(seconds=2)
# Codes after which a submit may or may not have been stored (a keyed submit is then safe to retry).
_SUBMIT_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                               grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
                               grpc.StatusCode.CANCELLED})

#: Delay before a watch reconnects after a transient error (coordinator restarting, connection lost); it
#: doubles each time, up to WATCH_RETRY_DELAY_MAX, and resets once a message arrives.
WATCH_RETRY_DELAY = timedelta(milliseconds=200)
WATCH_RETRY_DELAY_MAX = timedelta(seconds=5)
# Codes after which a watch reconnects (a coordinator restarting or draining, its watch slots full); any other
# code is the answer (NOT_FOUND, INVALID_ARGUMENT) or a bug that retrying would only hide.
_WATCH_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              grpc.StatusCode.ABORTED})

_T = TypeVar("_T")

_STATUS_TO_ERROR: dict[grpc.StatusCode, type[WorkerSDKError]] = {
    grpc.StatusCode.NOT_FOUND: JobNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ALREADY_EXISTS: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: UnavailableError,
    grpc.StatusCode.ABORTED: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def _map_rpc_error(exc: grpc.aio.AioRpcError) -> WorkerSDKError:
    code = exc.code()
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = retry_delay(exc)
        if delay is not None:
            return RateLimitedError(exc.details() or None, retry_after=delay)
    error_type = _STATUS_TO_ERROR.get(code, WorkerSDKError)
    details = exc.details() or ""
    message = details if error_type is not WorkerSDKError else f"{code.name}: {details}"
    return error_type(message or None)


class Client:
    """Async client for submitting and managing jobs: `async with Client("host:port") as client: ...`.

    The channel opens on first use (so a Client may be built outside the event loop) and is closed
    by close() or by leaving the `async with` block.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: timedelta = CALL_TIMEOUT_DEFAULT,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, int | str]] = (),
        metadata: Mapping[str, str] | None = None,
        submit_attempts: int = SUBMIT_ATTEMPTS_DEFAULT,
        api_key: str | None = None,
        tls: bool | None = None,
        ca_cert: str | PathLike[str] | bytes | None = None,
        client_cert: str | PathLike[str] | bytes | None = None,
        client_key: str | PathLike[str] | bytes | None = None,
    ) -> None:
        """api_key (default $FAULTLINE_API_KEY) is sent as `authorization: Bearer <key>` on every call.

        TLS: ca_cert (PEM bytes or a path; default $FAULTLINE_TLS_CA) to trust, tls=True for the system's
        roots, and client_cert + client_key for mTLS (defaults $FAULTLINE_TLS_CLIENT_CERT/_KEY). An explicit
        `credentials` wins over all of them.
        """
        if timeout <= timedelta(0):
            raise InvalidArgumentError("timeout must be positive")
        if submit_attempts < 1:
            raise InvalidArgumentError("submit_attempts must be at least 1")
        self._submit_attempts = submit_attempts
        self._target = target
        self._timeout = timeout.total_seconds()
        try:
            self._credentials = credentials or tls_credentials(
                tls=tls, ca_cert=ca_cert, client_cert=client_cert, client_key=client_key)
            key_metadata = auth_metadata(resolve_api_key(api_key))
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        self._channel_options = tuple(channel_options)
        self._metadata = tuple((k.lower(), v) for k, v in (metadata or {}).items()) + key_metadata
        self._channel: grpc.aio.Channel | None = None
        self._stub: job_service_pb2_grpc.JobServiceStub | None = None

    async def __aenter__(self) -> Self:
        self._ensure_stub()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    def _ensure_stub(self) -> job_service_pb2_grpc.JobServiceStub:
        if self._stub is None:
            self._channel = open_channel(self._target, credentials=self._credentials, options=self._channel_options)
            self._stub = job_service_pb2_grpc.JobServiceStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def _unary(self, method: Callable[..., Awaitable[_T]], request: object) -> _T:
        metadata = self._metadata + outgoing_metadata()
        try:
            return await method(request, timeout=self._timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise _map_rpc_error(exc) from exc

    async def _submit_call(self, method_name: str, request: object, *, keyed: bool) -> _T:
        """A Submit or SubmitBatch call: retried after transient errors when keyed, never when not."""
        delay = SUBMIT_RETRY_DELAY.total_seconds()
        attempt = 1
        while True:
            metadata = self._metadata + outgoing_metadata()
            method = getattr(self._ensure_stub(), method_name)
            try:
                response: _T = await method(request, timeout=self._timeout, metadata=metadata)
                return response
            except grpc.aio.AioRpcError as exc:
                asked = retry_delay(exc) if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED else None
                if asked is not None:
                    # Refused before anything was stored (a rate limit, admission): safe to retry, keyed or
                    # not, after the delay the coordinator asked for.
                    if attempt >= self._submit_attempts:
                        raise _map_rpc_error(exc) from exc
                    attempt += 1
                    await asyncio.sleep(asked.total_seconds())
                    continue
                if exc.code() not in _SUBMIT_TRANSIENT:
                    raise _map_rpc_error(exc) from exc
                if not keyed:
                    raise SubmitOutcomeUnknownError(
                        f"{exc.code().name}: {exc.details() or ''}: the job may or may not be stored; "
                        "it is not retried because it has no idempotency_key") from exc
                if attempt >= self._submit_attempts:
                    raise _map_rpc_error(exc) from exc
            attempt += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, SUBMIT_RETRY_DELAY_MAX.total_seconds())

    # ---- submitting ----------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        payload: bytes = b"",
        *,
        queue: str = "default",
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        retry_policy: RetryPolicy | None = None,
        timeouts: JobTimeouts | None = None,
        labels: Mapping[str, str] | None = None,
        full: bool = False,
        concurrency_key: str | None = None,
        required_labels: Mapping[str, str] | None = None,
    ) -> Job:
        """Enqueue one job and return it as stored (the existing job if idempotency_key matched in this queue).

        The job comes back without payload and result (JOB_VIEW_BASIC); get() reads them. With an
        idempotency_key the submit is retried after a lost reply; without one it never is (see the module doc).
        """
        job, _ = await self.submit_ex(
            kind,
            payload,
            queue=queue,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            priority=priority,
            run_at=run_at,
            retry_policy=retry_policy,
            timeouts=timeouts,
            labels=labels,
            full=full,
            concurrency_key=concurrency_key,
            required_labels=required_labels,
        )
        return job

    async def submit_ex(
        self,
        kind: str,
        payload: bytes = b"",
        *,
        queue: str = "default",
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        retry_policy: RetryPolicy | None = None,
        timeouts: JobTimeouts | None = None,
        labels: Mapping[str, str] | None = None,
        full: bool = False,
        concurrency_key: str | None = None,
        required_labels: Mapping[str, str] | None = None,
    ) -> tuple[Job, bool]:
        """Like submit(), also returning whether the job was created (False: idempotency key matched).

        full=True asks for the job with its payload and result (JOB_VIEW_FULL)."""
        spec = JobSpec(
            kind=kind,
            payload=payload,
            queue=queue,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            priority=priority,
            run_at=run_at,
            retry_policy=retry_policy,
            timeouts=timeouts,
            labels=labels,
            concurrency_key=concurrency_key,
            required_labels=required_labels,
        )
        request = self._submit_request(spec)
        request.view = job_pb2.JOB_VIEW_FULL if full else job_pb2.JOB_VIEW_BASIC
        response: job_service_pb2.SubmitResponse = await self._submit_call(
            "Submit", request, keyed=bool(idempotency_key))
        return _convert.job_from_pb(response.job), response.created

    async def submit_spec(self, spec: JobSpec, *, full: bool = False) -> SubmitResult:
        """Submit one JobSpec and say which job came back and why (created, or which dedup window matched).

        With spec.dedup_period or spec.dedup_while_unfinished the idempotency key names its job only for that
        window; after it a submit with the key stores a new job."""
        request = self._submit_request(spec)
        request.view = job_pb2.JOB_VIEW_FULL if full else job_pb2.JOB_VIEW_BASIC
        response: job_service_pb2.SubmitResponse = await self._submit_call(
            "Submit", request, keyed=bool(spec.idempotency_key))
        return _convert.submit_result_from_pb(response)

    async def submit_batch(self, specs: Iterable[JobSpec]) -> builtins.list[Job]:
        """Enqueue many jobs in one transaction (all or none); results in request order."""
        return [job for job, _ in await self.submit_batch_ex(specs)]

    async def submit_batch_ex(self, specs: Iterable[JobSpec]) -> builtins.list[tuple[Job, bool]]:
        """Like submit_batch(), with each job's created flag."""
        request = job_service_pb2.SubmitBatchRequest()
        add = request.jobs.add
        for spec in specs:
            try:
                _convert.fill_submit_request(add(), spec)
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(str(exc)) from exc
        if not request.jobs:
            return []
        response: job_service_pb2.SubmitBatchResponse = await self._submit_call(
            "SubmitBatch", request, keyed=all(j.idempotency_key for j in request.jobs))
        return [(_convert.job_from_pb(r.job), r.created) for r in response.results]

    @staticmethod
    def _submit_request(spec: JobSpec) -> job_service_pb2.SubmitRequest:
        try:
            return _convert.submit_request_to_pb(spec)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(str(exc)) from exc

    # ---- reading -------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """One job by id; raises JobNotFoundError."""
        response = await self._unary(self._ensure_stub().GetJob, job_service_pb2.GetJobRequest(id=str(job_id)))
        job = _convert.job_from_pb(response.job)
        job = dataclasses.replace(job, trace_id=response.trace_id or None)
        if response.HasField("audit"):
            a = response.audit
            job = dataclasses.replace(
                job, submitted_by=a.submitted_by or None, cancelled_by=a.cancelled_by or None,
                requeued_by=a.requeued_by or None,
                attempt_holders=tuple((r.attempt, r.worker_id, r.outcome) for r in a.attempts),
                attempt_audit=tuple(_convert.attempt_audit_from_pb(r) for r in a.attempts))
        return job

    async def list(
        self,
        *,
        queue: str | None = None,
        kind: str | None = None,
        state: JobState | str | None = None,
        page_size: int = 0,
        page_token: str | None = None,
        full: bool = False,
        labels: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[builtins.list[Job], str | None]:
        """One page of jobs, newest first: (jobs, next_page_token or None on the last page).

        labels: only jobs carrying every one of these (at most 8 pairs); idempotency_key: only the job with
        that key (within queue when given). Without full=True the jobs come without payload, result and
        progress details (JOB_VIEW_BASIC). A page may hold fewer than page_size jobs when it reaches the
        coordinator's response budget; the token goes on.
        """
        request = job_service_pb2.ListJobsRequest(
            queue=queue or "",
            kind=kind or "",
            state=_convert.job_state_to_pb(JobState(state) if state is not None else None),
            page_size=page_size,
            page_token=page_token or "",
            view=job_pb2.JOB_VIEW_FULL if full else job_pb2.JOB_VIEW_BASIC,
            labels=dict(labels or {}),
            idempotency_key=idempotency_key or "",
        )
        response = await self._unary(self._ensure_stub().ListJobs, request)
        return [_convert.job_from_pb(j) for j in response.jobs], response.next_page_token or None

    async def list_queues(self) -> builtins.list[QueueStats]:
        response = await self._unary(self._ensure_stub().ListQueues, job_service_pb2.ListQueuesRequest())
        return [_convert.queue_stats_from_pb(q) for q in response.queues]

    async def list_workers(self) -> builtins.list[WorkerInfo]:
        response = await self._unary(self._ensure_stub().ListWorkers, job_service_pb2.ListWorkersRequest())
        return [_convert.worker_info_from_pb(w) for w in response.workers]

    # ---- operating -----------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: at once if not running; a running job's worker is told to stop."""
        response = await self._unary(self._ensure_stub().CancelJob, job_service_pb2.CancelJobRequest(id=str(job_id)))
        return _convert.job_from_pb(response.job)

    @staticmethod
    def _bulk_target(request: job_service_pb2.BulkCancelJobsRequest | job_service_pb2.BulkRequeueJobsRequest,
                     ids: Iterable[str] | None, queue: str | None, kind: str | None, state: JobState | str | None,
                     labels: Mapping[str, str] | None) -> None:
        if ids is not None:
            request.ids.extend(str(i) for i in ids)
            if queue or kind or state or labels:
                raise InvalidArgumentError("give ids or a filter (queue, kind, state, labels), not both")
            return
        if not (queue or kind or state or labels):
            raise InvalidArgumentError("give ids or at least one of queue, kind, state, labels")
        f = request.filter
        f.queue, f.kind = queue or "", kind or ""
        f.state = _convert.job_state_to_pb(JobState(state) if state is not None else None)
        f.labels.update(labels or {})

    async def bulk_cancel(
        self,
        ids: Iterable[str] | None = None,
        *,
        queue: str | None = None,
        kind: str | None = None,
        state: JobState | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> BulkResult:
        """Cancel the jobs named (at most 1000 ids) or every job matching the filter, as cancel() would.

        Follows the coordinator's resume tokens to the end (each call works for about 3 s) and returns the
        totals. Needs admin; a queue-limited key must name one of its queues.
        """
        request = job_service_pb2.BulkCancelJobsRequest()
        self._bulk_target(request, ids, queue, kind, state, labels)
        totals = BulkResult()
        while True:
            response = await self._unary(self._ensure_stub().BulkCancelJobs, request)
            totals = dataclasses.replace(
                totals, cancelled=totals.cancelled + response.cancelled,
                cancel_requested=totals.cancel_requested + response.cancel_requested,
                skipped=totals.skipped + response.skipped, calls=totals.calls + 1)
            if not response.resume_token:
                return totals
            request.resume_token = response.resume_token

    async def bulk_requeue(
        self,
        ids: Iterable[str] | None = None,
        *,
        queue: str | None = None,
        kind: str | None = None,
        state: JobState | str | None = None,
        labels: Mapping[str, str] | None = None,
        extra_attempts: int = 0,
    ) -> BulkResult:
        """Requeue the dead-lettered or cancelled jobs named or matching the filter (state, if given, must be
        dead_lettered or cancelled), each with extra_attempts more (0 means 1), as requeue() would.

        Follows the resume tokens to the end and returns the totals. Needs admin.
        """
        request = job_service_pb2.BulkRequeueJobsRequest(extra_attempts=extra_attempts)
        self._bulk_target(request, ids, queue, kind, state, labels)
        totals = BulkResult()
        while True:
            response = await self._unary(self._ensure_stub().BulkRequeueJobs, request)
            totals = dataclasses.replace(totals, requeued=totals.requeued + response.requeued,
                                         skipped=totals.skipped + response.skipped, calls=totals.calls + 1)
            if not response.resume_token:
                return totals
            request.resume_token = response.resume_token

    async def whoami(self) -> Identity:
        """Who the coordinator takes this client for: identity, scopes, queue limits, and whether auth is on."""
        r = await self._unary(self._ensure_stub().WhoAmI, job_service_pb2.WhoAmIRequest())
        return Identity(identity=r.identity or None, name=r.name, scopes=frozenset(r.scopes),
                        queues=tuple(r.queues), auth_enabled=r.auth_enabled)

    async def pause_queue(self, queue: str) -> QueueSettings:
        """Stop granting the queue's jobs on every coordinator (Submits still queue up; running jobs finish)."""
        response = await self._unary(self._ensure_stub().PauseQueue, job_service_pb2.PauseQueueRequest(queue=queue))
        return _convert.queue_settings_from_pb(response.settings)

    async def resume_queue(self, queue: str) -> QueueSettings:
        """Grant a paused queue's jobs again."""
        response = await self._unary(self._ensure_stub().ResumeQueue, job_service_pb2.ResumeQueueRequest(queue=queue))
        return _convert.queue_settings_from_pb(response.settings)

    async def set_queue_settings(
        self,
        queue: str,
        *,
        per_key_concurrency: int | None = None,
        max_running: int | None = None,
        rate_per_second: float | None = None,
        burst: int | None = None,
    ) -> QueueSettings:
        """Change a queue's limits; None leaves a limit as it is, 0 clears it."""
        request = job_service_pb2.SetQueueSettingsRequest(queue=queue)
        if per_key_concurrency is not None:
            request.per_key_concurrency = per_key_concurrency
        if max_running is not None:
            request.max_running = max_running
        if rate_per_second is not None:
            request.rate_per_second = rate_per_second
        if burst is not None:
            request.burst = burst
        response = await self._unary(self._ensure_stub().SetQueueSettings, request)
        return _convert.queue_settings_from_pb(response.settings)

    async def requeue(self, job_id: str, extra_attempts: int = 0) -> Job:
        """Bring a dead-lettered or cancelled job back to the queue with extra attempts (0 means 1)."""
        response = await self._unary(
            self._ensure_stub().RequeueJob,
            job_service_pb2.RequeueJobRequest(id=str(job_id), extra_attempts=extra_attempts),
        )
        return _convert.job_from_pb(response.job)

    # ---- watching -----------------------------------------------------------------------

    async def watch(self, job_id: str, *, full: bool = False) -> AsyncIterator[Job]:
        """Yield the job now, then after each change (state, attempt, progress), ending with the finished job.

        Changes are sampled by the coordinator (FAULTLINE_WATCH_POLL_MS): a reader slower than the changes
        sees the latest state, not each step, and always the final one. After a transient error (the
        coordinator restarting, the connection lost) the watch reconnects with backoff and goes on; a job
        that does not exist, or is pruned while watched, raises JobNotFoundError. full=True carries the
        payload, and the result in the final message.
        """
        request = job_service_pb2.WatchJobRequest(
            id=str(job_id), view=job_pb2.JOB_VIEW_FULL if full else job_pb2.JOB_VIEW_BASIC)
        delay = WATCH_RETRY_DELAY.total_seconds()
        last: tuple[object, ...] | None = None
        while True:
            call = self._ensure_stub().WatchJob(request, metadata=self._metadata + outgoing_metadata())
            try:
                async for msg in call:
                    delay = WATCH_RETRY_DELAY.total_seconds()
                    job = _convert.job_from_pb(msg.job)
                    sig = (job.state, job.attempts, job.progress_fraction, job.progress_message, job.updated_at,
                           job.finished_at, job.cancel_requested)
                    if sig != last:  # a reconnect starts with the job as it is: not news when unchanged
                        last = sig
                        yield job
                    if job.state.terminal:
                        return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _WATCH_TRANSIENT:
                    raise _map_rpc_error(exc) from exc
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_RETRY_DELAY_MAX.total_seconds())

    async def wait(self, job_id: str, *, timeout: timedelta | None = None) -> Job:
        """Wait until the job is finished and return it in full (result included), whatever its end.

        Raises WaitTimeoutError after `timeout` (None waits for ever); the job itself goes on.
        """
        if timeout is not None and timeout <= timedelta(0):
            raise InvalidArgumentError("timeout must be positive")
        try:
            async with asyncio.timeout(timeout.total_seconds() if timeout is not None else None):
                async for job in self.watch(job_id, full=True):
                    if job.state.terminal:
                        return job
        except TimeoutError:
            raise WaitTimeoutError(f"job {job_id} did not finish within {timeout}") from None
        raise UnavailableError(f"the watch of job {job_id} ended before the job finished")

    # ---- schedules ----------------------------------------------------------------------

    async def create_schedule(
        self,
        name: str,
        kind: str,
        *,
        cron: str | None = None,
        time_zone: str | None = None,
        every: timedelta | None = None,
        queue: str = "default",
        payload: bytes = b"",
        priority: int = 0,
        max_attempts: int | None = None,
        labels: Mapping[str, str] | None = None,
        catchup: str = "skip",
        overlap: str = "skip",
    ) -> Schedule:
        """Store a schedule that submits one `kind` job per tick: `cron` (5 fields, or 6 with seconds first)
        read in `time_zone` (default UTC), or `every` interval (whole seconds, at least 1 s).

        catchup: "skip" (missed ticks submit nothing) or "run_once" (one job for all of them); overlap:
        "skip" (no job while the previous one is unfinished) or "allow". A taken name raises
        FailedPreconditionError (ALREADY_EXISTS).
        """
        if catchup not in _convert.CATCHUP_TO_PB:
            raise InvalidArgumentError(f"catchup must be one of {sorted(_convert.CATCHUP_TO_PB)}, got {catchup!r}")
        if overlap not in _convert.OVERLAP_TO_PB:
            raise InvalidArgumentError(f"overlap must be one of {sorted(_convert.OVERLAP_TO_PB)}, got {overlap!r}")
        spec = job_service_pb2.ScheduleSpec(
            name=name, kind=kind, cron=cron or "", time_zone=time_zone or "", queue=queue, payload=payload,
            priority=priority, max_attempts=max_attempts or 0, labels=dict(labels or {}),
            catchup=_convert.CATCHUP_TO_PB[catchup], overlap=_convert.OVERLAP_TO_PB[overlap],
        )
        if every is not None:
            spec.every.CopyFrom(_convert.timedelta_to_duration(every))
        response = await self._unary(self._ensure_stub().CreateSchedule,
                                     job_service_pb2.CreateScheduleRequest(spec=spec))
        return _convert.schedule_from_pb(response.schedule)

    async def list_schedules(self) -> builtins.list[Schedule]:
        response = await self._unary(self._ensure_stub().ListSchedules, job_service_pb2.ListSchedulesRequest())
        return [_convert.schedule_from_pb(s) for s in response.schedules]

    async def get_schedule(self, name: str) -> Schedule:
        response = await self._unary(self._ensure_stub().GetSchedule, job_service_pb2.GetScheduleRequest(name=name))
        return _convert.schedule_from_pb(response.schedule)

    async def pause_schedule(self, name: str) -> Schedule:
        response = await self._unary(self._ensure_stub().PauseSchedule,
                                     job_service_pb2.PauseScheduleRequest(name=name))
        return _convert.schedule_from_pb(response.schedule)

    async def resume_schedule(self, name: str) -> Schedule:
        response = await self._unary(self._ensure_stub().ResumeSchedule,
                                     job_service_pb2.ResumeScheduleRequest(name=name))
        return _convert.schedule_from_pb(response.schedule)

    async def delete_schedule(self, name: str) -> None:
        await self._unary(self._ensure_stub().DeleteSchedule, job_service_pb2.DeleteScheduleRequest(name=name))

    async def trigger_schedule(self, name: str) -> tuple[Job, Schedule]:
        """Submit one job of the schedule now, outside its ticks; returns it and the schedule after."""
        response = await self._unary(self._ensure_stub().TriggerSchedule,
                                     job_service_pb2.TriggerScheduleRequest(name=name))
        return _convert.job_from_pb(response.job), _convert.schedule_from_pb(response.schedule)

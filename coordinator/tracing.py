"""OpenTelemetry for the coordinator: SDK set-up from OTEL_* variables, and the spans of a job's life.

One trace per job: the producer's span -> faultline.Submit -> faultline.queue_wait and
faultline.attempt (one per lease) -> the worker's handler span, which the SDK parents on the
trace context carried in the lease grant. Attempt spans stay open from grant to close and are
kept by lease key, bounded by OPEN_ATTEMPTS_MAX.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from coordinator.model import Job, LeaseKey

logger = logging.getLogger(__name__)

TRACER_NAME = "faultline.coordinator"
SERVICE_NAME_DEFAULT = "faultline-coordinator"
# Attempt spans still open; beyond this the oldest are ended as "abandoned" (bounded memory).
OPEN_ATTEMPTS_MAX = 100_000

_tracer = trace.get_tracer(TRACER_NAME)
_provider_shutdown: list[object] = []


def setup_from_env() -> bool:
    """Install the SDK with an OTLP/gRPC exporter when an endpoint is configured; returns whether it did."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME_DEFAULT)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider_shutdown.append(provider)
    global _tracer
    _tracer = trace.get_tracer(TRACER_NAME)
    logger.info("tracing enabled", extra={"endpoint": os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")})
    return True


def _recording() -> bool:
    """Whether any tracer provider is installed; without one every span is a no-op (checked per call,
    since tests and embedders may install a provider after import)."""
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def shutdown() -> None:
    for provider in _provider_shutdown:
        provider.shutdown()  # type: ignore[attr-defined]


TRACEPARENT_KEY = "traceparent"
# W3C Trace Context: version-trace_id-parent_id-flags; an all-zero trace id is invalid.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?P<trace_id>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?", re.ASCII)


def trace_id_of(carrier: Mapping[str, str] | None) -> str:
    """The trace id (32 lowercase hex digits) of a stored W3C context; "" when it has none or a malformed one."""
    if not carrier:
        return ""
    value = carrier.get(TRACEPARENT_KEY)
    if not isinstance(value, str):
        return ""
    m = _TRACEPARENT.fullmatch(value.strip().lower())
    if m is None or m["trace_id"] == "0" * 32 or value.startswith("ff"):
        return ""
    return m["trace_id"]


def _ns(ts: datetime | None) -> int | None:
    return None if ts is None else int(ts.timestamp() * 1e9)


class JobTracer:
    """Starts and ends the coordinator's spans for jobs."""

    def __init__(self) -> None:
        # Only used from the event loop: attempt spans by lease, oldest first.
        self._attempts: OrderedDict[LeaseKey, Span] = OrderedDict()

    def submit_span(self, rpc: str, metadata: Mapping[str, str], **attrs: str | int) -> Span:
        """A server span for Submit/SubmitBatch, child of the caller's W3C context in `metadata`."""
        parent = propagate.extract(metadata)
        return _tracer.start_span(f"faultline.{rpc}", context=parent, kind=SpanKind.SERVER, attributes=attrs)

    @staticmethod
    def carrier(span: Span) -> dict[str, str]:
        """The W3C context of `span`, to store with the job."""
        out: dict[str, str] = {}
        propagate.inject(out, context=trace.set_span_in_context(span))
        return out

    def attempt_started(self, job: Job, *, worker_id: str) -> dict[str, str]:
        """Record the queue wait and open the attempt span; returns the context to put in the grant."""
        if not _recording():
            # Tracing is off: no spans to open, but the handler still joins the producer's trace.
            return dict(job.trace_context) if job.trace_context else {}
        parent = propagate.extract(job.trace_context or {})
        attrs: dict[str, str | int] = {
            "faultline.job_id": str(job.id), "faultline.queue": job.queue, "faultline.kind": job.kind,
            "faultline.attempt": job.attempts, "faultline.lease_token": job.lease_token,
            "faultline.worker_id": worker_id,
        }
        ready = _ns(job.run_at) or time.time_ns()
        wait = _tracer.start_span("faultline.queue_wait", context=parent, kind=SpanKind.INTERNAL,
                                  start_time=ready, attributes=attrs)
        wait.end(end_time=_ns(job.started_at))  # run_at and started_at both come from Postgres now()
        span = _tracer.start_span(f"faultline.attempt {job.attempts}", context=parent, kind=SpanKind.INTERNAL,
                                  attributes=attrs)
        if not span.is_recording():
            # Tracing is off here: pass the producer's context through so the handler still joins its trace.
            return dict(job.trace_context or {})
        key = LeaseKey(job.id, job.lease_token)
        self._attempts[key] = span
        while len(self._attempts) > OPEN_ATTEMPTS_MAX:
            _, old = self._attempts.popitem(last=False)
            old.set_status(Status(StatusCode.ERROR, "abandoned: too many open attempt spans"))
            old.end()
        return self.carrier(span)

    def attempt_closed(self, key: LeaseKey, outcome: str, error: str | None) -> None:
        """End the attempt span; `outcome` is the attempt's outcome, the job's next state ("retrying"), or
        "released" (handed back before it ran: not an error)."""
        span = self._attempts.pop(key, None)
        if span is None:
            return
        if outcome == "retrying":
            # The attempt failed and the job will run again: name the attempt's outcome as
            # faultline_jobs_completed_total does, and keep what happens next beside it.
            span.set_attribute("faultline.next_state", outcome)
            outcome = "failed"
        span.set_attribute("faultline.outcome", outcome)
        if outcome not in ("succeeded", "released"):
            span.set_status(Status(StatusCode.ERROR, error or outcome))
        span.end()

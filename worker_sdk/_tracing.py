"""OpenTelemetry glue (API only): trace context into client calls, and a consumer span per handler run.

Without an OpenTelemetry SDK configured every call here is a cheap no-op.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import propagate, trace

from worker_sdk._version import SDK_VERSION

_tracer = trace.get_tracer("faultline.worker_sdk", SDK_VERSION)


def _recording() -> bool:
    """Whether a tracer provider is installed (checked per call: one may be installed after import)."""
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata (W3C traceparent / tracestate)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple((k.lower(), v) for k, v in carrier.items())


class _NoSpan:
    """handler_span() when there is nothing to join or record: no span, nothing made current."""

    __slots__ = ()

    def __enter__(self) -> trace.Span:
        return trace.INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def handler_span(
    *,
    kind: str,
    trace_context: Mapping[str, str],
    job_id: str,
    attempt: int,
    fencing_token: int,
    queue: str,
) -> AbstractContextManager[trace.Span]:
    """A CONSUMER span "faultline.handle <kind>", child of the submit's trace context, made current.

    Exceptions are recorded by the caller (the handler runs in its own task, so they never
    cross this block).
    """
    if not trace_context and not _recording():
        # Nothing to join and nothing to record: the span would be the invalid one either way, and
        # making it current costs a context extract and attach per job. A shared plain context
        # manager, not a generator one, since this is the common case (1.6 us -> 0.7 us per job).
        return _NO_SPAN
    return _handler_span(
        kind=kind, trace_context=trace_context, job_id=job_id, attempt=attempt, fencing_token=fencing_token, queue=queue
    )


@contextmanager
def _handler_span(
    *,
    kind: str,
    trace_context: Mapping[str, str],
    job_id: str,
    attempt: int,
    fencing_token: int,
    queue: str,
) -> Iterator[trace.Span]:
    parent = propagate.extract(dict(trace_context))
    with _tracer.start_as_current_span(
        f"faultline.handle {kind}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "faultline.job.id": job_id,
            "faultline.job.kind": kind,
            "faultline.job.attempt": attempt,
            "faultline.lease.fencing_token": fencing_token,
            "messaging.destination.name": queue,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def record_failure(span: trace.Span, exc: BaseException, description: str) -> None:
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, description))

"""One trace per job across three processes: producer (this test) -> coordinator -> worker, all over OTLP/gRPC.

An in-process OTLP/gRPC receiver stands in for Jaeger. The coordinator and the worker are real
subprocesses configured only by OTEL_* variables. The producer's TracerProvider is local to the test,
not the process-global one, so no other test in this session starts recording spans.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.helpers.procs import Proc, python_proc
from tests.helpers.wait import eventually
from worker_sdk import Client, JobState

WORKER_SCRIPT = Path(__file__).with_name("otel_worker.py")
PRODUCER, COORDINATOR, WORKER = "test-producer", "faultline-coordinator", "faultline-worker"
# Export as soon as a span ends (the default batch delay is 5 s).
BSP_SCHEDULE_DELAY_MS = "50"
SPANS_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    kind: int
    status: int
    attributes: dict[str, Any]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects every ExportTraceServiceRequest it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[SpanRecord] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any) -> Any:
        got = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(SpanRecord(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(),
                        name=s.name, service=str(resource.get("service.name", "")), kind=s.kind,
                        status=s.status.code, attributes={a.key: _value(a.value) for a in s.attributes}))
        with self._lock:
            self._spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[SpanRecord]:
        with self._lock:
            return [s for s in self._spans if s.trace_id == trace_id]


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rec = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield rec, port
    server.stop(grace=None)


@pytest.fixture
def producer_tracer(receiver: tuple[Receiver, int]) -> Iterator[Any]:
    provider = TracerProvider(resource=Resource.create({"service.name": PRODUCER}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{receiver[1]}",
                                                                     insecure=True)))
    yield provider.get_tracer("tests.observability")
    provider.shutdown()


def _one(spans: list[SpanRecord], name: str) -> SpanRecord:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"expected one {name!r}, got {[s.name for s in spans]}"
    return found[0]


async def test_one_trace_holds_producer_coordinator_and_worker_spans_with_retries_as_attempts(
    receiver: tuple[Receiver, int], producer_tracer: Any, coordinator_proc_factory: Callable[..., Awaitable[Proc]],
    tmp_path: Path,
) -> None:
    rec, port = receiver
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": BSP_SCHEDULE_DELAY_MS}
    coord = await coordinator_proc_factory(env={**otel, "OTEL_SERVICE_NAME": COORDINATOR})
    addr = str(coord.extra["addr"])
    queue = f"traced-{uuid.uuid4().hex[:8]}"
    worker = python_proc(WORKER_SCRIPT, tmp=tmp_path, name="otel-worker", env={
        **otel, "OTEL_SERVICE_NAME": WORKER, "FAULTLINE_ADDR": addr, "FAULTLINE_QUEUE": queue}).start()
    try:
        async with Client(addr) as client:
            with producer_tracer.start_as_current_span("produce ok") as ok_span:
                ok = await client.submit("traced.ok", queue=queue)
            with producer_tracer.start_as_current_span("produce flaky") as flaky_span:
                flaky = await client.submit("traced.flaky", queue=queue, max_attempts=5)

            async def both_succeeded() -> bool:
                jobs = [await client.get(ok.id), await client.get(flaky.id)]
                return all(j.state is JobState.SUCCEEDED for j in jobs)

            await eventually(both_succeeded, timeout=SPANS_TIMEOUT_S, message="both jobs succeeded")
    finally:
        worker.stop()
    assert worker.popen is not None and worker.popen.returncode == 0, worker.output()[-3000:]

    # The first job: producer -> Submit -> queue_wait + attempt 1 -> handler, one trace over three services.
    ok_trace = f"{ok_span.get_span_context().trace_id:032x}"
    expected = {"produce ok", "faultline.Submit", "faultline.queue_wait", "faultline.attempt 1",
                "faultline.handle traced.ok"}
    spans = await eventually(lambda: (lambda s: s if expected <= {x.name for x in s} else None)(rec.trace(ok_trace)),
                             timeout=SPANS_TIMEOUT_S, message="the ok job's spans exported")
    producer = _one(spans, "produce ok")
    submit = _one(spans, "faultline.Submit")
    wait = _one(spans, "faultline.queue_wait")
    attempt = _one(spans, "faultline.attempt 1")
    handler = _one(spans, "faultline.handle traced.ok")
    assert {s.service for s in spans} == {PRODUCER, COORDINATOR, WORKER}
    assert (producer.service, submit.service, attempt.service, handler.service) == (
        PRODUCER, COORDINATOR, COORDINATOR, WORKER)
    assert submit.parent_id == producer.span_id
    assert wait.parent_id == submit.span_id and attempt.parent_id == submit.span_id
    assert handler.parent_id == attempt.span_id
    assert attempt.attributes["faultline.job_id"] == ok.id and handler.attributes["faultline.job.id"] == ok.id
    assert attempt.attributes["faultline.outcome"] == "succeeded"

    # The retried job: each attempt is its own span in the producer's trace, with its own handler span.
    flaky_trace = f"{flaky_span.get_span_context().trace_id:032x}"
    names = {"faultline.attempt 1", "faultline.attempt 2", "faultline.attempt 3"}
    spans = await eventually(
        lambda: (lambda s: s if len([x for x in s if x.name == "faultline.handle traced.flaky"]) == 3
                 and names <= {x.name for x in s} else None)(rec.trace(flaky_trace)),
        timeout=SPANS_TIMEOUT_S, message="the flaky job's three attempts exported")
    submit = _one(spans, "faultline.Submit")
    assert submit.parent_id == _one(spans, "produce flaky").span_id
    handlers = {s.attributes["faultline.job.attempt"]: s for s in spans if s.name == "faultline.handle traced.flaky"}
    assert sorted(handlers) == [1, 2, 3]
    error = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
    for n in (1, 2, 3):
        attempt = _one(spans, f"faultline.attempt {n}")
        assert attempt.parent_id == submit.span_id
        assert attempt.attributes["faultline.attempt"] == n
        assert handlers[n].parent_id == attempt.span_id
        assert (attempt.status == error) == (n < 3) and (handlers[n].status == error) == (n < 3)
        assert attempt.attributes["faultline.outcome"] == ("failed" if n < 3 else "succeeded")
    assert len({_one(spans, n).span_id for n in names}) == 3

"""A worker process that exports its spans over OTLP/gRPC, set up from the OTEL_* variables as any app would.

FAULTLINE_ADDR and FAULTLINE_QUEUE say where to connect and what to serve. Handlers:
"traced.ok" succeeds; "traced.flaky" asks for a retry until its third attempt.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from worker_sdk import JobContext, RetryJob, Worker

FLAKY_SUCCEEDS_ON_ATTEMPT = 3
RETRY_DELAY = timedelta(milliseconds=10)


def main() -> None:
    provider = TracerProvider(resource=Resource.create())  # service.name from OTEL_SERVICE_NAME
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint from OTEL_EXPORTER_OTLP_ENDPOINT
    trace.set_tracer_provider(provider)
    worker = Worker(os.environ["FAULTLINE_ADDR"], queues=[os.environ["FAULTLINE_QUEUE"]])

    @worker.handler("traced.ok")
    async def ok(ctx: JobContext) -> bytes:
        return b"ok"

    @worker.handler("traced.flaky")
    async def flaky(ctx: JobContext) -> bytes:
        if ctx.attempt < FLAKY_SUCCEEDS_ON_ATTEMPT:
            raise RetryJob(delay=RETRY_DELAY, message=f"attempt {ctx.attempt} fails on purpose")
        return b"ok"

    try:
        asyncio.run(worker.run())
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()

"""Per-key token buckets on job creation: RESOURCE_EXHAUSTED with a RetryInfo, honoured by the SDK, per coordinator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from coordinator.app import Coordinator
from tests.security.conftest import TEST_KEY_REFRESH, MakeKey, bearer
from worker_sdk import Client, RateLimitedError
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc


async def _submit(stub: Any, token: str, n: int = 1) -> grpc.StatusCode | grpc.aio.AioRpcError:
    try:
        if n == 1:
            await stub.Submit(jpb.SubmitRequest(kind="echo"), metadata=bearer(token), timeout=10)
        else:
            await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=[jpb.SubmitRequest(kind="echo")] * n),
                                   metadata=bearer(token), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc
    return grpc.StatusCode.OK


async def test_key_past_its_rate_is_refused_with_a_retry_delay(auth_coordinator: Coordinator,
                                                               make_key: MakeKey, db: Any) -> None:
    token = await make_key("slow-producer", "submit", rate=2, burst=5)
    unlimited = await make_key("fast-producer", "submit")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_coordinator.port}") as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        assert await _submit(stub, token, 4) is grpc.StatusCode.OK  # a batch takes one token per job
        assert await _submit(stub, token) is grpc.StatusCode.OK
        refused = await _submit(stub, token)
        assert isinstance(refused, grpc.aio.AioRpcError)
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "slow-producer" in (refused.details() or "")
        status = rpc_status.from_call(refused)
        assert status is not None
        infos = [error_details_pb2.RetryInfo() for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        for info, d in zip(infos, [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)],
                           strict=True):
            d.Unpack(info)
        [info] = infos
        delay = info.retry_delay.ToTimedelta().total_seconds()
        assert 0 < delay <= 0.5 + 1e-3, delay  # one token at 2/s
        # A batch larger than the burst could never pass: it is refused as such, not told to wait.
        too_big = await _submit(stub, token, 6)
        assert isinstance(too_big, grpc.aio.AioRpcError) and too_big.code() is grpc.StatusCode.INVALID_ARGUMENT
        # Other keys have buckets of their own.
        assert await _submit(stub, unlimited, 20) is grpc.StatusCode.OK
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs") == 25


async def test_sdk_client_waits_the_delay_it_is_given(auth_coordinator: Coordinator, make_key: MakeKey) -> None:
    token = await make_key("paced", "submit", rate=10, burst=2)
    loop = asyncio.get_running_loop()
    async with Client(f"127.0.0.1:{auth_coordinator.port}", api_key=token) as client:
        started = loop.time()
        for i in range(6):  # no idempotency key: refused before anything is stored, so a retry is safe
            await client.submit("echo", str(i).encode())
        elapsed = loop.time() - started
    # 2 from the burst, then 4 at 10/s: at least about 0.4 s of waiting that the server asked for.
    assert elapsed >= 0.3, elapsed
    strict = await make_key("strict", "submit", rate=0.1, burst=2)
    async with Client(f"127.0.0.1:{auth_coordinator.port}", api_key=strict, submit_attempts=1) as client:
        await client.submit("echo", b"a")
        await client.submit("echo", b"b")
        try:
            await client.submit("echo", b"c")
        except RateLimitedError as exc:
            assert exc.retry_after is not None and exc.retry_after.total_seconds() > 0
        else:
            raise AssertionError("a third submit within the burst window should be rate limited")


async def test_the_limit_holds_per_coordinator(coordinator_factory: Callable[..., Awaitable[Coordinator]],
                                               make_key: MakeKey) -> None:
    """Buckets live in each coordinator (docs/security.md): two coordinators admit a burst each."""
    one = await coordinator_factory(auth="required", key_refresh_interval=TEST_KEY_REFRESH)
    two = await coordinator_factory(auth="required", key_refresh_interval=TEST_KEY_REFRESH)
    token = await make_key("shared", "submit", rate=0.5, burst=3)
    for c in (one, two):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            assert await _submit(stub, token, 3) is grpc.StatusCode.OK
            refused = await _submit(stub, token)
            assert isinstance(refused, grpc.aio.AioRpcError)
            assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

"""grpc.health follows Postgres: NOT_SERVING while it is unreachable, SERVING again when it returns, no restart."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.drills.proxy import FaultProxy
from tests.helpers.wait import eventually
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc


async def test_health_and_submit_follow_database_reachability(coordinator_factory: Any, dsn: str) -> None:
    parts = urlsplit(dsn)
    if parts.hostname:
        proxy = await FaultProxy(parts.hostname, parts.port or 5432).start()
    else:  # the embedded server listens on a unix socket only (?host=/dir)
        socket_dir = parse_qs(parts.query)["host"][0]
        proxy = await FaultProxy(unix_path=f"{socket_dir}/.s.PGSQL.{parts.port or 5432}").start()
    via_proxy = urlunsplit((parts.scheme, f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}", parts.path,
                            "", ""))
    c = await coordinator_factory(database_url=via_proxy)
    addr = f"127.0.0.1:{c.port}"
    async with grpc.aio.insecure_channel(addr) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        jobs = job_service_pb2_grpc.JobServiceStub(ch)

        async def status(want: int) -> bool:
            resp = await health.Check(health_pb2.HealthCheckRequest(service="faultline.v1.JobService"), timeout=5)
            return bool(resp.status == want)

        await eventually(lambda: status(health_pb2.HealthCheckResponse.SERVING), timeout=10)
        proxy.cut()
        await eventually(lambda: status(health_pb2.HealthCheckResponse.NOT_SERVING), timeout=15,
                         message="NOT_SERVING while Postgres is cut off")
        try:
            await jobs.Submit(jpb.SubmitRequest(kind="echo", idempotency_key="during-outage"), timeout=20)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        else:
            raise AssertionError("Submit succeeded while Postgres was unreachable")
        proxy.heal()
        await eventually(lambda: status(health_pb2.HealthCheckResponse.SERVING), timeout=20,
                         message="SERVING again without a restart")
        resp = await jobs.Submit(jpb.SubmitRequest(kind="echo", idempotency_key="during-outage"), timeout=10)
        assert resp.created
    await proxy.close()

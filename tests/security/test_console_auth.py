"""The console's RPCs with auth on and off: WhoAmI, and who may bulk-cancel or bulk-requeue which queues."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from coordinator.app import Coordinator
from tests.security.conftest import MakeKey, bearer
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc


def _addr(c: Coordinator) -> str:
    return f"127.0.0.1:{c.port}"


async def _unary(addr: str, method: str, request: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    async with grpc.aio.insecure_channel(addr) as ch:
        return await getattr(job_service_pb2_grpc.JobServiceStub(ch), method)(request, metadata=metadata, timeout=10)


async def _code(aw: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await aw
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_whoami_with_auth_on_names_the_key_its_scopes_and_queues(auth_coordinator: Coordinator,
                                                                       make_key: MakeKey) -> None:
    addr = _addr(auth_coordinator)
    work = await make_key("workers", "work")
    team = await make_key("team-a-admin", "admin,read", queues=("team-a.*", "shared"))
    me = await _unary(addr, "WhoAmI", jpb.WhoAmIRequest(), bearer(work))  # any scope is enough
    assert me.identity == "key:workers" and me.name == "key workers"
    assert list(me.scopes) == ["work"] and list(me.queues) == [] and me.auth_enabled
    me = await _unary(addr, "WhoAmI", jpb.WhoAmIRequest(), bearer(team))
    assert list(me.scopes) == ["admin", "read"] and list(me.queues) == ["team-a.*", "shared"]
    code, _ = await _code(_unary(addr, "WhoAmI", jpb.WhoAmIRequest()))
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_whoami_with_auth_off_is_anonymous_with_every_scope(
        coordinator_factory: Callable[..., Awaitable[Coordinator]]) -> None:
    c = await coordinator_factory()
    me = await _unary(_addr(c), "WhoAmI", jpb.WhoAmIRequest())
    assert me.identity == "" and me.name == "anonymous" and not me.auth_enabled
    assert set(me.scopes) == {"submit", "read", "work", "payloads", "admin"} and list(me.queues) == []

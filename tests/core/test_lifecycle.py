"""The coordinator as a process: config errors exit 2, a restart keeps every job, SIGTERM stops cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import grpc

from tests.helpers.procs import ROOT
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb


def test_invalid_configuration_exits_2_with_a_clear_message() -> None:
    for var, value in [("FAULTLINE_LEASE_TTL_MS", "soon"), ("FAULTLINE_GRPC_ADDR", "nowhere"),
                       ("FAULTLINE_BACKOFF_JITTER", "2")]:
        env = dict(os.environ, **{var: value})
        out = subprocess.run([sys.executable, "-m", "coordinator"], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2, out
        assert var in out.stderr


async def test_coordinator_restart_keeps_every_job(coordinator_proc_factory: Any, db: Any) -> None:
    first = await coordinator_proc_factory()
    addr = str(first.extra["addr"])
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        resp = await stub.SubmitBatch(jpb.SubmitBatchRequest(
            jobs=[jpb.SubmitRequest(kind="nobody-handles-this", payload=str(i).encode()) for i in range(500)]))
        ids = [r.job.id for r in resp.results]
    first.kill()  # SIGKILL: no shutdown path runs
    second = await coordinator_proc_factory(port=int(addr.rsplit(":", 1)[1]))
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        for i, job_id in enumerate(ids):
            job = (await stub.GetJob(jpb.GetJobRequest(id=job_id))).job
            assert job.state == job_pb2.JOB_STATE_QUEUED and job.payload == str(i).encode()
    assert second.terminate() == 0, second.output()[-2000:]
    assert "coordinator stopped" in second.output()

"""Values at the edge of their wire type, names outside the alphabet and undecodable bytes: each is refused
with INVALID_ARGUMENT (or REPLY_STATUS_INVALID) naming the field, nothing is stored, and the coordinator
keeps serving."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest

from tests.conftest import bounded
from tests.helpers.raw_worker import RawWorker
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb

U64_MAX = 2**64 - 1
BIG_TOKENS = [2**63, 2**63 + 1, U64_MAX]
ARABIC_ONE = "\u0661"  # a Unicode digit: str.isdigit() and int() take it


@pytest.fixture
async def stub(addr: str) -> Any:
    ch = grpc.aio.insecure_channel(addr)
    yield job_service_pb2_grpc.JobServiceStub(ch)
    await bounded(ch.close(), "channel.close()")


async def _invalid(call: Any, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.value.code(), err.value.details())
    assert field in (err.value.details() or ""), err.value.details()


async def _jobs(db: Any) -> int:
    return int(await db.fetchval("SELECT count(*) FROM faultline_jobs"))


@pytest.mark.parametrize("name", ["echo\n", "echo\r", "\techo", "ec ho", "echo\x7f", "écho", "_echo", "-x", ARABIC_ONE])
async def test_names_outside_the_alphabet_are_refused(stub: Any, db: Any, name: str) -> None:
    await _invalid(stub.Submit(jpb.SubmitRequest(kind=name), timeout=30), "kind")
    await _invalid(stub.Submit(jpb.SubmitRequest(kind="echo", queue=name), timeout=30), "queue")
    await _invalid(stub.ListJobs(jpb.ListJobsRequest(kind=name), timeout=30), "kind")
    assert await _jobs(db) == 0


@pytest.mark.parametrize("key", ["a b", "key\n", "ключ", "k" * 257, "\x00"])
async def test_idempotency_keys_outside_printable_ascii_are_refused(stub: Any, db: Any, key: str) -> None:
    await _invalid(stub.Submit(jpb.SubmitRequest(kind="echo", idempotency_key=key), timeout=30), "idempotency_key")
    assert await _jobs(db) == 0


@pytest.mark.parametrize("labels", [{"a\n": "v"}, {"": "v"}, {"k": "v\n"}, {"k" * 65: "v"},
                                    {f"l{i}": "v" for i in range(65)}])
async def test_bad_labels_are_refused(stub: Any, db: Any, labels: dict[str, str]) -> None:
    await _invalid(stub.Submit(jpb.SubmitRequest(kind="echo", labels=labels), timeout=30), "labels")
    assert await _jobs(db) == 0


@pytest.mark.parametrize("job_id", ["1\n", " 1", "+1", "²", ARABIC_ONE, "01", "0", "-1", "9223372036854775808",
                                    "18446744073709551615", "1.0"])
async def test_malformed_job_ids_are_refused(stub: Any, db: Any, job_id: str) -> None:
    await stub.Submit(jpb.SubmitRequest(kind="echo"), timeout=30)  # job 1 exists: "1\n" must not find it
    await _invalid(stub.GetJob(jpb.GetJobRequest(id=job_id), timeout=30), "id")
    await _invalid(stub.CancelJob(jpb.CancelJobRequest(id=job_id), timeout=30), "id")
    await _invalid(stub.RequeueJob(jpb.RequeueJobRequest(id=job_id), timeout=30), "id")
    assert await db.fetchval("SELECT state FROM faultline_jobs") == "queued"


@pytest.mark.parametrize("raw", ["v1:9223372036854775808", "v1:²", "v1:" + ARABIC_ONE, "v1:1\n", "v1:-1", "v1:",
                                 "v2:1", "x"])
async def test_corrupt_page_tokens_are_refused(stub: Any, raw: str) -> None:
    token = base64.urlsafe_b64encode(raw.encode()).decode()
    await _invalid(stub.ListJobs(jpb.ListJobsRequest(page_token=token), timeout=30), "page_token")
    await _invalid(stub.ListJobs(jpb.ListJobsRequest(page_token="²"), timeout=30), "page_token")


# -- undecodable bytes: grpcio fails to parse invalid UTF-8 in a proto3 string before any handler runs ----------

BAD_UTF8_SUBMIT = b"\x0a\x03\xff\xfe\xfd"  # SubmitRequest{kind: <3 bytes that are not UTF-8>}


@pytest.mark.parametrize("method,raw", [
    ("/faultline.v1.JobService/Submit", BAD_UTF8_SUBMIT),
    ("/faultline.v1.JobService/GetJob", b"\x0a\x02\xc3\x28"),
    ("/faultline.v1.JobService/ListJobs", b"\x2a\x01\x80"),
    ("/faultline.v1.JobService/Submit", b"\x0a\xff"),  # truncated: not a message at all
])
async def test_undecodable_requests_are_invalid_argument(addr: str, db: Any, method: str, raw: bytes) -> None:
    async with grpc.aio.insecure_channel(addr) as ch:
        call = ch.unary_unary(method)  # no serializers: the bytes go out as they are
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(raw, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.value.code(), err.value.details())
        assert err.value.details()
    assert await _jobs(db) == 0


async def test_undecodable_stream_message_ends_the_stream_invalid_argument(addr: str, stub: Any) -> None:
    # ConnectRequest{frames: [WorkerFrame{hello: Hello{worker_id: b"\xff"}}]}
    hello = b"\x0a\x01\xff"
    frame = b"\x12" + bytes([len(hello)]) + hello
    msg = b"\x0a" + bytes([len(frame)]) + frame

    async def requests() -> Any:
        yield msg

    async with grpc.aio.insecure_channel(addr) as ch:
        call = ch.stream_stream("/faultline.v1.WorkerService/Connect")(requests())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.value.code(), err.value.details())
    # Still serving.
    await stub.Submit(jpb.SubmitRequest(kind="echo"), timeout=30)


# -- the worker stream: tokens and ids past a bigint get one INVALID reply each, and the actors live on -------

async def test_huge_tokens_get_one_invalid_reply_per_frame_and_crash_nothing(addr: str, stub: Any, db: Any) -> None:
    await stub.Submit(jpb.SubmitRequest(kind="echo"), timeout=30)
    w = await RawWorker(addr, "edge-w", capacity=1).connect()
    try:
        w.credit(1)
        grant = await w.next_grant()
        job = grant.lease_id.split(".")[0]
        refs = [wpb.LeaseRef(lease_id=f"{job}.{t}", fencing_token=t) for t in BIG_TOKENS]
        refs += [wpb.LeaseRef(lease_id=f"{9223372036854775808 + i}.1", fencing_token=1) for i in range(2)]
        refs += [wpb.LeaseRef(lease_id=f"{job}.1\n", fencing_token=1),
                 wpb.LeaseRef(lease_id=f"{job}.²", fencing_token=2),
                 wpb.LeaseRef(lease_id=f"{job}.0", fencing_token=0)]
        for _ in range(3):  # more than one batch, as the report saw
            for ref in refs:
                frames = {
                    "complete": wpb.Complete(lease=ref, result=b"x"),
                    "fail": wpb.Fail(lease=ref, error="e"),
                    "heartbeat": wpb.Heartbeat(leases=[ref]),
                    "progress": wpb.Progress(lease=ref, fraction=0.5),
                    "release": wpb.Release(lease=ref),
                    "get_step": wpb.GetStep(lease=ref, key="k"),
                    "record_step": wpb.RecordStep(lease=ref, key="k", result=b"r"),
                }
                for which, body in frames.items():
                    reply = await w.request(**{which: body})
                    if which == "heartbeat":
                        assert reply.status == wpb.REPLY_STATUS_ACCEPTED, reply
                        assert reply.leases[0].status == wpb.REPLY_STATUS_INVALID, (which, ref, reply)
                    else:
                        assert reply.status == wpb.REPLY_STATUS_INVALID, (which, ref, reply)
        # The real lease was never touched, and its worker's frames are still served.
        hb = await w.heartbeat(grant)
        assert hb.leases[0].status == wpb.REPLY_STATUS_ACCEPTED
        done = await w.complete(grant, b"ok")
        assert done.status == wpb.REPLY_STATUS_ACCEPTED
    finally:
        await w.close()
    assert await db.fetchval("SELECT state FROM faultline_jobs WHERE id = $1", int(job)) == "succeeded"
    await stub.Submit(jpb.SubmitRequest(kind="echo"), timeout=30)

"""A worker that speaks the raw faultline.v1 stream, frame by frame, so tests control every byte and every delay."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc

from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb
from worker_sdk._proto.faultline.v1 import worker_service_pb2_grpc

FRAME_TIMEOUT_S = 15.0


class RawWorker:
    """Open with connect(); then send frames and await replies, grants and other coordinator frames."""

    def __init__(self, addr: str, worker_id: str, *, queues: tuple[str, ...] = ("default",),
                 kinds: tuple[str, ...] = ("echo",), capacity: int = 10,
                 metadata: tuple[tuple[str, str], ...] = (), credentials: grpc.ChannelCredentials | None = None,
                 ) -> None:
        self.metadata, self.credentials = metadata, credentials
        self.addr, self.worker_id, self.queues, self.kinds, self.capacity = addr, worker_id, queues, kinds, capacity
        self._seq = itertools.count(1)
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self.grants: asyncio.Queue[Any] = asyncio.Queue()
        self.others: asyncio.Queue[Any] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self.welcome: Any = None
        self.status: grpc.StatusCode | None = None
        self.details = ""

    async def connect(self, *, held: list[Any] | None = None, hello: Any = None) -> RawWorker:
        self._channel = (grpc.aio.secure_channel(self.addr, self.credentials) if self.credentials is not None
                         else grpc.aio.insecure_channel(self.addr))
        self._call = worker_service_pb2_grpc.WorkerServiceStub(self._channel).Connect(
            self._requests(), metadata=self.metadata)
        self._reader = asyncio.create_task(self._read())
        self.send(wpb.WorkerFrame(hello=hello or wpb.Hello(
            worker_id=self.worker_id, queues=list(self.queues), kinds=list(self.kinds), capacity=self.capacity,
            sdk_name="raw-test", held_leases=held or [])))
        if hello is None:
            self.welcome = await asyncio.wait_for(self.others.get(), FRAME_TIMEOUT_S)
        return self

    async def _requests(self) -> Any:
        while True:
            frame = await self._out.get()
            if frame is None:
                return
            yield wpb.ConnectRequest(frames=[frame])

    async def _read(self) -> None:
        try:
            async for msg in self._call:
                for f in msg.frames:
                    which = f.WhichOneof("frame")
                    if which == "reply":
                        fut = self._replies.pop(f.reply.seq, None)
                        if fut is not None and not fut.done():
                            fut.set_result(f.reply)
                    elif which == "lease":
                        self.grants.put_nowait(f.lease)
                    else:
                        self.others.put_nowait(getattr(f, which))
        except grpc.aio.AioRpcError as exc:
            self.status, self.details = exc.code(), exc.details() or ""
        else:
            self.status = grpc.StatusCode.OK
        finally:
            self.others.put_nowait(None)

    def send(self, frame: Any) -> None:
        self._out.put_nowait(frame)

    def send_request(self, **frame: Any) -> asyncio.Future[Any]:
        """Queue a frame that expects a reply, now; the future gets the reply."""
        seq = next(self._seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[seq] = fut
        self.send(wpb.WorkerFrame(seq=seq, **frame))
        return fut

    async def request(self, **frame: Any) -> Any:
        return await asyncio.wait_for(self.send_request(**frame), FRAME_TIMEOUT_S)

    def credit(self, n: int) -> None:
        self.send(wpb.WorkerFrame(credit=wpb.Credit(count=n)))

    async def next_grant(self, timeout: float = FRAME_TIMEOUT_S) -> Any:
        return await asyncio.wait_for(self.grants.get(), timeout)

    @staticmethod
    def ref(grant: Any) -> Any:
        return wpb.LeaseRef(lease_id=grant.lease_id, fencing_token=grant.fencing_token)

    async def complete(self, grant: Any, result: bytes) -> Any:
        return await self.request(complete=wpb.Complete(lease=self.ref(grant), result=result))

    async def fail(self, grant: Any, error: str, *, retryable: bool = True) -> Any:
        return await self.request(fail=wpb.Fail(lease=self.ref(grant), error=error, retryable=retryable))

    async def heartbeat(self, *grants: Any) -> Any:
        return await self.request(heartbeat=wpb.Heartbeat(leases=[self.ref(g) for g in grants]))

    async def closed(self, timeout: float = FRAME_TIMEOUT_S) -> grpc.StatusCode | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.status

    def half_close(self) -> None:
        """End our side of the stream (no more frames) while still reading the coordinator's."""
        self._out.put_nowait(None)

    async def close(self) -> None:
        self._out.put_nowait(None)
        self._reader.cancel()
        await self._channel.close()

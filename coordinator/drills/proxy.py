"""A TCP proxy that injects link faults: black-hole the link (a partition) or cut it (the far end is gone).

partition() stops moving bytes in both directions while keeping every connection open, as a network
partition does to TCP: nothing arrives, nothing fails, and the sender's kernel keeps what it wrote.
New connections wait too (their SYN is lost). heal() lets the held bytes through, as TCP
retransmission would once the network is back. The partition drills put it between a worker and the
coordinator, or between the coordinator and Postgres.

cut() aborts every open connection at once and refuses new ones, as a server that died or a
firewall that rejects: the peer sees a reset, not silence. The health tests put it between the
coordinator and Postgres. heal() ends a cut as well.
"""

from __future__ import annotations

import asyncio
import contextlib

CHUNK_BYTES = 65_536


class FaultProxy:
    """listen_host:port -> (target_host, target_port), or -> a unix socket. Owner of its connections: its event loop."""

    def __init__(
        self, target_host: str = "", target_port: int = 0, *, unix_path: str | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        if unix_path is None and not target_host:
            raise ValueError("a target host and port, or a unix socket path, is required")
        self._target = (target_host, target_port)
        self._unix_path = unix_path
        self._listen_host = listen_host
        self._open = asyncio.Event()
        self._open.set()
        self._cut = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.connections = 0

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self._listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def partitioned(self) -> bool:
        return not self._open.is_set()

    def partition(self) -> None:
        self._open.clear()

    def cut(self) -> None:
        self._cut = True
        for w in list(self._writers):
            w.transport.abort()

    def heal(self) -> None:
        self._cut = False
        self._open.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._open.wait()  # a partitioned link accepts nothing through (the SYN is lost)
        if self._cut:
            writer.transport.abort()
            return
        try:
            if self._unix_path is not None:
                up_r, up_w = await asyncio.open_unix_connection(self._unix_path)
            else:
                up_r, up_w = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers |= {writer, up_w}
        for src, dst in ((reader, up_w), (up_r, writer)):
            t = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while not self._cut:
                await self._open.wait()
                data = await src.read(CHUNK_BYTES)
                if not data or self._cut:
                    break
                await self._open.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(dst)
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                dst.close()

    async def close(self) -> None:
        self.cut()
        self._open.set()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

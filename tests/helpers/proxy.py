"""A loopback TCP proxy that can hold back and then drop what the server sends: a reply lost on the way back."""

from __future__ import annotations

import asyncio
import contextlib


class ReplyDropper:
    """Forwards client bytes to the server at once; server bytes too, except while armed.

    arm(): from now on, server bytes are held back (not forwarded). drop(): close every client connection,
    discarding what was held: the client sees its call fail (UNAVAILABLE) although the server answered it.
    After drop() new connections pass through unarmed.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._armed = False
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.addr = ""
        self.held = 0

    async def start(self) -> ReplyDropper:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.addr = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def arm(self) -> None:
        self._armed = True

    def drop(self) -> None:
        self._armed = False
        for client, server in list(self._conns):
            client.transport.abort()
            server.transport.abort()
        self._conns.clear()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection(*self._upstream)
        pair = (c_writer, s_writer)
        self._conns.add(pair)
        up = asyncio.create_task(self._pipe(c_reader, s_writer, hold=False))
        down = asyncio.create_task(self._pipe(s_reader, c_writer, hold=True))
        self._tasks |= {up, down}
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for t in (up, down):
            t.cancel()
        for w in pair:
            w.transport.abort()
        self._conns.discard(pair)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if hold and self._armed:
                    self.held += len(data)
                    continue
                writer.write(data)
                await writer.drain()

    async def close(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in self._tasks:
            t.cancel()

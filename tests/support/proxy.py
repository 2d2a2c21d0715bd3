"""A small TCP proxy on loopback that can drop every connection for a while (a network cut)."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host:target_port``.

    ``cut()`` closes every open connection and refuses new ones (they are
    accepted and closed at once) until ``restore()``. ``trip_at`` cuts one
    connection at a chosen point of what the client sends (a lost answer).
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.cut_off = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._trip: tuple[bytes, bytes, bool] | None = None
        #: Set once a ``trip_at`` has cut its connection.
        self.tripped = asyncio.Event()

    def trip_at(self, after: bytes, at: bytes, *, forward: bool) -> None:
        """Once: on the first connection whose client sends ``after`` and then ``at``
        (in a later read), drop the connection at ``at``: before forwarding it, or
        (``forward``) once the server has answered it, the answer lost. ``tripped``
        is set then."""
        self._trip = (after, at, forward)
        self.tripped.clear()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_all()
        for task in list(self._pipes):
            task.cancel()
        if self._pipes:
            await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until ``restore``."""
        self.cut_off = True
        self._drop_all()

    def restore(self) -> None:
        self.cut_off = False

    def _drop(self, ends: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        for end in ends:
            end.transport.abort()
        self.tripped.set()

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        # What the client sends is watched for a trip; ``ends`` is the connection's two
        # writers, ``answer`` whether the server's next answer is to be lost (a list: shared).
        ends = (writer, up_writer)
        answer = [False]
        for src, dst, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pipe(src, dst, upstream, ends, answer))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        upstream: bool,
        ends: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        answer: list[bool],
    ) -> None:
        armed = False
        try:
            while data := await src.read(65536):
                if not upstream and answer[0]:  # the answer to ``at``: lost
                    self._drop(ends)
                    return
                trip = self._trip if upstream else None
                if trip is not None and armed and trip[1] in data:
                    self._trip = None
                    if not trip[2]:
                        self._drop(ends)
                        return
                    answer[0] = True
                elif trip is not None and trip[0] in data:
                    armed = True
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.transport.abort()
            self._writers.discard(dst)

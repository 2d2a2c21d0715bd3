"""A lean HTTP/1.1 client for the one call on delivery's path: a provider's send.

aiohttp's client costs about 150 µs of CPU per call (a task for the body, its
request and response objects, its stream reader and timers); a provider send
needs far less: one POST of a body already in memory, and the answer's status,
a few headers and a small body. Here a call is one ``write`` of the head and
body on a pooled keep-alive connection, and the answer is parsed by llhttp
(``httptools``, the parser uvicorn uses) as it arrives, in the connection's
protocol. Lookups and suppression lists, off that path, stay on aiohttp.

What a failure means is kept exact, for the sender's rules on lost answers:

- ``NotSent``: no byte of the request left (DNS, refused, unreachable, TLS,
  no connection within the connect timeout: ``ConnectTimeout``). The provider
  cannot have the mail.
- ``Lost``: the request may have left and no whole answer came (the
  connection closed or broke, an answer that is not HTTP or over
  ``MAX_ANSWER_BYTES``). The provider may have the mail.
- ``TimeoutError``: the total timeout passed once connected, the same.

A connection goes back to its pool only after a whole answer that lets it be
kept (HTTP/1.1 keep-alive); a call that fails, times out or is cancelled closes
it. An idle connection is closed after ``IDLE_SECONDS`` (aiohttp's keep-alive
default), before the servers' own idle limits, so that a reused connection is
rarely one the server is closing.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

import aiohappyeyeballs
import httptools

from mailman.core.records import fast_init

#: Largest answer read (head and body); a provider's answers are a few hundred bytes.
MAX_ANSWER_BYTES: Final = 1024 * 1024
#: Seconds an idle pooled connection is kept.
IDLE_SECONDS: Final = 15.0
#: Delay before a second address family is tried (RFC 8305; as aiohttp).
HAPPY_EYEBALLS_DELAY: Final = 0.25
#: Who calls, in every request.
USER_AGENT: Final = "Mailman"
_PORTS: Final = {"http": 80, "https": 443}


class NotSent(Exception):
    """No byte of the request left: the provider cannot have the mail."""


class ConnectTimeout(NotSent):
    """No connection within the connect timeout."""


class Lost(Exception):
    """The request may have left, and no whole answer came."""


class Unsendable(ValueError):
    """A URL (``where="url"``) or header (``"header"``) that cannot be written into a
    request; raised before anything is sent."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


@fast_init
@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's whole answer."""

    status: int
    #: Header names lower-cased; a repeated header's first value.
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception (the type alone when it has no message)."""
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


_context: ssl.SSLContext | None = None


def default_context() -> ssl.SSLContext:
    """The system's trusted CAs, hostnames checked (``ssl.create_default_context``),
    made once per process: building one reads the CA bundle."""
    global _context
    if _context is None:
        _context = ssl.create_default_context()
    return _context


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses its answer as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: When it went back to the pool (the loop's clock).
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[Answer, bool]] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._head_done = False
        self._broken: str | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Lost(f"the answer is not HTTP: {exc}"))
            return
        if self._broken is not None:
            self._fail(Lost(self._broken))  # the connection closes, answered or not

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._head_done and self._until_eof():  # a reset cuts it short
            waiter.set_result((self._answer(), False))
            return
        said = f": {describe(exc)}" if exc is not None else ""
        waiter.set_exception(Lost(f"the server closed the connection{said}"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        key = name.decode("latin-1").lower()
        if key not in self._headers:
            self._headers[key] = value.decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        self._count(len(body))
        if self._broken is None:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # 100 Continue and the like: not the answer
            self._reset()
            return
        waiter, broken = self._waiter, self._broken
        if waiter is None or waiter.done():  # a second answer to one request
            broken = "an answer nobody asked for"
        elif broken is None:
            waiter.set_result((self._answer(), self._parser.should_keep_alive()))
        self._reset()  # the answer keeps what it read; anything after it starts afresh
        self._broken = broken

    # the call

    async def exchange(self, request: bytes, deadline: float) -> tuple[Answer, bool]:
        """Write ``request`` and wait for the whole answer until ``deadline`` (the loop's
        clock; ``TimeoutError`` then); with it, whether the connection may be kept.

        One timer on the loop, not ``asyncio.timeout``: py-spy put that context's
        reschedule alone at 2.7 % of delivery's event loop."""
        if not self.usable():  # closed after it was made, before anything was written
            raise NotSent("the connection closed before the request was sent")
        assert self.transport is not None
        self._reset()
        waiter: asyncio.Future[tuple[Answer, bool]] = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_at(deadline, self._time_out)
        try:
            self.transport.write(request)
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _time_out(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    def unsent(self) -> int:
        """Bytes of the request still in the transport's buffer."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _reset(self) -> None:
        self._headers = {}
        self._body = []
        self._size = 0
        self._head_done = False
        self._broken = None

    def _count(self, size: int) -> None:
        self._size += size
        if self._size > MAX_ANSWER_BYTES and self._broken is None:
            self._broken = f"the answer is larger than {MAX_ANSWER_BYTES} bytes"
            self._body = []

    def _until_eof(self) -> bool:
        """Whether the answer's body runs to the end of the connection (no length, not
        chunked), so that the connection's end completes it."""
        return (
            self._broken is None
            and "content-length" not in self._headers
            and "chunked" not in self._headers.get("transfer-encoding", "").lower()
        )

    def _answer(self) -> Answer:
        return Answer(self._parser.get_status_code(), self._headers, b"".join(self._body))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()


class _Origin:
    """Pooled connections to one scheme, host and port. No cap on their number: the
    sender's concurrency caps the calls in flight."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        self.host = host
        self.port = port
        self._context = context
        self._idle: collections.deque[_Connection] = collections.deque()
        self._reaper: asyncio.TimerHandle | None = None

    def pooled(self) -> _Connection | None:
        """The most recently idle usable connection, if there is one."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection
        return None

    async def connect(self) -> _Connection:
        """A new connection (its addresses tried as RFC 8305 says, as aiohttp does: uvloop's
        ``create_connection`` tries them one after another), TLS made if ``https``."""
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            sock = await aiohappyeyeballs.start_connection(
                found, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
            )
            try:
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    sock=sock,
                    ssl=self._context,
                    server_hostname=self.host if self._context is not None else None,
                )
            except BaseException:
                sock.close()
                raise
        except OSError as exc:  # DNS, refused, unreachable, TLS (ssl.SSLError)
            raise NotSent(f"cannot connect to {self.host}:{self.port}: {describe(exc)}") from exc
        return connection

    def release(self, connection: _Connection, keep: bool) -> None:
        """Pool ``connection`` if its answer lets it be kept and the whole request left:
        a server may answer (a 413) before reading a large body, and what is left of it
        must not reach the server as the start of the next request."""
        if not keep or not connection.usable() or connection.unsent():
            connection.close()
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self._idle.append(connection)
        if self._reaper is None:
            self._reaper = loop.call_later(IDLE_SECONDS, self._reap)

    def idle(self) -> int:
        return sum(1 for connection in self._idle if connection.usable())

    def _reap(self) -> None:
        """Close the connections idle for ``IDLE_SECONDS``; come back while any is idle."""
        self._reaper = None
        loop = asyncio.get_running_loop()
        idle, stale = self._idle, loop.time() - IDLE_SECONDS
        while idle and (idle[0].idle_since <= stale or not idle[0].usable()):
            idle.popleft().close()
        if idle:
            self._reaper = loop.call_at(idle[0].idle_since + IDLE_SECONDS, self._reap)

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        while self._idle:
            self._idle.pop().close()


@dataclass(frozen=True, slots=True)
class _Target:
    origin: _Origin
    #: The request line and the headers every call to this URL carries.
    head: bytes


class Transport:
    """Keep-alive connections to the URLs a provider client posts to."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self._context = context
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._targets: dict[str, _Target] = {}

    def _target(self, url: str) -> _Target:
        """``url``'s pool and request line (``ValueError`` for a URL that cannot be used)."""
        target = self._targets.get(url)
        if target is not None:
            return target
        try:  # urlsplit, and its port and hostname as read, raise for what they cannot read
            parts = urlsplit(url)
            port = parts.port or _PORTS.get(parts.scheme, 0)
            hostname = parts.hostname
        except ValueError as exc:
            raise Unsendable(f"not a URL: {exc}", "url") from None
        if parts.scheme not in _PORTS or not hostname:
            raise Unsendable("not an http or https URL with a host", "url")
        if parts.username is not None or parts.password is not None:
            raise Unsendable("credentials in the URL", "url")
        key = (parts.scheme, hostname, port)
        origin = self._origins.get(key)
        if origin is None:
            context = (self._context or default_context()) if parts.scheme == "https" else None
            origin = self._origins[key] = _Origin(hostname, port, context)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host = parts.netloc.rpartition("@")[2]
        default = f":{_PORTS[parts.scheme]}"
        if host.endswith(default):  # as signers (SigV4) and aiohttp write it
            host = host.removesuffix(default)
        _check(path, "url")
        _check(host, "url")
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n".encode()
        target = self._targets[url] = _Target(origin, head)
        return target

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, total: float, connect: float
    ) -> Answer:
        """POST ``body`` to ``url`` with ``headers``; the whole answer within ``total``
        seconds, of which getting a connection may take ``connect``.

        Raises ``Unsendable`` (before anything is sent), ``NotSent``, ``Lost`` or
        ``TimeoutError`` (see the module)."""
        target = self._target(url)
        lines = [target.head]
        for name, value in headers.items():
            _check(name, "header")
            _check(value, "header")
            lines.append(f"{name}: {value}\r\n".encode())
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
        request = b"".join(lines)
        deadline = asyncio.get_running_loop().time() + total
        connection = target.origin.pooled()
        if connection is None:
            try:
                async with asyncio.timeout(min(connect, total)):
                    connection = await target.origin.connect()
            except TimeoutError:
                raise ConnectTimeout(f"no connection within {connect:g}s") from None
        try:
            answer, keep = await connection.exchange(request, deadline)
        except BaseException:
            connection.close()
            raise
        target.origin.release(connection, keep)
        return answer

    def idle(self) -> int:
        """The pooled connections waiting for a call, still open."""
        return sum(origin.idle() for origin in self._origins.values())

    def close(self) -> None:
        """Close every connection. Idempotent."""
        for origin in self._origins.values():
            origin.close()
        self._origins.clear()
        self._targets.clear()


def _check(value: str, where: str) -> None:
    if "\r" in value or "\n" in value:
        raise Unsendable(f"a line break in a request's {where}", where)

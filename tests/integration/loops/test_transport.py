"""The providers' lean HTTP/1.1 client (providers.transport) against raw servers on
loopback, on asyncio's loop and on uvloop: whole answers however they are framed,
keep-alive, TLS, and the line between "not sent" and "lost" that the sender's rules
on unknown outcomes stand on."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme
from aiohttp import web

from mailman.core.model import Mail, Outcome
from mailman.providers import HttpClient, Misconfigured, Result, Transient, Unknown
from mailman.providers import transport as transport_module
from mailman.providers.transport import (
    Answer,
    ConnectTimeout,
    Lost,
    NotSent,
    Transport,
    Unsendable,
)

from ...conftest import eventually

SECRET = "key-never-shown-QX81"
TIMEOUTS = {"total": 5.0, "connect": 2.5}


class Request:
    """One request as the server read it."""

    def __init__(self, head: bytes, body: bytes, reader: asyncio.StreamReader) -> None:
        self.head, self.body, self.reader = head, body, reader
        lines = head.decode().split("\r\n")
        self.line = lines[0]
        self.headers = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines[1:] if x)}


#: What a scripted server does with a request: writes to the writer, closes it, or waits.
Script = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw HTTP server: reads each request whole, then runs its script."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []
        self.connections = 0
        self.closed = 0
        self._server: asyncio.Server | None = None
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request = Request(head, b"", reader)
                request.body = await reader.readexactly(int(request.headers["content-length"]))
                self.requests.append(request)
                await self.script(request, writer)
                if writer.is_closing():
                    return
        finally:
            self.closed += 1
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v3/mail/send"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


def answering(*raw: bytes) -> Script:
    """A script that writes ``raw``, piece by piece (each piece drained before the next)."""

    async def script(request: Request, writer: asyncio.StreamWriter) -> None:
        for piece in raw:
            writer.write(piece)
            await writer.drain()

    return script


OK = b"HTTP/1.1 202 Accepted\r\nX-Message-Id: abc\r\nContent-Length: 2\r\n\r\nok"


@asynccontextmanager
async def transport(context: ssl.SSLContext | None = None) -> AsyncIterator[Transport]:
    t = Transport(context)
    try:
        yield t
    finally:
        t.close()


async def test_an_answer_is_read_whole_and_the_request_goes_out_as_given() -> None:
    """Status, headers (any case, first of a repeat) and body come back; the server reads
    the request line, Host, the caller's headers, Content-Length and the body."""
    raw = (
        b"HTTP/1.1 202 Accepted\r\nX-Message-Id: first\r\nx-message-id: second\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    async with Server(answering(raw)) as server, transport() as t:
        answer = await t.post(server.url, b'{"a":1}', {"Authorization": "Bearer k"}, **TIMEOUTS)

    assert answer == Answer(202, {"x-message-id": "first", "content-length": "5"}, b"hello")
    assert answer.header("X-Message-ID") == "first"
    (request,) = server.requests
    assert request.line == "POST /v3/mail/send HTTP/1.1"
    assert request.headers["host"] == server.url.split("/")[2]
    assert request.headers["authorization"] == "Bearer k"
    assert request.headers["content-length"] == "7"
    assert request.body == b'{"a":1}'


async def test_calls_reuse_one_keep_alive_connection() -> None:
    """Three calls one after another go over one connection."""
    async with Server(answering(OK)) as server, transport() as t:
        for _ in range(3):
            assert (await t.post(server.url, b"x", {}, **TIMEOUTS)).status == 202

    assert server.connections == 1 and len(server.requests) == 3


async def test_concurrent_calls_each_get_a_connection_and_all_are_kept() -> None:
    """Calls in flight together open a connection each; all go back to the pool."""
    gate = asyncio.Event()

    async def script(request: Request, writer: asyncio.StreamWriter) -> None:
        if len(server.requests) == 4:
            gate.set()
        await gate.wait()
        writer.write(OK)

    async with Server(script) as server, transport() as t:
        answers = await asyncio.gather(
            *(t.post(server.url, b"x", {}, **TIMEOUTS) for _ in range(4))
        )
        assert t.idle() == 4
        await t.post(server.url, b"x", {}, **TIMEOUTS)

    assert [a.status for a in answers] == [202] * 4
    assert server.connections == 4


async def test_a_chunked_answer_is_read_whole_whatever_its_pieces() -> None:
    """A chunked body split across writes at odd places is joined, and the connection kept."""
    pieces = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n",
        b"6\r\n wor",
        b"ld\r\n0\r\n\r\n",
    )
    async with Server(answering(*pieces)) as server, transport() as t:
        first = await t.post(server.url, b"x", {}, **TIMEOUTS)
        second = await t.post(server.url, b"x", {}, **TIMEOUTS)

    assert first.body == second.body == b"hello world"
    assert server.connections == 1


async def test_an_answer_without_a_length_runs_to_the_close_and_is_not_kept() -> None:
    """No Content-Length, not chunked: the body is all until the server closes."""

    async def script(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\n\r\n{"id": ')
        await writer.drain()
        writer.write(b'"m1"}')
        writer.close()

    async with Server(script) as server, transport() as t:
        first = await t.post(server.url, b"x", {}, **TIMEOUTS)
        second = await t.post(server.url, b"x", {}, **TIMEOUTS)

    assert first.body == second.body == b'{"id": "m1"}'
    assert server.connections == 2


async def test_bytes_after_the_answer_end_the_connection() -> None:
    """A second answer to one request: the first is the answer, the connection is not
    used again."""
    async with Server(answering(OK + OK)) as server, transport() as t:
        first = await t.post(server.url, b"x", {}, **TIMEOUTS)
        second = await t.post(server.url, b"x", {}, **TIMEOUTS)

    assert first == second == Answer(202, {"x-message-id": "abc", "content-length": "2"}, b"ok")
    assert server.connections == 2


async def test_a_reset_cuts_an_answer_without_a_length_short() -> None:
    """An answer running to the close, ended by a reset instead of a close: ``Lost``."""

    async def reset(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\n\r\n{"id": ')
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with Server(reset) as server, transport() as t:
        with pytest.raises(Lost, match="ConnectionResetError"):
            await t.post(server.url, b"x", {}, **TIMEOUTS)


async def test_an_answer_before_the_whole_body_left_ends_the_connection() -> None:
    """A server that answers (413, keep-alive) without reading a large body: the answer
    comes back, and the connection, its body part unsent, is not used again."""
    connections = 0
    done = asyncio.Event()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await done.wait()  # never reading the body: the client cannot send it all
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v3/mail/send"
    try:
        async with transport() as t:
            big = await t.post(url, b"x" * (32 * 1024 * 1024), {}, **TIMEOUTS)
            assert t.idle() == 0
            small = await t.post(url, b"x", {}, **TIMEOUTS)
    finally:
        done.set()
        server.close()
        await server.wait_closed()

    assert big.status == small.status == 413
    assert connections == 2


async def test_connection_close_is_honoured() -> None:
    """An answer saying ``Connection: close`` ends its connection; the next call opens one."""
    raw = b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    async with Server(answering(raw)) as server, transport() as t:
        await t.post(server.url, b"x", {}, **TIMEOUTS)
        await t.post(server.url, b"x", {}, **TIMEOUTS)

    assert server.connections == 2


async def test_an_interim_answer_is_not_the_answer() -> None:
    """``100 Continue`` before the final answer is passed over."""
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    async with Server(answering(raw)) as server, transport() as t:
        answer = await t.post(server.url, b"x", {}, **TIMEOUTS)

    assert answer.status == 202 and answer.body == b"ok"


async def close_unanswered(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.close()


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(close_unanswered, id="closed-unanswered"),
        pytest.param(answering(b"HTTP/1.1 202 Accepted\r\nContent-Le"), id="closed-mid-head"),
        pytest.param(
            answering(b"HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\nabc"),
            id="closed-mid-body",
        ),
    ],
)
async def test_a_connection_closed_before_a_whole_answer_is_lost(script: Script) -> None:
    """The server had the request and closed before answering whole: ``Lost``."""

    async def then_close(request: Request, writer: asyncio.StreamWriter) -> None:
        await script(request, writer)
        writer.close()

    async with Server(then_close) as server, transport() as t:
        with pytest.raises(Lost, match="the server closed the connection"):
            await t.post(server.url, b"x", {}, **TIMEOUTS)

    assert len(server.requests) == 1


async def test_an_answer_that_is_not_http_is_lost_and_closes_the_connection() -> None:
    """Bytes that are not an HTTP answer: ``Lost`` (the request was read), connection closed."""
    async with Server(answering(b"220 smtp.example.com ESMTP\r\n")) as server, transport() as t:
        with pytest.raises(Lost, match="not HTTP"):
            await t.post(server.url, b"x", {}, **TIMEOUTS)
        await eventually(lambda: server.closed == 1, what="the connection closed")


async def test_an_answer_over_the_cap_is_lost() -> None:
    """An answer larger than MAX_ANSWER_BYTES is not held: ``Lost``, connection closed."""
    size = transport_module.MAX_ANSWER_BYTES + 1
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    async with Server(answering(raw)) as server, transport() as t:
        with pytest.raises(Lost, match="larger than"):
            await t.post(server.url, b"x", {}, **TIMEOUTS)
        assert t.idle() == 0


async def hang(request: Request, writer: asyncio.StreamWriter) -> None:
    """Never answer; wait for the client to close."""
    await request.reader.read()


async def test_no_answer_in_time_is_a_timeout_and_closes_the_connection() -> None:
    """A server that never answers: ``TimeoutError`` at the total, and the connection is
    closed (a late answer cannot be read as the next call's)."""
    async with Server(hang) as server, transport() as t:
        with pytest.raises(TimeoutError):
            await t.post(server.url, b"x", {}, total=0.2, connect=0.1)
        assert t.idle() == 0
        await eventually(lambda: server.closed == 1, what="the connection closed")


async def test_a_cancelled_call_closes_its_connection() -> None:
    """A caller cancelled mid-call leaves no connection in the pool."""
    async with Server(hang) as server, transport() as t:
        call = asyncio.create_task(t.post(server.url, b"x", {}, **TIMEOUTS))
        await eventually(lambda: len(server.requests) == 1, what="the request read")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert t.idle() == 0
        await eventually(lambda: server.closed == 1, what="the connection closed")


async def test_a_refused_connection_is_not_sent() -> None:
    """Nothing listening: ``NotSent``, naming the address and the error."""
    async with Server(answering(OK)) as gone:
        url = gone.url
    async with transport() as t:
        with pytest.raises(NotSent, match=r"cannot connect to 127\.0\.0\.1:\d+: ConnectionRefused"):
            await t.post(url, b"x", {}, **TIMEOUTS)


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    """After the server closes a pooled connection, the next call opens a new one."""

    async def answer_then_close(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        writer.close()

    async with Server(answer_then_close) as server, transport() as t:
        await t.post(server.url, b"x", {}, **TIMEOUTS)
        await eventually(lambda: t.idle() == 0, what="the closed connection noticed")
        answer = await t.post(server.url, b"x", {}, **TIMEOUTS)

    assert answer.status == 202 and server.connections == 2


async def test_idle_connections_are_closed_after_the_idle_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection idle for IDLE_SECONDS is closed by the client."""
    monkeypatch.setattr(transport_module, "IDLE_SECONDS", 0.05)
    async with Server(answering(OK)) as server, transport() as t:
        await t.post(server.url, b"x", {}, **TIMEOUTS)
        await eventually(lambda: server.closed == 1, what="the idle connection closed")
        assert t.idle() == 0


async def test_a_line_break_in_a_header_sends_nothing() -> None:
    """A header value holding CR or LF is refused before any connection is made."""
    async with Server(answering(OK)) as server, transport() as t:
        with pytest.raises(Unsendable) as refused:
            await t.post(server.url, b"x", {"Authorization": "Bearer a\r\nX-Evil: 1"}, **TIMEOUTS)

    assert refused.value.where == "header" and "Evil" not in str(refused.value)
    assert server.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http:///x",
        "http://u:p@127.0.0.1/x",
        "http://h:99999/x",
        "http://[::1/x",
        "http://[zz]/x",
    ],
)
async def test_a_url_that_cannot_be_used_sends_nothing(url: str) -> None:
    """A scheme other than http(s), no host, credentials in the URL, a bad port, a URL
    that cannot be read (an unclosed or invalid IPv6 address)."""
    async with transport() as t:
        with pytest.raises(Unsendable) as refused:
            await t.post(url, b"x", {}, **TIMEOUTS)

    assert refused.value.where == "url"


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def tls_server(authority: trustme.CA) -> AsyncIterator[str]:
    """An aiohttp server with a certificate for 127.0.0.1 from ``authority``."""

    async def send(request: web.Request) -> web.Response:
        return web.Response(status=202, headers={"X-Message-Id": "tls-1"})

    app = web.Application()
    app.router.add_post("/v3/mail/send", send)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://127.0.0.1:{port}/v3/mail/send"
    finally:
        await runner.cleanup()


async def test_https_with_a_trusted_certificate_answers(authority: trustme.CA) -> None:
    """Over TLS to a server whose certificate the client's CAs sign: the answer, kept alive."""
    context = ssl.create_default_context()
    authority.configure_trust(context)
    async with tls_server(authority) as url, transport(context) as t:
        first = await t.post(url, b"x", {}, **TIMEOUTS)
        second = await t.post(url, b"x", {}, **TIMEOUTS)
        assert t.idle() == 1

    assert first.status == second.status == 202 and first.header("x-message-id") == "tls-1"


async def test_https_with_an_untrusted_certificate_is_not_sent(authority: trustme.CA) -> None:
    """A certificate no trusted CA signed (the system's CAs): ``NotSent``, certificate named."""
    async with tls_server(authority) as url, transport() as t:
        with pytest.raises(NotSent, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await t.post(url, b"x", {}, **TIMEOUTS)


async def test_a_handshake_that_never_ends_is_a_connect_timeout() -> None:
    """A server that takes the connection and never speaks TLS: ``ConnectTimeout`` at the
    connect share, so the request is known not to have left."""
    never = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await never.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with transport() as t:
            with pytest.raises(ConnectTimeout, match=r"no connection within 0\.1s"):
                await t.post(f"https://127.0.0.1:{port}/x", b"x", {}, total=1.0, connect=0.1)
    finally:
        never.set()
        server.close()
        await server.wait_closed()


class Client(HttpClient):
    title = "Example"

    async def send(self, mail: Mail) -> Result:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        pytest.param(answering(OK), Outcome.ACCEPTED, id="answered"),
        pytest.param(close_unanswered, Outcome.UNKNOWN, id="lost"),
    ],
)
async def test_a_clients_post_gives_the_answer_or_what_its_absence_means(
    script: Script, expected: Outcome
) -> None:
    """``HttpClient.post``: the answer, or ``Unknown`` once the request may have left;
    ``Transient`` when nothing could connect, ``Misconfigured`` for a header it cannot
    send; never the secret."""
    client = Client("example", 2.0)
    try:
        async with Server(script) as server:
            got = await client.post(server.url, b"x", {"Authorization": SECRET}, SECRET)
            bad = await client.post(server.url, b"x", {"Authorization": SECRET + "\n"}, SECRET)
        await eventually(lambda: client.transport.idle() == 0, what="the server's close noticed")
        refused = await client.post(server.url, b"x", {"Authorization": SECRET}, SECRET)
    finally:
        await client.close()

    if expected is Outcome.ACCEPTED:
        assert isinstance(got, Answer) and got.status == 202
    else:
        assert got == Unknown("connection lost before the answer: the server closed the connection")
    assert isinstance(bad, Misconfigured) and "line break" in bad.reason
    assert isinstance(refused, Transient) and refused.reason.startswith("connection error: ")
    assert SECRET not in repr((got, bad, refused))

"""The HTTP edge against a real server on loopback: encodings, slow and vanishing clients, logs.

Timeouts are set small (0.3-0.5 s); every wait is a deadline on a condition
(reading until EOF under ``asyncio.timeout``), never a sleep standing in for
synchronisation. The few sleeps below are a client's own pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import logging
import random
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from mailman.config.logging import MASK, configure_logging
from mailman.system import Mailman, embedded

from ..conftest import eventually, make_config

PROBLEM = "application/problem+json"
MAIL = orjson.dumps({"from": "noreply@example.com", "to": ["ann@example.com"], "content": "Hi Ann"})
#: Slack above a configured timeout for the server to act and the close to reach us.
SLACK = 2.0

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


# --- helpers -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **env: str) -> AsyncIterator[Mailman]:
    async with embedded(make_config(tmp_path, env)) as mailman:
        yield mailman


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[Reader, Writer]]:
    """A raw TCP connection to the server, closed at the end whatever happened."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def send(writer: Writer, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def read_to_eof(reader: Reader, within: float) -> bytes:
    """Everything until the server closes the connection; fails the test after ``within`` s."""
    received = b""
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        pytest.fail(f"the server did not close the connection within {within} s")
    except ConnectionResetError:
        pass  # closed, with our unread bytes: a reset
    return received


async def read_response(reader: Reader, within: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, headers, body)."""
    async with asyncio.timeout(within):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def post(path: str, body: bytes, **headers: str) -> bytes:
    """A raw POST request with a JSON body."""
    fields = {"Host": "mailman", "Content-Type": "application/json", **headers}
    if "Transfer-Encoding" not in fields:
        fields.setdefault("Content-Length", str(len(body)))
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body


GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: mailman\r\n\r\n"


async def trickle(writer: Writer, every: float) -> None:
    """A slow-loris client: one more byte of a header value that never ends, every ``every`` s."""
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing():
            await send(writer, b"a")
            await asyncio.sleep(every)


@contextlib.contextmanager
def json_logs() -> Iterator[io.StringIO]:
    """Logging as production configures it, into a string; the previous set-up restored after."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream, cache=False)
    try:
        yield stream
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


def lines_of(stream: io.StringIO, start: int = 0) -> list[dict[str, Any]]:
    """The log lines written since offset ``start``, each parsed as one JSON object."""
    return [orjson.loads(line) for line in stream.getvalue()[start:].splitlines()]


def compressed(data: bytes, coding: str) -> bytes:
    if coding in ("gzip", "x-gzip"):
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    if coding == "raw-deflate":
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush()
    return data


async def problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = await resp.json(content_type=PROBLEM)
    assert body["status"] == status
    return body


# --- content encodings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("GZIP", "gzip"),
        ("deflate", "deflate"),
        ("deflate", "raw-deflate"),
        ("identity", "identity"),
        (None, "identity"),
    ],
)
async def test_encoded_body_is_decoded_and_stored(
    tmp_path: Path, http: aiohttp.ClientSession, header: str | None, coding: str
) -> None:
    """A gzip, deflate (zlib or raw) or identity body is decoded: 201 and the mail is stored."""
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Content-Encoding"] = header
    async with running(tmp_path) as mailman:
        async with http.post(
            f"{mailman.url}/mail/send", data=compressed(MAIL, coding), headers=headers
        ) as resp:
            assert resp.status == 201, await resp.text()
            mail_id = (await resp.json())["mail"]["id"]
        record = await mailman.store.get(mail_id)
    assert record is not None and record.mail.text == "Hi Ann"


async def test_chunked_gzip_body_is_decoded(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """A gzip body sent chunked, a few bytes per chunk, is decoded like a whole one."""
    packed = gzip.compress(MAIL)

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(packed), 5):
            yield packed[i : i + 5]

    async with (
        running(tmp_path) as mailman,
        http.post(
            f"{mailman.url}/mail/send",
            data=pieces(),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()


@pytest.mark.parametrize(
    ("header", "body"),
    [
        ("gzip", b"this is not gzip"),
        ("gzip", gzip.compress(MAIL, mtime=0)[:-6]),  # truncated
        ("gzip", gzip.compress(MAIL, mtime=0) + b"trailing garbage"),
        ("deflate", b"\xff\xfe not deflate at all"),
        ("deflate", zlib.compress(MAIL)[:-3]),
        ("deflate", zlib.compress(MAIL) + b"zz"),
    ],
)
async def test_badly_encoded_body_is_400(
    tmp_path: Path, http: aiohttp.ClientSession, header: str, body: bytes
) -> None:
    """A body that does not decode with its Content-Encoding is a 400 problem, not a 500."""
    async with running(tmp_path) as mailman:
        async with http.post(
            f"{mailman.url}/mail/send",
            data=body,
            headers={"Content-Type": "application/json", "Content-Encoding": header},
        ) as resp:
            got = await problem(resp, 400)
        assert got["type"].endswith("/bad-request")
        assert await mailman.store.unfinished() == []


@pytest.mark.parametrize("header", ["br", "compress", "zstd", "gzip, deflate", "gzip, gzip"])
async def test_unsupported_encoding_is_415(
    tmp_path: Path, http: aiohttp.ClientSession, header: str
) -> None:
    """Any coding but gzip, deflate or identity, or a list of several, is a 415 naming them."""
    async with (
        running(tmp_path) as mailman,
        http.post(
            f"{mailman.url}/mail/send",
            data=gzip.compress(MAIL),
            headers={"Content-Type": "application/json", "Content-Encoding": header},
        ) as resp,
    ):
        got = await problem(resp, 415)
        assert resp.headers["Accept-Encoding"] == "gzip, deflate"
    assert got["type"].endswith("/unsupported-media-type")


async def test_gzip_bomb_is_413_without_decoding_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A small gzip body that inflates past max_body_bytes is a 413; it is never decoded whole."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(64)) + packer.flush()  # 64 MiB inflated
    limit = 1 << 20
    assert len(bomb) < limit
    async with running(tmp_path, MAILMAN_MAX_BODY_BYTES=str(limit)) as mailman:
        tracemalloc.start()
        try:
            async with http.post(
                f"{mailman.url}/mail/send",
                data=bomb,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            ) as resp:
                got = await problem(resp, 413)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got["type"].endswith("/too-large")
    assert peak < 16 << 20, f"{peak} bytes allocated at the peak"


async def test_encoded_body_past_limit_is_413(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """The limit counts decoded bytes: a gzip body under it on the wire but over it decoded: 413."""
    text = random.Random(7).randbytes(3000).hex()  # 6000 characters, compressible
    body = orjson.dumps({"from": "a@example.com", "to": ["b@example.com"], "content": text})
    packed = gzip.compress(body)
    async with running(tmp_path, MAILMAN_MAX_BODY_BYTES="5000") as mailman:
        assert len(packed) < 5000 < len(body)
        async with http.post(
            f"{mailman.url}/mail/send",
            data=packed,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ) as resp:
            await problem(resp, 413)


async def test_random_encoded_bodies_are_never_a_500(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Random bytes, and valid streams of random bytes, under each coding: 4xx, never a 5xx."""
    rng = random.Random(2024)
    with capture_logs() as logs:
        async with running(tmp_path, MAILMAN_MAX_BODY_BYTES="4096") as mailman:
            for _ in range(40):
                header = rng.choice(["gzip", "deflate", "identity", "br"])
                raw = rng.randbytes(rng.randrange(0, 6000))
                body = compressed(raw, header) if rng.random() < 0.5 else raw
                async with http.post(
                    f"{mailman.url}/mail/send",
                    data=body,
                    headers={"Content-Type": "application/json", "Content-Encoding": header},
                ) as resp:
                    assert resp.status in (400, 413, 415), (header, resp.status)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


# --- stalled bodies --------------------------------------------------------------


async def test_stalled_body_is_408_and_the_connection_closed(tmp_path: Path) -> None:
    """A body silent for body_idle_timeout gets a 408 problem, then the server closes."""
    async with (
        running(tmp_path, MAILMAN_BODY_IDLE_TIMEOUT_SECONDS="0.3") as mailman,
        connection(mailman.port) as (reader, writer),
    ):
        await send(writer, post("/mail/send", MAIL[:10], **{"Content-Length": "200"}))
        status, headers, body = await read_response(reader, within=0.3 + SLACK)
        assert await read_to_eof(reader, within=SLACK) == b""
        assert await mailman.store.unfinished() == []
    assert status == 408
    assert headers["content-type"] == PROBLEM and headers["connection"] == "close"
    assert orjson.loads(body)["type"].endswith("/timeout")


async def test_slow_body_within_idle_timeout_is_accepted(tmp_path: Path) -> None:
    """A body arriving in pieces, each within body_idle_timeout, is read whole: longer is fine."""
    env = {"MAILMAN_BODY_IDLE_TIMEOUT_SECONDS": "1", "MAILMAN_HEADER_TIMEOUT_SECONDS": "0.3"}
    async with running(tmp_path, **env) as mailman, connection(mailman.port) as (reader, writer):
        request = post("/mail/send", MAIL)
        body_at = request.index(b"\r\n\r\n") + 4
        await send(writer, request[:body_at])
        for i in range(body_at, len(request), 20):
            await asyncio.sleep(0.1)  # the client's pace: all of it takes longer than 0.3 s
            await send(writer, request[i : i + 20])
        status, _, body = await read_response(reader)
    assert status == 201, body


# --- slow and idle clients: header timeout, keep-alive ---------------------------


async def test_silent_connection_is_closed_after_header_timeout(tmp_path: Path) -> None:
    """A connection that sends nothing is closed once header_timeout has passed."""
    env = {"MAILMAN_HEADER_TIMEOUT_SECONDS": "0.3", "MAILMAN_KEEPALIVE_SECONDS": "30"}
    with capture_logs() as logs:
        async with (
            running(tmp_path, **env) as mailman,
            connection(mailman.port) as (reader, _),
        ):
            assert await read_to_eof(reader, within=0.3 + SLACK) == b""
    assert [e["event"] for e in logs].count("http.header_timeout") == 1


async def test_slow_loris_headers_are_cut_at_header_timeout(tmp_path: Path) -> None:
    """A client trickling header bytes is disconnected after header_timeout, unanswered."""
    env = {"MAILMAN_HEADER_TIMEOUT_SECONDS": "0.3", "MAILMAN_KEEPALIVE_SECONDS": "30"}
    with capture_logs() as logs:
        async with (
            running(tmp_path, **env) as mailman,
            connection(mailman.port) as (reader, writer),
        ):
            await send(writer, b"GET /health HTTP/1.1\r\nHost: mailman\r\nX-Slow: ")
            loris = asyncio.create_task(trickle(writer, every=0.05))
            try:
                received = await read_to_eof(reader, within=0.3 + SLACK)
            finally:
                loris.cancel()
    assert received == b""
    assert [e["event"] for e in logs].count("http.header_timeout") == 1


async def test_slow_loris_on_a_keepalive_connection_is_cut(tmp_path: Path) -> None:
    """After an answered request, the next request's headers too must arrive in time."""
    env = {"MAILMAN_HEADER_TIMEOUT_SECONDS": "0.3", "MAILMAN_KEEPALIVE_SECONDS": "30"}
    async with running(tmp_path, **env) as mailman, connection(mailman.port) as (reader, writer):
        await send(writer, GET_HEALTH)
        status, _, _ = await read_response(reader)
        assert status == 200
        await send(writer, b"GET /health HTTP/1.1\r\nX-Slow: ")
        loris = asyncio.create_task(trickle(writer, every=0.05))
        try:
            assert await read_to_eof(reader, within=0.3 + SLACK) == b""
        finally:
            loris.cancel()


async def test_headers_arriving_in_pieces_within_the_timeout_are_served(tmp_path: Path) -> None:
    """Headers split over several packets but complete in time: an ordinary answer."""
    env = {"MAILMAN_HEADER_TIMEOUT_SECONDS": "2", "MAILMAN_KEEPALIVE_SECONDS": "30"}
    async with running(tmp_path, **env) as mailman, connection(mailman.port) as (reader, writer):
        for i in range(0, len(GET_HEALTH), 8):
            await send(writer, GET_HEALTH[i : i + 8])
            await asyncio.sleep(0.01)
        status, _, _ = await read_response(reader)
    assert status == 200


async def test_keepalive_connection_outlives_the_header_timeout(tmp_path: Path) -> None:
    """The header deadline counts from a request's first byte: an idle keep-alive gap is fine."""
    env = {"MAILMAN_HEADER_TIMEOUT_SECONDS": "0.3", "MAILMAN_KEEPALIVE_SECONDS": "30"}
    with capture_logs() as logs:
        async with (
            running(tmp_path, **env) as mailman,
            connection(mailman.port) as (reader, writer),
        ):
            await send(writer, GET_HEALTH)
            first, _, _ = await read_response(reader)
            await asyncio.sleep(0.6)  # idle, twice the header timeout, well within keep-alive
            await send(writer, GET_HEALTH)
            second, _, _ = await read_response(reader)
    assert (first, second) == (200, 200)
    assert "http.header_timeout" not in [e["event"] for e in logs]


async def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    """An idle keep-alive connection is closed after keepalive_seconds."""
    env = {"MAILMAN_HEADER_TIMEOUT_SECONDS": "30", "MAILMAN_KEEPALIVE_SECONDS": "0.3"}
    with capture_logs() as logs:
        async with (
            running(tmp_path, **env) as mailman,
            connection(mailman.port) as (reader, writer),
        ):
            await send(writer, GET_HEALTH)
            status, headers, _ = await read_response(reader)
            assert status == 200 and headers.get("connection") != "close"
            assert await read_to_eof(reader, within=0.3 + SLACK) == b""
    assert "http.header_timeout" not in [e["event"] for e in logs]


async def test_clients_on_healthy_connections_are_not_disturbed(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A pooled client sending mails over a while, beyond every small timeout, gets only 201s."""
    env = {
        "MAILMAN_HEADER_TIMEOUT_SECONDS": "0.3",
        "MAILMAN_BODY_IDLE_TIMEOUT_SECONDS": "0.3",
        "MAILMAN_KEEPALIVE_SECONDS": "0.5",
    }
    async with running(tmp_path, **env) as mailman:
        statuses = []
        for _ in range(8):
            async with http.post(
                f"{mailman.url}/mail/send",
                data=MAIL,
                headers={"Content-Type": "application/json"},
            ) as resp:
                statuses.append(resp.status)
            await asyncio.sleep(0.1)  # the client's pace: 0.8 s in all
    assert statuses == [201] * 8


# --- clients that disconnect -------------------------------------------------------


async def test_client_gone_mid_body_is_one_info_line_and_nothing_stored(tmp_path: Path) -> None:
    """A client leaving mid-body is logged once at info (http.client_gone), nothing is stored."""
    with json_logs() as stream:
        async with running(tmp_path) as mailman:
            start = len(stream.getvalue())
            async with connection(mailman.port) as (_, writer):
                await send(writer, post("/mail/send", b"0123456789", **{"Content-Length": "1000"}))

            def gone() -> bool:
                return any(e["event"] == "http.client_gone" for e in lines_of(stream, start))

            await eventually(gone, within=5, what="http.client_gone")
            assert await mailman.store.unfinished() == []
        lines = lines_of(stream, start)
    about = [e for e in lines if e.get("path") == "/mail/send"]
    assert [(e["event"], e["level"], e["status"]) for e in about] == [
        ("http.client_gone", "info", 499)
    ]
    assert not [e for e in lines if e["level"] in ("error", "critical") or "exception" in e]


# --- log format ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100),  # TLS on the HTTP port
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
        b"POST /mail/send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_request_is_at_most_one_log_line(tmp_path: Path, garbage: bytes) -> None:
    """A request aiohttp cannot parse: a 400 problem and at most one JSON log line, no traceback."""
    with json_logs() as stream:
        async with running(tmp_path) as mailman:
            start = len(stream.getvalue())
            async with connection(mailman.port) as (reader, writer):
                await send(writer, garbage)
                answer = await read_to_eof(reader, within=SLACK)
            lines = lines_of(stream, start)
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    assert PROBLEM.encode() in answer
    assert len(lines) <= 1, lines
    for line in lines:
        assert line["level"] == "info" and "exception" not in line


def test_every_log_line_is_one_json_object() -> None:
    """Our events and stdlib records (aiohttp, asyncio) alike: one JSON line, secrets masked."""
    with json_logs() as stream:
        structlog.get_logger("mailman.test").info("ours", api_key="sk-secret", n=1)
        try:
            raise ValueError("boom\nin two lines")
        except ValueError:
            structlog.get_logger("mailman.test").exception("ours.failed")
            logging.getLogger("aiohttp.server").exception("Error handling request from %s", "x")
        logging.getLogger("asyncio").warning("slow callback %s", "cb", extra={"password": "pw"})
        logging.getLogger("aiohttp.access").info("below the library level: not shown")
        text = stream.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert [(e["event"], e["level"], e["logger"]) for e in lines] == [
        ("ours", "info", "mailman.test"),
        ("ours.failed", "error", "mailman.test"),
        ("Error handling request from x", "error", "aiohttp.server"),
        ("slow callback cb", "warning", "asyncio"),
    ]
    assert all(e["timestamp"] for e in lines)
    assert lines[0]["api_key"] == MASK and lines[3]["password"] == MASK
    for traced in lines[1:3]:
        assert (
            traced["exception"].startswith("Traceback")
            and "ValueError: boom" in traced["exception"]
        )
    assert "sk-secret" not in text and 'pw"' not in text

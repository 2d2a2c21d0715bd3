"""``python -m bench.client``: what one provider call costs the sender's process, in CPU.

Starts the fake providers in their own process (``python -m bench.fakes``),
then makes the same SendGrid calls from this process two ways, 32 in flight:

- **aiohttp**: the session a provider client keeps (``actors.providers.http_session``),
  calling ``SendGridClient.send`` exactly as a sender does;
- **minimal**: a bare HTTP/1.1 client on asyncio streams: keep-alive
  connections, the request written in one piece, the answer's status line,
  headers and ``Content-Length`` body read back. No TLS, no chunked bodies,
  no redirects or proxies: a lower bound for what any client must do.

On uvloop, like the service. It prints CPU µs per call (``time.process_time``,
this process only) for each, after a warm-up. The difference is what a leaner client could save
per mail; ``bench/RESULTS.md`` weighs it against what a mail costs in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import orjson

from mailman.config import Secret
from mailman.core.model import Address, Mail
from mailman.providers.sendgrid import SendGridClient, SendGridConfig, body

from .services import start_announcing

CALLS = 6000
WARMUP = 600
IN_FLIGHT = 32

MAIL = Mail(
    id="01JBENCHCLIENT0000000000000",
    sender=Address("noreply@example.com", "Mailman"),
    to=(Address("ann@example.com", "Ann"),),
    subject="Hello",
    text="Hi Ann",
    created_at=0.0,
)


async def _run(call: Callable[[], Awaitable[None]], calls: int) -> float:
    """CPU µs per call of ``calls`` calls, ``IN_FLIGHT`` at a time."""
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return (time.process_time() - started) * 1e6 / calls


async def with_aiohttp(base_url: str, key: str) -> float:
    client = SendGridClient(SendGridConfig(Secret(key), base_url), timeout=10.0)
    await client.start()
    try:

        async def call() -> None:
            result = await client.send(MAIL)
            assert result.__class__.__name__ == "Accepted", result

        await _run(call, WARMUP)
        return await _run(call, CALLS)
    finally:
        await client.close()


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer


async def with_minimal(base_url: str, key: str) -> float:
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"{parts.path.rstrip('/')}/v3/mail/send"
    idle: list[_Connection] = []
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()

    async def call() -> None:
        conn = idle.pop() if idle else _Connection(*await asyncio.open_connection(host, port))
        payload = orjson.dumps(body(MAIL))
        conn.writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(payload), payload))
        status_line = await conn.reader.readline()
        length = 0
        while (line := await conn.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if length:
            await conn.reader.readexactly(length)
        assert status_line.split()[1] == b"202", status_line
        idle.append(conn)

    try:
        await _run(call, WARMUP)
        return await _run(call, CALLS)
    finally:
        for conn in idle:
            conn.writer.close()
            with contextlib.suppress(OSError):
                await conn.writer.wait_closed()


async def main() -> int:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="mailman-client-") as tmp:
        fakes, announced = await start_announcing("fakes", "bench.fakes", Path(tmp) / "fakes.log")
        try:
            url, key = announced["sendgrid"], announced["sendgrid_api_key"]
            for name, measure in (("aiohttp", with_aiohttp), ("minimal", with_minimal)) * 2:
                print(f"{name:8s} {await measure(url, key):7.1f} µs CPU per call")
        finally:
            await fakes.stop()
    return 0


if __name__ == "__main__":
    import uvloop  # what the service runs on

    sys.exit(uvloop.run(main()))

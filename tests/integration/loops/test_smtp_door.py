"""The SMTP door (actors.smtp): timeouts, caps per address, AUTH delay, the memory budget and
every 421 written before the close, on asyncio's event loop and on uvloop, with raw sockets."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailman.config import Config
from mailman.intake.keys import Scope, create_key
from mailman.system import embedded

from ...conftest import make_config


def door_config(tmp_path: Path, env: dict[str, str] | None = None, **smtp: Any) -> Config:
    config = make_config(tmp_path, env)
    return dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, port=0, **smtp))


class Client:
    """A raw SMTP connection: lines in, lines out, nothing hidden."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def reply(self) -> str:
        """The next (multi-line) reply, joined; "" once the server closed."""
        lines: list[str] = []
        while True:
            line = (await self.reader.readline()).decode()
            if not line:
                return "".join(lines)
            lines.append(line)
            if line[3:4] != "-":
                return "".join(lines)

    async def send(self, line: str | bytes) -> str:
        self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return await self.reply()

    async def closed(self) -> bool:
        """True once the server closed the connection (reads to the end)."""
        return await self.reader.read() == b""

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Raw clients opened by a test, closed after it."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def plain(password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(b"\0api\0" + password.encode()).decode()


async def test_an_idle_connection_is_told_421_then_closed(
    tmp_path: Path, clients: list[Client]
) -> None:
    """A connection that sends nothing after EHLO for the idle timeout hears 421 4.4.2, then
    the close."""
    async with embedded(door_config(tmp_path, idle_timeout=0.2)) as mailman:
        client = await Client.open(mailman.smtp_port)
        clients.append(client)
        assert (await client.reply()).startswith("220 ")
        assert (await client.send("EHLO test.example")).startswith("250")
        assert (await client.reply()).startswith("421 4.4.2 ")
        assert await client.closed()


async def test_a_client_that_does_not_authenticate_in_time_is_told_421(
    tmp_path: Path, clients: list[Client]
) -> None:
    """Once a key exists, a connection busy with NOOPs but never authenticated is closed
    with 421 4.4.2 at the AUTH deadline; one that authenticated is not."""
    config = door_config(tmp_path, idle_timeout=30.0, auth_timeout=0.3)
    async with embedded(config) as mailman:
        _, key = await create_key(mailman.store, tenant="acme", scopes=(Scope.SEND,))
        stranger = await Client.open(mailman.smtp_port)
        member = await Client.open(mailman.smtp_port)
        clients += [stranger, member]
        for client in (stranger, member):
            assert (await client.reply()).startswith("220 ")
            assert (await client.send("EHLO test.example")).startswith("250")
        assert (await member.send(plain(key))).startswith("235 ")
        reply = await stranger.reply()
        assert reply.startswith("421 4.4.2 "), reply
        assert await stranger.closed()
        assert (await member.send("NOOP")).startswith("250")


async def test_silent_connections_from_one_address_do_not_lock_out_another(
    tmp_path: Path, clients: list[Client]
) -> None:
    """100 silent connections from 127.0.0.1: 20 are served, the other 80 hear 421 4.7.0 and
    are closed; a client from 127.0.0.2 still gets in and sends."""
    async with embedded(door_config(tmp_path, max_connections_per_ip=20)) as mailman:
        port = mailman.smtp_port
        silent = [await Client.open(port) for _ in range(100)]
        clients += silent
        greetings = [await client.reply() for client in silent]
        assert sum(g.startswith("220 ") for g in greetings) == 20
        refused = [g for g in greetings if not g.startswith("220 ")]
        assert len(refused) == 80
        assert all(g.startswith("421 4.7.0 ") for g in refused), refused[:1]
        other = await Client.open(port, source="127.0.0.2")
        clients.append(other)
        assert (await other.reply()).startswith("220 ")
        assert (await other.send("EHLO test.example")).startswith("250")
        assert (await other.send("MAIL FROM:<shop@example.com>")).startswith("250")
        assert (await other.send("RCPT TO:<ann@example.com>")).startswith("250")
        assert (await other.send("DATA")).startswith("354")
        mail = b"Subject: Hi\r\nFrom: shop@example.com\r\nTo: ann@example.com\r\n\r\nHello\r\n.\r\n"
        assert (await other.send(mail)).startswith("250 2.0.0 Ok: queued as ")


async def test_a_failed_auth_waits_without_holding_up_other_clients(
    tmp_path: Path, clients: list[Client]
) -> None:
    """A wrong key is answered only after the failure delay; meanwhile another client
    connects, authenticates and is served."""
    async with embedded(door_config(tmp_path, auth_failure_delay=60.0)) as mailman:
        _, key = await create_key(mailman.store, tenant="acme", scopes=(Scope.SEND,))
        guesser, member = await Client.open(mailman.smtp_port), await Client.open(mailman.smtp_port)
        clients += [guesser, member]
        for client in (guesser, member):
            assert (await client.reply()).startswith("220 ")
            assert (await client.send("EHLO test.example")).startswith("250")
        guessed = asyncio.create_task(guesser.send(plain("not-a-key")))
        assert (await member.send(plain(key))).startswith("235 ")
        assert (await member.send("NOOP")).startswith("250")
        assert not guessed.done()
        guessed.cancel()


async def test_stopping_writes_421_to_connected_clients(tmp_path: Path) -> None:
    """On stop, a connected client reads 421 4.3.2 before the close (on uvloop too)."""
    async with embedded(door_config(tmp_path)) as mailman:
        client = await Client.open(mailman.smtp_port)
        assert (await client.reply()).startswith("220 ")
        assert (await client.send("EHLO test.example")).startswith("250")
    try:
        assert (await client.reply()).startswith("421 4.3.2 ")
        assert await client.closed()
    finally:
        client.close()


async def test_a_mail_past_the_budget_is_452_and_the_room_comes_back(
    tmp_path: Path, clients: list[Client]
) -> None:
    """With 200 kB of budget (a sender may hold half, each byte charged 4 times): MAIL with
    SIZE=40000 is 452 4.3.1 at once; without SIZE, 40 kB of DATA is read, discarded and
    answered 452 4.3.1; then a small mail on the same connection is taken."""
    config = door_config(tmp_path, {"MAILMAN_MAX_INFLIGHT_BYTES": "200000"})
    async with embedded(config) as mailman:
        client = await Client.open(mailman.smtp_port)
        clients.append(client)
        assert (await client.reply()).startswith("220 ")
        assert "SIZE" in await client.send("EHLO test.example")
        reply = await client.send("MAIL FROM:<shop@example.com> SIZE=40000")
        assert reply.startswith("452 4.3.1 "), reply
        assert (await client.send("MAIL FROM:<shop@example.com>")).startswith("250")
        assert (await client.send("RCPT TO:<ann@example.com>")).startswith("250")
        assert (await client.send("DATA")).startswith("354")
        head = b"Subject: Big\r\nFrom: shop@example.com\r\nTo: ann@example.com\r\n\r\n"
        reply = await client.send(
            head + b"x" * 76 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 500 + b".\r\n"
        )
        assert reply.startswith("452 4.3.1 "), reply
        assert (await client.send("MAIL FROM:<shop@example.com> SIZE=1000")).startswith("250")
        assert (await client.send("RCPT TO:<ann@example.com>")).startswith("250")
        assert (await client.send("DATA")).startswith("354")
        reply = await client.send(head + b"Hello\r\n.\r\n")
        assert reply.startswith("250 2.0.0 Ok: queued as "), reply

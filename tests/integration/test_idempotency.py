"""Idempotency-Key on POST /mail/send, and a 503 (never a 500 or a hang) when the store is down."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
from aiohttp import ClientResponse
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.core.model import Mail
from mailman.store import Idempotency, MailQuery, Store
from mailman.store.mysql import MySQLStore
from mailman.store.sqlite import SQLiteStore

from ..conftest import eventually
from ..support.api import (
    VALID,
    Client,
    CountingOutbound,
    MakeClient,
    client_factory,
    problem,
)
from ..support.proxy import TcpProxy
from .test_store import mysql_server, mysql_url  # noqa: F401  (fixtures)


class GatedStore(SQLiteStore):
    """A SQLite store whose adds wait at a gate: a request held 'still being committed'."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def add(self, mail: Mail, idempotency: Idempotency | None = None) -> str:
        self.waiting.set()
        await self.gate.wait()
        return await super().add(mail, idempotency)


@pytest.fixture
def make_client(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound
) -> MakeClient:
    """Clients of apps on the test's store (or another one given as ``on``)."""
    return client_factory(aiohttp_client, store, outbound, Config())


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def send(
    client: Client, key: str | None, body: object = VALID, raw: bytes | None = None
) -> ClientResponse:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(
        "/mail/send", data=raw if raw is not None else orjson.dumps(body), headers=headers
    )


async def mails_in(store: Store) -> int:
    return len(await store.list_mails(MailQuery(tenant=None, limit=500)))


# --- replay, mismatch, in flight -----------------------------------------------


async def test_repeat_with_same_key_and_body_replays_the_first_answer(
    client: Client, store: Store, outbound: CountingOutbound
) -> None:
    """Same key and body: same status, id, Location and body, Idempotent-Replayed, no new mail."""
    first = await send(client, "order-42")
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers
    # The same JSON with keys in another order and other spacing is the same body.
    again = await send(
        client,
        "order-42",
        raw=b'{"content":"Hi Ann", "subject":"Hello",'
        b' "to":["ann@example.com"],"from":"sender@example.com"}',
    )
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert await again.json() == await first.json()
    assert await mails_in(store) == 1
    assert len(outbound.dispatched) == 1


async def test_same_key_with_another_body_is_422(client: Client, store: Store) -> None:
    """The same key with a different body is a 422 problem; nothing new is stored."""
    assert (await send(client, "k")).status == 201
    body = await problem(await send(client, "k", {**VALID, "subject": "Other"}), 422)
    assert body["type"].endswith("idempotency-key-reused")
    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert await mails_in(store) == 1


async def test_same_key_while_first_is_committing_is_409(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """A repeat while the first request with the key is still being committed gets 409."""
    gated = GatedStore(str(tmp_path / "gated.db"))
    async with gated:
        client = await make_client(on=gated)
        first = asyncio.create_task(send(client, "slow"))
        await asyncio.wait_for(gated.waiting.wait(), 5)
        resp = await send(client, "slow")
        await problem(resp, 409)
        assert resp.headers["Retry-After"] == "1"
        gated.gate.set()
        done = await first
        assert done.status == 201
        again = await send(client, "slow")
        assert again.status == 201
        assert (await again.json()) == (await done.json())
        assert await mails_in(gated) == 1


async def test_fifty_concurrent_identical_posts_make_one_mail(client: Client, store: Store) -> None:
    """50 identical concurrent POSTs with one key store one mail; every 201 names it."""
    answers = await asyncio.gather(*(send(client, "burst") for _ in range(50)))
    statuses = {r.status for r in answers}
    assert statuses <= {201, 409}
    ids = {(await r.json())["mail"]["id"] for r in answers if r.status == 201}
    assert len(ids) == 1
    assert await mails_in(store) == 1


async def test_keys_without_header_are_independent(client: Client, store: Store) -> None:
    """Without Idempotency-Key, two identical POSTs are two mails (as before)."""
    assert (await send(client, None)).status == 201
    assert (await send(client, None)).status == 201
    assert await mails_in(store) == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
async def test_bad_idempotency_key_is_400(client: Client, store: Store, key: str) -> None:
    """A key that is empty, longer than 255 or not printable ASCII is a 400 problem."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    resp = await client.post(
        "/mail/send", data=orjson.dumps(VALID), headers={k: v for k, v in headers.items()}
    )
    body = await problem(resp, 400)
    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert await mails_in(store) == 0


async def test_key_of_255_printable_characters_is_fine(client: Client) -> None:
    """The longest allowed key, with spaces and punctuation, works and replays."""
    key = ("a b~!" * 51)[:255]
    first = await send(client, key)
    again = await send(client, key)
    assert (first.status, again.status) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_key_holds_across_a_restart(
    make_client: MakeClient, tmp_path: Path, outbound: CountingOutbound
) -> None:
    """The key lives in the store: after the store is closed and opened again it still replays."""
    path = str(tmp_path / "restart.db")
    async with SQLiteStore(path) as before:
        first = await send(await make_client(on=before), "survives")
    async with SQLiteStore(path) as after:
        again = await send(await make_client(on=after), "survives")
        assert await mails_in(after) == 1
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json()) == (await first.json())


async def test_key_expires_after_its_ttl(make_client: MakeClient, store: Store) -> None:
    """After MAILMAN_IDEMPOTENCY_TTL_SECONDS the key is free again: a repeat makes a new mail."""
    client = await make_client(dataclasses.replace(Config(), idempotency_ttl=0.2))
    first = await (await send(client, "short")).json()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:  # replays until the key expires, then a new mail
        resp = await send(client, "short")
        assert resp.status == 201
        if "Idempotent-Replayed" not in resp.headers:
            break
        assert loop.time() < deadline, "the key never expired"
        await asyncio.sleep(0.05)
    assert (await resp.json())["mail"]["id"] != first["mail"]["id"]
    assert await mails_in(store) == 2


async def test_key_holds_across_two_replicas_on_mysql(
    make_client: MakeClient,
    mysql_url: str,  # noqa: F811
) -> None:
    """Two API replicas on one MySQL database answer racing repeats with one mail."""
    async with MySQLStore.from_url(mysql_url) as one, MySQLStore.from_url(mysql_url) as two:
        a = await make_client(on=one)
        b = await make_client(on=two)
        answers = await asyncio.gather(*(send(a if i % 2 else b, "replicated") for i in range(20)))
        assert {r.status for r in answers} <= {201, 409}
        ids = {(await r.json())["mail"]["id"] for r in answers if r.status == 201}
        assert len(ids) == 1
        assert await mails_in(one) == 1
        # And a later repeat on either replica replays.
        later = await send(a, "replicated")
        assert later.headers["Idempotent-Replayed"] == "true"


async def test_key_holds_across_two_replicas_on_one_sqlite_file(
    make_client: MakeClient, store: Store, tmp_path: Path
) -> None:
    """Two replicas sharing one SQLite file answer racing repeats with one mail."""
    async with SQLiteStore(str(tmp_path / "mailman.db")) as second:
        a = await make_client()
        b = await make_client(on=second)
        answers = await asyncio.gather(*(send(a if i % 2 else b, "shared") for i in range(20)))
        ids = {(await r.json())["mail"]["id"] for r in answers if r.status == 201}
        assert len(ids) == 1
        assert await mails_in(store) == 1


# --- the store unreachable -----------------------------------------------------


async def test_locked_sqlite_store_answers_503_quickly(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """A SQLite file another process holds locked: POST answers 503 with Retry-After, no hang."""
    path = tmp_path / "locked.db"
    async with SQLiteStore(str(path)) as locked:
        client = await make_client(dataclasses.replace(Config(), store_timeout=0.3), on=locked)
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            async with asyncio.timeout(5):
                resp = await send(client, None)
            body = await problem(resp, 503)
            assert body["type"].endswith("store-unavailable")
            assert int(resp.headers["Retry-After"]) >= 1
        finally:
            blocker.rollback()
            blocker.close()


async def test_unreachable_mysql_answers_503_never_500(
    make_client: MakeClient,
    mysql_url: str,  # noqa: F811
) -> None:
    """With the MySQL server cut off, every /mail endpoint answers 503 quickly; then recovers."""
    parts = urlsplit(mysql_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 3306) as proxy:
        via = urlunsplit(
            parts._replace(netloc=f"{parts.netloc.split('@')[0]}@127.0.0.1:{proxy.port}")
        )
        if "@" not in parts.netloc:
            via = urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))
        async with MySQLStore.from_url(via) as store:
            client = await make_client(dataclasses.replace(Config(), store_timeout=1.0), on=store)
            ok = await send(client, None)
            assert ok.status == 201
            mail_id = (await ok.json())["mail"]["id"]
            proxy.cut()
            async with asyncio.timeout(10):
                for resp in (
                    await send(client, None),
                    await client.get(f"/mail/{mail_id}/status"),
                    await client.get(f"/mail/{mail_id}"),
                    await client.get("/mail"),
                    await client.get("/health"),
                ):
                    body = await problem(resp, 503)
                    assert "Retry-After" in resp.headers
                    assert "password" not in orjson.dumps(body).decode()
            proxy.restore()

            async def recovered() -> bool:
                return (await client.get(f"/mail/{mail_id}/status")).status == 200

            await eventually(recovered, within=10, what="the store to answer again")

"""Back pressure: POST /mail/send answers 503 while the backlog of unsent mail is full."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import pytest
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.core.messages import StatusUpdate
from mailman.core.model import Status
from mailman.intake.backlog import RETRY_AFTER_SECONDS, Backlog
from mailman.routes import BACKLOG
from mailman.store import Store

from ..conftest import eventually
from ..support.api import VALID, Client, CountingOutbound, client_factory, problem

LIMIT = 3


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound) -> Client:
    config = dataclasses.replace(Config(), backlog_limit=LIMIT)
    return await client_factory(aiohttp_client, store, outbound, config)()


def test_backlog_is_full_at_its_limit_and_never_without_one() -> None:
    """A backlog is full from its limit on (counted plus accepted since); limit 0 never."""
    backlog = Backlog(limit=3)
    backlog.counted_now(2)
    assert not backlog.full()
    backlog.accepted()
    assert backlog.full() and backlog.size == 3
    backlog.counted_now(1)  # a new count replaces what was added since the last one
    assert not backlog.full()
    unlimited = Backlog(limit=0)
    unlimited.counted_now(10**9)
    assert not unlimited.full()


async def test_a_full_backlog_refuses_new_mail_until_it_drains(
    client: Client, store: Store, outbound: CountingOutbound
) -> None:
    """Past the limit: 503 backlog-full with Retry-After, nothing stored; once sent, 201 again."""
    ids = []
    for _ in range(LIMIT):
        resp = await client.post("/mail/send", json=VALID)
        assert resp.status == 201
        ids.append((await resp.json())["mail"]["id"])

    resp = await client.post("/mail/send", json=VALID)
    body = await problem(resp, 503)
    assert body["type"].endswith("/backlog-full")
    assert resp.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert await store.backlog() == LIMIT  # the refused mail was not stored
    assert len(outbound.dispatched) == LIMIT

    now = time.time()
    await store.apply([StatusUpdate(mail_id, Status.SENT, now) for mail_id in ids])
    assert await store.backlog() == 0

    async def accepted_again() -> bool:
        resp = await client.post("/mail/send", json=VALID)
        return resp.status == 201

    await eventually(accepted_again, within=5, what="a 201 once the backlog was counted again")


async def test_scheduled_mails_are_no_part_of_the_backlog(
    client: Client, store: Store, outbound: CountingOutbound
) -> None:
    """Mails waiting for their send_at neither fill the backlog nor wake a sender."""
    later = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    for _ in range(LIMIT):
        resp = await client.post("/mail/send", json={**VALID, "send_at": later})
        assert resp.status == 201
        assert (await resp.json())["mail"]["status"] == "scheduled"
    assert client.app[BACKLOG].size == 0
    assert await store.backlog() == 0
    assert outbound.dispatched == []
    resp = await client.post("/mail/send", json=VALID)
    assert resp.status == 201

"""Bounded memory: request bodies are charged to the process's in-flight budget before they
are read (intake.budget, routes.body); past it, or past a key's half, 503 with Retry-After."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.intake.budget import COST_FACTOR, Budget, OverBudget, owner_of
from mailman.intake.keys import Scope, create_key
from mailman.routes import create_app
from mailman.routes.body import BodyLimits, read_body
from mailman.routes.errors import OVER_BUDGET
from mailman.store import MailQuery, Store

from ..support.api import VALID, Client, CountingOutbound, problem

#: 40 kB of budget: one key may hold 20 kB, a body of 5 kB at 4x.
LIMIT = 40_000


def big_mail(size: int) -> dict[str, Any]:
    """A valid mail whose JSON is about ``size`` bytes."""
    return {**VALID, "content": "x" * size}


@pytest.fixture
def budget() -> Budget:
    return Budget(LIMIT)


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound, budget: Budget
) -> Client:
    config = dataclasses.replace(Config(), max_inflight_bytes=LIMIT)
    app = create_app(store=store, outbound=outbound, config=config, budget=budget)
    return await aiohttp_client(app)


def test_the_budget_refuses_past_its_limit_and_past_an_owners_half() -> None:
    """Holds add up to the limit, one owner to half of it; a release gives the room back;
    limit 0 never refuses."""
    budget = Budget(1000, factor=1)
    first = budget.hold("key:a")
    first.reserve(500)
    with pytest.raises(OverBudget) as own:
        budget.hold("key:a").reserve(1)
    assert not own.value.whole
    second = budget.hold("key:b")
    second.reserve(400)
    with pytest.raises(OverBudget) as whole:
        budget.hold("key:c").reserve(101)
    assert whole.value.whole and whole.value.retry_after > 0
    first.release()
    first.release()  # twice: nothing more
    assert budget.used == 400 and budget.holds("key:a") == 0
    budget.hold("key:a").reserve(500)
    unlimited = Budget(0)
    unlimited.hold("key:a").reserve(10**12)


async def test_a_body_past_the_keys_share_is_503_with_retry_after(
    client: Client, store: Store, budget: Budget
) -> None:
    """A 6 kB mail (24 kB charged, the share is 20 kB) is refused before it is read: 503
    problem+json with Retry-After; nothing is stored and nothing is held after."""
    async with client.post("/mail/send", json=big_mail(6000)) as resp:
        body = await problem(resp, 503)
        assert body["type"] == OVER_BUDGET
        assert int(resp.headers["Retry-After"]) > 0
    assert await store.list_mails(MailQuery(tenant=None, limit=10)) == []
    assert budget.used == 0
    async with client.post("/mail/send", json=big_mail(3000)) as resp:
        assert resp.status == 201, await resp.text()
    assert budget.used == 0  # released once answered


async def test_one_key_may_hold_half_and_another_key_still_gets_in(
    client: Client, store: Store, budget: Budget
) -> None:
    """While one key holds half the budget, its next body is 503; another key's is taken."""
    first, first_secret = await create_key(store, tenant="a", scopes=(Scope.SEND,))
    _, second_secret = await create_key(store, tenant="b", scopes=(Scope.SEND,))
    busy = budget.hold(owner_of(first.id, None))
    busy.charge(budget.owner_limit)  # a request of that key being read elsewhere
    try:
        headers = {"Authorization": f"Bearer {first_secret}"}
        async with client.post("/mail/send", json=VALID, headers=headers) as resp:
            assert (await problem(resp, 503))["type"] == OVER_BUDGET
        headers = {"Authorization": f"Bearer {second_secret}"}
        async with client.post("/mail/send", json=VALID, headers=headers) as resp:
            assert resp.status == 201, await resp.text()
    finally:
        busy.release()
    assert budget.used == 0


async def test_a_chunked_body_is_refused_once_it_grows_past_the_budget(
    client: Client, budget: Budget
) -> None:
    """Without a Content-Length the body is charged as it arrives; past the share it is a 503."""
    raw = orjson.dumps(big_mail(8000))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 1000):
            yield raw[start : start + 1000]

    headers = {"Content-Type": "application/json"}
    async with client.post("/mail/send", data=chunks(), headers=headers) as resp:
        assert "Content-Length" not in resp.request_info.headers
        assert (await problem(resp, 503))["type"] == OVER_BUDGET
        assert "Retry-After" in resp.headers
    assert budget.used == 0


async def test_the_sendgrid_endpoint_answers_503_in_its_own_shape(
    client: Client, budget: Budget
) -> None:
    """On the SendGrid-compatible endpoint the refusal is SendGrid's errors shape, with
    Retry-After."""
    mail = {
        "personalizations": [{"to": [{"email": "ann@example.com"}]}],
        "from": {"email": "sender@example.com"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "x" * 6000}],
    }
    async with client.post("/v3/mail/send", json=mail) as resp:
        assert resp.status == 503, await resp.text()
        assert "Retry-After" in resp.headers
        body = await resp.json()
        assert body["errors"] and "memory" in body["errors"][0]["message"]
    assert budget.used == 0


async def test_every_body_is_charged_at_the_cost_factor(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound
) -> None:
    """A handler reading a body holds its length times the cost factor until it answers."""
    budget = Budget(10**9)
    seen: list[int] = []
    app = create_app(store=store, outbound=outbound, config=Config(), budget=budget)

    async def probe(request: web.Request) -> web.Response:
        await read_body(request, BodyLimits(10**6))
        seen.append(budget.used)
        return web.Response()

    app.router.add_post("/probe", probe)
    client = await aiohttp_client(app)
    async with client.post("/probe", data=b"z" * 1234) as resp:
        assert resp.status == 200
    assert seen == [1234 * COST_FACTOR]
    assert budget.used == 0


async def test_the_mailgun_endpoint_answers_503_in_its_own_shape(
    client: Client, budget: Budget
) -> None:
    """On the Mailgun-compatible endpoint the refusal is Mailgun's {"message": ...}, with
    Retry-After."""
    form = {
        "from": "sender@example.com",
        "to": "ann@example.com",
        "subject": "Hello",
        "text": "x" * 6000,
    }
    async with client.post("/v3/example.com/messages", data=form) as resp:
        assert resp.status == 503, await resp.text()
        assert "Retry-After" in resp.headers
        body = await resp.json()
        assert "memory" in body["message"]
    assert budget.used == 0

"""The suppression endpoints: GET, POST and DELETE /suppressions, each tenant's list its
own, bad input a 4xx naming the field; on SQLite and on MySQL."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.intake.keys import Scope, create_key
from mailman.store import Store

from ..support.api import VALID, Client, CountingOutbound, client_factory, problem


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, any_store: Store, outbound: CountingOutbound
) -> Client:
    config = dataclasses.replace(Config(), key_cache_seconds=0.0)
    return await client_factory(aiohttp_client, any_store, outbound, config)()


async def bearer(store: Store, tenant: str, *scopes: Scope) -> dict[str, str]:
    _, secret = await create_key(store, tenant=tenant, scopes=scopes or (Scope.SEND,))
    return {"Authorization": f"Bearer {secret}"}


async def add(client: Client, auth: dict[str, str], **body: Any) -> tuple[int, dict[str, Any]]:
    async with client.post("/suppressions", json=body, headers=auth) as resp:
        return resp.status, await resp.json(content_type=None)


async def listing(client: Client, auth: dict[str, str], query: str = "") -> dict[str, Any]:
    async with client.get(f"/suppressions{query}", headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_post_adds_once_and_get_lists_the_tenants_own(
    client: Client, any_store: Store
) -> None:
    """POST answers 201 with the address lower-cased (manual by default), 200 with it as
    it was when repeated; each tenant's key lists its own list alone."""
    acme, beta = await bearer(any_store, "acme"), await bearer(any_store, "beta")
    status, added = await add(client, acme, address="Ann@Example.COM")
    assert status == 201
    shown = added["suppression"]
    assert {k: shown[k] for k in ("address", "reason", "tenant", "group", "source")} == {
        "address": "ann@example.com",
        "reason": "manual",
        "tenant": "acme",
        "group": None,
        "source": "api",
    }
    assert await add(client, acme, address="ann@example.com", reason="bounce") == (200, added)
    assert (await add(client, beta, address="bob@example.com", reason="complaint"))[0] == 201

    assert [s["address"] for s in (await listing(client, acme))["suppressions"]] == [
        "ann@example.com"
    ]
    assert [s["tenant"] for s in (await listing(client, beta))["suppressions"]] == ["beta"]


async def test_get_pages_with_a_cursor_and_filters_by_reason(
    client: Client, any_store: Store
) -> None:
    """limit=2 pages through five addresses in order via next; ?reason= keeps one reason."""
    acme = await bearer(any_store, "acme")
    for n in range(5):
        reason = "bounce" if n % 2 else "unsubscribe"
        assert (await add(client, acme, address=f"u{n}@example.com", reason=reason))[0] == 201
    seen: list[str] = []
    page = await listing(client, acme, "?limit=2")
    while True:
        seen += [s["address"] for s in page["suppressions"]]
        if "next" not in page:
            break
        assert page["next"].startswith("/suppressions?")
        page = await listing(client, acme, page["next"].removeprefix("/suppressions"))
    assert seen == [f"u{n}@example.com" for n in range(5)]
    bounced = await listing(client, acme, "?reason=bounce")
    assert [s["address"] for s in bounced["suppressions"]] == ["u1@example.com", "u3@example.com"]


async def test_delete_removes_and_is_404_when_absent(client: Client, any_store: Store) -> None:
    """DELETE answers 204 and the address is gone; again (or another tenant's) 404."""
    acme, beta = await bearer(any_store, "acme"), await bearer(any_store, "beta")
    await add(client, acme, address="ann@example.com")
    async with client.delete("/suppressions/ann@example.com", headers=beta) as resp:
        await problem(resp, 404)
    async with client.delete("/suppressions/ANN@example.com", headers=acme) as resp:
        assert resp.status == 204
    async with client.delete("/suppressions/ann@example.com", headers=acme) as resp:
        await problem(resp, 404)
    assert (await listing(client, acme))["suppressions"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address": "not an address"}, "address"),
        ({"address": "Ann <ann@example.com>"}, "address"),
        ({"address": 7}, "address"),
        ({}, "address"),
        ({"address": "ann@example.com", "reason": "bored"}, "reason"),
        ({"address": "ann@example.com", "adress": "x"}, "adress"),
    ],
)
async def test_post_refuses_bad_input_naming_the_field(
    client: Client, any_store: Store, body: dict[str, Any], field: str
) -> None:
    """A bad address, a reason not in the set or an unknown field is a 422 naming it."""
    acme = await bearer(any_store, "acme")
    async with client.post("/suppressions", json=body, headers=acme) as resp:
        answer = await problem(resp, 422)
    assert field in [e["field"] for e in answer["errors"]]
    assert (await listing(client, acme))["suppressions"] == []


async def test_bad_queries_are_400_naming_the_parameter(client: Client, any_store: Store) -> None:
    """A bad reason, limit or cursor is a 400 naming each."""
    acme = await bearer(any_store, "acme")
    async with client.get("/suppressions?reason=x&limit=0&cursor=zz", headers=acme) as resp:
        answer = await problem(resp, 400)
    assert sorted(e["field"] for e in answer["errors"]) == ["cursor", "limit", "reason"]


async def test_only_an_admin_names_another_tenant(client: Client, any_store: Store) -> None:
    """A tenant's key naming another tenant is 403; an admin key lists every tenant's,
    adds to and removes from the one it names."""
    acme = await bearer(any_store, "acme")
    admin = await bearer(any_store, "ops", Scope.ADMIN)
    status, _ = await add(client, acme, address="ann@example.com", tenant="beta")
    assert status == 403
    async with client.get("/suppressions?tenant=beta", headers=acme) as resp:
        await problem(resp, 403)
    assert (await add(client, admin, address="bob@example.com", tenant="beta"))[0] == 201
    assert (await add(client, acme, address="ann@example.com"))[0] == 201
    every = await listing(client, admin)
    assert [(s["tenant"], s["address"]) for s in every["suppressions"]] == [
        ("acme", "ann@example.com"),
        ("beta", "bob@example.com"),
    ]
    assert len((await listing(client, admin, "?tenant=beta"))["suppressions"]) == 1
    async with client.delete("/suppressions/bob@example.com?tenant=beta", headers=admin) as resp:
        assert resp.status == 204


async def test_a_read_key_lists_but_cannot_add(client: Client, any_store: Store) -> None:
    """Listing needs read; adding and removing need send."""
    reader = await bearer(any_store, "acme", Scope.READ)
    assert (await listing(client, reader))["suppressions"] == []
    status, _ = await add(client, reader, address="ann@example.com")
    assert status == 403


async def test_a_mail_to_suppressed_addresses_only_is_answered_suppressed(
    client: Client, any_store: Store, outbound: CountingOutbound
) -> None:
    """POST /mail/send to a suppressed address alone answers 201 ``suppressed`` and hands
    nothing on; GET /mail/{id} names the address and its reason."""
    acme = await bearer(any_store, "acme")
    await add(client, acme, address="ann@example.com", reason="complaint")
    async with client.post("/mail/send", json=VALID, headers=acme) as resp:
        assert resp.status == 201
        mail = (await resp.json())["mail"]
    assert mail["status"] == "suppressed"
    assert outbound.dispatched == []
    async with client.get(f"/mail/{mail['id']}", headers=acme) as resp:
        shown = (await resp.json())["mail"]
    assert shown["status"] == "suppressed" and shown["submitted"]["to"] == []
    assert shown["suppressed"] == [{"email": "ann@example.com", "reason": "complaint"}]

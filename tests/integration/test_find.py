"""Finding mails: GET /mail by recipient, tag, metadata, status and time, on SQLite and
MySQL, through the API; the side tables retention empties; an upgraded store; the
indexes each query reads (EXPLAIN)."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from mailman import main
from mailman.config import Config
from mailman.core.messages import StatusUpdate, encode
from mailman.core.model import Address, Mail, Status
from mailman.intake.keys import Scope, create_key
from mailman.store import MailQuery, Store
from mailman.store.dialect import Dialect
from mailman.store.finding import find
from mailman.store.mysql import MySQLStore
from mailman.store.operation import Engine, Statement, Steps, read, write
from mailman.store.retention import stub
from mailman.store.sqlite import SQLiteStore

from ..support.api import VALID, Client, CountingOutbound, client_factory, problem
from . import test_store as contract
from .test_store import MakeStore

# The contract's fixtures: every test here runs on SQLite and on a fresh MySQL database.
make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url

#: The schema before mails could be found by recipient, tag and metadata (1..12).
BEFORE_FIND = 12


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, store: Store) -> Client:
    return await client_factory(aiohttp_client, store, CountingOutbound(), Config())()


async def key(store: Store, tenant: str = "acme", scope: Scope = Scope.SEND) -> dict[str, str]:
    """The Authorization header of a new key."""
    _, secret = await create_key(store, tenant=tenant, scopes=(scope,))
    return {"Authorization": f"Bearer {secret}"}


async def send(client: Client, auth: dict[str, str], **fields: Any) -> str:
    """A mail sent through POST /mail/send (VALID with ``fields``); its id."""
    resp = await client.post(
        "/mail/send",
        data=orjson.dumps({**VALID, **fields}),
        headers={"Content-Type": "application/json", **auth},
    )
    assert resp.status == 201, await resp.text()
    mail_id: str = (await resp.json())["mail"]["id"]
    return mail_id


async def found(client: Client, auth: dict[str, str], query: str) -> list[str]:
    """The ids GET /mail?``query`` lists (one page)."""
    resp = await client.get(f"/mail?{query}", headers=auth)
    assert resp.status == 200, await resp.text()
    return [m["id"] for m in (await resp.json())["mails"]]


# --- each filter -----------------------------------------------------------------------


async def test_recipient_finds_to_cc_and_bcc_in_any_case(client: Client, store: Store) -> None:
    """recipient finds the mails with the address in to, cc or bcc, whatever its case."""
    auth = await key(store)
    to = await send(client, auth, to=["Ann <Ann@Example.com>"])
    cc = await send(client, auth, to=["bob@example.com"], cc=["ann@example.com"])
    bcc = await send(client, auth, to=["bob@example.com"], bcc=["ANN@EXAMPLE.COM"])
    await send(client, auth, to=["bob@example.com"], reply_to="ann@example.com")
    assert await found(client, auth, "recipient=ann@example.com") == [bcc, cc, to]
    assert await found(client, auth, "recipient=aNN%40exAMPLE.com") == [bcc, cc, to]
    assert len(await found(client, auth, "recipient=bob@example.com")) == 3
    assert await found(client, auth, "recipient=carl@example.com") == []


async def test_tag_and_metadata_find_exactly(client: Client, store: Store) -> None:
    """tag and metadata_key=metadata_value find the mails with exactly that tag or value."""
    auth = await key(store)
    welcome = await send(client, auth, tags=["welcome", "onboarding"], metadata={"order": "42"})
    await send(client, auth, tags=["welcome-back"], metadata={"order": "420"})
    spaced = await send(client, auth, tags=["Welcome"], metadata={"order": "42 ", "ref": "42"})
    assert await found(client, auth, "tag=welcome") == [welcome]
    assert await found(client, auth, "tag=Welcome") == [spaced]
    assert await found(client, auth, "tag=onboarding") == [welcome]
    assert await found(client, auth, "metadata_key=order&metadata_value=42") == [welcome]
    assert await found(client, auth, "metadata_key=order&metadata_value=42%20") == [spaced]
    assert await found(client, auth, "metadata_key=ref&metadata_value=42") == [spaced]
    assert await found(client, auth, "metadata_key=Order&metadata_value=42") == []


async def test_a_long_metadata_value_is_kept_but_not_found(client: Client, store: Store) -> None:
    """A metadata value up to 255 characters is found; a longer one is kept, not indexed."""
    auth = await key(store)
    short = await send(client, auth, metadata={"note": "é" * 255})
    long = await send(client, auth, metadata={"note": "x" * 256})
    query = urlencode({"metadata_key": "note", "metadata_value": "é" * 255})
    assert await found(client, auth, query) == [short]
    assert await store.list_mails(MailQuery("acme", 10, metadata=("note", "x" * 256))) == []
    resp = await client.get(f"/mail/{long}", headers=auth)
    assert (await resp.json())["mail"]["submitted"]["metadata"] == {"note": "x" * 256}


async def test_filters_combine_with_and(client: Client, store: Store) -> None:
    """recipient, tag, metadata, status, since and until together: only a mail meeting
    every one is listed."""
    auth = await key(store)
    ann = {"to": ["ann@example.com"]}
    match = await send(client, auth, **ann, tags=["welcome"], metadata={"order": "42"})
    other_tag = await send(client, auth, **ann, tags=["bye"], metadata={"order": "42"})
    other_value = await send(client, auth, **ann, tags=["welcome"], metadata={"order": "7"})
    other_to = await send(
        client, auth, to=["bob@example.com"], tags=["welcome"], metadata={"order": "42"}
    )
    for mail_id in (match, other_tag, other_value, other_to):
        await store.apply([StatusUpdate(mail_id, Status.SENT, time.time())])
    queued = await send(client, auth, **ann, tags=["welcome"], metadata={"order": "42"})
    every = "recipient=ann@example.com&tag=welcome&metadata_key=order&metadata_value=42"
    assert await found(client, auth, every) == [queued, match]
    assert await found(client, auth, every + "&status=sent") == [match]
    assert await found(client, auth, every + "&status=sent&until=2000-01-01T00:00Z") == []
    assert await found(client, auth, every + "&status=sent&since=2000-01-01T00:00Z") == [match]
    assert await found(client, auth, "tag=welcome&metadata_key=order&metadata_value=42") == [
        queued,
        other_to,
        match,
    ]
    assert await found(client, auth, "tag=welcome&status=queued") == [queued]


async def test_time_range_applies_to_every_index(client: Client, store: Store) -> None:
    """since (inclusive) and until (exclusive) bound the listing by creation time, whichever
    index drives it."""
    auth = await key(store)
    for n in range(4):
        await store.add(
            Mail(
                id=f"t{n}",
                sender=Address("from@example.com"),
                to=(Address("ann@example.com"),),
                subject="s",
                text="t",
                created_at=1_700_000_000.0 + 60 * n,  # 2023-11-14T22:13:20Z + n minutes
                tenant="acme",
                tags=("welcome",),
                metadata=(("order", "42"),),
            )
        )
    window = "since=2023-11-14T22:14:20Z&until=2023-11-14T22:16:20Z"
    for filters in ("", "recipient=ann@example.com&", "tag=welcome&", "status=queued&"):
        assert await found(client, auth, filters + window) == ["t2", "t1"], filters
    metadata = "metadata_key=order&metadata_value=42&"
    assert await found(client, auth, metadata + window) == ["t2", "t1"]


# --- who sees what ---------------------------------------------------------------------


async def test_a_key_finds_only_its_tenants_mails(client: Client, store: Store) -> None:
    """A tenant's key finds its own mails only; an admin's every tenant's, or one with
    tenant; another key naming a tenant not its own is 403."""
    acme, globex = await key(store, "acme"), await key(store, "globex")
    admin = await key(store, "ops", Scope.ADMIN)
    ours = await send(client, acme, tags=["welcome"], metadata={"order": "1"})
    theirs = await send(client, globex, tags=["welcome"], metadata={"order": "1"})
    for query in (
        "recipient=ann@example.com",
        "tag=welcome",
        "metadata_key=order&metadata_value=1",
    ):
        assert await found(client, acme, query) == [ours], query
        assert await found(client, globex, query) == [theirs], query
        assert await found(client, admin, query) == [theirs, ours], query
        assert await found(client, admin, query + "&tenant=globex") == [theirs], query
    assert await found(client, acme, "tenant=acme") == [ours]
    body = await problem(await client.get("/mail?tenant=globex", headers=acme), 403)
    assert "admin" in body["detail"]


async def test_pages_of_a_search_return_each_mail_once(client: Client, store: Store) -> None:
    """Following next with a filter walks the matching mails newest first, each once; next
    keeps the filters."""
    auth = await key(store)
    mine = [await send(client, auth, cc=["zoe@example.com"]) for _ in range(5)]
    await send(client, auth)
    seen: list[str] = []
    url: str | None = "/mail?recipient=zoe@example.com&limit=2"
    while url is not None:
        resp = await client.get(url, headers=auth)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        seen += [m["id"] for m in page["mails"]]
        url = page.get("next")
        assert url is None or ("recipient=zoe%40example.com" in url and "limit=2" in url)
    assert seen == mine[::-1]


async def test_compatible_endpoints_mails_are_found(client: Client, store: Store) -> None:
    """A mail sent through the SendGrid-compatible endpoint is found by its recipient, its
    categories (tags) and custom_args (metadata)."""
    auth = await key(store)
    body = {
        "personalizations": [{"to": [{"email": "Ann@example.com"}], "custom_args": {"order": "9"}}],
        "from": {"email": "sender@example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hi Ann"}],
        "categories": ["receipt"],
    }
    resp = await client.post(
        "/v3/mail/send",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", **auth},
    )
    assert resp.status == 202, await resp.text()
    mail_id = resp.headers["X-Message-Id"]
    for query in (
        "recipient=ann@example.com",
        "tag=receipt",
        "metadata_key=order&metadata_value=9",
    ):
        assert await found(client, auth, query) == [mail_id], query


# --- bad queries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("recipient=ann", "recipient"),
        ("recipient=ann@example.com%20bob@example.com", "recipient"),
        ("tag=%20welcome", "tag"),
        ("tag=" + "t" * 129, "tag"),
        ("tag=caf%C3%A9", "tag"),
        ("metadata_key=bad%20key&metadata_value=1", "metadata_key"),
        ("metadata_value=42", "metadata_key"),
        ("metadata_key=order", "metadata_value"),
        ("metadata_key=order&metadata_value=" + "x" * 256, "metadata_value"),
        ("recipeint=ann@example.com", "recipeint"),
        ("tenant=" + "a" * 65, "tenant"),
        ("tag=a&tag=b", "tag"),
        ("cursor=MDFIWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo", "cursor"),  # an id alone (before)
        ("cursor=bmFufmFiYw", "cursor"),  # nan~abc
    ],
)
async def test_bad_parameters_are_400_naming_them(
    client: Client, store: Store, query: str, field: str
) -> None:
    """A bad, unknown or repeated parameter, or half a metadata pair, is a 400 naming it."""
    body = await problem(await client.get(f"/mail?{query}", headers=await key(store)), 400)
    assert [e["field"] for e in body["errors"]] == [field]


# --- retention -------------------------------------------------------------------------


@read
def _side_rows(d: Dialect) -> Steps[tuple[int, int]]:
    counts = []
    for table in ("mail_recipients", "mail_labels"):
        (count,) = (yield Statement(f"SELECT COUNT(*) FROM {table}")).fetchone()
        counts.append(int(count))
    return counts[0], counts[1]


async def test_a_purged_mail_is_found_by_nothing_it_held(client: Client, store: Store) -> None:
    """After the body retention a mail is listed still, but no recipient, tag or metadata
    finds it: its side rows are gone."""
    assert isinstance(store, Engine)
    auth = await key(store)
    kept = await send(client, auth, tags=["welcome"], metadata={"order": "42"})
    purged = await send(client, auth, tags=["welcome"], metadata={"order": "42"})
    await store.apply([StatusUpdate(purged, Status.SENT, time.time())])
    assert await store.run(_side_rows) == (2, 4)
    assert await store.purge_bodies(time.time() + 1, time.time()) == 1
    assert await store.run(_side_rows) == (1, 2)
    for query in (
        "recipient=ann@example.com",
        "tag=welcome",
        "metadata_key=order&metadata_value=42",
    ):
        assert await found(client, auth, query) == [kept], query
    assert await found(client, auth, "") == [purged, kept]


async def test_dropped_and_erased_mails_leave_no_side_rows(
    client: Client, store: Store, request: pytest.FixtureRequest
) -> None:
    """The record retention, DELETE /mail/{id} and mailman erase --address delete a
    mail's recipients and labels with it."""
    assert isinstance(store, Engine)
    auth = await key(store)
    ids = [await send(client, auth, to=[f"p{n}@example.com"], tags=["t"]) for n in range(3)]
    await store.apply([StatusUpdate(i, Status.SENT, time.time()) for i in ids])
    assert (await client.delete(f"/mail/{ids[0]}", headers=auth)).status == 204
    assert await store.run(_side_rows) == (2, 2)
    if isinstance(store, MySQLStore):
        url = request.getfixturevalue("mysql_url")
    else:
        assert isinstance(store, SQLiteStore)
        url = f"sqlite:///{store.path}"
    out = io.StringIO()
    code = await asyncio.to_thread(
        main, ["erase", "--address", "P1@example.com"], {"MAILMAN_STORE": url}, out=out
    )
    assert code == 0, out.getvalue()
    assert await store.run(_side_rows) == (1, 1)
    assert await found(client, auth, "recipient=p1@example.com") == []
    assert await store.drop_records(time.time() + 1) == 1
    assert await store.run(_side_rows) == (0, 0)
    assert await found(client, auth, "tag=t") == []


# --- an upgraded store -----------------------------------------------------------------


@write
def _plant(d: Dialect) -> Steps[None]:
    """Mails as the code before finding stored them (schema 12), written directly."""
    old = [
        Mail(
            id="u1",
            sender=Address("from@example.com"),
            to=(Address("Ann@Example.com", "Ann"), Address("bob@example.com")),
            cc=(Address("ann@example.com"),),  # the same address twice: one row
            bcc=(Address("carl@example.com"),),
            subject="s",
            text="t",
            created_at=1000.0,
            tenant="acme",
            tags=("welcome", "onboarding"),
            metadata=(("order", "42"), ("note", "n" * 256)),
        ),
        Mail(
            id="u2",
            sender=Address("from@example.com"),
            to=(Address("carl@example.com"),),
            subject="s",
            created_at=1001.0,
            tenant="globex",
        ),
        stub("u3", 1002.0, "acme"),  # purged before the upgrade
    ]
    for mail in old:
        yield Statement(
            "INSERT INTO mails (id, status, payload, created_at, updated_at, tenant) "
            f"VALUES ({d.marks(6)})",
            (mail.id, "sent", encode(mail).decode(), mail.created_at, mail.created_at, mail.tenant),
        )


async def test_an_upgraded_store_finds_the_mails_it_had(make_store: MakeStore) -> None:
    """A store with mails from before finding (schema 12) opens with their recipients, tags
    and short metadata values found, each once, per tenant."""
    async with make_store(upto=BEFORE_FIND) as older:
        assert isinstance(older, Engine)
        await older.run(_plant)
    async with make_store() as store:
        assert isinstance(store, Engine)
        assert await store.run(_side_rows) == (4, 3)  # ann, bob, carl; carl: 2 tags, order

        async def ids(**query: Any) -> list[str]:
            return [m.id for m in await store.list_mails(MailQuery(limit=10, **query))]

        assert await ids(tenant="acme", recipient="ANN@example.com") == ["u1"]
        assert await ids(tenant=None, recipient="carl@example.com") == ["u2", "u1"]
        assert await ids(tenant="acme", tag="onboarding") == ["u1"]
        assert await ids(tenant="acme", metadata=("order", "42")) == ["u1"]
        assert await ids(tenant="acme", metadata=("note", "n" * 256)) == []
        assert await ids(tenant="acme") == ["u3", "u1"]


# --- the indexes -----------------------------------------------------------------------

#: Each query shape, and the index that must drive it.
SHAPES: dict[str, tuple[MailQuery, str]] = {
    "tenant": (MailQuery(tenant="t1", limit=10), "mails_by_tenant_time"),
    "tenant, time": (
        MailQuery(tenant="t1", limit=10, since=1.0, until=2e9, before=(2e9, "z")),
        "mails_by_tenant_time",
    ),
    "tenant, status": (
        MailQuery(tenant="t1", limit=10, status=Status.SENT),
        "mails_by_tenant_status",
    ),
    "admin": (MailQuery(tenant=None, limit=10), "mails_by_time"),
    "admin, status": (MailQuery(tenant=None, limit=10, status=Status.SENT), "mails_by_status"),
    "recipient": (
        MailQuery(tenant="t1", limit=10, recipient="r7@example.com", since=1.0),
        "mail_recipients_by_address",
    ),
    "recipient, all": (
        MailQuery(
            tenant="t1",
            limit=10,
            recipient="r7@example.com",
            status=Status.SENT,
            tag="g3",
            metadata=("order", "7"),
            until=2e9,
        ),
        "mail_recipients_by_address",
    ),
    "admin, recipient": (
        MailQuery(tenant=None, limit=10, recipient="r7@example.com"),
        "mail_recipients_by_address",
    ),
    "tag": (MailQuery(tenant="t1", limit=10, tag="g3"), "mail_labels_by_label"),
    "tag, status": (
        MailQuery(tenant="t1", limit=10, tag="g3", status=Status.QUEUED),
        "mail_labels_by_label",
    ),
    "metadata": (
        MailQuery(tenant="t1", limit=10, metadata=("order", "7"), tag="g3"),
        "mail_labels_by_label",
    ),
}


@read
def _explain(d: Dialect, query: MailQuery) -> Steps[list[Any]]:
    statement = find(d, query)
    prefix = "EXPLAIN QUERY PLAN " if d.one_writer else "EXPLAIN "
    return list((yield Statement(prefix + statement.sql, statement.params)).fetchall())


async def test_each_filter_reads_an_index_not_the_table(store: Store) -> None:
    """EXPLAIN (SQLite's query plan, MySQL's) of each filter: its index drives it, every
    other table is read by its primary key, nothing is scanned whole, and only an admin's
    search by recipient across tenants is sorted (that address's mails alone)."""
    assert isinstance(store, Engine)
    for n in range(400):
        await store.add(
            Mail(
                id=f"e{n:04d}",
                sender=Address("from@example.com"),
                to=(Address(f"r{n % 20}@example.com"),),
                subject="s",
                created_at=1_700_000_000.0 + n,
                tenant=f"t{n % 4}",
                tags=(f"g{n % 10}",),
                metadata=(("order", str(n % 50)),),
            )
        )
    mysql = isinstance(store, MySQLStore)
    for name, (query, index) in SHAPES.items():
        plan = await store.run(_explain, query)
        sorted_ok = name == "admin, recipient"
        if mysql:
            # id, select_type, table, type, possible_keys, key, key_len, ref, rows, Extra
            driver, *joined = plan
            assert driver[5] == index and driver[3] in ("ref", "range", "index"), (name, plan)
            assert driver[3] != "index" or name == "admin", (name, plan)
            for row in joined:
                assert (row[3], row[5]) == ("eq_ref", "PRIMARY"), (name, plan)
            assert all(row[3] != "ALL" for row in plan), (name, plan)
            assert sorted_ok or "filesort" not in (driver[9] or ""), (name, plan)
        else:
            details = [row[3] for row in plan]
            assert details[0].startswith(("SEARCH", "SCAN")), (name, details)
            assert f"INDEX {index}" in details[0], (name, details)
            assert details[0].startswith("SEARCH") or name == "admin", (name, details)
            for detail in details[1:]:
                assert detail.startswith("SEARCH") or "TEMP B-TREE" in detail, (name, details)
                assert "PRIMARY KEY" in detail or "autoindex" in detail or "B-TREE" in detail
            orders = [d for d in details if "TEMP B-TREE FOR ORDER BY" in d]
            assert sorted_ok or not orders, (name, details)

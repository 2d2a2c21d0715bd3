"""API keys, scopes, tenants, rate limits and the mail listing, against a real SQLite store."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientResponse
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from mailman import main
from mailman.config import Config
from mailman.core.messages import StatusUpdate
from mailman.core.model import Status
from mailman.intake.keys import Scope, create_key, hash_secret
from mailman.store import MailQuery, Store
from mailman.store.sqlite import SQLiteStore

from ..conftest import eventually, sqlite_store
from ..support.api import (
    VALID,
    Client,
    CountingOutbound,
    MakeClient,
    client_factory,
    problem,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_client(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound
) -> MakeClient:
    """Clients of apps on the test's store (or another one given as ``on``)."""
    return client_factory(
        aiohttp_client, store, outbound, dataclasses.replace(Config(), key_cache_seconds=0.2)
    )


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def key(store: Store, tenant: str = "acme", *scopes: Scope, rate: float | None = None) -> str:
    """A new key's secret."""
    _, secret = await create_key(store, tenant=tenant, scopes=scopes or (Scope.SEND,), rate=rate)
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def send(
    client: Client, secret: str | None, body: object = VALID, **headers: str
) -> ClientResponse:
    auth = bearer(secret) if secret else {}
    return await client.post(
        "/mail/send",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", **auth, **headers},
    )


async def sent_id(client: Client, secret: str | None, body: object = VALID) -> str:
    resp = await send(client, secret, body)
    assert resp.status == 201, await resp.text()
    mail_id: str = (await resp.json())["mail"]["id"]
    return mail_id


# --- the keys command ------------------------------------------------------------


def test_keys_create_prints_the_key_alone_and_list_never_shows_it(tmp_path: Path) -> None:
    """`mailman keys create` prints only the key on stdout; list shows ids, never keys."""
    env = {"MAILMAN_STORE": sqlite_store(tmp_path / "k.db")}
    out, err = io.StringIO(), io.StringIO()
    argv = ["create", "--tenant", "acme", "--scope", "read", "--scope", "send", "--rate", "5"]
    assert main(["keys", *argv], env, out=out, err=err) == 0
    secret = out.getvalue()
    assert secret.endswith("\n") and secret.count("\n") == 1
    secret = secret.strip()
    assert secret.startswith("mm_") and len(secret) >= 3 + 43  # 256 bits in base64url
    listing = io.StringIO()
    assert main(["keys", "list"], env, out=listing, err=io.StringIO()) == 0
    table = listing.getvalue()
    assert secret not in table and secret not in err.getvalue()
    assert "acme" in table and "read,send" in table and "5/s" in table
    key_id = table.splitlines()[1].split()[0]
    assert main(["keys", "revoke", key_id], env, out=io.StringIO(), err=io.StringIO()) == 0
    assert main(["keys", "revoke", "key_nope"], env, out=io.StringIO(), err=io.StringIO()) == 1


def test_keys_command_refuses_bad_input(tmp_path: Path) -> None:
    """A bad store URL or tenant name is exit 2 with a message, no traceback."""
    env = {"MAILMAN_STORE": sqlite_store(tmp_path / "k.db")}
    err = io.StringIO()
    assert main(["keys", "--store", "foo://x", "list"], env, out=io.StringIO(), err=err) == 2
    assert "unsupported store" in err.getvalue()
    err = io.StringIO()
    assert main(["keys", "create", "--tenant", "a b"], env, out=io.StringIO(), err=err) == 2
    assert "tenant" in err.getvalue()


def test_keys_subcommand_runs_from_the_entry_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mailman keys create` through main() prints the key and exits 0."""
    store = sqlite_store(tmp_path / "k.db")
    assert main(["keys", "create", "--tenant", "acme", "--store", store]) == 0
    assert capsys.readouterr().out.startswith("mm_")


def test_no_key_off_loopback_refuses_to_start(tmp_path: Path) -> None:
    """Bound to a non-loopback address with no key in the store, serve exits 2 and says why."""
    env = {
        **os.environ,
        "MAILMAN_LOG_FORMAT": "json",
        "MAILMAN_OUTBOX_DIR": str(tmp_path / "outbox"),
        "MAILMAN_PROVIDERS": "",
    }
    argv = ["serve", "--host", "0.0.0.0", "--port", "0", "--store", f"sqlite:///{tmp_path}/k.db"]
    done = subprocess.run(
        [sys.executable, "-m", "mailman", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "mailman keys create" in done.stderr
    assert "http.listening" not in done.stderr


async def test_open_on_loopback_warns_once(tmp_path: Path) -> None:
    """With no key, the embedded system runs open on loopback and logs one auth.open warning."""
    from mailman.system import embedded

    from ..conftest import make_config

    with capture_logs() as logs:
        async with embedded(make_config(tmp_path)) as mailman:
            assert mailman.ready.is_set()
    assert [e["log_level"] for e in logs if e["event"] == "auth.open"] == ["warning"]


# --- 401 / 403 / 404 -----------------------------------------------------------


async def test_open_api_without_keys(client: Client) -> None:
    """While the store holds no key, requests without one are served (the local default)."""
    assert (await send(client, None)).status == 201


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/mail/send"),
        ("GET", "/mail"),
        ("GET", "/mail/01HXXXXXXXXXXXXXXXXXXXXXXX"),
        ("GET", "/mail/01HXXXXXXXXXXXXXXXXXXXXXXX/status"),
        ("POST", "/mail/01HXXXXXXXXXXXXXXXXXXXXXXX/sent"),
        ("POST", "/mail/01HXXXXXXXXXXXXXXXXXXXXXXX/failed"),
    ],
)
async def test_missing_key_is_401_once_a_key_exists(
    client: Client, store: Store, method: str, path: str
) -> None:
    """Once a key exists, every /mail endpoint without one answers 401 with a Bearer challenge."""
    await key(store)
    resp = await client.request(method, path)
    body = await problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "mm_" not in orjson.dumps(body).decode()


async def test_unknown_and_malformed_keys_are_401(client: Client, store: Store) -> None:
    """An unknown key, or a non-Bearer Authorization, is 401; the key is not echoed or logged."""
    await key(store)
    with capture_logs() as logs:
        resp = await send(client, "mm_not-a-real-key")
        body = await problem(resp, 401)
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert "mm_not-a-real-key" not in orjson.dumps(body).decode()
    assert "mm_not-a-real-key" not in repr(logs)
    resp = await client.post("/mail/send", headers={"Authorization": "Basic dXNlcjpwdw=="})
    await problem(resp, 401)


async def test_health_and_openapi_need_no_key(client: Client, store: Store) -> None:
    """/health stays public when keys exist."""
    await key(store)
    assert (await client.get("/health")).status == 200


async def test_scopes_decide_what_a_key_may_do(client: Client, store: Store) -> None:
    """read may not send (403); send may not mark mails (403); admin may."""
    reader = await key(store, "acme", Scope.READ)
    sender = await key(store, "acme", Scope.SEND)
    admin = await key(store, "acme", Scope.ADMIN)
    body = await problem(await send(client, reader), 403)
    assert "send" in body["detail"]
    mail_id = await sent_id(client, sender)
    assert (await client.get(f"/mail/{mail_id}", headers=bearer(reader))).status == 200
    assert (await client.get(f"/mail/{mail_id}/status", headers=bearer(sender))).status == 200
    await problem(await client.post(f"/mail/{mail_id}/sent", headers=bearer(sender)), 403)
    resp = await client.post(f"/mail/{mail_id}/sent", headers=bearer(admin))
    assert resp.status == 200
    assert (await resp.json())["mail"]["status"] == "sent"


async def test_another_tenants_mail_is_404(client: Client, store: Store) -> None:
    """A mail of another tenant answers 404 exactly like an unknown id; admins see every tenant."""
    acme = await key(store, "acme")
    other = await key(store, "globex", Scope.SEND)
    admin = await key(store, "ops", Scope.ADMIN)
    mail_id = await sent_id(client, acme)
    for path in (f"/mail/{mail_id}", f"/mail/{mail_id}/status"):
        auth = bearer(other)
        foreign = await problem(await client.get(path, headers=auth), 404)
        missing = await problem(
            await client.get(
                path.replace(mail_id, "01HZZZZZZZZZZZZZZZZZZZZZZZ"), headers=bearer(other)
            ),
            404,
        )
        assert foreign == missing
        assert (await client.get(path, headers=bearer(admin))).status == 200
    loaded = await store.load(mail_id)
    assert loaded is not None and loaded[0].tenant == "acme"


async def test_revocation_takes_effect_within_the_cache_time(client: Client, store: Store) -> None:
    """A revoked key is refused (401) once the replica's key cache expires (0.2 s here)."""
    secret = await key(store)
    assert (await send(client, secret)).status == 201
    (listed,) = await store.keys()
    await store.revoke_key(listed.id, time.time())

    async def refused() -> bool:
        return (await send(client, secret)).status == 401

    await eventually(refused, within=3.0, what="the revoked key to be refused")


async def test_last_use_is_recorded(client: Client, store: Store) -> None:
    """Using a key records its last use in the store (written by the janitor, not the request)."""
    secret = await key(store)
    before = time.time()
    assert (await send(client, secret)).status == 201

    async def touched() -> bool:
        (listed,) = await store.keys()
        return listed.last_used_at is not None and listed.last_used_at >= before

    await eventually(touched, within=5.0, what="last_used_at to be written")


async def test_store_keeps_only_the_hash(store: Store, tmp_path: Path) -> None:
    """The store file holds the SHA-256 of a key, never the key itself."""
    secret = await key(store)
    await store.close()
    raw = (tmp_path / "mailman.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("mailman.db-*")
    )
    assert secret.encode() not in raw
    assert hashlib.sha256(secret.encode()).hexdigest() == hash_secret(secret)
    assert hash_secret(secret).encode() in raw


# --- rate limits ---------------------------------------------------------------


async def test_rate_limit_per_key_answers_429_with_headers(client: Client, store: Store) -> None:
    """A key with --rate 2 sends a burst of 2; the third gets 429, Retry-After, RateLimit-*."""
    secret = await key(store, rate=2)
    other = await key(store, rate=2)
    first = await send(client, secret)
    assert first.status == 201
    assert first.headers["RateLimit-Limit"] == "2"
    assert first.headers["RateLimit-Remaining"] == "1"
    assert (await send(client, secret)).status == 201
    refused = await send(client, secret)
    body = await problem(refused, 429)
    assert body["type"].endswith("rate-limited")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= 1
    assert (await send(client, other)).status == 201  # buckets are per key
    assert len(await store.list_mails(MailQuery(tenant="acme", limit=10))) == 3


async def test_default_rate_limit_applies_to_keys_without_their_own(
    make_client: MakeClient, store: Store
) -> None:
    """MAILMAN_RATE_LIMIT applies to keys made without --rate; --rate 0 means unlimited."""
    client = await make_client(dataclasses.replace(Config(), rate_limit=1.0))
    limited = await key(store)
    unlimited = await key(store, rate=0)
    assert (await send(client, limited)).status == 201
    assert (await send(client, limited)).status == 429
    for _ in range(3):
        resp = await send(client, unlimited)
        assert resp.status == 201
        assert "RateLimit-Limit" not in resp.headers


async def test_rate_limit_holds_across_replicas(
    make_client: MakeClient, store: Store, tmp_path: Path
) -> None:
    """Two API replicas sharing one store share each key's bucket: the burst is not doubled."""
    async with SQLiteStore(str(tmp_path / "mailman.db")) as second_store:
        a = await make_client()
        b = await make_client(on=second_store)
        secret = await key(store, rate=3)
        answers = [(await send(replica, secret)).status for replica in (a, b, a, b, a, b)]
    assert answers.count(201) == 3
    assert answers.count(429) == 3


# --- GET /mail -----------------------------------------------------------------


async def test_list_is_per_tenant_newest_first_with_links(client: Client, store: Store) -> None:
    """GET /mail lists the caller's own mails, newest first, with links; no next at the end."""
    acme = await key(store, "acme")
    other = await key(store, "globex")
    ids = [await sent_id(client, acme) for _ in range(3)]
    await sent_id(client, other)
    resp = await client.get("/mail", headers=bearer(acme))
    assert resp.status == 200
    body = await resp.json()
    assert [m["id"] for m in body["mails"]] == ids[::-1]
    assert "next" not in body
    first = body["mails"][0]
    assert first["status"] == "queued"
    assert first["created_at"].endswith("Z")
    assert {"self": f"/mail/{ids[-1]}", "status": f"/mail/{ids[-1]}/status"} in first["links"]


async def test_list_walk_returns_each_mail_once_while_new_ones_arrive(
    client: Client, store: Store
) -> None:
    """Following next page by page returns every earlier mail exactly once, despite new mails."""
    secret = await key(store)
    before = [await sent_id(client, secret) for _ in range(7)]
    seen: list[str] = []
    url: str | None = "/mail?limit=2"
    while url is not None:
        resp = await client.get(url, headers=bearer(secret))
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        seen.extend(m["id"] for m in page["mails"])
        await sent_id(client, secret)  # a new mail arrives between pages
        url = page.get("next")
        assert url is None or "limit=2" in url
    assert sorted(seen) == sorted(before)
    assert len(seen) == len(set(seen))


async def test_list_filters_by_status_and_time(client: Client, store: Store) -> None:
    """status, since and until filter the listing; filters are kept in next."""
    secret = await key(store)
    ids = [await sent_id(client, secret) for _ in range(3)]
    await store.apply([StatusUpdate(mail_id=ids[0], status=Status.SENT, at=time.time())])
    resp = await client.get("/mail?status=sent", headers=bearer(secret))
    assert [m["id"] for m in (await resp.json())["mails"]] == [ids[0]]
    resp = await client.get("/mail?status=queued&limit=1", headers=bearer(secret))
    page = await resp.json()
    assert [m["id"] for m in page["mails"]] == [ids[2]]
    assert "status=queued" in page["next"]
    resp = await client.get("/mail?until=2000-01-01T00:00:00Z", headers=bearer(secret))
    assert (await resp.json())["mails"] == []
    resp = await client.get("/mail?since=2000-01-01T00:00:00Z", headers=bearer(secret))
    assert len((await resp.json())["mails"]) == 3


@pytest.mark.parametrize(
    "query",
    [
        "limit=501",
        "limit=0",
        "limit=x",
        "status=lost",
        "since=yesterday",
        "cursor=%%%",
        "cursor=AAAA",
    ],
)
async def test_list_refuses_bad_queries_with_400(client: Client, query: str) -> None:
    """A bad limit, status, time or cursor is a 400 problem naming the parameter."""
    body = await problem(await client.get(f"/mail?{query}"), 400)
    assert body["errors"][0]["field"] == query.split("=")[0]


async def test_list_for_admin_covers_every_tenant(client: Client, store: Store) -> None:
    """An admin key lists every tenant's mails."""
    acme = await key(store, "acme")
    other = await key(store, "globex")
    admin = await key(store, "ops", Scope.ADMIN)
    ids = {await sent_id(client, acme), await sent_id(client, other)}
    resp = await client.get("/mail", headers=bearer(admin))
    assert {m["id"] for m in (await resp.json())["mails"]} == ids


async def test_concurrent_requests_keep_tenants_apart(client: Client, store: Store) -> None:
    """Many concurrent sends from two tenants each land under their own tenant."""
    a, b = await key(store, "a"), await key(store, "b")
    answers = await asyncio.gather(*(send(client, a if i % 2 else b) for i in range(20)))
    assert all(r.status == 201 for r in answers)
    resp = await client.get("/mail", headers=bearer(a))
    assert len((await resp.json())["mails"]) == 10


async def test_key_ids_come_from_the_one_id_source(store: Store) -> None:
    """A key's id is ``key_`` and a ULID from ``core.ids``, like a mail's id: time-ordered."""
    first, _ = await create_key(store, tenant="acme", scopes=(Scope.SEND,))
    second, _ = await create_key(store, tenant="acme", scopes=(Scope.SEND,))
    for key in (first, second):
        assert re.fullmatch(r"key_[0-9A-HJKMNP-TV-Z]{26}", key.id), key.id
    assert first.id < second.id

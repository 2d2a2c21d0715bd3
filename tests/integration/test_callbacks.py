"""Status callbacks: signed POSTs of each status change, retried, never in delivery's way,
and never to an address that is not public (server-side request forgery)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from pytest_aiohttp import AiohttpClient

from mailman.actors.callbacks import SIGNATURE_HEADER, Notifier, sign, signature_header, verify
from mailman.config import CallbackConfig, Config, Secret, is_loopback
from mailman.core.callbacks import binds_loopback, url_problem
from mailman.core.messages import StatusUpdate
from mailman.core.model import Address, Attempt, DeliveryEvent, EventKind, Mail, Outcome, Status
from mailman.intake.keys import Scope, create_key
from mailman.intake.resolve import GuardedResolver, UnsafeDestination, resolution_problem
from mailman.routes import INTAKE, create_app
from mailman.store import CallbackDue, Store
from mailman.system import embedded

from ..conftest import eventually, make_config
from ..support.api import VALID, CountingOutbound, problem
from .test_store import make_store, mysql_server, mysql_url  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-test-0123456789"


# --- helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    path: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(self.body)
        return loaded


class Receiver:
    """A real HTTP server on loopback that takes callbacks.

    ``/hook`` answers ``answers`` in turn, then 200 (or, with ``hang``, never
    until the receiver stops); ``/redirect`` answers 302 to ``/elsewhere``.
    """

    def __init__(self, answers: Sequence[int] = (), *, hang: bool = False) -> None:
        self.answers = list(answers)
        self.hang = hang
        self.calls: list[Call] = []
        self.hanging = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _hook(self, request: web.Request) -> web.Response:
        self.calls.append(Call(request.path, dict(request.headers), await request.read()))
        if self.hang:
            self.hanging += 1
            await self._release.wait()
        return web.Response(status=self.answers.pop(0) if self.answers else 200)

    async def _redirect(self, request: web.Request) -> web.Response:
        self.calls.append(Call(request.path, dict(request.headers), await request.read()))
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/redirect", self._redirect)
        app.router.add_route("*", "/elsewhere", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    def release(self) -> None:
        """Let the calls that hang answer (200)."""
        self._release.set()

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def on(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    def statuses(self) -> list[str]:
        return [c.json()["status"] for c in self.on("/hook")]


class FixedResolver(AbstractResolver):
    """Resolves names from a table (what a DNS server would answer), nothing else."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = dict(table)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        pass


def docs_verify() -> Callable[..., bool]:
    """The ``verify`` function docs/callbacks.md's Signature section shows, as written."""
    text = (ROOT / "docs" / "callbacks.md").read_text(encoding="utf-8")
    section = re.search(r"^## Signature.*?(?=^## |\Z)", text, flags=re.M | re.S)
    assert section is not None, "docs/callbacks.md has no '## Signature' section"
    block = re.search(r"^```python\n(.*?)^```", section[0], flags=re.M | re.S)
    assert block is not None, "the Signature section has no ```python block"
    namespace: dict[str, Any] = {}
    exec(block[1], namespace)
    found: Callable[..., bool] = namespace["verify"]
    return found


def callback_env(**extra: str) -> dict[str, str]:
    return {
        "MAILMAN_CALLBACK_SECRET": SECRET,
        "MAILMAN_CALLBACK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "MAILMAN_CALLBACK_INTERVAL_SECONDS": "0.02",
        "MAILMAN_CALLBACK_RETRY_BASE_SECONDS": "0.05",
        "MAILMAN_CALLBACK_RETRY_CAP_SECONDS": "0.2",
        "MAILMAN_CALLBACK_TIMEOUT_SECONDS": "2",
        **extra,
    }


async def send(http: aiohttp.ClientSession, url: str, **fields: Any) -> str:
    async with http.post(f"{url}/mail/send", json={**VALID, **fields}) as resp:
        assert resp.status == 201, await resp.text()
        mail_id: str = (await resp.json())["mail"]["id"]
        return mail_id


async def status_of(http: aiohttp.ClientSession, url: str, mail_id: str) -> str:
    async with http.get(f"{url}/mail/{mail_id}/status") as resp:
        status: str = (await resp.json())["mail"]["status"]
        return status


# --- end to end: the embedded system, a receiver on loopback ----------------------------------


async def test_each_status_change_is_posted_signed_in_order(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A sent mail POSTs sending then sent, each signed so that the docs' verify accepts it."""
    config = make_config(tmp_path, callback_env())
    async with Receiver() as receiver, embedded(config) as mailman:
        mail_id = await send(http, mailman.url, callback_url=receiver.url())
        await eventually(lambda: "sent" in receiver.statuses(), what="the sent callback")
        async with http.get(f"{mailman.url}/mail/{mail_id}") as resp:
            shown = (await resp.json())["mail"]
    assert receiver.statuses() == ["sending", "sent"]
    check = docs_verify()
    ids = []
    for call in receiver.on("/hook"):
        assert call.headers["Content-Type"] == "application/json"
        header = call.headers[SIGNATURE_HEADER]
        assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
        assert check(SECRET, header, call.body)
        assert verify(SECRET, header, call.body)
        assert not check("another-secret", header, call.body)
        assert not check(SECRET, header, call.body.replace(b"sen", b"SEN"))
        body = call.json()
        assert set(body) == {"id", "mail_id", "status", "at", "reason", "provider"}
        assert body["mail_id"] == mail_id
        ids.append(body["id"])
    assert ids == sorted(set(ids))
    sent = receiver.on("/hook")[-1].json()
    assert sent["provider"] == "outbox"
    assert sent["at"] == shown["updated_at"]
    assert shown["submitted"]["callback_url"] == receiver.url()


async def test_a_receiver_that_fails_gets_the_same_callback_again(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A 500 and a 503 are retried with the same id; the later change waits its turn."""
    config = make_config(tmp_path, callback_env())
    async with Receiver(answers=[500, 503]) as receiver, embedded(config) as mailman:
        await send(http, mailman.url, callback_url=receiver.url())
        await eventually(lambda: "sent" in receiver.statuses(), what="the sent callback")
    bodies = [c.json() for c in receiver.on("/hook")]
    assert [b["status"] for b in bodies] == ["sending", "sending", "sending", "sent"]
    assert len({b["id"] for b in bodies[:3]}) == 1
    assert bodies[3]["id"] > bodies[0]["id"]


async def test_a_receiver_that_never_answers_does_not_delay_delivery(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The mail is sent while its first callback still hangs at the receiver."""
    config = make_config(tmp_path, callback_env(MAILMAN_CALLBACK_TIMEOUT_SECONDS="30"))
    async with Receiver(hang=True) as receiver, embedded(config) as mailman:
        started = time.monotonic()
        mail_id = await send(http, mailman.url, callback_url=receiver.url())

        async def sent() -> bool:
            return await status_of(http, mailman.url, mail_id) == "sent"

        await eventually(sent, what="the mail sent")
        took = time.monotonic() - started
        await eventually(lambda: receiver.hanging > 0, what="a callback at the receiver")
        assert receiver.hanging == 1  # one at a time per mail: 'sent' waits behind 'sending'
        receiver.release()
    assert took < 5


async def test_redirects_are_not_followed(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """A 302 is a failed try: tried again later, and its Location is never called."""
    config = make_config(tmp_path, callback_env())
    async with Receiver() as receiver, embedded(config) as mailman:
        await send(http, mailman.url, callback_url=receiver.url("/redirect"))
        await eventually(lambda: len(receiver.on("/redirect")) >= 2, what="a second try")
    assert receiver.on("/elsewhere") == []


async def test_no_notifier_runs_without_a_secret(tmp_path: Path) -> None:
    """Without MAILMAN_CALLBACK_SECRET no notifier is started (there is nothing to sign with)."""
    async with embedded(make_config(tmp_path)) as mailman:
        assert mailman.supervisor is not None
        names = [spec.name for spec in mailman.supervisor.children]
    assert "notifier" not in names
    async with embedded(make_config(tmp_path, callback_env())) as mailman:
        assert mailman.supervisor is not None
        assert "notifier" in [spec.name for spec in mailman.supervisor.children]


# --- submission: what callback_url may be ---------------------------------------------------

MakeClient = Callable[..., Any]


def guarded_config(**changes: Any) -> Config:
    """The secure defaults: a secret, no private addresses."""
    fields: dict[str, Any] = {"secret": Secret(SECRET), **changes}
    return Config(callbacks=CallbackConfig(**fields))


@pytest.fixture
def make_client(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound
) -> MakeClient:
    """Clients of apps on the test's store whose callback hosts resolve from ``dns``."""

    async def make(config: Config, dns: Mapping[str, Sequence[str]] | None = None) -> Any:
        app = create_app(store=store, outbound=outbound, config=config)
        app[INTAKE].resolver = FixedResolver(
            dns if dns is not None else {"hooks.example.com": ["93.184.215.14"]}
        )
        return await aiohttp_client(app)

    return make


async def refused(client: Any, url: object, headers: Mapping[str, str] | None = None) -> str:
    """The message of the 422 that POST /mail/send answers for ``callback_url=url``."""
    resp = await client.post("/mail/send", json={**VALID, "callback_url": url}, headers=headers)
    body = await problem(resp, 422)
    assert body["type"].endswith("/validation")
    assert [e["field"] for e in body["errors"]] == ["callback_url"]
    message: str = body["errors"][0]["message"]
    return message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/x", "loopback"),
        ("https://10.0.0.1/", "private"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://168.63.129.16/", "metadata"),
        ("https://[::1]/", "loopback"),
        ("https://[::ffff:127.0.0.1]/", "loopback"),
        ("https://[2002:a00:1::]/", "private"),  # 6to4 around 10.0.0.1
        ("https://100.64.0.1/", "private"),
        ("https://224.0.0.1/", "public unicast"),
        ("https://0.0.0.0/", "public unicast"),
        ("https://localhost/", "this machine"),
        ("https://hooks.localhost./", "this machine"),
        ("https://2130706433/", "loopback"),  # 127.0.0.1 as one number, by getaddrinfo
        ("https://internal.example.com/", "private"),
        ("https://split.example.com/", "private"),
        ("https://nowhere.example.com/", "could not be resolved"),
        ("ftp://hooks.example.com/", "https"),
        ("https://user:pw@hooks.example.com/", "user or password"),
        ("https://hooks.example.com/a b", "spaces"),
        ("https:///nohost", "host"),
        ("https://hooks.example.com:0/", "port"),
        ("https://hooks.example.com/" + "a" * 2048, "2048"),
        (42, "must be a string"),
    ],
)
async def test_callback_urls_to_private_places_are_refused(
    make_client: MakeClient, url: object, why: str
) -> None:
    """Loopback, private, link-local, metadata and this machine's names are 422 with the field."""
    client = await make_client(
        guarded_config(),
        {
            "hooks.example.com": ["93.184.215.14"],
            "internal.example.com": ["10.20.30.40"],
            "split.example.com": ["93.184.215.14", "fd12::1"],
            "2130706433": ["127.0.0.1"],
        },
    )
    assert why in await refused(client, url)


async def test_a_public_https_callback_is_accepted_and_kept(make_client: MakeClient) -> None:
    """A host that resolves to public addresses only is accepted, and GET shows the URL."""
    client = await make_client(guarded_config())
    url = "https://hooks.example.com/mailman?token=abc"
    resp = await client.post("/mail/send", json={**VALID, "callback_url": url})
    assert resp.status == 201, await resp.text()
    mail_id = (await resp.json())["mail"]["id"]
    shown = await (await client.get(f"/mail/{mail_id}")).json()
    assert shown["mail"]["submitted"]["callback_url"] == url


async def test_plain_http_only_while_the_api_runs_open_on_loopback(
    make_client: MakeClient, store: Store
) -> None:
    """Open on loopback: http is fine. Once a key exists, or off loopback: https only."""
    url = "http://hooks.example.com/hook"
    open_client = await make_client(guarded_config())
    resp = await open_client.post("/mail/send", json={**VALID, "callback_url": url})
    assert resp.status == 201, await resp.text()

    wide = Config(host="0.0.0.0", callbacks=guarded_config().callbacks)
    assert "https" in await refused(await make_client(wide), url)

    _, secret = await create_key(store, tenant="acme", scopes=(Scope.SEND,))
    auth = {"Authorization": f"Bearer {secret}"}
    assert "https" in await refused(open_client, url, auth)
    resp = await open_client.post(
        "/mail/send", json={**VALID, "callback_url": "https://hooks.example.com/"}, headers=auth
    )
    assert resp.status == 201, await resp.text()


async def test_callback_url_needs_a_secret(make_client: MakeClient) -> None:
    """Without MAILMAN_CALLBACK_SECRET a callback_url is refused, naming the setting."""
    client = await make_client(Config())
    assert "MAILMAN_CALLBACK_SECRET" in await refused(client, "https://hooks.example.com/")
    resp = await client.post("/mail/send", json=VALID)
    assert resp.status == 201


async def test_allow_private_lets_callbacks_go_to_private_hosts(make_client: MakeClient) -> None:
    """MAILMAN_CALLBACK_ALLOW_PRIVATE=true accepts private and loopback hosts."""
    client = await make_client(guarded_config(allow_private=True), {})
    for url in ("https://10.0.0.1/", "https://localhost/", "https://[::1]:8443/hook"):
        resp = await client.post("/mail/send", json={**VALID, "callback_url": url})
        assert resp.status == 201, (url, await resp.text())


def test_url_rules_without_dns() -> None:
    """``url_problem`` alone: schemes, hosts, literal addresses, this machine's names."""
    assert url_problem("https://hooks.example.com/x", allow_http=False, allow_private=False) is None
    assert url_problem("HTTPS://Hooks.Example.com/x", allow_http=False, allow_private=False) is None
    assert url_problem("https://8.8.8.8/", allow_http=False, allow_private=False) is None
    assert url_problem("https://[2606:4700::1111]/", allow_http=False, allow_private=False) is None
    assert url_problem("http://8.8.8.8/", allow_http=True, allow_private=False) is None
    assert url_problem("http://10.0.0.1/", allow_http=True, allow_private=True) is None
    problem = url_problem("http://8.8.8.8/", allow_http=False, allow_private=False)
    assert problem is not None and "loopback" in problem  # says when http is allowed
    assert url_problem("https://[fe80::1]/", allow_http=False, allow_private=False) == (
        "must not be a link-local address"
    )
    assert url_problem("https://192.168.1.1/", allow_http=False, allow_private=False) == (
        "must not be a private address"
    )


def test_binds_loopback_agrees_with_the_system_rule() -> None:
    """The core's copy of the loopback rule says what ``mailman.config.is_loopback`` says."""
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert binds_loopback(host) and is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", "192.168.1.2"):
        assert not binds_loopback(host) and not is_loopback(host), host


# --- call time: the address is checked again ---------------------------------------------


async def test_the_guarded_resolver_refuses_any_private_answer() -> None:
    """Every address is checked: one private address among public ones refuses the host."""
    guard = GuardedResolver(
        FixedResolver(
            {
                "public.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
                "mixed.example.com": ["93.184.215.14", "10.0.0.9"],
                "meta.example.com": ["169.254.169.254"],
            }
        )
    )
    found = await guard.resolve("public.example.com", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in found] == [
        "93.184.215.14",
        "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
    ]
    with pytest.raises(UnsafeDestination, match=re.escape("10.0.0.9, a private address")):
        await guard.resolve("mixed.example.com", 443)
    with pytest.raises(UnsafeDestination, match="metadata"):
        await guard.resolve("meta.example.com", 443)
    with pytest.raises(UnsafeDestination, match="this machine"):
        await guard.resolve("localhost", 443)


async def test_submission_resolves_the_host_with_the_system_resolver() -> None:
    """Without a resolver given, the system's resolves: a numeric host is still checked."""
    problem = await resolution_problem("https://2130706433/")
    assert problem is not None and "loopback" in problem


def rows(tmp_path: Path, mail_id: str) -> list[dict[str, Any]]:
    """The mail's callbacks as the SQLite store (``store`` fixture) holds them, oldest first."""
    with contextlib.closing(sqlite3.connect(tmp_path / "mailman.db")) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM callbacks WHERE mail_id = ? ORDER BY id", (mail_id,))
        return [dict(r) for r in found]


def first_error(tmp_path: Path, mail_id: str) -> str | None:
    found = rows(tmp_path, mail_id)
    error: str | None = found[0]["last_error"] if found else None
    return error


async def test_a_host_whose_dns_changed_to_loopback_is_never_called(
    store: Store, tmp_path: Path
) -> None:
    """A host whose DNS turned to loopback after submission is refused before connecting."""
    async with Receiver() as receiver:
        url = receiver.url(host="hooks.example.com")
        await store.add(callback_mail("m1", url))
        await store.transition("m1", Status.FAILED, at=2000.0, reason="test")
        rebound = FixedResolver({"hooks.example.com": ["127.0.0.1"]})
        config = CallbackConfig(secret=Secret(SECRET), interval_seconds=0.01, retry_base_seconds=0)
        async with Notifier(store=store, config=config, resolver=rebound):
            await eventually(lambda: first_error(tmp_path, "m1") is not None, what="a refused try")
        error = first_error(tmp_path, "m1")
        assert error is not None and "127.0.0.1, a loopback address" in error
        assert receiver.calls == []

        config = CallbackConfig(
            secret=Secret(SECRET), allow_private=True, interval_seconds=0.01, retry_base_seconds=0
        )
        async with Notifier(store=store, config=config, resolver=rebound):
            await eventually(lambda: receiver.statuses() == ["failed"], what="the callback")


async def test_a_literal_private_address_is_refused_at_call_time(
    store: Store, tmp_path: Path
) -> None:
    """A URL accepted while private addresses were allowed is refused once they are not."""
    async with Receiver() as receiver:
        await store.add(callback_mail("m1", receiver.url()))
        await store.transition("m1", Status.FAILED, at=2000.0)
        config = CallbackConfig(secret=Secret(SECRET), interval_seconds=0.01)
        async with Notifier(store=store, config=config):
            await eventually(lambda: first_error(tmp_path, "m1") is not None, what="a refused try")
        error = first_error(tmp_path, "m1")
        assert error is not None and error.startswith("refused: the URL must not be a loopback")
        assert receiver.calls == []


async def test_the_window_ends_with_a_given_up_callback(store: Store, tmp_path: Path) -> None:
    """Past the window a failing callback is given up, and the mail's next one goes out."""
    async with Receiver(answers=[500]) as receiver:
        await store.add(callback_mail("m1", receiver.url()))
        await store.transition("m1", Status.FAILED, at=2000.0)
        await store.retry("m1", at=2001.0)
        config = CallbackConfig(
            secret=Secret(SECRET),
            allow_private=True,
            interval_seconds=0.01,
            retry_base_seconds=10,
            window_seconds=1,
        )
        async with Notifier(store=store, config=config):
            await eventually(lambda: receiver.statuses() == ["failed", "queued"], what="both")
        kept = [
            (r["status"], r["outcome"], r["attempts"], r["last_error"])
            for r in rows(tmp_path, "m1")
        ]
        assert kept == [("failed", "gave-up", 1, "answered 500"), ("queued", "delivered", 1, None)]


# --- signatures ----------------------------------------------------------------------------


def test_signature_scheme() -> None:
    """``t=<unix>,v1=<hex HMAC-SHA256 of "<t>." + body>``; stale, altered or foreign ones fail."""
    body = b'{"id":1}'
    header = signature_header(SECRET, 1_700_000_000, body)
    assert header == f"t=1700000000,v1={sign(SECRET, 1_700_000_000, body)}"
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header.endswith(expected)
    assert verify(SECRET, header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body, now=1_700_001_000)  # older than 5 minutes
    assert not verify(SECRET, header, body + b" ", now=1_700_000_000)
    assert not verify("other", header, body, now=1_700_000_000)
    assert not verify(SECRET, "v1=" + expected, body, now=1_700_000_000)
    assert docs_verify()(SECRET, signature_header(SECRET, int(time.time()), body), body)


# --- the store: every change queued once, claimed in order ------------------------------------


def callback_mail(mail_id: str, url: str | None, created_at: float = 1000.0) -> Mail:
    return Mail(
        id=mail_id,
        sender=Address("from@example.com"),
        to=(Address("to@example.com"),),
        subject="hello",
        text="body",
        created_at=created_at,
        callback_url=url,
    )


async def drain(store: Store) -> list[CallbackDue]:
    """Every callback, claimed and marked done one round at a time (a mail's go in order)."""
    now = time.time() + 10**6  # callbacks are queued due at once, by the store's clock
    out: list[CallbackDue] = []
    while claimed := await store.claim_callbacks("drain", 100, 30, now):
        for callback in claimed:
            await store.callback_done(callback.id, now)
        out.extend(claimed)
    return out


@pytest.fixture
async def both(make_store: Callable[..., Store]) -> AsyncIterator[Store]:  # noqa: F811
    """A store on each backend (SQLite, MySQL)."""
    async with make_store() as opened:
        yield opened


async def test_every_status_change_queues_one_callback(both: Store) -> None:
    """Every move queues its change once, wherever it is made; repeats and refusals none."""
    store = both
    url = "https://hooks.example.com/a"
    await store.add(callback_mail("m1", url))
    await store.add(callback_mail("m2", None))
    await store.add(callback_mail("m3", url))
    await store.claim_outbox("relay", 10, 30, now=1001.0)  # queued -> sending
    begun = await store.begin_attempt("m1", "sendgrid", 0, 1002.0, stale_before=0.0)
    assert begun is not None and begun.attempt_id is not None  # sending -> sending: nothing
    await store.apply(
        [
            StatusUpdate(
                "m1", Status.SENT, 1003.0, provider="sendgrid", provider_message_id="sg-1"
            ),
            StatusUpdate("m2", Status.SENT, 1003.0, provider="sendgrid"),
        ]
    )
    await store.apply([StatusUpdate("m1", Status.SENT, 1003.5, provider="sendgrid")])  # repeat
    event = DeliveryEvent("m1", "sendgrid", EventKind.DELIVERED, 1004.0, "ev-1")
    await store.record_events([event, event])
    await store.transition("m1", Status.FAILED, at=1005.0, reason="refused")  # not allowed
    await store.add_dead_letter("send.sendgrid", "m3", b"x", "boom", 1006.0)  # -> failed
    await store.retry("m3", at=1007.0)  # -> queued
    await store.transition("m3", Status.FAILED, at=1008.0, reason="by hand")

    done = await drain(store)
    by_mail: dict[str, list[tuple[str, float, str | None, str | None]]] = {}
    for c in sorted(done, key=lambda c: c.id):
        by_mail.setdefault(c.mail_id, []).append((c.status.value, c.at, c.provider, c.reason))
        assert c.url == url
        assert c.attempts == 1
    assert by_mail["m1"] == [
        ("sending", 1001.0, None, None),
        ("sent", 1003.0, "sendgrid", None),
        ("delivered", 1004.0, "sendgrid", None),
    ]
    assert [s for s, *_ in by_mail["m3"]] == ["sending", "failed", "queued", "failed"]
    assert by_mail["m3"][-1][3] == "by hand"
    assert "m2" not in by_mail


async def test_a_mails_callbacks_go_one_at_a_time_in_order(both: Store) -> None:
    """A mail's callbacks go one at a time; failures reschedule; a lease keeps out others."""
    store = both
    await store.add(callback_mail("m1", "https://hooks.example.com/a"))
    await store.transition("m1", Status.SENDING, at=1001.0)
    await store.transition("m1", Status.SENT, at=1002.0)

    t = time.time() + 10  # the store queues callbacks due at once, by its clock
    first = await store.claim_callbacks("a", 10, 30, now=t + 0)
    assert [(c.status, c.attempts, c.last_error) for c in first] == [(Status.SENDING, 1, None)]
    assert await store.claim_callbacks("b", 10, 30, now=t + 1) == []  # leased; 'sent' waits
    await store.callback_failed(first[0].id, "answered 500", next_at=t + 100)
    assert await store.claim_callbacks("b", 10, 30, now=t + 50) == []  # not due yet
    again = await store.claim_callbacks("b", 10, 30, now=t + 100)
    assert [(c.id, c.attempts, c.last_error) for c in again] == [(first[0].id, 2, "answered 500")]
    # "b" died with it: once its lease ran out another notifier takes it.
    taken = await store.claim_callbacks("c", 10, 30, now=t + 131)
    assert [(c.id, c.attempts) for c in taken] == [(first[0].id, 3)]
    await store.callback_gave_up(taken[0].id, "answered 500", at=t + 132)
    await store.callback_done(taken[0].id, at=t + 133)  # too late: it stays given up
    nxt = await store.claim_callbacks("c", 10, 30, now=t + 133)
    assert [(c.status, c.attempts) for c in nxt] == [(Status.SENT, 1)]
    await store.callback_done(nxt[0].id, at=t + 134)
    await store.callback_failed(nxt[0].id, "late", next_at=t + 135)  # done stays done
    assert await store.claim_callbacks("c", 10, 30, now=t + 10**6) == []


async def test_concurrent_claims_never_share_a_callback(both: Store) -> None:
    """Several notifiers claiming at once get disjoint callbacks (SKIP LOCKED on MySQL)."""
    store = both
    for i in range(40):
        await store.add(callback_mail(f"m{i:02}", "https://hooks.example.com/a"))
    await store.claim_outbox("relay", 100, 30, now=1001.0)
    claims = await asyncio.gather(
        *(store.claim_callbacks(f"n{i}", 15, 30, now=time.time() + 10) for i in range(4))
    )
    ids = [c.id for claim in claims for c in claim]
    assert len(ids) == len(set(ids))
    rest = await store.claim_callbacks("late", 100, 30, now=time.time() + 10)
    assert len(set(ids) | {c.id for c in rest}) == len(ids) + len(rest) == 40


async def test_an_attempt_outcome_without_a_move_queues_nothing(both: Store) -> None:
    """An attempt recorded for a sending mail (a transient answer) is not a status change."""
    store = both
    await store.add(callback_mail("m1", "https://hooks.example.com/a"))
    await store.claim_outbox("relay", 10, 30, now=1001.0)
    begun = await store.begin_attempt("m1", "sendgrid", 0, 1002.0, stale_before=0.0)
    assert begun is not None and begun.attempt_id is not None
    attempt = replace(Attempt("sendgrid", 0, 1002.0, Outcome.TRANSIENT, "503"), id=begun.attempt_id)
    await store.apply([StatusUpdate("m1", Status.SENDING, 1003.0, attempt=attempt)])
    assert [c.status for c in await drain(store)] == [Status.SENDING]

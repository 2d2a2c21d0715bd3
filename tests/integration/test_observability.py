"""Health checks (/healthz, /readyz), and /metrics: per-process HTTP figures, delivery figures
read from the store (SQLite and MySQL), and --processes' children summed."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from mailman.config import Config, ConfigError, load
from mailman.core.messages import Dispatch, StatusUpdate
from mailman.core.model import Address, Attempt, Check, Mail, Outcome, Status
from mailman.intake.keys import Scope, create_key
from mailman.mailboxes.kafka import KafkaBroker
from mailman.routes import HttpMetrics, Probes, create_app
from mailman.routes.metrics import StoreFigures
from mailman.store import BreakerState, Store
from mailman.store.base import MetricsSnapshot
from mailman.store.sqlite import SQLiteStore
from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.fakes import FakeMailgun, FakeSendGrid
from ..support.kafka_broker import in_ci, kafka_options, start_tansu
from ..support.processes import ROOT, mailman_process

Client = TestClient[web.Request, web.Application]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: A chain of two providers (keys given, so neither is left out).
TWO_PROVIDERS = {
    "MAILMAN_PROVIDERS": "sendgrid,mailgun",
    "SENDGRID_API_KEY": "SG.test",
    "MAILGUN_API_KEY": "key-test",
    "MAILGUN_DOMAIN": "mg.example.com",
}


class _Outbound:
    async def dispatch(self, dispatch: object) -> None:
        return None


def parse(text: str) -> Samples:
    """Every sample of a /metrics answer, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(http: aiohttp.ClientSession, url: str) -> tuple[str, Samples]:
    async with http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return text, parse(text)


def mail(mail_id: str, created_at: float = 1000.0) -> Mail:
    return Mail(
        id=mail_id,
        sender=Address("from@example.com"),
        to=(Address("to@example.com"),),
        subject="hello",
        text="body",
        created_at=created_at,
    )


def attempt(
    mail_id: str, status: Status, provider: str, round_: int, outcome: Outcome, at: float
) -> StatusUpdate:
    return StatusUpdate(
        mail_id, status, at, provider=provider, attempt=Attempt(provider, round_, at, outcome)
    )


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    async with SQLiteStore(str(tmp_path / "mailman.db")) as opened:
        yield opened


#: The default chain when no provider has a key: the outbox alone.
OUTBOX_ONLY = load([], {"MAILMAN_PROVIDERS": "outbox"})


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, sqlite_store: Store) -> Callable[..., Any]:
    async def make(config: Config | None = None, probes: Probes | None = None) -> Client:
        app = create_app(
            store=sqlite_store, outbound=_Outbound(), config=config or OUTBOX_ONLY, probes=probes
        )
        return await aiohttp_client(app)

    return make


# --- /healthz and /readyz -----------------------------------------------------------------


async def test_healthz_is_200_even_while_the_store_is_gone(
    make_client: Callable[..., Any], sqlite_store: Store
) -> None:
    """/healthz says that the process serves: 200 with the store closed, the provider
    breakers it cannot read from the store shown unknown."""
    client = await make_client()
    await sqlite_store.close()
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "providers": {"outbox": "unknown"}}


async def test_healthz_shows_each_provider_breaker(
    make_client: Callable[..., Any], sqlite_store: Store, tmp_path: Path
) -> None:
    """/healthz's details name each provider's breaker state (shared, or this process's own)."""
    now = time.time()
    await sqlite_store.save_breaker(BreakerState("mailgun", "open", now, now))
    local = [BreakerState("sendgrid", "half_open", now, now)]
    client = await make_client(make_config(tmp_path, TWO_PROVIDERS), Probes(breakers=lambda: local))
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {
        "status": "ok",
        "providers": {"sendgrid": "half_open", "mailgun": "open"},
    }


async def test_readyz_is_200_and_lists_every_check_when_all_is_well(
    make_client: Callable[..., Any], tmp_path: Path
) -> None:
    """Store answering, no broker used, breakers closed: 200 naming each check's finding."""
    client = await make_client(make_config(tmp_path, TWO_PROVIDERS))
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {
        "status": "ready",
        "checks": {
            "store": "ok",
            "broker": "not-used",
            "providers": {"sendgrid": "closed", "mailgun": "closed"},
        },
    }


async def test_readyz_is_503_naming_the_store_when_it_does_not_answer(
    make_client: Callable[..., Any], sqlite_store: Store
) -> None:
    """A store that does not answer: 503 problem, not_ready ["store"], provider states unknown."""
    client = await make_client()
    await sqlite_store.close()
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["type"].endswith("/not-ready")
    assert body["not_ready"] == ["store"]
    assert body["checks"] == {
        "store": "unreachable",
        "broker": "not-used",
        "providers": {"outbox": "unknown"},
    }


async def test_readyz_is_503_naming_the_broker_when_it_is_unreachable(
    make_client: Callable[..., Any],
) -> None:
    """A broker this process uses that does not answer: 503 with not_ready ["broker"]."""

    async def down() -> None:
        raise ConnectionError("no broker")

    client = await make_client(probes=Probes(broker=down))
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["not_ready"] == ["broker"]
    assert body["checks"]["broker"] == "unreachable"


async def test_readyz_follows_a_kafka_broker_going_away(
    make_client: Callable[..., Any],
) -> None:
    """With the Kafka broker this process uses: ready while it answers; once it is gone
    (killed), 503 naming the broker within the readiness timeout."""
    try:
        tansu = start_tansu()
    except Exception as exc:
        if in_ci():
            pytest.fail(f"cannot start Tansu: {exc}")
        pytest.skip(f"cannot start Tansu: {exc}")
    try:
        broker = KafkaBroker(
            tansu.bootstrap,
            topic_prefix="test-ready.",
            request_timeout_ms=1000,
            **{**kafka_options(), "idempotent": False},
        )
        await broker.start()
        try:
            client = await make_client(probes=Probes(broker=broker.ping))
            resp = await client.get("/readyz")
            assert resp.status == 200
            assert (await resp.json())["checks"]["broker"] == "ok"
            tansu.kill()
            resp = await client.get("/readyz")
            assert resp.status == 503
            assert (await resp.json())["not_ready"] == ["broker"]
        finally:
            await broker.stop()
    finally:
        tansu.stop()
    with pytest.raises(RuntimeError):  # a stopped broker is not ready either
        await broker.ping()


async def test_metrics_show_each_kafka_mailboxs_consumer_lag(
    make_client: Callable[..., Any], kafka_bootstrap: str
) -> None:
    """With a Kafka broker, /metrics shows each mailbox's lag: what its consumer group has
    not committed (here: two dispatches nobody consumed), 0 for the rest."""
    prefix = f"test-lag-{secrets.token_hex(4)}."
    broker = KafkaBroker(kafka_bootstrap, topic_prefix=prefix, **kafka_options())
    box = broker.mailbox("send.outbox", Dispatch)
    await broker.start()
    try:
        for n in range(2):  # one put each: see test_mailbox's consumer-lag test for why
            await box.put(Dispatch(mail_id=f"mail-{n}", accepted_at=1.0))
    finally:
        await broker.stop()
    config = load(
        [],
        {
            "MAILMAN_BROKER": f"kafka://{kafka_bootstrap}",
            "MAILMAN_KAFKA_TOPIC_PREFIX": prefix,
            "MAILMAN_PROVIDERS": "",
        },
    )
    client = await make_client(config=config)
    resp = await client.get("/metrics")
    assert resp.status == 200
    samples = parse(await resp.text())
    assert value(samples, "mailman_mailbox_lag", mailbox="send.outbox") == 2
    assert value(samples, "mailman_mailbox_lag", mailbox="retry") == 0


async def test_readyz_stays_200_while_every_breaker_is_open(
    make_client: Callable[..., Any], sqlite_store: Store, tmp_path: Path
) -> None:
    """Every provider's shared breaker open: still ready (the replica accepts and keeps
    mail), the breakers shown in checks; one open past its reset time shows half_open."""
    client = await make_client(make_config(tmp_path, TWO_PROVIDERS))
    now = time.time()
    await sqlite_store.save_breaker(BreakerState("sendgrid", "open", now, now))
    await sqlite_store.save_breaker(BreakerState("mailgun", "open", now, now + 0.001))
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready"
    assert body["checks"]["providers"] == {"sendgrid": "open", "mailgun": "open"}
    # Opened longer ago than MAILMAN_BREAKER_RESET_SECONDS (30): the next call is a trial.
    long_ago = now - 60
    await sqlite_store.save_breaker(BreakerState("sendgrid", "open", long_ago, now + 0.002))
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["checks"]["providers"]["sendgrid"] == "half_open"


async def test_readyz_prefers_this_process_breakers_to_the_shared_state(
    make_client: Callable[..., Any], sqlite_store: Store, tmp_path: Path
) -> None:
    """Where this process has its own breaker, its state counts (it is never older)."""
    now = time.time()
    await sqlite_store.save_breaker(BreakerState("sendgrid", "closed", None, now))
    await sqlite_store.save_breaker(BreakerState("mailgun", "open", now, now))
    local = [BreakerState("sendgrid", "open", now, now)]
    client = await make_client(make_config(tmp_path, TWO_PROVIDERS), Probes(breakers=lambda: local))
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["checks"]["providers"] == {"sendgrid": "open", "mailgun": "open"}


async def test_health_readyz_and_metrics_need_no_key_once_keys_exist(
    make_client: Callable[..., Any], sqlite_store: Store
) -> None:
    """With a key in the store, /mail needs it but /health, /healthz, /readyz, /metrics do not."""
    await create_key(sqlite_store, tenant="acme", scopes=[Scope.SEND])
    client = await make_client()
    assert (await client.get("/mail")).status == 401
    for path in ("/health", "/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200, path


async def test_embedded_readyz_stays_200_once_every_provider_breaker_opens(
    tmp_path: Path,
) -> None:
    """The whole system with both providers down (one failure opens a breaker): /metrics and
    /healthz show both breakers open, /readyz stays 200 (mail is still accepted and kept)."""
    async with (
        FakeSendGrid(mode="503") as sg,
        FakeMailgun(mode="503") as mg,
        aiohttp.ClientSession() as http,
    ):
        env = provider_env(sg, mg, MAILMAN_BREAKER_FAIL_MAX="1")
        async with embedded(make_config(tmp_path, env)) as mailman:
            async with http.get(f"{mailman.url}/readyz") as resp:
                assert resp.status == 200
            body = {"to": "ann@example.com", "from": "a@example.com", "content": "x"}
            async with http.post(f"{mailman.url}/mail/send", json=body) as resp:
                assert resp.status == 201

            async def both_open() -> bool:
                async with http.get(f"{mailman.url}/healthz") as resp:
                    assert resp.status == 200
                    providers = (await resp.json())["providers"]
                    return bool(providers == {"sendgrid": "open", "mailgun": "open"})

            await eventually(both_open, what="both breakers open in /healthz")
            async with http.get(f"{mailman.url}/readyz") as resp:
                assert resp.status == 200
                answer = await resp.json()
            assert answer["checks"]["providers"] == {"sendgrid": "open", "mailgun": "open"}
            _, samples = await scrape(http, mailman.url)
            for provider in ("sendgrid", "mailgun"):
                assert value(samples, "mailman_breaker_state", provider=provider, state="open") == 1
            async with http.get(f"{mailman.url}/healthz") as resp:
                assert resp.status == 200


# --- /metrics through the embedded system ---------------------------------------------------


async def test_metrics_count_requests_by_route_template_and_read_deliveries_from_the_store(
    tmp_path: Path,
) -> None:
    """Mails sent through the fakes: requests by route template and status, latency, mails by
    status, attempts by provider and outcome, breakers, outbox, dead letters; no id anywhere."""
    async with (
        FakeSendGrid() as sg,
        FakeMailgun() as mg,
        aiohttp.ClientSession() as http,
        embedded(make_config(tmp_path, provider_env(sg, mg))) as mailman,
    ):
        body = {"to": "ann@example.com", "from": "a@example.com", "content": "x"}
        ids = []
        for _ in range(5):
            async with http.post(f"{mailman.url}/mail/send", json=body) as resp:
                assert resp.status == 201
                ids.append((await resp.json())["mail"]["id"])

        async def all_sent() -> bool:
            records = [await mailman.store.get(i) for i in ids]
            return all(r is not None and r.status is Status.SENT for r in records)

        await eventually(all_sent, what="every mail sent")
        for mail_id in ids:
            async with http.get(f"{mailman.url}/mail/{mail_id}/status") as resp:
                assert resp.status == 200
        async with http.get(f"{mailman.url}/mail/01ARZ3NDEKTSV4RRFFQ69G5FAV/status") as resp:
            assert resp.status == 404
        async with http.get(f"{mailman.url}/no/such/path") as resp:
            assert resp.status == 404
        scraped: list[tuple[str, Samples]] = []

        async def outbox_emptied() -> bool:
            # The relay removes the entries it published at its next claim, a moment later.
            scraped.append(await scrape(http, mailman.url))
            return value(scraped[-1][1], "mailman_outbox_entries") == 0

        await eventually(outbox_emptied, what="the published outbox entries removed")
        text, samples = scraped[-1]

    requests = "mailman_http_requests_total"
    assert value(samples, requests, method="POST", route="/mail/send", status="201") == 5
    assert value(samples, requests, method="GET", route="/mail/{id}/status", status="200") == 5
    assert value(samples, requests, method="GET", route="/mail/{id}/status", status="404") == 1
    assert value(samples, requests, method="GET", route="unrouted", status="404") == 1
    latency = "mailman_http_request_duration_seconds"
    assert value(samples, f"{latency}_count", method="GET", route="/mail/{id}/status") == 6
    assert value(samples, f"{latency}_bucket", method="POST", route="/mail/send", le="+Inf") == 5
    assert all(mail_id not in text for mail_id in ids)
    assert "/no/such/path" not in text

    assert value(samples, "mailman_store_up") == 1
    assert value(samples, "mailman_mails", status="sent") == 5
    assert value(samples, "mailman_mails", status="queued") == 0
    attempts = "mailman_provider_attempts_total"
    assert value(samples, attempts, provider="sendgrid", outcome="accepted") == 5
    assert value(samples, attempts, provider="mailgun", outcome="accepted") == 0
    assert value(samples, "mailman_provider_attempts_pending", provider="sendgrid") == 0
    assert value(samples, "mailman_provider_retries_total", provider="sendgrid") == 0
    for provider in ("sendgrid", "mailgun"):
        assert value(samples, "mailman_breaker_state", provider=provider, state="closed") == 1
    assert value(samples, "mailman_dead_letters") == 0
    assert value(samples, "mailman_mailbox_depth", mailbox="send.sendgrid") == 0


async def test_metrics_count_failovers_and_retries_as_the_mail_history_shows_them(
    tmp_path: Path,
) -> None:
    """Both providers down, then Mailgun back: attempts by outcome and retries (round > 0) in
    /metrics are exactly those GET /mail/{id} lists."""
    async with (
        FakeSendGrid(mode="503") as sg,
        FakeMailgun(mode="503") as mg,
        aiohttp.ClientSession() as http,
        embedded(make_config(tmp_path, provider_env(sg, mg))) as mailman,
    ):
        body = {"to": "ann@example.com", "from": "a@example.com", "content": "x"}
        async with http.post(f"{mailman.url}/mail/send", json=body) as resp:
            mail_id = (await resp.json())["mail"]["id"]
        await eventually(lambda: mg.calls >= 2, what="a second round")
        mg.mode = "up"

        async def sent() -> bool:
            record = await mailman.store.get(mail_id)
            return record is not None and record.status is Status.SENT

        await eventually(sent, what="the mail sent by Mailgun")
        async with http.get(f"{mailman.url}/mail/{mail_id}") as resp:
            history = (await resp.json())["mail"]["attempts"]
        _, samples = await scrape(http, mailman.url)

    for provider in ("sendgrid", "mailgun"):
        mine = [a for a in history if a["provider"] == provider]
        for outcome in ("accepted", "transient"):
            expected = sum(1 for a in mine if a["outcome"] == outcome)
            got = value(
                samples, "mailman_provider_attempts_total", provider=provider, outcome=outcome
            )
            assert got == expected, (provider, outcome)
        retries = sum(1 for a in mine if a["round"] > 0)
        assert value(samples, "mailman_provider_retries_total", provider=provider) == retries
    assert value(samples, "mailman_provider_retries_total", provider="mailgun")
    assert value(samples, "mailman_mails", status="sent") == 1


async def test_a_failover_is_counted_by_from_and_to_and_logged_once(tmp_path: Path) -> None:
    """SendGrid answering 503: the mail moves on to Mailgun, which /metrics counts as
    mailman_failovers_total{from="sendgrid",to="mailgun"} 1, with one mail.failover warning
    naming the mail, both providers and the kind of failure."""
    async with (
        FakeSendGrid(mode="503") as sg,
        FakeMailgun() as mg,
        aiohttp.ClientSession() as http,
        embedded(make_config(tmp_path, provider_env(sg, mg))) as mailman,
    ):
        with capture_logs() as logs:
            body = {"to": "ann@example.com", "from": "a@example.com", "content": "x"}
            async with http.post(f"{mailman.url}/mail/send", json=body) as resp:
                mail_id = (await resp.json())["mail"]["id"]

            async def sent() -> bool:
                record = await mailman.store.get(mail_id)
                return record is not None and record.status is Status.SENT

            await eventually(sent, what="the mail sent by Mailgun")
        _, samples = await scrape(http, mailman.url)
    assert value(samples, "mailman_failovers_total", **{"from": "sendgrid", "to": "mailgun"}) == 1
    moved = [e for e in logs if e["event"] == "mail.failover"]
    assert moved == [
        {
            "event": "mail.failover",
            "log_level": "warning",
            "mail_id": mail_id,
            "from": "sendgrid",
            "to": "mailgun",
            "reason": "transient",
            "round": 0,
        }
    ]


# --- the store's figures: both databases, and how often they are read ----------------------


async def test_metrics_snapshot_counts_what_the_store_holds(any_store: Store) -> None:
    """metrics_snapshot(): mails by status, attempts by provider and outcome (pending too),
    retries per provider, outbox entries left, dead letters not replayed, shared breakers."""
    store = any_store
    assert await store.metrics_snapshot() == MetricsSnapshot(
        mails={}, attempts={}, retries={}, outbox=0, dead_letters=0, breakers=()
    )
    for n, mail_id in enumerate(("m1", "m2", "m3", "m4")):
        await store.add(mail(mail_id, 1000.0 + n))
    entries = await store.claim_outbox("relay", 10, 30.0, 1010.0)
    await store.published([e.id for e in entries if e.mail_id != "m4"])
    # m1: SendGrid took it. m2: SendGrid failed, Mailgun took it in the next round.
    await store.apply([attempt("m1", Status.SENT, "sendgrid", 0, Outcome.ACCEPTED, 1020.0)])
    await store.apply(
        [
            attempt("m2", Status.SENDING, "sendgrid", 0, Outcome.TRANSIENT, 1020.0),
            attempt("m2", Status.SENT, "mailgun", 1, Outcome.ACCEPTED, 1030.0),
        ]
    )
    # m3: a call to Mailgun in flight.
    assert await store.begin_attempt("m3", "mailgun", 2, 1040.0, stale_before=0.0) is not None
    # m4: dead-lettered (failed); another letter, about no mail, already replayed.
    await store.add_dead_letter("send.sendgrid", "m4", b"x", "boom", 1050.0)
    replayed = await store.add_dead_letter("status", None, b"y", "undecodable", 1051.0)
    await store.mark_replayed([replayed], 1052.0)
    opened = BreakerState("sendgrid", "open", 1060.0, 1060.0)
    await store.save_breaker(opened)

    assert await store.metrics_snapshot() == MetricsSnapshot(
        mails={"sent": 2, "sending": 1, "failed": 1},
        attempts={
            ("sendgrid", "accepted"): 1,
            ("sendgrid", "transient"): 1,
            ("mailgun", "accepted"): 1,
            ("mailgun", "pending"): 1,
        },
        retries={"mailgun": 2},
        outbox=1,
        dead_letters=1,
        breakers=(opened,),
    )


async def test_metrics_snapshot_counts_sends_suppressed_by_asking(any_store: Store) -> None:
    """An unknown attempt the provider was asked about and had taken counts as a send
    suppressed (by provider); one it had not taken does not."""
    store = any_store
    for mail_id in ("m1", "m2"):
        await store.add(mail(mail_id, 1000.0))
    for mail_id, check in (("m1", Check.TAKEN), ("m2", Check.NOT_FOUND)):
        begun = await store.begin_attempt(mail_id, "mailgun", 0, 1010.0, stale_before=0.0)
        assert begun is not None and begun.attempt_id is not None
        unknown = Attempt("mailgun", 0, 1010.0, Outcome.UNKNOWN, "timeout", id=begun.attempt_id)
        await store.apply([StatusUpdate(mail_id, Status.SENDING, 1011.0, attempt=unknown)])
        checked = replace(unknown, checked=check)
        await store.apply([StatusUpdate(mail_id, Status.SENDING, 1012.0, attempt=checked)])
    snapshot = await store.metrics_snapshot()
    assert snapshot.suppressed == {"mailgun": 1}
    assert snapshot.attempts == {("mailgun", "unknown"): 2}


async def test_failovers_are_counted_once_when_the_attempt_is_finished(any_store: Store) -> None:
    """An update that finishes an attempt and hands the mail on counts one failover
    (from, to); the same update applied again counts none; one with no hand-on none."""
    store = any_store
    for mail_id in ("m1", "m2"):
        await store.add(mail(mail_id, 1000.0))
    for mail_id, to in (("m1", "mailgun"), ("m2", None)):
        begun = await store.begin_attempt(mail_id, "sendgrid", 0, 1010.0, stale_before=0.0)
        assert begun is not None and begun.attempt_id is not None
        failed = Attempt("sendgrid", 0, 1011.0, Outcome.TRANSIENT, "503", id=begun.attempt_id)
        update = StatusUpdate(mail_id, Status.SENDING, 1011.0, attempt=failed, failover_to=to)
        await store.apply([update])
        await store.apply([update])  # replayed
    assert (await store.metrics_snapshot()).failovers == {("sendgrid", "mailgun"): 1}


class CountingStore(SQLiteStore):
    """A SQLite store that counts ``metrics_snapshot`` calls, can hold them, or fail them."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.down = False

    async def metrics_snapshot(self) -> MetricsSnapshot:
        self.reads += 1
        await self.hold.wait()
        if self.down:
            raise sqlite3.OperationalError("unable to open database file")
        return await super().metrics_snapshot()


async def test_store_figures_are_read_once_a_second_and_shared_by_concurrent_scrapes(
    tmp_path: Path,
) -> None:
    """Scrapes within the TTL share one read (concurrent ones wait for the same read); the next
    read comes once the TTL has passed; a store that fails is not asked again sooner."""
    now = [100.0]
    store = CountingStore(str(tmp_path / "m.db"))
    async with store:
        figures = StoreFigures(store, timeout=5.0, ttl=1.0, clock=lambda: now[0])
        store.hold.clear()
        first = asyncio.gather(*(figures.read() for _ in range(5)))
        await eventually(lambda: store.reads == 1, what="the read to start")
        store.hold.set()
        answers = await first
        assert store.reads == 1
        assert all(snapshot is not None for snapshot, _ in answers)
        now[0] += 0.5
        await figures.read()
        assert store.reads == 1
        now[0] += 0.6
        store.down = True
        snapshot, _ = await figures.read()
        assert (store.reads, snapshot) == (2, None)
        now[0] += 0.5
        assert (await figures.read())[0] is None
        assert store.reads == 2
        await figures.close()


async def test_metrics_say_store_down_and_leave_its_figures_out(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    """While the store does not answer, /metrics is still 200: mailman_store_up 0, HTTP figures
    kept, no store figure (never a stale or made-up zero)."""
    store = CountingStore(str(tmp_path / "m.db"))
    async with store:
        store.down = True
        app = create_app(store=store, outbound=_Outbound(), config=Config())
        client = await aiohttp_client(app)
        resp = await client.get("/metrics")
        assert resp.status == 200
        samples = parse(await resp.text())
    assert value(samples, "mailman_store_up") == 0
    assert value(samples, "mailman_mails", status="sent") is None
    assert not any(name == "mailman_outbox_entries" for name, _ in samples)


# --- --processes: every API child answers the sum ------------------------------------------


@pytest.mark.slow
async def test_processes_metrics_are_summed_over_every_api_child(tmp_path: Path) -> None:
    """--processes 3 (two API children sharing the port): whichever child answers /metrics, it
    counts every child's requests; a killed child's counts stay in the sum after its restart."""
    mail_body = {"to": ["ann@example.com"], "from": "a@example.com", "content": "x"}
    async with FakeSendGrid() as sg, FakeMailgun() as mg:
        env = provider_env(sg, mg, MAILMAN_STORE=f"sqlite:///{tmp_path / 'm.db'}")
        async with mailman_process(env, tmp_path / "m.log", "--processes", "3") as parent:
            (starting,) = parent.events("processes.starting")
            metrics_dir = Path(starting["metrics_dir"])
            for _ in range(40):  # fresh connections: the kernel spreads them over both
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(f"{parent.url}/mail/send", json=mail_body) as resp,
                ):
                    assert resp.status == 201
            children = parent.children()
            counted = {p.name for p in metrics_dir.glob("counter_*.db")}
            # Both API children counted requests of their own (each keeps its own file).
            assert {f"counter_{children['api-1']}.db", f"counter_{children['api-2']}.db"} <= counted

            async def every_answer_sums(expected: float) -> bool:
                for _ in range(6):
                    try:
                        async with aiohttp.ClientSession() as http:
                            _, samples = await scrape(http, parent.url)
                    except aiohttp.ClientError:  # a connection caught by the dying child
                        return False
                    got = value(
                        samples,
                        "mailman_http_requests_total",
                        method="POST",
                        route="/mail/send",
                        status="201",
                    )
                    if got != expected:
                        return False
                return True

            assert await every_answer_sums(40)
            killed = children["api-1"]
            os.kill(killed, signal.SIGKILL)
            await eventually(lambda: parent.children()["api-1"] != killed, what="a new api-1")
            await eventually(lambda: every_answer_sums(40), within=30, what="the same sum")

            async def sent() -> bool:
                async with aiohttp.ClientSession() as http:
                    _, samples = await scrape(http, parent.url)
                return value(samples, "mailman_mails", status="sent") == 40

            await eventually(sent, within=30, what="the store's figures from any child")
            parent.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(parent.proc.wait(), 30) == 0
        assert not metrics_dir.exists()  # the parent's own directory, removed when it stopped


def test_a_metrics_dir_prometheus_client_does_not_use_is_refused(tmp_path: Path) -> None:
    """A multiprocess directory that prometheus-client was not started with (it reads the
    environment when imported) is a configuration error, not silently per-process figures."""
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        HttpMetrics(str(tmp_path))


async def test_a_missing_metrics_dir_ends_mailman_with_exit_2(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR naming no directory: mailman exits 2 (bad configuration) at
    start, instead of failing every request later."""
    env = {
        **os.environ,
        "MAILMAN_PORT": "0",
        "MAILMAN_STORE": f"sqlite:///{tmp_path / 'm.db'}",
        "MAILMAN_PROVIDERS": "outbox",
        "MAILMAN_OUTBOX_DIR": str(tmp_path / "outbox"),
        "MAILMAN_LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailman",
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, output
    assert b"config.invalid" in output and b"is not a directory" in output

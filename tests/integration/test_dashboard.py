"""The dashboard: its store reads (SQLite and MySQL), who may read its figures, the page in
headless Chromium against what the service did, and the same figures from every process."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.core.messages import StatusUpdate
from mailman.core.model import Address, Attempt, Mail, Outcome, Status
from mailman.intake.keys import Scope, create_key
from mailman.routes import create_app
from mailman.routes.dashboard import CHART_OUTCOMES, FAILURES_SHOWN, WINDOW_MINUTES
from mailman.routes.models.dashboard import FAILED_OUTCOMES
from mailman.store import Store
from mailman.store.base import FailedAttempt, FailedMail, Failures, MinuteCount
from mailman.store.sqlite import SQLiteStore
from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.api import CountingOutbound, problem
from ..support.chromium import Browser, Dom, Node, chromium, dump_dom
from ..support.fakes import FakeMailgun, FakeSendGrid
from ..support.processes import mailman_process

#: What the mails of these tests say: none of it may reach the dashboard.
SUBJECT = "Quarterly figures for Ann"
BODY = "The body nobody else may read"
RECIPIENT = "ann.private@example.com"
#: Where the page keeps the admin key (routes/dashboard.py's script).
STORED = "mailman.dashboard.key"


def mail(mail_id: str, created_at: float) -> Mail:
    return Mail(
        id=mail_id,
        sender=Address("from@example.com"),
        to=(Address(RECIPIENT),),
        subject=SUBJECT,
        text=BODY,
        created_at=created_at,
    )


def attempt(
    mail_id: str, status: Status, provider: str, outcome: Outcome, at: float, reason: str = ""
) -> StatusUpdate:
    return StatusUpdate(
        mail_id,
        status,
        at,
        provider=provider,
        attempt=Attempt(provider, 0, at, outcome, reason=reason or None),
    )


# --- the store's reads ---------------------------------------------------------------------


async def test_store_counts_calls_per_minute_and_lists_the_latest_failures(
    any_store: Store,
) -> None:
    """attempts_per_minute counts the chosen outcomes per minute and provider from `since` on;
    latest_failures lists failed mails (newest created first) and failed calls (newest
    first, skipped and pending left out), each cut at the limit."""
    store = any_store
    assert await store.attempts_per_minute(0.0, CHART_OUTCOMES) == []
    assert await store.latest_failures(5, FAILED_OUTCOMES) == Failures(mails=(), attempts=())
    for n, mail_id in enumerate(("m1", "m2", "m3", "m4", "m5", "m6")):
        await store.add(mail(mail_id, 1000.0 + n))
    await store.apply(
        [
            attempt("m1", Status.SENDING, "sendgrid", Outcome.TRANSIENT, 6005.0, "HTTP 503"),
            attempt("m1", Status.SENT, "mailgun", Outcome.ACCEPTED, 6010.0),
            attempt("m2", Status.SENDING, "sendgrid", Outcome.SKIPPED, 6070.0),
            attempt("m2", Status.SENT, "mailgun", Outcome.ACCEPTED, 6075.0),
            attempt("m3", Status.SENDING, "sendgrid", Outcome.UNKNOWN, 6130.0, "timeout"),
            attempt("m3", Status.SENDING, "mailgun", Outcome.REJECTED, 6131.5, "bad address"),
            attempt("m4", Status.SENT, "sendgrid", Outcome.ACCEPTED, 5990.0),  # before since
        ]
    )
    await store.transition("m3", Status.FAILED, 6200.0, "every provider refused it")
    await store.transition("m6", Status.FAILED, 6300.0, "failed by hand")
    # m5: a call in flight (pending) is no failure and no throughput yet.
    assert await store.begin_attempt("m5", "sendgrid", 0, 6140.0, stale_before=0.0) is not None

    counted = await store.attempts_per_minute(6000.0, CHART_OUTCOMES)
    assert sorted(counted, key=lambda c: (c.minute, c.provider)) == [
        MinuteCount(6000, "mailgun", "accepted", 1),
        MinuteCount(6000, "sendgrid", "transient", 1),
        MinuteCount(6060, "mailgun", "accepted", 1),
        MinuteCount(6120, "mailgun", "rejected", 1),
        MinuteCount(6120, "sendgrid", "unknown", 1),
    ]
    accepted = await store.attempts_per_minute(6000.0, ("accepted",))
    assert sorted(accepted, key=lambda c: c.minute) == [
        MinuteCount(6000, "mailgun", "accepted", 1),
        MinuteCount(6060, "mailgun", "accepted", 1),
    ]
    assert await store.attempts_per_minute(6000.0, ()) == []

    failures = await store.latest_failures(10, FAILED_OUTCOMES)
    assert [(f.id, f.reason, f.at) for f in failures.mails] == [
        ("m6", "failed by hand", 6300.0),
        ("m3", "every provider refused it", 6200.0),
    ]
    assert failures.attempts == (
        FailedAttempt("m3", "mailgun", 0, "rejected", "bad address", 6131.5),
        FailedAttempt("m3", "sendgrid", 0, "unknown", "timeout", 6130.0),
        FailedAttempt("m1", "sendgrid", 0, "transient", "HTTP 503", 6005.0),
    )
    assert all(isinstance(f, FailedMail) for f in failures.mails)
    cut = await store.latest_failures(1, FAILED_OUTCOMES)
    assert [f.id for f in cut.mails] == ["m6"]
    assert cut.attempts == failures.attempts[:1]


# --- who may read the figures --------------------------------------------------------------


async def test_dashboard_data_needs_an_admin_key_once_a_key_exists(
    aiohttp_client: AiohttpClient, store: Store
) -> None:
    """Open API: the figures need no key. Once a key exists: no key 401, a send or read key
    403, an admin key 200. The page itself is public and pins its script and style by hash."""
    client = await aiohttp_client(
        create_app(store=store, outbound=CountingOutbound(), config=Config())
    )
    resp = await client.get("/dashboard/data")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"

    _, send_key = await create_key(store, tenant="acme", scopes=[Scope.SEND])
    _, read_key = await create_key(store, tenant="acme", scopes=[Scope.READ])
    _, admin_key = await create_key(store, tenant="ops", scopes=[Scope.ADMIN])
    client = await aiohttp_client(
        create_app(store=store, outbound=CountingOutbound(), config=Config())
    )
    resp = await client.get("/dashboard/data")
    await problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await problem(
        await client.get("/dashboard/data", headers={"Authorization": "Bearer mm_nope"}), 401
    )
    for key in (send_key, read_key):
        resp = await client.get("/dashboard/data", headers={"Authorization": f"Bearer {key}"})
        assert "admin" in (await problem(resp, 403))["detail"]
    resp = await client.get("/dashboard/data", headers={"Authorization": f"Bearer {admin_key}"})
    assert resp.status == 200
    body = await resp.json()
    assert body["mails"] == dict.fromkeys((s.value for s in Status), 0)
    assert len(body["throughput"]["per_minute"]) == WINDOW_MINUTES

    page = await client.get("/dashboard")
    assert page.status == 200
    assert page.content_type == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
    assert "unsafe-inline" not in policy
    assert "<script" in await page.text()


# --- the page in headless Chromium ----------------------------------------------------------


async def send(http: aiohttp.ClientSession, url: str, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"to": RECIPIENT, "from": "noreply@example.com", "subject": SUBJECT, "content": BODY}
    async with http.post(f"{url}/mail/send", json=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        mail_id: str = (await resp.json())["mail"]["id"]
        return mail_id


async def histories(
    http: aiohttp.ClientSession, url: str, ids: list[str], key: str | None = None
) -> dict[str, dict[str, Any]]:
    """Every mail as ``GET /mail/{id}`` shows it: the truth the page is checked against."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    shown = {}
    for mail_id in ids:
        async with http.get(f"{url}/mail/{mail_id}", headers=headers) as resp:
            assert resp.status == 200
            shown[mail_id] = (await resp.json())["mail"]
    return shown


async def all_final(http: aiohttp.ClientSession, url: str, ids: list[str]) -> bool:
    shown = await histories(http, url, ids)
    return all(m["status"] in ("sent", "failed") for m in shown.values())


def figure(row: Node, name: str) -> int:
    return int(row.one("td", data_figure=name).text)


@pytest.mark.slow
async def test_dashboard_in_chromium_shows_what_the_service_did(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With SendGrid down (503) five mails fail over to Mailgun, then Mailgun refuses two more
    (400) and they fail: in Chromium, without a key (open API), the page shows each status's
    count, SendGrid's breaker open and Mailgun's closed with their calls, a chart of every
    call, the failed mails and calls with their reasons; and no mail content anywhere."""
    chromium()  # skips (fails in CI) before any work without it
    env = {
        "MAILMAN_BREAKER_FAIL_MAX": "2",
        "MAILMAN_BREAKER_RESET_SECONDS": "600",  # stays open for the test
        "MAILMAN_RETRY_WINDOW_SECONDS": "3",  # the refused mails fail soon
    }
    async with FakeSendGrid(mode="503") as sg, FakeMailgun() as mg:
        config = make_config(tmp_path, provider_env(sg, mg, **env))
        async with embedded(config) as mailman:
            url = mailman.url
            ids = [await send(http, url) for _ in range(5)]
            await eventually(lambda: all_final(http, url, ids), what="the first five final")
            mg.mode = "400"
            ids += [await send(http, url) for _ in range(2)]
            await eventually(lambda: all_final(http, url, ids), within=30, what="all final")
            truth = await histories(http, url, ids)
            async with http.get(f"{url}/dashboard/data") as resp:
                data = await resp.read()
            started = asyncio.get_running_loop().time()
            page = await dump_dom(f"{url}/dashboard", tmp_path / "chromium")
            took = asyncio.get_running_loop().time() - started
    print(f"chromium --dump-dom took {took:.2f} s")

    for text in (SUBJECT, BODY, RECIPIENT, "noreply@example.com"):
        assert text not in page
        assert text.encode() not in data
    dom = Dom.parse(page)
    assert not dom.by_id("figures").hidden
    assert dom.by_id("key-form").hidden
    assert dom.by_id("state").attrs["data-state"] == "ok"

    statuses = Counter(m["status"] for m in truth.values())
    assert statuses == {"sent": 5, "failed": 2}
    for status in Status:
        assert dom.one("td", data_status=status.value).text == str(statuses[status.value])
    assert dom.by_id("backlog").text == "0"

    calls = [(a["provider"], a["outcome"]) for m in truth.values() for a in m["attempts"]]
    rows = dom.by_id("providers").all("tr", data_provider=None)
    assert [r.attrs["data-provider"] for r in rows] == ["sendgrid", "mailgun"]
    assert {r.attrs["data-provider"]: r.attrs["data-breaker"] for r in rows} == {
        "sendgrid": "open",
        "mailgun": "closed",
    }
    for row in rows:
        provider = row.attrs["data-provider"]
        mine = Counter(outcome for p, outcome in calls if p == provider)
        failed = sum(mine[o] for o in FAILED_OUTCOMES)
        assert figure(row, "accepted") == mine["accepted"]
        assert figure(row, "failed") == failed
        assert figure(row, "skipped") == mine["skipped"]
        assert figure(row, "pending") == 0
        # Every call of this test started within the chart's window.
        assert figure(row, "window-accepted") == mine["accepted"]
        assert figure(row, "window-failed") == failed
    assert figure(rows[1], "accepted") == 5  # Mailgun took the five
    assert figure(rows[0], "failed") >= 2  # SendGrid's 503s opened its breaker

    chart = dom.by_id("chart")
    minutes = chart.all("g", data_minute=None)
    assert len(minutes) == WINDOW_MINUTES
    accepted = sum(o == "accepted" for _, o in calls)
    failed_calls = sum(o in FAILED_OUTCOMES for _, o in calls)
    assert sum(int(g.attrs["data-accepted"]) for g in minutes) == accepted == 5
    assert sum(int(g.attrs["data-failed"]) for g in minutes) == failed_calls
    assert any(float(r.attrs["height"]) > 0 for r in chart.all("rect", class_="accepted"))
    total = dom.by_id("chart-total")
    assert (total.attrs["data-accepted"], total.attrs["data-failed"]) == (
        str(accepted),
        str(failed_calls),
    )

    failed_mails = {i: m for i, m in truth.items() if m["status"] == "failed"}
    shown = dom.by_id("failed-mails").all("tr", data_mail=None)
    assert {r.attrs["data-mail"] for r in shown} == set(failed_mails)
    for row in shown:
        assert failed_mails[row.attrs["data-mail"]]["reason"] in row.text
    failed_attempts = [
        (i, a["provider"], a["outcome"], a["reason"])
        for i, m in truth.items()
        for a in m["attempts"]
        if a["outcome"] in FAILED_OUTCOMES
    ]
    assert len(failed_attempts) <= FAILURES_SHOWN  # so the page lists every one
    shown = dom.by_id("failed-attempts").all("tr", data_mail=None)
    assert sorted(
        (r.attrs["data-mail"], r.attrs["data-provider"], r.attrs["data-outcome"]) for r in shown
    ) == sorted((i, p, o) for i, p, o, _ in failed_attempts)
    for row, (_, _, _, reason) in zip(
        sorted(shown, key=lambda r: r.attrs["data-mail"]), sorted(failed_attempts), strict=True
    ):
        assert reason in row.text


@pytest.mark.slow
async def test_dashboard_asks_for_the_admin_key_and_keeps_it_in_the_tab_only(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Once keys exist the page asks for a key: a send key is refused (not admin), an admin
    key typed in shows the figures and stays in sessionStorage only (no localStorage, no
    cookie, not in the URL), survives a reload, and "Forget the key" drops it."""
    chromium()
    async with SQLiteStore(str(tmp_path / "mailman.db")) as store:
        _, send_key = await create_key(store, tenant="acme", scopes=[Scope.SEND])
        _, admin_key = await create_key(store, tenant="ops", scopes=[Scope.ADMIN])
    async with FakeSendGrid() as sg, FakeMailgun() as mg:
        config = make_config(tmp_path, provider_env(sg, mg))
        async with embedded(config) as mailman, Browser(tmp_path / "chromium") as browser:
            ids = [await send(http, mailman.url, send_key) for _ in range(3)]

            async def sent() -> bool:
                shown = await histories(http, mailman.url, ids, send_key)
                return all(m["status"] == "sent" for m in shown.values())

            await eventually(sent, what="three mails sent")

            async def shows(expression: str) -> bool:
                return bool(await browser.evaluate(expression))

            await browser.open(f"{mailman.url}/dashboard")
            await eventually(lambda: shows("document.getElementById('key-form')?.hidden === false"))
            assert await browser.evaluate("document.getElementById('figures').hidden")

            await browser.type("#key", send_key)
            await browser.evaluate("document.querySelector('#key-form button').click()")
            await eventually(
                lambda: shows(
                    "document.getElementById('key-problem').textContent.includes('admin scope')"
                ),
                what="the send key refused",
            )
            assert await browser.evaluate(f"sessionStorage.getItem('{STORED}')") is None

            await browser.type("#key", admin_key)
            await browser.evaluate("document.querySelector('#key-form button').click()")
            sent_cell = "document.querySelector('#mails td[data-status=\"sent\"]')?.textContent"
            await eventually(lambda: shows(f"{sent_cell} === '3'"), what="the figures")
            assert await browser.evaluate(f"sessionStorage.getItem('{STORED}')") == admin_key
            assert await browser.evaluate("localStorage.length") == 0
            assert await browser.evaluate("document.cookie") == ""
            assert admin_key not in await browser.evaluate("location.href")
            assert await browser.evaluate("document.getElementById('key').value") == ""
            assert admin_key not in await browser.evaluate("document.documentElement.outerHTML")
            providers = (await browser.dom()).by_id("providers")
            assert figure(providers.one("tr", data_provider="sendgrid"), "accepted") == 3
            assert figure(providers.one("tr", data_provider="mailgun"), "accepted") == 0

            await browser.evaluate("window.beforeReload = true")
            await browser.send("Page.reload")
            await eventually(
                lambda: shows(f"window.beforeReload === undefined && {sent_cell} === '3'"),
                what="the figures again after a reload",
            )
            assert await browser.evaluate("document.getElementById('key-form').hidden")

            await browser.evaluate("document.getElementById('forget').click()")
            await eventually(lambda: shows("document.getElementById('key-form')?.hidden === false"))
            assert await browser.evaluate(f"sessionStorage.getItem('{STORED}')") is None


# --- the same figures from every process -----------------------------------------------------


@pytest.mark.slow
async def test_dashboard_figures_are_the_same_from_every_api_process(tmp_path: Path) -> None:
    """--processes 3 (two API children on one port): both children answer /dashboard/data with
    the store's figures, every mail and every call as the store itself counts them."""
    db = tmp_path / "m.db"
    async with FakeSendGrid(mode="503") as sg, FakeMailgun() as mg:
        env = provider_env(sg, mg, MAILMAN_STORE=f"sqlite:///{db}")
        async with mailman_process(env, tmp_path / "m.log", "--processes", "3") as parent:
            for _ in range(12):  # fresh connections: the kernel spreads them over both
                async with aiohttp.ClientSession() as http:
                    await send(http, parent.url)

            async def answer() -> tuple[str, dict[str, Any]]:
                """One answer, on a fresh connection, and which process gave it (each
                process's request ids start with a prefix of its own)."""
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"{parent.url}/dashboard/data") as resp,
                ):
                    assert resp.status == 200
                    return resp.headers["X-Request-Id"][:20], orjson.loads(await resp.read())

            async def all_sent() -> bool:
                sent: int = (await answer())[1]["mails"]["sent"]
                return sent == 12

            await eventually(all_sent, within=30, what="12 sent")
            async with SQLiteStore(str(db)) as store:
                snapshot = await store.metrics_snapshot()
            mails = {s.value: snapshot.mails.get(s.value, 0) for s in Status}
            assert mails["sent"] == 12
            answered_by: set[str] = set()

            async def both_answered_alike() -> bool:
                process, body = await answer()
                answered_by.add(process)
                assert body["mails"] == mails
                for provider in body["providers"]:
                    for outcome, count in provider["attempts"].items():
                        assert snapshot.attempts.get((provider["name"], outcome), 0) == count
                accepted = {p["name"]: p["attempts"]["accepted"] for p in body["providers"]}
                assert accepted == {"sendgrid": 0, "mailgun": 12}
                return len(answered_by) == 2

            await eventually(both_answered_alike, within=30, what="answers from both children")
            parent.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(parent.proc.wait(), 30) == 0

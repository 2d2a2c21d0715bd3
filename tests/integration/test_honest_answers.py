"""Honest answers from the store: a 503 that says nothing was changed is never followed by
the mail being stored or sent; a commit whose answer was lost says the outcome is unknown;
one operation's failure in a group commit fails it alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import aiomysql
import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from mailman.actors.journal import Journal
from mailman.actors.smtp import outcome_unknown
from mailman.config import Config
from mailman.core.messages import StatusUpdate
from mailman.core.model import Attempt, Mail, Outcome, Status
from mailman.intake.guard import guarded
from mailman.store import OutcomeUnknown, Store, StoreUnavailable, giving_up_by
from mailman.store.dialect import Dialect
from mailman.store.mails import add
from mailman.store.mysql import MySQLStore
from mailman.store.operation import Statement, Steps, write
from mailman.store.sqlite import SQLiteStore
from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.api import VALID, CountingOutbound, client_factory, problem
from ..support.databases import fresh_mysql
from ..support.fakes import FakeMailgun, FakeSendGrid
from ..support.proxy import TcpProxy
from .test_store import mail


async def _next_loop_turn() -> None:
    turn = asyncio.get_running_loop().create_future()
    turn.get_loop().call_soon(turn.set_result, None)
    await turn


class Locked:
    """Another connection to the SQLite file holding its write lock (``BEGIN EXCLUSIVE``)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.db.in_transaction:
            self.db.rollback()
        self.db.close()


# --- SQLite: abandoned jobs are skipped, started ones waited for ---------------------------


async def test_a_write_given_up_while_the_file_is_locked_is_never_run(tmp_path: Path) -> None:
    """An add the caller timed out on while another connection held the write lock is skipped
    by the writer once the lock goes: the mail is never stored."""
    path = tmp_path / "m.db"
    async with SQLiteStore(str(path)) as store:
        lock = Locked(path)
        try:
            gave_up = [mail(f"m{i}", created_at=1000.0 + i) for i in range(5)]
            for m in gave_up:
                with pytest.raises(StoreUnavailable):
                    await guarded(store, 0.05, store.add(m))
        finally:
            lock.release()
        # The writer runs its queue in order: once this add is back, the ones above were seen.
        await store.add(mail("after", created_at=2000.0))
        for m in gave_up:
            assert await store.load(m.id) is None
        assert await store.load("after") is not None


started = threading.Event()
release = threading.Event()


def _slow_add(d: Dialect, m: Mail) -> Steps[str]:
    """Adds ``m``, then holds the writer thread until ``release`` is set."""
    (outcome,) = yield from add.steps(d, [(m, None)])
    started.set()
    release.wait(30)
    assert isinstance(outcome, str)
    return outcome


slow_add = write(_slow_add)


@pytest.mark.parametrize("by", ["timeout", "guarded"])
async def test_a_write_already_started_is_waited_for_past_the_deadline(
    tmp_path: Path, by: str
) -> None:
    """A caller whose deadline (an ``asyncio.timeout`` told to the store by
    ``giving_up_by``, or ``guarded``'s own) passes once the writer has started its
    operation gets the operation's result (it is committed), not a timeout that would
    say nothing was changed, and its task is not left cancelled."""
    started.clear()
    release.clear()
    store = SQLiteStore(str(tmp_path / "m.db"))
    async with store:
        scopes: list[asyncio.Timeout] = []
        state: dict[str, int] = {}

        async def caller() -> str:
            if by == "guarded":
                added = await guarded(store, 0.05, store.run(slow_add, mail("m1")))
            else:
                async with asyncio.timeout(None) as scope:
                    scopes.append(scope)
                    with giving_up_by(scope):
                        added = await store.run(slow_add, mail("m1"))
            task = asyncio.current_task()
            assert task is not None
            state["cancelling"] = task.cancelling()
            return added

        task = asyncio.create_task(caller())
        try:
            await asyncio.to_thread(started.wait, 30)
            if scopes:
                scopes[0].reschedule(asyncio.get_running_loop().time())  # expires now
                while not scopes[0].expired():
                    await _next_loop_turn()
            else:
                await asyncio.sleep(0.1)  # guarded's deadline passes while the write runs
            for _ in range(3):  # the cancellation reaches the call
                await _next_loop_turn()
            assert not task.done(), "the caller gave up on a started operation"
        finally:
            release.set()
        assert await task == "m1"
        assert state["cancelling"] == 0
        assert await store.load("m1") is not None


async def test_an_operations_own_sqlite_error_fails_it_alone(tmp_path: Path) -> None:
    """An operation failing with an error of its own (a missing table: an OperationalError
    that does not lose the transaction) fails alone; the adds of its batch commit."""

    @write
    def broken(d: Dialect) -> Steps[None]:
        yield Statement("SELECT * FROM no_such_table")

    store = SQLiteStore(str(tmp_path / "m.db"))
    async with store:
        outcomes = await asyncio.gather(
            store.add(mail("m1")),
            store.run(broken),
            store.add(mail("m2", created_at=1001.0)),
            return_exceptions=True,
        )
        assert outcomes[0] == "m1"
        assert isinstance(outcomes[1], sqlite3.OperationalError)
        assert outcomes[2] == "m2"
        assert await store.load("m1") is not None
        assert await store.load("m2") is not None


# --- the group commit of the senders -------------------------------------------------------


def _sent(mail_id: str, attempt_id: int | None, message_id: str) -> StatusUpdate:
    attempt = Attempt("sendgrid", 0, 1100.0, Outcome.ACCEPTED, None, message_id, id=attempt_id)
    return StatusUpdate(
        mail_id,
        Status.SENT,
        1100.0,
        provider="sendgrid",
        provider_message_id=message_id,
        attempt=attempt,
    )


async def test_one_bad_update_in_a_journal_batch_fails_alone(any_store: Store) -> None:
    """An update the store cannot record (an id with a lone surrogate) fails alone; the
    healthy updates committed in the same group are recorded sent."""
    store = any_store
    ids = [f"m{i}" for i in range(6)]
    attempts: dict[str, int | None] = {}
    for i, mail_id in enumerate(ids):
        await store.add(mail(mail_id, created_at=1000.0 + i))
        begun = await store.begin_attempt(mail_id, "sendgrid", 0, 1050.0, 0.0)
        assert begun is not None
        attempts[mail_id] = begun.attempt_id
    journal = Journal(store)
    outcomes = await asyncio.gather(
        *(
            journal.record(_sent(m, attempts[m], "bad-\udcff" if m == "m3" else f"sg-{m}"))
            for m in ids
        ),
        return_exceptions=True,
    )
    # SQLite cannot encode it; MySQL's driver sends the raw byte, which the server refuses.
    assert isinstance(outcomes[3], UnicodeEncodeError | aiomysql.DataError), outcomes[3]
    assert [o for i, o in enumerate(outcomes) if i != 3] == [None] * 5
    for mail_id in ids:
        record = await store.get(mail_id)
        assert record is not None
        expected = Status.SENDING if mail_id == "m3" else Status.SENT
        assert record.status is expected, mail_id


# --- MySQL: a lost COMMIT answer is an unknown outcome -------------------------------------


@pytest.fixture
async def proxied_mysql() -> AsyncIterator[tuple[MySQLStore, TcpProxy]]:
    """A MySQL store reached through a TCP proxy that can cut a connection at COMMIT."""
    async with fresh_mysql("honest") as url:
        parts = urlsplit(url)
        async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 3306) as proxy:
            user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
            via = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
            store = MySQLStore.from_url(via)
            async with store:
                yield store, proxy


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "rolled-back"])
async def test_a_lost_commit_answer_is_a_503_that_says_the_outcome_is_unknown(
    aiohttp_client: AiohttpClient,
    proxied_mysql: tuple[MySQLStore, TcpProxy],
    committed: bool,
) -> None:
    """A COMMIT whose answer is lost answers 503 outcome-unknown with the mail's id and
    Location; GET /mail/{id} settles it: 200 if the server committed, 404 if not."""
    store, proxy = proxied_mysql
    outbound = CountingOutbound()
    client = await client_factory(aiohttp_client, store, outbound, Config())()
    proxy.trip_at(b"INSERT INTO mails", b"\x03COMMIT", forward=committed)
    resp = await client.post(
        "/mail/send", data=orjson.dumps(VALID), headers={"Content-Type": "application/json"}
    )
    assert proxy.tripped.is_set()
    body = await problem(resp, 503)
    assert body["type"].endswith("/outcome-unknown")
    mail_id = body["mail_id"]
    assert resp.headers["Location"] == f"/mail/{mail_id}"
    assert "nothing was" not in body["detail"]
    assert outbound.dispatched == []
    settled = await client.get(resp.headers["Location"])
    assert settled.status == (200 if committed else 404)
    if committed:
        assert (await settled.json())["mail"]["id"] == mail_id


@pytest.mark.parametrize("entry", ["sendgrid", "mailgun"])
async def test_the_compatible_endpoints_say_the_outcome_is_unknown_in_their_shape(
    aiohttp_client: AiohttpClient, proxied_mysql: tuple[MySQLStore, TcpProxy], entry: str
) -> None:
    """A lost COMMIT answer on the SendGrid- and Mailgun-compatible endpoints: 503 in their
    error shape, naming the mail and its Location, never "nothing was stored"."""
    store, proxy = proxied_mysql
    client = await client_factory(aiohttp_client, store, CountingOutbound(), Config())()
    proxy.trip_at(b"INSERT INTO mails", b"\x03COMMIT", forward=False)
    if entry == "sendgrid":
        resp = await client.post(
            "/v3/mail/send",
            json={
                "personalizations": [{"to": [{"email": "ann@example.com"}]}],
                "from": {"email": "noreply@example.com"},
                "subject": "Hi",
                "content": [{"type": "text/plain", "value": "Hi Ann"}],
            },
        )
        message = (await resp.json())["errors"][0]["message"]
    else:
        form = {"from": "a@shop.example.com", "to": "ann@example.com", "text": "Hi"}
        resp = await client.post("/v3/mg.example.com/messages", data=form)
        message = (await resp.json())["message"]
    assert resp.status == 503, message
    assert proxy.tripped.is_set()
    location = resp.headers["Location"]
    mail_id = location.removeprefix("/mail/")
    assert mail_id in message and "may or may not" in message
    assert "nothing" not in message
    assert (await client.get(location)).status == 404


# --- the whole system ----------------------------------------------------------------------


async def _stored_ids(url: str, http: aiohttp.ClientSession) -> set[str]:
    async with http.get(f"{url}/mail", params={"limit": "500"}) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
    return {m["id"] for m in body["mails"]}


async def test_no_mail_answered_nothing_changed_is_sent_after_the_lock_goes(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """POSTs answered 503 "nothing was changed" while another connection held SQLite's write
    lock are never stored nor sent once it goes; a mail sent after it is."""
    env = provider_env(sendgrid, mailgun, MAILMAN_STORE_TIMEOUT_SECONDS="0.3")
    config = make_config(tmp_path, env)
    async with embedded(config) as mailman:
        lock = Locked(tmp_path / "mailman.db")
        try:

            async def post(i: int) -> tuple[int, dict[str, Any]]:
                body = {**VALID, "subject": f"locked {i}"}
                async with http.post(f"{mailman.url}/mail/send", json=body) as resp:
                    return resp.status, await resp.json(content_type=None)

            answers = await asyncio.gather(*(post(i) for i in range(10)))
        finally:
            lock.release()
        for status, body in answers:
            assert status == 503, body
            assert body["type"].endswith("/store-unavailable")
            assert "nothing was changed" in body["detail"]
        async with http.post(f"{mailman.url}/mail/send", json=VALID) as resp:
            assert resp.status == 201, await resp.text()
            after = (await resp.json())["mail"]["id"]

        async def sent() -> bool:
            async with http.get(f"{mailman.url}/mail/{after}/status") as resp:
                return bool((await resp.json())["mail"]["status"] == "sent")

        await eventually(sent, what="the mail posted after the lock went, sent")
        assert await _stored_ids(mailman.url, http) == {after}
        assert sendgrid.mail_ids() + mailgun.mail_ids() == [after]


async def send_all_and_show(
    base: str, http: aiohttp.ClientSession, subjects: list[str], shown_at: int
) -> tuple[list[str], dict[str, Any]]:
    """Post a mail per subject, wait until every one is sent; their ids, and the mail at
    ``shown_at`` as ``GET /mail/{id}`` shows it."""

    async def post(subject: str) -> str:
        body = {**VALID, "subject": subject}
        async with http.post(f"{base}/mail/send", json=body) as resp:
            assert resp.status == 201, await resp.text()
            mail_id: str = (await resp.json())["mail"]["id"]
            return mail_id

    ids = list(await asyncio.gather(*(post(s) for s in subjects)))

    async def all_sent() -> bool:
        for mail_id in ids:
            async with http.get(f"{base}/mail/{mail_id}/status") as resp:
                if (await resp.json())["mail"]["status"] != "sent":
                    return False
        return True

    await eventually(all_sent, within=20, what="every mail sent")
    async with http.get(f"{base}/mail/{ids[shown_at]}") as resp:
        shown: dict[str, Any] = (await resp.json())["mail"]
    return ids, shown


async def test_an_odd_provider_id_spoils_no_neighbour(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """SendGrid answering 202 with a non-UTF-8 X-Message-Id for one mail among many: every
    mail is sent once and ends sent; the odd one's id is recorded escaped."""
    odd = b"odd-\xff\xfe-id"
    sendgrid.raw_message_id = lambda body: odd if body.get("subject") == "odd" else None
    config = make_config(tmp_path, provider_env(sendgrid, mailgun))
    subjects = [f"healthy {i}" for i in range(40)]
    subjects.insert(17, "odd")
    async with embedded(config) as mailman:
        ids, shown = await send_all_and_show(mailman.url, http, subjects, 17)
    assert sorted(sendgrid.mail_ids()) == sorted(ids)  # each exactly once
    assert mailgun.mail_ids() == []
    assert shown["provider_message_id"] == "odd-\\xff\\xfe-id"
    assert [a["message_id"] for a in shown["attempts"]] == ["odd-\\xff\\xfe-id"]


async def test_a_provider_id_the_store_cannot_keep_is_left_out_not_sent_again(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """A 202 whose X-Message-Id is too long for MySQL's column: that mail is recorded sent
    without the id (sent once, not again), and its neighbours are untouched."""
    long_id = b"x" * 300  # the column holds 255
    sendgrid.raw_message_id = lambda body: long_id if body.get("subject") == "long" else None
    subjects = [f"healthy {i}" for i in range(10)]
    subjects.insert(4, "long")
    async with fresh_mysql("longid") as url:
        config = make_config(tmp_path, {**provider_env(sendgrid, mailgun), "MAILMAN_STORE": url})
        async with embedded(config) as mailman:
            ids, shown = await send_all_and_show(mailman.url, http, subjects, 4)
    assert sorted(sendgrid.mail_ids()) == sorted(ids)  # each exactly once
    assert mailgun.mail_ids() == []
    assert shown["provider_message_id"] is None
    [attempt] = shown["attempts"]
    assert attempt["outcome"] == "accepted"
    assert "could not be recorded" in attempt["reason"]


def test_the_smtp_reply_to_an_unknown_outcome_never_says_nothing_was_stored() -> None:
    """An unknown outcome names the mail; it is transient (451) only when the Message-ID
    deduplicates a retry, else permanent (554) so no MTA retries it blindly."""
    unknown = OutcomeUnknown("lost", mail_id="01ABC")
    deduplicated = outcome_unknown(unknown, deduplicated=True)
    blind = outcome_unknown(unknown, deduplicated=False)
    assert deduplicated.startswith("451 4.3.0 ") and "01ABC" in deduplicated
    assert blind.startswith("554 5.3.0 ") and "GET /mail/01ABC" in blind
    assert all("nothing" not in reply for reply in (deduplicated, blind))


async def test_a_caller_torn_down_mid_operation_is_not_kept_alive(tmp_path: Path) -> None:
    """A caller cancelled from outside (not its own timeout) while its operation runs ends at
    once: the operation still commits, but the caller is not kept running."""
    started.clear()
    release.clear()
    store = SQLiteStore(str(tmp_path / "m.db"))
    async with store:
        task = asyncio.create_task(store.run(slow_add, mail("m1")))
        try:
            await asyncio.to_thread(started.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            release.set()
        await store.add(mail("after", created_at=2000.0))  # the writer is past slow_add
        assert await store.load("m1") is not None

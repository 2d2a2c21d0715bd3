"""The figures /metrics and the dashboard read are kept as mails move (``store.summary``):
after any mix of operations they are what a count of every row finds (``recount``), on
both databases, after many transactions at once, and after an upgrade of a store that
had rows before the figures were kept."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mailman.core.messages import StatusUpdate, encode
from mailman.core.model import (
    Address,
    Attempt,
    Check,
    DeliveryEvent,
    EventKind,
    Mail,
    Outcome,
    Status,
)
from mailman.store import Store
from mailman.store.dialect import Dialect
from mailman.store.mysql import MIGRATIONS as MYSQL_MIGRATIONS
from mailman.store.mysql import MySQLStore
from mailman.store.operation import Engine, Statement, Steps, write
from mailman.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from mailman.store.sqlite import SQLiteStore

from ..support.databases import fresh_mysql

#: The schema before the figures were kept (migrations 1..7).
BEFORE_FIGURES = 7

#: Makes an unopened store.
Maker = Callable[[], Store]


def mail(mail_id: str, at: float = 1000.0, send_at: float | None = None) -> Mail:
    return Mail(
        id=mail_id,
        sender=Address("from@example.com"),
        to=(Address("to@example.com"),),
        subject="hello",
        text="body",
        created_at=at,
        send_at=send_at,
    )


async def call(
    store: Store,
    mail_id: str,
    provider: str,
    round_: int,
    outcome: Outcome,
    status: Status,
    at: float,
) -> Attempt:
    """One provider call as a sender makes it: begun (pending), then its outcome."""
    begun = await store.begin_attempt(mail_id, provider, round_, at, stale_before=0.0)
    assert begun is not None and begun.attempt_id is not None, begun
    reason = None if outcome is Outcome.ACCEPTED else f"{outcome.value} answer"
    done = Attempt(provider, round_, at, outcome, reason, f"{mail_id}-msg", id=begun.attempt_id)
    await store.apply(
        [StatusUpdate(mail_id, status, at + 1, provider, f"{mail_id}-msg", attempt=done)]
    )
    return done


def event(mail_id: str, kind: EventKind, at: float, bounce: str | None = None) -> DeliveryEvent:
    return DeliveryEvent(mail_id, "sendgrid", kind, at, f"{mail_id}-{kind.value}", bounce)


async def mixed_workload(store: Store) -> None:
    """Mails accepted, scheduled, claimed, sent, failed, bounced and delivered by events,
    retried, dead-lettered, failed by hand, left pending and swept; repeats included."""
    for n in range(1, 11):
        await store.add(mail(f"m{n}", 1000.0 + n))
    await store.add(mail("m1", 1000.0))  # a repeated add: nothing new
    await store.add(mail("s1", 1000.0, send_at=2000.0))
    await store.add(mail("s2", 1000.0, send_at=9000.0))
    entries = await store.claim_outbox("relay", 100, 30.0, 1010.0)
    await store.published([e.id for e in entries if e.mail_id != "m9"])
    # m1: accepted; the same answer applied again changes nothing.
    done = await call(store, "m1", "sendgrid", 0, Outcome.ACCEPTED, Status.SENT, 1020.0)
    await store.apply([StatusUpdate("m1", Status.SENT, 1022.0, "sendgrid", attempt=done)])
    # m2: SendGrid failed, Mailgun took it in a retry round, then it was delivered.
    await call(store, "m2", "sendgrid", 0, Outcome.TRANSIENT, Status.SENDING, 1020.0)
    await call(store, "m2", "mailgun", 1, Outcome.ACCEPTED, Status.SENT, 1030.0)
    await store.record_events([event("m2", EventKind.DELIVERED, 1040.0)])
    # m3: sent, delivered, then a hard bounce (twice: kept once); a soft one moves nothing.
    await call(store, "m3", "sendgrid", 0, Outcome.ACCEPTED, Status.SENT, 1020.0)
    delivered, bounced = (
        event("m3", EventKind.DELIVERED, 1040.0),
        event("m3", EventKind.BOUNCED, 1050.0, "hard"),
    )
    await store.record_events([delivered, bounced, bounced])
    await store.record_events([event("m4", EventKind.BOUNCED, 1041.0, "soft")])
    # m4: no answer (unknown), then asking found the provider had taken it.
    unknown = await call(store, "m4", "mailgun", 0, Outcome.UNKNOWN, Status.SENDING, 1020.0)
    checked = StatusUpdate(
        "m4",
        Status.SENT,
        1025.0,
        "mailgun",
        attempt=Attempt(
            "mailgun",
            0,
            1020.0,
            Outcome.UNKNOWN,
            unknown.reason,
            id=unknown.id,
            checked=Check.TAKEN,
        ),
    )
    await store.apply([checked])
    # m5: rejected (failed), retried by hand, then dead-lettered (failed again).
    await call(store, "m5", "sendgrid", 0, Outcome.REJECTED, Status.FAILED, 1020.0)
    assert (await store.retry("m5", 1030.0) or pytest.fail("m5")).changed
    assert not (await store.retry("m5", 1031.0) or pytest.fail("m5")).changed
    await store.add_dead_letter("send.sendgrid", "m5", b"x", "boom", 1040.0)
    # m6: failed by hand; moving it again changes nothing.
    await store.transition("m6", Status.FAILED, 1020.0, "by hand")
    await store.transition("m6", Status.FAILED, 1021.0, "by hand")
    # m7: a call in flight whose process died: the sweeper makes it unknown.
    assert await store.begin_attempt("m7", "sendgrid", 0, 1020.0, stale_before=0.0)
    await store.sweep(1200.0, stale_before=1100.0)
    # m8: an attempt recorded only with its answer (no begin), misconfigured, in round 2;
    # the same update again, in one batch and in the next: recorded once.
    late = StatusUpdate(
        "m8",
        Status.SENDING,
        1020.0,
        "mailgun",
        attempt=Attempt("mailgun", 2, 1020.0, Outcome.MISCONFIGURED, "401"),
    )
    await store.apply([late, late])
    await store.apply([late])
    # m9: a pending call left when the process restarts (requeue: it becomes unknown).
    assert await store.begin_attempt("m9", "mailgun", 0, 1020.0, stale_before=0.0)
    await store.requeue_unfinished()
    # m10: a call whose process died, found by the next begin (refused: unchecked).
    assert await store.begin_attempt("m10", "sendgrid", 1, 1020.0, stale_before=0.0)
    again = await store.begin_attempt("m10", "mailgun", 2, 1500.0, stale_before=1400.0)
    assert again is not None and again.why == "unchecked"
    # s1's time came; s2's has not.
    assert await store.release_scheduled(2000.0) == ["s1"]
    # A dead letter about no mail, replayed; another left waiting.
    letter = await store.add_dead_letter("status", None, b"y", "undecodable", 1051.0)
    await store.mark_replayed([letter], 1052.0)
    await store.add_dead_letter("status", None, b"z", "undecodable", 1053.0)
    # Updates and events about mails the store does not have change nothing.
    await store.apply([StatusUpdate("nobody", Status.SENT, 1060.0, "sendgrid")])
    await store.record_events([event("nobody", EventKind.DELIVERED, 1060.0)])


@pytest.fixture(params=["sqlite", "mysql"])
async def fresh_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty store of each kind."""
    if request.param == "sqlite":
        async with SQLiteStore(str(tmp_path / "mailman.db")) as opened:
            yield opened
        return
    async with fresh_mysql("figures") as url, MySQLStore.from_url(url) as opened:
        yield opened


async def test_figures_kept_match_a_recount_after_a_mixed_workload(fresh_store: Store) -> None:
    """After mails were sent, failed, bounced and delivered by events, retried,
    dead-lettered and swept, the figures kept are those a count of every row finds."""
    store = fresh_store
    assert await store.metrics_snapshot() == await store.recount()
    await mixed_workload(store)
    kept, counted = await store.metrics_snapshot(), await store.recount()
    assert kept == counted
    assert kept.mails == {
        "sent": 2,  # m1, m4
        "delivered": 1,  # m2
        "bounced": 1,  # m3
        "failed": 2,  # m5 (dead-lettered), m6
        "sending": 4,  # m7, m8, m9, m10
        "queued": 1,  # s1
        "scheduled": 1,  # s2
    }
    assert kept.attempts[("sendgrid", "unknown")] == 2  # m7 swept, m10 found by a begin
    assert kept.retries == {"mailgun": 2, "sendgrid": 1}  # m2, m8; m10
    assert kept.suppressed == {"mailgun": 1}  # m4
    assert kept.dead_letters == 2


async def test_figures_kept_match_a_recount_after_many_transactions_at_once(
    fresh_store: Store,
) -> None:
    """Many mails accepted, begun and answered concurrently (MySQL: transactions at once
    on the same figures) leave the figures a recount finds."""
    store = fresh_store
    ids = [f"c{n:03}" for n in range(60)]
    await asyncio.gather(*(store.add(mail(i)) for i in ids))
    outcomes = (Outcome.ACCEPTED, Outcome.TRANSIENT, Outcome.REJECTED)
    statuses = {Outcome.ACCEPTED: Status.SENT, Outcome.TRANSIENT: Status.SENDING}
    await asyncio.gather(
        *(
            call(
                store,
                i,
                ("sendgrid", "mailgun")[n % 2],
                n % 3,
                outcomes[n % 3],
                statuses.get(outcomes[n % 3], Status.FAILED),
                1100.0 + n,
            )
            for n, i in enumerate(ids)
        )
    )
    await asyncio.gather(
        *(store.record_events([event(i, EventKind.DELIVERED, 1300.0)]) for i in ids[::3])
    )
    kept = await store.metrics_snapshot()
    assert kept == await store.recount()
    assert kept.mails == {"delivered": 20, "sending": 20, "failed": 20}


async def test_retention_takes_nothing_off_the_totals(fresh_store: Store) -> None:
    """Final mails purged and dropped by retention, or erased, still count where they
    ended, their attempts too: totals never go down. A scheduled mail erased counts as
    failed; a call still pending on a mail erased is in flight no longer; the mails on
    their way count as before."""
    store = fresh_store
    await mixed_workload(store)
    # p1: failed by hand while a call was in flight (pending), then erased.
    await store.add(mail("p1", 1000.0))
    assert await store.begin_attempt("p1", "mailgun", 0, 1100.0, stale_before=0.0)
    await store.transition("p1", Status.FAILED, 1101.0, "by hand")
    before = await store.metrics_snapshot()
    assert before == await store.recount()
    await store.purge_bodies(1e9, 1e9)
    assert await store.metrics_snapshot() == before
    assert (await store.erase("p1", 1e9) or pytest.fail("p1")).erased
    assert (await store.erase("s2", 1e9) or pytest.fail("s2")).erased  # scheduled
    assert await store.drop_records(1e9) == 6
    after, counted = await store.metrics_snapshot(), await store.recount()
    assert counted.mails == {"sending": 4, "queued": 1}
    expected = {**before.mails, "failed": before.mails["failed"] + 1}  # s2, cancelled
    del expected["scheduled"]
    assert after.mails == expected
    pending = ("mailgun", "pending")
    assert before.attempts[pending] == 1  # p1's
    assert after.attempts == {k: n for k, n in before.attempts.items() if k != pending}
    assert pending not in counted.attempts
    assert after.retries == before.retries and after.suppressed == before.suppressed


# --- an upgraded store -------------------------------------------------------------------


@write
def _plant_rows(d: Dialect) -> Steps[None]:
    """Rows as the code before the figures left them (schema 7), written directly."""
    m = d.mark
    rows = [
        ("u1", "sent"),
        ("u2", "failed"),
        ("u3", "sending"),
        ("u4", "queued"),
        ("u5", "bounced"),
        ("u6", "delivered"),
    ]
    for mail_id, status in rows:
        yield Statement(
            f"INSERT INTO mails (id, status, payload, created_at, updated_at) "
            f"VALUES ({d.marks(5)})",
            (mail_id, status, encode(mail(mail_id)).decode(), 1000.0, 1001.0),
        )
    attempts = [
        ("u1", "sendgrid", 0, "transient", None),
        ("u1", "mailgun", 1, "accepted", None),
        ("u2", "sendgrid", 0, "rejected", None),
        ("u3", "mailgun", 0, "pending", None),
        ("u5", "sendgrid", 0, "unknown", "taken"),
        ("u6", "sendgrid", 2, "accepted", None),
    ]
    for n, (mail_id, provider, round_, outcome, checked) in enumerate(attempts):
        yield Statement(
            "INSERT INTO attempts (mail_id, provider, round, at, outcome, checked) "
            f"VALUES ({d.marks(6)})",
            (mail_id, provider, round_, 1000.0 + n, outcome, checked),
        )
    yield Statement(
        f"INSERT INTO dead_letters (mailbox, mail_id, payload, error, at, replayed_at) "
        f"VALUES ({d.marks(6)}), ({d.marks(6)})",
        ("status", "u2", "eA==", "boom", 1000.0, None, "status", None, "eQ==", "x", 1.0, 2.0),
    )
    yield Statement(f"INSERT INTO outbox (mail_id, accepted_at) VALUES ({m}, {m})", ("u4", 1.0))


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_an_upgraded_store_shows_the_figures_its_rows_had(kind: str, tmp_path: Path) -> None:
    """A store with rows made before the figures were kept (migrations 1..7) opens with
    the figures a count of its rows finds, and keeps them right as mails move on."""
    async with _older_and_newer(kind, tmp_path) as (older, newer):
        async with older() as store:
            assert isinstance(store, Engine)
            await store.run(_plant_rows)
            counted = await store.recount()
        async with newer() as store:
            kept = await store.metrics_snapshot()
            assert kept == counted == await store.recount()
            assert kept.mails["sent"] == 1 and kept.attempts[("mailgun", "pending")] == 1
            assert kept.retries == {"mailgun": 1, "sendgrid": 1}
            assert kept.suppressed == {"sendgrid": 1} and kept.dead_letters == 1
            await call(store, "u4", "sendgrid", 0, Outcome.ACCEPTED, Status.SENT, 1100.0)
            await store.record_events([event("u1", EventKind.DELIVERED, 1200.0)])
            after = await store.metrics_snapshot()
            assert after == await store.recount()
            assert after.mails["delivered"] == 2 and "queued" not in after.mails


@contextlib.asynccontextmanager
async def _older_and_newer(kind: str, tmp_path: Path) -> AsyncIterator[tuple[Maker, Maker]]:
    """Makers of a store of the schema before the figures, and of the latest, on one
    database."""
    if kind == "sqlite":
        path = str(tmp_path / "mailman.db")
        yield (
            lambda: SQLiteStore(path, migrations=SQLITE_MIGRATIONS[:BEFORE_FIGURES]),
            lambda: SQLiteStore(path),
        )
        return
    async with fresh_mysql("upgrade") as url:
        yield (
            lambda: MySQLStore.from_url(url, migrations=MYSQL_MIGRATIONS[:BEFORE_FIGURES]),
            lambda: MySQLStore.from_url(url),
        )

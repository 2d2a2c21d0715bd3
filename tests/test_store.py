"""The store contract: what every ``Store`` implementation must do.

Written against the ``Store`` interface only; the ``make_store`` fixture is
parametrised by backend, so a ``"mysql"`` param runs the same suite there.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import pytest

from actors.messages import Address, Attempt, Mail, Outcome, Status, StatusUpdate
from actors.sqlite import SQLiteStore
from actors.store import Pending, Store, Transition

#: Makes a new, unopened store on the test's database; ``extra`` migrations
#: are appended to the backend's own.
MakeStore = Callable[..., Store]


@runtime_checkable
class Versioned(Protocol):
    """A store whose schema is versioned by migrations."""

    migrations: tuple[str, ...]

    async def schema_version(self) -> int: ...


@pytest.fixture(params=["sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    if request.param == "sqlite":
        from actors.sqlite import MIGRATIONS

        path = str(tmp_path / "mailman.db")

        def make(extra: Sequence[str] = ()) -> Store:
            return SQLiteStore(path, migrations=(*MIGRATIONS, *extra))

        return make
    raise AssertionError(f"unknown backend {request.param}")


@pytest.fixture
async def store(make_store: MakeStore) -> AsyncIterator[Store]:
    async with make_store() as opened:
        yield opened


def mail(
    mail_id: str = "m1", created_at: float = 1000.0, subject: str = "hello", **fields: object
) -> Mail:
    return Mail(
        id=mail_id,
        sender=Address("from@example.com"),
        to=(Address("to@example.com"),),
        subject=subject,
        text="body",
        created_at=created_at,
        **fields,  # type: ignore[arg-type]
    )


def update(
    status: Status,
    at: float,
    mail_id: str = "m1",
    outcome: Outcome | None = None,
    provider: str = "sendgrid",
    round: int = 0,
    **fields: object,
) -> StatusUpdate:
    """An update from ``provider``, with an attempt when ``outcome`` is given."""
    attempt = Attempt(provider, round, at, outcome) if outcome is not None else None
    return StatusUpdate(
        mail_id,
        status,
        at,
        provider=provider,
        attempt=attempt,
        **fields,  # type: ignore[arg-type]
    )


async def status_of(store: Store, mail_id: str = "m1") -> Status:
    record = await store.get(mail_id)
    assert record is not None
    return record.status


# --- add / get / load --------------------------------------------------------


async def test_add_get_round_trips_every_field(store: Store) -> None:
    """Every Mail field, unicode included, comes back exactly as it was added."""
    original = Mail(
        id="01J0ROUNDTRIP",
        sender=Address("zoë@example.com", "Zoë Ünïcødé"),
        to=(Address("ann@example.com", 'Ann "A" O\'Neil'), Address("bob@example.com")),
        subject="Grüße 👋 — ünïcødé; 'quotes' \"too\"",
        text="plain ✓\nsecond line",
        html="<p>héllo <b>wörld</b> 🌍</p>",
        cc=(Address("cc@example.com", "Cé Cé"),),
        bcc=(Address("bcc1@example.com"), Address("bcc2@example.com", "B2")),
        reply_to=Address("reply@example.com", "Réponse"),
        created_at=1717171717.123456,
    )
    await store.add(original)

    record = await store.get(original.id)
    assert record is not None
    assert record.mail == original
    assert record.status is Status.QUEUED
    assert record.attempts == ()
    assert (record.provider, record.provider_message_id, record.reason) == (None, None, None)
    assert await store.load(original.id) == (original, Status.QUEUED)


async def test_optional_fields_absent_round_trip(store: Store) -> None:
    """A mail without html, cc, bcc or reply_to comes back without them."""
    original = Mail("m1", Address("a@example.com"), (Address("b@example.com"),), "s", html="<p>")
    await store.add(original)
    assert await store.load("m1") == (original, Status.QUEUED)


async def test_unknown_id_is_none(store: Store) -> None:
    """get, load and transition answer None for an unknown mail id."""
    assert await store.get("nope") is None
    assert await store.load("nope") is None
    assert await store.transition("nope", Status.SENDING, 1.0) is None


async def test_add_twice_is_a_no_op(store: Store) -> None:
    """Adding an id again changes neither the stored mail nor its status."""
    first = mail(subject="first")
    await store.add(first)
    await store.apply([update(Status.SENDING, 1001.0)])

    await store.add(mail(subject="second"))

    assert await store.load("m1") == (first, Status.SENDING)


# --- apply ---------------------------------------------------------------------


async def test_apply_sending_then_sent_records_provider(store: Store) -> None:
    """sending -> sent stores the provider, its message id and the attempt."""
    await store.add(mail())
    await store.apply([update(Status.SENDING, 1001.0, provider="sendgrid")])
    await store.apply(
        [
            update(
                Status.SENT,
                1002.0,
                outcome=Outcome.ACCEPTED,
                provider="sendgrid",
                provider_message_id="sg-123",
            )
        ]
    )

    record = await store.get("m1")
    assert record is not None
    assert record.status is Status.SENT
    assert record.provider == "sendgrid"
    assert record.provider_message_id == "sg-123"
    assert record.updated_at == 1002.0
    assert record.attempts == (Attempt("sendgrid", 0, 1002.0, Outcome.ACCEPTED),)


async def test_sent_never_goes_back_to_sending(store: Store) -> None:
    """A SENDING applied after SENT leaves the mail sent, provider data intact."""
    await store.add(mail())
    await store.apply(
        [update(Status.SENT, 1002.0, outcome=Outcome.ACCEPTED, provider_message_id="sg-1")]
    )
    await store.apply([update(Status.SENDING, 1003.0, provider="mailgun")])

    record = await store.get("m1")
    assert record is not None
    assert record.status is Status.SENT
    assert record.provider == "sendgrid"
    assert record.provider_message_id == "sg-1"
    assert record.updated_at == 1002.0


async def test_failed_is_final(store: Store) -> None:
    """A failed mail moves neither to sending nor to sent; the reason is kept."""
    await store.add(mail())
    await store.apply([update(Status.FAILED, 1002.0, reason="every provider rejected it")])
    await store.apply([update(Status.SENDING, 1003.0)])
    await store.apply([update(Status.SENT, 1004.0, provider_message_id="late")])

    record = await store.get("m1")
    assert record is not None
    assert record.status is Status.FAILED
    assert record.reason == "every provider rejected it"
    assert record.provider_message_id is None


async def test_queued_is_never_reached_again(store: Store) -> None:
    """No update moves a mail back to queued."""
    await store.add(mail())
    await store.apply([update(Status.SENDING, 1001.0)])
    await store.apply([update(Status.QUEUED, 1002.0)])
    assert await status_of(store) is Status.SENDING


async def test_repeated_update_records_the_attempt_once(store: Store) -> None:
    """Replaying the same update (at-least-once delivery) records its attempt once."""
    await store.add(mail())
    replayed = update(Status.SENDING, 1001.0, outcome=Outcome.TRANSIENT)
    await store.apply([replayed])
    await store.apply([replayed, replayed])

    record = await store.get("m1")
    assert record is not None
    assert record.attempts == (Attempt("sendgrid", 0, 1001.0, Outcome.TRANSIENT),)


async def test_attempts_are_ordered_oldest_first(store: Store) -> None:
    """get() lists attempts by time, whatever order they were applied in."""
    await store.add(mail())
    late = Attempt("mailgun", 1, 1030.0, Outcome.ACCEPTED, message_id="mg-1")
    early = Attempt("sendgrid", 0, 1010.0, Outcome.TRANSIENT, reason="503")
    middle = Attempt("mailgun", 0, 1020.0, Outcome.SKIPPED, reason="circuit open")
    await store.apply(
        [
            StatusUpdate("m1", Status.SENT, 1030.0, provider="mailgun", attempt=late),
            StatusUpdate("m1", Status.SENDING, 1010.0, attempt=early),
        ]
    )
    await store.apply([StatusUpdate("m1", Status.SENDING, 1020.0, attempt=middle)])

    record = await store.get("m1")
    assert record is not None
    assert record.attempts == (early, middle, late)
    assert record.status is Status.SENT


async def test_unknown_mail_in_batch_does_not_fail_the_rest(store: Store) -> None:
    """Updates for an unknown mail are ignored; the rest of the batch is applied."""
    await store.add(mail("m1"))
    await store.add(mail("m2"))
    await store.apply(
        [
            update(Status.SENDING, 1001.0, mail_id="m1", outcome=Outcome.TRANSIENT),
            update(Status.SENT, 1001.0, mail_id="ghost", outcome=Outcome.ACCEPTED),
            update(Status.SENT, 1002.0, mail_id="m2", outcome=Outcome.ACCEPTED),
        ]
    )

    assert await status_of(store, "m1") is Status.SENDING
    assert await status_of(store, "m2") is Status.SENT
    assert await store.get("ghost") is None


async def test_apply_empty_batch(store: Store) -> None:
    """An empty batch is accepted and changes nothing."""
    await store.add(mail())
    await store.apply([])
    assert await status_of(store) is Status.QUEUED


# --- transition ------------------------------------------------------------------


async def test_transition_results(store: Store) -> None:
    """transition() reports a change, a repeat and a refused move with the current status."""
    await store.add(mail())

    assert await store.transition("m1", Status.SENDING, 1001.0) == Transition(True, Status.SENDING)
    # Repeating sending is allowed (another provider may be tried).
    assert await store.transition("m1", Status.SENDING, 1002.0) == Transition(True, Status.SENDING)
    assert await store.transition("m1", Status.FAILED, 1003.0, "gave up") == Transition(
        True, Status.FAILED
    )
    # A repeat of the terminal status changes nothing.
    assert await store.transition("m1", Status.FAILED, 1004.0, "again") == Transition(
        False, Status.FAILED
    )
    # A refused move reports where the mail stands.
    assert await store.transition("m1", Status.SENT, 1005.0) == Transition(False, Status.FAILED)
    assert await store.transition("m1", Status.SENDING, 1006.0) == Transition(False, Status.FAILED)

    record = await store.get("m1")
    assert record is not None
    assert (record.status, record.reason, record.updated_at) == (Status.FAILED, "gave up", 1003.0)


async def test_transition_unknown_mail(store: Store) -> None:
    """transition() on an unknown id is None and creates nothing."""
    assert await store.transition("ghost", Status.SENT, 1.0) is None
    assert await store.get("ghost") is None


# --- unfinished --------------------------------------------------------------------


async def test_unfinished_lists_queued_and_sending_oldest_first(store: Store) -> None:
    """unfinished() lists queued and sending mails by acceptance time, never sent or failed."""
    await store.add(mail("c-sending", created_at=1003.0))
    await store.add(mail("a-queued", created_at=1001.0))
    await store.add(mail("sent", created_at=1000.0))
    await store.add(mail("failed", created_at=999.0))
    await store.add(mail("b-queued", created_at=1001.0))  # same time: ordered by id
    await store.apply(
        [
            update(Status.SENDING, 1010.0, mail_id="c-sending"),
            update(Status.SENT, 1010.0, mail_id="sent"),
            update(Status.FAILED, 1010.0, mail_id="failed"),
        ]
    )

    assert await store.unfinished() == [
        Pending("a-queued", 1001.0),
        Pending("b-queued", 1001.0),
        Pending("c-sending", 1003.0),
    ]


async def test_unfinished_empty(store: Store) -> None:
    """An empty store has nothing unfinished."""
    assert await store.unfinished() == []


# --- durability and schema ------------------------------------------------------------


async def test_data_survives_close_and_reopen(make_store: MakeStore) -> None:
    """Mails, statuses and attempts are still there after the store is closed and reopened."""
    async with make_store() as first:
        await first.add(mail("m1"))
        await first.add(mail("m2", created_at=1001.0))
        await first.apply([update(Status.SENT, 1002.0, outcome=Outcome.ACCEPTED)])
        before = await first.get("m1")

    async with make_store() as second:
        assert await second.get("m1") == before
        assert await second.load("m2") == (mail("m2", created_at=1001.0), Status.QUEUED)
        assert await second.unfinished() == [Pending("m2", 1001.0)]


async def test_close_is_idempotent(make_store: MakeStore) -> None:
    """close() may be called again, and on a store never opened."""
    never_opened = make_store()
    await never_opened.close()
    store = make_store()
    await store.open()
    await store.close()
    await store.close()


async def test_schema_is_at_the_latest_version(store: Store) -> None:
    """A freshly opened store records the latest migration as its schema version."""
    assert isinstance(store, Versioned)
    assert await store.schema_version() == len(store.migrations) >= 1


async def test_reopen_applies_only_missing_migrations(make_store: MakeStore) -> None:
    """Reopening runs no migration twice; a newly appended one is applied once."""
    async with make_store() as first:
        assert isinstance(first, Versioned)
        latest = await first.schema_version()
        await first.add(mail())

    # Migrations are not idempotent (plain CREATE TABLE): a re-run would fail here.
    async with make_store() as again:
        assert isinstance(again, Versioned)
        assert await again.schema_version() == latest

    extra = ("CREATE TABLE migration_probe (x INTEGER)",)
    for _ in range(2):
        async with make_store(extra) as newer:
            assert isinstance(newer, Versioned)
            assert await newer.schema_version() == latest + 1
            assert await newer.load("m1") == (mail(), Status.QUEUED)


# --- concurrency ---------------------------------------------------------------------


async def test_concurrent_adds_all_land(store: Store) -> None:
    """200 adds from concurrent coroutines are all stored."""
    mails = [mail(f"m{i:03d}", created_at=1000.0 + i) for i in range(200)]
    await asyncio.gather(*(store.add(m) for m in mails))

    assert [p.mail_id for p in await store.unfinished()] == [m.id for m in mails]
    loaded = await asyncio.gather(*(store.load(m.id) for m in mails))
    assert loaded == [(m, Status.QUEUED) for m in mails]


async def test_concurrent_batches_and_transitions_do_not_interleave(store: Store) -> None:
    """Concurrent apply() and transition() calls each act atomically and all land."""
    ids = [f"m{i:02d}" for i in range(50)]
    for i, mail_id in enumerate(ids):
        await store.add(mail(mail_id, created_at=1000.0 + i))

    await asyncio.gather(
        *(
            store.apply([update(Status.SENDING, 1100.0, mail_id=m, outcome=Outcome.TRANSIENT)])
            for m in ids
        ),
        *(store.transition(m, Status.SENT, 1200.0) for m in ids[::2]),
    )

    for i, mail_id in enumerate(ids):
        record = await store.get(mail_id)
        assert record is not None
        assert record.status is (Status.SENT if i % 2 == 0 else Status.SENDING)
        assert len(record.attempts) == 1


async def _next_loop_turn() -> None:
    """Let every ready task run one step (a yield, not a timed sleep)."""
    turn = asyncio.get_running_loop().create_future()
    turn.get_loop().call_soon(turn.set_result, None)
    await turn


async def test_cancelled_operations_leave_the_store_usable(store: Store) -> None:
    """Cancelling callers at any point leaves no transaction open and loses no later add."""
    mails = [mail(f"m{i:02d}", created_at=1000.0 + i) for i in range(20)]
    for turns in range(40):
        batch = asyncio.gather(*(store.add(m) for m in mails))
        for _ in range(turns):
            await _next_loop_turn()
        batch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await batch

    await asyncio.gather(*(store.add(m) for m in mails))
    await store.apply([update(Status.SENT, 1100.0, mail_id="m00")])
    assert [p.mail_id for p in await store.unfinished()] == [m.id for m in mails[1:]]


# --- SQLite only -------------------------------------------------------------------------


async def test_sqlite_in_memory() -> None:
    """ ":memory:" opens a working, fully migrated store."""
    store = SQLiteStore(":memory:")
    async with store:
        await store.add(mail())
        assert await store.load("m1") == (mail(), Status.QUEUED)
        assert await store.schema_version() == len(store.migrations)


async def test_sqlite_file_uses_wal(tmp_path: Path) -> None:
    """A file database is left in WAL mode with the versions of every migration recorded."""
    path = tmp_path / "wal.db"
    store = SQLiteStore(str(path))
    async with store:
        await store.add(mail())
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        versions = [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == list(range(1, len(store.migrations) + 1))

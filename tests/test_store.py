"""The store contract: what every ``Store`` implementation must do.

Written against the ``Store`` interface only; the ``make_store`` fixture is
parametrised by backend, so a ``"mysql"`` param runs the same suite there.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import secrets
import sqlite3
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote, urlsplit, urlunsplit

import aiomysql
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
from mailman.store import (
    ApiKey,
    BreakerState,
    EventResult,
    Idempotency,
    IdempotencyMismatch,
    MailQuery,
    MailRecord,
    OutboxEntry,
    Pending,
    Store,
    Transition,
    migrations,
    open_store,
)
from mailman.store.dialect import Dialect
from mailman.store.mysql import MIGRATIONS as MYSQL_MIGRATIONS
from mailman.store.mysql import MySQLStore
from mailman.store.operation import Engine, Statement, Steps, write
from mailman.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from mailman.store.sqlite import SQLiteStore

from .support.databases import DEFAULT_MYSQL_URL

T = TypeVar("T")

#: Client error codes that mean "no server there" (not: "the server said no").
_UNREACHABLE = {2002, 2003, 2005, 2006, 2013}

#: Makes a new, unopened store on the test's database: ``make(extra=(), upto=None)``,
#: with the backend's first ``upto`` migrations (None: all) and then ``extra``.
MakeStore = Callable[..., Store]


@runtime_checkable
class Versioned(Protocol):
    """A store whose schema is versioned by migrations."""

    migrations: tuple[str, ...]

    async def schema_version(self) -> int: ...


def _in_own_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on a private loop in another thread (session fixtures)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[str]:
    """The URL of this run's own database, ``mailman_test_<hex>``, dropped at the end.

    Unreachable server: the MySQL leg is skipped, except in CI (``CI=true``)
    where it fails: CI must never pass by skipping it.
    """
    base = os.environ.get("MYSQL_URL") or DEFAULT_MYSQL_URL
    url = _with_database(base, f"mailman_test_{secrets.token_hex(6)}")
    try:
        _in_own_loop(MySQLStore.create_database(url))
    except (OSError, aiomysql.OperationalError) as exc:
        code = exc.args[0] if isinstance(exc, aiomysql.OperationalError) else None
        if isinstance(exc, aiomysql.OperationalError) and code not in _UNREACHABLE:
            raise
        parts = urlsplit(base)
        where = f"{parts.hostname}:{parts.port or 3306}"
        message = f"no MySQL/MariaDB server reachable at {where} (set MYSQL_URL): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield url
    _in_own_loop(MySQLStore.drop_database(url))


@pytest.fixture
async def mysql_url(mysql_server: str) -> str:
    """The session's database, emptied for this test (dropped and made again: ~20 ms)."""
    await MySQLStore.drop_database(mysql_server)
    await MySQLStore.create_database(mysql_server)
    return mysql_server


@pytest.fixture(params=["sqlite", "mysql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    if request.param == "sqlite":
        path = str(tmp_path / "mailman.db")

        def make(extra: Sequence[str] = (), upto: int | None = None) -> Store:
            return SQLiteStore(path, migrations=(*SQLITE_MIGRATIONS[:upto], *extra))

        return make
    if request.param == "mysql":
        url: str = request.getfixturevalue("mysql_url")

        def make_mysql(extra: Sequence[str] = (), upto: int | None = None) -> Store:
            return MySQLStore.from_url(url, migrations=(*MYSQL_MIGRATIONS[:upto], *extra))

        return make_mysql
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


async def test_one_calls_moves_are_made_in_move_order(store: Store) -> None:
    """The moves of one apply() call are made in MOVE_ORDER, whatever order they came in:
    a sent and a failed for one mail end sent, a delivered before its sent ends delivered."""
    await store.add(mail("m1"))
    await store.add(mail("m2"))
    await store.apply(
        [
            update(Status.FAILED, 1003.0, mail_id="m1", reason="gave up"),
            update(Status.SENT, 1002.0, mail_id="m1", provider_message_id="sg-1"),
            update(Status.DELIVERED, 1005.0, mail_id="m2"),
            update(Status.SENT, 1004.0, mail_id="m2"),
        ]
    )
    first = await store.get("m1")
    assert first is not None
    assert (first.status, first.reason, first.provider_message_id) == (Status.SENT, None, "sg-1")
    assert await status_of(store, "m2") is Status.DELIVERED


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


async def test_nothing_moves_a_mail_to_queued_by_hand(store: Store) -> None:
    """transition() to queued changes nothing, a scheduled mail's included (release_scheduled
    and retry make mails queued): it reports where the mail stands."""
    await store.add(mail("later", send_at=9000.0))
    assert await store.transition("later", Status.QUEUED, 1001.0) == Transition(
        False, Status.SCHEDULED
    )
    assert await status_of(store, "later") is Status.SCHEDULED


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


@write
def _plant(d: Dialect, planted: Mail, entry: bool) -> Steps[None]:
    """A ``sending`` mail, one attempt and (from version 2 on) its outbox entry, in the
    columns of schema version 1: what a database of any version can hold."""
    yield Statement(
        f"INSERT INTO mails (id, status, payload, created_at, updated_at) VALUES ({d.marks(5)})",
        (planted.id, "sending", encode(planted).decode(), planted.created_at, 1001.0),
    )
    yield Statement(
        "INSERT INTO attempts (mail_id, provider, round, at, outcome, reason) "
        f"VALUES ({d.marks(6)})",
        (planted.id, "sendgrid", 0, 1001.0, "transient", "503"),
    )
    if entry:
        yield Statement(
            f"INSERT INTO outbox (mail_id, accepted_at) VALUES ({d.marks(2)})",
            (planted.id, planted.created_at),
        )


@pytest.mark.parametrize("version", range(1, len(SQLITE_MIGRATIONS)))
async def test_a_database_of_an_older_schema_upgrades_and_keeps_its_data(
    make_store: MakeStore, version: int
) -> None:
    """A database made with the first N migrations opens at the latest version with its
    mail, attempt and outbox entry intact, and every operation works on them."""
    old = mail("old", created_at=1000.0)
    async with make_store(upto=version) as older:
        assert isinstance(older, Versioned) and isinstance(older, Engine)
        assert await older.schema_version() == version
        await older.run(_plant, old, version >= 2)

    async with make_store() as store:
        assert isinstance(store, Versioned)
        assert await store.schema_version() == len(store.migrations) > version
        transient = Attempt("sendgrid", 0, 1001.0, Outcome.TRANSIENT, "503")
        assert await store.get("old") == MailRecord(
            old, Status.SENDING, 1001.0, attempts=(transient,)
        )
        if version >= 2:
            assert [(e.mail_id, e.accepted_at, e.round) for e in await claim_all(store)] == [
                ("old", 1000.0, 0)
            ]
        begun = await store.begin_attempt("old", "mailgun", 1, 1003.0, 0.0)
        assert begun is not None and begun.attempt_id is not None
        done = Attempt("mailgun", 1, 1003.0, Outcome.ACCEPTED, None, "mg-1", id=begun.attempt_id)
        await store.apply(
            [StatusUpdate("old", Status.SENT, 1004.0, "mailgun", "mg-1", attempt=done)]
        )
        assert await store.add(mail("new", created_at=1005.0, tenant="t")) == "new"
        assert await status_of(store, "old") is Status.SENT
        assert await store.mail_for_message("mg-1") == "old"
        assert [m.id for m in await store.list_mails(MailQuery(tenant="t", limit=10))] == ["new"]


def test_both_dialects_have_the_same_numbered_migrations() -> None:
    """Migration N exists for SQLite and for MySQL, under one name, read as package data."""
    folder = resources.files("mailman.store.migrations")
    names = {
        dialect: sorted(
            e.name for e in folder.joinpath(dialect).iterdir() if e.name.endswith(".sql")
        )
        for dialect in ("sqlite", "mysql")
    }
    assert names["sqlite"] == names["mysql"]
    assert len(SQLITE_MIGRATIONS) == len(MYSQL_MIGRATIONS) == len(names["sqlite"]) >= 7


def test_migrations_must_be_numbered_from_one_without_gaps(tmp_path: Path) -> None:
    """A dialect whose migration files skip a number (or repeat one) is refused at load."""
    (tmp_path / "sqlite").mkdir()
    (tmp_path / "sqlite" / "0001_first.sql").write_text("CREATE TABLE a (x INTEGER);")
    (tmp_path / "sqlite" / "README.txt").write_text("not a migration")
    assert migrations.scripts("sqlite", tmp_path) == ("CREATE TABLE a (x INTEGER);",)
    (tmp_path / "sqlite" / "0003_third.sql").write_text("CREATE TABLE c (x INTEGER);")
    with pytest.raises(RuntimeError, match=r"not numbered 1\.\.N"):
        migrations.scripts("sqlite", tmp_path)
    (tmp_path / "sqlite" / "0003_third.sql").unlink()
    (tmp_path / "sqlite" / "0001_again.sql").write_text("CREATE TABLE b (x INTEGER);")
    with pytest.raises(RuntimeError, match="two sqlite migrations numbered 1"):
        migrations.scripts("sqlite", tmp_path)


def _store_imports() -> dict[str, set[str]]:
    """Which modules of ``mailman.store`` each of its modules imports (anywhere in it)."""
    package = Path(__file__).resolve().parent.parent / "mailman" / "store"
    files = {p.stem: p for p in package.glob("*.py")}
    files["migrations"] = package / "migrations" / "__init__.py"
    imports: dict[str, set[str]] = {}
    for name, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = node.module or ""
            if node.level == 0 and module.startswith("mailman.store"):
                module = module.removeprefix("mailman.store").lstrip(".")
            elif node.level != 1:
                continue
            if module:
                found.add(module.split(".")[0])
            else:  # a submodule, or a name of the package itself
                found.update(a.name if a.name in files else "__init__" for a in node.names)
        imports[name] = found & (set(files) - {name})
    return imports


def test_the_store_modules_import_no_circle() -> None:
    """No module of the store imports one that imports it back; the concern modules and the
    interfaces import no driver (only ``open_store``, in the package, picks one)."""
    imports = _store_imports()
    drivers = {"sqlite", "mysql"}
    assert {name for name, found in imports.items() if found & drivers} == {"__init__"}

    def reaches(start: str, seen: frozenset[str]) -> None:
        for module in imports[start]:
            assert module not in seen, f"import circle: {' -> '.join(seen)} -> {module}"
            reaches(module, seen | {module})

    for module in imports:
        if module != "__init__":  # importing a submodule runs the package first, by design
            reaches(module, frozenset({module}))


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


async def test_too_long_ids_are_unknown(store: Store) -> None:
    """An id longer than 64 characters is unknown to every lookup, never an error."""
    long_id = "x" * 65
    assert await store.get(long_id) is None
    assert await store.load(long_id) is None
    assert await store.transition(long_id, Status.SENT, 1.0) is None
    await store.apply([update(Status.SENT, 1.0, mail_id=long_id, outcome=Outcome.ACCEPTED)])
    assert await store.unfinished() == []


async def test_full_precision_times_round_trip(make_store: MakeStore) -> None:
    """Full-precision unix times (time.time()) come back bit for bit."""
    at = time.time() + 0.123456789
    async with make_store() as store:
        await store.add(mail(created_at=at))
        await store.apply([update(Status.SENT, at + 1e-6, outcome=Outcome.ACCEPTED)])
        await store.apply([update(Status.SENT, at + 1e-6, outcome=Outcome.ACCEPTED)])
        record = await store.get("m1")
        assert record is not None
        assert record.updated_at == at + 1e-6
        assert record.attempts == (Attempt("sendgrid", 0, at + 1e-6, Outcome.ACCEPTED),)
        assert [e.accepted_at for e in await claim_all(store)] == [at]


# --- transactional outbox -------------------------------------------------------------


async def claim_all(store: Store, owner: str = "relay", now: float = 5000.0) -> list[OutboxEntry]:
    return await store.claim_outbox(owner, 1000, 30.0, now)


async def test_add_writes_one_outbox_entry(store: Store) -> None:
    """add() writes exactly one outbox entry with the mail; adding the id again writes none."""
    await store.add(mail("m1", created_at=1000.0))
    await store.add(mail("m1", created_at=1000.0, subject="again"))
    await store.add(mail("m2", created_at=1001.0))

    entries = await claim_all(store)
    assert [(e.mail_id, e.accepted_at) for e in entries] == [("m1", 1000.0), ("m2", 1001.0)]
    assert entries[0].id < entries[1].id


async def test_claim_leases_oldest_first_up_to_limit(store: Store) -> None:
    """claim_outbox() hands out unleased entries oldest first, never more than ``limit``."""
    ids = [f"m{i}" for i in range(5)]
    for i, mail_id in enumerate(ids):
        await store.add(mail(mail_id, created_at=1000.0 + i))

    first = await store.claim_outbox("relay-a", 2, 30.0, 5000.0)
    second = await store.claim_outbox("relay-b", 2, 30.0, 5000.0)
    rest = await store.claim_outbox("relay-c", 10, 30.0, 5000.0)

    assert [e.mail_id for e in first] == ids[:2]
    assert [e.mail_id for e in second] == ids[2:4]
    assert [e.mail_id for e in rest] == ids[4:]
    assert await store.claim_outbox("relay-d", 10, 30.0, 5000.0) == []
    assert await store.claim_outbox("relay-d", 0, 30.0, 9999.0) == []


async def test_retry_queues_a_failed_mail_for_a_new_round(store: Store) -> None:
    """retry() moves a failed mail back to queued with an entry for the next round; else no-op."""
    await store.add(mail("m1", created_at=1000.0))
    await store.add(mail("m2", created_at=1001.0))
    for entry in await claim_all(store, now=2000.0):
        await store.published([entry.id])
    await store.apply(
        [
            update(Status.SENDING, 2001.0, "m1", Outcome.TRANSIENT, round=0),
            update(Status.FAILED, 2002.0, "m1", Outcome.REJECTED, round=2, reason="bounced"),
            update(Status.SENT, 2003.0, "m2", Outcome.ACCEPTED),
        ]
    )
    assert await store.retry("m1", 3000.0) == Transition(changed=True, status=Status.QUEUED)
    record = await store.get("m1")
    assert record is not None
    assert (record.status, record.updated_at, record.reason) == (Status.QUEUED, 3000.0, None)
    assert len(record.attempts) == 2  # the history stays
    (entry,) = await claim_all(store, now=3001.0)
    assert (entry.mail_id, entry.accepted_at, entry.round) == ("m1", 3000.0, 3)
    # Only a failed mail: now it is sending, and m2 is sent; an unknown one is None.
    assert await store.retry("m1", 3002.0) == Transition(changed=False, status=Status.SENDING)
    assert await store.retry("m2", 3002.0) == Transition(changed=False, status=Status.SENT)
    assert await store.retry("nope", 3002.0) is None


async def test_backlog_counts_mails_not_yet_final(store: Store) -> None:
    """backlog() counts queued and sending mails, not sent or failed ones."""
    assert await store.backlog() == 0
    for i in range(4):
        await store.add(mail(f"m{i}", created_at=1000.0 + i))
    await store.apply([update(Status.SENDING, 1010.0, "m1"), update(Status.SENT, 1011.0, "m2")])
    await store.apply([update(Status.FAILED, 1012.0, "m3")])
    assert await store.backlog() == 2


async def test_claim_marks_queued_mails_sending(store: Store) -> None:
    """A claim moves its mails from queued to sending; a mail already further stays where it is."""
    await store.add(mail("m1", created_at=1000.0))
    await store.add(mail("m2", created_at=1001.0))
    await store.apply([update(Status.SENT, 1002.0, "m2")])
    await store.requeue_unfinished()  # m2 is sent: no new entry; m1 keeps its one

    entries = await claim_all(store, now=5000.0)
    assert [e.mail_id for e in entries] == ["m1", "m2"]
    assert await status_of(store, "m1") == Status.SENDING
    assert await status_of(store, "m2") == Status.SENT
    record = await store.get("m1")
    assert record is not None and record.updated_at == 5000.0


async def test_claim_removes_what_the_owner_published(store: Store) -> None:
    """``done`` entries go in the claim's own transaction and are never handed out again."""
    for i in range(3):
        await store.add(mail(f"m{i}", created_at=1000.0 + i))
    first = await store.claim_outbox("relay", 2, 30.0, 5000.0)
    assert [e.mail_id for e in first] == ["m0", "m1"]

    rest = await store.claim_outbox("relay", 10, 30.0, 5001.0, done=[e.id for e in first])
    assert [e.mail_id for e in rest] == ["m2"]
    # Long after every lease ran out, only the entry not reported done comes back.
    assert [e.mail_id for e in await claim_all(store, now=9000.0)] == ["m2"]
    # A claim for nothing still removes.
    assert await store.claim_outbox("relay", 0, 30.0, 9001.0, done=[rest[0].id]) == []
    assert await claim_all(store, now=99999.0) == []


async def test_live_lease_is_not_claimed_until_it_runs_out(store: Store) -> None:
    """Entries under a live lease go to no other claimer; once it ran out, they do."""
    await store.add(mail("m1", created_at=1000.0))
    await store.add(mail("m2", created_at=1001.0))

    first = await store.claim_outbox("relay-a", 10, 30.0, 5000.0)
    assert [e.mail_id for e in first] == ["m1", "m2"]
    assert await store.claim_outbox("relay-b", 10, 30.0, 5029.0) == []
    assert await store.claim_outbox("relay-b", 10, 30.0, 5030.0) == []  # lease ends at 5030

    again = await store.claim_outbox("relay-b", 10, 30.0, 5031.0)
    assert again == first
    # relay-b's lease (to 5061) now holds against relay-a.
    assert await store.claim_outbox("relay-a", 10, 30.0, 5040.0) == []


async def test_concurrent_claims_never_share_an_entry(store: Store, make_store: MakeStore) -> None:
    """Many claimers on two store instances (two processes' worth) never get the same entry."""
    # Enough small batches that both instances surely race (one alone could take 60).
    ids = [f"m{i:03d}" for i in range(240)]
    await asyncio.gather(
        *(store.add(mail(mail_id, created_at=1000.0 + i)) for i, mail_id in enumerate(ids))
    )

    owner_of: dict[int, str] = {}
    twice: list[tuple[int, str, str]] = []

    async def relay(on: Store, owner: str) -> None:
        while batch := await on.claim_outbox(owner, 2, 60.0, 5000.0):
            for entry in batch:
                if entry.id in owner_of:
                    twice.append((entry.id, owner_of[entry.id], owner))
                owner_of[entry.id] = owner
            await asyncio.sleep(0)

    async with make_store() as other:
        await asyncio.gather(
            *(
                relay(on, f"{name}-{k}")
                for name, on in (("a", store), ("b", other))
                for k in range(4)
            )
        )

    assert twice == []
    assert len(owner_of) == len(ids)
    if isinstance(store, MySQLStore):  # (one SQLite connection may well starve the other)
        assert len({owner.split("-")[0] for owner in owner_of.values()}) == 2  # both took part
    assert await store.claim_outbox("late", 1000, 60.0, 5059.0) == []


async def test_published_removes_entries(store: Store) -> None:
    """published() removes entries for good: they are not claimed again after the lease."""
    for i in range(3):
        await store.add(mail(f"m{i}", created_at=1000.0 + i))
    entries = await claim_all(store)

    await store.published([entries[0].id, entries[2].id])
    await store.published([])

    assert await claim_all(store, now=9000.0) == [entries[1]]


async def test_requeue_unfinished_only_for_mails_without_an_entry(store: Store) -> None:
    """requeue_unfinished() gives queued/sending mails without an entry one; returns the count."""
    for i, mail_id in enumerate(["queued", "sending", "sent", "failed", "has-entry"]):
        await store.add(mail(mail_id, created_at=1000.0 + i))
    await store.apply(
        [
            update(Status.SENDING, 1010.0, mail_id="sending"),
            update(Status.SENT, 1010.0, mail_id="sent"),
            update(Status.FAILED, 1010.0, mail_id="failed"),
        ]
    )
    entries = await claim_all(store)
    await store.published([e.id for e in entries if e.mail_id != "has-entry"])

    assert await store.requeue_unfinished() == 2
    assert await store.requeue_unfinished() == 0

    # The lease on "has-entry" was released: it is claimable at once, not after it runs out.
    requeued = await claim_all(store)
    assert [(e.mail_id, e.accepted_at) for e in requeued] == [
        ("has-entry", 1004.0),
        ("queued", 1000.0),
        ("sending", 1001.0),
    ]


# --- shared circuit-breaker state -----------------------------------------------------


async def test_save_breaker_newest_wins(store: Store) -> None:
    """save_breaker() keeps the newest updated_at per provider; breakers() lists them all."""
    assert await store.breakers() == []
    opened = BreakerState("sendgrid", "open", opened_at=1010.0, updated_at=1010.0)
    await store.save_breaker(BreakerState("sendgrid", "closed", None, 1000.0))
    await store.save_breaker(opened)
    await store.save_breaker(BreakerState("sendgrid", "closed", None, 1005.0))  # older: ignored
    await store.save_breaker(BreakerState("sendgrid", "half_open", 1010.0, 1010.0))  # tie: ignored
    mailgun = BreakerState("mailgun", "half_open", opened_at=990.0, updated_at=1020.0)
    await store.save_breaker(mailgun)

    assert sorted(await store.breakers(), key=lambda b: b.provider) == [mailgun, opened]

    closed = BreakerState("sendgrid", "closed", None, 1030.0)
    await store.save_breaker(closed)
    assert sorted(await store.breakers(), key=lambda b: b.provider) == [mailgun, closed]


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


async def test_sqlite_batch_commits_the_others_when_one_add_fails(tmp_path: Path) -> None:
    """Adds committed together: one refused (idempotency mismatch) fails alone, the rest commit."""
    first = Idempotency(key_hash="k" * 64, fingerprint="a" * 64, expires_at=10**10)
    other = Idempotency(key_hash="k" * 64, fingerprint="b" * 64, expires_at=10**10)
    async with SQLiteStore(str(tmp_path / "batch.db")) as store:
        await store.add(mail("m0", created_at=1000.0), first)
        results = await asyncio.gather(
            *(store.add(mail(f"m{i}", created_at=1000.0 + i)) for i in range(1, 50)),
            store.add(mail("clash", created_at=1000.0), other),
            return_exceptions=True,
        )
        assert results[:-1] == [f"m{i}" for i in range(1, 50)]
        assert isinstance(results[-1], IdempotencyMismatch) and results[-1].mail_id == "m0"
        assert await store.get("clash") is None
        assert len(await store.unfinished()) == 50


async def test_sqlite_reads_do_not_wait_for_the_writer(tmp_path: Path) -> None:
    """While another process holds the file's write lock, loads and gets still answer at once."""
    path = tmp_path / "locked.db"
    async with SQLiteStore(str(path)) as store:
        await store.add(mail("m1", created_at=1000.0))
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the write lock; WAL readers go on
            pending_add = asyncio.ensure_future(store.add(mail("m2", created_at=1001.0)))
            async with asyncio.timeout(2):  # far less than the writer's busy timeout
                assert await store.load("m1") == (mail("m1", created_at=1000.0), Status.QUEUED)
                assert (await store.get("m1")) is not None
            assert not pending_add.done()  # the writer is waiting for the lock
        finally:
            blocker.rollback()
            blocker.close()
        assert await pending_add == "m2"


# --- MySQL only ----------------------------------------------------------------------------


async def test_mysql_concurrent_first_opens_all_migrate_once(mysql_url: str) -> None:
    """Several stores (separate pools) opening a fresh database at once all succeed, migrated."""
    stores = [MySQLStore.from_url(mysql_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        for opened in stores:
            assert await opened.schema_version() == len(MYSQL_MIGRATIONS)
        await stores[0].add(mail())
        assert await stores[-1].load("m1") == (mail(), Status.QUEUED)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_mysql_password_never_shown(mysql_server: str) -> None:
    """The password shows neither in the store's repr/str nor in a failed connect's error."""
    secret = "Wr0ng-S3cret!pw"
    parts = urlsplit(mysql_server)
    user = quote(parts.username or "root", safe="")
    netloc = f"{user}:{quote(secret, safe='')}@{parts.hostname}:{parts.port or 3306}"
    store = MySQLStore.from_url(urlunsplit(parts._replace(netloc=netloc)))
    assert secret not in repr(store)
    assert secret not in str(store)

    with pytest.raises(aiomysql.OperationalError) as caught:
        await store.open()
    assert caught.value.args[0] == 1045  # access denied: the server checked the password
    shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert secret not in shown
    await store.close()


def test_mysql_url_parsing() -> None:
    """from_url() percent-decodes user and password, defaults the port, masks the password."""
    store = MySQLStore.from_url("mysql://m%40il:p%40ss%2Fw%3Ard@db.example:3307/mailman")
    assert (store.host, store.port, store.user, store.database) == (
        "db.example",
        3307,
        "m@il",
        "mailman",
    )
    assert "p@ss/w:rd" not in repr(store)
    assert "p%40ss" not in repr(store)
    assert MySQLStore.from_url("mysql://root@localhost/db").port == 3306
    assert isinstance(open_store("mysql://u:pw@h/db"), MySQLStore)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:hunter2@h:3306/",
        "mysql://u:hunter2@h:3306",
        "mysql://u:hunter2@h:port/db",
        "mysql://u:hunter2/x@h/db",
        "mysql://u:hunter2@h/bad-name",
        "mysql://u:hunter2@h/db?charset=latin1",
    ],
)
def test_mysql_bad_url_errors_never_show_the_password(url: str) -> None:
    """A URL with no database, a bad port, name or option is a ValueError without the password."""
    with pytest.raises(ValueError) as caught:
        MySQLStore.from_url(url)
    assert "hunter2" not in str(caught.value)


def test_mysql_no_database_is_a_clear_error() -> None:
    """A URL naming no database says so."""
    with pytest.raises(ValueError, match="names no database"):
        MySQLStore.from_url("mysql://root@127.0.0.1:3306/")


# --- tenants, API keys, idempotency, rate limits ---------------------------------


def idem(key: str = "k1", fingerprint: str = "f1", expires_at: float = 90_000.0) -> Idempotency:
    return Idempotency(key_hash=key, fingerprint=fingerprint, expires_at=expires_at)


async def test_idempotent_add_stores_one_mail_and_replays_its_id(store: Store) -> None:
    """A second add with the tenant's key and the same fingerprint stores nothing and names
    the first mail."""
    assert await store.add(mail("m1", tenant="t"), idem()) == "m1"
    assert await store.add(mail("m2", created_at=1001.0, tenant="t"), idem()) == "m1"
    assert await store.get("m2") is None
    assert [e.mail_id for e in await claim_all(store)] == ["m1"]


async def test_idempotency_key_with_another_body_is_a_mismatch(store: Store) -> None:
    """The same key with another fingerprint raises IdempotencyMismatch naming the first mail."""
    await store.add(mail("m1", tenant="t"), idem())
    with pytest.raises(IdempotencyMismatch) as caught:
        await store.add(mail("m2", tenant="t"), idem(fingerprint="other"))
    assert caught.value.mail_id == "m1"
    assert await store.get("m2") is None


async def test_idempotency_keys_are_per_tenant(store: Store) -> None:
    """Two tenants using the same key get a mail each."""
    assert await store.add(mail("m1", tenant="a"), idem()) == "m1"
    assert await store.add(mail("m2", tenant="b"), idem()) == "m2"


async def test_expired_idempotency_key_is_free_again(store: Store) -> None:
    """Once a key expired, the next add with it stores a new mail; purge forgets old keys."""
    await store.add(mail("m1", tenant="t"), idem(expires_at=1500.0))
    assert await store.add(mail("m2", created_at=2000.0, tenant="t"), idem()) == "m2"
    await store.add(mail("m3", tenant="t"), idem("k2", expires_at=1500.0))
    assert await store.purge_idempotency(now=1600.0) == 1


async def test_concurrent_idempotent_adds_store_one_mail(
    store: Store, make_store: MakeStore
) -> None:
    """Racing adds with one key, through two store instances (two replicas), store one mail."""
    async with make_store() as other:
        ids = await asyncio.gather(
            *((store if i % 2 else other).add(mail(f"m{i}", tenant="t"), idem()) for i in range(10))
        )
    assert len(set(ids)) == 1
    assert len(await claim_all(store)) == 1


async def test_list_mails_newest_first_with_filters_and_cursor(store: Store) -> None:
    """Listing is per tenant, newest id first, filtered by status and time, paged by id."""
    for i in range(5):
        await store.add(mail(f"m{i}", created_at=1000.0 + i, tenant="a"))
    await store.add(mail("x9", tenant="b"))
    await store.apply([update(Status.SENT, 2000.0, "m1")])
    page = await store.list_mails(MailQuery(tenant="a", limit=2))
    assert [m.id for m in page] == ["m4", "m3"]
    rest = await store.list_mails(MailQuery(tenant="a", limit=10, before="m3"))
    assert [m.id for m in rest] == ["m2", "m1", "m0"]
    sent = await store.list_mails(MailQuery(tenant="a", limit=10, status=Status.SENT))
    assert [(m.id, m.status) for m in sent] == [("m1", Status.SENT)]
    window = await store.list_mails(MailQuery(tenant="a", limit=10, since=1001.0, until=1003.0))
    assert [m.id for m in window] == ["m2", "m1"]
    everyone = await store.list_mails(MailQuery(tenant=None, limit=10))
    assert everyone[0].id == "x9" and len(everyone) == 6
    assert window[0].created_at == 1002.0


async def test_keys_create_find_revoke_touch(store: Store) -> None:
    """Keys are found by hash, listed, revoked once, and their last use only moves forward."""
    assert not await store.any_keys()
    key = ApiKey(id="key1", tenant="t", scopes=("send", "read"), rate=2.5, created_at=10.0)
    await store.create_key(key, "hash1")
    assert await store.any_keys()
    assert await store.key_by_hash("hash1") == key
    assert await store.key_by_hash("nope") is None
    await store.touch_keys({"key1": 50.0})
    await store.touch_keys({"key1": 40.0})
    assert await store.revoke_key("key1", 60.0)
    assert await store.revoke_key("key1", 70.0)
    assert not await store.revoke_key("missing", 70.0)
    (listed,) = await store.keys()
    assert (listed.last_used_at, listed.revoked_at, listed.rate) == (50.0, 60.0, 2.5)
    assert await store.any_keys()  # a revoked key still closes the API


async def test_rate_bucket_is_shared_and_refills(store: Store, make_store: MakeStore) -> None:
    """A bucket of 2/s allows a burst of 2 across two store instances, then refills over time."""
    async with make_store() as other:
        first = await store.take_token("b", 2.0, now=100.0)
        second = await other.take_token("b", 2.0, now=100.0)
        third = await store.take_token("b", 2.0, now=100.0)
        later = await other.take_token("b", 2.0, now=100.5)
    assert (first.allowed, second.allowed, third.allowed, later.allowed) == (
        True,
        True,
        False,
        True,
    )
    assert (first.remaining, second.remaining) == (1, 0)
    assert third.retry_after == pytest.approx(0.5)


# --- attempts recorded before the call, the sweeper, dead letters -------------------


async def test_begin_attempt_records_a_pending_attempt_and_marks_sending(store: Store) -> None:
    """begin_attempt() records the attempt as pending before the call and returns the mail."""
    await store.add(mail())
    begun = await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    assert begun is not None and begun.attempt_id is not None and begun.why is None
    assert begun.mail == mail() and begun.status is Status.SENDING
    record = await store.get("m1")
    assert record is not None and record.status is Status.SENDING
    assert [(a.provider, a.outcome, a.id) for a in record.attempts] == [
        ("sendgrid", Outcome.PENDING, begun.attempt_id)
    ]


async def test_a_finished_attempt_replaces_its_pending_record(store: Store) -> None:
    """An update carrying the attempt's id finishes that row: one attempt, not two."""
    await store.add(mail())
    begun = await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    assert begun is not None and begun.attempt_id is not None
    done = Attempt("sendgrid", 0, 2000.5, Outcome.ACCEPTED, None, "sg-1", id=begun.attempt_id)
    await store.apply([StatusUpdate("m1", Status.SENT, 2000.5, "sendgrid", "sg-1", attempt=done)])
    record = await store.get("m1")
    assert record is not None and record.status is Status.SENT
    assert [(a.outcome, a.message_id, a.at) for a in record.attempts] == [
        (Outcome.ACCEPTED, "sg-1", 2000.0)  # the row keeps when the call started
    ]


async def test_begin_attempt_refuses_while_another_is_in_flight(store: Store) -> None:
    """A second begin for a mail whose attempt is pending and fresh is told busy."""
    await store.add(mail())
    first = await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    second = await store.begin_attempt("m1", "sendgrid", 0, 2001.0, 1001.0)
    assert first is not None and first.attempt_id is not None
    assert second is not None and second.attempt_id is None and second.why == "busy"


async def test_a_stale_pending_attempt_becomes_unknown_and_waits_for_a_check(
    store: Store,
) -> None:
    """A pending attempt older than stale_before turns unknown; the next begin returns it
    unchecked, and once its check is recorded an attempt may begin."""
    await store.add(mail())
    first = await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    assert first is not None and first.attempt_id is not None
    later = await store.begin_attempt("m1", "sendgrid", 0, 2100.0, 2050.0)
    assert later is not None and later.attempt_id is None and later.why == "unchecked"
    assert [(a.id, a.outcome) for a in later.unknown] == [(first.attempt_id, Outcome.UNKNOWN)]
    checked = replace(later.unknown[0], checked=Check.NOT_FOUND)
    await store.apply([StatusUpdate("m1", Status.SENDING, 2100.0, attempt=checked)])
    again = await store.begin_attempt("m1", "mailgun", 0, 2101.0, 2050.0)
    assert again is not None and again.attempt_id is not None
    record = await store.get("m1")
    assert record is not None
    assert [(a.provider, a.outcome, a.checked) for a in record.attempts] == [
        ("sendgrid", Outcome.UNKNOWN, Check.NOT_FOUND),
        ("mailgun", Outcome.PENDING, None),
    ]


async def test_begin_attempt_on_final_and_unknown_mails(store: Store) -> None:
    """A final mail is told final (no attempt recorded); an unknown id gives None."""
    await store.add(mail())
    await store.apply([update(Status.SENT, 1500.0, outcome=Outcome.ACCEPTED)])
    final = await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    assert final is not None and final.why == "final" and final.status is Status.SENT
    assert await store.begin_attempt("nope", "sendgrid", 0, 2000.0, 1000.0) is None
    record = await store.get("m1")
    assert record is not None and len(record.attempts) == 1


async def test_requeue_turns_every_pending_attempt_unknown(store: Store) -> None:
    """After a restart of the in-memory deployment no call is in flight: pending is unknown."""
    await store.add(mail())
    await store.claim_outbox("relay", 10, 30.0, 1500.0)
    await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    await store.requeue_unfinished()
    record = await store.get("m1")
    assert record is not None
    assert [a.outcome for a in record.attempts] == [Outcome.UNKNOWN]


async def test_sweep_picks_up_forgotten_sending_mails_only(store: Store) -> None:
    """sweep() requeues a sending mail due before the cutoff with no live attempt and no
    outbox entry; not one with a fresh attempt, a later due time, or an entry."""
    for name in ("lost", "busy", "later", "queued"):
        await store.add(mail(name, created_at=1000.0))
    await store.claim_outbox("relay", 10, 30.0, 1000.0, done=())
    entries = await store.claim_outbox("relay", 10, 30.0, 1000.0)
    assert entries == []
    claimed = await store.claim_outbox("relay", 0, 30.0, 1000.0)
    assert claimed == []
    # Remove the outbox entries of the three mails the relay handed on.
    leased = await _outbox(store)
    await store.published([e.id for e in leased if e.mail_id != "queued"])
    await store.begin_attempt("busy", "sendgrid", 0, 1990.0, 0.0)
    later = Attempt("sendgrid", 0, 1100.0, Outcome.TRANSIENT, "503")
    await store.apply([StatusUpdate("later", Status.SENDING, 1100.0, attempt=later, due_at=5000.0)])
    swept = await store.sweep(2000.0, 1500.0)
    assert swept == ["lost"]
    assert [e.mail_id for e in await _outbox(store) if e.mail_id != "queued"] == ["lost"]
    assert await store.sweep(2000.0, 1500.0) == []  # it has an entry (and is due now) again


async def _outbox(store: Store) -> list[OutboxEntry]:
    """Every outbox entry, leases ignored (claimed far in the future, then released)."""
    entries = await store.claim_outbox("inspector", 1000, 0.0, 10**12)
    await store.requeue_unfinished()  # releases the leases again
    return entries


async def test_sweep_turns_stale_pending_attempts_unknown(store: Store) -> None:
    """sweep() marks pending attempts started before the cutoff unknown and requeues the mail."""
    await store.add(mail())
    entries = await store.claim_outbox("relay", 10, 30.0, 1000.0)
    await store.published([e.id for e in entries])
    await store.begin_attempt("m1", "sendgrid", 0, 1100.0, 0.0)
    assert await store.sweep(1200.0, 1150.0) == ["m1"]
    record = await store.get("m1")
    assert record is not None and [a.outcome for a in record.attempts] == [Outcome.UNKNOWN]


async def test_dead_letters_keep_the_record_and_fail_the_mail(store: Store) -> None:
    """add_dead_letter() keeps the raw bytes and error, fails the mail with the reason;
    listing and marking replayed work."""
    await store.add(mail())
    letter = await store.add_dead_letter(
        "send.sendgrid", "m1", b"\x00raw", "IndexError: hop", 3000.0
    )
    orphan = await store.add_dead_letter("status", None, b"not json", "not JSON", 3001.0)
    letters = await store.dead_letters()
    assert [(x.id, x.mailbox, x.mail_id, x.payload, x.error) for x in letters] == [
        (letter, "send.sendgrid", "m1", b"\x00raw", "IndexError: hop"),
        (orphan, "status", None, b"not json", "not JSON"),
    ]
    record = await store.get("m1")
    assert record is not None and record.status is Status.FAILED
    assert record.reason is not None and f"dead letter {letter}" in record.reason
    await store.mark_replayed([letter], 3100.0)
    assert [x.id for x in await store.dead_letters()] == [orphan]
    everything = await store.dead_letters(replayed=True)
    assert [(x.id, x.replayed_at) for x in everything] == [(letter, 3100.0), (orphan, None)]


# --- delivery events ----------------------------------------------------------------


def event(
    kind: EventKind, at: float, dedupe: str, mail_id: str = "m1", **fields: object
) -> DeliveryEvent:
    return DeliveryEvent(mail_id, "sendgrid", kind, at, dedupe, **fields)  # type: ignore[arg-type]


async def test_delivery_events_are_kept_once_and_move_the_status(store: Store) -> None:
    """record_events() keeps each event once (by provider and dedupe), moves a sent mail to
    delivered, and ignores events for unknown mails."""
    await store.add(mail())
    await store.apply(
        [update(Status.SENT, 1500.0, outcome=Outcome.ACCEPTED, provider_message_id="sg-1")]
    )
    results = await store.record_events(
        [
            event(EventKind.DELIVERED, 1600.0, "e1", recipient="to@example.com"),
            event(EventKind.DELIVERED, 1600.0, "e1"),
            event(EventKind.OPENED, 1700.0, "e2"),
            event(EventKind.DELIVERED, 1600.0, "e3", mail_id="nope"),
        ]
    )
    assert results == [
        EventResult.RECORDED,
        EventResult.DUPLICATE,
        EventResult.RECORDED,
        EventResult.UNKNOWN_MAIL,
    ]
    record = await store.get("m1")
    assert record is not None and record.status is Status.DELIVERED
    assert [(e.kind, e.dedupe, e.recipient) for e in record.events] == [
        (EventKind.DELIVERED, "e1", "to@example.com"),
        (EventKind.OPENED, "e2", None),
    ]
    assert await store.mail_for_message("sg-1") == "m1"
    assert await store.mail_for_message("sg-2") is None


async def test_events_out_of_order_never_move_a_mail_backwards(store: Store) -> None:
    """A hard bounce after a delivery wins (an asynchronous bounce), a delivery after a bounce
    does not, a soft bounce moves nothing, and a delivery before the sender's `sent` holds."""
    await store.add(mail())
    await store.add(mail("m2"))
    await store.claim_outbox("relay", 10, 30.0, 1100.0)
    await store.record_events([event(EventKind.BOUNCED, 1200.0, "s1", bounce="soft")])
    assert await status_of(store) is Status.SENDING
    await store.record_events([event(EventKind.DELIVERED, 1300.0, "d1")])
    await store.apply([update(Status.SENT, 1250.0, outcome=Outcome.ACCEPTED)])  # late record
    assert await status_of(store) is Status.DELIVERED
    await store.record_events([event(EventKind.BOUNCED, 1400.0, "b1", bounce="hard", reason="550")])
    record = await store.get("m1")
    assert record is not None and record.status is Status.BOUNCED and record.reason == "550"
    await store.record_events([event(EventKind.DELIVERED, 1500.0, "d2")])
    assert await status_of(store) is Status.BOUNCED
    await store.record_events([event(EventKind.DROPPED, 1500.0, "x1", mail_id="m2")])
    assert await status_of(store, "m2") is Status.BOUNCED


async def test_a_delivery_before_the_senders_record_keeps_the_provider_findable(
    store: Store,
) -> None:
    """When a delivery event moves a mail on before the sender's `sent` is recorded, the
    mail names the event's provider and is found by the message id its attempt recorded."""
    await store.add(mail())
    await store.claim_outbox("relay", 10, 30.0, 1100.0)
    await store.record_events([event(EventKind.DELIVERED, 1300.0, "d1")])
    sent = Attempt("sendgrid", 0, 1250.0, Outcome.ACCEPTED, None, "sg-9")
    await store.apply([StatusUpdate("m1", Status.SENT, 1250.0, "sendgrid", "sg-9", attempt=sent)])
    record = await store.get("m1")
    assert record is not None
    assert (record.status, record.provider) == (Status.DELIVERED, "sendgrid")
    assert await store.mail_for_message("sg-9") == "m1"

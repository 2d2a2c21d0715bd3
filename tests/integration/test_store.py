"""The store contract: what every ``Store`` implementation must do.

Written against the ``Store`` interface only; the ``make_store`` fixture is
parametrised by backend, so a ``"mysql"`` param runs the same suite there.
This file holds the fixtures and helpers, the lifecycle, the schema and its
migrations, concurrency and what is particular to one driver; each concern's
behaviour is in ``test_store_<concern>.py`` (``mails``, ``outbox``, ``attempts``...).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import fcntl
import os
import secrets
import sqlite3
import threading
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote, urlsplit, urlunsplit

import aiomysql
import pytest
from structlog.testing import capture_logs

from mailman.core.messages import StatusUpdate, encode
from mailman.core.model import (
    Address,
    Attempt,
    DeliveryEvent,
    EventKind,
    Mail,
    Outcome,
    Status,
)
from mailman.intake.guard import guarded
from mailman.store import (
    Idempotency,
    IdempotencyMismatch,
    MailQuery,
    MailRecord,
    OutboxEntry,
    Pending,
    Store,
    StoreUnavailable,
    migrations,
    open_store,
)
from mailman.store import sqlite as sqlite_store
from mailman.store.dialect import Dialect
from mailman.store.mysql import MIGRATIONS as MYSQL_MIGRATIONS
from mailman.store.mysql import MySQLStore
from mailman.store.operation import Engine, Statement, Steps, write
from mailman.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from mailman.store.sqlite import SQLiteStore

from ..support.databases import DEFAULT_MYSQL_URL

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


@pytest.fixture(params=["sqlite", "sqlite-process", "mysql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    if request.param in ("sqlite", "sqlite-process"):
        path = str(tmp_path / "mailman.db")
        writer = "process" if request.param == "sqlite-process" else "thread"

        def make(extra: Sequence[str] = (), upto: int | None = None) -> Store:
            migrations = (*SQLITE_MIGRATIONS[:upto], *extra)
            return SQLiteStore(path, migrations=migrations, writer=writer)

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


async def claim_all(store: Store, owner: str = "relay", now: float = 5000.0) -> list[OutboxEntry]:
    return await store.claim_outbox(owner, 1000, 30.0, now)


async def every_entry(store: Store) -> list[OutboxEntry]:
    """Every outbox entry, leases ignored (claimed far in the future, then released)."""
    entries = await store.claim_outbox("inspector", 1000, 0.0, 10**12)
    await store.requeue_unfinished()  # releases the leases again
    return entries


def idem(key: str = "k1", fingerprint: str = "f1", expires_at: float = 90_000.0) -> Idempotency:
    return Idempotency(key_hash=key, fingerprint=fingerprint, expires_at=expires_at)


def event(
    kind: EventKind, at: float, dedupe: str, mail_id: str = "m1", **fields: object
) -> DeliveryEvent:
    return DeliveryEvent(mail_id, "sendgrid", kind, at, dedupe, **fields)  # type: ignore[arg-type]


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


@write
def _named_on_the_mail_alone(d: Dialect) -> Steps[None]:
    """What a database before migration 16 could hold: mail "a" with a provider message
    id none of its attempts has (a processed event recorded it), two attempts without
    one; mail "b" with its id on its attempt too."""
    rows = [
        ("a", "sendgrid", 0, 1001.0, "transient", None),
        ("a", "sendgrid", 1, 1002.0, "accepted", None),
        ("b", "sendgrid", 0, 1001.0, "accepted", "pm-b"),
    ]
    yield Statement(
        "INSERT INTO attempts (mail_id, provider, round, at, outcome, message_id) "
        f"VALUES ({d.marks(6)})",
        rows,
        many=True,
    )
    for mail_id in ("a", "b"):
        yield Statement(
            f"UPDATE mails SET status = 'sent', provider_message_id = {d.mark} WHERE id = {d.mark}",
            (f"pm-{mail_id}", mail_id),
        )


async def test_migration_16_gives_an_id_only_the_mail_had_to_its_newest_attempt(
    make_store: MakeStore,
) -> None:
    """A provider message id that only its mail held before migration 16 (lookups read
    the attempts from then on) is given to the mail's newest attempt without one, so the
    mail is still found by it; an id an attempt already had stays where it was."""
    async with make_store(upto=15) as older:
        assert isinstance(older, Engine)
        await older.add(mail("a"))
        await older.add(mail("b"))
        await older.run(_named_on_the_mail_alone)
    async with make_store() as newer:
        assert await newer.mail_for_message("pm-a") == "a"
        assert await newer.mail_for_message("pm-b") == "b"
        a, b = await newer.get("a"), await newer.get("b")
        assert a is not None and b is not None
        assert [x.message_id for x in a.attempts] == [None, "pm-a"]
        assert [x.message_id for x in b.attempts] == ["pm-b"]


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
    package = Path(__file__).resolve().parents[2] / "mailman" / "store"
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


async def test_sqlite_writers_sharing_a_file_take_turns(tmp_path: Path) -> None:
    """A writer whose turn another process holds waits for it, not for SQLite's lock (reads
    go on); a caller that gives up meanwhile changes nothing; the turn, once free, is taken."""
    path = tmp_path / "turns.db"
    async with SQLiteStore(str(path)) as store:
        await store.add(mail("m1", created_at=1000.0))
        holder = os.open(f"{path}.lock", os.O_RDWR)  # another process's writer, mid-turn
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            pending_add = asyncio.ensure_future(store.add(mail("m2", created_at=1001.0)))
            async with asyncio.timeout(2):
                assert await store.load("m1") == (mail("m1", created_at=1000.0), Status.QUEUED)
            assert not pending_add.done()  # waiting for its turn
            with pytest.raises(StoreUnavailable):
                await guarded(store, 0.2, store.add(mail("gave-up", created_at=1002.0)))
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)
            os.close(holder)
        assert await pending_add == "m2"
        assert await store.get("gave-up") is None
        assert oct(path.with_name("turns.db.lock").stat().st_mode & 0o777) == "0o600"


async def test_closing_a_sqlite_store_whose_writer_waits_for_a_turn_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store closed while its writer waits for a turn held forever (a hung process) still
    closes, after STOP_WAIT_SECONDS, saying so."""
    monkeypatch.setattr(sqlite_store, "STOP_WAIT_SECONDS", 0.2)
    path = tmp_path / "hung.db"
    store = SQLiteStore(str(path))
    await store.open()
    assert store._writer is not None and store._writer._thread is not None
    thread = store._writer._thread
    holder = os.open(f"{path}.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with capture_logs() as logs:
            waiting = asyncio.ensure_future(store.add(mail("m1", created_at=1000.0)))
            await asyncio.sleep(0)  # the add queued (its writer then waits for the turn)
            await store.close()
        assert [e["event"] for e in logs] == ["store.writer_stuck"]
        waiting.cancel()
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    # The turn free, the stuck writer ends by itself (its loop may be gone by then).
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()


def test_a_writer_stuck_past_its_loop_ends_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer still waiting for a turn when its event loop is gone (the process shutting
    down) finishes its batch once the turn is free without raising in its thread."""
    monkeypatch.setattr(sqlite_store, "STOP_WAIT_SECONDS", 0.2)
    path = tmp_path / "gone.db"
    store = SQLiteStore(str(path))
    holder = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))

    async def stuck() -> threading.Thread:
        fcntl.flock(holder, fcntl.LOCK_UN)  # free while migrating, taken again after
        await store.open()
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert store._writer is not None and store._writer._thread is not None
        thread = store._writer._thread
        waiting = asyncio.ensure_future(store.add(mail("m1", created_at=1000.0)))
        await asyncio.sleep(0)  # the add queued (its writer then waits for the turn)
        await store.close()
        waiting.cancel()
        return thread

    thread = asyncio.run(stuck())  # the loop is closed when this returns
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    thread.join(10)
    assert not thread.is_alive()
    assert errors == []


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


async def test_mysql_runs_a_deadlock_victim_again(mysql_url: str) -> None:
    """A transaction the server rolls back as a deadlock victim is run again to its end, and
    the retry is logged once as store.deadlock."""
    store = MySQLStore.from_url(mysql_url)
    async with store:
        await store.add(mail("a"))
        await store.add(mail("b"))
        parts = urlsplit(mysql_url)
        other = await aiomysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
            db=parts.path.lstrip("/"),
        )
        holds_a, holds_b = asyncio.Event(), asyncio.Event()
        tries = 0

        async def body(cur: Any) -> int:
            nonlocal tries
            tries += 1
            await cur.execute("SELECT id FROM mails WHERE id = 'a' FOR UPDATE")
            if tries == 1:
                holds_a.set()
                await holds_b.wait()
            await cur.execute("SELECT id FROM mails WHERE id = 'b' FOR UPDATE")
            return tries

        async def crosswise() -> None:
            # It writes a row, so the server rolls back the lighter one: the store's.
            async with other.cursor() as cur:
                await cur.execute("START TRANSACTION")
                await cur.execute("UPDATE mails SET updated_at = updated_at + 1 WHERE id = 'b'")
                holds_b.set()
                await holds_a.wait()
                await cur.execute("SELECT id FROM mails WHERE id = 'a' FOR UPDATE")
            await other.commit()

        try:
            with capture_logs() as logs:
                ran, _ = await asyncio.gather(store._run(body), crosswise())
        finally:
            other.close()
    assert ran == 2
    assert [line["attempt"] for line in logs if line["event"] == "store.deadlock"] == [1]


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

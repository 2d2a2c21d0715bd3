"""The SQLite store: one file, every accepted mail fsynced, one trip per transaction.

Stdlib ``sqlite3`` on two threads, each with its own connection:

* the **writer** drains a queue of operations and runs everything it found
  waiting in one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): the adds
  of a burst of requests become one multi-row ``INSERT`` and one fsync
  (group commit), and every caller's future is resolved once per batch.
  Each operation runs inside a ``SAVEPOINT``, so one that fails (a mismatched
  idempotency key, a constraint) fails alone and the rest of the batch
  commits;
* the **reader** serves the reads that need no lock (``load``, ``get``,
  listings, keys): under WAL they see the last commit and never wait for
  the writer. Concurrent ``load`` calls share one ``IN (...)`` query.

An in-memory database (``":memory:"``) lives in one connection, so there the
writer serves the reads too.

``synchronous=FULL`` makes a commit survive a kill -9 or a power loss: a
``201`` is never lost. Several processes may share one file (``--processes``,
``--role``): ``BEGIN IMMEDIATE`` takes the file's write lock, and a writer
that finds it taken waits up to ``busy_timeout``.

The schema is versioned: ``MIGRATIONS`` are the scripts of
``migrations/sqlite/``, script N bringing the schema from version N-1 to N.
``open()`` applies the missing ones, each in its own transaction that also
records its version in ``schema_version``.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mailman.core.messages import StatusUpdate, decode
from mailman.core.model import DeliveryEvent, Mail, Status

from . import migrations, sql
from .base import (
    KEY_COLUMNS,
    ApiKey,
    Begun,
    BreakerState,
    CallbackDue,
    DeadLetter,
    EventResult,
    Failures,
    Idempotency,
    IdempotencyMismatch,
    MailQuery,
    MailRecord,
    MailSummary,
    MetricsSnapshot,
    MinuteCount,
    OutboxEntry,
    Pending,
    RateDecision,
    Store,
    Transition,
    api_key_from_row,
    bucket_step,
    list_filter,
)
from .sql import SQLITE as Q

#: Migration N (1-based) brings the schema from version N-1 to N.
MIGRATIONS: tuple[str, ...] = migrations.scripts("sqlite")

_SCHEMA_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version    INTEGER PRIMARY KEY,
        applied_at REAL NOT NULL
    )
"""

#: Most operations one transaction runs (the adds of a burst, the loads of the senders).
MAX_BATCH = 500

#: How long a writer waits for another process's write lock before "database is locked".
BUSY_TIMEOUT_MS = 5000


def split_statements(script: str) -> list[str]:
    """The statements of an SQL script, one by one.

    ``executescript`` would commit the open transaction first, so a migration
    is run statement by statement inside its own transaction instead.
    ``sqlite3.complete_statement`` keeps a ``;`` inside a string literal or a
    trigger body from ending a statement.
    """
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.rstrip(";").strip():
                statements.append(current.strip())
            current = ""
    return statements


# --- the worker threads ----------------------------------------------------------------


Run = Callable[[sqlite3.Connection, list[Any]], list[Any]]


@dataclass(frozen=True, slots=True, eq=False)
class Op:
    """An operation a worker thread runs.

    ``run`` takes the connection and the arguments of one or more calls and
    returns one result per call; a result that is an exception fails that
    call alone. With ``batched``, every waiting call of this operation goes
    to one ``run``; otherwise each call runs by itself.
    """

    name: str
    run: Run
    batched: bool = False
    #: Reader: run inside BEGIN ... COMMIT (several statements, one snapshot).
    snapshot: bool = False


def op(*, batched: bool = False, snapshot: bool = False) -> Callable[[Run], Op]:
    def wrap(run: Run) -> Op:
        return Op(run.__name__.strip("_"), run, batched, snapshot)

    return wrap


def single(
    fn: Callable[..., Any],
) -> Run:
    """A ``run`` for an operation whose calls each carry a tuple of arguments."""

    def run(db: sqlite3.Connection, calls: list[Any]) -> list[Any]:
        return [fn(db, *args) for args in calls]

    run.__name__ = fn.__name__
    return run


@dataclass(slots=True)
class _Job:
    op: Op
    arg: Any
    future: asyncio.Future[Any]


_STOP = None


class _Worker:
    """One thread with its own connection, running queued jobs in batches."""

    def __init__(self, name: str, connect: Callable[[], sqlite3.Connection], *, write: bool):
        self.name = name
        self._connect = connect
        self._write = write
        #: Lists of jobs, one per event-loop turn that called (one thread wake-up each).
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._pending: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = False

    async def start(self) -> None:
        """Start the thread and connect; raises what connecting raised."""
        loop = self._loop = asyncio.get_running_loop()
        connected: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(connected,), name=f"sqlite-{self.name}", daemon=True
        )
        self._thread.start()
        await connected
        self._open = True

    async def stop(self) -> None:
        """Run what is queued, then close the connection and end the thread. Idempotent."""
        thread, self._thread = self._thread, None
        self._open = False
        if thread is None:
            return
        self._submit()
        self._jobs.put(_STOP)
        await asyncio.to_thread(thread.join)

    async def call(self, operation: Op, arg: Any) -> Any:
        """Run ``operation`` on the thread; its result.

        The calls of one event-loop turn go to the thread together: one
        wake-up (a system call) for all of them, and one batch.
        """
        if not self._open or self._loop is None:
            raise RuntimeError("the store is not open")
        future: asyncio.Future[Any] = self._loop.create_future()
        if not self._pending:
            self._loop.call_soon(self._submit)
        self._pending.append(_Job(operation, arg, future))
        return await future

    def _submit(self) -> None:
        jobs, self._pending = self._pending, []
        if jobs:
            self._jobs.put(jobs)

    # --- in the thread -------------------------------------------------------------

    def _main(self, connected: asyncio.Future[None]) -> None:
        assert self._loop is not None
        try:
            db = self._connect()
        except BaseException as exc:
            self._loop.call_soon_threadsafe(_fail, connected, exc)
            return
        self._loop.call_soon_threadsafe(_settle, [(connected, None)])
        try:
            stopping = False
            while not stopping:
                first = self._jobs.get()
                if first is _STOP:
                    break
                jobs = first
                while len(jobs) < MAX_BATCH:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stopping = True
                        break
                    jobs += more
                outcomes = self._batch(db, jobs)
                self._loop.call_soon_threadsafe(
                    _settle, [(j.future, o) for j, o in zip(jobs, outcomes, strict=True)]
                )
        finally:
            db.close()

    def _batch(self, db: sqlite3.Connection, jobs: list[_Job]) -> list[Any]:
        """Every job's result (or exception), the writer's in one transaction."""
        # A batched operation's calls share one group; any other call is a group alone.
        groups: dict[Op | int, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.op if job.op.batched else i, []).append(i)
        outcomes: list[Any] = [None] * len(jobs)
        try:
            if self._write:
                db.execute("BEGIN IMMEDIATE")
            for indexes in groups.values():
                operation = jobs[indexes[0]].op
                args = [jobs[i].arg for i in indexes]
                for i, outcome in zip(indexes, self._group(db, operation, args), strict=True):
                    outcomes[i] = outcome
            if self._write:
                db.execute("COMMIT")
        except Exception as exc:  # the whole transaction failed: every job with it
            if db.in_transaction:
                db.execute("ROLLBACK")
            return [exc] * len(jobs)
        return outcomes

    def _group(self, db: sqlite3.Connection, operation: Op, args: list[Any]) -> list[Any]:
        """One operation's calls; alone (each in a savepoint) if the batch of them fails."""
        try:
            return self._guarded(db, operation, args)
        except sqlite3.OperationalError:
            raise  # locked, I/O error: the transaction is lost, for every job
        except Exception as exc:
            if len(args) == 1:
                return [exc]
        outcomes: list[Any] = []
        for arg in args:
            try:
                outcomes.extend(self._guarded(db, operation, [arg]))
            except sqlite3.OperationalError:
                raise
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _guarded(self, db: sqlite3.Connection, operation: Op, args: list[Any]) -> list[Any]:
        if self._write:
            db.execute("SAVEPOINT op")
            try:
                out = operation.run(db, args)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                raise
            db.execute("RELEASE op")
            return out
        if not operation.snapshot:
            return operation.run(db, args)
        db.execute("BEGIN")
        try:
            return operation.run(db, args)
        finally:
            db.execute("COMMIT")


def _settle(pairs: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in pairs:
        if future.done():  # its caller was cancelled
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


# --- the store ----------------------------------------------------------------------


class SQLiteStore(Store):
    """Mails, statuses and attempts in one SQLite file (or ``":memory:"``)."""

    #: "database is locked" (busy past the timeout), "disk I/O error", "unable to open".
    unavailable = (sqlite3.OperationalError,)

    def __init__(self, path: str, *, migrations: Sequence[str] = MIGRATIONS) -> None:
        self.path = path
        self.migrations: tuple[str, ...] = tuple(migrations)
        self._writer: _Worker | None = None
        self._reader: _Worker | None = None

    @property
    def in_memory(self) -> bool:
        return self.path == ":memory:" or self.path.startswith("file::memory:")

    # --- lifecycle ---------------------------------------------------------

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        try:
            if write and not self.in_memory:
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not write:
                db.execute("PRAGMA query_only = ON")
        except BaseException:
            db.close()
            raise
        return db

    async def open(self) -> None:
        if self._writer is not None:
            return
        writer = _Worker("writer", lambda: self._connect(write=True), write=True)
        await writer.start()
        try:
            await self._migrate(writer)
            reader = writer
            if not self.in_memory:
                reader = _Worker("reader", lambda: self._connect(write=False), write=False)
                await reader.start()
        except BaseException:
            await writer.stop()
            raise
        self._writer, self._reader = writer, reader

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        if reader is not None and reader is not writer:
            await reader.stop()
        if writer is not None:
            await writer.stop()  # what was handed in is committed first

    async def _write(self, operation: Op, arg: Any = ()) -> Any:
        if self._writer is None:
            raise RuntimeError("the store is not open")
        return await self._writer.call(operation, arg)

    async def _read(self, operation: Op, arg: Any = ()) -> Any:
        if self._reader is None:
            raise RuntimeError("the store is not open")
        return await self._reader.call(operation, arg)

    async def schema_version(self) -> int:
        """The latest migration applied to the database (0 for none)."""
        version: int = await self._read(_SCHEMA_VERSION)
        return version

    async def _migrate(self, writer: _Worker) -> None:
        """Apply the missing migrations, one transaction each."""
        while not await writer.call(_MIGRATE_ONE, (self.migrations, self.path)):
            pass

    # --- Store -------------------------------------------------------------

    async def add(self, mail: Mail, idempotency: Idempotency | None = None) -> str:
        """Group commit: the adds waiting while a transaction runs share the next one.

        With ``synchronous=FULL`` a commit costs an fsync, so committing a
        batch of mails at once is what lets the API accept many mails a
        second; each caller still returns only once its mail is committed.
        """
        mail_id: str = await self._write(_ADD, (mail, idempotency))
        return mail_id

    async def get(self, mail_id: str) -> MailRecord | None:
        record: MailRecord | None = await self._read(_GET, (mail_id,))
        return record

    async def load(self, mail_id: str) -> tuple[Mail, Status] | None:
        """Batched: the loads waiting while a query runs share one ``IN (...)`` query."""
        loaded: tuple[Mail, Status] | None = await self._read(_LOAD, mail_id)
        return loaded

    async def apply(self, updates: Sequence[StatusUpdate]) -> None:
        if updates:
            await self._write(_APPLY, list(updates))

    async def transition(
        self, mail_id: str, status: Status, at: float, reason: str | None = None
    ) -> Transition | None:
        result: Transition | None = await self._write(_TRANSITION, (mail_id, status, at, reason))
        return result

    async def begin_attempt(
        self, mail_id: str, provider: str, round_: int, at: float, stale_before: float
    ) -> Begun | None:
        begun: Begun | None = await self._write(
            _BEGIN, (mail_id, provider, round_, at, stale_before)
        )
        return begun

    async def sweep(self, now: float, stale_before: float, limit: int = 500) -> list[str]:
        swept: list[str] = await self._write(_SWEEP, (now, stale_before, limit))
        return swept

    async def record_events(self, events: Sequence[DeliveryEvent]) -> list[EventResult]:
        if not events:
            return []
        results: list[EventResult] = await self._write(_RECORD_EVENTS, (tuple(events),))
        return results

    async def mail_for_message(self, provider_message_id: str) -> str | None:
        found: str | None = await self._read(_MAIL_FOR_MESSAGE, (provider_message_id,))
        return found

    async def release_scheduled(self, now: float, limit: int = 500) -> list[str]:
        released: list[str] = await self._write(_RELEASE, (now, limit))
        return released

    async def add_dead_letter(
        self, mailbox: str, mail_id: str | None, payload: bytes, error: str, at: float
    ) -> int:
        letter: int = await self._write(_ADD_DEAD_LETTER, (mailbox, mail_id, payload, error, at))
        return letter

    async def dead_letters(self, *, replayed: bool = False, limit: int = 1000) -> list[DeadLetter]:
        found: list[DeadLetter] = await self._read(_DEAD_LETTERS, (replayed, limit))
        return found

    async def mark_replayed(self, ids: Sequence[int], at: float) -> None:
        if ids:
            await self._write(_MARK_REPLAYED, (tuple(ids), at))

    async def unfinished(self) -> list[Pending]:
        pending: list[Pending] = await self._read(_UNFINISHED_MAILS)
        return pending

    async def backlog(self) -> int:
        count: int = await self._read(_BACKLOG)
        return count

    async def retry(self, mail_id: str, at: float) -> Transition | None:
        result: Transition | None = await self._write(_RETRY, (mail_id, at))
        return result

    async def list_mails(self, query: MailQuery) -> list[MailSummary]:
        found: list[MailSummary] = await self._read(_LIST_MAILS, (query,))
        return found

    # --- API keys ---------------------------------------------------------------

    async def create_key(self, key: ApiKey, secret_hash: str) -> None:
        await self._write(_CREATE_KEY, (key, secret_hash))

    async def keys(self) -> list[ApiKey]:
        found: list[ApiKey] = await self._read(_KEYS)
        return found

    async def key_by_hash(self, secret_hash: str) -> ApiKey | None:
        found: ApiKey | None = await self._read(_KEY_BY_HASH, (secret_hash,))
        return found

    async def revoke_key(self, key_id: str, at: float) -> bool:
        revoked: bool = await self._write(_REVOKE_KEY, (key_id, at))
        return revoked

    async def any_keys(self) -> bool:
        found: bool = await self._read(_ANY_KEYS)
        return found

    async def touch_keys(self, used: dict[str, float]) -> None:
        if used:
            await self._write(_TOUCH_KEYS, (dict(used),))

    # --- rate limits and idempotency -------------------------------------------

    async def take_token(self, bucket: str, rate: float, now: float) -> RateDecision:
        decision: RateDecision = await self._write(_TAKE_TOKEN, (bucket, rate, now))
        return decision

    async def purge_idempotency(self, now: float) -> int:
        purged: int = await self._write(_PURGE_IDEMPOTENCY, (now,))
        return purged

    # --- transactional outbox ------------------------------------------------

    async def claim_outbox(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        now: float,
        done: Sequence[int] = (),
    ) -> list[OutboxEntry]:
        if limit <= 0 and not done:
            return []
        entries: list[OutboxEntry] = await self._write(
            _CLAIM, (owner, limit, lease_seconds, now, tuple(done))
        )
        return entries

    async def published(self, ids: Sequence[int]) -> None:
        if ids:
            await self._write(_PUBLISHED, (tuple(ids),))

    async def requeue_unfinished(self) -> int:
        made: int = await self._write(_REQUEUE)
        return made

    # --- status callbacks -------------------------------------------------------

    async def claim_callbacks(
        self, owner: str, limit: int, lease_seconds: float, now: float
    ) -> list[CallbackDue]:
        if limit <= 0:
            return []
        claimed: list[CallbackDue] = await self._write(
            _CLAIM_CALLBACKS, (owner, limit, lease_seconds, now)
        )
        return claimed

    async def callback_done(self, callback_id: int, at: float) -> None:
        await self._write(_CALLBACK_UPDATE, (Q.callback_done, (at, callback_id)))

    async def callback_failed(self, callback_id: int, error: str, next_at: float) -> None:
        await self._write(_CALLBACK_UPDATE, (Q.callback_failed, (error, next_at, callback_id)))

    async def callback_gave_up(self, callback_id: int, error: str, at: float) -> None:
        await self._write(_CALLBACK_UPDATE, (Q.callback_gave_up, (at, error, callback_id)))

    # --- shared circuit-breaker state ------------------------------------------

    async def save_breaker(self, state: BreakerState) -> None:
        await self._write(_SAVE_BREAKER, (state,))

    async def breakers(self) -> list[BreakerState]:
        found: list[BreakerState] = await self._read(_BREAKERS)
        return found

    # --- observability (routes.metrics) ----------------------------------------

    async def metrics_snapshot(self) -> MetricsSnapshot:
        """One read transaction on the reader: never waits for the writer."""
        snapshot: MetricsSnapshot = await self._read(_METRICS_SNAPSHOT)
        return snapshot

    # --- the dashboard (routes.dashboard) ----------------------------------------

    async def attempts_per_minute(self, since: float, outcomes: Sequence[str]) -> list[MinuteCount]:
        if not outcomes:
            return []
        counts: list[MinuteCount] = await self._read(_ATTEMPTS_PER_MINUTE, (since, tuple(outcomes)))
        return counts

    async def latest_failures(self, limit: int, outcomes: Sequence[str]) -> Failures:
        """One read transaction on the reader: never waits for the writer."""
        failures: Failures = await self._read(_LATEST_FAILURES, (max(limit, 0), tuple(outcomes)))
        return failures


# --- operations (run on a worker thread) ---------------------------------------------


def _schema_version_of(db: sqlite3.Connection) -> int:
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    return int(db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)


@op()
@single
def _SCHEMA_VERSION(db: sqlite3.Connection) -> int:
    return _schema_version_of(db)


@op()
@single
def _MIGRATE_ONE(db: sqlite3.Connection, migrations: tuple[str, ...], path: str) -> bool:
    """Apply the next missing migration; True once none is missing."""
    db.execute(_SCHEMA_VERSION_TABLE)
    version = _schema_version_of(db)
    if version > len(migrations):
        raise RuntimeError(
            f"database {path!r} is at schema version {version}, "
            f"newer than this code knows ({len(migrations)})"
        )
    if version == len(migrations):
        return True
    for statement in split_statements(migrations[version]):
        db.execute(statement)
    db.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
        (version + 1, time.time()),
    )
    return False


@op(batched=True)
def _ADD(
    db: sqlite3.Connection, adds: list[tuple[Mail, Idempotency | None]]
) -> list[str | IdempotencyMismatch]:
    """The mails as ``queued``, each with its outbox entry; nothing for an id already stored.

    A multi-row INSERT per table for the whole batch. For each add, the id of
    the mail that stands for it, or the mismatch its idempotency key ran into.
    """
    ids = list({mail.id for mail, _ in adds})
    stored: set[str] = set()
    for chunk in sql.chunks(ids):
        stored.update(row[0] for row in db.execute(Q.stored_ids(len(chunk)), chunk))
    keyed: dict[tuple[str, str], tuple[str, str, float]] = {}
    for tenant, key_hash in {(m.tenant, i.key_hash) for m, i in adds if i is not None}:
        row = db.execute(Q.idempotency_of, (tenant, key_hash)).fetchone()
        if row is not None:
            keyed[(tenant, key_hash)] = (row[0], row[1], row[2])
    outcomes: list[str | IdempotencyMismatch] = []
    new: dict[str, Mail] = {}
    records: list[tuple[object, ...]] = []
    for mail, idem in adds:
        if idem is not None:
            found = keyed.get((mail.tenant, idem.key_hash))
            if found is not None and found[2] >= mail.created_at:  # recorded, not expired
                mail_id, fingerprint, _ = found
                same = fingerprint == idem.fingerprint
                outcomes.append(mail_id if same else IdempotencyMismatch(mail_id))
                continue
            keyed[(mail.tenant, idem.key_hash)] = (mail.id, idem.fingerprint, idem.expires_at)
            records.append((mail.tenant, idem.key_hash, idem.fingerprint, mail.id, idem.expires_at))
        outcomes.append(mail.id)
        if mail.id not in stored:  # a repeated add inserts neither the mail nor an entry
            new.setdefault(mail.id, mail)
    if records:
        db.executemany(
            """
            INSERT OR REPLACE INTO idempotency (tenant, key_hash, fingerprint, mail_id, expires_at)
            VALUES (?, ?, ?, ?, ?)
            """,
            records,
        )
    mails = list(new.values())
    for chunk in sql.chunks(mails):
        db.execute(Q.insert_mails(len(chunk)), [v for m in chunk for v in sql.mail_values(m)])
        now = [m for m in chunk if m.send_at is None]  # scheduled ones wait for their time
        if now:
            db.execute(Q.insert_outbox(len(now)), [v for m in now for v in (m.id, m.created_at)])
    return outcomes


@op(batched=True)
def _LOAD(db: sqlite3.Connection, ids: list[str]) -> list[tuple[Mail, Status] | None]:
    wanted = list(dict.fromkeys(ids))
    loaded: dict[str, tuple[Mail, Status]] = {}
    for chunk in sql.chunks(wanted):
        loaded.update(sql.loaded_from_rows(db.execute(Q.load(len(chunk)), chunk).fetchall()))
    return [loaded.get(mail_id) for mail_id in ids]


@op(snapshot=True)
@single
def _GET(db: sqlite3.Connection, mail_id: str) -> MailRecord | None:
    row = db.execute(Q.record, (mail_id,)).fetchone()
    if row is None:
        return None
    attempts = db.execute(Q.attempts, (mail_id,)).fetchall()
    return sql.record_from_rows(row, attempts, db.execute(Q.events, (mail_id,)).fetchall())


#: Records an attempt once; nothing for an unknown mail.
_INSERT_ATTEMPT = """
    INSERT OR IGNORE INTO attempts (mail_id, provider, round, at, outcome, reason, message_id)
    SELECT ?, ?, ?, ?, ?, ?, ?
    WHERE EXISTS (SELECT 1 FROM mails WHERE id = ?)
"""


@op(batched=True)
def _APPLY(db: sqlite3.Connection, batches: list[list[StatusUpdate]]) -> list[None]:
    updates = [u for batch in batches for u in batch]
    attempts = [
        (*sql.attempt_values(u.mail_id, u.attempt), u.mail_id)
        for u in updates
        if u.attempt is not None and u.attempt.id is None
    ]
    if attempts:
        db.executemany(_INSERT_ATTEMPT, attempts)
    finished = [
        sql.finish_values(u.mail_id, u.attempt)
        for u in updates
        if u.attempt is not None and u.attempt.id is not None
    ]
    if finished:
        db.executemany(Q.finish_attempt, finished)
    # Moves in the order they can follow each other; a move that is not
    # allowed from the status reached is skipped, as one by one.
    for status, group in sql.moves_in_order(updates):
        db.executemany(Q.move(status), [sql.move_values(u) for u in group])
    _queue_callbacks(db, [u.mail_id for u in updates if u.status in sql.MOVE_ORDER])
    return [None] * len(batches)


@op()
@single
def _BEGIN(
    db: sqlite3.Connection,
    mail_id: str,
    provider: str,
    round_: int,
    at: float,
    stale_before: float,
) -> Begun | None:
    row = db.execute("SELECT payload, status FROM mails WHERE id = ?", (mail_id,)).fetchone()
    if row is None:
        return None
    mail, status = decode(Mail, row[0]), Status(row[1])
    if status.terminal:
        return Begun(mail, status, why="final")
    if status is Status.SCHEDULED:  # not before its time (the sweeper releases it)
        return Begun(mail, status, why="scheduled")
    attempts = [sql.attempt_from_row(r) for r in db.execute(Q.open_attempts, (mail_id,))]
    if attempts:
        refused, stale = sql.begin_verdict(mail, status, attempts, stale_before)
        if stale:
            db.execute(Q.stale_attempts_of(len(stale)), (sql.STALE_REASON, *stale))
        if refused is not None:
            return refused
    attempt_id = db.execute(Q.insert_pending, (mail_id, provider, round_, at)).lastrowid
    db.execute(Q.begin_sending, (at, at, mail_id, *sql.UNFINISHED))
    if mail.callback_url is not None:
        _queue_callbacks(db, [mail_id])
    return Begun(mail, Status.SENDING, attempt_id=attempt_id)


@op()
@single
def _RECORD_EVENTS(db: sqlite3.Connection, events: tuple[DeliveryEvent, ...]) -> list[EventResult]:
    results: list[EventResult] = []
    for event in events:
        if db.execute("SELECT 1 FROM mails WHERE id = ?", (event.mail_id,)).fetchone() is None:
            results.append(EventResult.UNKNOWN_MAIL)
            continue
        kept = db.execute(_INSERT_EVENT, sql.event_values(event)).rowcount
        if kept <= 0:
            results.append(EventResult.DUPLICATE)
            continue
        results.append(EventResult.RECORDED)
        status = event.moves_to
        if status is not None:
            db.execute(Q.move(status), sql.event_move_values(event, status))
    _queue_callbacks(db, [e.mail_id for e in events if e.moves_to is not None])
    return results


_INSERT_EVENT = f"INSERT OR IGNORE INTO events ({sql.EVENT_COLUMNS}) VALUES ({Q.marks(8)})"


@op()
@single
def _MAIL_FOR_MESSAGE(db: sqlite3.Connection, provider_message_id: str) -> str | None:
    row = db.execute(Q.mail_for_message, (provider_message_id,) * 2).fetchone()
    return None if row is None else str(row[0])


@op()
@single
def _SWEEP(db: sqlite3.Connection, now: float, stale_before: float, limit: int) -> list[str]:
    db.execute(Q.stale_attempts, (sql.STALE_REASON, stale_before))
    rows = db.execute(Q.forgotten, (stale_before, limit)).fetchall()
    for chunk in sql.chunks(rows):
        db.execute(Q.insert_rounds(len(chunk)), [v for r in chunk for v in r])
        db.execute(Q.due_now(len(chunk)), (now, *(r[0] for r in chunk)))
    return [r[0] for r in rows]


@op()
@single
def _RELEASE(db: sqlite3.Connection, now: float, limit: int) -> list[str]:
    rows = db.execute(Q.due_scheduled, (now, limit)).fetchall()
    for chunk in sql.chunks(rows):
        db.execute(Q.release_scheduled(len(chunk)), (now, *(r[0] for r in chunk)))
        db.execute(Q.insert_outbox(len(chunk)), [v for r in chunk for v in r])
    ids = [r[0] for r in rows]
    _queue_callbacks(db, ids)
    return ids


@op()
@single
def _ADD_DEAD_LETTER(
    db: sqlite3.Connection,
    mailbox: str,
    mail_id: str | None,
    payload: bytes,
    error: str,
    at: float,
) -> int:
    letter = db.execute(
        Q.insert_dead_letter, (mailbox, mail_id, sql.b64(payload), error, at)
    ).lastrowid
    if mail_id is not None:
        reason = sql.dead_letter_reason(letter, error)
        db.execute(
            Q.move(Status.FAILED), (Status.FAILED.value, at, None, None, reason, at, mail_id)
        )
        _queue_callbacks(db, [mail_id])
    return int(letter or 0)


@op()
@single
def _DEAD_LETTERS(db: sqlite3.Connection, replayed: bool, limit: int) -> list[DeadLetter]:
    return [sql.dead_letter_from_row(r) for r in db.execute(Q.dead_letters, (replayed, limit))]


@op()
@single
def _MARK_REPLAYED(db: sqlite3.Connection, ids: tuple[int, ...], at: float) -> None:
    for chunk in sql.chunks(ids):
        db.execute(Q.mark_replayed(len(chunk)), (at, *chunk))


@op()
@single
def _TRANSITION(
    db: sqlite3.Connection, mail_id: str, status: Status, at: float, reason: str | None
) -> Transition | None:
    row = db.execute("SELECT status FROM mails WHERE id = ?", (mail_id,)).fetchone()
    if row is None:
        return None
    if status in sql.MOVE_ORDER:
        moved = db.execute(Q.move(status), (status.value, at, None, None, reason, at, mail_id))
        if moved.rowcount > 0:
            _queue_callbacks(db, [mail_id])
            return Transition(changed=True, status=status)
    return Transition(changed=False, status=Status(row[0]))


@op()
@single
def _RETRY(db: sqlite3.Connection, mail_id: str, at: float) -> Transition | None:
    row = db.execute("SELECT status FROM mails WHERE id = ?", (mail_id,)).fetchone()
    if row is None:
        return None
    if db.execute(Q.replay, (at, mail_id)).rowcount == 0:
        return Transition(changed=False, status=Status(row[0]))
    (round_,) = db.execute(Q.next_round, (mail_id,)).fetchone()
    db.execute(Q.insert_round, (mail_id, at, round_))
    _queue_callbacks(db, [mail_id])
    return Transition(changed=True, status=Status.QUEUED)


@op()
@single
def _BACKLOG(db: sqlite3.Connection) -> int:
    return int(db.execute(Q.backlog, sql.UNFINISHED).fetchone()[0])


@op()
@single
def _UNFINISHED_MAILS(db: sqlite3.Connection) -> list[Pending]:
    return [sql.pending_from_row(r) for r in db.execute(Q.unfinished, sql.UNFINISHED)]


@op()
@single
def _LIST_MAILS(db: sqlite3.Connection, query: MailQuery) -> list[MailSummary]:
    where, params = list_filter(query)
    rows = db.execute(Q.list_mails(where), (*params, query.limit))
    return [sql.summary_from_row(r) for r in rows]


@op()
@single
def _CREATE_KEY(db: sqlite3.Connection, key: ApiKey, secret_hash: str) -> None:
    db.execute(
        Q.insert_key,
        (key.id, secret_hash, key.tenant, ",".join(key.scopes), key.rate, key.created_at),
    )


@op()
@single
def _KEYS(db: sqlite3.Connection) -> list[ApiKey]:
    rows = db.execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id")
    return [api_key_from_row(tuple(r)) for r in rows]


@op()
@single
def _KEY_BY_HASH(db: sqlite3.Connection, secret_hash: str) -> ApiKey | None:
    row = db.execute(
        f"SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?", (secret_hash,)
    ).fetchone()
    return None if row is None else api_key_from_row(tuple(row))


@op()
@single
def _REVOKE_KEY(db: sqlite3.Connection, key_id: str, at: float) -> bool:
    return db.execute(Q.revoke_key, (at, key_id)).rowcount > 0


@op()
@single
def _ANY_KEYS(db: sqlite3.Connection) -> bool:
    return bool(db.execute(Q.any_keys).fetchone()[0])


@op()
@single
def _TOUCH_KEYS(db: sqlite3.Connection, used: dict[str, float]) -> None:
    db.executemany(Q.touch_key, [(at, key_id, at) for key_id, at in used.items()])


@op()
@single
def _TAKE_TOKEN(db: sqlite3.Connection, bucket: str, rate: float, now: float) -> RateDecision:
    row = db.execute(
        "SELECT tokens, updated_at FROM rate_buckets WHERE id = ?", (bucket,)
    ).fetchone()
    tokens, updated_at = (row[0], row[1]) if row is not None else (None, None)
    left, decision = bucket_step(tokens, updated_at, rate, now)
    db.execute(
        """
        INSERT INTO rate_buckets (id, tokens, updated_at) VALUES (?, ?, ?)
        ON CONFLICT (id) DO UPDATE
        SET tokens = excluded.tokens, updated_at = MAX(updated_at, excluded.updated_at)
        """,
        (bucket, left, now),
    )
    return decision


@op()
@single
def _PURGE_IDEMPOTENCY(db: sqlite3.Connection, now: float) -> int:
    return max(db.execute(Q.purge_idempotency, (now,)).rowcount, 0)


@op()
@single
def _CLAIM(
    db: sqlite3.Connection,
    owner: str,
    limit: int,
    lease_seconds: float,
    now: float,
    done: tuple[int, ...],
) -> list[OutboxEntry]:
    """Remove the owner's published entries, lease the next ones, mark their mails sending.

    The writer's ``BEGIN IMMEDIATE`` holds the file's write lock from before
    the SELECT, so no other process claims between our SELECT and UPDATE.
    """
    for chunk in sql.chunks(done):
        db.execute(Q.delete_outbox(len(chunk)), chunk)
    if limit <= 0:
        return []
    entries = [sql.entry_from_row(r) for r in db.execute(Q.claimable, (now, limit))]
    if entries:
        ids = [e.id for e in entries]
        db.execute(Q.lease(len(ids)), (owner, now + lease_seconds, *ids))
        mail_ids = [e.mail_id for e in entries]
        db.execute(Q.mark_sending(len(mail_ids)), (now, now, *mail_ids))
        _queue_callbacks(db, mail_ids)
    return entries


@op()
@single
def _PUBLISHED(db: sqlite3.Connection, ids: tuple[int, ...]) -> None:
    for chunk in sql.chunks(ids):
        db.execute(Q.delete_outbox(len(chunk)), chunk)


@op()
@single
def _REQUEUE(db: sqlite3.Connection) -> int:
    # The process whose calls these were is gone: their answers are unknown.
    db.execute(Q.stale_attempts, (sql.STALE_REASON, sql.FOREVER))
    made = max(db.execute(Q.requeue, sql.UNFINISHED).rowcount, 0)
    db.execute(Q.release_leases)
    return made


# --- status callbacks --------------------------------------------------------------------


def _queue_callbacks(db: sqlite3.Connection, mail_ids: Sequence[str]) -> None:
    """Queue a callback for each of these mails whose status moved since its last one
    (see ``sql.Sql.callback_changes``); the caller's transaction moved them."""
    changed: list[str] = []
    for chunk in sql.chunks(list(dict.fromkeys(mail_ids))):
        changed.extend(row[0] for row in db.execute(Q.callback_changes(len(chunk)), chunk))
    if not changed:
        return
    now = time.time()
    for chunk in sql.chunks(changed):
        db.execute(Q.queue_callbacks(len(chunk)), (now, now, *chunk))
        db.execute(Q.callbacks_queued(len(chunk)), chunk)


@op()
@single
def _CLAIM_CALLBACKS(
    db: sqlite3.Connection, owner: str, limit: int, lease_seconds: float, now: float
) -> list[CallbackDue]:
    """The writer's ``BEGIN IMMEDIATE`` holds the file's write lock from before the SELECT."""
    claimed = [
        sql.callback_from_row(r) for r in db.execute(Q.claimable_callbacks, (now, now, limit))
    ]
    if claimed:
        ids = [c.id for c in claimed]
        db.execute(Q.lease_callbacks(len(ids)), (owner, now + lease_seconds, *ids))
    return claimed


@op()
@single
def _CALLBACK_UPDATE(db: sqlite3.Connection, statement: str, params: tuple[object, ...]) -> None:
    db.execute(statement, params)


@op()
@single
def _SAVE_BREAKER(db: sqlite3.Connection, state: BreakerState) -> None:
    db.execute(
        """
        INSERT INTO breakers (provider, state, opened_at, updated_at)
        VALUES (?, ?, ?, ?)
        ON CONFLICT (provider) DO UPDATE
        SET state = excluded.state,
            opened_at = excluded.opened_at,
            updated_at = excluded.updated_at
        WHERE excluded.updated_at > breakers.updated_at
        """,
        (state.provider, state.state, state.opened_at, state.updated_at),
    )


@op()
@single
def _BREAKERS(db: sqlite3.Connection) -> list[BreakerState]:
    return [sql.breaker_from_row(r) for r in db.execute(Q.breakers)]


# --- observability (routes.metrics) ----------------------------------------------------


@op(snapshot=True)
@single
def _METRICS_SNAPSHOT(db: sqlite3.Connection) -> MetricsSnapshot:
    return sql.metrics_from_rows(
        db.execute(sql.METRICS_MAILS).fetchall(),
        db.execute(sql.METRICS_ATTEMPTS).fetchall(),
        db.execute(sql.METRICS_OUTBOX).fetchone()[0],
        db.execute(sql.METRICS_DEAD_LETTERS).fetchone()[0],
        db.execute(Q.breakers).fetchall(),
    )


# --- the dashboard (routes.dashboard) ------------------------------------------------------


@op()
@single
def _ATTEMPTS_PER_MINUTE(
    db: sqlite3.Connection, since: float, outcomes: tuple[str, ...]
) -> list[MinuteCount]:
    statement = sql.attempts_per_minute(Q, sql.MINUTE_SQLITE, len(outcomes))
    return [sql.minute_count_from_row(r) for r in db.execute(statement, (*outcomes, since))]


@op(snapshot=True)
@single
def _LATEST_FAILURES(db: sqlite3.Connection, limit: int, outcomes: tuple[str, ...]) -> Failures:
    mails = db.execute(sql.latest_failed_mails(Q), (limit,)).fetchall()
    attempts = [
        row
        for outcome in outcomes
        for row in db.execute(sql.latest_attempts(Q), (outcome, limit)).fetchall()
    ]
    return sql.failures_from_rows(mails, attempts, limit)

"""The SQLite store: one file, every accepted mail fsynced, one trip per transaction.

Stdlib ``sqlite3`` on two threads, each with its own connection:

* the **writer** drains a queue of operations and runs everything it found
  waiting in one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): the adds
  of a burst of requests become one ``INSERT`` run for each row (``executemany``:
  one prepared statement, ``operation.inserts``) and one fsync
  (group commit), and every caller's future is resolved once per batch.
  Each operation runs inside a ``SAVEPOINT``, so one that fails (a mismatched
  idempotency key, a constraint) fails alone and the rest of the batch
  commits;
* the **reader** serves the reads that need no lock (``load``, ``get``,
  listings, keys): under WAL they see the last commit and never wait for
  the writer. Concurrent ``load`` calls share one ``IN (...)`` query.

The operations themselves (their statements and logic) are the concern
modules', shared with MySQL; this module runs them (``drive``).

An in-memory database (``":memory:"``) lives in one connection, so there the
writer serves the reads too.

A caller that gives up on an operation (its timeout cancels the call) before
the writer has taken it into a transaction abandons it: the writer skips it,
so "nothing was changed" is true of it. Once taken (after ``BEGIN IMMEDIATE``
got the lock: a job waiting for another process's lock can still be
abandoned), the caller waits for its outcome, however late; a ``COMMIT`` that
fails is ``OutcomeUnknown``. One per-job state, moved under a lock, decides
which side won (``_Job.state``: pending, then started or abandoned).

``synchronous=FULL`` makes a commit survive a kill -9 or a power loss: a
``201`` is never lost. Several processes may share one file (``--processes``,
``--role``): their writers take turns (``TurnLock``, two OS locks beside the
file, ``<file>.lock`` and ``<file>.lock-q``), in order and without sleeping,
before ``BEGIN IMMEDIATE`` takes the file's write lock; a writer that still
finds that taken (a program that does not take turns) waits up to
``busy_timeout``. A job whose caller gave up while its writer waited for a turn
is skipped, as while it waited for the lock.

The schema is versioned: ``MIGRATIONS`` are the scripts of
``migrations/sqlite/``, script N bringing the schema from version N-1 to N.
``open()`` applies the missing ones, each in its own transaction that also
records its version in ``schema_version``.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import fcntl
import importlib
import os
import pickle
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import structlog

from mailman.config.logging import configure_logging
from mailman.config.settings import SQLITE_WRITERS

from . import frames, migrations
from .base import OutcomeUnknown, SqlStore, StoreUnavailable, timed_out
from .dialect import CACHED_STATEMENTS, SQLITE, Dialect
from .operation import Batched, Operation, Statement, Steps, read, write

log = structlog.get_logger("mailman.store")

P = ParamSpec("P")
T = TypeVar("T")
A = TypeVar("A")

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

#: Where the writer keeps a transaction's statement journals (the pages a statement
#: changes, as they were before it, to undo that statement alone): in memory. In files
#: (SQLite's default past 64 KiB), a batch's claims and moves opened, wrote and deleted a
#: temporary file each transaction: 30 % of the writer's write calls and 40 % of its
#: system time under load. One statement's pages are what it holds at most; migrations,
#: which may rewrite a whole table in one statement, keep files (``SQLiteStore._migrate``).
WRITER_TEMP_STORE = "MEMORY"
#: How long a writer waits for another process's write lock before "database is locked".
BUSY_TIMEOUT_MS = 5000
#: How long closing the store waits for its threads to end.
STOP_WAIT_SECONDS = 30.0


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


def drive(db: sqlite3.Connection, steps: Steps[T]) -> T:
    """Run an operation's statements on ``db``, each sent back its cursor; its result."""
    try:
        statement = next(steps)
        while True:
            if statement.many:
                cursor = db.executemany(statement.sql, statement.params)
            else:
                cursor = db.execute(statement.sql, statement.params)
            statement = steps.send(cursor)
    except StopIteration as done:
        result: T = done.value
        return result


# --- the worker threads ----------------------------------------------------------------

AnyOperation = Operation[Any, Any] | Batched[Any, Any]


#: A job's state: queued; taken into a transaction by the thread; given up by its caller.
PENDING, STARTED, ABANDONED = "pending", "started", "abandoned"


@dataclass(slots=True)
class _Job:
    operation: AnyOperation
    #: A batched operation's call: its one argument, alone.
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any]
    #: ``PENDING`` until the thread starts it or its caller abandons it (whichever
    #: comes first, under ``_Worker._claims``): never both.
    state: str = PENDING


_STOP = None


class TurnLock:
    """Write turns between the processes that share one file, taken in turn.

    SQLite's own lock is no queue: a writer that finds it taken sleeps in its busy
    handler (1, 2, 5 ... 100 ms) and tries again, while the holder, whose next
    batch is ready at once, takes it again. Two OS locks beside the file make a
    queue: a writer takes the turnstile (``.lock-q``), then the lock
    (``.lock``), and lets go of the turnstile; a waiting writer holds the
    turnstile, so the one that just committed queues behind it. ``flock`` wakes a
    waiter the moment the lock is free (no sleeping), and the kernel drops a
    dead process's locks.
    """

    def __init__(self, path: str) -> None:
        self._turnstile = os.open(path + ".lock-q", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self) -> None:
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)

    def release(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self._turnstile, self._lock):
            with contextlib.suppress(OSError):
                os.close(fd)


#: SQLite's primary result codes that lose the whole transaction (locked, I/O, full,
#: corrupt...), not just the statement: every job of the batch fails with them.
_WHOLE_TRANSACTION = frozenset({5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 26})


def _lost(db: sqlite3.Connection, exc: BaseException, *, write: bool) -> bool:
    """Whether ``exc`` lost the whole transaction (the writer's batch; for the reader,
    the connection), not only the operation that raised it.

    An error while binding a parameter (a string SQLite cannot encode), a constraint,
    "too many SQL variables": that operation's own fault, undone by its savepoint.
    """
    if write and not db.in_transaction:
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _WHOLE_TRANSACTION
        return isinstance(exc, sqlite3.OperationalError)
    return not isinstance(exc, Exception)


class _Worker:
    """One thread with its own connection, running queued jobs in batches."""

    #: The calls of one event-loop turn go to the thread together, however many: a
    #: thread woken mid-turn would take the GIL from the loop (``_ProcessWriter``).
    submit_every: int = sys.maxsize

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        *,
        write: bool,
        turns: TurnLock | None = None,
    ):
        self.name = name
        self._connect = connect
        self._write = write
        self._turns = turns
        #: Lists of jobs, one per event-loop turn that called (one thread wake-up each).
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._pending: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = False
        #: Guards every job's ``state``: the thread starting it, its caller abandoning it.
        self._claims = threading.Lock()

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

    async def stop(self) -> bool:
        """Run what is queued, then close the connection and end the thread; False if the
        thread did not end within ``STOP_WAIT_SECONDS``. Idempotent."""
        thread, self._thread = self._thread, None
        self._open = False
        if thread is None:
            return True
        self._submit()
        self._jobs.put(_STOP)
        # Bounded: a writer waiting for another process's turn (one that hangs holding
        # it) would never end; it is a daemon thread, gone with the process.
        await asyncio.to_thread(thread.join, STOP_WAIT_SECONDS)
        if thread.is_alive():
            log.warning("store.writer_stuck", seconds=STOP_WAIT_SECONDS)
            return False
        return True

    async def call(
        self, operation: AnyOperation, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``operation`` on the thread; its result.

        The calls of one event-loop turn go to the thread together: one
        wake-up (a system call) for all of them, and one batch; to an idle writer
        process, the first ``submit_every`` of them at once.

        Cancelled before the thread started it, the job is abandoned: the thread
        skips it and the cancellation goes on (nothing was changed). Cancelled once
        started by the caller's own timeout (``giving_up_by``), the call waits for
        the job's outcome and answers it, however late: the change may be committed,
        and a caller told "timed out" would believe it was not. Any other
        cancellation (the caller torn down) goes on at once.
        """
        if not self._open or self._loop is None:
            raise RuntimeError("the store is not open")
        future: asyncio.Future[Any] = self._loop.create_future()
        if not self._pending:
            self._loop.call_soon(self._submit)
        job = _Job(operation, args, kwargs, future)
        self._pending.append(job)
        if len(self._pending) >= self.submit_every and self._idle():
            self._submit()
        try:
            return await future
        except asyncio.CancelledError:
            if self._abandon(job):
                raise  # never started, never will: nothing was changed
            if not timed_out():
                raise  # torn down, not timed out: nobody is told anything
        # Started: its outcome is the answer, however late (cancelled again: torn down).
        if future.done() and not future.cancelled():
            return future.result()  # settled as the timeout fired
        # The cancellation cancelled the future: the thread settles the job's new one.
        job.future = self._loop.create_future()
        return await job.future

    def _idle(self) -> bool:
        """Whether the writer has none of our calls to run (``submit_every`` is only
        reached by a writer process's calls)."""
        return True

    def _abandon(self, job: _Job) -> bool:
        """Give ``job`` up if the thread has not started it; False if it has."""
        with self._claims:
            if job.state is PENDING:
                job.state = ABANDONED
                return True
            return False

    def _start(self, jobs: list[_Job]) -> list[_Job]:
        """The jobs the thread now runs: those whose caller has not abandoned them."""
        with self._claims:
            started = [job for job in jobs if job.state is PENDING]
            for job in started:
                job.state = STARTED
        return started

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
        self._loop.call_soon_threadsafe(_succeed, connected)
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
                # RuntimeError: the loop is closed (a writer stuck past ``stop`` waiting
                # for another process's turn); nobody waits for these outcomes.
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(_settle, outcomes)
        finally:
            db.close()

    def _batch(self, db: sqlite3.Connection, jobs: list[_Job]) -> list[tuple[_Job, Any]]:
        """Each job with its result (or exception), the writer's in one
        transaction. Only jobs still wanted are started, once the write lock is held
        (a job whose caller gave up while the lock was awaited is skipped)."""
        turns = self._turns
        if turns is not None:
            turns.acquire()
        try:
            return self._transaction(db, jobs)
        finally:
            if turns is not None:
                turns.release()

    def _transaction(self, db: sqlite3.Connection, jobs: list[_Job]) -> list[tuple[_Job, Any]]:
        try:
            if self._write:
                db.execute("BEGIN IMMEDIATE")
        except Exception as exc:  # nothing started: every job fails, nothing changed
            return [(job, exc) for job in jobs]
        started = self._start(jobs)
        # A batched operation's calls share one group; any other call is a group alone.
        groups: dict[AnyOperation | int, list[int]] = {}
        for i, job in enumerate(started):
            operation = job.operation
            groups.setdefault(operation if isinstance(operation, Batched) else i, []).append(i)
        outcomes: list[Any] = [None] * len(started)
        try:
            for indexes in groups.values():
                group = [started[i] for i in indexes]
                for i, outcome in zip(indexes, self._group(db, group), strict=True):
                    outcomes[i] = outcome
        except Exception as exc:  # the whole transaction failed: every job with it
            if db.in_transaction:
                db.execute("ROLLBACK")
            return [(job, exc) for job in started]
        if self._write:
            try:
                db.execute("COMMIT")
            except Exception as exc:
                if db.in_transaction:  # still open: rolled back, so nothing was changed
                    db.execute("ROLLBACK")
                    return [(job, exc) for job in started]
                # SQLite ended it itself (an I/O error mid-commit): made or not, unknown.
                unknown = OutcomeUnknown(f"the commit failed ({type(exc).__name__})")
                return [(job, unknown) for job in started]
        return [(job, o) for job, o in zip(started, outcomes, strict=True)]

    def _group(self, db: sqlite3.Connection, jobs: list[_Job]) -> list[Any]:
        """One operation's calls; alone (each in a savepoint) if the batch of them fails."""
        try:
            return self._guarded(db, jobs)
        except Exception as exc:
            if _lost(db, exc, write=self._write):
                raise  # locked, I/O error: the transaction is lost, for every job
            if len(jobs) == 1:
                return [exc]
        outcomes: list[Any] = []
        for job in jobs:
            try:
                outcomes.extend(self._guarded(db, [job]))
            except Exception as exc:
                if _lost(db, exc, write=self._write):
                    raise
                outcomes.append(exc)
        return outcomes

    def _guarded(self, db: sqlite3.Connection, jobs: list[_Job]) -> list[Any]:
        if self._write:
            db.execute("SAVEPOINT op")
            try:
                out = _run(db, jobs)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                raise
            db.execute("RELEASE op")
            return out
        operation = jobs[0].operation
        if not isinstance(operation, Operation) or not operation.snapshot:
            return _run(db, jobs)
        db.execute("BEGIN")
        try:
            return _run(db, jobs)
        finally:
            db.execute("COMMIT")


def _run(db: sqlite3.Connection, jobs: list[_Job]) -> list[Any]:
    """The jobs of one operation (several: a batched operation's calls); a result per job."""
    operation = jobs[0].operation
    if isinstance(operation, Batched):
        return list(drive(db, operation.steps(SQLITE, [job.args[0] for job in jobs])))
    return [drive(db, operation.steps(SQLITE, *job.args, **job.kwargs)) for job in jobs]


def _settle(pairs: list[tuple[_Job, Any]]) -> None:
    for job, outcome in pairs:
        future = job.future  # read now: a caller waiting past its timeout replaces it
        if future.done():  # its caller was cancelled
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _succeed(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


# --- the store ----------------------------------------------------------------------


class SQLiteStore(SqlStore):
    """Mails, statuses and attempts in one SQLite file (or ``":memory:"``)."""

    dialect = SQLITE

    #: "database is locked" (busy past the timeout), "disk I/O error", "unable to open";
    #: a commit that failed half-way (the actors wait it out as an outage).
    unavailable = (sqlite3.OperationalError, OutcomeUnknown)

    def __init__(
        self, path: str, *, migrations: Sequence[str] = MIGRATIONS, writer: str = "thread"
    ) -> None:
        if writer not in SQLITE_WRITERS:
            raise ValueError(f"writer must be one of {', '.join(SQLITE_WRITERS)}, not {writer!r}")
        self.path = path
        self.migrations: tuple[str, ...] = tuple(migrations)
        #: Where a file's writes run (in memory: always a thread, the one connection).
        self.writer = writer
        self._writer: _Worker | None = None
        self._reader: _Worker | None = None
        self._turns: TurnLock | None = None

    @property
    def in_memory(self) -> bool:
        return self.path == ":memory:" or self.path.startswith("file::memory:")

    # --- lifecycle ---------------------------------------------------------

    def _create(self) -> None:
        """Create the file readable by its owner only (0600) if it is not there yet: it
        holds every mail. SQLite gives the ``-wal`` and ``-shm`` files the mode of the
        database file."""
        path = self._file
        if path is None or os.path.exists(path):
            return
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))

    @property
    def _file(self) -> str | None:
        """The database file's path; None in memory (or for a temporary database)."""
        path = self.path.removeprefix("file:").partition("?")[0]
        return None if self.in_memory or not path else path

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        if write:
            self._create()
        db = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
            cached_statements=CACHED_STATEMENTS,
        )
        try:
            if write:
                # Freed pages go back to the file system on ``retention.reclaim``. Takes
                # effect only before the first table is made (a new file); an older file
                # keeps ``NONE`` until a VACUUM (docs/retention.md).
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if write and not self.in_memory:
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if write:
                db.execute(f"PRAGMA temp_store = {WRITER_TEMP_STORE}")
            else:
                db.execute("PRAGMA query_only = ON")
        except BaseException:
            db.close()
            raise
        return db

    async def open(self) -> None:
        if self._writer is not None:
            return
        path = self._file
        writer: _Worker
        if path is not None and self.writer == "process":
            writer = _ProcessWriter(self.path)  # the process creates the file (0600)
        else:
            turns = self._turns = None if path is None else TurnLock(path)
            writer = _Worker("writer", lambda: self._connect(write=True), write=True, turns=turns)
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
        ended = True
        if writer is not None:
            ended = await writer.stop()  # what was handed in is committed first
        turns, self._turns = self._turns, None
        if turns is not None and ended:  # (a stuck writer still uses them)
            turns.close()

    # ``run`` and ``run_batched`` hand back the worker's call itself: no coroutine of
    # their own to make, and to resume when the answer comes, on every store call.

    def run(
        self, operation: Operation[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:
        """A write on the writer (in the next batch's transaction), a read on the reader."""
        worker = self._writer if operation.writes else self._reader
        if worker is None:
            raise RuntimeError("the store is not open")
        return worker.call(operation, args, kwargs)

    def run_batched(self, operation: Batched[A, T], arg: A, /) -> Coroutine[Any, Any, T]:
        """With the other calls of ``operation`` waiting, in one go."""
        worker = self._writer if operation.writes else self._reader
        if worker is None:
            raise RuntimeError("the store is not open")
        return worker.call(operation, (arg,), {})

    async def schema_version(self) -> int:
        """The latest migration applied to the database (0 for none)."""
        return await self.run(_schema_version)

    async def _migrate(self, writer: _Worker) -> None:
        """Apply the missing migrations, one transaction each, their statement journals
        in files (``WRITER_TEMP_STORE``: a migration may rewrite a whole table)."""
        await writer.call(_temp_store, ("FILE",), {})
        while not await writer.call(_migrate_one, (self.migrations, self.path), {}):
            pass
        await writer.call(_temp_store, (WRITER_TEMP_STORE,), {})


# --- the writer in a process of its own ---------------------------------------------------

#: A job's future in the writer process: its outcome goes back over the socket instead.
_UNAWAITED: Any = None
#: The folder holding the ``mailman`` package, for the writer process to import it from.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _operation_key(operation: AnyOperation) -> tuple[str, str, bool]:
    """How the writer process finds ``operation``: its module, its name, batched or not."""
    steps = operation.steps
    return steps.__module__, steps.__qualname__, isinstance(operation, Batched)


class _ProcessWriter(_Worker):
    """The writer in a process of its own (``MAILMAN_SQLITE_WRITER=process``).

    A writer thread shares this process's GIL with the event loop: each of its SQLite
    calls lets the GIL go, and getting it back waits for the busy event loop, so a
    transaction took two to three times its CPU while every accept waited for it.
    Here the event loop writes each turn's calls to the writer process's socket
    (operations by name, arguments pickled), and settles them as their outcomes come
    back in order; the process runs them as ``_Worker`` does, in one transaction per
    batch, taking the file's turns. A call sent is started (a caller's timeout then
    waits for its outcome, as with the thread). If the process ends, the calls sent
    to it get ``OutcomeUnknown`` (committed or not, unknown), and the next calls start
    a new one.
    """

    #: While the process has nothing of ours to run, a turn's first this many calls go
    #: to it at once (the rest at the turn's end): sent only at the turn's end, a busy
    #: loop's 30 accepts left the process idle while it made them, then left itself
    #: idle while the process committed them all (the loop slept 6-15 % of a
    #: 32-connection load). A process still busy takes what waits for it in one
    #: transaction anyway: sent early then, the calls would only make more, smaller
    #: transactions (measured: more CPU per delivered mail). ``docs/performance.md``,
    #: "The writer not left waiting for the turn's end".
    submit_every = 16

    def __init__(self, path: str) -> None:
        super().__init__("writer", lambda: sqlite3.connect(":memory:"), write=True)
        # Absolute: the forker's working directory is this process's when it started.
        self._path = path if path.startswith("file:") else os.path.abspath(path)
        #: The writer process's pid (it is the forker's child, not ours).
        self._pid: int | None = None
        self._transport: asyncio.Transport | None = None
        #: The batches sent, oldest first: their outcomes come back in this order.
        self._sent: collections.deque[list[_Job]] = collections.deque()
        self._ready: asyncio.Future[int] | None = None
        self._gone: asyncio.Future[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Start the process; raises what opening the file there raised."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        await self._spawn()
        self._open = True

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            await asyncio.to_thread(_FORKER.fork, theirs, self._path)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._ready, self._gone = loop.create_future(), loop.create_future()
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: _Outcomes(self), sock=ours)
        except BaseException:
            ours.close()
            raise
        self._transport = transport
        try:
            self._pid = await self._ready
        except BaseException:
            await self._end()
            raise
        log.info("store.writer_process", pid=self._pid)

    def _idle(self) -> bool:
        return not self._sent

    def _submit(self) -> None:
        if self._transport is None:
            if self._pending and self._starting is None and not self._stopping:
                self._starting = asyncio.ensure_future(self._respawn())
            return
        jobs = self._start(self._pending)
        self._pending = []
        if not jobs:
            return
        calls = [(_operation_key(job.operation), job.args, job.kwargs) for job in jobs]
        try:
            data = frames.calls_frame(calls)
        except Exception as exc:  # an argument that cannot be pickled: these calls fail
            _settle([(job, exc) for job in jobs])
            return
        self._sent.append(jobs)
        self._transport.write(data)

    async def _respawn(self) -> None:
        """A new process for the calls that came after the last one ended."""
        try:
            await self._spawn()
        except Exception as exc:
            log.error("store.writer_process_failed", error=type(exc).__name__)
            jobs, self._pending = self._start(self._pending), []
            cause = StoreUnavailable(f"the store's writer process did not start ({exc})")
            _settle([(job, cause) for job in jobs])
        finally:
            self._starting = None
        if self._transport is not None and self._pending:
            self._submit()

    def _outcomes(self, frame: bytes) -> None:
        ready = self._ready
        if ready is not None and not ready.done():  # the first frame: opened, or why not
            started = pickle.loads(frame)  # its pid, or what kept it from opening the file
            if isinstance(started, BaseException):
                ready.set_exception(started)
            else:
                ready.set_result(started)
            return
        jobs = self._sent.popleft()
        _settle(list(zip(jobs, pickle.loads(frame), strict=True)))

    def _lost(self) -> None:
        """The process's socket closed: what was sent and not answered is unknown."""
        self._transport = None
        sent, self._sent = list(self._sent), collections.deque()
        unknown = OutcomeUnknown("the store's writer process ended before answering")
        for jobs in sent:
            _settle([(job, unknown) for job in jobs])
        ready, gone = self._ready, self._gone
        if ready is not None and not ready.done():
            ready.set_exception(StoreUnavailable("the store's writer process did not start"))
        if gone is not None and not gone.done():
            gone.set_result(None)
        if not self._stopping:
            log.error(
                "store.writer_process_ended",
                pid=self._pid,
                unanswered=sum(len(jobs) for jobs in sent),
            )
            if self._pending and self._starting is None:
                self._starting = asyncio.ensure_future(self._respawn())

    async def stop(self) -> bool:
        """Send what is queued, let the process commit it and end; False if it did not end
        within ``STOP_WAIT_SECONDS``. Idempotent."""
        if not self._open:
            return True
        self._open = False
        starting = self._starting
        if starting is not None:
            with contextlib.suppress(Exception):
                await starting
        self._submit()
        return await self._end()

    async def _end(self) -> bool:
        """Close the socket once the process answered what it has; it then ends itself."""
        self._stopping = True
        transport, gone = self._transport, self._gone
        if transport is not None and gone is not None:
            if transport.can_write_eof():
                transport.write_eof()  # the process answers what it has, then ends
            try:
                await asyncio.wait_for(asyncio.shield(gone), STOP_WAIT_SECONDS)
            except TimeoutError:
                log.warning("store.writer_stuck", seconds=STOP_WAIT_SECONDS)
                transport.abort()
                if self._pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(self._pid, signal.SIGKILL)
                return False
        return True


class _Outcomes(asyncio.Protocol):
    """The event loop's end of the writer process's socket."""

    def __init__(self, writer: _ProcessWriter) -> None:
        self._writer = writer
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        for frame in frames.split(self._buffer):
            self._writer._outcomes(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._writer._lost()


class _Forker:
    """Starts writer processes by forking them from one small process of its own.

    Each would otherwise be a fresh interpreter importing the store (about 0.4 s of
    CPU); this process (started once, the first time a writer is wanted, with the
    same ``python -c`` trick) imports it once, runs no thread, and forks a writer
    for each socket it is handed (``SCM_RIGHTS``). It reaps them (``SIGCHLD``
    ignored) and ends when this process's end of its control socket closes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._at_exit = False

    def fork(self, sock: socket.socket, path: str) -> None:
        """A writer process for the file ``path``, serving ``sock`` (blocking: from a thread)."""
        with self._lock:
            for tries_left in (1, 0):
                control = self._control or self._start()
                try:
                    socket.send_fds(control, [os.fsencode(path)], [sock.fileno()])
                    return
                except OSError:  # it ended: start another once
                    self._stop()
                    if not tries_left:
                        raise

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _FORKER_MAIN, _PACKAGE_ROOT, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(_FORKER_START_SECONDS)
        try:
            started = ours.recv(1) == b"+"  # it imported the store (else: it ended)
        except OSError:
            started = False
        ours.settimeout(None)
        if not started:
            ours.close()
            self._stop()
            raise StoreUnavailable("the SQLite writer processes' forker did not start")
        self._control = ours
        if not self._at_exit:
            atexit.register(self.close)
            self._at_exit = True
        return ours

    def close(self) -> None:
        """End the forker (its writers end with their stores' sockets)."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            control.close()
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_WAIT_SECONDS)


_FORKER = _Forker()
#: How long the forker may take to start (a fresh interpreter importing the store).
_FORKER_START_SECONDS = 60.0

#: On the command line of the forker and of every writer process (``ps``, the bench).
FORKER_IMPORT = "mailman.store.sqlite import forker"
#: The forker's program (argv: package root, its control socket's fd), found as the
#: caller found this package, or else where this one is (appended: nothing there
#: shadows what the path had). Not multiprocessing: it would import the caller's main
#: module again. ``forker`` stays on the command line of it and of its writers.
_FORKER_MAIN = (
    f"import sys; sys.path.append(sys.argv[1]); from {FORKER_IMPORT}; "
    "sys.exit(forker(sys.argv[2:]))"
)


def forker(argv: Sequence[str]) -> int:
    """The forker's main: a writer process per socket handed in, until the control ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # its writers are reaped by the kernel
    (fd,) = argv
    control = socket.socket(fileno=int(fd))
    control.sendall(b"+")
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 4096, 1)
        except OSError:
            return 0
        if not message:
            return 0  # the Mailman process ended, or closed its store module's forker
        if not fds:
            continue
        if os.fork() == 0:
            try:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                serve_writer(os.fsdecode(message), socket.socket(fileno=fds[0]))
            finally:
                os._exit(0)
        os.close(fds[0])


#: What the writer process reads from its socket at a time, into one buffer it keeps (a
#: fresh 1 MiB for each read was an mmap, an mremap and a munmap a batch).
READ_BYTES = 1 << 20


def bind_as_they_are() -> None:
    """``None`` and ``bytes`` parameters found in sqlite3's adapters, bound as they are.

    sqlite3 binds ints, floats and strs at once, but asks any other parameter for an
    adapter: the adapters' dict, then ``__adapt__`` on the protocol and ``__conform__``
    on the value, two failed lookups that each raise an AttributeError; an accept binds
    four ``None`` (a mail without callback, schedule or chain): about 7,000
    instructions of the writer's 377,000. Found in the dict, each comes back as it was,
    which is what the failed lookups give. Process-wide, so for the writer process alone
    (Mailman's own): never in a process an application shares (the writer thread's)."""
    for kind in (type(None), bytes):
        sqlite3.register_adapter(kind, _as_it_is)


def _as_it_is(value: bytes | None) -> bytes | None:
    return value


def serve_writer(path: str, sock: socket.socket) -> None:
    """The writer process: batches of calls in, their outcomes out, until the socket ends.

    It ignores SIGINT and SIGTERM as its forker does (a fork keeps ignored signals; a
    Ctrl-C or a stop reaches the whole process group): its Mailman process ends it by
    closing the socket, once what was sent is committed; one killed outright closes it too.
    """
    configure_logging("warning", "json")  # were anything logged here: one JSON object
    bind_as_they_are()
    store = SQLiteStore(path)
    try:
        db = store._connect(write=True)
        turns = TurnLock(store._file or path)
    except Exception as exc:
        sock.sendall(frames.frame(_portable(exc)))
        return
    sock.sendall(frames.frame(os.getpid()))
    writer = _Worker("writer", lambda: db, write=True, turns=turns)
    operations: dict[tuple[str, str, bool], AnyOperation] = {}
    buffer = bytearray()
    reading = memoryview(bytearray(READ_BYTES))
    ended = False
    try:
        while not ended:
            size = sock.recv_into(reading)
            if not size:
                ended = True
            buffer += reading[:size]
            # Each frame's calls: a job, or why it cannot run (never run, so not unknown).
            batches = [_jobs(operations, frame) for frame in frames.split(buffer)]
            if not batches:
                continue
            jobs = [job for calls in batches for job in calls if isinstance(job, _Job)]
            ran = dict(zip(map(id, jobs), (o for _, o in writer._batch(db, jobs)), strict=True))
            for calls in batches:
                answer = [_portable(ran[id(c)] if isinstance(c, _Job) else c) for c in calls]
                try:
                    data = frames.frame(answer)
                except Exception:  # a result that cannot be pickled: that call fails
                    data = frames.frame([_sendable(outcome) for outcome in answer])
                sock.sendall(data)
    finally:
        db.close()
        turns.close()
        sock.close()


def _jobs(
    operations: dict[tuple[str, str, bool], AnyOperation], frame: bytes
) -> list[_Job | Exception]:
    """A frame's calls as jobs; a call whose operation or arguments this process cannot
    load is its error instead (an operation defined inside a function has no name here)."""
    try:
        calls = frames.calls_of(frame)
    except Exception as exc:  # its arguments' classes: these calls all fail, unrun
        error = RuntimeError(f"the call could not be read by the writer process ({exc})")
        return [error] * frames.count_of(frame)
    jobs: list[_Job | Exception] = []
    for key, args, kwargs in calls:
        try:
            jobs.append(_Job(_find(operations, key), args, kwargs, _UNAWAITED))
        except Exception as exc:
            jobs.append(RuntimeError(f"{key[0]}.{key[1]} is not an operation found by name: {exc}"))
    return jobs


def _find(
    operations: dict[tuple[str, str, bool], AnyOperation], key: tuple[str, str, bool]
) -> AnyOperation:
    """The operation a call names (its module imported on first use)."""
    operation = operations.get(key)
    if operation is None:
        module, name, batched = key
        found: Any = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
        if not isinstance(found, Operation | Batched):  # a decorator kept another name
            found = Batched(found, writes=True) if batched else Operation(found, writes=True)
        operation = operations[key] = found
    return operation


def _sendable(outcome: Any) -> Any:
    try:
        frames.dumps(outcome)
    except Exception as exc:
        return RuntimeError(f"the result of the call could not be sent back ({exc})")
    return outcome


def _portable(outcome: Any) -> Any:
    """``outcome`` if it crosses the socket as itself, else an error naming it."""
    if not isinstance(outcome, BaseException):
        return outcome
    try:
        again = pickle.loads(frames.dumps(outcome))
    except Exception:
        again = None
    if type(again) is type(outcome):
        return outcome
    return RuntimeError(f"{type(outcome).__name__}: {outcome}")


# --- the schema's operations -------------------------------------------------------------


def _version(d: Dialect) -> Steps[int]:
    exists = (
        yield Statement(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        )
    ).fetchone()
    if exists is None:
        return 0
    (version,) = (yield Statement("SELECT MAX(version) FROM schema_version")).fetchone()
    return int(version or 0)


@read
def _schema_version(d: Dialect) -> Steps[int]:
    return (yield from _version(d))


@write
def _temp_store(d: Dialect, where: str) -> Steps[None]:
    """Where the writer keeps statement journals from its next transaction on (SQLite
    takes the setting when a transaction begins): ``FILE`` or ``MEMORY``."""
    if where not in ("FILE", "MEMORY"):
        raise ValueError(f"temp_store {where!r}: FILE or MEMORY")
    yield Statement(f"PRAGMA temp_store = {where}")


@write
def _migrate_one(d: Dialect, scripts: tuple[str, ...], path: str) -> Steps[bool]:
    """Apply the next missing migration; True once none is missing."""
    yield Statement(_SCHEMA_VERSION_TABLE)
    version = yield from _version(d)
    if version > len(scripts):
        raise RuntimeError(
            f"database {path!r} is at schema version {version}, "
            f"newer than this code knows ({len(scripts)})"
        )
    if version == len(scripts):
        return True
    for statement in split_statements(scripts[version]):
        yield Statement(statement)
    yield Statement(
        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
        (version + 1, time.time()),
    )
    return False


__all__ = [
    "FORKER_IMPORT",
    "MIGRATIONS",
    "SQLiteStore",
    "forker",
    "serve_writer",
    "split_statements",
]

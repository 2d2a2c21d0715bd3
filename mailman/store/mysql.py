"""The MySQL/MariaDB store: what ``SQLiteStore`` does, shared by several processes.

``aiomysql`` pool, one connection per operation, one InnoDB transaction per
operation (``autocommit=False``; REPEATABLE READ, the server default). The
operations are the concern modules' (shared with SQLite); where MySQL needs
more than SQLite's one writer does, they say so (``Dialect.one_writer``):

* every status move is a guarded ``UPDATE ... WHERE id = %s AND status IN
  (...)``, and the rows of the mails an operation moves are locked first
  (``SELECT ... FOR UPDATE``, in id order), so two workers racing on one mail
  never move it backwards and never deadlock on each other;
* ``get`` reads the mail and its attempts in one read-only transaction (one
  snapshot), so status and history always agree;
* the outbox is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED``: a claimer
  skips the rows another claimer holds, and once that one commits the rows
  carry its lease, which the ``WHERE`` excludes;
* a transaction chosen as a deadlock victim (1213: rolled back whole by the
  server) is run again, a few times (``MySQLStore._run``, on ``mailman.retry``;
  each retry logs ``store.deadlock``); every other error
  propagates, a lost connection included. An error before ``COMMIT`` (a
  cancelled caller included) rolls the transaction back: nothing was changed.
  Once ``COMMIT`` is sent, a cancelled caller waits for its answer (the change
  may be made); one whose answer is lost (the connection broke) or late
  (``COMMIT_ANSWER_SECONDS``) is ``OutcomeUnknown``: it may have been made.

Statements that make the server raise a warning are avoided on purpose:
``aiomysql`` turns every server warning into a Python ``warnings.warn``. So a
repeated insert is ``ON DUPLICATE KEY UPDATE id = id``, not ``INSERT IGNORE``
(which warns "Duplicate entry").

Ids are compared with ``utf8mb4_bin`` (case-sensitive), which pads trailing
spaces: an id longer than 64 characters, or ending in a space, is one the
store cannot hold (``Dialect.holds_id``). Lookups answer None for it; ``add``
refuses it.

The schema is versioned like SQLite's (``MIGRATIONS``: the scripts of
``migrations/mysql/``; ``schema_version``). MySQL DDL commits implicitly and
cannot be rolled back, so each migration is idempotent (``CREATE TABLE IF NOT
EXISTS``, indexes declared inside the table) and its version is recorded after
its statements ran: a run that died half-way is simply run again. Several
processes may start at once: the whole run holds ``GET_LOCK('mailman.migrate')``
and re-reads the version under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import aiomysql
import structlog

from mailman.config import check_store_url
from mailman.retry import Backoff, retrying

from . import migrations
from .base import OutcomeUnknown, SqlStore, StoreSetupNeeded, timed_out
from .dialect import MYSQL
from .operation import Batched, Operation, Steps

P = ParamSpec("P")
T = TypeVar("T")
A = TypeVar("A")

#: Migration N (1-based) brings the schema from version N-1 to N.
MIGRATIONS: tuple[str, ...] = migrations.scripts("mysql")

_TABLE_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

_SCHEMA_VERSION_TABLE = f"""
    CREATE TABLE IF NOT EXISTS schema_version (
        version    INT NOT NULL PRIMARY KEY,
        applied_at DOUBLE NOT NULL
    ) {_TABLE_OPTIONS}
"""

_MIGRATION_LOCK = "mailman.migrate"
_MIGRATION_LOCK_SECONDS = 60

#: Server errors no wait mends: access denied (1044, 1045, 1698), unknown database (1049).
_ACCESS_DENIED = frozenset({1044, 1045, 1227, 1698})
_UNKNOWN_DATABASE = 1049
_DATABASE_DENIED = 1044

log = structlog.get_logger("mailman.store")

_DEFAULT_PORT = 3306
_CONNECT_TIMEOUT = 10
_POOL_RECYCLE_SECONDS = 3600

#: How long a COMMIT's answer is awaited once it is sent, past a caller's timeout.
COMMIT_ANSWER_SECONDS = 30.0

_ER_LOCK_DEADLOCK = 1213
#: Duplicate column / duplicate key name / no such key to drop: a migration statement
#: that already ran.
ALREADY_DONE = frozenset({1060, 1061, 1091})
#: A deadlock victim is run again: 5 tries in all, 5 ms apart at first (doubling), with jitter.
DEADLOCK_BACKOFF = Backoff(first=0.005, cap=0.04, jitter=0.005, attempts=5)

# Strict: a value too long for its column is an error, never silently cut.
_SESSION_INIT = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"
# Migrations and database admin: "already exists" notes would become Python warnings.
_ADMIN_INIT = f"{_SESSION_INIT}, SESSION sql_notes = 0"

_URL_EXAMPLE = "mysql://user:password@host:3306/database"


def split_statements(script: str) -> list[str]:
    """The statements of a migration script (separated by ``;``, none inside a literal)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def _error_code(exc: BaseException) -> int | None:
    if isinstance(exc, aiomysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def _answer_lost(exc: BaseException) -> bool:
    """Whether a COMMIT that raised ``exc`` may have been made: its answer never came
    (the connection broke), as opposed to the server's refusal (an error code below
    2000), which rolled it back."""
    if isinstance(exc, aiomysql.InterfaceError | OSError):
        return True
    code = _error_code(exc)
    return code is None or 2000 <= code < 3000


async def _commit(conn: Any, read_only: bool) -> None:
    """COMMIT, and wait for its answer even if the caller is cancelled meanwhile.

    Once COMMIT is sent the change may be made: a caller's own timeout
    (``giving_up_by``) then waits for the answer (up to ``COMMIT_ANSWER_SECONDS``)
    instead of saying nothing was changed. An answer lost (the connection broke)
    or not come in that time is ``OutcomeUnknown``. Any other cancellation (the
    caller is torn down) closes the connection and goes on.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COMMIT_ANSWER_SECONDS
    committing = asyncio.ensure_future(conn.commit())
    waited = False
    while not committing.done() and loop.time() < deadline:
        try:
            await asyncio.wait([committing], timeout=deadline - loop.time())
        except asyncio.CancelledError:
            if waited or read_only or not timed_out():
                committing.cancel()
                conn.close()
                raise  # torn down (or a read): nobody is told anything
            waited = True  # the caller's own timeout: the answer is still wanted
    if not committing.done():
        committing.cancel()
        conn.close()
        if read_only:
            raise TimeoutError("no answer to COMMIT")
        raise OutcomeUnknown(
            f"no answer to COMMIT within {COMMIT_ANSWER_SECONDS:g} s: "
            "the change may or may not have been made"
        )
    exc = committing.exception()
    if exc is not None:
        await _abandon(conn, exc)
        if read_only or not _answer_lost(exc):
            raise exc
        raise OutcomeUnknown(
            f"the answer to COMMIT was lost ({type(exc).__name__}): "
            "the change may or may not have been made"
        ) from exc


def _is_deadlock(exc: Exception) -> bool:
    """The transaction was chosen as a deadlock victim: rolled back whole, safe to run again."""
    return _error_code(exc) == _ER_LOCK_DEADLOCK


class _Fetched:
    """What a statement left on an ``aiomysql`` cursor (which buffers the rows), for an
    operation to read (``operation.Cursor``)."""

    __slots__ = ("lastrowid", "rowcount", "rows")

    def __init__(self, rows: Sequence[Any], rowcount: int, lastrowid: int | None) -> None:
        self.rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> Sequence[Any]:
        return self.rows


async def drive(cur: Any, steps: Steps[T]) -> T:
    """Run an operation's statements on ``cur``, each sent back what it left; its result."""
    try:
        statement = next(steps)
        while True:
            if statement.many:
                count = await cur.executemany(statement.sql, statement.params)
            else:
                # No parameters: none, so that the SQL is not %-formatted.
                count = await cur.execute(statement.sql, statement.params or None)
            rows = await cur.fetchall() if cur.description else ()
            statement = steps.send(_Fetched(rows, count, cur.lastrowid))
    except StopIteration as done:
        result: T = done.value
        return result


class MySQLStore(SqlStore):
    """Mails, statuses and attempts in a MySQL 8 / MariaDB 10.6+ database.

    ``open()`` creates the database if it does not exist and the user may
    (``CREATE DATABASE IF NOT EXISTS``; otherwise ``StoreSetupNeeded`` says what
    to run), then the tables. The password is kept out of ``repr`` and of errors.
    """

    dialect = MYSQL

    #: Server gone or unreachable (2003, 2006, 2013...), a closed connection, socket errors;
    #: a COMMIT whose answer was lost (the actors wait it out as an outage and try again).
    unavailable = (aiomysql.OperationalError, aiomysql.InterfaceError, OSError, OutcomeUnknown)

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> None:
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ValueError(
                f"need 0 <= pool_min <= pool_max, 1 <= pool_max: {pool_min}, {pool_max}"
            )
        self.host = host
        self.port = port
        self.user = user
        self.__password = password
        self.database = database
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.migrations: tuple[str, ...] = tuple(migrations)
        self._pool: Any = None
        self._opening = asyncio.Lock()
        #: Tasks inside an operation, kept alive: see ``_pinned``.
        self._in_flight: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_url(cls, url: str, *, migrations: Sequence[str] = MIGRATIONS) -> MySQLStore:
        """The store ``mysql://user:password@host:3306/database`` names.

        User and password are percent-decoded; the port defaults to 3306;
        ``?pool_min=1&pool_max=10`` size the pool.
        """
        target = _parse_url(url)
        return cls(
            target.host,
            target.port,
            target.user,
            target.password,
            target.database,
            pool_min=target.pool_min,
            pool_max=target.pool_max,
            migrations=migrations,
        )

    def __repr__(self) -> str:
        password = "'***'" if self.__password else "''"
        return (
            f"{type(self).__name__}(host={self.host!r}, port={self.port}, user={self.user!r}, "
            f"password={password}, database={self.database!r})"
        )

    __str__ = __repr__

    # --- database admin (tests, first-time setup) ------------------------------

    @classmethod
    async def create_database(cls, url: str) -> None:
        """Create the database ``url`` names (utf8mb4, binary collation) unless it exists."""
        target = _parse_url(url)
        await _admin(
            target,
            f"CREATE DATABASE IF NOT EXISTS `{target.database}` "
            "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        )

    @classmethod
    async def drop_database(cls, url: str) -> None:
        """Drop the database ``url`` names, with every table in it, if it exists."""
        target = _parse_url(url)
        await _admin(target, f"DROP DATABASE IF EXISTS `{target.database}`")

    # --- lifecycle ---------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.__password,
            "db": self.database,
            "charset": "utf8mb4",
            "connect_timeout": _CONNECT_TIMEOUT,
        }

    async def open(self) -> None:
        async with self._opening:
            if self._pool is not None:
                return
            with self._pinned():
                await self._open()

    async def _open(self) -> None:
        with _password_hidden(self.__password):
            # Migrating first also proves the server is there and the
            # credentials work, before there is a pool to clean up.
            try:
                await self._migrate()
            except aiomysql.OperationalError as exc:
                if _code(exc) == _DATABASE_DENIED:  # MariaDB: also when it does not exist
                    raise StoreSetupNeeded(
                        f"user {self.user!r} may not use database {self.database!r} on "
                        f"{self.host}:{self.port} (or it does not exist); have an "
                        f"administrator run: {self._setup_statements()}"
                    ) from None
                if _code(exc) != _UNKNOWN_DATABASE:
                    raise
                await self._create_missing_database()
                await self._migrate()
            self._pool = await aiomysql.create_pool(
                minsize=self.pool_min,
                maxsize=self.pool_max,
                pool_recycle=_POOL_RECYCLE_SECONDS,
                autocommit=False,
                init_command=_SESSION_INIT,
                **self._connect_kwargs(),
            )

    async def _create_missing_database(self) -> None:
        """``CREATE DATABASE IF NOT EXISTS`` (utf8mb4, binary collation), as this user;
        ``StoreSetupNeeded`` naming the statements to run when the user may not."""
        target = _Target(self.host, self.port, self.user, self.__password, self.database, 0, 1)
        try:
            await _admin(target, self._create_statement())
        except aiomysql.OperationalError as exc:
            if _code(exc) not in _ACCESS_DENIED:
                raise
            raise StoreSetupNeeded(
                f"database {self.database!r} does not exist on {self.host}:{self.port} and "
                f"user {self.user!r} may not create it; have an administrator run: "
                f"{self._setup_statements()}"
            ) from None
        log.warning(
            "store.database_created", database=self.database, host=f"{self.host}:{self.port}"
        )

    def _create_statement(self) -> str:
        return (
            f"CREATE DATABASE IF NOT EXISTS `{self.database}` "
            "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )

    def _setup_statements(self) -> str:
        """What an administrator runs so that this user has its database."""
        return (
            f"{self._create_statement()}; "
            f"GRANT ALL PRIVILEGES ON `{self.database}`.* TO '{self.user}'@'%';"
        )

    def may_come_up(self, exc: BaseException) -> bool:
        """A server that is down or unreachable may come up; access denied will not."""
        if isinstance(exc, aiomysql.OperationalError) and _code(exc) in _ACCESS_DENIED:
            return False
        return super().may_come_up(exc)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()  # connections still in use are closed when released
            await pool.wait_closed()

    async def schema_version(self) -> int:
        """The latest migration applied to the database (0 for none)."""

        async def body(cur: Any) -> int:
            return await _current_version(cur)

        return await self._run(body, read_only=True)

    async def _migrate(self) -> None:
        """Apply the missing migrations, holding the migration lock for the whole run."""
        conn = await aiomysql.connect(
            autocommit=True, init_command=_ADMIN_INIT, **self._connect_kwargs()
        )
        try:
            cur = await conn.cursor()
            await cur.execute("SELECT GET_LOCK(%s, %s)", (_MIGRATION_LOCK, _MIGRATION_LOCK_SECONDS))
            (locked,) = await cur.fetchone()
            if locked != 1:
                raise RuntimeError(
                    f"database {self.database!r}: another process held the migration lock "
                    f"{_MIGRATION_LOCK!r} for over {_MIGRATION_LOCK_SECONDS} s"
                )
            migrated = False
            try:
                await self._apply_migrations(cur)
                migrated = True
            finally:
                # A lost connection has released the lock with its session. On
                # the failure path a failed release must not hide the error that
                # matters (and closing the connection below releases it anyway).
                if not conn.closed:
                    with contextlib.suppress(*(() if migrated else (Exception,))):
                        await cur.execute("DO RELEASE_LOCK(%s)", (_MIGRATION_LOCK,))
        except BaseException:
            conn.close()
            raise
        await conn.ensure_closed()

    async def _apply_migrations(self, cur: Any) -> None:
        await cur.execute(_SCHEMA_VERSION_TABLE)
        # Re-read under the lock: another process may have migrated meanwhile.
        version = await _current_version(cur)
        if version > len(self.migrations):
            raise RuntimeError(
                f"database {self.database!r} is at schema version {version}, "
                f"newer than this code knows ({len(self.migrations)})"
            )
        for index in range(version, len(self.migrations)):
            for statement in split_statements(self.migrations[index]):
                try:
                    await cur.execute(statement)
                except aiomysql.OperationalError as exc:
                    if _error_code(exc) not in ALREADY_DONE:
                        raise
            await cur.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                (index + 1, time.time()),
            )

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[None]:
        """Hold a strong reference to the calling task while it talks to the server.

        The event loop references tasks weakly, and asyncio's stream protocol
        references its reader weakly: a task waiting for a reply whose caller
        dropped it (a cancelled ``gather`` leaves its other children running,
        unreferenced) is garbage, and the GC would close its coroutine in the
        middle of the protocol, leaking the connection and the pool's count.
        """
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._in_flight.add(task)
        try:
            yield
        finally:
            self._in_flight.discard(task)

    async def _run(self, body: Callable[[Any], Awaitable[T]], *, read_only: bool = False) -> T:
        """Run ``body`` in one transaction on a pooled connection; commit; its result.

        A deadlock victim is run again. On any other error the transaction is
        rolled back (or, if the connection is no longer usable, closed, which
        rolls it back on the server) and the error propagates.
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError("the store is not open")
        with self._pinned():
            return await self._run_pinned(pool, body, read_only)

    async def _run_pinned(
        self, pool: Any, body: Callable[[Any], Awaitable[T]], read_only: bool
    ) -> T:
        async def once() -> T:
            async with pool.acquire() as conn:
                try:
                    cur = await conn.cursor()
                    await cur.execute(
                        "START TRANSACTION READ ONLY" if read_only else "START TRANSACTION"
                    )
                    result = await body(cur)
                except BaseException as exc:  # before COMMIT: rolled back, nothing changed
                    await _abandon(conn, exc)
                    raise
                await _commit(conn, read_only)
                return result

        return await retrying(
            once, on=_is_deadlock, backoff=DEADLOCK_BACKOFF, event="store.deadlock"
        )

    # --- running operations ------------------------------------------------

    async def run(self, operation: Operation[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """In its own transaction (read-only for a read) on a pooled connection."""

        async def body(cur: Any) -> T:
            return await drive(cur, operation.steps(MYSQL, *args, **kwargs))

        return await self._run(body, read_only=not operation.writes)

    async def run_batched(self, operation: Batched[A, T], arg: A, /) -> T:
        """As a batch of one, in its own transaction (rolled back if the call failed)."""

        async def body(cur: Any) -> T:
            (outcome,) = await drive(cur, operation.steps(MYSQL, [arg]))
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        return await self._run(body, read_only=not operation.writes)


# --- statements run inside a transaction -------------------------------------


async def _current_version(cur: Any) -> int:
    await cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    (version,) = await cur.fetchone()
    return int(version)


async def _abandon(conn: Any, exc: BaseException) -> None:
    """End a failed transaction: ROLLBACK if the connection is still in step, else close it.

    A server error (and a Python error between statements) leaves the
    connection in step: it is rolled back and goes back to the pool. After a
    cancellation or a client-side error (lost connection, codes 2000-2999) it
    may be mid-reply: it is closed, the server rolls back, the pool drops it.
    ``exc`` is what the caller sees in every case.
    """
    if conn.closed:
        return
    code = _error_code(exc)
    if (
        not isinstance(exc, Exception)
        or isinstance(exc, aiomysql.InterfaceError)
        or (code is not None and 2000 <= code < 3000)
    ):
        conn.close()
        return
    try:
        await conn.rollback()
    except Exception:  # the original error is the one to report
        conn.close()
    except BaseException:
        conn.close()
        raise


# --- URLs and admin connections -------------------------------------------------


class _Target:
    """Where a URL points. Holds the password: never printed."""

    __slots__ = ("database", "host", "password", "pool_max", "pool_min", "port", "user")

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        pool_min: int,
        pool_max: int,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.pool_min = pool_min
        self.pool_max = pool_max

    def __repr__(self) -> str:
        return f"<MySQL target {self.user}@{self.host}:{self.port}/{self.database}>"


def _parse_url(url: str) -> _Target:
    """Parse ``mysql://user:password@host:port/database``; errors never quote the URL.

    The shape is checked by ``config.check_store_url`` (the rules the entry
    point applies at start), which raises a ``ValueError``.
    """
    if urlsplit(url).scheme != "mysql":
        raise ValueError(f"not a mysql store URL (expected {_URL_EXAMPLE})")
    check_store_url(url)
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    return _Target(
        host=parts.hostname or "localhost",
        port=parts.port or _DEFAULT_PORT,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")),
        pool_min=int(options.get("pool_min", 1)),
        pool_max=int(options.get("pool_max", 10)),
    )


async def _admin(target: _Target, statement: str) -> None:
    """Run one statement outside any database (create/drop one)."""
    with _password_hidden(target.password):
        conn = await aiomysql.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=_CONNECT_TIMEOUT,
            init_command=_ADMIN_INIT,
        )
    try:
        cur = await conn.cursor()
        await cur.execute(statement)
    except BaseException:
        conn.close()
        raise
    await conn.ensure_closed()


def _code(exc: BaseException) -> int | None:
    """The server's error number of a driver error (``exc.args[0]``), if it has one."""
    code = exc.args[0] if exc.args else None
    return code if isinstance(code, int) else None


@contextlib.contextmanager
def _password_hidden(password: str) -> Iterator[None]:
    """Re-raise an exception from the block with ``password`` masked, if it shows it."""
    try:
        yield
    except Exception as exc:
        scrubbed = _scrub(exc, password)
        if scrubbed is None:
            raise
        raise scrubbed from None


def _scrub(exc: BaseException, password: str) -> BaseException | None:
    """A copy of ``exc`` with ``password`` masked; None if it does not show it.

    The driver's messages do not quote the password; this makes sure of it.
    """
    if not password:
        return None
    texts = [str(exc), repr(exc), *(str(a) for a in exc.args)]
    if not any(password in text for text in texts):
        return None
    args = tuple(a.replace(password, "***") if isinstance(a, str) else a for a in exc.args)
    with contextlib.suppress(Exception):
        copy = type(exc)(*args)
        if password not in f"{copy!s}{copy!r}":
            return copy
    return ConnectionError("could not connect to the MySQL server (details withheld)")


__all__ = ["MIGRATIONS", "MySQLStore", "split_statements"]

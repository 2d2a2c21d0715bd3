"""The MySQL/MariaDB store: what ``SQLiteStore`` does, shared by several processes.

``aiomysql`` pool, one connection per operation, one InnoDB transaction per
operation (``autocommit=False``; REPEATABLE READ, the server default). The
semantics are the SQLite store's, made safe for many writers:

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
  server) is run again, a few times; every other error propagates, a lost
  connection included.

Statements that make the server raise a warning are avoided on purpose:
``aiomysql`` turns every server warning into a Python ``warnings.warn``. So a
repeated insert is ``ON DUPLICATE KEY UPDATE id = id``, not ``INSERT IGNORE``
(which warns "Duplicate entry").

Ids are compared with ``utf8mb4_bin`` (case-sensitive), which pads trailing
spaces: an id longer than 64 characters, or ending in a space, is one the
store cannot hold. Lookups answer None for it; ``add`` refuses it.

The schema is versioned like SQLite's (``MIGRATIONS``: the scripts of
``migrations/mysql/``; ``schema_version``).
MySQL DDL commits implicitly and cannot be rolled back, so each migration is
idempotent (``CREATE TABLE IF NOT EXISTS``, indexes declared inside the
table) and its version is recorded after its statements ran: a run that died
half-way is simply run again. Several processes may start at once: the whole
run holds ``GET_LOCK('mailman.migrate')`` and re-reads the version under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import aiomysql

from mailman.config import check_store_url
from mailman.core.messages import StatusUpdate, decode, encode
from mailman.core.model import ALLOWED_FROM, Attempt, DeliveryEvent, Mail, Status

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
    MailTooLarge,
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
from .sql import MYSQL as Q

T = TypeVar("T")

_TABLE_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

#: Migration N (1-based) brings the schema from version N-1 to N.
MIGRATIONS: tuple[str, ...] = migrations.scripts("mysql")

_SCHEMA_VERSION_TABLE = f"""
    CREATE TABLE IF NOT EXISTS schema_version (
        version    INT NOT NULL PRIMARY KEY,
        applied_at DOUBLE NOT NULL
    ) {_TABLE_OPTIONS}
"""

_MIGRATION_LOCK = "mailman.migrate"
_MIGRATION_LOCK_SECONDS = 60

_ID_MAX = 64
_DEFAULT_PORT = 3306
_CONNECT_TIMEOUT = 10
_POOL_RECYCLE_SECONDS = 3600

_ER_LOCK_DEADLOCK = 1213
#: Duplicate column / duplicate key name: a migration statement that already ran.
ALREADY_DONE = frozenset({1060, 1061})
_DEADLOCK_RETRIES = 5
#: Characters of text and files under which a mail is not measured against
#: ``max_allowed_packet`` (``MySQLStore._check_packet``): even as 4-byte UTF-8,
#: escaped, with 1000 recipients, it stays below 4 MiB.
_SMALL_MAIL = 256 * 1024
#: Bytes of an INSERT of a mail besides its payload (the other columns, the SQL), with room.
_STATEMENT_ROOM = 64 * 1024

# Strict: a value too long for its column is an error, never silently cut.
_SESSION_INIT = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"
# Migrations and database admin: "already exists" notes would become Python warnings.
_ADMIN_INIT = f"{_SESSION_INIT}, SESSION sql_notes = 0"

_URL_EXAMPLE = "mysql://user:password@host:3306/database"


def split_statements(script: str) -> list[str]:
    """The statements of a migration script (separated by ``;``, none inside a literal)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def _storable_id(mail_id: str) -> bool:
    """Whether ``mail_id`` is an id a ``VARCHAR(64) utf8mb4_bin`` key can hold exactly."""
    if not mail_id or len(mail_id) > _ID_MAX or mail_id.endswith(" "):
        return False
    try:
        mail_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _error_code(exc: BaseException) -> int | None:
    if isinstance(exc, aiomysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


class MySQLStore(Store):
    """Mails, statuses and attempts in a MySQL 8 / MariaDB 10.6+ database.

    The database must exist (``create_database`` makes one); the tables are
    made by ``open()``. The password is kept out of ``repr`` and of errors.
    """

    #: Server gone or unreachable (2003, 2006, 2013...), a closed connection, socket errors.
    unavailable = (aiomysql.OperationalError, aiomysql.InterfaceError, OSError)

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
            await self._migrate()
            self._pool = await aiomysql.create_pool(
                minsize=self.pool_min,
                maxsize=self.pool_max,
                pool_recycle=_POOL_RECYCLE_SECONDS,
                autocommit=False,
                init_command=_SESSION_INIT,
                **self._connect_kwargs(),
            )

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
        for attempt in range(1, _DEADLOCK_RETRIES + 1):
            async with pool.acquire() as conn:
                try:
                    cur = await conn.cursor()
                    await cur.execute(
                        "START TRANSACTION READ ONLY" if read_only else "START TRANSACTION"
                    )
                    result = await body(cur)
                    await conn.commit()
                    return result
                except BaseException as exc:
                    await _abandon(conn, exc)
                    if _error_code(exc) != _ER_LOCK_DEADLOCK or attempt == _DEADLOCK_RETRIES:
                        raise
            await asyncio.sleep(0.005 * attempt)
        raise AssertionError("unreachable")

    # --- Store -------------------------------------------------------------

    async def add(self, mail: Mail, idempotency: Idempotency | None = None) -> str:
        if not _storable_id(mail.id):
            raise ValueError(
                f"mail id {mail.id[:80]!r} cannot be stored: at most {_ID_MAX} characters, "
                "no trailing space"
            )
        await self._check_packet(mail)

        async def body(cur: Any) -> str:
            if idempotency is not None:
                standing = await _claim_idempotency(cur, mail, idempotency)
                if standing is not None:
                    return standing
            # 1 row affected: inserted; 0: the id was there (the no-op update).
            inserted = await cur.execute(
                f"{Q.insert_mails(1)} ON DUPLICATE KEY UPDATE id = id", sql.mail_values(mail)
            )
            if inserted == 1 and mail.send_at is None:  # a scheduled mail waits for its time
                await cur.execute(Q.insert_outbox(1), (mail.id, mail.created_at))
            return mail.id

        return await self._run(body)

    #: The server's ``max_allowed_packet``, read once, when a large mail first comes.
    _max_packet: int | None = None

    async def _check_packet(self, mail: Mail) -> None:
        """``MailTooLarge`` if ``mail``'s INSERT would pass the server's ``max_allowed_packet``.

        The server refuses such a statement (1153) and drops the connection, which
        would look like an outage (a 503, tried again forever). Each mail is its
        own INSERT, so only one mail's size counts. Mails whose text and files are
        short (``_SMALL_MAIL``) are not measured: the smallest default limit (4 MiB,
        MySQL 5.7; MariaDB's is 16 MiB, MySQL 8's 64 MiB) holds them.
        """
        rough = len(mail.text or "") + len(mail.html or "")
        rough += sum(len(a.content) for a in mail.attachments)
        if rough < _SMALL_MAIL:
            return
        if self._max_packet is None:

            async def read(cur: Any) -> int:
                await cur.execute("SELECT @@max_allowed_packet")
                row = await cur.fetchone()
                return int(row[0])

            self._max_packet = await self._run(read, read_only=True)
        payload = encode(mail)
        # The payload goes as an escaped string literal: each quote and backslash takes
        # two bytes (orjson already wrote control characters as JSON escapes).
        size = len(payload) + payload.count(b'"') + payload.count(b"\\") + payload.count(b"'")
        size += _STATEMENT_ROOM
        if size > self._max_packet:
            raise MailTooLarge(size, self._max_packet)

    async def list_mails(self, query: MailQuery) -> list[MailSummary]:
        where, params = list_filter(query, "%s")

        async def body(cur: Any) -> list[MailSummary]:
            await cur.execute(Q.list_mails(where), (*params, query.limit))
            return [sql.summary_from_row(r) for r in await cur.fetchall()]

        return await self._run(body, read_only=True)

    # --- API keys ---------------------------------------------------------------

    async def create_key(self, key: ApiKey, secret_hash: str) -> None:
        async def body(cur: Any) -> None:
            await cur.execute(
                Q.insert_key,
                (key.id, secret_hash, key.tenant, ",".join(key.scopes), key.rate, key.created_at),
            )

        await self._run(body)

    async def keys(self) -> list[ApiKey]:
        async def body(cur: Any) -> list[ApiKey]:
            await cur.execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id")
            return [api_key_from_row(tuple(row)) for row in await cur.fetchall()]

        return await self._run(body, read_only=True)

    async def key_by_hash(self, secret_hash: str) -> ApiKey | None:
        async def body(cur: Any) -> ApiKey | None:
            await cur.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = %s", (secret_hash,)
            )
            row = await cur.fetchone()
            return None if row is None else api_key_from_row(tuple(row))

        return await self._run(body, read_only=True)

    async def revoke_key(self, key_id: str, at: float) -> bool:
        async def body(cur: Any) -> bool:
            await cur.execute("SELECT id FROM api_keys WHERE id = %s FOR UPDATE", (key_id,))
            if await cur.fetchone() is None:
                return False
            await cur.execute(Q.revoke_key, (at, key_id))
            return True

        return await self._run(body)

    async def any_keys(self) -> bool:
        async def body(cur: Any) -> bool:
            await cur.execute(Q.any_keys)
            (found,) = await cur.fetchone()
            return bool(found)

        return await self._run(body, read_only=True)

    async def touch_keys(self, used: dict[str, float]) -> None:
        if not used:
            return

        async def body(cur: Any) -> None:
            for key_id, at in sorted(used.items()):
                await cur.execute(Q.touch_key, (at, key_id, at))

        await self._run(body)

    # --- rate limits and idempotency -------------------------------------------

    async def take_token(self, bucket: str, rate: float, now: float) -> RateDecision:
        async def body(cur: Any) -> RateDecision:
            # Make sure the row exists, then lock it: every replica's request
            # for this bucket queues on the lock, so the count is exact.
            await cur.execute(
                """
                INSERT INTO rate_buckets (id, tokens, updated_at) VALUES (%s, %s, %s)
                ON DUPLICATE KEY UPDATE id = id
                """,
                (bucket, max(rate, 1.0), now),
            )
            await cur.execute(
                "SELECT tokens, updated_at FROM rate_buckets WHERE id = %s FOR UPDATE", (bucket,)
            )
            tokens, updated_at = await cur.fetchone()
            left, decision = bucket_step(tokens, updated_at, rate, now)
            await cur.execute(
                "UPDATE rate_buckets SET tokens = %s, updated_at = GREATEST(updated_at, %s) "
                "WHERE id = %s",
                (left, now, bucket),
            )
            return decision

        return await self._run(body)

    async def purge_idempotency(self, now: float) -> int:
        async def body(cur: Any) -> int:
            purged: int = await cur.execute(Q.purge_idempotency, (now,))
            return purged

        return await self._run(body)

    async def retry(self, mail_id: str, at: float) -> Transition | None:
        if not _storable_id(mail_id):
            return None

        async def body(cur: Any) -> Transition | None:
            current = (await _lock_mails(cur, [mail_id])).get(mail_id)
            if current is None:
                return None
            if current is not Status.FAILED:
                return Transition(changed=False, status=current)
            await cur.execute(Q.replay, (at, mail_id))
            await cur.execute(Q.next_round, (mail_id,))
            (round_,) = await cur.fetchone()
            await cur.execute(Q.insert_round, (mail_id, at, int(round_)))
            await _queue_callbacks(cur, [mail_id])
            return Transition(changed=True, status=Status.QUEUED)

        return await self._run(body)

    async def backlog(self) -> int:
        async def body(cur: Any) -> int:
            await cur.execute(Q.backlog, sql.UNFINISHED)
            (count,) = await cur.fetchone()
            return int(count)

        return await self._run(body, read_only=True)

    async def get(self, mail_id: str) -> MailRecord | None:
        if not _storable_id(mail_id):
            return None

        async def body(cur: Any) -> MailRecord | None:
            await cur.execute(Q.record, (mail_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            await cur.execute(Q.attempts, (mail_id,))
            attempts = await cur.fetchall()
            await cur.execute(Q.events, (mail_id,))
            return sql.record_from_rows(row, attempts, await cur.fetchall())

        return await self._run(body, read_only=True)

    async def load(self, mail_id: str) -> tuple[Mail, Status] | None:
        if not _storable_id(mail_id):
            return None

        async def body(cur: Any) -> tuple[Any, Any] | None:
            await cur.execute("SELECT payload, status FROM mails WHERE id = %s", (mail_id,))
            row: tuple[Any, Any] | None = await cur.fetchone()
            return row

        row = await self._run(body, read_only=True)
        if row is None:
            return None
        return decode(Mail, row[0]), Status(row[1])

    async def apply(self, updates: Sequence[StatusUpdate]) -> None:
        updates = [u for u in updates if _storable_id(u.mail_id)]
        if not updates:
            return
        ids = sorted({u.mail_id for u in updates})

        async def body(cur: Any) -> None:
            # Lock every mail of the batch up front, in id order: concurrent
            # batches then queue behind each other instead of deadlocking.
            known = await _lock_mails(cur, ids)
            for update in updates:
                if update.mail_id not in known:
                    continue
                attempt = update.attempt
                if attempt is not None and attempt.id is None:
                    await _record_attempt(cur, update.mail_id, attempt)
                elif attempt is not None:
                    await cur.execute(Q.finish_attempt, sql.finish_values(update.mail_id, attempt))
                if update.status in sql.MOVE_ORDER:
                    await cur.execute(Q.move(update.status), sql.move_values(update))
            await _queue_callbacks(
                cur,
                [u.mail_id for u in updates if u.mail_id in known and u.status in sql.MOVE_ORDER],
            )

        await self._run(body)

    async def transition(
        self, mail_id: str, status: Status, at: float, reason: str | None = None
    ) -> Transition | None:
        if not _storable_id(mail_id):
            return None

        async def body(cur: Any) -> Transition | None:
            current = (await _lock_mails(cur, [mail_id])).get(mail_id)
            if current is None:
                return None
            # The row is locked: the status read is the one the UPDATE sees.
            if current in ALLOWED_FROM[status]:
                await _move(cur, mail_id, status, at, reason=reason)
                await _queue_callbacks(cur, [mail_id])
                return Transition(changed=True, status=status)
            return Transition(changed=False, status=current)

        return await self._run(body)

    async def begin_attempt(
        self, mail_id: str, provider: str, round_: int, at: float, stale_before: float
    ) -> Begun | None:
        if not _storable_id(mail_id):
            return None

        async def body(cur: Any) -> Begun | None:
            # The mail's row locked: two begins for one mail take turns.
            await cur.execute(
                "SELECT payload, status FROM mails WHERE id = %s FOR UPDATE", (mail_id,)
            )
            row = await cur.fetchone()
            if row is None:
                return None
            mail, status = decode(Mail, row[0]), Status(row[1])
            if status.terminal:
                return Begun(mail, status, why="final")
            if status is Status.SCHEDULED:  # not before its time (the sweeper releases it)
                return Begun(mail, status, why="scheduled")
            await cur.execute(Q.open_attempts, (mail_id,))
            attempts = [sql.attempt_from_row(r) for r in await cur.fetchall()]
            if attempts:
                refused, stale = sql.begin_verdict(mail, status, attempts, stale_before)
                if stale:
                    await cur.execute(Q.stale_attempts_of(len(stale)), (sql.STALE_REASON, *stale))
                if refused is not None:
                    return refused
            await cur.execute(Q.insert_pending, (mail_id, provider, round_, at))
            attempt_id = int(cur.lastrowid)
            await cur.execute(Q.begin_sending, (at, at, mail_id, *sql.UNFINISHED))
            if mail.callback_url is not None:
                await _queue_callbacks(cur, [mail_id])
            return Begun(mail, Status.SENDING, attempt_id=attempt_id)

        return await self._run(body)

    async def sweep(self, now: float, stale_before: float, limit: int = 500) -> list[str]:
        async def body(cur: Any) -> list[str]:
            await cur.execute(Q.stale_attempts, (sql.STALE_REASON, stale_before))
            await cur.execute(Q.forgotten, (stale_before, limit))
            rows = list(await cur.fetchall())
            if not rows:
                return []
            ids = sorted(r[0] for r in rows)
            await _lock_mails(cur, ids)
            for chunk in sql.chunks(rows):
                await cur.execute(Q.insert_rounds(len(chunk)), [v for r in chunk for v in r])
            for chunk in sql.chunks(ids):
                await cur.execute(Q.due_now(len(chunk)), (now, *chunk))
            return [r[0] for r in rows]

        return await self._run(body)

    async def release_scheduled(self, now: float, limit: int = 500) -> list[str]:
        async def body(cur: Any) -> list[str]:
            await cur.execute(Q.due_scheduled, (now, limit))
            rows = list(await cur.fetchall())
            for chunk in sql.chunks(rows):
                await cur.execute(Q.release_scheduled(len(chunk)), (now, *(r[0] for r in chunk)))
                await cur.execute(Q.insert_outbox(len(chunk)), [v for r in chunk for v in r])
            ids = [r[0] for r in rows]
            if ids:
                await _queue_callbacks(cur, ids)
            return ids

        return await self._run(body)

    async def record_events(self, events: Sequence[DeliveryEvent]) -> list[EventResult]:
        if not events:
            return []
        ids = sorted({e.mail_id for e in events if _storable_id(e.mail_id)})

        async def body(cur: Any) -> list[EventResult]:
            known = await _lock_mails(cur, ids) if ids else {}
            results: list[EventResult] = []
            for event in events:
                if event.mail_id not in known:
                    results.append(EventResult.UNKNOWN_MAIL)
                    continue
                kept = await cur.execute(
                    f"INSERT INTO events ({sql.EVENT_COLUMNS}) VALUES ({Q.marks(8)}) "
                    "ON DUPLICATE KEY UPDATE id = id",
                    sql.event_values(event),
                )
                if kept != 1:
                    results.append(EventResult.DUPLICATE)
                    continue
                results.append(EventResult.RECORDED)
                status = event.moves_to
                if status is not None:
                    await cur.execute(Q.move(status), sql.event_move_values(event, status))
            await _queue_callbacks(
                cur, [e.mail_id for e in events if e.mail_id in known and e.moves_to is not None]
            )
            return results

        return await self._run(body)

    async def mail_for_message(self, provider_message_id: str) -> str | None:
        async def body(cur: Any) -> str | None:
            await cur.execute(Q.mail_for_message, (provider_message_id, provider_message_id))
            row = await cur.fetchone()
            return None if row is None else str(row[0])

        return await self._run(body, read_only=True)

    async def add_dead_letter(
        self, mailbox: str, mail_id: str | None, payload: bytes, error: str, at: float
    ) -> int:
        known = mail_id if mail_id is not None and _storable_id(mail_id) else None

        async def body(cur: Any) -> int:
            await cur.execute(Q.insert_dead_letter, (mailbox, known, sql.b64(payload), error, at))
            letter = int(cur.lastrowid)
            if known is not None and await _lock_mails(cur, [known]):
                reason = sql.dead_letter_reason(letter, error)
                await cur.execute(
                    Q.move(Status.FAILED),
                    (Status.FAILED.value, at, None, None, reason, at, known),
                )
                await _queue_callbacks(cur, [known])
            return letter

        return await self._run(body)

    async def dead_letters(self, *, replayed: bool = False, limit: int = 1000) -> list[DeadLetter]:
        async def body(cur: Any) -> list[DeadLetter]:
            await cur.execute(Q.dead_letters, (replayed, limit))
            return [sql.dead_letter_from_row(r) for r in await cur.fetchall()]

        return await self._run(body, read_only=True)

    async def mark_replayed(self, ids: Sequence[int], at: float) -> None:
        if not ids:
            return

        async def body(cur: Any) -> None:
            for chunk in sql.chunks(ids):
                await cur.execute(Q.mark_replayed(len(chunk)), (at, *chunk))

        await self._run(body)

    async def unfinished(self) -> list[Pending]:
        async def body(cur: Any) -> list[Pending]:
            await cur.execute(Q.unfinished, sql.UNFINISHED)
            return [sql.pending_from_row(r) for r in await cur.fetchall()]

        return await self._run(body, read_only=True)

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

        async def body(cur: Any) -> list[OutboxEntry]:
            for chunk in sql.chunks(done):
                await cur.execute(Q.delete_outbox(len(chunk)), tuple(chunk))
            if limit <= 0:
                return []
            # FOR UPDATE reads the latest committed leases and locks the rows
            # it returns until COMMIT; SKIP LOCKED passes over rows another
            # claimer holds. After that claimer commits, those rows carry its
            # lease and no longer match. So no entry is handed out twice while
            # a lease holds, whatever the number of processes.
            await cur.execute(Q.claimable, (now, limit))
            entries = [sql.entry_from_row(r) for r in await cur.fetchall()]
            if not entries:
                return []
            ids = [e.id for e in entries]
            await cur.execute(Q.lease(len(ids)), (owner, now + lease_seconds, *ids))
            # Mail rows in id order, like every other locking statement here.
            mail_ids = sorted(e.mail_id for e in entries)
            await _lock_mails(cur, mail_ids)
            await cur.execute(Q.mark_sending(len(mail_ids)), (now, now, *mail_ids))
            await _queue_callbacks(cur, mail_ids)
            return entries

        return await self._run(body)

    async def published(self, ids: Sequence[int]) -> None:
        if not ids:
            return

        async def body(cur: Any) -> None:
            for chunk in sql.chunks(ids):
                await cur.execute(Q.delete_outbox(len(chunk)), tuple(chunk))

        await self._run(body)

    async def requeue_unfinished(self) -> int:
        async def body(cur: Any) -> int:
            # The process whose calls these were is gone: their answers are unknown.
            await cur.execute(Q.stale_attempts, (sql.STALE_REASON, sql.FOREVER))
            made: int = await cur.execute(Q.requeue, sql.UNFINISHED)
            await cur.execute(Q.release_leases)
            return made

        return await self._run(body)

    # --- status callbacks -------------------------------------------------------

    async def claim_callbacks(
        self, owner: str, limit: int, lease_seconds: float, now: float
    ) -> list[CallbackDue]:
        if limit <= 0:
            return []

        async def body(cur: Any) -> list[CallbackDue]:
            # FOR UPDATE SKIP LOCKED, as the outbox's claim: a callback another
            # notifier is claiming is passed over, and once it commits, its lease
            # keeps the callback out of the WHERE.
            await cur.execute(Q.claimable_callbacks, (now, now, limit))
            claimed = [sql.callback_from_row(r) for r in await cur.fetchall()]
            if claimed:
                ids = [c.id for c in claimed]
                await cur.execute(Q.lease_callbacks(len(ids)), (owner, now + lease_seconds, *ids))
            return claimed

        return await self._run(body)

    async def callback_done(self, callback_id: int, at: float) -> None:
        await self._callback_update(Q.callback_done, (at, callback_id))

    async def callback_failed(self, callback_id: int, error: str, next_at: float) -> None:
        await self._callback_update(Q.callback_failed, (error, next_at, callback_id))

    async def callback_gave_up(self, callback_id: int, error: str, at: float) -> None:
        await self._callback_update(Q.callback_gave_up, (at, error, callback_id))

    async def _callback_update(self, statement: str, params: tuple[object, ...]) -> None:
        async def body(cur: Any) -> None:
            await cur.execute(statement, params)

        await self._run(body)

    # --- shared circuit-breaker state ------------------------------------------

    async def save_breaker(self, state: BreakerState) -> None:
        async def body(cur: Any) -> None:
            # Make sure the row exists (and lock it), then overwrite it only
            # with something newer: ties and older states leave it as it is.
            await cur.execute(
                """
                INSERT INTO breakers (provider, state, opened_at, updated_at)
                VALUES (%s, %s, %s, %s)
                ON DUPLICATE KEY UPDATE provider = provider
                """,
                (state.provider, state.state, state.opened_at, state.updated_at),
            )
            await cur.execute(
                """
                UPDATE breakers SET state = %s, opened_at = %s, updated_at = %s
                WHERE provider = %s AND updated_at < %s
                """,
                (state.state, state.opened_at, state.updated_at, state.provider, state.updated_at),
            )

        await self._run(body)

    async def breakers(self) -> list[BreakerState]:
        async def body(cur: Any) -> list[BreakerState]:
            await cur.execute(Q.breakers)
            return [sql.breaker_from_row(r) for r in await cur.fetchall()]

        return await self._run(body, read_only=True)

    # --- observability (routes.metrics) ----------------------------------------

    async def metrics_snapshot(self) -> MetricsSnapshot:
        """One read-only transaction: REPEATABLE READ makes its queries one snapshot."""

        async def body(cur: Any) -> MetricsSnapshot:
            rows: list[Any] = []
            for statement in (
                sql.METRICS_MAILS,
                sql.METRICS_ATTEMPTS,
                sql.METRICS_OUTBOX,
                sql.METRICS_DEAD_LETTERS,
                Q.breakers,
            ):
                await cur.execute(statement)
                rows.append(await cur.fetchall())
            mails, attempts, outbox, dead_letters, breakers = rows
            return sql.metrics_from_rows(
                mails, attempts, outbox[0][0], dead_letters[0][0], breakers
            )

        return await self._run(body, read_only=True)

    # --- the dashboard (routes.dashboard) ----------------------------------------

    async def attempts_per_minute(self, since: float, outcomes: Sequence[str]) -> list[MinuteCount]:
        if not outcomes:
            return []
        statement = sql.attempts_per_minute(Q, sql.MINUTE_MYSQL, len(outcomes))

        async def body(cur: Any) -> list[MinuteCount]:
            await cur.execute(statement, (*outcomes, since))
            return [sql.minute_count_from_row(r) for r in await cur.fetchall()]

        return await self._run(body, read_only=True)

    async def latest_failures(self, limit: int, outcomes: Sequence[str]) -> Failures:
        """One read-only transaction: REPEATABLE READ makes its queries one snapshot."""
        limit = max(limit, 0)

        async def body(cur: Any) -> Failures:
            await cur.execute(sql.latest_failed_mails(Q), (limit,))
            mails = await cur.fetchall()
            attempts: list[Any] = []
            for outcome in outcomes:
                await cur.execute(sql.latest_attempts(Q), (outcome, limit))
                attempts.extend(await cur.fetchall())
            return sql.failures_from_rows(mails, attempts, limit)

        return await self._run(body, read_only=True)


# --- statements run inside a transaction -------------------------------------


async def _current_version(cur: Any) -> int:
    await cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    (version,) = await cur.fetchone()
    return int(version)


async def _claim_idempotency(cur: Any, mail: Mail, idem: Idempotency) -> str | None:
    """Record ``idem`` for ``mail`` unless the tenant's key stands for another mail already.

    None: recorded, store the mail. Otherwise the id of the mail the key
    stands for (``IdempotencyMismatch`` if the bodies differ). The INSERT
    waits on another replica's uncommitted insert of the same key, so two
    replicas never both store a mail for one key.
    """
    fresh = (mail.tenant, idem.key_hash, idem.fingerprint, mail.id, idem.expires_at)
    inserted = await cur.execute(
        """
        INSERT INTO idempotency (tenant, key_hash, fingerprint, mail_id, expires_at)
        VALUES (%s, %s, %s, %s, %s)
        ON DUPLICATE KEY UPDATE tenant = tenant
        """,
        fresh,
    )
    if inserted == 1:
        return None
    # A locking read: the latest committed row, whatever this transaction's snapshot.
    await cur.execute(
        "SELECT mail_id, fingerprint, expires_at FROM idempotency "
        "WHERE tenant = %s AND key_hash = %s FOR UPDATE",
        (mail.tenant, idem.key_hash),
    )
    mail_id, fingerprint, expires_at = await cur.fetchone()
    if expires_at < mail.created_at:  # expired: the key is free again
        await cur.execute(
            "UPDATE idempotency SET fingerprint = %s, mail_id = %s, expires_at = %s "
            "WHERE tenant = %s AND key_hash = %s",
            (idem.fingerprint, mail.id, idem.expires_at, mail.tenant, idem.key_hash),
        )
        return None
    if fingerprint != idem.fingerprint:
        raise IdempotencyMismatch(mail_id)
    return str(mail_id)


async def _lock_mails(cur: Any, ids: Sequence[str]) -> dict[str, Status]:
    """Lock the rows of ``ids`` (sorted) that exist; their current statuses."""
    await cur.execute(
        f"SELECT id, status FROM mails WHERE id IN ({Q.marks(len(ids))}) ORDER BY id FOR UPDATE",
        tuple(ids),
    )
    return {mail_id: Status(status) for mail_id, status in await cur.fetchall()}


async def _record_attempt(cur: Any, mail_id: str, attempt: Attempt) -> None:
    """Insert ``attempt`` once (the mail is known and locked)."""
    await cur.execute(
        """
        INSERT INTO attempts (mail_id, provider, round, at, outcome, reason, message_id)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON DUPLICATE KEY UPDATE id = id
        """,
        sql.attempt_values(mail_id, attempt),
    )


async def _move(
    cur: Any,
    mail_id: str,
    status: Status,
    at: float,
    *,
    provider: str | None = None,
    provider_message_id: str | None = None,
    reason: str | None = None,
) -> None:
    """Move a mail to ``status`` if ``ALLOWED_FROM`` lets it (the guard is in the UPDATE)."""
    if status not in sql.MOVE_ORDER:  # nothing moves to queued
        return
    await cur.execute(
        Q.move(status), (status.value, at, provider, provider_message_id, reason, at, mail_id)
    )


async def _queue_callbacks(cur: Any, mail_ids: Sequence[str]) -> None:
    """Queue a callback for each of these mails whose status moved since its last one
    (see ``sql.Sql.callback_changes``); the caller's transaction moved and locked them."""
    wanted = sorted(set(mail_ids))
    changed: list[str] = []
    for chunk in sql.chunks(wanted):
        await cur.execute(Q.callback_changes(len(chunk)), tuple(chunk))
        changed.extend(row[0] for row in await cur.fetchall())
    if not changed:
        return
    now = time.time()
    for chunk in sql.chunks(changed):
        await cur.execute(Q.queue_callbacks(len(chunk)), (now, now, *chunk))
        await cur.execute(Q.callbacks_queued(len(chunk)), tuple(chunk))


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

"""The SQLite store: one file, one connection, every accepted mail fsynced.

One ``aiosqlite`` connection is shared by every coroutine. On a shared
connection any statement joins whatever transaction is open, so every
operation holds ``self._lock`` for its whole transaction: coroutines never
interleave inside one. Transactions are explicit (``isolation_level=None``,
``BEGIN IMMEDIATE`` ... ``COMMIT``), and ``synchronous=FULL`` makes a commit
survive a kill -9 or a power loss.

The schema is versioned: ``MIGRATIONS`` is an ordered tuple of SQL scripts,
script N bringing the schema from version N-1 to N. ``open()`` applies the
missing ones, each in its own transaction that also records its version in
``schema_version``. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress

import aiosqlite

from .messages import ALLOWED_FROM, Attempt, Mail, Outcome, Status, StatusUpdate, decode, encode
from .store import (
    KEY_COLUMNS,
    ApiKey,
    BreakerState,
    Idempotency,
    IdempotencyMismatch,
    MailQuery,
    MailRecord,
    MailSummary,
    OutboxEntry,
    Pending,
    RateDecision,
    Store,
    Transition,
    api_key_from_row,
    bucket_step,
    list_filter,
)

#: Migration N (1-based) brings the schema from version N-1 to N. Append only.
MIGRATIONS: tuple[str, ...] = (
    # 1: mails and their attempts.
    """
    CREATE TABLE mails (
        id                  TEXT PRIMARY KEY,
        status              TEXT NOT NULL,
        payload             TEXT NOT NULL,  -- the Mail, as actors.messages.encode made it
        created_at          REAL NOT NULL,
        updated_at          REAL NOT NULL,
        provider            TEXT NULL,
        provider_message_id TEXT NULL,
        reason              TEXT NULL
    );
    CREATE INDEX mails_by_status ON mails (status, created_at);

    CREATE TABLE attempts (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        mail_id    TEXT NOT NULL REFERENCES mails (id),
        provider   TEXT NOT NULL,
        round      INTEGER NOT NULL,
        at         REAL NOT NULL,
        outcome    TEXT NOT NULL,
        reason     TEXT NULL,
        message_id TEXT NULL
    );
    -- A replayed attempt is recorded once (INSERT OR IGNORE).
    CREATE UNIQUE INDEX attempts_once ON attempts (mail_id, provider, round, at, outcome);
    """,
    # 2: the transactional outbox and the shared circuit-breaker state.
    """
    CREATE TABLE outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- claim order: oldest first
        mail_id      TEXT NOT NULL,
        accepted_at  REAL NOT NULL,
        leased_by    TEXT NULL,  -- the relay that claimed it ...
        leased_until REAL NULL   -- ... until then (unix time); NULL: never claimed
    );
    -- claim_outbox: the claimable entries, by id.
    CREATE INDEX outbox_by_lease ON outbox (leased_until, id);
    -- requeue_unfinished: does this mail have an entry?
    CREATE INDEX outbox_by_mail ON outbox (mail_id);

    CREATE TABLE breakers (
        provider   TEXT PRIMARY KEY,
        state      TEXT NOT NULL,  -- closed | open | half_open
        opened_at  REAL NULL,
        updated_at REAL NOT NULL   -- the newest wins
    );
    """,
    # 3: tenants, API keys, idempotency keys and rate-limit buckets.
    """
    ALTER TABLE mails ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
    -- list_mails: a tenant's mails, newest (highest ULID) first.
    CREATE INDEX mails_by_tenant ON mails (tenant, id);

    CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY,
        secret_hash  TEXT NOT NULL UNIQUE,  -- SHA-256 of the key; the key itself is never kept
        tenant       TEXT NOT NULL,
        scopes       TEXT NOT NULL,         -- comma list
        rate         REAL NULL,             -- mails/s; NULL: the service default
        created_at   REAL NOT NULL,
        last_used_at REAL NULL,
        revoked_at   REAL NULL
    );

    CREATE TABLE idempotency (
        tenant      TEXT NOT NULL,
        key_hash    TEXT NOT NULL,  -- SHA-256 of the Idempotency-Key header
        fingerprint TEXT NOT NULL,  -- SHA-256 of the request body
        mail_id     TEXT NOT NULL,
        expires_at  REAL NOT NULL,
        PRIMARY KEY (tenant, key_hash)
    );
    CREATE INDEX idempotency_by_expiry ON idempotency (expires_at);

    CREATE TABLE rate_buckets (
        id         TEXT PRIMARY KEY,
        tokens     REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
)

_SCHEMA_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version    INTEGER PRIMARY KEY,
        applied_at REAL NOT NULL
    )
"""

_UNFINISHED = (Status.QUEUED, Status.SENDING)

#: Most mails one group commit writes.
MAX_GROUP_COMMIT = 500

#: Ids per ``IN (...)`` list: well under SQLite's limit on bound parameters.
_CHUNK = 500


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


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


class SQLiteStore(Store):
    """Mails, statuses and attempts in one SQLite file (or ``":memory:"``)."""

    #: "database is locked" (busy past the timeout), "disk I/O error", "unable to open".
    unavailable = (sqlite3.OperationalError,)

    def __init__(self, path: str, *, migrations: Sequence[str] = MIGRATIONS) -> None:
        self.path = path
        self.migrations: tuple[str, ...] = tuple(migrations)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._adds: list[tuple[Mail, Idempotency | None, asyncio.Future[str]]] = []
        self._add_writer: asyncio.Task[None] | None = None
        self._loads: dict[str, list[asyncio.Future[tuple[Mail, Status] | None]]] = {}
        self._load_reader: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            return
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            conn.row_factory = aiosqlite.Row
            if self.path != ":memory:":
                await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("PRAGMA busy_timeout = 5000")
            self._conn = conn
            await self._migrate()
        except BaseException:
            self._conn = None
            await conn.close()
            raise

    async def close(self) -> None:
        writer = self._add_writer
        if writer is not None and not writer.done():
            await asyncio.wait({writer})  # adds already handed in are committed first
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def schema_version(self) -> int:
        """The latest migration applied to the database (0 for none)."""
        async with self._transaction("BEGIN") as db:
            return await self._current_version(db)

    async def _migrate(self) -> None:
        """Apply the missing migrations, one transaction each."""
        while True:
            async with self._transaction() as db:
                await db.execute(_SCHEMA_VERSION_TABLE)
                version = await self._current_version(db)
                if version > len(self.migrations):
                    raise RuntimeError(
                        f"database {self.path!r} is at schema version {version}, "
                        f"newer than this code knows ({len(self.migrations)})"
                    )
                if version == len(self.migrations):
                    return
                for statement in split_statements(self.migrations[version]):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version + 1, time.time()),
                )

    @staticmethod
    async def _current_version(db: aiosqlite.Connection) -> int:
        rows = list(await db.execute_fetchall("SELECT MAX(version) FROM schema_version"))
        return int(rows[0][0] or 0)

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for one statement outside any transaction (it is atomic alone)."""
        if self._conn is None:
            raise RuntimeError("the store is not open")
        async with self._lock:
            yield self._conn

    @asynccontextmanager
    async def _transaction(
        self, begin: str = "BEGIN IMMEDIATE"
    ) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction on the shared connection, no other coroutine inside it."""
        if self._conn is None:
            raise RuntimeError("the store is not open")
        db = self._conn
        async with self._lock:
            try:
                # BEGIN is inside the try: a cancelled await still runs the
                # statement on the connection's thread, so it is rolled back too.
                await db.execute(begin)
                yield db
                await db.execute("COMMIT")
            except BaseException:
                # Statements run in order on one thread, so ROLLBACK comes after
                # any interrupted one. If BEGIN failed or COMMIT went through,
                # there is nothing to roll back ("no transaction is active").
                with suppress(sqlite3.OperationalError):
                    await db.execute("ROLLBACK")
                raise

    # --- Store -------------------------------------------------------------

    async def add(self, mail: Mail, idempotency: Idempotency | None = None) -> str:
        """Group commit: every ``add`` waiting while a transaction runs joins the next one.

        With ``synchronous=FULL`` a commit costs an fsync, so committing a
        batch of mails at once is what lets the API accept many mails a
        second; each caller still returns only once its mail is committed.
        """
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._adds.append((mail, idempotency, done))
        if self._add_writer is None or self._add_writer.done():
            self._add_writer = asyncio.create_task(self._write_adds())
        return await asyncio.shield(done)  # a cancelled caller does not cancel the others' commit

    async def _write_adds(self) -> None:
        while self._adds:
            batch, self._adds = self._adds[:MAX_GROUP_COMMIT], self._adds[MAX_GROUP_COMMIT:]
            try:
                async with self._transaction() as db:
                    outcomes = await _insert_mails(db, [(m, i) for m, i, _ in batch])
            except BaseException as exc:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for (_, _, done), outcome in zip(batch, outcomes, strict=True):
                    if done.done():
                        continue
                    if isinstance(outcome, IdempotencyMismatch):
                        done.set_exception(outcome)
                    else:
                        done.set_result(outcome)

    async def get(self, mail_id: str) -> MailRecord | None:
        async with self._transaction("BEGIN") as db:
            mails = list(
                await db.execute_fetchall(
                    """
                    SELECT payload, status, updated_at, provider, provider_message_id, reason
                    FROM mails
                    WHERE id = ?
                    """,
                    (mail_id,),
                )
            )
            if not mails:
                return None
            attempts = await db.execute_fetchall(
                """
                SELECT provider, round, at, outcome, reason, message_id
                FROM attempts
                WHERE mail_id = ?
                ORDER BY at, id
                """,
                (mail_id,),
            )
        row = mails[0]
        return MailRecord(
            mail=decode(Mail, row["payload"]),
            status=Status(row["status"]),
            updated_at=row["updated_at"],
            provider=row["provider"],
            provider_message_id=row["provider_message_id"],
            reason=row["reason"],
            attempts=tuple(_attempt(a) for a in attempts),
        )

    async def load(self, mail_id: str) -> tuple[Mail, Status] | None:
        """Batched like ``add``: the loads waiting while a query runs share the next one.

        Senders load every mail they try, so this is the hottest read; one
        ``IN (...)`` query (atomic by itself, no BEGIN/COMMIT) serves them all.
        """
        found: asyncio.Future[tuple[Mail, Status] | None]
        found = asyncio.get_running_loop().create_future()
        self._loads.setdefault(mail_id, []).append(found)
        if self._load_reader is None or self._load_reader.done():
            self._load_reader = asyncio.create_task(self._read_loads())
        return await asyncio.shield(found)

    async def _read_loads(self) -> None:
        while self._loads:
            ids = list(itertools.islice(self._loads, MAX_GROUP_COMMIT))
            waiting = {mail_id: self._loads.pop(mail_id) for mail_id in ids}
            try:
                async with self._statement() as db:
                    rows = await db.execute_fetchall(
                        "SELECT id, payload, status FROM mails "
                        f"WHERE id IN ({_placeholders(len(ids))})",
                        ids,
                    )
                loaded = {
                    row["id"]: (decode(Mail, row["payload"]), Status(row["status"])) for row in rows
                }
            except BaseException as exc:
                for futures in waiting.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for mail_id, futures in waiting.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(loaded.get(mail_id))

    async def apply(self, updates: Sequence[StatusUpdate]) -> None:
        if not updates:
            return
        # A few executemany calls instead of two statements per update: each
        # call is one trip to the connection's thread.
        attempts = [_attempt_row(u.mail_id, u.attempt) for u in updates if u.attempt is not None]
        async with self._transaction() as db:
            if attempts:
                await db.executemany(_INSERT_ATTEMPT, attempts)
            # Moves in the order they can follow each other; a move that is not
            # allowed from the status reached is skipped, as one by one.
            for status in _MOVE_ORDER:
                moves = [_move_row(u) for u in updates if u.status is status]
                if moves:
                    await db.executemany(_MOVE_SQL[status], moves)

    async def transition(
        self, mail_id: str, status: Status, at: float, reason: str | None = None
    ) -> Transition | None:
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall("SELECT status FROM mails WHERE id = ?", (mail_id,))
            )
            if not rows:
                return None
            if await _move(db, mail_id, status, at, reason=reason):
                return Transition(changed=True, status=status)
            return Transition(changed=False, status=Status(rows[0]["status"]))

    async def unfinished(self) -> list[Pending]:
        async with self._transaction("BEGIN") as db:
            rows = await db.execute_fetchall(
                f"""
                SELECT id, created_at
                FROM mails
                WHERE status IN ({_placeholders(len(_UNFINISHED))})
                ORDER BY created_at, id
                """,
                _UNFINISHED,
            )
        return [Pending(mail_id=row["id"], accepted_at=row["created_at"]) for row in rows]

    async def list_mails(self, query: MailQuery) -> list[MailSummary]:
        where, params = list_filter(query)
        async with self._statement() as db:
            rows = await db.execute_fetchall(
                f"SELECT id, status, created_at FROM mails {where} ORDER BY id DESC LIMIT ?",
                (*params, query.limit),
            )
        return [MailSummary(row["id"], Status(row["status"]), row["created_at"]) for row in rows]

    # --- API keys ---------------------------------------------------------------

    async def create_key(self, key: ApiKey, secret_hash: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                """
                INSERT INTO api_keys (id, secret_hash, tenant, scopes, rate, created_at)
                VALUES (?, ?, ?, ?, ?, ?)
                """,
                (key.id, secret_hash, key.tenant, ",".join(key.scopes), key.rate, key.created_at),
            )

    async def keys(self) -> list[ApiKey]:
        async with self._statement() as db:
            rows = await db.execute_fetchall(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id")
        return [api_key_from_row(tuple(row)) for row in rows]

    async def key_by_hash(self, secret_hash: str) -> ApiKey | None:
        async with self._statement() as db:
            rows = list(
                await db.execute_fetchall(
                    f"SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?", (secret_hash,)
                )
            )
        return api_key_from_row(tuple(rows[0])) if rows else None

    async def revoke_key(self, key_id: str, at: float) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (at, key_id),
            )
            return cursor.rowcount > 0

    async def any_keys(self) -> bool:
        async with self._statement() as db:
            rows = list(await db.execute_fetchall("SELECT EXISTS (SELECT 1 FROM api_keys)"))
        return bool(rows[0][0])

    async def touch_keys(self, used: dict[str, float]) -> None:
        if not used:
            return
        async with self._transaction() as db:
            await db.executemany(
                """
                UPDATE api_keys SET last_used_at = ?
                WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)
                """,
                [(at, key_id, at) for key_id, at in used.items()],
            )

    # --- rate limits and idempotency -------------------------------------------

    async def take_token(self, bucket: str, rate: float, now: float) -> RateDecision:
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT tokens, updated_at FROM rate_buckets WHERE id = ?", (bucket,)
                )
            )
            tokens, updated_at = (rows[0][0], rows[0][1]) if rows else (None, None)
            left, decision = bucket_step(tokens, updated_at, rate, now)
            await db.execute(
                """
                INSERT INTO rate_buckets (id, tokens, updated_at) VALUES (?, ?, ?)
                ON CONFLICT (id) DO UPDATE
                SET tokens = excluded.tokens, updated_at = MAX(updated_at, excluded.updated_at)
                """,
                (bucket, left, now),
            )
        return decision

    async def purge_idempotency(self, now: float) -> int:
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM idempotency WHERE expires_at < ?", (now,))
            return max(cursor.rowcount, 0)

    # --- transactional outbox ------------------------------------------------

    async def claim_outbox(
        self, owner: str, limit: int, lease_seconds: float, now: float
    ) -> list[OutboxEntry]:
        if limit <= 0:
            return []
        # BEGIN IMMEDIATE takes the database's write lock before the SELECT, so
        # another connection (another process) cannot claim between our SELECT
        # and our UPDATE; self._lock does the same for coroutines on this one.
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    """
                    SELECT id, mail_id, accepted_at
                    FROM outbox
                    WHERE leased_until IS NULL OR leased_until < ?
                    ORDER BY id
                    LIMIT ?
                    """,
                    (now, limit),
                )
            )
            if not rows:
                return []
            ids = [row["id"] for row in rows]
            await db.execute(
                f"""
                UPDATE outbox SET leased_by = ?, leased_until = ?
                WHERE id IN ({_placeholders(len(ids))})
                """,
                (owner, now + lease_seconds, *ids),
            )
        return [
            OutboxEntry(id=row["id"], mail_id=row["mail_id"], accepted_at=row["accepted_at"])
            for row in rows
        ]

    async def published(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        async with self._transaction() as db:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                await db.execute(
                    f"DELETE FROM outbox WHERE id IN ({_placeholders(len(chunk))})", tuple(chunk)
                )

    async def requeue_unfinished(self) -> int:
        async with self._transaction() as db:
            cursor = await db.execute(
                f"""
                INSERT INTO outbox (mail_id, accepted_at)
                SELECT id, created_at
                FROM mails
                WHERE status IN ({_placeholders(len(_UNFINISHED))})
                  AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.mail_id = mails.id)
                ORDER BY created_at, id
                """,
                _UNFINISHED,
            )
            made = max(cursor.rowcount, 0)
            await db.execute("UPDATE outbox SET leased_by = NULL, leased_until = NULL")
            return made

    # --- shared circuit-breaker state ------------------------------------------

    async def save_breaker(self, state: BreakerState) -> None:
        async with self._transaction() as db:
            await db.execute(
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

    async def breakers(self) -> list[BreakerState]:
        async with self._transaction("BEGIN") as db:
            rows = await db.execute_fetchall(
                "SELECT provider, state, opened_at, updated_at FROM breakers ORDER BY provider"
            )
        return [
            BreakerState(
                provider=row["provider"],
                state=row["state"],
                opened_at=row["opened_at"],
                updated_at=row["updated_at"],
            )
            for row in rows
        ]


# --- statements run inside a transaction -------------------------------------


async def _insert_mails(
    db: aiosqlite.Connection, adds: list[tuple[Mail, Idempotency | None]]
) -> list[str | IdempotencyMismatch]:
    """The mails as ``queued``, each with its outbox entry; nothing for an id already stored.

    A few statements for the whole batch (each is one trip to the connection's
    thread), not two per mail. For each add, the id of the mail that stands
    for it, or the mismatch its idempotency key ran into.
    """
    ids = list({mail.id for mail, _ in adds})
    stored = {
        row[0]
        for row in await db.execute_fetchall(
            f"SELECT id FROM mails WHERE id IN ({_placeholders(len(ids))})", ids
        )
    }
    keyed = await _idempotency_rows(db, adds)
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
        await db.executemany(
            """
            INSERT OR REPLACE INTO idempotency (tenant, key_hash, fingerprint, mail_id, expires_at)
            VALUES (?, ?, ?, ?, ?)
            """,
            records,
        )
    if new:
        await db.executemany(
            """
            INSERT INTO mails (id, status, payload, created_at, updated_at, tenant)
            VALUES (?, ?, ?, ?, ?, ?)
            """,
            [
                (m.id, Status.QUEUED, encode(m).decode(), m.created_at, m.created_at, m.tenant)
                for m in new.values()
            ],
        )
        await db.executemany(
            "INSERT INTO outbox (mail_id, accepted_at) VALUES (?, ?)",
            [(m.id, m.created_at) for m in new.values()],
        )
    return outcomes


async def _idempotency_rows(
    db: aiosqlite.Connection, adds: list[tuple[Mail, Idempotency | None]]
) -> dict[tuple[str, str], tuple[str, str, float]]:
    """The recorded idempotency keys of a batch: (tenant, key hash) -> (mail id, fingerprint,
    expiry)."""
    wanted = {(m.tenant, i.key_hash) for m, i in adds if i is not None}
    found: dict[tuple[str, str], tuple[str, str, float]] = {}
    for tenant, key_hash in wanted:
        rows = await db.execute_fetchall(
            "SELECT mail_id, fingerprint, expires_at FROM idempotency "
            "WHERE tenant = ? AND key_hash = ?",
            (tenant, key_hash),
        )
        for row in rows:
            found[(tenant, key_hash)] = (row[0], row[1], row[2])
    return found


#: Records an attempt once; nothing for an unknown mail.
_INSERT_ATTEMPT = """
    INSERT OR IGNORE INTO attempts (mail_id, provider, round, at, outcome, reason, message_id)
    SELECT ?, ?, ?, ?, ?, ?, ?
    WHERE EXISTS (SELECT 1 FROM mails WHERE id = ?)
"""


def _attempt_row(mail_id: str, attempt: Attempt) -> tuple[object, ...]:
    return (
        mail_id,
        attempt.provider,
        attempt.round,
        attempt.at,
        attempt.outcome,
        attempt.reason,
        attempt.message_id,
        mail_id,
    )


def _move_sql(status: Status) -> str:
    """Moves a mail to ``status`` only from a status ``ALLOWED_FROM`` names (a guarded move)."""
    allowed = ", ".join(f"'{s.value}'" for s in sorted(ALLOWED_FROM[status]))
    return f"""
        UPDATE mails
        SET status = ?,
            updated_at = ?,
            provider = COALESCE(?, provider),
            provider_message_id = COALESCE(?, provider_message_id),
            reason = COALESCE(?, reason)
        WHERE id = ? AND status IN ({allowed})
    """


#: Statuses that can be reached, in the order one can follow another.
_MOVE_ORDER = (Status.SENDING, Status.SENT, Status.FAILED)
_MOVE_SQL = {status: _move_sql(status) for status in _MOVE_ORDER}


def _move_row(update: StatusUpdate) -> tuple[object, ...]:
    return (
        update.status,
        update.at,
        update.provider,
        update.provider_message_id,
        update.reason,
        update.mail_id,
    )


async def _move(
    db: aiosqlite.Connection,
    mail_id: str,
    status: Status,
    at: float,
    *,
    reason: str | None = None,
) -> bool:
    """Move one mail to ``status`` if ``ALLOWED_FROM`` lets it; whether it moved."""
    if status not in _MOVE_SQL:
        return False
    cursor = await db.execute(_MOVE_SQL[status], (status, at, None, None, reason, mail_id))
    return cursor.rowcount > 0


def _attempt(row: aiosqlite.Row) -> Attempt:
    return Attempt(
        provider=row["provider"],
        round=row["round"],
        at=row["at"],
        outcome=Outcome(row["outcome"]),
        reason=row["reason"],
        message_id=row["message_id"],
    )

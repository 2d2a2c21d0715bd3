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
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress

import aiosqlite

from .messages import ALLOWED_FROM, Attempt, Mail, Outcome, Status, StatusUpdate, decode, encode
from .store import BreakerState, MailRecord, OutboxEntry, Pending, Store, Transition

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
)

_SCHEMA_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version    INTEGER PRIMARY KEY,
        applied_at REAL NOT NULL
    )
"""

_UNFINISHED = (Status.QUEUED, Status.SENDING)

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

    def __init__(self, path: str, *, migrations: Sequence[str] = MIGRATIONS) -> None:
        self.path = path
        self.migrations: tuple[str, ...] = tuple(migrations)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

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

    async def add(self, mail: Mail) -> None:
        async with self._transaction() as db:
            cursor = await db.execute(
                """
                INSERT OR IGNORE INTO mails (id, status, payload, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?)
                """,
                (mail.id, Status.QUEUED, encode(mail).decode(), mail.created_at, mail.created_at),
            )
            if cursor.rowcount > 0:  # a repeated add inserts neither the mail nor an entry
                await db.execute(
                    "INSERT INTO outbox (mail_id, accepted_at) VALUES (?, ?)",
                    (mail.id, mail.created_at),
                )

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
        async with self._transaction("BEGIN") as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT payload, status FROM mails WHERE id = ?", (mail_id,)
                )
            )
        if not rows:
            return None
        return decode(Mail, rows[0]["payload"]), Status(rows[0]["status"])

    async def apply(self, updates: Sequence[StatusUpdate]) -> None:
        if not updates:
            return
        async with self._transaction() as db:
            for update in updates:
                if update.attempt is not None:
                    await _record_attempt(db, update.mail_id, update.attempt)
                await _move(
                    db,
                    update.mail_id,
                    update.status,
                    update.at,
                    provider=update.provider,
                    provider_message_id=update.provider_message_id,
                    reason=update.reason,
                )

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


async def _record_attempt(db: aiosqlite.Connection, mail_id: str, attempt: Attempt) -> None:
    """Insert ``attempt`` once; nothing for an unknown mail."""
    await db.execute(
        """
        INSERT OR IGNORE INTO attempts (mail_id, provider, round, at, outcome, reason, message_id)
        SELECT ?, ?, ?, ?, ?, ?, ?
        WHERE EXISTS (SELECT 1 FROM mails WHERE id = ?)
        """,
        (
            mail_id,
            attempt.provider,
            attempt.round,
            attempt.at,
            attempt.outcome,
            attempt.reason,
            attempt.message_id,
            mail_id,
        ),
    )


async def _move(
    db: aiosqlite.Connection,
    mail_id: str,
    status: Status,
    at: float,
    *,
    provider: str | None = None,
    provider_message_id: str | None = None,
    reason: str | None = None,
) -> bool:
    """Move a mail to ``status`` if ``ALLOWED_FROM`` lets it; whether it moved."""
    allowed = sorted(ALLOWED_FROM[status])
    if not allowed:
        return False
    cursor = await db.execute(
        f"""
        UPDATE mails
        SET status = ?,
            updated_at = ?,
            provider = COALESCE(?, provider),
            provider_message_id = COALESCE(?, provider_message_id),
            reason = COALESCE(?, reason)
        WHERE id = ? AND status IN ({_placeholders(len(allowed))})
        """,
        (status, at, provider, provider_message_id, reason, mail_id, *allowed),
    )
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

"""Retention and erasure: what the store forgets, and when.

A **final** mail (``sent``, ``failed``, ``delivered``, ``bounced``, ``suppressed``) finished before
the body cutoff is *purged*: its payload (addresses, subject, text, HTML, files,
headers, tags, metadata, request id) becomes a stub that keeps only its id, tenant and
creation time, ``purged_at`` says when, its events forget their recipient and its rows
of ``mail_recipients`` and ``mail_labels`` go (``finding``): nothing finds it by them. Its
record (status, provider, reason, attempts, events) stays until the record cutoff;
then the mail is *dropped*: deleted with every row that names it (attempts, events,
outbox entries, callbacks, idempotency keys, dead letters). Mails not final are
never purged nor dropped by age.

``erase`` drops one mail now, whatever its age (``DELETE /mail/{id}``, ``mailman
erase``): a ``scheduled`` one is cancelled first (moved to ``failed``, as by hand,
so whatever counts moves counts it); one still ``queued`` or ``sending`` is refused,
a sender may hold it.

Each operation handles at most ``limit`` mails (or rows) in one transaction, so a
purge never holds the writer (SQLite) or many row locks (MySQL) for long. On MySQL
the mails are claimed ``FOR UPDATE SKIP LOCKED``: purgers in several processes
take different mails, and a mail another transaction is moving is left for the
next pass. Dropping only final mails never changes what a summary of mails not yet
final would count.
"""

from __future__ import annotations

import abc
import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from mailman.core.messages import decode, encode
from mailman.core.model import Address, Mail, Outcome, Status

from . import attempts, finding, moves, summary
from .dialect import SQLITE, Dialect, chunks
from .operation import Engine, Statement, Steps, read, write

#: Mails (or rows) per transaction.
BATCH = 500

#: Statuses after which nothing more is sent: the mails retention may purge and drop.
FINAL: tuple[str, ...] = tuple(s.value for s in Status if s.terminal)


@functools.cache
def finished(d: Dialect) -> str:
    """A final mail, in SQL. SQLite: not one of the statuses a mail may still be sent
    from, each a comparison of its own: the WHERE of the partial indexes
    ``mails_by_finish`` and ``mails_to_purge`` (migration 17), which its planner reads
    only for a query that repeats each term (a longer IN list would be a temporary table
    built for every row an insert checks). MySQL: the final statuses listed, each a
    range of its ``(status, updated_at)`` index."""
    if d is SQLITE:
        return " AND ".join(f"status <> '{s.value}'" for s in Status if not s.terminal)
    listed = ", ".join(f"'{status}'" for status in FINAL)
    return f"status IN ({listed})"


#: What ``erase`` refuses: a sender may be holding the mail.
IN_FLIGHT = frozenset({Status.QUEUED, Status.SENDING})

#: The reason a scheduled mail erased before its time is cancelled with.
CANCELLED = "cancelled: erased before its send_at"

#: The tables holding rows of a mail, by ``mail_id``; deleted before the mail itself.
MAIL_ROWS = (
    "attempts",
    "events",
    "outbox",
    "callbacks",
    "idempotency",
    "dead_letters",
    *finding.TABLES,
)


@dataclass(frozen=True, slots=True)
class Erased:
    """What ``erase`` did: ``erased`` False if the mail is still on its way (``status``
    ``queued`` or ``sending``); ``status`` is the one it had."""

    erased: bool
    status: Status


@dataclass(frozen=True, slots=True)
class Dropped:
    """Rows ``drop_finished`` deleted."""

    callbacks: int = 0
    dead_letters: int = 0
    idempotency: int = 0

    @property
    def total(self) -> int:
        return self.callbacks + self.dead_letters + self.idempotency


@dataclass(frozen=True, slots=True)
class Addressed:
    """A page of ``addressed``: the mails found, and where the next page starts (None:
    nothing more)."""

    mail_ids: tuple[str, ...]
    #: The ``(created_at, id)`` of the last candidate read: the next page starts after it.
    after: tuple[float, str] | None


class Retention(abc.ABC):
    """What the store forgets: contents after the body retention, records after the
    record retention, one mail (or one person's mails) on request."""

    @abc.abstractmethod
    async def purge_bodies(self, before: float, now: float, limit: int = BATCH) -> int:
        """Erase the content of up to ``limit`` final mails last moved before ``before``
        (``purged_at`` becomes ``now``); how many."""

    @abc.abstractmethod
    async def drop_records(self, before: float, limit: int = BATCH) -> int:
        """Delete up to ``limit`` final mails last moved before ``before``, with every row
        that names them; how many."""

    @abc.abstractmethod
    async def drop_finished(self, before: float, now: float, limit: int = BATCH) -> Dropped:
        """Delete up to ``limit`` each of: callbacks finished before ``before``, dead
        letters replayed before ``before``, idempotency keys expired before ``now``."""

    @abc.abstractmethod
    async def erase(self, mail_id: str, now: float) -> Erased | None:
        """Delete one mail now, with its rows (a scheduled one is cancelled first); None if
        unknown, ``Erased(False, status)`` if it is still queued or sending."""

    @abc.abstractmethod
    async def addressed(
        self,
        address: str,
        tenant: str | None,
        after: tuple[float, str] | None = None,
        limit: int = BATCH,
    ) -> Addressed:
        """Mails with ``address`` (in any case) as from, to, cc, bcc or reply-to, among the
        next ``limit`` candidates in the order of their creation (``created_at``, then id)
        after ``after`` (None: from the first; of ``tenant``; None: any)."""

    @abc.abstractmethod
    async def reclaim(self, pages: int) -> int:
        """Give up to ``pages`` free pages back to the file system (SQLite with
        ``auto_vacuum = INCREMENTAL``); how many. MySQL: nothing to do (InnoDB reuses
        freed pages), 0."""


# --- SQL ---------------------------------------------------------------------------------


@functools.cache
def _to_purge(d: Dialect) -> str:
    """Final mails not purged, last moved before a time (parameters: before, limit).
    No ORDER BY: any ``limit`` of them do, and the index ``mails_to_purge`` ends the
    scan there."""
    m = d.mark
    return (
        "SELECT id, created_at, tenant FROM mails "
        f"WHERE purged_at IS NULL AND {finished(d)} AND updated_at < {m} "
        f"LIMIT {m}{d.claim_lock}"
    )


@functools.cache
def _purge(d: Dialect) -> str:
    m = d.mark
    return f"UPDATE mails SET payload = {m}, purged_at = {m} WHERE id = {m}"


@functools.lru_cache(maxsize=64)
def _forget_recipients(d: Dialect, count: int) -> str:
    return f"UPDATE events SET recipient = NULL WHERE mail_id IN ({d.marks(count)})"


@functools.cache
def _to_drop(d: Dialect) -> str:
    """Final mails last moved before a time (parameters: before, limit); the index
    ``mails_by_finish``."""
    m = d.mark
    return f"SELECT id FROM mails WHERE {finished(d)} AND updated_at < {m} LIMIT {m}{d.claim_lock}"


@functools.lru_cache(maxsize=64)
def _pending_of(d: Dialect, count: int) -> str:
    """These mails' calls still pending, their providers (on MySQL locked: a sweep
    making them unknown meanwhile would count them too)."""
    return (
        f"SELECT provider FROM attempts{d.force_index(attempts.BY_MAIL)} "
        f"WHERE mail_id IN ({d.marks(count)}) "
        f"AND outcome = '{Outcome.PENDING.value}'{d.row_lock}"
    )


@functools.lru_cache(maxsize=256)
def _delete_rows(d: Dialect, table: str, count: int) -> str:
    return f"DELETE FROM {table} WHERE mail_id IN ({d.marks(count)})"


@functools.lru_cache(maxsize=64)
def _delete_mails(d: Dialect, count: int) -> str:
    return f"DELETE FROM mails WHERE id IN ({d.marks(count)})"


@functools.lru_cache(maxsize=16)
def _delete_some(d: Dialect, table: str, where: str, key: str) -> str:
    """Delete at most a number of rows matching ``where`` (its parameters, then the
    number). SQLite has no ``DELETE ... LIMIT`` (unless built with it): by rowid. MySQL
    orders by the primary key ``key``, which makes the statement safe to replicate."""
    if d is SQLITE:
        return (
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {where} LIMIT ?)"
        )
    return f"DELETE FROM {table} WHERE {where} ORDER BY {key} LIMIT {d.mark}"


@functools.cache
def _candidates(d: Dialect, by_tenant: bool, paged: bool) -> str:
    """Mails whose payload may hold an address, in the order of their creation, after a
    point of it (parameters: [tenant,] [after: created_at twice, id,] pattern, limit).
    ``LIKE`` on the lowered payload finds candidates; ``addressed`` reads each one's
    addresses to be sure. Read through the listing's index of the mails (a tenant's, or
    everyone's: ``finding.MAILS_INDEXES``), as ``GET /mail`` pages them: no index of its
    own for an erasure, which every accept would write."""
    m = d.mark
    where = [f"tenant = {m}"] if by_tenant else []
    if paged:  # the bound alone is a range on the index; the OR picks out the ties
        where.append(f"created_at >= {m} AND (created_at > {m} OR id > {m})")
    where.append(f"LOWER(payload) LIKE {m} ESCAPE '!'")
    index = d.force_index(finding.MAILS_INDEXES[(by_tenant, False)])
    return (
        f"SELECT id, payload, created_at FROM mails{index} WHERE {' AND '.join(where)} "
        f"ORDER BY created_at, id LIMIT {m}"
    )


def stub(mail_id: str, created_at: float, tenant: str) -> Mail:
    """What a purged mail's payload keeps: its id, creation time and tenant."""
    return Mail(
        id=mail_id, sender=Address(""), to=(), subject="", created_at=created_at, tenant=tenant
    )


def like_pattern(address: str) -> str:
    """The ``LIKE`` pattern of payloads that may hold ``address``: anything for an address
    that is not plain ASCII or that JSON would escape (SQLite lowers ASCII only)."""
    lowered = address.lower()
    if not address.isascii() or any(c in address for c in '"\\') or not address.isprintable():
        return "%"
    escaped = lowered.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


def has_address(mail: Mail, address: str) -> bool:
    """Whether ``address`` (in any case) is the mail's from, to, cc, bcc or reply-to, or a
    recipient dropped as suppressed."""
    wanted = address.casefold()
    everyone = [mail.sender, *mail.to, *mail.cc, *mail.bcc]
    everyone.extend(Address(s.email) for s in mail.suppressed)
    if mail.reply_to is not None:
        everyone.append(mail.reply_to)
    return any(a.email.casefold() == wanted for a in everyone)


# --- operations ----------------------------------------------------------------------------


def drop_rows(d: Dialect, mail_ids: Sequence[str]) -> Steps[Counter[summary.Key]]:
    """Delete these mails and every row that names them (theirs first: attempts
    reference mails). The figures keep what these mails and attempts ended as
    (``store.summary``), but a call still pending (of a mail failed meanwhile) is in
    flight no longer: what the figures' pending calls lose (the caller bumps it, last)."""
    gone: Counter[summary.Key] = Counter()
    for chunk in chunks(mail_ids):
        cur = yield Statement(_pending_of(d, len(chunk)), chunk)
        for (provider,) in cur.fetchall():
            gone[(summary.ATTEMPTS, str(provider), Outcome.PENDING.value)] -= 1
        for table in MAIL_ROWS:
            yield Statement(_delete_rows(d, table, len(chunk)), chunk)
        yield Statement(_delete_mails(d, len(chunk)), chunk)
    return gone


@write
def purge_bodies(d: Dialect, before: float, now: float, limit: int) -> Steps[int]:
    rows = (yield Statement(_to_purge(d), (before, limit))).fetchall()
    if not rows:
        return 0
    yield Statement(
        _purge(d),
        [
            (encode(stub(mail_id, created, tenant)).decode(), now, mail_id)
            for mail_id, created, tenant in rows
        ],
        many=True,
    )
    purged = [row[0] for row in rows]
    for chunk in chunks(purged):
        yield Statement(_forget_recipients(d, len(chunk)), chunk)
    # Its recipients, tags and metadata are gone: nothing finds it by them any more.
    yield from finding.forget(d, purged)
    return len(rows)


@write
def drop_records(d: Dialect, before: float, limit: int) -> Steps[int]:
    ids = [row[0] for row in (yield Statement(_to_drop(d), (before, limit))).fetchall()]
    gone = yield from drop_rows(d, ids)
    yield from summary.bump(d, gone)
    return len(ids)


@write
def drop_finished(d: Dialect, before: float, now: float, limit: int) -> Steps[Dropped]:
    counts = []
    for table, where, key, cutoff in (
        ("callbacks", f"done_at < {d.mark}", "id", before),
        ("dead_letters", f"replayed_at < {d.mark}", "id", before),
        ("idempotency", f"expires_at < {d.mark}", "tenant, key_hash", now),
    ):
        cur = yield Statement(_delete_some(d, table, where, key), (cutoff, limit))
        counts.append(max(cur.rowcount, 0))
    return Dropped(*counts)


@write
def erase(d: Dialect, mail_id: str, now: float) -> Steps[Erased | None]:
    current = (yield from moves.statuses(d, [mail_id])).get(mail_id)
    if current is None:
        return None
    if current in IN_FLIGHT:
        return Erased(erased=False, status=current)
    if current is Status.SCHEDULED:  # cancelled as by hand, so nothing ever sends it
        values = moves.plain_move_values(mail_id, Status.FAILED, now, CANCELLED)
        yield Statement(moves.move(d, Status.FAILED), values)
    gone = yield from drop_rows(d, [mail_id])
    # The figures count it where it ended (failed, if it was cancelled), its record gone.
    if current is Status.SCHEDULED:
        gone.update(summary.moved(Status.SCHEDULED, Status.FAILED, 1))
    yield from summary.bump(d, gone)
    return Erased(erased=True, status=current)


@read
def addressed(
    d: Dialect, address: str, tenant: str | None, after: tuple[float, str] | None, limit: int
) -> Steps[Addressed]:
    params: list[object] = [] if tenant is None else [tenant]
    if after is not None:
        params += [after[0], after[0], after[1]]
    params += [like_pattern(address), limit]
    sql = _candidates(d, tenant is not None, after is not None)
    rows = (yield Statement(sql, params)).fetchall()
    found = tuple(
        mail_id for mail_id, payload, _ in rows if has_address(decode(Mail, payload), address)
    )
    last = (float(rows[-1][2]), str(rows[-1][0])) if len(rows) == limit else None
    return Addressed(found, last)


@write
def reclaim(d: Dialect, pages: int) -> Steps[int]:
    """Python's ``sqlite3`` steps a statement that returns no rows once, and each step of
    ``incremental_vacuum`` frees one page: it is run once per page."""
    (free,) = (yield Statement("PRAGMA freelist_count")).fetchone()
    for _ in range(min(int(free), pages)):
        yield Statement("PRAGMA incremental_vacuum")
    (left,) = (yield Statement("PRAGMA freelist_count")).fetchone()
    return int(free) - int(left)


class SqlRetention(Retention, Engine):
    """``Retention`` on a driver."""

    async def purge_bodies(self, before: float, now: float, limit: int = BATCH) -> int:
        return await self.run(purge_bodies, before, now, limit)

    async def drop_records(self, before: float, limit: int = BATCH) -> int:
        return await self.run(drop_records, before, limit)

    async def drop_finished(self, before: float, now: float, limit: int = BATCH) -> Dropped:
        return await self.run(drop_finished, before, now, limit)

    async def erase(self, mail_id: str, now: float) -> Erased | None:
        if not self.dialect.holds_id(mail_id):
            return None
        return await self.run(erase, mail_id, now)

    async def addressed(
        self,
        address: str,
        tenant: str | None,
        after: tuple[float, str] | None = None,
        limit: int = BATCH,
    ) -> Addressed:
        return await self.run(addressed, address, tenant, after, limit)

    async def reclaim(self, pages: int) -> int:
        if self.dialect is not SQLITE:
            return 0
        return await self.run(reclaim, pages)

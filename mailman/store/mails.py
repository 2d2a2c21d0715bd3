"""Mails: stored with their outbox entry (and their idempotency key) in one transaction,
read back with their history, listed, and moved by hand."""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailman.core.messages import decode, encode
from mailman.core.model import ALLOWED_FROM, Attempt, DeliveryEvent, Mail, Status

from . import (
    attempts,
    callbacks,
    events,
    finding,
    idempotency,
    moves,
    outbox,
    payloads,
    summary,
    suppressions,
)
from .dialect import Dialect, chunks, in_lists, unindexed
from .finding import MailQuery
from .idempotency import Idempotency
from .moves import MOVE_ORDER, UNFINISHED
from .operation import (
    Engine,
    Statement,
    Steps,
    inserts,
    read,
    read_batch,
    snapshot,
    write,
    write_batch,
)
from .suppressions import SUPPRESSED_REASON


class MailTooLarge(ValueError):
    """The store cannot hold a mail this large (MySQL: its INSERT would pass the server's
    ``max_allowed_packet``, which would drop the connection). Nothing was stored."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the mail takes about {size} bytes to store, over the store's limit of {limit}"
        )
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[type[MailTooLarge], tuple[int, int]]:
        """Rebuilt from its size and limit (it crosses the SQLite writer process's socket)."""
        return type(self), (self.size, self.limit)


@dataclass(frozen=True, slots=True)
class MailRecord:
    """A stored mail with everything known about it."""

    mail: Mail
    status: Status
    updated_at: float
    provider: str | None = None
    provider_message_id: str | None = None
    reason: str | None = None
    attempts: tuple[Attempt, ...] = ()
    #: What the providers reported after taking it, oldest first.
    events: tuple[DeliveryEvent, ...] = ()
    #: When its content was erased (``store.retention``): ``mail`` is then a stub that
    #: keeps only its id, tenant and creation time. None: kept.
    purged_at: float | None = None


@dataclass(frozen=True, slots=True)
class MailSummary:
    """One line of a mail listing."""

    id: str
    status: Status
    created_at: float


@dataclass(frozen=True, slots=True)
class Transition:
    """What a guarded status change did: ``changed`` is False for a repeat or a refused move."""

    changed: bool
    status: Status


@dataclass(frozen=True, slots=True)
class Pending:
    """A mail not yet ``sent`` or ``failed``: to be dispatched again after a restart."""

    mail_id: str
    accepted_at: float


class Mails(abc.ABC):
    """Mails, their status and their history. Everything a caller was answered ``201``
    for is committed here first."""

    @abc.abstractmethod
    async def add(self, mail: Mail, idempotency: Idempotency | None = None) -> str:
        """Store a new mail as ``queued`` with its outbox entry, in one transaction (a mail
        with a ``send_at`` as ``scheduled``, without one: ``release_scheduled`` adds it).

        Committed when this returns; adding the same id again is a no-op.
        With ``idempotency``, the key is recorded for ``mail.tenant`` in the
        same transaction. If the tenant's key is already recorded (and not
        expired), nothing is stored: the result is the id of the mail the
        key stands for, or ``IdempotencyMismatch`` if the fingerprints differ.
        Returns the id of the mail that stands for this request.
        """

    @abc.abstractmethod
    async def get(self, mail_id: str) -> MailRecord | None:
        """The mail with its status and every attempt, oldest first; None if unknown."""

    @abc.abstractmethod
    async def load(self, mail_id: str) -> tuple[Mail, Status] | None:
        """The mail and its status, without history (what a sender needs)."""

    @abc.abstractmethod
    async def list_mails(self, query: MailQuery) -> list[MailSummary]:
        """Mails matching ``query``, newest first (by ``created_at``, then id), at most
        ``query.limit`` (``store.finding``)."""

    @abc.abstractmethod
    async def transition(
        self, mail_id: str, status: Status, at: float, reason: str | None = None
    ) -> Transition | None:
        """Move one mail to ``status`` if allowed; None if the mail is unknown."""

    @abc.abstractmethod
    async def unfinished(self) -> list[Pending]:
        """Mails still ``queued`` or ``sending``, oldest first."""

    @abc.abstractmethod
    async def backlog(self) -> int:
        """How many mails are not final yet (``queued`` or ``sending``)."""

    @abc.abstractmethod
    async def retry(self, mail_id: str, at: float) -> Transition | None:
        """Send a ``failed`` mail again: back to ``queued`` with an outbox entry for a new round.

        The entry is accepted at ``at`` (the retry window starts again) and
        starts the round after the mail's last attempt. One transaction.
        ``Transition(changed=False, status)`` if the mail is not ``failed``, or is
        but its content was erased (``purged_at``: nothing left to send); None if it
        is unknown.
        """

    @abc.abstractmethod
    async def release_scheduled(self, now: float, limit: int = 500) -> list[str]:
        """Scheduled mails whose ``send_at`` is ``now`` or earlier become ``queued``, each
        with an outbox entry (the relay dispatches them), in one transaction; their ids,
        at most ``limit``, earliest first."""


# --- SQL ---------------------------------------------------------------------------------

#: The statuses ``POST /mail/{id}/retry`` sends a mail again from (``unknown``: a held mail).
SENT_AGAIN = (Status.FAILED, Status.UNKNOWN)
MAIL_COLUMNS = (
    "id, status, payload, created_at, updated_at, tenant, callback_url, callback_status, due_at, "
    "providers"
)
RECORD_COLUMNS = "payload, status, updated_at, provider, provider_message_id, reason, purged_at"


@functools.lru_cache(maxsize=1024)
def _insert(d: Dialect, count: int) -> str:
    return f"INSERT INTO mails ({MAIL_COLUMNS}) VALUES {d.rows(count, 10)}"


@functools.cache
def _insert_once(d: Dialect) -> str:
    return d.insert_once("mails", MAIL_COLUMNS, d.rows(1, 10), key="id")


@functools.lru_cache(maxsize=1024)
def _stored(d: Dialect, count: int) -> str:
    return f"SELECT id FROM mails WHERE id IN ({d.marks(count)})"


@functools.cache
def _record(d: Dialect) -> str:
    return f"SELECT {RECORD_COLUMNS} FROM mails WHERE id = {d.mark}"


@functools.cache
def _backlog(d: Dialect) -> str:
    return f"SELECT COUNT(*) FROM mails WHERE status IN ({d.marks(len(UNFINISHED))})"


@functools.cache
def _unfinished(d: Dialect) -> str:
    return (
        f"SELECT id, created_at FROM mails WHERE status IN ({d.marks(len(UNFINISHED))}) "
        "ORDER BY created_at, id"
    )


@functools.cache
def _replay(d: Dialect) -> str:
    """A failed or held (``unknown``) mail back to ``queued`` (parameters: at, mail id)."""
    m = d.mark
    again = ", ".join(f"'{s.value}'" for s in SENT_AGAIN)
    return (
        f"UPDATE mails SET status = '{Status.QUEUED.value}', updated_at = {m}, reason = NULL "
        f"WHERE id = {m} AND status IN ({again}) AND purged_at IS NULL"
    )


@functools.cache
def _due_scheduled(d: Dialect) -> str:
    """Scheduled mails whose time has come, earliest first (parameters: now, limit)."""
    m = d.mark
    return (
        f"SELECT id, due_at FROM mails WHERE status = '{Status.SCHEDULED.value}' "
        f"AND due_at <= {m} ORDER BY due_at, id LIMIT {m}{d.claim_lock}"
    )


@functools.lru_cache(maxsize=1024)
def _release(d: Dialect, count: int) -> str:
    """Due scheduled mails become ``queued`` (parameters: now, ids); each then gets an
    outbox entry, as a new mail gets at its commit."""
    return (
        f"UPDATE mails{d.by_key} SET status = '{Status.QUEUED.value}', updated_at = {d.mark}, "
        f"due_at = NULL WHERE id IN ({d.marks(count)}) "
        f"AND {unindexed('status')} = '{Status.SCHEDULED.value}'"
    )


def _accepted_as(status: Status) -> Status:
    return Status.QUEUED if status is Status.SUPPRESSED else status


def mail_values(mail: Mail) -> tuple[object, ...]:
    """A new mail's row of ``MAIL_COLUMNS``: ``queued``, or ``scheduled`` till its
    ``send_at`` (kept as ``due_at``)."""
    status = mail.first_status.value
    return (
        mail.id,
        status,
        encode(mail).decode(),
        mail.created_at,
        mail.created_at,
        mail.tenant,
        mail.callback_url,
        # The status its last callback was queued for: none for being accepted (a mail
        # suppressed at once is accepted ``queued``: its callback says ``suppressed``).
        None if mail.callback_url is None else _accepted_as(mail.first_status).value,
        mail.send_at,
        mail.providers,
    )


def record_from_rows(
    row: Sequence[Any], attempt_rows: Sequence[Sequence[Any]], event_rows: Sequence[Sequence[Any]]
) -> MailRecord:
    """A ``MailRecord`` from a row of ``RECORD_COLUMNS``, its attempts' and events' rows."""
    payload, status, updated_at, provider, provider_message_id, reason, purged_at = row
    return MailRecord(
        mail=decode(Mail, payload),
        status=Status(status),
        updated_at=updated_at,
        provider=provider,
        provider_message_id=provider_message_id,
        reason=reason,
        attempts=tuple(attempts.attempt_from_row(a) for a in attempt_rows),
        events=tuple(events.event_from_row(e) for e in event_rows),
        purged_at=purged_at,
    )


# --- MySQL's max_allowed_packet ----------------------------------------------------------

#: Characters of text and files under which a mail is not measured against
#: ``max_allowed_packet``: even as 4-byte UTF-8, escaped, with 1000 recipients, it
#: stays below 4 MiB.
SMALL_MAIL = 256 * 1024
#: Bytes of an INSERT of a mail besides its payload (the other columns, the SQL), with room.
STATEMENT_ROOM = 64 * 1024


def insert_size(mail: Mail) -> int | None:
    """About how many bytes the INSERT of ``mail`` takes; None for a mail whose text and
    files are short (``SMALL_MAIL``): the smallest default limit (4 MiB, MySQL 5.7;
    MariaDB's is 16 MiB, MySQL 8's 64 MiB) holds it. Each mail is its own INSERT, so
    only one mail's size counts."""
    if mail.content_bytes < SMALL_MAIL:
        return None
    payload = encode(mail)
    # The payload goes as an escaped string literal: each quote and backslash takes
    # two bytes (orjson already wrote control characters as JSON escapes).
    size = len(payload) + payload.count(b'"') + payload.count(b"\\") + payload.count(b"'")
    return size + STATEMENT_ROOM


# --- operations ----------------------------------------------------------------------------


def _insert_new(d: Dialect, mails: list[Mail]) -> Steps[list[Mail]]:
    """Insert the mails whose id is not stored yet; the ones inserted."""
    if d.one_writer:
        # Nothing else writes meanwhile: a mail not there now is inserted, a batch's
        # mails by one prepared INSERT (``inserts``).
        stored: set[str] = set()
        for chunk in in_lists(d, [m.id for m in mails]):
            cur = yield Statement(_stored(d, len(chunk)), chunk)
            stored.update(row[0] for row in cur.fetchall())
        new = [m for m in mails if m.id not in stored]
        yield from inserts(d, functools.partial(_insert, d), [mail_values(m) for m in new])
        return new
    # Another process may add the same id meanwhile: each mail's own INSERT says whether
    # it inserted (1 row) or found the id there (0: the no-op update).
    inserted: list[Mail] = []
    for mail in mails:
        if (yield Statement(_insert_once(d), mail_values(mail))).rowcount == 1:
            inserted.append(mail)
    return inserted


@write_batch
def add(d: Dialect, adds: list[tuple[Mail, Idempotency | None]]) -> Steps[list[str | Exception]]:
    """The mails, each with its outbox entry; nothing for an id already stored.

    For each add, the id of the mail that stands for it, or the mismatch its
    idempotency key ran into.
    """
    outcomes: list[str | Exception] = []
    fresh: dict[str, Mail] = {}
    for mail, idem in adds:
        if idem is not None:
            standing = yield from idempotency.claim(d, mail, idem)
            if standing is not None:
                outcomes.append(standing)
                continue
        outcomes.append(mail.id)
        fresh.setdefault(mail.id, mail)  # a repeated add inserts neither the mail nor an entry
    stored = yield from _insert_new(d, list(fresh.values()))
    yield from finding.index(d, stored)
    # Scheduled ones wait for their time; suppressed ones are never sent.
    entering = [m for m in stored if m.first_status is Status.QUEUED]
    yield from inserts(
        d, functools.partial(outbox.entries, d), [(m.id, m.created_at) for m in entering]
    )
    suppressed = [m.id for m in stored if m.first_status is Status.SUPPRESSED]
    for chunk in chunks(suppressed):
        yield Statement(suppressions.give_reason(d, len(chunk)), (SUPPRESSED_REASON, *chunk))
    yield from callbacks.queue(d, suppressed)
    deltas = summary.mail_added(m.first_status for m in stored)
    deltas.update(summary.dropped(s for m in stored for s in m.suppressed))
    yield from summary.bump(d, deltas)
    return outcomes


@snapshot
def get(d: Dialect, mail_id: str) -> Steps[MailRecord | None]:
    row = (yield Statement(_record(d), (mail_id,))).fetchone()
    if row is None:
        return None
    attempt_rows = (yield Statement(attempts.history(d), (mail_id,))).fetchall()
    event_rows = (yield Statement(events.history(d), (mail_id,))).fetchall()
    return record_from_rows(row, attempt_rows, event_rows)


@read_batch
def load(d: Dialect, ids: list[str]) -> Steps[list[tuple[Mail, Status] | None]]:
    """Every call's mail in one ``IN (...)`` query."""
    loaded = yield from payloads.of(d, ids)
    return [loaded.get(mail_id) for mail_id in ids]


@read
def listing(d: Dialect, query: MailQuery) -> Steps[list[MailSummary]]:
    cur = yield finding.find(d, query)
    return [MailSummary(row[0], Status(row[1]), row[2]) for row in cur.fetchall()]


@write
def move_one(
    d: Dialect, mail_id: str, status: Status, at: float, reason: str | None
) -> Steps[Transition | None]:
    current = (yield from moves.statuses(d, [mail_id])).get(mail_id)
    if current is None:
        return None
    # The status read is the one the UPDATE sees (SQLite: the writer holds the
    # database; MySQL: the row is locked).
    if status in MOVE_ORDER and current in ALLOWED_FROM[status]:
        yield Statement(moves.move(d, status), moves.plain_move_values(mail_id, status, at, reason))
        yield from callbacks.queue(d, [mail_id])
        yield from summary.bump(d, summary.moved(current, status, 1))
        return Transition(changed=True, status=status)
    return Transition(changed=False, status=current)


@read
def unfinished(d: Dialect) -> Steps[list[Pending]]:
    cur = yield Statement(_unfinished(d), UNFINISHED)
    return [Pending(mail_id=row[0], accepted_at=row[1]) for row in cur.fetchall()]


@read
def backlog(d: Dialect) -> Steps[int]:
    (count,) = (yield Statement(_backlog(d), UNFINISHED)).fetchone()
    return int(count)


@write
def retry(d: Dialect, mail_id: str, at: float) -> Steps[Transition | None]:
    current = (yield from moves.statuses(d, [mail_id])).get(mail_id)
    if current is None:
        return None
    if current not in SENT_AGAIN:
        return Transition(changed=False, status=current)
    if (yield Statement(_replay(d), (at, mail_id))).rowcount == 0:
        return Transition(changed=False, status=current)  # its content was erased
    (round_,) = (yield Statement(attempts.next_round(d), (mail_id,))).fetchone()
    yield Statement(outbox.rounds(d, 1), (mail_id, at, int(round_)))
    yield from callbacks.queue(d, [mail_id])
    yield from summary.bump(d, summary.moved(current, Status.QUEUED, 1))
    return Transition(changed=True, status=Status.QUEUED)


@write
def release(d: Dialect, now: float, limit: int) -> Steps[list[str]]:
    """On MySQL the due mails are claimed ``FOR UPDATE SKIP LOCKED``: two schedulers
    never release one mail twice."""
    rows = list((yield Statement(_due_scheduled(d), (now, limit))).fetchall())
    for chunk in chunks(rows):
        yield Statement(_release(d, len(chunk)), (now, *(r[0] for r in chunk)))
        yield Statement(outbox.entries(d, len(chunk)), [v for r in chunk for v in r])
    ids = [r[0] for r in rows]
    yield from callbacks.queue(d, ids)
    # Every row claimed is scheduled (MySQL: locked since; SQLite: the one writer).
    yield from summary.bump(d, summary.moved(Status.SCHEDULED, Status.QUEUED, len(ids)))
    return ids


@read
def max_packet(d: Dialect) -> Steps[int]:
    """MySQL's ``max_allowed_packet``."""
    (limit,) = (yield Statement("SELECT @@max_allowed_packet")).fetchone()
    return int(limit)


class SqlMails(Mails, Engine):
    """``Mails`` on a driver."""

    #: The server's ``max_allowed_packet``, read once, when a large mail first comes.
    _max_packet: int | None = None

    async def add(self, mail: Mail, idempotency: Idempotency | None = None) -> str:
        """SQLite: the adds waiting while a transaction runs share the next one (group
        commit). With ``synchronous=FULL`` a commit costs an fsync, so committing a batch
        of mails at once is what lets the API accept many mails a second; each caller
        still returns only once its mail is committed."""
        d = self.dialect
        if not d.holds_id(mail.id):
            raise ValueError(
                f"mail id {mail.id[:80]!r} cannot be stored: at most {d.id_max} characters, "
                "no trailing space"
            )
        if d.packet_limited:
            await self._check_packet(mail)
        return await self.run_batched(add, (mail, idempotency))

    async def _check_packet(self, mail: Mail) -> None:
        """``MailTooLarge`` if ``mail``'s INSERT would pass the server's ``max_allowed_packet``:
        the server would refuse it (1153) and drop the connection, which would look like an
        outage (a 503, tried again forever)."""
        size = insert_size(mail)
        if size is None:
            return
        if self._max_packet is None:
            self._max_packet = await self.run(max_packet)
        if size > self._max_packet:
            raise MailTooLarge(size, self._max_packet)

    async def get(self, mail_id: str) -> MailRecord | None:
        if not self.dialect.holds_id(mail_id):
            return None
        return await self.run(get, mail_id)

    async def load(self, mail_id: str) -> tuple[Mail, Status] | None:
        """SQLite: the loads waiting while a query runs share one ``IN (...)`` query."""
        if not self.dialect.holds_id(mail_id):
            return None
        return await self.run_batched(load, mail_id)

    async def list_mails(self, query: MailQuery) -> list[MailSummary]:
        return await self.run(listing, query)

    async def transition(
        self, mail_id: str, status: Status, at: float, reason: str | None = None
    ) -> Transition | None:
        if not self.dialect.holds_id(mail_id):
            return None
        return await self.run(move_one, mail_id, status, at, reason)

    async def unfinished(self) -> list[Pending]:
        return await self.run(unfinished)

    async def backlog(self) -> int:
        return await self.run(backlog)

    async def retry(self, mail_id: str, at: float) -> Transition | None:
        if not self.dialect.holds_id(mail_id):
            return None
        return await self.run(retry, mail_id, at)

    async def release_scheduled(self, now: float, limit: int = 500) -> list[str]:
        return await self.run(release, now, limit)

"""Status callbacks: queued with every status move of a mail that has a callback URL,
claimed and sent by ``actors.callbacks``.

A mail with a callback URL carries ``callback_status``, the status its last
callback was queued for. Every operation that moves mails ends with ``queue``
over the mails it touched: for those whose status differs, a callback is
queued and ``callback_status`` catches up. So each committed status change
queues one callback, in its own transaction, whichever actor made it. (Not a
trigger: MySQL with binary logging, its default, lets only SUPER users create
triggers, unless log_bin_trust_function_creators is set.)
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from mailman.core.model import Status

from .dialect import Dialect, chunks, in_lists
from .operation import Engine, Statement, Steps, write


@dataclass(frozen=True, slots=True)
class CallbackDue:
    """A status callback claimed for sending (``actors.callbacks``)."""

    id: int
    mail_id: str
    url: str
    #: The status the mail moved to, when (its ``updated_at``), and the mail's
    #: provider and reason as they were then.
    status: Status
    at: float
    provider: str | None
    reason: str | None
    #: When the callback was queued (its retry window starts then).
    created_at: float
    #: Tries so far, this one included.
    attempts: int
    #: What went wrong the last time, if it was tried before.
    last_error: str | None = None
    #: None: a status callback; else the event it tells of (``{"event": "unsubscribed",
    #: "address": ..., "group": ...}``), posted instead of the status.
    event: dict[str, Any] | None = None


class Callbacks(abc.ABC):
    """The status callbacks waiting to be sent. Every status move of a mail with a
    ``callback_url`` queues one, in the transaction that makes it."""

    @abc.abstractmethod
    async def claim_callbacks(
        self, owner: str, limit: int, lease_seconds: float, now: float
    ) -> list[CallbackDue]:
        """Lease up to ``limit`` due callbacks to ``owner`` until ``now + lease_seconds``.

        Due: not done, ``next_at`` reached, no live lease, and no earlier callback of
        the same mail still open (a mail's callbacks go out one at a time, in order).
        Each claim counts as a try. Oldest due first; several notifiers never get the
        same callback while its lease holds.
        """

    @abc.abstractmethod
    async def callback_done(self, callback_id: int, at: float) -> None:
        """The receiver took the callback: it is done."""

    @abc.abstractmethod
    async def callback_failed(self, callback_id: int, error: str, next_at: float) -> None:
        """The try failed: keep ``error``, release the lease, try again at ``next_at``."""

    @abc.abstractmethod
    async def callback_gave_up(self, callback_id: int, error: str, at: float) -> None:
        """The retry window ran out: done, unsent, with ``error``."""


# --- SQL ---------------------------------------------------------------------------------

#: The columns ``callback_from_row`` reads (``callbacks AS c``), in its order.
CALLBACK_COLUMNS = (
    "c.id, c.mail_id, c.url, c.status, c.at, c.provider, c.reason, c.created_at, c.attempts, "
    "c.last_error, c.event"
)


@functools.lru_cache(maxsize=1024)
def _changes(d: Dialect, count: int) -> str:
    """Of these mails, those with a callback URL whose status moved since their last
    callback was queued (on MySQL locked: the transaction holds them already)."""
    return (
        f"SELECT id FROM mails WHERE id IN ({d.marks(count)}) "
        f"AND callback_status IS NOT NULL AND callback_status <> status ORDER BY id"
        f"{d.row_lock}"
    )


@functools.lru_cache(maxsize=1024)
def _insert(d: Dialect, count: int) -> str:
    """A callback for the current status of each of these mails (parameters: now, ids)."""
    return (
        "INSERT INTO callbacks "
        "(mail_id, url, status, at, provider, reason, created_at, next_at) "
        f"SELECT id, callback_url, status, updated_at, provider, reason, {d.mark}, "
        f"{d.mark} FROM mails WHERE id IN ({d.marks(count)}) ORDER BY id"
    )


@functools.lru_cache(maxsize=1024)
def _caught_up(d: Dialect, count: int) -> str:
    return f"UPDATE mails SET callback_status = status WHERE id IN ({d.marks(count)})"


@functools.cache
def _claimable(d: Dialect) -> str:
    """Due callbacks, none behind an open one of its mail (parameters: now, now, limit)."""
    m = d.mark
    return f"""
        SELECT {CALLBACK_COLUMNS} FROM callbacks AS c
        WHERE c.done_at IS NULL AND c.next_at <= {m}
          AND (c.leased_until IS NULL OR c.leased_until < {m})
          AND NOT EXISTS (
              SELECT 1 FROM callbacks AS p
              WHERE p.mail_id = c.mail_id AND p.done_at IS NULL AND p.id < c.id
          )
        ORDER BY c.next_at, c.id
        LIMIT {m}{d.claim_lock}
    """


@functools.lru_cache(maxsize=1024)
def _lease(d: Dialect, count: int) -> str:
    """Parameters: owner, leased until, ids. A claim counts as a try."""
    m = d.mark
    return (
        f"UPDATE callbacks SET leased_by = {m}, leased_until = {m}, attempts = attempts + 1 "
        f"WHERE id IN ({d.marks(count)})"
    )


@functools.cache
def _done(d: Dialect) -> str:
    """Parameters: at, id."""
    return (
        f"UPDATE callbacks SET done_at = {d.mark}, outcome = 'delivered', "
        "leased_by = NULL, leased_until = NULL "
        f"WHERE id = {d.mark} AND done_at IS NULL"
    )


@functools.cache
def _failed(d: Dialect) -> str:
    """Parameters: error, next at, id."""
    m = d.mark
    return (
        f"UPDATE callbacks SET last_error = {m}, next_at = {m}, "
        "leased_by = NULL, leased_until = NULL "
        f"WHERE id = {m} AND done_at IS NULL"
    )


@functools.cache
def _gave_up(d: Dialect) -> str:
    """Parameters: at, error, id."""
    m = d.mark
    return (
        f"UPDATE callbacks SET done_at = {m}, outcome = 'gave-up', last_error = {m}, "
        "leased_by = NULL, leased_until = NULL "
        f"WHERE id = {m} AND done_at IS NULL"
    )


def callback_from_row(row: Sequence[Any]) -> CallbackDue:
    """A claimed callback from a row of ``CALLBACK_COLUMNS`` (read before its claim's try)."""
    callback_id, mail_id, url, status, at, provider, reason, created_at, attempts, error, event = (
        row
    )
    return CallbackDue(
        id=int(callback_id),
        mail_id=mail_id,
        url=url,
        status=Status(status),
        at=float(at),
        provider=provider,
        reason=reason,
        created_at=float(created_at),
        attempts=int(attempts) + 1,
        last_error=error,
        event=None if event is None else orjson.loads(event),
    )


# --- operations ----------------------------------------------------------------------------


def queue(d: Dialect, mail_ids: Sequence[str]) -> Steps[None]:
    """Queue a callback for each of these mails whose status moved since its last one;
    the caller's transaction moved (and on MySQL locked) them. Every operation that
    moves mails ends with this."""
    changed: list[str] = []
    for chunk in in_lists(d, sorted(set(mail_ids))):
        cur = yield Statement(_changes(d, len(chunk)), chunk)
        changed.extend(row[0] for row in cur.fetchall())
    if not changed:
        return
    now = time.time()
    for chunk in chunks(changed):
        yield Statement(_insert(d, len(chunk)), (now, now, *chunk))
        yield Statement(_caught_up(d, len(chunk)), chunk)


@functools.cache
def _insert_event(d: Dialect) -> str:
    """A callback telling of an event of a mail, if it has a callback URL (parameters:
    at, now, now, event, mail id)."""
    m = d.mark
    return (
        "INSERT INTO callbacks "
        "(mail_id, url, status, at, provider, reason, created_at, next_at, event) "
        f"SELECT id, callback_url, status, {m}, NULL, NULL, {m}, {m}, {m} FROM mails "
        f"WHERE id = {m} AND callback_url IS NOT NULL"
    )


def queue_event(d: Dialect, mail_id: str, event: dict[str, Any], at: float) -> Steps[bool]:
    """Queue a callback telling ``mail_id``'s callback URL of ``event`` (a step of the
    operation that made it); whether the mail has a URL to tell."""
    now = time.time()
    params = (at, now, now, orjson.dumps(event).decode(), mail_id)
    return (yield Statement(_insert_event(d), params)).rowcount == 1


@write
def claim(
    d: Dialect, owner: str, limit: int, lease_seconds: float, now: float
) -> Steps[list[CallbackDue]]:
    """SQLite: the writer's ``BEGIN IMMEDIATE`` holds the file's write lock from before the
    SELECT. MySQL: ``FOR UPDATE SKIP LOCKED``, as the outbox's claim: a callback another
    notifier is claiming is passed over, and once it commits, its lease keeps the
    callback out of the WHERE."""
    cur = yield Statement(_claimable(d), (now, now, limit))
    claimed = [callback_from_row(r) for r in cur.fetchall()]
    if claimed:
        ids = [c.id for c in claimed]
        yield Statement(_lease(d, len(ids)), (owner, now + lease_seconds, *ids))
    return claimed


@write
def done(d: Dialect, callback_id: int, at: float) -> Steps[None]:
    yield Statement(_done(d), (at, callback_id))


@write
def failed(d: Dialect, callback_id: int, error: str, next_at: float) -> Steps[None]:
    yield Statement(_failed(d), (error, next_at, callback_id))


@write
def gave_up(d: Dialect, callback_id: int, error: str, at: float) -> Steps[None]:
    yield Statement(_gave_up(d), (at, error, callback_id))


class SqlCallbacks(Callbacks, Engine):
    """``Callbacks`` on a driver."""

    async def claim_callbacks(
        self, owner: str, limit: int, lease_seconds: float, now: float
    ) -> list[CallbackDue]:
        if limit <= 0:
            return []
        return await self.run(claim, owner, limit, lease_seconds, now)

    async def callback_done(self, callback_id: int, at: float) -> None:
        await self.run(done, callback_id, at)

    async def callback_failed(self, callback_id: int, error: str, next_at: float) -> None:
        await self.run(failed, callback_id, error, next_at)

    async def callback_gave_up(self, callback_id: int, error: str, at: float) -> None:
        await self.run(gave_up, callback_id, error, at)

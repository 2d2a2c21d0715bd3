"""The transactional outbox: a committed mail's entry until the relay handed it to the
first sender mailbox; and the ways a mail nothing handles any more gets a new entry
(the sweeper, a restart of an in-memory deployment)."""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from mailman.core.model import Outcome, Status
from mailman.core.records import fast_init

from . import attempts, callbacks, moves, summary
from .dialect import Dialect, chunks, in_lists, padded, unindexed
from .moves import UNFINISHED
from .operation import Engine, Statement, Steps, write


@fast_init
@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A committed mail not yet handed to the first sender mailbox (transactional outbox)."""

    id: int
    mail_id: str
    accepted_at: float
    #: The round the mail starts in (0; more for a failed mail sent again).
    round: int = 0
    #: The provider chain the mail was accepted with, as written; None: the deployment's.
    providers: str | None = None


class Outbox(abc.ABC):
    """The outbox (the relay actor) and the mails that need a new entry."""

    @abc.abstractmethod
    async def claim_outbox(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        now: float,
        done: Sequence[int] = (),
    ) -> list[OutboxEntry]:
        """Lease up to ``limit`` outbox entries to ``owner`` until ``now + lease_seconds``.

        Only entries not leased, or whose lease ran out (a relay that died),
        are claimed, oldest first; several relays may claim at once and never
        get the same entry while its lease holds. The claimed entries' mails
        that are still ``queued`` become ``sending`` (they are on their way to
        a sender). ``done``: entries this owner published since its last
        claim, removed in the same transaction (one trip instead of two).
        """

    @abc.abstractmethod
    async def published(self, ids: Sequence[int]) -> None:
        """Remove outbox entries that were handed to the mailbox."""

    @abc.abstractmethod
    async def requeue_unfinished(self) -> int:
        """Give every ``queued``/``sending`` mail without an outbox entry a new one.

        Used at start by the one process of an in-memory deployment, whose
        mailboxes (and relay) died with the last run: it also releases every
        lease, so entries claimed by that relay are published again at once,
        and turns every ``pending`` attempt ``unknown`` (its call died with
        that run). Returns how many entries were made.
        """

    @abc.abstractmethod
    async def sweep(self, now: float, stale_before: float, limit: int = 500) -> list[str]:
        """Pick up mails that nothing is handling any more; the ids picked up.

        ``pending`` attempts started before ``stale_before`` become ``unknown``;
        mails ``sending``, due before ``stale_before``, with no pending attempt
        and no outbox entry get a new outbox entry (the relay dispatches them
        again) and are due ``now``. One transaction, at most ``limit`` mails.
        """


# --- SQL ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def entries(d: Dialect, count: int) -> str:
    """New entries (parameters: mail id, accepted at; per entry)."""
    return f"INSERT INTO outbox (mail_id, accepted_at) VALUES {d.rows(count, 2)}"


@functools.lru_cache(maxsize=1024)
def rounds(d: Dialect, count: int) -> str:
    """New entries for a round (parameters: mail id, accepted at, round; per entry)."""
    return f"INSERT INTO outbox (mail_id, accepted_at, round) VALUES {d.rows(count, 3)}"


@functools.lru_cache(maxsize=1024)
def _own_chains(d: Dialect, count: int) -> str:
    """The chains of these mails that have their own (a tenant's)."""
    return (
        f"SELECT id, providers FROM mails WHERE id IN ({d.marks(count)}) AND providers IS NOT NULL"
    )


@functools.cache
def _claimable(d: Dialect) -> str:
    """The next entries free to claim, oldest first. MySQL reads them in the primary key's
    order, stopping at the limit. Left to choose, MariaDB 10.11 read them by the lease
    index and sorted them, and claimers running meanwhile, skipping locked rows, often
    found none while 238 of 240 entries were free (``test_concurrent_claims_never_share_
    an_entry``: 7 claimers of 8 got nothing in 3 runs of 8; none in 30 runs since)."""
    m = d.mark
    return (
        f"SELECT id, mail_id, accepted_at, round FROM outbox{d.claim_index} "
        f"WHERE leased_until IS NULL OR leased_until < {m} ORDER BY id LIMIT {m}"
        f"{d.claim_lock}"
    )


@functools.lru_cache(maxsize=1024)
def _lease(d: Dialect, count: int) -> str:
    m = d.mark
    return f"UPDATE outbox SET leased_by = {m}, leased_until = {m} WHERE id IN ({d.marks(count)})"


@functools.lru_cache(maxsize=1024)
def _sending(d: Dialect, count: int) -> str:
    """Claimed mails still ``queued`` become ``sending`` (handed to the senders)."""
    return (
        f"UPDATE mails{d.by_key} SET status = '{Status.SENDING.value}', updated_at = {d.mark}, "
        f"due_at = {d.mark} "
        f"WHERE id IN ({d.marks(count)}) AND {unindexed('status')} = '{Status.QUEUED.value}'"
    )


@functools.lru_cache(maxsize=1024)
def _delete(d: Dialect, count: int) -> str:
    return f"DELETE FROM outbox WHERE id IN ({d.marks(count)})"


@functools.cache
def _requeue(d: Dialect) -> str:
    return f"""
        INSERT INTO outbox (mail_id, accepted_at)
        SELECT m.id, m.created_at
        FROM mails AS m
        WHERE m.status IN ({d.marks(len(UNFINISHED))})
          AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.mail_id = m.id)
        ORDER BY m.created_at, m.id
    """


_RELEASE_LEASES = "UPDATE outbox SET leased_by = NULL, leased_until = NULL"


@functools.cache
def _forgotten(d: Dialect) -> str:
    """Mails ``sending``, due before a time, with no pending attempt and no outbox entry:
    id, created_at and the round they are in (parameters: before, limit)."""
    m = d.mark
    return f"""
        SELECT m.id, m.created_at,
               (SELECT COALESCE(MAX(a.round), 0) FROM attempts AS a WHERE a.mail_id = m.id)
        FROM mails AS m
        WHERE m.status = '{Status.SENDING.value}' AND COALESCE(m.due_at, m.updated_at) < {m}
          AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.mail_id = m.id)
          AND NOT EXISTS (
              SELECT 1 FROM attempts AS a
              WHERE a.mail_id = m.id AND a.outcome = '{Outcome.PENDING.value}'
          )
        ORDER BY m.created_at
        LIMIT {m}
    """


@functools.lru_cache(maxsize=1024)
def _due_now(d: Dialect, count: int) -> str:
    return f"UPDATE mails SET due_at = {d.mark} WHERE id IN ({d.marks(count)})"


def entry_from_row(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(id=row[0], mail_id=row[1], accepted_at=row[2], round=int(row[3]))


# --- operations ----------------------------------------------------------------------------


@write
def claim(
    d: Dialect, owner: str, limit: int, lease_seconds: float, now: float, done: tuple[int, ...]
) -> Steps[list[OutboxEntry]]:
    """Remove the owner's published entries, lease the next ones, mark their mails sending.

    SQLite: the writer's ``BEGIN IMMEDIATE`` holds the file's write lock from before
    the SELECT, so no other process claims between our SELECT and UPDATE. MySQL:
    ``FOR UPDATE`` reads the latest committed leases and locks the rows it returns
    until COMMIT; ``SKIP LOCKED`` passes over rows another claimer holds. After that
    claimer commits, those rows carry its lease and no longer match. So no entry is
    handed out twice while a lease holds, whatever the number of processes.
    """
    for chunk in in_lists(d, done):
        yield Statement(_delete(d, len(chunk)), chunk)
    if limit <= 0:
        return []
    cur = yield Statement(_claimable(d), (now, limit))
    claimed = [entry_from_row(r) for r in cur.fetchall()]
    if not claimed:
        return []
    ids = padded(d, [e.id for e in claimed])
    yield Statement(_lease(d, len(ids)), (owner, now + lease_seconds, *ids))
    # Mail rows in id order, like every other locking statement.
    mail_ids = sorted(e.mail_id for e in claimed)
    before = yield from summary.look(d, mail_ids)
    listed = padded(d, mail_ids)
    yield Statement(_sending(d, len(listed)), (now, now, *listed))
    yield from callbacks.queue(d, mail_ids)
    # Queued ones became sending (the statuses read are those the UPDATE saw).
    queued = sum(1 for s in before.mails.values() if s is Status.QUEUED)
    yield from summary.bump(d, summary.moved(Status.QUEUED, Status.SENDING, queued))
    chains = yield from _chains(d, mail_ids)
    if not chains:
        return claimed
    return [replace(e, providers=chains.get(e.mail_id)) for e in claimed]


def _chains(d: Dialect, mail_ids: Sequence[str]) -> Steps[dict[str, str]]:
    """The chains these mails were accepted with, where they have their own."""
    found: dict[str, str] = {}
    for chunk in in_lists(d, mail_ids):
        cur = yield Statement(_own_chains(d, len(chunk)), chunk)
        found.update((str(mail_id), str(chain)) for mail_id, chain in cur.fetchall())
    return found


@write
def remove(d: Dialect, ids: tuple[int, ...]) -> Steps[None]:
    for chunk in chunks(ids):
        yield Statement(_delete(d, len(chunk)), chunk)


@write
def requeue(d: Dialect) -> Steps[int]:
    # The process whose calls these were is gone: their answers are unknown.
    deltas = yield from attempts.go_stale(d, attempts.FOREVER)
    made = (yield Statement(_requeue(d), UNFINISHED)).rowcount
    yield Statement(_RELEASE_LEASES)
    yield from summary.bump(d, deltas)
    return max(made, 0)


@write
def sweep(d: Dialect, now: float, stale_before: float, limit: int) -> Steps[list[str]]:
    deltas = yield from attempts.go_stale(d, stale_before)
    rows = list((yield Statement(_forgotten(d), (stale_before, limit))).fetchall())
    if not rows:
        yield from summary.bump(d, deltas)  # last: figures rows are locked after the rest
        return []
    ids = sorted(r[0] for r in rows)
    yield from moves.lock(d, ids)
    for chunk in chunks(rows):
        yield Statement(rounds(d, len(chunk)), [v for r in chunk for v in r])
    for chunk in chunks(ids):
        yield Statement(_due_now(d, len(chunk)), (now, *chunk))
    yield from summary.bump(d, deltas)
    return [r[0] for r in rows]


class SqlOutbox(Outbox, Engine):
    """``Outbox`` on a driver."""

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
        return await self.run(claim, owner, limit, lease_seconds, now, tuple(done))

    async def published(self, ids: Sequence[int]) -> None:
        if ids:
            await self.run(remove, tuple(ids))

    async def requeue_unfinished(self) -> int:
        return await self.run(requeue)

    async def sweep(self, now: float, stale_before: float, limit: int = 500) -> list[str]:
        return await self.run(sweep, now, stale_before, limit)

"""Delivery events: what providers report after taking a mail (their webhooks), kept in
the mail's history; a delivery or a bounce moves the mail on, and a hard bounce, a
complaint or an unsubscribe suppresses its recipient (``store.suppressions``)."""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from mailman.core.model import Check, DeliveryEvent, EventKind, Outcome, Status
from mailman.core.suppression import MAX_ADDRESS, normalise

from . import attempts, callbacks, moves, summary, suppressions
from .dialect import Dialect, chunks
from .operation import Engine, Statement, Steps, read, write


class EventResult(StrEnum):
    """What ``record_events`` did with one event."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"  # the provider sent it before: kept once
    UNKNOWN_MAIL = "unknown-mail"  # no such mail here: not kept


class Events(abc.ABC):
    """Provider events about mails."""

    @abc.abstractmethod
    async def record_events(self, events: Sequence[DeliveryEvent]) -> list[EventResult]:
        """Keep provider events in their mails' histories, in one transaction.

        An event whose (provider, dedupe) is already kept is a duplicate; one for
        a mail this store does not have is not kept. A new event that moves its
        mail (``DeliveryEvent.moves_to``) makes a guarded move, so events that
        arrive out of order never move a mail backwards.
        """

    @abc.abstractmethod
    async def mail_for_message(self, provider_message_id: str) -> str | None:
        """The id of the mail a provider accepted under ``provider_message_id``, if any."""


# --- SQL ---------------------------------------------------------------------------------

#: An event's columns, in ``event_values`` and ``event_from_row`` order.
EVENT_COLUMNS = "mail_id, provider, kind, at, dedupe, bounce, reason, recipient"


@functools.cache
def history(d: Dialect) -> str:
    """A mail's events, oldest first (parameter: mail id)."""
    return f"SELECT {EVENT_COLUMNS} FROM events WHERE mail_id = {d.mark} ORDER BY at, id"


@functools.cache
def _insert(d: Dialect) -> str:
    return d.insert_once("events", EVENT_COLUMNS, d.rows(1, 8), key="id")


@functools.cache
def _mail_for_message(d: Dialect) -> str:
    """The mail a provider message id names, found by its attempts: an id a mail is
    given is always one of its attempts' too (``attempts.named``,
    ``attempts.carry_message_ids``), and an attempt keeps the id of every provider that
    took the mail (a mail sent twice, once its lost answer was checked), the mail only
    the last. Its index is the only one kept of the two there were (``mails`` had one
    too): a provider's ids are random, so each new one is a page of its own written at
    every commit (migration 16)."""
    return f"SELECT mail_id FROM attempts WHERE message_id = {d.mark} LIMIT 1"


@functools.cache
def _forget_if_purged(d: Dialect, count: int) -> str:
    """Recipients of events of purged mails, forgotten: an event that comes after the
    purge (a late bounce, an open) must not bring an address back."""
    return (
        f"UPDATE events SET recipient = NULL WHERE mail_id IN ({d.marks(count)}) "
        "AND recipient IS NOT NULL AND EXISTS (SELECT 1 FROM mails "
        "WHERE mails.id = events.mail_id AND mails.purged_at IS NOT NULL)"
    )


@functools.lru_cache(maxsize=1024)
def _tenants(d: Dialect, count: int) -> str:
    return f"SELECT id, tenant FROM mails WHERE id IN ({d.marks(count)})"


def suppress(d: Dialect, events: Sequence[DeliveryEvent]) -> Steps[None]:
    """Each event that suppresses its recipient (``DeliveryEvent.suppresses``: a hard
    bounce, a complaint, an unsubscribe) puts the address on its mail's tenant's list,
    for every mail, unless it is there already; the provider is its source."""
    named = [
        e
        for e in events
        if e.suppresses is not None
        and e.recipient
        and 0 < len(normalise(e.recipient)) <= MAX_ADDRESS
    ]
    if not named:
        return
    tenants: dict[str, str] = {}
    for chunk in chunks(sorted({e.mail_id for e in named})):
        cur = yield Statement(_tenants(d, len(chunk)), chunk)
        tenants.update((str(mail_id), str(tenant)) for mail_id, tenant in cur.fetchall())
    for e in named:
        assert e.suppresses is not None and e.recipient is not None
        found = suppressions.Suppression(
            tenant=tenants[e.mail_id],
            address=normalise(e.recipient),
            reason=e.suppresses,
            source=e.provider,
            created_at=e.at,
        )
        yield Statement(suppressions.insert(d), suppressions.suppression_values(found))


def event_values(event: DeliveryEvent) -> tuple[object, ...]:
    """An event's row, in ``EVENT_COLUMNS`` order."""
    return (
        event.mail_id,
        event.provider,
        event.kind.value,
        event.at,
        event.dedupe,
        event.bounce,
        event.reason,
        event.recipient,
    )


@functools.cache
def _taken(d: Dialect) -> str:
    """A mail's ``unknown`` attempts with a provider, not checked yet, are ``taken``: the
    provider's own event says it has the mail (parameters: message id, mail id, provider)."""
    m = d.mark
    return (
        f"UPDATE attempts SET checked = '{Check.TAKEN.value}', "
        f"message_id = COALESCE(message_id, {m}) "
        f"WHERE mail_id = {m} AND provider = {m} AND outcome = '{Outcome.UNKNOWN.value}' "
        "AND checked IS NULL"
    )


def event_move_values(event: DeliveryEvent, status: Status) -> tuple[object, ...]:
    """Parameters of ``moves.move`` for the move an event makes (a bounce keeps its reason,
    a ``processed`` its provider's message id)."""
    reason = event.reason if status is Status.BOUNCED else None
    message_id = event.message_id if event.kind is EventKind.PROCESSED else None
    return (status.value, event.at, event.provider, message_id, reason, event.at, event.mail_id)


def event_from_row(row: Sequence[Any]) -> DeliveryEvent:
    mail_id, provider, kind, at, dedupe, bounce, reason, recipient = row
    return DeliveryEvent(mail_id, provider, EventKind(kind), at, dedupe, bounce, reason, recipient)


# --- operations ----------------------------------------------------------------------------


@write
def record(d: Dialect, events: tuple[DeliveryEvent, ...]) -> Steps[list[EventResult]]:
    """The events' mails are read first (on MySQL locked, in id order), and again at the
    end: the figures gain the moves made."""
    processed = sorted(
        {e.mail_id for e in events if e.kind is EventKind.PROCESSED and d.holds_id(e.mail_id)}
    )
    before = yield from summary.look(
        d, (e.mail_id for e in events if d.holds_id(e.mail_id)), of=processed
    )
    known = before.mails
    results: list[EventResult] = []
    for event in events:
        if event.mail_id not in known:
            results.append(EventResult.UNKNOWN_MAIL)
            continue
        if (yield Statement(_insert(d), event_values(event))).rowcount != 1:
            results.append(EventResult.DUPLICATE)
            continue
        results.append(EventResult.RECORDED)
        status = event.moves_to
        if status is not None:
            yield Statement(moves.move(d, status), event_move_values(event, status))
        if event.kind is EventKind.PROCESSED:
            yield Statement(_taken(d), (event.message_id, event.mail_id, event.provider))
            if event.message_id is not None:
                named = [(event.mail_id, event.provider, event.message_id)]
                yield from attempts.carry_message_ids(d, named)
    yield from suppress(
        d, [e for e, r in zip(events, results, strict=True) if r is EventResult.RECORDED]
    )
    addressed = sorted({e.mail_id for e in events if e.mail_id in known and e.recipient})
    if addressed:
        yield Statement(_forget_if_purged(d, len(addressed)), addressed)
    moved = [e.mail_id for e in events if e.mail_id in known and e.moves_to is not None]
    yield from callbacks.queue(d, moved)
    if moved:
        yield from summary.settle(d, before, of=processed)
    return results


@read
def mail_for(d: Dialect, provider_message_id: str) -> Steps[str | None]:
    row = (yield Statement(_mail_for_message(d), (provider_message_id,))).fetchone()
    return None if row is None else str(row[0])


class SqlEvents(Events, Engine):
    """``Events`` on a driver."""

    #: ``Suppressions.suppressions_added`` (the store object is both).
    suppressions_added: int

    async def record_events(self, events: Sequence[DeliveryEvent]) -> list[EventResult]:
        if not events:
            return []
        try:
            return await self.run(record, tuple(events))
        finally:
            if any(e.suppresses is not None for e in events):
                self.suppressions_added += 1

    async def mail_for_message(self, provider_message_id: str) -> str | None:
        return await self.run(mail_for, provider_message_id)

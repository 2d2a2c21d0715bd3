"""Attempts: each try of a mail with a provider, recorded ``pending`` before the call
(``begin_attempt``) and finished with its outcome after it (``apply``), which also
records the status moves the senders report."""

from __future__ import annotations

import abc
import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from mailman.core.messages import StatusUpdate, decode, encode
from mailman.core.model import ALLOWED_FROM, Attempt, Check, Mail, Outcome, Status
from mailman.core.records import fast_init
from mailman.core.suppression import drop, recipients

from . import callbacks, moves, payloads, summary, suppressions
from .dialect import Dialect, chunks, in_lists, unindexed
from .moves import MOVE_ORDER
from .operation import Engine, Statement, Steps, write, write_batch


@fast_init
@dataclass(frozen=True, slots=True)
class Begun:
    """What ``begin_attempt`` found and did.

    ``attempt_id`` is set when an attempt was recorded as ``pending`` (the
    caller may now call the provider). Otherwise ``why`` says what stopped it:
    ``final`` (the mail is ``sent`` or ``failed``), ``busy`` (another attempt
    is in flight and not stale), ``unchecked`` (``unknown`` attempts wait to
    be checked with their providers first: ``unknown`` holds them) or
    ``scheduled`` (its ``send_at`` has not come: the sweeper releases it) or
    ``suppressed`` (every visible recipient is suppressed: the mail is now ``suppressed``).
    ``mail`` is without the recipients suppressed (``Mail.suppressed`` names them).
    """

    mail: Mail
    status: Status
    attempt_id: int | None = None
    why: str | None = None
    unknown: tuple[Attempt, ...] = ()


class Attempts(abc.ABC):
    """Attempts and the status moves the senders report."""

    @abc.abstractmethod
    async def begin_attempt(
        self, mail_id: str, provider: str, round_: int, at: float, stale_before: float
    ) -> Begun | None:
        """Record an attempt with ``provider`` as ``pending`` before the call, if it may be made.

        One transaction. ``pending`` attempts of the mail that started before
        ``stale_before`` become ``unknown`` (their call outlived its process or
        its time). No attempt is recorded if the mail is final, another attempt
        is still pending, or ``unknown`` attempts are not checked yet (see
        ``Begun``). Recipients the tenant suppresses are dropped from the mail first; one
        left with no visible recipient ends ``suppressed``, no attempt recorded.
        Otherwise the mail is ``sending`` (a ``queued`` one moved, due now; one already
        ``sending`` left as it was). None if unknown.
        """

    @abc.abstractmethod
    async def apply(self, updates: Sequence[StatusUpdate]) -> None:
        """Record attempts and guarded status moves, all in one transaction.

        A move not allowed by ``ALLOWED_FROM`` is skipped (never an error); an
        attempt already recorded is not recorded twice. Updates for unknown
        mails are ignored. The moves are made in ``MOVE_ORDER``, so a ``sending``
        and a ``sent`` for one mail in the same call end ``sent``.
        """


#: Why a ``pending`` attempt became ``unknown``.
STALE_REASON = "no answer recorded: the call outlived its process or its time"
#: A time after every attempt (both databases bind it; infinity MySQL cannot).
FOREVER = 1e18

# --- SQL ---------------------------------------------------------------------------------

#: The columns ``attempt_from_row`` reads, in its order.
ATTEMPT_COLUMNS = "provider, round, at, outcome, reason, message_id, id, checked"


@functools.cache
def history(d: Dialect) -> str:
    """A mail's attempts, oldest first (parameter: mail id)."""
    return f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE mail_id = {d.mark} ORDER BY at, id"


@functools.cache
def next_round(d: Dialect) -> str:
    """The round after a mail's last attempt (parameter: mail id)."""
    return f"SELECT COALESCE(MAX(round), -1) + 1 FROM attempts WHERE mail_id = {d.mark}"


@functools.cache
def _insert(d: Dialect) -> str:
    """Records an attempt once (a replayed update finds it there)."""
    return d.insert_once(
        "attempts",
        "mail_id, provider, round, at, outcome, reason, message_id",
        d.rows(1, 7),
        key="id",
    )


@functools.cache
def _finish(d: Dialect) -> str:
    """An attempt recorded before its call gets its outcome (parameters: ``finish_values``)."""
    m = d.mark
    return (
        f"UPDATE attempts SET outcome = {m}, reason = {m}, "
        f"message_id = COALESCE({m}, message_id), checked = COALESCE({m}, checked) "
        f"WHERE id = {m} AND mail_id = {m}"
    )


@functools.lru_cache(maxsize=1024)
def _stale_of(d: Dialect, count: int) -> str:
    """Pending attempts that went stale become unknown (parameters: reason, ids)."""
    return (
        f"UPDATE attempts{d.by_key} SET outcome = '{Outcome.UNKNOWN.value}', reason = {d.mark} "
        f"WHERE id IN ({d.marks(count)}) AND {unindexed('outcome')} = '{Outcome.PENDING.value}'"
    )


@functools.cache
def _stale(d: Dialect) -> str:
    """Pending attempts started before a time (parameter: before), from the
    ``(outcome, at)`` index; on MySQL locked, as the UPDATE that follows would."""
    return (
        f"SELECT id, provider FROM attempts WHERE outcome = '{Outcome.PENDING.value}' "
        f"AND at < {d.mark} ORDER BY id{d.row_lock}"
    )


@functools.cache
def _mail(d: Dialect) -> str:
    """The mail and its status (on MySQL locked: two begins for one mail take turns)."""
    return f"SELECT payload, status FROM mails WHERE id = {d.mark}{d.row_lock}"


#: An attempt still open: in flight (pending), or its outcome lost and not yet checked.
_IS_OPEN = (
    f"(outcome = '{Outcome.PENDING.value}' "
    f"OR (outcome = '{Outcome.UNKNOWN.value}' AND checked IS NULL))"
)
#: A mail's attempts are read by ``attempts_once`` (its first column is the mail's id),
#: not by ``attempts_by_outcome``: either planner took that one for an outcome beside
#: the mails' ids, reading every pending (and unknown) attempt of every mail.
BY_MAIL = "attempts_once"


@functools.cache
def _open(d: Dialect) -> str:
    """A mail's attempts still in flight (pending) or not yet checked (unknown)."""
    return (
        f"SELECT {ATTEMPT_COLUMNS} FROM attempts{d.force_index(BY_MAIL)} "
        f"WHERE mail_id = {d.mark} AND {_IS_OPEN} ORDER BY at, id"
    )


@functools.lru_cache(maxsize=1024)
def _open_of(d: Dialect, count: int) -> str:
    """Which of these mails have attempts in flight or not yet checked (as ``_open``)."""
    return (
        f"SELECT DISTINCT mail_id FROM attempts{d.force_index(BY_MAIL)} "
        f"WHERE mail_id IN ({d.marks(count)}) AND {_IS_OPEN}"
    )


@functools.lru_cache(maxsize=1024)
def _pending_of(d: Dialect, count: int) -> str:
    """The pending attempts of these mails: (mail id, attempt id)."""
    return (
        f"SELECT mail_id, id FROM attempts{d.force_index(BY_MAIL)} "
        f"WHERE mail_id IN ({d.marks(count)}) AND outcome = '{Outcome.PENDING.value}'"
    )


@functools.cache
def _insert_pending(d: Dialect) -> str:
    return (
        "INSERT INTO attempts (mail_id, provider, round, at, outcome) "
        f"VALUES ({d.marks(4)}, '{Outcome.PENDING.value}')"
    )


@functools.cache
def _sending(d: Dialect) -> str:
    """A ``queued`` mail becomes ``sending``, due now (parameters: at, at, mail id).

    One already ``sending`` (the relay's claim made it so, or it is on a retry) is left
    as it is: its ``updated_at`` stays when its status changed, and while its attempt is
    pending the sweeper passes it by whatever its ``due_at``. Rewriting its row (and
    four indexes) for its times alone cost the writer 15 µs per mail.
    """
    m = d.mark
    return (
        f"UPDATE mails SET status = '{Status.SENDING.value}', updated_at = {m}, due_at = {m} "
        f"WHERE id = {m} AND status = '{Status.QUEUED.value}'"
    )


def attempt_values(update: StatusUpdate, attempt: Attempt) -> tuple[object, ...]:
    """Parameters of ``_insert`` for ``update``'s new ``attempt``: its message id, or
    the one the update records for the mail (``named``)."""
    return (
        update.mail_id,
        attempt.provider,
        attempt.round,
        attempt.at,
        attempt.outcome.value,
        attempt.reason,
        named(update, attempt),
    )


def finish_values(update: StatusUpdate, attempt: Attempt) -> tuple[object, ...]:
    """Parameters of ``_finish`` for ``update``'s ``attempt`` (its ``id`` is set)."""
    return (
        attempt.outcome.value,
        attempt.reason,
        named(update, attempt),
        None if attempt.checked is None else attempt.checked.value,
        attempt.id,
        update.mail_id,
    )


def named(update: StatusUpdate, attempt: Attempt) -> str | None:
    """The message id ``attempt`` is recorded with: its own, else the one ``update``
    records for its mail (``provider_message_id``: the provider took the mail under it
    in this attempt). Lookups by a provider's message id read the attempts alone
    (``events.mail_for``), so an id the mail is given is always an attempt's too."""
    return attempt.message_id if attempt.message_id is not None else update.provider_message_id


@functools.cache
def _carries(d: Dialect) -> str:
    """Whether one of a mail's attempts has a message id (parameters: mail id, message id)."""
    m = d.mark
    return f"SELECT 1 FROM attempts WHERE mail_id = {m} AND message_id = {m} LIMIT 1"


@functools.cache
def _unnamed(d: Dialect) -> str:
    """A mail's newest attempt with a provider that has no message id yet (parameters:
    mail id, provider)."""
    m = d.mark
    return (
        f"SELECT MAX(id) FROM attempts "
        f"WHERE mail_id = {m} AND provider = {m} AND message_id IS NULL"
    )


@functools.cache
def _name(d: Dialect) -> str:
    """An attempt gets a message id it did not have (parameters: message id, attempt id)."""
    m = d.mark
    return f"UPDATE attempts SET message_id = {m} WHERE id = {m} AND message_id IS NULL"


def carry_message_ids(d: Dialect, ids: Sequence[tuple[str, str, str]]) -> Steps[None]:
    """Each ``(mail id, provider, message id)`` a mail was given without an attempt of
    its own (a status update with none, a provider's ``processed`` event) is made
    findable by ``events.mail_for``: unless one of the mail's attempts already has that
    id, its newest attempt with that provider that has none takes it. (A mail with no
    such attempt keeps the id on itself alone, which no lookup reads: a provider names
    a mail only after an attempt with it, and such an attempt gets its id when its
    answer is recorded.)"""
    for mail_id, provider, message_id in ids:
        if (yield Statement(_carries(d), (mail_id, message_id))).fetchone() is not None:
            continue
        row = (yield Statement(_unnamed(d), (mail_id, provider))).fetchone()
        if row is not None and row[0] is not None:
            yield Statement(_name(d), (message_id, row[0]))


def attempt_from_row(row: Sequence[Any]) -> Attempt:
    provider, round_, at, outcome, reason, message_id, attempt_id, checked = row
    return Attempt(
        provider=provider,
        round=round_,
        at=at,
        outcome=Outcome(outcome),
        reason=reason,
        message_id=message_id,
        id=int(attempt_id),
        checked=None if checked is None else Check(checked),
    )


def begin_verdict(
    mail: Mail, status: Status, open_attempts: list[Attempt], stale_before: float
) -> tuple[Begun | None, list[int]]:
    """What ``begin_attempt`` decides from a mail's open attempts (``_open``): a ``Begun``
    that refuses (None: record the attempt), and the ids of pending attempts that went
    stale (to be made ``unknown``)."""
    stale = [a for a in open_attempts if a.outcome is Outcome.PENDING and a.at < stale_before]
    if any(a.outcome is Outcome.PENDING and a.at >= stale_before for a in open_attempts):
        return Begun(mail, status, why="busy"), [a.id for a in stale if a.id is not None]
    unknown = tuple(
        replace(a, outcome=Outcome.UNKNOWN, reason=STALE_REASON) if a in stale else a
        for a in open_attempts
    )
    if unknown:
        return Begun(mail, status, why="unchecked", unknown=unknown), [
            a.id for a in stale if a.id is not None
        ]
    return None, []


def applied(before: summary.Seen, updates: Sequence[StatusUpdate]) -> summary.Seen:
    """What ``apply``'s statements leave of the mails and attempts ``before`` saw (locked,
    on MySQL; SQLite: the one writer), worked out as they run: new attempts inserted
    unless their unique key is there, finishes of the attempts there, then the moves in
    ``MOVE_ORDER``, each only from a status it is allowed from."""
    statuses = dict(before.mails)
    attempts = dict(before.attempts)
    keys = {a.key for a in attempts.values()}
    fresh = -1  # ids for the attempts inserted (unknown here, and never compared)
    for u in updates:
        a = u.attempt
        if a is not None and a.id is None and u.mail_id in statuses:
            held = summary.Held(u.mail_id, a.provider, a.round, a.at, a.outcome.value, None)
            if held.key not in keys:
                keys.add(held.key)
                attempts[fresh] = held
                fresh -= 1
    for u in updates:
        a = u.attempt
        if a is not None and a.id is not None:
            old = attempts.get(a.id)
            if old is not None and old.mail_id == u.mail_id:
                checked = old.checked if a.checked is None else a.checked.value
                attempts[a.id] = replace(old, outcome=a.outcome.value, checked=checked)
    for status, group in moves.moves_in_order(updates):
        for u in group:
            current = statuses.get(u.mail_id)
            if current is not None and current in ALLOWED_FROM[status]:
                statuses[u.mail_id] = status
    return summary.Seen(statuses, attempts)


@functools.lru_cache(maxsize=1024)
def _processed(d: Dialect, count: int) -> str:
    """The providers that reported taking these mails (``processed`` events)."""
    return (
        f"SELECT DISTINCT mail_id, provider FROM events WHERE mail_id IN ({d.marks(count)}) "
        "AND kind = 'processed'"
    )


def _reported(d: Dialect, updates: list[StatusUpdate]) -> Steps[list[StatusUpdate]]:
    """``updates``, an attempt recorded ``unknown`` (not checked) made ``checked: taken``
    when its provider already reported taking the mail: its ``processed`` event came
    before the lost answer was noticed (``store.events`` settles the later ones)."""
    lost = sorted(
        {
            u.mail_id
            for u in updates
            if u.attempt is not None
            and u.attempt.outcome is Outcome.UNKNOWN
            and u.attempt.checked is None
        }
    )
    if not lost:
        return updates
    reported: set[tuple[str, str]] = set()
    for chunk in chunks(lost):
        cur = yield Statement(_processed(d, len(chunk)), chunk)
        reported.update((str(m), str(p)) for m, p in cur.fetchall())
    if not reported:
        return updates
    return [
        replace(u, attempt=replace(u.attempt, checked=Check.TAKEN))
        if u.attempt is not None
        and u.attempt.outcome is Outcome.UNKNOWN
        and u.attempt.checked is None
        and (u.mail_id, u.attempt.provider) in reported
        else u
        for u in updates
    ]


def go_stale(d: Dialect, before: float) -> Steps[Counter[summary.Key]]:
    """Every pending attempt started before ``before`` becomes unknown; what that changes
    in the figures (the caller bumps them, last)."""
    rows = list((yield Statement(_stale(d), (before,))).fetchall())
    deltas: Counter[summary.Key] = Counter()
    for chunk in chunks(rows):
        yield Statement(_stale_of(d, len(chunk)), (STALE_REASON, *(r[0] for r in chunk)))
    for _, provider in rows:
        deltas[(summary.ATTEMPTS, str(provider), Outcome.PENDING.value)] -= 1
        deltas[(summary.ATTEMPTS, str(provider), Outcome.UNKNOWN.value)] += 1
    return deltas


def _count_begun(deltas: Counter[summary.Key], provider: str, round_: int, status: Status) -> None:
    """What a begun attempt changes in the figures: a pending attempt (a retry, past
    round 0), and the mail moved from ``status`` to ``sending``."""
    deltas[(summary.ATTEMPTS, provider, Outcome.PENDING.value)] += 1
    if round_ > 0:
        deltas[(summary.RETRIES, provider, "")] += 1
    deltas.update(summary.moved(status, Status.SENDING, 1))


# --- operations ----------------------------------------------------------------------------


@write
def begin(
    d: Dialect, mail_id: str, provider: str, round_: int, at: float, stale_before: float
) -> Steps[Begun | None]:
    """The figures gain what it changed, known exactly: the mail's status is read under
    its lock (MySQL; SQLite: the one writer), the pending attempt is new, and each stale
    one's guarded UPDATE says whether it changed it (not a concurrent sweep)."""
    row = (yield Statement(_mail(d), (mail_id,))).fetchone()
    if row is None:
        return None
    mail, status = decode(Mail, row[0]), Status(row[1])
    if status.terminal:
        return Begun(mail, status, why="final")
    if status is Status.SCHEDULED:  # not before its time (the sweeper releases it)
        return Begun(mail, status, why="scheduled")
    deltas: Counter[summary.Key] = Counter()
    cur = yield Statement(_open(d), (mail_id,))
    attempts = [attempt_from_row(r) for r in cur.fetchall()]
    if attempts:
        refused, stale_ids = begin_verdict(mail, status, attempts, stale_before)
        for attempt in attempts:
            if attempt.id in stale_ids:
                made = yield Statement(_stale_of(d, 1), (STALE_REASON, attempt.id))
                if made.rowcount == 1:
                    deltas[(summary.ATTEMPTS, attempt.provider, Outcome.PENDING.value)] -= 1
                    deltas[(summary.ATTEMPTS, attempt.provider, Outcome.UNKNOWN.value)] += 1
        if refused is not None:
            yield from summary.bump(d, deltas)
            return refused
    # Right before the call: recipients suppressed since the mail was accepted are dropped
    # (the mail rewritten); with no visible recipient left, it ends ``suppressed``.
    found = yield from suppressions.found_among(d, mail.tenant, recipients(mail), mail.group)
    if found:
        trimmed = drop(mail, found)
        deltas.update(summary.dropped(trimmed.suppressed[len(mail.suppressed) :]))
        yield Statement(suppressions.payload(d), (encode(trimmed).decode(), mail_id))
        mail = trimmed
        if not mail.visible:
            reason = suppressions.SUPPRESSED_REASON
            yield Statement(suppressions.to_suppressed(d), (at, at, reason, mail_id))
            deltas.update(summary.moved(status, Status.SUPPRESSED, 1))
            yield from callbacks.queue(d, [mail_id])
            yield from summary.bump(d, deltas)
            return Begun(mail, Status.SUPPRESSED, why="suppressed")
    cur = yield Statement(_insert_pending(d), (mail_id, provider, round_, at))
    attempt_id = cur.lastrowid
    if status is Status.QUEUED:  # read in this transaction: one already sending stays
        yield Statement(_sending(d), (at, at, mail_id))
    _count_begun(deltas, provider, round_, status)
    if mail.callback_url is not None:
        yield from callbacks.queue(d, [mail_id])
    yield from summary.bump(d, deltas)
    return Begun(mail, Status.SENDING, attempt_id=attempt_id)


#: ``begin``'s arguments after the dialect: mail id, provider, round, at, stale before.
BeginCall = tuple[str, str, int, float, float]


@write_batch
def begin_many(d: Dialect, calls: list[BeginCall]) -> Steps[list[Begun | Exception | None]]:
    """The begins of one writer turn (SQLite), as ``begin`` one after the other would do
    them, in fewer statements: the mails, their open attempts and their tenants'
    suppressions are read once for all, the pending attempts recorded, the mails made
    ``sending`` and the figures bumped once. A call that is not the plain case (the mail
    gone, final, scheduled, with open attempts, a recipient suppressed, or a mail begun
    twice in the batch) runs ``begin`` itself, after the plain ones.

    On MySQL (a batch of one per transaction, its row lock wanted) every call is ``begin``.
    """
    if not d.one_writer or len(calls) == 1:
        results: list[Begun | Exception | None] = []
        for call in calls:
            results.append((yield from begin.steps(d, *call)))
        return results
    first: dict[str, int] = {}  # mail id -> the index of its first call
    for i, call in enumerate(calls):
        first.setdefault(call[0], i)
    ids = list(first)
    rows = yield from payloads.of(d, ids)
    plain = {
        mail_id
        for mail_id, (_, status) in rows.items()
        if not status.terminal and status is not Status.SCHEDULED
    }
    for chunk in in_lists(d, sorted(plain)):
        cur = yield Statement(_open_of(d, len(chunk)), chunk)
        plain.difference_update(str(row[0]) for row in cur.fetchall())
    by_group: dict[tuple[str, str], list[str]] = {}
    for mail_id in plain:
        mail = rows[mail_id][0]
        by_group.setdefault((mail.tenant, mail.group), []).append(mail_id)
    for (tenant, group), members in by_group.items():
        addresses = {m: recipients(rows[m][0]) for m in members}
        every = [a for m in members for a in addresses[m]]
        found = yield from suppressions.found_among(d, tenant, every, group)
        # ``begin`` drops them, mail by mail.
        plain.difference_update(m for m in members if not found.keys().isdisjoint(addresses[m]))
    out: list[Begun | Exception | None] = [None] * len(calls)
    deltas: Counter[summary.Key] = Counter()
    pending: list[tuple[object, ...]] = []
    sending: list[tuple[object, ...]] = []
    called_back: list[str] = []
    begun: dict[str, int] = {}  # mail id -> the index of its call
    rest: list[int] = []
    for i, call in enumerate(calls):
        mail_id, provider, round_, at, _ = call
        if mail_id not in plain or first[mail_id] != i:
            rest.append(i)
            continue
        begun[mail_id] = i
        pending.append((mail_id, provider, round_, at))
        if rows[mail_id][1] is Status.QUEUED:  # one already sending stays as it is
            sending.append((at, at, mail_id))
        _count_begun(deltas, provider, round_, rows[mail_id][1])
        if rows[mail_id][0].callback_url is not None:
            called_back.append(mail_id)
    if pending:
        yield Statement(_insert_pending(d), pending, many=True)
        # Each of these mails had no pending attempt (``_open_of``, in this transaction):
        # its pending attempt now is the one just recorded.
        for chunk in in_lists(d, list(begun)):
            cur = yield Statement(_pending_of(d, len(chunk)), chunk)
            for mail_id, attempt_id in cur.fetchall():
                mail = rows[str(mail_id)][0]
                out[begun[str(mail_id)]] = Begun(mail, Status.SENDING, attempt_id=int(attempt_id))
        if sending:
            yield Statement(_sending(d), sending, many=True)
    if called_back:
        yield from callbacks.queue(d, called_back)
    yield from summary.bump(d, deltas)
    for i in rest:
        out[i] = yield from begin.steps(d, *calls[i])
    return out


@write_batch
def apply(d: Dialect, batches: list[Sequence[StatusUpdate]]) -> Steps[list[None]]:
    """Every call's updates in one go; those for mails not there change nothing."""
    updates = [u for batch in batches for u in batch if d.holds_id(u.mail_id)]
    # Every mail of the batch, the attempts it finishes and every attempt of a mail it
    # records a new one for, before (the figures gain what changed). On MySQL they are
    # locked up front, mails in id order: concurrent batches then queue behind each
    # other instead of deadlocking.
    before = yield from summary.look(
        d,
        (u.mail_id for u in updates),
        attempts=(u.attempt.id for u in updates if u.attempt and u.attempt.id is not None),
        of=(u.mail_id for u in updates if u.attempt and u.attempt.id is None),
    )
    known = before.mails
    updates = [u for u in updates if u.mail_id in known]
    updates = yield from _reported(d, updates)
    # A new attempt needs its mail (the foreign key). (Most batches have none: the
    # senders record their attempts with ``begin_attempt``.)
    new = [u for u in updates if u.attempt is not None and u.attempt.id is None]
    if new:
        rows = [attempt_values(u, u.attempt) for u in new if u.attempt is not None]
        yield Statement(_insert(d), rows, many=True)
    finished = [
        finish_values(u, u.attempt)
        for u in updates
        if u.attempt is not None and u.attempt.id is not None
    ]
    if finished:
        yield Statement(_finish(d), finished, many=True)
    bare = [
        (u.mail_id, u.provider, u.provider_message_id)
        for u in updates
        if u.attempt is None and u.provider is not None and u.provider_message_id is not None
    ]
    if bare:
        yield from carry_message_ids(d, bare)
    # Moves in the order they can follow each other; a move that is not
    # allowed from the status reached is skipped, as one by one.
    for status, group in moves.moves_in_order(updates):
        yield Statement(moves.move(d, status), [moves.move_values(u) for u in group], many=True)
    yield from callbacks.queue(d, [u.mail_id for u in updates if u.status in MOVE_ORDER])
    deltas = summary.changes(before, applied(before, updates))
    deltas.update(_failovers(before, updates))
    yield from summary.bump(d, deltas)
    return [None] * len(batches)


def _failovers(before: summary.Seen, updates: Sequence[StatusUpdate]) -> Counter[summary.Key]:
    """The failovers ``updates`` record: each one that hands its mail on (``failover_to``)
    and changes its attempt's outcome, so a replayed update is not counted again."""
    counts: Counter[summary.Key] = Counter()
    for u in updates:
        a = u.attempt
        if u.failover_to is None or a is None or a.id is None:
            continue
        old = before.attempts.get(a.id)
        if old is not None and old.mail_id == u.mail_id and old.outcome != a.outcome.value:
            counts[(summary.FAILOVERS, a.provider, u.failover_to)] += 1
    return counts


class SqlAttempts(Attempts, Engine):
    """``Attempts`` on a driver."""

    async def begin_attempt(
        self, mail_id: str, provider: str, round_: int, at: float, stale_before: float
    ) -> Begun | None:
        if not self.dialect.holds_id(mail_id):
            return None
        return await self.run_batched(begin_many, (mail_id, provider, round_, at, stale_before))

    async def apply(self, updates: Sequence[StatusUpdate]) -> None:
        if updates:
            await self.run_batched(apply, list(updates))

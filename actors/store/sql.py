"""The SQL both stores share: statements, parameter rows and row mappers.

SQLite and MySQL differ in how they run a transaction (a writer thread and
stdlib ``sqlite3``; a pool of ``aiomysql`` connections) and in a few
clauses (placeholders, row locks, upserts). What they store, the statements
that read and move it, and how a row becomes a record are the same, and live
here once. ``Sql(mark="?")`` is SQLite's dialect, ``Sql(mark="%s", ...)``
MySQL's.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..messages import (
    ALLOWED_FROM,
    Attempt,
    Check,
    DeliveryEvent,
    EventKind,
    Mail,
    Outcome,
    Status,
    StatusUpdate,
    decode,
    encode,
)
from .base import Begun, BreakerState, DeadLetter, MailRecord, MailSummary, OutboxEntry, Pending

#: A mail still on its way: a restart hands these to the senders again.
UNFINISHED: tuple[str, ...] = (Status.QUEUED.value, Status.SENDING.value)

#: Ids per ``IN (...)`` list, and rows per multi-row ``INSERT``: far below
#: either database's limit on bound parameters.
CHUNK = 500

#: Statuses a status update can reach, in the order one can follow another:
#: a batch applies its moves in this order, so a ``sending`` and a ``sent``
#: for one mail in the same batch end ``sent``.
MOVE_ORDER: tuple[Status, ...] = (
    Status.SENDING,
    Status.SENT,
    Status.FAILED,
    Status.DELIVERED,
    Status.BOUNCED,
)

MAIL_COLUMNS = "id, status, payload, created_at, updated_at, tenant"
ATTEMPT_COLUMNS = "provider, round, at, outcome, reason, message_id, id, checked"
DEAD_LETTER_COLUMNS = "id, mailbox, mail_id, payload, error, at, replayed_at"
EVENT_COLUMNS = "mail_id, provider, kind, at, dedupe, bounce, reason, recipient"

#: Why a ``pending`` attempt became ``unknown``.
STALE_REASON = "no answer recorded: the call outlived its process or its time"
#: A time after every attempt (both databases bind it; infinity MySQL cannot).
FOREVER = 1e18
RECORD_COLUMNS = "payload, status, updated_at, provider, provider_message_id, reason"


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class Sql:
    """One dialect's statements. ``mark`` is the driver's placeholder."""

    mark: str
    #: Appended to the claim's SELECT (MySQL: lock the rows, skip the locked).
    claim_lock: str = ""
    _moves: dict[Status, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for status in MOVE_ORDER:
            self._moves[status] = self._move_sql(status)

    def marks(self, count: int) -> str:
        """``count`` placeholders, comma separated."""
        return ", ".join([self.mark] * count)

    def rows(self, count: int, width: int) -> str:
        """``count`` parenthesised rows of ``width`` placeholders (a multi-row VALUES)."""
        row = f"({self.marks(width)})"
        return ", ".join([row] * count)

    # --- mails -------------------------------------------------------------------

    def insert_mails(self, count: int) -> str:
        return f"INSERT INTO mails ({MAIL_COLUMNS}) VALUES {self.rows(count, 6)}"

    def insert_outbox(self, count: int) -> str:
        return f"INSERT INTO outbox (mail_id, accepted_at) VALUES {self.rows(count, 2)}"

    def stored_ids(self, count: int) -> str:
        return f"SELECT id FROM mails WHERE id IN ({self.marks(count)})"

    def load(self, count: int) -> str:
        return f"SELECT id, payload, status FROM mails WHERE id IN ({self.marks(count)})"

    @property
    def record(self) -> str:
        return f"SELECT {RECORD_COLUMNS} FROM mails WHERE id = {self.mark}"

    @property
    def attempts(self) -> str:
        return f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE mail_id = {self.mark} ORDER BY at, id"

    def list_mails(self, where: str) -> str:
        return (
            f"SELECT id, status, created_at FROM mails {where} ORDER BY id DESC LIMIT {self.mark}"
        )

    @property
    def backlog(self) -> str:
        return f"SELECT COUNT(*) FROM mails WHERE status IN ({self.marks(len(UNFINISHED))})"

    @property
    def unfinished(self) -> str:
        return (
            f"SELECT id, created_at FROM mails WHERE status IN ({self.marks(len(UNFINISHED))}) "
            "ORDER BY created_at, id"
        )

    def move(self, status: Status) -> str:
        """The guarded move to ``status``; parameters from ``move_values``."""
        return self._moves[status]

    def _move_sql(self, status: Status) -> str:
        allowed = ", ".join(f"'{s.value}'" for s in sorted(ALLOWED_FROM[status]))
        m = self.mark
        return f"""
            UPDATE mails
            SET status = {m},
                updated_at = {m},
                provider = COALESCE({m}, provider),
                provider_message_id = COALESCE({m}, provider_message_id),
                reason = COALESCE({m}, reason),
                due_at = {m}
            WHERE id = {m} AND status IN ({allowed})
        """

    def mark_sending(self, count: int) -> str:
        """Claimed mails still ``queued`` become ``sending`` (handed to the senders)."""
        return (
            f"UPDATE mails SET status = '{Status.SENDING.value}', updated_at = {self.mark}, "
            f"due_at = {self.mark} "
            f"WHERE id IN ({self.marks(count)}) AND status = '{Status.QUEUED.value}'"
        )

    # --- attempts recorded before the call, and the sweeper ---------------------------

    @property
    def finish_attempt(self) -> str:
        """An attempt recorded before its call gets its outcome (parameters: ``finish_values``)."""
        m = self.mark
        return (
            f"UPDATE attempts SET outcome = {m}, reason = {m}, "
            f"message_id = COALESCE({m}, message_id), checked = COALESCE({m}, checked) "
            f"WHERE id = {m} AND mail_id = {m}"
        )

    def stale_attempts_of(self, count: int) -> str:
        """Pending attempts that went stale become unknown (parameters: reason, ids)."""
        return (
            f"UPDATE attempts SET outcome = '{Outcome.UNKNOWN.value}', reason = {self.mark} "
            f"WHERE id IN ({self.marks(count)}) AND outcome = '{Outcome.PENDING.value}'"
        )

    @property
    def stale_attempts(self) -> str:
        """Every pending attempt started before a time becomes unknown (reason, before)."""
        m = self.mark
        return (
            f"UPDATE attempts SET outcome = '{Outcome.UNKNOWN.value}', reason = {m} "
            f"WHERE outcome = '{Outcome.PENDING.value}' AND at < {m}"
        )

    @property
    def open_attempts(self) -> str:
        """A mail's attempts still in flight (pending) or not yet checked (unknown)."""
        return (
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE mail_id = {self.mark} "
            f"AND (outcome = '{Outcome.PENDING.value}' "
            f"OR (outcome = '{Outcome.UNKNOWN.value}' AND checked IS NULL)) ORDER BY at, id"
        )

    @property
    def insert_pending(self) -> str:
        return (
            "INSERT INTO attempts (mail_id, provider, round, at, outcome) "
            f"VALUES ({self.marks(4)}, '{Outcome.PENDING.value}')"
        )

    @property
    def begin_sending(self) -> str:
        """The mail is ``sending`` and due now (parameters: at, at, mail id)."""
        m = self.mark
        return (
            f"UPDATE mails SET status = '{Status.SENDING.value}', updated_at = {m}, due_at = {m} "
            f"WHERE id = {m} AND status IN ({self.marks(len(UNFINISHED))})"
        )

    @property
    def forgotten(self) -> str:
        """Mails ``sending``, due before a time, with no pending attempt and no outbox entry:
        id, created_at and the round they are in (parameters: before, limit)."""
        m = self.mark
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

    def insert_rounds(self, count: int) -> str:
        return f"INSERT INTO outbox (mail_id, accepted_at, round) VALUES {self.rows(count, 3)}"

    def due_now(self, count: int) -> str:
        return f"UPDATE mails SET due_at = {self.mark} WHERE id IN ({self.marks(count)})"

    # --- delivery events -----------------------------------------------------------------

    @property
    def events(self) -> str:
        return f"SELECT {EVENT_COLUMNS} FROM events WHERE mail_id = {self.mark} ORDER BY at, id"

    @property
    def mail_for_message(self) -> str:
        return f"SELECT id FROM mails WHERE provider_message_id = {self.mark} LIMIT 1"

    # --- dead letters -------------------------------------------------------------------

    @property
    def insert_dead_letter(self) -> str:
        return (
            "INSERT INTO dead_letters (mailbox, mail_id, payload, error, at) "
            f"VALUES ({self.marks(5)})"
        )

    @property
    def dead_letters(self) -> str:
        return (
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters "
            f"WHERE replayed_at IS NULL OR {self.mark} ORDER BY id LIMIT {self.mark}"
        )

    def mark_replayed(self, count: int) -> str:
        return (
            f"UPDATE dead_letters SET replayed_at = {self.mark} "
            f"WHERE id IN ({self.marks(count)}) AND replayed_at IS NULL"
        )

    # --- the outbox --------------------------------------------------------------

    @property
    def claimable(self) -> str:
        m = self.mark
        return (
            "SELECT id, mail_id, accepted_at, round FROM outbox "
            f"WHERE leased_until IS NULL OR leased_until < {m} ORDER BY id LIMIT {m}"
            f"{self.claim_lock}"
        )

    def lease(self, count: int) -> str:
        m = self.mark
        return (
            f"UPDATE outbox SET leased_by = {m}, leased_until = {m} "
            f"WHERE id IN ({self.marks(count)})"
        )

    @property
    def replay(self) -> str:
        """A failed mail back to ``queued`` (parameters: at, mail id)."""
        m = self.mark
        return (
            f"UPDATE mails SET status = '{Status.QUEUED.value}', updated_at = {m}, reason = NULL "
            f"WHERE id = {m} AND status = '{Status.FAILED.value}'"
        )

    @property
    def next_round(self) -> str:
        return f"SELECT COALESCE(MAX(round), -1) + 1 FROM attempts WHERE mail_id = {self.mark}"

    @property
    def insert_round(self) -> str:
        return f"INSERT INTO outbox (mail_id, accepted_at, round) VALUES ({self.marks(3)})"

    def delete_outbox(self, count: int) -> str:
        return f"DELETE FROM outbox WHERE id IN ({self.marks(count)})"

    @property
    def requeue(self) -> str:
        return f"""
            INSERT INTO outbox (mail_id, accepted_at)
            SELECT m.id, m.created_at
            FROM mails AS m
            WHERE m.status IN ({self.marks(len(UNFINISHED))})
              AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.mail_id = m.id)
            ORDER BY m.created_at, m.id
        """

    release_leases = "UPDATE outbox SET leased_by = NULL, leased_until = NULL"

    # --- keys, buckets, idempotency, breakers ----------------------------------------

    @property
    def insert_key(self) -> str:
        return (
            "INSERT INTO api_keys (id, secret_hash, tenant, scopes, rate, created_at) "
            f"VALUES ({self.marks(6)})"
        )

    @property
    def revoke_key(self) -> str:
        m = self.mark
        return f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, {m}) WHERE id = {m}"

    @property
    def touch_key(self) -> str:
        m = self.mark
        return (
            f"UPDATE api_keys SET last_used_at = {m} "
            f"WHERE id = {m} AND (last_used_at IS NULL OR last_used_at < {m})"
        )

    any_keys = "SELECT EXISTS (SELECT 1 FROM api_keys)"

    @property
    def purge_idempotency(self) -> str:
        return f"DELETE FROM idempotency WHERE expires_at < {self.mark}"

    @property
    def idempotency_of(self) -> str:
        m = self.mark
        return (
            "SELECT mail_id, fingerprint, expires_at FROM idempotency "
            f"WHERE tenant = {m} AND key_hash = {m}"
        )

    breakers = "SELECT provider, state, opened_at, updated_at FROM breakers ORDER BY provider"


SQLITE = Sql(mark="?")
MYSQL = Sql(mark="%s", claim_lock=" FOR UPDATE SKIP LOCKED")


# --- parameter rows -----------------------------------------------------------------


def mail_values(mail: Mail) -> tuple[object, ...]:
    """A new mail's row for ``insert_mails`` (``queued``)."""
    return (
        mail.id,
        Status.QUEUED.value,
        encode(mail).decode(),
        mail.created_at,
        mail.created_at,
        mail.tenant,
    )


def attempt_values(mail_id: str, attempt: Attempt) -> tuple[object, ...]:
    return (
        mail_id,
        attempt.provider,
        attempt.round,
        attempt.at,
        attempt.outcome.value,
        attempt.reason,
        attempt.message_id,
    )


def move_values(update: StatusUpdate) -> tuple[object, ...]:
    """Parameters of ``Sql.move`` for one status update."""
    return (
        update.status.value,
        update.at,
        update.provider,
        update.provider_message_id,
        update.reason,
        update.at if update.due_at is None else update.due_at,
        update.mail_id,
    )


def b64(data: bytes) -> str:
    """A dead letter's bytes as stored (text: the drivers agree on it)."""
    return base64.b64encode(data).decode("ascii")


def dead_letter_reason(letter: int | None, error: str) -> str:
    """A dead-lettered mail's ``failed`` reason."""
    return f"a record about this mail could not be handled (dead letter {letter}): {error}"[:1000]


def finish_values(mail_id: str, attempt: Attempt) -> tuple[object, ...]:
    """Parameters of ``Sql.finish_attempt`` (``attempt.id`` is set)."""
    return (
        attempt.outcome.value,
        attempt.reason,
        attempt.message_id,
        None if attempt.checked is None else attempt.checked.value,
        attempt.id,
        mail_id,
    )


def moves_in_order(updates: Sequence[StatusUpdate]) -> Iterator[tuple[Status, list[StatusUpdate]]]:
    """The updates grouped by the status they move to, in ``MOVE_ORDER``."""
    for status in MOVE_ORDER:
        group = [u for u in updates if u.status is status]
        if group:
            yield status, group


# --- row mappers -------------------------------------------------------------------


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
    """What ``begin_attempt`` decides from a mail's open attempts (``Sql.open_attempts``):
    a ``Begun`` that refuses (None: record the attempt), and the ids of pending attempts
    that went stale (to be made ``unknown``)."""
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


def dead_letter_from_row(row: Sequence[Any]) -> DeadLetter:
    letter_id, mailbox, mail_id, payload, error, at, replayed_at = row
    return DeadLetter(
        id=int(letter_id),
        mailbox=mailbox,
        mail_id=mail_id,
        payload=base64.b64decode(payload),
        error=error,
        at=at,
        replayed_at=replayed_at,
    )


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


def event_move_values(event: DeliveryEvent, status: Status) -> tuple[object, ...]:
    """Parameters of ``Sql.move`` for the move an event makes (a bounce keeps its reason)."""
    reason = event.reason if status is Status.BOUNCED else None
    return (status.value, event.at, None, None, reason, event.at, event.mail_id)


def event_from_row(row: Sequence[Any]) -> DeliveryEvent:
    mail_id, provider, kind, at, dedupe, bounce, reason, recipient = row
    return DeliveryEvent(mail_id, provider, EventKind(kind), at, dedupe, bounce, reason, recipient)


def record_from_rows(
    row: Sequence[Any], attempts: Sequence[Sequence[Any]], events: Sequence[Sequence[Any]] = ()
) -> MailRecord:
    """A ``MailRecord`` from a row of ``RECORD_COLUMNS``, its attempts' and events' rows."""
    payload, status, updated_at, provider, provider_message_id, reason = row
    return MailRecord(
        mail=decode(Mail, payload),
        status=Status(status),
        updated_at=updated_at,
        provider=provider,
        provider_message_id=provider_message_id,
        reason=reason,
        attempts=tuple(attempt_from_row(a) for a in attempts),
        events=tuple(event_from_row(e) for e in events),
    )


def loaded_from_rows(rows: Sequence[Sequence[Any]]) -> dict[str, tuple[Mail, Status]]:
    """``load``'s rows (id, payload, status) by mail id."""
    return {row[0]: (decode(Mail, row[1]), Status(row[2])) for row in rows}


def summary_from_row(row: Sequence[Any]) -> MailSummary:
    return MailSummary(row[0], Status(row[1]), row[2])


def pending_from_row(row: Sequence[Any]) -> Pending:
    return Pending(mail_id=row[0], accepted_at=row[1])


def entry_from_row(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(id=row[0], mail_id=row[1], accepted_at=row[2], round=int(row[3]))


def breaker_from_row(row: Sequence[Any]) -> BreakerState:
    provider, state, opened_at, updated_at = row
    return BreakerState(provider=provider, state=state, opened_at=opened_at, updated_at=updated_at)

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

from mailman.core.messages import StatusUpdate, decode, encode
from mailman.core.model import (
    ALLOWED_FROM,
    Attempt,
    Check,
    DeliveryEvent,
    EventKind,
    Mail,
    Outcome,
    Status,
)

from .base import (
    Begun,
    BreakerState,
    CallbackDue,
    DeadLetter,
    FailedAttempt,
    FailedMail,
    Failures,
    MailRecord,
    MailSummary,
    MetricsSnapshot,
    MinuteCount,
    OutboxEntry,
    Pending,
)

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

MAIL_COLUMNS = (
    "id, status, payload, created_at, updated_at, tenant, callback_url, callback_status, due_at"
)
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
    #: Appended to a SELECT of rows the transaction changes next (MySQL: lock them).
    row_lock: str = ""
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
        return f"INSERT INTO mails ({MAIL_COLUMNS}) VALUES {self.rows(count, 9)}"

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

    @property
    def due_scheduled(self) -> str:
        """Scheduled mails whose time has come, earliest first (parameters: now, limit)."""
        m = self.mark
        return (
            f"SELECT id, due_at FROM mails WHERE status = '{Status.SCHEDULED.value}' "
            f"AND due_at <= {m} ORDER BY due_at, id LIMIT {m}{self.claim_lock}"
        )

    def release_scheduled(self, count: int) -> str:
        """Due scheduled mails become ``queued`` (parameters: now, ids); the caller then
        gives each an outbox entry, as a new mail gets at its commit."""
        return (
            f"UPDATE mails SET status = '{Status.QUEUED.value}', updated_at = {self.mark}, "
            f"due_at = NULL WHERE id IN ({self.marks(count)}) "
            f"AND status = '{Status.SCHEDULED.value}'"
        )

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
        """The mail a provider message id names: as recorded on the mail, or on an attempt
        (a delivery event can move a mail on before the sender's ``sent`` is recorded)."""
        m = self.mark
        return (
            f"SELECT id FROM mails WHERE provider_message_id = {m} "
            f"UNION SELECT mail_id FROM attempts WHERE message_id = {m} LIMIT 1"
        )

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

    # --- status callbacks (actors.callbacks) --------------------------------------------
    # A mail with a callback URL carries ``callback_status``, the status its last
    # callback was queued for. Every operation that moves mails ends with
    # ``callback_changes`` over the mails it touched; for those whose status
    # differs, ``queue_callbacks`` and ``callbacks_queued`` (the store's
    # ``_queue_callbacks``). So each committed status change queues one
    # callback, in its own transaction, whichever actor made it. (Not a
    # trigger: MySQL with binary logging, its default, lets only SUPER users
    # create triggers, unless log_bin_trust_function_creators is set.)

    def callback_changes(self, count: int) -> str:
        """Of these mails, those with a callback URL whose status moved since their last
        callback was queued (on MySQL locked: the transaction holds them already)."""
        return (
            f"SELECT id FROM mails WHERE id IN ({self.marks(count)}) "
            f"AND callback_status IS NOT NULL AND callback_status <> status ORDER BY id"
            f"{self.row_lock}"
        )

    def queue_callbacks(self, count: int) -> str:
        """A callback for the current status of each of these mails (parameters: now, ids)."""
        return (
            "INSERT INTO callbacks "
            "(mail_id, url, status, at, provider, reason, created_at, next_at) "
            f"SELECT id, callback_url, status, updated_at, provider, reason, {self.mark}, "
            f"{self.mark} FROM mails WHERE id IN ({self.marks(count)}) ORDER BY id"
        )

    def callbacks_queued(self, count: int) -> str:
        return f"UPDATE mails SET callback_status = status WHERE id IN ({self.marks(count)})"

    @property
    def claimable_callbacks(self) -> str:
        """Due callbacks, none behind an open one of its mail (parameters: now, now, limit)."""
        m = self.mark
        return f"""
            SELECT {CALLBACK_COLUMNS} FROM callbacks AS c
            WHERE c.done_at IS NULL AND c.next_at <= {m}
              AND (c.leased_until IS NULL OR c.leased_until < {m})
              AND NOT EXISTS (
                  SELECT 1 FROM callbacks AS p
                  WHERE p.mail_id = c.mail_id AND p.done_at IS NULL AND p.id < c.id
              )
            ORDER BY c.next_at, c.id
            LIMIT {m}{self.claim_lock}
        """

    def lease_callbacks(self, count: int) -> str:
        """Parameters: owner, leased until, ids. A claim counts as a try."""
        m = self.mark
        return (
            f"UPDATE callbacks SET leased_by = {m}, leased_until = {m}, attempts = attempts + 1 "
            f"WHERE id IN ({self.marks(count)})"
        )

    @property
    def callback_done(self) -> str:
        """Parameters: at, id."""
        return (
            f"UPDATE callbacks SET done_at = {self.mark}, outcome = 'delivered', "
            "leased_by = NULL, leased_until = NULL "
            f"WHERE id = {self.mark} AND done_at IS NULL"
        )

    @property
    def callback_failed(self) -> str:
        """Parameters: error, next at, id."""
        m = self.mark
        return (
            f"UPDATE callbacks SET last_error = {m}, next_at = {m}, "
            "leased_by = NULL, leased_until = NULL "
            f"WHERE id = {m} AND done_at IS NULL"
        )

    @property
    def callback_gave_up(self) -> str:
        """Parameters: at, error, id."""
        m = self.mark
        return (
            f"UPDATE callbacks SET done_at = {m}, outcome = 'gave-up', last_error = {m}, "
            "leased_by = NULL, leased_until = NULL "
            f"WHERE id = {m} AND done_at IS NULL"
        )


SQLITE = Sql(mark="?")
MYSQL = Sql(mark="%s", claim_lock=" FOR UPDATE SKIP LOCKED", row_lock=" FOR UPDATE")


# --- parameter rows -----------------------------------------------------------------


def mail_values(mail: Mail) -> tuple[object, ...]:
    """A new mail's row for ``insert_mails``: ``queued``, or ``scheduled`` till its
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
        # The status its last callback was queued for: none for being accepted.
        None if mail.callback_url is None else status,
        mail.send_at,
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
    return (status.value, event.at, event.provider, None, reason, event.at, event.mail_id)


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


#: The columns ``callback_from_row`` reads (``callbacks AS c``), in its order.
CALLBACK_COLUMNS = (
    "c.id, c.mail_id, c.url, c.status, c.at, c.provider, c.reason, c.created_at, c.attempts, "
    "c.last_error"
)


def callback_from_row(row: Sequence[Any]) -> CallbackDue:
    """A claimed callback from a row of ``CALLBACK_COLUMNS`` (read before its claim's try)."""
    callback_id, mail_id, url, status, at, provider, reason, created_at, attempts, error = row
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
    )


def breaker_from_row(row: Sequence[Any]) -> BreakerState:
    provider, state, opened_at, updated_at = row
    return BreakerState(provider=provider, state=state, opened_at=opened_at, updated_at=updated_at)


# --- observability: Store.metrics_snapshot (routes.metrics) ----------------------------
# No parameters, the same in both dialects. Each runs in one read transaction.

#: Mails by status (the ``mails_by_status`` index covers it).
METRICS_MAILS = "SELECT status, COUNT(*) FROM mails GROUP BY status"
#: Attempts by provider, outcome, whether they were in a retry round, and whether asking
#: the provider found it had taken the mail (a send suppressed).
METRICS_ATTEMPTS = (
    "SELECT provider, outcome, CASE WHEN round > 0 THEN 1 ELSE 0 END, "
    f"CASE WHEN checked = '{Check.TAKEN.value}' THEN 1 ELSE 0 END, COUNT(*) FROM attempts "
    "GROUP BY provider, outcome, CASE WHEN round > 0 THEN 1 ELSE 0 END, "
    f"CASE WHEN checked = '{Check.TAKEN.value}' THEN 1 ELSE 0 END"
)
METRICS_OUTBOX = "SELECT COUNT(*) FROM outbox"
METRICS_DEAD_LETTERS = "SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL"


def metrics_from_rows(
    mails: Sequence[Sequence[Any]],
    attempts: Sequence[Sequence[Any]],
    outbox: int,
    dead_letters: int,
    breakers: Sequence[Sequence[Any]],
) -> MetricsSnapshot:
    """A ``MetricsSnapshot`` from the rows of the ``METRICS_*`` queries and ``Sql.breakers``."""
    by_outcome: dict[tuple[str, str], int] = {}
    retries: dict[str, int] = {}
    suppressed: dict[str, int] = {}
    for provider, outcome, retry, taken, count in attempts:
        by_outcome[(provider, outcome)] = by_outcome.get((provider, outcome), 0) + int(count)
        if int(retry):
            retries[provider] = retries.get(provider, 0) + int(count)
        if int(taken):
            suppressed[provider] = suppressed.get(provider, 0) + int(count)
    return MetricsSnapshot(
        mails={str(status): int(count) for status, count in mails},
        attempts=by_outcome,
        retries=retries,
        outbox=int(outbox),
        dead_letters=int(dead_letters),
        breakers=tuple(breaker_from_row(r) for r in breakers),
        suppressed=suppressed,
    )


# --- the dashboard: Store.attempts_per_minute and Store.latest_failures -----------------

#: The start of an attempt's minute (unix seconds), per dialect (``at`` is never negative).
MINUTE_SQLITE = "CAST(at / 60 AS INTEGER) * 60"
MINUTE_MYSQL = "FLOOR(at / 60) * 60"


def attempts_per_minute(q: Sql, minute: str, outcomes: int) -> str:
    """Attempts per minute, provider and outcome (parameters: ``outcomes`` outcomes, since).

    The ``attempts_by_outcome (outcome, at)`` index finds the rows."""
    return (
        f"SELECT {minute}, provider, outcome, COUNT(*) FROM attempts "
        f"WHERE outcome IN ({q.marks(outcomes)}) AND at >= {q.mark} "
        f"GROUP BY {minute}, provider, outcome"
    )


def latest_failed_mails(q: Sql) -> str:
    """The newest failed mails (parameter: limit); ``mails_by_status`` serves the order."""
    return (
        f"SELECT id, provider, reason, updated_at FROM mails "
        f"WHERE status = '{Status.FAILED.value}' ORDER BY created_at DESC LIMIT {q.mark}"
    )


def latest_attempts(q: Sql) -> str:
    """The newest attempts with one outcome (parameters: outcome, limit), from the
    ``(outcome, at)`` index; one query per outcome keeps each an index range."""
    return (
        f"SELECT mail_id, provider, round, outcome, reason, at, id FROM attempts "
        f"WHERE outcome = {q.mark} ORDER BY at DESC, id DESC LIMIT {q.mark}"
    )


def minute_count_from_row(row: Sequence[Any]) -> MinuteCount:
    minute, provider, outcome, count = row
    return MinuteCount(
        minute=int(minute), provider=str(provider), outcome=str(outcome), count=int(count)
    )


def failures_from_rows(
    mails: Sequence[Sequence[Any]], attempts: Sequence[Sequence[Any]], limit: int
) -> Failures:
    """``Failures`` from ``latest_failed_mails`` rows and every ``latest_attempts`` query's
    rows (merged here: the newest ``limit`` over all outcomes)."""
    newest = sorted(attempts, key=lambda r: (float(r[5]), int(r[6])), reverse=True)[:limit]
    return Failures(
        mails=tuple(
            FailedMail(id=str(i), provider=p, reason=r, at=float(at)) for i, p, r, at in mails
        ),
        attempts=tuple(
            FailedAttempt(
                mail_id=str(mail_id),
                provider=str(provider),
                round=int(round_),
                outcome=str(outcome),
                reason=reason,
                at=float(at),
            )
            for mail_id, provider, round_, outcome, reason, at, _ in newest
        ),
    )

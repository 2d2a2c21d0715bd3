"""The store: where accepted mails, their status and their attempts live.

One interface, one implementation per database (SQLite here, MySQL next).
Everything a caller was answered ``201`` for is committed here first.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType

from mailman.core.messages import StatusUpdate
from mailman.core.model import Attempt, DeliveryEvent, Mail, Status


class StoreUnavailable(ConnectionError):
    """The store cannot be reached or did not answer in time; nothing was changed by us.

    The message names the cause without connection details (no password, no URL).
    """


class MailTooLarge(ValueError):
    """The store cannot hold a mail this large (MySQL: its INSERT would pass the server's
    ``max_allowed_packet``, which would drop the connection). Nothing was stored."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the mail takes about {size} bytes to store, over the store's limit of {limit}"
        )
        self.size = size
        self.limit = limit


class IdempotencyMismatch(Exception):
    """An ``Idempotency-Key`` the tenant already used, with another request body."""

    def __init__(self, mail_id: str) -> None:
        super().__init__("the idempotency key was used with another request body")
        #: The mail the key stands for.
        self.mail_id = mail_id


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A request's idempotency key, scoped to its tenant, as ``add`` records it.

    ``key_hash`` is a digest of the key (keys may hold any printable ASCII,
    trailing spaces too; a digest compares exactly in every database), and
    ``fingerprint`` a digest of the request body.
    """

    key_hash: str
    fingerprint: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as the store keeps it: never the key itself, only its hash."""

    id: str
    tenant: str
    scopes: tuple[str, ...]
    #: Mails per second (also the burst); None: the service's default.
    rate: float | None
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class MailSummary:
    """One line of a mail listing."""

    id: str
    status: Status
    created_at: float


@dataclass(frozen=True, slots=True)
class MailQuery:
    """Which mails ``list_mails`` returns: newest first, ids below ``before``."""

    #: None: every tenant's mails.
    tenant: str | None
    limit: int
    status: Status | None = None
    #: ``created_at`` at or after this unix time...
    since: float | None = None
    #: ... and before this one.
    until: float | None = None
    #: The last id of the page before (the cursor).
    before: str | None = None


@dataclass(frozen=True, slots=True)
class RateDecision:
    """What a token bucket said about one request."""

    allowed: bool
    #: Whole tokens left after this request.
    remaining: int
    #: Seconds until the next token (what a refused caller should wait).
    retry_after: float
    #: Seconds until the bucket is full again.
    reset: float


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


class EventResult(StrEnum):
    """What ``record_events`` did with one event."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"  # the provider sent it before: kept once
    UNKNOWN_MAIL = "unknown-mail"  # no such mail here: not kept


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


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A committed mail not yet handed to the first sender mailbox (transactional outbox)."""

    id: int
    mail_id: str
    accepted_at: float
    #: The round the mail starts in (0; more for a failed mail sent again).
    round: int = 0


@dataclass(frozen=True, slots=True)
class Begun:
    """What ``begin_attempt`` found and did.

    ``attempt_id`` is set when an attempt was recorded as ``pending`` (the
    caller may now call the provider). Otherwise ``why`` says what stopped it:
    ``final`` (the mail is ``sent`` or ``failed``), ``busy`` (another attempt
    is in flight and not stale), ``unchecked`` (``unknown`` attempts wait to
    be checked with their providers first: ``unknown`` holds them) or
    ``scheduled`` (its ``send_at`` has not come: the sweeper releases it).
    """

    mail: Mail
    status: Status
    attempt_id: int | None = None
    why: str | None = None
    unknown: tuple[Attempt, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A mailbox record that could not be handled, kept with why and its raw bytes."""

    id: int
    #: The mailbox (``send.sendgrid``, ``status``...) it was taken from.
    mailbox: str
    #: The mail it is about, when that could be read from it.
    mail_id: str | None
    payload: bytes
    error: str
    at: float
    replayed_at: float | None = None


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A provider's circuit-breaker state as every process shares it.

    ``state`` is ``closed``, ``open`` or ``half_open``; ``opened_at`` is the
    unix time the breaker last opened. The newest ``updated_at`` wins.
    """

    provider: str
    state: str
    opened_at: float | None
    updated_at: float


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


class Store(abc.ABC):
    """Mails, statuses and attempts. Implementations are safe for concurrent use."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema to the current version."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""

    #: The errors that mean the database cannot be reached (the API answers 503).
    unavailable: tuple[type[BaseException], ...] = ()

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
    async def list_mails(self, query: MailQuery) -> list[MailSummary]:
        """Mails matching ``query``, newest (highest id) first, at most ``query.limit``."""

    # --- API keys ---------------------------------------------------------------

    @abc.abstractmethod
    async def create_key(self, key: ApiKey, secret_hash: str) -> None:
        """Record a new key; only the hash of its secret is kept."""

    @abc.abstractmethod
    async def keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""

    @abc.abstractmethod
    async def key_by_hash(self, secret_hash: str) -> ApiKey | None:
        """The key whose secret hashes to ``secret_hash`` (revoked too); None if none."""

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, at: float) -> bool:
        """Revoke a key; False if there is no such key. Revoking twice keeps the first time."""

    @abc.abstractmethod
    async def any_keys(self) -> bool:
        """Whether any key was ever made (a revoked one counts: the API stays closed)."""

    @abc.abstractmethod
    async def touch_keys(self, used: dict[str, float]) -> None:
        """Record when keys were last used (key id -> unix time); never moves backwards."""

    # --- rate limits -----------------------------------------------------------

    @abc.abstractmethod
    async def take_token(self, bucket: str, rate: float, now: float) -> RateDecision:
        """Take one token from ``bucket`` (refilled at ``rate``/s, holding at most ``rate``).

        Atomic across every process that shares the store.
        """

    @abc.abstractmethod
    async def get(self, mail_id: str) -> MailRecord | None:
        """The mail with its status and every attempt, oldest first; None if unknown."""

    @abc.abstractmethod
    async def load(self, mail_id: str) -> tuple[Mail, Status] | None:
        """The mail and its status, without history (what a sender needs)."""

    @abc.abstractmethod
    async def apply(self, updates: Sequence[StatusUpdate]) -> None:
        """Record attempts and guarded status moves, all in one transaction.

        A move not allowed by ``ALLOWED_FROM`` is skipped (never an error); an
        attempt already recorded is not recorded twice. Updates for unknown
        mails are ignored.
        """

    @abc.abstractmethod
    async def begin_attempt(
        self, mail_id: str, provider: str, round_: int, at: float, stale_before: float
    ) -> Begun | None:
        """Record an attempt with ``provider`` as ``pending`` before the call, if it may be made.

        One transaction. ``pending`` attempts of the mail that started before
        ``stale_before`` become ``unknown`` (their call outlived its process or
        its time). No attempt is recorded if the mail is final, another attempt
        is still pending, or ``unknown`` attempts are not checked yet (see
        ``Begun``). Otherwise the mail is ``sending``, due now. None if unknown.
        """

    @abc.abstractmethod
    async def sweep(self, now: float, stale_before: float, limit: int = 500) -> list[str]:
        """Pick up mails that nothing is handling any more; the ids picked up.

        ``pending`` attempts started before ``stale_before`` become ``unknown``;
        mails ``sending``, due before ``stale_before``, with no pending attempt
        and no outbox entry get a new outbox entry (the relay dispatches them
        again) and are due ``now``. One transaction, at most ``limit`` mails.
        """

    @abc.abstractmethod
    async def release_scheduled(self, now: float, limit: int = 500) -> list[str]:
        """Scheduled mails whose ``send_at`` is ``now`` or earlier become ``queued``, each
        with an outbox entry (the relay dispatches them), in one transaction; their ids,
        at most ``limit``, earliest first."""

    # --- delivery events ------------------------------------------------------

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

    # --- dead letters ---------------------------------------------------------

    @abc.abstractmethod
    async def add_dead_letter(
        self, mailbox: str, mail_id: str | None, payload: bytes, error: str, at: float
    ) -> int:
        """Keep a record no handler could handle; its id. The mail, if known and not
        final, becomes ``failed`` with the error as its reason. One transaction."""

    @abc.abstractmethod
    async def dead_letters(self, *, replayed: bool = False, limit: int = 1000) -> list[DeadLetter]:
        """Dead letters, oldest first; those already replayed only with ``replayed``."""

    @abc.abstractmethod
    async def mark_replayed(self, ids: Sequence[int], at: float) -> None:
        """Note that these dead letters were replayed."""

    @abc.abstractmethod
    async def transition(
        self, mail_id: str, status: Status, at: float, reason: str | None = None
    ) -> Transition | None:
        """Move one mail to ``status`` if allowed; None if the mail is unknown."""

    @abc.abstractmethod
    async def unfinished(self) -> list[Pending]:
        """Mails still ``queued`` or ``sending``, oldest first."""

    # --- transactional outbox (the relay actor) ------------------------------

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
    async def purge_idempotency(self, now: float) -> int:
        """Forget idempotency keys that expired before ``now``; how many."""

    @abc.abstractmethod
    async def retry(self, mail_id: str, at: float) -> Transition | None:
        """Send a ``failed`` mail again: back to ``queued`` with an outbox entry for a new round.

        The entry is accepted at ``at`` (the retry window starts again) and
        starts the round after the mail's last attempt. One transaction.
        ``Transition(changed=False, status)`` if the mail is not ``failed``;
        None if it is unknown.
        """

    @abc.abstractmethod
    async def backlog(self) -> int:
        """How many mails are not final yet (``queued`` or ``sending``)."""

    # --- status callbacks (actors.callbacks) -----------------------------------
    # Every status move of a mail with a ``callback_url`` queues a callback in the
    # transaction that makes it (one per committed change; see ``sql.py``).

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

    # --- shared circuit-breaker state ------------------------------------------

    @abc.abstractmethod
    async def save_breaker(self, state: BreakerState) -> None:
        """Record a provider's breaker state unless a newer one is already recorded."""

    @abc.abstractmethod
    async def breakers(self) -> list[BreakerState]:
        """Every provider's last recorded breaker state."""

    # --- observability: the figures /metrics reads (routes.metrics) ---------------

    @abc.abstractmethod
    async def metrics_snapshot(self) -> MetricsSnapshot:
        """Counts of what the store holds, read in one transaction (one snapshot).

        A few aggregate queries, each over a whole table (``mails``, ``attempts``)
        or a small one: meant to be read about once a second at most.
        """

    # --- the dashboard: what metrics_snapshot lacks (routes.dashboard) ------------------

    @abc.abstractmethod
    async def attempts_per_minute(self, since: float, outcomes: Sequence[str]) -> list[MinuteCount]:
        """Attempts with one of ``outcomes`` that started at or after ``since``, counted
        per whole (UTC) minute, provider and outcome. The ``(outcome, at)`` index serves it."""

    @abc.abstractmethod
    async def latest_failures(self, limit: int, outcomes: Sequence[str]) -> Failures:
        """The newest ``limit`` failed mails (by creation) and the newest ``limit`` attempts
        with one of ``outcomes`` (by start), newest first, in one read transaction.
        Ids, providers, outcomes, reasons and times only: no mail content."""


def bucket_step(
    tokens: float | None, updated_at: float | None, rate: float, now: float
) -> tuple[float, RateDecision]:
    """One request against a token bucket: the tokens left and the decision.

    The bucket holds ``max(rate, 1)`` tokens (the burst) and refills at
    ``rate`` tokens a second; a bucket never seen (``tokens`` None) is full.
    A clock that went backwards refills nothing.
    """
    capacity = max(rate, 1.0)
    if tokens is None or updated_at is None:
        tokens = capacity
    else:
        tokens = min(capacity, tokens + max(0.0, now - updated_at) * rate)
    allowed = tokens >= 1.0
    if allowed:
        tokens -= 1.0
    missing = 1.0 - tokens
    retry_after = 0.0 if tokens >= 1.0 else missing / rate
    return tokens, RateDecision(
        allowed=allowed,
        remaining=int(tokens),
        retry_after=retry_after,
        reset=(capacity - tokens) / rate,
    )


#: The columns ``api_key_from_row`` reads, in its order.
KEY_COLUMNS = "id, tenant, scopes, rate, created_at, last_used_at, revoked_at"


def api_key_from_row(row: tuple[object, ...]) -> ApiKey:
    """An ``ApiKey`` from a row of ``KEY_COLUMNS``."""
    key_id, tenant, scopes, rate, created_at, last_used_at, revoked_at = row
    return ApiKey(
        id=str(key_id),
        tenant=str(tenant),
        scopes=tuple(s for s in str(scopes).split(",") if s),
        rate=None if rate is None else float(rate),  # type: ignore[arg-type]
        created_at=float(created_at),  # type: ignore[arg-type]
        last_used_at=None if last_used_at is None else float(last_used_at),  # type: ignore[arg-type]
        revoked_at=None if revoked_at is None else float(revoked_at),  # type: ignore[arg-type]
    )


def list_filter(query: MailQuery, mark: str = "?") -> tuple[str, list[object]]:
    """The WHERE clause and its parameters for ``list_mails`` (``mark``: the placeholder)."""
    clauses: list[str] = []
    params: list[object] = []
    for column, op, value in (
        ("tenant", "=", query.tenant),
        ("status", "=", None if query.status is None else query.status.value),
        ("created_at", ">=", query.since),
        ("created_at", "<", query.until),
        ("id", "<", query.before),
    ):
        if value is not None:
            clauses.append(f"{column} {op} {mark}")
            params.append(value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def open_store(url: str) -> Store:
    """The store a URL names: ``sqlite:///path/to.db`` (``sqlite://`` alone: in memory),
    ``mysql://user:password@host:3306/database``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"store URL {url!r} has no scheme (expected sqlite:///path)")
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        path = rest[1:] if rest.startswith("/") else rest
        return SQLiteStore(path or ":memory:")
    if scheme == "mysql":
        from .mysql import MySQLStore

        return MySQLStore.from_url(url)
    raise ValueError(f"unsupported store {scheme!r} (expected sqlite:///path or mysql://...)")


# --- observability ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What ``Store.metrics_snapshot`` counted; the same whichever process reads it."""

    #: Mails by status; a status no mail has is absent.
    mails: dict[str, int]
    #: Attempts by (provider, outcome), ``pending`` ones (calls in flight) included.
    attempts: dict[tuple[str, str], int]
    #: Attempts in a retry round (round > 0), any outcome, by provider.
    retries: dict[str, int]
    #: Outbox entries not yet removed: not published yet, or published in the relay's last turn.
    outbox: int
    #: Dead letters not replayed.
    dead_letters: int
    #: Every provider's breaker state as shared in the store.
    breakers: tuple[BreakerState, ...]
    #: Sends not made, by provider: ``unknown`` attempts the provider was asked about and
    #: had taken (``checked`` = ``taken``), so the mail was not sent again.
    suppressed: dict[str, int] = field(default_factory=dict)


# --- the dashboard (routes.dashboard) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class MinuteCount:
    """Attempts of one provider with one outcome that started in one minute."""

    #: The minute's start, unix seconds (a multiple of 60).
    minute: int
    provider: str
    outcome: str
    count: int


@dataclass(frozen=True, slots=True)
class FailedMail:
    """A ``failed`` mail as the dashboard shows it: no content."""

    id: str
    #: The provider it was last tried with, if any.
    provider: str | None
    reason: str | None
    #: When it became ``failed`` (its ``updated_at``).
    at: float


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """A provider attempt that did not get the mail accepted."""

    mail_id: str
    provider: str
    round: int
    outcome: str
    reason: str | None
    #: When the call started.
    at: float


@dataclass(frozen=True, slots=True)
class Failures:
    """What ``Store.latest_failures`` found, newest first."""

    mails: tuple[FailedMail, ...]
    attempts: tuple[FailedAttempt, ...]

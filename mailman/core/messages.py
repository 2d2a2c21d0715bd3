"""Every record that crosses a mailbox or the store boundary, in one place.

Records are frozen and typed. They travel between actors in-process as they
are, and through a broker as JSON (``encode``/``decode``), so each one is made
of plain values only: str, int, float, bool, None, tuples and nested records.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import os
import time
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import orjson


class Status(StrEnum):
    """Where a mail stands. ``queued`` -> ``sending`` -> ``sent`` | ``failed``; then, as the
    provider reports it, ``sent`` -> ``delivered`` | ``bounced``."""

    QUEUED = "queued"
    #: Waits for its ``send_at`` time; then ``queued``.
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    #: The recipient's server took the mail (the provider's delivery event).
    DELIVERED = "delivered"
    #: The provider gave up on the mail: a hard bounce, or it dropped the mail.
    BOUNCED = "bounced"

    @property
    def terminal(self) -> bool:
        """Nothing more is sent for the mail (delivery events may still move it on)."""
        return self not in (Status.QUEUED, Status.SCHEDULED, Status.SENDING)


#: The statuses each status may be reached from. Repeating a transition into
#: ``sending`` is allowed (each attempt may name another provider); ``sent``
#: and ``failed`` end the sending, and repeating them is a no-op. Delivery
#: events move a mail on from ``sent`` (or from ``sending``, when the event
#: arrives before the sender's record): a later bounce overrides a delivery
#: (an asynchronous bounce), never the other way round.
ALLOWED_FROM: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.SCHEDULED}),
    Status.SCHEDULED: frozenset(),
    Status.SENDING: frozenset({Status.QUEUED, Status.SENDING}),
    Status.SENT: frozenset({Status.QUEUED, Status.SENDING}),
    # A scheduled mail can be marked failed by hand (so it is never sent).
    Status.FAILED: frozenset({Status.QUEUED, Status.SCHEDULED, Status.SENDING}),
    Status.DELIVERED: frozenset({Status.SENDING, Status.SENT}),
    Status.BOUNCED: frozenset({Status.SENDING, Status.SENT, Status.DELIVERED}),
}


class Outcome(StrEnum):
    """How one attempt with one provider ended."""

    ACCEPTED = "accepted"  # the provider took the mail (2xx)
    TRANSIENT = "transient"  # timeout, connection error, 408, 429, 5xx: try again later
    MISCONFIGURED = "misconfigured"  # 401/403 and the like: our key or account is wrong
    REJECTED = "rejected"  # 400/413/422: this provider will never take this mail
    SKIPPED = "skipped"  # the provider's circuit breaker was open: no call was made
    #: The call is in flight: recorded before it is made, so a crash leaves a trace.
    PENDING = "pending"
    #: No answer: the call timed out after the request went out, the connection
    #: dropped before the answer, or the process died during the call (a
    #: ``pending`` attempt found later). The provider may have taken the mail.
    UNKNOWN = "unknown"


class Check(StrEnum):
    """What asking the provider about an ``unknown`` attempt found."""

    TAKEN = "taken"  # the provider has the mail: it is ``sent``, not sent again
    NOT_FOUND = "not-found"  # the provider has no record of it: sent again
    CANNOT = "cannot-check"  # the provider offers no way to ask (or did not answer): sent again


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())
#: Random bytes for ten ULIDs per 100 read at once: ``os.urandom`` is a system
#: call, and on a hot path one per id showed in profiles.
_POOL_IDS = 100


class _UlidSource:
    """ULIDs: 48 bits of milliseconds, 80 random bits; monotonic within a millisecond."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        self._last_ms = -1
        self._last_random = 0

    def _random(self) -> int:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(10 * _POOL_IDS), 0
        at = self._at
        self._at = at + 10
        return int.from_bytes(self._pool[at : at + 10])

    def new(self, now: float) -> str:
        ms = int(now * 1000)
        if ms == self._last_ms and self._last_random < 2**80 - 1:
            random = self._last_random + 1  # same millisecond: still in order
        else:
            random = self._random()
        self._last_ms, self._last_random = ms, random
        # Base32 of 80 bits is 16 characters, no padding: the time as 80 bits (its
        # top 30 are zero: 6 characters dropped), then the random part.
        raw = base64.b32encode(ms.to_bytes(10) + random.to_bytes(10))
        return raw.translate(_TO_CROCKFORD)[6:].decode()


_ULIDS = _UlidSource()


def iso_time(ts: float) -> str:
    """A unix time as RFC 3339 in UTC, e.g. ``2025-01-02T03:04:05.678Z``."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_mail_id(now: float | None = None) -> str:
    """An opaque, time-ordered id made without a round trip (a ULID)."""
    return _ULIDS.new(time.time() if now is None else now)


@dataclass(frozen=True, slots=True)
class Address:
    email: str
    name: str = ""

    def formatted(self) -> str:
        """RFC 5322 form: ``"Ann" <ann@example.com>`` or the bare address."""
        from email.utils import formataddr

        return formataddr((self.name, self.email)) if self.name else self.email

    def as_json(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name} if self.name else {"email": self.email}


class Disposition(StrEnum):
    """How a mail program shows an attachment (RFC 2183)."""

    #: A file of its own, offered for download.
    ATTACHMENT = "attachment"
    #: Shown in the body: an image the HTML refers to as ``cid:<content_id>``.
    INLINE = "inline"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file sent with a mail (``Mail.attachments``), as validation left it."""

    #: The file's name, as the recipient sees it (no path).
    filename: str
    #: The file's bytes, as standard base64 (RFC 4648: padded, no line breaks):
    #: kept and sent as given, so a mail read back from the store is the same.
    #: Left out of ``repr``: megabytes have no place in a log line or a traceback.
    content: str = field(repr=False)
    #: Its MIME type, ``type/subtype``, lowercase, no parameters.
    content_type: str
    disposition: Disposition
    #: What an inline file is referred to by (``cid:...`` in the HTML), without
    #: angle brackets; None for a plain attachment.
    content_id: str | None
    #: The file's size in bytes (decoded).
    size: int

    @classmethod
    def of(
        cls,
        filename: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        disposition: Disposition = Disposition.ATTACHMENT,
        content_id: str | None = None,
    ) -> Attachment:
        """The attachment of ``data`` (its content base64-encoded, its size counted)."""
        content = base64.b64encode(data).decode("ascii")
        return cls(filename, content, content_type, disposition, content_id, len(data))

    def decoded(self) -> bytes:
        """The file's bytes."""
        return base64.b64decode(self.content)

    def as_json(self) -> dict[str, Any]:
        """The attachment as the API shows it: by name, type and size, never its content."""
        out: dict[str, Any] = {
            "filename": self.filename,
            "content_type": self.content_type,
            "disposition": self.disposition.value,
        }
        if self.content_id is not None:
            out["content_id"] = self.content_id
        out["size"] = self.size
        return out


@dataclass(frozen=True, slots=True)
class Mail:
    """A mail as the caller submitted it, after validation."""

    id: str
    sender: Address
    to: tuple[Address, ...]
    subject: str
    text: str | None = None
    html: str | None = None
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: Address | None = None
    created_at: float = field(default_factory=time.time)
    #: Whose mail it is: the tenant of the API key that submitted it ("" without keys).
    tenant: str = ""
    #: Where each change of the mail's status is POSTed (``actors.callbacks``); None: nowhere.
    callback_url: str | None = None
    #: The request that submitted it: logs carry it to every provider call for the mail.
    request_id: str = ""
    #: When to send it (unix time); None: at once. The mail waits ``scheduled`` till then.
    send_at: float | None = None
    #: Custom ``X-`` headers, (name, value) in the order given.
    headers: tuple[tuple[str, str], ...] = ()
    #: Tags (SendGrid categories, Mailgun ``o:tag``).
    tags: tuple[str, ...] = ()
    #: The caller's metadata, (key, value) in the order given (SendGrid
    #: ``custom_args``, Mailgun ``v:`` variables); never holds ``mail_id``.
    metadata: tuple[tuple[str, str], ...] = ()
    #: Files sent with the mail, in the order given.
    attachments: tuple[Attachment, ...] = ()

    @property
    def first_status(self) -> Status:
        """Its status once committed: ``scheduled`` if it waits for its ``send_at``,
        else ``queued``."""
        return Status.QUEUED if self.send_at is None else Status.SCHEDULED

    @property
    def message_id(self) -> str:
        """The mail's ``Message-ID`` header: the same through every provider, retry and
        replay, so mail programs that dedupe by it show a mail sent twice once.

        ``<mail id@sender's domain>``: the mail id is unique, and the domain
        says whose it is (RFC 5322's advice for the right-hand side).
        """
        return f"<{self.id}@{self.sender.email.rpartition('@')[2]}>"

    def as_json(self) -> dict[str, Any]:
        """The submitted mail in the shape the API shows it."""
        out: dict[str, Any] = {
            "from": self.sender.as_json(),
            "to": [a.as_json() for a in self.to],
            "subject": self.subject,
        }
        if self.cc:
            out["cc"] = [a.as_json() for a in self.cc]
        if self.bcc:
            out["bcc"] = [a.as_json() for a in self.bcc]
        if self.reply_to:
            out["reply_to"] = self.reply_to.as_json()
        if self.text is not None:
            out["text"] = self.text
        if self.html is not None:
            out["html"] = self.html
        if self.callback_url is not None:
            out["callback_url"] = self.callback_url
        if self.send_at is not None:
            out["send_at"] = iso_time(self.send_at)
        if self.headers:
            out["headers"] = dict(self.headers)
        if self.tags:
            out["tags"] = list(self.tags)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.attachments:
            out["attachments"] = [a.as_json() for a in self.attachments]
        return out


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try with one provider, kept in the mail's history."""

    provider: str
    round: int
    at: float
    outcome: Outcome
    reason: str | None = None
    message_id: str | None = None
    #: The attempt's row in the store: set on attempts read back from it, and on
    #: an update that finishes an attempt recorded before the call. Not compared:
    #: two records of one attempt are equal whether or not they carry it.
    id: int | None = field(default=None, compare=False)
    #: For an ``unknown`` attempt: what asking the provider found (None: not asked yet).
    checked: Check | None = None


class EventKind(StrEnum):
    """What a provider reported about a mail after taking it (one set for every provider)."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"  # the recipient's server said "later": the provider keeps trying
    BOUNCED = "bounced"  # ``bounce`` says hard (permanent) or soft (temporary)
    DROPPED = "dropped"  # the provider would not send it (suppressed address, spam...)
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    OPENED = "opened"
    CLICKED = "clicked"

    @property
    def moves_to(self) -> Status | None:
        """The status this event moves a mail to, if any (a soft bounce moves none)."""
        if self is EventKind.DELIVERED:
            return Status.DELIVERED
        if self is EventKind.DROPPED:
            return Status.BOUNCED
        return None


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One event a provider reported about a mail, normalised, kept in its history."""

    mail_id: str
    provider: str
    kind: EventKind
    #: When the provider says it happened (unix time).
    at: float
    #: Unique per provider event (SendGrid's ``sg_event_id``, Mailgun's signature token):
    #: an event delivered twice is kept once.
    dedupe: str
    #: ``hard`` or ``soft`` for a bounce.
    bounce: str | None = None
    reason: str | None = None
    recipient: str | None = None

    @property
    def moves_to(self) -> Status | None:
        if self.kind is EventKind.BOUNCED:
            return Status.BOUNCED if self.bounce != "soft" else None
        return self.kind.moves_to


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Asks a sender to try a mail with the provider at ``hop`` of the chain.

    Carries the mail's id, not its body: the sender reads the mail from the
    store, and so also learns whether it is already ``sent`` (at-least-once
    delivery makes duplicates possible; a sent mail is never sent again).
    """

    mail_id: str
    accepted_at: float
    hop: int = 0
    round: int = 0
    #: Providers that rejected this mail permanently: skipped from now on.
    rejected: tuple[str, ...] = ()
    #: The longest ``Retry-After`` any provider asked for in this round.
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Asks the retry scheduler to hand ``dispatch`` on once ``due_at`` (unix time) is reached."""

    dispatch: Dispatch
    due_at: float


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """Asks the store to record an attempt and/or move a mail's status (``Store.apply``).

    Status moves are guarded (see ``ALLOWED_FROM``), so replaying an update,
    or applying two out of order, never moves a mail backwards.
    """

    mail_id: str
    status: Status
    at: float
    provider: str | None = None
    provider_message_id: str | None = None
    reason: str | None = None
    #: Recorded (``attempt.id`` None) or, for an attempt recorded before its call,
    #: finished (``attempt.id`` set): outcome, reason, message id and check.
    attempt: Attempt | None = None
    #: When the mail is next due to be handled (a retry's time); a mail ``sending``
    #: past it with no live attempt is picked up again by the sweeper. None: ``at``.
    due_at: float | None = None


def key_of(record: object) -> str:
    """The mail id a record is about: a broker keys messages by it, so one
    mail's messages stay in order on one partition."""
    if isinstance(record, RetryLater):
        return record.dispatch.mail_id
    mail_id = getattr(record, "mail_id", None)
    if isinstance(mail_id, str):
        return mail_id
    raise TypeError(f"{type(record).__name__} has no mail id")


# --- wire format -----------------------------------------------------------

Record = TypeVar("Record")


def encode(record: object) -> bytes:
    """A record as JSON bytes (for a broker)."""
    return orjson.dumps(record)


def decode(kind: type[Record], data: bytes | str) -> Record:
    """The record of type ``kind`` that ``encode`` made; ``ValueError`` if it is not one."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    built: Record = _decoder(typing.cast(Any, kind))(raw)
    return built


Decoder = typing.Callable[[Any], Any]


@functools.cache
def _decoder(kind: Any) -> Decoder:
    """A function that builds a ``kind`` from its decoded JSON, made once per type.

    Senders decode every mail they load, so the type's fields are looked at
    once here, not on every call.
    """
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        inner = _decoder(options[0])
        optional = type(None) in typing.get_args(kind)

        def union(raw: Any) -> Any:
            return None if raw is None and optional else inner(raw)

        return union
    if origin is tuple:
        item = _decoder(typing.get_args(kind)[0])

        def items(raw: Any) -> Any:
            if not isinstance(raw, list):
                raise ValueError(f"expected a list, got {type(raw).__name__}")
            return tuple(map(item, raw))

        return items
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        fields = [(f.name, _decoder(hints[f.name])) for f in dataclasses.fields(kind)]
        name = kind.__name__

        def record(raw: Any) -> Any:
            if not isinstance(raw, dict):
                raise ValueError(f"expected an object for {name}")
            args = {key: build(raw[key]) for key, build in fields if key in raw}
            try:
                return kind(**args)
            except TypeError as exc:
                raise ValueError(str(exc)) from None

        return record
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return kind
    if kind is float:

        def number(raw: Any) -> float:
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                return float(raw)
            raise ValueError(f"expected {kind}, got {type(raw).__name__}")

        return number

    def plain(raw: Any) -> Any:
        if isinstance(raw, kind):
            return raw
        raise ValueError(f"expected {kind}, got {type(raw).__name__}")

    return plain

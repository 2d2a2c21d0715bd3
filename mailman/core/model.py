"""The mail model: a mail, its addresses and files, its status, its attempts and events.

Frozen and typed, made of plain values (str, int, float, None, tuples, nested
records), so a record crosses a mailbox or the store as it is
(``core.messages.encode``) and comes back equal.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import quote

from .records import fast_init


class Status(StrEnum):
    """Where a mail stands. ``queued`` -> ``sending`` -> ``sent`` | ``failed``; then, as the
    provider reports it, ``sent`` -> ``delivered`` | ``bounced``. A mail whose every
    visible recipient is suppressed ends ``suppressed`` (``core.suppression``)."""

    QUEUED = "queued"
    #: Waits for its ``send_at`` time; then ``queued``.
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    #: Held: its answer was lost at a provider that cannot be asked, and
    #: ``MAILMAN_UNKNOWN_POLICY=hold`` keeps it for an operator (``/retry``, ``/sent``).
    UNKNOWN = "unknown"
    #: The recipient's server took the mail (the provider's delivery event).
    DELIVERED = "delivered"
    #: The provider gave up on the mail: a hard bounce, or it dropped the mail.
    BOUNCED = "bounced"
    #: Every visible recipient (to, cc) is on its tenant's suppression list: no provider
    #: was called (``Mail.suppressed`` names them).
    SUPPRESSED = "suppressed"

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
    Status.SENT: frozenset({Status.QUEUED, Status.SENDING, Status.UNKNOWN}),
    # A scheduled mail can be marked failed by hand (so it is never sent).
    Status.FAILED: frozenset({Status.QUEUED, Status.SCHEDULED, Status.SENDING, Status.UNKNOWN}),
    # Held: nothing moves it on but an operator (or a delivery event, proof it went out).
    Status.UNKNOWN: frozenset({Status.SENDING}),
    Status.DELIVERED: frozenset({Status.SENDING, Status.SENT, Status.UNKNOWN}),
    Status.BOUNCED: frozenset({Status.SENDING, Status.SENT, Status.DELIVERED, Status.UNKNOWN}),
    # Found before a provider call (at acceptance a mail is stored ``suppressed`` at once).
    Status.SUPPRESSED: frozenset({Status.QUEUED, Status.SENDING}),
}


class SuppressionReason(StrEnum):
    """Why an address is on a tenant's suppression list."""

    #: A provider reported a hard (permanent) bounce.
    BOUNCE = "bounce"
    #: The recipient marked a mail as spam (a provider's complaint event).
    COMPLAINT = "complaint"
    #: The recipient unsubscribed (a provider's event, or one-click unsubscribe).
    UNSUBSCRIBE = "unsubscribe"
    #: Added by hand (the API, the CLI, an import without a reason).
    MANUAL = "manual"


@fast_init
@dataclass(frozen=True, slots=True)
class Suppressed:
    """A recipient dropped from a mail because its address is suppressed."""

    email: str
    reason: SuppressionReason


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


@fast_init
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


@fast_init
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


@fast_init
@dataclass(frozen=True, slots=True)
class TemplateUse:
    """The template (and its version) a mail was rendered from at acceptance."""

    id: str
    name: str
    version: int


@fast_init
@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """A mail's one-click unsubscribe (RFC 8058): its group, and what its
    ``List-Unsubscribe`` header offers (``core.unsubscribe``)."""

    #: The unsubscribe group (``newsletter``): who unsubscribes is suppressed for it.
    group: str
    #: The signed HTTPS URL on Mailman (``MAILMAN_PUBLIC_URL``); "" until the intake signs it.
    url: str = ""
    #: An address offered as ``mailto:`` beside the URL; None: none.
    mailto: str | None = None


@fast_init
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
    #: The provider chain it was accepted with, as written (its tenant's own, ``mailman
    #: tenants set``); None: the deployment's ``MAILMAN_PROVIDERS``.
    providers: str | None = None
    #: The caller's metadata, (key, value) in the order given (SendGrid
    #: ``custom_args``, Mailgun ``v:`` variables); never holds ``mail_id``.
    metadata: tuple[tuple[str, str], ...] = ()
    #: Files sent with the mail, in the order given.
    attachments: tuple[Attachment, ...] = ()
    #: Recipients dropped because their address is suppressed (``core.suppression``),
    #: in the order found; they are in none of ``to``, ``cc``, ``bcc``.
    suppressed: tuple[Suppressed, ...] = ()

    @property
    def visible(self) -> bool:
        """Whether it has a visible recipient left (to or cc): one it can be sent to."""
        return bool(self.to or self.cc)

    #: The template its subject and bodies were rendered from (they are the rendered
    #: text: what is stored and sent); None: none.
    template: TemplateUse | None = None
    #: Its one-click unsubscribe (``List-Unsubscribe``); None: a mail of no group (transactional).
    unsubscribe: Unsubscribe | None = None

    @property
    def content_bytes(self) -> int:
        """About how large it is: its texts' characters and its files' base64, what most
        of its size is."""
        size = len(self.text or "") + len(self.html or "")
        for attachment in self.attachments:
            size += len(attachment.content)
        return size

    @property
    def group(self) -> str:
        """Its unsubscribe group; "" for a mail of none (suppressed only for every mail)."""
        return "" if self.unsubscribe is None else self.unsubscribe.group

    @property
    def sent_headers(self) -> tuple[tuple[str, str], ...]:
        """The headers every provider sends besides the standard ones: the caller's
        ``headers``, then ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` (RFC 2369,
        RFC 8058) when the mail has a signed unsubscribe URL."""
        unsubscribe = self.unsubscribe
        if unsubscribe is None or not unsubscribe.url:
            return self.headers
        links = f"<{unsubscribe.url}>"
        if unsubscribe.mailto is not None:
            # RFC 6068: '%', '/', '?', '#' and the like percent-encoded, and UTF-8 too (the
            # header stays printable ASCII).
            mailto = quote(unsubscribe.mailto, safe="@!$&'*+=^_`{|}~.-")
            links += f", <mailto:{mailto}?subject=unsubscribe>"
        return (
            *self.headers,
            ("List-Unsubscribe", links),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        )

    @property
    def first_status(self) -> Status:
        """Its status once committed: ``suppressed`` if no visible recipient is left,
        ``scheduled`` if it waits for its ``send_at``, else ``queued``."""
        if not self.visible:
            return Status.SUPPRESSED
        return Status.QUEUED if self.send_at is None else Status.SCHEDULED

    @property
    def message_id(self) -> str:
        """The mail's ``Message-ID`` header: the same through every provider, retry and
        replay, so mail programs that dedupe by it show a mail sent twice once.

        ``<mail id@sender's domain>``: the mail id is unique, and the domain
        says whose it is (RFC 5322's advice for the right-hand side).
        """
        return f"<{self.id}@{self.sender.email.rpartition('@')[2]}>"


@fast_init
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

    #: The provider took the mail (SendGrid's ``processed``, SES's ``Send``): settles a
    #: mail whose answer was lost (``unknown``) as ``sent``, never moves one back.
    PROCESSED = "processed"
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
        if self is EventKind.PROCESSED:
            return Status.SENT
        if self is EventKind.DELIVERED:
            return Status.DELIVERED
        if self is EventKind.DROPPED:
            return Status.BOUNCED
        return None


@fast_init
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
    #: The provider's id for the mail, when the event names it: recorded on a mail a
    #: ``processed`` event settles as ``sent``. Not kept with the event, not compared.
    message_id: str | None = field(default=None, compare=False)

    @property
    def moves_to(self) -> Status | None:
        if self.kind is EventKind.BOUNCED:
            return Status.BOUNCED if self.bounce != "soft" else None
        return self.kind.moves_to

    @property
    def suppresses(self) -> SuppressionReason | None:
        """Why this event puts its recipient on the tenant's suppression list: a hard
        bounce, a complaint, an unsubscribe (a soft bounce never); None: it does not."""
        if self.kind is EventKind.BOUNCED:
            return SuppressionReason.BOUNCE if self.bounce == "hard" else None
        if self.kind is EventKind.COMPLAINED:
            return SuppressionReason.COMPLAINT
        if self.kind is EventKind.UNSUBSCRIBED:
            return SuppressionReason.UNSUBSCRIBE
        return None

"""Provider events in: ``POST /webhooks/{sendgrid,mailgun,resend,postmark}``.

What a provider reports after taking a mail (delivered, bounced, opened...)
arrives here signed by the provider, is normalised to one event set
(``actors.messages.DeliveryEvent``) and kept in the mail's history by
``Store.record_events``, which moves the mail's status on (``sent`` ->
``delivered`` | ``bounced``) with guarded moves, so out-of-order events never
move it backwards.

- Providers send no API key, so these endpoints need none. Each one is off
  (404) until its key is configured, and then accepts nothing unsigned.
- SendGrid: ECDSA P-256 / SHA-256 over the timestamp header and the raw body,
  checked before the body is parsed. Mailgun: hex HMAC-SHA256 over
  ``timestamp + token`` (both in the JSON body), compared in constant time.
  Resend (Svix): base64 HMAC-SHA256 over ``svix-id.svix-timestamp.body``, keyed with
  the base64 part of the ``whsec_`` secret, checked before the body is parsed.
- Postmark signs nothing: its webhook URL carries a user and password (HTTP basic
  auth, as Postmark recommends), compared in constant time; missing or wrong: 401
  (Postmark tries a post again after a 401, and stops after a 403).
- A timestamp more than ``MAX_SKEW_SECONDS`` away from now is refused, and so
  is a replayed Mailgun token or Svix id: nothing is processed again (``RecentTokens``).
- No signature: 401; a bad or stale one: 403; a malformed body: 400. Nothing is
  stored for any of them. Events for mails this store does not have are
  acknowledged (200) and logged as ``webhook.unknown_mail``, so the provider
  stops sending them again. Each request logs one ``webhook.received`` line.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypeVar

import orjson
from aiohttp import hdrs, web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from mailman.config import Secret
from mailman.config.logging import get_logger
from mailman.core.model import DeliveryEvent, EventKind
from mailman.core.validation import FieldError
from mailman.intake.guard import guarded
from mailman.store import EventResult

from . import CONFIG, STORE
from .body import decode_json, read_body
from .contract import Answer, Body, Header, operation, problem
from .errors import BAD_REQUEST, NOT_FOUND, Problem
from .models.webhooks import (
    MailgunWebhook,
    PostmarkEvent,
    ResendWebhook,
    SendGridEvents,
    WebhookAnswer,
)

log = get_logger("mailman.webhooks")

routes = web.RouteTableDef()
H = TypeVar("H", bound=Callable[..., object])

SENDGRID = "sendgrid"
MAILGUN = "mailgun"
RESEND = "resend"
RESEND_PATH = "/webhooks/resend"
SENDGRID_PATH = "/webhooks/sendgrid"
MAILGUN_PATH = "/webhooks/mailgun"
POSTMARK = "postmark"
POSTMARK_PATH = "/webhooks/postmark"
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"

#: A signature's timestamp may be this many seconds old, or ahead of our clock.
MAX_SKEW_SECONDS = 300.0
#: Mailgun tokens one API process remembers (each for twice ``MAX_SKEW_SECONDS``).
RECENT_TOKENS = 20_000

_PROBLEMS = "https://mailman.dev/problems/"  # as in .errors
SIGNATURE_MISSING = _PROBLEMS + "signature-missing"
SIGNATURE_INVALID = _PROBLEMS + "signature-invalid"
SIGNATURE_STALE = _PROBLEMS + "signature-stale"

#: Unix seconds, as both providers send them (whole seconds, as text).
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
#: What the store's columns hold: a dedupe key, a reason, a recipient (longer: cut or hashed).
_MAX_DEDUPE = 255
_MAX_REASON = 1000
_MAX_RECIPIENT = 320


# --- signatures --------------------------------------------------------------------


def sendgrid_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key (base64 DER SubjectPublicKeyInfo, as its console shows it)."""
    key = load_der_public_key(base64.b64decode(text, validate=True))
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey, signature: str, timestamp: str, body: bytes
) -> bool:
    """Whether ``signature`` (base64 DER ECDSA) signs ``timestamp`` + ``body`` under ``key``."""
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except (ValueError, UnicodeEncodeError, InvalidSignature):  # binascii.Error is a ValueError
        return False
    return True


def mailgun_signature(key: str, timestamp: str, token: str) -> str:
    """Mailgun's signature: hex HMAC-SHA256 of ``timestamp + token`` keyed with the signing key."""
    message = (timestamp + token).encode("utf-8", "surrogateescape")
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_mailgun(key: str, timestamp: str, token: str, signature: str) -> bool:
    """Whether ``signature`` is Mailgun's for ``timestamp`` and ``token``, in constant time."""
    expected = mailgun_signature(key, timestamp, token).encode("ascii")
    return hmac.compare_digest(expected, signature.encode("utf-8", "surrogateescape"))


def svix_key(secret: str) -> bytes:
    """The HMAC key of a Svix signing secret: the base64 after ``whsec_``."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def svix_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """A Svix ``v1`` signature: base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{msg_id}.{timestamp}.".encode("utf-8", "surrogateescape") + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def verify_svix(key: bytes, msg_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """Whether one of the space-separated ``v1,<base64>`` entries of ``header`` is the
    signature of ``msg_id``, ``timestamp`` and ``body``, compared in constant time."""
    expected = svix_signature(key, msg_id, timestamp, body).encode("ascii")
    found = False
    for entry in header.split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(
            expected, signature.encode("utf-8", "surrogateescape")
        ):
            found = True
    return found


def verify_basic(header: str, credentials: str) -> bool:
    """Whether ``header`` (an ``Authorization`` value) is HTTP basic auth with exactly
    ``credentials`` (``user:password``), compared in constant time."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:  # binascii.Error is a ValueError
        return False
    return hmac.compare_digest(given, credentials.encode("utf-8"))


def _unauthorized(detail: str, kind: str) -> Problem:
    """401 asking for basic auth (Postmark's webhooks: missing or wrong credentials)."""
    return Problem(
        HTTPStatus.UNAUTHORIZED,
        detail,
        type=kind,
        headers={hdrs.WWW_AUTHENTICATE: 'Basic realm="mailman-webhooks", charset="UTF-8"'},
    )


def _missing(detail: str) -> Problem:
    return Problem(
        HTTPStatus.UNAUTHORIZED,
        detail,
        type=SIGNATURE_MISSING,
        headers={hdrs.WWW_AUTHENTICATE: 'Signature realm="mailman-webhooks"'},
    )


def _invalid(provider: str) -> Problem:
    return Problem(
        HTTPStatus.FORBIDDEN,
        f"The {provider} webhook signature does not verify with the configured key.",
        type=SIGNATURE_INVALID,
    )


def _check_fresh(timestamp: str, provider: str, now: float) -> None:
    """403 unless ``timestamp`` is unix seconds within ``MAX_SKEW_SECONDS`` of ``now``."""
    if not _TIMESTAMP.fullmatch(timestamp):
        raise Problem(
            HTTPStatus.FORBIDDEN,
            f"The {provider} webhook timestamp is not unix seconds.",
            type=SIGNATURE_INVALID,
        )
    if abs(now - int(timestamp)) > MAX_SKEW_SECONDS:
        raise Problem(
            HTTPStatus.FORBIDDEN,
            f"The {provider} webhook timestamp is more than {MAX_SKEW_SECONDS:g} s away from "
            "this server's clock: a replay, or a clock that is off.",
            type=SIGNATURE_STALE,
        )


class RecentTokens:
    """The Mailgun tokens this process accepted lately, so a replay is not processed again.

    The store keeps every recorded event once per token; this also covers the
    events it does not keep (for unknown mails). A token older than twice
    ``MAX_SKEW_SECONDS`` needs no memory: its timestamp is refused as stale.
    """

    def __init__(self, limit: int = RECENT_TOKENS, keep: float = 2 * MAX_SKEW_SECONDS) -> None:
        self.limit = limit
        self.keep = keep
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, token: object) -> bool:
        return token in self._seen

    def add(self, token: str, now: float) -> None:
        self._seen[token] = now
        self._seen.move_to_end(token)
        while self._seen and (
            len(self._seen) > self.limit or next(iter(self._seen.values())) < now - self.keep
        ):
            self._seen.popitem(last=False)


@dataclass(slots=True)
class Webhooks:
    """What the webhook endpoints of one app hold: the keys (None: off) and recent tokens."""

    sendgrid_key: ec.EllipticCurvePublicKey | None = None
    mailgun_key: Secret | None = field(default=None, repr=False)
    postmark_credentials: Secret | None = field(default=None, repr=False)
    tokens: RecentTokens = field(default_factory=RecentTokens)
    resend_key: bytes | None = field(default=None, repr=False)
    svix_ids: RecentTokens = field(default_factory=RecentTokens)


WEBHOOKS = web.AppKey("webhooks", Webhooks)


def add_webhooks(app: web.Application) -> None:
    """Route ``POST /webhooks/{sendgrid,mailgun,resend,postmark}`` on ``app``, keyed from its
    config (SES's, ``webhooks_ses.add_ses_webhook``, builds on this module).

    The routes always exist (so the OpenAPI document names them); without its key
    an endpoint answers 404.
    """
    config = app[CONFIG]
    key = config.sendgrid_webhook_public_key
    app[WEBHOOKS] = Webhooks(
        sendgrid_key=None if key is None else sendgrid_public_key(key),
        mailgun_key=config.mailgun_webhook_signing_key,
        resend_key=None if (r := config.resend_webhook_secret) is None else svix_key(r.reveal()),
        postmark_credentials=config.postmark_webhook_credentials,
    )
    app.add_routes(routes)


def _off(provider: str, variable: str) -> Problem:
    return Problem(
        HTTPStatus.NOT_FOUND,
        f"The {provider} webhook is off here: it needs {variable}.",
        type=NOT_FOUND,
    )


# --- parsing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Incoming:
    """One event as parsed: its mail is ``event.mail_id``, or else found by ``message_id``."""

    event: DeliveryEvent
    message_id: str | None = None


def _malformed(detail: str, *errors: FieldError) -> Problem:
    return Problem(HTTPStatus.BAD_REQUEST, detail, type=BAD_REQUEST, errors=errors)


def _text(value: object, limit: int | None = None) -> str | None:
    """``value`` if it is a non-empty string (cut to ``limit``), else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value if limit is None or len(value) <= limit else value[: limit - 1] + "…"


def _time(value: object) -> float | None:
    """Unix seconds from a JSON number (not a boolean), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _dedupe(value: str) -> str:
    """A provider's unique event id, short enough for the store (long ones are hashed)."""
    if len(value) <= _MAX_DEDUPE:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


#: SendGrid's event names, as the normalised kind; other events (group_resubscribe,
#: and any new one) are acknowledged and skipped.
SENDGRID_KINDS: dict[str, EventKind] = {
    "processed": EventKind.PROCESSED,
    "delivered": EventKind.DELIVERED,
    "deferred": EventKind.DEFERRED,
    "bounce": EventKind.BOUNCED,
    "dropped": EventKind.DROPPED,
    "spamreport": EventKind.COMPLAINED,
    "unsubscribe": EventKind.UNSUBSCRIBED,
    "group_unsubscribe": EventKind.UNSUBSCRIBED,
    "open": EventKind.OPENED,
    "click": EventKind.CLICKED,
}


def parse_sendgrid(body: object) -> tuple[list[Incoming], int]:
    """The events of a SendGrid batch that concern us, and how many were skipped.

    400 unless the body is an array of objects, each with an ``event`` name, and
    each event we keep with its ``sg_event_id`` and ``timestamp``.
    """
    if not isinstance(body, list):
        raise _malformed("SendGrid sends a JSON array of events.")
    incoming: list[Incoming] = []
    skipped = 0
    for i, item in enumerate(body):
        if not isinstance(item, dict) or _text(item.get("event")) is None:
            raise _malformed(
                "Each SendGrid event is an object with an 'event' name.",
                FieldError(f"[{i}]", "must be an object with an 'event' name"),
            )
        kind = SENDGRID_KINDS.get(item["event"])
        if kind is None:
            skipped += 1
            continue
        dedupe = _text(item.get("sg_event_id"))
        at = _time(item.get("timestamp"))
        errors = []
        if dedupe is None:
            errors.append(FieldError(f"[{i}].sg_event_id", "required: a non-empty string"))
        if at is None:
            errors.append(FieldError(f"[{i}].timestamp", "required: unix seconds"))
        if dedupe is None or at is None:
            raise _malformed("A SendGrid event lacks its id or time.", *errors)
        bounce = None
        if kind is EventKind.BOUNCED:
            bounce = "soft" if item.get("type") == "blocked" else "hard"
        why = item.get("response") if kind is EventKind.DEFERRED else item.get("reason")
        message = _text(item.get("sg_message_id"))
        incoming.append(
            Incoming(
                DeliveryEvent(
                    mail_id=_text(item.get("mail_id")) or "",
                    provider=SENDGRID,
                    kind=kind,
                    at=at,
                    dedupe=_dedupe(dedupe),
                    bounce=bounce,
                    reason=_text(why, _MAX_REASON),
                    recipient=_text(item.get("email"), _MAX_RECIPIENT),
                ),
                # sg_message_id is the X-Message-Id of the send, a dot, and more.
                message_id=None if message is None else message.split(".", 1)[0],
            )
        )
    return incoming, skipped


#: Mailgun's event names, as the normalised kind (``failed`` is a bounce, hard when
#: ``severity`` is permanent); others (accepted, and any new one) are skipped.
MAILGUN_KINDS: dict[str, EventKind] = {
    "delivered": EventKind.DELIVERED,
    "failed": EventKind.BOUNCED,
    "opened": EventKind.OPENED,
    "clicked": EventKind.CLICKED,
    "unsubscribed": EventKind.UNSUBSCRIBED,
    "complained": EventKind.COMPLAINED,
}


def _mailgun_reason(data: dict[str, Any]) -> str | None:
    """Why a Mailgun delivery failed: its ``reason`` and the ``delivery-status`` text."""
    status = data.get("delivery-status")
    detail = None
    if isinstance(status, dict):
        detail = _text(status.get("description")) or _text(status.get("message"))
    parts = [p for p in (_text(data.get("reason")), detail) if p]
    return _text(": ".join(parts), _MAX_REASON)


def parse_mailgun(data: object, token: str) -> Incoming | None:
    """The event of a Mailgun webhook, None if it is one we skip; 400 if malformed."""
    if not isinstance(data, dict) or _text(data.get("event")) is None:
        raise _malformed(
            "A Mailgun webhook carries 'event-data' with an 'event' name.",
            FieldError("event-data", "must be an object with an 'event' name"),
        )
    kind = MAILGUN_KINDS.get(data["event"])
    if kind is None:
        return None
    at = _time(data.get("timestamp"))
    if at is None:
        raise _malformed(
            "A Mailgun event lacks its time.",
            FieldError("event-data.timestamp", "required: unix seconds"),
        )
    variables = data.get("user-variables")
    mail_id = _text(variables.get("mail_id")) if isinstance(variables, dict) else None
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = _text(headers.get("message-id")) if isinstance(headers, dict) else None
    bounce = None
    if kind is EventKind.BOUNCED:
        bounce = "hard" if data.get("severity") == "permanent" else "soft"
    return Incoming(
        DeliveryEvent(
            mail_id=mail_id or "",
            provider=MAILGUN,
            kind=kind,
            at=at,
            dedupe=_dedupe(token),
            bounce=bounce,
            reason=_mailgun_reason(data) if kind is EventKind.BOUNCED else None,
            recipient=_text(data.get("recipient"), _MAX_RECIPIENT),
        ),
        # Mailgun gives the Message-ID without the angle brackets its send answer had.
        message_id=None if message_id is None else f"<{message_id.strip('<>')}>",
    )


#: Resend's event types, as the normalised kind (``email.bounced`` is hard when its
#: ``bounce.type`` is ``Permanent``); others (email.sent, and any new one) are skipped.
RESEND_KINDS: dict[str, EventKind] = {
    "email.delivered": EventKind.DELIVERED,
    "email.delivery_delayed": EventKind.DEFERRED,
    "email.bounced": EventKind.BOUNCED,
    "email.failed": EventKind.DROPPED,
    "email.suppressed": EventKind.DROPPED,
    "email.complained": EventKind.COMPLAINED,
    "email.opened": EventKind.OPENED,
    "email.clicked": EventKind.CLICKED,
}


def _resend_tag(tags: object, name: str) -> str | None:
    """The value of tag ``name``: Resend's events give tags as an object (``{name:
    value}``), its send requests as a list of ``{"name", "value"}``; both are read."""
    if isinstance(tags, dict):
        return _text(tags.get(name))
    if isinstance(tags, list):
        for tag in tags:
            if isinstance(tag, dict) and tag.get("name") == name:
                return _text(tag.get("value"))
    return None


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _resend_time(value: object) -> float | None:
    """Unix seconds from an ISO 8601 time (Resend's ``created_at``), else None."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_resend(body: object, msg_id: str, sent_at: float) -> Incoming | None:
    """The event of a Resend webhook, None if it is one we skip; 400 if malformed.
    Its ``svix-id`` is its dedupe key; its time ``created_at`` (else the signature's)."""
    if not isinstance(body, dict) or _text(body.get("type")) is None:
        raise _malformed("A Resend webhook is a JSON object with a 'type'.")
    kind = RESEND_KINDS.get(body["type"])
    if kind is None:
        return None
    data = body.get("data")
    if not isinstance(data, dict):
        raise _malformed(
            "A Resend event carries its email in 'data'.",
            FieldError("data", "required: an object"),
        )
    email_id = _text(data.get("email_id"))
    mail_id = _resend_tag(data.get("tags"), "mail_id")
    to = data.get("to")
    recipient = to[0] if isinstance(to, list) and len(to) == 1 else to
    bounce, reason = None, None
    if kind is EventKind.BOUNCED:
        detail = _object(data.get("bounce"))
        bounce = "hard" if detail.get("type") == "Permanent" else "soft"
        parts = [_text(detail.get(k)) for k in ("type", "subType", "message")]
        reason = _text(": ".join(p for p in parts if p), _MAX_REASON)
    elif kind is EventKind.DROPPED:
        failed = _object(data.get("failed"))
        reason = _text(failed.get("reason"), _MAX_REASON) or body["type"]
    return Incoming(
        DeliveryEvent(
            mail_id=mail_id or "",
            provider=RESEND,
            kind=kind,
            at=_resend_time(body.get("created_at")) or sent_at,
            dedupe=_dedupe(msg_id),
            bounce=bounce,
            reason=reason,
            recipient=_text(recipient, _MAX_RECIPIENT),
        ),
        message_id=email_id,
    )


#: Postmark's record types, as the normalised kind (``Bounce`` by its ``Type`` below,
#: ``SubscriptionChange`` only when a recipient suppressed sending); others are skipped.
POSTMARK_KINDS: dict[str, EventKind] = {
    "Delivery": EventKind.DELIVERED,
    "Bounce": EventKind.BOUNCED,
    "SpamComplaint": EventKind.COMPLAINED,
    "Open": EventKind.OPENED,
    "Click": EventKind.CLICKED,
    "SubscriptionChange": EventKind.UNSUBSCRIBED,
}
#: The field with each record type's time.
POSTMARK_TIMES = {
    "Delivery": "DeliveredAt",
    "Bounce": "BouncedAt",
    "SpamComplaint": "BouncedAt",
    "Open": "ReceivedAt",
    "Click": "ReceivedAt",
    "SubscriptionChange": "ChangedAt",
}
#: Bounce ``Type``s that are permanent (hard) or temporary (soft); others (auto
#: responders, address changes, challenge mails...) say nothing of delivery: skipped.
POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})
POSTMARK_SOFT = frozenset({"SoftBounce", "Transient", "DnsError", "Blocked", "DMARCPolicy"})


def _iso_time(value: object) -> float | None:
    """Unix seconds from an ISO 8601 time with an offset (Postmark's ``...Z``), else None."""
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _postmark_kind(data: dict[str, Any]) -> tuple[EventKind, str | None] | None:
    """The kind of a Postmark record and a bounce's ``hard``/``soft``; None: skipped."""
    record = data["RecordType"]
    kind = POSTMARK_KINDS.get(record)
    if kind is EventKind.BOUNCED:
        bounce_type = data.get("Type")
        if bounce_type == "SpamComplaint":
            return EventKind.COMPLAINED, None
        if bounce_type in POSTMARK_HARD:
            return kind, "hard"
        if bounce_type in POSTMARK_SOFT:
            return kind, "soft"
        return None
    if kind is EventKind.UNSUBSCRIBED and not (
        data.get("SuppressSending") is True and data.get("SuppressionReason") == "ManualSuppression"
    ):
        return None  # a reactivation, or the suppression a bounce or complaint brings
    return None if kind is None else (kind, None)


def parse_postmark(data: object) -> Incoming | None:
    """The event of a Postmark webhook, None if it is one we skip; 400 if malformed.

    Postmark's records carry no event id: the dedupe key is the record type, the
    bounce ``ID`` or the message id, the recipient and the time, the same in every
    retry of one post.
    """
    if not isinstance(data, dict) or _text(data.get("RecordType")) is None:
        raise _malformed(
            "A Postmark webhook is a JSON object with a 'RecordType'.",
            FieldError("RecordType", "required: a non-empty string"),
        )
    found = _postmark_kind(data)
    if found is None:
        return None
    kind, bounce = found
    record = data["RecordType"]
    stamp = data.get(POSTMARK_TIMES[record])
    at = _iso_time(stamp)
    if at is None:
        raise _malformed(
            f"A Postmark {record} record lacks its time.",
            FieldError(POSTMARK_TIMES[record], "required: an ISO 8601 time with an offset"),
        )
    metadata = data.get("Metadata")
    mail_id = _text(metadata.get("mail_id")) if isinstance(metadata, dict) else None
    message_id = _text(data.get("MessageID"))
    recipient = _text(data.get("Recipient")) or _text(data.get("Email"))
    ident = data.get("ID")
    ident = str(ident) if isinstance(ident, int | str) and not isinstance(ident, bool) else None
    dedupe = ":".join(["postmark", record, ident or message_id or "", recipient or "", str(stamp)])
    reason = None
    if kind in (EventKind.BOUNCED, EventKind.COMPLAINED):
        parts = [_text(data.get("Name")) or _text(data.get("Type")), _text(data.get("Description"))]
        reason = _text(": ".join(p for p in parts if p), _MAX_REASON)
    return Incoming(
        DeliveryEvent(
            mail_id=mail_id or "",
            provider=POSTMARK,
            kind=kind,
            at=at,
            dedupe=_dedupe(dedupe),
            bounce=bounce,
            reason=reason,
            recipient=None if recipient is None else _text(recipient, _MAX_RECIPIENT),
        ),
        message_id=message_id,
    )


# --- recording ---------------------------------------------------------------------


def _answer(counts: WebhookAnswer) -> web.Response:
    return web.Response(body=orjson.dumps(counts), content_type="application/json")


async def _record(
    request: web.Request, provider: str, incoming: list[Incoming], skipped: int
) -> web.Response:
    """Keep ``incoming`` in their mails' histories; answer and log the counts."""
    store = request.app[STORE]
    timeout = request.app[CONFIG].store_timeout
    found: dict[str, str | None] = {}
    resolved: list[DeliveryEvent | None] = []  # None: no mail found for it
    for item in incoming:
        event = item.event
        if not event.mail_id and item.message_id is not None:
            if item.message_id not in found:
                found[item.message_id] = await guarded(
                    store, timeout, store.mail_for_message(item.message_id)
                )
            mail_id = found[item.message_id]
            if mail_id is not None:
                event = dataclasses.replace(event, mail_id=mail_id)
        if event.kind is EventKind.PROCESSED and item.message_id is not None:
            event = dataclasses.replace(event, message_id=item.message_id)
        resolved.append(event if event.mail_id else None)
    events = [e for e in resolved if e is not None]
    results = await guarded(store, timeout, store.record_events(events)) if events else []
    outcomes = iter(results)
    unknown = 0
    for item, kept in zip(incoming, resolved, strict=True):
        if kept is not None and next(outcomes) is not EventResult.UNKNOWN_MAIL:
            continue
        unknown += 1
        log.info(
            "webhook.unknown_mail",
            provider=provider,
            mail_id=item.event.mail_id or None,
            message_id=item.message_id,
            kind=item.event.kind.value,
        )
    counts: WebhookAnswer = {
        "recorded": sum(r is EventResult.RECORDED for r in results),
        "duplicate": sum(r is EventResult.DUPLICATE for r in results),
        "unknown": unknown,
        "skipped": skipped,
    }
    log.info("webhook.received", provider=provider, events=len(incoming) + skipped, **counts)
    return _answer(counts)


# --- endpoints -----------------------------------------------------------------------


def _webhook(provider: str, summary: str, body: Any) -> Callable[[H], H]:
    """A provider's webhook: public, signed, 404 while its key is unset."""
    return operation(
        f"{provider}Events",
        summary,
        description="For the provider, not for API clients: no API key, but signed.",
        body=Body.json(body),
        answers={
            200: Answer(
                "Handled: counts of the events kept, seen before, for mails this service "
                "does not have, and skipped",
                WebhookAnswer,
            ),
            400: problem("Not JSON, or not the provider's event shape"),
            401: dataclasses.replace(
                problem("No signature"), headers={hdrs.WWW_AUTHENTICATE: Header(required=True)}
            ),
            403: problem("A signature that does not verify, or a stale timestamp"),
            404: problem("Off: no webhook key is configured for this provider"),
            408: problem("The request body stalled"),
            413: problem("The body is too large"),
            415: problem("A Content-Encoding other than gzip or deflate"),
            503: problem("The store does not answer; try again after Retry-After", "Retry-After"),
        },
    )


@routes.post(SENDGRID_PATH)
@_webhook(
    SENDGRID,
    "SendGrid's Event Webhook: ECDSA-signed (X-Twilio-Email-Event-Webhook-Signature "
    "and -Timestamp headers) arrays of events",
    SendGridEvents,
)
async def sendgrid_events(request: web.Request) -> web.Response:
    """SendGrid's Event Webhook: a signed JSON array of events."""
    key = request.app[WEBHOOKS].sendgrid_key
    if key is None:
        raise _off("SendGrid", "MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY")
    signature = request.headers.get(SENDGRID_SIGNATURE, "").strip()
    timestamp = request.headers.get(SENDGRID_TIMESTAMP, "").strip()
    if not signature or not timestamp:
        raise _missing(f"Send the {SENDGRID_SIGNATURE} and {SENDGRID_TIMESTAMP} headers.")
    _check_fresh(timestamp, "SendGrid", time.time())
    raw = await read_body(request)
    if not verify_sendgrid(key, signature, timestamp, raw):  # before the body is parsed
        raise _invalid("SendGrid")
    incoming, skipped = parse_sendgrid(decode_json(raw))
    return await _record(request, SENDGRID, incoming, skipped)


@routes.post(MAILGUN_PATH)
@_webhook(MAILGUN, "A Mailgun webhook: one HMAC-signed event", MailgunWebhook)
async def mailgun_events(request: web.Request) -> web.Response:
    """A Mailgun webhook: one signed event, ``{"signature": {...}, "event-data": {...}}``."""
    hooks = request.app[WEBHOOKS]
    key = hooks.mailgun_key
    if key is None:
        raise _off("Mailgun", "MAILMAN_MAILGUN_WEBHOOK_SIGNING_KEY")
    body = decode_json(await read_body(request))
    if not isinstance(body, dict):
        raise _malformed("A Mailgun webhook is a JSON object with 'signature' and 'event-data'.")
    signed = body.get("signature")
    if not isinstance(signed, dict) or not all(
        signed.get(part) not in (None, "") for part in ("timestamp", "token", "signature")
    ):
        raise _missing("Send the Mailgun signature: timestamp, token and signature.")
    timestamp, token, signature = (signed[p] for p in ("timestamp", "token", "signature"))
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        timestamp = str(timestamp)
    if not all(isinstance(p, str) for p in (timestamp, token, signature)):
        raise _invalid("Mailgun")
    _check_fresh(timestamp, "Mailgun", time.time())
    if not verify_mailgun(key.reveal(), timestamp, token, signature):
        raise _invalid("Mailgun")
    if token in hooks.tokens:
        # A replay (or Mailgun sending it again): processed once, acknowledged again.
        counts: WebhookAnswer = {"recorded": 0, "duplicate": 1, "unknown": 0, "skipped": 0}
        log.info("webhook.received", provider=MAILGUN, events=1, replayed=True, **counts)
        return _answer(counts)
    event = parse_mailgun(body.get("event-data"), token)
    response = await _record(request, MAILGUN, [] if event is None else [event], int(event is None))
    hooks.tokens.add(token, time.time())  # only once handled: a 503 may be retried
    return response


SVIX_ID, SVIX_TIMESTAMP, SVIX_SIGNATURE = "svix-id", "svix-timestamp", "svix-signature"


@routes.post(RESEND_PATH)
@_webhook(
    RESEND,
    "A Resend webhook: one event, signed the Svix way (svix-id, svix-timestamp and "
    "svix-signature headers)",
    ResendWebhook,
)
async def resend_events(request: web.Request) -> web.Response:
    """A Resend webhook: one Svix-signed event, ``{"type", "created_at", "data"}``."""
    hooks = request.app[WEBHOOKS]
    key = hooks.resend_key
    if key is None:
        raise _off("Resend", "MAILMAN_RESEND_WEBHOOK_SECRET")
    msg_id, timestamp, signature = (
        request.headers.get(h, "").strip() for h in (SVIX_ID, SVIX_TIMESTAMP, SVIX_SIGNATURE)
    )
    if not msg_id or not timestamp or not signature:
        raise _missing(f"Send the {SVIX_ID}, {SVIX_TIMESTAMP} and {SVIX_SIGNATURE} headers.")
    _check_fresh(timestamp, "Resend", time.time())
    raw = await read_body(request)
    if not verify_svix(key, msg_id, timestamp, raw, signature):  # before the body is parsed
        raise _invalid("Resend")
    if msg_id in hooks.svix_ids:
        # A replay (or Resend sending it again): processed once, acknowledged again.
        counts: WebhookAnswer = {"recorded": 0, "duplicate": 1, "unknown": 0, "skipped": 0}
        log.info("webhook.received", provider=RESEND, events=1, replayed=True, **counts)
        return _answer(counts)
    event = parse_resend(decode_json(raw), msg_id, float(timestamp))
    response = await _record(request, RESEND, [] if event is None else [event], int(event is None))
    hooks.svix_ids.add(msg_id, time.time())  # only once handled: a 503 may be retried
    return response


@routes.post(POSTMARK_PATH)
@_webhook(
    POSTMARK,
    "A Postmark webhook: one record, with HTTP basic auth (the user and password in its URL)",
    PostmarkEvent,
)
async def postmark_events(request: web.Request) -> web.Response:
    """A Postmark webhook: one record (``RecordType``), checked by its basic auth."""
    credentials = request.app[WEBHOOKS].postmark_credentials
    if credentials is None:
        raise _off("Postmark", "MAILMAN_POSTMARK_WEBHOOK_CREDENTIALS")
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    if not header.strip():
        raise _unauthorized(
            "Put the user and password in Postmark's webhook URL (HTTP basic auth).",
            SIGNATURE_MISSING,
        )
    if not verify_basic(header, credentials.reveal()):  # before the body is read
        raise _unauthorized(
            "The Postmark webhook's user and password are not the configured ones.",
            SIGNATURE_INVALID,
        )
    event = parse_postmark(decode_json(await read_body(request)))
    return await _record(request, POSTMARK, [] if event is None else [event], int(event is None))

"""Amazon SES events in: ``POST /webhooks/ses``, posted by SNS.

SES publishes a configuration set's events to an SNS topic; the topic's HTTPS
subscription posts each one here as an SNS message. Nothing is taken on trust:

- The endpoint is off (404) until ``MAILMAN_SES_SNS_TOPIC_ARNS`` names the
  topics it takes; a message for any other topic is refused (403) before
  anything is fetched: SNS signs every topic's messages, anyone's.
- The SNS signature is verified (``SignatureVersion`` 1: RSA SHA1, 2: RSA
  SHA256, over the string SNS builds of the message's fields) with the
  certificate at ``SigningCertURL``, which must be on an SNS host over HTTPS
  (``MAILMAN_SNS_HOST_PATTERN``; tests point it at a loopback host). The
  certificates are cached by URL.
- ``SubscriptionConfirmation``: once verified, its ``SubscribeURL`` (the same
  host rule) is visited, which confirms the subscription.
  ``UnsubscribeConfirmation`` is acknowledged.
- ``Notification``: its ``Message`` is the SES event (``eventType``, or
  ``notificationType`` for an identity's notifications), normalised to the
  event set of the other providers; its mail is found by the ``mail_id``
  email tag, else the ``X-Mailman-Id`` header, else SES's ``messageId``.
  An event is kept once per SNS ``MessageId`` and recipient.

No signature: 401; a bad one, a foreign topic or certificate host: 403;
nothing is stored for any of them.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict

from mailman.config.logging import get_logger
from mailman.core.model import DeliveryEvent, EventKind

from . import CONFIG
from .body import decode_json, read_body
from .errors import Problem
from .models.webhooks import WebhookAnswer
from .webhooks import (
    _MAX_REASON,
    _MAX_RECIPIENT,
    SIGNATURE_INVALID,
    Incoming,
    _answer,
    _dedupe,
    _malformed,
    _missing,
    _off,
    _record,
    _text,
    _webhook,
)

log = get_logger("mailman.webhooks")

routes = web.RouteTableDef()

SES = "ses"
SES_PATH = "/webhooks/ses"
#: The fields SNS signs, in order, by message type (``Subject`` only when present).
NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
SUBSCRIPTION_FIELDS = (
    *("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
)
SIGNED_FIELDS = {
    "Notification": NOTIFICATION_FIELDS,
    "SubscriptionConfirmation": SUBSCRIPTION_FIELDS,
    "UnsubscribeConfirmation": SUBSCRIPTION_FIELDS,
}
#: SNS's signature versions and their hashes.
SIGNATURE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
#: Signing certificates one API process keeps (SNS uses one per region at a time).
CACHED_CERTIFICATES = 32
#: The largest certificate read.
MAX_CERTIFICATE_BYTES = 64 * 1024


class SnsMessage(BaseModel):
    """An SNS message as SNS posts it (``Content-Type: text/plain``, a JSON object)."""

    model_config = ConfigDict(extra="allow")

    Type: str
    MessageId: str
    TopicArn: str
    Message: str
    Timestamp: str
    SignatureVersion: str
    Signature: str
    SigningCertURL: str
    Subject: str | None = None
    SubscribeURL: str | None = None
    Token: str | None = None


class Unreachable(Exception):
    """SNS's certificate host or subscribe URL did not answer: SNS should try again."""


@dataclass(slots=True)
class Sns:
    """What ``POST /webhooks/ses`` holds: the topics it takes (none: off), where SNS's
    certificates may come from, the certificates fetched, one HTTP session."""

    topics: frozenset[str]
    hosts: re.Pattern[str]
    timeout: float
    certificates: OrderedDict[str, rsa.RSAPublicKey] = field(default_factory=OrderedDict)
    #: Certificates fetched (not found in the cache), for the logs and tests.
    fetched: int = 0
    session: aiohttp.ClientSession | None = None
    fetching: asyncio.Lock = field(default_factory=asyncio.Lock)

    def allowed(self, url: str) -> bool:
        """Whether ``url`` is on a host SNS's certificates and subscribe URLs may be on:
        its ``scheme://host[:port]`` matches ``hosts``, and it names no user."""
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises for a port that is no number
        except ValueError:
            return False
        if "@" in parts.netloc or not parts.hostname:
            return False
        return bool(self.hosts.fullmatch(f"{parts.scheme}://{parts.netloc.lower()}"))

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self.session

    async def get(self, url: str, limit: int) -> tuple[int, bytes]:
        """GET ``url`` (no redirects): its status and at most ``limit`` bytes of its body."""
        try:
            async with self._session().get(url, allow_redirects=False) as resp:
                return resp.status, await resp.content.read(limit)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None

    async def public_key(self, url: str) -> rsa.RSAPublicKey | None:
        """The RSA key of the certificate at ``url`` (cached); None if it is none."""
        key = self.certificates.get(url)
        if key is not None:
            self.certificates.move_to_end(url)
            return key
        async with self.fetching:  # one fetch for the posts that arrive together
            key = self.certificates.get(url)
            return key if key is not None else await self._fetch(url)

    async def _fetch(self, url: str) -> rsa.RSAPublicKey | None:
        status, pem = await self.get(url, MAX_CERTIFICATE_BYTES)
        if status >= 500:
            raise Unreachable(f"HTTP {status}")
        self.fetched += 1
        try:
            found = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            return None
        if status != 200 or not isinstance(found, rsa.RSAPublicKey):
            return None
        self.certificates[url] = found
        while len(self.certificates) > CACHED_CERTIFICATES:
            self.certificates.popitem(last=False)
        return found

    async def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.close()


SNS = web.AppKey("sns", Sns)


def add_ses_webhook(app: web.Application) -> None:
    """Route ``POST /webhooks/ses`` on ``app``, configured from its config."""
    config = app[CONFIG]
    sns = Sns(
        topics=frozenset(config.ses_sns_topic_arns),
        hosts=re.compile(config.sns_host_pattern),
        timeout=config.provider_timeout,
    )
    app[SNS] = sns

    async def close(_: web.Application) -> None:
        await sns.close()

    app.on_cleanup.append(close)
    app.add_routes(routes)


def string_to_sign(message: dict[str, Any]) -> bytes | None:
    """What SNS signs of ``message``: ``name\\nvalue\\n`` for each signed field of its type,
    in order; None if a field is missing or not text."""
    lines = []
    for name in SIGNED_FIELDS[message["Type"]]:
        value = message.get(name)
        if name == "Subject" and value is None:
            continue
        if not isinstance(value, str):
            return None
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8")


def verify_sns(key: rsa.RSAPublicKey, message: dict[str, Any]) -> bool:
    """Whether ``message``'s ``Signature`` is SNS's over its fields, under ``key``."""
    algorithm = SIGNATURE_HASHES.get(str(message.get("SignatureVersion")))
    signed = string_to_sign(message)
    if algorithm is None or signed is None:
        return False
    try:
        signature = base64.b64decode(str(message.get("Signature")), validate=True)
        key.verify(signature, signed, padding.PKCS1v15(), algorithm())
    except (ValueError, InvalidSignature):
        return False
    return True


def _refused(detail: str) -> Problem:
    return Problem(HTTPStatus.FORBIDDEN, detail, type=SIGNATURE_INVALID)


def _unreachable(what: str, why: str) -> Problem:
    return Problem(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"{what} did not answer ({why}): send it again later.",
        headers={"Retry-After": "30"},
    )


async def verified(request: web.Request, sns: Sns) -> dict[str, Any]:
    """The SNS message posted, once its topic, certificate host and signature hold."""
    body = decode_json(await read_body(request))
    if not isinstance(body, dict) or body.get("Type") not in SIGNED_FIELDS:
        raise _malformed(
            "SNS posts a JSON object whose Type is Notification, SubscriptionConfirmation or "
            "UnsubscribeConfirmation."
        )
    if not all(_text(body.get(f)) for f in ("Signature", "SigningCertURL", "SignatureVersion")):
        raise _missing("Send the SNS message as SNS signs it: Signature, SigningCertURL.")
    if body.get("TopicArn") not in sns.topics:
        raise _refused("The SNS message is for a topic this service does not take.")
    url = str(body["SigningCertURL"])
    if not sns.allowed(url) or not urlsplit(url).path.endswith(".pem"):
        raise _refused("The SNS signing certificate is not on an SNS host.")
    try:
        key = await sns.public_key(url)
    except Unreachable as exc:
        raise _unreachable("SNS's certificate host", str(exc)) from None
    if key is None or not verify_sns(key, body):
        raise _refused("The SNS message signature does not verify.")
    return body


@routes.post(SES_PATH)
@_webhook(
    SES,
    "Amazon SES events through SNS: RSA-signed SNS messages (Notification, "
    "SubscriptionConfirmation)",
    SnsMessage,
)
async def ses_events(request: web.Request) -> web.Response:
    """SES's events, as SNS posts them: one signed message per post."""
    sns = request.app[SNS]
    if not sns.topics:
        raise _off("SES", "MAILMAN_SES_SNS_TOPIC_ARNS")
    message = await verified(request, sns)
    kind = message["Type"]
    none: WebhookAnswer = {"recorded": 0, "duplicate": 0, "unknown": 0, "skipped": 0}
    if kind == "SubscriptionConfirmation":
        url = _text(message.get("SubscribeURL"))
        if url is None or not sns.allowed(url):
            raise _refused("The SNS SubscribeURL is not on an SNS host.")
        try:
            status, _ = await sns.get(url, 0)
        except Unreachable as exc:
            raise _unreachable("SNS's SubscribeURL", str(exc)) from None
        if not 200 <= status < 300:
            raise _unreachable("SNS's SubscribeURL", f"HTTP {status}")
        log.info("webhook.sns_subscribed", provider=SES, topic=message["TopicArn"])
        return _answer(none)
    if kind == "UnsubscribeConfirmation":
        log.info("webhook.sns_unsubscribed", provider=SES, topic=message["TopicArn"])
        return _answer(none)
    try:
        event = decode_json(str(message["Message"]).encode("utf-8", "surrogateescape"))
    except Problem:
        raise _malformed("The SNS message's Message is not an SES event (JSON).") from None
    incoming, skipped = parse_ses(event, str(message["MessageId"]), _iso(message["Timestamp"]))
    return await _record(request, SES, incoming, skipped)


# --- SES events ----------------------------------------------------------------------------


#: SES's event types (``eventType``; ``notificationType`` for identity notifications): the
#: object holding the event's details, the normalised kind, where its recipients are.
SES_KINDS: dict[str, tuple[str, EventKind, str | None]] = {
    "Send": ("send", EventKind.PROCESSED, None),
    "Delivery": ("delivery", EventKind.DELIVERED, "recipients"),
    "Bounce": ("bounce", EventKind.BOUNCED, "bouncedRecipients"),
    "Complaint": ("complaint", EventKind.COMPLAINED, "complainedRecipients"),
    "DeliveryDelay": ("deliveryDelay", EventKind.DEFERRED, "delayedRecipients"),
    "Reject": ("reject", EventKind.DROPPED, None),
    "Rendering Failure": ("failure", EventKind.DROPPED, None),
    "Open": ("open", EventKind.OPENED, None),
    "Click": ("click", EventKind.CLICKED, None),
}


def _iso(value: object) -> float | None:
    """Unix seconds of an ISO 8601 time (``2026-12-06T09:00:00.123Z``), else None."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _mail_id(mail: dict[str, Any]) -> str:
    """The mail id an SES event's ``mail`` carries: the ``mail_id`` tag, else the
    ``X-Mailman-Id`` header ("" if neither)."""
    tags = mail.get("tags")
    values = tags.get("mail_id") if isinstance(tags, dict) else None
    if isinstance(values, list) and values and _text(values[0]):
        return str(values[0])
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "x-mailman-id":
            return _text(header.get("value")) or ""
    return ""


def _recipients(details: dict[str, Any], where: str | None) -> list[Any]:
    """The recipients an event is about: its own list, else none named (one event)."""
    if where is None:
        return [None]
    found = details.get(where)
    return found if isinstance(found, list) and found else [None]


def parse_ses(event: object, sns_id: str, sns_time: float | None) -> tuple[list[Incoming], int]:
    """The events an SES event (one SNS notification) makes, one per recipient it names,
    and how many were skipped (``Subscription``, any other type); 400 if it is
    not SES's shape."""
    if not isinstance(event, dict) or not isinstance(event.get("mail"), dict):
        raise _malformed("An SES event is a JSON object with 'eventType' and 'mail'.")
    name = event.get("eventType") or event.get("notificationType")
    known = SES_KINDS.get(name) if isinstance(name, str) else None
    if known is None or not isinstance(name, str):
        return [], 1
    where, kind, recipients_at = known
    mail: dict[str, Any] = event["mail"]
    details = event.get(where)
    if not isinstance(details, dict):
        raise _malformed(f"An SES {name} event carries its '{where}' object.")
    at = _iso(details.get("timestamp")) or _iso(mail.get("timestamp")) or sns_time
    if at is None:
        raise _malformed("An SES event lacks its time.")
    mail_id = _mail_id(mail)
    ses_id = _text(mail.get("messageId"))
    bounce = None
    if kind is EventKind.BOUNCED:
        bounce = "hard" if details.get("bounceType") == "Permanent" else "soft"
    incoming = []
    for recipient in _recipients(details, recipients_at):
        address = recipient.get("emailAddress") if isinstance(recipient, dict) else recipient
        address = _text(address, _MAX_RECIPIENT)
        incoming.append(
            Incoming(
                DeliveryEvent(
                    mail_id=mail_id,
                    provider=SES,
                    kind=kind,
                    at=at,
                    dedupe=_dedupe(f"{sns_id}/{address or ''}"),
                    bounce=bounce,
                    reason=_reason(name, details, recipient),
                    recipient=address,
                ),
                message_id=ses_id,
            )
        )
    return incoming, 0


def _reason(name: str, details: dict[str, Any], recipient: object) -> str | None:
    """Why SES says a mail bounced, was delayed, rejected or not rendered."""
    parts: list[str | None] = []
    if name == "Bounce":
        parts = [_text(details.get("bounceType")), _text(details.get("bounceSubType"))]
    elif name == "DeliveryDelay":
        parts = [_text(details.get("delayType"))]
    elif name == "Reject":
        parts = [_text(details.get("reason"))]
    elif name == "Rendering Failure":
        parts = [_text(details.get("errorMessage"))]
    elif name == "Complaint":
        parts = [_text(details.get("complaintFeedbackType"))]
    if isinstance(recipient, dict):
        parts.append(_text(recipient.get("diagnosticCode")))
    kept = [p for p in parts if p]
    return _text(": ".join(kept), _MAX_REASON) if kept else None

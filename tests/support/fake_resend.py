"""A fake Resend: ``POST /emails``, Bearer key, JSON body, ``Idempotency-Key``.

It checks what Resend checks (the key, the required fields, at most 50 ``to``
addresses, tag names and values of ASCII letters, digits, ``_`` and ``-`` up to
256 characters, attachments with a name and base64 content, 40 MB a mail with
its attachments base64-encoded: past it a 413) and answers as Resend does:
``200 {"id"}``, errors ``{"statusCode", "name", "message"}``.

Idempotency as Resend keeps it (providers.md): a key (1-256 characters) is
kept ``idempotency_ttl`` seconds (24 h) with a hash of the body and the id it
was answered with. The same key and body answer that id and keep nothing new
(``replays``); another body is ``409 invalid_idempotent_request``; the same
key while its first request is still in progress, from the moment it is
looked at until its answer goes out (``hold``, ``answer_delay``: a slow
provider; ``answer_delay`` holds up only the answer to a request that took a
mail), is ``409 concurrent_idempotent_requests`` (``concurrent``). A
request whose answer is lost (``mode = "drop"``, ``lose_answers``, a client
gone before ``answer_delay`` ended) has its key kept all the same: the mail
was taken. A first request that took no mail (refused, or the fake stopped
during it) keeps no key: the next one under it is served anew.

Webhooks (off by default): given ``webhook_url`` and ``webhook_secret`` (``whsec_...``),
it posts, after taking a mail, ``email.sent`` then ``email.delivered`` (or ``email.bounced``,
Permanent, when a ``to`` address's local part starts with ``bounce_prefix``), one event a
post, signed the Svix way (``svix-id``, ``svix-timestamp``, ``svix-signature``).

``copies`` counts the mails it took (what recipients would get); ``replays`` the
requests answered from a kept key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from .fakes import FakeProvider, Mode, Post, ReceivedFile, Serve

#: How long Resend keeps an idempotency key.
IDEMPOTENCY_TTL = 24 * 3600.0
#: The most addresses Resend takes in ``to``.
MAX_TO = 50
#: The most a mail may be, attachments base64-encoded (40 MB): counted as the request's
#: bytes. Resend does not document its answer past it; the fake's is a 413.
MAX_EMAIL_BYTES = 40 * 1024 * 1024
_TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")
#: Where a request keeps the key it reserved, and whether it took a mail.
_RESERVED = web.RequestKey("fake_resend.reserved_key", str)
_TOOK = web.RequestKey("fake_resend.took", bool)


def svix_headers(secret: str, msg_id: str, timestamp: str, body: bytes) -> dict[str, str]:
    """The headers Svix signs a post with: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``
    keyed with the base64 part of the ``whsec_`` secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "svix-id": msg_id,
        "svix-timestamp": timestamp,
        "svix-signature": "v1," + base64.b64encode(digest).decode("ascii"),
    }


def error(status: int, name: str, message: str) -> web.Response:
    """Resend's error body."""
    body = {"statusCode": status, "name": name, "message": message}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class FakeResend(FakeProvider[dict[str, Any]]):
    """Resend's send API with its idempotency keys."""

    path = "/emails"

    def __init__(
        self,
        *,
        api_key: str = "re_test",
        mode: Mode = "up",
        webhook_secret: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(api_key=api_key, mode=mode, **kwargs)
        self.webhook_secret = webhook_secret
        self.idempotency_ttl = IDEMPOTENCY_TTL
        #: The largest request it takes (``MAX_EMAIL_BYTES``); past it a 413.
        self.max_bytes = MAX_EMAIL_BYTES
        #: key -> (body hash, id, unix time kept); an id of None: no mail taken yet.
        self.keys: dict[str, tuple[str, str | None, float]] = {}
        #: Keys whose first request is in progress (its answer not yet out).
        self._in_progress: set[str] = set()
        #: Requests answered ``409 concurrent_idempotent_requests``.
        self.concurrent = 0
        #: When set (an unset event), a new request waits on it once its key is reserved.
        self.hold: asyncio.Event | None = None
        #: Set once a request waits on ``hold``.
        self.holding = asyncio.Event()
        self.replays = 0
        #: The answers of this many next mails taken are lost (the connection closed).
        self.lose_answers = 0
        #: Error messages echo the Authorization header (as some gateways do).
        self.echo = False

    async def answer(self, request: web.Request, serve: Serve) -> web.StreamResponse:
        taken = self.copies
        try:
            response = await super().answer(request, serve)
        finally:
            self._finish(request)
        if self.copies > taken and self.lose_answers > 0 and request.transport is not None:
            self.lose_answers -= 1
            request.transport.close()  # aiohttp drops an answer written to a closed transport
        if self.echo and isinstance(response, web.Response) and response.status >= 400:
            response.text = f"{response.text} ({request.headers.get('Authorization')})"
        return response

    @property
    def copies(self) -> int:
        return len(self.received)

    @property
    def in_progress(self) -> int:
        """Requests under a key whose answer has not gone out yet."""
        return len(self._in_progress)

    def mail_ids(self) -> list[str]:
        return [
            next((t["value"] for t in body.get("tags", []) if t["name"] == "mail_id"), "")
            for body in self.received
        ]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if auth.strip() in ("", "Bearer"):
            return error(401, "missing_api_key", "Missing API key in the authorization header")
        if auth != f"Bearer {self.api_key}":
            return self.unauthorized()
        raw = await request.read()
        if len(raw) > self.max_bytes:
            return error(
                413,
                "validation_error",
                "The email exceeds the 40 MB limit (attachments after Base64 encoding).",
            )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.bad_request("Invalid JSON body")
        if not isinstance(body, dict):
            return self.bad_request("Invalid JSON body")
        problem = _problem(body)
        if problem is not None:
            return error(422, *problem)
        key = request.headers.get("Idempotency-Key")
        if key is None:
            request[_TOOK] = True
            return self._take(body)
        if not 1 <= len(key) <= 256:
            return error(400, "invalid_idempotency_key", "The key must be between 1-256 chars.")
        digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        now = time.time()
        kept = self.keys.get(key)
        if kept is not None and now - kept[2] < self.idempotency_ttl:
            if kept[0] != digest:
                return error(
                    409,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload.",
                )
            if key in self._in_progress:
                self.concurrent += 1
                return error(
                    409,
                    "concurrent_idempotent_requests",
                    "Same idempotency key used while original request is still in progress.",
                )
            self.replays += 1
            return web.json_response({"id": kept[1]})
        # In progress from here until the answer goes out (``_finish``).
        self.keys[key] = (digest, None, now)
        self._in_progress.add(key)
        request[_RESERVED] = key
        if self.hold is not None:
            self.holding.set()
            await self.hold.wait()
        request[_TOOK] = True
        response = self._take(body)
        self.keys[key] = (digest, self.message_ids[-1], now)
        return response

    def slow_answer(self, request: web.Request, response: web.StreamResponse) -> float:
        """``answer_delay`` holds up the answer to a request that took a mail (a slow
        Resend); a refusal, a 409 or a replay answers at once."""
        return self.answer_delay if request.get(_TOOK) else 0.0

    def _finish(self, request: web.Request) -> None:
        """The request's answer is out (or it ended without one): the key it reserved is
        no longer in progress; kept if a mail was taken under it, else forgotten."""
        key = request.get(_RESERVED)
        if key is None:
            return
        self._in_progress.discard(key)
        kept = self.keys.get(key)
        if kept is not None and kept[1] is None:
            del self.keys[key]

    def _take(self, body: dict[str, Any]) -> web.Response:
        self.received.append(body)
        self.files.append(
            tuple(
                ReceivedFile(
                    "inline" if a.get("content_id") else "attachment",
                    a["filename"],
                    a.get("content_type", "application/octet-stream"),
                    base64.b64decode(a["content"]),
                    a.get("content_id"),
                )
                for a in body.get("attachments") or []
            )
        )
        self.message_ids.append(str(uuid.uuid4()))
        if self.webhook_url is not None and self.webhook_secret is not None:
            self.send_webhooks(self.events(body, self.message_ids[-1]))
        return web.json_response({"id": self.message_ids[-1]})

    def events(self, body: dict[str, Any], email_id: str) -> list[Post]:
        """The posts of a mail it took: ``email.sent``, then delivered or bounced."""
        to = body["to"] if isinstance(body["to"], list) else [body["to"]]
        data = {
            "email_id": email_id,
            "from": body["from"],
            "to": to,
            "subject": body["subject"],
            "created_at": _now(),
            "tags": {t["name"]: t["value"] for t in body.get("tags", [])},
        }
        bounced = [a for a in to if self.bounces(a.rpartition("<")[2].strip(">"))]
        outcome: dict[str, Any] = {"type": "email.delivered", "data": data}
        if bounced:
            bounce = {
                "type": "Permanent",
                "subType": "General",
                "message": "The recipient's email provider sent a hard bounce message.",
            }
            outcome = {"type": "email.bounced", "data": {**data, "bounce": bounce}}
        return [self._signed({"type": "email.sent", "data": data}), self._signed(outcome)]

    def _signed(self, event: dict[str, Any]) -> Post:
        """The post of ``event``: one svix-id, signed anew (a new timestamp) at each try."""
        body = orjson.dumps({**event, "created_at": _now()})
        msg_id = "msg_" + secrets.token_urlsafe(18)
        secret = self.webhook_secret or ""
        return lambda: (body, svix_headers(secret, msg_id, str(int(time.time())), body))

    def unavailable(self) -> web.Response:
        return error(503, "application_error", "Service unavailable")

    def too_many(self) -> web.Response:
        return error(429, "rate_limit_exceeded", "Too many requests.")

    def unauthorized(self) -> web.Response:
        return error(403, "invalid_api_key", "API key is invalid")

    def bad_request(self, message: str, field: str | None = None) -> web.Response:
        return error(422, "validation_error", message)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _problem(body: dict[str, Any]) -> tuple[str, str] | None:
    """What Resend would refuse in ``body`` (name, message), or None."""
    for required in ("from", "to", "subject"):
        if not body.get(required):
            return "missing_required_field", f"Missing `{required}` field."
    to = body["to"] if isinstance(body["to"], list) else [body["to"]]
    if len(to) > MAX_TO:
        return "validation_error", f"Too many recipients: `to` takes at most {MAX_TO}."
    if not body.get("html") and not body.get("text"):
        return "validation_error", "Missing `html` or `text` field."
    headers = body.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        return "validation_error", "`headers` must be an object of strings."
    for tag in body.get("tags", []):
        name, value = tag.get("name", ""), tag.get("value", "")
        if not _TAG.fullmatch(name) or not _TAG.fullmatch(value):
            return (
                "validation_error",
                "Tags should only contain ASCII letters, numbers, underscores, or dashes.",
            )
    for file in body.get("attachments") or []:
        if not file.get("filename") or not file.get("content"):
            return "invalid_attachment", "Attachment must have either a `content` or `path`."
        try:
            base64.b64decode(file["content"], validate=True)
        except (binascii.Error, ValueError):
            return "invalid_attachment", "Attachment `content` must be base64."
    return None

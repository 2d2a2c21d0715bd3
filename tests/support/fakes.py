"""Fake mail providers: real HTTP servers on 127.0.0.1 that speak the real APIs.

    async with FakeSendGrid(api_key="SG.test") as sg:
        client = SendGridClient(SendGridConfig(Secret("SG.test"), sg.base_url), timeout=1)
        ...
        sg.mode = "503"  # from now on every request gets a 503

Each fake enforces what the real provider enforces (auth, required fields)
and answers the way it answers (status, headers, body shape); see
providers.md. ``mode`` forces a failure:

- ``"up"``: behave like the real, healthy provider (the default);
- ``"503"``: 503 with the provider's JSON error body;
- ``"timeout"``: never answer while the fake runs (the client's own timeout
  fires); stopping the fake releases the waiting request;
- ``"429"``: 429 with ``Retry-After: {retry_after}``;
- ``"400"``: a permanent rejection;
- ``"401"``: the provider's answer to a bad key;
- ``"drop"``: serve the request as the healthy provider would (a valid mail is
  accepted and kept), then close the connection without an answer.

``max_in_flight``, when set, is a rate limit: a request that arrives while that
many are already being answered gets the ``"429"`` answer at once (counted in
``over_limit``), whatever the mode; ``in_flight`` is how many are being answered,
``peak_in_flight`` the most at once.

``gate``, when given an unset ``asyncio.Event``, holds every request (after
``delay``) until it is set: a provider exactly as slow as a test needs.
``delay`` seconds are waited before a request is looked at; ``answer_delay``
seconds after it was served (a valid mail already accepted) and before the
answer goes out, so a client that gives up first leaves the provider holding
the mail. Stopping the fake cuts both short.
``calls`` counts every request that reached the send endpoint, in any mode;
``received`` holds the parsed bodies of the requests that were accepted, and
``message_ids`` the provider message ids they were answered with. ``files``
holds, for each accepted request, the files it carried (``ReceivedFile``: the
decoded bytes, name, type, and how the provider would show it); SendGrid's
fake checks ``attachments`` as SendGrid does, Mailgun's takes file parts
(``attachment``, ``inline``) of a ``multipart/form-data`` body.

``FakeMailgun`` also serves the Events API (``GET /v3/{domain}/events``): an
``accepted`` event per recipient of every accepted mail, searchable by
``message-id``, ``event``, ``begin`` and ``end``. ``mode`` and the delays apply
to it too; ``lookups`` counts its requests.

Webhooks (off by default): given ``webhook_url`` and a key
(``FakeSendGrid(webhook_private_key=...)``, ``FakeMailgun(webhook_signing_key=...)``),
a fake posts its delivery events there itself after it accepted a mail, signed
the way the provider signs them: SendGrid one array per mail (``processed``, then
``delivered``, or ``bounce`` for a recipient whose local part starts with
``bounce_prefix``), Mailgun one post per event (``accepted``, then ``delivered`` or
a permanent ``failed``). They go out in a background task after the answer,
never holding up the send, and a post that gets no 2xx is tried again
(``webhook_attempts`` in all). ``webhook_answers`` holds the status of every post
(0: no answer).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import contextlib
import email.utils
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import aiohttp
import orjson
from aiohttp import web
from aiohttp.web_request import FileField
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

Mode = Literal["up", "503", "timeout", "429", "400", "401", "drop"]
Body = TypeVar("Body")
Serve = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A webhook post as it goes out: (body, headers); made again for each try.
Post = Callable[[], tuple[bytes, dict[str, str]]]
#: The largest request body a fake reads (aiohttp's default is 1 MiB): past every
#: provider's own limit, which the fakes check themselves.
FAKE_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """A file a fake took with a mail, as the provider would send it on."""

    #: ``attachment`` or ``inline``.
    disposition: str
    filename: str
    content_type: str
    data: bytes
    #: What the HTML refers to an inline file by: SendGrid's ``content_id``; with
    #: Mailgun the inline part's file name (Mailgun makes it the Content-ID).
    content_id: str | None = None


def sendgrid_webhook_signature(key: ec.EllipticCurvePrivateKey, timestamp: str, body: bytes) -> str:
    """SendGrid's signature header: base64 DER ECDSA P-256/SHA-256 over timestamp + body."""
    signature = key.sign(timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode("ascii")


def sendgrid_verification_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public half of ``key`` as SendGrid shows it: base64 DER SubjectPublicKeyInfo."""
    der = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def mailgun_webhook_signature(key: str, timestamp: str, token: str) -> str:
    """Mailgun's ``signature.signature``: hex HMAC-SHA256 of timestamp + token."""
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


class FakeProvider(abc.ABC, Generic[Body]):
    """The server lifecycle, the modes and the counters shared by the fakes."""

    #: The route of the provider's send endpoint.
    path: str

    def __init__(
        self,
        *,
        api_key: str,
        mode: Mode = "up",
        retry_after: str = "1",
        delay: float = 0.0,
        answer_delay: float = 0.0,
        webhook_url: str | None = None,
        bounce_prefix: str = "bounce",
    ) -> None:
        self.api_key = api_key
        #: Where the fake posts its delivery events (None: it posts none).
        self.webhook_url = webhook_url
        #: Recipients whose local part starts with this bounce; the others are delivered.
        self.bounce_prefix = bounce_prefix
        #: Tries per webhook post, and the wait before the first retry (doubling, up to
        #: ``webhook_retry_max`` if set).
        self.webhook_attempts = 3
        self.webhook_retry_delay = 0.05
        self.webhook_retry_max: float | None = None
        #: The status of every webhook post, in order (0: no answer).
        self.webhook_answers: list[int] = []
        self._webhook_tasks: set[asyncio.Task[None]] = set()
        self._webhook_session: aiohttp.ClientSession | None = None
        self.mode: Mode = mode
        self.retry_after = retry_after
        #: Seconds waited before a request is looked at.
        self.delay = delay
        #: Seconds waited after a request was served (the mail kept), before answering.
        self.answer_delay = answer_delay
        #: Requests wait for this event (if any) before they are looked at.
        self.gate: asyncio.Event | None = None
        self.calls = 0
        #: Requests being answered now; above ``max_in_flight`` (if set) one gets a 429.
        self.in_flight = 0
        #: The most requests it answered at once.
        self.peak_in_flight = 0
        self.max_in_flight: int | None = None
        #: For each call, in order: whether it got a 429 for being over ``max_in_flight``.
        self.over_limit: list[bool] = []
        #: Unix time of every call, in order (for "no call after ..." checks).
        self.call_times: list[float] = []
        self.received: list[Body] = []
        #: The provider message ids handed out for ``received``, in the same order.
        self.message_ids: list[str] = []
        #: The files of each request in ``received``, in the same order.
        self.files: list[tuple[ReceivedFile, ...]] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=FAKE_MAX_BODY)
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()  # releases requests held by "timeout" mode or the delays
        if self.gate is not None:
            self.gate.set()  # and by the gate
        for task in self._webhook_tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._webhook_tasks)
        if self._webhook_session is not None:
            await self._webhook_session.close()
            self._webhook_session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def bounces(self, address: str) -> bool:
        """Whether the fake bounces mail to ``address`` (else it delivers it)."""
        return address.partition("@")[0].lower().startswith(self.bounce_prefix)

    def send_webhooks(self, posts: list[Post]) -> None:
        """Post ``posts`` to ``webhook_url`` one after another, in the background."""
        task = asyncio.create_task(self._post_all(posts), name="fake-webhooks")
        self._webhook_tasks.add(task)
        task.add_done_callback(self._webhook_tasks.discard)

    async def _post_all(self, posts: list[Post]) -> None:
        await asyncio.sleep(0)  # after the answer to the send has gone out
        for post in posts:
            await self._post(post)

    #: Answers after which the provider does not try a post again (Mailgun: 406).
    final_answers: frozenset[int] = frozenset()

    def webhook_retry_wait(self, retry: int) -> float:
        """Seconds before the ``retry``-th new try of a post (1: the first): from
        ``webhook_retry_delay``, doubling, at most ``webhook_retry_max``."""
        wait = float(self.webhook_retry_delay * 2 ** (retry - 1))
        return wait if self.webhook_retry_max is None else min(wait, self.webhook_retry_max)

    async def _post(self, post: Post) -> None:
        """One webhook post, tried again on no answer or a non-2xx one, as providers do."""
        if self._webhook_session is None:
            self._webhook_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        for attempt in range(self.webhook_attempts):
            if attempt:
                await asyncio.sleep(self.webhook_retry_wait(attempt))
            url = self.webhook_url
            if url is None:
                return
            body, headers = post()
            try:
                async with self._webhook_session.post(url, data=body, headers=headers) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.webhook_answers.append(status)
            if 200 <= status < 300 or status in self.final_answers:
                return

    def add_routes(self, app: web.Application) -> None:
        """Route the provider's endpoints to their handlers."""
        app.router.add_post(self.path, self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.call_times.append(time.time())
        over = self.max_in_flight is not None and self.in_flight >= self.max_in_flight
        self.over_limit.append(over)
        if over:
            return self._too_many()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self.answer(request, self.serve)
        finally:
            self.in_flight -= 1

    async def answer(self, request: web.Request, serve: Serve) -> web.StreamResponse:
        """Answer ``request`` as ``mode`` and the delays say, ``serve`` being the healthy way."""
        await self._pause(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if self.mode not in ("up", "drop"):
            return await self._failure()
        response = await serve(request)
        await self._pause(self.slow_answer(request, response))
        if self.mode == "drop" and request.transport is not None:
            request.transport.close()  # aiohttp drops an answer written to a closed transport
        return response

    def slow_answer(self, request: web.Request, response: web.StreamResponse) -> float:
        """Seconds to wait before the answer to a served request goes out: ``answer_delay``."""
        return self.answer_delay

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the fake stops."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _failure(self) -> web.StreamResponse:
        """The answer of a forced failure ``mode``."""
        if self.mode == "timeout":
            await self._stopping.wait()
            return self.unavailable()
        if self.mode == "503":
            return self.unavailable()
        if self.mode == "429":
            return self._too_many()
        if self.mode == "401":
            return self.unauthorized()
        assert self.mode == "400", self.mode
        return self.bad_request("rejected by the fake (mode 400)")

    def _too_many(self) -> web.Response:
        response = self.too_many()
        response.headers["Retry-After"] = self.retry_after
        return response

    @abc.abstractmethod
    async def serve(self, request: web.Request) -> web.StreamResponse:
        """Answer ``request`` as the healthy provider would."""

    @abc.abstractmethod
    def unavailable(self) -> web.Response: ...

    @abc.abstractmethod
    def too_many(self) -> web.Response: ...

    @abc.abstractmethod
    def unauthorized(self) -> web.Response: ...

    @abc.abstractmethod
    def bad_request(self, message: str, field: str | None = None) -> web.Response: ...

    @abc.abstractmethod
    def mail_ids(self) -> list[str]:
        """The mail ids the accepted requests carried, in order."""


# --- SendGrid --------------------------------------------------------------

SENDGRID_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"


class FakeSendGrid(FakeProvider[dict[str, Any]]):
    """SendGrid v3 Mail Send: ``POST /v3/mail/send``, Bearer key, JSON body, 202."""

    path = "/v3/mail/send"

    def __init__(
        self,
        *,
        api_key: str = "SG.test",
        mode: Mode = "up",
        retry_after: str = "1",
        delay: float = 0.0,
        answer_delay: float = 0.0,
        webhook_url: str | None = None,
        webhook_private_key: ec.EllipticCurvePrivateKey | None = None,
        bounce_prefix: str = "bounce",
    ) -> None:
        super().__init__(
            api_key=api_key,
            mode=mode,
            retry_after=retry_after,
            delay=delay,
            answer_delay=answer_delay,
            webhook_url=webhook_url,
            bounce_prefix=bounce_prefix,
        )
        #: The Event Webhook's signing key (its public half is Mailman's verification key).
        self.webhook_private_key = webhook_private_key
        #: Picks the raw bytes of a request's ``X-Message-Id`` (not UTF-8, say); None:
        #: the usual token. ``message_ids`` then holds them ``\\xNN``-escaped.
        self.raw_message_id: Callable[[dict[str, Any]], bytes | None] | None = None
        #: Each suppression list's entries (``bounces``, ``spam_reports``, ``unsubscribes``):
        #: what ``GET /v3/suppression/{list}`` pages through.
        self.suppressions: dict[str, list[dict[str, Any]]] = {}
        #: The path and query of every request to a suppression list, in order.
        self.list_requests: list[str] = []

    def mail_ids(self) -> list[str]:
        return [body.get("custom_args", {}).get("mail_id", "") for body in self.received]

    #: SendGrid's suppression lists (``GET /v3/suppression/{list}``) and their most per page.
    suppression_lists = ("bounces", "spam_reports", "unsubscribes")
    suppression_page_max = 500

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        for name in self.suppression_lists:
            app.router.add_get(f"/v3/suppression/{name}", self._handle_list)

    async def _handle_list(self, request: web.Request) -> web.StreamResponse:
        self.list_requests.append(request.path_qs)
        return await self.answer(request, self.serve_list)

    async def serve_list(self, request: web.Request) -> web.StreamResponse:
        """A suppression list: a JSON array of ``{"created", "email", ...}``, ``limit``
        (at most 500) entries from ``offset``."""
        if request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            return self.unauthorized()
        try:
            limit = int(request.query.get("limit", "500"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return self.bad_request("limit and offset must be integers")
        if not 0 < limit <= self.suppression_page_max or offset < 0:
            return self.bad_request(f"limit must be 1 to {self.suppression_page_max}")
        kept = self.suppressions.get(request.path.rsplit("/", 1)[1], [])
        return web.json_response(kept[offset : offset + limit], dumps=_dumps)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if not auth:
            return _errors(401, "authorization required")
        if auth != f"Bearer {self.api_key}":
            return self.unauthorized()
        raw = await request.read()
        if len(raw) >= SENDGRID_MAX_MESSAGE_BYTES:
            # SendGrid's 413 is an HTML page, not its JSON error body.
            return web.Response(status=413, text=SENDGRID_TOO_LARGE_PAGE, content_type="text/html")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.bad_request("Bad Request")
        if not isinstance(body, dict):
            return self.bad_request("Bad Request")
        problems = _sendgrid_problems(body)
        if problems:
            return _errors(400, *problems)
        self.received.append(body)
        self.files.append(_sendgrid_files(body))
        odd = self.raw_message_id(body) if self.raw_message_id is not None else None
        if odd is not None:
            self.message_ids.append(odd.decode("utf-8", "backslashreplace"))
            return _raw_accepted(request, odd)
        self.message_ids.append(secrets.token_urlsafe(16))
        if self.webhook_url is not None and self.webhook_private_key is not None:
            self.send_webhooks([self._signed(self.events(body, self.message_ids[-1]))])
        return web.Response(status=202, headers={"X-Message-Id": self.message_ids[-1]})

    def events(self, body: dict[str, Any], message_id: str) -> list[dict[str, Any]]:
        """The Event Webhook's events for a mail it took: per recipient ``processed``,
        then ``delivered`` or ``bounce``, with every ``custom_args`` key at top level."""
        now = int(time.time())
        # The Event Webhook's sg_message_id: the X-Message-Id, a dot, then the filter's id.
        sg_message_id = f"{message_id}.filterdrecv-{secrets.token_hex(5)}-1-{now:X}-0.0"
        events: list[dict[str, Any]] = []
        for p in body["personalizations"]:
            args = {**body.get("custom_args", {}), **p.get("custom_args", {})}
            for kind in ("to", "cc", "bcc"):
                for address in p.get(kind) or []:
                    common = {
                        "email": address["email"],
                        "timestamp": now,
                        "smtp-id": f"<{message_id}@ismtpd0001p1lon1.sendgrid.net>",
                        "sg_message_id": sg_message_id,
                        **args,
                    }
                    events.append(
                        {**common, "event": "processed", "sg_event_id": secrets.token_urlsafe(16)}
                    )
                    if self.bounces(address["email"]):
                        outcome = {
                            "event": "bounce",
                            "type": "bounce",
                            "status": "5.1.1",
                            "reason": "550 5.1.1 The email account that you tried to reach "
                            "does not exist.",
                        }
                    else:
                        outcome = {"event": "delivered", "response": "250 2.0.0 OK"}
                    events.append({**common, **outcome, "sg_event_id": secrets.token_urlsafe(16)})
        return events

    def _signed(self, events: list[dict[str, Any]]) -> Post:
        """The post of ``events``: signed anew at each try, with SendGrid's trailing CRLF."""
        key = self.webhook_private_key
        assert key is not None
        body = orjson.dumps(events) + b"\r\n"

        def post() -> tuple[bytes, dict[str, str]]:
            timestamp = str(int(time.time()))
            return body, {
                "Content-Type": "application/json",
                "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
                "X-Twilio-Email-Event-Webhook-Signature": sendgrid_webhook_signature(
                    key, timestamp, body
                ),
            }

        return post

    def unavailable(self) -> web.Response:
        return _errors(503, "Service Unavailable")

    def too_many(self) -> web.Response:
        return _errors(429, "too many requests")

    def unauthorized(self) -> web.Response:
        return _errors(401, "The provided authorization grant is invalid, expired, or revoked")

    def bad_request(self, message: str, field: str | None = None) -> web.Response:
        return _errors(400, (message, field))


Problem = tuple[str, str | None]


def _raw_accepted(request: web.Request, message_id: bytes) -> web.Response:
    """A 202 whose ``X-Message-Id`` is ``message_id`` byte for byte (aiohttp writes only
    UTF-8 headers): written on the transport by hand, the connection then closed (the
    response returned is dropped, written to a closed transport)."""
    assert request.transport is not None
    request.transport.write(
        b"HTTP/1.1 202 Accepted\r\nX-Message-Id: "
        + message_id
        + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    request.transport.close()
    return web.Response(status=202)


def _errors(status: int, *problems: Problem | str) -> web.Response:
    """SendGrid's error shape: ``{"errors": [{"message", "field", "help"}]}``."""
    errors = []
    for problem in problems:
        message, field = (problem, None) if isinstance(problem, str) else problem
        errors.append(
            {"message": message, "field": field, "help": SENDGRID_HELP if field else None}
        )
    return web.Response(
        status=status, body=orjson.dumps({"errors": errors}), content_type="application/json"
    )


def _sendgrid_problems(body: dict[str, Any]) -> list[Problem]:
    """What SendGrid's validation says about ``body`` (empty: it is valid)."""
    problems: list[Problem] = []
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(
            (
                "The personalizations field is required and must have at least one "
                "personalization.",
                "personalizations",
            )
        )
        personalizations = []
    for i, p in enumerate(personalizations):
        problems += _personalization_problems(i, p if isinstance(p, dict) else {})
    sender = body.get("from")
    if not isinstance(sender, dict) or not _is_email(sender.get("email")):
        problems.append(
            (
                "The from object must be provided for every email send. It is an object that "
                "requires the email parameter, but may also contain a name parameter.",
                "from.email",
            )
        )
    subject = body.get("subject")
    every_has_subject = bool(personalizations) and all(
        isinstance(p, dict) and isinstance(p.get("subject"), str) and p["subject"]
        for p in personalizations
    )
    if not (isinstance(subject, str) and subject) and not every_has_subject:
        problems.append(
            (
                "The subject is required. You can get around this requirement if you use a "
                "template with a subject defined or if every personalization has a subject "
                "defined.",
                "subject",
            )
        )
    problems += _content_problems(body.get("content"))
    problems += _extra_problems(body)
    problems += _attachment_problems(body.get("attachments", []))
    return problems


#: Headers SendGrid will not take in ``headers`` (compared in lowercase).
SENDGRID_RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)
#: SendGrid's limits on ``categories`` and ``custom_args``.
SENDGRID_MAX_CATEGORIES = 10
SENDGRID_MAX_CUSTOM_ARGS_BYTES = 10_000


def _extra_problems(body: dict[str, Any]) -> list[Problem]:
    """What SendGrid says about ``headers``, ``categories`` and ``custom_args``."""
    problems: list[Problem] = []
    headers = body.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        problems.append(("Headers must be a collection of strings.", "headers"))
    else:
        for name in headers:
            if name.lower() in SENDGRID_RESERVED_HEADERS:
                problems.append((f"The header {name} is reserved and cannot be set.", "headers"))
    categories = body.get("categories", [])
    if (
        not isinstance(categories, list)
        or len(categories) > SENDGRID_MAX_CATEGORIES
        or not all(isinstance(c, str) and 0 < len(c) <= 255 for c in categories)
    ):
        problems.append(
            (
                "The categories parameter must be an array of at most "
                f"{SENDGRID_MAX_CATEGORIES} strings.",
                "categories",
            )
        )
    args = body.get("custom_args", {})
    if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
        problems.append(("Custom args must be strings.", "custom_args"))
    elif len(orjson.dumps(args)) > SENDGRID_MAX_CUSTOM_ARGS_BYTES:
        problems.append(
            (
                f"The custom_args must total at most {SENDGRID_MAX_CUSTOM_ARGS_BYTES} bytes.",
                "custom_args",
            )
        )
    return problems


#: SendGrid's limit on a whole message (the request body, files included).
SENDGRID_MAX_MESSAGE_BYTES = 30 * 1000 * 1000
SENDGRID_TOO_LARGE_PAGE = (
    "<html><head><title>413 Request Entity Too Large</title></head>"
    "<body><center><h1>413 Request Entity Too Large</h1></center></body></html>"
)


def _attachment_problems(attachments: Any) -> list[Problem]:
    """What SendGrid says about ``attachments``: a list of objects, each with base64
    ``content`` and a ``filename``; ``type`` without ``;`` or CRLF; ``disposition``
    ``inline`` or ``attachment``; an inline one needs a ``content_id``."""
    if not isinstance(attachments, list):
        return [("The attachments parameter must be an array.", "attachments")]
    problems: list[Problem] = []
    for i, file in enumerate(attachments):
        where = f"attachments.{i}"
        if not isinstance(file, dict):
            problems.append(("The attachment must be an object.", where))
            continue
        content = file.get("content")
        if not isinstance(content, str) or not content:
            problems.append(
                (
                    "The attachment content is required and must be a string at least one "
                    "character in length.",
                    f"{where}.content",
                )
            )
        else:
            try:
                base64.b64decode(content, validate=True)
            except binascii.Error:
                problems.append(
                    ("The attachment content must be base64 encoded.", f"{where}.content")
                )
        filename = file.get("filename")
        if not isinstance(filename, str) or not filename:
            problems.append(("The attachment filename parameter is required.", f"{where}.filename"))
        kind = file.get("type", "application/octet-stream")
        if not isinstance(kind, str) or not kind or any(c in kind for c in ";\r\n"):
            problems.append(
                ("The attachment type cannot contain ';', or CRLF characters.", f"{where}.type")
            )
        disposition = file.get("disposition", "attachment")
        if disposition not in ("inline", "attachment"):
            problems.append(
                (
                    'The disposition of your attachment can be either "inline" or "attachment".',
                    f"{where}.disposition",
                )
            )
        content_id = file.get("content_id")
        if disposition == "inline" and (not isinstance(content_id, str) or not content_id):
            problems.append(
                (
                    "The content_id parameter is required if your attachment disposition "
                    "is inline.",
                    f"{where}.content_id",
                )
            )
    return problems


def _sendgrid_files(body: dict[str, Any]) -> tuple[ReceivedFile, ...]:
    """The files of an accepted Mail Send body (checked by ``_attachment_problems``)."""
    return tuple(
        ReceivedFile(
            disposition=file.get("disposition", "attachment"),
            filename=file["filename"],
            content_type=file.get("type", "application/octet-stream"),
            data=base64.b64decode(file["content"], validate=True),
            content_id=file.get("content_id"),
        )
        for file in body.get("attachments", [])
    )


def _personalization_problems(i: int, p: dict[str, Any]) -> list[Problem]:
    where = f"personalizations.{i}"
    to = p.get("to")
    if not isinstance(to, list) or not to:
        return [
            (
                "The to array is required for all personalization objects, and must have at "
                "least one email object with a valid email address.",
                f"{where}.to",
            )
        ]
    problems: list[Problem] = []
    seen: set[str] = set()
    for kind in ("to", "cc", "bcc"):
        for j, address in enumerate(p.get(kind) or []):
            field = f"{where}.{kind}.{j}"
            email = address.get("email") if isinstance(address, dict) else None
            if not _is_email(email):
                problems.append(("Does not contain a valid address.", f"{field}.email"))
                continue
            assert isinstance(email, str)
            name = address.get("name", "")
            if isinstance(name, str) and (";" in name or "," in name):
                problems.append(
                    (
                        "The name of a recipient cannot contain the ';' or ',' characters.",
                        f"{field}.name",
                    )
                )
            if email.casefold() in seen:
                problems.append(
                    (
                        "Each email address in the personalization block should be unique "
                        "between to, cc, and bcc. We found the first duplicate instance of "
                        f"[{email}] in the {where}.{kind} field.",
                        where,
                    )
                )
            seen.add(email.casefold())
    return problems


def _content_problems(content: Any) -> list[Problem]:
    if not isinstance(content, list) or not content:
        return [
            (
                "Unless a valid template_id is provided, the content parameter is required. "
                "There must be at least one defined content block. We typically suggest both "
                "text/plain and text/html blocks are included, but only one block is required.",
                "content",
            )
        ]
    problems: list[Problem] = []
    types = [c.get("type") if isinstance(c, dict) else None for c in content]
    for i, c in enumerate(content):
        value = c.get("value") if isinstance(c, dict) else None
        if not isinstance(value, str) or not value:
            problems.append(
                (
                    "The content value must be a string at least one character in length.",
                    f"content.{i}.value",
                )
            )
    if "text/plain" in types and types.index("text/plain") != 0:
        problems.append(
            (
                "If present, text/plain must be first, followed by text/html, followed by "
                "any other content.",
                "content",
            )
        )
    return problems


def _is_email(value: object) -> bool:
    return isinstance(value, str) and "@" in value.strip("@")


# --- Mailgun ---------------------------------------------------------------


#: Mailgun's limits: tags per message, and bytes of ``o:``, ``h:`` and ``v:`` fields.
MAILGUN_MAX_TAGS = 3
MAILGUN_MAX_EXTRA_BYTES = 16_000


class FakeMailgun(FakeProvider[dict[str, list[str]]]):
    """Mailgun Messages API: ``POST /v3/{domain}/messages``, Basic ``api:key``, form, 200;
    and its Events API: ``GET /v3/{domain}/events``, the ``accepted`` events."""

    path = "/v3/{domain}/messages"
    events_path = "/v3/{domain}/events"

    def __init__(
        self,
        *,
        api_key: str = "key-test",
        domain: str = "mg.example.com",
        mode: Mode = "up",
        retry_after: str = "1",
        delay: float = 0.0,
        answer_delay: float = 0.0,
        webhook_url: str | None = None,
        webhook_signing_key: str | None = None,
        bounce_prefix: str = "bounce",
    ) -> None:
        super().__init__(
            api_key=api_key,
            mode=mode,
            retry_after=retry_after,
            delay=delay,
            answer_delay=answer_delay,
            webhook_url=webhook_url,
            bounce_prefix=bounce_prefix,
        )
        self.domain = domain
        #: The HTTP webhook signing key (not the API key).
        self.webhook_signing_key = webhook_signing_key
        #: The ``accepted`` events of the accepted mails (one per recipient), in order.
        self.events: list[dict[str, Any]] = []
        #: Requests that reached the events endpoint, in any mode.
        self.lookups = 0
        #: Each suppression list's entries (``bounces``, ``complaints``, ``unsubscribes``),
        #: ``{"address", "created_at", ...}``, kept in address order as Mailgun keeps them.
        self.suppressions: dict[str, list[dict[str, Any]]] = {}
        #: The path and query of every request to a suppression list, in order.
        self.list_requests: list[str] = []

    #: Mailgun's suppression lists (``GET /v3/{domain}/{list}``).
    suppression_lists = ("bounces", "complaints", "unsubscribes")

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_get(self.events_path, self._handle_events)
        for name in self.suppression_lists:
            app.router.add_get(f"/v3/{{domain}}/{name}", self._handle_list)

    async def _handle_list(self, request: web.Request) -> web.StreamResponse:
        self.list_requests.append(request.path_qs)
        return await self.answer(request, self.serve_list)

    async def serve_list(self, request: web.Request) -> web.StreamResponse:
        """A suppression list: ``{"items", "paging"}``, ``limit`` (at most 10000) items
        after ``address`` with ``page=next``; ``paging.next`` names the page after (whose
        items are empty past the end)."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        query = request.query
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            return self.bad_request("limit must be an integer")
        if not 0 < limit <= 10_000:
            return self.bad_request("limit must be between 1 and 10000")
        name = request.path.rsplit("/", 1)[1]
        entries = sorted(self.suppressions.get(name, []), key=lambda e: str(e["address"]))
        after = query.get("address", "") if query.get("page") == "next" else ""
        items = [e for e in entries if str(e["address"]) > after][:limit]
        url = f"{self.base_url}/v3/{self.domain}/{name}"
        last = items[-1]["address"] if items else after
        paging = {
            "first": f"{url}?limit={limit}",
            "last": f"{url}?page=last&limit={limit}",
            "next": f"{url}?page=next&address={last}&limit={limit}",
            "previous": f"{url}?page=previous&address={after}&limit={limit}",
        }
        return web.json_response({"items": items, "paging": paging}, dumps=_dumps)

    async def _handle_events(self, request: web.Request) -> web.StreamResponse:
        self.lookups += 1
        return await self.answer(request, self.serve_events)

    def mail_ids(self) -> list[str]:
        return [fields.get("v:mail_id", [""])[0] for fields in self.received]

    def _refused(self, request: web.Request) -> web.Response | None:
        """The answer to a request with a wrong key or domain (None: it may go on)."""
        if _basic_credentials(request.headers.get("Authorization", "")) != ("api", self.api_key):
            return self.unauthorized()
        domain = request.match_info["domain"]
        if domain != self.domain:
            return _message(404, f"Domain not found: {domain}")
        return None

    async def serve(self, request: web.Request) -> web.StreamResponse:
        refused = self._refused(request)
        if refused is not None:
            return refused
        if (request.content_length or 0) > MAILGUN_MAX_MESSAGE_BYTES:
            return _message(413, "Message size exceeds the 25 MB limit")
        post = await request.post()
        files = _mailgun_files(post)
        if isinstance(files, web.Response):
            return files
        fields = {key: [_text(v) for v in post.getall(key)] for key in post}
        for required in ("from", "to", "subject"):
            if not any(fields.get(required, [])):
                return self.bad_request(f"'{required}' parameter is missing")
        if not any(fields.get("text", []) + fields.get("html", [])):
            return self.bad_request(
                "Need at least one of 'text', 'html' or 'template' parameters specified"
            )
        if len(fields.get("o:tag", [])) > MAILGUN_MAX_TAGS:
            return self.bad_request(f"Too many tags: at most {MAILGUN_MAX_TAGS} per message")
        extra = sum(
            len(key.encode()) + len(value.encode())
            for key, values in fields.items()
            if key.startswith(("o:", "h:", "v:"))
            for value in values
        )
        if extra > MAILGUN_MAX_EXTRA_BYTES:
            return self.bad_request("The o:, h: and v: parameters exceed 16 kB together")
        self.received.append(fields)
        self.files.append(files)
        # Mailgun takes a Message-Id header given as h:Message-Id as the message's id.
        given = fields.get("h:Message-Id", [""])[0].strip()
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        message_id = given or f"<{stamp}.{secrets.token_hex(8)}@{self.domain}>"
        self.message_ids.append(message_id)
        self._record_accepted(fields, message_id)
        return web.json_response({"id": message_id, "message": "Queued. Thank you."}, dumps=_dumps)

    def _record_accepted(self, fields: dict[str, list[str]], message_id: str) -> None:
        """Mailgun's ``accepted`` events for a mail it took: one per recipient."""
        now = time.time()
        variables = {k[2:]: v[0] for k, v in fields.items() if k.startswith("v:") and v}
        headers = {
            "message-id": message_id.strip("<>"),
            "from": fields["from"][0],
            "to": ", ".join(fields.get("to", [])),
            "subject": fields["subject"][0],
        }
        recipients = email.utils.getaddresses(
            fields.get("to", []) + fields.get("cc", []) + fields.get("bcc", [])
        )
        posts: list[Post] = []
        for _, address in recipients:
            accepted = {
                "event": "accepted",
                "id": secrets.token_urlsafe(16),
                "timestamp": now,
                "recipient": address,
                "message": {"headers": headers},
                "user-variables": variables,
            }
            self.events.append(accepted)
            if self.bounces(address):
                outcome: dict[str, Any] = {
                    "event": "failed",
                    "severity": "permanent",
                    "reason": "bounce",
                    "log-level": "error",
                    "delivery-status": {
                        "code": 550,
                        "message": "5.1.1 The email account that you tried to reach does not "
                        "exist.",
                        "description": "",
                        "attempt-no": 1,
                    },
                }
            else:
                outcome = {
                    "event": "delivered",
                    "log-level": "info",
                    "delivery-status": {"code": 250, "message": "OK", "attempt-no": 1},
                }
            delivered = {**accepted, **outcome, "id": secrets.token_urlsafe(16)}
            posts += [self._signed(accepted), self._signed(delivered)]
        if self.webhook_url is not None and self.webhook_signing_key is not None:
            self.send_webhooks(posts)

    #: Mailgun does not try a webhook again after a 406.
    final_answers = frozenset({406})

    def _signed(self, event: dict[str, Any]) -> Post:
        """The webhook post of ``event``: one signature, the same at every try."""
        timestamp = str(int(time.time()))
        token = secrets.token_hex(25)
        signature = mailgun_webhook_signature(self.webhook_signing_key or "", timestamp, token)
        body = orjson.dumps(
            {
                "signature": {"timestamp": timestamp, "token": token, "signature": signature},
                "event-data": {**event, "timestamp": time.time()},
            }
        )
        return lambda: (body, {"Content-Type": "application/json"})

    async def serve_events(self, request: web.Request) -> web.StreamResponse:
        """The Events API: ``items`` filtered by ``message-id`` (no angle brackets),
        ``event``, ``begin`` and ``end`` (epoch seconds), ``ascending``, ``limit``."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        query = request.query
        try:
            begin = float(query.get("begin", "0"))
            end = float(query["end"]) if "end" in query else None
            limit = int(query.get("limit", "300"))
        except ValueError:
            return self.bad_request("Invalid time range or limit")
        if not 0 < limit <= 300:
            return self.bad_request("limit must be between 1 and 300")
        if query.get("ascending", "no") not in ("yes", "no"):
            return self.bad_request("ascending must be 'yes' or 'no'")
        message_id = query.get("message-id")
        event = query.get("event")
        items = [
            e
            for e in self.events
            if e["timestamp"] >= begin
            and (end is None or e["timestamp"] <= end)
            and (message_id is None or e["message"]["headers"]["message-id"] == message_id)
            and (event is None or e["event"] == event)
        ]
        if query.get("ascending", "no") == "no":
            items.reverse()
        page = f"{self.base_url}/v3/{self.domain}/events/{secrets.token_urlsafe(8)}"
        paging = {"first": page, "last": page, "next": page, "previous": page}
        return web.json_response({"items": items[:limit], "paging": paging}, dumps=_dumps)

    def unavailable(self) -> web.Response:
        return _message(503, "Service Unavailable")

    def too_many(self) -> web.Response:
        return _message(429, "Too Many Requests")

    def unauthorized(self) -> web.Response:
        return web.Response(status=401, text="Forbidden")

    def bad_request(self, message: str, field: str | None = None) -> web.Response:
        return _message(400, message)


#: Mailgun's limit on a whole message.
MAILGUN_MAX_MESSAGE_BYTES = 25 * 1000 * 1000
#: The form fields Mailgun takes files in.
MAILGUN_FILE_FIELDS = ("attachment", "inline")


def _mailgun_files(post: Any) -> tuple[ReceivedFile, ...] | web.Response:
    """The file parts of a Mailgun form, read (and their temporary files closed); a 400
    for a file in another field. An ``inline`` part's file name is its Content-ID."""
    files: list[ReceivedFile] = []
    problem = None
    for key in post:
        for value in post.getall(key):
            if not isinstance(value, FileField):
                continue
            with value.file:
                data = value.file.read()
            if key not in MAILGUN_FILE_FIELDS:
                problem = _message(400, f"'{key}' parameter is not a file parameter")
                continue
            files.append(
                ReceivedFile(
                    disposition=key,
                    filename=value.filename,
                    content_type=value.content_type,
                    data=data,
                    content_id=value.filename if key == "inline" else None,
                )
            )
    return problem if problem is not None else tuple(files)


def _text(value: str | bytes | bytearray | FileField) -> str:
    """A form value as text (a file part by its file name)."""
    if isinstance(value, FileField):
        return value.filename
    return value if isinstance(value, str) else bytes(value).decode()


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) of an HTTP Basic ``Authorization`` value; None if it is not one."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _message(status: int, message: str) -> web.Response:
    """Mailgun's JSON error shape: ``{"message": ...}``."""
    return web.json_response({"message": message}, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()

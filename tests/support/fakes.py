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

``delay`` seconds are waited before a request is looked at; ``answer_delay``
seconds after it was served (a valid mail already accepted) and before the
answer goes out, so a client that gives up first leaves the provider holding
the mail. Stopping the fake cuts both short.
``calls`` counts every request that reached the send endpoint, in any mode;
``received`` holds the parsed bodies of the requests that were accepted, and
``message_ids`` the provider message ids they were answered with.

``FakeMailgun`` also serves the Events API (``GET /v3/{domain}/events``): an
``accepted`` event per recipient of every accepted mail, searchable by
``message-id``, ``event``, ``begin`` and ``end``. ``mode`` and the delays apply
to it too; ``lookups`` counts its requests.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import contextlib
import email.utils
import secrets
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import orjson
from aiohttp import web
from aiohttp.web_request import FileField

Mode = Literal["up", "503", "timeout", "429", "400", "401", "drop"]
Body = TypeVar("Body")
Serve = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    ) -> None:
        self.api_key = api_key
        self.mode: Mode = mode
        self.retry_after = retry_after
        #: Seconds waited before a request is looked at.
        self.delay = delay
        #: Seconds waited after a request was served (the mail kept), before answering.
        self.answer_delay = answer_delay
        self.calls = 0
        #: Unix time of every call, in order (for "no call after ..." checks).
        self.call_times: list[float] = []
        self.received: list[Body] = []
        #: The provider message ids handed out for ``received``, in the same order.
        self.message_ids: list[str] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._stopping = asyncio.Event()
        app = web.Application()
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def add_routes(self, app: web.Application) -> None:
        """Route the provider's endpoints to their handlers."""
        app.router.add_post(self.path, self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.call_times.append(time.time())
        return await self.answer(request, self.serve)

    async def answer(self, request: web.Request, serve: Serve) -> web.StreamResponse:
        """Answer ``request`` as ``mode`` and the delays say, ``serve`` being the healthy way."""
        await self._pause(self.delay)
        if self.mode not in ("up", "drop"):
            return await self._failure()
        response = await serve(request)
        await self._pause(self.answer_delay)
        if self.mode == "drop" and request.transport is not None:
            request.transport.close()  # aiohttp drops an answer written to a closed transport
        return response

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
            response = self.too_many()
            response.headers["Retry-After"] = self.retry_after
            return response
        if self.mode == "401":
            return self.unauthorized()
        assert self.mode == "400", self.mode
        return self.bad_request("rejected by the fake (mode 400)")

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
    ) -> None:
        super().__init__(
            api_key=api_key,
            mode=mode,
            retry_after=retry_after,
            delay=delay,
            answer_delay=answer_delay,
        )

    def mail_ids(self) -> list[str]:
        return [body.get("custom_args", {}).get("mail_id", "") for body in self.received]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if not auth:
            return _errors(401, "authorization required")
        if auth != f"Bearer {self.api_key}":
            return self.unauthorized()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self.bad_request("Bad Request")
        if not isinstance(body, dict):
            return self.bad_request("Bad Request")
        problems = _sendgrid_problems(body)
        if problems:
            return _errors(400, *problems)
        self.received.append(body)
        self.message_ids.append(secrets.token_urlsafe(16))
        return web.Response(status=202, headers={"X-Message-Id": self.message_ids[-1]})

    def unavailable(self) -> web.Response:
        return _errors(503, "Service Unavailable")

    def too_many(self) -> web.Response:
        return _errors(429, "too many requests")

    def unauthorized(self) -> web.Response:
        return _errors(401, "The provided authorization grant is invalid, expired, or revoked")

    def bad_request(self, message: str, field: str | None = None) -> web.Response:
        return _errors(400, (message, field))


Problem = tuple[str, str | None]


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
    return problems


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
    ) -> None:
        super().__init__(
            api_key=api_key,
            mode=mode,
            retry_after=retry_after,
            delay=delay,
            answer_delay=answer_delay,
        )
        self.domain = domain
        #: The ``accepted`` events of the accepted mails (one per recipient), in order.
        self.events: list[dict[str, Any]] = []
        #: Requests that reached the events endpoint, in any mode.
        self.lookups = 0

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_get(self.events_path, self._handle_events)

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
        post = await request.post()
        fields = {key: [_text(v) for v in post.getall(key)] for key in post}
        for required in ("from", "to", "subject"):
            if not any(fields.get(required, [])):
                return self.bad_request(f"'{required}' parameter is missing")
        if not any(fields.get("text", []) + fields.get("html", [])):
            return self.bad_request(
                "Need at least one of 'text', 'html' or 'template' parameters specified"
            )
        self.received.append(fields)
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
        for _, address in recipients:
            self.events.append(
                {
                    "event": "accepted",
                    "id": secrets.token_urlsafe(16),
                    "timestamp": now,
                    "recipient": address,
                    "message": {"headers": headers},
                    "user-variables": variables,
                }
            )

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

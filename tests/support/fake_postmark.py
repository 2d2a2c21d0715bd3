"""A fake Postmark: ``POST /email`` and the outbound message search, on loopback.

    async with FakePostmark(server_token="pm-test") as pm:
        client = PostmarkClient(PostmarkConfig(Secret("pm-test"), pm.base_url), timeout=1)

It checks what Postmark checks (providers.md): the ``X-Postmark-Server-Token``
(missing or wrong: 401, ``ErrorCode`` 10), a JSON body with ``From``, ``To``
and a ``TextBody`` or ``HtmlBody``, at most 50 recipients in ``To``, ``Cc`` and
``Bcc``, the shapes of ``Headers``, ``Attachments`` (base64) and ``Metadata``
(at most 10 fields, names of at most 20 characters unique whatever their case,
values of at most 80), an existing ``MessageStream`` (``streams``), 10 MB at
most (413); refusals are 422 ``{"ErrorCode", "Message"}``. A mail it takes is
kept with its metadata and answered 200 ``{"MessageID", "ErrorCode": 0,
"SubmittedAt", "To"}``.

``GET /messages/outbound`` requires ``count`` (1..500) and ``offset``, and
filters by ``metadata_<key>``, ``recipient``, ``tag``, ``messagestream``
(default ``outbound``), ``fromdate`` and ``todate`` (read as US Eastern time
when they carry no offset, as Postmark reads them). ``lookups`` counts its
requests; ``mode`` and the delays apply to it as to sending (``FakeProvider``).
``search_lag`` (seconds, 0 by default) keeps a message out of the search that
long after it was taken, as a search index that trails the sending would:
Postmark's documentation states no lag (its search lists messages still
``queued``), so none is the default; a test may set one.
``unread_sends`` and ``lost_answers`` hold the next sends unanswered (the mail
not kept, or kept), leaving the search alone.

Webhooks (off by default): given ``webhook_url`` (with ``user:password@`` in it,
as Postmark's settings take them: sent as HTTP basic auth), the fake posts one
record per recipient of a mail it took, in the background: ``Delivery``, or a
hard ``Bounce`` for a local part starting with ``bounce_prefix``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import time
import uuid
import zoneinfo
from email.utils import getaddresses
from typing import Any

import orjson
from aiohttp import web

from .fakes import FakeProvider, Mode, Post, ReceivedFile

#: Postmark's limits: recipients in To, Cc and Bcc together; bytes of a request.
POSTMARK_MAX_RECIPIENTS = 50
POSTMARK_MAX_BYTES = 10 * 1024 * 1024
#: Metadata: fields of one message, characters of a field's name and of its value.
POSTMARK_MAX_METADATA_FIELDS = 10
POSTMARK_MAX_METADATA_NAME = 20
POSTMARK_MAX_METADATA_VALUE = 80
#: The most messages one search page holds.
POSTMARK_MAX_COUNT = 500
#: Where Postmark reads a date without an offset.
EASTERN = zoneinfo.ZoneInfo("America/New_York")


class FakePostmark(FakeProvider[dict[str, Any]]):
    """Postmark's Email API and outbound message search."""

    path = "/email"
    search_path = "/messages/outbound"

    def __init__(
        self,
        *,
        server_token: str = "pm-test-token",
        mode: Mode = "up",
        retry_after: str = "1",
        delay: float = 0.0,
        answer_delay: float = 0.0,
        streams: tuple[str, ...] = ("outbound",),
        webhook_url: str | None = None,
        bounce_prefix: str = "bounce",
    ) -> None:
        super().__init__(
            api_key=server_token,
            mode=mode,
            retry_after=retry_after,
            delay=delay,
            answer_delay=answer_delay,
            webhook_url=webhook_url,
            bounce_prefix=bounce_prefix,
        )
        #: The message streams the server has.
        self.streams = streams
        #: The outbound messages as the search lists them, in order taken.
        self.messages: list[dict[str, Any]] = []
        #: Requests that reached the search endpoint, in any mode.
        self.lookups = 0
        #: Each stream's suppressions, as its dump lists them.
        self.suppressions: dict[str, list[dict[str, Any]]] = {}
        #: The path and query of every request to a suppressions dump, in order.
        self.list_requests: list[str] = []
        #: Seconds after it was taken before a message shows in the search.
        self.search_lag = 0.0
        #: When (monotonic) each of ``messages`` was taken, in the same order.
        self._taken_at: list[float] = []
        #: The next this many sends are held unanswered till the fake stops, unread
        #: (Postmark never got the mail: it is not kept).
        self.unread_sends = 0
        #: The next this many sends are served (a valid mail kept), then their answer
        #: is held till the fake stops: the client's timeout loses it.
        self.lost_answers = 0

    @property
    def server_token(self) -> str:
        return self.api_key

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.unread_sends > 0 or self.lost_answers > 0:
            self.calls += 1
            if self.unread_sends > 0:
                self.unread_sends -= 1
                await self._stopping.wait()
                return self.unavailable()
            self.lost_answers -= 1
            response = await self.serve(request)
            await self._stopping.wait()
            return response
        return await super()._handle(request)

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_get(self.search_path, self._handle_search)
        app.router.add_get("/message-streams/{stream}/suppressions/dump", self._handle_dump)

    async def _handle_dump(self, request: web.Request) -> web.StreamResponse:
        self.list_requests.append(request.path_qs)
        return await self.answer(request, self.serve_dump)

    async def serve_dump(self, request: web.Request) -> web.StreamResponse:
        """A stream's suppressions at once: ``{"Suppressions": [{"EmailAddress",
        "SuppressionReason", "Origin", "CreatedAt"}]}``; 422 for a stream it does not have."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        stream = request.match_info["stream"]
        if stream not in self.streams:
            return _error(422, 1226, "The message stream for the provided 'ID' was not found.")
        return _json(200, {"Suppressions": self.suppressions.get(stream, [])})

    def slow_answer(self, request: web.Request, response: web.StreamResponse) -> float:
        """``answer_delay`` holds up the answers to sends (a slow Postmark that took the
        mail); the search answers at once."""
        return self.answer_delay if request.path == self.path else 0.0

    async def _handle_search(self, request: web.Request) -> web.StreamResponse:
        self.lookups += 1
        return await self.answer(request, self.serve_search)

    def mail_ids(self) -> list[str]:
        return [str(body.get("Metadata", {}).get("mail_id", "")) for body in self.received]

    def _refused(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("X-Postmark-Server-Token")
        if not token:
            return _error(401, 10, "No Account or Server API tokens were supplied in the headers.")
        if token != self.api_key:
            return self.unauthorized()
        return None

    async def serve(self, request: web.Request) -> web.StreamResponse:
        refused = self._refused(request)
        if refused is not None:
            return refused
        raw = await request.read()
        if len(raw) > POSTMARK_MAX_BYTES:
            return _error(413, 300, "Request size exceeds the 10 MB limit.")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(422, 402, "Received invalid JSON input.")
        if not isinstance(body, dict):
            return _error(422, 402, "Received invalid JSON input.")
        problem = self._problem(body)
        if problem is not None:
            return self.bad_request(problem)
        files = _files(body)
        if isinstance(files, str):
            return self.bad_request(files)
        stream = body.get("MessageStream") or "outbound"
        if stream not in self.streams:
            return _error(422, 1235, "The 'MessageStream' provided does not exist on this server.")
        message_id = str(uuid.uuid4())
        self.received.append(body)
        self.files.append(files)
        self.message_ids.append(message_id)
        now = dt.datetime.now(EASTERN)
        recipients = [a for _, a in getaddresses([body["To"]])]
        self.messages.append(
            {
                "MessageID": message_id,
                "MessageStream": stream,
                "From": body["From"],
                "To": [{"Email": a, "Name": None} for a in recipients],
                "Recipients": [
                    a
                    for _, a in getaddresses([body.get(k) or "" for k in ("To", "Cc", "Bcc")])
                    if a
                ],
                "Subject": body.get("Subject", ""),
                "Tag": body.get("Tag", ""),
                "Metadata": body.get("Metadata") or {},
                "ReceivedAt": now.isoformat(),
                "Status": "Sent",
                "Attachments": [f.filename for f in files],
            }
        )
        self._taken_at.append(time.monotonic())
        if self.webhook_url is not None:
            self.send_webhooks([_post(r) for r in self.records(self.messages[-1])])
        return _json(
            200,
            {
                "To": body["To"],
                "SubmittedAt": now.isoformat(),
                "MessageID": message_id,
                "ErrorCode": 0,
                "Message": "OK",
            },
        )

    #: Postmark does not try a webhook again after a 403.
    final_answers = frozenset({403})

    def records(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Postmark's webhook records for a message it took: per recipient a ``Delivery``,
        or a hard ``Bounce`` for one whose local part starts with ``bounce_prefix``."""
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        common = {
            "ServerID": 23,
            "MessageStream": message["MessageStream"],
            "MessageID": message["MessageID"],
            "Tag": message["Tag"],
            "Metadata": message["Metadata"],
        }
        out: list[dict[str, Any]] = []
        for address in message["Recipients"]:
            if self.bounces(address):
                out.append(
                    {
                        **common,
                        "RecordType": "Bounce",
                        "ID": len(self.webhook_answers) + len(out) + 4_000_000,
                        "Type": "HardBounce",
                        "TypeCode": 1,
                        "Name": "Hard bounce",
                        "Description": "The server was unable to deliver your message (ex: "
                        "unknown user, mailbox not found).",
                        "Details": "smtp;550 5.1.1 The email account that you tried to reach "
                        "does not exist.",
                        "Email": address,
                        "From": message["From"],
                        "BouncedAt": now,
                        "Inactive": True,
                        "CanActivate": True,
                        "Subject": message["Subject"],
                    }
                )
            else:
                out.append(
                    {
                        **common,
                        "RecordType": "Delivery",
                        "Recipient": address,
                        "DeliveredAt": now,
                        "Details": "smtp;250 2.0.0 OK",
                    }
                )
        return out

    def _problem(self, body: dict[str, Any]) -> str | None:
        """What Postmark would refuse in ``body`` (None: nothing)."""
        for field in ("From", "To"):
            if not isinstance(body.get(field), str) or "@" not in body[field]:
                return f"Invalid '{field}' address: {body.get(field)!r}."
        for field in ("Cc", "Bcc", "ReplyTo", "Subject", "HtmlBody", "TextBody", "Tag"):
            if field in body and not isinstance(body[field], str):
                return f"The '{field}' field must be a string."
        if not body.get("TextBody") and not body.get("HtmlBody"):
            return "Provide either email TextBody or HtmlBody or both."
        if len(_recipients(body)) > POSTMARK_MAX_RECIPIENTS:
            return f"Too many recipients: at most {POSTMARK_MAX_RECIPIENTS} in To, Cc and Bcc."
        headers = body.get("Headers", [])
        if not isinstance(headers, list) or not all(
            isinstance(h, dict)
            and isinstance(h.get("Name"), str)
            and h["Name"]
            and isinstance(h.get("Value"), str)
            for h in headers
        ):
            return "Headers must be a list of {Name, Value}."
        metadata = body.get("Metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            return "Metadata must be an object of strings."
        return _metadata_problem(metadata)

    async def serve_search(self, request: web.Request) -> web.StreamResponse:
        """The outbound search: ``count`` and ``offset`` required, then the filters."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        query = request.query
        try:
            count, offset = int(query["count"]), int(query["offset"])
        except KeyError:
            return self.bad_request("The 'count' and 'offset' parameters are required.")
        except ValueError:
            return self.bad_request("The 'count' and 'offset' parameters must be integers.")
        if not 0 < count <= POSTMARK_MAX_COUNT or offset < 0:
            return self.bad_request(f"'count' must be 1..{POSTMARK_MAX_COUNT}, 'offset' >= 0.")
        try:
            since = _date(query.get("fromdate"))
            until = _date(query.get("todate"))
        except ValueError:
            return self.bad_request("Invalid 'fromdate' or 'todate'.")
        metadata = {k[len("metadata_") :]: v for k, v in query.items() if k.startswith("metadata_")}
        stream = query.get("messagestream", "outbound")
        indexed = time.monotonic() - self.search_lag
        found = [
            m
            for m, taken_at in zip(self.messages, self._taken_at, strict=True)
            if taken_at <= indexed
            and m["MessageStream"] == stream
            and all(m["Metadata"].get(k) == v for k, v in metadata.items())
            and ("recipient" not in query or query["recipient"] in m["Recipients"])
            and ("tag" not in query or m["Tag"] == query["tag"])
            and (since is None or dt.datetime.fromisoformat(m["ReceivedAt"]) >= since)
            and (until is None or dt.datetime.fromisoformat(m["ReceivedAt"]) <= until)
        ]
        found.reverse()  # newest first, as Postmark lists them
        return _json(200, {"TotalCount": len(found), "Messages": found[offset : offset + count]})

    def unavailable(self) -> web.Response:
        return _error(503, 0, "Service Unavailable")

    def too_many(self) -> web.Response:
        return _error(429, 0, "Rate limit exceeded.")

    def unauthorized(self) -> web.Response:
        return _error(401, 10, "Request does not contain a valid Server token.")

    def bad_request(self, message: str, field: str | None = None) -> web.Response:
        return _error(422, 300, message)


def _post(record: dict[str, Any]) -> Post:
    """The webhook post of ``record``: JSON; the credentials go in ``webhook_url``."""
    body = orjson.dumps(record)
    return lambda: (body, {"Content-Type": "application/json"})


def _metadata_problem(metadata: dict[str, str]) -> str | None:
    """What Postmark refuses in ``Metadata``: more than 10 fields, a name over 20
    characters or a value over 80 (Postmark's own message), two names alike but for case."""
    if len(metadata) > POSTMARK_MAX_METADATA_FIELDS:
        return (
            f"Invalid metadata content. A message may have at most "
            f"{POSTMARK_MAX_METADATA_FIELDS} metadata fields."
        )
    names: set[str] = set()
    for name, value in metadata.items():
        if len(name) > POSTMARK_MAX_METADATA_NAME or len(value) > POSTMARK_MAX_METADATA_VALUE:
            return (
                "Invalid metadata content. Field names are limited to 20 characters and field "
                "values are limited to 80 characters in length. The "
                f"'{name}' field in your metadata content exceeds these limits."
            )
        if name.lower() in names:
            return f"Invalid metadata content. Duplicate field name '{name}' (case is ignored)."
        names.add(name.lower())
    return None


def _recipients(body: dict[str, Any]) -> list[str]:
    """The addresses of ``To``, ``Cc`` and ``Bcc`` (comma-separated strings)."""
    fields = [body.get(k) or "" for k in ("To", "Cc", "Bcc")]
    return [a for _, a in getaddresses([f for f in fields if isinstance(f, str)]) if a]


def _date(value: str | None) -> dt.datetime | None:
    """A ``fromdate``/``todate``: with an offset as given, without one in US Eastern time."""
    if value is None:
        return None
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=EASTERN)


def _files(body: dict[str, Any]) -> tuple[ReceivedFile, ...] | str:
    """The ``Attachments`` as received files; a problem (text) for a malformed one."""
    attachments = body.get("Attachments", [])
    if not isinstance(attachments, list):
        return "Attachments must be a list."
    files = []
    for i, a in enumerate(attachments):
        if not isinstance(a, dict) or not all(
            isinstance(a.get(k), str) and a[k] for k in ("Name", "Content", "ContentType")
        ):
            return f"Attachment {i} needs a Name, Content and ContentType."
        try:
            data = base64.b64decode(a["Content"], validate=True)
        except binascii.Error:
            return f"Attachment {i}: Content is not base64."
        content_id = a.get("ContentID")
        files.append(
            ReceivedFile(
                disposition="inline" if content_id else "attachment",
                filename=a["Name"],
                content_type=a["ContentType"],
                data=data,
                content_id=content_id.removeprefix("cid:") if content_id else None,
            )
        )
    return tuple(files)


def _error(status: int, code: int, message: str) -> web.Response:
    """Postmark's error shape: ``{"ErrorCode", "Message"}``."""
    return _json(status, {"ErrorCode": code, "Message": message})


def _json(status: int, value: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")

"""Drop-in for Mailgun's Messages API: ``POST /v3/{domain}/messages``.

An app that sends through Mailgun gets Mailman's failover by changing its base
URL (``https://api.mailgun.net`` to Mailman's) and its key (a Mailman key as
the Basic password of the user ``api``). The form it posts is translated into
a ``Submission``'s values (``core.submission``: a file's bytes as they came,
the delivery time as a ``datetime``) and handed to the shared intake
(``mailman.intake``); what the intake refuses is worded the way Mailgun words
it, so the app's error handling keeps working:

- ``200 {"id": "<mail id@sender's domain>", "message": "Queued. Thank you."}``
  and ``Location: /mail/{mail id}``: the id is the mail's Message-ID, and the
  Mailman id is the part before the ``@``;
- ``400 {"message": ...}`` naming the form field at fault (``'to'``,
  ``'h:X-Campaign'``, ``'v:user_id'``...), for every invalid mail (Mailman's
  422) too;
- ``401`` plain ``Forbidden`` with ``WWW-Authenticate: Basic realm="MG API"``
  for a missing, unknown or revoked key; ``403``, ``408``, ``409``, ``413``,
  ``415``, ``429`` and ``503`` as ``{"message": ...}`` with Mailman's headers
  (``Retry-After``, ``RateLimit-*``). Nothing is answered as problem+json
  and no input is a 500: what is refused before the handler (aiohttp's 404 and
  405 under ``/v3/{domain}/messages``, a middleware's refusal) is worded here
  too (``error_shape``, which ``routes.errors`` asks).
- An address of ``to``, ``cc`` or ``bcc`` that does not read as one (``ann@``)
  is a 400 naming it, never dropped from the list.

The form (``multipart/form-data`` or ``application/x-www-form-urlencoded``):

- ``from``, ``subject``, ``text``, ``html``: once each. ``to``, ``cc``,
  ``bcc``: repeated, comma-separated, or both (split by ``getaddresses``, so a
  quoted display name may hold a comma).
- ``attachment`` and ``inline``: file parts. An inline file's content id is its
  file name (Mailgun's ``cid:<filename>``). The part's content type is kept;
  without one it is guessed from the file name.
- ``o:tag`` (repeated) to tags; ``h:Reply-To`` to ``reply_to``; ``h:X-...`` to
  custom headers (any other ``h:`` header is refused: Mailman sets or refuses
  the rest); ``v:<name>`` to metadata; ``o:deliverytime`` (RFC 2822) to
  ``send_at``; ``o:testmode=yes``: validated and answered ``200``, but nothing
  is stored or sent (the id is made up, there is no ``Location``).
- Ignored (the provider's account settings apply): ``o:tracking``,
  ``o:tracking-clicks``, ``o:tracking-opens``, ``o:tracking-pixel-location-top``,
  ``o:dkim``, ``o:secondary-dkim``, ``o:secondary-dkim-public``, ``t:text`` and form
  fields Mailgun does not define either. Refused with a 400 naming them: other ``t:``
  options, ``recipient-variables``
  (batch sending: Mailman would send one mail to every recipient),
  ``amp-html``, and every other ``o:`` option.
- ``template``: a template of the caller's tenant (``/templates``, by name or id), rendered
  by Mailman (``core.templates``) at ``t:version`` (a number; missing: the latest) with the
  JSON object of ``t:variables`` (or of ``h:X-Mailgun-Template-Variables``), over the
  message's custom variables (``v:`` fields) as Mailgun reads them. The form's
  ``subject``, if given, is the mail's; else the template's. ``text`` and ``html`` are
  not given with it. A variable printed but not given is a 400 naming ``t:variables``.
- ``{domain}``: Mailman has no sending domains; any is accepted and noted on
  the request's log line. The ``from`` address is not checked against it.

Auth: HTTP Basic with the user ``api`` and a Mailman key as the password
(Mailman's own ``Authorization: Bearer <key>`` works too). While the store
holds no key at all, a request without a key (or with an empty password) is
anonymous, as on Mailman's own API. Needs the ``send`` scope. Mailman's
``Idempotency-Key`` header works as on ``POST /mail/send``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import MultipartReader, StreamReader, hdrs, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.multipart import BodyPartReader

from mailman.config.logging import get_logger
from mailman.core.mime import UNSUBSCRIBE_HEADER
from mailman.core.model import Mail
from mailman.core.validation import FieldError, ValidationFailed, guess_content_type, header_problem
from mailman.intake import refusals
from mailman.intake.accept import idempotency_key_problem
from mailman.intake.auth import BadKey, MissingScope, NoKey, Principal, authenticate
from mailman.intake.keys import Scope
from mailman.store import OutcomeUnknown, StoreUnavailable

from . import CONFIG, INTAKE, KEYRING
from .auth import PRINCIPAL
from .body import read_body
from .contract import (
    ACCEPTED_HEADERS,
    BEARER,
    IDEMPOTENT_REPLAYED,
    MAILGUN_BASIC,
    RATE_HEADERS,
    Answer,
    Body,
    Header,
    Param,
    idempotency_key,
    operation,
)
from .errors import (
    IDEMPOTENCY_KEY,
    STORE_RETRY_AFTER_SECONDS,
    Problem,
    Render,
    as_problem,
    bad_idempotency_key,
    note,
    outcome_unknown,
    rate_headers,
    request_id,
)
from .models.mailgun import (
    FILE_FIELDS,
    IGNORED_OPTIONS,
    QUEUED,
    TESTMODE,
    UNSUPPORTED,
    MailgunError,
    MailgunForm,
    MailgunMultipartForm,
    MailgunQueued,
)

log = get_logger("mailman.http")

routes = web.RouteTableDef()

PATH = "/v3/{domain}/messages"
#: The challenge of a 401, as Mailgun sends it.
CHALLENGE = 'Basic realm="MG API"'
#: The Basic user Mailgun's clients send; the password is the key.
USER = "api"

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
FORM_TYPES = (MULTIPART, URLENCODED)
#: The most fields one form may have (1000 recipients fit as repeated fields).
MAX_FIELDS = 10_000

#: The ``t:`` options taken (``t:text`` is taken and ignored: the template's text is sent).
TEMPLATE_OPTIONS = ("t:version", "t:variables", "t:text")
#: Fields that may be given once.
SINGLE = (
    "from",
    "subject",
    "text",
    "html",
    "o:deliverytime",
    "o:testmode",
    "template",
    *TEMPLATE_OPTIONS,
)
#: The form field each of Mailman's fields came from, for the words of a 400.
FORM_NAMES = {
    "from": "from",
    "subject": "subject",
    "content": "text",
    "text": "text",
    "html": "html",
    "reply_to": "h:Reply-To",
    "send_at": "o:deliverytime",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "tags": "o:tag",
    "headers": "h:",
    "metadata": "v:",
    "attachments": "attachment",
    "callback_url": "callback_url",
    "template": "template",
    "template_version": "t:version",
    "data": "t:variables",
}
#: Headers whose JSON object is the template's data (Mailgun's own, not sent as headers).
TEMPLATE_VARIABLES_HEADER = "x-mailgun-template-variables"

_ATTACHMENT_PARTS = {
    "filename": "its file name",
    "content": "its content",
    "content_type": "its content type",
    "content_id": "its file name as content id",
    "disposition": "its disposition",
}


@dataclass(frozen=True, slots=True)
class Upload:
    """A file part of a multipart form."""

    filename: str
    content_type: str | None
    data: bytes = field(repr=False)


Value = str | Upload


class Refused(Exception):
    """A request answered with Mailgun's ``{"message": ...}`` (or ``Forbidden`` for a 401)."""

    def __init__(
        self, status: int, message: str, *, kind: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        #: For the request's log line (``problem``).
        self.kind = kind
        self.headers = dict(headers or {})


#: The longest text of a caller's (a value, a field name) quoted in an error message,
#: and the longest error message: a field of megabytes is not echoed back.
MAX_QUOTED = 100
MAX_MESSAGE = 2000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _quoted(text: str) -> str:
    """``text`` quoted for an error message, cut short when long."""
    return repr(_cut(text, MAX_QUOTED))


def bad(message: str) -> Refused:
    return Refused(HTTPStatus.BAD_REQUEST, _cut(message, MAX_MESSAGE), kind="bad-request")


@dataclass(frozen=True, slots=True)
class Translation:
    """A Mailgun form as the body of ``POST /mail/send``, and where each part came from."""

    body: dict[str, Any]
    testmode: bool = False
    #: For each recipient field, the address text of each entry of the body's list.
    recipients: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: For each entry of ``attachments``: its form field and file name.
    files: Sequence[tuple[str, str]] = ()
    #: Options accepted and ignored (for the log line).
    ignored: Sequence[str] = ()


# --- the form ------------------------------------------------------------------


def _texts(name: str, values: Sequence[Value]) -> list[str]:
    """The text values of a field; 400 for a file part where text belongs."""
    out = []
    for value in values:
        if isinstance(value, Upload):
            raise bad(f"'{name}' parameter must be a text field, not a file")
        out.append(value)
    return out


def _split_addresses(name: str, values: Sequence[str]) -> list[str]:
    """Every address of a recipient field: each value may be a comma-separated list.

    Each comes back as ``"Name" <local@domain>`` or ``local@domain``, for
    validation to judge; an entry ``getaddresses`` finds no address in is
    kept as it was written, so validation names it.
    """
    out: list[str] = []
    for value in values:
        if not value.strip():
            continue
        problem = header_problem(value)
        if problem is not None:
            raise bad(f"'{name}' parameter {problem}")
        try:
            pairs = getaddresses([value])
        except (IndexError, TypeError, ValueError):
            raise bad(f"'{name}' parameter does not parse as a list of addresses") from None
        for display, address in pairs:
            if not display and not address:
                # getaddresses' word for an empty entry, or for one it cannot read
                # (``ann@``): the first is skipped, the second never dropped.
                entry = _bad_entry(value)
                if entry is None:
                    continue
                raise bad(f"'{name}' parameter is not a valid address: {_quoted(entry)}")
            if not address:
                out.append(display)
            elif display:
                escaped = display.replace("\\", "\\\\").replace('"', '\\"')
                out.append(f'"{escaped}" <{address}>')
            else:
                out.append(address)
    return out


def _bad_entry(value: str) -> str | None:
    """The first entry of a comma-separated ``value`` that holds no readable address;
    None if only empty entries are to blame (``a@example.com, , b@example.com``)."""
    for entry in value.split(","):
        if entry.strip() and getaddresses([entry]) == [("", "")]:
            return entry.strip()
    return None


def _deliverytime(value: str) -> datetime:
    """An RFC 2822 date (a date without a zone is UTC); 400 if it is not one."""
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        when = None
    if when is None:
        raise bad(
            "'o:deliverytime' parameter must be an RFC 2822 date, "
            "e.g. 'Thu, 13 Oct 2011 18:02:00 +0000'"
        )
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def translate(form: Iterable[tuple[str, Value]]) -> Translation:
    """The ``Submission`` values a Mailgun form stands for; ``Refused`` (400) for what
    Mailman cannot honour, naming the field. Validation is the intake's."""
    fields: dict[str, list[Value]] = {}
    for name, value in form:
        fields.setdefault(name, []).append(value)
    for name in SINGLE:
        if len(fields.get(name, ())) > 1:
            raise bad(f"'{name}' parameter must be given once")

    body: dict[str, Any] = {}
    headers: dict[str, str] = {}
    metadata: dict[str, str] = {}
    files: list[tuple[str, str]] = []
    attachments: list[dict[str, str | bytes]] = []
    ignored: list[str] = []
    testmode = False
    variables: dict[str, dict[str, Any]] = {}
    for name, values in fields.items():
        lower = name.lower()
        if lower in FILE_FIELDS:
            for value in values:
                if not isinstance(value, Upload):
                    raise bad(f"'{name}' parameter must be a file (a multipart part with a name)")
                attachments.append(_attachment(lower, value))
                files.append((lower, value.filename))
            continue
        texts = _texts(name, values)
        if name.startswith("h:"):
            header = name[2:]
            if len(texts) > 1:
                raise bad(f"'{name}' parameter must be given once")
            if header.lower() == "reply-to":
                body["reply_to"] = texts[0]
            elif header.lower() == TEMPLATE_VARIABLES_HEADER:
                variables["header"] = _json_object(name, texts[0])
            elif header.lower() == UNSUBSCRIBE_HEADER.lower():
                if texts[0].strip().lower() != "off":
                    raise bad(f"'{name}' parameter must be off (or left out)")
                body["unsubscribe"] = False

            elif header[:2].lower() == "x-":
                headers[header] = texts[0]
            else:
                raise bad(
                    f"'{name}' parameter is not supported: Mailman sends Reply-To and custom "
                    "X- headers only (it sets the others itself)"
                )
        elif name.startswith("v:"):
            if len(texts) > 1:
                raise bad(f"'{name}' parameter must be given once")
            metadata[name[2:]] = texts[0]
        elif name == "o:tag":
            body["tags"] = texts
        elif name == "o:deliverytime":
            body["send_at"] = _deliverytime(texts[0])
        elif name == "o:testmode":
            on = TESTMODE.get(texts[0].strip().lower())
            if on is None:
                raise bad("'o:testmode' parameter must be yes or no")
            testmode = on
        elif name in IGNORED_OPTIONS or name == "t:text":
            ignored.append(name)
        elif name == "template":
            body["template"] = texts[0]
        elif name == "t:version":
            version = texts[0].strip()
            if not (version.isdigit() and 0 < len(version) <= 9 and int(version) > 0):
                raise bad(
                    "'t:version' parameter must be a version number (1, 2...): Mailman "
                    "numbers a template's versions"
                )
            body["template_version"] = int(version)
        elif name == "t:variables":
            variables["t"] = _json_object(name, texts[0])
        elif name.startswith(("o:", "t:")):
            raise bad(f"'{name}' parameter is not supported by Mailman")
        elif name in UNSUPPORTED:
            raise bad(f"'{name}' parameter is not supported: {UNSUPPORTED[name]}")
        elif name in ("from", "subject", "text", "html"):
            if texts[0] != "" or name == "from":
                body[name] = texts[0]
        elif name not in ("to", "cc", "bcc"):
            ignored.append(name[:64])

    recipients: dict[str, list[str]] = {}
    for kind in ("to", "cc", "bcc"):
        addresses = _split_addresses(kind, _texts(kind, fields.get(kind, [])))
        if addresses:
            body[kind] = recipients[kind] = addresses
    if "to" not in body:
        raise bad("'to' parameter is missing")
    if not body.get("from", "").strip():
        raise bad("'from' parameter is missing")
    if headers:
        body["headers"] = headers
    if metadata:
        body["metadata"] = metadata
    if attachments:
        body["attachments"] = attachments
    if "template" in body:
        # Mailgun reads a template's variables from t:variables (or its header), over the
        # message's custom variables (v: fields).
        body["data"] = {**metadata, **variables.get("header", {}), **variables.get("t", {})}
    elif "template_version" in body or variables:
        raise bad(
            "'t:version', 't:variables' and 'h:X-Mailgun-Template-Variables' parameters "
            "need a 'template'"
        )
    return Translation(body, testmode, recipients, tuple(files), tuple(ignored))


def _json_object(name: str, text: str) -> dict[str, Any]:
    """The JSON object a form field holds; 400 naming it if it holds none."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise bad(f"'{name}' parameter must be a JSON object")
    return value


def _attachment(kind: str, upload: Upload) -> dict[str, str | bytes]:
    """A file part as an entry of ``attachments``: an inline file's content id is its name."""
    out: dict[str, str | bytes] = {
        "filename": upload.filename,
        "content": upload.data,
        "content_type": upload.content_type or guess_content_type(upload.filename),
        "disposition": kind,
    }
    if kind == "inline":
        out["content_id"] = upload.filename
    return out


# --- Mailman's verdict in Mailgun's words ------------------------------------------


def message(errors: Sequence[FieldError], translation: Translation) -> str:
    """What a 400 says for Mailman's field errors, naming the form fields."""
    return _cut("; ".join(_one(error, translation) for error in errors), MAX_MESSAGE)


def _one(error: FieldError, translation: Translation) -> str:
    path, text = error.field, error.message
    if path in ("content", "text") and "non-empty" in text:
        return "Need at least one of 'text' or 'html' parameters specified"
    if text == "is required":
        text = "is missing"
    if path == IDEMPOTENCY_KEY:
        return f"The {IDEMPOTENCY_KEY} header {text}"
    base, dot, key = path.partition(".")
    if dot and base == "headers":
        return f"'h:{key}' parameter {text}"
    if dot and base == "metadata":
        return f"'v:{key}' parameter {text}"
    base, bracket, rest = path.partition("[")
    if bracket:
        index_text, _, sub = rest.partition("]")
        index = int(index_text) if index_text.isdigit() else -1
        if base in translation.recipients:
            entries = translation.recipients[base]
            entry = entries[index] if 0 <= index < len(entries) else "?"
            return f"'{base}' parameter: {_quoted(entry)} {text}"
        if base == "tags":
            tags = translation.body.get("tags", [])
            tag = tags[index] if 0 <= index < len(tags) else "?"
            return f"'o:tag' parameter {_quoted(tag)} {text}"
        if base == "attachments" and 0 <= index < len(translation.files):
            kind, filename = translation.files[index]
            part = _ATTACHMENT_PARTS.get(sub.lstrip("."), "it")
            return f"'{kind}' parameter {_quoted(filename)}: {part} {text}"
    name = FORM_NAMES.get(base, base)
    plural = "parameters" if name.endswith(":") else "parameter"
    return f"'{name}' {plural} {text}"


def _from_problem(problem: Problem, translation: Translation | None) -> Refused:
    """A refusal of the intake (or of the body reader) in Mailgun's shape."""
    status = problem.status
    if status == HTTPStatus.UNPROCESSABLE_ENTITY:
        status = HTTPStatus.BAD_REQUEST  # Mailgun refuses a bad message with 400
    text = problem.detail
    if problem.errors and translation is not None:
        text = message(problem.errors, translation)
    elif problem.errors:
        text = message(problem.errors, Translation({}))
    return Refused(status, text, kind=problem.type.rsplit("/", 1)[-1], headers=problem.headers)


# --- reading the form ------------------------------------------------------------


class _PartTooLarge(Exception):
    pass


def _stream(raw: bytes) -> StreamReader:
    """``raw`` as a finished stream, for aiohttp's multipart reader."""
    loop = asyncio.get_running_loop()
    # The limit is above the body, so the stream never asks a protocol to pause.
    stream = StreamReader(BaseProtocol(loop), limit=len(raw) + 1, loop=loop)
    stream.feed_data(raw)
    stream.feed_eof()
    return stream


async def read_form(request: web.Request) -> list[tuple[str, Value]]:
    """The posted form's fields in order; 415 for another content type, 413 beyond
    ``max_body_bytes``, 400 if it does not parse, 408 if it stalls (``read_body``)."""
    content_type = request.content_type
    if content_type not in FORM_TYPES:
        raise Refused(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "Send the message as multipart/form-data or application/x-www-form-urlencoded.",
            kind="unsupported-media-type",
        )
    limit = request.app[CONFIG].max_body_bytes  # a part's limit too (the body's, as read)
    raw = await read_body(request)
    charset = request.charset or "utf-8"
    if content_type == URLENCODED:
        try:
            text = raw.decode(charset)
            return list(
                parse_qsl(
                    text,
                    keep_blank_values=True,
                    encoding=charset,
                    errors="strict",
                    max_num_fields=MAX_FIELDS,
                )
            )
        except (LookupError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise bad(f"The form does not parse: {type(exc).__name__}") from None
    try:
        return await _multipart(request, raw, limit, charset)
    except _PartTooLarge:
        raise Refused(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"The request body is larger than the limit of {limit} bytes.",
            kind="too-large",
        ) from None
    except Refused:
        raise
    except Exception as exc:  # anything aiohttp's parser raises: the body is malformed
        raise bad(f"The multipart form does not parse: {type(exc).__name__}") from None


async def _multipart(
    request: web.Request, raw: bytes, limit: int, charset: str
) -> list[tuple[str, Value]]:
    reader = MultipartReader(
        request.headers, _stream(raw), client_max_size=limit, max_size_error_cls=_PartTooLarge
    )
    out: list[tuple[str, Value]] = []
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise bad("A multipart form may not nest another multipart body")
        if part.name is None:
            raise bad("Every part of the form needs a name")
        if len(out) >= MAX_FIELDS:
            raise bad(f"The form has more than {MAX_FIELDS} fields")
        data = bytes(await part.read(decode=True))
        if part.filename is not None:
            ctype = part.headers.get(hdrs.CONTENT_TYPE)
            kind = ctype.split(";", 1)[0].strip().lower() if ctype else None
            out.append((part.name, Upload(part.filename, kind or None, data)))
            continue
        try:
            out.append((part.name, data.decode(part.get_charset(default=charset))))
        except (LookupError, UnicodeDecodeError):
            raise bad(f"'{part.name}' parameter is not valid text in its charset") from None
    return out


# --- auth ----------------------------------------------------------------------


def _forbidden() -> Refused:
    return Refused(
        HTTPStatus.UNAUTHORIZED,
        "Forbidden",
        kind="unauthorized",
        headers={hdrs.WWW_AUTHENTICATE: CHALLENGE},
    )


def credentials(header: str | None) -> str | None:
    """The key in ``Authorization``: Basic ``api:<key>`` (Mailgun's) or Bearer (Mailman's).
    None: no key (no header, or an empty password); 401 for anything else."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() != "basic":
        raise _forbidden()
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _forbidden() from None
    user, sep, password = decoded.partition(":")
    if not sep or user != USER:
        raise _forbidden()
    return password or None


async def _principal(request: web.Request) -> Principal:
    try:
        secret = credentials(request.headers.get(hdrs.AUTHORIZATION))
        principal = await authenticate(request.app[KEYRING], secret, Scope.SEND)
    except (NoKey, BadKey):
        raise _forbidden() from None
    except MissingScope as exc:
        raise Refused(HTTPStatus.FORBIDDEN, str(exc), kind="forbidden") from None
    note(request, tenant=principal.tenant)
    request[PRINCIPAL] = principal  # whose share of the in-flight budget the body takes
    return principal


# --- the handler -----------------------------------------------------------------


def _json(
    status: int, body: MailgunQueued | MailgunError, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def _error(description: str, *shared: str) -> Answer:
    """An error answer in Mailgun's shape, ``{"message": ...}``."""
    return Answer(description, MailgunError, shared=shared)


@routes.post(PATH)
@operation(
    "mailgunSendMessage",
    "Mailgun-compatible: send a message as Mailgun's Messages API takes it",
    description="Change a Mailgun app's base URL to Mailman's and its key to a Mailman key "
    "(needs `send`). Answers as Mailgun does: 200 with the mail's Message-ID as id (the "
    'Mailman id is the part before @) and errors as {"message": ...}.',
    security=({MAILGUN_BASIC: []}, {BEARER: []}),
    parameters=(
        Param(
            "domain",
            "path",
            {"type": "string"},
            "Any sending domain: Mailman has none (it is logged)",
        ),
        idempotency_key("As for POST /mail/send: a repeat answers the first answer"),
    ),
    body=Body({MULTIPART: MailgunMultipartForm, URLENCODED: MailgunForm}),
    answers={
        200: Answer(
            "Queued (or, with o:testmode=yes, checked and dropped)",
            MailgunQueued,
            headers={
                "Location": Header("The mail: /mail/{id} (absent in test mode)"),
                **ACCEPTED_HEADERS,
            },
            shared=RATE_HEADERS,
        ),
        400: _error(
            "An invalid message, a field Mailman cannot honour, a form that does not parse, "
            "a bad Idempotency-Key or one reused with another form"
        ),
        401: Answer(
            "No key, or an unknown or revoked key (Mailgun's plain text)",
            schema={"const": "Forbidden"},
            media="text/plain",
            headers={hdrs.WWW_AUTHENTICATE: Header(schema={"const": CHALLENGE}, required=True)},
        ),
        403: _error("The key lacks the send scope"),
        408: _error("The request body stalled"),
        409: _error("A request with this Idempotency-Key is still being processed", "Retry-After"),
        413: _error("The body or the files are too large"),
        415: _error("Not a form, or an unknown Content-Encoding"),
        429: _error("Over the key's rate limit", "Retry-After", *RATE_HEADERS),
        503: _error(
            "The store does not answer, the backlog is full, or the body does not fit in the "
            "memory for bodies in flight; nothing was stored, try again after Retry-After",
            "Retry-After",
        ),
    },
)
async def send_message(request: web.Request) -> web.Response:
    """Mailgun's ``POST /v3/{domain}/messages``: accept the form as a mail, answer like Mailgun."""
    domain = request.match_info["domain"]
    note(request, mailgun_domain=domain[:253])
    translation: Translation | None = None
    try:
        try:
            principal = await _principal(request)
            key = request.headers.get(IDEMPOTENCY_KEY)
            if key is not None and (bad := idempotency_key_problem(key)) is not None:
                raise bad_idempotency_key(bad)
            translation = translate(await read_form(request))
            if translation.ignored:
                note(request, ignored=sorted(set(translation.ignored))[:20])
            if translation.testmode:
                return await _test(request, translation, principal)
            return await _accept(request, translation, principal, key)
        except (Problem, refusals.Refused, ValidationFailed) as caught:
            problem = caught if isinstance(caught, Problem) else as_problem(caught)
            if problem.errors:
                note(request, invalid=[e.field for e in problem.errors])
            raise _from_problem(problem, translation) from None
        except StoreUnavailable as exc:
            log.warning(
                "store.unavailable", method=request.method, path=request.path, error=str(exc)
            )
            raise Refused(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "The store does not answer; nothing was stored. Try again later.",
                kind="store-unavailable",
                headers={hdrs.RETRY_AFTER: str(STORE_RETRY_AFTER_SECONDS)},
            ) from None
        except OutcomeUnknown as exc:
            problem = outcome_unknown(exc)
            log.warning("store.outcome_unknown", method=request.method, path=request.path)
            raise Refused(
                problem.status, problem.detail, kind="outcome-unknown", headers=problem.headers
            ) from None
    except Refused as refusal:
        return _refusal(request, refusal)
    except Exception as exc:
        transport = request.transport
        if isinstance(exc, ConnectionError) and (transport is None or transport.is_closing()):
            raise  # the client is gone (routes.body.ClientGone): the request-id middleware logs it
        log.exception("http.error", method=request.method, path=request.path)
        return _refusal(
            request,
            Refused(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "Something went wrong on our side; the request id names it in our logs.",
                kind="internal",
            ),
        )


def _refusal(request: web.Request, refusal: Refused) -> web.Response:
    """Mailgun's error answer: plain ``Forbidden`` for a 401, else ``{"message": ...}``."""
    note(request, problem=refusal.kind)
    return _response(refusal)


def _response(refusal: Refused) -> web.Response:
    if refusal.status == HTTPStatus.UNAUTHORIZED:
        return web.Response(status=refusal.status, text=refusal.message, headers=refusal.headers)
    return _json(refusal.status, {"message": refusal.message}, refusal.headers)


def render(problem: Problem) -> web.Response:
    """A problem raised outside the handler (aiohttp's 404 and 405, a middleware's refusal)
    in Mailgun's shape: plain ``Forbidden`` for a 401, else ``{"message": ...}``."""
    if problem.status == HTTPStatus.UNAUTHORIZED:
        return _response(_forbidden())
    return _response(_from_problem(problem, None))


#: Mailgun's paths under a domain: ``/v3/{domain}/messages`` and what lies under it.
_DOMAIN_PATH = re.compile(r"/v3/[^/]+/messages(?:/.*)?")


def error_shape(request: web.Request) -> Render | None:
    """Mailgun's shape for every error at its messages path (``GET /v3/d/messages`` is a
    405 ``{"message": ...}``), and at any other ``/v3/`` path a client authenticates at
    Mailgun's way (HTTP Basic)."""
    path = request.path
    if _DOMAIN_PATH.fullmatch(path):
        return render
    scheme = request.headers.get(hdrs.AUTHORIZATION, "").strip().partition(" ")[0]
    if path.startswith("/v3/") and scheme.lower() == "basic":
        return render
    return None


async def _test(
    request: web.Request, translation: Translation, principal: Principal
) -> web.Response:
    """``o:testmode``: validate the mail and answer as if queued; nothing is stored or sent."""
    intake = request.app[INTAKE]
    try:
        values: Mapping[str, Any] = translation.body
        if "template" in values:
            values, _ = await intake.templated(
                values, principal.tenant, own_subject="subject" in values
            )
        mail = intake.parse(
            values, principal=principal, request_id=request_id(request), now=time.time()
        )
    except ValidationFailed as exc:
        raise as_problem(exc) from None
    note(request, testmode=True)
    log.debug("mailgun.testmode", recipients=len(mail.to) + len(mail.cc) + len(mail.bcc))
    return _json(HTTPStatus.OK, {"id": mail.message_id, "message": QUEUED})


async def _accept(
    request: web.Request, translation: Translation, principal: Principal, key: str | None
) -> web.Response:
    intake = request.app[INTAKE]
    intake.check_backlog()
    headers = rate_headers(await intake.take_token(principal))
    try:
        accepted = await intake.accept(
            translation.body,
            principal=principal,
            request_id=request_id(request),
            idempotency_key=key,
            checked=True,
            own_subject="subject" in translation.body,
        )
    except (refusals.Refused, ValidationFailed) as refusal:
        problem = as_problem(refusal)
        problem.headers = {**headers, **problem.headers}
        raise problem from None
    mail_id = accepted.mail_id
    mail: Mail = dataclasses.replace(accepted.mail, id=mail_id)
    headers["Location"] = f"/mail/{mail_id}"
    note(request, mail_id=mail_id, recipients=accepted.recipients)
    if accepted.replayed:
        note(request, replayed=True)
        headers[IDEMPOTENT_REPLAYED] = "true"
    log.debug("mailgun.accepted", mail_id=mail_id, replayed=accepted.replayed)
    return _json(HTTPStatus.OK, {"id": mail.message_id, "message": QUEUED}, headers)

"""The mail endpoints: submit a mail, read its status and history, mark it by hand."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import time
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web
from multidict import MultiMapping

from mailman.config.logging import get_logger
from mailman.core.clock import iso_time, parse_time
from mailman.core.messages import Dispatch
from mailman.core.model import Mail, Status
from mailman.core.schemas import ADDRESS
from mailman.core.submission import Submission
from mailman.core.validation import (
    MAX_ATTACHMENT_BYTES,
    MAX_TAG,
    MAX_UNKNOWN_NAMED,
    METADATA_KEY_RULE,
    FieldError,
    ValidationFailed,
    is_metadata_key,
    parse_address,
)
from mailman.intake.accept import idempotency_key_problem
from mailman.intake.auth import Principal
from mailman.intake.guard import guarded
from mailman.intake.keys import TENANT, Scope
from mailman.intake.refusals import Refused
from mailman.store import MailQuery, Store
from mailman.store.finding import MAX_FOUND_VALUE

from . import CONFIG, INTAKE, OUTBOUND, STORE
from .auth import PRINCIPAL, requires
from .body import decode_json, read_body
from .contract import (
    ACCEPTED_HEADERS,
    IDEMPOTENT_REPLAYED,
    RATE_HEADERS,
    Answer,
    Body,
    Header,
    Link,
    Paging,
    Param,
    idempotency_key,
    operation,
    problem,
)
from .errors import (
    BAD_REQUEST,
    FORBIDDEN,
    IDEMPOTENCY_KEY,
    NOT_FOUND,
    STATUS_CONFLICT,
    UNSUPPORTED_MEDIA_TYPE,
    Problem,
    as_problem,
    bad_idempotency_key,
    note,
    rate_headers,
    request_id,
)
from .models.mail import (
    Accepted,
    MailDetail,
    MailList,
    MarkFailed,
    NoFields,
    StatusAnswer,
    detail,
    mail_links,
    status_answer,
)
from .models.mail import accepted as answer_accepted

log = get_logger("mailman.http")

routes = web.RouteTableDef()

JSON_CONTENT_TYPE = "application/json"
_UTF8 = frozenset({"utf-8", "utf8"})


# --- helpers -------------------------------------------------------------------


def json_response(
    data: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type=JSON_CONTENT_TYPE, headers=headers
    )


def _require_json(request: web.Request) -> None:
    if request.content_type != JSON_CONTENT_TYPE:
        raise Problem(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Send the body as {JSON_CONTENT_TYPE}.",
            type=UNSUPPORTED_MEDIA_TYPE,
        )
    charset = request.charset
    if charset is not None and charset.lower() not in _UTF8:
        raise Problem(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "Send the JSON body in UTF-8.",
            type=UNSUPPORTED_MEDIA_TYPE,
        )


async def _read_json(request: web.Request) -> object:
    """The decoded JSON body; 413 beyond the size limit, 400 if it is not JSON."""
    return decode_json(await read_body(request))


def _unknown() -> Problem:
    return Problem(HTTPStatus.NOT_FOUND, "There is no mail with this id.", type=NOT_FOUND)


# --- handlers ------------------------------------------------------------------


def _store(request: web.Request) -> tuple[Store, float]:
    return request.app[STORE], request.app[CONFIG].store_timeout


def _idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header: 1-255 printable ASCII characters; 400 otherwise."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and (problem := idempotency_key_problem(key)) is not None:
        raise bad_idempotency_key(problem)
    return key


def read_mail_json(request: web.Request) -> Coroutine[Any, Any, object]:
    """The JSON body of a mail submission: 415 unless JSON in UTF-8 (raised at once),
    413 past the limit."""
    _require_json(request)
    return _read_json(request)


#: The mail's id in a path.
MAIL_ID = Param(
    "id",
    "path",
    {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$"},
    "The mail's id (a ULID), as POST /mail/send answered it",
)
#: The answers of a mail the caller may not see, or that does not exist.
UNKNOWN = problem("No such mail (or another tenant's)")


@routes.post("/mail/send")
@requires(Scope.SEND)
@operation(
    "sendMail",
    "Submit a mail; committed to the store before the 201",
    description="Needs the `send` scope. Counts against the key's rate limit.",
    parameters=(
        idempotency_key(
            "1-255 printable ASCII characters, scoped to the tenant and kept "
            "MAILMAN_IDEMPOTENCY_TTL_SECONDS (24 h by default). A repeat with "
            "the same body answers the first answer again."
        ),
    ),
    body=Body.json(
        Submission,
        example={
            "to": ["Ann <ann@example.com>"],
            "from": "Mailman <noreply@example.com>",
            "subject": "Welcome",
            "content": "Hello Ann, welcome aboard!",
        },
    ),
    answers={
        201: Answer(
            "Accepted (or, with Idempotent-Replayed, accepted before)",
            Accepted,
            headers={
                "Location": Header("The mail: /mail/{id}", required=True),
                **ACCEPTED_HEADERS,
            },
            shared=RATE_HEADERS,
            links={
                name: Link(operation_id, {"id": "$response.body#/mail/id"})
                for name, operation_id in (
                    ("ShowMail", "showMail"),
                    ("MailStatus", "mailStatus"),
                    ("MarkSent", "markSent"),
                    ("MarkFailed", "markFailed"),
                    ("RetryMail", "retryMail"),
                )
            },
        ),
        400: problem("Malformed JSON, a bad body encoding or Idempotency-Key"),
        408: problem("The request body stalled"),
        409: problem("A request with this Idempotency-Key is still being processed", "Retry-After"),
        413: problem(
            "The body (decoded) is larger than MAILMAN_MAX_BODY_BYTES, or the attachments are "
            f"over {MAX_ATTACHMENT_BYTES} bytes in all, decoded (type too-large; errors "
            "names attachments)"
        ),
        415: problem("Not application/json in UTF-8, or an unknown encoding"),
        422: problem("Invalid fields (see errors), or a reused Idempotency-Key"),
        429: problem("Over the key's rate limit", "Retry-After", *RATE_HEADERS),
        503: dataclasses.replace(
            problem(
                "The store does not answer, or the backlog of unsent mail is over "
                "MAILMAN_BACKLOG_LIMIT (type backlog-full), or the body does not fit in the "
                "memory for bodies in flight (type over-budget); nothing was stored, try again "
                "after Retry-After. Type outcome-unknown: the store's answer to the commit "
                "was lost; the mail (mail_id, Location) may or may not be stored: GET it "
                "(404: never stored)",
                "Retry-After",
            ),
            headers={"Location": Header("outcome-unknown: the mail in doubt, /mail/{id}")},
        ),
    },
)
async def send_mail(request: web.Request) -> web.Response:
    """Validate, commit to the store, hand on for sending, answer 201."""
    intake = request.app[INTAKE]
    principal = request[PRINCIPAL]
    intake.check_backlog()
    rate = await intake.take_token(principal) if intake.rate_limit(principal) > 0 else None
    headers = rate_headers(rate)
    key = _idempotency_key(request)
    body = await read_mail_json(request)
    try:
        accepted = await intake.accept(
            body,
            principal=principal,
            request_id=request_id(request),
            idempotency_key=key,
            checked=True,
        )
    except (Refused, ValidationFailed) as refusal:
        problem = as_problem(refusal)
        invalid = [e.field for e in problem.errors]
        if invalid:
            note(request, invalid=invalid)
        problem.headers = {**headers, **problem.headers}
        raise problem from None
    mail, mail_id = accepted.mail, accepted.mail_id
    headers["Location"] = f"/mail/{mail_id}"
    # At info the request's one line, http.request, carries these; the events are debug detail.
    note(request, mail_id=mail_id, recipients=accepted.recipients)
    if accepted.replayed:
        note(request, replayed=True)
        log.debug("mail.replayed", mail_id=mail_id)
        headers[IDEMPOTENT_REPLAYED] = "true"
        return json_response(
            answer_accepted(mail_id, Status.QUEUED), status=HTTPStatus.CREATED, headers=headers
        )
    log.debug("mail.accepted", mail_id=mail.id, recipients=accepted.recipients)
    return json_response(
        answer_accepted(mail.id, mail.first_status), status=HTTPStatus.CREATED, headers=headers
    )


#: GET /mail's query parameters (anything else is refused, naming it).
LIST_PARAMS = (
    "recipient",
    "tag",
    "metadata_key",
    "metadata_value",
    "status",
    "since",
    "until",
    "tenant",
    "limit",
    "cursor",
)
#: The filters a page's ``next`` keeps.
KEPT = tuple(p for p in LIST_PARAMS if p not in ("limit", "cursor"))


def _list_query(principal: Principal, query: MultiMapping[str]) -> MailQuery:
    """The listing that GET /mail's query names; 400 naming every bad parameter."""
    errors: list[FieldError] = []
    params: dict[str, str] = {}
    unknown = [name for name in dict.fromkeys(query) if name not in LIST_PARAMS]
    for name in unknown[:MAX_UNKNOWN_NAMED]:  # each name cut short: it is echoed
        errors.append(
            FieldError(name[:100], f"is not a parameter of GET /mail ({', '.join(LIST_PARAMS)})")
        )
    for name in dict.fromkeys(query):
        if name in unknown:
            continue
        if len(query.getall(name)) > 1:
            errors.append(FieldError(name, "is given more than once"))
        else:
            params[name] = query[name]
    limit = PAGING.limit(params, errors)
    status = None
    if "status" in params:
        try:
            status = Status(params["status"])
        except ValueError:
            errors.append(FieldError("status", f"must be one of {', '.join(Status)}"))
    times: dict[str, float | None] = {"since": None, "until": None}
    for name in times:
        if name in params:
            try:
                times[name] = parse_time(params[name])
            except ValueError:
                errors.append(FieldError(name, "must be an RFC 3339 time, e.g. 2025-01-02T03:04Z"))
    recipient = None
    if "recipient" in params:
        try:
            recipient = parse_address(params["recipient"]).email
        except ValueError as exc:
            errors.append(FieldError("recipient", f"must be an email address: {exc}"))
    tag = params.get("tag")
    if tag is not None and (len(tag) > MAX_TAG or not _TAG.fullmatch(tag)):
        errors.append(
            FieldError(
                "tag", f"must be 1 to {MAX_TAG} printable ASCII characters, no space at either end"
            )
        )
    metadata = None
    key, value = params.get("metadata_key"), params.get("metadata_value")
    if key is not None and not is_metadata_key(key):
        errors.append(FieldError("metadata_key", METADATA_KEY_RULE))
    if (key is None) != (value is None):
        missing = "metadata_value" if value is None else "metadata_key"
        errors.append(
            FieldError(
                missing, "is needed with " + ("metadata_key" if value is None else "metadata_value")
            )
        )
    if value is not None and len(value) > MAX_FOUND_VALUE:
        errors.append(
            FieldError(
                "metadata_value",
                f"must be at most {MAX_FOUND_VALUE} characters (longer values are not indexed)",
            )
        )
    if key is not None and value is not None:
        metadata = (key, value)
    tenant = principal.tenant_filter
    if "tenant" in params and not TENANT.fullmatch(params["tenant"]):
        errors.append(
            FieldError(
                "tenant",
                "must be a tenant's name: 1 to 64 of A-Z, a-z, 0-9, ., _ and -, "
                "first a letter or digit",
            )
        )
    elif "tenant" in params:
        if tenant is not None and params["tenant"] != tenant:
            raise Problem(
                HTTPStatus.FORBIDDEN,
                "Only an admin key lists another tenant's mails.",
                type=FORBIDDEN,
            )
        tenant = params["tenant"]
    before = None
    if "cursor" in params:
        before = decode_cursor(params["cursor"])
        if before is None:
            errors.append(FieldError("cursor", "is not a cursor this service gave out"))
    if errors:
        raise Problem(
            HTTPStatus.BAD_REQUEST,
            "The query is not valid; see errors.",
            type=BAD_REQUEST,
            errors=errors,
        )
    return MailQuery(
        tenant=tenant,
        limit=limit,
        status=status,
        since=times["since"],
        until=times["until"],
        recipient=recipient,
        tag=tag,
        metadata=metadata,
        before=before,
    )


#: The document's format for a cursor: only what a page's ``next`` gave out.
CURSOR_FORMAT = "cursor"
#: GET /mail's pages: 100 mails by default, 500 at most.
PAGING = Paging(default=100, maximum=500, cursor_format=CURSOR_FORMAT)
#: A tag as a mail may have one (``core.validation.tags``; an encoded-word never is one,
#: so it finds nothing).
TAG_PATTERN = "[!-~](?:[ -~]*[!-~])?"
TAG_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_TAG, "pattern": f"^{TAG_PATTERN}$"}
_TAG = re.compile(TAG_PATTERN)
#: Where a cursor's time ends and its mail id begins.
_CURSOR_SEPARATOR = "~"


def encode_cursor(created_at: float, mail_id: str) -> str:
    """The cursor after a mail: its creation time and id, opaque (base64url)."""
    raw = f"{created_at!r}{_CURSOR_SEPARATOR}{mail_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str] | None:
    """The ``(created_at, id)`` an ``encode_cursor`` cursor holds; None for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        at, separator, mail_id = raw.partition(_CURSOR_SEPARATOR)
        created_at = float(at)
    except (binascii.Error, ValueError):
        return None
    if not separator or not math.isfinite(created_at) or created_at < 0:
        return None
    return (created_at, mail_id) if mail_id.isalnum() and len(mail_id) <= 64 else None


@routes.get("/mail")
@requires(Scope.READ)
@operation(
    "listMails",
    "Find the caller's mails, newest first, a page at a time",
    description="Needs `read` (or `send`); admin keys list every tenant's mails (or one "
    "tenant's, with `tenant`). Every filter given must hold (AND). Each filter reads an "
    "index: the recipient's, the metadata value's or the tag's, else the tenant's by "
    "status and time.",
    parameters=(
        Param(
            "recipient",
            "query",
            ADDRESS,
            "To, cc or bcc of the mail, in any case (an international domain as typed or as xn--)",
        ),
        Param("tag", "query", TAG_SCHEMA, "One of the mail's tags, exactly"),
        Param(
            "metadata_key",
            "query",
            {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
            "A key of the mail's metadata; needs `metadata_value`",
        ),
        Param(
            "metadata_value",
            "query",
            {"type": "string", "maxLength": MAX_FOUND_VALUE},
            "The value of `metadata_key`, exactly; needs `metadata_key`. A mail's metadata "
            f"value over {MAX_FOUND_VALUE} characters is not indexed (never found)",
        ),
        Param("status", "query", {"type": "string", "enum": [s.value for s in Status]}),
        Param(
            "since",
            "query",
            {"type": "string", "format": "date-time"},
            "created at or after this RFC 3339 time",
        ),
        Param(
            "until",
            "query",
            {"type": "string", "format": "date-time"},
            "created before this RFC 3339 time",
        ),
        Param(
            "tenant",
            "query",
            {"type": "string", "pattern": f"^{TENANT.pattern}$"},
            "Admin keys: this tenant's mails only (another key: its own tenant, or 403)",
        ),
        *PAGING.params,
    ),
    answers={
        200: Answer("A page; `next` is absent on the last one", MailList),
        400: problem(
            "A bad, unknown or repeated query parameter, or metadata_key without "
            "metadata_value (see errors)"
        ),
        403: problem("tenant names another tenant, and the key is not an admin's"),
    },
)
async def list_mails(request: web.Request) -> web.Response:
    """The caller's mails that match the query, newest first, a page at a time."""
    query = _list_query(request[PRINCIPAL], request.query)
    store, timeout = _store(request)
    page = await guarded(
        store, timeout, store.list_mails(dataclasses.replace(query, limit=query.limit + 1))
    )
    body: MailList = {
        "mails": [
            {
                "id": m.id,
                "status": m.status,
                "created_at": iso_time(m.created_at),
                "links": [mail_links(m.id)],
            }
            for m in page[: query.limit]
        ]
    }
    if len(page) > query.limit:
        kept = {k: v for k, v in request.query.items() if k in KEPT}
        if "limit" in request.query:
            kept["limit"] = str(query.limit)
        last = page[query.limit - 1]
        kept["cursor"] = encode_cursor(last.created_at, last.id)
        body["next"] = f"/mail?{urlencode(kept)}"
    return json_response(body)


async def _visible(request: web.Request, mail_id: str) -> tuple[Mail, Status]:
    """The caller's mail and its status; 404 if unknown or another tenant's."""
    store, timeout = _store(request)
    found = await guarded(store, timeout, store.load(mail_id))
    if found is None or not request[PRINCIPAL].sees(found[0].tenant):
        raise _unknown()  # another tenant's mail is as unknown as a missing one
    return found


@routes.get("/mail/{id}/status")
@requires(Scope.READ)
@operation(
    "mailStatus",
    "The mail's status",
    parameters=(MAIL_ID,),
    answers={200: Answer("The status", StatusAnswer), 404: UNKNOWN},
)
async def mail_status(request: web.Request) -> web.Response:
    mail_id = request.match_info["id"]
    _, status = await _visible(request, mail_id)
    return json_response(status_answer(mail_id, status))


# ``send`` is excluded so that GET /mail/send is a 405, not an unknown mail.
@routes.get("/mail/{id:(?!send$)[^/]+}")
@requires(Scope.READ)
@operation(
    "showMail",
    "The whole mail: what was submitted, status, provider, attempts",
    parameters=(MAIL_ID,),
    answers={200: Answer("The mail", MailDetail), 404: UNKNOWN},
)
async def show_mail(request: web.Request) -> web.Response:
    mail_id = request.match_info["id"]
    store, timeout = _store(request)
    record = await guarded(store, timeout, store.get(mail_id))
    if record is None or not request[PRINCIPAL].sees(record.mail.tenant):
        raise _unknown()
    return json_response(detail(record))


#: What an endpoint whose optional body has no fields answers for a body it cannot take.
_EMPTY_BODY_ANSWERS = {
    400: problem("Malformed JSON or a bad body encoding"),
    408: problem("The request body stalled"),
    413: problem("The body is too large"),
    415: problem("Not application/json"),
    422: problem("The body is not an empty object: errors names each field"),
}


#: What ``_json_body`` says of a request without a body (JSON's ``null`` is a body).
NO_BODY = object()


async def _json_body(request: web.Request) -> object:
    """An optional JSON body (``NO_BODY``: none, or only whitespace); 415 unless JSON."""
    if not request.body_exists:
        return NO_BODY
    raw = await read_body(request)
    if not raw.strip():
        return NO_BODY
    _require_json(request)
    return decode_json(raw)


async def _no_fields(request: web.Request) -> None:
    """Nothing, or ``{}``: any field is a 422 naming it (it would be ignored otherwise)."""
    body = await _json_body(request)
    if body is not NO_BODY:
        NoFields.read(body)


@routes.delete("/mail/{id:(?!send$)[^/]+}")
@requires(Scope.SEND)
@operation(
    "eraseMail",
    "Erase a mail now: its content and its record (needs `send`; admins any tenant's)",
    description="Deletes the mail with its attempts, events, callbacks and idempotency key "
    "(GDPR art. 17); afterwards it is 404. A `scheduled` mail is cancelled and erased. A "
    "mail still `queued` or `sending` is refused with 409: a sender may hold it; erase it "
    "once it is final. Without a request, MAILMAN_BODY_RETENTION and "
    "MAILMAN_RECORD_RETENTION erase mails by age.",
    parameters=(MAIL_ID,),
    answers={
        204: Answer("Erased: nothing of the mail is left"),
        404: UNKNOWN,
        409: problem("The mail is queued or sending (type status-conflict): not erased"),
    },
)
async def erase_mail(request: web.Request) -> web.Response:
    """Erase a final or scheduled mail now; 409 while it is on its way."""
    mail_id = request.match_info["id"]
    await _visible(request, mail_id)
    store, timeout = _store(request)
    erased = await guarded(store, timeout, store.erase(mail_id, time.time()))
    if erased is None:
        raise _unknown()
    note(request, mail_id=mail_id)
    if not erased.erased:
        raise Problem(
            HTTPStatus.CONFLICT,
            f"The mail is {erased.status.value}: it is on its way to a provider and cannot be "
            "erased before it is final (sent or failed). Try again then.",
            type=STATUS_CONFLICT,
        )
    log.info("mail.erased", mail_id=mail_id, status=erased.status.value)
    return web.Response(status=HTTPStatus.NO_CONTENT)


@routes.post("/mail/{id}/retry")
@requires(Scope.SEND)
@operation(
    "retryMail",
    "Send a failed or held mail again: a new round, the same id (needs `send`)",
    description="The mail goes back to `queued`; its history stays. "
    "409 unless the mail is `failed`, or `unknown` (held: its answer was lost, see "
    "`MAILMAN_UNKNOWN_POLICY`).",
    parameters=(MAIL_ID,),
    body=Body.json(NoFields, required=False),
    answers={
        202: Answer("Queued again", StatusAnswer),
        404: UNKNOWN,
        409: problem("The mail is not failed or unknown, or its content was erased (retention)"),
        **_EMPTY_BODY_ANSWERS,
    },
)
async def retry_mail(request: web.Request) -> web.Response:
    """Send a ``failed`` (or held ``unknown``) mail again: a new round, the same id; 409
    unless it is one of those."""
    await _no_fields(request)
    mail_id = request.match_info["id"]
    await _visible(request, mail_id)
    store, timeout = _store(request)
    now = time.time()
    result = await guarded(store, timeout, store.retry(mail_id, now))
    if result is None:
        raise _unknown()
    note(request, mail_id=mail_id)
    if not result.changed:
        detail = (
            f"The mail is {result.status.value}: only a failed or unknown mail can be sent again."
        )
        if result.status in (Status.FAILED, Status.UNKNOWN):  # its content was erased
            detail = "The mail's content was erased (retention): there is nothing to send again."
        raise Problem(HTTPStatus.CONFLICT, detail, type=STATUS_CONFLICT)
    try:
        await request.app[OUTBOUND].dispatch(Dispatch(mail_id=mail_id, accepted_at=now))
    except Exception:  # committed: the relay finds it on its next look
        log.exception("mail.dispatch_failed", mail_id=mail_id)
    log.info("mail.retried", mail_id=mail_id)
    return json_response(status_answer(mail_id, result.status), status=HTTPStatus.ACCEPTED)


#: What marking a mail by hand may answer besides its 200.
_MARK_ANSWERS = {404: UNKNOWN, 409: problem("The mail is final in the other status")}


@routes.post("/mail/{id}/sent")
@requires(Scope.ADMIN)
@operation(
    "markSent",
    "Mark a mail sent by hand (bookkeeping; needs `admin`)",
    parameters=(MAIL_ID,),
    body=Body.json(NoFields, required=False),
    answers={
        200: Answer("Moved, or already sent", StatusAnswer),
        **_MARK_ANSWERS,
        **_EMPTY_BODY_ANSWERS,
    },
)
async def mark_sent(request: web.Request) -> web.Response:
    await _no_fields(request)
    return await _mark(request, Status.SENT, reason=None)


@routes.post("/mail/{id}/failed")
@requires(Scope.ADMIN)
@operation(
    "markFailed",
    "Mark a mail failed by hand (bookkeeping; needs `admin`)",
    parameters=(MAIL_ID,),
    body=Body.json(MarkFailed, required=False),
    answers={
        200: Answer("Moved, or already failed", StatusAnswer),
        400: problem("Malformed JSON or a bad body encoding"),
        **_MARK_ANSWERS,
        408: problem("The request body stalled"),
        413: problem("The body is too large"),
        415: problem("Not application/json"),
        422: problem(
            "reason is not a string or is over 1,000 characters, another field is given, "
            "or the body is not an object"
        ),
    },
)
async def mark_failed(request: web.Request) -> web.Response:
    return await _mark(request, Status.FAILED, reason=await _failure_reason(request))


async def _failure_reason(request: web.Request) -> str | None:
    """The optional ``{"reason": "..."}`` body of POST /mail/{id}/failed."""
    body = await _json_body(request)
    return None if body is NO_BODY else MarkFailed.read(body).reason or None


async def _mark(request: web.Request, status: Status, *, reason: str | None) -> web.Response:
    """Move a mail to ``status`` by hand: 200 if moved or already there, 409 if refused."""
    mail_id = request.match_info["id"]
    store, timeout = _store(request)
    result = await guarded(
        store, timeout, store.transition(mail_id, status, at=time.time(), reason=reason)
    )
    if result is None:
        raise _unknown()
    if not result.changed and result.status != status:
        log.info(
            "mail.mark_refused", mail_id=mail_id, wanted=status.value, status=result.status.value
        )
        raise Problem(
            HTTPStatus.CONFLICT,
            f"The mail is {result.status.value} and cannot become {status.value}.",
            type=STATUS_CONFLICT,
        )
    log.info("mail.marked", mail_id=mail_id, status=status.value, changed=result.changed)
    return json_response(status_answer(mail_id, result.status))

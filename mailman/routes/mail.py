"""The mail endpoints: submit a mail, read its status and history, mark it by hand."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from mailman.config.logging import get_logger
from mailman.core.clock import iso_time, parse_time
from mailman.core.messages import Dispatch
from mailman.core.model import Attempt, DeliveryEvent, Mail, Status
from mailman.core.validation import BODY_FIELD, FieldError, ValidationFailed
from mailman.intake.accept import idempotency_key_problem
from mailman.intake.auth import Principal
from mailman.intake.guard import guarded
from mailman.intake.keys import Scope
from mailman.intake.refusals import Refused
from mailman.store import (
    MailQuery,
    MailRecord,
    Store,
)

from . import CONFIG, INTAKE, OUTBOUND, STORE
from .auth import PRINCIPAL, requires
from .body import decode_json, read_body
from .errors import (
    BAD_REQUEST,
    IDEMPOTENCY_KEY,
    NOT_FOUND,
    STATUS_CONFLICT,
    UNSUPPORTED_MEDIA_TYPE,
    Problem,
    as_problem,
    bad_idempotency_key,
    invalid,
    note,
    rate_headers,
    request_id,
)

log = get_logger("mailman.http")

routes = web.RouteTableDef()

JSON_CONTENT_TYPE = "application/json"
_UTF8 = frozenset({"utf-8", "utf8"})

IDEMPOTENT_REPLAYED = "Idempotent-Replayed"
#: GET /mail: mails per page by default, and at most.
DEFAULT_PAGE = 100
MAX_PAGE = 500


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
    return decode_json(
        await read_body(
            request,
            limit=request.app[CONFIG].max_body_bytes,
            idle_timeout=request.app[CONFIG].body_idle_timeout,
        )
    )


def _unknown() -> Problem:
    return Problem(HTTPStatus.NOT_FOUND, "There is no mail with this id.", type=NOT_FOUND)


def status_body(mail_id: str, status: Status) -> dict[str, Any]:
    return {
        "mail": {
            "id": mail_id,
            "status": status.value,
            "links": [{"self": f"/mail/{mail_id}/status", "show": f"/mail/{mail_id}"}],
        }
    }


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "provider": attempt.provider,
        "round": attempt.round,
        "at": iso_time(attempt.at),
        "outcome": attempt.outcome.value,
        "reason": attempt.reason,
        "message_id": attempt.message_id,
        "checked": None if attempt.checked is None else attempt.checked.value,
    }


def _event_json(event: DeliveryEvent) -> dict[str, Any]:
    return {
        "provider": event.provider,
        "event": event.kind.value,
        "at": iso_time(event.at),
        "bounce": event.bounce,
        "reason": event.reason,
        "recipient": event.recipient,
    }


def show_body(record: MailRecord) -> dict[str, Any]:
    mail = record.mail
    return {
        "mail": {
            "id": mail.id,
            "status": record.status.value,
            "provider": record.provider,
            "provider_message_id": record.provider_message_id,
            "reason": record.reason,
            "created_at": iso_time(mail.created_at),
            "updated_at": iso_time(record.updated_at),
            "submitted": mail.as_json(),
            "attempts": [_attempt_json(a) for a in record.attempts],
            "events": [_event_json(e) for e in record.events],
            "links": [{"self": f"/mail/{mail.id}", "status": f"/mail/{mail.id}/status"}],
        }
    }


# --- handlers ------------------------------------------------------------------


def _store(request: web.Request) -> tuple[Store, float]:
    return request.app[STORE], request.app[CONFIG].store_timeout


def _idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header: 1-255 printable ASCII characters; 400 otherwise."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and (problem := idempotency_key_problem(key)) is not None:
        raise bad_idempotency_key(problem)
    return key


def accepted_body(mail_id: str, status: Status = Status.QUEUED) -> dict[str, Any]:
    """What POST /mail/send answers (and an idempotent repeat answers again)."""
    return {
        "mail": {
            "id": mail_id,
            "status": status.value,
            "links": [{"status": f"/mail/{mail_id}/status", "self": f"/mail/{mail_id}"}],
        }
    }


async def read_mail_json(request: web.Request) -> object:
    """The JSON body of a mail submission: 415 unless JSON in UTF-8, 413 past the limit."""
    _require_json(request)
    return await _read_json(request)


@routes.post("/mail/send")
@requires(Scope.SEND)
async def send_mail(request: web.Request) -> web.Response:
    """Validate, commit to the store, hand on for sending, answer 201."""
    intake = request.app[INTAKE]
    principal = request[PRINCIPAL]
    intake.check_backlog()
    rate = await intake.take_token(principal)
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
        return json_response(accepted_body(mail_id), status=HTTPStatus.CREATED, headers=headers)
    log.debug("mail.accepted", mail_id=mail.id, recipients=accepted.recipients)
    return json_response(
        accepted_body(mail.id, mail.first_status), status=HTTPStatus.CREATED, headers=headers
    )


def _list_query(principal: Principal, params: Mapping[str, str]) -> MailQuery:
    """The listing that GET /mail's query names; 400 naming every bad parameter."""
    errors: list[FieldError] = []
    limit = DEFAULT_PAGE
    if "limit" in params:
        raw = params["limit"]
        if raw.isdigit() and 1 <= int(raw) <= MAX_PAGE:
            limit = int(raw)
        else:
            errors.append(FieldError("limit", f"must be a whole number from 1 to {MAX_PAGE}"))
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
    before = None
    if "cursor" in params:
        before = _decode_cursor(params["cursor"])
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
        tenant=principal.tenant_filter,
        limit=limit,
        status=status,
        since=times["since"],
        until=times["until"],
        before=before,
    )


def _encode_cursor(mail_id: str) -> str:
    return base64.urlsafe_b64encode(mail_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        mail_id = raw.decode("ascii")
    except (binascii.Error, ValueError):
        return None
    return mail_id if mail_id.isalnum() and 0 < len(mail_id) <= 64 else None


@routes.get("/mail")
@requires(Scope.READ)
async def list_mails(request: web.Request) -> web.Response:
    """The caller's mails, newest first, a page at a time."""
    query = _list_query(request[PRINCIPAL], request.query)
    store, timeout = _store(request)
    page = await guarded(
        store, timeout, store.list_mails(dataclasses.replace(query, limit=query.limit + 1))
    )
    body: dict[str, Any] = {
        "mails": [
            {
                "id": m.id,
                "status": m.status.value,
                "created_at": iso_time(m.created_at),
                "links": [{"self": f"/mail/{m.id}", "status": f"/mail/{m.id}/status"}],
            }
            for m in page[: query.limit]
        ]
    }
    if len(page) > query.limit:
        kept = {k: v for k, v in request.query.items() if k in ("status", "since", "until")}
        if "limit" in request.query:
            kept["limit"] = str(query.limit)
        kept["cursor"] = _encode_cursor(page[query.limit - 1].id)
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
async def mail_status(request: web.Request) -> web.Response:
    mail_id = request.match_info["id"]
    _, status = await _visible(request, mail_id)
    return json_response(status_body(mail_id, status))


# ``send`` is excluded so that GET /mail/send is a 405, not an unknown mail.
@routes.get("/mail/{id:(?!send$)[^/]+}")
@requires(Scope.READ)
async def show_mail(request: web.Request) -> web.Response:
    mail_id = request.match_info["id"]
    store, timeout = _store(request)
    record = await guarded(store, timeout, store.get(mail_id))
    if record is None or not request[PRINCIPAL].sees(record.mail.tenant):
        raise _unknown()
    return json_response(show_body(record))


@routes.post("/mail/{id}/retry")
@requires(Scope.SEND)
async def retry_mail(request: web.Request) -> web.Response:
    """Send a ``failed`` mail again: a new round, the same id; 409 unless it is failed."""
    mail_id = request.match_info["id"]
    await _visible(request, mail_id)
    store, timeout = _store(request)
    now = time.time()
    result = await guarded(store, timeout, store.retry(mail_id, now))
    if result is None:
        raise _unknown()
    note(request, mail_id=mail_id)
    if not result.changed:
        raise Problem(
            HTTPStatus.CONFLICT,
            f"The mail is {result.status.value}: only a failed mail can be sent again.",
            type=STATUS_CONFLICT,
        )
    try:
        await request.app[OUTBOUND].dispatch(Dispatch(mail_id=mail_id, accepted_at=now))
    except Exception:  # committed: the relay finds it on its next look
        log.exception("mail.dispatch_failed", mail_id=mail_id)
    log.info("mail.retried", mail_id=mail_id)
    return json_response(status_body(mail_id, result.status), status=HTTPStatus.ACCEPTED)


@routes.post("/mail/{id}/sent")
@requires(Scope.ADMIN)
async def mark_sent(request: web.Request) -> web.Response:
    return await _mark(request, Status.SENT, reason=None)


@routes.post("/mail/{id}/failed")
@requires(Scope.ADMIN)
async def mark_failed(request: web.Request) -> web.Response:
    return await _mark(request, Status.FAILED, reason=await _failure_reason(request))


async def _failure_reason(request: web.Request) -> str | None:
    """The optional ``{"reason": "..."}`` body of POST /mail/{id}/failed."""
    if not request.body_exists:
        return None
    raw = await read_body(
        request,
        limit=request.app[CONFIG].max_body_bytes,
        idle_timeout=request.app[CONFIG].body_idle_timeout,
    )
    if not raw.strip():
        return None
    _require_json(request)
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise invalid([FieldError(BODY_FIELD, "must be a JSON object")])
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise invalid([FieldError("reason", "must be a string")])
    return reason or None


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
    return json_response(status_body(mail_id, result.status))

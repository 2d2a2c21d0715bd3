"""The mail endpoints: submit a mail, read its status and history, mark it by hand."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from aiohttp import web

from actors.messages import Attempt, Dispatch, Mail, Status, new_mail_id
from actors.store import MailRecord

from . import CONFIG, OUTBOUND, STORE
from .body import read_body
from .errors import (
    MALFORMED_JSON,
    NOT_FOUND,
    STATUS_CONFLICT,
    UNSUPPORTED_MEDIA_TYPE,
    VALIDATION,
    Problem,
)
from .validation import BODY_FIELD, FieldError, ValidationFailed, parse_mail

log = structlog.get_logger("mailman.http")

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


def iso(ts: float) -> str:
    """A unix time as ISO 8601 in UTC, e.g. ``2025-01-02T03:04:05.678Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    return _decode(await read_body(request, limit=request.app[CONFIG].max_body_bytes))


def _decode(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(
            HTTPStatus.BAD_REQUEST, f"The body is not valid JSON: {exc}", type=MALFORMED_JSON
        ) from None


def _invalid(errors: list[FieldError]) -> Problem:
    return Problem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "The mail is not valid; see errors.",
        type=VALIDATION,
        errors=errors,
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
        "at": iso(attempt.at),
        "outcome": attempt.outcome.value,
        "reason": attempt.reason,
        "message_id": attempt.message_id,
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
            "created_at": iso(mail.created_at),
            "updated_at": iso(record.updated_at),
            "submitted": mail.as_json(),
            "attempts": [_attempt_json(a) for a in record.attempts],
            "links": [{"self": f"/mail/{mail.id}", "status": f"/mail/{mail.id}/status"}],
        }
    }


def _recipients(mail: Mail) -> int:
    return len(mail.to) + len(mail.cc) + len(mail.bcc)


# --- handlers ------------------------------------------------------------------


@routes.post("/mail/send")
async def send_mail(request: web.Request) -> web.Response:
    """Validate, commit to the store, hand on for sending, answer 201."""
    _require_json(request)
    body = await _read_json(request)
    try:
        mail = parse_mail(
            body,
            mail_id=new_mail_id(),
            default_subject=request.app[CONFIG].default_subject,
            now=time.time(),
        )
    except ValidationFailed as exc:
        log.info("mail.invalid", fields=[e.field for e in exc.errors])
        raise _invalid(exc.errors) from None
    await request.app[STORE].add(mail)
    try:
        await request.app[OUTBOUND].dispatch(Dispatch(mail_id=mail.id, accepted_at=mail.created_at))
    except Exception:
        # The mail is committed as queued: recovery dispatches it again at the
        # next start, so the caller is still told it was accepted.
        log.exception("mail.dispatch_failed", mail_id=mail.id)
    log.info("mail.accepted", mail_id=mail.id, recipients=_recipients(mail))
    location = f"/mail/{mail.id}"
    body_out = {
        "mail": {
            "id": mail.id,
            "status": Status.QUEUED.value,
            "links": [{"status": f"/mail/{mail.id}/status", "self": location}],
        }
    }
    return json_response(body_out, status=HTTPStatus.CREATED, headers={"Location": location})


@routes.get("/mail/{id}/status")
async def mail_status(request: web.Request) -> web.Response:
    mail_id = request.match_info["id"]
    found = await request.app[STORE].load(mail_id)
    if found is None:
        raise _unknown()
    _, status = found
    return json_response(status_body(mail_id, status))


# ``send`` is excluded so that GET /mail/send is a 405, not an unknown mail.
@routes.get("/mail/{id:(?!send$)[^/]+}")
async def show_mail(request: web.Request) -> web.Response:
    mail_id = request.match_info["id"]
    record = await request.app[STORE].get(mail_id)
    if record is None:
        raise _unknown()
    return json_response(show_body(record))


@routes.post("/mail/{id}/sent")
async def mark_sent(request: web.Request) -> web.Response:
    return await _mark(request, Status.SENT, reason=None)


@routes.post("/mail/{id}/failed")
async def mark_failed(request: web.Request) -> web.Response:
    return await _mark(request, Status.FAILED, reason=await _failure_reason(request))


async def _failure_reason(request: web.Request) -> str | None:
    """The optional ``{"reason": "..."}`` body of POST /mail/{id}/failed."""
    if not request.body_exists:
        return None
    raw = await read_body(request, limit=request.app[CONFIG].max_body_bytes)
    if not raw.strip():
        return None
    _require_json(request)
    body = _decode(raw)
    if not isinstance(body, dict):
        raise _invalid([FieldError(BODY_FIELD, "must be a JSON object")])
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise _invalid([FieldError("reason", "must be a string")])
    return reason or None


async def _mark(request: web.Request, status: Status, *, reason: str | None) -> web.Response:
    """Move a mail to ``status`` by hand: 200 if moved or already there, 409 if refused."""
    mail_id = request.match_info["id"]
    result = await request.app[STORE].transition(mail_id, status, at=time.time(), reason=reason)
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

"""The mail endpoints: submit a mail, read its status and history, mark it by hand."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import hdrs, web
from aiohttp.abc import AbstractResolver

from actors.callbacks import binds_loopback, resolution_problem
from actors.keys import Scope
from actors.messages import Attempt, DeliveryEvent, Dispatch, Mail, Status, new_mail_id
from actors.store import (
    Idempotency,
    IdempotencyMismatch,
    MailQuery,
    MailRecord,
    RateDecision,
    Store,
)
from config.logging import get_logger

from . import BACKLOG, CONFIG, INFLIGHT, OUTBOUND, STORE
from .auth import PRINCIPAL, Principal, requires
from .backlog import RETRY_AFTER_SECONDS as BACKLOG_RETRY_AFTER
from .body import decode_json, read_body
from .errors import (
    BACKLOG_FULL,
    BAD_REQUEST,
    IDEMPOTENCY_IN_FLIGHT,
    IDEMPOTENCY_MISMATCH,
    NOT_FOUND,
    RATE_LIMITED,
    STATUS_CONFLICT,
    UNSUPPORTED_MEDIA_TYPE,
    VALIDATION,
    Problem,
    note,
    request_id,
)
from .guard import guarded
from .validation import BODY_FIELD, CallbackRules, FieldError, ValidationFailed, parse_mail

log = get_logger("mailman.http")

routes = web.RouteTableDef()

JSON_CONTENT_TYPE = "application/json"
_UTF8 = frozenset({"utf-8", "utf8"})

IDEMPOTENCY_KEY = "Idempotency-Key"
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"
#: What a request whose key is still being committed is asked to wait.
IN_FLIGHT_RETRY_AFTER = 1
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
    return decode_json(
        await read_body(
            request,
            limit=request.app[CONFIG].max_body_bytes,
            idle_timeout=request.app[CONFIG].body_idle_timeout,
        )
    )


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
        "checked": None if attempt.checked is None else attempt.checked.value,
    }


def _event_json(event: DeliveryEvent) -> dict[str, Any]:
    return {
        "provider": event.provider,
        "event": event.kind.value,
        "at": iso(event.at),
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
            "created_at": iso(mail.created_at),
            "updated_at": iso(record.updated_at),
            "submitted": mail.as_json(),
            "attempts": [_attempt_json(a) for a in record.attempts],
            "events": [_event_json(e) for e in record.events],
            "links": [{"self": f"/mail/{mail.id}", "status": f"/mail/{mail.id}/status"}],
        }
    }


def _recipients(mail: Mail) -> int:
    return len(mail.to) + len(mail.cc) + len(mail.bcc)


# --- handlers ------------------------------------------------------------------


def _store(request: web.Request) -> tuple[Store, float]:
    return request.app[STORE], request.app[CONFIG].store_timeout


def _idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header: 1-255 printable ASCII characters; 400 otherwise."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all(" " <= c <= "~" for c in key):
        raise Problem(
            HTTPStatus.BAD_REQUEST,
            f"{IDEMPOTENCY_KEY} must be 1 to 255 printable ASCII characters.",
            type=BAD_REQUEST,
            errors=[FieldError(IDEMPOTENCY_KEY, "must be 1 to 255 printable ASCII characters")],
        )
    return key


def _fingerprint(body: object) -> str:
    """A digest of the request body that ignores key order and spacing."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _rate_headers(rate: float, decision: RateDecision) -> dict[str, str]:
    return {
        "RateLimit-Limit": f"{rate:g}",
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(math.ceil(decision.reset)),
    }


async def _take_token(request: web.Request, principal: Principal) -> dict[str, str]:
    """Charge one mail to the caller's bucket: its rate-limit headers; 429 when it is empty."""
    rate = principal.rate if principal.rate is not None else request.app[CONFIG].rate_limit
    if rate <= 0:
        return {}
    store, timeout = _store(request)
    bucket = f"key:{principal.key_id}" if principal.key_id else "anonymous"
    decision = await guarded(store, timeout, store.take_token(bucket, rate, time.time()))
    headers = _rate_headers(rate, decision)
    if not decision.allowed:
        log.debug("mail.rate_limited", rate=rate)  # at info: http.request's problem
        raise Problem(
            HTTPStatus.TOO_MANY_REQUESTS,
            f"This API key may send {rate:g} mails per second; wait for Retry-After.",
            type=RATE_LIMITED,
            headers={**headers, hdrs.RETRY_AFTER: str(max(1, math.ceil(decision.retry_after)))},
        )
    return headers


def accepted_body(mail_id: str) -> dict[str, Any]:
    """What POST /mail/send answers (and an idempotent repeat answers again)."""
    return {
        "mail": {
            "id": mail_id,
            "status": Status.QUEUED.value,
            "links": [{"status": f"/mail/{mail_id}/status", "self": f"/mail/{mail_id}"}],
        }
    }


@routes.post("/mail/send")
@requires(Scope.SEND)
async def send_mail(request: web.Request) -> web.Response:
    """Validate, commit to the store, hand on for sending, answer 201."""
    principal = request[PRINCIPAL]
    backlog = request.app[BACKLOG]
    if backlog.full():
        raise Problem(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"{backlog.size} mails are waiting to be sent (the limit is {backlog.limit}); "
            "nothing was stored. Try again after Retry-After.",
            type=BACKLOG_FULL,
            headers={hdrs.RETRY_AFTER: str(BACKLOG_RETRY_AFTER)},
        )
    headers = await _take_token(request, principal)
    key = _idempotency_key(request)
    _require_json(request)
    body = await _read_json(request)
    now = time.time()
    try:
        mail = parse_mail(
            body,
            mail_id=new_mail_id(),
            default_subject=request.app[CONFIG].default_subject,
            now=now,
            tenant=principal.tenant,
            callbacks=_callback_rules(request, principal),
            request_id=request_id(request),
        )
        if mail.callback_url is not None:
            await _check_callback(request, mail.callback_url)
    except ValidationFailed as exc:
        invalid = [e.field for e in exc.errors]
        note(request, invalid=invalid)
        log.debug("mail.invalid", fields=invalid)
        raise _invalid(exc.errors) from None
    idempotency = None
    if key is not None:
        idempotency = Idempotency(
            key_hash=hashlib.sha256(key.encode()).hexdigest(),
            fingerprint=_fingerprint(body),
            expires_at=now + request.app[CONFIG].idempotency_ttl,
        )
    mail_id = await _commit(request, mail, idempotency)
    location = f"/mail/{mail_id}"
    headers["Location"] = location
    # At info the request's one line, http.request, carries these; the events are debug detail.
    recipients = _recipients(mail)
    note(request, mail_id=mail_id, recipients=recipients)
    if mail_id != mail.id:
        note(request, replayed=True)
        log.debug("mail.replayed", mail_id=mail_id)
        headers[IDEMPOTENT_REPLAYED] = "true"
        return json_response(accepted_body(mail_id), status=HTTPStatus.CREATED, headers=headers)
    backlog.accepted()
    try:
        await request.app[OUTBOUND].dispatch(Dispatch(mail_id=mail.id, accepted_at=mail.created_at))
    except Exception:
        # The mail is committed as queued: recovery dispatches it again at the
        # next start, so the caller is still told it was accepted.
        log.exception("mail.dispatch_failed", mail_id=mail.id)
    log.debug("mail.accepted", mail_id=mail.id, recipients=recipients)
    return json_response(accepted_body(mail.id), status=HTTPStatus.CREATED, headers=headers)


# --- status callbacks (actors.callbacks) ---------------------------------------------

#: Resolves callback hosts at submission; the system's resolver when not set (tests set it).
CALLBACK_RESOLVER = web.AppKey("callback_resolver", AbstractResolver)


def _callback_rules(request: web.Request, principal: Principal) -> CallbackRules:
    """What ``callback_url`` may be for this request.

    Plain ``http`` only while the API runs open, which it does only with no key
    in the store and only on loopback (``actors.system.check_exposure``): the
    caller is then the anonymous principal, and the bind address says loopback.
    """
    config = request.app[CONFIG]
    return CallbackRules(
        enabled=config.callbacks.secret is not None,
        allow_http=principal.key_id is None and binds_loopback(config.host),
        allow_private=config.callbacks.allow_private,
    )


async def _check_callback(request: web.Request, url: str) -> None:
    """Resolve the callback URL's host: ``ValidationFailed`` if an address is not public."""
    config = request.app[CONFIG].callbacks
    if config.allow_private:
        return
    problem = await resolution_problem(
        url, resolver=request.app.get(CALLBACK_RESOLVER), within=config.timeout_seconds
    )
    if problem is not None:
        raise ValidationFailed([FieldError("callback_url", problem)])


async def _commit(request: web.Request, mail: Mail, idempotency: Idempotency | None) -> str:
    """Store the mail; the id that stands for this request (an earlier one's on a repeat)."""
    store, timeout = _store(request)
    if idempotency is None:
        return await guarded(store, timeout, store.add(mail))
    inflight = request.app[INFLIGHT]
    slot = (mail.tenant, idempotency.key_hash)
    if slot in inflight:
        raise Problem(
            HTTPStatus.CONFLICT,
            f"A request with this {IDEMPOTENCY_KEY} is still being processed; "
            "repeat it after Retry-After to get its answer.",
            type=IDEMPOTENCY_IN_FLIGHT,
            headers={hdrs.RETRY_AFTER: str(IN_FLIGHT_RETRY_AFTER)},
        )
    inflight.add(slot)
    try:
        return await guarded(store, timeout, store.add(mail, idempotency))
    except IdempotencyMismatch:
        raise Problem(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            f"This {IDEMPOTENCY_KEY} was already used with another request body.",
            type=IDEMPOTENCY_MISMATCH,
            errors=[FieldError(IDEMPOTENCY_KEY, "was used before with another body")],
        ) from None
    finally:
        inflight.discard(slot)


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


def parse_time(raw: str) -> float:
    """An RFC 3339 time (UTC when it names no offset) as unix time; ValueError if it is not."""
    value = datetime.fromisoformat(raw.strip().replace("z", "Z"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


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
                "created_at": iso(m.created_at),
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
        raise _invalid([FieldError(BODY_FIELD, "must be a JSON object")])
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise _invalid([FieldError("reason", "must be a string")])
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

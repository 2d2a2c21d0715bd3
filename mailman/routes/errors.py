"""Errors as problem details (RFC 9457), and the two middlewares around every request.

Every error answer is ``application/problem+json`` with ``type``, ``title``,
``status`` and ``detail`` (plus ``errors`` for a 422). Handlers raise
``Problem``; what the intake refused (``as_problem``), aiohttp's own
``HTTPException``s (404, 405, 413...) and any unexpected exception are turned
into problems by ``error_middleware``, and answered in the shape of the path's API:
problem+json, or, under a drop-in endpoint's path, its provider's (``ERROR_SHAPES``).

At info a request logs one line, ``http.request`` (see ``request_ids``):
a refused one says why in its ``problem`` field rather than in a line of its own.
"""

from __future__ import annotations

import itertools
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from mailman.config.logging import get_logger
from mailman.core.validation import FieldError, ValidationFailed
from mailman.intake.instruments import UNROUTED, HttpMetrics
from mailman.intake.load import Load
from mailman.intake.refusals import (
    BacklogFull,
    KeyInFlight,
    KeyReused,
    Rate,
    RateLimited,
    Refused,
)
from mailman.store import OutcomeUnknown, StoreUnavailable

from .models.common import Problem as ProblemJson

log = get_logger("mailman.http")

PROBLEM_CONTENT_TYPE = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-Id"

_PROBLEMS = "https://mailman.dev/problems/"
VALIDATION = _PROBLEMS + "validation"
MALFORMED_JSON = _PROBLEMS + "malformed-json"
DUPLICATE_KEY = _PROBLEMS + "duplicate-key"
UNSUPPORTED_MEDIA_TYPE = _PROBLEMS + "unsupported-media-type"
TOO_LARGE = _PROBLEMS + "too-large"
NOT_FOUND = _PROBLEMS + "not-found"
METHOD_NOT_ALLOWED = _PROBLEMS + "method-not-allowed"
STATUS_CONFLICT = _PROBLEMS + "status-conflict"
INTERNAL = _PROBLEMS + "internal"
BAD_REQUEST = _PROBLEMS + "bad-request"
UNAUTHORIZED = _PROBLEMS + "unauthorized"
FORBIDDEN = _PROBLEMS + "forbidden"
RATE_LIMITED = _PROBLEMS + "rate-limited"
IDEMPOTENCY_MISMATCH = _PROBLEMS + "idempotency-key-reused"
IDEMPOTENCY_IN_FLIGHT = _PROBLEMS + "idempotency-key-in-flight"
STORE_UNAVAILABLE = _PROBLEMS + "store-unavailable"
OUTCOME_UNKNOWN = _PROBLEMS + "outcome-unknown"
BACKLOG_FULL = _PROBLEMS + "backlog-full"
OVER_BUDGET = _PROBLEMS + "over-budget"
NOT_READY = _PROBLEMS + "not-ready"
TIMEOUT = _PROBLEMS + "timeout"
#: RFC 9457: the problem has no more meaning than its HTTP status.
ABOUT_BLANK = "about:blank"

#: What a 503 for an unreachable store asks the client to wait.
STORE_RETRY_AFTER_SECONDS = 2

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

#: Headers of an aiohttp HTTPException not carried over to the problem answer.
_BODY_HEADERS = frozenset({hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING})


#: Paths logged as their route: an unsubscribe link's token is a capability, and names
#: its recipient.
SECRET_PATHS = ("/unsubscribe/",)


def logged_path(path: str) -> str:
    """``path`` as logs show it: an unsubscribe link's as ``/unsubscribe/{token}``."""
    for prefix in SECRET_PATHS:
        if path.startswith(prefix):
            return prefix + "{token}"
    return path


#: What the handlers of a request add to its ``http.request`` line (see ``note``).
LOG_FIELDS = web.RequestKey[dict[str, Any]]("log_fields")


def note(request: web.Request, **fields: Any) -> None:
    """Add ``fields`` to the request's ``http.request`` line, instead of a line of their own."""
    try:
        noted = request[LOG_FIELDS]
    except KeyError:  # not through request_id_middleware
        return
    noted.update(fields)


def _note_problem(request: web.Request, type_: str) -> None:
    note(request, problem=type_.removeprefix(_PROBLEMS))


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class Problem(Exception):
    """An error answer a handler raises; rendered by ``error_middleware``."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str = ABOUT_BLANK,
        title: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        mail_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = int(status)
        self.detail = detail
        self.type = type
        self.title = title or _title(status)
        self.errors = tuple(errors)
        #: Extra answer headers (``Retry-After``, ``WWW-Authenticate``...).
        self.headers = dict(headers or {})
        #: The mail the problem is about (an outcome-unknown 503), written as ``mail_id``.
        self.mail_id = mail_id

    def as_json(self) -> ProblemJson:
        body: ProblemJson = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors or self.status == HTTPStatus.UNPROCESSABLE_ENTITY:
            body["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        if self.mail_id is not None:
            body["mail_id"] = self.mail_id
        return body

    def response(self, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.as_json()),
            content_type=PROBLEM_CONTENT_TYPE,
            headers={**self.headers, **(headers or {})},
        )


def outcome_unknown(exc: OutcomeUnknown) -> Problem:
    """The 503 for a commit whose answer was lost: it never says nothing was changed.

    With the mail's id (``mail_id``, ``Location``) where the store was adding one:
    ``GET /mail/{id}`` settles it (found: stored, it will be sent; 404: never stored).
    """
    headers: dict[str, str] = {hdrs.RETRY_AFTER: str(STORE_RETRY_AFTER_SECONDS)}
    if exc.mail_id is None:
        detail = "The store's answer was lost: the change may or may not have been made."
    else:
        headers[hdrs.LOCATION] = f"/mail/{exc.mail_id}"
        detail = (
            f"The store's answer was lost: mail {exc.mail_id} may or may not be stored. "
            f"GET /mail/{exc.mail_id} settles it (404: never stored); do not send it again "
            "before."
        )
    return Problem(
        HTTPStatus.SERVICE_UNAVAILABLE,
        detail,
        type=OUTCOME_UNKNOWN,
        title="Outcome unknown",
        headers=headers,
        mail_id=exc.mail_id,
    )


IDEMPOTENCY_KEY = "Idempotency-Key"


def invalid(errors: Sequence[FieldError]) -> Problem:
    """The 422 for a mail that is not valid."""
    return Problem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "The mail is not valid; see errors.",
        type=VALIDATION,
        errors=errors,
    )


def rate_headers(rate: Rate | None) -> dict[str, str]:
    """The caller's ``RateLimit-*`` headers (none without a limit)."""
    if rate is None:
        return {}
    return {
        "RateLimit-Limit": f"{rate.limit:g}",
        "RateLimit-Remaining": str(rate.remaining),
        "RateLimit-Reset": str(math.ceil(rate.reset)),
    }


def as_problem(refusal: Refused | ValidationFailed) -> Problem:
    """What the intake refused, as the problem answered over HTTP."""
    if isinstance(refusal, ValidationFailed):
        if refusal.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            return Problem(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "The mail is too large; see errors.",
                type=TOO_LARGE,
                errors=refusal.errors,
            )
        return invalid(refusal.errors)
    wait: dict[str, str] = {}
    if refusal.retry_after is not None:
        wait[hdrs.RETRY_AFTER] = str(refusal.retry_after)
    if isinstance(refusal, BacklogFull):
        return Problem(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"{refusal.size} mails are waiting to be sent (the limit is {refusal.limit}); "
            "nothing was stored. Try again after Retry-After.",
            type=BACKLOG_FULL,
            headers=wait,
        )
    if isinstance(refusal, RateLimited):
        return Problem(
            HTTPStatus.TOO_MANY_REQUESTS,
            f"This API key may send {refusal.rate.limit:g} mails per second; wait for Retry-After.",
            type=RATE_LIMITED,
            headers={**rate_headers(refusal.rate), **wait},
        )
    if isinstance(refusal, KeyInFlight):
        return Problem(
            HTTPStatus.CONFLICT,
            f"A request with this {IDEMPOTENCY_KEY} is still being processed; "
            "repeat it after Retry-After to get its answer.",
            type=IDEMPOTENCY_IN_FLIGHT,
            headers=wait,
        )
    if isinstance(refusal, KeyReused):
        return Problem(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            f"This {IDEMPOTENCY_KEY} was already used with another request body.",
            type=IDEMPOTENCY_MISMATCH,
            errors=[FieldError(IDEMPOTENCY_KEY, "was used before with another body")],
        )
    raise TypeError(f"no HTTP wording for {type(refusal).__name__}")


def bad_idempotency_key(message: str) -> Problem:
    """The 400 for an ``Idempotency-Key`` header that cannot be one."""
    return Problem(
        HTTPStatus.BAD_REQUEST,
        f"{IDEMPOTENCY_KEY} {message}.",
        type=BAD_REQUEST,
        errors=[FieldError(IDEMPOTENCY_KEY, message)],
    )


# aiohttp's exceptions, by status: (type, detail). Others become about:blank.
_HTTP_PROBLEMS: dict[int, tuple[str, str]] = {
    404: (NOT_FOUND, "There is nothing at this path."),
    405: (METHOD_NOT_ALLOWED, "This path does not accept this method."),
    413: (TOO_LARGE, "The request body is larger than this service accepts."),
    415: (UNSUPPORTED_MEDIA_TYPE, "This content type is not accepted here."),
}


def http_problem(exc: web.HTTPException) -> Problem:
    """The problem for one of aiohttp's HTTP exceptions, with its headers (Allow...)."""
    type_, detail = _HTTP_PROBLEMS.get(exc.status, (ABOUT_BLANK, _title(exc.status)))
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        detail = f"{exc.method} is not allowed here; allowed: {allowed}."
    headers = {k: v for k, v in exc.headers.items() if k not in _BODY_HEADERS}
    return Problem(exc.status, detail, type=type_, headers=headers)


#: How an error is answered at a path that speaks another API's language (the drop-in
#: endpoints: SendGrid's ``{"errors": [...]}``, Mailgun's ``{"message": ...}``).
Render = Callable[[Problem], web.Response]
#: Given a request, the ``Render`` of its path's provider; None: problem+json.
ErrorShape = Callable[[web.Request], Render | None]
#: The app's error shapes, asked in order (``create_app`` sets them).
ERROR_SHAPES = web.AppKey("error_shapes", tuple[ErrorShape, ...])


def _answer(request: web.Request, problem: Problem) -> web.Response:
    """``problem`` as the request's path words errors: problem+json, or a provider's shape."""
    for shape in request.app.get(ERROR_SHAPES, ()):
        render = shape(request)
        if render is not None:
            return render(problem)
    return problem.response()


def bad_http(status: int) -> web.Response:
    """The answer to a request that is not valid HTTP/1.1 (the server actor answers it)."""
    return Problem(status, "The request is not valid HTTP/1.1.", type=BAD_REQUEST).response()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as a problem+json answer; unexpected ones as a 500 that reveals nothing."""
    try:
        return await handler(request)
    except Problem as problem:
        _note_problem(request, problem.type)
        return _answer(request, problem)
    except (Refused, ValidationFailed) as refusal:
        answer = as_problem(refusal)
        _note_problem(request, answer.type)
        return _answer(request, answer)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are answers, not errors
            raise
        _note_problem(request, _HTTP_PROBLEMS.get(exc.status, (ABOUT_BLANK, ""))[0])
        return _answer(request, http_problem(exc))
    except OutcomeUnknown as exc:
        _note_problem(request, OUTCOME_UNKNOWN)
        log.warning("store.outcome_unknown", method=request.method, path=logged_path(request.path))
        return _answer(request, outcome_unknown(exc))
    except StoreUnavailable as exc:
        _note_problem(request, STORE_UNAVAILABLE)
        log.warning(
            "store.unavailable",
            method=request.method,
            path=logged_path(request.path),
            error=str(exc),
        )
        return _answer(
            request,
            Problem(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "The store does not answer; nothing was changed. Try again later.",
                type=STORE_UNAVAILABLE,
                headers={hdrs.RETRY_AFTER: str(STORE_RETRY_AFTER_SECONDS)},
            ),
        )
    except Exception as exc:
        transport = request.transport
        if isinstance(exc, ConnectionError) and (transport is None or transport.is_closing()):
            raise  # the client is gone: nobody to answer, request_id_middleware logs it once
        _note_problem(request, INTERNAL)
        log.exception("http.error", method=request.method, path=logged_path(request.path))
        return _answer(
            request,
            Problem(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "Something went wrong on our side; the request id names it in our logs.",
                type=INTERNAL,
            ),
        )


#: A new request id: 20 random hex digits for this process, then a counter (32 in all,
#: like a UUID's hex). Unique without a system call per request (``uuid4`` is one).
_REQUEST_ID_PREFIX = secrets.token_hex(10)
_REQUEST_COUNT = itertools.count(1)


#: The request's id, as ``request_id_middleware`` gave it.
REQUEST_ID = web.RequestKey("request_id", str)


def request_id(request: web.Request) -> str:
    """The request's id: the caller's ``X-Request-Id`` if it is a sane token, else a new
    one, given once (``request_ids``' middleware gives it first): the answer's header, the
    request's log lines and the mail it submits all carry the same one."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = request[REQUEST_ID] = _given_or_new(request)
    return rid


def _given_or_new(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_REQUEST_ID_PREFIX}{next(_REQUEST_COUNT):012x}"


def request_ids(load: Load, metrics: HttpMetrics) -> Middleware:
    """The middleware that binds a request id to every log event of the request, echoes
    it, logs the request, and counts it in flight (``load``, read by a relay in this
    process) and in ``metrics``: the app factory's (``create_app``), its dependencies
    bound once rather than looked up on the app for every request.

    The request's one line at info is ``http.request`` (``http.client_gone`` when the
    client left): method, path, status, duration_ms, request_id, plus what the
    handlers ``note``d (tenant, mail_id, recipients, problem...). Other lines of the
    request (debug detail, warnings, errors) get ``request_id`` from contextvars.
    """

    @web.middleware
    async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request[REQUEST_ID] = _given_or_new(request)
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        request[LOG_FIELDS] = fields
        # One contextvar set and reset: cheaper than ``bound_contextvars``, which reads
        # the whole context first and re-binds what it saved afterwards.
        load.enter()
        tokens = structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # only if an inner middleware let one through
                exc.headers[REQUEST_ID_HEADER] = rid
                _log_request(request, metrics, rid, exc.status, started, fields)
                raise
            except ConnectionError:
                transport = request.transport
                if transport is not None and not transport.is_closing():
                    raise
                # The client disconnected mid-request (routes.body.ClientGone): not
                # an error of ours, and there is no one left to answer.
                # 499: nginx's "client closed request", for the log only.
                _log_request(request, metrics, rid, 499, started, fields, event="http.client_gone")
                return web.Response(status=499)  # never sent
            response.headers[REQUEST_ID_HEADER] = rid
            _log_request(request, metrics, rid, response.status, started, fields)
            if response.headers.get(hdrs.CONNECTION, "").lower() == "close":
                # The answer ends the connection (a 408 for a stalled body...).
                response.force_close()
                if not request.content.is_eof():
                    # aiohttp would first drain the unread body for up to its
                    # lingering time; a stalled one will not come: answer now, close.
                    try:
                        await response.prepare(request)
                        await response.write_eof()
                    except ConnectionError:
                        pass  # the client left meanwhile
                    request.protocol.force_close()
            return response
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
            load.leave()

    return request_id_middleware


def _log_request(
    request: web.Request,
    metrics: HttpMetrics,
    rid: str,
    status: int,
    started: float,
    fields: dict[str, Any],
    *,
    event: str = "http.request",
) -> None:
    """The request's canonical line (the access log): one per request, at info; and its
    count and time in the HTTP metrics (by route template, never by raw path)."""
    seconds = time.perf_counter() - started
    resource = request.match_info.route.resource
    metrics.observe(
        request.method, UNROUTED if resource is None else resource.canonical, status, seconds
    )
    log.info(
        event,
        method=request.method,
        path=logged_path(request.path),
        status=status,
        duration_ms=round(seconds * 1000, 2),
        request_id=rid,
        **fields,
    )

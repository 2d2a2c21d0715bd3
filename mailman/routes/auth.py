"""Who is calling over HTTP: ``Authorization: Bearer <key>``, checked by ``mailman.intake.auth``.

Every handler that needs a key says which scope with ``@requires(...)``;
handlers without it (``/health``, ``/healthz``, ``/readyz``, ``/metrics``,
``/openapi.json``, aiohttp's own 404/405) are public. While the store holds
no key at all the API is open: every caller is an anonymous admin of the
tenant ``""`` (the entry point only allows that on a loopback address).
Once a key exists, nothing is anonymous.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TypeVar

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from mailman.config.logging import get_logger
from mailman.intake.auth import BadKey, Keyring, MissingScope, NoKey, Principal, authenticate
from mailman.intake.keys import Scope

from .errors import FORBIDDEN, UNAUTHORIZED, Problem, note

log = get_logger("mailman.http")

F = TypeVar("F", bound=Callable[..., object])

_SCOPE_ATTRIBUTE = "__mailman_scope__"

PRINCIPAL = web.RequestKey("principal", Principal)


def requires(scope: Scope) -> Callable[[F], F]:
    """Mark a handler as needing a key with ``scope``."""

    def mark(handler: F) -> F:
        setattr(handler, _SCOPE_ATTRIBUTE, scope)
        return handler

    return mark


def scope_of(handler: object) -> Scope | None:
    """The scope ``@requires`` marked ``handler`` with; None: it is public."""
    scope = getattr(handler, _SCOPE_ATTRIBUTE, None)
    return scope if isinstance(scope, Scope) else None


KEYRING = web.AppKey("keyring", Keyring)


def _unauthorized(detail: str, *, error: str | None = None) -> Problem:
    challenge = 'Bearer realm="mailman"'
    if error is not None:
        challenge += f', error="{error}"'
    return Problem(
        HTTPStatus.UNAUTHORIZED,
        detail,
        type=UNAUTHORIZED,
        headers={hdrs.WWW_AUTHENTICATE: challenge},
    )


def _bearer(request: web.Request) -> str | None:
    """The key in ``Authorization: Bearer <key>``; None if the header is absent."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized(
            "Send the API key as 'Authorization: Bearer <key>'.", error="invalid_request"
        )
    return token


def authenticating(keyring: Keyring) -> Middleware:
    """The middleware that resolves the caller by ``keyring`` and checks the scope the
    handler requires (bound by the app factory, ``create_app``)."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = scope_of(request.match_info.handler)
        if needed is None:
            return await handler(request)
        try:
            principal = await authenticate(keyring, _bearer(request), needed)
        except NoKey:
            raise _unauthorized(
                "This endpoint needs an API key: 'Authorization: Bearer <key>'."
            ) from None
        except BadKey:
            log.debug("auth.refused", path=request.path)  # at info: http.request's problem
            raise _unauthorized(
                "The API key is unknown or revoked.", error="invalid_token"
            ) from None
        except MissingScope as exc:
            raise Problem(HTTPStatus.FORBIDDEN, str(exc), type=FORBIDDEN) from None
        request[PRINCIPAL] = principal
        # The tenant goes on the request's http.request line; other lines of the
        # request carry its request_id, which leads there (no contextvars to bind).
        note(request, tenant=principal.tenant)
        return await handler(request)

    return auth_middleware

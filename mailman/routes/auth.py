"""Who is calling: ``Authorization: Bearer <key>``, scopes and tenants.

Every handler that needs a key says which scope with ``@requires(...)``;
handlers without it (``/health``, ``/healthz``, ``/readyz``, ``/metrics``,
``/openapi.json``, aiohttp's own 404/405) are public. While the store holds
no key at all the API is open: every caller is an anonymous admin of the
tenant ``""`` (the entry point only allows that on a loopback address).
Once a key exists, nothing is anonymous.

A replica trusts what it read about a key for ``key_cache_seconds``, so a
revocation takes effect on every replica within that time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TypeVar

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from mailman.actors.keys import Scope, effective, hash_secret
from mailman.actors.store import ApiKey, Store
from mailman.config.logging import get_logger

from .errors import FORBIDDEN, UNAUTHORIZED, Problem, note
from .guard import guarded

log = get_logger("mailman.http")

F = TypeVar("F", bound=Callable[..., object])

_SCOPE_ATTRIBUTE = "__mailman_scope__"
#: Most keys (known or not) one replica remembers; the oldest are forgotten first.
_CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request."""

    tenant: str
    scopes: frozenset[Scope]
    #: None for the anonymous caller of an open API.
    key_id: str | None = None
    #: The key's own rate (mails/s); None: the service's default.
    rate: float | None = None

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes

    def sees(self, tenant: str) -> bool:
        """Whether this caller may read a mail of ``tenant`` (admins read every tenant's)."""
        return Scope.ADMIN in self.scopes or tenant == self.tenant

    @property
    def tenant_filter(self) -> str | None:
        """The tenant whose mails this caller lists; None: every tenant's."""
        return None if Scope.ADMIN in self.scopes else self.tenant


ANONYMOUS = Principal(tenant="", scopes=frozenset(Scope))
PRINCIPAL = web.RequestKey("principal", Principal)


def requires(scope: Scope) -> Callable[[F], F]:
    """Mark a handler as needing a key with ``scope``."""

    def mark(handler: F) -> F:
        setattr(handler, _SCOPE_ATTRIBUTE, scope)
        return handler

    return mark


class Keyring:
    """Looks keys up in the store, remembering each answer for ``ttl`` seconds.

    Also remembers when each key was last used; ``flush`` writes that to
    the store (the janitor calls it), so a request never waits on that write.
    """

    def __init__(self, store: Store, ttl: float, timeout: float = 5.0) -> None:
        self.store = store
        self.ttl = ttl
        self.timeout = timeout
        self._keys: dict[str, tuple[ApiKey | None, float]] = {}
        self._any: tuple[bool, float] | None = None
        self._used: dict[str, float] = {}

    async def any_keys(self) -> bool:
        now = time.monotonic()
        if self._any is None or self._any[1] <= now or (self.ttl <= 0):
            found = await guarded(self.store, self.timeout, self.store.any_keys())
            # Once there is a key there always is (revoked keys count): no expiry needed.
            self._any = (found, float("inf") if found else now + self.ttl)
        return self._any[0]

    async def find(self, secret: str) -> ApiKey | None:
        """The live (not revoked) key ``secret`` is; None if unknown or revoked."""
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[1] > now:
            key = cached[0]
        else:
            key = await guarded(self.store, self.timeout, self.store.key_by_hash(digest))
            self._keys.pop(digest, None)
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.pop(next(iter(self._keys)))
            self._keys[digest] = (key, now + self.ttl)
        if key is None or key.revoked_at is not None:
            return None
        self._used[key.id] = time.time()
        return key

    async def flush(self) -> None:
        """Write the keys' last-use times to the store."""
        used, self._used = self._used, {}
        if not used:
            return
        try:
            await self.store.touch_keys(used)
        except BaseException:
            for key_id, at in used.items():  # try again at the next flush
                self._used[key_id] = max(at, self._used.get(key_id, 0.0))
            raise


KEYRING = web.AppKey("keyring", Keyring)


class AuthFailed(Exception):
    """Why a caller is refused (``authenticate``); each entry point words it its own way."""


class NoKey(AuthFailed):
    """No key was given, and keys exist (the API is not open)."""


class BadKey(AuthFailed):
    """The key given is unknown or revoked."""


class MissingScope(AuthFailed):
    """The key lacks the scope the request needs."""


async def authenticate(keyring: Keyring, secret: str | None, needed: Scope) -> Principal:
    """The caller that presents ``secret`` (None: no key), allowed ``needed``.

    Shared by every entry point (Bearer here, Basic for the Mailgun-compatible
    endpoint, SMTP AUTH): while the store holds no key at all, a caller without
    one is the anonymous admin; once a key exists, nothing is anonymous.
    Raises ``NoKey``, ``BadKey`` or ``MissingScope``.
    """
    if secret is None:
        if await keyring.any_keys():
            raise NoKey("an API key is needed")
        principal = ANONYMOUS
    else:
        key = await keyring.find(secret)
        if key is None:
            raise BadKey("the API key is unknown or revoked")
        principal = Principal(
            tenant=key.tenant, scopes=effective(key.scopes), key_id=key.id, rate=key.rate
        )
    if not principal.may(needed):
        raise MissingScope(f"This API key lacks the '{needed.value}' scope this request needs.")
    return principal


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


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the caller and check the scope the handler requires."""
    needed: Scope | None = getattr(request.match_info.handler, _SCOPE_ATTRIBUTE, None)
    if needed is None:
        return await handler(request)
    try:
        principal = await authenticate(request.app[KEYRING], _bearer(request), needed)
    except NoKey:
        raise _unauthorized(
            "This endpoint needs an API key: 'Authorization: Bearer <key>'."
        ) from None
    except BadKey:
        log.debug("auth.refused", path=request.path)  # at info: http.request's problem
        raise _unauthorized("The API key is unknown or revoked.", error="invalid_token") from None
    except MissingScope as exc:
        raise Problem(HTTPStatus.FORBIDDEN, str(exc), type=FORBIDDEN) from None
    request[PRINCIPAL] = principal
    # The tenant goes on the request's http.request line; other lines of the
    # request carry its request_id, which leads there (no contextvars to bind).
    note(request, tenant=principal.tenant)
    return await handler(request)

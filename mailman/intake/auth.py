"""Who is calling, for every entry point: keys, scopes and tenants.

While the store holds no key at all the service is open: every caller is an
anonymous admin of the tenant ``""`` (the entry point only allows that on a
loopback address). Once a key exists, nothing is anonymous. Each entry point
finds the key in its own way (HTTP Bearer or Basic, SMTP AUTH) and words
the refusals (``NoKey``, ``BadKey``, ``MissingScope``) its own way.

A replica trusts what it read about a key for ``key_cache_seconds``, so a
revocation takes effect on every replica within that time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mailman.store import ApiKey, Store

from .guard import guarded
from .keys import Scope, effective, hash_secret

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

    def known_any(self) -> bool | None:
        """``any_keys`` without a store trip; None when the store must be asked."""
        cached = self._any
        if cached is None or self.ttl <= 0 or cached[1] <= time.monotonic():
            return None
        return cached[0]

    async def any_keys(self) -> bool:
        known = self.known_any()
        if known is not None:
            return known
        now = time.monotonic()
        found = await guarded(self.store, self.timeout, self.store.any_keys())
        # Once there is a key there always is (revoked keys count): no expiry needed.
        self._any = (found, float("inf") if found else now + self.ttl)
        return found

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
        any_keys = keyring.known_any()
        if any_keys is None:
            any_keys = await keyring.any_keys()
        if any_keys:
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

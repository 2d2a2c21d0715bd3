"""API keys: how they are made, hashed and scoped. The store keeps only the hash.

A key is ``mm_`` followed by 32 random bytes (256 bits) in base64url. It is
shown once, when made; the store keeps its SHA-256. A plain (fast) hash is
right here: the key is random and long, so there is nothing to brute-force
the way a password would be.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from enum import StrEnum

from mailman.core.ids import new_id
from mailman.store import ApiKey, Store

KEY_PREFIX = "mm_"
#: A tenant name: what keys and mails are grouped by.
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Scope(StrEnum):
    """What a key may do. ``send`` includes ``read``; ``admin`` includes both, for every tenant."""

    SEND = "send"
    READ = "read"
    ADMIN = "admin"


#: The scopes each scope brings with it.
IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.SEND: frozenset({Scope.SEND, Scope.READ}),
    Scope.READ: frozenset({Scope.READ}),
    Scope.ADMIN: frozenset(Scope),
}


def effective(scopes: Iterable[str]) -> frozenset[Scope]:
    """Every scope that ``scopes`` grant (unknown names grant nothing)."""
    granted: set[Scope] = set()
    for name in scopes:
        if name in Scope.__members__.values():
            granted |= IMPLIES[Scope(name)]
    return frozenset(granted)


def hash_secret(secret: str) -> str:
    """The SHA-256 (hex) the store keeps for a key."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_key(
    store: Store,
    *,
    tenant: str,
    scopes: Iterable[Scope],
    rate: float | None = None,
    now: float | None = None,
) -> tuple[ApiKey, str]:
    """Make and store a new key; the key record and the secret (show it once, never log it)."""
    if not TENANT.fullmatch(tenant):
        raise ValueError(
            "a tenant name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    if rate is not None and rate < 0:
        raise ValueError("the rate must be 0 (unlimited) or more mails per second")
    chosen = tuple(sorted({Scope(s) for s in scopes})) or (Scope.SEND,)
    secret = new_secret()
    key = ApiKey(
        id=f"key_{new_id()}",
        tenant=tenant,
        scopes=tuple(s.value for s in chosen),
        rate=rate,
        created_at=time.time() if now is None else now,
    )
    await store.create_key(key, hash_secret(secret))
    return key, secret


# --- the `mailman keys` command ----------------------------------------------------

"""API keys (only their hashes) and the token buckets that rate-limit them."""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass

from .dialect import Dialect
from .operation import Engine, Statement, Steps, read, write


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as the store keeps it: never the key itself, only its hash."""

    id: str
    tenant: str
    scopes: tuple[str, ...]
    #: Mails per second (also the burst); None: the service's default.
    rate: float | None
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class RateDecision:
    """What a token bucket said about one request."""

    allowed: bool
    #: Whole tokens left after this request.
    remaining: int
    #: Seconds until the next token (what a refused caller should wait).
    retry_after: float
    #: Seconds until the bucket is full again.
    reset: float


class Keys(abc.ABC):
    """API keys and rate limits."""

    @abc.abstractmethod
    async def create_key(self, key: ApiKey, secret_hash: str) -> None:
        """Record a new key; only the hash of its secret is kept."""

    @abc.abstractmethod
    async def keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""

    @abc.abstractmethod
    async def key_by_hash(self, secret_hash: str) -> ApiKey | None:
        """The key whose secret hashes to ``secret_hash`` (revoked too); None if none."""

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, at: float) -> bool:
        """Revoke a key; False if there is no such key. Revoking twice keeps the first time."""

    @abc.abstractmethod
    async def any_keys(self) -> bool:
        """Whether any key was ever made (a revoked one counts: the API stays closed)."""

    @abc.abstractmethod
    async def touch_keys(self, used: dict[str, float]) -> None:
        """Record when keys were last used (key id -> unix time); never moves backwards."""

    @abc.abstractmethod
    async def take_token(self, bucket: str, rate: float, now: float) -> RateDecision:
        """Take one token from ``bucket`` (refilled at ``rate``/s, holding at most ``rate``).

        Atomic across every process that shares the store.
        """


def bucket_step(
    tokens: float | None, updated_at: float | None, rate: float, now: float
) -> tuple[float, RateDecision]:
    """One request against a token bucket: the tokens left and the decision.

    The bucket holds ``max(rate, 1)`` tokens (the burst) and refills at
    ``rate`` tokens a second; a bucket never seen (``tokens`` None) is full.
    A clock that went backwards refills nothing.
    """
    capacity = max(rate, 1.0)
    if tokens is None or updated_at is None:
        tokens = capacity
    else:
        tokens = min(capacity, tokens + max(0.0, now - updated_at) * rate)
    allowed = tokens >= 1.0
    if allowed:
        tokens -= 1.0
    missing = 1.0 - tokens
    retry_after = 0.0 if tokens >= 1.0 else missing / rate
    return tokens, RateDecision(
        allowed=allowed,
        remaining=int(tokens),
        retry_after=retry_after,
        reset=(capacity - tokens) / rate,
    )


# --- SQL ---------------------------------------------------------------------------------

#: The columns ``api_key_from_row`` reads, in its order.
KEY_COLUMNS = "id, tenant, scopes, rate, created_at, last_used_at, revoked_at"


def api_key_from_row(row: tuple[object, ...]) -> ApiKey:
    """An ``ApiKey`` from a row of ``KEY_COLUMNS``."""
    key_id, tenant, scopes, rate, created_at, last_used_at, revoked_at = row
    return ApiKey(
        id=str(key_id),
        tenant=str(tenant),
        scopes=tuple(s for s in str(scopes).split(",") if s),
        rate=None if rate is None else float(rate),  # type: ignore[arg-type]
        created_at=float(created_at),  # type: ignore[arg-type]
        last_used_at=None if last_used_at is None else float(last_used_at),  # type: ignore[arg-type]
        revoked_at=None if revoked_at is None else float(revoked_at),  # type: ignore[arg-type]
    )


@functools.cache
def _insert(d: Dialect) -> str:
    return (
        "INSERT INTO api_keys (id, secret_hash, tenant, scopes, rate, created_at) "
        f"VALUES ({d.marks(6)})"
    )


_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"
_ANY = "SELECT EXISTS (SELECT 1 FROM api_keys)"


@functools.cache
def _by_hash(d: Dialect) -> str:
    return f"SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = {d.mark}"


@functools.cache
def _key(d: Dialect) -> str:
    return f"SELECT id FROM api_keys WHERE id = {d.mark}{d.row_lock}"


@functools.cache
def _revoke(d: Dialect) -> str:
    m = d.mark
    return f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, {m}) WHERE id = {m}"


@functools.cache
def _touch(d: Dialect) -> str:
    m = d.mark
    return (
        f"UPDATE api_keys SET last_used_at = {m} "
        f"WHERE id = {m} AND (last_used_at IS NULL OR last_used_at < {m})"
    )


@functools.cache
def _new_bucket(d: Dialect) -> str:
    return d.insert_once("rate_buckets", "id, tokens, updated_at", d.rows(1, 3), key="id")


@functools.cache
def _bucket(d: Dialect) -> str:
    return f"SELECT tokens, updated_at FROM rate_buckets WHERE id = {d.mark}{d.row_lock}"


@functools.cache
def _spend(d: Dialect) -> str:
    m = d.mark
    return (
        f"UPDATE rate_buckets SET tokens = {m}, updated_at = {d.greatest}(updated_at, {m}) "
        f"WHERE id = {m}"
    )


# --- operations ----------------------------------------------------------------------------


@write
def create(d: Dialect, key: ApiKey, secret_hash: str) -> Steps[None]:
    yield Statement(
        _insert(d),
        (key.id, secret_hash, key.tenant, ",".join(key.scopes), key.rate, key.created_at),
    )


@read
def every(d: Dialect) -> Steps[list[ApiKey]]:
    cur = yield Statement(_KEYS)
    return [api_key_from_row(tuple(row)) for row in cur.fetchall()]


@read
def by_hash(d: Dialect, secret_hash: str) -> Steps[ApiKey | None]:
    row = (yield Statement(_by_hash(d), (secret_hash,))).fetchone()
    return None if row is None else api_key_from_row(tuple(row))


@write
def revoke(d: Dialect, key_id: str, at: float) -> Steps[bool]:
    # Read first: an UPDATE that changes nothing (revoked before) counts no row on MySQL.
    if (yield Statement(_key(d), (key_id,))).fetchone() is None:
        return False
    yield Statement(_revoke(d), (at, key_id))
    return True


@read
def any_made(d: Dialect) -> Steps[bool]:
    (found,) = (yield Statement(_ANY)).fetchone()
    return bool(found)


@write
def touch(d: Dialect, used: dict[str, float]) -> Steps[None]:
    yield Statement(_touch(d), [(at, key_id, at) for key_id, at in sorted(used.items())], many=True)


@write
def take(d: Dialect, bucket: str, rate: float, now: float) -> Steps[RateDecision]:
    """Make sure the bucket's row exists (full), then read it (on MySQL locked: every
    replica's request for this bucket queues on the lock, so the count is exact)."""
    yield Statement(_new_bucket(d), (bucket, max(rate, 1.0), now))
    tokens, updated_at = (yield Statement(_bucket(d), (bucket,))).fetchone()
    left, decision = bucket_step(tokens, updated_at, rate, now)
    yield Statement(_spend(d), (left, now, bucket))
    return decision


class SqlKeys(Keys, Engine):
    """``Keys`` on a driver."""

    async def create_key(self, key: ApiKey, secret_hash: str) -> None:
        await self.run(create, key, secret_hash)

    async def keys(self) -> list[ApiKey]:
        return await self.run(every)

    async def key_by_hash(self, secret_hash: str) -> ApiKey | None:
        return await self.run(by_hash, secret_hash)

    async def revoke_key(self, key_id: str, at: float) -> bool:
        return await self.run(revoke, key_id, at)

    async def any_keys(self) -> bool:
        return await self.run(any_made)

    async def touch_keys(self, used: dict[str, float]) -> None:
        if used:
            await self.run(touch, dict(used))

    async def take_token(self, bucket: str, rate: float, now: float) -> RateDecision:
        return await self.run(take, bucket, rate, now)

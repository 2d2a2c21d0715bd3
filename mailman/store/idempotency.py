"""Idempotency keys: a request's ``Idempotency-Key``, per tenant, recorded by ``add`` in
the transaction that stores its mail, and forgotten once expired."""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass

from mailman.core.model import Mail

from .dialect import Dialect
from .operation import Engine, Statement, Steps, write


class IdempotencyMismatch(Exception):
    """An ``Idempotency-Key`` the tenant already used, with another request body."""

    def __init__(self, mail_id: str) -> None:
        super().__init__("the idempotency key was used with another request body")
        #: The mail the key stands for.
        self.mail_id = mail_id


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A request's idempotency key, scoped to its tenant, as ``add`` records it.

    ``key_hash`` is a digest of the key (keys may hold any printable ASCII,
    trailing spaces too; a digest compares exactly in every database), and
    ``fingerprint`` a digest of the request body.
    """

    key_hash: str
    fingerprint: str
    expires_at: float


class IdempotencyKeys(abc.ABC):
    """The idempotency keys ``add`` records."""

    @abc.abstractmethod
    async def purge_idempotency(self, now: float) -> int:
        """Forget idempotency keys that expired before ``now``; how many."""


# --- SQL ---------------------------------------------------------------------------------

_COLUMNS = "tenant, key_hash, fingerprint, mail_id, expires_at"


@functools.cache
def _insert(d: Dialect) -> str:
    return d.insert_once("idempotency", _COLUMNS, d.rows(1, 5), key="tenant")


@functools.cache
def _standing(d: Dialect) -> str:
    """The key's row; on MySQL a locking read: the latest committed row, whatever the
    transaction's snapshot."""
    m = d.mark
    return (
        "SELECT mail_id, fingerprint, expires_at FROM idempotency "
        f"WHERE tenant = {m} AND key_hash = {m}{d.row_lock}"
    )


@functools.cache
def _take_over(d: Dialect) -> str:
    m = d.mark
    return (
        f"UPDATE idempotency SET fingerprint = {m}, mail_id = {m}, expires_at = {m} "
        f"WHERE tenant = {m} AND key_hash = {m}"
    )


@functools.cache
def _purge(d: Dialect) -> str:
    return f"DELETE FROM idempotency WHERE expires_at < {d.mark}"


# --- operations ----------------------------------------------------------------------------


def claim(d: Dialect, mail: Mail, idem: Idempotency) -> Steps[str | IdempotencyMismatch | None]:
    """Record ``idem`` for ``mail`` unless the tenant's key stands for another mail already.

    None: recorded, store the mail. Otherwise the id of the mail the key stands for,
    or ``IdempotencyMismatch`` if the bodies differ. On MySQL the INSERT waits on
    another replica's uncommitted insert of the same key, so two replicas never both
    store a mail for one key; on SQLite the writer holds the database.
    """
    cur = yield Statement(
        _insert(d), (mail.tenant, idem.key_hash, idem.fingerprint, mail.id, idem.expires_at)
    )
    if cur.rowcount == 1:
        return None
    cur = yield Statement(_standing(d), (mail.tenant, idem.key_hash))
    mail_id, fingerprint, expires_at = cur.fetchone()
    if expires_at < mail.created_at:  # expired: the key is free again
        yield Statement(
            _take_over(d),
            (idem.fingerprint, mail.id, idem.expires_at, mail.tenant, idem.key_hash),
        )
        return None
    if fingerprint != idem.fingerprint:
        return IdempotencyMismatch(mail_id)
    return str(mail_id)


@write
def purge(d: Dialect, now: float) -> Steps[int]:
    cur = yield Statement(_purge(d), (now,))
    return max(cur.rowcount, 0)


class SqlIdempotencyKeys(IdempotencyKeys, Engine):
    """``IdempotencyKeys`` on a driver."""

    async def purge_idempotency(self, now: float) -> int:
        return await self.run(purge, now)

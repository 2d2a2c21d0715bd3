"""Suppressions: each tenant's list of addresses its mails never go to.

Added by a provider's event (a hard bounce, a complaint, an unsubscribe: ``store.events``
adds them in the transaction that records the event), by hand (the API, the CLI) or by
an import (a CSV, a provider's own list). Read when a mail is accepted (``suppressed_among``)
and again right before each provider call (``store.attempts.begin``, in the transaction
that records the attempt). In the store, so every replica and process agrees at once.

An address is kept normalised (``core.suppression.normalise``); ``group`` ''
suppresses every mail of the tenant, a name only the mails of that unsubscribe group.
A suppression outlives the erasure of mails (``mailman erase --address``): keeping the
address from being mailed again is its point.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailman.core.model import Status, SuppressionReason

from . import callbacks
from .dialect import Dialect, in_lists
from .operation import Engine, Statement, Steps, read, read_batch, write

#: Every mail of the tenant (no unsubscribe group).
EVERY_GROUP = ""

#: The reason a mail left with no visible recipient is ``suppressed`` with.
SUPPRESSED_REASON = "every visible recipient (to, cc) is suppressed"


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address a tenant's mails do not go to."""

    tenant: str
    #: Normalised (``core.suppression.normalise``).
    address: str
    reason: SuppressionReason
    #: Where it came from: a provider's name (its event), ``api``, ``cli``, ``import:...``.
    source: str
    created_at: float
    #: '' (``EVERY_GROUP``): every mail; a name: the mails of that unsubscribe group.
    group: str = EVERY_GROUP


@dataclass(frozen=True, slots=True)
class SuppressionQuery:
    """Which suppressions ``list_suppressions`` returns: by tenant, address and group,
    those after ``after``."""

    #: None: every tenant's.
    tenant: str | None
    limit: int
    reason: SuppressionReason | None = None
    #: The (tenant, address, group) of the last one of the page before (the cursor).
    after: tuple[str, str, str] | None = None
    #: Only this group's ('': the every-mail ones); None: every group's.
    group: str | None = None


class Suppressions(abc.ABC):
    """Tenants' suppression lists."""

    #: Writes through this store object that may have added a suppression (this one's,
    #: and events that suppress): moved once each commits, so that what a cache of this
    #: process read before (``intake.tenants.Suppressing``) is known to be stale.
    suppressions_added: int = 0

    @abc.abstractmethod
    async def add_suppressions(self, suppressions: Sequence[Suppression]) -> int:
        """Add these (normalised) in one transaction; how many were new. An address already
        on the list for the tenant and group keeps its reason, source and time."""

    @abc.abstractmethod
    async def unsubscribe(self, suppression: Suppression, mail_id: str) -> bool:
        """A one-click unsubscribe from ``mail_id``: add ``suppression`` and, if it is new,
        queue an ``unsubscribed`` callback to the mail's callback URL, in one transaction;
        whether it was new (a repeat changes nothing)."""

    @abc.abstractmethod
    async def suppression(
        self, tenant: str, address: str, group: str = EVERY_GROUP
    ) -> Suppression | None:
        """The tenant's suppression of ``address`` (normalised) for ``group``; None if none."""

    @abc.abstractmethod
    async def list_suppressions(self, query: SuppressionQuery) -> list[Suppression]:
        """Suppressions matching ``query``, by tenant, address and group, at most ``limit``."""

    @abc.abstractmethod
    async def remove_suppression(self, tenant: str, address: str, group: str | None = None) -> int:
        """Take ``address`` (normalised) off the tenant's list, for ``group`` (None: every
        group); how many rows went."""

    @abc.abstractmethod
    async def has_suppressions(self, tenant: str) -> bool:
        """Whether the tenant suppresses any address at all (for any group)."""

    @abc.abstractmethod
    async def suppressed_among(
        self, tenant: str, addresses: Sequence[str], group: str = EVERY_GROUP
    ) -> dict[str, SuppressionReason]:
        """Which of ``addresses`` (normalised) the tenant suppresses for a mail of ``group``
        (its own group's and every mail's suppressions; '': every mail's only), with the
        reason."""


# --- SQL ---------------------------------------------------------------------------------

#: The columns ``suppression_from_row`` reads, in its order.
COLUMNS = "tenant, address, group_name, reason, source, created_at"


def suppression_values(s: Suppression) -> tuple[object, ...]:
    """A suppression's row, in ``COLUMNS`` order."""
    return (s.tenant, s.address, s.group, s.reason.value, s.source, s.created_at)


def suppression_from_row(row: Sequence[Any]) -> Suppression:
    tenant, address, group, reason, source, created_at = row
    return Suppression(
        tenant=str(tenant),
        address=str(address),
        reason=SuppressionReason(reason),
        source=str(source),
        created_at=float(created_at),
        group=str(group),
    )


@functools.cache
def insert(d: Dialect) -> str:
    """One suppression, unless the tenant has the address for the group already."""
    return d.insert_once("suppressions", COLUMNS, d.rows(1, 6), key="reason")


@functools.cache
def _one(d: Dialect) -> str:
    m = d.mark
    return (
        f"SELECT {COLUMNS} FROM suppressions "
        f"WHERE tenant = {m} AND address = {m} AND group_name = {m}"
    )


@functools.cache
def _any(d: Dialect) -> str:
    return f"SELECT 1 FROM suppressions WHERE tenant = {d.mark} LIMIT 1"


@functools.lru_cache(maxsize=1024)
def among(d: Dialect, count: int, grouped: bool = False) -> str:
    """Which of these addresses a tenant suppresses for every mail, or (``grouped``) for
    every mail or one group (parameters: tenant, the group if grouped, addresses). Every
    mail's suppression first: its reason is the one named when both are there."""
    groups = f"IN ('{EVERY_GROUP}', {d.mark})" if grouped else f"= '{EVERY_GROUP}'"
    return (
        "SELECT address, reason FROM suppressions "
        f"WHERE tenant = {d.mark} AND group_name {groups} "
        f"AND address IN ({d.marks(count)}) ORDER BY group_name DESC"
    )


@functools.lru_cache(maxsize=64)
def give_reason(d: Dialect, count: int) -> str:
    """These mails get a reason (parameters: reason, ids)."""
    return f"UPDATE mails SET reason = {d.mark} WHERE id IN ({d.marks(count)})"


@functools.cache
def payload(d: Dialect) -> str:
    """A mail's payload is rewritten (parameters: payload, mail id): recipients dropped."""
    return f"UPDATE mails SET payload = {d.mark} WHERE id = {d.mark} AND purged_at IS NULL"


@functools.cache
def to_suppressed(d: Dialect) -> str:
    """A mail on its way ends ``suppressed`` (parameters: at, at, reason, mail id)."""
    m = d.mark
    return (
        f"UPDATE mails SET status = '{Status.SUPPRESSED.value}', updated_at = {m}, due_at = {m}, "
        f"reason = {m} WHERE id = {m} AND status IN ('{Status.QUEUED.value}', "
        f"'{Status.SENDING.value}')"
    )


@functools.lru_cache(maxsize=64)
def _list(d: Dialect, by_tenant: bool, by_reason: bool, after: bool, by_group: bool) -> str:
    m = d.mark
    where = []
    if by_tenant:
        where.append(f"tenant = {m}")
    if by_reason:
        where.append(f"reason = {m}")
    if by_group:
        where.append(f"group_name = {m}")
    if after:
        # Row comparison spelt out: both databases use the primary key's order for it.
        where.append(
            f"(tenant > {m} OR (tenant = {m} AND (address > {m} "
            f"OR (address = {m} AND group_name > {m}))))"
        )
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return (
        f"SELECT {COLUMNS} FROM suppressions {clause}ORDER BY tenant, address, group_name LIMIT {m}"
    )


@functools.cache
def _remove(d: Dialect, every_group: bool) -> str:
    m = d.mark
    group = "" if every_group else f" AND group_name = {m}"
    return f"DELETE FROM suppressions WHERE tenant = {m} AND address = {m}{group}"


# --- operations ----------------------------------------------------------------------------


@write
def add(d: Dialect, suppressions: tuple[Suppression, ...]) -> Steps[int]:
    added = 0
    for s in suppressions:
        added += (yield Statement(insert(d), suppression_values(s))).rowcount == 1
    return added


@write
def unsubscribed(d: Dialect, s: Suppression, mail_id: str) -> Steps[bool]:
    if (yield Statement(insert(d), suppression_values(s))).rowcount != 1:
        return False
    event = {"event": "unsubscribed", "address": s.address, "group": s.group}
    yield from callbacks.queue_event(d, mail_id, event, s.created_at)
    return True


@read
def one(d: Dialect, tenant: str, address: str, group: str) -> Steps[Suppression | None]:
    row = (yield Statement(_one(d), (tenant, address, group))).fetchone()
    return None if row is None else suppression_from_row(row)


@read
def listing(d: Dialect, query: SuppressionQuery) -> Steps[list[Suppression]]:
    params: list[object] = []
    if query.tenant is not None:
        params.append(query.tenant)
    if query.reason is not None:
        params.append(query.reason.value)
    if query.group is not None:
        params.append(query.group)
    if query.after is not None:
        tenant, address, group = query.after
        params += [tenant, tenant, address, address, group]
    sql = _list(
        d,
        query.tenant is not None,
        query.reason is not None,
        query.after is not None,
        query.group is not None,
    )
    cur = yield Statement(sql, (*params, query.limit))
    return [suppression_from_row(row) for row in cur.fetchall()]


@write
def remove(d: Dialect, tenant: str, address: str, group: str | None) -> Steps[int]:
    params = (tenant, address) if group is None else (tenant, address, group)
    return int((yield Statement(_remove(d, group is None), params)).rowcount)


def found_among(
    d: Dialect, tenant: str, addresses: Sequence[str], group: str = EVERY_GROUP
) -> Steps[dict[str, SuppressionReason]]:
    """Which of ``addresses`` the tenant suppresses for a mail of ``group`` (a step of a
    larger operation: acceptance's check, and ``begin``'s before each provider call)."""
    found: dict[str, SuppressionReason] = {}
    grouped = group != EVERY_GROUP
    for chunk in in_lists(d, list(dict.fromkeys(addresses))):
        params = (tenant, group, *chunk) if grouped else (tenant, *chunk)
        cur = yield Statement(among(d, len(chunk), grouped), params)
        found.update(
            (str(address), SuppressionReason(reason)) for address, reason in cur.fetchall()
        )
    return found


@read
def any_of(d: Dialect, tenant: str) -> Steps[bool]:
    cur = yield Statement(_any(d), (tenant,))
    return cur.fetchone() is not None


@read_batch
def check(
    d: Dialect, calls: list[tuple[str, tuple[str, ...], str]]
) -> Steps[list[dict[str, SuppressionReason] | Exception]]:
    """Every waiting acceptance's check (SQLite: on one reader turn)."""
    results: list[dict[str, SuppressionReason] | Exception] = []
    for tenant, addresses, group in calls:
        results.append((yield from found_among(d, tenant, addresses, group)))
    return results


class SqlSuppressions(Suppressions, Engine):
    """``Suppressions`` on a driver."""

    async def add_suppressions(self, suppressions: Sequence[Suppression]) -> int:
        if not suppressions:
            return 0
        try:
            return await self.run(add, tuple(suppressions))
        finally:
            self.suppressions_added += 1

    async def unsubscribe(self, suppression: Suppression, mail_id: str) -> bool:
        try:
            return await self.run(unsubscribed, suppression, mail_id)
        finally:
            self.suppressions_added += 1

    async def suppression(
        self, tenant: str, address: str, group: str = EVERY_GROUP
    ) -> Suppression | None:
        return await self.run(one, tenant, address, group)

    async def list_suppressions(self, query: SuppressionQuery) -> list[Suppression]:
        return await self.run(listing, query)

    async def remove_suppression(self, tenant: str, address: str, group: str | None = None) -> int:
        return await self.run(remove, tenant, address, group)

    async def has_suppressions(self, tenant: str) -> bool:
        return await self.run(any_of, tenant)

    async def suppressed_among(
        self, tenant: str, addresses: Sequence[str], group: str = EVERY_GROUP
    ) -> dict[str, SuppressionReason]:
        if not addresses:
            return {}
        return await self.run_batched(check, (tenant, tuple(addresses), group))

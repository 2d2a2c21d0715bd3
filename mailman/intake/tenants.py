"""Tenants' own provider chains and default unsubscribe groups, read at acceptance: the
whole (small) tables, kept for ``ttl`` seconds, so accepting a mail stays one store trip
(its commit)."""

from __future__ import annotations

import time
from collections.abc import Callable

from mailman.core.model import Unsubscribe
from mailman.store import Store

from .guard import guarded

#: Neither a chain nor a default group of its own (no tenant).
_NEITHER: tuple[None, None] = (None, None)


class TenantChains:
    """Every tenant's own chain and default unsubscribe group (``mailman tenants set``),
    read at most once per ``ttl`` seconds; a change is followed within that time."""

    def __init__(
        self,
        store: Store,
        ttl: float,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self._chains: dict[str, str] = {}
        self._unsubscribes: dict[str, Unsubscribe] = {}
        self._until = -float("inf")

    def known(self, tenant: str) -> tuple[str | None, Unsubscribe | None] | None:
        """``tenant``'s own chain and default unsubscribe group (each None where it has
        none, and for no tenant) without a store trip; None when they must be read again
        first (``settings``). Acceptance asks this first: a coroutine less per mail."""
        if not tenant:
            return _NEITHER
        if self._stale(self.clock()):
            return None
        return self._chains.get(tenant), self._unsubscribes.get(tenant)

    async def settings(self, tenant: str) -> tuple[str | None, Unsubscribe | None]:
        """``tenant``'s own chain and default unsubscribe group, read again if stale."""
        if not tenant:
            return _NEITHER
        await self._fresh()
        return self._chains.get(tenant), self._unsubscribes.get(tenant)

    async def of(self, tenant: str) -> str | None:
        """``tenant``'s own chain as written; None: the deployment's (also for no tenant)."""
        chain, _ = await self.settings(tenant)
        return chain

    def _stale(self, now: float) -> bool:
        return now >= self._until or self.ttl <= 0

    async def _fresh(self) -> None:
        now = self.clock()
        if self._stale(now):
            store, timeout = self.store, self.timeout
            chains = await guarded(store, timeout, store.tenant_chains())
            self._unsubscribes = await guarded(store, timeout, store.tenant_unsubscribes())
            self._chains = chains
            self._until = now + self.ttl


class Suppressing:
    """Whether each tenant suppresses any address, read at most once per ``ttl`` seconds
    per tenant: a tenant with none skips acceptance's lookup (a store trip per mail).

    A suppression added through this process (the API, a webhook, a one-click
    unsubscribe) is followed at once (``Store.suppressions_added``); one added
    through another process or replica within ``ttl``, and a mail accepted
    meanwhile is still checked right before each provider call
    (``Store.begin_attempt``): its address is never sent to. Once a tenant has
    one, every mail is looked up as before.
    """

    def __init__(
        self,
        store: Store,
        ttl: float,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        #: tenant -> (whether it has any, until when that is trusted, the store's
        #: ``suppressions_added`` then).
        self._known: dict[str, tuple[bool, float, int]] = {}

    def known(self, tenant: str) -> bool | None:
        """Whether ``tenant`` suppresses any address, without a store trip; None when it
        must be asked (``any``)."""
        known = self._known.get(tenant)
        if (
            known is not None
            and self.clock() < known[1]
            and self.store.suppressions_added == known[2]
        ):
            return known[0]
        return None

    async def any(self, tenant: str) -> bool:
        known = self.known(tenant)
        if known is not None:
            return known
        now = self.clock()
        added = self.store.suppressions_added
        has = await guarded(self.store, self.timeout, self.store.has_suppressions(tenant))
        if self.ttl > 0:
            self._known[tenant] = (has, now + self.ttl, added)
        return has

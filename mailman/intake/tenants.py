"""Tenants' own provider chains and default unsubscribe groups, read at acceptance: the
whole (small) tables, kept for ``ttl`` seconds, so accepting a mail stays one store trip
(its commit)."""

from __future__ import annotations

import time
from collections.abc import Callable

from mailman.core.model import Unsubscribe
from mailman.store import Store

from .guard import guarded


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

    async def of(self, tenant: str) -> str | None:
        """``tenant``'s own chain as written; None: the deployment's (also for no tenant)."""
        if not tenant:
            return None
        await self._fresh()
        return self._chains.get(tenant)

    async def unsubscribe_of(self, tenant: str) -> Unsubscribe | None:
        """``tenant``'s default unsubscribe group (and mailto; no url); None: it has none
        (nor has no tenant)."""
        if not tenant:
            return None
        await self._fresh()
        return self._unsubscribes.get(tenant)

    async def _fresh(self) -> None:
        now = self.clock()
        if now >= self._until or self.ttl <= 0:
            store, timeout = self.store, self.timeout
            chains = await guarded(store, timeout, store.tenant_chains())
            self._unsubscribes = await guarded(store, timeout, store.tenant_unsubscribes())
            self._chains = chains
            self._until = now + self.ttl

"""Tenants' own provider chains, read at acceptance: the whole (small) table, kept for
``ttl`` seconds, so accepting a mail stays one store trip (its commit)."""

from __future__ import annotations

import time
from collections.abc import Callable

from mailman.store import Store

from .guard import guarded


class TenantChains:
    """Every tenant's own chain (``mailman tenants set``), read at most once per ``ttl``
    seconds; a change is followed within that time."""

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
        self._until = -float("inf")

    async def of(self, tenant: str) -> str | None:
        """``tenant``'s own chain as written; None: the deployment's (also for no tenant)."""
        if not tenant:
            return None
        now = self.clock()
        if now >= self._until or self.ttl <= 0:
            self._chains = await guarded(self.store, self.timeout, self.store.tenant_chains())
            self._until = now + self.ttl
        return self._chains.get(tenant)

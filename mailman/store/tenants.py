"""Each tenant's own provider chain (``mailman tenants set``): kept as written
(``postmark,ses``, ``sendgrid:3,mailgun:1``); a tenant without one follows the
deployment's ``MAILMAN_PROVIDERS``. And each tenant's default one-click unsubscribe
group (``--unsubscribe-group``): what a mail of the tenant that says nothing of
``unsubscribe`` is of; a tenant without one has none."""

from __future__ import annotations

import abc
import functools

from mailman.core.model import Unsubscribe

from .dialect import Dialect
from .operation import Engine, Statement, Steps, read, write


class Tenants(abc.ABC):
    """Tenants' provider chains."""

    @abc.abstractmethod
    async def tenant_chain(self, tenant: str) -> str | None:
        """``tenant``'s chain as written; None: the deployment's."""

    @abc.abstractmethod
    async def tenant_chains(self) -> dict[str, str]:
        """Every tenant's own chain, by tenant."""

    @abc.abstractmethod
    async def set_tenant_chain(self, tenant: str, providers: str | None, at: float) -> None:
        """Give ``tenant`` its own chain (``providers`` as written); None: back to the
        deployment's."""

    @abc.abstractmethod
    async def tenant_unsubscribes(self) -> dict[str, Unsubscribe]:
        """Every tenant's default unsubscribe group (and mailto), by tenant."""

    @abc.abstractmethod
    async def set_tenant_unsubscribe(
        self, tenant: str, default: Unsubscribe | None, at: float
    ) -> None:
        """Give ``tenant`` a default unsubscribe group (``default.group`` and
        ``.mailto``; its url is not kept); None: none."""


# --- SQL ---------------------------------------------------------------------------------


@functools.cache
def _one(d: Dialect) -> str:
    return f"SELECT providers FROM tenant_chains WHERE tenant = {d.mark}"


_EVERY = "SELECT tenant, providers FROM tenant_chains ORDER BY tenant"


@functools.cache
def _delete(d: Dialect) -> str:
    return f"DELETE FROM tenant_chains WHERE tenant = {d.mark}"


@functools.cache
def _insert(d: Dialect) -> str:
    return f"INSERT INTO tenant_chains (tenant, providers, updated_at) VALUES ({d.marks(3)})"


_EVERY_UNSUBSCRIBE = "SELECT tenant, unsubscribe_group, mailto FROM tenant_unsubscribe"


@functools.cache
def _delete_unsubscribe(d: Dialect) -> str:
    return f"DELETE FROM tenant_unsubscribe WHERE tenant = {d.mark}"


@functools.cache
def _insert_unsubscribe(d: Dialect) -> str:
    return (
        "INSERT INTO tenant_unsubscribe (tenant, unsubscribe_group, mailto, updated_at) "
        f"VALUES ({d.marks(4)})"
    )


# --- operations ----------------------------------------------------------------------------


@read
def one(d: Dialect, tenant: str) -> Steps[str | None]:
    row = (yield Statement(_one(d), (tenant,))).fetchone()
    return None if row is None else str(row[0])


@read
def every(d: Dialect) -> Steps[dict[str, str]]:
    cur = yield Statement(_EVERY)
    return {str(tenant): str(providers) for tenant, providers in cur.fetchall()}


@write
def put(d: Dialect, tenant: str, providers: str | None, at: float) -> Steps[None]:
    """Replace the tenant's row (none for None), in one transaction."""
    yield Statement(_delete(d), (tenant,))
    if providers is not None:
        yield Statement(_insert(d), (tenant, providers, at))


@read
def unsubscribes(d: Dialect) -> Steps[dict[str, Unsubscribe]]:
    cur = yield Statement(_EVERY_UNSUBSCRIBE)
    return {
        str(tenant): Unsubscribe(str(group), mailto=None if mailto is None else str(mailto))
        for tenant, group, mailto in cur.fetchall()
    }


@write
def put_unsubscribe(d: Dialect, tenant: str, default: Unsubscribe | None, at: float) -> Steps[None]:
    """Replace the tenant's default group (none for None), in one transaction."""
    yield Statement(_delete_unsubscribe(d), (tenant,))
    if default is not None:
        values = (tenant, default.group, default.mailto, at)
        yield Statement(_insert_unsubscribe(d), values)


class SqlTenants(Tenants, Engine):
    """``Tenants`` on a driver."""

    async def tenant_chain(self, tenant: str) -> str | None:
        return await self.run(one, tenant)

    async def tenant_chains(self) -> dict[str, str]:
        return await self.run(every)

    async def set_tenant_chain(self, tenant: str, providers: str | None, at: float) -> None:
        await self.run(put, tenant, providers, at)

    async def tenant_unsubscribes(self) -> dict[str, Unsubscribe]:
        return await self.run(unsubscribes)

    async def set_tenant_unsubscribe(
        self, tenant: str, default: Unsubscribe | None, at: float
    ) -> None:
        await self.run(put_unsubscribe, tenant, default, at)

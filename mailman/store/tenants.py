"""Each tenant's own provider chain (``mailman tenants set``): kept as written
(``postmark,ses``, ``sendgrid:3,mailgun:1``); a tenant without one follows the
deployment's ``MAILMAN_PROVIDERS``."""

from __future__ import annotations

import abc
import functools

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


class SqlTenants(Tenants, Engine):
    """``Tenants`` on a driver."""

    async def tenant_chain(self, tenant: str) -> str | None:
        return await self.run(one, tenant)

    async def tenant_chains(self) -> dict[str, str]:
        return await self.run(every)

    async def set_tenant_chain(self, tenant: str, providers: str | None, at: float) -> None:
        await self.run(put, tenant, providers, at)

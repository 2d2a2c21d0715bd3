"""Each tenant's templates (``/templates``): versioned, every version kept; the latest is
the default. Deleting a template removes it, every version: a mail rendered from it keeps
what was rendered (the rendered mail is what the store holds)."""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .dialect import Dialect
from .operation import Engine, Statement, Steps, read, write


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    """One version of a tenant's template, as written (its parts are Handlebars source)."""

    id: str
    tenant: str
    name: str
    version: int
    subject: str | None
    html: str | None
    text: str | None
    created_at: float


class Templates(abc.ABC):
    """Tenants' templates."""

    @abc.abstractmethod
    async def add_template(self, template: TemplateRecord) -> bool:
        """Store a new template (its version 1); False if the tenant has one of that name."""

    @abc.abstractmethod
    async def add_template_version(
        self,
        tenant: str,
        ref: str,
        *,
        subject: str | None,
        html: str | None,
        text: str | None,
        at: float,
    ) -> TemplateRecord | None:
        """The tenant's template ``ref`` (its id, or its name) with a new version, the
        latest; None if it has none such."""

    @abc.abstractmethod
    async def template(
        self, tenant: str, ref: str, version: int | None = None
    ) -> TemplateRecord | None:
        """The tenant's template ``ref`` (its id, or its name), at ``version`` (None: the
        latest); None if there is none such."""

    @abc.abstractmethod
    async def templates(self, tenant: str) -> list[TemplateRecord]:
        """The latest version of each of the tenant's templates, by name."""

    @abc.abstractmethod
    async def delete_template(self, tenant: str, ref: str) -> bool:
        """Remove the tenant's template ``ref`` (its id, or its name), every version;
        False if it has none such."""


# --- SQL ---------------------------------------------------------------------------------

COLUMNS = "id, tenant, name, version, subject, html, text, created_at"


def template_from_row(row: Sequence[Any]) -> TemplateRecord:
    id_, tenant, name, version, subject, html, text, created_at = row
    return TemplateRecord(
        str(id_), str(tenant), str(name), int(version), subject, html, text, float(created_at)
    )


@functools.cache
def _insert(d: Dialect) -> str:
    return d.insert_once("templates", COLUMNS, d.rows(1, 8), key="id")


@functools.cache
def _latest(d: Dialect, locked: bool) -> str:
    """The latest version of the tenant's template named by id or by name (parameters:
    tenant, ref, ref); by id first, should a name be another template's id."""
    m = d.mark
    return (
        f"SELECT {COLUMNS} FROM templates WHERE tenant = {m} AND (id = {m} OR name = {m}) "
        f"ORDER BY id = {m} DESC, version DESC LIMIT 1" + (d.row_lock if locked else "")
    )


@functools.cache
def _version(d: Dialect) -> str:
    m = d.mark
    return (
        f"SELECT {COLUMNS} FROM templates WHERE tenant = {m} AND (id = {m} OR name = {m}) "
        f"AND version = {m} ORDER BY id = {m} DESC LIMIT 1"
    )


@functools.cache
def _every(d: Dialect) -> str:
    m = d.mark
    return (
        f"SELECT {COLUMNS} FROM templates t WHERE tenant = {m} AND version = "
        "(SELECT MAX(version) FROM templates v WHERE v.id = t.id) ORDER BY name"
    )


@functools.cache
def _delete(d: Dialect) -> str:
    return f"DELETE FROM templates WHERE id = {d.mark}"


# --- operations ----------------------------------------------------------------------------


@write
def add(d: Dialect, template: TemplateRecord) -> Steps[bool]:
    t = template
    values = (t.id, t.tenant, t.name, t.version, t.subject, t.html, t.text, t.created_at)
    cur = yield Statement(_insert(d), values)
    return cur.rowcount == 1


@write
def add_version(
    d: Dialect,
    tenant: str,
    ref: str,
    subject: str | None,
    html: str | None,
    text: str | None,
    at: float,
) -> Steps[TemplateRecord | None]:
    """Read the latest version (MySQL: locked, so a concurrent PUT waits and numbers the
    next), then add the one after it."""
    row = (yield Statement(_latest(d, True), (tenant, ref, ref, ref))).fetchone()
    if row is None:
        return None
    latest = template_from_row(row)
    new = TemplateRecord(
        latest.id, tenant, latest.name, latest.version + 1, subject, html, text, at
    )
    yield Statement(
        _insert(d),
        (new.id, tenant, new.name, new.version, subject, html, text, at),
    )
    return new


@read
def one(d: Dialect, tenant: str, ref: str, version: int | None) -> Steps[TemplateRecord | None]:
    if version is None:
        cur = yield Statement(_latest(d, False), (tenant, ref, ref, ref))
    else:
        cur = yield Statement(_version(d), (tenant, ref, ref, version, ref))
    row = cur.fetchone()
    return None if row is None else template_from_row(row)


@read
def every(d: Dialect, tenant: str) -> Steps[list[TemplateRecord]]:
    cur = yield Statement(_every(d), (tenant,))
    return [template_from_row(row) for row in cur.fetchall()]


@write
def delete(d: Dialect, tenant: str, ref: str) -> Steps[bool]:
    row = (yield Statement(_latest(d, True), (tenant, ref, ref, ref))).fetchone()
    if row is None:
        return False
    yield Statement(_delete(d), (row[0],))
    return True


class SqlTemplates(Templates, Engine):
    """``Templates`` on a driver."""

    async def add_template(self, template: TemplateRecord) -> bool:
        return await self.run(add, template)

    async def add_template_version(
        self,
        tenant: str,
        ref: str,
        *,
        subject: str | None,
        html: str | None,
        text: str | None,
        at: float,
    ) -> TemplateRecord | None:
        return await self.run(add_version, tenant, ref, subject, html, text, at)

    async def template(
        self, tenant: str, ref: str, version: int | None = None
    ) -> TemplateRecord | None:
        return await self.run(one, tenant, ref, version)

    async def templates(self, tenant: str) -> list[TemplateRecord]:
        return await self.run(every, tenant)

    async def delete_template(self, tenant: str, ref: str) -> bool:
        return await self.run(delete, tenant, ref)

"""Finding mails (``GET /mail``): the side tables that index them, and the query.

A mail's recipients (to, cc, bcc, lowercased) are rows of ``mail_recipients``, its
tags and short metadata values rows of ``mail_labels``, written in the transaction
that stores the mail (``mails.add``), each with the mail's tenant and creation time.
Retention deletes them with the mail's content (``retention.purge_bodies``) or with
the mail: a purged mail is found by none of what it no longer holds.

A listing is newest first, by ``(created_at, id)``, and reads one index from the top
of its range: the recipient's, else the metadata value's, else the tag's (``label``),
else the mails' own by tenant (and status). What else the query asks is checked on
the rows that index yields, each by a primary key, so a page reads the mails it shows
and those the other filters drop, never the whole table.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from mailman.core.model import Mail, Status

from .dialect import Dialect, chunks
from .operation import Statement, Steps, inserts

#: ``mail_labels.kind`` of a tag, and of a metadata value.
TAG = "tag"
METADATA = "metadata"
#: The longest metadata value that is indexed, so found (a longer one is kept with the
#: mail, not in ``mail_labels``: an index holds a bounded key).
MAX_FOUND_VALUE = 255

#: The side tables, each by ``mail_id``: rows of a mail, deleted with it.
TABLES = ("mail_recipients", "mail_labels")

RECIPIENT_COLUMNS = "mail_id, address, tenant, created_at"
LABEL_COLUMNS = "mail_id, kind, name, value, tenant, created_at"


@dataclass(frozen=True, slots=True)
class MailQuery:
    """Which mails ``list_mails`` returns: newest first (``created_at``, then id), after
    the ``before`` of the page before; every filter given must hold."""

    #: None: every tenant's mails.
    tenant: str | None
    limit: int
    status: Status | None = None
    #: ``created_at`` at or after this unix time...
    since: float | None = None
    #: ... and before this one.
    until: float | None = None
    #: To, cc or bcc, in any case (compared lowercased).
    recipient: str | None = None
    tag: str | None = None
    #: A metadata key and its value, exactly.
    metadata: tuple[str, str] | None = None
    #: The ``(created_at, id)`` of the last mail of the page before (the cursor).
    before: tuple[float, str] | None = None


def recipient_rows(mail: Mail) -> list[tuple[object, ...]]:
    """``mail``'s rows of ``mail_recipients``: each address once, lowercased."""
    addresses = dict.fromkeys(a.email.lower() for a in (*mail.to, *mail.cc, *mail.bcc))
    return [(mail.id, address, mail.tenant, mail.created_at) for address in addresses]


def label_rows(mail: Mail) -> list[tuple[object, ...]]:
    """``mail``'s rows of ``mail_labels``: its tags, and its metadata values of at most
    ``MAX_FOUND_VALUE`` characters."""
    rows: list[tuple[object, ...]] = [
        (mail.id, TAG, tag, "", mail.tenant, mail.created_at) for tag in dict.fromkeys(mail.tags)
    ]
    rows += [
        (mail.id, METADATA, key, value, mail.tenant, mail.created_at)
        for key, value in dict.fromkeys(mail.metadata)
        if len(value) <= MAX_FOUND_VALUE
    ]
    return rows


@functools.lru_cache(maxsize=256)
def _insert(d: Dialect, table: str, columns: str, count: int) -> str:
    return f"INSERT INTO {table} ({columns}) VALUES {d.rows(count, columns.count(',') + 1)}"


def index(d: Dialect, mails: Sequence[Mail]) -> Steps[None]:
    """Write the side-table rows of ``mails`` (new mails, in the transaction adding them)."""
    for table, columns, rows_of in (
        ("mail_recipients", RECIPIENT_COLUMNS, recipient_rows),
        ("mail_labels", LABEL_COLUMNS, label_rows),
    ):
        rows = [row for mail in mails for row in rows_of(mail)]
        yield from inserts(d, functools.partial(_insert, d, table, columns), rows)


@functools.lru_cache(maxsize=256)
def _forget(d: Dialect, table: str, count: int) -> str:
    return f"DELETE FROM {table} WHERE mail_id IN ({d.marks(count)})"


def forget(d: Dialect, mail_ids: Sequence[str]) -> Steps[None]:
    """Delete the side-table rows of these mails (purged or dropped)."""
    for chunk in chunks(mail_ids):
        for table in TABLES:
            yield Statement(_forget(d, table, len(chunk)), chunk)


# --- the query -----------------------------------------------------------------------------


#: The index each listing reads, by what drives it: ``(driver, by tenant, by status)``.
RECIPIENT_INDEX = "mail_recipients_by_address"
LABEL_INDEX = "mail_labels_by_label"
MAILS_INDEXES = {
    (True, True): "mails_by_tenant_status",
    (True, False): "mails_by_tenant_time",
    (False, True): "mails_by_status",
    (False, False): "mails_by_time",
}


def find(d: Dialect, query: MailQuery) -> Statement:
    """The statement listing ``query``'s mails: rows of (id, status, created_at).

    The driving table comes first and is read through its index, named (SQLite's
    ``INDEXED BY``, MySQL's ``FORCE INDEX``): what the optimiser would guess from the
    statistics of a young table is no guide. Each other table joins in that order
    (``Dialect.ordered_join``) by its primary key: a label is ``(mail_id, kind, name,
    value)``, so a join finds a mail's once or not at all.
    """
    m = d.mark
    params: list[object] = []
    where: list[str] = []
    labels = []  # (kind, name, value) checked by a join
    if query.recipient is not None:
        source = f"mail_recipients AS x{d.force_index(RECIPIENT_INDEX)}"
        where.append(f"x.address = {m}")
        params.append(query.recipient.lower())
    elif query.metadata is not None or query.tag is not None:
        source = f"mail_labels AS x{d.force_index(LABEL_INDEX)}"
        where += [f"x.kind = {m}", f"x.name = {m}", f"x.value = {m}"]
        if query.metadata is not None:
            params += [METADATA, *query.metadata]
        else:
            params += [TAG, query.tag, ""]
    else:
        index = MAILS_INDEXES[(query.tenant is not None, query.status is not None)]
        source = f"mails AS m{d.force_index(index)}"
    side = not source.startswith("mails ")
    key, at = ("x.mail_id", "x.created_at") if side else ("m.id", "m.created_at")
    if query.tenant is not None:
        where.append(f"{'x' if side else 'm'}.tenant = {m}")
        params.append(query.tenant)
    if query.status is not None:
        where.append(f"m.status = {m}")
        params.append(query.status.value)
    if query.since is not None:
        where.append(f"{at} >= {m}")
        params.append(query.since)
    if query.until is not None:
        where.append(f"{at} < {m}")
        params.append(query.until)
    if query.before is not None:
        # The bound alone is a range on the index; the OR picks out the ties.
        where.append(f"{at} <= {m} AND ({at} < {m} OR {key} < {m})")
        before_at, before_id = query.before
        params += [before_at, before_at, before_id]
    if query.metadata is not None and query.recipient is not None:
        labels.append((METADATA, *query.metadata))
    if query.tag is not None and (query.recipient is not None or query.metadata is not None):
        labels.append((TAG, query.tag, ""))
    joins = ""
    if side:
        joins = f" {d.ordered_join} mails AS m{d.by_key} ON m.id = x.mail_id"
    join_params: list[object] = []
    for n, label in enumerate(labels):
        joins += (
            f" {d.ordered_join} mail_labels AS l{n}{d.by_key} ON l{n}.mail_id = {key} "
            f"AND l{n}.kind = {m} AND l{n}.name = {m} AND l{n}.value = {m}"
        )
        join_params += label
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    sql = (
        f"SELECT {key}, m.status, {at} FROM {source}{joins}{clause} "
        f"ORDER BY {at} DESC, {key} DESC LIMIT {m}"
    )
    return Statement(sql, [*join_params, *params, query.limit])

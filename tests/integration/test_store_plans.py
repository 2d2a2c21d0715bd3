"""Statements that pick rows by their ids read them by the key, on SQLite and MySQL:
a guard beside the ids (``status = 'queued'``) must not become the way in, or the
statement reads every row the guard matches, and costs more as the backlog grows."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mailman.core.model import Address, Mail, Status
from mailman.store import (
    MailQuery,
    Store,
    attempts,
    events,
    finding,
    mails,
    moves,
    outbox,
    retention,
)
from mailman.store.dialect import Dialect
from mailman.store.mysql import MySQLStore
from mailman.store.operation import Engine, Statement, Steps, write
from mailman.store.sqlite import SQLiteStore

from . import test_store as contract

make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url

IDS = 33

#: Each statement, its table and the keys it may be read by: (SQLite's, MySQL's).
KEYED: dict[str, tuple[Callable[[Dialect], str], tuple[str, ...], tuple[str, ...]]] = {
    "the relay's claim makes mails sending": (
        lambda d: outbox._sending(d, IDS),
        ("sqlite_autoindex_mails_1 (id=?)",),
        ("PRIMARY",),
    ),
    "due scheduled mails are released": (
        lambda d: mails._release(d, IDS),
        ("sqlite_autoindex_mails_1 (id=?)",),
        ("PRIMARY",),
    ),
    "a status move": (
        lambda d: moves.move(d, Status.SENT),
        ("sqlite_autoindex_mails_1 (id=?)",),
        ("PRIMARY",),
    ),
    "stale attempts become unknown": (
        lambda d: attempts._stale_of(d, IDS),
        ("INTEGER PRIMARY KEY (rowid=?)",),
        ("PRIMARY",),
    ),
    "the begins' open attempts": (
        lambda d: attempts._open_of(d, IDS),
        ("attempts_once (mail_id=?)",),
        ("attempts_once", "mail_id"),
    ),
    "the begins' pending attempts": (
        lambda d: attempts._pending_of(d, IDS),
        ("attempts_once (mail_id=?)",),
        ("attempts_once", "mail_id"),
    ),
    "a mail's open attempts": (
        attempts._open,
        ("attempts_once (mail_id=?)",),
        ("attempts_once", "mail_id"),
    ),
    "a mail found by its provider's message id": (
        events._mail_for_message,
        ("attempts_by_message (message_id=?)",),
        ("attempts_by_message",),
    ),
    "purged mails' pending calls": (
        lambda d: retention._pending_of(d, IDS),
        ("attempts_once (mail_id=?)",),
        ("attempts_once", "mail_id"),
    ),
}


@write  # MySQL explains an UPDATE only in a transaction that may write
def _explain(d: Dialect, sql: str, params: list[object] | None = None) -> Steps[list[Any]]:
    """The plan of ``sql``; without ``params``, a string for each (ids, times, reasons)."""
    prefix = "EXPLAIN QUERY PLAN " if d.one_writer else "EXPLAIN "
    if params is None:
        params = [str(n) for n in range(sql.count(d.mark))]
    return list((yield Statement(prefix + sql, params)).fetchall())


@pytest.mark.parametrize("name", list(KEYED))
async def test_rows_picked_by_id_are_read_by_the_key(store: Store, name: str) -> None:
    """EXPLAIN of each statement that picks rows by id, with its guard: the key drives it."""
    assert isinstance(store, Engine)
    statement, sqlite_keys, mysql_keys = KEYED[name]
    d = store.dialect
    plan = await store.run(_explain, statement(d))
    if isinstance(store, MySQLStore):
        # id, select_type, table, type, possible_keys, key, key_len, ref, rows, Extra
        assert all(row[5] in mysql_keys for row in plan), plan
        assert all(row[3] != "ALL" for row in plan), plan
    else:
        details = [row[3] for row in plan if row[3].startswith(("SEARCH", "SCAN"))]
        assert details and all(d.startswith("SEARCH") for d in details), details
        assert all(any(key in d for key in sqlite_keys) for d in details), details


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("by_tenant", [False, True])
async def test_an_erasures_candidates_are_read_through_the_listings_index(
    store: Store, by_tenant: bool, paged: bool
) -> None:
    """EXPLAIN of a page of an erasure's candidates: read through the listing's index of
    the mails (a tenant's, or everyone's), in its order, without a sort."""
    assert isinstance(store, Engine)
    d = store.dialect
    params: list[object] = ["t"] if by_tenant else []
    if paged:
        params += [1000.0, 1000.0, "m1"]
    sql = retention._candidates(d, by_tenant, paged)
    plan = await store.run(_explain, sql, [*params, "%a%", 10])  # MySQL: LIMIT a number
    index = finding.MAILS_INDEXES[(by_tenant, False)]
    if isinstance(store, MySQLStore):
        assert all(row[5] == index for row in plan), plan
        assert all("filesort" not in (row[9] or "") for row in plan), plan
    else:
        details = [row[3] for row in plan]
        assert details and details[0].startswith("S") and f"INDEX {index}" in details[0]
        assert not any("TEMP B-TREE" in d for d in details), details


@write
def _adds_recorded(d: Dialect, batches: list[list[Mail]]) -> Steps[list[Statement]]:
    """``mails.add`` of each batch in turn, with every statement it ran."""
    ran: list[Statement] = []
    for batch in batches:
        steps = mails.add.steps(d, [(m, None) for m in batch])
        try:
            statement = next(steps)
            while True:
                ran.append(statement)
                statement = steps.send((yield statement))
        except StopIteration:
            pass
    return ran


async def test_batches_of_any_size_run_few_statement_texts(store: Store) -> None:
    """Adds of 1 to 20 mails store every mail and its recipients; on SQLite they run a
    handful of statement texts (its prepared-statement cache holds them), each IN list
    a power of two long."""
    assert isinstance(store, Engine)
    batches = [
        [
            replace(contract.mail(f"b{size}-{n}"), to=(Address(f"r{n}@example.com"),))
            for n in range(size)
        ]
        for size in range(1, 21)
    ]
    ran = await store.run(_adds_recorded, batches)
    for batch in batches:
        for m in batch:
            record = await store.get(m.id)
            assert record is not None and record.mail.to == m.to
    found = await store.list_mails(MailQuery(tenant=None, limit=5, recipient="r19@example.com"))
    assert [m.id for m in found] == ["b20-19"]
    if isinstance(store, MySQLStore):
        return
    texts = {s.sql for s in ran}
    # Before: a multi-row INSERT for each count into mails, recipients and the outbox,
    # and an IN list of each count (80 texts and more).
    assert len(texts) <= 12, sorted(texts)
    for sql in texts:
        if " IN (" in sql:
            listed = sql.split(" IN (", 1)[1].split(")", 1)[0].count("?")
            assert listed & (listed - 1) == 0, sql


#: SQLite's indexes that hold only some mails (migration 17), and the statement that
#: reads each: its WHERE repeats the index's, or SQLite's planner passes the index by.
PARTIAL: dict[str, Callable[[Dialect], str]] = {
    "mails_by_due": mails._due_scheduled,
    "mails_by_finish": retention._to_drop,
    "mails_to_purge": retention._to_purge,
}


@pytest.mark.parametrize("index", list(PARTIAL))
async def test_statements_for_some_mails_read_the_index_of_those_mails(
    tmp_path: Path, index: str
) -> None:
    """SQLite's query plan of the release of due scheduled mails, and of retention's
    purge and drop: each reads the partial index of the mails it looks for."""
    opened = SQLiteStore(str(tmp_path / "mailman.db"), writer="thread")
    async with opened:
        plan = await opened.run(_explain, PARTIAL[index](opened.dialect))
    details = [row[3] for row in plan if row[3].startswith(("SEARCH", "SCAN"))]
    assert details and all(d.startswith(f"SEARCH mails USING INDEX {index} ") for d in details)


def _truncate_log(path: str) -> None:
    """Checkpoint the write-ahead log and empty it."""
    with sqlite3.connect(path) as db:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0


def _indexes_written(path: str) -> set[str]:
    """The indexes of ``mails`` whose root page is in the write-ahead log (in a file of a
    few mails each index is its root page alone)."""
    with sqlite3.connect(path) as db:
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        roots = db.execute(
            "SELECT rootpage, name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'mails'"
        ).fetchall()
    log = Path(path + "-wal").read_bytes()
    frame = 24 + page_size  # a frame's header, then its page
    pages = {int.from_bytes(log[at : at + 4], "big") for at in range(32, len(log), frame)}
    return {name for root, name in roots if root in pages}


async def test_a_mail_enters_the_indexes_of_scheduled_and_final_mails_only_as_one(
    tmp_path: Path,
) -> None:
    """On SQLite, storing a queued mail and moving it to sending write no page of the
    indexes of scheduled mails or of final ones (every commit used to); sent, it enters
    the final ones; a scheduled mail enters the scheduled one."""
    path = str(tmp_path / "mailman.db")
    opened = SQLiteStore(path, writer="thread")
    async with opened:
        _truncate_log(path)
        await opened.add(contract.mail("a"))
        written = _indexes_written(path)
        assert "mails_by_status" in written  # a page of every index the mail is in
        assert written.isdisjoint(PARTIAL), written

        _truncate_log(path)
        await opened.transition("a", Status.SENDING, 1001.0)
        written = _indexes_written(path)
        assert "mails_by_status" in written
        assert written.isdisjoint(PARTIAL), written

        _truncate_log(path)
        await opened.transition("a", Status.SENT, 1002.0)
        written = _indexes_written(path)
        assert {"mails_by_finish", "mails_to_purge"} <= written
        assert "mails_by_due" not in written

        _truncate_log(path)
        await opened.add(contract.mail("b", send_at=5000.0))
        assert "mails_by_due" in _indexes_written(path)

"""What differs between SQLite and MySQL in the statements themselves.

The concern modules (``mails``, ``attempts``...) write each statement once, with
the dialect's placeholder, locks and the few clauses the two databases spell
differently taken from here. Where the two differ in more than spelling (who else
may write at the same time), the concern module keeps both halves side by side,
choosing by ``Dialect.one_writer``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: Ids per ``IN (...)`` list, and rows per multi-row ``INSERT``: far below
#: either database's limit on bound parameters (``in_lists`` pads up to 512).
CHUNK = 500
#: Prepared statements a SQLite connection keeps (the texts it runs most, by last use):
#: every concern's statements, and of each ``IN`` list its powers of two (``in_lists``).
CACHED_STATEMENTS = 512


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_lists(d: Dialect, items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """``items`` in slices for ``IN (...)`` lists of as many placeholders. Where the driver
    prepares each statement's text (``Dialect.prepares``), a slice is padded to a power of
    two by repeating its last item: a statement is then prepared once per power of two
    and found in the connection's cache, not prepared again for every count (preparing
    costs as much as running it). A value twice in an ``IN`` list changes nothing."""
    for chunk in chunks(items):
        yield padded(d, chunk)


def padded(d: Dialect, items: Sequence[Any]) -> Sequence[Any]:
    """``items`` for one ``IN (...)`` list: where the driver prepares each text, padded to
    a power of two by repeating the last one (``in_lists``)."""
    count = len(items)
    if d.prepares and count & (count - 1):
        return [*items, *[items[-1]] * ((1 << count.bit_length()) - count)]
    return items


@dataclass(frozen=True, eq=False)
class Dialect:
    """One database's SQL. Compared (and hashed) by identity: there are two, ``SQLITE``
    and ``MYSQL``."""

    name: str
    #: The driver's placeholder.
    mark: str
    #: SQLite: one writer at a time holds the whole database (``BEGIN IMMEDIATE``), so
    #: what a transaction read stays true until it commits and no row needs a lock.
    #: MySQL: several writers at once; a transaction locks the rows it changes next.
    one_writer: bool
    #: The driver prepares a statement's text and keeps it in a cache of
    #: ``CACHED_STATEMENTS`` per connection (Python's ``sqlite3``); MySQL's driver sends
    #: the text each time, and the server parses it whatever it is (``in_lists``).
    prepares: bool = False
    #: Appended to a claim's SELECT (MySQL: lock the rows, skip the locked).
    claim_lock: str = ""
    #: Follows the table a claim reads (MySQL: in id order, stopping at its limit; see
    #: ``outbox._claimable``).
    claim_index: str = ""
    #: Appended to a SELECT of rows the transaction changes next (MySQL: lock them).
    row_lock: str = ""
    #: The larger of two values (SQLite's scalar ``MAX``, MySQL's ``GREATEST``).
    greatest: str = "MAX"
    #: The start of an attempt's minute (unix seconds; ``at`` is never negative).
    minute: str = "CAST(at / 60 AS INTEGER) * 60"
    #: The longest mail id the store can hold (MySQL: ``VARCHAR(64)``); None: any.
    id_max: int | None = None
    #: MySQL: a statement larger than the server's ``max_allowed_packet`` drops the
    #: connection, so a large mail is measured first (``mails.MailTooLarge``).
    packet_limited: bool = False
    #: MySQL spells "insert unless the key is there" ``ON DUPLICATE KEY UPDATE``.
    on_duplicate_key: bool = False
    #: A join that reads its left table first (SQLite's ``CROSS JOIN``, MySQL's
    #: ``STRAIGHT_JOIN``): a listing driven by a side table's index keeps its order.
    ordered_join: str = "CROSS JOIN"
    #: After a table joined or picked by its primary key (MySQL: ``FORCE INDEX (PRIMARY)``,
    #: or it may pick a secondary index by a guess from a young table's statistics, or by
    #: a guard beside the ids: ``unindexed``).
    by_key: str = ""
    #: Read a table through this index (SQLite's ``INDEXED BY``, MySQL's ``FORCE INDEX``).
    index_hint: str = " INDEXED BY {}"

    def marks(self, count: int) -> str:
        """``count`` placeholders, comma separated."""
        return _marks(self, count)

    def rows(self, count: int, width: int) -> str:
        """``count`` parenthesised rows of ``width`` placeholders (a multi-row VALUES)."""
        return _rows(self, count, width)

    def insert_once(self, table: str, columns: str, values: str, key: str) -> str:
        """An INSERT that does nothing for a row whose unique key is there already: its
        row count is 1 if it inserted, 0 if not. (MySQL: ``ON DUPLICATE KEY UPDATE`` a
        column to itself, not ``INSERT IGNORE``: aiomysql turns the warning that one
        raises, "Duplicate entry", into a Python warning.)"""
        if not self.on_duplicate_key:
            return f"INSERT OR IGNORE INTO {table} ({columns}) VALUES {values}"
        return (
            f"INSERT INTO {table} ({columns}) VALUES {values} ON DUPLICATE KEY UPDATE {key} = {key}"
        )

    def add_to(self, table: str, key: str, column: str, count: int = 1) -> str:
        """Insert ``count`` rows, or add each one's amount to ``column`` of the row its key
        names, in one statement (parameters: each row's key columns, then its amount).
        SQLite reads the amount back as ``excluded``; MySQL from a derived table (``VALUES()``
        in ``ON DUPLICATE KEY UPDATE`` is deprecated in MySQL 8, where its warning would
        become a Python one, and MariaDB knows no row alias)."""
        width = key.count(",") + 2
        columns = f"{key}, {column}"
        if not self.on_duplicate_key:
            return (
                f"INSERT INTO {table} ({columns}) VALUES {self.rows(count, width)} "
                f"ON CONFLICT ({key}) DO UPDATE SET {column} = {column} + excluded.{column}"
            )
        # The first row names the derived table's columns (k0, k1... and n, the amount).
        names = [f"k{n}" for n in range(width - 1)] + ["n"]
        first = ", ".join(f"{self.mark} AS {name}" for name in names)
        rows = [f"SELECT {first}"] + [f"SELECT {self.marks(width)}"] * (count - 1)
        return (
            f"INSERT INTO {table} ({columns}) SELECT * FROM ({' UNION ALL '.join(rows)}) AS added "
            f"ON DUPLICATE KEY UPDATE {column} = {column} + added.n"
        )

    def force_index(self, name: str) -> str:
        """What follows a table's name in FROM to read it through the index ``name``."""
        return self.index_hint.format(name)

    def holds_id(self, mail_id: str) -> bool:
        """Whether ``mail_id`` is an id the store can hold exactly. MySQL compares ids with
        ``utf8mb4_bin``, which pads trailing spaces, in a ``VARCHAR(64)``: a longer id, one
        ending in a space or not encodable is none it has (lookups answer None)."""
        if self.id_max is None:
            return True
        if not mail_id or len(mail_id) > self.id_max or mail_id.endswith(" "):
            return False
        try:
            mail_id.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            return False
        return True


def unindexed(column: str) -> str:
    """``column`` as a term no index can serve: a unary ``+``, which SQLite and MySQL
    both read as the value itself. For a guard beside ``id IN (...)``, so that the
    statement reads its rows by their key, never by the guard.

    SQLite keeps no statistics here, and for ``id IN (33 ids) AND status = 'queued'``
    its planner took ``mails_by_finish (status=?)``, reading every queued mail to pick
    out the 33: 12.5 ms per relay claim with 20,000 queued, growing with the backlog;
    by the key, 38 µs. MySQL reads through the ``+``: such a statement also names its
    key (``Dialect.by_key``, or ``force_index`` for another index)."""
    return f"+{column}"


@functools.lru_cache(maxsize=4096)
def _marks(dialect: Dialect, count: int) -> str:
    return ", ".join([dialect.mark] * count)


@functools.lru_cache(maxsize=4096)
def _rows(dialect: Dialect, count: int, width: int) -> str:
    row = f"({_marks(dialect, width)})"
    return ", ".join([row] * count)


SQLITE = Dialect(name="sqlite", mark="?", one_writer=True, prepares=True)
MYSQL = Dialect(
    name="mysql",
    mark="%s",
    one_writer=False,
    claim_lock=" FOR UPDATE SKIP LOCKED",
    claim_index=" FORCE INDEX (PRIMARY)",
    row_lock=" FOR UPDATE",
    greatest="GREATEST",
    minute="FLOOR(at / 60) * 60",
    id_max=64,
    packet_limited=True,
    on_duplicate_key=True,
    ordered_join="STRAIGHT_JOIN",
    by_key=" FORCE INDEX (PRIMARY)",
    index_hint=" FORCE INDEX ({})",
)

"""Operations written once, run by either driver: statements out, cursors in.

An operation is a generator function over a ``Dialect``: it ``yield``s each
``Statement`` it needs and is sent back the ``Cursor`` that ran it (rows, row
count, last row id), then returns its result. It does no I/O itself, so the same
code runs on SQLite's thread (``sqlite3``, synchronous) and on MySQL's pool
(``aiomysql``, awaited), each operation as one transaction::

    @read
    def count(d: Dialect, status: str) -> Steps[int]:
        cur = yield Statement(f"SELECT COUNT(*) FROM mails WHERE status = {d.mark}", (status,))
        return int(cur.fetchone()[0])

A driver is an ``Engine``: ``await engine.run(count, "sent")``. Where the two
databases need more than another spelling (MySQL locks rows SQLite's one writer
never needs to), the operation keeps both halves side by side.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, NamedTuple, ParamSpec, Protocol, TypeAlias, TypeVar

from .dialect import Dialect, chunks

P = ParamSpec("P")
T = TypeVar("T")
A = TypeVar("A")


class Statement(NamedTuple):
    """One statement to run, with its parameters."""

    sql: str
    params: Sequence[Any] = ()
    #: ``params`` is a sequence of parameter rows: the statement runs once per row.
    many: bool = False


def inserts(
    d: Dialect, insert: Callable[[int], str], rows: Sequence[Sequence[Any]]
) -> Iterator[Statement]:
    """The statements that insert ``rows``, ``insert(n)`` being the INSERT of ``n`` of them.
    Where the driver prepares each text (``Dialect.prepares``: SQLite), the one-row INSERT
    runs once per row (``executemany``): one prepared statement whatever the count, where
    a multi-row one of each new count is prepared again (~10 µs a row of ``mails``).
    Elsewhere (MySQL), multi-row INSERTs of up to ``CHUNK`` rows: one round trip each."""
    if d.prepares:
        if rows:
            yield Statement(insert(1), rows, many=True)
        return
    for chunk in chunks(rows):
        yield Statement(insert(len(chunk)), [v for row in chunk for v in row])


class Cursor(Protocol):
    """What a statement left: its rows and counts (``sqlite3.Cursor`` is one).

    ``rowcount`` after an UPDATE counts the rows MySQL *changed* but the rows SQLite
    *matched*: an operation that needs "was it there" reads the row first.
    """

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


#: An operation's body: yields statements, is sent their cursors, returns ``T``.
Steps: TypeAlias = Generator[Statement, Cursor, T]


@dataclass(frozen=True, slots=True, eq=False)
class Operation(Generic[P, T]):
    """One call, one transaction."""

    steps: Callable[Concatenate[Dialect, P], Steps[T]]
    #: Changes something (SQLite: on the writer thread; MySQL: a read-write transaction).
    writes: bool
    #: A read of several statements that must see one state (SQLite: one read
    #: transaction on the reader; MySQL's read transactions always are).
    snapshot: bool = False

    @property
    def name(self) -> str:
        return self.steps.__name__


@dataclass(frozen=True, slots=True, eq=False)
class Batched(Generic[A, T]):
    """An operation whose calls waiting together may run as one: ``steps`` takes every
    call's argument and returns a result per call, in order (an exception fails its
    call alone). SQLite runs the calls of a batch in one go (a group commit); MySQL
    runs each call as a batch of one, in its own transaction."""

    steps: Callable[[Dialect, list[A]], Steps[Sequence[T | Exception]]]
    writes: bool

    @property
    def name(self) -> str:
        return self.steps.__name__


def write(steps: Callable[Concatenate[Dialect, P], Steps[T]]) -> Operation[P, T]:
    """An operation that changes something."""
    return Operation(steps, writes=True)


def read(steps: Callable[Concatenate[Dialect, P], Steps[T]]) -> Operation[P, T]:
    """An operation that only reads, in one statement (or statements that need not agree)."""
    return Operation(steps, writes=False)


def snapshot(steps: Callable[Concatenate[Dialect, P], Steps[T]]) -> Operation[P, T]:
    """An operation that reads in several statements that must see one state."""
    return Operation(steps, writes=False, snapshot=True)


def write_batch(
    steps: Callable[[Dialect, list[A]], Steps[Sequence[T | Exception]]],
) -> Batched[A, T]:
    """A batched operation that changes something."""
    return Batched(steps, writes=True)


def read_batch(
    steps: Callable[[Dialect, list[A]], Steps[Sequence[T | Exception]]],
) -> Batched[A, T]:
    """A batched operation that only reads."""
    return Batched(steps, writes=False)


class Engine(abc.ABC):
    """A driver: runs operations on its database, each in one transaction."""

    #: The SQL its database speaks.
    dialect: Dialect

    @abc.abstractmethod
    async def run(self, operation: Operation[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``operation`` with these arguments in one transaction; its result."""

    @abc.abstractmethod
    async def run_batched(self, operation: Batched[A, T], arg: A, /) -> T:
        """Run one call of a batched operation (with others waiting, where the driver
        batches); its result, or the exception it failed with raised."""

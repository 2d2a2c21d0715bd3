"""Dead letters: mailbox records no handler could handle, kept with why, to be replayed."""

from __future__ import annotations

import abc
import base64
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailman.core.model import Status

from . import callbacks, moves, summary
from .dialect import Dialect, chunks
from .operation import Engine, Statement, Steps, read, write


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A mailbox record that could not be handled, kept with why and its raw bytes."""

    id: int
    #: The mailbox (``send.sendgrid``, ``status``...) it was taken from.
    mailbox: str
    #: The mail it is about, when that could be read from it.
    mail_id: str | None
    payload: bytes
    error: str
    at: float
    replayed_at: float | None = None


class DeadLetters(abc.ABC):
    """The dead letters."""

    @abc.abstractmethod
    async def add_dead_letter(
        self, mailbox: str, mail_id: str | None, payload: bytes, error: str, at: float
    ) -> int:
        """Keep a record no handler could handle; its id. The mail, if known and not
        final, becomes ``failed`` with the error as its reason. One transaction."""

    @abc.abstractmethod
    async def dead_letters(self, *, replayed: bool = False, limit: int = 1000) -> list[DeadLetter]:
        """Dead letters, oldest first; those already replayed only with ``replayed``."""

    @abc.abstractmethod
    async def mark_replayed(self, ids: Sequence[int], at: float) -> None:
        """Note that these dead letters were replayed."""


# --- SQL ---------------------------------------------------------------------------------

DEAD_LETTER_COLUMNS = "id, mailbox, mail_id, payload, error, at, replayed_at"


@functools.cache
def _insert(d: Dialect) -> str:
    return f"INSERT INTO dead_letters (mailbox, mail_id, payload, error, at) VALUES ({d.marks(5)})"


@functools.cache
def _letters(d: Dialect) -> str:
    return (
        f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters "
        f"WHERE replayed_at IS NULL OR {d.mark} ORDER BY id LIMIT {d.mark}"
    )


@functools.lru_cache(maxsize=1024)
def _replayed(d: Dialect, count: int) -> str:
    return (
        f"UPDATE dead_letters SET replayed_at = {d.mark} "
        f"WHERE id IN ({d.marks(count)}) AND replayed_at IS NULL"
    )


def b64(data: bytes) -> str:
    """A dead letter's bytes as stored (text: the drivers agree on it)."""
    return base64.b64encode(data).decode("ascii")


def dead_letter_reason(letter: int | None, error: str) -> str:
    """A dead-lettered mail's ``failed`` reason."""
    return f"a record about this mail could not be handled (dead letter {letter}): {error}"[:1000]


def dead_letter_from_row(row: Sequence[Any]) -> DeadLetter:
    letter_id, mailbox, mail_id, payload, error, at, replayed_at = row
    return DeadLetter(
        id=int(letter_id),
        mailbox=mailbox,
        mail_id=mail_id,
        payload=base64.b64decode(payload),
        error=error,
        at=at,
        replayed_at=replayed_at,
    )


# --- operations ----------------------------------------------------------------------------


@write
def add(
    d: Dialect, mailbox: str, mail_id: str | None, payload: bytes, error: str, at: float
) -> Steps[int]:
    """A mail id the store cannot hold (MySQL) is kept as none."""
    if mail_id is not None and not d.holds_id(mail_id):
        mail_id = None
    cur = yield Statement(_insert(d), (mailbox, mail_id, b64(payload), error, at))
    letter = int(cur.lastrowid or 0)
    if mail_id is not None:
        before = yield from summary.look(d, [mail_id])
        if before.mails:
            reason = dead_letter_reason(letter, error)
            failed = moves.plain_move_values(mail_id, Status.FAILED, at, reason)
            yield Statement(moves.move(d, Status.FAILED), failed)
            yield from callbacks.queue(d, [mail_id])
            yield from summary.settle(d, before)
    return letter


@read
def letters(d: Dialect, replayed: bool, limit: int) -> Steps[list[DeadLetter]]:
    cur = yield Statement(_letters(d), (replayed, limit))
    return [dead_letter_from_row(r) for r in cur.fetchall()]


@write
def mark(d: Dialect, ids: tuple[int, ...], at: float) -> Steps[None]:
    for chunk in chunks(ids):
        yield Statement(_replayed(d, len(chunk)), (at, *chunk))


class SqlDeadLetters(DeadLetters, Engine):
    """``DeadLetters`` on a driver."""

    async def add_dead_letter(
        self, mailbox: str, mail_id: str | None, payload: bytes, error: str, at: float
    ) -> int:
        return await self.run(add, mailbox, mail_id, payload, error, at)

    async def dead_letters(self, *, replayed: bool = False, limit: int = 1000) -> list[DeadLetter]:
        return await self.run(letters, replayed, limit)

    async def mark_replayed(self, ids: Sequence[int], at: float) -> None:
        if ids:
            await self.run(mark, tuple(ids), at)

"""Poison records: a record whose handler keeps raising is set aside, not crashed on.

At-least-once delivery hands a record again until it is acknowledged, so a
record that makes its handler raise every time would stop its actor (and, as
the supervisor restarts it, its whole process) for good. ``Poison.handle``
runs the handler again with a backoff; after ``attempts`` failures the record
goes to the store's dead letters with the error and its raw bytes, the mail it
names (if any) ends ``failed`` with that reason, and the record counts as
handled so the mailbox moves on. ``mailman dead-letters list|replay`` shows
and replays them.

Not counted: the store being unreachable (handlers wait that out themselves)
and the actor being asked to stop (the record is left for the next owner).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

from mailman.core.messages import encode, key_of
from mailman.providers import describe
from mailman.retry import Backoff, retrying
from mailman.store import Store

from .lifecycle import Actor

log = structlog.get_logger("mailman.poison")

#: The most of an error kept with a dead letter.
MAX_ERROR = 500

M = TypeVar("M")

#: The first wait before a failed record is handled again; it doubles each time (no cap:
#: ``attempts`` ends it).
FIRST_BACKOFF = 0.05


class Poison(Generic[M]):
    """Runs one mailbox's handler; dead-letters what fails ``attempts`` times."""

    def __init__(
        self,
        actor: Actor,
        *,
        mailbox: str,
        store: Store,
        attempts: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if attempts < 1:
            raise ValueError("a record gets at least one attempt")
        self.actor = actor
        self.mailbox = mailbox
        self.store = store
        self.attempts = attempts
        self.clock = clock
        self.backoff = Backoff(first=FIRST_BACKOFF, attempts=attempts)

    async def handle(self, message: M, handler: Callable[[M], Awaitable[None]]) -> bool:
        """Handle ``message``: True once handled or dead-lettered (ack it), False if the
        actor is stopping and the message should stay unacknowledged.

        Each failure but the last is one ``record.failed`` warning."""
        try:
            await retrying(
                lambda: handler(message),
                on=Exception,
                backoff=self.backoff,
                stop=self.actor.stopping,
                event="record.failed",
                logger=log,
                describe=_describe,
                mailbox=self.mailbox,
                mail_id=_mail_id(message),
                of=self.attempts,
            )
        except Exception as exc:
            if self.actor.stopping.is_set():
                return False
            await self._bury(message, exc)
        return True

    async def _bury(self, message: M, exc: Exception) -> None:
        mail_id = _mail_id(message)
        error = _describe(exc)
        letter = await self.actor.through_outage(
            self.store.unavailable,
            lambda: self.store.add_dead_letter(
                self.mailbox, mail_id, encode(message), error, self.clock()
            ),
            "dead_letter",
        )
        log.error(
            "record.dead_lettered",
            mailbox=self.mailbox,
            mail_id=mail_id,
            dead_letter=letter,
            attempts=self.attempts,
            error=error,
        )


def _mail_id(message: object) -> str | None:
    try:
        return key_of(message)
    except TypeError:
        return None


def _describe(exc: BaseException) -> str:
    """The error as a dead letter (and the retry log) keeps it: ``Type: message``, cut."""
    return describe(exc)[:MAX_ERROR]

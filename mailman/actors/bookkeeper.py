"""The bookkeeper actor: applies status updates from its mailbox to the store, in batches.

Senders commit their own attempts (record first, then ack: see
``actors.sender``); the bookkeeper applies the status records other actors
publish to the ``status`` mailbox, and drains records an older version left
there. Every update waiting in the mailbox when one arrives goes into the
same transaction (group commit), so a burst of updates costs one commit.
Moves are guarded by the store, so a replayed or late update never moves a
mail backwards. A batch that fails is applied one update at a time, so one
poison update is dead-lettered alone (``actors.poison``).
"""

from __future__ import annotations

import structlog

from .lifecycle import Actor
from .mailboxes import Delivery, Inbox, Mailbox
from .messages import StatusUpdate
from .poison import Poison
from .routing import STATUS_MAILBOX
from .store import Store

log = structlog.get_logger("mailman.bookkeeper")

#: Most updates applied in one transaction.
BATCH = 500


class Bookkeeper(Actor):
    subscribes = True

    def __init__(
        self, *, inbox: Mailbox[StatusUpdate], store: Store, poison_attempts: int = 5
    ) -> None:
        super().__init__("bookkeeper")
        self.mailbox = inbox
        self.store = store
        self.poison: Poison[StatusUpdate] = Poison(
            self, mailbox=STATUS_MAILBOX, store=store, attempts=poison_attempts
        )

    async def run(self) -> None:
        async with self.subscribed(self.mailbox) as inbox:
            while (first := await self.receive(inbox)) is not None:
                await self._apply([first, *self._ready(inbox)])
            # Stopping: what is already in the mailbox (the senders stop
            # first) is recorded before the store closes.
            while batch := self._ready(inbox):
                await self._apply(batch)

    @staticmethod
    def _ready(inbox: Inbox[StatusUpdate]) -> list[Delivery[StatusUpdate]]:
        batch: list[Delivery[StatusUpdate]] = []
        while len(batch) < BATCH and (delivery := inbox.get_nowait()) is not None:
            batch.append(delivery)
        return batch

    async def _apply(self, batch: list[Delivery[StatusUpdate]]) -> None:
        try:
            await self._commit([d.message for d in batch])
        except Exception as exc:
            if self.stopping.is_set():
                raise
            log.warning("status.batch_failed", updates=len(batch), error=type(exc).__name__)
            for delivery in batch:  # one at a time: a poison update fails alone
                if not await self.poison.handle(delivery.message, self._commit_one):
                    return  # stopping: the rest stays unacknowledged
                await delivery.ack()
            return
        for delivery in batch:
            await delivery.ack()
        log.debug("status.applied", updates=len(batch))

    async def _commit(self, updates: list[StatusUpdate]) -> None:
        await self.through_outage(
            self.store.unavailable, lambda: self.store.apply(updates), "apply"
        )

    async def _commit_one(self, update: StatusUpdate) -> None:
        await self._commit([update])

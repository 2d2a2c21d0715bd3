"""The bookkeeper actor: applies status updates to the store, in batches.

Every update waiting in the mailbox when one arrives goes into the same
transaction (group commit), so a burst of updates costs one commit. Moves
are guarded by the store, so a replayed or late update never moves a mail
backwards.
"""

from __future__ import annotations

import structlog

from .lifecycle import Actor
from .mailboxes import Delivery, Inbox, Mailbox
from .messages import StatusUpdate
from .store import Store

log = structlog.get_logger("mailman.bookkeeper")

#: Most updates applied in one transaction.
BATCH = 500


class Bookkeeper(Actor):
    def __init__(self, *, inbox: Mailbox[StatusUpdate], store: Store) -> None:
        super().__init__("bookkeeper")
        self.mailbox = inbox
        self.store = store

    async def run(self) -> None:
        async with self.mailbox.subscribe() as inbox:
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
        updates = [d.message for d in batch]
        await self.through_outage(
            self.store.unavailable, lambda: self.store.apply(updates), "apply"
        )
        for delivery in batch:
            await delivery.ack()
        log.debug("status.applied", updates=len(batch))

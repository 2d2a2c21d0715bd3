"""Group commit for the senders: what a provider said is durable before anything follows.

A sender records each call's outcome in the store itself, before it acks the
mailbox message and before it hands the mail on (record first, then ack). A
provider's ``2xx`` and its durable record are then apart by one commit, not
by a trip through the bookkeeper's mailbox, so a crash in between can send a
mail twice only inside that window.

The outcomes of calls that finish while the commits in flight run share the
next commit: one transaction per batch. Up to ``concurrency`` commits run at
once, so on a database with a round trip per statement (MySQL) an outcome
does not wait for a whole batch ahead of it; SQLite's writer thread groups
them into one transaction anyway.

One update's failure fails that update alone: a batch that fails for another
reason than an outage (``store.unavailable``: every update would fail alike,
and each caller waits it out) is committed again update by update, so that no
healthy neighbour of a bad update is failed with it (and, its mail taken by a
provider, sent again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mailman.core.messages import StatusUpdate
from mailman.store import Store

#: Most updates committed in one transaction.
BATCH = 500
#: Commits in flight at once.
CONCURRENCY = 4


class Journal:
    """``record(update)`` returns once ``update`` is committed (or raises why it is not)."""

    def __init__(self, store: Store, concurrency: int = CONCURRENCY) -> None:
        self.store = store
        self.concurrency = concurrency
        self._waiting: list[tuple[StatusUpdate, asyncio.Future[None]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def record(self, update: StatusUpdate) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((update, future))
        if len(self._flushes) < self.concurrency:
            task = loop.create_task(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
            await self._commit(batch)

    async def _commit(self, batch: Sequence[tuple[StatusUpdate, asyncio.Future[None]]]) -> None:
        try:
            await self.store.apply([update for update, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, self.store.unavailable):
                await self._one_by_one(batch)
                return
            for _, future in batch:  # every caller of this batch sees why (and may try again)
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _one_by_one(self, batch: Sequence[tuple[StatusUpdate, asyncio.Future[None]]]) -> None:
        """Each update of a failed batch in a transaction of its own: only the bad fail."""
        outcomes = await asyncio.gather(
            *(self.store.apply([update]) for update, _ in batch), return_exceptions=True
        )
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(None)

"""The purger actor: erases what retention says is due (``store.retention``).

Every ``interval`` it runs one pass, in small transactions (``BATCH`` mails each,
yielding to the event loop between them), never on a request's path:

1. the content of final mails last moved over ``body_retention`` ago is erased;
2. final mails last moved over ``record_retention`` ago are deleted with their rows;
   so are callbacks finished and dead letters replayed that long ago, and expired
   idempotency keys;
3. SQLite gives up to ``RECLAIM_PAGES`` free pages back to the file system at a time.

It runs beside the sweeper (role ``sweeper``). Several purgers sharing a store are
safe: on SQLite the writer runs one transaction at a time; on MySQL each batch
claims its mails ``FOR UPDATE SKIP LOCKED``. A pass logs one ``retention.purged``
line with its counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from mailman.store import Store

from .lifecycle import Actor

log = structlog.get_logger("mailman.retention")

#: Mails (or rows) per transaction.
BATCH = 500
#: Most batches of one kind per pass: a backlog (retention first turned on over a
#: large store) is worked off over several passes, never in one long burst.
MAX_BATCHES = 200
#: Free pages (4 KiB each by default) given back per transaction.
RECLAIM_PAGES = 2000


@dataclass(slots=True)
class Pass:
    """What one pass did."""

    purged: int = 0
    dropped: int = 0
    callbacks: int = 0
    dead_letters: int = 0
    idempotency: int = 0
    reclaimed_pages: int = 0

    @property
    def anything(self) -> bool:
        return any((self.purged, self.dropped, self.callbacks, self.dead_letters, self.idempotency))


class Purger(Actor):
    def __init__(
        self,
        *,
        store: Store,
        body_retention: float | None,
        record_retention: float | None,
        interval: float = 60.0,
        clock: Callable[[], float] = time.time,
        batch: int = BATCH,
    ) -> None:
        super().__init__("purger")
        self.store = store
        self.body_retention = body_retention
        self.record_retention = record_retention
        self.interval = interval
        self.clock = clock
        self.batch = batch

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.purge_once()
            except self.store.unavailable as exc:  # an outage: the next pass tries again
                log.warning("retention.failed", error=type(exc).__name__)
            await self.rest(self.interval)

    async def purge_once(self) -> Pass:
        """One pass; what it did."""
        done = Pass()
        now = self.clock()
        if self.body_retention is not None:
            before = now - self.body_retention
            done.purged = await self._batches(
                lambda: self.store.purge_bodies(before, now, self.batch)
            )
        if self.record_retention is not None:
            before = now - self.record_retention
            done.dropped = await self._batches(lambda: self.store.drop_records(before, self.batch))
            for _ in range(MAX_BATCHES):
                dropped = await self.store.drop_finished(before, now, self.batch)
                done.callbacks += dropped.callbacks
                done.dead_letters += dropped.dead_letters
                done.idempotency += dropped.idempotency
                if max(dropped.callbacks, dropped.dead_letters, dropped.idempotency) < self.batch:
                    break
                await asyncio.sleep(0)
        if done.anything:
            done.reclaimed_pages = await self._batches(
                lambda: self.store.reclaim(RECLAIM_PAGES), full=RECLAIM_PAGES
            )
            log.info(
                "retention.purged",
                bodies=done.purged,
                mails=done.dropped,
                callbacks=done.callbacks,
                dead_letters=done.dead_letters,
                idempotency_keys=done.idempotency,
                pages_reclaimed=done.reclaimed_pages,
            )
        return done

    async def _batches(self, batch: Callable[[], Awaitable[int]], full: int | None = None) -> int:
        """``batch()`` again while it does a full batch (at most ``MAX_BATCHES``), letting
        the event loop (and the store's other callers) in between; the total."""
        full = self.batch if full is None else full
        total = 0
        for _ in range(MAX_BATCHES):
            if self.stopping.is_set():
                break
            count = await batch()
            total += count
            if count < full:
                break
            await asyncio.sleep(0)
        return total

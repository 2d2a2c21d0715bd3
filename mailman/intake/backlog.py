"""Back pressure: ``POST /mail/send`` answers 503 while the backlog of unsent mail is full.

The backlog is every mail not yet final (``queued`` or ``sending``), across
every replica sharing the store. Each API replica counts it in the store
every ``REFRESH_SECONDS`` and adds what it accepted itself since, so a burst
is refused once it passes ``MAILMAN_BACKLOG_LIMIT`` without a count on every
request. Other replicas' accepts since the last count are seen within
``REFRESH_SECONDS``: a limit can be passed by at most what the replicas
accept in that time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from mailman.config.logging import get_logger
from mailman.store import Store

log = get_logger("mailman.http")

#: How often a replica counts the backlog in the store.
REFRESH_SECONDS = 0.5
#: What a refused caller is asked to wait (seconds).
RETRY_AFTER_SECONDS = 5


class Backlog:
    """The store's backlog as last counted, plus this replica's accepts since."""

    __slots__ = ("accepted_since", "counted", "limit")

    def __init__(self, limit: int) -> None:
        #: 0: no limit.
        self.limit = limit
        self.counted = 0
        self.accepted_since = 0

    @property
    def size(self) -> int:
        return self.counted + self.accepted_since

    def full(self) -> bool:
        return self.limit > 0 and self.size >= self.limit

    def accepted(self) -> None:
        self.accepted_since += 1

    def counted_now(self, count: int) -> None:
        self.counted = count
        self.accepted_since = 0


async def refresher(backlog: Backlog, store: Store) -> AsyncIterator[None]:
    """While the app runs (``cleanup_ctx``): count the backlog every ``REFRESH_SECONDS``."""
    if backlog.limit <= 0:
        yield
        return
    task = asyncio.create_task(_count(backlog, store), name="api-backlog")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _count(backlog: Backlog, store: Store) -> None:
    full = False
    while True:
        try:
            backlog.counted_now(await store.backlog())
        except Exception as exc:  # the store is down: keep the last count, try again
            log.warning("backlog.count_failed", error=type(exc).__name__)
        if backlog.full() != full:
            full = backlog.full()
            log.warning(
                "backlog.full" if full else "backlog.ok", mails=backlog.size, limit=backlog.limit
            )
        await asyncio.sleep(REFRESH_SECONDS)

"""The retry scheduler actor: holds mails whose every provider failed, until their backoff ends.

A message is acknowledged only once its mail was handed back to a sender, so
a crash loses no retry: the mailbox delivers it again (and the store still
has the mail ``sending``, which a restart dispatches anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable

import structlog

from mailman.core.messages import RetryLater
from mailman.mailboxes import Delivery
from mailman.mailboxes.routing import RETRY_MAILBOX, Router
from mailman.store import Store

from .lifecycle import Actor
from .poison import Poison

log = structlog.get_logger("mailman.scheduler")


class RetryScheduler(Actor):
    subscribes = True

    def __init__(
        self,
        *,
        router: Router,
        store: Store,
        poison_attempts: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("retry")
        self.router = router
        self.clock = clock
        self.poison: Poison[RetryLater] = Poison(
            self, mailbox=RETRY_MAILBOX, store=store, attempts=poison_attempts, clock=clock
        )
        self._due: list[tuple[float, int, Delivery[RetryLater]]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()

    def pending(self) -> int:
        return len(self._due)

    async def run(self) -> None:
        async with self.subscribed(self.router.retry) as inbox, asyncio.TaskGroup() as group:
            group.create_task(self._release())
            # Taking in never waits on a sender, so a full sender mailbox can
            # never stall the senders that hand mails to us.
            while (delivery := await self.receive(inbox)) is not None:
                heapq.heappush(self._due, (delivery.message.due_at, next(self._order), delivery))
                self._changed.set()
            self._changed.set()

    async def _release(self) -> None:
        while not self.stopping.is_set():
            self._changed.clear()
            if not self._due:
                await self._changed.wait()
                continue
            wait = self._due[0][0] - self.clock()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=wait)
                continue
            _, _, delivery = heapq.heappop(self._due)
            if await self.poison.handle(delivery.message, self._hand_back):
                await delivery.ack()

    async def _hand_back(self, later: RetryLater) -> None:
        dispatch = later.dispatch
        log.info("mail.retrying", mail_id=dispatch.mail_id, attempt=dispatch.round)
        await self.router.dispatch(dispatch)

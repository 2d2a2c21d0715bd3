"""The relay actor: publishes committed outbox entries to the first sender mailbox.

The API commits a mail and its outbox entry in one transaction and answers
201; it never publishes itself (no dual write). The relay claims a batch of
entries under a lease, publishes them, and removes them. Several relays may
run at once (leases keep them apart); one that dies leaves its entries to be
claimed again once their lease runs out, so a crash between publishing and
removing publishes some mails twice, never none (senders skip a mail that
is already final).

The API wakes a relay in the same process at once (``nudge``); a relay in
another process finds new entries within ``interval_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable

import structlog

from config import RelayConfig

from .lifecycle import Actor
from .messages import Dispatch
from .routing import Router
from .store import OutboxEntry, Store

log = structlog.get_logger("mailman.relay")

#: Longest wait after a failed publish before trying again.
MAX_BACKOFF = 5.0


def relay_owner() -> str:
    """A name for this relay that no other process has: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Nudge:
    """The API's outbound side: a committed mail wakes the relay in this process, if any."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def dispatch(self, dispatch: Dispatch) -> None:
        self.event.set()


class Relay(Actor):
    def __init__(
        self,
        *,
        store: Store,
        router: Router,
        config: RelayConfig,
        nudge: Nudge,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("relay")
        self.store = store
        self.router = router
        self.config = config
        self.nudge = nudge
        self.clock = clock
        self.owner = relay_owner()
        self.published = 0
        self._claimed: list[OutboxEntry] = []

    async def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                moved = await self.relay_once()
            except Exception as exc:  # the store or the broker is unreachable: try again
                failures += 1
                delay = min(MAX_BACKOFF, self.config.interval_seconds * 2**failures)
                log.warning("relay.publish_failed", error=repr(exc), retry_in=round(delay, 3))
                await self._pause(delay)
                continue
            failures = 0
            if moved < self.config.batch:
                await self._pause(self.config.interval_seconds)

    async def relay_once(self) -> int:
        """Claim, publish and remove one batch; how many entries it held.

        A batch whose publish failed is published again on the next call (it
        is still leased to us) rather than waiting for its lease to run out.
        """
        self.nudge.event.clear()
        entries = self._claimed or await self.store.claim_outbox(
            self.owner, self.config.batch, self.config.lease_seconds, self.clock()
        )
        if not entries:
            return 0
        self._claimed = entries
        await self.router.dispatch_many(
            [Dispatch(mail_id=e.mail_id, accepted_at=e.accepted_at) for e in entries]
        )
        await self.store.published([e.id for e in entries])
        self._claimed = []
        self.published += len(entries)
        log.debug("relay.published", mails=len(entries))
        return len(entries)

    async def _pause(self, seconds: float) -> None:
        """Until a nudge, the stop request, or ``seconds`` pass."""
        if self.nudge.event.is_set():
            return
        waits = {
            asyncio.ensure_future(self.nudge.event.wait()),
            asyncio.ensure_future(self.stopping.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

"""The sweeper actor: picks up mails that nothing is handling any more.

Record first (see ``actors.sender``) leaves a trace of every call: a
``pending`` attempt. A mail can still be left ``sending`` with nobody on it:
its sender died mid-call and the mailbox message went with it (in-process
mailboxes), or a message was acknowledged but its hand-on never arrived.
Every ``interval`` seconds the sweeper, in one store transaction, turns
``pending`` attempts older than the provider timeout plus a margin into
``unknown`` and gives each ``sending`` mail that was due before then, has no
pending attempt and no outbox entry a new outbox entry: the relay dispatches
it again, and its sender asks the provider about the ``unknown`` attempt
before sending. A mail still waiting in a long Kafka backlog may be
dispatched twice this way; its sender sends it once (``busy``/final).

It also releases scheduled mails: every ``release_interval`` seconds, those
whose ``send_at`` has come become ``queued`` with an outbox entry (one
transaction), so a scheduled mail survives any restart: it is only a row
in the store until then.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from mailman.store import Store

from .lifecycle import Actor

log = structlog.get_logger("mailman.sweeper")

#: Most mails picked up in one sweep.
BATCH = 500
#: How often scheduled mails whose time has come are released (at most).
RELEASE_SECONDS = 1.0


class Sweeper(Actor):
    def __init__(
        self,
        *,
        store: Store,
        stale_after: float,
        interval: float,
        clock: Callable[[], float] = time.time,
        release_interval: float = RELEASE_SECONDS,
    ) -> None:
        super().__init__("sweeper")
        self.store = store
        self.stale_after = stale_after
        self.interval = interval
        self.release_interval = min(release_interval, interval)
        self.clock = clock

    async def run(self) -> None:
        next_sweep = time.monotonic() + self.interval
        while not self.stopping.is_set():
            await self.rest(self.release_interval)
            if self.stopping.is_set():
                break
            try:
                await self.release_once()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.interval
                    await self.sweep_once()
            except self.store.unavailable as exc:  # an outage: the next round tries again
                log.warning("sweep.failed", error=type(exc).__name__)

    async def release_once(self) -> int:
        """Release the scheduled mails whose time has come; how many."""
        released = await self.store.release_scheduled(self.clock(), BATCH)
        for mail_id in released:
            log.info("mail.released", mail_id=mail_id)
        return len(released)

    async def sweep_once(self) -> int:
        """One sweep; how many mails it picked up."""
        now = self.clock()
        swept = await self.store.sweep(now, now - self.stale_after, BATCH)
        if swept:
            log.warning("mail.swept", mails=len(swept), first=swept[0])
        return len(swept)

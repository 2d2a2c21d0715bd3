"""The relay actor: publishes committed outbox entries to the first sender mailbox.

The API commits a mail and its outbox entry in one transaction and answers
201; it never publishes itself (no dual write). The relay claims a batch of
entries under a lease (which marks their mails ``sending``), publishes them,
and removes them in the transaction of its next claim: one store trip per
batch. Several relays may run at once (leases keep them apart); one that
dies leaves its entries to be claimed again once their lease runs out, so a
crash between publishing and removing publishes some mails twice, never none
(senders skip a mail that is already final).

The API wakes a relay in the same process at once (``Nudge``), and one in
another process on the same machine through a local datagram
(``actors.wake``); a relay that hears nothing still looks every
``interval_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from mailman.config import RelayConfig
from mailman.core.messages import Dispatch
from mailman.intake.load import SATURATED_REQUESTS, Load
from mailman.mailboxes.routing import Router
from mailman.retry import Backoff, retrying
from mailman.store import OutboxEntry, Store

from .lifecycle import Actor, owner_name
from .wake import RemoteLoad, WakeListener, WakeSender

log = structlog.get_logger("mailman.relay")

#: Longest wait after a failed publish before trying again.
MAX_BACKOFF = 5.0

#: Accepts first: while the API in this process is busy (a request in flight,
#: or one within ``QUIET_SECONDS``) and saturated (``SATURATED_REQUESTS`` in
#: flight on average over the relay's wait with the event loop's thread busy
#: ``SATURATED_BUSY`` of it, or the loop's timers running
#: ``SATURATED_LAG_SECONDS`` late or more), or an API process elsewhere on this machine said within
#: ``REMOTE_QUIET_SECONDS`` that it is saturated (``intake.load``, ``wake.RemoteLoad``),
#: the relay waits for a
#: quiet spell of at most ``MAX_DEFER_SECONDS``, then claims at most
#: ``BUSY_BATCH`` entries. The rest of a burst waits, committed, in the outbox
#: and is drained at full speed once the requests stop. A busy API whose loop
#: still has room (steady traffic below what the process can take) is not
#: held back.
QUIET_SECONDS = 0.05
#: An API process elsewhere reports every 10 ms while saturated; its last report counts
#: this long. Longer than ``QUIET_SECONDS``: on a loaded machine either process may be
#: off its core for tens of ms, and a gap in the reports let the relay claim a full batch
#: in the middle of a burst (seen under the benchmark: 7 of 16 claims in one run).
REMOTE_QUIET_SECONDS = 0.2
SATURATED_LAG_SECONDS = 0.005
#: The share of the relay's wait the event loop's thread was on the CPU, above which
#: requests in flight mean a saturated loop (below it, they wait on the store).
SATURATED_BUSY = 0.5
MAX_DEFER_SECONDS = 0.5
BUSY_BATCH = 50


class Nudge:
    """The API's outbound side: a committed mail wakes the relay.

    The relay in this process, if any, through ``event``; one in another
    process on this machine through ``remote`` (a local datagram).
    """

    def __init__(self, remote: WakeSender | None = None) -> None:
        self.event = asyncio.Event()
        self.remote = remote

    async def dispatch(self, dispatch: Dispatch) -> None:
        self.event.set()
        if self.remote is not None:
            self.remote.wake()


class Relay(Actor):
    def __init__(
        self,
        *,
        store: Store,
        router: Router,
        config: RelayConfig,
        nudge: Nudge,
        wake_address: str | None = None,
        load: Load | None = None,
        saturated_lag: float = SATURATED_LAG_SECONDS,
        clock: Callable[[], float] = time.time,
        worked: Callable[[], float] = time.thread_time,
    ) -> None:
        super().__init__("relay")
        self.store = store
        self.router = router
        self.config = config
        self.nudge = nudge
        self.clock = clock
        self.owner = owner_name()
        #: The API's requests in flight in this process (None: no API here).
        self.load = load
        #: Timers this late mean a saturated loop (0: a busy API always counts as one).
        self.saturated_lag = saturated_lag
        #: The CPU seconds the event loop's thread has used (the relay runs on it).
        self.worked = worked
        #: What API processes elsewhere on this machine say of their load.
        self.remote = RemoteLoad(REMOTE_QUIET_SECONDS)
        self._listener = (
            None
            if wake_address is None
            else WakeListener(wake_address, nudge.event.set, self.remote.report)
        )
        self.published = 0
        self._claimed: list[OutboxEntry] = []
        #: Published entries not yet removed: the next claim removes them.
        self._done: list[int] = []

    async def setup(self) -> None:
        if self._listener is not None:
            self._listener.open()

    async def run(self) -> None:
        # The store or the broker unreachable: tried again after twice the interval,
        # doubling up to MAX_BACKOFF (each wait one relay.publish_failed warning), or at
        # once when a nudge comes; the claimed batch is kept and published first.
        first = min(MAX_BACKOFF, 2 * self.config.interval_seconds)
        backoff = Backoff(first=first, cap=MAX_BACKOFF)
        while not self.stopping.is_set():
            try:
                moved = await retrying(
                    self.relay_once,
                    on=Exception,
                    backoff=backoff,
                    stop=self.stopping,
                    wake=self.nudge.event,
                    event="relay.publish_failed",
                    logger=log,
                    describe=repr,
                )
            except Exception:  # raised only once stopping: until then each failure is retried
                if self.stopping.is_set():
                    return
                raise
            if moved < self.config.batch:
                await self._pause(self.config.interval_seconds)

    async def relay_once(self) -> int:
        """Claim, publish and remove one batch; how many entries it held.

        A batch whose publish failed is published again on the next call (it
        is still leased to us) rather than waiting for its lease to run out.
        """
        self.nudge.event.clear()
        entries = self._claimed
        if not entries:
            limit = self.config.batch
            if not await self._until_quiet():
                limit = min(limit, BUSY_BATCH)
            entries = await self.store.claim_outbox(
                self.owner,
                limit,
                self.config.lease_seconds,
                self.clock(),
                done=self._done,
            )
            self._done = []
        if not entries:
            return 0
        self._claimed = entries
        await self.router.dispatch_many(
            [
                Dispatch(
                    mail_id=e.mail_id,
                    accepted_at=e.accepted_at,
                    round=e.round,
                    chain=self.router.order(e.mail_id, e.providers),
                )
                for e in entries
            ]
        )
        self._done = [e.id for e in entries]
        self._claimed = []
        self.published += len(entries)
        log.debug("relay.published", mails=len(entries))
        return len(entries)

    async def _until_quiet(self) -> bool:
        """Wait while an API is busy and saturated: True once none is, False after
        ``MAX_DEFER_SECONDS``.

        The API in this process: checked every ``QUIET_SECONDS`` while it waits
        (the API is not slowed by telling anyone when it goes quiet). It is
        saturated while the timer fires ``saturated_lag`` late, or while it had
        ``SATURATED_REQUESTS`` in flight on average over the wait and the loop's
        thread was busy ``SATURATED_BUSY`` of it: not the requests at the instant
        the timer fires (a saturated loop answers a writer turn's requests
        together, and a look at that moment found room often enough to hand a
        full batch to the loop in the middle of a burst), and not requests alone
        (those of a slow store wait with the loop idle). API processes elsewhere:
        until their last saturated report is ``REMOTE_QUIET_SECONDS`` old.
        """
        deadline = time.monotonic() + MAX_DEFER_SECONDS
        room = self.load is None  # the loop here has room for the relay's work too
        while not self.stopping.is_set():
            now = time.monotonic()
            wait = self.remote.held_for(now)
            if not room:
                assert self.load is not None
                quiet = self.load.quiet_for(now)
                if quiet < QUIET_SECONDS:
                    wait = max(wait, QUIET_SECONDS - quiet)
            if wait <= 0:
                return True
            if now >= deadline:
                return False
            wait = min(wait, deadline - now)
            mark = None if room or self.load is None else self.load.mark()
            worked = self.worked()
            await self.rest(wait)
            if mark is not None:
                assert self.load is not None
                rested = time.monotonic() - now
                busy = (self.worked() - worked) / rested if rested > 0 else 1.0
                held = self.load.mean_since(mark)
                room = rested - wait < self.saturated_lag and (
                    held < SATURATED_REQUESTS or busy < SATURATED_BUSY
                )
        return True

    async def teardown(self) -> None:
        """Remove what was published since the last claim (a later claim would otherwise)."""
        if self._listener is not None:
            self._listener.close()
        done, self._done = self._done, []
        if done:
            try:
                await self.store.published(done)
            except Exception as exc:  # left leased: claimed and published again later
                log.warning("relay.remove_failed", entries=len(done), error=repr(exc))

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

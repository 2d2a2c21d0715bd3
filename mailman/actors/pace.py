"""A provider's pace: at most N calls a second from one sender.

``MAILMAN_SENDER_RATE_PER_PROVIDER`` (``resend:2``) gives a provider whose
limit is counted per second (Resend's 2 requests a second, an SES account's
maximum send rate) a pace its sender keeps: calls evenly spaced,
``1 / N`` seconds apart, never two closer. Calls in flight
(``actors.limiter``) cannot hold such a limit: at one call in flight a
provider answering in 200 ms still gets five a second.

The sender waits for its turn before it takes a mail from the mailbox, as it
waits for a slot: a waiting mail stays in the mailbox, neither lost nor held
in memory. It keeps the same pace again right before each call: between the
two a mail's attempt is recorded, and a mail slowed there (a busy store) would
otherwise leave together with the ones after it (seen: five calls in 0.11 s at
20 a second). The pace is the sender's own: N processes running a provider's
sender make N times as many calls, so divide the provider's limit between them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable


class Pace:
    """Turns ``1 / per_second`` seconds apart, for one caller at a time (the sender's
    loop). ``clock`` is monotonic seconds; ``sleep`` waits that many."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not per_second > 0:
            raise ValueError(f"a pace needs a rate above 0, not {per_second}")
        self.per_second = per_second
        self.interval = 1.0 / per_second
        self.clock = clock
        self.sleep = sleep
        #: When the next turn may be taken.
        self._next = -math.inf

    async def turn(self) -> None:
        """Wait for the next turn (at once if it is due). A turn is spent once it is
        given: cancelled while waiting, the next caller still waits for the one after."""
        now = self.clock()
        at = max(self._next, now)
        self._next = at + self.interval
        if at > now:
            await self.sleep(at - now)

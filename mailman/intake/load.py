"""How busy the entry points of this process are: the relay yields to them.

A relay in the same process reads ``Load`` directly. One in another process
on this machine (``--processes``, split roles on one SQLite file) hears it:
while this process has ``SATURATED_REQUESTS`` or more requests in flight,
``Load`` calls its ``report`` (a datagram to the relay, ``actors.wake``)
every ``REPORT_SECONDS``. A report that is lost, or that stops coming,
means no hold-back, never a stall: the relay holds back only while reports
are fresh, and never longer than its ``MAX_DEFER_SECONDS``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import NamedTuple

#: Requests in flight at once that mean the process is saturated.
SATURATED_REQUESTS = 8
#: While saturated, how often another process's relay is told so.
REPORT_SECONDS = 0.01


class Mark(NamedTuple):
    """A moment of ``Load``: when, and the request-seconds in flight until then."""

    at: float
    held: float


class Load:
    """Requests (HTTP, and SMTP mails) this process is handling now, and when one last
    began or ended.

    The relay in the same process reads it to put accepts first: while the
    API is busy it defers its work (see ``actors.relay``). ``report``, if
    given, is called with the requests in flight every ``REPORT_SECONDS``
    while they are ``SATURATED_REQUESTS`` or more: on a timer, since a
    saturated process may go a long while without a request beginning or
    ending (its commits waiting for the file's write lock, say).
    """

    __slots__ = ("_clock", "_held", "_ticking", "active_at", "report", "requests")

    def __init__(
        self,
        report: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = 0
        #: ``clock()`` when a request last began or ended.
        self.active_at = 0.0
        self.report = report
        self._clock = clock
        #: Request-seconds in flight until ``active_at`` (``Mark``, ``mean_since``).
        self._held = 0.0
        self._ticking = False

    def enter(self) -> None:
        now = self._clock()
        self._held += self.requests * (now - self.active_at)
        self.requests += 1
        self.active_at = now
        if self.requests >= SATURATED_REQUESTS and self.report is not None and not self._ticking:
            self._ticking = True
            self._tick()

    def leave(self) -> None:
        now = self._clock()
        self._held += self.requests * (now - self.active_at)
        self.requests -= 1
        self.active_at = now

    def mark(self) -> Mark:
        """Now, for ``mean_since``."""
        now = self._clock()
        return Mark(now, self._held + self.requests * (now - self.active_at))

    def mean_since(self, mark: Mark) -> float:
        """The requests in flight since ``mark``, on average over the time (those at
        this instant when no time has passed). A saturated API, 30 requests in flight
        but for a moment when they were answered together, is saturated on average
        when a look at that moment finds none."""
        now = self.mark()
        elapsed = now.at - mark.at
        return float(self.requests) if elapsed <= 0 else (now.held - mark.held) / elapsed

    def _tick(self) -> None:
        """Report, and again in ``REPORT_SECONDS``, until fewer requests are in flight."""
        if self.requests < SATURATED_REQUESTS or self.report is None:
            self._ticking = False
            return
        self.report(self.requests)
        asyncio.get_running_loop().call_later(REPORT_SECONDS, self._tick)

    def quiet_for(self, now: float) -> float:
        """Seconds without a request in flight (0 while there is one); ``now`` on the
        load's clock."""
        return 0.0 if self.requests else max(0.0, now - self.active_at)

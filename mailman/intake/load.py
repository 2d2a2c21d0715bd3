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

#: Requests in flight at once that mean the process is saturated.
SATURATED_REQUESTS = 8
#: While saturated, how often another process's relay is told so.
REPORT_SECONDS = 0.01


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

    __slots__ = ("_ticking", "active_at", "report", "requests")

    def __init__(self, report: Callable[[int], None] | None = None) -> None:
        self.requests = 0
        #: ``time.monotonic()`` when a request last began or ended.
        self.active_at = 0.0
        self.report = report
        self._ticking = False

    def enter(self) -> None:
        self.requests += 1
        self.active_at = time.monotonic()
        if self.requests >= SATURATED_REQUESTS and self.report is not None and not self._ticking:
            self._ticking = True
            self._tick()

    def leave(self) -> None:
        self.requests -= 1
        self.active_at = time.monotonic()

    def _tick(self) -> None:
        """Report, and again in ``REPORT_SECONDS``, until fewer requests are in flight."""
        if self.requests < SATURATED_REQUESTS or self.report is None:
            self._ticking = False
            return
        self.report(self.requests)
        asyncio.get_running_loop().call_later(REPORT_SECONDS, self._tick)

    def quiet_for(self, now: float) -> float:
        """Seconds without a request in flight (0 while there is one)."""
        return 0.0 if self.requests else max(0.0, now - self.active_at)

"""How busy the entry points of this process are: the relay yields to them.

A relay in the same process reads ``Load`` directly. One in another process
on this machine (``--processes``, split roles on one SQLite file) hears it:
while this process has ``SATURATED_REQUESTS`` or more requests in flight,
``Load`` calls its ``report`` (a datagram to the relay, ``actors.wake``) at
most every ``REPORT_SECONDS``. A report that is lost, or that stops coming,
means no hold-back, never a stall: the relay holds back only while reports
are fresh, and never longer than its ``MAX_DEFER_SECONDS``.
"""

from __future__ import annotations

import math
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
    given, is called with the requests in flight while they are
    ``SATURATED_REQUESTS`` or more, at most every ``REPORT_SECONDS``.
    """

    __slots__ = ("active_at", "report", "reported_at", "requests")

    def __init__(self, report: Callable[[int], None] | None = None) -> None:
        self.requests = 0
        #: ``time.monotonic()`` when a request last began or ended.
        self.active_at = 0.0
        self.report = report
        self.reported_at = -math.inf

    def enter(self) -> None:
        self.requests += 1
        self.active_at = now = time.monotonic()
        if self.report is not None and self.requests >= SATURATED_REQUESTS:
            self._tell(now)

    def leave(self) -> None:
        self.requests -= 1
        self.active_at = now = time.monotonic()
        if self.report is not None and self.requests >= SATURATED_REQUESTS:
            self._tell(now)

    def _tell(self, now: float) -> None:
        if now - self.reported_at >= REPORT_SECONDS:
            self.reported_at = now
            assert self.report is not None
            self.report(self.requests)

    def quiet_for(self, now: float) -> float:
        """Seconds without a request in flight (0 while there is one)."""
        return 0.0 if self.requests else max(0.0, now - self.active_at)

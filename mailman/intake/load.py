"""How busy the entry points of this process are: the relay beside them yields to them."""

from __future__ import annotations

import time


class Load:
    """Requests this app is handling now, and when one last began or ended.

    The relay in the same process reads it to put accepts first: while the
    API is busy it defers its work (see ``actors.relay``).
    """

    __slots__ = ("active_at", "requests")

    def __init__(self) -> None:
        self.requests = 0
        #: ``time.monotonic()`` when a request last began or ended.
        self.active_at = 0.0

    def enter(self) -> None:
        self.requests += 1
        self.active_at = time.monotonic()

    def leave(self) -> None:
        self.requests -= 1
        self.active_at = time.monotonic()

    def quiet_for(self, now: float) -> float:
        """Seconds without a request in flight (0 while there is one)."""
        return 0.0 if self.requests else max(0.0, now - self.active_at)

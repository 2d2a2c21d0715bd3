"""The one source of ids: ULIDs, time-ordered and made without a round trip.

Mail ids and API key ids both come from ``new_id``.
"""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every 10-bit value as its two Crockford characters: an id is 13 of them (130 bits,
#: the top two zero). Python 3.11's ``base64.b32encode`` is a loop in Python; this
#: table makes an id in about 1.0 us instead of 2.5.
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
#: Random bytes for ten ULIDs per 100 read at once: ``os.urandom`` is a system
#: call, and on a hot path one per id showed in profiles.
_POOL_IDS = 100


class _UlidSource:
    """ULIDs: 48 bits of milliseconds, 80 random bits; monotonic within a millisecond."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        self._last_ms = -1
        self._last_random = 0

    def _random(self) -> int:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(10 * _POOL_IDS), 0
        at = self._at
        self._at = at + 10
        return int.from_bytes(self._pool[at : at + 10])

    def new(self, now: float) -> str:
        ms = int(now * 1000)
        if ms == self._last_ms and self._last_random < 2**80 - 1:
            random = self._last_random + 1  # same millisecond: still in order
        else:
            random = self._random()
        self._last_ms, self._last_random = ms, random
        # 26 characters of 5 bits: the 48 bits of time, then the 80 random ones.
        v, p = (ms << 80) | random, _PAIRS
        return (
            p[v >> 120 & 1023] + p[v >> 110 & 1023] + p[v >> 100 & 1023] + p[v >> 90 & 1023]
            + p[v >> 80 & 1023] + p[v >> 70 & 1023] + p[v >> 60 & 1023] + p[v >> 50 & 1023]
            + p[v >> 40 & 1023] + p[v >> 30 & 1023] + p[v >> 20 & 1023] + p[v >> 10 & 1023]
            + p[v & 1023]
        )  # fmt: skip


_ULIDS = _UlidSource()


def new_id(now: float | None = None) -> str:
    """An opaque, time-ordered id made without a round trip (a ULID): 26 characters of
    Crockford base32, monotonic within a millisecond in this process."""
    return _ULIDS.new(time.time() if now is None else now)

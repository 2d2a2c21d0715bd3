"""The one source of ids: ULIDs, time-ordered and made without a round trip.

Mail ids and API key ids both come from ``new_id``.
"""

from __future__ import annotations

import base64
import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())
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
        # Base32 of 80 bits is 16 characters, no padding: the time as 80 bits (its
        # top 30 are zero: 6 characters dropped), then the random part.
        raw = base64.b32encode(ms.to_bytes(10) + random.to_bytes(10))
        return raw.translate(_TO_CROCKFORD)[6:].decode()


_ULIDS = _UlidSource()


def new_id(now: float | None = None) -> str:
    """An opaque, time-ordered id made without a round trip (a ULID): 26 characters of
    Crockford base32, monotonic within a millisecond in this process."""
    return _ULIDS.new(time.time() if now is None else now)

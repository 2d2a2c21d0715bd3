"""The one backoff schedule: a first wait that doubles up to a cap.

``mailman.retry`` waits by it between tries of an infrastructure call (stamina
computes the same schedule there); supervisors wait by it between restarts; the
failover policy and status callbacks spread their retry rounds by it, each with
its own jitter.
"""

from __future__ import annotations


def capped_exponential(first: float, cap: float, n: int) -> float:
    """The ``n``-th wait (``n`` from 1): ``first * 2**(n - 1)``, at most ``cap``."""
    if n <= 1:
        return min(first, cap)
    try:
        return min(cap, first * 2.0 ** (n - 1))
    except OverflowError:  # 2.0**n past the float range: long past any cap
        return cap

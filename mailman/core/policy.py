"""The failover policy as pure logic.

After each attempt a sender asks ``next_step`` what comes next: the next
provider in the chain, a retry round after a backoff, or giving up.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from mailman.config import RetryConfig

from .backoff import capped_exponential
from .messages import Dispatch


@dataclass(frozen=True, slots=True)
class Forward:
    """Try the provider at ``dispatch.hop`` now."""

    dispatch: Dispatch


@dataclass(frozen=True, slots=True)
class Retry:
    """Every provider failed transiently: start a new round after ``delay`` seconds."""

    dispatch: Dispatch
    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


Step = Forward | Retry | GiveUp


def backoff(retry: RetryConfig, round_: int, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: between half and all of base * 2**round, capped."""
    ceiling = capped_exponential(retry.base_seconds, retry.cap_seconds, round_ + 1)
    return ceiling / 2 + rand() * ceiling / 2


def clamp_wait(seconds: float | None, retry: RetryConfig) -> float | None:
    """A provider's ``Retry-After`` as a wait: within ``[0, retry.cap_seconds]``; None
    when absent or not a number (NaN)."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(retry.cap_seconds, max(0.0, seconds))


def next_step(
    chain: tuple[str, ...],
    dispatch: Dispatch,
    *,
    rejected_now: bool,
    retry_after: float | None,
    now: float,
    retry: RetryConfig,
    rand: Callable[[], float] = random.random,
) -> Step:
    """What follows an attempt with ``chain[dispatch.hop]`` that did not succeed.

    ``rejected_now``: that provider rejected the mail permanently.
    ``retry_after``: seconds that provider asked us to wait, if any (clamped to the
    backoff cap). A mail fails for its retry window only once the window is over: a
    wait that would end later is cut to the window's end.
    """
    provider = chain[dispatch.hop]
    rejected = (*dispatch.rejected, provider) if rejected_now else dispatch.rejected
    clamped = (clamp_wait(w, retry) for w in (dispatch.retry_after, retry_after))
    waits = [w for w in clamped if w is not None]
    carried = replace(dispatch, rejected=rejected, retry_after=max(waits) if waits else None)
    for hop in range(dispatch.hop + 1, len(chain)):
        if chain[hop] not in rejected:
            return Forward(replace(carried, hop=hop))
    live = [hop for hop, name in enumerate(chain) if name not in rejected]
    if not live:
        return GiveUp("every provider rejected the mail")
    left = dispatch.accepted_at + retry.window_seconds - now
    if left <= 0:
        return GiveUp(f"retry window of {retry.window_seconds:g} s ran out")
    # A wait that would end past the window is cut to its end: one last round then.
    delay = min(left, max(backoff(retry, dispatch.round, rand), carried.retry_after or 0.0))
    return Retry(replace(carried, hop=live[0], round=dispatch.round + 1, retry_after=None), delay)

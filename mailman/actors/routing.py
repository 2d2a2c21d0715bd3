"""The failover policy as pure logic, and the mailbox names that carry it.

After each attempt a sender asks ``next_step`` what comes next: the next
provider in the chain, a retry round after a backoff, or giving up.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from mailman.config import RetryConfig

from .mailboxes import Broker, Mailbox
from .messages import Dispatch, RetryLater, StatusUpdate

STATUS_MAILBOX = "status"
RETRY_MAILBOX = "retry"


def send_mailbox(provider: str) -> str:
    """The name of the mailbox a provider's sender reads."""
    return f"send.{provider}"


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
    ceiling = min(retry.cap_seconds, retry.base_seconds * 2.0 ** min(round_, 60))
    return ceiling / 2 + rand() * ceiling / 2


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
    ``retry_after``: seconds that provider asked us to wait, if any.
    """
    provider = chain[dispatch.hop]
    rejected = (*dispatch.rejected, provider) if rejected_now else dispatch.rejected
    waits = [w for w in (dispatch.retry_after, retry_after) if w is not None]
    carried = replace(dispatch, rejected=rejected, retry_after=max(waits) if waits else None)
    for hop in range(dispatch.hop + 1, len(chain)):
        if chain[hop] not in rejected:
            return Forward(replace(carried, hop=hop))
    live = [hop for hop, name in enumerate(chain) if name not in rejected]
    if not live:
        return GiveUp("every provider rejected the mail")
    delay = max(backoff(retry, dispatch.round, rand), carried.retry_after or 0.0)
    if now + delay - dispatch.accepted_at > retry.window_seconds:
        return GiveUp(f"retry window of {retry.window_seconds:g} s ran out")
    return Retry(replace(carried, hop=live[0], round=dispatch.round + 1, retry_after=None), delay)


class Router:
    """The mailboxes of one deployment, by purpose."""

    def __init__(self, broker: Broker, chain: tuple[str, ...]) -> None:
        if not chain:
            raise ValueError("the provider chain is empty")
        self.chain = chain
        self.status: Mailbox[StatusUpdate] = broker.mailbox(STATUS_MAILBOX, StatusUpdate)
        self.retry: Mailbox[RetryLater] = broker.mailbox(RETRY_MAILBOX, RetryLater)
        self.senders: dict[str, Mailbox[Dispatch]] = {
            name: broker.mailbox(send_mailbox(name), Dispatch) for name in chain
        }

    def inbox_of(self, provider: str) -> Mailbox[Dispatch]:
        return self.senders[provider]

    async def dispatch(self, dispatch: Dispatch) -> None:
        """Hand ``dispatch`` to the sender of the provider at its hop."""
        await self.senders[self.chain[dispatch.hop]].put(dispatch)

    async def dispatch_many(self, dispatches: Sequence[Dispatch]) -> None:
        """Hand over a batch, one publish per mailbox; returns once every mailbox holds them."""
        by_provider: dict[str, list[Dispatch]] = {}
        for dispatch in dispatches:
            by_provider.setdefault(self.chain[dispatch.hop], []).append(dispatch)
        for provider, batch in by_provider.items():
            await self.senders[provider].put_many(batch)

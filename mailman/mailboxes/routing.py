"""The mailboxes of one deployment, by purpose: a sender's per provider, and the retry one."""

from __future__ import annotations

from collections.abc import Sequence

from mailman.core.messages import Dispatch, RetryLater

from .base import Broker, Mailbox

RETRY_MAILBOX = "retry"


def send_mailbox(provider: str) -> str:
    """The name of the mailbox a provider's sender reads."""
    return f"send.{provider}"


class Router:
    """The mailboxes of one deployment, by purpose."""

    def __init__(self, broker: Broker, chain: tuple[str, ...]) -> None:
        if not chain:
            raise ValueError("the provider chain is empty")
        self.chain = chain
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

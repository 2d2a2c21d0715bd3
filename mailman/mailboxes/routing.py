"""The mailboxes of one deployment, by purpose: a sender's per provider, and the retry one."""

from __future__ import annotations

from collections.abc import Sequence

from mailman.config.parse import weighted_names
from mailman.core.chain import Chain
from mailman.core.messages import Dispatch, RetryLater

from .base import Broker, Mailbox

RETRY_MAILBOX = "retry"


def send_mailbox(provider: str) -> str:
    """The name of the mailbox a provider's sender reads."""
    return f"send.{provider}"


class Router:
    """The mailboxes of one deployment, by purpose, and the order each mail tries its
    providers in (``core.chain``: weights split first attempts)."""

    def __init__(
        self, broker: Broker, chain: tuple[str, ...], weights: tuple[int, ...] = ()
    ) -> None:
        if not chain:
            raise ValueError("the provider chain is empty")
        self.chain = chain
        self.routes = Chain(chain, weights)
        self.retry: Mailbox[RetryLater] = broker.mailbox(RETRY_MAILBOX, RetryLater)
        self.senders: dict[str, Mailbox[Dispatch]] = {
            name: broker.mailbox(send_mailbox(name), Dispatch) for name in chain
        }

    def inbox_of(self, provider: str) -> Mailbox[Dispatch]:
        return self.senders[provider]

    def order(self, mail_id: str, own: str | None = None) -> tuple[str, ...]:
        """The providers ``mail_id`` tries, in order: by its ``own`` chain as written (its
        tenant's), cut to the providers of this deployment, else by the deployment's."""
        if own is not None:
            try:
                pairs = weighted_names(own)
            except ValueError:  # checked when it was set: not from this version
                pairs = ()
            names = tuple(n for n, _ in pairs)
            mine = Chain(names, tuple(w for _, w in pairs)).keep(frozenset(self.chain))
            if mine.names:
                return mine.order(mail_id)
        return self.routes.order(mail_id)

    def chain_of(self, dispatch: Dispatch) -> tuple[str, ...]:
        """The providers ``dispatch``'s mail tries, in order (``hop`` indexes it)."""
        return dispatch.chain or self.chain

    def provider_of(self, dispatch: Dispatch) -> str:
        """The provider at ``dispatch``'s hop."""
        return self.chain_of(dispatch)[dispatch.hop]

    async def dispatch(self, dispatch: Dispatch) -> None:
        """Hand ``dispatch`` to the sender of the provider at its hop."""
        await self.senders[self.provider_of(dispatch)].put(dispatch)

    async def dispatch_many(self, dispatches: Sequence[Dispatch]) -> None:
        """Hand over a batch, one publish per mailbox; returns once every mailbox holds them."""
        by_provider: dict[str, list[Dispatch]] = {}
        for dispatch in dispatches:
            by_provider.setdefault(self.provider_of(dispatch), []).append(dispatch)
        for provider, batch in by_provider.items():
            await self.senders[provider].put_many(batch)

"""Mailboxes: how actors talk to each other.

A mailbox is a small interface (here) with two implementations: a bounded
in-process queue (``memory``) and a Kafka topic (``kafka``). Delivery is
at-least-once in both: a consumer acknowledges a message after its handler
succeeded; a message taken but not acknowledged when its subscription closes
is delivered again to the next subscriber. Handlers are therefore idempotent.

    async with mailbox.subscribe() as inbox:
        async for delivery in inbox:
            await handle(delivery.message)
            await delivery.ack()
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

M = TypeVar("M")


class Delivery(abc.ABC, Generic[M]):
    """One message taken from a mailbox, to be acknowledged once handled."""

    __slots__ = ("message",)

    def __init__(self, message: M) -> None:
        self.message = message

    @abc.abstractmethod
    async def ack(self) -> None:
        """The message is handled; it will not be delivered again."""


class Inbox(abc.ABC, Generic[M]):
    """A subscription's stream of deliveries."""

    @abc.abstractmethod
    async def get(self) -> Delivery[M]:
        """The next delivery; waits until there is one."""

    @abc.abstractmethod
    def get_nowait(self) -> Delivery[M] | None:
        """The next delivery if one is ready at once, else None (for batching)."""

    def __aiter__(self) -> AsyncIterator[Delivery[M]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery[M]]:
        while True:
            yield await self.get()


class Mailbox(abc.ABC, Generic[M]):
    """A named, typed channel with at-least-once delivery."""

    def __init__(self, name: str, kind: type[M]) -> None:
        self.name = name
        self.kind = kind

    @abc.abstractmethod
    async def put(self, message: M) -> None:
        """Hand a message over; returns once the mailbox holds it (waits while full)."""

    async def put_many(self, messages: Iterable[M]) -> None:
        """Hand several messages over, in order; the default puts them one by one."""
        for message in messages:
            await self.put(message)

    @abc.abstractmethod
    def subscribe(self) -> AbstractAsyncContextManager[Inbox[M]]:
        """Take messages from this mailbox until the context closes."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Broker(abc.ABC):
    """Makes the mailboxes of one deployment and owns their connections."""

    @abc.abstractmethod
    def mailbox(self, name: str, kind: type[M]) -> Mailbox[M]:
        """The mailbox called ``name`` (the same object for the same name)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; after this every mailbox may be used."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Disconnect. Idempotent."""

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise unless the broker answers now (``/readyz``); in-process mailboxes always do."""

    def may_come_up(self, exc: BaseException) -> bool:
        """Whether ``start()`` failing with ``exc`` may pass by waiting (the broker is not
        up yet), as start-up waits; not when someone must act first."""
        return isinstance(exc, OSError)

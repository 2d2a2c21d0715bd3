"""The in-process mailbox: a bounded queue per mailbox, for actors in one process."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .base import Broker, Delivery, Inbox, M, Mailbox

# --- in-process ------------------------------------------------------------


class MemoryMailbox(Mailbox[M]):
    """A bounded in-process queue; ``put`` waits while it is full."""

    def __init__(self, name: str, kind: type[M], capacity: int = 1000) -> None:
        super().__init__(name, kind)
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: collections.deque[M] = collections.deque()
        self._changed = asyncio.Condition()
        self._notifiers: set[asyncio.Task[None]] = set()

    def qsize(self) -> int:
        return len(self._items)

    async def put(self, message: M) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._items) < self.capacity)
            self._items.append(message)
            self._changed.notify_all()

    def _requeue(self, messages: list[M]) -> None:
        # Back at the front, in their order, even past capacity: they were
        # accepted once and must not be lost or wait behind newer ones.
        self._items.extendleft(reversed(messages))
        self._wake()

    def _wake(self) -> None:
        # Condition.notify needs the lock, which sync code cannot take: do it in a task.
        task = asyncio.get_running_loop().create_task(self._notify())
        self._notifiers.add(task)
        task.add_done_callback(self._notifiers.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Inbox[M]]:
        inbox = _MemoryInbox(self)
        try:
            yield inbox
        finally:
            inbox.close()


class _MemoryDelivery(Delivery[M]):
    __slots__ = ("_inbox",)

    def __init__(self, message: M, inbox: _MemoryInbox[M]) -> None:
        super().__init__(message)
        self._inbox = inbox

    async def ack(self) -> None:
        self._inbox.unacked.pop(id(self), None)


class _MemoryInbox(Inbox[M]):
    def __init__(self, mailbox: MemoryMailbox[M]) -> None:
        self.mailbox = mailbox
        self.unacked: dict[int, _MemoryDelivery[M]] = {}
        self.closed = False

    def _take(self) -> Delivery[M]:
        delivery = _MemoryDelivery(self.mailbox._items.popleft(), self)
        self.unacked[id(delivery)] = delivery
        return delivery

    async def get(self) -> Delivery[M]:
        if self.closed:
            raise RuntimeError(f"subscription to {self.mailbox.name} is closed")
        cond = self.mailbox._changed
        async with cond:
            await cond.wait_for(lambda: self.closed or bool(self.mailbox._items))
            if self.closed:
                raise RuntimeError(f"subscription to {self.mailbox.name} is closed")
            delivery = self._take()
            cond.notify_all()
            return delivery

    def get_nowait(self) -> Delivery[M] | None:
        box = self.mailbox
        if self.closed or not box._items:
            return None
        was_full = len(box._items) >= box.capacity
        delivery = self._take()
        if was_full:  # only then can a put be waiting for room
            box._wake()
        return delivery

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.mailbox._wake()  # a get still waiting on this subscription gives up
        pending = [d.message for d in self.unacked.values()]
        self.unacked.clear()
        if pending:
            self.mailbox._requeue(pending)


class MemoryBroker(Broker):
    """In-process mailboxes, for one process running every actor."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self._boxes: dict[str, MemoryMailbox[object]] = {}

    def mailbox(self, name: str, kind: type[M]) -> Mailbox[M]:
        box = self._boxes.get(name)
        if box is None:
            box = self._boxes[name] = MemoryMailbox(name, kind, self.capacity)
        elif box.kind is not kind:
            raise TypeError(f"mailbox {name} carries {box.kind.__name__}, not {kind.__name__}")
        return box  # type: ignore[return-value]

    def depths(self) -> dict[str, int]:
        """Messages waiting in each mailbox (taken but not yet acknowledged ones not counted)."""
        return {name: box.qsize() for name, box in self._boxes.items()}

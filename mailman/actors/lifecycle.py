"""One lifecycle for every actor.

``start()`` acquires what the actor needs and returns once it is ready (an
HTTP actor has bound its port); ``stop()`` is idempotent, asks the main loop
to end, waits for it and releases resources in ``finally``. An actor is also
an async context manager. ``wait()`` returns when the main loop ends and
raises what it raised, which is how the supervisor sees a crash.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog

from mailman.mailboxes import Delivery, Inbox, Mailbox
from mailman.retry import Backoff, retrying

M = TypeVar("M")
T = TypeVar("T")

log = structlog.get_logger("mailman.actor")

#: Waits after a store call failed for an outage: 0.05 s, doubling up to 5 s, until it works.
OUTAGE_BACKOFF = Backoff(first=0.05, cap=5.0)


def owner_name() -> str:
    """A name for a lease holder (a relay, a notifier) that no other process has: host,
    pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Actor(abc.ABC):
    """Base class: subclasses write ``run`` and may override ``setup``/``teardown``."""

    #: Seconds ``stop`` lets the main loop wind down before cancelling it.
    stop_timeout: float = 10.0
    #: Whether ``run`` reads a mailbox through ``subscribed``: then the actor takes
    #: work (``taking``) once that subscription is open, not when it starts.
    subscribes: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._stop_waiter: asyncio.Future[Any] | None = None
        #: Set once the actor takes work: when it started, or, for one that reads a
        #: mailbox, once its subscription is open (a Kafka group join takes a while).
        self.taking = asyncio.Event()

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources; runs in ``start`` before the main loop."""

    @abc.abstractmethod
    async def run(self) -> None:
        """The main loop. Return promptly once ``self.stopping`` is set."""

    async def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release resources; runs in ``stop`` after the main loop ended, even on error."""

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"actor {self.name} was already started")
        try:
            await self.setup()
        except BaseException:
            await self.teardown()
            raise
        self._task = asyncio.create_task(self.run(), name=f"actor:{self.name}")
        if not self.subscribes:
            self.taking.set()
        log.debug("actor.started", actor=self.name)

    async def stop(self) -> None:
        """Ask the main loop to end, wait for it (then cancel it), release resources."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        task = self._task
        try:
            if task is not None and not task.done():
                done, _ = await asyncio.wait({task}, timeout=self.stop_timeout)
                if not done:
                    log.warning("actor.stop_timeout", actor=self.name, seconds=self.stop_timeout)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if task is not None and task.done() and not task.cancelled():
                task.exception()  # retrieved: whoever cares (the supervisor) saw it via wait()
        finally:
            if self._stop_waiter is not None:
                self._stop_waiter.cancel()
            await self.teardown()
            log.debug("actor.stopped", actor=self.name)

    @contextlib.asynccontextmanager
    async def subscribed(self, mailbox: Mailbox[M]) -> AsyncIterator[Inbox[M]]:
        """``mailbox.subscribe()``, setting ``taking`` once the subscription is open."""
        async with mailbox.subscribe() as inbox:
            self.taking.set()
            yield inbox

    async def until_taking(self) -> None:
        """Return once the actor takes work, or its main loop ended (``wait`` says why)."""
        if self._task is None or self.taking.is_set():
            return
        taking = asyncio.ensure_future(self.taking.wait())
        try:
            await asyncio.wait({taking, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            taking.cancel()

    async def receive(self, inbox: Inbox[M]) -> Delivery[M] | None:
        """The next delivery from ``inbox``, or None once the actor is stopping."""
        if self.stopping.is_set():
            return None
        ready = inbox.get_nowait()  # under load there is one: no task, no wait
        if ready is not None:
            return ready
        if self._stop_waiter is None:
            self._stop_waiter = asyncio.ensure_future(self.stopping.wait())
        getter: asyncio.Future[Any] = asyncio.ensure_future(inbox.get())
        try:
            await asyncio.wait({getter, self._stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            getter.cancel()  # else it would outlive us and take a message nobody handles
            raise
        if getter.done():
            delivery: Delivery[M] = getter.result()
            return delivery
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getter
        return None

    async def rest(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the actor is asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def through_outage(
        self,
        unavailable: tuple[type[BaseException], ...],
        operation: Callable[[], Awaitable[T]],
        what: str,
    ) -> T:
        """``operation()``, tried again while it fails with one of ``unavailable`` (the
        store's "cannot reach the database" errors).

        An outage is waited out with a backoff (``OUTAGE_BACKOFF``; each wait is one
        ``store.waiting`` warning), not crashed through: a crash would spend the
        supervisor's restart budget, and a long outage would end the process.
        Once the actor is stopping, the error is raised (a wait ends at once).
        """
        return await retrying(
            operation,
            on=unavailable,
            backoff=OUTAGE_BACKOFF,
            stop=self.stopping,
            event="store.waiting",
            logger=log,
            actor=self.name,
            operation=what,
        )

    async def wait(self) -> None:
        """Until the main loop ends; re-raises its exception."""
        if self._task is None:
            raise RuntimeError(f"actor {self.name} was not started")
        await asyncio.shield(self._task)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

"""Store calls from the API: bounded in time, and an unreachable store is a 503, not a 500.

Each call's deadline is watched the way ``asyncio.timeout`` watches one (its task
cancelled when it passes, the cancellation taken back and turned into a timeout
when it was ours alone), but not with a context and a timer of its own: the
calls of one event loop given the same ``within`` reach their deadlines in the
order they began, so one deque and one timer at the oldest waiting call's
deadline watch them all. py-spy put ``asyncio.timeout`` (its context, its
reschedule and its timer) and the generator that told the store about it at 5 %
of the accepting event loop's samples; a call now costs an append.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable
from typing import Any, TypeVar

from mailman.store import OutcomeUnknown, Store, StoreUnavailable, giving_up_by

T = TypeVar("T")


class _Call:
    """One guarded call: its task (None once it ended) and its deadline (loop time)."""

    __slots__ = ("at", "cancelling", "expiring", "task")

    def __init__(self, task: asyncio.Task[Any], at: float) -> None:
        self.task: asyncio.Task[Any] | None = task
        self.at = at
        #: The task's cancellations pending when the call began (``asyncio.Timeout``'s rule).
        self.cancelling = task.cancelling()
        #: Its deadline passed while it waited, and its task was cancelled for that.
        self.expiring = False

    def expired(self) -> bool:
        """Whether its deadline passed while it waited (``store.timed_out`` reads it)."""
        return self.expiring

    def end(self) -> bool:
        """The call ended: take back the cancellation its deadline made, if it made one;
        whether that cancellation was the task's only one (then it is a timeout)."""
        task, self.task = self.task, None
        if not self.expiring or task is None:
            return False
        return task.uncancel() <= self.cancelling


class _Watch:
    """The waiting guarded calls of one loop given one ``within``, oldest first, and
    the time of the one timer that watches them (None: no timer, no call waiting)."""

    __slots__ = ("calls", "due", "within")

    def __init__(self, within: float) -> None:
        self.within = within
        self.calls: deque[_Call] = deque()
        self.due: float | None = None

    def begin(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> _Call:
        calls = self.calls
        while calls and calls[0].task is None:  # ended: no longer watched
            calls.popleft()
        call = _Call(task, loop.time() + self.within)
        calls.append(call)
        if self.due is None:
            self.due = call.at
            loop.call_at(call.at, self._fire, loop)
        return call

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel every waiting call whose deadline passed; the timer for the next one."""
        due, self.due = self.due, None
        now = loop.time() if due is None else max(loop.time(), due)
        calls = self.calls
        while calls:
            call = calls[0]
            task = call.task
            if task is None:
                calls.popleft()
            elif call.at > now:
                self.due = call.at
                loop.call_at(call.at, self._fire, loop)
                return
            else:
                calls.popleft()
                call.expiring = True
                task.cancel()


#: Per running loop, its watches by ``within``. Weak: a closed loop's go with it (a
#: waiting call holds its task, and so the loop, only until it ends).
_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Watch]] = (
    weakref.WeakKeyDictionary()
)


class _Last:
    """The loop ``_watch`` was last asked about, and its watches: a process serves on one
    loop, and a ``WeakKeyDictionary`` lookup is a Python call and a new weak reference.
    The loop is held weakly here too."""

    __slots__ = ("loop", "watches")

    def __init__(self) -> None:
        self.loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self.watches: dict[float, _Watch] = {}


_LAST = _Last()


def _watch(loop: asyncio.AbstractEventLoop, within: float) -> _Watch:
    last = _LAST
    if last.loop is not None and last.loop() is loop:
        watches = last.watches
    else:
        known = _WATCHES.get(loop)
        if known is None:
            known = _WATCHES[loop] = {}
        watches = known
        last.loop, last.watches = weakref.ref(loop), watches
    watch = watches.get(within)
    if watch is None:
        watch = watches[within] = _Watch(within)
    return watch


async def guarded(store: Store, within: float, operation: Awaitable[T]) -> T:
    """``operation``'s result; ``StoreUnavailable`` if the store is unreachable or slower
    than ``within`` seconds (the error middleware answers 503 with ``Retry-After``).

    ``StoreUnavailable`` means nothing was changed: a timeout abandons an operation the
    store has not started (it is never run later), and one it has started is waited
    for past ``within``. ``OutcomeUnknown`` (a commit whose answer was lost) passes
    through as itself: it does not say nothing was changed.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # a coroutine the loop runs: in a task
    call = _watch(loop, within).begin(loop, task)
    try:
        with giving_up_by(call):
            return await operation
    except asyncio.CancelledError:
        if call.end():  # the deadline's cancellation, and no other
            raise StoreUnavailable(f"the store did not answer within {within:g} s") from None
        raise
    except TimeoutError:  # a driver's own
        raise StoreUnavailable(f"the store did not answer within {within:g} s") from None
    except OutcomeUnknown:
        raise
    except store.unavailable as exc:
        # The type only: a driver's message may name hosts or users.
        raise StoreUnavailable(f"the store is unreachable ({type(exc).__name__})") from None
    finally:
        call.end()  # a deadline that passed as the call ended otherwise: its cancellation back

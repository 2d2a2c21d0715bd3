"""``intake.guard.guarded``: each store call's deadline, watched by one timer per loop."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from mailman.intake.guard import guarded
from mailman.store import Store, StoreUnavailable


class _Unreachable:
    """What ``guarded`` reads of a store: the errors that say it cannot be reached."""

    unavailable = (ConnectionRefusedError,)


STORE = cast(Store, _Unreachable())
#: How early a loop may run a timer (uvloop's are whole milliseconds).
EARLY = 0.002


def _never() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


async def test_a_call_past_its_deadline_is_unavailable_and_its_task_goes_on() -> None:
    """No answer within the deadline: StoreUnavailable, not before it, and the task is
    not left cancelled (it awaits again)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.05 s"):
        await guarded(STORE, 0.05, _never())
    assert loop.time() - began >= 0.05 - EARLY
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)


async def test_each_call_keeps_its_own_deadline() -> None:
    """Calls with different deadlines time out in their order, and a call answered in
    time gets its answer while a later one still times out."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    ended: list[tuple[str, float]] = []

    async def call(name: str, within: float, answer: asyncio.Future[str]) -> None:
        try:
            ended.append((await guarded(STORE, within, answer), loop.time() - began))
        except StoreUnavailable:
            ended.append((name, loop.time() - began))

    answered = _never()
    calls = [
        asyncio.create_task(call("slow", 0.3, _never())),
        asyncio.create_task(call("quick", 0.05, _never())),
        asyncio.create_task(call("first", 0.1, answered)),
        asyncio.create_task(call("after", 0.1, _never())),
    ]
    await asyncio.sleep(0)
    answered.set_result("answered")
    await asyncio.gather(*calls)
    assert [name for name, _ in ended] == ["answered", "quick", "after", "slow"]
    at = dict(ended)
    assert at["quick"] >= 0.05 - EARLY and at["after"] >= 0.1 - EARLY
    assert at["slow"] >= 0.3 - EARLY


async def test_a_cancel_from_outside_is_a_cancel() -> None:
    """A task cancelled from outside while its call waits ends cancelled, not with a
    StoreUnavailable that would say the store failed."""
    task = asyncio.create_task(guarded(STORE, 10, _never()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_unreachable_store_is_unavailable_by_its_type_alone() -> None:
    """The driver's error becomes StoreUnavailable naming its type, not its message."""

    async def refused() -> None:
        raise ConnectionRefusedError("root:secret@db.internal")

    with pytest.raises(StoreUnavailable) as caught:
        await guarded(STORE, 1, refused())
    assert "ConnectionRefusedError" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_each_loop_in_turn_watches_its_own_calls() -> None:
    """Calls with the same deadline on two loops, one loop after the other: each times
    out on its own loop's timer, while the other loop's call still waits (the watches
    remembered for the last loop are never another loop's)."""
    within = 0.05

    async def times_out() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        async with asyncio.timeout(5):  # a call left unwatched would wait forever
            with pytest.raises(StoreUnavailable):
                await guarded(STORE, within, _never())
        return loop.time() - began

    async def begin_waiting() -> asyncio.Task[Any]:
        waiting = asyncio.create_task(guarded(STORE, within, _never()))
        await asyncio.sleep(0)  # it begins: its loop's watch now has a timer set
        return waiting

    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        waiting = first.run_until_complete(begin_waiting())
        assert second.run_until_complete(times_out()) >= within - EARLY
        with pytest.raises(StoreUnavailable):
            first.run_until_complete(waiting)
        assert second.run_until_complete(times_out()) >= within - EARLY
    finally:
        first.close()
        second.close()
    assert asyncio.run(times_out()) >= within - EARLY

"""A sender's pace (``actors.pace``): turns evenly spaced, on a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest

from mailman.actors.pace import Pace


class Clock:
    """Seconds that move only when a turn sleeps (as if the sleep took that long)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def paced(per_second: float) -> tuple[Pace, Clock]:
    clock = Clock()
    return Pace(per_second, clock=clock, sleep=clock.sleep), clock


async def test_the_first_turn_is_at_once_and_the_next_ones_evenly_spaced() -> None:
    """At 4 a second: the first turn waits for nothing, each next one a quarter second
    after the one before."""
    pace, clock = paced(4)
    taken = []
    for _ in range(5):
        await pace.turn()
        taken.append(clock.now - 100.0)
    assert taken == [0.0, 0.25, 0.5, 0.75, 1.0]


async def test_a_late_caller_does_not_make_up_for_lost_turns() -> None:
    """After a quiet spell the next turn is at once, and the one after it a whole
    interval later: no burst of saved turns."""
    pace, clock = paced(2)
    await pace.turn()
    clock.now += 10.0
    await pace.turn()
    await pace.turn()
    assert clock.slept == [0.5]


async def test_a_turn_cancelled_while_waiting_is_spent() -> None:
    """A caller cancelled in its wait does not give its turn to the next caller early:
    the next one waits for the turn after it."""
    clock = Clock()
    never = asyncio.Event()

    async def sleep(seconds: float) -> None:
        clock.slept.append(seconds)
        await never.wait()

    pace = Pace(10, clock=clock, sleep=sleep)
    await pace.turn()  # at once
    waiting = asyncio.create_task(pace.turn())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    following = asyncio.create_task(pace.turn())
    await asyncio.sleep(0)
    following.cancel()
    with pytest.raises(asyncio.CancelledError):
        await following
    assert clock.slept == [pytest.approx(0.1), pytest.approx(0.2)]


def test_a_rate_of_zero_is_refused() -> None:
    """A pace needs a rate above 0."""
    with pytest.raises(ValueError, match="above 0"):
        Pace(0)

"""The rules of a sender's adaptive concurrency (``actors.limiter``), on a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest

from mailman.actors.limiter import (
    BEST_OF,
    CALM_SECONDS,
    LOG_SECONDS,
    P50_SECONDS,
    RING,
    SIZED_FOR_MAILS_S,
    SMALL_MAIL_BYTES,
    Answer,
    Change,
    Limiter,
    answer_of,
)
from mailman.providers import (
    Accepted,
    Misconfigured,
    Rejected,
    Transient,
    Unknown,
    classify,
)
from mailman.providers.ses import result_of

GOOD, LIMITED, UNWELL = Answer.GOOD, Answer.RATE_LIMITED, Answer.UNWELL
#: Seconds after which a wait that should end at once fails the test instead of hanging.
HANG = 5.0


class Clock:
    """Seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(ceiling: int = 64, *, adaptive: bool = True) -> tuple[Limiter, Clock]:
    clock = Clock()
    return Limiter(ceiling, adaptive=adaptive, clock=clock), clock


def above(start: int = 4, ceiling: int = 64) -> tuple[Limiter, Clock]:
    """A limiter with room above its start."""
    clock = Clock()
    return Limiter(ceiling, start=start, clock=clock), clock


async def fill(slots: Limiter) -> None:
    """Every slot of the current limit in use."""
    while slots.in_flight < slots.limit:
        await slots.acquire()


async def busy_answers(slots: Limiter, clock: Clock, count: int, seconds: float = 0.1) -> None:
    """``count`` good answers, each to a call sent ``seconds`` before, with every slot in
    use (a backlog waits)."""
    for _ in range(count):
        await fill(slots)
        answers(slots, clock, 1, seconds)


def answers(slots: Limiter, clock: Clock, count: int, seconds: float = 0.1) -> None:
    """``count`` good answers, each to a call sent ``seconds`` before."""
    for _ in range(count):
        clock.now += 0.001
        slots.observe(clock.now - seconds, GOOD)


def test_the_limit_starts_at_the_ceiling() -> None:
    """A new limiter lets the whole configured concurrency in at once."""
    slots, _ = limiter(64)
    assert slots.limit == 64


def test_a_burst_of_429s_from_calls_in_flight_halves_once() -> None:
    """Every 429 answering a call sent before the halving is the same burst: one halving;
    a 429 to a call sent after it halves again."""
    slots, clock = limiter(64)
    sent = clock.now
    clock.now += 0.2
    for _ in range(60):
        slots.observe(sent, LIMITED)
    assert slots.limit == 32
    later = clock.now + 0.01
    clock.now += 0.2
    slots.observe(later, LIMITED)
    assert slots.limit == 16


def test_a_5xx_or_timeout_halves_like_a_429() -> None:
    """An unwell answer (5xx, no connection, timeout) halves the limit too."""
    slots, clock = limiter(10)
    slots.observe(clock.now - 1, UNWELL)
    assert slots.limit == 5


def test_the_limit_never_falls_below_one() -> None:
    """Halving after halving ends at 1 and stays there."""
    slots, clock = limiter(8)
    for _ in range(10):
        clock.now += 1
        slots.observe(clock.now - 0.1, LIMITED)
    assert slots.limit == 1


def test_it_grows_by_one_per_limit_good_answers() -> None:
    """After a halving the limit grows by one once ``limit`` good answers came, about one
    per round trip."""
    slots, clock = limiter(64)
    slots.observe(clock.now - 0.1, LIMITED)
    assert slots.limit == 32
    answers(slots, clock, 31)
    assert slots.limit == 32
    answers(slots, clock, 1)
    assert slots.limit == 33
    answers(slots, clock, 32)
    assert slots.limit == 33
    answers(slots, clock, 1)
    assert slots.limit == 34


def test_a_bad_answer_starts_the_count_to_growing_again() -> None:
    """A 429 from the burst already counted does not halve again, but the good answers
    before it no longer count towards growing."""
    slots, clock = limiter(64)
    burst = clock.now - 0.1
    slots.observe(burst, LIMITED)
    answers(slots, clock, 31)
    slots.observe(burst, LIMITED)
    assert slots.limit == 32
    answers(slots, clock, 31)
    assert slots.limit == 32
    answers(slots, clock, 1)
    assert slots.limit == 33


def test_it_does_not_grow_while_answers_slow_down() -> None:
    """With the recent p50 above twice the best recent one, good answers do not grow the
    limit; once answers are as fast as before again, it grows."""
    slots, clock = limiter(64)
    slots.observe(clock.now - 0.1, LIMITED)
    answers(slots, clock, RING, seconds=0.1)  # the best p50: 100 ms
    limit = slots.limit
    for _ in range(4):
        clock.now += P50_SECONDS
        answers(slots, clock, RING, seconds=0.5)  # p50 now 500 ms
    assert slots.limit == limit
    clock.now += P50_SECONDS
    answers(slots, clock, RING, seconds=0.1)
    clock.now += P50_SECONDS
    answers(slots, clock, slots.limit, seconds=0.1)
    assert slots.limit == limit + 1


def test_slow_answers_become_the_norm_once_the_fast_ones_are_old() -> None:
    """The best p50 is a recent one: after ``BEST_OF`` readings of slower answers they
    are the norm, and the limit grows again."""
    slots, clock = limiter(64)
    slots.observe(clock.now - 0.1, LIMITED)
    answers(slots, clock, RING, seconds=0.1)
    for _ in range(BEST_OF + 1):
        clock.now += P50_SECONDS
        answers(slots, clock, RING, seconds=0.5)
    clock.now += P50_SECONDS
    limit = slots.limit
    answers(slots, clock, limit, seconds=0.5)
    assert slots.limit == limit + 1


def test_it_never_grows_past_the_ceiling() -> None:
    """Good answers at the ceiling leave it there."""
    slots, clock = limiter(4)
    answers(slots, clock, 100)
    assert slots.limit == 4
    slots.observe(clock.now - 0.05, LIMITED)
    answers(slots, clock, 100)
    assert slots.limit == 4


def test_off_it_stays_at_the_ceiling() -> None:
    """``adaptive=False``: 429s change nothing."""
    slots, clock = limiter(16, adaptive=False)
    for _ in range(5):
        clock.now += 1
        slots.observe(clock.now - 0.1, LIMITED)
    assert slots.limit == 16


def test_a_change_is_logged_at_most_once_a_second() -> None:
    """The first move is a Change to log; moves within ``LOG_SECONDS`` of it are not, and
    ``unlogged`` gives them as one Change from the last one logged; a move a second later
    is one again."""
    slots, clock = limiter(64)
    clock.now += 0.1
    assert slots.observe(clock.now - 0.1, LIMITED) == Change(64, 32, "rate_limited")
    clock.now += 0.1
    assert slots.observe(clock.now - 0.05, UNWELL) is None
    assert slots.limit == 16
    assert slots.unlogged() == Change(32, 16, "unwell")
    assert slots.unlogged() is None
    clock.now += LOG_SECONDS
    answers(slots, clock, 15)
    assert slots.observe(clock.now - 0.1, GOOD) == Change(16, 17, "growing")


async def test_calls_in_flight_above_a_lowered_limit_finish_and_new_ones_wait() -> None:
    """Halving below the calls in flight takes no slot back: a new call waits until fewer
    than the new limit are in flight, then goes."""
    slots, clock = limiter(8)
    for _ in range(8):
        await slots.acquire()
    slots.observe(clock.now - 0.1, LIMITED)
    assert slots.limit == 4
    waiting = asyncio.create_task(slots.acquire())
    for _ in range(4):
        slots.release()
    await asyncio.sleep(0)
    assert not waiting.done() and slots.in_flight == 4
    slots.release()
    async with asyncio.timeout(HANG):
        await waiting
    assert slots.in_flight == 4


async def test_growing_wakes_a_waiting_call() -> None:
    """A call waiting for a slot goes as soon as the limit grows by one."""
    slots, clock = limiter(2)
    slots.observe(clock.now - 0.1, LIMITED)
    await slots.acquire()
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    answers(slots, clock, 1)
    async with asyncio.timeout(HANG):
        await waiting
    assert (slots.limit, slots.in_flight) == (2, 2)


async def test_a_call_woken_then_cancelled_passes_its_slot_on() -> None:
    """A waiting call given a slot but cancelled before it took it hands the slot to the
    next waiting call: no slot is lost."""
    slots, _ = limiter(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # wakes the first
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(HANG):
        await second
    assert slots.in_flight == 1


def test_what_each_result_says_about_load() -> None:
    """A 429 (and SES throttling at any status) is rate limited; a 5xx, no connection or no
    answer is unwell; taken or refused mail is a good answer; a wrong key says nothing."""
    assert answer_of(classify(429, "slow down", "1")) is Answer.RATE_LIMITED
    assert answer_of(result_of(400, "Throttling", "Maximum sending rate exceeded.", None)) is (
        Answer.RATE_LIMITED
    )
    assert answer_of(classify(503, "down")) is Answer.UNWELL
    assert answer_of(Transient("connection error: refused")) is Answer.UNWELL
    assert answer_of(Unknown("timeout")) is Answer.UNWELL
    assert answer_of(Accepted("id")) is Answer.GOOD
    assert answer_of(Rejected("bad address", 422)) is Answer.GOOD
    assert answer_of(Misconfigured("bad key", 401)) is Answer.NEUTRAL


def test_a_start_above_the_ceiling_is_refused() -> None:
    """The start lies between 1 and the ceiling."""
    with pytest.raises(ValueError, match="start"):
        Limiter(8, start=9)
    with pytest.raises(ValueError, match="start"):
        Limiter(8, start=0)


def test_it_starts_at_its_start_below_the_ceiling() -> None:
    """Given a start, the first calls get that many slots, not the ceiling."""
    slots, _ = above(start=4, ceiling=64)
    assert (slots.limit, slots.ceiling) == (4, 64)


def test_above_its_start_it_grows_only_while_every_slot_is_in_use() -> None:
    """Good answers with slots to spare (no backlog waiting) leave the limit at its start."""
    slots, clock = above(start=4, ceiling=64)
    answers(slots, clock, 100)
    assert slots.limit == 4


async def test_with_every_slot_in_use_it_doubles_per_round_trip_up_to_the_ceiling() -> None:
    """While calm and busy, each good answer adds a slot: ``limit`` answers (a round trip)
    double it; it stops at the ceiling."""
    slots, clock = above(start=4, ceiling=64)
    await busy_answers(slots, clock, 4)
    assert slots.limit == 8
    await busy_answers(slots, clock, 8)
    assert slots.limit == 16
    await busy_answers(slots, clock, 200)
    assert slots.limit == 64


async def test_above_its_start_it_grows_no_further_than_the_rate_it_is_sized_for() -> None:
    """A provider answering in 10 ms gets no call above the start (256 calls at 10 ms are
    far more than ``SIZED_FOR_MAILS_S``); one answering in 100 ms grows to about
    ``SIZED_FOR_MAILS_S`` x 0.1 s and stops there."""
    fast, clock = above(start=16, ceiling=2048)
    await busy_answers(fast, clock, 300, seconds=0.001)
    assert fast.limit == 16
    slow, clock = above(start=16, ceiling=2048)
    await busy_answers(slow, clock, 3000, seconds=0.1)
    sized = SIZED_FOR_MAILS_S * 0.1
    assert sized <= slow.limit <= sized + 1


async def test_above_its_start_after_a_bad_answer_it_grows_by_one_per_round_trip() -> None:
    """A halving that leaves the limit above its start makes growth additive again (one
    per ``limit`` answers) until no bad answer came for ``CALM_SECONDS``."""
    slots, clock = above(start=4, ceiling=64)
    await busy_answers(slots, clock, 28)
    assert slots.limit == 32
    slots.observe(clock.now - 0.1, LIMITED)
    assert slots.limit == 16
    for _ in range(16):
        slots.release()  # the 32 calls end, 16 may go again
    await busy_answers(slots, clock, 15)
    assert slots.limit == 16
    await busy_answers(slots, clock, 1)
    assert slots.limit == 17
    clock.now += CALM_SECONDS
    await busy_answers(slots, clock, 3)
    assert slots.limit == 20


async def test_a_large_mail_brings_the_limit_back_to_its_start() -> None:
    """A mail over ``SMALL_MAIL_BYTES`` takes the limit back to its start at once (a
    Change to log); it grows above it again only after ``RING`` small mails."""
    slots, clock = above(start=4, ceiling=64)
    await busy_answers(slots, clock, 12)
    assert slots.limit == 16
    assert slots.sized(SMALL_MAIL_BYTES) is None
    clock.now += LOG_SECONDS
    change = slots.sized(SMALL_MAIL_BYTES + 1)
    assert change is not None and (change.new, change.why) == (4, "large_mails")
    assert slots.limit == 4
    for _ in range(12):
        slots.release()
    await busy_answers(slots, clock, 10)
    assert slots.limit == 4
    for _ in range(RING):
        slots.sized(100)
    await busy_answers(slots, clock, 4)
    assert slots.limit == 8


async def test_a_large_mail_at_or_below_the_start_changes_nothing() -> None:
    """Sizes matter only above the start: below it a large mail leaves the limit."""
    slots, clock = above(start=8, ceiling=64)
    slots.observe(clock.now - 0.1, LIMITED)
    assert slots.limit == 4
    assert slots.sized(10 * SMALL_MAIL_BYTES) is None
    assert slots.limit == 4


async def test_off_it_stays_at_its_start() -> None:
    """``adaptive=False``: a busy sender with room above its start stays at its start."""
    clock = Clock()
    slots = Limiter(64, start=8, adaptive=False, clock=clock)
    await busy_answers(slots, clock, 100)
    assert slots.limit == 8

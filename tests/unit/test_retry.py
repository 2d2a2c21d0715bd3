"""The one retry helper (mailman.retry, on stamina): its schedule, its log line, stop and wake.

Real time throughout (stamina's testing mode is not used): the waits are short
where they are waited out, and long where a test shows that something ends them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import MutableMapping, Sequence
from typing import Any

import prometheus_client
import pytest
import stamina
from structlog.testing import capture_logs

from mailman.core.backoff import capped_exponential
from mailman.retry import Backoff, log_retry, retrying

#: A wait no test may sit out: a test that ends quickly shows something cut it short.
LONG = Backoff(first=30.0, cap=30.0)


class Flaky:
    """An operation that fails with ``error`` its first ``failures`` times, then answers."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.raised: list[Exception] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            exc = self.error(f"down (try {self.calls}) with password s3cret")
            self.raised.append(exc)
            raise exc
        return "done"


def retries(
    logs: Sequence[MutableMapping[str, Any]], event: str = "thing.waiting"
) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


async def test_a_call_that_works_is_made_once_and_logs_nothing() -> None:
    """No failure: one call, its answer, no retry line."""
    flaky = Flaky(0)
    with capture_logs() as logs:
        answer = await retrying(flaky, on=ConnectionError, backoff=LONG, event="thing.waiting")
    assert (answer, flaky.calls, logs) == ("done", 1, [])


async def test_retries_wait_the_capped_doubling_schedule_and_log_each_retry_once() -> None:
    """Four failures: four waits of first, 2 x first, then the cap, each one warning naming
    what is retried, the attempt, the wait and the error's type (never its text)."""
    backoff = Backoff(first=0.01, cap=0.03)
    flaky = Flaky(4)
    started = time.monotonic()
    with capture_logs() as logs:
        answer = await retrying(
            flaky, on=ConnectionError, backoff=backoff, event="thing.waiting", thing="db"
        )
    took = time.monotonic() - started
    assert (answer, flaky.calls) == ("done", 5)
    waits = [round(capped_exponential(0.01, 0.03, n), 3) for n in (1, 2, 3, 4)]
    assert waits == [0.01, 0.02, 0.03, 0.03]
    assert retries(logs) == [
        {
            "event": "thing.waiting",
            "log_level": "warning",
            "thing": "db",
            "attempt": n,
            "retry_in": wait,
            "error": "ConnectionError",
        }
        for n, wait in zip((1, 2, 3, 4), waits, strict=True)
    ]
    assert len(logs) == 4
    assert "s3cret" not in repr(logs)
    assert took >= sum(waits) * 0.9  # waited for real


async def test_an_error_it_does_not_name_is_raised_at_once() -> None:
    """Only the named errors are retried; any other is raised on the first try."""
    flaky = Flaky(3, error=ValueError)
    with capture_logs() as logs, pytest.raises(ValueError) as raised:
        await retrying(flaky, on=(ConnectionError, OSError), backoff=LONG, event="thing.waiting")
    assert raised.value is flaky.raised[0]
    assert (flaky.calls, logs) == (1, [])


async def test_a_test_of_the_error_decides_what_is_retried() -> None:
    """``on`` may be a test of the error: False raises it at once."""
    flaky = Flaky(2)
    backoff = Backoff(first=0.001, cap=0.001)
    assert await retrying(flaky, on=lambda exc: True, backoff=backoff, event="x") == "done"
    refused = Flaky(2)
    with pytest.raises(ConnectionError):
        await retrying(refused, on=lambda exc: False, backoff=backoff, event="x")
    assert (flaky.calls, refused.calls) == (3, 1)


async def test_attempts_bound_the_tries_and_the_last_failure_is_raised() -> None:
    """With attempts=3: three tries, two retry lines, and the third failure raised."""
    flaky = Flaky(10)
    backoff = Backoff(first=0.001, cap=0.01, attempts=3)
    with capture_logs() as logs, pytest.raises(ConnectionError) as raised:
        await retrying(flaky, on=ConnectionError, backoff=backoff, event="thing.waiting")
    assert flaky.calls == 3
    assert raised.value is flaky.raised[-1]
    assert [entry["attempt"] for entry in retries(logs)] == [1, 2]


async def test_stop_ends_a_wait_at_once_and_raises_the_last_failure() -> None:
    """A stop during a (30 s) wait ends it: no further try, the failure is raised."""
    stop = asyncio.Event()
    flaky = Flaky(10)

    async def failing_then_stopped() -> str:
        asyncio.get_running_loop().call_soon(stop.set)  # once the wait has begun
        return await flaky()

    with capture_logs() as logs, pytest.raises(ConnectionError) as raised:
        async with asyncio.timeout(5):
            await retrying(
                failing_then_stopped,
                on=ConnectionError,
                backoff=LONG,
                stop=stop,
                event="thing.waiting",
            )
    assert flaky.calls == 1
    assert raised.value is flaky.raised[0]
    assert [entry["retry_in"] for entry in retries(logs)] == [30.0]  # the wait had begun


async def test_a_failure_while_stopping_is_not_retried() -> None:
    """Once ``stop`` is set, a failure is raised without a wait."""
    stop = asyncio.Event()
    stop.set()
    flaky = Flaky(10)
    with capture_logs() as logs, pytest.raises(ConnectionError):
        await retrying(flaky, on=ConnectionError, backoff=LONG, stop=stop, event="thing.waiting")
    assert (flaky.calls, logs) == (1, [])


async def test_wake_ends_a_wait_and_the_next_try_counts_afresh() -> None:
    """A wake during a (30 s) wait ends it: the operation is tried at once, and its
    failure starts the count again (attempt 1)."""
    wake = asyncio.Event()
    flaky = Flaky(2)

    async def woken_while_failing() -> str:
        wake.clear()  # as the relay does when it starts a round
        if flaky.calls < flaky.failures:
            asyncio.get_running_loop().call_soon(wake.set)
        return await flaky()

    with capture_logs() as logs:
        async with asyncio.timeout(5):
            answer = await retrying(
                woken_while_failing,
                on=ConnectionError,
                backoff=LONG,
                wake=wake,
                event="thing.waiting",
            )
    assert (answer, flaky.calls) == ("done", 3)
    assert [entry["attempt"] for entry in retries(logs)] == [1, 1]


async def test_cancelling_the_caller_during_a_wait_cancels_it() -> None:
    """A caller cancelled while it waits is cancelled at once (the wait does not hold it)."""
    stop = asyncio.Event()
    flaky = Flaky(10)

    async def failing_then_cancelled() -> str:
        me = asyncio.current_task()
        assert me is not None
        asyncio.get_running_loop().call_soon(me.cancel)  # once the wait has begun
        return await flaky()

    task = asyncio.create_task(
        retrying(
            failing_then_cancelled,
            on=ConnectionError,
            backoff=LONG,
            stop=stop,
            event="thing.waiting",
        )
    )
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert flaky.calls == 1


async def test_a_caller_may_describe_the_error_and_name_its_logger() -> None:
    """``describe`` writes the error (here in full); ``logger`` writes the line."""
    flaky = Flaky(1)
    with capture_logs() as logs:
        await retrying(
            flaky,
            on=ConnectionError,
            backoff=Backoff(first=0.001, cap=0.001),
            event="thing.waiting",
            describe=repr,
        )
    (entry,) = retries(logs)
    assert entry["error"] == repr(flaky.raised[0])


async def test_any_other_stamina_retry_logs_one_line_and_no_metric() -> None:
    """stamina's hooks are this module's one hook: a stamina retry outside ``retrying``
    logs ``retry.scheduled`` naming the callable, and no stamina series reaches /metrics."""
    assert stamina.instrumentation.get_on_retry_hooks() == (log_retry,)
    calls = 0

    @stamina.retry(on=ConnectionError, attempts=2, wait_initial=0.001, wait_jitter=0)
    async def fetch_token() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("token s3cret")
        return calls

    with capture_logs() as logs:
        assert await fetch_token() == 2
    assert logs == [
        {
            "event": "retry.scheduled",
            "log_level": "warning",
            "what": f"{__name__}.{fetch_token.__qualname__}",
            "attempt": 1,
            "retry_in": 0.001,
            "error": "ConnectionError",
        }
    ]
    exposed = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "stamina" not in exposed


def test_capped_exponential_doubles_from_the_first_wait_up_to_the_cap() -> None:
    """The one schedule: first, 2 x first, 4 x first... never past the cap, however far."""
    assert [capped_exponential(0.05, 5.0, n) for n in range(0, 10)] == [
        0.05,
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        5.0,
        5.0,
    ]
    assert capped_exponential(0.05, 5.0, 10_000) == 5.0
    assert capped_exponential(1.0, math.inf, 4) == 8.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first": -1.0, "cap": 1.0},
        {"first": 2.0, "cap": 1.0},
        {"first": 1.0, "cap": 1.0, "jitter": -0.1},
        {"first": 1.0, "cap": 1.0, "attempts": 0},
        {"first": 1.0},  # no attempt limit and no cap: the waits would grow for ever
    ],
)
def test_a_backoff_that_makes_no_sense_is_refused(kwargs: dict[str, Any]) -> None:
    """Negative or inverted waits, no attempt, or no bound at all: ValueError."""
    with pytest.raises(ValueError):
        Backoff(**kwargs)

"""The failover policy as pure logic: next provider, retry round, or give up."""

from __future__ import annotations

from mailman.config import RetryConfig
from mailman.core.messages import Dispatch
from mailman.core.policy import Forward, GiveUp, Retry, backoff, next_step

CHAIN = ("sendgrid", "mailgun")
RETRY = RetryConfig(base_seconds=1.0, cap_seconds=8.0, window_seconds=100.0)


def step(
    dispatch: Dispatch,
    *,
    rejected: bool = False,
    retry_after: float | None = None,
    now: float = 0.0,
    rand: float = 1.0,
) -> object:
    return next_step(
        CHAIN,
        dispatch,
        rejected_now=rejected,
        retry_after=retry_after,
        now=now,
        retry=RETRY,
        rand=lambda: rand,
    )


def test_transient_failure_fails_over_to_next_provider() -> None:
    """A failure at the first provider goes to the second at once."""
    result = step(Dispatch("m", accepted_at=0.0))
    assert result == Forward(Dispatch("m", accepted_at=0.0, hop=1))


def test_chain_exhausted_starts_a_new_round_with_backoff() -> None:
    """After the last provider fails transiently, the first is tried again after a backoff."""
    result = step(Dispatch("m", accepted_at=0.0, hop=1, round=2))
    assert result == Retry(Dispatch("m", accepted_at=0.0, hop=0, round=3), delay=4.0)


def test_backoff_grows_and_is_capped_with_jitter() -> None:
    """Backoff doubles each round, lies in [half, all] of its ceiling and never passes the cap."""
    assert [backoff(RETRY, r, lambda: 1.0) for r in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff(RETRY, 3, lambda: 0.0) == 4.0
    assert backoff(RETRY, 1000, lambda: 1.0) == 8.0


def test_retry_after_stretches_the_backoff() -> None:
    """A provider's Retry-After seen during the round is honoured before the next round."""
    first = step(Dispatch("m", accepted_at=0.0), retry_after=6.0)
    assert isinstance(first, Forward) and first.dispatch.retry_after == 6.0
    second = step(first.dispatch)
    assert isinstance(second, Retry)
    assert second.delay == 6.0
    assert second.dispatch.retry_after is None


def test_both_reject_permanently_gives_up() -> None:
    """When every provider rejected the mail, it fails without retrying."""
    first = step(Dispatch("m", accepted_at=0.0), rejected=True)
    assert isinstance(first, Forward) and first.dispatch.rejected == ("sendgrid",)
    assert isinstance(step(first.dispatch, rejected=True), GiveUp)


def test_rejecting_provider_is_skipped_in_later_rounds() -> None:
    """A provider that rejected the mail is not asked again; the others are retried."""
    first = step(Dispatch("m", accepted_at=0.0), rejected=True)
    assert isinstance(first, Forward)
    second = step(first.dispatch)  # mailgun transient
    assert isinstance(second, Retry)
    assert second.dispatch.hop == 1
    third = step(second.dispatch)  # mailgun transient again: nothing after it, retry
    assert isinstance(third, Retry) and third.dispatch.hop == 1


def test_retry_window_runs_out() -> None:
    """No new round starts once the retry window is over."""
    result = step(Dispatch("m", accepted_at=0.0, hop=1, round=3), now=100.0)
    assert isinstance(result, GiveUp)
    assert "window" in result.reason


def test_a_round_that_would_start_past_the_window_starts_at_its_end() -> None:
    """A backoff ending past the window is cut to the window's end: the mail gets a last
    round instead of failing while its window has time left."""
    result = step(Dispatch("m", accepted_at=0.0, hop=1, round=3), now=95.0)
    assert isinstance(result, Retry)
    assert result.delay == 5.0


def test_an_endless_retry_after_is_held_to_the_cap() -> None:
    """Retry-After of inf (what "inf", "1e400" or a date in 9999 come to) waits the cap, never
    fails the mail; NaN and negative waits count as absent and as zero."""
    first = step(Dispatch("m", accepted_at=0.0), retry_after=float("inf"))
    assert isinstance(first, Forward) and first.dispatch.retry_after == RETRY.cap_seconds
    second = step(first.dispatch)
    assert isinstance(second, Retry) and second.delay == RETRY.cap_seconds
    nan = step(Dispatch("m", accepted_at=0.0), retry_after=float("nan"))
    assert isinstance(nan, Forward) and nan.dispatch.retry_after is None
    negative = step(Dispatch("m", accepted_at=0.0), retry_after=-5.0)
    assert isinstance(negative, Forward) and negative.dispatch.retry_after == 0.0

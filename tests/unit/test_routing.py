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
    first = step(Dispatch("m", accepted_at=0.0), retry_after=30.0)
    assert isinstance(first, Forward) and first.dispatch.retry_after == 30.0
    second = step(first.dispatch)
    assert isinstance(second, Retry)
    assert second.delay == 30.0
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
    """No new round starts once it would begin after the retry window."""
    result = step(Dispatch("m", accepted_at=0.0, hop=1, round=3), now=95.0)
    assert isinstance(result, GiveUp)
    assert "window" in result.reason

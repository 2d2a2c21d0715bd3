"""The sums behind a sender's provider.calls line."""

from __future__ import annotations

from mailman.actors.sender import CallTally


def test_a_tally_gives_its_counts_and_nearest_rank_percentiles_then_starts_over() -> None:
    """A tally says how many calls, how many accepted, their p50 and p99 ms, then empties."""
    tally = CallTally()
    for ms in range(100, 0, -1):  # 1..100 ms, out of order
        tally.add(float(ms), accepted=ms % 4 != 0)
    assert tally.take() == {"calls": 100, "accepted": 75, "p50_ms": 50.0, "p99_ms": 99.0}
    assert tally.take() is None


def test_one_call_is_its_own_p50_and_p99() -> None:
    """A single call's ms is both percentiles."""
    tally = CallTally()
    tally.add(12.5, accepted=False)
    assert tally.take() == {"calls": 1, "accepted": 0, "p50_ms": 12.5, "p99_ms": 12.5}

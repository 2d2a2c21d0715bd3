"""The shared circuit-breaker state.

Part of the store contract (``test_store``): each test runs on every backend.
"""

from __future__ import annotations

from mailman.store import (
    BreakerState,
    Store,
)

from . import test_store as contract

# The contract's fixtures: every test here runs on SQLite and on a fresh MySQL database.
make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url


async def test_save_breaker_newest_wins(store: Store) -> None:
    """save_breaker() keeps the newest updated_at per provider; breakers() lists them all."""
    assert await store.breakers() == []
    opened = BreakerState("sendgrid", "open", opened_at=1010.0, updated_at=1010.0)
    await store.save_breaker(BreakerState("sendgrid", "closed", None, 1000.0))
    await store.save_breaker(opened)
    await store.save_breaker(BreakerState("sendgrid", "closed", None, 1005.0))  # older: ignored
    await store.save_breaker(BreakerState("sendgrid", "half_open", 1010.0, 1010.0))  # tie: ignored
    mailgun = BreakerState("mailgun", "half_open", opened_at=990.0, updated_at=1020.0)
    await store.save_breaker(mailgun)

    assert sorted(await store.breakers(), key=lambda b: b.provider) == [mailgun, opened]

    closed = BreakerState("sendgrid", "closed", None, 1030.0)
    await store.save_breaker(closed)
    assert sorted(await store.breakers(), key=lambda b: b.provider) == [mailgun, closed]


async def test_claim_trial_goes_to_one_caller_once_the_breaker_is_due(store: Store) -> None:
    """A half-open trial is claimed by one caller only, once the breaker has been open
    reset_seconds; a claim older than its lease (its trial presumed dead) may be taken
    over; a closed breaker, or none recorded, has no trial to claim."""
    assert not await store.claim_trial("sendgrid", 1100.0, 30.0, 25.0)  # nothing recorded
    await store.save_breaker(BreakerState("sendgrid", "open", opened_at=1000.0, updated_at=1000.0))
    assert not await store.claim_trial("sendgrid", 1029.0, 30.0, 25.0)  # not due yet
    assert await store.claim_trial("sendgrid", 1031.0, 30.0, 25.0)
    assert not await store.claim_trial("sendgrid", 1031.0, 30.0, 25.0)  # claimed: no second trial
    assert not await store.claim_trial("sendgrid", 1050.0, 30.0, 25.0)
    (row,) = await store.breakers()
    assert (row.state, row.opened_at, row.updated_at) == ("half_open", 1000.0, 1031.0)
    assert await store.claim_trial("sendgrid", 1062.0, 30.0, 25.0)  # the first trial never ended
    await store.save_breaker(BreakerState("sendgrid", "closed", None, 1070.0))
    assert not await store.claim_trial("sendgrid", 2000.0, 30.0, 25.0)

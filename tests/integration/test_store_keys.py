"""API keys and rate-limit buckets.

Part of the store contract (``test_store``): each test runs on every backend.
"""

from __future__ import annotations

import pytest

from mailman.store import (
    ApiKey,
    Store,
)

from . import test_store as contract
from .test_store import MakeStore

# The contract's fixtures: every test here runs on SQLite and on a fresh MySQL database.
make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url


async def test_keys_create_find_revoke_touch(store: Store) -> None:
    """Keys are found by hash, listed, revoked once, and their last use only moves forward."""
    assert not await store.any_keys()
    key = ApiKey(id="key1", tenant="t", scopes=("send", "read"), rate=2.5, created_at=10.0)
    await store.create_key(key, "hash1")
    assert await store.any_keys()
    assert await store.key_by_hash("hash1") == key
    assert await store.key_by_hash("nope") is None
    await store.touch_keys({"key1": 50.0})
    await store.touch_keys({"key1": 40.0})
    assert await store.revoke_key("key1", 60.0)
    assert await store.revoke_key("key1", 70.0)
    assert not await store.revoke_key("missing", 70.0)
    (listed,) = await store.keys()
    assert (listed.last_used_at, listed.revoked_at, listed.rate) == (50.0, 60.0, 2.5)
    assert await store.any_keys()  # a revoked key still closes the API


async def test_rate_bucket_is_shared_and_refills(store: Store, make_store: MakeStore) -> None:
    """A bucket of 2/s allows a burst of 2 across two store instances, then refills over time."""
    async with make_store() as other:
        first = await store.take_token("b", 2.0, now=100.0)
        second = await other.take_token("b", 2.0, now=100.0)
        third = await store.take_token("b", 2.0, now=100.0)
        later = await other.take_token("b", 2.0, now=100.5)
    assert (first.allowed, second.allowed, third.allowed, later.allowed) == (
        True,
        True,
        False,
        True,
    )
    assert (first.remaining, second.remaining) == (1, 0)
    assert third.retry_after == pytest.approx(0.5)

"""Provider circuit breakers: what they count, and the shared health mirrored through the store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiobreaker import CircuitBreakerError
from aiobreaker.state import CircuitBreakerState

from mailman.actors.breakers import (
    BreakerLog,
    ProviderBreaker,
    SharedHealth,
    make_breaker,
    state_of,
)
from mailman.actors.sender import Sender
from mailman.config import RetryConfig
from mailman.core.messages import Dispatch, StatusUpdate
from mailman.core.model import Address, Mail
from mailman.mailboxes import MemoryBroker
from mailman.mailboxes.routing import Router
from mailman.providers import Accepted, ProviderClient, Result, Transient
from mailman.store import BreakerState, Store
from mailman.store.sqlite import SQLiteStore

MAIL = Mail(
    id="mail-0001",
    sender=Address("a@example.com"),
    to=(Address("b@example.com"),),
    subject="s",
    text="t",
    created_at=1000.0,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with SQLiteStore(str(tmp_path / "mailman.db")) as opened:
        await opened.add(MAIL)
        yield opened


class Scripted(ProviderClient):
    """A provider that gives ``answer`` to every call and counts the calls."""

    name = "sendgrid"

    def __init__(self, answer: Result) -> None:
        self.answer = answer
        self.calls = 0

    async def send(self, mail: Mail) -> Result:
        self.calls += 1
        return self.answer


class BrokenRecords(SQLiteStore):
    """A real store whose ``apply`` (recording an outcome) raises while ``down`` is set."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.down = False

    async def apply(self, updates: Sequence[StatusUpdate]) -> None:
        if self.down:
            raise RuntimeError("recording failed")
        await super().apply(updates)


def sender_for(client: ProviderClient, breaker: ProviderBreaker, store: Store) -> Sender:
    router = Router(MemoryBroker(), ("sendgrid",))
    return Sender(client=client, breaker=breaker, router=router, store=store, retry=RetryConfig())


async def outcomes(store: Store) -> list[str]:
    record = await store.get(MAIL.id)
    assert record is not None
    return [a.outcome.value for a in record.attempts]


async def test_failing_outcome_record_is_not_a_provider_failure(tmp_path: Path) -> None:
    """Recording the outcome failing propagates and leaves the provider's breaker untouched."""
    store = BrokenRecords(str(tmp_path / "m.db"))
    async with store:
        await store.add(MAIL)
        breaker = make_breaker("sendgrid", fail_max=1, reset_seconds=60)
        client = Scripted(Accepted("msg-1"))
        sender = sender_for(client, breaker, store)
        store.down = True
        with pytest.raises(RuntimeError, match="recording failed"):
            await sender.handle(Dispatch(MAIL.id, MAIL.created_at))
        # The provider answered; only the record after it failed, outside the breaker.
        assert client.calls == 1
        assert state_of(breaker) == "closed"
        assert breaker.fail_counter == 0
        assert await outcomes(store) == ["pending"]


async def test_unwell_provider_answer_counts_in_the_breaker(store: Store) -> None:
    """Only the provider's unwell answers count: two transient answers open a fail_max=2 breaker."""
    breaker = make_breaker("sendgrid", fail_max=2, reset_seconds=60)
    client = Scripted(Transient("down", 503))
    sender = sender_for(client, breaker, store)
    await sender.handle(Dispatch(MAIL.id, time.time()))
    assert (state_of(breaker), breaker.fail_counter) == ("closed", 1)
    await sender.handle(Dispatch(MAIL.id, time.time()))
    assert state_of(breaker) == "open"
    await sender.handle(Dispatch(MAIL.id, time.time()))
    assert client.calls == 2  # the open breaker kept the third call away
    assert await outcomes(store) == ["transient", "transient", "skipped"]


async def test_shared_health_mirrors_through_the_breakers_own_storage(store: Store) -> None:
    """A local opening is published with its opened_at; a remote one is applied to our storage."""
    local = make_breaker("sendgrid", fail_max=1, reset_seconds=60)
    remote = make_breaker("mailgun", fail_max=1, reset_seconds=60)
    health = SharedHealth(
        breakers={"sendgrid": local, "mailgun": remote}, store=store, sync_seconds=60
    )
    await health.setup()
    try:
        local.open()
        await health.push()
        (published,) = await store.breakers()
        assert local.storage.opened_at is not None
        opened_at = local.storage.opened_at.replace(tzinfo=UTC).timestamp()
        assert published == BreakerState("sendgrid", "open", opened_at, published.updated_at)

        elsewhere = datetime.now(UTC).timestamp()
        await store.save_breaker(BreakerState("mailgun", "open", elsewhere, elsewhere))
        await health.pull()
        assert remote.storage.state is CircuitBreakerState.OPEN
        assert remote.storage.opened_at == datetime.fromtimestamp(elsewhere, UTC).replace(
            tzinfo=None
        )
        with pytest.raises(CircuitBreakerError):  # the breaker itself runs on that storage
            await remote.call_async(Scripted(Accepted("x")).send, MAIL)
        await health.push()
        # Applying a remote change publishes nothing back.
        assert [b.updated_at for b in await store.breakers()] == [elsewhere, published.updated_at]
    finally:
        await health.teardown()
    assert [type(x) for x in local.listeners + remote.listeners] == [BreakerLog, BreakerLog]

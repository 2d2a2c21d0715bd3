"""Provider circuit breakers: what they count, and the shared health mirrored through the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiobreaker import CircuitBreakerError
from aiobreaker.state import CircuitBreakerState
from structlog.testing import capture_logs

from mailman.actors.breakers import (
    BreakerLog,
    ProviderBreaker,
    SharedHealth,
    make_breaker,
    state_of,
)
from mailman.actors.sender import Sender
from mailman.config import RetryConfig, Secret
from mailman.core.messages import Dispatch, StatusUpdate
from mailman.core.model import Address, Mail
from mailman.mailboxes import MemoryBroker
from mailman.mailboxes.routing import Router
from mailman.providers import Accepted, ProviderClient, Result, Transient
from mailman.providers.sendgrid import SendGridClient, SendGridConfig
from mailman.store import BreakerState, Store
from mailman.store.sqlite import SQLiteStore

from ..conftest import eventually
from ..support.fakes import FakeSendGrid

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
    return await outcomes_of(store, MAIL.id)


async def outcomes_of(store: Store, mail_id: str) -> list[str]:
    record = await store.get(mail_id)
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


# --- the half-open trial, and state changes logged once ------------------------------------


def mails(n: int) -> list[Mail]:
    return [
        Mail(
            id=f"mail-trial-{i:03d}",
            sender=Address("a@example.com"),
            to=(Address("b@example.com"),),
            subject="s",
            text="t",
            created_at=1000.0,
        )
        for i in range(n)
    ]


def sendgrid_client(fake: FakeSendGrid) -> SendGridClient:
    return SendGridClient(SendGridConfig(Secret(fake.api_key), fake.base_url), timeout=30)


def changes(logs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(e["old"], e["new"]) for e in logs if e["event"] == "breaker.state_changed"]


async def test_half_open_lets_exactly_one_trial_reach_a_slow_provider(store: Store) -> None:
    """After the reset, 32 mails at once (the sender's concurrency) meet a provider that is
    still slow: exactly one call reaches it until it answers, the others are skipped (no
    duplicate); its answer closes the breaker; each state change is logged once."""
    batch = mails(32)
    for mail in batch:
        await store.add(mail)
    breaker = make_breaker("sendgrid", fail_max=1, reset_seconds=0)
    async with FakeSendGrid(api_key="SG.trial", mode="503") as fake:
        client = sendgrid_client(fake)
        await client.start()
        try:
            sender = sender_for(client, breaker, store)
            with capture_logs() as logs:
                await sender.handle(Dispatch(batch[0].id, time.time()))  # 503: opens
                assert state_of(breaker) == "open"
                fake.mode = "up"
                fake.gate = asyncio.Event()  # the provider answers once the test says
                tasks = [
                    asyncio.create_task(sender.handle(Dispatch(m.id, time.time())))
                    for m in batch[1:]
                ]
                await eventually(lambda: fake.calls == 2, what="the trial call at the provider")
                await eventually(
                    lambda: sum(t.done() for t in tasks) == len(tasks) - 1,
                    what="every other mail handled",
                )
                assert fake.calls == 2  # the 503, then the one trial
                assert breaker.trial_under_way
                fake.gate.set()
                await asyncio.gather(*tasks)
        finally:
            await client.close()
    assert state_of(breaker) == "closed"
    assert fake.calls == 2
    outcomes_now = [await outcomes_of(store, m.id) for m in batch[1:]]
    assert sorted(o for o in outcomes_now) == [["accepted"]] + [["skipped"]] * 30
    assert changes(logs) == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_calls_in_flight_when_the_breaker_opens_log_one_change(store: Store) -> None:
    """Ten calls in flight to a failing provider: the breaker opens once (one
    state_changed line, opened_at of the first opening), not once per late failure."""
    breaker = make_breaker("sendgrid", fail_max=2, reset_seconds=60)
    async with FakeSendGrid(api_key="SG.trial", mode="503") as fake:
        client = sendgrid_client(fake)
        await client.start()
        try:

            async def guarded() -> Result:
                result = await client.send(MAIL)
                if result.unwell:
                    raise RuntimeError("unwell")
                return result

            fake.gate = asyncio.Event()
            with capture_logs() as logs:
                calls = [asyncio.create_task(breaker.call_async(guarded)) for _ in range(10)]
                await eventually(lambda: fake.calls == 10, what="ten calls in flight")
                fake.gate.set()
                await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()
    assert state_of(breaker) == "open"
    assert changes(logs) == [("closed", "open")]


async def test_one_process_of_all_makes_the_trial_of_a_shared_breaker(store: Store) -> None:
    """Two processes' breakers sharing one open breaker in the store, both due for a trial:
    the store's conditional claim lets one call reach the provider; the other is refused
    as if open. The trial's success closes the breaker in both."""
    first = make_breaker("sendgrid", fail_max=1, reset_seconds=0)
    second = make_breaker("sendgrid", fail_max=1, reset_seconds=0)
    one = SharedHealth(breakers={"sendgrid": first}, store=store, sync_seconds=60)
    two = SharedHealth(breakers={"sendgrid": second}, store=store, sync_seconds=60)
    await one.setup()
    await two.setup()
    async with FakeSendGrid(api_key="SG.trial") as fake:
        client = sendgrid_client(fake)
        await client.start()
        try:
            first.open()
            await one.push()
            await two.pull()
            assert state_of(second) == "open"
            fake.gate = asyncio.Event()
            calls = [
                asyncio.create_task(breaker.call_async(client.send, MAIL))
                for breaker in (first, second)
            ]
            await eventually(lambda: fake.calls == 1, what="the trial call")
            await eventually(lambda: any(c.done() for c in calls), what="the refused call")
            refused = [c for c in calls if c.done()]
            assert len(refused) == 1
            with pytest.raises(CircuitBreakerError):
                refused[0].result()
            fake.gate.set()
            (trial,) = [c for c in calls if c not in refused]
            assert isinstance(await trial, Accepted)
            await one.push()
            await two.push()
            await one.pull()
            await two.pull()
        finally:
            await client.close()
            await one.teardown()
            await two.teardown()
    assert fake.calls == 1
    assert (state_of(first), state_of(second)) == ("closed", "closed")

"""The relay (transactional outbox) and shared provider health, against a real SQLite store."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import pytest

from mailman.actors.breakers import SharedHealth, make_breaker, state_of
from mailman.actors.relay import BUSY_BATCH, REMOTE_QUIET_SECONDS, Nudge, Relay
from mailman.actors.wake import WakeListener, WakeSender
from mailman.config import RelayConfig
from mailman.core.messages import Dispatch
from mailman.core.model import Address, Mail
from mailman.intake.load import SATURATED_REQUESTS
from mailman.mailboxes import Mailbox, MemoryBroker, MemoryMailbox
from mailman.mailboxes.routing import Router
from mailman.routes import Load
from mailman.store import Store
from mailman.store.sqlite import SQLiteStore

from ..conftest import eventually

FAST = RelayConfig(batch=50, interval_seconds=0.01, lease_seconds=5)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with SQLiteStore(str(tmp_path / "mailman.db")) as opened:
        yield opened


def mail(n: int) -> Mail:
    return Mail(
        id=f"mail-{n:04d}",
        sender=Address("a@example.com"),
        to=(Address("b@example.com"),),
        subject="s",
        text="t",
        created_at=1000.0 + n,
    )


async def drain(box: Mailbox[Dispatch], into: list[str]) -> None:
    async with box.subscribe() as inbox:
        while True:
            delivery = await inbox.get()
            into.append(delivery.message.mail_id)
            await delivery.ack()


async def test_relay_publishes_committed_mails_once_and_empties_the_outbox(store: Store) -> None:
    """Two relays on one store hand every committed mail to the first mailbox exactly once."""
    router = Router(MemoryBroker(), ("sendgrid", "mailgun"))
    got: list[str] = []
    consumer = asyncio.create_task(drain(router.inbox_of("sendgrid"), got))
    relays = [Relay(store=store, router=router, config=FAST, nudge=Nudge()) for _ in range(2)]
    async with relays[0], relays[1]:
        for n in range(200):
            await store.add(mail(n))
        await eventually(lambda: len(got) >= 200, what="200 mails relayed")
    # The last batch's entries are removed by the next claim, or when the relay stops.
    assert await store.claim_outbox("probe", 10, 1, 10**10) == []
    consumer.cancel()
    assert sorted(got) == [mail(n).id for n in range(200)]
    assert relays[0].published + relays[1].published == 200


class FlakyMailbox(MemoryMailbox[Dispatch]):
    """A mailbox whose first ``failures`` publishes fail, like a broker that is down."""

    def __init__(self, failures: int) -> None:
        super().__init__("send.sendgrid", Dispatch)
        self.failures = failures

    async def put_many(self, messages: Iterable[Dispatch]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        await super().put_many(messages)


class FlakyBroker(MemoryBroker):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self._boxes["send.sendgrid"] = FlakyMailbox(failures)  # type: ignore[assignment]


async def test_relay_outlives_a_broker_outage(store: Store) -> None:
    """A failed publish keeps the mail in the outbox; the relay retries until it goes through."""
    router = Router(FlakyBroker(failures=3), ("sendgrid",))
    got: list[str] = []
    consumer = asyncio.create_task(drain(router.inbox_of("sendgrid"), got))
    await store.add(mail(1))
    async with Relay(store=store, router=router, config=FAST, nudge=Nudge()) as relay:
        await eventually(lambda: got == [mail(1).id], what="the mail relayed after the outage")
        assert relay.published == 1
    consumer.cancel()


async def test_nudge_wakes_the_relay(store: Store) -> None:
    """The API's nudge makes an idle relay publish at once, not at its next poll."""
    router = Router(MemoryBroker(), ("sendgrid",))
    got: list[str] = []
    consumer = asyncio.create_task(drain(router.inbox_of("sendgrid"), got))
    nudge = Nudge()
    slow = RelayConfig(batch=50, interval_seconds=3600, lease_seconds=5)
    async with Relay(store=store, router=router, config=slow, nudge=nudge):
        await store.add(mail(2))
        await nudge.dispatch(Dispatch(mail(2).id, 0.0))
        await eventually(lambda: got == [mail(2).id], within=5, what="the nudged relay")
    consumer.cancel()


async def test_relay_puts_accepts_first(store: Store) -> None:
    """While the API has requests in flight the relay hands on small batches; idle, the rest."""
    router = Router(MemoryBroker(), ("sendgrid",))
    got: list[str] = []
    consumer = asyncio.create_task(drain(router.inbox_of("sendgrid"), got))
    load = Load()
    load.enter()  # a request in flight, for as long as the test wants
    config = RelayConfig(batch=500, interval_seconds=0.01, lease_seconds=30)
    for n in range(300):
        await store.add(mail(n))
    # saturated_lag=0: the test's loop is idle, so treat any busy API as a saturated one.
    relay = Relay(
        store=store, router=router, config=config, nudge=Nudge(), load=load, saturated_lag=0
    )
    async with relay:
        await eventually(lambda: len(got) >= BUSY_BATCH, what="a first small batch")
        assert len(got) < 300  # the API is busy: the backlog waits in the outbox
        load.leave()
        await eventually(lambda: len(got) == 300, what="the rest once the API is idle")
    consumer.cancel()
    assert sorted(got) == [mail(n).id for n in range(300)]


@pytest.mark.parametrize("in_flight", [1, SATURATED_REQUESTS * 4])
async def test_relay_keeps_pace_with_a_busy_api_whose_loop_has_room(
    store: Store, in_flight: int
) -> None:
    """Requests in flight with the loop idle (steady traffic, or requests waiting on a slow
    store) do not hold the relay back: it hands on full batches."""
    router = CountingRouter()
    got: list[str] = []
    consumer = asyncio.create_task(drain(router.inbox_of("sendgrid"), got))
    load = Load()
    for _ in range(in_flight):
        load.enter()  # in flight for the whole test; the loop stays idle
    config = RelayConfig(batch=500, interval_seconds=0.01, lease_seconds=30)
    for n in range(300):
        await store.add(mail(n))
    async with Relay(store=store, router=router, config=config, nudge=Nudge(), load=load):
        await eventually(lambda: len(got) == 300, what="every mail while the API is busy")
    consumer.cancel()
    assert max(router.batches) == 300, router.batches


def test_the_load_averages_the_requests_in_flight_over_time() -> None:
    """30 requests in flight for 45 ms, then all answered at once: 27 on average over
    the 50 ms, though none at its end; no time passed: those in flight now."""
    now = [100.0]
    load = Load(clock=lambda: now[0])
    mark = load.mark()
    for _ in range(30):
        load.enter()
    now[0] += 0.045
    for _ in range(30):
        load.leave()
    now[0] += 0.005
    assert load.requests == 0
    assert load.mean_since(mark) == pytest.approx(27.0)
    load.enter()
    assert load.mean_since(load.mark()) == 1.0


#: The longest spell with no request in flight for which an ``AnswerTogether`` API is
#: still saturated on average over any wait of the relay's (25-50 ms): 30 requests for at
#: least 25 ms of 50 is 15, past SATURATED_REQUESTS.
LONGEST_GAP = 0.025


class AnswerTogether:
    """A saturated API: 30 requests in flight for 45 ms, then all answered together and
    none for 5 ms (a writer turn's answers), again and again. ``gaps``: its spells with
    none in flight so far (``longest_gap``: the one going on included); on a loaded
    machine its timer can fire late enough that a spell outlasts ``LONGEST_GAP`` and the
    API is no longer saturated on average, which the relay rightly takes as room."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.gaps: list[float] = []
        self._left: float | None = None

    @property
    def longest_gap(self) -> float:
        ongoing = 0.0 if self._left is None else time.monotonic() - self._left
        return max([ongoing, *self.gaps])

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for _ in range(30):
                self.load.enter()
            await asyncio.sleep(0.045)
            for _ in range(30):
                self.load.leave()
            self._left = time.monotonic()
            await asyncio.sleep(0.005)
            self.gaps.append(time.monotonic() - self._left)
            self._left = None


async def test_relay_holds_back_while_a_busy_loop_answers_its_requests_together(
    store: Store,
) -> None:
    """An API saturated on average (its loop busy) keeps the relay to small batches even
    when the relay looks at a moment its requests were all answered. (A run in which the
    simulated API's own timer ran so late that a spell with none in flight outlasted
    LONGEST_GAP tests nothing, and is run again with new mails.)"""
    gaps: list[float] = []
    for run in range(5):
        batches, gaps = await _while_answering_together(store, first=1000 * run)
        if max(gaps) <= LONGEST_GAP:
            assert max(batches) <= BUSY_BATCH, batches
            return
    pytest.fail(f"the simulated API was not saturated in any run (last gaps: {gaps})")


async def _while_answering_together(store: Store, first: int) -> tuple[list[int], list[float]]:
    """300 new mails relayed while an ``AnswerTogether`` API runs: the sizes of the first
    two batches (or of the one that took them all), and the API's spells with no request
    in flight until then; the rest is relayed once the API stops."""
    router = CountingRouter()
    got: list[str] = []
    consumer = asyncio.create_task(drain(router.inbox_of("sendgrid"), got))
    load, stop = Load(), asyncio.Event()
    api = AnswerTogether(load)
    answering = asyncio.create_task(api.run(stop))
    config = RelayConfig(batch=500, interval_seconds=0.01, lease_seconds=30)
    for n in range(first, first + 300):
        await store.add(mail(n))
    # The loop's thread counted busy all the time (its CPU clock runs with the wall's).
    relay = Relay(
        store=store, router=router, config=config, nudge=Nudge(), load=load, worked=time.monotonic
    )
    async with relay:
        await eventually(
            lambda: len(router.batches) >= 2 or sum(router.batches) == 300,
            what="two batches while busy (or every mail in one)",
        )
        batches, gaps = list(router.batches), [api.longest_gap, *api.gaps]
        stop.set()
        await answering
        await eventually(lambda: len(got) == 300, what="the rest once the API is quiet")
    consumer.cancel()
    return batches, gaps


class CountingRouter(Router):
    """A router that remembers the size of every batch the relay hands on."""

    def __init__(self) -> None:
        super().__init__(MemoryBroker(), ("sendgrid",))
        self.batches: list[int] = []
        self.at: list[float] = []

    async def dispatch_many(self, dispatches: Sequence[Dispatch]) -> None:
        self.batches.append(len(dispatches))
        self.at.append(time.monotonic())
        await super().dispatch_many(dispatches)


def address() -> str:
    return f"\0mailman-wake-test-{secrets.token_hex(8)}"


async def saturate(load: Load, stop: asyncio.Event) -> None:
    """An API elsewhere with SATURATED_REQUESTS in flight (it reports on its own timer)."""
    for _ in range(SATURATED_REQUESTS):
        load.enter()
    await stop.wait()
    for _ in range(SATURATED_REQUESTS):
        load.leave()


async def test_a_saturated_process_reports_on_a_timer_until_it_is_not() -> None:
    """With SATURATED_REQUESTS in flight and none beginning or ending (commits waiting for a
    lock), the load is reported again and again; below it, the reports stop."""
    reports: list[int] = []
    load = Load(reports.append)
    for _ in range(SATURATED_REQUESTS - 1):
        load.enter()
    assert reports == []
    load.enter()
    await eventually(lambda: len(reports) >= 3, what="three reports, no request since")
    assert set(reports) == {SATURATED_REQUESTS}
    load.leave()
    await eventually(lambda: not load._ticking, what="the reports to stop")
    count = len(reports)
    load.enter()  # saturated again: reporting again
    await eventually(lambda: len(reports) > count, what="a report once saturated again")
    while load.requests:
        load.leave()


async def test_relay_holds_back_while_an_api_in_another_process_is_saturated(
    store: Store,
) -> None:
    """A saturated API elsewhere on the machine (its load reports, real datagrams) keeps the
    relay to small batches; once it goes quiet, the rest goes at once."""
    router = CountingRouter()
    got: list[str] = []
    consumer = asyncio.create_task(drain(router.inbox_of("sendgrid"), got))
    where = address()
    sender = WakeSender(where)
    api = Load(sender.busy)  # as the API process builds it
    config = RelayConfig(batch=500, interval_seconds=0.01, lease_seconds=30)
    stop = asyncio.Event()
    nudge = Nudge()
    relay = Relay(store=store, router=router, config=config, nudge=nudge, wake_address=where)
    try:
        async with relay:
            busy = asyncio.create_task(saturate(api, stop))
            await eventually(lambda: relay.remote.saturated_at > 0, what="the API's report")
            for n in range(300):
                await store.add(mail(n))
            nudge.event.set()
            await eventually(lambda: len(got) >= BUSY_BATCH, what="a first small batch")
            assert len(got) < 300  # the other process is saturated: the backlog waits
            assert max(router.batches) <= BUSY_BATCH
            stop.set()
            await busy
            await eventually(lambda: len(got) == 300, what="the rest once the API is quiet")
    finally:
        stop.set()
        consumer.cancel()
        sender.close()
    assert sorted(got) == [mail(n).id for n in range(300)]
    assert max(router.batches) > BUSY_BATCH  # the rest went in one claim, not held back


async def test_a_lost_load_report_means_no_hold_back_never_a_stall(store: Store) -> None:
    """An API elsewhere still saturated whose reports stop arriving (lost datagrams, a hung
    loop) holds nothing back once its last report is REMOTE_QUIET_SECONDS old."""
    router = CountingRouter()
    got: list[str] = []
    consumer = asyncio.create_task(drain(router.inbox_of("sendgrid"), got))
    where = address()
    sender = WakeSender(where)
    delivered = 0

    def lossy(requests: int) -> None:
        """The first report reaches the relay; every later one is lost on the way."""
        nonlocal delivered
        if not delivered:
            sender.busy(requests)
        delivered += 1

    api = Load(lossy)
    # The relay looks only when nudged.
    config = RelayConfig(batch=500, interval_seconds=3600, lease_seconds=30)
    nudge = Nudge()
    relay = Relay(store=store, router=router, config=config, nudge=nudge, wake_address=where)
    try:
        async with relay:
            for n in range(300):
                await store.add(mail(n))
            for _ in range(SATURATED_REQUESTS + 2):
                api.enter()  # saturated from here on: it keeps reporting
            await eventually(lambda: relay.remote.saturated_at > 0, what="the report heard")
            nudge.event.set()
            await eventually(lambda: len(got) == 300, what="every mail, the API still busy")
            assert api.requests >= SATURATED_REQUESTS  # still saturated ...
            assert delivered > 1  # ... and reporting: only the reports were lost
    finally:
        while api.requests:
            api.leave()
        consumer.cancel()
        sender.close()
    # (The relay's first look may find the first mail.) The rest in one claim once the
    # report went stale, nothing held back; but not while it was fresh.
    assert router.batches[-1] >= 299
    assert router.at[-1] >= relay.remote.saturated_at + REMOTE_QUIET_SECONDS


async def test_breaker_state_is_shared_between_processes(store: Store) -> None:
    """One process opening SendGrid's breaker makes another skip it; closing it is shared too."""
    first = make_breaker("sendgrid", fail_max=1, reset_seconds=60)
    second = make_breaker("sendgrid", fail_max=1, reset_seconds=60)
    one = SharedHealth(breakers={"sendgrid": first}, store=store, sync_seconds=0.01)
    two = SharedHealth(breakers={"sendgrid": second}, store=store, sync_seconds=0.01)
    async with one, two:
        first.open()
        await eventually(lambda: state_of(second) == "open", what="the open state shared")
        assert second.storage.opened_at == first.storage.opened_at
        first.close()
        await eventually(lambda: state_of(second) == "closed", what="the closed state shared")
        assert state_of(first) == "closed"  # applying a remote change echoes nothing back


async def test_a_saturated_api_sends_no_wake_ups_its_reports_wake_the_relay() -> None:
    """While an API reports that it is saturated, its commits send no wake-up datagram (each
    costs it a system call); the reports themselves wake the relay."""
    where = address()
    woken: list[str] = []
    listener = WakeListener(where, lambda: woken.append("wake"), lambda n: woken.append("busy"))
    assert listener.open()
    sender = WakeSender(where)
    try:
        sender.wake()
        await eventually(lambda: woken == ["wake"], what="an idle API's wake-up")
        sender.busy(SATURATED_REQUESTS)
        await eventually(lambda: woken[1:] == ["busy", "wake"], what="a report that wakes")
        for _ in range(5):
            sender.wake()  # commits of a saturated API
            await asyncio.sleep(0)  # a loop turn each: where a wake-up would go out
        sender.busy(SATURATED_REQUESTS + 1)
        await eventually(lambda: len(woken) == 5, what="the next report")
        assert woken == ["wake", "busy", "wake", "busy", "wake"]  # no wake-up between
        sender._busy_at -= 1.0  # reports stopped a second ago: wake-ups go out again
        sender.wake()
        await eventually(lambda: len(woken) == 6, what="a wake-up once not saturated")
        assert woken[-1] == "wake"
    finally:
        listener.close()
        sender.close()

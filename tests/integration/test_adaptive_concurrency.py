"""A sender's adaptive concurrency and pace against real providers on loopback."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from mailman.actors.breakers import make_breaker
from mailman.actors.journal import Journal
from mailman.actors.limiter import SMALL_MAIL_BYTES
from mailman.actors.sender import Sender
from mailman.config import RetryConfig, Secret
from mailman.core.messages import Dispatch
from mailman.core.model import Address, Mail, Status
from mailman.mailboxes import MemoryBroker
from mailman.mailboxes.routing import Router
from mailman.providers.mailgun import MailgunClient, MailgunConfig
from mailman.providers.sendgrid import SendGridClient, SendGridConfig
from mailman.store import Begun, Store
from mailman.store.sqlite import SQLiteStore
from mailman.system import Mailman

from ..conftest import eventually, make_config
from ..support.fakes import FakeMailgun, FakeSendGrid

#: Calls the rate-limited provider answers at once; more get a 429.
PROVIDER_LIMIT = 4
#: The sender's configured concurrency: the adaptive limit's ceiling.
CEILING = 64
MAILS = 240


def mail(i: int) -> Mail:
    return Mail(
        id=f"mail-adapt-{i:04d}",
        sender=Address("a@example.com"),
        to=(Address("b@example.com"),),
        subject="s",
        text="t",
        created_at=time.time(),
    )


async def test_a_sender_settles_near_the_calls_a_rate_limited_provider_takes(
    tmp_path: Path,
) -> None:
    """SendGrid answers 429 above 4 calls at once; the sender starts at 64 in flight, halves
    on the 429s and settles near 4: most of its later calls are answered, not refused,
    and every mail ends sent (a refused one by Mailgun, after failover)."""
    batch = [mail(i) for i in range(MAILS)]
    async with (
        SQLiteStore(str(tmp_path / "m.db")) as store,
        FakeSendGrid(api_key="SG.adapt", delay=0.03) as sendgrid,
        FakeMailgun(api_key="key-adapt", domain="mg.example.com") as mailgun,
    ):
        for one in batch:
            await store.add(one)
        sendgrid.max_in_flight = PROVIDER_LIMIT
        router = Router(MemoryBroker(), ("sendgrid", "mailgun"))
        journal = Journal(store)
        clients = {
            "sendgrid": SendGridClient(
                SendGridConfig(Secret(sendgrid.api_key), sendgrid.base_url), timeout=30
            ),
            "mailgun": MailgunClient(
                MailgunConfig(Secret(mailgun.api_key), mailgun.domain, mailgun.base_url),
                timeout=30,
            ),
        }
        senders = {
            name: Sender(
                client=client,
                # The breaker is the other defence; here it stays out of the way.
                breaker=make_breaker(name, fail_max=10**6, reset_seconds=60),
                router=router,
                store=store,
                retry=RetryConfig(),
                concurrency=CEILING,
                peers=clients,
                journal=journal,
            )
            for name, client in clients.items()
        }

        with capture_logs() as logs:
            async with senders["sendgrid"], senders["mailgun"]:
                for one in batch:
                    await router.dispatch(Dispatch(one.id, time.time()))
                await eventually(lambda: all_sent(store, batch), within=60, what="every mail sent")
                limit = senders["sendgrid"].slots.limit
    assert sendgrid.calls == MAILS  # each mail was tried once there
    assert len(sendgrid.received) + len(mailgun.received) == MAILS  # none lost, none twice
    assert 1 <= limit <= 2 * PROVIDER_LIMIT
    later = sendgrid.over_limit[MAILS // 2 :]
    assert sum(later) < len(later) / 4, f"{sum(later)} of {len(later)} later calls got a 429"
    changes = [e for e in logs if e["event"] == "sender.concurrency"]
    assert changes[0] == {
        "event": "sender.concurrency",
        "log_level": "info",
        "provider": "sendgrid",
        "limit": CEILING // 2,
        "was": CEILING,
        "why": "rate_limited",
    }


async def test_the_setting_reaches_every_sender(tmp_path: Path) -> None:
    """By default each sender's limit adapts; ``MAILMAN_SENDER_ADAPTIVE=false`` fixes it."""
    for env, adaptive in (({}, True), ({"MAILMAN_SENDER_ADAPTIVE": "false"}, False)):
        system = Mailman(make_config(tmp_path, env))
        for name in system.config.chain:
            sender = system._sender_factory(name)()
            assert isinstance(sender, Sender)
            assert sender.slots.adaptive is adaptive, name
            assert sender.slots.start == system.config.concurrency_of(name) == 256
            assert system.config.max_concurrency_of(name) == 2048
            assert sender.slots.ceiling == system.max_concurrency[name]


def test_a_provider_given_its_own_concurrency_never_grows_past_it(tmp_path: Path) -> None:
    """``MAILMAN_SENDER_CONCURRENCY_PER_PROVIDER`` pins a provider: start and ceiling; a
    maximum below the start is no ceiling below it."""
    base = {"MAILMAN_SENDER_CONCURRENCY": "300", "MAILMAN_SENDER_MAX_CONCURRENCY": "100"}
    pinned = {**base, "MAILMAN_SENDER_CONCURRENCY_PER_PROVIDER": "outbox:3"}
    slots = []
    for env in (base, pinned):
        system = Mailman(make_config(tmp_path, env))
        (name,) = system.config.chain
        sender = system._sender_factory(name)()
        assert isinstance(sender, Sender)
        slots.append((sender.slots.start, sender.slots.ceiling))
    assert slots == [(300, 300), (3, 3)]


def big(i: int) -> Mail:
    return replace(mail(i), id=f"mail-big-{i:04d}", text="x" * (SMALL_MAIL_BYTES + 1))


async def all_sent(store: Store, batch: list[Mail]) -> bool:
    for one in batch:
        record = await store.get(one.id)
        if record is None or record.status is not Status.SENT:
            return False
    return True


async def deliver(store: Store, sendgrid: FakeSendGrid, batch: list[Mail], **settings: Any) -> None:
    """Send ``batch`` (stored) through one SendGrid sender made with ``settings``, until
    every mail is sent."""
    router = Router(MemoryBroker(), ("sendgrid",))
    client = SendGridClient(SendGridConfig(Secret(sendgrid.api_key), sendgrid.base_url), timeout=30)
    sender = Sender(
        client=client,
        breaker=make_breaker("sendgrid", fail_max=10**6, reset_seconds=60),
        router=router,
        store=store,
        retry=RetryConfig(),
        peers={"sendgrid": client},
        **settings,
    )
    async with sender:
        for one in batch:
            await router.dispatch(Dispatch(one.id, time.time()))
        await eventually(lambda: all_sent(store, batch), within=60, what="every mail sent")


async def test_a_backlog_meets_a_slow_provider_with_more_calls_than_the_start(
    tmp_path: Path,
) -> None:
    """SendGrid answers every call 50 ms late; a sender starting at 4 calls in flight with
    room up to 64 has many more at once for a backlog of small mails, each sent once; a
    backlog of large mails gets no more than the start."""
    small = [mail(i) for i in range(MAILS)]
    large = [big(i) for i in range(MAILS // 4)]
    peaks = {}
    for batch in (small, large):
        async with (
            SQLiteStore(str(tmp_path / f"{batch[0].id}.db")) as store,
            FakeSendGrid(api_key="SG.slow", delay=0.05) as sendgrid,
        ):
            for one in batch:
                await store.add(one)
            await deliver(store, sendgrid, batch, concurrency=4, max_concurrency=64)
            assert sorted(sendgrid.mail_ids()) == sorted(m.id for m in batch)
            peaks[len(batch)] = sendgrid.peak_in_flight
    assert peaks[len(small)] >= 32, peaks
    assert peaks[len(large)] <= 4, peaks


#: Calls a second the paced sender makes at most, and the mails it sends.
RATE = 20
PACED_MAILS = 21


async def test_a_paced_sender_spaces_its_calls_by_the_rate(tmp_path: Path) -> None:
    """``MAILMAN_SENDER_RATE_PER_PROVIDER=sendgrid:20``: SendGrid receives the calls about
    1/20 s apart (any 5 in a row span 4 intervals, 20 % allowed for the loopback's jitter),
    each mail once, though 64 calls could be in flight at once."""
    batch = [mail(i) for i in range(PACED_MAILS)]
    async with (
        SQLiteStore(str(tmp_path / "paced.db")) as store,
        FakeSendGrid(api_key="SG.paced") as sendgrid,
    ):
        for one in batch:
            await store.add(one)
        await deliver(store, sendgrid, batch, concurrency=CEILING, rate=RATE)
    assert sorted(sendgrid.mail_ids()) == sorted(m.id for m in batch)
    at = sendgrid.call_times
    spans = [at[i + 4] - at[i] for i in range(len(at) - 4)]
    assert min(spans) >= 4 / RATE * 0.8, spans


def test_the_rate_setting_reaches_the_named_sender_only(tmp_path: Path) -> None:
    """A provider named in ``MAILMAN_SENDER_RATE_PER_PROVIDER`` gets a pace of that rate;
    without the setting a sender has none."""
    paces = []
    for env in ({}, {"MAILMAN_SENDER_RATE_PER_PROVIDER": "outbox:2"}):
        system = Mailman(make_config(tmp_path, env))
        sender = system._sender_factory("outbox")()
        assert isinstance(sender, Sender)
        paces.append(None if sender.pace is None else sender.pace.per_second)
    assert paces == [None, 2]


class SlowToBegin(SQLiteStore):
    """A store that takes ``seconds`` to record the attempt of one mail (a busy store)."""

    def __init__(self, path: str, slow_id: str, seconds: float) -> None:
        super().__init__(path)
        self.slow_id, self.seconds = slow_id, seconds

    async def begin_attempt(
        self, mail_id: str, provider: str, round_: int, at: float, stale_before: float
    ) -> Begun | None:
        if mail_id == self.slow_id:
            self.slow_id = ""  # once
            await asyncio.sleep(self.seconds)
        return await super().begin_attempt(mail_id, provider, round_, at, stale_before)


async def test_a_paced_mail_slowed_on_its_way_does_not_leave_with_the_next(
    tmp_path: Path,
) -> None:
    """At 10 calls a second, a mail whose attempt takes 0.5 s to record reaches SendGrid
    in a turn of its own: no two calls closer than half an interval."""
    batch = [mail(i) for i in range(12)]
    async with (
        SlowToBegin(str(tmp_path / "slow.db"), batch[2].id, 0.5) as store,
        FakeSendGrid(api_key="SG.paced") as sendgrid,
    ):
        for one in batch:
            await store.add(one)
        await deliver(store, sendgrid, batch, concurrency=CEILING, rate=10)
    assert sorted(sendgrid.mail_ids()) == sorted(m.id for m in batch)
    at = sendgrid.call_times
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert min(gaps) >= 0.5 / 10, gaps

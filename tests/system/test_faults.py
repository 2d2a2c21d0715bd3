"""Fault injection: real processes, a real broker and database, faults on purpose, under load.

Each scenario sends a known set of mails (distinct subjects and idempotency
keys) while something goes wrong, then waits until every accepted mail (every
``201``) is final and checks that each one is at a fake provider or ``failed``
with a reason. Each prints one line (``pytest -s`` shows it), also appended to
``fault-report.txt`` in the session's base temporary directory, whose path is
printed at the end of the session::

    fault=<name> mails=N lost=L duplicates=D (D/N %) extra=...

``duplicates`` counts provider calls that took a mail beyond one per mail,
across every fake; ``lost`` counts mails answered 201 that no fake has and
that are not ``failed``. The Kafka and MySQL scenarios are skipped without the
servers, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mailman.core.ids import new_id
from mailman.core.messages import Dispatch, encode
from mailman.core.model import Address, Mail
from mailman.mailboxes.routing import send_mailbox
from mailman.store.mysql import MySQLStore

from ..conftest import eventually, postmark_env, provider_env
from ..support.databases import fresh_mysql
from ..support.fake_postmark import FakePostmark
from ..support.fake_resend import FakeResend
from ..support.fake_ses import FakeSes
from ..support.fakes import FakeMailgun, FakeProvider, FakeSendGrid, sendgrid_verification_key
from ..support.faults import (
    Deployment,
    Flap,
    FlappingMailgun,
    Load,
    PrivateMariaDB,
    Role,
    Tally,
    UnrulySendGrid,
    dead_letters,
    holds,
    publish_raw,
    report,
    settle,
    tally,
)
from ..support.kafka_broker import free_port, kafka_options

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=20)

#: How long the fakes take to answer where calls must be in flight when a process dies
#: (a real provider answers in 100-300 ms; the fake still takes a call whose caller died).
LATENCY = 0.1

#: What every embedded (one-process) scenario runs with: short provider timeout and backoff.
QUICK = {
    "MAILMAN_PROVIDER_TIMEOUT": "1",
    "MAILMAN_RETRY_BASE_SECONDS": "0.2",
    "MAILMAN_RETRY_CAP_SECONDS": "1",
    "MAILMAN_SHUTDOWN_TIMEOUT": "2",
}


@pytest.fixture(scope="session")
def fault_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The file every scenario appends its line to, in pytest's base temporary directory."""
    path = tmp_path_factory.getbasetemp() / "fault-report.txt"
    yield path
    if path.exists():
        print(f"\nfault report: {path}")


@pytest.fixture
async def shared_mysql() -> AsyncIterator[str]:
    """A fresh database on the shared MySQL/MariaDB server (127.0.0.1:3306), dropped after."""
    async with fresh_mysql("faults") as url:
        yield url


@pytest.fixture
async def private_mariadb(tmp_path: Path) -> AsyncIterator[PrivateMariaDB]:
    """A MariaDB server of this test's own, which the test may stop and start."""
    server = PrivateMariaDB(tmp_path / "mariadb")
    try:
        await server.start()
        yield server
    finally:
        await server.close()


def embedded_env(
    sg: FakeSendGrid, mg: FakeMailgun, tmp_path: Path, port: int, **extra: str
) -> dict[str, str]:
    """One ``mailman`` process on a SQLite file, SendGrid then Mailgun, a fixed port."""
    return provider_env(
        sg,
        mg,
        MAILMAN_STORE=f"sqlite:///{tmp_path / 'mailman.db'}",
        MAILMAN_OUTBOX_DIR=str(tmp_path / "outbox"),
        MAILMAN_PORT=str(port),
        **{**QUICK, **extra},
    )


def scaled_env(
    bootstrap: str, store: str, sg: FakeSendGrid, mg: FakeMailgun, **extra: str
) -> dict[str, str]:
    """A process per role on Kafka and MySQL, with short timeouts (as in test_scale)."""
    options = kafka_options()
    return provider_env(
        sg,
        mg,
        MAILMAN_BROKER=f"kafka://{bootstrap}",
        MAILMAN_STORE=store,
        MAILMAN_KAFKA_TOPIC_PREFIX=f"faults-{secrets.token_hex(4)}.",
        MAILMAN_KAFKA_PARTITIONS="4",
        MAILMAN_KAFKA_IDEMPOTENT=str(options["idempotent"]).lower(),
        MAILMAN_KAFKA_SESSION_TIMEOUT_MS=str(options["session_timeout_ms"]),
        MAILMAN_KAFKA_FETCH_MAX_WAIT_MS="100",
        MAILMAN_BREAKER_SYNC_SECONDS="0.1",
        MAILMAN_RELAY_INTERVAL_SECONDS="0.05",
        MAILMAN_RELAY_LEASE_SECONDS="3",
        **{**QUICK, **extra},
    )


def name_of(fake: FakeProvider[Any]) -> str:
    """The provider a fake stands for, as Mailman names it."""
    kinds = (
        (FakeSendGrid, "sendgrid"),
        (FakeMailgun, "mailgun"),
        (FakeResend, "resend"),
        (FakePostmark, "postmark"),
        (FakeSes, "ses"),
    )
    return next(name for kind, name in kinds if isinstance(fake, kind))


def delivered(*fakes: FakeProvider[Any]) -> int:
    return sum(len(f.received) for f in fakes)


def conclude(
    path: Path,
    fault: str,
    load: Load,
    final: dict[str, dict[str, Any]],
    fakes: tuple[FakeProvider[Any], ...],
    *,
    began: float,
    dead: list[str],
    **extra: object,
) -> Tally:
    """Report the scenario's line, then check what every scenario must end with:
    no process ended by itself, every accepted mail final, none lost."""
    tallied = tally(fault, load.ids(), final, fakes)
    figures = {
        **extra,
        "dead": ",".join(dead) or "none",
        "posted": load.started,
        "retried_posts": sum(load.retried.values()),
        "replayed": load.replayed,
        "elapsed": f"{time.monotonic() - began:.1f}s",
    }
    report(path, tallied.line(**figures))
    assert dead == [], f"processes ended by themselves: {dead}"
    assert load.unexpected == [], load.unexpected[:5]
    assert load.gave_up == [], f"{len(load.gave_up)} mails never got their 201"
    assert tallied.not_final == [], f"{len(tallied.not_final)} accepted mails not final"
    assert tallied.lost == [], f"{len(tallied.lost)} accepted mails lost"
    assert all(tallied.failed.values()), "a failed mail without a reason"
    return tallied


# --- 1. the embedded process, SIGKILLed again and again ---------------------------

KILLS = 10
#: Mails accepted between two kills (at 150/s: about half a second of uptime).
KILL_STEP = 70


def checks(final: dict[str, dict[str, Any]], provider: str) -> collections.Counter[str]:
    """The ``unknown`` attempts with ``provider``, counted by what checking each found
    (``taken``, ``not-found``, ``cannot-check``; ``unchecked``: never checked)."""
    return collections.Counter(
        attempt["checked"] or "unchecked"
        for mail in final.values()
        for attempt in mail["attempts"]
        if attempt["provider"] == provider and attempt["outcome"] == "unknown"
    )


#: The grace a lost SendGrid or SES answer waits for its processed/Send event in the kill
#: scenarios with their webhooks on: short enough for the scenario's settling time, far
#: longer than the fake takes to post the event (it posts at once, tried again while
#: Mailman is down).
KILL_GRACE = "15"
#: SNS's delivery policy for the SES events in the kill scenario: the subscription's own
#: (SNS allows 1 s at least between tries, up to an hour in all): 30 retries, 1 s apart,
#: jittered as SNS jitters them (``FakeSes.sns_retry_jitter``): the posts one kill cut
#: must not come back in step, all at the same instants of every later restart.
#: SNS's default, 3 retries 20 s apart, needs a grace past 20 s (the default, 60 s, is).
SNS_RETRIES = 30
SNS_RETRY_SECONDS = 1.0
#: With a webhook on, Mailman stays up at least this long between two kills: longer than
#: the longest wait between two tries of an event's post (SNS: 1 s, jittered up to
#: 1.5 s), so that every post's tries meet a run that is listening. At KILL_STEP mails
#: alone a run listened for 0.4-1.0 s on a slow machine, less than SNS's spacing: the
#: posts a kill cut could step over every later run, and their mails, checked
#: ``cannot-check`` after KILL_GRACE, went out twice (a test of its own timing, not of
#: Mailman: each event that reached a run was recorded in 10-36 ms).
WEBHOOK_UPTIME_S = 2.0
#: Matches the fakes' loopback URLs where Mailman expects SNS's hosts.
LOOPBACK = r"http://127\.0\.0\.1:[0-9]+"


@dataclass(frozen=True)
class FirstProvider:
    """The provider first in the chain of a kill scenario (the other one: Mailgun, or
    SendGrid when Mailgun is first), and whether its webhook is on."""

    name: str
    webhook: bool = False

    @property
    def chain(self) -> str:
        return f"{self.name},{'sendgrid' if self.name == 'mailgun' else 'mailgun'}"


FIRST = {
    "mailgun": FirstProvider("mailgun"),
    "sendgrid": FirstProvider("sendgrid"),
    "sendgrid-webhook": FirstProvider("sendgrid", webhook=True),
    "resend": FirstProvider("resend"),
    "postmark": FirstProvider("postmark"),
    "ses-webhook": FirstProvider("ses", webhook=True),
}


async def first_fake(
    stack: contextlib.AsyncExitStack, first: FirstProvider, url: str
) -> tuple[FakeProvider[Any] | None, dict[str, str]]:
    """The fake of ``first`` when it is none of the two always there (SendGrid, Mailgun),
    and the settings that point Mailman at it (with its webhook, if on)."""
    if first.name == "resend":
        resend = await stack.enter_async_context(FakeResend(delay=LATENCY))
        return resend, {"RESEND_API_KEY": resend.api_key, "RESEND_BASE_URL": resend.base_url}
    if first.name == "postmark":
        postmark = await stack.enter_async_context(FakePostmark(delay=LATENCY))
        return postmark, postmark_env(postmark)
    if first.name == "ses":
        ses = await stack.enter_async_context(FakeSes(delay=LATENCY))
        ses.webhook_url = f"{url}/webhooks/ses"
        ses.webhook_attempts = 1 + SNS_RETRIES
        ses.sns_retry_seconds = SNS_RETRY_SECONDS
        return ses, {
            **ses.env(),
            # Only the fake's credentials: no file or instance role of this machine's.
            "AWS_CONFIG_FILE": "/nonexistent/aws/config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws/credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
            "SES_REGION": ses.region,
            "SES_ENDPOINT_URL": ses.base_url,
            "MAILMAN_SES_SNS_TOPIC_ARNS": ses.topic_arn,
            "MAILMAN_SNS_HOST_PATTERN": LOOPBACK,
        }
    return None, {}


def asked(provider: str, fake: FakeProvider[Any] | None, mg: FakeMailgun) -> dict[str, int]:
    """How ``provider`` was asked about its lost answers, as the report names it."""
    if provider == "mailgun":
        return {"mailgun_lookups": mg.lookups}
    if isinstance(fake, FakeResend):
        return {"resend_replays": fake.replays, "resend_concurrent_409": fake.concurrent}
    if isinstance(fake, FakePostmark):
        return {"postmark_lookups": fake.lookups}
    return {}


@pytest.mark.parametrize("first", list(FIRST))
async def test_embedded_kill(first: str, tmp_path: Path, fault_report: Path) -> None:
    """SIGKILLed 10 times under load, the embedded process loses no mail. With a provider
    it can ask first (Mailgun's events, Postmark's search, Resend's Idempotency-Key), or
    one that reports what it took (SendGrid's or SES's webhook on: its processed or Send
    event), under 1 % go out twice; with SendGrid first and no webhook, every duplicate is
    a SendGrid attempt shown as unknown and never found taken."""
    began = time.monotonic()
    chosen = FIRST[first]
    key = ec.generate_private_key(ec.SECP256R1())
    webhook = chosen.webhook and chosen.name == "sendgrid"
    async with contextlib.AsyncExitStack() as stack:
        sg = await stack.enter_async_context(
            FakeSendGrid(delay=LATENCY, webhook_private_key=key if webhook else None)
        )
        mg = await stack.enter_async_context(FakeMailgun(delay=LATENCY))
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=CLIENT_TIMEOUT))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        fake, extra = await first_fake(stack, chosen, url)
        extra["MAILMAN_PROVIDERS"] = chosen.chain
        if chosen.webhook:
            extra["MAILMAN_UNKNOWN_GRACE_SECONDS"] = KILL_GRACE
        if webhook:
            extra["MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY"] = sendgrid_verification_key(key)
            sg.webhook_url = f"{url}/webhooks/sendgrid"
            # SendGrid tries a post again for 24 hours; the fake, through every restart,
            # at most 0.5 s apart: doubling, a post that met a few restarts (2-4 s each on
            # a slow machine) waited 13 s, then 26, for its next try, past KILL_GRACE.
            sg.webhook_attempts = 60
            sg.webhook_retry_max = 0.5
        fakes: tuple[FakeProvider[Any], ...] = (sg, mg) if fake is None else (sg, mg, fake)
        env = embedded_env(sg, mg, tmp_path, port, **extra)
        deployment = Deployment(env, tmp_path)
        load = Load(http, url, f"embedded-kill-{first}-first", rate=150, limit=5000)
        try:
            await deployment.start(Role("mailman"))
            load.start()
            up = time.monotonic()
            for _ in range(KILLS):
                # Kill once mails were accepted and delivered since the last start:
                # some are always between the provider and the store at that moment.
                await load.until(len(load) + KILL_STEP)
                if chosen.webhook:  # the fault schedule: up at least this long
                    await asyncio.sleep(max(0.0, up + WEBHOOK_UPTIME_S - time.monotonic()))
                since = delivered(*fakes)

                def delivering(since: int = since) -> bool:
                    return delivered(*fakes) > since

                await eventually(delivering, what="mails delivered since the last start")
                await deployment.kill("mailman")
                await deployment.restart("mailman")
                up = time.monotonic()
            await load.until(len(load) + KILL_STEP)
            await load.stop()
            final, _ = await settle(http, url, load.ids(), within=60, deployment=deployment)
            dead = deployment.dead()
        finally:
            await load.close()
            await deployment.close()
        posts = (fake if isinstance(fake, FakeSes) else sg).webhook_answers
    found = checks(final, chosen.name)
    tallied = conclude(
        fault_report,
        f"embedded-kill-{first}-first",
        load,
        final,
        fakes,
        began=began,
        dead=dead,
        kills=sum(deployment.kills.values()),
        unknown=f"{chosen.name}:{sum(found.values())}",
        checked="/".join(f"{k}:{n}" for k, n in sorted(found.items())) or "none",
        **asked(chosen.name, fake, mg),
        event_posts_retried=sum(1 for status in posts if not 200 <= status < 300),
    )
    if first != "sendgrid":
        assert tallied.duplicates < 0.01 * tallied.mails, (
            f"{tallied.duplicates} of {tallied.mails} mails were sent twice"
        )
    else:  # no silent duplicate: each is an unknown SendGrid attempt the history shows
        assert tallied.duplicates <= sum(found.values()) - found["taken"]


# --- 2. a process per role, each SIGKILLed in turn ----------------------------------

#: Mails accepted between two kills (at 40/s: about a second).
ROLE_STEP = 40


async def test_scaled_role_kill(
    tmp_path: Path, kafka_bootstrap: str, shared_mysql: str, fault_report: Path
) -> None:
    """Each role of the scaled deployment SIGKILLed in turn under load: no accepted mail lost."""
    began = time.monotonic()
    async with (
        FakeSendGrid(delay=LATENCY) as sg_a,
        FakeSendGrid(delay=LATENCY) as sg_b,
        FakeMailgun(delay=LATENCY) as mg,
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http,
    ):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = scaled_env(kafka_bootstrap, shared_mysql, sg_a, mg)
        deployment = Deployment(env, tmp_path)
        load = Load(http, url, "scaled-role-kill", rate=40, limit=5000, concurrency=16)
        order = ["api", "sendgrid-a", "relay", "mailgun", "sweeper", "sendgrid-b", "retry"]
        try:
            await deployment.start(
                Role("api", "api", {"MAILMAN_PORT": str(port)}),
                Role("relay", "relay"),
                Role("sendgrid-a", "sendgrid"),
                Role("sendgrid-b", "sendgrid", {"SENDGRID_BASE_URL": sg_b.base_url}),
                Role("mailgun", "mailgun"),
                Role("sweeper", "sweeper"),
                Role("retry", "retry"),
            )
            load.start()
            for name in order:
                await load.until(len(load) + ROLE_STEP)
                await deployment.kill(name)
                await deployment.restart(name)
            await load.until(len(load) + ROLE_STEP)
            await load.stop()
            final, _ = await settle(http, url, load.ids(), within=90, deployment=deployment)
            dead = deployment.dead()
            failures = deployment.failures()
        finally:
            await load.close()
            await deployment.close()
    conclude(
        fault_report,
        "scaled-role-kill",
        load,
        final,
        (sg_a, sg_b, mg),
        began=began,
        dead=dead,
        kills=sum(deployment.kills.values()),
        crash_lines=sum(failures.values()),
    )


# --- 3. the database away for a minute -----------------------------------------------

OUTAGE_SECONDS = 60.0


async def test_db_outage(
    tmp_path: Path, kafka_bootstrap: str, private_mariadb: PrivateMariaDB, fault_report: Path
) -> None:
    """A 60 s database outage under load: every role stays alive and no accepted mail is lost."""
    began = time.monotonic()
    store_url = private_mariadb.url(f"mailman_outage_{secrets.token_hex(3)}")
    await MySQLStore.create_database(store_url)
    async with (
        FakeSendGrid(delay=LATENCY) as sg,
        FakeMailgun(delay=LATENCY) as mg,
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http,
    ):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = scaled_env(kafka_bootstrap, store_url, sg, mg, MAILMAN_STORE_TIMEOUT_SECONDS="1")
        deployment = Deployment(env, tmp_path)
        load = Load(http, url, "db-outage", rate=25, limit=5000, concurrency=16)
        try:
            await deployment.start(
                Role("api", "api", {"MAILMAN_PORT": str(port)}),
                Role("relay", "relay"),
                Role("sendgrid", "sendgrid"),
                Role("mailgun", "mailgun"),
                Role("sweeper", "sweeper"),
                Role("retry", "retry"),
            )
            load.start()
            await load.until(50)
            stopped_in = await private_mariadb.stop()
            await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself: a duration, not a wait
            dead_during = deployment.dead()
            await private_mariadb.start()
            back_at = time.monotonic()
            await load.until(len(load) + 50, within=90)
            recovered_in = time.monotonic() - back_at
            await load.stop()
            final, _ = await settle(http, url, load.ids(), within=90, deployment=deployment)
            dead = deployment.dead()
            failures = deployment.failures()
        finally:
            await load.close()
            await deployment.close()
    conclude(
        fault_report,
        "db-outage",
        load,
        final,
        (sg, mg),
        began=began,
        dead=dead,
        outage=f"{OUTAGE_SECONDS:g}s",
        db_stop=f"{stopped_in:.2f}s",
        first_201_after=f"{recovered_in:.1f}s",
        answered_503=load.retried["503"],
        crash_lines=sum(failures.values()),
    )
    assert dead_during == [], f"roles died during the outage: {dead_during}"
    assert load.retried["503"] > 0, "the API never answered 503 while the store was down"


# --- 4 and 5: a provider misbehaving under a steady load ---------------------------------


async def misbehaving(
    fault: str,
    sg: FakeSendGrid,
    mg: FakeMailgun,
    tmp_path: Path,
    fault_report: Path,
    *,
    limit: int,
    webhook: bool = False,
    first: FakeProvider[Any] | None = None,
    provider: str = "sendgrid",
    **env: str,
) -> tuple[Tally, int]:
    """The embedded process sends ``limit`` mails at 100/s through the (misbehaving)
    fakes until every one is final; ``conclude`` checks and reports. ``first``: a third
    fake, first in the chain (``env`` names it). ``webhook``: SendGrid posts its events
    (processed first) to Mailman, whose SendGrid webhook is on. Returns the tally and the
    half-open trials made to ``provider`` (from the logs)."""
    began = time.monotonic()
    fakes: tuple[FakeProvider[Any], ...] = (sg, mg) if first is None else (sg, mg, first)
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if webhook:
            key = ec.generate_private_key(ec.SECP256R1())
            sg.webhook_private_key = key
            sg.webhook_url = f"{url}/webhooks/sendgrid"
            env = {**env, "MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY": sendgrid_verification_key(key)}
        deployment = Deployment(embedded_env(sg, mg, tmp_path, port, **env), tmp_path)
        load = Load(http, url, fault, rate=100, limit=limit)
        try:
            await deployment.start(Role("mailman"))
            load.start()
            await load.finished()
            final, _ = await settle(http, url, load.ids(), within=60, deployment=deployment)
            dead = deployment.dead()
        finally:
            await load.close()
            await deployment.close()
    trials = deployment.trials(provider)
    found = checks(final, provider)
    tallied = conclude(
        fault_report,
        fault,
        load,
        final,
        fakes,
        began=began,
        dead=dead,
        **{f"{name_of(f)}_calls": f.calls for f in fakes},
        trials=f"{provider}:{trials}",
        **asked(provider, first, mg),
        unknown=f"{provider}:{sum(found.values())}",
        checked="/".join(f"{k}:{n}" for k, n in sorted(found.items())) or "none",
        late_answers=sum(
            1
            for mail in final.values()
            for a in mail["attempts"]
            if a["provider"] == provider and "answered late" in (a["reason"] or "")
        ),
    )
    return tallied, trials


@dataclass(frozen=True)
class Slow:
    """A slow-provider scenario: which provider is slow, and what may settle its lost
    answers (its late answers, SendGrid's events, Resend's key, Postmark's search)."""

    provider: str
    late_answers: bool = False
    webhook: bool = False


SLOW = {
    # Its answer comes 0.5 s after the timeout: listened for (the default).
    "sendgrid-late-answer": Slow("sendgrid", late_answers=True),
    # Late answers off: what is left is each provider's own check.
    "sendgrid-webhook": Slow("sendgrid", webhook=True),
    "resend": Slow("resend"),
    "postmark": Slow("postmark"),
}
#: How long the slow fakes take to answer a mail they took: past the 1 s timeout.
SLOW_SECONDS = 1.5


@pytest.mark.parametrize("case", list(SLOW))
async def test_slow_provider(case: str, tmp_path: Path, fault_report: Path) -> None:
    """A provider takes each mail but answers after the 1 s timeout: no accepted mail is
    lost, and it costs at most one duplicate per half-open trial of its breaker. Its
    late answer settles the lost answers (SendGrid, late answers on); with late answers
    off, SendGrid's processed events, Resend's key (asked again once its first request
    is done) or Postmark's search do."""
    slow = SLOW[case]
    async with contextlib.AsyncExitStack() as stack:
        sg = await stack.enter_async_context(
            UnrulySendGrid(slow=SLOW_SECONDS if slow.provider == "sendgrid" else 0.0)
        )
        mg = await stack.enter_async_context(FakeMailgun())
        first: FakeProvider[Any] | None = None
        env = {"MAILMAN_BREAKER_RESET_SECONDS": "2"}
        if not slow.late_answers:
            env["MAILMAN_LATE_ANSWER_SECONDS"] = "0"
        if slow.provider == "resend":
            resend = await stack.enter_async_context(FakeResend(answer_delay=SLOW_SECONDS))
            env.update(RESEND_API_KEY=resend.api_key, RESEND_BASE_URL=resend.base_url)
            first = resend
        elif slow.provider == "postmark":
            postmark = await stack.enter_async_context(FakePostmark(answer_delay=SLOW_SECONDS))
            env.update(postmark_env(postmark))
            first = postmark
        if first is not None:
            env["MAILMAN_PROVIDERS"] = f"{slow.provider},mailgun"
        tallied, trials = await misbehaving(
            f"slow-provider-{case}",
            sg,
            mg,
            tmp_path,
            fault_report,
            limit=400,
            webhook=slow.webhook,
            first=first,
            provider=slow.provider,
            **env,
        )
    assert tallied.duplicates <= trials, (
        f"{tallied.duplicates} mails sent twice, {trials} half-open trials of {slow.provider}"
    )


async def test_flapping_provider(tmp_path: Path, fault_report: Path) -> None:
    """SendGrid and Mailgun flap between healthy and 503 every second: no mail is lost."""
    async with (
        UnrulySendGrid(flap=Flap(1.0)) as sg,
        FlappingMailgun(flap=Flap(1.0, phase=0.5)) as mg,  # both down half a second in two
    ):
        await misbehaving(
            "flapping-provider",
            sg,
            mg,
            tmp_path,
            fault_report,
            limit=500,
            MAILMAN_BREAKER_RESET_SECONDS="1",
            MAILMAN_BREAKER_FAIL_MAX="5",
        )


# --- 6. poison records in a sender's topic ------------------------------------------------

GARBAGE = b"\xff\x00 not a Dispatch {"


async def test_poison(
    tmp_path: Path, kafka_bootstrap: str, shared_mysql: str, fault_report: Path
) -> None:
    """Poison records in a sender's topic crash nothing, are dead letters, and mail flows."""
    began = time.monotonic()
    async with (
        UnrulySendGrid() as sg,
        FakeMailgun() as mg,
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http,
        MySQLStore.from_url(shared_mysql) as store,
    ):
        # The decodable poison is about a real mail that is on its way (``sending``,
        # its outbox entry leased to this test, so no relay hands it on) and that
        # SendGrid refuses: a sender that trusts the record's hop fails over to a
        # provider past the end of the chain.
        target = Mail(
            id=new_id(),
            sender=Address("shop@example.com"),
            to=(Address("poison@example.com"),),
            subject="poison target",
            text="the mail a poison record is about",
        )
        await store.add(target)
        claimed = await store.claim_outbox("test-faults", 10, 3600, time.time())
        assert [e.mail_id for e in claimed] == [target.id]
        sg.refuse.add(target.id)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = scaled_env(kafka_bootstrap, shared_mysql, sg, mg)
        topic = env["MAILMAN_KAFKA_TOPIC_PREFIX"] + send_mailbox("sendgrid")
        deployment = Deployment(env, tmp_path)
        load = Load(http, url, "poison", rate=60, limit=300, concurrency=16)
        try:
            await deployment.start(
                Role("core", "api,relay,retry,sweeper", {"MAILMAN_PORT": str(port)}),
                Role("sendgrid", "sendgrid"),
                Role("mailgun", "mailgun"),
            )
            load.start()
            await load.until(50)
            senders = ("sendgrid", "mailgun")
            poison = Dispatch(target.id, target.created_at, hop=9)
            await publish_raw(
                kafka_bootstrap,
                topic,
                [(target.id.encode(), encode(poison)), (b"garbage", GARBAGE)],
            )

            async def poison_taken() -> bool:
                record = await store.get(target.id)
                return (
                    sg.calls_for[target.id] > 0  # handled as a mail
                    or (record is not None and record.status.terminal)  # or failed as poison
                    or bool(deployment.failures())
                )

            taken = await holds(poison_taken, within=30, interval=0.1)
            await load.finished()
            final, _ = await settle(
                http, url, load.ids(), within=60, deployment=deployment, watch=senders
            )
            letters: list[dict[str, Any]] = []

            async def listed() -> bool:
                nonlocal letters
                letters = await dead_letters(shared_mysql)
                return len(letters) >= 2

            await holds(listed, within=15)
            dead = deployment.dead()
            failures = deployment.failures()
            record = await store.get(target.id)
        finally:
            await load.close()
            await deployment.close()
    conclude(
        fault_report,
        "poison",
        load,
        final,
        (sg, mg),
        began=began,
        dead=dead,
        crash_lines=sum(failures.values()),
        poison_taken=taken,
        target=record.status.value if record else "unknown",
        target_calls=sg.calls_for[target.id],
        dead_letters=len(letters),
    )
    assert taken, "the poison record was never taken"
    assert failures == {}, f"actors failed on the poison records: {failures}"
    # Both are listed: the undecodable one by its bytes, the other by its mail, failed.
    assert {x["mail_id"] for x in letters} == {"garbage", target.id}, letters
    assert record is not None and record.status.value == "failed"
    assert record.reason is not None and "dead letter" in record.reason

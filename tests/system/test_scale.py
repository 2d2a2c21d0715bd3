"""Scale-out: every actor its own OS process, Kafka mailboxes, MySQL store, failures on purpose.

api x2, relay, sendgrid x2, mailgun, sweeper and retry run as separate
``mailman --role ...`` processes against a real Kafka-protocol broker (Tansu,
behind a TCP proxy that can cut the network) and MariaDB. 1,000 mails go in
through both API replicas while SendGrid turns to 503, one SendGrid worker is
killed with SIGKILL and the broker becomes unreachable for a few seconds.
Every mail must end ``sent``; duplicate provider calls are counted and printed.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mailman.core.model import Status
from mailman.store import Store
from mailman.store.mysql import MySQLStore

from ..conftest import eventually, provider_env
from ..support.databases import fresh_mysql
from ..support.fakes import FakeMailgun, FakeSendGrid
from ..support.kafka_broker import external_kafka, free_port, kafka_options, start_tansu
from ..support.processes import Process, start_mailman, stop_process
from ..support.proxy import TcpProxy

MAILS = 1000


@pytest.fixture
async def mysql_url() -> AsyncIterator[str]:
    """A fresh database of its own on the test MySQL/MariaDB server, dropped afterwards."""
    async with fresh_mysql("scale") as url:
        yield url


@pytest.fixture
async def broker() -> AsyncIterator[tuple[str, TcpProxy | None]]:
    """A Kafka bootstrap address, behind a cuttable proxy when the broker is our own Tansu."""
    given = external_kafka()
    if given:  # a real cluster advertises its own addresses: no proxy can sit in between
        yield given, None
        return
    upstream = free_port()
    async with TcpProxy("127.0.0.1", upstream) as proxy:
        tansu = await asyncio.to_thread(start_tansu, upstream, proxy.port)
        try:
            yield f"127.0.0.1:{proxy.port}", proxy
        finally:
            await asyncio.to_thread(tansu.stop)


async def post_mail(http: aiohttp.ClientSession, url: str, n: int) -> str:
    body = {"to": [f"user{n}@example.com"], "from": "shop@example.com", "content": f"#{n}"}
    async with http.post(f"{url}/mail/send", json=body) as resp:
        assert resp.status == 201, await resp.text()
        mail_id: str = (await resp.json())["mail"]["id"]
        return mail_id


async def post_many(
    http: aiohttp.ClientSession, urls: list[str], numbers: range, into: list[str]
) -> None:
    """POST mails ``numbers`` round-robin over the API replicas, 16 at a time."""
    replicas = itertools.cycle(urls)
    gate = asyncio.Semaphore(16)

    async def one(n: int, url: str) -> None:
        async with gate:
            into.append(await post_mail(http, url, n))

    await asyncio.gather(*(one(n, next(replicas)) for n in numbers))


async def count_sent(store: Store, ids: list[str]) -> int:
    sent = 0
    for mail_id in ids:
        loaded = await store.load(mail_id)
        sent += loaded is not None and loaded[1] is Status.SENT
    return sent


async def test_scaled_deployment_survives_failures(
    tmp_path: Path, mysql_url: str, broker: tuple[str, TcpProxy | None]
) -> None:
    """Through 503s, a SIGKILLed worker and a broker cut, every accepted mail ends sent."""
    bootstrap, proxy = broker
    options = kafka_options()
    async with (
        FakeSendGrid() as sg_a,
        FakeSendGrid() as sg_b,
        FakeMailgun() as mg,
        aiohttp.ClientSession() as http,
        MySQLStore.from_url(mysql_url) as store,
    ):
        env = {
            **provider_env(sg_a, mg),
            "MAILMAN_BROKER": f"kafka://{bootstrap}",
            "MAILMAN_STORE": mysql_url,
            "MAILMAN_KAFKA_TOPIC_PREFIX": f"scale-{secrets.token_hex(4)}.",
            "MAILMAN_KAFKA_PARTITIONS": "4",
            "MAILMAN_KAFKA_IDEMPOTENT": str(options["idempotent"]).lower(),
            "MAILMAN_KAFKA_SESSION_TIMEOUT_MS": str(options["session_timeout_ms"]),
            "MAILMAN_KAFKA_FETCH_MAX_WAIT_MS": "100",
            "MAILMAN_PROVIDER_TIMEOUT": "5",
            "MAILMAN_BREAKER_FAIL_MAX": "10",
            "MAILMAN_BREAKER_RESET_SECONDS": "600",
            "MAILMAN_BREAKER_SYNC_SECONDS": "0.1",
            "MAILMAN_RETRY_BASE_SECONDS": "0.2",
            "MAILMAN_RETRY_CAP_SECONDS": "1",
            "MAILMAN_RELAY_INTERVAL_SECONDS": "0.05",
            "MAILMAN_RELAY_LEASE_SECONDS": "5",
        }
        roles = [
            ("api-1", "api", {}),
            ("api-2", "api", {}),
            ("relay", "relay", {}),
            ("sendgrid-a", "sendgrid", {}),
            ("sendgrid-b", "sendgrid", {"SENDGRID_BASE_URL": sg_b.base_url}),
            ("mailgun", "mailgun", {}),
            ("sweeper", "sweeper", {}),
            ("retry", "retry", {}),
        ]
        started = await asyncio.gather(
            *(
                start_mailman({**env, **extra}, tmp_path / f"{name}.log", "--role", role)
                for name, role, extra in roles
            ),
            return_exceptions=True,
        )
        procs: dict[str, Process] = {}
        for (name, _, _), result in zip(roles, started, strict=True):
            if isinstance(result, Process):
                procs[name] = result
        try:
            failed = [r for r in started if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
            apis = [procs["api-1"].url, procs["api-2"].url]
            ids: list[str] = []

            # 1. SendGrid up: the first half, sent through SendGrid.
            await post_many(http, apis, range(0, MAILS // 2), ids)

            async def first_half_sent() -> bool:
                return await count_sent(store, ids) == len(ids)

            await eventually(first_half_sent, within=60, interval=0.2, what="the first half sent")
            assert len(sg_a.received) + len(sg_b.received) == MAILS // 2
            assert sg_a.received and sg_b.received  # both workers had partitions

            # 2. SendGrid down (503) halfway: mails fail over to Mailgun until a
            #    breaker opens; then no worker calls SendGrid any more.
            sg_a.mode = sg_b.mode = "503"
            await post_many(http, apis, range(MAILS // 2, 700), ids)

            async def sendgrid_open() -> bool:
                return any(
                    b.provider == "sendgrid" and b.state == "open" for b in await store.breakers()
                )

            await eventually(sendgrid_open, within=30, what="SendGrid's shared breaker to open")
            opened_at = max(
                b.updated_at for b in await store.breakers() if b.provider == "sendgrid"
            )

            # 3. One SendGrid worker dies with SIGKILL mid-run.
            procs["sendgrid-a"].proc.send_signal(signal.SIGKILL)
            await procs["sendgrid-a"].proc.wait()
            await post_many(http, apis, range(700, 800), ids)

            # 4. The broker becomes unreachable for a few seconds; the API keeps answering 201.
            if proxy is not None:
                connections = proxy.connections
                proxy.cut()
                await post_many(http, apis, range(800, 900), ids)
                cut_until = time.monotonic() + 3
                await eventually(lambda: time.monotonic() > cut_until, within=10, what="the cut")
                proxy.restore()
            await post_many(http, apis, range(len(ids), MAILS), ids)
            assert len(set(ids)) == MAILS

            # 5. Every mail ends sent.
            async def all_sent() -> bool:
                return await count_sent(store, ids) == MAILS

            await eventually(all_sent, within=120, interval=0.5, what=f"all {MAILS} mails sent")

            delivered = sg_a.mail_ids() + sg_b.mail_ids() + mg.mail_ids()
            assert set(delivered) == set(ids)
            if proxy is not None:  # the cut was real: the clients had to connect again
                assert proxy.connections > connections
            duplicates = len(delivered) - MAILS
            grace = opened_at + 1.0  # one sync interval plus calls already in flight
            late = [t for t in sg_a.call_times + sg_b.call_times if t > grace]
            print(
                f"\nscale: {MAILS} mails sent; provider calls: sendgrid-a {sg_a.calls}, "
                f"sendgrid-b {sg_b.calls}, mailgun {mg.calls}; duplicate deliveries: "
                f"{duplicates}; SendGrid calls after its breaker opened (+1 s): {len(late)}"
            )
            assert late == [], "a worker kept calling SendGrid after the shared breaker opened"

            # 6. The survivors stop cleanly on SIGTERM.
            for name, child in procs.items():
                if name != "sendgrid-a":
                    child.proc.send_signal(signal.SIGTERM)
            for name, child in procs.items():
                if name != "sendgrid-a":
                    code = await asyncio.wait_for(child.proc.wait(), 30)
                    assert code == 0, f"{name} exited {code}:\n{child.log.read_text()[-3000:]}"
        finally:
            await asyncio.gather(*(stop_process(p) for p in procs.values()))


async def test_api_answers_201_while_kafka_is_down(tmp_path: Path, mysql_url: str) -> None:
    """An API-only process commits and answers 201 with the broker unreachable: no dual write."""
    from mailman.system import embedded

    from ..conftest import make_config

    dead_broker = f"kafka://127.0.0.1:{free_port()}"
    config = make_config(
        tmp_path, {"MAILMAN_STORE": mysql_url}, "--role", "api", "--broker", dead_broker
    )
    async with embedded(config) as mailman, aiohttp.ClientSession() as http:
        mail_id = await post_mail(http, mailman.url, 1)
        loaded = await mailman.store.load(mail_id)
        assert loaded is not None and loaded[1] is Status.QUEUED
        entries = await mailman.store.claim_outbox("probe", 10, 1.0, time.time())
        assert [e.mail_id for e in entries] == [mail_id]

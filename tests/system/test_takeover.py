"""Takeover: a killed worker's partitions are served by the survivor within bounded time.

The scaled deployment (one ``mailman --role ...`` process per role, Kafka
mailboxes on Tansu or ``$KAFKA_BOOTSTRAP``, a fresh MySQL database) runs two
SendGrid workers, each against a fake SendGrid of its own that notes when each
mail arrived. Under a steady load one worker is killed with SIGKILL: the
coordinator drops it once its session lapses, and the survivor must deliver
the mails of its partitions after one rebalance. The bound asserted here is
generous (the session timeout plus ``ALLOWANCE`` seconds, so that a slow CI
machine does not fail it); ``python -m bench.takeover`` measures the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiokafka.partitioner import murmur2

from mailman.core.model import Status
from mailman.store.mysql import MySQLStore

from ..conftest import eventually
from ..support.databases import fresh_mysql
from ..support.fakes import FakeMailgun, FakeSendGrid
from ..support.kafka_broker import kafka_options
from ..support.processes import Process, start_mailman, stop_process

PARTITIONS = 4
#: Seconds allowed on top of the session timeout for the rebalance (generous on purpose).
ALLOWANCE = 15.0
#: Mails POSTed per second while the worker is killed.
RATE = 25.0


class StampedSendGrid(FakeSendGrid):
    """A fake SendGrid that notes (unix time, mail id) of every mail it accepted."""

    def __init__(self) -> None:
        super().__init__(api_key="SG.takeover")
        self.stamps: list[tuple[float, str]] = []

    async def serve(self, request: web.Request) -> web.StreamResponse:
        at = time.time()
        response = await super().serve(request)
        if response.status < 300:  # nothing awaited since serve appended it: it is ours
            self.stamps.append((at, self.received[-1].get("custom_args", {}).get("mail_id", "")))
        return response


def partition_of(mail_id: str) -> int:
    """The partition the producer puts a message keyed by ``mail_id`` on (aiokafka's default)."""
    hashed: int = murmur2(mail_id.encode())
    return (hashed & 0x7FFFFFFF) % PARTITIONS


def assigned(process: Process, mailbox: str) -> set[int]:
    """The partitions of ``mailbox`` the process was given last (its ``kafka.assigned`` lines)."""
    events = [e for e in process.events("kafka.assigned") if e["topic"].endswith(f".{mailbox}")]
    return set(events[-1]["partitions"]) if events else set()


@pytest.fixture
async def mysql_url() -> AsyncIterator[str]:
    """A fresh database of its own on the test MySQL/MariaDB server, dropped afterwards."""
    async with fresh_mysql("takeover") as url:
        yield url


class Load:
    """POSTs mails at ``RATE`` a second until stopped; the ids of the accepted ones."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.ids: list[str] = []
        self.stopping = asyncio.Event()

    async def post(self, n: int) -> None:
        body = {"to": [f"user{n}@example.com"], "from": "shop@example.com", "content": f"#{n}"}
        async with self.http.post(f"{self.url}/mail/send", json=body) as resp:
            assert resp.status == 201, await resp.text()
            self.ids.append((await resp.json())["mail"]["id"])

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for n in itertools.count():
                group.create_task(self.post(n))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 1 / RATE)
                if self.stopping.is_set():
                    return


async def test_survivor_takes_over_a_killed_senders_partitions(
    tmp_path: Path, mysql_url: str, kafka_bootstrap: str
) -> None:
    """SIGKILL one of two SendGrid workers under load: the survivor takes over in time, all sent."""
    options = kafka_options()
    session = options["session_timeout_ms"] / 1000
    async with (
        StampedSendGrid() as sg_a,
        StampedSendGrid() as sg_b,
        FakeMailgun() as mg,
        aiohttp.ClientSession() as http,
        MySQLStore.from_url(mysql_url) as store,
    ):
        env = {
            "MAILMAN_PROVIDERS": "sendgrid,mailgun",
            "SENDGRID_API_KEY": sg_a.api_key,
            "MAILGUN_API_KEY": mg.api_key,
            "MAILGUN_DOMAIN": mg.domain,
            "MAILGUN_BASE_URL": mg.base_url,
            "MAILMAN_BROKER": f"kafka://{kafka_bootstrap}",
            "MAILMAN_STORE": mysql_url,
            "MAILMAN_KAFKA_TOPIC_PREFIX": f"takeover-{secrets.token_hex(4)}.",
            "MAILMAN_KAFKA_PARTITIONS": str(PARTITIONS),
            "MAILMAN_KAFKA_IDEMPOTENT": str(options["idempotent"]).lower(),
            "MAILMAN_KAFKA_SESSION_TIMEOUT_MS": str(options["session_timeout_ms"]),
            "MAILMAN_KAFKA_FETCH_MAX_WAIT_MS": "100",
            "MAILMAN_PROVIDER_TIMEOUT": "5",
            "MAILMAN_RELAY_INTERVAL_SECONDS": "0.05",
        }
        roles = {
            "api": ("api", sg_a),
            "relay": ("relay", sg_a),
            "sendgrid-a": ("sendgrid", sg_a),
            "sendgrid-b": ("sendgrid", sg_b),
            "mailgun": ("mailgun", sg_a),
            "sweeper": ("sweeper", sg_a),
            "retry": ("retry", sg_a),
        }
        started = await asyncio.gather(
            *(
                start_mailman(
                    {**env, "SENDGRID_BASE_URL": fake.base_url},
                    tmp_path / f"{name}.log",
                    "--role",
                    role,
                )
                for name, (role, fake) in roles.items()
            ),
            return_exceptions=True,
        )
        procs = {n: p for n, p in zip(roles, started, strict=True) if isinstance(p, Process)}
        load = Load(http, procs["api"].url if "api" in procs else "")
        loading: asyncio.Task[None] | None = None
        try:
            for result in started:
                if isinstance(result, BaseException):
                    raise result
            loading = asyncio.create_task(load.run())

            # Both workers deliver: each has partitions of send.sendgrid.
            await eventually(
                lambda: bool(sg_a.stamps and sg_b.stamps), within=60, what="both working"
            )
            theirs = assigned(procs["sendgrid-a"], "send.sendgrid")
            assert theirs and theirs.isdisjoint(assigned(procs["sendgrid-b"], "send.sendgrid"))

            procs["sendgrid-a"].proc.send_signal(signal.SIGKILL)
            await procs["sendgrid-a"].proc.wait()
            killed_at = time.time()

            def taken_over() -> float | None:
                """When the survivor first delivered a mail from the killed worker's partitions."""
                times = [t for t, m in sg_b.stamps if t > killed_at and partition_of(m) in theirs]
                return min(times) if times else None

            bound = session + ALLOWANCE
            await eventually(
                lambda: taken_over() is not None, within=bound + 30, what="the takeover"
            )
            took = (taken_over() or 0.0) - killed_at
            assert took <= bound, f"the survivor took over after {took:.1f} s (bound {bound} s)"
            assert assigned(procs["sendgrid-b"], "send.sendgrid") == set(range(PARTITIONS))

            load.stopping.set()
            await loading
            ids = load.ids

            async def all_sent() -> bool:
                for mail_id in ids:
                    loaded = await store.load(mail_id)
                    if loaded is None or loaded[1] is not Status.SENT:
                        return False
                return True

            await eventually(all_sent, within=90, interval=0.5, what=f"all {len(ids)} mails sent")
            delivered = {m for _, m in sg_a.stamps + sg_b.stamps} | set(mg.mail_ids())
            assert set(ids) <= delivered
            print(
                f"\ntakeover: {len(ids)} mails sent; session {session:g} s; the survivor "
                f"delivered the killed worker's partitions {sorted(theirs)} {took:.2f} s after "
                "the SIGKILL"
            )
        finally:
            load.stopping.set()
            if loading is not None:
                with contextlib.suppress(Exception):
                    await loading
            await asyncio.gather(*(stop_process(p) for p in procs.values()))

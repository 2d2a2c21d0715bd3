"""Fault injection: a steady client, misbehaving providers, a private MariaDB, and the tally.

Every fault scenario in ``tests/test_faults.py`` is built from these parts:

* ``Load`` POSTs mails at a steady rate, each with its own subject and
  ``Idempotency-Key``, and keeps trying a mail through connection errors,
  ``503`` and ``409`` until it gets its ``201`` (the id is then recorded);
* ``Deployment`` runs Mailman processes (one, or one per role), kills one with
  SIGKILL and starts it again on the same store;
* ``UnrulySendGrid`` / ``FlappingMailgun`` are the provider fakes with the faults
  a fault test needs: slow after taking the mail, flapping between healthy and
  ``503``, or ``503`` for chosen mails;
* ``PrivateMariaDB`` is a MariaDB server of the test's own, which the test may
  stop and start again (the shared one on port 3306 is never touched);
* ``settle`` waits until every accepted mail is final, and ``tally`` counts what
  was lost and what was sent twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ..conftest import eventually
from .fakes import FakeMailgun, FakeProvider, FakeSendGrid, Mode
from .kafka_broker import free_port, in_ci
from .processes import ROOT, Process, start_mailman, stop_process

#: Log events that mean an actor or a process failed (a SIGKILL leaves none of them).
FAILURE_EVENTS = ("actor.crashed", "actor.exited", "actor.start_failed", "supervisor.gave_up")


#: How long ``settle`` still waits once a process died or an actor failed.
SETTLE_AFTER_FAILURE = 10.0


# --- provider fakes with faults ----------------------------------------------


@dataclass(frozen=True)
class Flap:
    """Healthy for ``period`` seconds, then ``503`` for ``period`` seconds, and so on."""

    period: float
    #: Where in the cycle the fake starts (seconds): fakes with other phases flap apart.
    phase: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def mode(self) -> Mode:
        cycle = int((time.monotonic() - self.started + self.phase) / self.period)
        return "up" if cycle % 2 == 0 else "503"


class UnrulySendGrid(FakeSendGrid):
    """``FakeSendGrid`` with faults on top of its ``mode``:

    * ``slow``: takes the mail (it is in ``received``), then answers ``slow``
      seconds later (a provider slower than the client's timeout that still
      delivers);
    * ``flap``: switches between healthy and ``503`` on a clock;
    * ``refuse``: mail ids answered ``503`` whatever the mode.
    """

    def __init__(self, *, slow: float = 0.0, flap: Flap | None = None) -> None:
        super().__init__()
        self.slow = slow
        self.flap = flap
        self.refuse: set[str] = set()
        #: Calls per mail id that reached the healthy path (refused ones count too).
        self.calls_for: collections.Counter[str] = collections.Counter()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.flap is not None:
            self.mode = self.flap.mode()
        return await super()._handle(request)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        try:
            mail_id = str(json.loads(await request.read())["custom_args"]["mail_id"])
        except (ValueError, KeyError, TypeError):
            mail_id = ""
        self.calls_for[mail_id] += 1
        if mail_id in self.refuse:
            return self.unavailable()
        response = await super().serve(request)
        if self.slow > 0 and response.status < 300:
            await _wait_or_stop(self, self.slow)
        return response


class FlappingMailgun(FakeMailgun):
    """``FakeMailgun`` switching between healthy and ``503`` on a clock."""

    def __init__(self, *, flap: Flap | None = None) -> None:
        super().__init__()
        self.flap = flap

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.flap is not None:
            self.mode = self.flap.mode()
        return await super()._handle(request)


async def _wait_or_stop(fake: FakeProvider[Any], seconds: float) -> None:
    """Wait ``seconds``, or less if the fake is being stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fake._stopping.wait(), seconds)


# --- the client ----------------------------------------------------------------


class Load:
    """Clients POSTing mails steadily to Mailman, as a careful caller would.

    Mail ``n`` has the subject ``"<fault> #n"`` and the ``Idempotency-Key``
    ``"<fault>-<run>-n"``: a request cut by a kill is sent again with the same
    key, so it becomes one mail, never two. Connection errors, ``503`` (store
    down, backlog full) and ``409`` (the same key still being committed) are
    retried until ``give_up_after`` seconds have passed for that mail; any
    other answer is kept in ``unexpected``. At most ``concurrency`` requests
    are open at once, and mails start at most ``rate`` a second (no catching
    up: while Mailman is down the clients wait, and go on at ``rate`` after).
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str | Callable[[], str],
        fault: str,
        *,
        rate: float,
        limit: int,
        concurrency: int = 32,
        give_up_after: float = 150.0,
    ) -> None:
        self.http = http
        self.url = url if callable(url) else (lambda: url)
        self.fault = fault
        self.rate = rate
        self.limit = limit
        self.concurrency = concurrency
        self.give_up_after = give_up_after
        self.run_id = secrets.token_hex(3)
        #: Mail number -> the id its 201 named.
        self.accepted: dict[int, str] = {}
        #: Retried answers by kind: "connection", "503", "409", "429".
        self.retried: collections.Counter[str] = collections.Counter()
        #: 201s that were replays of an earlier commit (``Idempotent-Replayed``).
        self.replayed = 0
        self.unexpected: list[tuple[int, int, str]] = []
        self.gave_up: list[int] = []
        self.started = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.accepted)

    def ids(self) -> list[str]:
        return list(self.accepted.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"load-{self.fault}")

    async def stop(self) -> None:
        """Start no more mails; return once every started mail got its answer (or gave up)."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def finished(self, *, within: float = 120.0) -> None:
        """Wait until the load ended by itself: every mail got its answer (or gave up)."""
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), within)

    async def close(self) -> None:
        """Cancel the load at once, mails in flight included (after a failure)."""
        self._stop.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def until(self, count: int, *, within: float = 60.0) -> None:
        """Wait until ``count`` mails are accepted (fails if the load ends first)."""

        def reached() -> bool:
            if self._task is not None and self._task.done() and len(self) < count:
                pytest.fail(f"the load ended with {len(self)} of {count} mails accepted")
            return len(self) >= count

        await eventually(reached, within=within, interval=0.02, what=f"{count} mails accepted")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(self.concurrency)
        next_at = loop.time()
        async with asyncio.TaskGroup() as group:
            for n in range(self.limit):
                await gate.acquire()
                now = loop.time()
                if next_at > now:
                    await asyncio.sleep(next_at - now)  # pacing the load, not waiting on state
                if self._stop.is_set():
                    gate.release()
                    break
                next_at = max(next_at, loop.time() - 1.0 / self.rate) + 1.0 / self.rate
                self.started += 1
                group.create_task(self._one(n, gate))

    async def _one(self, n: int, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        body = {
            "to": [f"user{n}@example.com"],
            "from": "Shop <shop@example.com>",
            "subject": f"{self.fault} #{n}",
            "content": f"mail {n} of the {self.fault} run {self.run_id}",
        }
        headers = {"Idempotency-Key": f"{self.fault}-{self.run_id}-{n}"}
        give_up_at = loop.time() + self.give_up_after
        try:
            while True:
                wait = 0.05
                try:
                    async with self.http.post(
                        f"{self.url()}/mail/send", json=body, headers=headers
                    ) as resp:
                        if resp.status == 201:
                            mail_id = str((await resp.json())["mail"]["id"])
                            self.replayed += resp.headers.get("Idempotent-Replayed") == "true"
                            self.accepted[n] = mail_id
                            return
                        text = await resp.text()
                        if resp.status not in (409, 429, 503):
                            self.unexpected.append((n, resp.status, text[:300]))
                            return
                        self.retried[str(resp.status)] += 1
                        with contextlib.suppress(ValueError):
                            wait = min(0.5, float(resp.headers.get("Retry-After", "0.5")))
                except (aiohttp.ClientError, TimeoutError):
                    self.retried["connection"] += 1
                if loop.time() > give_up_at:
                    self.gave_up.append(n)
                    return
                await asyncio.sleep(wait)  # a client's backoff before it tries again
        finally:
            gate.release()


# --- Mailman processes ---------------------------------------------------------


@dataclass
class Role:
    """One Mailman process of a deployment: its name, ``--role`` (None: all) and extra env."""

    name: str
    role: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


class Deployment:
    """Mailman processes started like production, killed and started again by name.

    Every run of a process logs to its own file (``<name>-<run>.log``), so the
    failure events of every run can be read back at the end.
    """

    def __init__(self, env: Mapping[str, str], logs: Path) -> None:
        self.env = dict(env)
        self.logs = logs
        self.roles: dict[str, Role] = {}
        self.procs: dict[str, Process] = {}
        #: Every process ever started, in order (restarts included).
        self.history: list[tuple[str, Process]] = []
        self.kills: collections.Counter[str] = collections.Counter()

    async def start(self, *roles: Role) -> None:
        """Start these processes at once; return when all are ready (or stop all and raise)."""
        for role in roles:
            self.roles[role.name] = role
        started = await asyncio.gather(
            *(self._start(role) for role in roles), return_exceptions=True
        )
        failed = [r for r in started if isinstance(r, BaseException)]
        if failed:
            await self.close()
            raise failed[0]

    async def _start(self, role: Role) -> Process:
        run = sum(1 for name, _ in self.history if name == role.name)
        argv = ("--role", role.role) if role.role else ()
        log = self.logs / f"{role.name}-{run}.log"
        proc = await start_mailman({**self.env, **role.env}, log, *argv)
        self.procs[role.name] = proc
        self.history.append((role.name, proc))
        return proc

    async def kill(self, name: str) -> None:
        """SIGKILL the process ``name`` and reap it."""
        proc = self.procs[name].proc
        proc.send_signal(signal.SIGKILL)
        code = await asyncio.wait_for(proc.wait(), 30)
        assert code == -signal.SIGKILL, f"{name} exited {code} before the kill"
        self.kills[name] += 1

    async def restart(self, name: str) -> Process:
        """Start ``name`` again, on the same store and broker; return once it is ready."""
        return await self._start(self.roles[name])

    def dead(self) -> list[str]:
        """Processes that ended without being killed by the test."""
        return [name for name, p in self.procs.items() if p.proc.returncode is not None]

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log events called ``name`` of every run of every process, in run order."""
        return [event for _, proc in self.history for event in proc.events(name)]

    def trials(self, provider: str) -> int:
        """Half-open trial calls made to ``provider``: its breaker's moves to half-open,
        in every run's log (one per trial: a failed trial opens it again)."""
        return sum(
            1
            for e in self.events("breaker.state_changed")
            if e.get("provider") == provider and e.get("new") == "half_open"
        )

    def failures(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Failure events (``FAILURE_EVENTS``) in every run's log, per process name
        (only the processes ``names``, if given)."""
        only = None if names is None else set(names)
        counts: collections.Counter[str] = collections.Counter()
        for name, proc in self.history:
            if only is None or name in only:
                counts[name] += sum(1 for e in proc.events() if e.get("event") in FAILURE_EVENTS)
        return {name: n for name, n in counts.items() if n}

    def describe_dead(self) -> str:
        parts = []
        for name in self.dead():
            proc = self.procs[name]
            tail = proc.log.read_text(errors="replace")[-2000:]
            parts.append(f"{name} exited {proc.proc.returncode}; its log ends:\n{tail}")
        return "\n".join(parts)

    async def close(self) -> None:
        await asyncio.gather(*(stop_process(p) for _, p in self.history))


# --- the end of every scenario ---------------------------------------------------


async def settle(
    http: aiohttp.ClientSession,
    url: str | Callable[[], str],
    ids: Iterable[str],
    *,
    within: float,
    deployment: Deployment | None = None,
    watch: Sequence[str] = (),
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Wait until every mail in ``ids`` is ``sent`` or ``failed`` (``GET /mail/{id}``).

    Returns (the final mails by id, the ids still not final). Gives up after
    ``within`` seconds, or as soon as a process of ``deployment`` ended or one
    named in ``watch`` logged a failure event: the caller reports, then fails.
    """
    base = url if callable(url) else (lambda: url)
    pending = set(ids)
    final: dict[str, dict[str, Any]] = {}
    gate = asyncio.Semaphore(16)

    async def look(mail_id: str) -> None:
        async with gate:
            try:
                async with http.get(f"{base()}/mail/{mail_id}") as resp:
                    if resp.status != 200:
                        return
                    mail: dict[str, Any] = (await resp.json())["mail"]
            except (aiohttp.ClientError, TimeoutError):
                return  # the API is away for a moment: asked again on the next round
        if mail["status"] in FINAL:
            final[mail_id] = mail

    deadline = time.monotonic() + within
    while pending:
        await asyncio.gather(*(look(mail_id) for mail_id in pending))
        pending -= final.keys()
        if not pending or time.monotonic() > deadline:
            break
        if deployment is not None and (deployment.dead() or deployment.failures(watch)):
            # The scenario has failed: a little longer for what is still on its way.
            deadline = min(deadline, time.monotonic() + SETTLE_AFTER_FAILURE)
        await asyncio.sleep(0.5)  # between polls of the API
    return final, pending


#: The statuses a mail ends sending in (provider events move a sent one on).
FINAL = ("sent", "failed", "delivered", "bounced")


@dataclass
class Tally:
    """What a fault did to the mails, from the API's answers and the fakes' records."""

    fault: str
    #: Mails answered 201.
    mails: int
    #: Accepted mails that no fake has and that are not ``failed``.
    lost: list[str]
    #: Provider calls that took a mail beyond one per mail.
    duplicates: int
    #: Accepted mails still ``queued``/``sending`` at the end.
    not_final: list[str]
    #: Accepted mails ``failed``, with their reasons.
    failed: dict[str, str | None]
    #: Mails some fake took that no 201 named.
    unaccepted: list[str]

    def line(self, **extra: object) -> str:
        pct = 100.0 * self.duplicates / self.mails if self.mails else 0.0
        fields = {
            "not_final": len(self.not_final),
            "failed": len(self.failed),
            "unaccepted": len(self.unaccepted),
            **extra,
        }
        extras = ",".join(f"{k}={v}" for k, v in fields.items())
        return (
            f"fault={self.fault} mails={self.mails} lost={len(self.lost)} "
            f"duplicates={self.duplicates} ({pct:.1f} %) extra={extras}"
        )


def tally(
    fault: str,
    accepted: Sequence[str],
    final: Mapping[str, Mapping[str, Any]],
    fakes: Iterable[FakeProvider[Any]],
) -> Tally:
    delivered: collections.Counter[str] = collections.Counter()
    for fake in fakes:
        delivered.update(fake.mail_ids())
    wanted = set(accepted)
    failed = {
        i: m.get("reason") for i, m in final.items() if i in wanted and m["status"] == "failed"
    }
    return Tally(
        fault=fault,
        mails=len(wanted),
        lost=sorted(i for i in wanted if i not in delivered and i not in failed),
        duplicates=sum(n - 1 for n in delivered.values() if n > 1),
        not_final=sorted(wanted - final.keys()),
        failed=failed,
        unaccepted=sorted(set(delivered) - wanted),
    )


async def holds(
    condition: Callable[[], Awaitable[bool]], *, within: float, interval: float = 0.5
) -> bool:
    """Whether ``condition()`` holds within ``within`` seconds (polled; never fails the test,
    so the caller can report before it asserts)."""
    deadline = time.monotonic() + within
    while True:
        if await condition():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)


def report(path: Path, line: str) -> None:
    """Print ``line`` (seen with ``pytest -s``) and append it to the report file ``path``."""
    print(f"\n{line}")
    with path.open("a") as out:
        out.write(line + "\n")


class PrivateMariaDB:
    """A MariaDB server of the test's own on a free loopback port, root without a password.

    ``start()`` initialises its data directory the first time; ``stop()`` is
    a real stop (SIGTERM, InnoDB shuts down cleanly), and ``start()`` after it
    brings the same data back on the same port.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.datadir = base / "data"
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @staticmethod
    def binaries() -> tuple[str, str] | None:
        """(install-db, server) executables, or None when MariaDB is not installed."""
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        server = next(
            (
                p
                for p in (shutil.which("mariadbd"), "/usr/sbin/mariadbd", "/usr/sbin/mysqld")
                if p and os.access(p, os.X_OK)
            ),
            None,
        )
        return (install, server) if install and server else None

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.base / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    async def start(self) -> None:
        found = self.binaries()
        if found is None:
            if in_ci():
                pytest.fail("MariaDB (mariadbd, mariadb-install-db) is not installed")
            pytest.skip("MariaDB (mariadbd, mariadb-install-db) is not installed")
        install, server = found
        self.base.mkdir(parents=True, exist_ok=True)
        if not self.datadir.exists():
            await _run(
                install,
                "--no-defaults",  # the system's my.cnf names another user and log file
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--user=root",
                "--skip-test-db",
            )
        with (self.base / "server.out").open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                server,
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.base / 'sock'}",
                f"--pid-file={self.base / 'pid'}",
                f"--log-error={self.base / 'error.log'}",
                "--user=root",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1
        proc = self.proc

        async def answers() -> bool:
            if proc.returncode is not None:
                pytest.fail(f"mariadbd exited {proc.returncode}:\n{self.log()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True

        await eventually(answers, within=60, interval=0.05, what="the private MariaDB to listen")

    async def stop(self) -> float:
        """SIGTERM and wait for the server to end (SIGKILL after 60 s); how long it took."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return 0.0
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        return time.monotonic() - began

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Between fork and exec: the server gets SIGKILL if the test process dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}:\n{out.decode(errors='replace')}")


# --- Kafka and the dead-letter listing --------------------------------------------


async def publish_raw(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """Publish (key, value) records to ``topic`` as they are, bypassing Mailman."""
    from aiokafka import AIOKafkaProducer

    # No idempotent producer: Tansu refuses it (see kafka_broker.py); acks=all still holds.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def dead_letters(store_url: str) -> list[dict[str, Any]]:
    """``mailman dead-letters list --store URL --json``, one dict per dead letter."""
    code, out, err = await _mailman("dead-letters", "list", "--store", store_url, "--json")
    if code != 0:
        pytest.fail(f"mailman dead-letters list exited {code}:\n{err}\n{out}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def _mailman(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailman",
        *argv,
        cwd=ROOT,
        env={**os.environ, "MAILMAN_LOG_FORMAT": "json"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    code = proc.returncode
    assert code is not None
    return code, out.decode(errors="replace"), err.decode(errors="replace")

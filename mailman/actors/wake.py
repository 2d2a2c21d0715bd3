"""A wake-up between processes on one machine: "there is work in the outbox".

When the API runs in other processes than the relay (``--processes``, or
``--role api`` beside ``--role`` for the rest on one SQLite file), the relay
would only find new mails on its next look (``MAILMAN_RELAY_INTERVAL_SECONDS``).
Instead, each API process sends an empty datagram to the relay's socket after
a commit; the relay wakes at once. The socket is a Linux abstract Unix socket
named after the store, so it needs no file, no port and no clean-up, and
processes sharing one database file find each other. A lost datagram costs
nothing but latency: the relay still looks every interval.

The same socket carries the API's load: while an API (or SMTP) process is
saturated, it sends ``BUSY`` followed by its requests in flight, every
``intake.load.REPORT_SECONDS`` (see ``Load``); the relay holds back while
such reports are fresh (``RemoteLoad``). A lost report means no hold-back.
While it reports, the API sends no wake-ups: each report wakes the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import socket
import sys
import time
from collections.abc import Callable

import structlog

from mailman.intake.load import REPORT_SECONDS, SATURATED_REQUESTS

log = structlog.get_logger("mailman.wake")


def wake_address(store: str) -> str | None:
    """The relay's wake-up socket for a store (a SQLite file's path, or a store URL);
    None where there is none (not Linux). Only a digest of ``store`` is in the name."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "AF_UNIX"):
        return None
    if "://" not in store:
        store = os.path.realpath(store)
    digest = hashlib.sha256(store.encode()).hexdigest()[:32]
    return f"\0mailman-wake-{digest}"


#: A load report's first bytes (a wake-up is an empty datagram).
BUSY = b"busy "


class WakeListener:
    """The relay's side: calls ``on_wake`` once for the wake-ups that arrived together,
    and ``on_busy`` with the requests in flight of each load report."""

    def __init__(
        self,
        address: str,
        on_wake: Callable[[], None],
        on_busy: Callable[[int], None] | None = None,
    ) -> None:
        self.address = address
        self.on_wake = on_wake
        self.on_busy = on_busy
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> bool:
        """Start listening; False if another relay already listens on this store."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self.address)
        except OSError as exc:
            sock.close()
            log.info("wake.unavailable", error=type(exc).__name__)
            return False
        sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._read)
        self._sock = sock
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _read(self) -> None:
        assert self._sock is not None
        woken = False
        while True:  # drain: many datagrams are one wake-up
            try:
                data = self._sock.recv(32)
            except OSError:  # nothing more waiting (BlockingIOError), or the socket is gone
                break
            # A load report wakes too: a saturated API sends no wake-ups (``WakeSender``).
            woken = True
            if data.startswith(BUSY) and self.on_busy is not None:
                with contextlib.suppress(ValueError):  # not ours: ignored
                    self.on_busy(int(data[len(BUSY) :]))
        if woken:
            self.on_wake()


class WakeSender:
    """The API's side: one datagram per event-loop turn that committed mails, at most,
    and none while this process is saturated: its load reports (every
    ``REPORT_SECONDS``) wake the relay then. (A datagram costs the API 20-35 µs of CPU:
    with a wake-up per turn, 3-5 % of a saturated API process's samples.)"""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._pending = False
        #: ``time.monotonic()`` of the last load report.
        self._busy_at = -math.inf

    def wake(self) -> None:
        if self._pending:
            return
        if time.monotonic() - self._busy_at < 2 * REPORT_SECONDS:
            return  # saturated: the next report (due within REPORT_SECONDS) wakes the relay
        self._pending = True
        asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._pending = False
        self._datagram(b"")

    def busy(self, requests: int) -> None:
        """Tell the relay that this process has ``requests`` in flight (it is saturated)."""
        self._busy_at = time.monotonic()
        self._datagram(BUSY + str(requests).encode())

    def _datagram(self, data: bytes) -> None:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        # No relay listening, or its queue is full: it looks anyway (and holds nothing back).
        with contextlib.suppress(OSError):
            self._sock.sendto(data, self.address)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class RemoteLoad:
    """The relay's view of the API processes elsewhere on this machine: when one last
    said it was saturated. Fresh for ``stale_seconds``; then, whether the API went
    quiet or its reports were lost, it holds nothing back."""

    __slots__ = ("saturated_at", "stale_seconds")

    def __init__(self, stale_seconds: float) -> None:
        self.stale_seconds = stale_seconds
        self.saturated_at = -math.inf

    def report(self, requests: int) -> None:
        if requests >= SATURATED_REQUESTS:
            self.saturated_at = time.monotonic()

    def held_for(self, now: float) -> float:
        """Seconds until the last report goes stale (0: none is fresh)."""
        return max(0.0, self.saturated_at + self.stale_seconds - now)

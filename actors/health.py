"""Provider health shared by every process: circuit-breaker states mirrored through the store.

aiobreaker's storage API is synchronous, so a breaker cannot await the
database on every call. Each process therefore keeps its breakers in memory
(the hot path stays free of I/O) and this actor mirrors them: every local
state change is written to the store, and the states other processes wrote
are read every ``sync_seconds`` and applied here. The newest change wins.
When one worker opens SendGrid's breaker, every worker skips SendGrid within
one sync interval, until a half-open trial somewhere closes it again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import structlog
from aiobreaker import CircuitBreaker, CircuitBreakerListener
from aiobreaker.state import CircuitBreakerState

from .lifecycle import Actor
from .sender import state_name
from .store import BreakerState, Store

log = structlog.get_logger("mailman.health")


def _to_unix(naive_utc: datetime | None) -> float | None:
    # aiobreaker keeps naive UTC datetimes.
    return None if naive_utc is None else naive_utc.replace(tzinfo=UTC).timestamp()


def _to_naive_utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def state_of(breaker: CircuitBreaker) -> str:
    return state_name(breaker.current_state)


class SharedHealth(Actor):
    """Mirrors this process's breakers to the store and the store's to them."""

    def __init__(
        self,
        *,
        breakers: Mapping[str, CircuitBreaker],
        store: Store,
        sync_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("health")
        self.breakers = dict(breakers)
        self.store = store
        self.sync_seconds = sync_seconds
        self.clock = clock
        self._outgoing: collections.deque[BreakerState] = collections.deque()
        #: Newest change known per provider (ours or another process's).
        self._seen: dict[str, float] = {}
        self._applying = False
        self._listener = _Publish(self)

    async def setup(self) -> None:
        for breaker in self.breakers.values():
            breaker.add_listener(self._listener)

    async def teardown(self) -> None:
        for breaker in self.breakers.values():
            if self._listener in breaker.listeners:
                breaker.remove_listener(self._listener)

    def changed(self, provider: str, breaker: CircuitBreaker, state: str) -> None:
        """A local change to ``state`` (called by the breaker's listener).

        aiobreaker notifies listeners before it stores the new state, so the
        state comes from the notification, not from the breaker.
        """
        if self._applying:
            return
        now = self.clock()
        self._seen[provider] = now
        opened_at = _to_unix(breaker._state_storage.opened_at)
        self._outgoing.append(BreakerState(provider, state, opened_at, now))

    async def run(self) -> None:
        while True:
            try:
                await self.push()
                await self.pull()
            except Exception as exc:  # the store is unreachable: keep local state, try again
                log.warning("breaker.sync_failed", error=repr(exc))
            if self.stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.sync_seconds)

    async def push(self) -> None:
        """Write the local changes made since the last push (kept for later if that fails)."""
        while self._outgoing:
            await self.store.save_breaker(self._outgoing[0])
            self._outgoing.popleft()

    async def pull(self) -> None:
        """Apply the changes other processes made since we last looked."""
        for remote in await self.store.breakers():
            breaker = self.breakers.get(remote.provider)
            if breaker is None or remote.updated_at <= self._seen.get(remote.provider, 0.0):
                continue
            self._seen[remote.provider] = remote.updated_at
            if remote.state == state_of(breaker):
                continue
            self.apply(remote.provider, breaker, remote)

    def apply(self, provider: str, breaker: CircuitBreaker, remote: BreakerState) -> None:
        try:
            target = CircuitBreakerState[remote.state.upper()]
        except KeyError:
            log.error("breaker.unknown_state", provider=provider, state=remote.state)
            return
        self._applying = True
        try:
            storage = breaker._state_storage
            if remote.opened_at is not None:
                storage.opened_at = _to_naive_utc(remote.opened_at)
            storage.state = target
            breaker.state = target  # notifies listeners: logged, not published again
        finally:
            self._applying = False
        log.info("breaker.shared_state_applied", provider=provider, state=remote.state)


class _Publish(CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, health: SharedHealth) -> None:
        self.health = health

    def state_change(self, breaker: CircuitBreaker, old: object, new: object) -> None:
        self.health.changed(breaker.name, breaker, state_name(new))

"""Circuit breakers: one per provider, and provider health shared by every process.

``make_breaker`` builds a provider's breaker on a state storage we own
(``ProviderBreaker.storage``), so this module reads and writes a breaker's
state and ``opened_at`` through aiobreaker's public storage API only, never
through the breaker's private attributes.

aiobreaker's storage API is synchronous, so a breaker cannot await the
database on every call. Each process therefore keeps its breakers in memory
(the hot path stays free of I/O) and the ``SharedHealth`` actor mirrors them:
every local state change is written to the store, and the states other
processes wrote are read every ``sync_seconds`` and applied here. The newest
change wins. When one worker opens SendGrid's breaker, every worker skips
SendGrid within one sync interval, until a half-open trial somewhere closes
it again.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import structlog
from aiobreaker import CircuitBreaker, CircuitBreakerListener
from aiobreaker.state import CircuitBreakerState
from aiobreaker.storage.memory import CircuitMemoryStorage

from mailman.store import BreakerState, Store

from .lifecycle import Actor

log = structlog.get_logger("mailman.breakers")


class ProviderBreaker(CircuitBreaker):  # type: ignore[misc]
    """A provider's circuit breaker, keeping a public reference to the storage it runs on.

    The storage holds the breaker's state, failure counter and ``opened_at``;
    ``SharedHealth`` reads and writes them there.
    """

    def __init__(
        self,
        provider: str,
        *,
        fail_max: int,
        reset_seconds: float,
        storage: CircuitMemoryStorage | None = None,
    ) -> None:
        self.storage = storage or CircuitMemoryStorage(CircuitBreakerState.CLOSED)
        super().__init__(
            fail_max=fail_max,
            timeout_duration=timedelta(seconds=reset_seconds),
            listeners=[BreakerLog(provider)],
            state_storage=self.storage,
            name=provider,
        )


class BreakerLog(CircuitBreakerListener):  # type: ignore[misc]
    """Logs every state change of a provider's circuit breaker."""

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def state_change(self, breaker: CircuitBreaker, old: object, new: object) -> None:
        log.warning(
            "breaker.state_changed",
            provider=self.provider,
            old=state_name(old),
            new=state_name(new),
        )


def state_name(state: object) -> str:
    """``open``, ``closed`` or ``half_open`` from a breaker state enum or state object."""
    inner = getattr(state, "state", state)
    return str(getattr(inner, "name", inner)).lower()


def state_of(breaker: CircuitBreaker) -> str:
    return state_name(breaker.current_state)


def make_breaker(provider: str, fail_max: int, reset_seconds: float) -> ProviderBreaker:
    """A provider's breaker: opens after ``fail_max`` unwell results in a row."""
    return ProviderBreaker(provider, fail_max=fail_max, reset_seconds=reset_seconds)


def states_of(
    breakers: Mapping[str, ProviderBreaker], clock: Callable[[], float] = time.time
) -> list[BreakerState]:
    """Each breaker's state as it is in this process now (for the health answers, ``/metrics``)."""
    now = clock()
    return [
        BreakerState(provider, state_of(breaker), _to_unix(breaker.storage.opened_at), now)
        for provider, breaker in breakers.items()
    ]


def _to_unix(naive_utc: datetime | None) -> float | None:
    # aiobreaker keeps naive UTC datetimes.
    return None if naive_utc is None else naive_utc.replace(tzinfo=UTC).timestamp()


def _to_naive_utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


class SharedHealth(Actor):
    """Mirrors this process's breakers to the store and the store's to them."""

    def __init__(
        self,
        *,
        breakers: Mapping[str, ProviderBreaker],
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
        self._publishers = {provider: _Publish(self, provider) for provider in self.breakers}

    async def setup(self) -> None:
        for provider, breaker in self.breakers.items():
            breaker.add_listener(self._publishers[provider])

    async def teardown(self) -> None:
        for provider, breaker in self.breakers.items():
            if self._publishers[provider] in breaker.listeners:
                breaker.remove_listener(self._publishers[provider])

    def changed(self, provider: str, state: str) -> None:
        """A local change to ``state`` (called by the breaker's listener).

        aiobreaker notifies listeners before it stores the new state, so the
        state comes from the notification, not from the breaker. ``opened_at``
        is already stored when an opening is notified.
        """
        if self._applying:
            return
        now = self.clock()
        self._seen[provider] = now
        opened_at = _to_unix(self.breakers[provider].storage.opened_at)
        self._outgoing.append(BreakerState(provider, state, opened_at, now))

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.push()
                await self.pull()
            except Exception as exc:  # the store is unreachable: keep local state, try again
                if not failing:  # one line per outage, not one per sync
                    log.warning("breaker.sync_failed", error=repr(exc))
                failing = True
            else:
                if failing:
                    log.info("breaker.sync_resumed")
                failing = False
            if self.stopping.is_set():
                return
            await self.rest(self.sync_seconds)

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

    def apply(self, provider: str, breaker: ProviderBreaker, remote: BreakerState) -> None:
        try:
            target = CircuitBreakerState[remote.state.upper()]
        except KeyError:
            log.error("breaker.unknown_state", provider=provider, state=remote.state)
            return
        self._applying = True
        try:
            if remote.opened_at is not None:
                breaker.storage.opened_at = _to_naive_utc(remote.opened_at)
            breaker.storage.state = target
            breaker.state = target  # notifies listeners: logged, not published again
        finally:
            self._applying = False
        log.info("breaker.shared_state_applied", provider=provider, state=remote.state)


class _Publish(CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, health: SharedHealth, provider: str) -> None:
        self.health = health
        self.provider = provider

    def state_change(self, breaker: CircuitBreaker, old: object, new: object) -> None:
        self.health.changed(self.provider, state_name(new))

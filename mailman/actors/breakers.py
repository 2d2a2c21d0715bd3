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
import functools
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog
from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerListener
from aiobreaker.state import CircuitBreakerState
from aiobreaker.storage.memory import CircuitMemoryStorage

from mailman.store import BreakerState, Store

from .lifecycle import Actor

log = structlog.get_logger("mailman.breakers")

T = TypeVar("T")


class ProviderBreaker(CircuitBreaker):  # type: ignore[misc]
    """A provider's circuit breaker, keeping a public reference to the storage it runs on.

    The storage holds the breaker's state, failure counter and ``opened_at``;
    ``SharedHealth`` reads and writes them there.

    Two things differ from aiobreaker's breaker:

    * **Half-open admits exactly one trial call.** Once the breaker has been open
      ``reset_seconds``, the next call is the trial; every other call meets the
      breaker as if it were open (``CircuitBreakerError``: the sender fails the mail
      over or retries it later, never sends it twice) until the trial's answer closes
      or re-opens it. Where the breaker is shared (``claim``, set by ``SharedHealth``),
      the trial is claimed in the store as well, so one process of all makes it.
      aiobreaker lets every call through while half-open: the sender's whole
      concurrency reached a provider that was still slow.
    * **A state change is a change.** Opening an open breaker (a call that was in
      flight when it opened failing later) or closing a closed one does nothing: no
      ``breaker.state_changed`` line, and ``opened_at`` stays the first opening's.
    """

    def __init__(
        self,
        provider: str,
        *,
        fail_max: int,
        reset_seconds: float,
        storage: CircuitMemoryStorage | None = None,
        trial_lease: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage or CircuitMemoryStorage(CircuitBreakerState.CLOSED)
        self.provider = provider
        self.reset_seconds = reset_seconds
        #: How long a trial claimed in the store may last before another process may
        #: claim it (the process making it is presumed dead): longer than a call.
        self.trial_lease = trial_lease
        #: Claims the trial among every process sharing the breaker (``SharedHealth``);
        #: None: this process decides alone.
        self.claim: Callable[[], Awaitable[bool]] | None = None
        self._clock = clock
        #: A trial call is under way in this process.
        self._trial = False
        #: Until when (``clock``) a refused claim is not asked again.
        self._refused_until = -math.inf
        self._claim_failing = False
        super().__init__(
            fail_max=fail_max,
            # aiobreaker takes a zero timedelta for "use 60 s": a microsecond is zero here.
            timeout_duration=timedelta(seconds=max(reset_seconds, 1e-6)),
            listeners=[BreakerLog(provider)],
            state_storage=self.storage,
            name=provider,
        )

    def open(self) -> None:
        if self.current_state is not CircuitBreakerState.OPEN:
            super().open()

    def half_open(self) -> None:
        if self.current_state is not CircuitBreakerState.HALF_OPEN:
            super().half_open()

    def close(self) -> None:
        if self.current_state is not CircuitBreakerState.CLOSED:
            super().close()

    @property
    def trial_under_way(self) -> bool:
        """Whether this process's trial call is in flight."""
        return self._trial

    async def call_async(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await func(...)`` as the breaker's state allows: closed, any call; open, none
        until ``reset_seconds`` passed; then one trial call, the others refused."""
        state = self.current_state
        if state is CircuitBreakerState.CLOSED:
            result: T = await super().call_async(func, *args, **kwargs)
            return result
        if state is CircuitBreakerState.OPEN and not self._due():
            raise CircuitBreakerError("circuit breaker open", self._reopens_at())
        if self._trial:
            raise CircuitBreakerError("a half-open trial call is under way", self._reopens_at())
        self._trial = True
        try:
            if not await self._claimed():
                raise CircuitBreakerError(
                    "another process makes the half-open trial call", self._reopens_at()
                )
            if self.current_state is not CircuitBreakerState.CLOSED:
                self.half_open()
            # Half-open: success closes the breaker, failure opens it again.
            result = await super().call_async(func, *args, **kwargs)
            return result
        finally:
            self._trial = False

    def _due(self) -> bool:
        opened_at = self.storage.opened_at
        now = datetime.now(UTC).replace(tzinfo=None)  # naive UTC, as aiobreaker keeps it
        return opened_at is None or now >= opened_at + self.timeout_duration

    def _reopens_at(self) -> datetime | None:
        opened_at = self.storage.opened_at
        return None if opened_at is None else opened_at + self.timeout_duration

    async def _claimed(self) -> bool:
        """Whether this process may make the trial: the store's claim where the breaker is
        shared (asked again at most once a second after a refusal); if the store does not
        answer, this process's trial alone (mail keeps flowing)."""
        if self.claim is None:
            return True
        if self._clock() < self._refused_until:
            return False
        try:
            claimed = await self.claim()
        except Exception as exc:
            if not self._claim_failing:
                log.warning("breaker.claim_failed", provider=self.provider, error=repr(exc))
            self._claim_failing = True
            return True
        self._claim_failing = False
        if not claimed:
            self._refused_until = self._clock() + min(1.0, self.reset_seconds)
        return claimed


class BreakerLog(CircuitBreakerListener):  # type: ignore[misc]
    """Logs every change of a provider's circuit breaker's state (only changes)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def state_change(self, breaker: CircuitBreaker, old: object, new: object) -> None:
        before, after = state_name(old), state_name(new)
        if before == after:
            return
        log.warning("breaker.state_changed", provider=self.provider, old=before, new=after)


def state_name(state: object) -> str:
    """``open``, ``closed`` or ``half_open`` from a breaker state enum or state object."""
    inner = getattr(state, "state", state)
    return str(getattr(inner, "name", inner)).lower()


def state_of(breaker: CircuitBreaker) -> str:
    return state_name(breaker.current_state)


def make_breaker(
    provider: str, fail_max: int, reset_seconds: float, trial_lease: float = 60.0
) -> ProviderBreaker:
    """A provider's breaker: opens after ``fail_max`` unwell results in a row; a trial
    claimed in the store is another process's to take over after ``trial_lease``."""
    return ProviderBreaker(
        provider, fail_max=fail_max, reset_seconds=reset_seconds, trial_lease=trial_lease
    )


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
            breaker.claim = functools.partial(self.claim_trial, provider)

    async def teardown(self) -> None:
        for provider, breaker in self.breakers.items():
            if self._publishers[provider] in breaker.listeners:
                breaker.remove_listener(self._publishers[provider])
            breaker.claim = None

    async def claim_trial(self, provider: str) -> bool:
        """Claim ``provider``'s half-open trial in the store, for this process."""
        breaker = self.breakers[provider]
        return await self.store.claim_trial(
            provider, self.clock(), breaker.reset_seconds, breaker.trial_lease
        )

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
        if state_name(old) != state_name(new):
            self.health.changed(self.provider, state_name(new))

"""Each provider's circuit-breaker state, shared by every process on the store."""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .dialect import Dialect
from .operation import Engine, Statement, Steps, read, write


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A provider's circuit-breaker state as every process shares it.

    ``state`` is ``closed``, ``open`` or ``half_open``; ``opened_at`` is the
    unix time the breaker last opened. The newest ``updated_at`` wins.
    """

    provider: str
    state: str
    opened_at: float | None
    updated_at: float


class Breakers(abc.ABC):
    """The shared circuit-breaker states."""

    @abc.abstractmethod
    async def save_breaker(self, state: BreakerState) -> None:
        """Record a provider's breaker state unless a newer one is already recorded."""

    @abc.abstractmethod
    async def breakers(self) -> list[BreakerState]:
        """Every provider's last recorded breaker state."""

    @abc.abstractmethod
    async def claim_trial(
        self, provider: str, now: float, reset_seconds: float, lease_seconds: float
    ) -> bool:
        """Claim ``provider``'s half-open trial for the caller: True for exactly one caller
        of all processes once the shared breaker has been open ``reset_seconds``.

        One conditional UPDATE: the row turns ``half_open`` (``updated_at`` = ``now``, the
        claim's time) only if it is ``open`` since ``now - reset_seconds`` or earlier, or
        ``half_open`` by a claim older than ``lease_seconds`` (its trial presumed dead).
        """


# --- SQL ---------------------------------------------------------------------------------

BREAKERS = "SELECT provider, state, opened_at, updated_at FROM breakers ORDER BY provider"


@functools.cache
def _insert(d: Dialect) -> str:
    return d.insert_once(
        "breakers", "provider, state, opened_at, updated_at", d.rows(1, 4), key="provider"
    )


@functools.cache
def _newer(d: Dialect) -> str:
    m = d.mark
    return (
        f"UPDATE breakers SET state = {m}, opened_at = {m}, updated_at = {m} "
        f"WHERE provider = {m} AND updated_at < {m}"
    )


@functools.cache
def _claim(d: Dialect) -> str:
    m = d.mark
    return (
        f"UPDATE breakers SET state = 'half_open', updated_at = {m} "
        f"WHERE provider = {m} AND ((state = 'open' AND opened_at <= {m}) "
        f"OR (state = 'half_open' AND updated_at < {m}))"
    )


def breaker_from_row(row: Sequence[Any]) -> BreakerState:
    provider, state, opened_at, updated_at = row
    return BreakerState(provider=provider, state=state, opened_at=opened_at, updated_at=updated_at)


# --- operations ----------------------------------------------------------------------------


@write
def save(d: Dialect, state: BreakerState) -> Steps[None]:
    """Make sure the row exists (on MySQL: and lock it), then overwrite it only with
    something newer: ties and older states leave it as it is."""
    yield Statement(_insert(d), (state.provider, state.state, state.opened_at, state.updated_at))
    yield Statement(
        _newer(d),
        (state.state, state.opened_at, state.updated_at, state.provider, state.updated_at),
    )


@write
def claim(
    d: Dialect, provider: str, now: float, reset_seconds: float, lease_seconds: float
) -> Steps[bool]:
    """Turn the row ``half_open`` if its trial is due and unclaimed; whether it did."""
    cur = yield Statement(_claim(d), (now, provider, now - reset_seconds, now - lease_seconds))
    return bool(cur.rowcount == 1)


@read
def every(d: Dialect) -> Steps[list[BreakerState]]:
    cur = yield Statement(BREAKERS)
    return [breaker_from_row(r) for r in cur.fetchall()]


class SqlBreakers(Breakers, Engine):
    """``Breakers`` on a driver."""

    async def save_breaker(self, state: BreakerState) -> None:
        await self.run(save, state)

    async def breakers(self) -> list[BreakerState]:
        return await self.run(every)

    async def claim_trial(
        self, provider: str, now: float, reset_seconds: float, lease_seconds: float
    ) -> bool:
        return await self.run(claim, provider, now, reset_seconds, lease_seconds)

"""Figures: what ``/metrics`` (``routes.metrics``) and the dashboard
(``routes.dashboard``) read from the store, the same whichever process reads them."""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailman.core.model import Check, Status

from . import summary
from .breakers import BREAKERS, BreakerState, breaker_from_row
from .dialect import Dialect
from .operation import Engine, Statement, Steps, read, snapshot


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What ``Store.metrics_snapshot`` counted; the same whichever process reads it."""

    #: Mails by status; a status no mail has is absent.
    mails: dict[str, int]
    #: Attempts by (provider, outcome), ``pending`` ones (calls in flight) included.
    attempts: dict[tuple[str, str], int]
    #: Attempts in a retry round (round > 0), any outcome, by provider.
    retries: dict[str, int]
    #: Outbox entries not yet removed: not published yet, or published in the relay's last turn.
    outbox: int
    #: Dead letters not replayed.
    dead_letters: int
    #: Every provider's breaker state as shared in the store.
    breakers: tuple[BreakerState, ...]
    #: Sends not made, by provider: ``unknown`` attempts the provider was asked about and
    #: had taken (``checked`` = ``taken``), so the mail was not sent again.
    suppressed: dict[str, int] = field(default_factory=dict)
    #: Mails handed on at once from one provider to the next, by (from, to). Kept as they
    #: happen, not in the rows: a recount cannot find them (left out of comparisons).
    failovers: dict[tuple[str, str], int] = field(default_factory=dict, compare=False)
    #: Recipients dropped from mails because their address is suppressed, by reason. Kept
    #: as they happen, not in the rows (left out of comparisons, as ``failovers``).
    dropped: dict[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class MinuteCount:
    """Attempts of one provider with one outcome that started in one minute."""

    #: The minute's start, unix seconds (a multiple of 60).
    minute: int
    provider: str
    outcome: str
    count: int


@dataclass(frozen=True, slots=True)
class FailedMail:
    """A ``failed`` mail as the dashboard shows it: no content."""

    id: str
    #: The provider it was last tried with, if any.
    provider: str | None
    reason: str | None
    #: When it became ``failed`` (its ``updated_at``).
    at: float


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """A provider attempt that did not get the mail accepted."""

    mail_id: str
    provider: str
    round: int
    outcome: str
    reason: str | None
    #: When the call started.
    at: float


@dataclass(frozen=True, slots=True)
class Failures:
    """What ``Store.latest_failures`` found, newest first."""

    mails: tuple[FailedMail, ...]
    attempts: tuple[FailedAttempt, ...]


class Figures(abc.ABC):
    """Counts and recent failures, for ``/metrics`` and the dashboard."""

    @abc.abstractmethod
    async def metrics_snapshot(self) -> MetricsSnapshot:
        """The figures, read in one transaction (one snapshot).

        The same cost with a thousand mails kept or a hundred million: the counts of
        mails and attempts are kept as they move (``store.summary``, a few dozen
        rows); outbox entries and dead letters waiting are counted from what waits
        alone (the outbox, an index of letters not replayed), breakers from their rows.
        """

    @abc.abstractmethod
    async def recount(self) -> MetricsSnapshot:
        """The same figures counted from every row (``mails``, ``attempts``): what
        ``metrics_snapshot`` keeps, to check it. A scan of the whole store."""

    @abc.abstractmethod
    async def attempts_per_minute(self, since: float, outcomes: Sequence[str]) -> list[MinuteCount]:
        """Attempts with one of ``outcomes`` that started at or after ``since``, counted
        per whole (UTC) minute, provider and outcome. The ``(outcome, at)`` index serves it."""

    @abc.abstractmethod
    async def latest_failures(self, limit: int, outcomes: Sequence[str]) -> Failures:
        """The newest ``limit`` failed mails (by creation) and the newest ``limit`` attempts
        with one of ``outcomes`` (by start), newest first, in one read transaction.
        Ids, providers, outcomes, reasons and times only: no mail content."""


# --- SQL ---------------------------------------------------------------------------------
# recount's: no parameters, the same in both dialects (metrics_snapshot reads
# ``summary.READ`` instead of the first two).

#: Mails by status (the ``mails_by_status`` index covers it).
METRICS_MAILS = "SELECT status, COUNT(*) FROM mails GROUP BY status"
#: Attempts by provider, outcome, whether they were in a retry round, and whether asking
#: the provider found it had taken the mail (a send suppressed).
METRICS_ATTEMPTS = (
    "SELECT provider, outcome, CASE WHEN round > 0 THEN 1 ELSE 0 END, "
    f"CASE WHEN checked = '{Check.TAKEN.value}' THEN 1 ELSE 0 END, COUNT(*) FROM attempts "
    "GROUP BY provider, outcome, CASE WHEN round > 0 THEN 1 ELSE 0 END, "
    f"CASE WHEN checked = '{Check.TAKEN.value}' THEN 1 ELSE 0 END"
)
METRICS_OUTBOX = "SELECT COUNT(*) FROM outbox"
#: The ``dead_letters_by_replay`` index (migrations 8 and 9) finds them.
METRICS_DEAD_LETTERS = "SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL"


@functools.lru_cache(maxsize=64)
def _per_minute(d: Dialect, outcomes: int) -> str:
    """Attempts per minute, provider and outcome (parameters: ``outcomes`` outcomes, since).

    The ``attempts_by_outcome (outcome, at)`` index finds the rows."""
    return (
        f"SELECT {d.minute}, provider, outcome, COUNT(*) FROM attempts "
        f"WHERE outcome IN ({d.marks(outcomes)}) AND at >= {d.mark} "
        f"GROUP BY {d.minute}, provider, outcome"
    )


@functools.cache
def _failed_mails(d: Dialect) -> str:
    """The newest failed mails (parameter: limit); ``mails_by_status`` serves the order."""
    return (
        f"SELECT id, provider, reason, updated_at FROM mails "
        f"WHERE status = '{Status.FAILED.value}' ORDER BY created_at DESC LIMIT {d.mark}"
    )


@functools.cache
def _failed_attempts(d: Dialect) -> str:
    """The newest attempts with one outcome (parameters: outcome, limit), from the
    ``(outcome, at)`` index; one query per outcome keeps each an index range."""
    return (
        f"SELECT mail_id, provider, round, outcome, reason, at, id FROM attempts "
        f"WHERE outcome = {d.mark} ORDER BY at DESC, id DESC LIMIT {d.mark}"
    )


def metrics_from_rows(
    mails: Sequence[Sequence[Any]],
    attempts: Sequence[Sequence[Any]],
    outbox: int,
    dead_letters: int,
    breakers: Sequence[Sequence[Any]],
) -> MetricsSnapshot:
    """A ``MetricsSnapshot`` from the rows of the ``METRICS_*`` queries and ``BREAKERS``."""
    by_outcome: dict[tuple[str, str], int] = {}
    retries: dict[str, int] = {}
    suppressed: dict[str, int] = {}
    for provider, outcome, retry, taken, count in attempts:
        by_outcome[(provider, outcome)] = by_outcome.get((provider, outcome), 0) + int(count)
        if int(retry):
            retries[provider] = retries.get(provider, 0) + int(count)
        if int(taken):
            suppressed[provider] = suppressed.get(provider, 0) + int(count)
    return MetricsSnapshot(
        mails={str(status): int(count) for status, count in mails},
        attempts=by_outcome,
        retries=retries,
        outbox=int(outbox),
        dead_letters=int(dead_letters),
        breakers=tuple(breaker_from_row(r) for r in breakers),
        suppressed=suppressed,
    )


def metrics_from_summary(
    figures: dict[summary.Key, int],
    outbox: int,
    dead_letters: int,
    breakers: Sequence[Sequence[Any]],
) -> MetricsSnapshot:
    """A ``MetricsSnapshot`` from the summed ``figures`` rows (``summary.read_rows``), the
    outbox and dead letter counts and the breakers' rows. A figure at 0 is left out, as
    a count of rows leaves it out."""
    mails: dict[str, int] = {}
    attempts: dict[tuple[str, str], int] = {}
    retries: dict[str, int] = {}
    suppressed: dict[str, int] = {}
    failovers: dict[tuple[str, str], int] = {}
    dropped: dict[str, int] = {}
    for (figure, label, sublabel), amount in sorted(figures.items()):
        if not amount:
            continue
        if figure == summary.MAILS:
            mails[label] = amount
        elif figure == summary.ATTEMPTS:
            attempts[(label, sublabel)] = amount
        elif figure == summary.RETRIES:
            retries[label] = amount
        elif figure == summary.SUPPRESSED:
            suppressed[label] = amount
        elif figure == summary.FAILOVERS:
            failovers[(label, sublabel)] = amount
        elif figure == summary.DROPPED:
            dropped[label] = amount
    return MetricsSnapshot(
        mails=mails,
        attempts=attempts,
        retries=retries,
        outbox=int(outbox),
        dead_letters=int(dead_letters),
        breakers=tuple(breaker_from_row(r) for r in breakers),
        suppressed=suppressed,
        failovers=failovers,
        dropped=dropped,
    )


def failures_from_rows(
    mails: Sequence[Sequence[Any]], attempts: Sequence[Sequence[Any]], limit: int
) -> Failures:
    """``Failures`` from ``_failed_mails`` rows and every ``_failed_attempts`` query's
    rows (merged here: the newest ``limit`` over all outcomes)."""
    newest = sorted(attempts, key=lambda r: (float(r[5]), int(r[6])), reverse=True)[:limit]
    return Failures(
        mails=tuple(
            FailedMail(id=str(i), provider=p, reason=r, at=float(at)) for i, p, r, at in mails
        ),
        attempts=tuple(
            FailedAttempt(
                mail_id=str(mail_id),
                provider=str(provider),
                round=int(round_),
                outcome=str(outcome),
                reason=reason,
                at=float(at),
            )
            for mail_id, provider, round_, outcome, reason, at, _ in newest
        ),
    )


# --- operations ----------------------------------------------------------------------------


@snapshot
def metrics(d: Dialect) -> Steps[MetricsSnapshot]:
    """One read transaction (on SQLite, on the reader: it never waits for the writer)."""
    figures = summary.read_rows((yield Statement(summary.READ)).fetchall())
    (outbox,) = (yield Statement(METRICS_OUTBOX)).fetchone()
    (dead_letters,) = (yield Statement(METRICS_DEAD_LETTERS)).fetchone()
    breakers = (yield Statement(BREAKERS)).fetchall()
    return metrics_from_summary(figures, outbox, dead_letters, breakers)


@snapshot
def recount(d: Dialect) -> Steps[MetricsSnapshot]:
    """The figures counted from every row, in one read transaction."""
    mails = (yield Statement(METRICS_MAILS)).fetchall()
    attempts = (yield Statement(METRICS_ATTEMPTS)).fetchall()
    (outbox,) = (yield Statement(METRICS_OUTBOX)).fetchone()
    (dead_letters,) = (yield Statement(METRICS_DEAD_LETTERS)).fetchone()
    breakers = (yield Statement(BREAKERS)).fetchall()
    return metrics_from_rows(mails, attempts, outbox, dead_letters, breakers)


@read
def per_minute(d: Dialect, since: float, outcomes: tuple[str, ...]) -> Steps[list[MinuteCount]]:
    cur = yield Statement(_per_minute(d, len(outcomes)), (*outcomes, since))
    return [
        MinuteCount(minute=int(minute), provider=str(provider), outcome=str(outcome), count=int(n))
        for minute, provider, outcome, n in cur.fetchall()
    ]


@snapshot
def latest(d: Dialect, limit: int, outcomes: tuple[str, ...]) -> Steps[Failures]:
    """One read transaction (on SQLite, on the reader: it never waits for the writer)."""
    mails = (yield Statement(_failed_mails(d), (limit,))).fetchall()
    attempts: list[Any] = []
    for outcome in outcomes:
        attempts.extend((yield Statement(_failed_attempts(d), (outcome, limit))).fetchall())
    return failures_from_rows(mails, attempts, limit)


class SqlFigures(Figures, Engine):
    """``Figures`` on a driver."""

    async def metrics_snapshot(self) -> MetricsSnapshot:
        return await self.run(metrics)

    async def recount(self) -> MetricsSnapshot:
        return await self.run(recount)

    async def attempts_per_minute(self, since: float, outcomes: Sequence[str]) -> list[MinuteCount]:
        if not outcomes:
            return []
        return await self.run(per_minute, since, tuple(outcomes))

    async def latest_failures(self, limit: int, outcomes: Sequence[str]) -> Failures:
        return await self.run(latest, max(limit, 0), tuple(outcomes))

"""The ``figures`` table: what ``/metrics`` and the dashboard count, kept as mails move.

Every operation that adds mails, moves a mail's status or records or finishes an
attempt also adds what it changed to this table, in the same transaction (``bump``, its
last statement). So a read of the figures is a read of a few dozen rows, whatever the
number of mails kept (``figures.metrics``), never a count over ``mails`` or ``attempts``.

One row per figure, label, sublabel and shard:

- ``mails``/status: mails in that status. A mail moving on takes one from its old status
  and adds one to its new one. Retention deletes only mails in a final status, and is
  *not* taken off: a final status counts every mail that ended there, its record kept
  or not; ``queued``, ``scheduled`` and ``sending`` count the mails there now.
- ``attempts``/provider/outcome: attempts with that outcome. A ``pending`` one (a call
  in flight) moves to its outcome; the other outcomes are totals, never taken off.
- ``retries``/provider: attempts in a retry round (round > 0); a total.
- ``suppressed``/provider: ``unknown`` attempts the provider had taken when asked; a total.
- ``dropped``/reason: recipients dropped from mails because their address is suppressed
  (``store.suppressions``), at acceptance or before a provider call; a total. Not in the
  rows either.
- ``failovers``/provider/next provider: mails handed on at once from one provider to the
  next (``StatusUpdate.failover_to``), counted when the update finishes the attempt; a
  total. Not in the rows (``figures.recount`` cannot count it).

(Outbox entries and dead letters not replayed are counted where they wait: see
``figures.metrics``.)

Where a figure is touched by many transactions at once (MySQL: every accepted mail adds
to ``mails``/``queued``), one row would make them wait for each other's commit; each
transaction adds to one of ``SHARDS`` rows of the figure instead, chosen at random, and a
read sums them. SQLite has one writer: one shard. Rows are bumped in key order, at the
end of the transaction, so two transactions never wait on each other in a circle.

What an operation changed is known exactly: from what it read under the lock of the
rows it changes (MySQL; SQLite: the one writer), worked out as its guarded statements
run (``attempts.applied``, ``moves.statuses``), or by reading the mails again
(``settle``).
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailman.core.model import Check, Status, Suppressed
from mailman.core.records import fast_init

from . import moves
from .dialect import Dialect, in_lists
from .operation import Statement, Steps

#: Rows per figure on a database with several writers (MySQL); SQLite uses one.
SHARDS = 8

#: The figures' names (the table's ``figure`` column).
MAILS = "mails"
ATTEMPTS = "attempts"
RETRIES = "retries"
SUPPRESSED = "suppressed"
FAILOVERS = "failovers"
DROPPED = "dropped"

#: A figure's key: (figure, label, sublabel); '' where it has none.
Key = tuple[str, str, str]

#: The figures read (summed over shards): a handful of rows.
READ = "SELECT figure, label, sublabel, SUM(amount) FROM figures GROUP BY figure, label, sublabel"


@functools.lru_cache(maxsize=64)
def _bump(d: Dialect, count: int) -> str:
    """Add to ``count`` figures' shards."""
    return d.add_to("figures", "figure, label, sublabel, shard", "amount", count)


#: The attempt columns ``Held`` reads, in its order.
HELD_COLUMNS = "id, mail_id, provider, round, at, outcome, checked"


@functools.lru_cache(maxsize=1024)
def _attempts_by_id(d: Dialect, count: int) -> str:
    """These attempts (on MySQL locked: by primary key, the rows alone)."""
    return (
        f"SELECT {HELD_COLUMNS} FROM attempts WHERE id IN ({d.marks(count)}) "
        f"ORDER BY id{d.row_lock}"
    )


@functools.lru_cache(maxsize=1024)
def _attempts_of(d: Dialect, count: int) -> str:
    """These mails' attempts (on MySQL locked)."""
    return (
        f"SELECT {HELD_COLUMNS} FROM attempts WHERE mail_id IN ({d.marks(count)}) "
        f"ORDER BY id{d.row_lock}"
    )


def bump(d: Dialect, deltas: Counter[Key] | dict[Key, int]) -> Steps[None]:
    """Add ``deltas`` to the figures (zeros skipped) in one statement, in key order, on
    one shard chosen for this transaction (SQLite: shard 0)."""
    changed = sorted((key, amount) for key, amount in deltas.items() if amount)
    if not changed:
        return
    shard = 0 if d.one_writer else random.randrange(SHARDS)
    params = [v for (f, a, b), amount in changed for v in (f, a, b, shard, amount)]
    yield Statement(_bump(d, len(changed)), params)


@fast_init
@dataclass(frozen=True, slots=True)
class Held:
    """An attempt as ``look`` read it: what the figures count of it, and its unique key."""

    mail_id: str
    provider: str
    round: int
    at: float
    outcome: str
    checked: str | None

    @property
    def key(self) -> tuple[str, str, int, float, str]:
        """The ``attempts_once`` unique key."""
        return (self.mail_id, self.provider, self.round, self.at, self.outcome)


@dataclass(frozen=True, slots=True)
class Seen:
    """Some mails' statuses and some attempts, as ``look`` read them."""

    #: Mail id -> status (a mail not there is absent).
    mails: dict[str, Status]
    #: Attempt id -> the attempt.
    attempts: dict[int, Held] = field(default_factory=dict)


def look(
    d: Dialect, ids: Iterable[str], attempts: Iterable[int] = (), of: Iterable[str] = ()
) -> Steps[Seen]:
    """The statuses of the mails ``ids``, the ``attempts`` with these ids and every attempt
    of the mails ``of``. On MySQL the rows are locked (the mails first, in id order), so
    they change only by this transaction till it commits; attempts read by id lock those
    rows alone (no gap of the ``mail_id`` index, where other mails' attempts go)."""
    statuses = yield from moves.statuses(d, sorted(set(ids)))
    held: dict[int, Held] = {}
    for sql, keys in ((_attempts_by_id, sorted(set(attempts))), (_attempts_of, sorted(set(of)))):
        for chunk in in_lists(d, keys):
            cur = yield Statement(sql(d, len(chunk)), chunk)
            for attempt_id, mail_id, provider, round_, at, outcome, checked in cur.fetchall():
                held[int(attempt_id)] = Held(
                    str(mail_id), str(provider), int(round_), float(at), str(outcome), checked
                )
    return Seen(statuses, held)


def tally(seen: Seen) -> Counter[Key]:
    """What ``seen`` adds to the figures."""
    counts: Counter[Key] = Counter()
    for status in seen.mails.values():
        counts[(MAILS, status.value, "")] += 1
    for a in seen.attempts.values():
        counts[(ATTEMPTS, a.provider, a.outcome)] += 1
        if a.round > 0:
            counts[(RETRIES, a.provider, "")] += 1
        if a.checked == Check.TAKEN.value:
            counts[(SUPPRESSED, a.provider, "")] += 1
    return counts


def changes(before: Seen, after: Seen) -> Counter[Key]:
    """What the figures gain (or lose: negative) from ``before`` to ``after``."""
    deltas = tally(after)
    deltas.subtract(tally(before))
    return deltas


def settle(
    d: Dialect, before: Seen, extra: dict[Key, int] | None = None, of: Iterable[str] = ()
) -> Steps[None]:
    """Look again at what ``before`` saw (its mails, and the attempts of the mails ``of``
    it read) and bump the figures by what changed (and ``extra``): the end of an
    operation that moved mails."""
    after = yield from look(d, before.mails, of=of)
    deltas = changes(before, after)
    for key, amount in (extra or {}).items():
        deltas[key] += amount
    yield from bump(d, deltas)


def mail_added(statuses: Iterable[Status]) -> Counter[Key]:
    """Deltas of new mails in these (first) statuses."""
    return Counter((MAILS, s.value, "") for s in statuses)


def dropped(recipients: Iterable[Suppressed]) -> Counter[Key]:
    """Deltas of these recipients dropped as suppressed, by reason."""
    return Counter((DROPPED, s.reason.value, "") for s in recipients)


def moved(source: Status, target: Status, count: int) -> Counter[Key]:
    """Deltas of ``count`` mails moved from ``source`` to ``target`` (none if the same)."""
    deltas: Counter[Key] = Counter()
    deltas[(MAILS, source.value, "")] -= count
    deltas[(MAILS, target.value, "")] += count
    return deltas


def read_rows(rows: Sequence[Sequence[Any]]) -> dict[Key, int]:
    """The figures from ``READ``'s rows."""
    return {(str(f), str(a), str(b)): int(n) for f, a, b, n in rows}

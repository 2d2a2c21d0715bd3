"""Adaptive concurrency: how many calls a sender keeps in flight to its provider.

A ``Limiter`` holds the sender's slots, as a semaphore would, but its limit
moves between 1 and a ceiling, by the rule TCP uses for its window (additive
increase, multiplicative decrease, and a slow start above the start):

- it **starts at** ``start`` (``MAILMAN_SENDER_CONCURRENCY``), so a healthy
  provider gets the configured concurrency from the first call;
- it **halves** (floor 1) on an answer that says the provider is over its
  limit or unwell: a rate limit (``429``, SES throttling) or a 5xx, a failed
  connection, a timeout. Once per round trip: only an answer to a call sent
  after the last halving halves it again, so one burst of ``429`` from the
  calls already in flight counts once;
- below ``start`` it **grows by one** per ``limit`` good answers (about one
  per round trip) back toward it, while no bad answer came and the provider's
  recent answer time is flat: the p50 of the last ``RING`` good answers not
  above ``FLAT_RATIO`` times the best such p50 of the last ``BEST_OF`` readings;
- from ``start`` up to the ``ceiling`` (``MAILMAN_SENDER_MAX_CONCURRENCY``) it
  grows only while every slot is in use (the answer came with ``limit`` calls
  in flight: more mails wait than the limit lets go), answers are flat, the
  last ``RING`` mails were small (``SMALL_MAIL_BYTES`` or less) and the limit
  is below ``SIZED_FOR_MAILS_S`` times the best recent answer time (more
  would not be needed for that rate: a provider answering in 200 ms gets up
  to 1,000 calls, one answering in 10 ms none above ``start``); by one
  per good answer (it doubles per round trip) while no bad answer came for
  ``CALM_SECONDS``, else by one per round trip. A larger mail brings the limit
  back to ``start`` at once (``sized``): the calls above it hold small mails
  only, at most ``(ceiling - start) * SMALL_MAIL_BYTES`` in all.

Latency, not CPU, is what a slow provider costs (Little's law: a sender
delivers at most ``limit / answer time`` mails per second); the room above
``start`` lets a backlog meet a slow but healthy provider with more calls,
without a larger fixed number for every deployment.

Shrinking below the calls in flight cancels none: new calls wait until enough
have ended. Waiting for a slot happens before a mail is taken from the mailbox,
so it holds no mail. With ``adaptive`` off the limit stays at ``start``.

The per-call cost is a few comparisons and additions; the p50 is read (a sort
of ``RING`` numbers) at most every ``P50_SECONDS``.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mailman.providers import Accepted, Misconfigured, Rejected, Result, Transient, Unknown

#: Good answers whose answer time the p50 is read from.
RING = 32
#: Seconds between two readings of the recent p50 (at most).
P50_SECONDS = 0.25
#: Readings of the p50 the best one is taken from (``BEST_OF * P50_SECONDS`` or more).
BEST_OF = 40
#: The recent p50 is flat while it is at most this many times the best recent one.
FLAT_RATIO = 2.0
#: Seconds between two ``sender.concurrency`` lines of one sender (at least).
LOG_SECONDS = 1.0
#: The largest mail (its texts and attachments, in bytes) the calls above ``start`` carry.
SMALL_MAIL_BYTES = 64 * 1024
#: Above ``start``, the limit doubles per round trip once no bad answer came for this long.
CALM_SECONDS = 60.0
#: Mails a second a sender's calls in flight are sized for above ``start``: it grows no
#: further than this rate times the provider's best recent answer time. More is of no
#: use to one process (the bench machine delivers 2,000-3,500 a second per process) and
#: only queues calls behind its own CPU (measured: 8-10 % more CPU per mail in figure 2a
#: when a sender with instant answers grew as far as latency let it).
SIZED_FOR_MAILS_S = 5000.0


class Answer(enum.Enum):
    """What a provider's answer says about how much it takes."""

    #: It answered (took or refused the mail): room to grow.
    GOOD = "good"
    #: It is over its rate limit.
    RATE_LIMITED = "rate_limited"
    #: A 5xx, no connection, or no answer in time.
    UNWELL = "unwell"
    #: Says nothing about load (a wrong key).
    NEUTRAL = "neutral"


_GOOD, _NEUTRAL = Answer.GOOD, Answer.NEUTRAL
#: The answer of each result type but ``Transient`` (the hot path looks its type up).
_ANSWERS: dict[type[Result], Answer] = {
    Accepted: _GOOD,
    Rejected: _GOOD,
    Unknown: Answer.UNWELL,
    Misconfigured: _NEUTRAL,
}


def answer_of(result: Result) -> Answer:
    """What ``result`` says about the provider's load."""
    answer = _ANSWERS.get(type(result))
    if answer is not None:
        return answer
    if isinstance(result, Transient):
        return Answer.RATE_LIMITED if result.rate_limited else Answer.UNWELL
    if isinstance(result, Unknown):  # the sender's own kinds of no answer
        return Answer.UNWELL
    return _GOOD if isinstance(result, Accepted | Rejected) else _NEUTRAL


@dataclass(frozen=True, slots=True)
class Change:
    """The limit moved from ``old`` (the last one logged) to ``new``, lately for ``why``."""

    old: int
    new: int
    why: str


class Limiter:
    """The slots of one sender: at most ``limit`` calls in flight, ``limit`` adapting to
    the provider's answers (see the module) between 1 and ``ceiling``, from ``start``
    (the ceiling when None). ``clock`` is monotonic seconds."""

    def __init__(
        self,
        ceiling: int,
        *,
        start: int | None = None,
        adaptive: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        start = ceiling if start is None else start
        if not 1 <= start <= ceiling:
            raise ValueError(f"need 1 <= start <= ceiling, not start {start}, ceiling {ceiling}")
        self.ceiling = ceiling
        self.start = start
        self.adaptive = adaptive
        self.clock = clock
        self.limit = start
        self.in_flight = 0
        #: When the limit last halved: answers to calls sent before belong to that burst.
        self._halved_at = -math.inf
        #: When the last bad answer came (above ``start``: calm since ``CALM_SECONDS``?).
        self._bad_at = -math.inf
        #: Mails of ``SMALL_MAIL_BYTES`` or less since the last larger one.
        self._small = RING
        #: Good answers since the limit last moved (or a bad answer came).
        self._credit = 0
        #: The answer times of the last ``RING`` good answers (fewer at first).
        self._ring: list[float] = []
        self._next = 0
        self._p50_due = -math.inf
        self._p50s: deque[float] = deque(maxlen=BEST_OF)
        #: The best of them (0 before the first: no growth above ``start`` yet).
        self._best_p50 = 0.0
        self._flat = True
        self._logged = start
        self._logged_at = -math.inf
        self._why = ""
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Take a slot, waiting while ``limit`` calls (or more, after a halving) are in
        flight."""
        while self.in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: the slot goes to the next waiter
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += 1

    def release(self) -> None:
        """Give a slot back (the call ended, or none was made)."""
        self.in_flight -= 1
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def observe(self, started: float, answer: Answer) -> Change | None:
        """Count the answer to a call sent at ``started`` (``clock``); a ``Change`` to log
        when the limit moved and the last line is ``LOG_SECONDS`` old (else None: the
        move shows in the next one, or in ``unlogged``)."""
        if answer is not _GOOD:
            return self._bad(started, answer)
        if not self.adaptive:
            return None
        now = self.clock()
        ring, at = self._ring, self._next
        if len(ring) < RING:
            ring.append(now - started)
        else:
            ring[at] = now - started
        self._next = at + 1 if at + 1 < RING else 0
        if now >= self._p50_due:
            self._read_p50(now)
        limit = self.limit
        if limit >= self.start:
            if (
                limit >= self.ceiling
                or self.in_flight < limit
                or self._small < RING
                or limit >= SIZED_FOR_MAILS_S * self._best_p50
            ):
                # Not every slot in use, a large mail lately, or enough for the rate
                # (answers this fast): no more.
                self._credit = 0
                return None
            if now - self._bad_at >= CALM_SECONDS:
                return self._grow(now)  # calm: one per good answer, doubling per round trip
        credit = self._credit + 1
        if credit < limit:
            self._credit = credit
            return None
        self._credit = 0
        return self._grow(now)

    def _grow(self, now: float) -> Change | None:
        """One more slot, unless at the ceiling or while answers slow down."""
        if self.limit >= self.ceiling or not self._flat:
            return None
        self.limit += 1
        self._why = "growing"
        if self._waiters:
            self._wake()
        return self._logged_change(now)

    def sized(self, size: int) -> Change | None:
        """Count the size of a mail about to be sent (its texts and attachments, bytes):
        one over ``SMALL_MAIL_BYTES`` brings a limit above ``start`` back to it; a
        ``Change`` to log, as ``observe``."""
        if size <= SMALL_MAIL_BYTES:
            self._small += 1
            return None
        self._small = 0
        if self.limit <= self.start:
            return None
        self.limit = self.start
        self._credit = 0
        self._why = "large_mails"
        return self._logged_change(self.clock())

    def _bad(self, started: float, answer: Answer) -> Change | None:
        """Halve the limit for a rate limit or an unwell answer, once per round trip."""
        if not self.adaptive or answer is _NEUTRAL:
            return None
        now = self.clock()
        self._credit = 0
        self._bad_at = now
        if started < self._halved_at:
            return None  # sent before the last halving: the same burst
        self._halved_at = now
        halved = max(1, self.limit // 2)
        if halved == self.limit:
            return None
        self.limit = halved
        self._why = answer.value
        return self._logged_change(now)

    def _read_p50(self, now: float) -> None:
        """Read the recent p50 and whether it is flat (at most every ``P50_SECONDS``)."""
        self._p50_due = now + P50_SECONDS
        recent = sorted(self._ring)
        p50 = recent[(len(recent) - 1) // 2]
        self._p50s.append(p50)
        self._best_p50 = best = min(self._p50s)
        self._flat = p50 <= FLAT_RATIO * best

    def _logged_change(self, now: float) -> Change | None:
        if now - self._logged_at < LOG_SECONDS:
            return None
        return self._log(now)

    def _log(self, now: float) -> Change:
        change = Change(self._logged, self.limit, self._why)
        self._logged, self._logged_at = self.limit, now
        return change

    def unlogged(self) -> Change | None:
        """The move since the last ``Change`` given, if any (to log it now)."""
        if self.limit == self._logged:
            return None
        return self._log(self.clock())

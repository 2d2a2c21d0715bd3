"""Retries of infrastructure calls: one helper, on stamina, for every wait-and-try-again.

``retrying(operation, ...)`` awaits ``operation()`` and, while it fails with an
error the caller names as retryable, awaits it again after a backoff
(``Backoff``: a first wait doubling up to a cap, optional jitter, a number of
attempts or none: until it succeeds or is stopped). stamina (hynek's retry
library) counts the attempts and computes the waits; this module adds what the
actors need around it:

* **One log line per scheduled retry**, written by stamina's one on-retry hook
  (``log_retry``, installed here in place of stamina's defaults): the event the
  caller names (``store.waiting``, ``record.failed``...) with the caller's
  fields, ``attempt`` (the try that failed), ``retry_in`` (seconds) and
  ``error``. By default ``error`` is only the error's type (an error's text may
  quote what it was given); a caller may describe it in full where that text is
  known to be safe. stamina's default hooks are not used: its log line carries
  the call's arguments, and its Prometheus counter would add a series to
  ``/metrics``.
* **Stopping.** With ``stop``, a failure while it is set is not retried, and a
  wait it interrupts ends the retries: the last failure is raised at once. An
  actor waiting out an outage therefore stops promptly, and as it never
  crashed, it spends none of the supervisor's restart budget.
* **Waking.** With ``wake``, a wait it interrupts (or that begins while it is
  set) ends early: the operation is tried again at once, and the backoff
  starts over from its first wait.
* **No cost when it works.** The first try runs outside stamina; only its
  failure starts stamina's count (as its first attempt).

Supervision (a crashed actor or process started again) and the domain's
schedules (retry rounds of a mail, status callbacks) are not retries of one
call: they share ``mailman.core.backoff.capped_exponential``, the schedule
stamina waits by here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import stamina
import structlog
from stamina.instrumentation import RetryDetails

T = TypeVar("T")

_log = structlog.get_logger("mailman.retry")

#: Which failures are retried: exception types, or a test of the exception.
Retryable = type[BaseException] | tuple[type[BaseException], ...] | Callable[[Exception], bool]


@dataclass(frozen=True, slots=True)
class Backoff:
    """The waits between tries: ``first`` seconds, doubling up to ``cap``, plus up to
    ``jitter`` seconds at random; at most ``attempts`` tries in all (None: no limit)."""

    first: float
    cap: float = math.inf
    jitter: float = 0.0
    attempts: int | None = None

    def __post_init__(self) -> None:
        if self.first < 0 or self.cap < self.first or self.jitter < 0:
            raise ValueError("a backoff needs 0 <= first <= cap and jitter >= 0")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("a backoff allows at least one attempt")
        if self.attempts is None and math.isinf(self.cap):
            raise ValueError("a backoff without an attempt limit needs a finite cap")


def error_type(exc: BaseException) -> str:
    """An error as the retry log shows it by default: its type alone."""
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class _Retried:
    """What is being retried, as its log lines name it."""

    event: str
    fields: Mapping[str, object]
    describe: Callable[[BaseException], str]
    logger: Any


#: The retry under way in this task (stamina's hook runs inside it).
_RETRIED: ContextVar[_Retried | None] = ContextVar("mailman_retried", default=None)


def log_retry(details: RetryDetails) -> None:
    """stamina's on-retry hook: one warning per scheduled retry, named by ``retrying``'s
    caller (``retry.scheduled`` with the callable's name for any other stamina retry)."""
    retried = _RETRIED.get()
    wait = {"attempt": details.retry_num, "retry_in": round(details.wait_for, 3)}
    if retried is None:
        error = error_type(details.caused_by)
        _log.warning("retry.scheduled", what=details.name, **wait, error=error)
        return
    fields = {**retried.fields, **wait, "error": retried.describe(details.caused_by)}
    retried.logger.warning(retried.event, **fields)


stamina.instrumentation.set_on_retry_hooks([log_retry])


async def retrying(
    operation: Callable[[], Awaitable[T]],
    /,
    *,
    on: Retryable,
    backoff: Backoff,
    event: str,
    logger: Any = None,
    stop: asyncio.Event | None = None,
    wake: asyncio.Event | None = None,
    describe: Callable[[BaseException], str] = error_type,
    **fields: object,
) -> T:
    """``await operation()``, tried again after ``backoff`` while it fails with an error
    ``on`` names; raises the last failure once no try is left, or at once on an error
    ``on`` does not name (cancellation included).

    Each scheduled retry is one ``event`` warning on ``logger`` (``mailman.retry``
    by default) with ``fields``, ``attempt``, ``retry_in`` and ``error`` (as
    ``describe`` puts it). ``stop`` and ``wake``: see the module's docstring.
    """
    try:
        return await operation()
    except Exception as exc:
        if not _retryable(exc, on, stop):
            raise
        failure = exc
    retried = _Retried(event, fields, describe, _log if logger is None else logger)
    token = _RETRIED.set(retried)
    try:
        return await _again(operation, failure, on, backoff, stop, wake)
    finally:
        _RETRIED.reset(token)


async def _again(
    operation: Callable[[], Awaitable[T]],
    failure: Exception,
    on: Retryable,
    backoff: Backoff,
    stop: asyncio.Event | None,
    wake: asyncio.Event | None,
) -> T:
    """The retries after ``failure``, the first try's: each pass hands stamina the
    failure just seen, waits as stamina says, and tries again."""
    attempts: AsyncIterator[stamina.Attempt] | None = None
    while True:
        if attempts is None:  # a new count: its first attempt is the try that just failed
            attempts = aiter(
                stamina.retry_context(
                    on=Exception,  # only what ``on`` names is handed to stamina
                    attempts=backoff.attempts,
                    timeout=None,
                    wait_initial=backoff.first,
                    wait_max=backoff.cap,
                    wait_jitter=backoff.jitter,
                )
            )
            attempt = await anext(attempts)  # comes at once: no wait before a first attempt
        with attempt:
            raise failure  # stamina records it as this attempt's outcome
        following = await _after_wait(attempts, stop, wake)  # raises if no try is left
        if following is not None:
            attempt = following
        elif stop is not None and stop.is_set():
            raise failure
        else:
            attempts = None  # woken: try at once, and count afresh
        try:
            return await operation()
        except Exception as exc:
            if not _retryable(exc, on, stop):
                raise
            failure = exc


async def _after_wait(
    attempts: AsyncIterator[stamina.Attempt],
    stop: asyncio.Event | None,
    wake: asyncio.Event | None,
) -> stamina.Attempt | None:
    """The next attempt once stamina's wait is over (stamina raises the last failure
    instead when it schedules none); None if ``stop`` or ``wake`` cut the wait short."""
    events = [e for e in (stop, wake) if e is not None]
    if not events:
        return await anext(attempts)
    waited = asyncio.ensure_future(anext(attempts))
    signals = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait([waited, *signals], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signal in signals:
            signal.cancel()
        if not waited.done():
            waited.cancel()  # ends stamina's sleep; nothing else is left to run in it
    if waited not in done:
        return None
    if stop is not None and stop.is_set():
        waited.exception()  # retrieved: the failure raised instead is the same one
        return None
    return waited.result()


def _retryable(exc: Exception, on: Retryable, stop: asyncio.Event | None) -> bool:
    if stop is not None and stop.is_set():
        return False
    if isinstance(on, type | tuple):
        return isinstance(exc, on)
    return on(exc)

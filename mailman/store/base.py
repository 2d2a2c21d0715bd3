"""The store as the rest of Mailman sees it: every concern's interface in one ``Store``.

Each concern (``mails``, ``outbox``, ``attempts``, ``events``, ``dead_letters``,
``keys``, ``idempotency``, ``callbacks``, ``breakers``, ``figures``, ``retention``,
``tenants``, ``suppressions``) declares its interface, records, SQL and operations
in its own module. ``Store`` is all of them plus a lifecycle; ``SqlStore`` all of
them on a driver (``Engine``), so a driver (``sqlite``, ``mysql``) only says how it
connects and how it runs an operation. Everything a caller was answered ``201`` for
is committed here first.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
from types import TracebackType
from typing import Protocol

from .attempts import Attempts, Begun, SqlAttempts
from .breakers import Breakers, BreakerState, SqlBreakers
from .callbacks import CallbackDue, Callbacks, SqlCallbacks
from .dead_letters import DeadLetter, DeadLetters, SqlDeadLetters
from .events import EventResult, Events, SqlEvents
from .figures import (
    FailedAttempt,
    FailedMail,
    Failures,
    Figures,
    MetricsSnapshot,
    MinuteCount,
    SqlFigures,
)
from .finding import MailQuery
from .idempotency import Idempotency, IdempotencyKeys, IdempotencyMismatch, SqlIdempotencyKeys
from .keys import ApiKey, Keys, RateDecision, SqlKeys
from .mails import (
    MailRecord,
    Mails,
    MailSummary,
    MailTooLarge,
    Pending,
    SqlMails,
    Transition,
)
from .outbox import Outbox, OutboxEntry, SqlOutbox
from .retention import Addressed, Dropped, Erased, Retention, SqlRetention
from .suppressions import SqlSuppressions, Suppression, SuppressionQuery, Suppressions
from .templates import SqlTemplates, TemplateRecord, Templates
from .tenants import SqlTenants, Tenants


class StoreUnavailable(ConnectionError):
    """The store cannot be reached or did not answer in time; nothing was changed by us.

    Only raised where that is known: an operation the caller gave up on before it
    started is never run later (SQLite's writer skips it; a MySQL transaction is
    rolled back unless its COMMIT was sent, which is ``OutcomeUnknown``). The
    message names the cause without connection details (no password, no URL).
    """


class Expiring(Protocol):
    """A deadline a caller gives up by: an ``asyncio.timeout``, or ``intake.guard``'s own."""

    def expired(self) -> bool: ...


#: The timeout a caller gives up by (``giving_up_by``), seen by the drivers in its task.
_GIVING_UP: contextvars.ContextVar[Expiring | None] = contextvars.ContextVar(
    "mailman_store_giving_up", default=None
)


class giving_up_by:
    """Store calls inside: ``scope`` (an ``asyncio.timeout``, or any deadline whose
    expiry cancels the task) gives up only on what has not started. An operation the
    store has started when ``scope`` expires is waited for and its outcome answered (its
    change may be committed); one not started is abandoned, never run. Without this, a
    cancellation ends the call at once, started or not (the caller is being torn down:
    it tells nobody that nothing was changed). A class, not a generator: it wraps every
    store call of a request."""

    __slots__ = ("_scope", "_token")

    def __init__(self, scope: Expiring) -> None:
        self._scope = scope

    def __enter__(self) -> None:
        self._token = _GIVING_UP.set(self._scope)

    def __exit__(self, *exc: object) -> None:
        _GIVING_UP.reset(self._token)


def timed_out() -> bool:
    """Whether the cancellation being handled is the caller's ``giving_up_by`` timeout
    alone (not also a cancellation from outside)."""
    scope = _GIVING_UP.get()
    task = asyncio.current_task()
    return scope is not None and scope.expired() and task is not None and task.cancelling() <= 1


class OutcomeUnknown(ConnectionError):
    """A write's COMMIT was sent but its answer was lost: it may or may not have been made.

    Not a ``StoreUnavailable``: nothing says the change was not made. ``mail_id``
    names the mail whose commit it was, where the caller knows it (the intake
    sets it): reading that mail back settles the question (not found: never stored).
    """

    def __init__(self, message: str, *, mail_id: str | None = None) -> None:
        super().__init__(message)
        self.mail_id = mail_id


class Store(
    Mails,
    Outbox,
    Attempts,
    Events,
    DeadLetters,
    Keys,
    IdempotencyKeys,
    Callbacks,
    Breakers,
    Figures,
    Retention,
    Tenants,
    Suppressions,
    Templates,
):
    """Mails, statuses and attempts. Implementations are safe for concurrent use."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema to the current version."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""

    #: The errors that mean the database cannot be reached (the API answers 503).
    unavailable: tuple[type[BaseException], ...] = ()

    def may_come_up(self, exc: BaseException) -> bool:
        """Whether ``open()`` failing with ``exc`` may pass by waiting (the server or the
        volume is not there yet), as start-up waits; not when someone must act first."""
        return isinstance(exc, self.unavailable) and not isinstance(exc, StoreSetupNeeded)


class StoreSetupNeeded(Exception):
    """The store cannot open until someone acts; the message says what to run."""


class SqlStore(
    SqlMails,
    SqlOutbox,
    SqlAttempts,
    SqlEvents,
    SqlDeadLetters,
    SqlKeys,
    SqlIdempotencyKeys,
    SqlCallbacks,
    SqlBreakers,
    SqlFigures,
    SqlRetention,
    SqlTenants,
    SqlSuppressions,
    SqlTemplates,
    Store,
):
    """Every concern's operations on a driver: a driver adds ``open``/``close`` and
    ``Engine.run``/``Engine.run_batched``."""


__all__ = [
    "Addressed",
    "ApiKey",
    "Begun",
    "BreakerState",
    "CallbackDue",
    "DeadLetter",
    "Dropped",
    "Erased",
    "EventResult",
    "FailedAttempt",
    "FailedMail",
    "Failures",
    "Idempotency",
    "IdempotencyMismatch",
    "MailQuery",
    "MailRecord",
    "MailSummary",
    "MailTooLarge",
    "MetricsSnapshot",
    "MinuteCount",
    "OutboxEntry",
    "OutcomeUnknown",
    "Pending",
    "RateDecision",
    "SqlStore",
    "Store",
    "StoreSetupNeeded",
    "StoreUnavailable",
    "Suppression",
    "SuppressionQuery",
    "TemplateRecord",
    "Transition",
    "giving_up_by",
    "timed_out",
]

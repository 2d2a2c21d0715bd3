"""The store as the rest of Mailman sees it: every concern's interface in one ``Store``.

Each concern (``mails``, ``outbox``, ``attempts``, ``events``, ``dead_letters``,
``keys``, ``idempotency``, ``callbacks``, ``breakers``, ``figures``, ``retention``) declares its
interface, records, SQL and operations in its own module. ``Store`` is all of
them plus a lifecycle; ``SqlStore`` all of them on a driver (``Engine``), so a
driver (``sqlite``, ``mysql``) only says how it connects and how it runs an
operation. Everything a caller was answered ``201`` for is committed here first.
"""

from __future__ import annotations

import abc
from types import TracebackType

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
from .idempotency import Idempotency, IdempotencyKeys, IdempotencyMismatch, SqlIdempotencyKeys
from .keys import ApiKey, Keys, RateDecision, SqlKeys
from .mails import (
    MailQuery,
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


class StoreUnavailable(ConnectionError):
    """The store cannot be reached or did not answer in time; nothing was changed by us.

    The message names the cause without connection details (no password, no URL).
    """


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
    "Pending",
    "RateDecision",
    "SqlStore",
    "Store",
    "StoreUnavailable",
    "Transition",
]

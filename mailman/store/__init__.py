"""The store: where accepted mails, their status and their attempts live.

One module per concern (``mails``, ``outbox``, ``attempts``, ``events``,
``dead_letters``, ``keys``, ``idempotency``, ``callbacks``, ``breakers``,
``figures``, kept as mails move by ``summary``, ``retention``, ``tenants``,
``suppressions``, ``templates``, ``finding``): its interface, records, SQL and
operations, written once for both databases (``dialect``,
``operation``). ``base.Store`` is all of them in one;
``sqlite`` and ``mysql`` are the drivers that run them, and ``migrations`` the
schema of each. ``open_store`` picks a driver by URL.
"""

from .base import (
    Addressed,
    ApiKey,
    Begun,
    BreakerState,
    CallbackDue,
    DeadLetter,
    Dropped,
    Erased,
    EventResult,
    FailedAttempt,
    FailedMail,
    Failures,
    Idempotency,
    IdempotencyMismatch,
    MailQuery,
    MailRecord,
    MailSummary,
    MailTooLarge,
    MetricsSnapshot,
    MinuteCount,
    OutboxEntry,
    OutcomeUnknown,
    Pending,
    RateDecision,
    Store,
    StoreSetupNeeded,
    StoreUnavailable,
    Suppression,
    SuppressionQuery,
    TemplateRecord,
    Transition,
    giving_up_by,
)
from .keys import KEY_COLUMNS, api_key_from_row, bucket_step
from .suppressions import EVERY_GROUP


def open_store(url: str, *, sqlite_writer: str = "thread") -> Store:
    """The store a URL names: ``sqlite:///path/to.db`` (``sqlite://`` alone: in memory),
    ``mysql://user:password@host:3306/database``. A driver is imported when first named.
    ``sqlite_writer``: where a SQLite file's writes run, ``thread`` or ``process``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"store URL {url!r} has no scheme (expected sqlite:///path)")
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        path = rest[1:] if rest.startswith("/") else rest
        return SQLiteStore(path or ":memory:", writer=sqlite_writer)
    if scheme == "mysql":
        from .mysql import MySQLStore

        return MySQLStore.from_url(url)
    raise ValueError(f"unsupported store {scheme!r} (expected sqlite:///path or mysql://...)")


__all__ = [
    "EVERY_GROUP",
    "KEY_COLUMNS",
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
    "Store",
    "StoreSetupNeeded",
    "StoreUnavailable",
    "Suppression",
    "SuppressionQuery",
    "TemplateRecord",
    "Transition",
    "api_key_from_row",
    "bucket_step",
    "giving_up_by",
    "open_store",
]

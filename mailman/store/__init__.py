"""The store: where accepted mails, their status and their attempts live.

``base`` is the interface every database implements; ``sql`` the SQL and
row handling that SQLite and MySQL share; ``sqlite`` and ``mysql`` the two
implementations. ``open_store`` picks one by URL.
"""

from .base import (
    KEY_COLUMNS,
    ApiKey,
    Begun,
    BreakerState,
    CallbackDue,
    DeadLetter,
    EventResult,
    Idempotency,
    IdempotencyMismatch,
    MailQuery,
    MailRecord,
    MailSummary,
    MailTooLarge,
    OutboxEntry,
    Pending,
    RateDecision,
    Store,
    StoreUnavailable,
    Transition,
    api_key_from_row,
    bucket_step,
    list_filter,
    open_store,
)

__all__ = [
    "KEY_COLUMNS",
    "ApiKey",
    "Begun",
    "BreakerState",
    "CallbackDue",
    "DeadLetter",
    "EventResult",
    "Idempotency",
    "IdempotencyMismatch",
    "MailQuery",
    "MailRecord",
    "MailSummary",
    "MailTooLarge",
    "OutboxEntry",
    "Pending",
    "RateDecision",
    "Store",
    "StoreUnavailable",
    "Transition",
    "api_key_from_row",
    "bucket_step",
    "list_filter",
    "open_store",
]

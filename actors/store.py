"""The store: where accepted mails, their status and their attempts live.

One interface, one implementation per database (SQLite here, MySQL next).
Everything a caller was answered ``201`` for is committed here first.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from .messages import Attempt, Mail, Status, StatusUpdate


class StoreUnavailable(ConnectionError):
    """The store cannot be reached or did not answer in time; nothing was changed by us.

    The message names the cause without connection details (no password, no URL).
    """


@dataclass(frozen=True, slots=True)
class MailRecord:
    """A stored mail with everything known about it."""

    mail: Mail
    status: Status
    updated_at: float
    provider: str | None = None
    provider_message_id: str | None = None
    reason: str | None = None
    attempts: tuple[Attempt, ...] = ()


@dataclass(frozen=True, slots=True)
class Transition:
    """What a guarded status change did: ``changed`` is False for a repeat or a refused move."""

    changed: bool
    status: Status


@dataclass(frozen=True, slots=True)
class Pending:
    """A mail not yet ``sent`` or ``failed``: to be dispatched again after a restart."""

    mail_id: str
    accepted_at: float


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A committed mail not yet handed to the first sender mailbox (transactional outbox)."""

    id: int
    mail_id: str
    accepted_at: float


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


class Store(abc.ABC):
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

    @abc.abstractmethod
    async def add(self, mail: Mail) -> None:
        """Store a new mail as ``queued`` with its outbox entry, in one transaction.

        Committed when this returns; adding the same id again is a no-op.
        """

    @abc.abstractmethod
    async def get(self, mail_id: str) -> MailRecord | None:
        """The mail with its status and every attempt, oldest first; None if unknown."""

    @abc.abstractmethod
    async def load(self, mail_id: str) -> tuple[Mail, Status] | None:
        """The mail and its status, without history (what a sender needs)."""

    @abc.abstractmethod
    async def apply(self, updates: Sequence[StatusUpdate]) -> None:
        """Record attempts and guarded status moves, all in one transaction.

        A move not allowed by ``ALLOWED_FROM`` is skipped (never an error); an
        attempt already recorded is not recorded twice. Updates for unknown
        mails are ignored.
        """

    @abc.abstractmethod
    async def transition(
        self, mail_id: str, status: Status, at: float, reason: str | None = None
    ) -> Transition | None:
        """Move one mail to ``status`` if allowed; None if the mail is unknown."""

    @abc.abstractmethod
    async def unfinished(self) -> list[Pending]:
        """Mails still ``queued`` or ``sending``, oldest first."""

    # --- transactional outbox (the relay actor) ------------------------------

    @abc.abstractmethod
    async def claim_outbox(
        self, owner: str, limit: int, lease_seconds: float, now: float
    ) -> list[OutboxEntry]:
        """Lease up to ``limit`` outbox entries to ``owner`` until ``now + lease_seconds``.

        Only entries not leased, or whose lease ran out (a relay that died),
        are claimed, oldest first; several relays may claim at once and never
        get the same entry while its lease holds.
        """

    @abc.abstractmethod
    async def published(self, ids: Sequence[int]) -> None:
        """Remove outbox entries that were handed to the mailbox."""

    @abc.abstractmethod
    async def requeue_unfinished(self) -> int:
        """Give every ``queued``/``sending`` mail without an outbox entry a new one.

        Used at start by the one process of an in-memory deployment, whose
        mailboxes (and relay) died with the last run: it also releases every
        lease, so entries claimed by that relay are published again at once.
        Returns how many entries were made.
        """

    # --- shared circuit-breaker state ------------------------------------------

    @abc.abstractmethod
    async def save_breaker(self, state: BreakerState) -> None:
        """Record a provider's breaker state unless a newer one is already recorded."""

    @abc.abstractmethod
    async def breakers(self) -> list[BreakerState]:
        """Every provider's last recorded breaker state."""


def open_store(url: str) -> Store:
    """The store a URL names: ``sqlite:///path/to.db`` (``sqlite://`` alone: in memory),
    ``mysql://user:password@host:3306/database``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"store URL {url!r} has no scheme (expected sqlite:///path)")
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        path = rest[1:] if rest.startswith("/") else rest
        return SQLiteStore(path or ":memory:")
    if scheme == "mysql":
        from .mysql import MySQLStore

        return MySQLStore.from_url(url)
    raise ValueError(f"unsupported store {scheme!r} (expected sqlite:///path or mysql://...)")

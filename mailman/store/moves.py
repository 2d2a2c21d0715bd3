"""A mail's status moves, as SQL: the guarded ``UPDATE`` per status, and the read (on
MySQL, the lock) of the mails an operation moves next.

Every move is guarded by ``ALLOWED_FROM`` in its ``WHERE``, so a repeated or late
update never moves a mail backwards, and every operation that moves mails queues
their callbacks before it commits (``callbacks.queue``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

from mailman.core.messages import StatusUpdate
from mailman.core.model import ALLOWED_FROM, Status

from .dialect import Dialect, in_lists
from .operation import Statement, Steps

#: A mail still on its way: a restart hands these to the senders again.
UNFINISHED: tuple[str, ...] = (Status.QUEUED.value, Status.SENDING.value)

#: Statuses a status update can reach, in the order one can follow another:
#: a batch applies its moves in this order, so a ``sending`` and a ``sent``
#: for one mail in the same batch end ``sent``.
MOVE_ORDER: tuple[Status, ...] = (
    Status.SENDING,
    Status.UNKNOWN,
    Status.SENT,
    Status.FAILED,
    Status.DELIVERED,
    Status.BOUNCED,
)


@functools.lru_cache(maxsize=64)
def move(d: Dialect, status: Status) -> str:
    """The guarded move to ``status`` (parameters: status, at, provider, provider message
    id, reason, due at, mail id; the first three ``COALESCE``: None keeps what is there)."""
    allowed = ", ".join(f"'{s.value}'" for s in sorted(ALLOWED_FROM[status]))
    m = d.mark
    return f"""
        UPDATE mails
        SET status = {m},
            updated_at = {m},
            provider = COALESCE({m}, provider),
            provider_message_id = COALESCE({m}, provider_message_id),
            reason = COALESCE({m}, reason),
            due_at = {m}
        WHERE id = {m} AND status IN ({allowed})
    """


def move_values(update: StatusUpdate) -> tuple[object, ...]:
    """Parameters of ``move`` for one status update."""
    return (
        update.status.value,
        update.at,
        update.provider,
        update.provider_message_id,
        update.reason,
        update.at if update.due_at is None else update.due_at,
        update.mail_id,
    )


def plain_move_values(
    mail_id: str, status: Status, at: float, reason: str | None
) -> tuple[object, ...]:
    """Parameters of ``move`` for a move by hand (or a dead letter): due ``at``."""
    return (status.value, at, None, None, reason, at, mail_id)


def moves_in_order(updates: Sequence[StatusUpdate]) -> Iterator[tuple[Status, list[StatusUpdate]]]:
    """The updates grouped by the status they move to, in ``MOVE_ORDER``."""
    for status in MOVE_ORDER:
        group = [u for u in updates if u.status is status]
        if group:
            yield status, group


@functools.lru_cache(maxsize=1024)
def _statuses(d: Dialect, count: int) -> str:
    return f"SELECT id, status FROM mails WHERE id IN ({d.marks(count)}) ORDER BY id{d.row_lock}"


def statuses(d: Dialect, ids: Sequence[str]) -> Steps[dict[str, Status]]:
    """The current status of each of these mails that exists. On MySQL their rows are
    locked too, in id order (pass ``ids`` sorted), so concurrent transactions over the
    same mails queue behind each other instead of deadlocking; on SQLite the writer
    holds the whole database already."""
    found: dict[str, Status] = {}
    for chunk in in_lists(d, ids):
        cur = yield Statement(_statuses(d, len(chunk)), chunk)
        found.update((mail_id, Status(status)) for mail_id, status in cur.fetchall())
    return found


def lock(d: Dialect, ids: Sequence[str]) -> Steps[None]:
    """Lock these mails' rows (sorted ``ids``) before changing them; nothing on SQLite."""
    if d.one_writer:
        return
    yield from statuses(d, ids)

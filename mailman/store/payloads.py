"""Reading mails back: each one's ``Mail`` (its stored payload) and its status, by id.

One read for the mails' own operations (``mails.load``) and for the sender's
begins (``attempts.begin_many``), which sit on either side of an import: it
lives below both.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from mailman.core.messages import decode
from mailman.core.model import Mail, Status

from .dialect import Dialect, in_lists
from .operation import Statement, Steps


@functools.lru_cache(maxsize=1024)
def _of(d: Dialect, count: int) -> str:
    return f"SELECT id, payload, status FROM mails WHERE id IN ({d.marks(count)})"


def of(d: Dialect, ids: Sequence[str]) -> Steps[dict[str, tuple[Mail, Status]]]:
    """The stored mails among ``ids`` (each id once), with their statuses; a missing id is
    not in the answer."""
    found: dict[str, tuple[Mail, Status]] = {}
    for chunk in in_lists(d, list(dict.fromkeys(ids))):
        cur = yield Statement(_of(d, len(chunk)), chunk)
        for mail_id, payload, status in cur.fetchall():
            found[str(mail_id)] = (decode(Mail, payload), Status(status))
    return found

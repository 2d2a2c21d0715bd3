"""Bounded memory: the bytes of request bodies and SMTP mails held at once, across the process.

Every entry point that takes a body (the HTTP routes through ``routes.body``,
SMTP's ``DATA``) asks the process's one ``Budget`` for room before it reads,
and gives it back once its answer is sent. A body with a ``Content-Length``
(or an SMTP ``MAIL FROM ... SIZE=``) reserves its whole cost before a byte is
read; one of unknown length (chunked, SMTP without ``SIZE``) grows its
reservation as the bytes arrive and is refused the moment it would pass the
limit.

A body costs more than its bytes while it is held: the raw body, the parsed
JSON (every string a copy), the decoded attachments (3/4 of their base64),
the row written to the store. ``COST_FACTOR`` is what one byte of body is
charged (measured: a 13.4 MiB JSON body with a 10 MiB attachment took about
55 MiB of RSS at its peak, just over 4x; see bench/RESULTS.md).

No one owner (an API key, an SMTP AUTH user, the client address of a caller
without one) may hold more than ``share`` of the limit, so that one busy key
cannot starve the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: What one byte of a body is charged while its request is served (see the module doc).
COST_FACTOR = 4
#: What a refused caller is asked to wait (seconds).
RETRY_AFTER_SECONDS = 2


class OverBudget(Exception):
    """Taking these bytes now would pass the process's budget, or the owner's share of it."""

    def __init__(self, *, wanted: int, limit: int, owner_limit: int, whole: bool) -> None:
        which = "the process's" if whole else "this caller's"
        super().__init__(f"{wanted} more bytes would pass {which} in-flight budget")
        self.wanted = wanted
        self.limit = limit
        self.owner_limit = owner_limit
        #: True: the whole process is full; False: this owner's share is.
        self.whole = whole
        self.retry_after = RETRY_AFTER_SECONDS


@dataclass(eq=False, slots=True)
class Hold:
    """Bytes one request (or SMTP transaction) holds; ``grow`` as it reads, ``release`` once."""

    budget: Budget
    owner: str
    #: Bytes charged now (already multiplied by the cost factor).
    held: int = 0
    released: bool = field(default=False)

    def reserve(self, body_bytes: int) -> None:
        """Hold room for a body of ``body_bytes`` in all; ``OverBudget`` if there is none.
        Never shrinks what is held."""
        self.charge(body_bytes * self.budget.factor)

    def charge(self, total: int) -> None:
        """Hold ``total`` bytes in all (no change if that much is held already)."""
        if self.released:
            raise RuntimeError("this hold was released")
        more = total - self.held
        if more > 0:
            self.budget.take(self.owner, more)
            self.held = total

    def release(self) -> None:
        """Give the bytes back (again: nothing)."""
        if not self.released:
            self.released = True
            self.budget.give(self.owner, self.held)
            self.held = 0


class Budget:
    """The process's bytes in flight; ``limit`` 0: no limit (every hold succeeds)."""

    __slots__ = ("by_owner", "factor", "limit", "owner_limit", "used")

    def __init__(self, limit: int, *, share: float = 0.5, factor: int = COST_FACTOR) -> None:
        self.limit = limit
        self.factor = factor
        #: The most one owner may hold.
        self.owner_limit = math.floor(limit * share)
        self.used = 0
        self.by_owner: dict[str, int] = {}

    def hold(self, owner: str) -> Hold:
        """A new, empty hold for ``owner``."""
        return Hold(self, owner)

    def take(self, owner: str, nbytes: int) -> None:
        if self.limit > 0:
            mine = self.by_owner.get(owner, 0)
            if self.used + nbytes > self.limit:
                raise OverBudget(
                    wanted=nbytes, limit=self.limit, owner_limit=self.owner_limit, whole=True
                )
            if mine + nbytes > self.owner_limit:
                raise OverBudget(
                    wanted=nbytes, limit=self.limit, owner_limit=self.owner_limit, whole=False
                )
        self.used += nbytes
        self.by_owner[owner] = self.by_owner.get(owner, 0) + nbytes

    def give(self, owner: str, nbytes: int) -> None:
        self.used -= nbytes
        left = self.by_owner.get(owner, 0) - nbytes
        if left > 0:
            self.by_owner[owner] = left
        else:
            self.by_owner.pop(owner, None)

    def holds(self, owner: str) -> int:
        """The bytes ``owner`` holds now."""
        return self.by_owner.get(owner, 0)


def owner_of(key_id: str | None, address: str | None) -> str:
    """Whose bytes these are: the key's, or (no key) the client address's."""
    return f"key:{key_id}" if key_id is not None else f"ip:{address or '?'}"

"""A provider chain with weights, as pure logic: which provider a mail tries first,
and the order it fails over in.

A chain is written ``sendgrid:3,mailgun:1,ses`` (``config.parse.weighted_names``
reads it): the weighted providers come first,
in the order given, and split the mails' *first* attempts by weight; the others
follow, unweighted, in the order given. A mail's order is its first choice, then
the other weighted providers, then the rest. The first choice is a hash of the
mail's id, so a mail retried or delivered twice keeps it, and every process agrees.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Chain:
    """Provider names in the order given, each with its weight (0: unweighted)."""

    names: tuple[str, ...]
    weights: tuple[int, ...] = ()
    #: ``order`` of every mail when no provider is weighted (worked out once: the relay
    #: asks for each mail it hands on).
    _fixed: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.weights:
            object.__setattr__(self, "weights", (0,) * len(self.names))
        if len(self.weights) != len(self.names):
            raise ValueError("a weight per provider")
        if self.names and not any(self.weights):
            first = self.names[0]
            object.__setattr__(self, "_fixed", (first, *(n for n in self.base if n != first)))

    @property
    def weighted(self) -> tuple[str, ...]:
        return tuple(n for n, w in zip(self.names, self.weights, strict=True) if w)

    @property
    def unweighted(self) -> tuple[str, ...]:
        return tuple(n for n, w in zip(self.names, self.weights, strict=True) if not w)

    @property
    def base(self) -> tuple[str, ...]:
        """The failover order before any first choice: weighted ones, then the rest."""
        return (*self.weighted, *self.unweighted)

    def keep(self, names: tuple[str, ...] | frozenset[str]) -> Chain:
        """This chain with only the providers in ``names`` (their weights kept)."""
        kept = [(n, w) for n, w in zip(self.names, self.weights, strict=True) if n in names]
        return Chain(tuple(n for n, _ in kept), tuple(w for _, w in kept))

    def first(self, mail_id: str) -> str:
        """The provider ``mail_id`` tries first: by weight among the weighted ones (the
        same for a mail id every time, in every process), else the first of the chain."""
        weighted = [(n, w) for n, w in zip(self.names, self.weights, strict=True) if w]
        if not weighted:
            return self.names[0]
        total = sum(w for _, w in weighted)
        point = _point(mail_id) % total
        for name, weight in weighted:
            if point < weight:
                return name
            point -= weight
        raise AssertionError("unreachable: the point is below the total")

    def order(self, mail_id: str) -> tuple[str, ...]:
        """The providers ``mail_id`` tries, in order: its first choice, the other
        weighted ones, then the rest."""
        if self._fixed is not None:
            return self._fixed
        first = self.first(mail_id)
        return (first, *(n for n in self.base if n != first))

    def text(self) -> str:
        """As written: ``sendgrid:3,mailgun:1,ses``."""
        return ",".join(
            f"{n}:{w}" if w else n for n, w in zip(self.names, self.weights, strict=True)
        )


def _point(mail_id: str) -> int:
    """A stable number from a mail id (not ``hash``: that differs between processes)."""
    return int.from_bytes(hashlib.blake2b(mail_id.encode(), digest_size=8).digest(), "big")

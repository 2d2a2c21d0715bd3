"""Suppression, as pure functions: how an address is compared, and what is left of a mail
once its suppressed recipients are dropped.

A tenant's suppression list (``store.suppressions``) holds addresses its mails must not
go to: hard bounces, complaints and unsubscribes reported by any provider, and
addresses added by hand. A mail is checked when accepted and again right before each
provider call; each suppressed recipient (to, cc, bcc) is dropped and named in
``Mail.suppressed``. A mail left with no visible recipient (to, cc) ends ``suppressed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from .model import Address, Mail, Suppressed, SuppressionReason

#: The longest address kept (RFC 5321: 64 + 1 + 255).
MAX_ADDRESS = 320


def normalise(address: str) -> str:
    """The form an address is kept and compared in: trimmed, lower-case. (The local part
    is case-sensitive by the letter of RFC 5321, but no mailbox provider treats it so,
    and a list that missed ``Ann@`` for ``ann@`` would not protect anything.)"""
    return address.strip().lower()


def recipients(mail: Mail) -> list[str]:
    """Every recipient's address (to, cc, bcc), normalised, each once, in order."""
    return list(dict.fromkeys(normalise(a.email) for a in (*mail.to, *mail.cc, *mail.bcc)))


def drop(mail: Mail, found: Mapping[str, SuppressionReason]) -> Mail:
    """``mail`` without the recipients whose (normalised) address ``found`` names, each
    named in ``suppressed`` with its reason. Providers need a ``to``: should every ``to``
    be dropped while ``cc`` recipients are left, those become the ``to``. ``mail`` itself
    when nothing is dropped."""
    if not found:
        return mail
    dropped: dict[str, SuppressionReason] = {}

    def kept(addresses: tuple[Address, ...]) -> tuple[Address, ...]:
        left = []
        for address in addresses:
            email = normalise(address.email)
            reason = found.get(email)
            if reason is None:
                left.append(address)
            else:
                dropped.setdefault(email, reason)
        return tuple(left)

    to, cc, bcc = kept(mail.to), kept(mail.cc), kept(mail.bcc)
    if not dropped:
        return mail
    if not to and cc:
        to, cc = cc, ()
    named = tuple(Suppressed(email, reason) for email, reason in dropped.items())
    return replace(mail, to=to, cc=cc, bcc=bcc, suppressed=mail.suppressed + named)

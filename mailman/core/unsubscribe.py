"""One-click unsubscribe (RFC 8058, RFC 2369), as pure functions: the signed token a
mail's ``List-Unsubscribe`` URL carries, and the rules of a group's name.

A token names the tenant, the one recipient, the group and the mail, and is signed
with HMAC-SHA256 keyed with ``MAILMAN_UNSUBSCRIBE_SECRET`` (the same value on every
replica: any of them checks any token). ``<payload>.<signature>``, both unpadded
base64url; the payload is the JSON array ``[1, tenant, address, group, mail id]``.
It does not expire: the link of an old mail must still work (RFC 8058 asks the URL to
keep working; CAN-SPAM asks at least 30 days). Changing the secret voids every link
already sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

import orjson

#: The token format's version (the payload's first element).
VERSION = 1
#: A group's name: what a tenant calls a kind of mail its recipients can leave.
GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The longest token taken (a mail's is far shorter: 320-character address and all).
MAX_TOKEN = 1024
#: The path the links point at (``/unsubscribe/<token>``).
PATH = "/unsubscribe/"


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a valid token says: who leaves which group of which tenant, from which mail."""

    tenant: str
    address: str
    group: str
    mail_id: str


def group_problem(value: object) -> str | None:
    """Why ``value`` cannot be a group's name; None if it can."""
    if not isinstance(value, str):
        return "must be a string"
    if not GROUP.fullmatch(value):
        return "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> bytes:
    return hmac.new(secret.encode(), b"unsubscribe." + payload.encode(), hashlib.sha256).digest()


def sign(secret: str, ticket: Ticket) -> str:
    """The token for ``ticket``, signed with ``secret``."""
    payload = _b64(
        orjson.dumps([VERSION, ticket.tenant, ticket.address, ticket.group, ticket.mail_id])
    )
    return f"{payload}.{_b64(_mac(secret, payload))}"


def verify(secret: str, token: str) -> Ticket | None:
    """What ``token`` says if ``secret`` signed it as it is; None for anything else (forged,
    altered, truncated, not a token)."""
    if len(token) > MAX_TOKEN or token.count(".") != 1:
        return None
    payload, _, signature = token.partition(".")
    try:
        given = _unb64(signature)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(given, _mac(secret, payload)):
        return None
    try:
        value = orjson.loads(_unb64(payload))
    except (binascii.Error, ValueError):
        return None
    if (
        not isinstance(value, list)
        or len(value) != 5
        or value[0] != VERSION
        or not all(isinstance(v, str) for v in value[1:])
    ):
        return None
    return Ticket(tenant=value[1], address=value[2], group=value[3], mail_id=value[4])


def link(public_url: str, token: str) -> str:
    """The URL a mail's ``List-Unsubscribe`` names: ``<public URL>/unsubscribe/<token>``."""
    return f"{public_url.rstrip('/')}{PATH}{token}"

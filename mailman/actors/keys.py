"""API keys: how they are made, hashed and scoped. The store keeps only the hash.

A key is ``mm_`` followed by 32 random bytes (256 bits) in base64url. It is
shown once, when made; the store keeps its SHA-256. A plain (fast) hash is
right here: the key is random and long, so there is nothing to brute-force
the way a password would be.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import secrets
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TextIO

from ulid import ULID

from mailman.config import redact_url

from .store import ApiKey, Store, open_store
from .tools import run_store_tool

KEY_PREFIX = "mm_"
#: A tenant name: what keys and mails are grouped by.
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Scope(StrEnum):
    """What a key may do. ``send`` includes ``read``; ``admin`` includes both, for every tenant."""

    SEND = "send"
    READ = "read"
    ADMIN = "admin"


#: The scopes each scope brings with it.
IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.SEND: frozenset({Scope.SEND, Scope.READ}),
    Scope.READ: frozenset({Scope.READ}),
    Scope.ADMIN: frozenset(Scope),
}


def effective(scopes: Iterable[str]) -> frozenset[Scope]:
    """Every scope that ``scopes`` grant (unknown names grant nothing)."""
    granted: set[Scope] = set()
    for name in scopes:
        if name in Scope.__members__.values():
            granted |= IMPLIES[Scope(name)]
    return frozenset(granted)


def hash_secret(secret: str) -> str:
    """The SHA-256 (hex) the store keeps for a key."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_key(
    store: Store,
    *,
    tenant: str,
    scopes: Iterable[Scope],
    rate: float | None = None,
    now: float | None = None,
) -> tuple[ApiKey, str]:
    """Make and store a new key; the key record and the secret (show it once, never log it)."""
    if not TENANT.fullmatch(tenant):
        raise ValueError(
            "a tenant name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    if rate is not None and rate < 0:
        raise ValueError("the rate must be 0 (unlimited) or more mails per second")
    chosen = tuple(sorted({Scope(s) for s in scopes})) or (Scope.SEND,)
    secret = new_secret()
    key = ApiKey(
        id=f"key_{ULID()}",
        tenant=tenant,
        scopes=tuple(s.value for s in chosen),
        rate=rate,
        created_at=time.time() if now is None else now,
    )
    await store.create_key(key, hash_secret(secret))
    return key, secret


# --- the `mailman keys` command ----------------------------------------------------


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    default_store = env.get("MAILMAN_STORE", "sqlite:///mailman.db")
    store_help = (
        f"store URL, as the service's (default: sqlite:///mailman.db; env MAILMAN_STORE; "
        f"now: {redact_url(default_store)})"
    )
    # --store may stand before or after the command; given after, it must not
    # be reset by the command's own default.
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    p = argparse.ArgumentParser(
        prog="mailman keys",
        description="Manage the API keys that callers send as 'Authorization: Bearer <key>'.",
    )
    p.add_argument("--store", default=default_store, help=store_help)
    commands = p.add_subparsers(dest="command", required=True, metavar="{create,list,revoke}")
    create = commands.add_parser(
        "create", parents=[store], help="make a key and print it (alone, once) on stdout"
    )
    create.add_argument("--tenant", required=True, help="whose mails the key sends and reads")
    create.add_argument(
        "--scope",
        action="append",
        choices=[s.value for s in Scope],
        help="send (default; includes read), read, admin (every tenant, bookkeeping); repeatable",
    )
    create.add_argument(
        "--rate",
        type=float,
        default=None,
        help="mails per second for this key, also its burst (default: MAILMAN_RATE_LIMIT; "
        "0: unlimited)",
    )
    commands.add_parser(
        "list", parents=[store], help="every key: id, tenant, scopes, rate, times (never the key)"
    )
    revoke = commands.add_parser("revoke", parents=[store], help="revoke a key by its id")
    revoke.add_argument("id", help="the key's id (key_...), as `mailman keys list` shows it")
    return p


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(keys: list[ApiKey]) -> str:
    rows = [("ID", "TENANT", "SCOPES", "RATE", "CREATED", "LAST USED", "REVOKED")]
    for k in keys:
        rate = "default" if k.rate is None else f"{k.rate:g}/s"
        rows.append(
            (
                k.id,
                k.tenant,
                ",".join(k.scopes),
                rate,
                _when(k.created_at),
                _when(k.last_used_at),
                _when(k.revoked_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async with open_store(args.store) as store:
        if args.command == "create":
            key, secret = await create_key(
                store, tenant=args.tenant, scopes=args.scope or (Scope.SEND,), rate=args.rate
            )
            print(secret, file=out)
            print(
                f"created {key.id} for tenant {key.tenant} ({','.join(key.scopes)}); "
                "this is the only time the key is shown",
                file=err,
            )
        elif args.command == "list":
            print(_table(await store.keys()), file=out)
        else:
            if not await store.revoke_key(args.id, time.time()):
                print(f"mailman keys: no key {args.id!r}", file=err)
                return 1
            print(f"revoked {args.id}", file=err)
    return 0


def keys_main(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``mailman keys ...``: 0 done, 1 the store failed or no such key, 2 bad usage."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser(env).parse_args(list(argv))
    return run_store_tool("mailman keys", args, lambda: _run(args, out, err), err)

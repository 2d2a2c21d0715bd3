"""``mailman keys create|list|revoke``: the API keys callers send as ``Bearer`` (or as
the SMTP password). The key itself is printed once, alone on stdout; the store
keeps only its hash (``mailman.intake.keys``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from mailman.config import redact_url
from mailman.core.clock import iso_time
from mailman.intake.keys import Scope, create_key
from mailman.store import ApiKey, open_store

from ._tools import run_store_tool


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
    return iso_time(at, "seconds")


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

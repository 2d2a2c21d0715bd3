"""``mailman keys create|list|revoke``: the API keys callers send as ``Bearer`` (or as
the SMTP password). The key itself is printed once, alone on stdout; the store
keeps only its hash (``mailman.intake.keys``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import TextIO

from mailman.config import SETTINGS
from mailman.core.clock import iso_time
from mailman.intake.keys import Scope, create_key
from mailman.store import ApiKey, open_store

from ._tools import run_store_tool, store_flags
from .command import Call, Command


def _define(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    p.description = "Manage the API keys that callers send as 'Authorization: Bearer <key>'."
    after = store_flags(p, env)
    actions = p.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
    create = actions.add_parser(
        "create", parents=[after], help="make a key and print it (alone, once) on stdout"
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
        help=f"mails per second for this key, also its burst (default: "
        f"{SETTINGS['rate_limit'].env}; 0: unlimited)",
    )
    actions.add_parser(
        "list", parents=[after], help="every key: id, tenant, scopes, rate, times (never the key)"
    )
    revoke = actions.add_parser("revoke", parents=[after], help="revoke a key by its id")
    revoke.add_argument("id", help="the key's id (key_...), as `mailman keys list` shows it")


def _run(args: argparse.Namespace, call: Call) -> int:
    """``mailman keys ...``: 0 done, 1 the store failed or no such key, 2 bad usage."""
    store = SETTINGS["store"].read_args(args, call.env)
    return run_store_tool(
        "mailman keys", store, lambda: _keys(args, store, call.out, call.err), call.err
    )


COMMAND = Command("keys", "create, list and revoke API keys", _define, _run)


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


async def _keys(args: argparse.Namespace, url: str, out: TextIO, err: TextIO) -> int:
    async with open_store(url) as store:
        if args.action == "create":
            key, secret = await create_key(
                store, tenant=args.tenant, scopes=args.scope or (Scope.SEND,), rate=args.rate
            )
            print(secret, file=out)
            print(
                f"created {key.id} for tenant {key.tenant} ({','.join(key.scopes)}); "
                "this is the only time the key is shown",
                file=err,
            )
        elif args.action == "list":
            print(_table(await store.keys()), file=out)
        else:
            if not await store.revoke_key(args.id, time.time()):
                print(f"mailman keys: no key {args.id!r}", file=err)
                return 1
            print(f"revoked {args.id}", file=err)
    return 0

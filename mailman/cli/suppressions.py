"""``mailman suppressions list|add|remove|import``: a tenant's suppression list, the
addresses its mails never go to (``store.suppressions``).

``import`` reads a CSV (``address[,reason]``, a header row optional) or a provider's own
list through its API (``--from sendgrid``: its bounces, spam reports and unsubscribes;
``mailgun``: the domain's bounces, complaints and unsubscribes; ``postmark``: the
stream's suppressions; ``ses``: the account's suppression list), with the provider's
settings read from this environment as the service reads them.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from collections.abc import Mapping
from pathlib import Path

from mailman.config import SETTINGS, ConfigError, configured_provider
from mailman.core.model import SuppressionReason
from mailman.core.suppression import MAX_ADDRESS, normalise
from mailman.core.unsubscribe import group_problem
from mailman.core.validation import parse_address
from mailman.intake.keys import TENANT
from mailman.providers import Listed, ListUnavailable
from mailman.store import EVERY_GROUP, Suppression, SuppressionQuery, open_store
from mailman.system import make_client

from ._tools import run_store_tool, store_flags
from .command import Call, Command

#: The providers ``import --from`` reads.
IMPORTABLE = ("sendgrid", "mailgun", "postmark", "ses")
#: Suppressions per page of ``list``'s reads, and per transaction of ``import``.
BATCH = 1000
REASONS = [r.value for r in SuppressionReason]


def _define(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    p.description = "List, add, remove or import a tenant's suppressed addresses."
    after = store_flags(p, env)
    tenant = argparse.ArgumentParser(add_help=False)
    tenant.add_argument("--tenant", required=True, help="whose list, as its keys name it")
    actions = p.add_subparsers(dest="action", required=True, metavar="{list,add,remove,import}")
    listing = actions.add_parser("list", parents=[after], help="suppressed addresses, by address")
    listing.add_argument("--tenant", help="whose list (default: every tenant's)")
    listing.add_argument("--reason", choices=REASONS, help="only this reason")
    listing.add_argument(
        "--group", help="only this unsubscribe group's ('': only those for every mail)"
    )
    add = actions.add_parser("add", parents=[after, tenant], help="suppress an address")
    add.add_argument("address")
    add.add_argument("--reason", choices=REASONS, default="manual", help="why (default manual)")
    add.add_argument(
        "--group", help="only for this unsubscribe group's mails (default: every mail)"
    )
    remove = actions.add_parser(
        "remove", parents=[after, tenant], help="take an address off the list (every group's)"
    )
    remove.add_argument("address")
    remove.add_argument("--group", help="only this unsubscribe group's suppression")
    pull = actions.add_parser(
        "import",
        parents=[after, tenant],
        help="add the addresses of a CSV file (address[,reason]) or of a provider's own list",
    )
    source = pull.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="a CSV file: address[,reason], header optional")
    source.add_argument(
        "--from", dest="provider", choices=IMPORTABLE, help="a provider's own suppression list"
    )
    pull.add_argument(
        "--reason",
        choices=REASONS,
        default="manual",
        help="the reason of CSV rows that give none (default manual)",
    )


def _run(args: argparse.Namespace, call: Call) -> int:
    """``mailman suppressions ...``: 0 done, 1 the store or the provider failed, 2 bad usage."""
    store = SETTINGS["store"].read_args(args, call.env)
    text = None
    if args.action == "import" and args.file is not None:
        try:
            text = Path(args.file).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"mailman suppressions: cannot read {args.file}: {exc}", file=call.err)
            return 2
    return run_store_tool(
        "mailman suppressions", store, lambda: _suppressions(args, store, call, text), call.err
    )


COMMAND = Command("suppressions", "list, add, remove or import suppressed addresses", _define, _run)


def address_of(raw: str) -> str:
    """``raw`` as the list keeps it; ``ValueError`` saying why it is no address."""
    try:
        parsed = parse_address(raw.strip())
    except ValueError as exc:
        raise ValueError(f"{raw.strip()!r} {exc}") from None
    address = normalise(parsed.email)
    if parsed.name or "<" in raw or len(address) > MAX_ADDRESS:
        raise ValueError(f"{raw.strip()!r} is not one bare address")
    return address


def read_csv(text: str, default: SuppressionReason) -> list[tuple[str, SuppressionReason]]:
    """The (address, reason) rows of a CSV: ``address[,reason]``, a first row that is no
    address (a header) skipped, blank rows skipped; ``ValueError`` naming the line of the
    first bad row."""
    rows: list[tuple[str, SuppressionReason]] = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if number == 1 and "@" not in cells[0]:
            continue  # a header
        if len(cells) > 2:
            raise ValueError(f"line {number}: expected address[,reason], got {len(cells)} columns")
        given = cells[1] if len(cells) > 1 and cells[1] else None
        if given is not None and given not in REASONS:
            raise ValueError(f"line {number}: reason {given!r} is not one of {', '.join(REASONS)}")
        try:
            address = address_of(cells[0])
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        rows.append((address, default if given is None else SuppressionReason(given)))
    return rows


async def pulled(provider: str, env: Mapping[str, str]) -> list[tuple[str, SuppressionReason]]:
    """The provider's own list, as (address, reason); ``ValueError`` if the provider is
    not configured here, ``ListUnavailable`` if its list cannot be read."""
    try:
        configured = configured_provider(provider, env)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    if configured is None:
        raise ValueError(f"{provider} is not configured in this environment (no key)")
    client = make_client(configured, SETTINGS["provider_timeout"].read(None, env))
    await client.start()
    try:
        listed: list[Listed] = await client.suppression_list()
    finally:
        await client.close()
    kept: list[tuple[str, SuppressionReason]] = []
    for item in listed:
        address = normalise(item.address)
        if "@" in address and len(address) <= MAX_ADDRESS:
            kept.append((address, item.reason))
    return kept


async def _suppressions(args: argparse.Namespace, url: str, call: Call, text: str | None) -> int:
    err = call.err
    tenant = args.tenant
    if tenant is not None and not TENANT.fullmatch(tenant):
        raise ValueError("--tenant is not a tenant name (1 to 64 letters, digits, '.', '_', '-')")
    group = getattr(args, "group", None)
    if group:
        problem = group_problem(group)
        if problem is not None:
            raise ValueError(f"--group {problem}")
    if args.action == "list":
        await _list(url, tenant, args.reason, group, call)
        return 0
    if args.action == "remove":
        address = address_of(args.address)
        async with open_store(url) as store:
            removed = await store.remove_suppression(tenant, address, group)
        if not removed:
            print(f"{address} is not on {tenant}'s list", file=err)
            return 1
        print(f"removed {address} from {tenant}'s list", file=err)
        return 0
    now = time.time()
    if args.action == "add":
        rows = [(address_of(args.address), SuppressionReason(args.reason))]
        source = "cli"
        into = group or EVERY_GROUP
    elif args.provider is not None:
        try:
            rows = await pulled(args.provider, call.env)
        except ListUnavailable as exc:
            print(f"mailman suppressions: {exc}", file=err)
            return 1
        source = f"import:{args.provider}"
        into = EVERY_GROUP
    else:
        assert text is not None
        rows = read_csv(text, SuppressionReason(args.reason))
        source = "import:csv"
        into = EVERY_GROUP
    added = 0
    async with open_store(url) as store:
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            added += await store.add_suppressions(
                [Suppression(tenant, a, r, source, now, group=into) for a, r in batch]
            )
    print(
        f"{added} added to {tenant}'s list, {len(rows) - added} there already ({source})",
        file=err,
    )
    return 0


async def _list(
    url: str, tenant: str | None, reason: str | None, group: str | None, call: Call
) -> None:
    rows = [("TENANT", "ADDRESS", "REASON", "GROUP", "SOURCE", "SINCE")]
    query = SuppressionQuery(
        tenant, BATCH, None if reason is None else SuppressionReason(reason), group=group
    )
    async with open_store(url) as store:
        while True:
            page = await store.list_suppressions(query)
            for s in page:
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.created_at))
                rows.append((s.tenant, s.address, s.reason.value, s.group or "*", s.source, since))
            if len(page) < query.limit:
                break
            last = page[-1]
            query = SuppressionQuery(
                query.tenant,
                BATCH,
                query.reason,
                (last.tenant, last.address, last.group),
                group=query.group,
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        print(line.rstrip(), file=call.out)

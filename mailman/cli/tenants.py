"""``mailman tenants set|list``: each tenant's own provider chain. A tenant without one
follows the deployment's ``MAILMAN_PROVIDERS``; one with one has every mail it sends
from then on go through its chain (read at acceptance, within the key cache's time,
``MAILMAN_KEY_CACHE_SECONDS``, and carried with the mail)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping

from mailman.config import SETTINGS, ConfigError, configured_chain
from mailman.config.parse import weighted_names
from mailman.core.chain import Chain
from mailman.intake.keys import TENANT
from mailman.store import open_store

from ._tools import run_store_tool, store_flags
from .command import Call, Command

#: What ``--providers`` takes to go back to the deployment's chain.
DEFAULT = "default"


def _define(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    p.description = "Give a tenant its own provider chain, or list every tenant's."
    after = store_flags(p, env)
    actions = p.add_subparsers(dest="action", required=True, metavar="{set,list}")
    put = actions.add_parser(
        "set",
        parents=[after],
        help="give a tenant its own provider chain (--providers default: the deployment's)",
    )
    put.add_argument("tenant", help="the tenant, as its keys name it")
    put.add_argument(
        "--providers",
        required=True,
        metavar="CHAIN",
        help=f"providers in failover order, weights as in {SETTINGS['providers'].env} "
        "(postmark,ses or sendgrid:3,mailgun:1), each configured in this deployment; "
        f"{DEFAULT}: back to {SETTINGS['providers'].env}",
    )
    actions.add_parser(
        "list", parents=[after], help="every tenant: its chain and how many live keys it has"
    )


def _run(args: argparse.Namespace, call: Call) -> int:
    """``mailman tenants ...``: 0 done, 1 the store failed, 2 bad usage."""
    store = SETTINGS["store"].read_args(args, call.env)
    return run_store_tool("mailman tenants", store, lambda: _tenants(args, store, call), call.err)


COMMAND = Command("tenants", "give tenants their own provider chain, list them", _define, _run)


def chain_text(raw: str, configured: tuple[str, ...]) -> str | None:
    """``--providers`` as the store keeps it (None: the deployment's chain); ``ValueError``
    naming what is wrong, e.g. a provider this deployment does not configure."""
    if raw.strip().lower() == DEFAULT:
        return None
    try:
        pairs = weighted_names(raw)
    except ValueError as exc:
        raise ValueError(f"--providers: {exc}") from None
    if not pairs:
        raise ValueError(f"--providers names no provider (use {DEFAULT} for the deployment's)")
    missing = [name for name, _ in pairs if name not in configured]
    if missing:
        raise ValueError(
            f"--providers names {', '.join(missing)}, not configured in this deployment "
            f"(configured: {', '.join(configured)}; {SETTINGS['providers'].env} and the "
            "providers' keys are read from this environment, as the service reads them)"
        )
    return Chain(tuple(n for n, _ in pairs), tuple(w for _, w in pairs)).text()


async def _tenants(args: argparse.Namespace, url: str, call: Call) -> int:
    out, err = call.out, call.err
    if args.action == "set":
        if not TENANT.fullmatch(args.tenant):
            raise ValueError(
                "a tenant name is 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit"
            )
        try:
            configured = configured_chain(call.env)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        chain = chain_text(args.providers, configured)
        async with open_store(url) as store:
            await store.set_tenant_chain(args.tenant, chain, time.time())
        shown = chain or f"the deployment's ({SETTINGS['providers'].env})"
        print(f"tenant {args.tenant}: {shown}", file=err)
        return 0
    async with open_store(url) as store:
        chains = await store.tenant_chains()
        keys = await store.keys()
    live: dict[str, int] = {}
    for key in keys:
        live.setdefault(key.tenant, 0)
        if key.revoked_at is None:
            live[key.tenant] += 1
    print(_table(chains, live), file=out)
    return 0


def _table(chains: Mapping[str, str], live: Mapping[str, int]) -> str:
    rows = [("TENANT", "PROVIDERS", "KEYS")]
    for tenant in sorted(set(chains) | set(live)):
        rows.append((tenant, chains.get(tenant, DEFAULT), str(live.get(tenant, 0))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )

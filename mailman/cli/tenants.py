"""``mailman tenants set|list``: each tenant's own provider chain, and its default
one-click unsubscribe group. A tenant without a chain follows the deployment's
``MAILMAN_PROVIDERS``; one with one has every mail it sends from then on go through its
chain (read at acceptance, within the key cache's time, ``MAILMAN_KEY_CACHE_SECONDS``,
and carried with the mail). A tenant with a default group (``--unsubscribe-group``) has
each mail to one recipient that says nothing of ``unsubscribe`` be of that group, with
its ``List-Unsubscribe`` (read at acceptance, within the same time)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping

from mailman.config import SETTINGS, ConfigError, configured_chain
from mailman.config.parse import weighted_names
from mailman.core.chain import Chain
from mailman.core.model import Unsubscribe
from mailman.core.unsubscribe import group_problem
from mailman.core.validation import parse_address
from mailman.intake.keys import TENANT
from mailman.store import open_store

from ._tools import run_store_tool, store_flags
from .command import Call, Command

#: What ``--providers`` takes to go back to the deployment's chain.
DEFAULT = "default"
#: What ``--unsubscribe-group`` takes for no default group (besides ``DEFAULT``).
NONE = "-"


def _define(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    p.description = (
        "Give a tenant its own provider chain or default unsubscribe group, or list every tenant's."
    )
    after = store_flags(p, env)
    actions = p.add_subparsers(dest="action", required=True, metavar="{set,list}")
    put = actions.add_parser(
        "set",
        parents=[after],
        help="give a tenant its own provider chain (--providers default: the deployment's) "
        "or default unsubscribe group (--unsubscribe-group -: none)",
    )
    put.add_argument("tenant", help="the tenant, as its keys name it")
    put.add_argument(
        "--providers",
        metavar="CHAIN",
        help=f"providers in failover order, weights as in {SETTINGS['providers'].env} "
        "(postmark,ses or sendgrid:3,mailgun:1), each configured in this deployment; "
        f"{DEFAULT}: back to {SETTINGS['providers'].env}",
    )
    put.add_argument(
        "--unsubscribe-group",
        metavar="GROUP",
        help="the one-click unsubscribe group of each of the tenant's mails to one recipient "
        'that says nothing of unsubscribe ("unsubscribe": false opts a mail out); '
        f"{NONE} or {DEFAULT}: none",
    )
    put.add_argument(
        "--unsubscribe-mailto",
        metavar="ADDRESS",
        help="an address offered as mailto: beside the default group's link "
        "(only with --unsubscribe-group)",
    )
    actions.add_parser(
        "list",
        parents=[after],
        help="every tenant: its chain, how many live keys it has, its default unsubscribe group",
    )


def _run(args: argparse.Namespace, call: Call) -> int:
    """``mailman tenants ...``: 0 done, 1 the store failed, 2 bad usage."""
    store = SETTINGS["store"].read_args(args, call.env)
    return run_store_tool("mailman tenants", store, lambda: _tenants(args, store, call), call.err)


COMMAND = Command(
    "tenants",
    "give tenants their own provider chain or default unsubscribe group, list them",
    _define,
    _run,
)


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


def unsubscribe_default(group: str, mailto: str | None) -> Unsubscribe | None:
    """``--unsubscribe-group`` and ``--unsubscribe-mailto`` as the store keeps them (None:
    no default group); ``ValueError`` naming the flag at fault."""
    if group.strip().lower() in (NONE, DEFAULT):
        if mailto is not None:
            raise ValueError("--unsubscribe-mailto needs a group (--unsubscribe-group)")
        return None
    problem = group_problem(group)
    if problem is not None:
        raise ValueError(f"--unsubscribe-group {problem}")
    if mailto is None:
        return Unsubscribe(group)
    try:
        address = parse_address(mailto)
    except ValueError as exc:
        raise ValueError(f"--unsubscribe-mailto: {exc}") from None
    if address.name or "<" in mailto:
        raise ValueError("--unsubscribe-mailto must be a bare address, without a display name")
    return Unsubscribe(group, mailto=address.email)


async def _tenants(args: argparse.Namespace, url: str, call: Call) -> int:
    out, err = call.out, call.err
    if args.action == "set":
        if not TENANT.fullmatch(args.tenant):
            raise ValueError(
                "a tenant name is 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit"
            )
        if args.unsubscribe_group is None and args.unsubscribe_mailto is not None:
            raise ValueError("--unsubscribe-mailto needs a group (--unsubscribe-group)")
        if args.providers is None and args.unsubscribe_group is None:
            raise ValueError("say what to set: --providers, --unsubscribe-group or both")
        chain = default = None
        if args.providers is not None:
            try:
                configured = configured_chain(call.env)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            chain = chain_text(args.providers, configured)
        if args.unsubscribe_group is not None:
            default = unsubscribe_default(args.unsubscribe_group, args.unsubscribe_mailto)
        async with open_store(url) as store:
            if args.providers is not None:
                await store.set_tenant_chain(args.tenant, chain, time.time())
            if args.unsubscribe_group is not None:
                await store.set_tenant_unsubscribe(args.tenant, default, time.time())
        if args.providers is not None:
            shown = chain or f"the deployment's ({SETTINGS['providers'].env})"
            print(f"tenant {args.tenant}: {shown}", file=err)
        if args.unsubscribe_group is not None:
            print(f"tenant {args.tenant}: {_grouped(default, call.env)}", file=err)
        return 0
    async with open_store(url) as store:
        chains = await store.tenant_chains()
        keys = await store.keys()
        defaults = await store.tenant_unsubscribes()
    live: dict[str, int] = {}
    for key in keys:
        live.setdefault(key.tenant, 0)
        if key.revoked_at is None:
            live[key.tenant] += 1
    print(_table(chains, live, defaults), file=out)
    return 0


def _grouped(default: Unsubscribe | None, env: Mapping[str, str]) -> str:
    """What ``set`` says of a default group (and of settings this environment lacks)."""
    if default is None:
        return "no default unsubscribe group (each mail says whether it is of a group)"
    said = f"default unsubscribe group {default.group}"
    if default.mailto is not None:
        said += f" (mailto {default.mailto})"
    names = [SETTINGS[name].env for name in ("public_url", "unsubscribe_secret")]
    lacking = [name for name in names if name is not None and not env.get(name)]
    if lacking:
        said += (
            f"; note: {' and '.join(lacking)} unset here: a service without them sends "
            "the group's mails without List-Unsubscribe"
        )
    return said


def _table(
    chains: Mapping[str, str], live: Mapping[str, int], defaults: Mapping[str, Unsubscribe]
) -> str:
    rows = [("TENANT", "PROVIDERS", "KEYS", "UNSUBSCRIBE", "MAILTO")]
    for tenant in sorted(set(chains) | set(live) | set(defaults)):
        default = defaults.get(tenant)
        rows.append(
            (
                tenant,
                chains.get(tenant, DEFAULT),
                str(live.get(tenant, 0)),
                NONE if default is None else default.group,
                NONE if default is None or default.mailto is None else default.mailto,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )

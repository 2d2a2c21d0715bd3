"""``mailman erase --address ADDR``: erase every mail to or from one person (GDPR art. 17).

Finds the mails with the address (in any case) as from, to, cc, bcc or reply-to,
``--tenant``'s only if given, and erases each as ``DELETE /mail/{id}`` does: the
mail and every row that names it are deleted (it is then 404). A scheduled mail is
cancelled and erased; one still ``queued`` or ``sending`` is left (a sender may hold
it): the command says how many and exits 1, to be run again once they are final.

Mails whose content retention already erased (``MAILMAN_BODY_RETENTION``) keep no
address, so they are not found; they hold no personal data but their status
record, which ``MAILMAN_RECORD_RETENTION`` deletes in its time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import TextIO

from mailman.config import SETTINGS
from mailman.store import open_store

from ._tools import add_store_flag, run_store_tool
from .command import Call, Command


def _define(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    p.description = (
        "Erase every mail to or from an address (from, to, cc, bcc, reply-to): each mail "
        "and all its rows are deleted. Mails still queued or sending are left."
    )
    p.add_argument("--address", required=True, help="the person's e-mail address (any case)")
    p.add_argument("--tenant", help="only this tenant's mails (default: every tenant's)")
    add_store_flag(p, env)


def _run(args: argparse.Namespace, call: Call) -> int:
    """0 all erased, 1 some left (on their way) or the store failed, 2 bad usage."""
    address = args.address.strip()
    if "@" not in address:
        print(f"mailman erase: --address {args.address!r} is not an e-mail address", file=call.err)
        return 2
    store = SETTINGS["store"].read_args(args, call.env)
    return run_store_tool(
        "mailman erase", store, lambda: _erase(store, address, args.tenant, call.out), call.err
    )


COMMAND = Command("erase", "erase every mail to or from an address (GDPR)", _define, _run)


async def _erase(url: str, address: str, tenant: str | None, out: TextIO) -> int:
    erased = left = 0
    async with open_store(url) as store:
        after: tuple[float, str] | None = None
        while True:
            page = await store.addressed(address, tenant, after)
            for mail_id in page.mail_ids:
                done = await store.erase(mail_id, time.time())
                if done is None:  # erased meanwhile (by retention, or another erase)
                    continue
                if done.erased:
                    erased += 1
                else:
                    left += 1
                    print(f"mail {mail_id} is {done.status.value}: left", file=out)
            if page.after is None:
                break
            after = page.after
    print(f"erased {erased} mail(s) to or from {address}", file=out)
    if left:
        print(f"left {left} mail(s) still being sent: run again once they are final", file=out)
    return 1 if left else 0

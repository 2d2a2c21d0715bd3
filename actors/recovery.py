"""The recovery actor: after a restart, dispatches again every mail the last run left unfinished.

The list is read from the store before the HTTP port is bound, so it holds
only mails accepted by an earlier run; it is handed out in the background, so
a long backlog does not delay start-up. A mail already ``sent`` is skipped by
the sender, so a mail that finished meanwhile is never sent twice.
"""

from __future__ import annotations

import structlog

from .lifecycle import Actor
from .messages import Dispatch
from .routing import Router
from .store import Pending

log = structlog.get_logger("mailman.recovery")


class Backlog:
    """The unfinished mails and how far recovery got: survives a restart of the actor."""

    def __init__(self, pending: list[Pending]) -> None:
        self.pending = pending
        self.done = 0


class Recovery(Actor):
    def __init__(self, *, backlog: Backlog, router: Router) -> None:
        super().__init__("recovery")
        self.backlog = backlog
        self.router = router

    async def run(self) -> None:
        backlog = self.backlog
        if backlog.done < len(backlog.pending):
            log.info("recovery.started", mails=len(backlog.pending) - backlog.done)
        while backlog.done < len(backlog.pending) and not self.stopping.is_set():
            item = backlog.pending[backlog.done]
            await self.router.dispatch(Dispatch(mail_id=item.mail_id, accepted_at=item.accepted_at))
            backlog.done += 1
        if backlog.pending and backlog.done == len(backlog.pending):
            log.info("recovery.finished", mails=len(backlog.pending))

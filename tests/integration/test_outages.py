"""Store outages are waited out by the actors, not crashed through (no restart budget spent)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from mailman.actors.breakers import make_breaker
from mailman.actors.sender import Sender
from mailman.config import RetryConfig
from mailman.core.messages import Dispatch, StatusUpdate
from mailman.core.model import Status
from mailman.mailboxes import MemoryBroker
from mailman.mailboxes.routing import Router
from mailman.providers import Accepted
from mailman.store import Begun
from mailman.store.sqlite import SQLiteStore

from ..conftest import eventually
from .test_breakers import MAIL, Scripted


class DownFor(SQLiteStore):
    """A real SQLite store whose ``begin_attempt`` and ``apply`` fail like an unreachable
    database the first ``outages`` times."""

    def __init__(self, path: str, outages: int) -> None:
        super().__init__(path)
        self.outages = outages
        self.refused = 0

    def _maybe_down(self) -> None:
        if self.refused < self.outages:
            self.refused += 1
            raise sqlite3.OperationalError("unable to open database file")

    async def begin_attempt(
        self, mail_id: str, provider: str, round_: int, at: float, stale_before: float
    ) -> Begun | None:
        self._maybe_down()
        return await super().begin_attempt(mail_id, provider, round_, at, stale_before)

    async def apply(self, updates: Sequence[StatusUpdate]) -> None:
        self._maybe_down()
        await super().apply(updates)


async def test_a_sender_waits_out_a_store_outage(tmp_path: Path) -> None:
    """A sender whose store calls fail for an outage tries again with backoff: it records the
    attempt, sends once, and records the outcome once the store is back."""
    store = DownFor(str(tmp_path / "m.db"), outages=4)
    async with store:
        await store.add(MAIL)
        router = Router(MemoryBroker(), ("sendgrid",))
        client = Scripted(Accepted("msg-1"))
        sender = Sender(
            client=client,
            breaker=make_breaker("sendgrid", 5, 60),
            router=router,
            store=store,
            retry=RetryConfig(),
        )
        async with sender:
            await router.dispatch(Dispatch(MAIL.id, MAIL.created_at))

            async def sent() -> bool:
                record = await store.get(MAIL.id)
                return record is not None and record.status is Status.SENT

            await eventually(sent, what="the mail sent and recorded after the outage")
        assert store.refused == 4
        assert client.calls == 1


async def test_stopping_ends_the_wait(tmp_path: Path) -> None:
    """An actor waiting out an outage stops promptly when asked."""
    store = DownFor(str(tmp_path / "m.db"), outages=10**6)
    async with store:
        router = Router(MemoryBroker(), ("sendgrid",))
        client = Scripted(Accepted("msg-1"))
        sender = Sender(
            client=client,
            breaker=make_breaker("sendgrid", 5, 60),
            router=router,
            store=store,
            retry=RetryConfig(),
        )
        await sender.start()
        await router.dispatch(Dispatch(MAIL.id, MAIL.created_at))
        await eventually(lambda: store.refused >= 3, what="the sender waiting")
        async with asyncio.timeout(5):
            await sender.stop()
        assert client.calls == 0

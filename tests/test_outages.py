"""Store outages are waited out by the actors, not crashed through (no restart budget spent)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from mailman.actors.bookkeeper import Bookkeeper
from mailman.actors.breakers import make_breaker
from mailman.actors.mailboxes import MemoryBroker, MemoryMailbox
from mailman.actors.messages import Dispatch, Status, StatusUpdate
from mailman.actors.providers import Accepted
from mailman.actors.routing import Router
from mailman.actors.sender import Sender
from mailman.actors.store import Begun
from mailman.actors.store.sqlite import SQLiteStore
from mailman.config import RetryConfig

from .conftest import eventually
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


async def test_the_bookkeeper_waits_out_a_store_outage(tmp_path: Path) -> None:
    """The bookkeeper keeps its batch while the store is down and applies it once it is back."""
    store = DownFor(str(tmp_path / "m.db"), outages=3)
    async with store:
        await store.add(MAIL)
        inbox: MemoryMailbox[StatusUpdate] = MemoryMailbox("status", StatusUpdate)
        bookkeeper = Bookkeeper(inbox=inbox, store=store)
        async with bookkeeper:
            await inbox.put(StatusUpdate(MAIL.id, Status.SENT, 2000.0, provider="sendgrid"))

            async def sent() -> bool:
                record = await store.get(MAIL.id)
                return record is not None and record.status is Status.SENT

            await eventually(sent, what="the update applied after the outage")
            assert not bookkeeper.stopping.is_set()
        assert store.refused == 3


async def test_stopping_ends_the_wait(tmp_path: Path) -> None:
    """An actor waiting out an outage stops promptly when asked."""
    store = DownFor(str(tmp_path / "m.db"), outages=10**6)
    async with store:
        inbox: MemoryMailbox[StatusUpdate] = MemoryMailbox("status", StatusUpdate)
        bookkeeper = Bookkeeper(inbox=inbox, store=store)
        await bookkeeper.start()
        await inbox.put(StatusUpdate(MAIL.id, Status.SENT, 2000.0))
        await eventually(lambda: store.refused >= 3, what="the bookkeeper waiting")
        async with asyncio.timeout(5):
            await bookkeeper.stop()

"""The purger actor: retention by the clock it is given, in batches, one log line a pass."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from mailman.actors.purger import Purger
from mailman.core.messages import StatusUpdate
from mailman.core.model import Address, Mail, Status
from mailman.store import Store
from mailman.system import embedded

from ..conftest import eventually, make_config


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def a_mail(mail_id: str) -> Mail:
    return Mail(
        id=mail_id,
        sender=Address("shop@example.com"),
        to=(Address("ann@example.com"),),
        subject="Your order",
        text="private",
        created_at=1000.0,
    )


async def sent_at(store: Store, mail_id: str, at: float) -> None:
    await store.add(a_mail(mail_id))
    await store.apply([StatusUpdate(mail_id, Status.SENT, at, provider="sendgrid")])


async def test_bodies_go_after_their_retention_and_records_after_theirs(store: Store) -> None:
    """With body retention 30 s and record retention 60 s: at +31 s the content is gone and
    the record kept; at +61 s the mail is gone; a queued mail is never touched."""
    clock = Clock(2000.0)
    purger = Purger(store=store, body_retention=30.0, record_retention=60.0, clock=clock, batch=2)
    for i in range(5):
        await sent_at(store, f"m{i}", 2000.0)
    await store.add(a_mail("waiting"))
    clock.now = 2029.0
    assert (await purger.purge_once()).purged == 0

    clock.now = 2031.0
    with capture_logs() as logs:
        done = await purger.purge_once()
    assert (done.purged, done.dropped) == (5, 0)  # in batches of 2: three transactions
    record = await store.get("m0")
    assert record is not None and record.purged_at == 2031.0 and record.mail.to == ()
    assert [e["event"] for e in logs] == ["retention.purged"]
    assert logs[0]["bodies"] == 5 and logs[0]["mails"] == 0

    clock.now = 2061.0
    done = await purger.purge_once()
    assert done.dropped == 5
    assert [await store.get(f"m{i}") for i in range(5)] == [None] * 5
    waiting = await store.get("waiting")
    assert waiting is not None and waiting.purged_at is None
    assert waiting.mail.to == (Address("ann@example.com"),)


async def test_off_keeps_everything(store: Store) -> None:
    """Both retentions off: a pass, however late, erases nothing and logs nothing."""
    await sent_at(store, "m1", 2000.0)
    purger = Purger(store=store, body_retention=None, record_retention=None, clock=Clock(1e12))
    with capture_logs() as logs:
        done = await purger.purge_once()
    assert not done.anything and logs == []
    record = await store.get("m1")
    assert record is not None and record.purged_at is None


async def test_the_purger_runs_beside_the_sweeper(tmp_path: Path) -> None:
    """In a running system (role all) the purger erases a mail past its record retention,
    and stops with the system."""
    config = make_config(
        tmp_path, {"MAILMAN_RECORD_RETENTION": "60s", "MAILMAN_RETENTION_INTERVAL": "0.05s"}
    )
    async with embedded(config) as mailman:
        await sent_at(mailman.store, "old", 1000.0)  # finished long ago

        async def gone() -> bool:
            return await mailman.store.get("old") is None

        await eventually(gone, what="the old mail erased by the purger")


async def test_stop_is_idempotent(store: Store) -> None:
    """A purger used as a context manager stops once, and stop() again does nothing."""
    async with Purger(store=store, body_retention=1.0, record_retention=2.0) as purger:
        pass
    await purger.stop()

"""Retention and erasure: contents purged, records dropped, one mail or one address erased.

Part of the store contract (``test_store``): each test runs on every backend. Times
are given, never waited for: each operation takes its cutoffs and "now".
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import replace
from pathlib import Path

from mailman.core.model import Address, Attachment, EventKind, Mail, Outcome, Status
from mailman.store import Dropped, Erased, Store
from mailman.store.dialect import Dialect
from mailman.store.operation import Statement, Steps, read
from mailman.store.retention import MAIL_ROWS, stub
from mailman.store.sqlite import SQLiteStore

from . import test_store as contract
from .test_store import event, idem, mail, update

make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url

DAY = 86400.0


@read
def _rows_of(d: Dialect, mail_id: str) -> Steps[dict[str, int]]:
    """How many rows each table holds for ``mail_id`` (the mail's own row as ``mails``)."""
    counts: dict[str, int] = {}
    for table in MAIL_ROWS:
        cur = yield Statement(f"SELECT COUNT(*) FROM {table} WHERE mail_id = {d.mark}", (mail_id,))
        counts[table] = int(cur.fetchone()[0])
    cur = yield Statement(f"SELECT COUNT(*) FROM mails WHERE id = {d.mark}", (mail_id,))
    counts["mails"] = int(cur.fetchone()[0])
    return counts


async def rows_of(store: Store, mail_id: str) -> dict[str, int]:
    return await store.run(_rows_of, mail_id)  # type: ignore[attr-defined, no-any-return]


def full_mail(mail_id: str, created_at: float = 1000.0, **fields: object) -> Mail:
    """A mail with every kind of personal data: addresses, text, html, files, headers..."""
    return mail(
        mail_id,
        created_at=created_at,
        html="<p>secret</p>",
        cc=(Address("cc@example.com", "Cc Person"),),
        bcc=(Address("bcc@example.com"),),
        reply_to=Address("reply@example.com"),
        headers=(("X-Customer", "ann"),),
        metadata=(("user", "42"),),
        tags=("welcome",),
        attachments=(Attachment.of("cv.pdf", b"%PDF secret"),),
        request_id="req-1",
        **fields,  # type: ignore[arg-type]
    )


async def finished(store: Store, mail_id: str, at: float, status: Status = Status.SENT) -> None:
    """``mail_id`` sent (one accepted attempt) at ``at``; then ``status`` if another."""
    await store.apply([update(Status.SENT, at, mail_id=mail_id, outcome=Outcome.ACCEPTED)])
    if status is not Status.SENT:
        await store.apply([update(status, at, mail_id=mail_id)])


async def test_a_final_mail_past_body_retention_keeps_only_its_record(store: Store) -> None:
    """A final mail's content goes after the body retention: addresses, subject, text, files,
    headers, metadata and its events' recipients; its status, attempts and events stay."""
    await store.add(full_mail("m1"), idem("k1"))
    await finished(store, "m1", 2000.0)
    await store.record_events([event(EventKind.DELIVERED, 2100.0, "e1", recipient="to@x.com")])
    assert await store.purge_bodies(before=1500.0, now=5000.0) == 0  # not old enough yet

    assert await store.purge_bodies(before=3000.0, now=5000.0) == 1
    record = await store.get("m1")
    assert record is not None
    assert record.purged_at == 5000.0
    assert record.mail == stub("m1", 1000.0, "")
    assert record.status is Status.DELIVERED
    assert [a.outcome for a in record.attempts] == [Outcome.ACCEPTED]
    assert [(e.kind, e.recipient) for e in record.events] == [(EventKind.DELIVERED, None)]
    assert await store.purge_bodies(before=9000.0, now=9000.0) == 0  # once is enough


async def test_an_event_after_the_purge_brings_no_address_back(store: Store) -> None:
    """A delivery event that comes after a mail's content was purged keeps no recipient."""
    await store.add(full_mail("m1"), idem("k1"))
    await finished(store, "m1", 2000.0)
    assert await store.purge_bodies(before=3000.0, now=5000.0) == 1
    await store.record_events([event(EventKind.OPENED, 6000.0, "e2", recipient="to@x.com")])
    record = await store.get("m1")
    assert record is not None
    assert [(e.kind, e.recipient) for e in record.events] == [(EventKind.OPENED, None)]


async def test_mails_not_final_are_never_purged_nor_dropped(store: Store) -> None:
    """Queued, sending and scheduled mails keep everything, however old."""
    await store.add(mail("q"))
    await store.add(mail("s"))
    await store.apply([update(Status.SENDING, 1100.0, mail_id="s")])
    await store.add(mail("later", send_at=10**10))
    assert await store.purge_bodies(before=10**11, now=10**11) == 0
    assert await store.drop_records(before=10**11) == 0
    for mail_id in ("q", "s", "later"):
        record = await store.get(mail_id)
        assert record is not None and record.purged_at is None
        assert record.mail.to == (Address("to@example.com"),)


async def test_a_mail_past_record_retention_is_gone_with_every_row(store: Store) -> None:
    """After the record retention a final mail is deleted with its attempts, events,
    outbox entries, callbacks, idempotency keys and dead letters: no orphan rows."""
    await store.add(full_mail("m1", callback_url="https://hooks.example.com/x"), idem("k1"))
    await store.add(mail("young", created_at=3000.0))
    await finished(store, "m1", 2000.0, Status.FAILED)
    await store.add_dead_letter("sendgrid", "m1", b"record", "boom", 2000.0)
    await store.record_events([event(EventKind.BOUNCED, 2100.0, "e1", bounce="hard")])
    before = await rows_of(store, "m1")
    assert before["attempts"] and before["events"] and before["callbacks"]
    assert before["idempotency"] and before["dead_letters"] and before["mails"]

    assert await store.drop_records(before=2500.0) == 1
    assert await store.get("m1") is None
    assert set((await rows_of(store, "m1")).values()) == {0}
    assert await store.get("young") is not None
    # The key is free again: a new mail may take it.
    assert await store.add(mail("m2", created_at=3000.0), idem("k1")) == "m2"


async def test_drops_go_in_batches(store: Store) -> None:
    """Each call drops at most ``limit`` mails: a purge never holds the store for long."""
    for i in range(5):
        await store.add(mail(f"m{i}"))
        await finished(store, f"m{i}", 2000.0)
    assert await store.purge_bodies(before=3000.0, now=3000.0, limit=2) == 2
    assert await store.drop_records(before=3000.0, limit=3) == 3
    assert await store.drop_records(before=3000.0, limit=3) == 2


async def test_purgers_at_once_share_the_work(store: Store) -> None:
    """Two purges and two drops running at once (two processes' purgers) each finish,
    together handle every mail once, and leave no row behind."""
    for i in range(6):
        await store.add(mail(f"m{i}"))
        await finished(store, f"m{i}", 2000.0)
    purged = await asyncio.gather(
        store.purge_bodies(before=3000.0, now=3000.0, limit=3),
        store.purge_bodies(before=3000.0, now=3000.0, limit=3),
    )
    assert sum(purged) == 6
    dropped = await asyncio.gather(
        store.drop_records(before=4000.0, limit=3), store.drop_records(before=4000.0, limit=3)
    )
    assert sum(dropped) == 6
    assert [await store.get(f"m{i}") for i in range(6)] == [None] * 6


async def test_finished_callbacks_replayed_letters_and_expired_keys_are_dropped(
    store: Store,
) -> None:
    """Callbacks done and dead letters replayed before the cutoff go; open ones stay, and
    idempotency keys go once expired."""
    await store.add(mail("m1", callback_url="https://hooks.example.com/x"), idem("k1", "f", 100.0))
    await store.add(mail("m2"), idem("k2", "f", 10**10))
    await finished(store, "m1", 2000.0)
    claimed = await store.claim_callbacks("notifier", 10, 30.0, 10**10)
    assert claimed
    await store.callback_done(claimed[0].id, 2000.0)
    letter = await store.add_dead_letter("retry", None, b"x", "bad", 2000.0)
    await store.add_dead_letter("retry", None, b"y", "bad", 2000.0)
    await store.mark_replayed([letter], 2000.0)

    dropped = await store.drop_finished(before=3000.0, now=3000.0)
    assert dropped == Dropped(callbacks=1, dead_letters=1, idempotency=1)
    assert len(await store.dead_letters()) == 1  # not replayed: an operator must look
    assert await store.drop_finished(before=3000.0, now=3000.0) == Dropped()


async def test_erase_refuses_a_mail_on_its_way_and_drops_a_final_one(store: Store) -> None:
    """``erase`` leaves queued and sending mails (a sender may hold them) and deletes a final
    one with all its rows, whatever its age; an unknown mail is None."""
    await store.add(mail("q"))
    await store.add(mail("s"))
    await store.apply([update(Status.SENDING, 1100.0, mail_id="s")])
    await store.add(full_mail("done"), idem("k1"))
    await finished(store, "done", 1200.0)
    assert await store.erase("q", 2000.0) == Erased(False, Status.QUEUED)
    assert await store.erase("s", 2000.0) == Erased(False, Status.SENDING)
    assert await store.erase("done", 2000.0) == Erased(True, Status.SENT)
    assert set((await rows_of(store, "done")).values()) == {0}
    assert await store.erase("done", 2000.0) is None
    assert await store.get("q") is not None


async def test_erasing_a_scheduled_mail_cancels_it(store: Store) -> None:
    """A scheduled mail erased before its time is gone, and its time coming releases
    nothing."""
    await store.add(mail("later", send_at=5000.0))
    assert await store.erase("later", 2000.0) == Erased(True, Status.SCHEDULED)
    assert await store.release_scheduled(6000.0) == []
    assert await store.get("later") is None


async def test_addressed_finds_every_mail_to_or_from_an_address(store: Store) -> None:
    """Mails with the address as from, to, cc, bcc or reply-to are found, in any case;
    one merely mentioning it (in its subject) is not; ``tenant`` narrows."""
    await store.add(full_mail("a1"))
    await store.add(mail("a2", cc=(Address("Ann@Example.com"),), tenant="t2"))
    await store.add(mail("a3", bcc=(Address("ann@example.com"),)))
    await store.add(mail("a4", reply_to=Address("ann@example.com")))
    await store.add(mail("n1", subject="write to ann@example.com"))
    await store.add(replace(mail("n2"), to=(Address("joann@example.com"),)))
    found = await store.addressed("ANN@example.com", None)
    assert found.mail_ids == ("a2", "a3", "a4") and found.after is None
    assert (await store.addressed("ann@example.com", "t2")).mail_ids == ("a2",)
    assert (await store.addressed("reply@example.com", None)).mail_ids == ("a1",)
    # Paged: a page of 2 candidates, then the rest.
    first = await store.addressed("ann@example.com", None, limit=2)
    assert first.after is not None
    rest = await store.addressed("ann@example.com", None, after=first.after, limit=10)
    assert first.mail_ids + rest.mail_ids == ("a2", "a3", "a4")


async def test_addressed_pages_in_the_order_the_mails_were_made(store: Store) -> None:
    """Pages of ``addressed`` follow the mails' creation times (ids only break ties), so a
    mail whose id sorts first but which was made last is on the last page, once."""
    for mail_id, created_at in (("z1", 1000.0), ("a2", 3000.0), ("m3", 2000.0), ("b3", 2000.0)):
        await store.add(mail(mail_id, created_at=created_at))
    pages: list[tuple[str, ...]] = []
    after: tuple[float, str] | None = None
    while True:
        page = await store.addressed("to@example.com", None, after, limit=1)
        pages.append(page.mail_ids)
        if page.after is None:
            break
        after = page.after
    assert [p for p in pages if p] == [("z1",), ("b3",), ("m3",), ("a2",)]


async def test_a_purged_failed_mail_cannot_be_sent_again(store: Store) -> None:
    """Retrying a failed mail whose content was erased changes nothing: nothing to send."""
    await store.add(mail("m1"))
    await store.apply([update(Status.FAILED, 2000.0)])
    await store.purge_bodies(before=3000.0, now=3000.0)
    moved = await store.retry("m1", 4000.0)
    assert moved is not None and not moved.changed and moved.status is Status.FAILED


# --- SQLite's file ----------------------------------------------------------------------


async def test_a_new_sqlite_file_is_its_owners_alone(tmp_path: Path) -> None:
    """The store's file and its -wal and -shm are created 0600: they hold every mail."""
    path = tmp_path / "mailman.db"
    old = os.umask(0o022)
    try:
        async with SQLiteStore(str(path)) as opened:
            await opened.add(mail("m1"))
            for name in ("mailman.db", "mailman.db-wal", "mailman.db-shm"):
                assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    finally:
        os.umask(old)


async def test_purged_space_goes_back_to_the_file_system(tmp_path: Path) -> None:
    """A new file is auto_vacuum INCREMENTAL: after a purge ``reclaim`` frees its pages."""
    path = str(tmp_path / "mailman.db")
    async with SQLiteStore(path) as opened:
        big = Attachment.of("big.bin", os.urandom(200 * 1024))
        for i in range(20):
            await opened.add(mail(f"m{i}", attachments=(big,)))
            await finished(opened, f"m{i}", 2000.0)
        assert await opened.purge_bodies(before=3000.0, now=3000.0) == 20
        assert await opened.reclaim(100_000) > 20 * 200 * 1024 * 4 // 3 // 4096 // 2
        assert await opened.reclaim(100_000) == 0

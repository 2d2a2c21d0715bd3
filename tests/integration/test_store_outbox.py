"""The transactional outbox: claims, leases, and the mails that get a new entry.

Part of the store contract (``test_store``): each test runs on every backend.
"""

from __future__ import annotations

import asyncio

from mailman.core.messages import StatusUpdate
from mailman.core.model import Attempt, Outcome, Status
from mailman.store import (
    Store,
)
from mailman.store.mysql import MySQLStore

from . import test_store as contract
from .test_store import MakeStore, claim_all, every_entry, mail, status_of, update

# The contract's fixtures: every test here runs on SQLite and on a fresh MySQL database.
make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url


# --- claims -------------------------------------------------------------------


async def test_add_writes_one_outbox_entry(store: Store) -> None:
    """add() writes exactly one outbox entry with the mail; adding the id again writes none."""
    await store.add(mail("m1", created_at=1000.0))
    await store.add(mail("m1", created_at=1000.0, subject="again"))
    await store.add(mail("m2", created_at=1001.0))

    entries = await claim_all(store)
    assert [(e.mail_id, e.accepted_at) for e in entries] == [("m1", 1000.0), ("m2", 1001.0)]
    assert entries[0].id < entries[1].id


async def test_claim_leases_oldest_first_up_to_limit(store: Store) -> None:
    """claim_outbox() hands out unleased entries oldest first, never more than ``limit``."""
    ids = [f"m{i}" for i in range(5)]
    for i, mail_id in enumerate(ids):
        await store.add(mail(mail_id, created_at=1000.0 + i))

    first = await store.claim_outbox("relay-a", 2, 30.0, 5000.0)
    second = await store.claim_outbox("relay-b", 2, 30.0, 5000.0)
    rest = await store.claim_outbox("relay-c", 10, 30.0, 5000.0)

    assert [e.mail_id for e in first] == ids[:2]
    assert [e.mail_id for e in second] == ids[2:4]
    assert [e.mail_id for e in rest] == ids[4:]
    assert await store.claim_outbox("relay-d", 10, 30.0, 5000.0) == []
    assert await store.claim_outbox("relay-d", 0, 30.0, 9999.0) == []


async def test_claim_marks_queued_mails_sending(store: Store) -> None:
    """A claim moves its mails from queued to sending; a mail already further stays where it is."""
    await store.add(mail("m1", created_at=1000.0))
    await store.add(mail("m2", created_at=1001.0))
    await store.apply([update(Status.SENT, 1002.0, "m2")])
    await store.requeue_unfinished()  # m2 is sent: no new entry; m1 keeps its one

    entries = await claim_all(store, now=5000.0)
    assert [e.mail_id for e in entries] == ["m1", "m2"]
    assert await status_of(store, "m1") == Status.SENDING
    assert await status_of(store, "m2") == Status.SENT
    record = await store.get("m1")
    assert record is not None and record.updated_at == 5000.0


async def test_claim_removes_what_the_owner_published(store: Store) -> None:
    """``done`` entries go in the claim's own transaction and are never handed out again."""
    for i in range(3):
        await store.add(mail(f"m{i}", created_at=1000.0 + i))
    first = await store.claim_outbox("relay", 2, 30.0, 5000.0)
    assert [e.mail_id for e in first] == ["m0", "m1"]

    rest = await store.claim_outbox("relay", 10, 30.0, 5001.0, done=[e.id for e in first])
    assert [e.mail_id for e in rest] == ["m2"]
    # Long after every lease ran out, only the entry not reported done comes back.
    assert [e.mail_id for e in await claim_all(store, now=9000.0)] == ["m2"]
    # A claim for nothing still removes.
    assert await store.claim_outbox("relay", 0, 30.0, 9001.0, done=[rest[0].id]) == []
    assert await claim_all(store, now=99999.0) == []


async def test_live_lease_is_not_claimed_until_it_runs_out(store: Store) -> None:
    """Entries under a live lease go to no other claimer; once it ran out, they do."""
    await store.add(mail("m1", created_at=1000.0))
    await store.add(mail("m2", created_at=1001.0))

    first = await store.claim_outbox("relay-a", 10, 30.0, 5000.0)
    assert [e.mail_id for e in first] == ["m1", "m2"]
    assert await store.claim_outbox("relay-b", 10, 30.0, 5029.0) == []
    assert await store.claim_outbox("relay-b", 10, 30.0, 5030.0) == []  # lease ends at 5030

    again = await store.claim_outbox("relay-b", 10, 30.0, 5031.0)
    assert again == first
    # relay-b's lease (to 5061) now holds against relay-a.
    assert await store.claim_outbox("relay-a", 10, 30.0, 5040.0) == []


async def test_concurrent_claims_never_share_an_entry(store: Store, make_store: MakeStore) -> None:
    """Many claimers on two store instances (two processes' worth) never get the same entry."""
    # Enough small batches that both instances surely race (one alone could take 60).
    ids = [f"m{i:03d}" for i in range(240)]
    await asyncio.gather(
        *(store.add(mail(mail_id, created_at=1000.0 + i)) for i, mail_id in enumerate(ids))
    )

    owner_of: dict[int, str] = {}
    twice: list[tuple[int, str, str]] = []

    # Every claimer makes its first claim before any goes on: on a busy machine one
    # instance's claimers could otherwise take every entry before the other's begin.
    started = asyncio.Barrier(8)

    async def relay(on: Store, owner: str) -> None:
        batch = await on.claim_outbox(owner, 2, 60.0, 5000.0)
        await started.wait()
        while batch:
            for entry in batch:
                if entry.id in owner_of:
                    twice.append((entry.id, owner_of[entry.id], owner))
                owner_of[entry.id] = owner
            await asyncio.sleep(0)
            batch = await on.claim_outbox(owner, 2, 60.0, 5000.0)

    async with make_store() as other:
        await asyncio.gather(
            *(
                relay(on, f"{name}-{k}")
                for name, on in (("a", store), ("b", other))
                for k in range(4)
            )
        )

    assert twice == []
    assert len(owner_of) == len(ids)
    if isinstance(store, MySQLStore):  # (one SQLite connection may well starve the other)
        assert len({owner.split("-")[0] for owner in owner_of.values()}) == 2  # both took part
    assert await store.claim_outbox("late", 1000, 60.0, 5059.0) == []


async def test_published_removes_entries(store: Store) -> None:
    """published() removes entries for good: they are not claimed again after the lease."""
    for i in range(3):
        await store.add(mail(f"m{i}", created_at=1000.0 + i))
    entries = await claim_all(store)

    await store.published([entries[0].id, entries[2].id])
    await store.published([])

    assert await claim_all(store, now=9000.0) == [entries[1]]


# --- requeue and sweep --------------------------------------------------------


async def test_requeue_unfinished_only_for_mails_without_an_entry(store: Store) -> None:
    """requeue_unfinished() gives queued/sending mails without an entry one; returns the count."""
    for i, mail_id in enumerate(["queued", "sending", "sent", "failed", "has-entry"]):
        await store.add(mail(mail_id, created_at=1000.0 + i))
    await store.apply(
        [
            update(Status.SENDING, 1010.0, mail_id="sending"),
            update(Status.SENT, 1010.0, mail_id="sent"),
            update(Status.FAILED, 1010.0, mail_id="failed"),
        ]
    )
    entries = await claim_all(store)
    await store.published([e.id for e in entries if e.mail_id != "has-entry"])

    assert await store.requeue_unfinished() == 2
    assert await store.requeue_unfinished() == 0

    # The lease on "has-entry" was released: it is claimable at once, not after it runs out.
    requeued = await claim_all(store)
    assert [(e.mail_id, e.accepted_at) for e in requeued] == [
        ("has-entry", 1004.0),
        ("queued", 1000.0),
        ("sending", 1001.0),
    ]


async def test_requeue_turns_every_pending_attempt_unknown(store: Store) -> None:
    """After a restart of the in-memory deployment no call is in flight: pending is unknown."""
    await store.add(mail())
    await store.claim_outbox("relay", 10, 30.0, 1500.0)
    await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    await store.requeue_unfinished()
    record = await store.get("m1")
    assert record is not None
    assert [a.outcome for a in record.attempts] == [Outcome.UNKNOWN]


async def test_sweep_picks_up_forgotten_sending_mails_only(store: Store) -> None:
    """sweep() requeues a sending mail due before the cutoff with no live attempt and no
    outbox entry; not one with a fresh attempt, a later due time, or an entry."""
    for name in ("lost", "busy", "later", "queued"):
        await store.add(mail(name, created_at=1000.0))
    await store.claim_outbox("relay", 10, 30.0, 1000.0, done=())
    entries = await store.claim_outbox("relay", 10, 30.0, 1000.0)
    assert entries == []
    claimed = await store.claim_outbox("relay", 0, 30.0, 1000.0)
    assert claimed == []
    # Remove the outbox entries of the three mails the relay handed on.
    leased = await every_entry(store)
    await store.published([e.id for e in leased if e.mail_id != "queued"])
    await store.begin_attempt("busy", "sendgrid", 0, 1990.0, 0.0)
    later = Attempt("sendgrid", 0, 1100.0, Outcome.TRANSIENT, "503")
    await store.apply([StatusUpdate("later", Status.SENDING, 1100.0, attempt=later, due_at=5000.0)])
    swept = await store.sweep(2000.0, 1500.0)
    assert swept == ["lost"]
    assert [e.mail_id for e in await every_entry(store) if e.mail_id != "queued"] == ["lost"]
    assert await store.sweep(2000.0, 1500.0) == []  # it has an entry (and is due now) again


async def test_sweep_turns_stale_pending_attempts_unknown(store: Store) -> None:
    """sweep() marks pending attempts started before the cutoff unknown and requeues the mail."""
    await store.add(mail())
    entries = await store.claim_outbox("relay", 10, 30.0, 1000.0)
    await store.published([e.id for e in entries])
    await store.begin_attempt("m1", "sendgrid", 0, 1100.0, 0.0)
    assert await store.sweep(1200.0, 1150.0) == ["m1"]
    record = await store.get("m1")
    assert record is not None and [a.outcome for a in record.attempts] == [Outcome.UNKNOWN]

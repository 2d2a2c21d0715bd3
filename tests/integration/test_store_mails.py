"""Mails: add, get, load, listings, moves by hand, retries, idempotency keys.

Part of the store contract (``test_store``): each test runs on every backend.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from mailman.core.model import Address, Attempt, Mail, Outcome, Status
from mailman.store import (
    IdempotencyMismatch,
    MailQuery,
    Pending,
    Store,
    Transition,
)

from . import test_store as contract
from .test_store import MakeStore, claim_all, idem, mail, status_of, update

# The contract's fixtures: every test here runs on SQLite and on a fresh MySQL database.
make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url


# --- add / get / load ---------------------------------------------------------


async def test_add_get_round_trips_every_field(store: Store) -> None:
    """Every Mail field, unicode included, comes back exactly as it was added."""
    original = Mail(
        id="01J0ROUNDTRIP",
        sender=Address("zoë@example.com", "Zoë Ünïcødé"),
        to=(Address("ann@example.com", 'Ann "A" O\'Neil'), Address("bob@example.com")),
        subject="Grüße 👋 — ünïcødé; 'quotes' \"too\"",
        text="plain ✓\nsecond line",
        html="<p>héllo <b>wörld</b> 🌍</p>",
        cc=(Address("cc@example.com", "Cé Cé"),),
        bcc=(Address("bcc1@example.com"), Address("bcc2@example.com", "B2")),
        reply_to=Address("reply@example.com", "Réponse"),
        created_at=1717171717.123456,
    )
    await store.add(original)

    record = await store.get(original.id)
    assert record is not None
    assert record.mail == original
    assert record.status is Status.QUEUED
    assert record.attempts == ()
    assert (record.provider, record.provider_message_id, record.reason) == (None, None, None)
    assert await store.load(original.id) == (original, Status.QUEUED)


async def test_optional_fields_absent_round_trip(store: Store) -> None:
    """A mail without html, cc, bcc or reply_to comes back without them."""
    original = Mail("m1", Address("a@example.com"), (Address("b@example.com"),), "s", html="<p>")
    await store.add(original)
    assert await store.load("m1") == (original, Status.QUEUED)


async def test_unknown_id_is_none(store: Store) -> None:
    """get, load and transition answer None for an unknown mail id."""
    assert await store.get("nope") is None
    assert await store.load("nope") is None
    assert await store.transition("nope", Status.SENDING, 1.0) is None


async def test_add_twice_is_a_no_op(store: Store) -> None:
    """Adding an id again changes neither the stored mail nor its status."""
    first = mail(subject="first")
    await store.add(first)
    await store.apply([update(Status.SENDING, 1001.0)])

    await store.add(mail(subject="second"))

    assert await store.load("m1") == (first, Status.SENDING)


async def test_too_long_ids_are_unknown(store: Store) -> None:
    """An id longer than 64 characters is unknown to every lookup, never an error."""
    long_id = "x" * 65
    assert await store.get(long_id) is None
    assert await store.load(long_id) is None
    assert await store.transition(long_id, Status.SENT, 1.0) is None
    await store.apply([update(Status.SENT, 1.0, mail_id=long_id, outcome=Outcome.ACCEPTED)])
    assert await store.unfinished() == []


async def test_full_precision_times_round_trip(make_store: MakeStore) -> None:
    """Full-precision unix times (time.time()) come back bit for bit."""
    at = time.time() + 0.123456789
    async with make_store() as store:
        await store.add(mail(created_at=at))
        await store.apply([update(Status.SENT, at + 1e-6, outcome=Outcome.ACCEPTED)])
        await store.apply([update(Status.SENT, at + 1e-6, outcome=Outcome.ACCEPTED)])
        record = await store.get("m1")
        assert record is not None
        assert record.updated_at == at + 1e-6
        assert record.attempts == (Attempt("sendgrid", 0, at + 1e-6, Outcome.ACCEPTED),)
        assert [e.accepted_at for e in await claim_all(store)] == [at]


# --- transition ---------------------------------------------------------------


async def test_transition_results(store: Store) -> None:
    """transition() reports a change, a repeat and a refused move with the current status."""
    await store.add(mail())

    assert await store.transition("m1", Status.SENDING, 1001.0) == Transition(True, Status.SENDING)
    # Repeating sending is allowed (another provider may be tried).
    assert await store.transition("m1", Status.SENDING, 1002.0) == Transition(True, Status.SENDING)
    assert await store.transition("m1", Status.FAILED, 1003.0, "gave up") == Transition(
        True, Status.FAILED
    )
    # A repeat of the terminal status changes nothing.
    assert await store.transition("m1", Status.FAILED, 1004.0, "again") == Transition(
        False, Status.FAILED
    )
    # A refused move reports where the mail stands.
    assert await store.transition("m1", Status.SENT, 1005.0) == Transition(False, Status.FAILED)
    assert await store.transition("m1", Status.SENDING, 1006.0) == Transition(False, Status.FAILED)

    record = await store.get("m1")
    assert record is not None
    assert (record.status, record.reason, record.updated_at) == (Status.FAILED, "gave up", 1003.0)


async def test_transition_unknown_mail(store: Store) -> None:
    """transition() on an unknown id is None and creates nothing."""
    assert await store.transition("ghost", Status.SENT, 1.0) is None
    assert await store.get("ghost") is None


async def test_nothing_moves_a_mail_to_queued_by_hand(store: Store) -> None:
    """transition() to queued changes nothing, a scheduled mail's included (release_scheduled
    and retry make mails queued): it reports where the mail stands."""
    await store.add(mail("later", send_at=9000.0))
    assert await store.transition("later", Status.QUEUED, 1001.0) == Transition(
        False, Status.SCHEDULED
    )
    assert await status_of(store, "later") is Status.SCHEDULED


# --- unfinished, backlog, listings --------------------------------------------


async def test_unfinished_lists_queued_and_sending_oldest_first(store: Store) -> None:
    """unfinished() lists queued and sending mails by acceptance time, never sent or failed."""
    await store.add(mail("c-sending", created_at=1003.0))
    await store.add(mail("a-queued", created_at=1001.0))
    await store.add(mail("sent", created_at=1000.0))
    await store.add(mail("failed", created_at=999.0))
    await store.add(mail("b-queued", created_at=1001.0))  # same time: ordered by id
    await store.apply(
        [
            update(Status.SENDING, 1010.0, mail_id="c-sending"),
            update(Status.SENT, 1010.0, mail_id="sent"),
            update(Status.FAILED, 1010.0, mail_id="failed"),
        ]
    )

    assert await store.unfinished() == [
        Pending("a-queued", 1001.0),
        Pending("b-queued", 1001.0),
        Pending("c-sending", 1003.0),
    ]


async def test_unfinished_empty(store: Store) -> None:
    """An empty store has nothing unfinished."""
    assert await store.unfinished() == []


async def test_backlog_counts_mails_not_yet_final(store: Store) -> None:
    """backlog() counts queued and sending mails, not sent or failed ones."""
    assert await store.backlog() == 0
    for i in range(4):
        await store.add(mail(f"m{i}", created_at=1000.0 + i))
    await store.apply([update(Status.SENDING, 1010.0, "m1"), update(Status.SENT, 1011.0, "m2")])
    await store.apply([update(Status.FAILED, 1012.0, "m3")])
    assert await store.backlog() == 2


async def test_list_mails_newest_first_with_filters_and_cursor(store: Store) -> None:
    """Listing is per tenant, newest first (then the highest id), filtered by status and
    time, paged after a (created_at, id)."""
    for i in range(5):
        await store.add(mail(f"m{i}", created_at=1000.0 + i, tenant="a"))
    await store.add(mail("x9", tenant="b"))
    await store.apply([update(Status.SENT, 2000.0, "m1")])
    page = await store.list_mails(MailQuery(tenant="a", limit=2))
    assert [m.id for m in page] == ["m4", "m3"]
    rest = await store.list_mails(MailQuery(tenant="a", limit=10, before=(1003.0, "m3")))
    assert [m.id for m in rest] == ["m2", "m1", "m0"]
    sent = await store.list_mails(MailQuery(tenant="a", limit=10, status=Status.SENT))
    assert [(m.id, m.status) for m in sent] == [("m1", Status.SENT)]
    window = await store.list_mails(MailQuery(tenant="a", limit=10, since=1001.0, until=1003.0))
    assert [m.id for m in window] == ["m2", "m1"]
    everyone = await store.list_mails(MailQuery(tenant=None, limit=10))
    assert [m.id for m in everyone] == ["m4", "m3", "m2", "m1", "x9", "m0"]  # x9: 1000.0
    assert window[0].created_at == 1002.0
    ties = await store.list_mails(MailQuery(tenant=None, limit=10, before=(1000.0, "x9")))
    assert [m.id for m in ties] == ["m0"]


# --- retry --------------------------------------------------------------------


async def test_retry_queues_a_failed_mail_for_a_new_round(store: Store) -> None:
    """retry() moves a failed mail back to queued with an entry for the next round; else no-op."""
    await store.add(mail("m1", created_at=1000.0))
    await store.add(mail("m2", created_at=1001.0))
    for entry in await claim_all(store, now=2000.0):
        await store.published([entry.id])
    await store.apply(
        [
            update(Status.SENDING, 2001.0, "m1", Outcome.TRANSIENT, round=0),
            update(Status.FAILED, 2002.0, "m1", Outcome.REJECTED, round=2, reason="bounced"),
            update(Status.SENT, 2003.0, "m2", Outcome.ACCEPTED),
        ]
    )
    assert await store.retry("m1", 3000.0) == Transition(changed=True, status=Status.QUEUED)
    record = await store.get("m1")
    assert record is not None
    assert (record.status, record.updated_at, record.reason) == (Status.QUEUED, 3000.0, None)
    assert len(record.attempts) == 2  # the history stays
    (entry,) = await claim_all(store, now=3001.0)
    assert (entry.mail_id, entry.accepted_at, entry.round) == ("m1", 3000.0, 3)
    # Only a failed mail: now it is sending, and m2 is sent; an unknown one is None.
    assert await store.retry("m1", 3002.0) == Transition(changed=False, status=Status.SENDING)
    assert await store.retry("m2", 3002.0) == Transition(changed=False, status=Status.SENT)
    assert await store.retry("nope", 3002.0) is None


async def test_a_held_mail_is_final_until_retried_or_marked(store: Store) -> None:
    """An unknown (held) mail: no sending, no claim, no late sending move takes it back;
    retry() queues it for a new round, and a held one may be marked sent."""
    for mail_id in ("m1", "m2"):
        await store.add(mail(mail_id, created_at=1000.0))
    for entry in await claim_all(store, now=2000.0):
        await store.published([entry.id])
    await store.apply(
        [
            update(Status.SENDING, 2001.0, mail_id, Outcome.UNKNOWN, provider="smtp-relay")
            for mail_id in ("m1", "m2")
        ]
    )
    await store.apply([update(Status.UNKNOWN, 2002.0, m, reason="held") for m in ("m1", "m2")])
    await store.apply([update(Status.SENDING, 2003.0, "m1", Outcome.TRANSIENT, round=1)])
    assert await status_of(store, "m1") == Status.UNKNOWN
    assert await claim_all(store, now=2004.0) == []
    assert await store.retry("m1", 3000.0) == Transition(changed=True, status=Status.QUEUED)
    assert [e.mail_id for e in await claim_all(store, now=3001.0)] == ["m1"]
    await store.apply([update(Status.SENT, 3002.0, "m2")])
    assert await status_of(store, "m2") == Status.SENT


# --- idempotency keys ---------------------------------------------------------


async def test_idempotent_add_stores_one_mail_and_replays_its_id(store: Store) -> None:
    """A second add with the tenant's key and the same fingerprint stores nothing and names
    the first mail."""
    assert await store.add(mail("m1", tenant="t"), idem()) == "m1"
    assert await store.add(mail("m2", created_at=1001.0, tenant="t"), idem()) == "m1"
    assert await store.get("m2") is None
    assert [e.mail_id for e in await claim_all(store)] == ["m1"]


async def test_idempotency_key_with_another_body_is_a_mismatch(store: Store) -> None:
    """The same key with another fingerprint raises IdempotencyMismatch naming the first mail."""
    await store.add(mail("m1", tenant="t"), idem())
    with pytest.raises(IdempotencyMismatch) as caught:
        await store.add(mail("m2", tenant="t"), idem(fingerprint="other"))
    assert caught.value.mail_id == "m1"
    assert await store.get("m2") is None


async def test_idempotency_keys_are_per_tenant(store: Store) -> None:
    """Two tenants using the same key get a mail each."""
    assert await store.add(mail("m1", tenant="a"), idem()) == "m1"
    assert await store.add(mail("m2", tenant="b"), idem()) == "m2"


async def test_expired_idempotency_key_is_free_again(store: Store) -> None:
    """Once a key expired, the next add with it stores a new mail; purge forgets old keys."""
    await store.add(mail("m1", tenant="t"), idem(expires_at=1500.0))
    assert await store.add(mail("m2", created_at=2000.0, tenant="t"), idem()) == "m2"
    await store.add(mail("m3", tenant="t"), idem("k2", expires_at=1500.0))
    assert await store.purge_idempotency(now=1600.0) == 1


async def test_concurrent_idempotent_adds_store_one_mail(
    store: Store, make_store: MakeStore
) -> None:
    """Racing adds with one key, through two store instances (two replicas), store one mail."""
    async with make_store() as other:
        ids = await asyncio.gather(
            *((store if i % 2 else other).add(mail(f"m{i}", tenant="t"), idem()) for i in range(10))
        )
    assert len(set(ids)) == 1
    assert len(await claim_all(store)) == 1

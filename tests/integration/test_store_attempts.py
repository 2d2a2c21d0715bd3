"""Attempts: recorded before the call, finished after it, and the status moves they report.

Part of the store contract (``test_store``): each test runs on every backend.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from mailman.core.messages import StatusUpdate
from mailman.core.model import Address, Attempt, Check, Outcome, Status
from mailman.core.model import SuppressionReason as Reason
from mailman.store import (
    Store,
    Suppression,
)

from . import test_store as contract
from .test_store import mail, status_of, update

# The contract's fixtures: every test here runs on SQLite and on a fresh MySQL database.
make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url


# --- apply --------------------------------------------------------------------


async def test_apply_sending_then_sent_records_provider(store: Store) -> None:
    """sending -> sent stores the provider, its message id and the attempt, which takes
    the message id the update gives the mail (its own says none)."""
    await store.add(mail())
    await store.apply([update(Status.SENDING, 1001.0, provider="sendgrid")])
    await store.apply(
        [
            update(
                Status.SENT,
                1002.0,
                outcome=Outcome.ACCEPTED,
                provider="sendgrid",
                provider_message_id="sg-123",
            )
        ]
    )

    record = await store.get("m1")
    assert record is not None
    assert record.status is Status.SENT
    assert record.provider == "sendgrid"
    assert record.provider_message_id == "sg-123"
    assert record.updated_at == 1002.0
    assert record.attempts == (Attempt("sendgrid", 0, 1002.0, Outcome.ACCEPTED, None, "sg-123"),)
    assert await store.mail_for_message("sg-123") == "m1"


async def test_sent_never_goes_back_to_sending(store: Store) -> None:
    """A SENDING applied after SENT leaves the mail sent, provider data intact."""
    await store.add(mail())
    await store.apply(
        [update(Status.SENT, 1002.0, outcome=Outcome.ACCEPTED, provider_message_id="sg-1")]
    )
    await store.apply([update(Status.SENDING, 1003.0, provider="mailgun")])

    record = await store.get("m1")
    assert record is not None
    assert record.status is Status.SENT
    assert record.provider == "sendgrid"
    assert record.provider_message_id == "sg-1"
    assert record.updated_at == 1002.0


async def test_failed_is_final(store: Store) -> None:
    """A failed mail moves neither to sending nor to sent; the reason is kept."""
    await store.add(mail())
    await store.apply([update(Status.FAILED, 1002.0, reason="every provider rejected it")])
    await store.apply([update(Status.SENDING, 1003.0)])
    await store.apply([update(Status.SENT, 1004.0, provider_message_id="late")])

    record = await store.get("m1")
    assert record is not None
    assert record.status is Status.FAILED
    assert record.reason == "every provider rejected it"
    assert record.provider_message_id is None


async def test_queued_is_never_reached_again(store: Store) -> None:
    """No update moves a mail back to queued."""
    await store.add(mail())
    await store.apply([update(Status.SENDING, 1001.0)])
    await store.apply([update(Status.QUEUED, 1002.0)])
    assert await status_of(store) is Status.SENDING


async def test_repeated_update_records_the_attempt_once(store: Store) -> None:
    """Replaying the same update (at-least-once delivery) records its attempt once."""
    await store.add(mail())
    replayed = update(Status.SENDING, 1001.0, outcome=Outcome.TRANSIENT)
    await store.apply([replayed])
    await store.apply([replayed, replayed])

    record = await store.get("m1")
    assert record is not None
    assert record.attempts == (Attempt("sendgrid", 0, 1001.0, Outcome.TRANSIENT),)


async def test_attempts_are_ordered_oldest_first(store: Store) -> None:
    """get() lists attempts by time, whatever order they were applied in."""
    await store.add(mail())
    late = Attempt("mailgun", 1, 1030.0, Outcome.ACCEPTED, message_id="mg-1")
    early = Attempt("sendgrid", 0, 1010.0, Outcome.TRANSIENT, reason="503")
    middle = Attempt("mailgun", 0, 1020.0, Outcome.SKIPPED, reason="circuit open")
    await store.apply(
        [
            StatusUpdate("m1", Status.SENT, 1030.0, provider="mailgun", attempt=late),
            StatusUpdate("m1", Status.SENDING, 1010.0, attempt=early),
        ]
    )
    await store.apply([StatusUpdate("m1", Status.SENDING, 1020.0, attempt=middle)])

    record = await store.get("m1")
    assert record is not None
    assert record.attempts == (early, middle, late)
    assert record.status is Status.SENT


async def test_unknown_mail_in_batch_does_not_fail_the_rest(store: Store) -> None:
    """Updates for an unknown mail are ignored; the rest of the batch is applied."""
    await store.add(mail("m1"))
    await store.add(mail("m2"))
    await store.apply(
        [
            update(Status.SENDING, 1001.0, mail_id="m1", outcome=Outcome.TRANSIENT),
            update(Status.SENT, 1001.0, mail_id="ghost", outcome=Outcome.ACCEPTED),
            update(Status.SENT, 1002.0, mail_id="m2", outcome=Outcome.ACCEPTED),
        ]
    )

    assert await status_of(store, "m1") is Status.SENDING
    assert await status_of(store, "m2") is Status.SENT
    assert await store.get("ghost") is None


async def test_one_calls_moves_are_made_in_move_order(store: Store) -> None:
    """The moves of one apply() call are made in MOVE_ORDER, whatever order they came in:
    a sent and a failed for one mail end sent, a delivered before its sent ends delivered."""
    await store.add(mail("m1"))
    await store.add(mail("m2"))
    await store.apply(
        [
            update(Status.FAILED, 1003.0, mail_id="m1", reason="gave up"),
            update(Status.SENT, 1002.0, mail_id="m1", provider_message_id="sg-1"),
            update(Status.DELIVERED, 1005.0, mail_id="m2"),
            update(Status.SENT, 1004.0, mail_id="m2"),
        ]
    )
    first = await store.get("m1")
    assert first is not None
    assert (first.status, first.reason, first.provider_message_id) == (Status.SENT, None, "sg-1")
    assert await status_of(store, "m2") is Status.DELIVERED


async def test_apply_empty_batch(store: Store) -> None:
    """An empty batch is accepted and changes nothing."""
    await store.add(mail())
    await store.apply([])
    assert await status_of(store) is Status.QUEUED


# --- begin_attempt ------------------------------------------------------------


async def test_begin_attempt_records_a_pending_attempt_and_marks_sending(store: Store) -> None:
    """begin_attempt() records the attempt as pending before the call and returns the mail."""
    await store.add(mail())
    begun = await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    assert begun is not None and begun.attempt_id is not None and begun.why is None
    assert begun.mail == mail() and begun.status is Status.SENDING
    record = await store.get("m1")
    assert record is not None and record.status is Status.SENDING
    assert [(a.provider, a.outcome, a.id) for a in record.attempts] == [
        ("sendgrid", Outcome.PENDING, begun.attempt_id)
    ]


async def test_begin_attempt_leaves_a_claimed_mail_as_the_claim_made_it(store: Store) -> None:
    """A mail the relay's claim made sending keeps the claim's time as when its status
    changed; a queued one begun directly moves to sending at the begin's time, and the
    claimed one is still swept once its pending attempt goes stale."""
    await store.add(mail("claimed"))
    await store.add(mail("queued"))
    entries = await store.claim_outbox("relay", 1, 30.0, 1500.0)
    assert [e.mail_id for e in entries] == ["claimed"]
    await store.published([e.id for e in entries])
    for mail_id in ("claimed", "queued"):
        begun = await store.begin_attempt(mail_id, "sendgrid", 0, 2000.0, 1000.0)
        assert begun is not None and begun.attempt_id is not None
    claimed, queued = await store.get("claimed"), await store.get("queued")
    assert claimed is not None and (claimed.status, claimed.updated_at) == (Status.SENDING, 1500.0)
    assert queued is not None and (queued.status, queued.updated_at) == (Status.SENDING, 2000.0)
    assert await store.sweep(2100.0, 2050.0) == ["claimed"]  # "queued" has its outbox entry


async def test_a_finished_attempt_replaces_its_pending_record(store: Store) -> None:
    """An update carrying the attempt's id finishes that row: one attempt, not two."""
    await store.add(mail())
    begun = await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    assert begun is not None and begun.attempt_id is not None
    done = Attempt("sendgrid", 0, 2000.5, Outcome.ACCEPTED, None, "sg-1", id=begun.attempt_id)
    await store.apply([StatusUpdate("m1", Status.SENT, 2000.5, "sendgrid", "sg-1", attempt=done)])
    record = await store.get("m1")
    assert record is not None and record.status is Status.SENT
    assert [(a.outcome, a.message_id, a.at) for a in record.attempts] == [
        (Outcome.ACCEPTED, "sg-1", 2000.0)  # the row keeps when the call started
    ]


async def test_begin_attempt_refuses_while_another_is_in_flight(store: Store) -> None:
    """A second begin for a mail whose attempt is pending and fresh is told busy."""
    await store.add(mail())
    first = await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    second = await store.begin_attempt("m1", "sendgrid", 0, 2001.0, 1001.0)
    assert first is not None and first.attempt_id is not None
    assert second is not None and second.attempt_id is None and second.why == "busy"


async def test_a_stale_pending_attempt_becomes_unknown_and_waits_for_a_check(
    store: Store,
) -> None:
    """A pending attempt older than stale_before turns unknown; the next begin returns it
    unchecked, and once its check is recorded an attempt may begin."""
    await store.add(mail())
    first = await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    assert first is not None and first.attempt_id is not None
    later = await store.begin_attempt("m1", "sendgrid", 0, 2100.0, 2050.0)
    assert later is not None and later.attempt_id is None and later.why == "unchecked"
    assert [(a.id, a.outcome) for a in later.unknown] == [(first.attempt_id, Outcome.UNKNOWN)]
    checked = replace(later.unknown[0], checked=Check.NOT_FOUND)
    await store.apply([StatusUpdate("m1", Status.SENDING, 2100.0, attempt=checked)])
    again = await store.begin_attempt("m1", "mailgun", 0, 2101.0, 2050.0)
    assert again is not None and again.attempt_id is not None
    record = await store.get("m1")
    assert record is not None
    assert [(a.provider, a.outcome, a.checked) for a in record.attempts] == [
        ("sendgrid", Outcome.UNKNOWN, Check.NOT_FOUND),
        ("mailgun", Outcome.PENDING, None),
    ]


async def test_begin_attempt_on_final_and_unknown_mails(store: Store) -> None:
    """A final mail is told final (no attempt recorded); an unknown id gives None."""
    await store.add(mail())
    await store.apply([update(Status.SENT, 1500.0, outcome=Outcome.ACCEPTED)])
    final = await store.begin_attempt("m1", "sendgrid", 0, 2000.0, 1000.0)
    assert final is not None and final.why == "final" and final.status is Status.SENT
    assert await store.begin_attempt("nope", "sendgrid", 0, 2000.0, 1000.0) is None
    record = await store.get("m1")
    assert record is not None and len(record.attempts) == 1


async def test_begins_made_together_answer_as_one_by_one(store: Store) -> None:
    """Begins of one event-loop turn (SQLite: one batch) answer each as alone: an attempt
    for a plain mail, busy for the same mail begun twice or one in flight, suppressed,
    final, None for an unknown id; a callback is queued for the mail with a URL, and
    the figures are what a recount finds."""
    plain = [mail(f"p{n}", tenant="acme") for n in range(3)]
    hooked = mail("hooked", callback_url="https://app.example.com/hook")
    gone = replace(mail("gone", tenant="acme"), to=(Address("Gone@example.com"),))
    for m in (*plain, hooked, gone, mail("done"), mail("flying")):
        await store.add(m)
    await store.add_suppressions([Suppression("acme", "gone@example.com", Reason.MANUAL, "api", 1)])
    await store.apply([update(Status.SENT, 1500.0, mail_id="done", outcome=Outcome.ACCEPTED)])
    assert await store.begin_attempt("flying", "mailgun", 0, 1900.0, 1000.0) is not None

    calls = [*(m.id for m in plain), "p0", "hooked", "gone", "done", "flying", "nope"]
    got = await asyncio.gather(
        *(store.begin_attempt(i, "sendgrid", 1, 2000.0 + n, 1000.0) for n, i in enumerate(calls))
    )

    whys = [None if b is None else (b.attempt_id is not None, b.why, b.status) for b in got]
    begun = (True, None, Status.SENDING)
    busy = (False, "busy", Status.SENDING)
    assert whys == [
        *[begun] * 3,
        busy,
        begun,
        (False, "suppressed", Status.SUPPRESSED),
        (False, "final", Status.SENT),
        busy,
        None,
    ]
    assert [b.mail for b in got[:3] if b is not None] == plain
    ids = [b.attempt_id for b in got if b is not None and b.attempt_id is not None]
    assert len(set(ids)) == 4
    for m, b in zip((*plain, hooked), (*got[:3], got[4]), strict=True):
        record = await store.get(m.id)
        assert record is not None and record.status is Status.SENDING
        assert b is not None
        assert [(a.provider, a.round, a.outcome, a.id) for a in record.attempts] == [
            ("sendgrid", 1, Outcome.PENDING, b.attempt_id)
        ]
    due = await store.claim_callbacks("notifier", 10, 30.0, time.time() + 60)
    assert [(c.mail_id, c.status) for c in due] == [("hooked", Status.SENDING)]
    kept = await store.metrics_snapshot()
    assert kept == await store.recount()
    assert kept.retries == {"sendgrid": 4}

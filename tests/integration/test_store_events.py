"""Delivery events: kept once, moving mails on, never backwards.

Part of the store contract (``test_store``): each test runs on every backend.
"""

from __future__ import annotations

from mailman.core.messages import StatusUpdate
from mailman.core.model import Attempt, Check, EventKind, Outcome, Status
from mailman.store import (
    EventResult,
    Store,
)

from . import test_store as contract
from .test_store import event, mail, status_of, update

# The contract's fixtures: every test here runs on SQLite and on a fresh MySQL database.
make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url


async def test_delivery_events_are_kept_once_and_move_the_status(store: Store) -> None:
    """record_events() keeps each event once (by provider and dedupe), moves a sent mail to
    delivered, and ignores events for unknown mails."""
    await store.add(mail())
    await store.apply(
        [update(Status.SENT, 1500.0, outcome=Outcome.ACCEPTED, provider_message_id="sg-1")]
    )
    results = await store.record_events(
        [
            event(EventKind.DELIVERED, 1600.0, "e1", recipient="to@example.com"),
            event(EventKind.DELIVERED, 1600.0, "e1"),
            event(EventKind.OPENED, 1700.0, "e2"),
            event(EventKind.DELIVERED, 1600.0, "e3", mail_id="nope"),
        ]
    )
    assert results == [
        EventResult.RECORDED,
        EventResult.DUPLICATE,
        EventResult.RECORDED,
        EventResult.UNKNOWN_MAIL,
    ]
    record = await store.get("m1")
    assert record is not None and record.status is Status.DELIVERED
    assert [(e.kind, e.dedupe, e.recipient) for e in record.events] == [
        (EventKind.DELIVERED, "e1", "to@example.com"),
        (EventKind.OPENED, "e2", None),
    ]
    assert await store.mail_for_message("sg-1") == "m1"
    assert await store.mail_for_message("sg-2") is None


async def test_events_out_of_order_never_move_a_mail_backwards(store: Store) -> None:
    """A hard bounce after a delivery wins (an asynchronous bounce), a delivery after a bounce
    does not, a soft bounce moves nothing, and a delivery before the sender's `sent` holds."""
    await store.add(mail())
    await store.add(mail("m2"))
    await store.claim_outbox("relay", 10, 30.0, 1100.0)
    await store.record_events([event(EventKind.BOUNCED, 1200.0, "s1", bounce="soft")])
    assert await status_of(store) is Status.SENDING
    await store.record_events([event(EventKind.DELIVERED, 1300.0, "d1")])
    await store.apply([update(Status.SENT, 1250.0, outcome=Outcome.ACCEPTED)])  # late record
    assert await status_of(store) is Status.DELIVERED
    await store.record_events([event(EventKind.BOUNCED, 1400.0, "b1", bounce="hard", reason="550")])
    record = await store.get("m1")
    assert record is not None and record.status is Status.BOUNCED and record.reason == "550"
    await store.record_events([event(EventKind.DELIVERED, 1500.0, "d2")])
    assert await status_of(store) is Status.BOUNCED
    await store.record_events([event(EventKind.DROPPED, 1500.0, "x1", mail_id="m2")])
    assert await status_of(store, "m2") is Status.BOUNCED


async def test_a_delivery_before_the_senders_record_keeps_the_provider_findable(
    store: Store,
) -> None:
    """When a delivery event moves a mail on before the sender's `sent` is recorded, the
    mail names the event's provider and is found by the message id its attempt recorded."""
    await store.add(mail())
    await store.claim_outbox("relay", 10, 30.0, 1100.0)
    await store.record_events([event(EventKind.DELIVERED, 1300.0, "d1")])
    sent = Attempt("sendgrid", 0, 1250.0, Outcome.ACCEPTED, None, "sg-9")
    await store.apply([StatusUpdate("m1", Status.SENT, 1250.0, "sendgrid", "sg-9", attempt=sent)])
    record = await store.get("m1")
    assert record is not None
    assert (record.status, record.provider) == (Status.DELIVERED, "sendgrid")
    assert await store.mail_for_message("sg-9") == "m1"


async def test_processed_settles_an_unknown_attempt_as_sent(store: Store) -> None:
    """A processed event for a mail whose attempt with that provider is unknown (unchecked)
    makes the mail sent with the event's message id and the attempt checked taken; the
    figures kept match a recount. Another provider's unknown attempt is left unchecked."""
    await store.add(mail())
    await store.claim_outbox("relay", 10, 30.0, 1100.0)
    begun = await store.begin_attempt("m1", "sendgrid", 0, 1200.0, 0.0)
    assert begun is not None and begun.attempt_id is not None
    lost = Attempt("sendgrid", 0, 1200.0, Outcome.UNKNOWN, "timeout", id=begun.attempt_id)
    other = Attempt("mailgun", 0, 1150.0, Outcome.UNKNOWN, "timeout")
    await store.apply(
        [StatusUpdate("m1", Status.SENDING, 1201.0, attempt=a) for a in (lost, other)]
    )
    processed = event(EventKind.PROCESSED, 1300.0, "p1", message_id="sg-7")
    assert await store.record_events([processed]) == [EventResult.RECORDED]
    record = await store.get("m1")
    assert record is not None
    assert (record.status, record.provider, record.provider_message_id) == (
        Status.SENT,
        "sendgrid",
        "sg-7",
    )
    assert [(a.provider, a.checked, a.message_id) for a in record.attempts] == [
        ("mailgun", None, None),
        ("sendgrid", Check.TAKEN, "sg-7"),
    ]
    assert [e.kind for e in record.events] == [EventKind.PROCESSED]
    assert await store.metrics_snapshot() == await store.recount()
    assert (await store.metrics_snapshot()).suppressed == {"sendgrid": 1}
    # Again (SendGrid posting it twice), or after a delivery: nothing moves back.
    await store.record_events([event(EventKind.DELIVERED, 1400.0, "d1")])
    await store.record_events([event(EventKind.PROCESSED, 1500.0, "p2", message_id="sg-8")])
    record = await store.get("m1")
    assert record is not None
    assert (record.status, record.provider_message_id) == (Status.DELIVERED, "sg-7")
    assert await store.metrics_snapshot() == await store.recount()


async def test_an_unknown_recorded_after_the_processed_event_is_taken(store: Store) -> None:
    """A processed event that comes while the call is still pending makes the mail sent;
    the unknown outcome recorded after it is checked taken, and the figures agree."""
    attempt_id = await _processed_while_pending(store)
    lost = Attempt("sendgrid", 0, 1200.0, Outcome.UNKNOWN, "timeout", id=attempt_id)
    await store.apply([StatusUpdate("m1", Status.SENDING, 1202.0, attempt=lost)])
    record = await store.get("m1")
    assert record is not None
    assert (record.status, record.provider_message_id) == (Status.SENT, "sg-7")
    assert [(a.outcome, a.checked) for a in record.attempts] == [(Outcome.UNKNOWN, Check.TAKEN)]
    assert await store.metrics_snapshot() == await store.recount()
    assert (await store.metrics_snapshot()).suppressed == {"sendgrid": 1}


async def test_a_processed_event_names_the_pending_attempt_so_its_id_is_found(
    store: Store,
) -> None:
    """A processed event that comes while the call is pending gives its message id to that
    attempt (lookups read the attempts alone); the sender's record keeps it there."""
    attempt_id = await _processed_while_pending(store)
    assert await store.mail_for_message("sg-7") == "m1"
    sent = Attempt("sendgrid", 0, 1200.0, Outcome.ACCEPTED, None, "sg-7", id=attempt_id)
    await store.apply([StatusUpdate("m1", Status.SENT, 1202.0, "sendgrid", "sg-7", attempt=sent)])
    record = await store.get("m1")
    assert record is not None
    assert [a.message_id for a in record.attempts] == ["sg-7"]
    assert await store.mail_for_message("sg-7") == "m1"


async def test_an_id_given_without_an_attempt_goes_to_the_newest_one_of_that_provider(
    store: Store,
) -> None:
    """A sent update that names the provider's message id but no attempt gives the id to
    the mail's newest attempt with that provider that had none, so it is found; another
    provider's attempt and one that has an id keep theirs."""
    await store.add(mail())
    await store.claim_outbox("relay", 10, 30.0, 1100.0)
    first = Attempt("sendgrid", 0, 1200.0, Outcome.TRANSIENT, "503", "sg-old")
    other = Attempt("mailgun", 0, 1201.0, Outcome.TRANSIENT, "503")
    await store.apply(
        [
            StatusUpdate("m1", Status.SENDING, 1200.0, attempt=first),
            StatusUpdate("m1", Status.SENDING, 1201.0, attempt=other),
        ]
    )
    begun = await store.begin_attempt("m1", "sendgrid", 1, 1300.0, 0.0)
    assert begun is not None
    await store.apply([StatusUpdate("m1", Status.SENT, 1301.0, "sendgrid", "sg-new")])
    record = await store.get("m1")
    assert record is not None and record.provider_message_id == "sg-new"
    assert [(a.provider, a.message_id) for a in record.attempts] == [
        ("sendgrid", "sg-old"),
        ("mailgun", None),
        ("sendgrid", "sg-new"),
    ]
    assert await store.mail_for_message("sg-new") == "m1"
    assert await store.mail_for_message("sg-old") == "m1"


async def _processed_while_pending(store: Store) -> int:
    """Mail m1 with a pending attempt at SendGrid, and SendGrid's processed event for it
    (message id sg-7) recorded; the attempt's id."""
    await store.add(mail())
    await store.claim_outbox("relay", 10, 30.0, 1100.0)
    begun = await store.begin_attempt("m1", "sendgrid", 0, 1200.0, 0.0)
    assert begun is not None and begun.attempt_id is not None
    processed = event(EventKind.PROCESSED, 1201.0, "p1", message_id="sg-7")
    assert await store.record_events([processed]) == [EventResult.RECORDED]
    return begun.attempt_id

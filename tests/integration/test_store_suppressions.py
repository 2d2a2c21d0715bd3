"""Suppressions: each tenant's list, filled by providers' events and by hand, and checked
when a mail is stored and right before each provider call.

Part of the store contract (``test_store``): each test runs on every backend.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import replace

from mailman.core.model import (
    Address,
    EventKind,
    Outcome,
    Status,
    Suppressed,
    SuppressionReason,
    Unsubscribe,
)
from mailman.store import Store, Suppression, SuppressionQuery

from . import test_store as contract
from .test_store import claim_all, event, mail, status_of

make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url

BOUNCE = SuppressionReason.BOUNCE
MANUAL = SuppressionReason.MANUAL
UNSUBSCRIBE = SuppressionReason.UNSUBSCRIBE


def suppression(
    address: str, tenant: str = "acme", reason: SuppressionReason = MANUAL, at: float = 10.0
) -> Suppression:
    return Suppression(tenant, address, reason, "api", at)


async def test_a_suppression_is_kept_once_per_tenant_and_address(store: Store) -> None:
    """Adding an address twice keeps the first reason; another tenant's list is its own."""
    assert await store.add_suppressions([suppression("ann@example.com", reason=BOUNCE)]) == 1
    again = [suppression("ann@example.com", reason=MANUAL), suppression("ann@example.com", "beta")]
    assert await store.add_suppressions(again) == 1

    kept = await store.suppression("acme", "ann@example.com")
    assert kept == suppression("ann@example.com", reason=BOUNCE)
    assert await store.suppression("beta", "ann@example.com") is not None
    assert await store.suppression("gamma", "ann@example.com") is None


async def test_suppressions_list_by_address_with_reason_filter_and_cursor(store: Store) -> None:
    """A listing is ordered by address, filtered by tenant and reason, and pages on."""
    await store.add_suppressions(
        [
            suppression("c@example.com"),
            suppression("a@example.com", reason=BOUNCE),
            suppression("b@example.com"),
            suppression("z@example.com", "beta"),
        ]
    )
    first = await store.list_suppressions(SuppressionQuery("acme", limit=2))
    assert [s.address for s in first] == ["a@example.com", "b@example.com"]
    last = first[-1]
    rest = await store.list_suppressions(
        SuppressionQuery("acme", limit=2, after=(last.tenant, last.address, last.group))
    )
    assert [s.address for s in rest] == ["c@example.com"]
    bounced = await store.list_suppressions(SuppressionQuery("acme", limit=10, reason=BOUNCE))
    assert [s.address for s in bounced] == ["a@example.com"]
    every = await store.list_suppressions(SuppressionQuery(None, limit=10))
    assert [(s.tenant, s.address) for s in every][-1] == ("beta", "z@example.com")


async def test_removing_a_suppression_says_whether_it_was_there(store: Store) -> None:
    """A removal counts the rows it took; the address is then not suppressed."""
    await store.add_suppressions([suppression("ann@example.com")])
    assert await store.remove_suppression("beta", "ann@example.com") == 0
    assert await store.remove_suppression("acme", "ann@example.com") == 1
    assert await store.suppressed_among("acme", ["ann@example.com"]) == {}


async def test_a_tenant_has_suppressions_once_it_suppresses_any_address(store: Store) -> None:
    """Whether a tenant suppresses anything, for any group; another tenant's do not count."""
    assert not await store.has_suppressions("acme")
    await store.add_suppressions([suppression("ann@example.com", "beta")])
    assert not await store.has_suppressions("acme")
    await store.add_suppressions([dataclasses.replace(suppression("b@example.com"), group="news")])
    assert await store.has_suppressions("acme")
    assert await store.remove_suppression("acme", "b@example.com") == 1
    assert not await store.has_suppressions("acme")


async def test_suppressed_among_names_only_the_tenants_suppressed_addresses(store: Store) -> None:
    """The check finds the tenant's suppressed addresses among many, with their reason."""
    await store.add_suppressions(
        [suppression("ann@example.com", reason=BOUNCE), suppression("bob@example.com", "beta")]
    )
    wanted = ["ann@example.com", "bob@example.com", "cy@example.com"]
    assert await store.suppressed_among("acme", wanted) == {"ann@example.com": BOUNCE}


async def test_hard_bounces_complaints_and_unsubscribes_suppress_their_recipient(
    store: Store,
) -> None:
    """A recorded hard bounce, complaint or unsubscribe suppresses its recipient for the
    mail's tenant (lower-cased, the provider as source); a soft bounce and a delivery never."""
    await store.add(mail("m1", tenant="acme"))
    await store.record_events(
        [
            event(EventKind.BOUNCED, 11.0, "e1", bounce="hard", recipient="Hard@Example.com"),
            event(EventKind.BOUNCED, 12.0, "e2", bounce="soft", recipient="soft@example.com"),
            event(EventKind.COMPLAINED, 13.0, "e3", recipient="spam@example.com"),
            event(EventKind.UNSUBSCRIBED, 14.0, "e4", recipient="bye@example.com"),
            event(EventKind.DELIVERED, 15.0, "e5", recipient="fine@example.com"),
        ]
    )
    kept = await store.list_suppressions(SuppressionQuery(None, limit=10))
    assert [(s.tenant, s.address, s.reason, s.source) for s in kept] == [
        ("acme", "bye@example.com", SuppressionReason.UNSUBSCRIBE, "sendgrid"),
        ("acme", "hard@example.com", BOUNCE, "sendgrid"),
        ("acme", "spam@example.com", SuppressionReason.COMPLAINT, "sendgrid"),
    ]


async def test_an_event_for_an_unknown_mail_suppresses_nothing(store: Store) -> None:
    """A bounce for a mail this store does not have names no tenant: nothing is added."""
    await store.record_events(
        [event(EventKind.BOUNCED, 11.0, "e1", mail_id="nope", bounce="hard", recipient="a@x.io")]
    )
    assert await store.list_suppressions(SuppressionQuery(None, limit=10)) == []


async def test_a_mail_with_no_visible_recipient_is_stored_suppressed(store: Store) -> None:
    """A mail whose to and cc were all dropped is stored ``suppressed`` with a reason: no
    outbox entry, its callback queued, the figures still a recount."""
    dropped = (Suppressed("ann@example.com", BOUNCE),)
    gone = replace(
        mail("m1", suppressed=dropped, callback_url="https://hooks.example.com/x"), to=()
    )
    await store.add(gone)
    await store.add(mail("m2"))

    record = await store.get("m1")
    assert record is not None and record.status is Status.SUPPRESSED
    assert record.mail.suppressed == dropped and record.reason
    assert [e.mail_id for e in await claim_all(store)] == ["m2"]
    due = await store.claim_callbacks("notifier", 10, 30.0, time.time() + 60)
    assert [(c.mail_id, c.status) for c in due] == [("m1", Status.SUPPRESSED)]
    kept = await store.metrics_snapshot()
    assert kept == await store.recount()
    assert kept.mails[Status.SUPPRESSED.value] == 1
    assert kept.dropped == {BOUNCE.value: 1}


async def test_begin_drops_recipients_suppressed_after_acceptance(store: Store) -> None:
    """Right before the call, an address suppressed since acceptance is dropped from the
    mail (rewritten in the store), and the attempt goes ahead to the others."""
    both = (Address("Ann@example.com"), Address("bob@example.com"))
    await store.add(replace(mail("m1", tenant="acme", bcc=(Address("cy@example.com"),)), to=both))
    await store.add_suppressions([suppression("ann@example.com"), suppression("cy@example.com")])

    begun = await store.begin_attempt("m1", "sendgrid", 0, 1001.0, 900.0)
    assert begun is not None and begun.attempt_id is not None
    assert begun.mail.to == (Address("bob@example.com"),) and begun.mail.bcc == ()
    assert [s.email for s in begun.mail.suppressed] == ["ann@example.com", "cy@example.com"]
    loaded = await store.load("m1")
    assert loaded is not None and loaded[0] == begun.mail
    assert (await store.metrics_snapshot()).dropped == {MANUAL.value: 2}


async def test_begin_ends_a_mail_with_no_visible_recipient_suppressed(store: Store) -> None:
    """With every to and cc suppressed, begin records no attempt: the mail ends ``suppressed``
    (its callback queued) and the figures still agree with a recount."""
    await store.add(
        mail(
            "m1",
            tenant="acme",
            cc=(Address("cc@example.com"),),
            bcc=(Address("hidden@example.com"),),
            callback_url="https://hooks.example.com/x",
        )
    )
    await store.add_suppressions(
        [suppression("to@example.com"), suppression("cc@example.com", reason=BOUNCE)]
    )

    begun = await store.begin_attempt("m1", "sendgrid", 0, 1001.0, 900.0)
    assert begun is not None
    assert (begun.attempt_id, begun.why, begun.status) == (None, "suppressed", Status.SUPPRESSED)
    assert await status_of(store) is Status.SUPPRESSED
    record = await store.get("m1")
    assert record is not None and record.attempts == ()
    assert record.mail.bcc == (Address("hidden@example.com"),)  # never sent: nobody to copy
    due = await store.claim_callbacks("notifier", 10, 30.0, time.time() + 60)
    assert [c.status for c in due] == [Status.SUPPRESSED]
    kept = await store.metrics_snapshot()
    assert kept == await store.recount()
    assert kept.attempts.get(("sendgrid", Outcome.PENDING.value), 0) == 0
    again = await store.begin_attempt("m1", "mailgun", 0, 1002.0, 900.0)
    assert again is not None and again.why == "final"


async def test_begin_makes_the_cc_the_to_when_every_to_is_suppressed(store: Store) -> None:
    """A mail whose every to is suppressed but with a cc left goes to that cc, as its to
    (providers need a to)."""
    await store.add(mail("m1", tenant="acme", cc=(Address("cc@example.com"),)))
    await store.add_suppressions([suppression("to@example.com")])
    begun = await store.begin_attempt("m1", "sendgrid", 0, 1001.0, 900.0)
    assert begun is not None and begun.attempt_id is not None
    assert (begun.mail.to, begun.mail.cc) == ((Address("cc@example.com"),), ())


async def test_a_suppression_outlives_the_erasure_of_its_mails(store: Store) -> None:
    """Erasing a bounced mail keeps its recipient's suppression: not mailing it is the point."""
    await store.add(mail("m1", tenant="acme"))
    await store.transition("m1", Status.SENT, 10.0)
    await store.record_events(
        [event(EventKind.BOUNCED, 11.0, "e1", bounce="hard", recipient="to@example.com")]
    )
    assert await status_of(store) is Status.BOUNCED
    erased = await store.erase("m1", 2000.0)
    assert erased is not None and erased.erased
    assert await store.suppression("acme", "to@example.com") is not None


def grouped(address: str, group: str, reason: SuppressionReason = UNSUBSCRIBE) -> Suppression:
    return Suppression("acme", address, reason, "one-click", 10.0, group=group)


async def test_a_mail_of_a_group_skips_its_groups_and_every_mails_suppressions(
    store: Store,
) -> None:
    """A group's suppression keeps that group's mails away only; one for every mail keeps
    every mail away: a mail of no group (transactional) skips only those."""
    await store.add_suppressions(
        [
            grouped("news@example.com", "newsletter"),
            suppression("gone@example.com", reason=BOUNCE),
            grouped("both@example.com", "newsletter"),
            suppression("both@example.com", reason=BOUNCE),
        ]
    )
    every = ["news@example.com", "gone@example.com", "both@example.com", "ann@example.com"]
    assert await store.suppressed_among("acme", every) == {
        "gone@example.com": BOUNCE,
        "both@example.com": BOUNCE,
    }
    assert await store.suppressed_among("acme", every, "newsletter") == {
        "news@example.com": UNSUBSCRIBE,
        "gone@example.com": BOUNCE,
        "both@example.com": BOUNCE,  # every mail's reason before the group's
    }
    assert await store.suppressed_among("acme", every, "offers") == {
        "gone@example.com": BOUNCE,
        "both@example.com": BOUNCE,
    }
    newsletter = SuppressionQuery("acme", limit=10, group="newsletter")
    listed = await store.list_suppressions(newsletter)
    assert [s.address for s in listed] == ["both@example.com", "news@example.com"]
    only_every = await store.list_suppressions(SuppressionQuery("acme", limit=10, group=""))
    assert [s.address for s in only_every] == ["both@example.com", "gone@example.com"]
    assert await store.remove_suppression("acme", "both@example.com", "newsletter") == 1
    assert await store.suppression("acme", "both@example.com") is not None


async def test_begin_drops_a_groups_unsubscribed_recipient_from_its_mails_only(
    store: Store,
) -> None:
    """Right before the call, an address unsubscribed from the mail's group ends that mail
    ``suppressed``; a mail of no group to it goes ahead."""
    newsletter = Unsubscribe("newsletter", "https://mail.example.com/unsubscribe/t")
    await store.add(mail("m1", tenant="acme", unsubscribe=newsletter))
    await store.add(mail("m2", tenant="acme"))
    await store.add_suppressions([grouped("to@example.com", "newsletter")])
    begun = await store.begin_attempt("m1", "sendgrid", 0, 1001.0, 900.0)
    assert begun is not None and (begun.status, begun.why) == (Status.SUPPRESSED, "suppressed")
    assert begun.mail.suppressed == (Suppressed("to@example.com", UNSUBSCRIBE),)
    plain = await store.begin_attempt("m2", "sendgrid", 0, 1001.0, 900.0)
    assert plain is not None and plain.attempt_id is not None


async def test_an_unsubscribe_is_kept_once_and_queues_one_callback(store: Store) -> None:
    """``unsubscribe`` adds the group's suppression and queues an ``unsubscribed``
    callback to the mail's URL in one go; a repeat changes nothing; a mail without a URL
    gets none."""
    await store.add(mail("m1", tenant="acme", callback_url="https://hooks.example.com/x"))
    await store.add(mail("m2", tenant="acme"))
    wanted = grouped("to@example.com", "newsletter")
    assert await store.unsubscribe(wanted, "m1") is True
    assert await store.unsubscribe(wanted, "m1") is False
    assert await store.unsubscribe(grouped("to@example.com", "offers"), "m2") is True
    assert await store.suppression("acme", "to@example.com", "newsletter") == wanted
    due = await store.claim_callbacks("notifier", 10, 30.0, time.time() + 60)
    assert [(c.mail_id, c.url, c.event) for c in due] == [
        (
            "m1",
            "https://hooks.example.com/x",
            {"event": "unsubscribed", "address": "to@example.com", "group": "newsletter"},
        )
    ]
    assert due[0].at == 10.0

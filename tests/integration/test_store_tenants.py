"""Tenants' own provider chains in the store.

Part of the store contract (``test_store``): each test runs on every backend.
"""

from __future__ import annotations

from mailman.core.model import Address, Mail, Unsubscribe
from mailman.store import Store

from . import test_store as contract

# The contract's fixtures: every test here runs on SQLite and on a fresh MySQL database.
make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url


def mail(mail_id: str, providers: str | None = None) -> Mail:
    return Mail(
        id=mail_id,
        sender=Address("a@example.com"),
        to=(Address("b@example.com"),),
        subject="s",
        text="t",
        created_at=1000.0,
        tenant="acme",
        providers=providers,
    )


async def test_a_tenant_chain_is_set_replaced_listed_and_cleared(store: Store) -> None:
    """A chain is kept as written, a second set replaces it, None clears it."""
    assert await store.tenant_chains() == {}
    assert await store.tenant_chain("acme") is None
    await store.set_tenant_chain("acme", "postmark,ses", 10.0)
    await store.set_tenant_chain("beta", "sendgrid:3,mailgun:1", 11.0)
    await store.set_tenant_chain("acme", "mailgun", 12.0)
    assert await store.tenant_chain("acme") == "mailgun"
    assert await store.tenant_chains() == {"acme": "mailgun", "beta": "sendgrid:3,mailgun:1"}
    await store.set_tenant_chain("acme", None, 13.0)
    await store.set_tenant_chain("nobody", None, 13.0)  # clearing what is not there: fine
    assert await store.tenant_chains() == {"beta": "sendgrid:3,mailgun:1"}


async def test_a_tenant_default_unsubscribe_group_is_set_replaced_listed_and_cleared(
    store: Store,
) -> None:
    """A default group is kept with its mailto (or none), a second set replaces it, None
    clears it; the chains are another matter."""
    assert await store.tenant_unsubscribes() == {}
    await store.set_tenant_unsubscribe("acme", Unsubscribe("newsletter"), 10.0)
    await store.set_tenant_unsubscribe("beta", Unsubscribe("offers", mailto="out@b.com"), 11.0)
    await store.set_tenant_chain("acme", "mailgun", 11.0)
    assert await store.tenant_unsubscribes() == {
        "acme": Unsubscribe("newsletter"),
        "beta": Unsubscribe("offers", mailto="out@b.com"),
    }
    await store.set_tenant_unsubscribe("acme", Unsubscribe("digest", mailto="x@a.com"), 12.0)
    await store.set_tenant_unsubscribe("beta", None, 13.0)
    await store.set_tenant_unsubscribe("nobody", None, 13.0)  # clearing what is not there
    assert await store.tenant_unsubscribes() == {"acme": Unsubscribe("digest", mailto="x@a.com")}
    assert await store.tenant_chains() == {"acme": "mailgun"}


async def test_a_claimed_outbox_entry_carries_the_chain_its_mail_was_accepted_with(
    store: Store,
) -> None:
    """The relay's claim gives each entry its mail's own chain (None: the deployment's),
    also when the mail gets a new entry later (the sweeper, a restart)."""
    await store.add(mail("m1", "mailgun,sendgrid"))
    await store.add(mail("m2"))
    claimed = await store.claim_outbox("relay", 10, 30.0, 1010.0)
    assert {e.mail_id: e.providers for e in claimed} == {"m1": "mailgun,sendgrid", "m2": None}
    await store.published([e.id for e in claimed])
    assert await store.requeue_unfinished() == 2
    again = await store.claim_outbox("relay", 10, 30.0, 1020.0)
    assert {e.mail_id: e.providers for e in again} == {"m1": "mailgun,sendgrid", "m2": None}
    record = await store.get("m1")
    assert record is not None and record.mail.providers == "mailgun,sendgrid"

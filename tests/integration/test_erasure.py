"""Erasure: DELETE /mail/{id}, a purged mail's answer, the contract, ``mailman erase``."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

from mailman import main
from mailman.core.clock import iso_time
from mailman.core.messages import StatusUpdate
from mailman.core.model import Address, Mail, Status
from mailman.intake.keys import Scope
from mailman.store import Store
from mailman.store.sqlite import SQLiteStore

from ..support.api import VALID, Client, problem
from .test_auth import bearer, client, key, make_client, sent_id

__all__ = ["client", "make_client"]  # the fixtures, used by name


async def finish(store: Store, mail_id: str, status: Status = Status.SENT) -> None:
    await store.apply([StatusUpdate(mail_id, status, time.time(), provider="sendgrid")])


async def test_a_final_mail_is_erased_then_gone(client: Client, store: Store) -> None:
    """DELETE of a sent mail answers 204 with no body; then the mail is 404 everywhere."""
    secret = await key(store)
    mail_id = await sent_id(client, secret)
    await finish(store, mail_id)
    resp = await client.delete(f"/mail/{mail_id}", headers=bearer(secret))
    assert resp.status == 204 and await resp.read() == b""
    for path in (f"/mail/{mail_id}", f"/mail/{mail_id}/status"):
        await problem(await client.get(path, headers=bearer(secret)), 404)
    assert await store.get(mail_id) is None
    await problem(await client.delete(f"/mail/{mail_id}", headers=bearer(secret)), 404)


async def test_a_mail_on_its_way_is_not_erased(client: Client, store: Store) -> None:
    """A queued mail answers 409 (status-conflict) naming its status, and stays."""
    secret = await key(store)
    mail_id = await sent_id(client, secret)
    body = await problem(await client.delete(f"/mail/{mail_id}", headers=bearer(secret)), 409)
    assert body["type"].endswith("/status-conflict")
    assert "queued" in body["detail"] and "final" in body["detail"]
    assert await store.get(mail_id) is not None


async def test_a_scheduled_mail_is_cancelled_and_erased(client: Client, store: Store) -> None:
    """A mail waiting for its send_at is erased at once: its time coming sends nothing."""
    secret = await key(store)
    mail_id = await sent_id(client, secret, {**VALID, "send_at": iso_time(time.time() + 3600)})
    assert (await client.delete(f"/mail/{mail_id}", headers=bearer(secret))).status == 204
    assert await store.release_scheduled(time.time() + 7200) == []
    assert await store.get(mail_id) is None


async def test_only_the_tenants_send_key_or_an_admin_erases(client: Client, store: Store) -> None:
    """A read key is 403; another tenant's mail is 404 as an unknown one; an admin of any
    tenant erases it."""
    acme = await key(store, "acme")
    reader = await key(store, "acme", Scope.READ)
    other = await key(store, "globex", Scope.SEND)
    admin = await key(store, "ops", Scope.ADMIN)
    mail_id = await sent_id(client, acme)
    await finish(store, mail_id, Status.FAILED)
    path = f"/mail/{mail_id}"
    await problem(await client.delete(path, headers=bearer(reader)), 403)
    foreign = await problem(await client.delete(path, headers=bearer(other)), 404)
    unknown = await problem(
        await client.delete("/mail/01HZZZZZZZZZZZZZZZZZZZZZZZ", headers=bearer(other)), 404
    )
    assert foreign == unknown
    assert (await client.delete(path, headers=bearer(admin))).status == 204


async def test_a_purged_mail_shows_purged_at_and_no_content(client: Client, store: Store) -> None:
    """After the body retention GET /mail/{id} keeps status and attempts, shows purged_at,
    and no longer what was submitted; before, purged_at is null."""
    secret = await key(store)
    mail_id = await sent_id(client, secret)
    shown = (await (await client.get(f"/mail/{mail_id}", headers=bearer(secret))).json())["mail"]
    assert shown["purged_at"] is None and shown["submitted"]["to"] == [{"email": "ann@example.com"}]
    await finish(store, mail_id)
    now = time.time() + 10
    assert await store.purge_bodies(before=now, now=now) == 1
    shown = (await (await client.get(f"/mail/{mail_id}", headers=bearer(secret))).json())["mail"]
    assert shown["purged_at"] == iso_time(now)
    assert "submitted" not in shown and shown["status"] == "sent"
    assert "ann@example.com" not in str(shown)


async def test_a_purged_failed_mail_cannot_be_retried(client: Client, store: Store) -> None:
    """POST /mail/{id}/retry of a failed mail whose content was erased is 409 saying so."""
    secret = await key(store)
    mail_id = await sent_id(client, secret)
    await finish(store, mail_id, Status.FAILED)
    now = time.time() + 10
    await store.purge_bodies(before=now, now=now)
    body = await problem(await client.post(f"/mail/{mail_id}/retry", headers=bearer(secret)), 409)
    assert "erased" in body["detail"]


async def test_the_contract_documents_delete_and_purged_at(client: Client) -> None:
    """/openapi.json has DELETE /mail/{id} (204, 409) and purged_at in the mail's answer."""
    document = await (await client.get("/openapi.json")).json()
    erase = document["paths"]["/mail/{id}"]["delete"]
    assert erase["operationId"] == "eraseMail"
    assert {"204", "404", "409"} <= set(erase["responses"])
    shown = document["components"]["schemas"]["MailShown"]
    assert "purged_at" in shown["properties"] and "purged_at" in shown["required"]
    assert "submitted" not in shown["required"]


# --- mailman erase ----------------------------------------------------------------------


def _person(mail_id: str, tenant: str = "acme", **fields: object) -> Mail:
    values: dict[str, object] = {
        "id": mail_id,
        "sender": Address("shop@example.com"),
        "to": (Address("someone@example.com"),),
        "subject": "hi",
        "tenant": tenant,
        "created_at": 1000.0,
        **fields,
    }
    return Mail(**values)  # type: ignore[arg-type]


async def _fill(path: str) -> None:
    """Ann's mails: to her (sent), cc (failed, another tenant), reply-to (scheduled), from
    her (queued: on its way); and Bob's (sent)."""
    async with SQLiteStore(path) as store:
        await store.add(_person("to", to=(Address("Ann@Example.com", "Ann"),)))
        await store.add(_person("cc", "globex", cc=(Address("ann@example.com"),)))
        await store.add(_person("later", reply_to=Address("ann@example.com"), send_at=10**10))
        await store.add(_person("from", sender=Address("ann@example.com")))
        await store.add(_person("bob", to=(Address("bob@example.com"),)))
        await store.apply(
            [
                StatusUpdate("to", Status.SENT, 2000.0, provider="sendgrid"),
                StatusUpdate("cc", Status.FAILED, 2000.0, provider="sendgrid"),
                StatusUpdate("bob", Status.SENT, 2000.0, provider="sendgrid"),
            ]
        )


async def _left(path: str) -> list[str]:
    async with SQLiteStore(path) as store:
        ids = ("to", "cc", "later", "from", "bob")
        return [mail_id for mail_id in ids if await store.get(mail_id) is not None]


def test_erase_deletes_every_mail_to_or_from_the_address(tmp_path: Path) -> None:
    """``mailman erase --address`` erases Ann's final and scheduled mails in every tenant,
    says how many, leaves the one still queued (exit 1) and Bob's; then, with --tenant,
    only that tenant's."""
    path = str(tmp_path / "mailman.db")
    asyncio.run(_fill(path))
    env = {"MAILMAN_STORE": f"sqlite:///{path}"}
    out, err = io.StringIO(), io.StringIO()
    code = main(["erase", "--address", "ANN@example.com"], env, out=out, err=err)
    assert (code, err.getvalue()) == (1, "")
    assert out.getvalue().splitlines() == [
        "mail from is queued: left",
        "erased 3 mail(s) to or from ANN@example.com",
        "left 1 mail(s) still being sent: run again once they are final",
    ]
    assert asyncio.run(_left(path)) == ["from", "bob"]

    out = io.StringIO()
    assert main(["erase", "--address", "bob@example.com", "--tenant", "globex"], env, out=out) == 0
    assert out.getvalue() == "erased 0 mail(s) to or from bob@example.com\n"
    assert main(["erase", "--address", "bob@example.com", "--tenant", "acme"], env, out=out) == 0
    assert asyncio.run(_left(path)) == ["from"]


def test_erase_refuses_what_is_no_address(tmp_path: Path) -> None:
    """An --address without @ is bad usage (exit 2), naming it; nothing is opened."""
    err = io.StringIO()
    env = {"MAILMAN_STORE": f"sqlite:///{tmp_path / 'never.db'}"}
    assert main(["erase", "--address", "ann"], env, err=err) == 2
    assert err.getvalue() == "mailman erase: --address 'ann' is not an e-mail address\n"
    assert not (tmp_path / "never.db").exists()

"""Erasure over HTTP: DELETE /mail/{id}, a purged mail's answer, and the contract."""

from __future__ import annotations

import time

from mailman.core.clock import iso_time
from mailman.core.messages import StatusUpdate
from mailman.core.model import Status
from mailman.intake.keys import Scope
from mailman.store import Store

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

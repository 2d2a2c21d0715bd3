"""Resend's webhooks (Svix-signed), posted to the running service: verified against the
Standard Webhooks test vector, mapped into the one event set, and refused unsigned,
forged or stale with nothing stored. The Resend fake also posts them itself."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from mailman.config import ConfigError, load
from mailman.routes.webhooks import MAX_SKEW_SECONDS, RESEND_PATH, svix_key, verify_svix
from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.fake_resend import FakeResend, svix_headers
from ..support.fakes import FakeMailgun, FakeSendGrid

SECRET = "whsec_" + base64.b64encode(b"resend-signing-key-PLUGH-0123456").decode()

# The Standard Webhooks (Svix) specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = "1614265330"
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_svix_published_test_vector_verifies() -> None:
    """The spec's vector verifies, among other entries; a changed body or id does not."""
    key = svix_key(VECTOR_SECRET)
    several = f"v1,bm90LWl0 {VECTOR_SIGNATURE}"

    assert verify_svix(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, VECTOR_SIGNATURE)
    assert verify_svix(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, several)
    assert not verify_svix(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY + b" ", several)
    assert not verify_svix(key, "msg_other", VECTOR_TIMESTAMP, VECTOR_BODY, VECTOR_SIGNATURE)
    assert not verify_svix(
        key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, "v2" + VECTOR_SIGNATURE[2:]
    )


def test_config_takes_a_svix_secret_and_refuses_another() -> None:
    """A whsec_ secret is kept masked; one that is not base64 stops the start, unnamed."""
    config = load([], {"MAILMAN_RESEND_WEBHOOK_SECRET": SECRET})
    assert config.resend_webhook_secret is not None
    assert config.resend_webhook_secret.reveal() == SECRET
    assert "PLUGH" not in repr(config)
    with pytest.raises(ConfigError, match="MAILMAN_RESEND_WEBHOOK_SECRET") as caught:
        load([], {"MAILMAN_RESEND_WEBHOOK_SECRET": "whsec_not base64!"})
    assert "not base64" not in str(caught.value)


@dataclass
class Service:
    url: str
    http: aiohttp.ClientSession
    resend: FakeResend

    async def show(self, mail_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/mail/{mail_id}") as resp:
            assert resp.status == 200
            mail: dict[str, Any] = (await resp.json())["mail"]
            return mail

    async def wait(self, mail_id: str, status: str) -> dict[str, Any]:
        shown: dict[str, Any] = {}

        async def reached() -> bool:
            shown.update(await self.show(mail_id))
            return bool(shown["status"] == status)

        await eventually(reached, what=f"{mail_id} {status}")
        return shown

    async def send(self, to: str = "ann@example.com") -> str:
        body = {"to": [to], "from": "noreply@example.com", "subject": "Hi", "content": "Hi"}
        async with self.http.post(f"{self.url}/mail/send", json=body) as resp:
            assert resp.status == 201, await resp.text()
            mail_id: str = (await resp.json())["mail"]["id"]
            return mail_id

    async def sent(self, to: str = "ann@example.com") -> dict[str, Any]:
        return await self.wait(await self.send(to), "sent")

    async def post(
        self,
        event: dict[str, Any],
        *,
        secret: str = SECRET,
        timestamp: str | None = None,
        msg_id: str | None = None,
        drop: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Post ``event`` signed as Svix signs (``drop``: leave that header out)."""
        body = orjson.dumps(event)
        headers = svix_headers(
            secret,
            msg_id or f"msg_{secrets.token_hex(8)}",
            timestamp or str(int(time.time())),
            body,
        )
        if drop is not None:
            del headers[drop]
        async with self.http.post(f"{self.url}{RESEND_PATH}", data=body, headers=headers) as resp:
            answer: dict[str, Any] = await resp.json(content_type=None)
            return resp.status, answer


def event(kind: str, mail: dict[str, Any] | None, **data: Any) -> dict[str, Any]:
    """A Resend event about ``mail`` (by its Resend id, and its mail_id tag)."""
    fields: dict[str, Any] = {"to": ["ann@example.com"], "created_at": "2026-12-06T09:00:00Z"}
    if mail is not None:
        fields |= {"email_id": mail["provider_message_id"], "tags": {"mail_id": mail["id"]}}
    return {"type": kind, "created_at": "2026-12-06T09:00:01.5Z", "data": {**fields, **data}}


def counts(recorded: int = 0, duplicate: int = 0, unknown: int = 0, skipped: int = 0) -> Any:
    return {"recorded": recorded, "duplicate": duplicate, "unknown": unknown, "skipped": skipped}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    """Mailman sending through the Resend fake, its Resend webhook on."""
    async with (
        FakeResend() as resend,
        FakeSendGrid() as sg,
        FakeMailgun() as mg,
        aiohttp.ClientSession() as http,
    ):
        env = provider_env(
            sg,
            mg,
            MAILMAN_PROVIDERS="resend",
            RESEND_API_KEY=resend.api_key,
            RESEND_BASE_URL=resend.base_url,
            MAILMAN_RESEND_WEBHOOK_SECRET=SECRET,
        )
        async with embedded(make_config(tmp_path, env)) as mailman:
            yield Service(mailman.url, http, resend)


async def test_delivered_moves_sent_to_delivered(service: Service) -> None:
    """email.sent is skipped, email.delivered recorded: the mail is delivered."""
    mail = await service.sent()
    sent = await service.post(event("email.sent", mail))
    delivered = await service.post(event("email.delivered", mail))

    assert sent == (200, counts(skipped=1))
    assert delivered == (200, counts(recorded=1))
    shown = await service.show(mail["id"])
    assert shown["status"] == "delivered"
    [got] = shown["events"]
    assert (got["provider"], got["event"], got["recipient"]) == (
        "resend",
        "delivered",
        "ann@example.com",
    )


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        ("email.opened", {}, ("opened", None)),
        ("email.clicked", {"click": {"link": "https://example.com"}}, ("clicked", None)),
        ("email.complained", {}, ("complained", None)),
        ("email.delivery_delayed", {}, ("deferred", None)),
        (
            "email.bounced",
            {"bounce": {"type": "Transient", "message": "full"}},
            ("bounced", "soft"),
        ),
    ],
)
async def test_events_map_into_the_one_set(
    service: Service, kind: str, data: dict[str, Any], expected: tuple[str, str | None]
) -> None:
    """Each Resend event type becomes its kind in Mailman's event set; none of these
    moves a sent mail's status."""
    mail = await service.sent()
    assert await service.post(event(kind, mail, **data)) == (200, counts(recorded=1))

    shown = await service.show(mail["id"])
    assert [(e["event"], e["bounce"]) for e in shown["events"]] == [expected]
    assert shown["status"] == "sent"


async def test_hard_bounce_by_resend_id_alone_moves_to_bounced(service: Service) -> None:
    """A Permanent bounce without the mail_id tag is found by Resend's id: bounced, with why."""
    mail = await service.sent()
    bounce = {"type": "Permanent", "subType": "General", "message": "no such user"}
    posted = event("email.bounced", mail, bounce=bounce)
    del posted["data"]["tags"]
    assert await service.post(posted) == (200, counts(recorded=1))

    shown = await service.show(mail["id"])
    assert shown["status"] == "bounced"
    assert [(e["event"], e["bounce"]) for e in shown["events"]] == [("bounced", "hard")]
    assert "no such user" in shown["reason"]


async def test_a_resent_event_is_kept_once(service: Service) -> None:
    """The same svix-id posted again (Resend retrying) is acknowledged, kept once."""
    mail = await service.sent()
    first = await service.post(event("email.opened", mail), msg_id="msg_once")
    again = await service.post(event("email.opened", mail), msg_id="msg_once")

    assert first == (200, counts(recorded=1))
    assert again == (200, counts(duplicate=1))
    assert len((await service.show(mail["id"]))["events"]) == 1


async def test_an_event_for_an_unknown_mail_is_acknowledged(service: Service) -> None:
    """An event about no mail of this store is answered 200 (Resend stops retrying)."""
    posted = event("email.delivered", None, email_id="not-ours")
    assert await service.post(posted) == (200, counts(unknown=1))


@pytest.mark.parametrize("header", ["svix-id", "svix-timestamp", "svix-signature"])
async def test_unsigned_is_401_and_stores_nothing(service: Service, header: str) -> None:
    """A post without one of the Svix headers is 401; the mail keeps no event."""
    mail = await service.sent()
    status, answer = await service.post(event("email.delivered", mail), drop=header)

    assert status == 401 and answer["type"].endswith("/signature-missing")
    assert (await service.show(mail["id"]))["events"] == []


async def test_forged_or_stale_is_403_and_stores_nothing(service: Service) -> None:
    """Signed with another secret, or with a timestamp past the 5 minutes either way: 403."""
    mail = await service.sent()
    other = "whsec_" + base64.b64encode(b"someone-else").decode()
    forged = await service.post(event("email.bounced", mail), secret=other)
    now = time.time()
    old = await service.post(event("email.delivered", mail), timestamp=str(int(now - 400)))
    ahead = await service.post(event("email.delivered", mail), timestamp=str(int(now + 400)))

    assert forged[0] == 403 and forged[1]["type"].endswith("/signature-invalid")
    assert old[0] == ahead[0] == 403 and old[1]["type"].endswith("/signature-stale")
    assert MAX_SKEW_SECONDS == 300
    shown = await service.show(mail["id"])
    assert shown["events"] == [] and shown["status"] == "sent"


async def test_a_malformed_event_is_400(service: Service) -> None:
    """A signed post that is no Resend event (no data) is 400, nothing kept."""
    assert (await service.post({"type": "email.delivered"}))[0] == 400


async def test_off_without_a_secret(tmp_path: Path) -> None:
    """Without MAILMAN_RESEND_WEBHOOK_SECRET the endpoint is 404."""
    async with (
        embedded(make_config(tmp_path)) as mailman,
        aiohttp.ClientSession() as http,
        http.post(f"{mailman.url}{RESEND_PATH}", data=b"{}") as resp,
    ):
        assert resp.status == 404


async def test_the_fake_reports_delivered_and_bounced(service: Service) -> None:
    """With its webhooks on, the Resend fake's own posts end one mail delivered and one
    to bounce@ bounced hard."""
    service.resend.webhook_secret = SECRET
    service.resend.webhook_url = f"{service.url}{RESEND_PATH}"
    delivered = await service.wait(await service.send(), "delivered")
    bounced = await service.wait(await service.send("bounce@example.com"), "bounced")
    assert [e["event"] for e in delivered["events"]] == ["delivered"]
    assert [(e["event"], e["bounce"]) for e in bounced["events"]] == [("bounced", "hard")]
    assert set(service.resend.webhook_answers) == {200}

"""Postmark's webhooks, posted to the running service: HTTP basic auth, one record a post."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from mailman.config import ConfigError
from mailman.routes.webhooks import POSTMARK_PATH, parse_postmark, verify_basic
from mailman.system import embedded

from ..conftest import eventually, make_config, postmark_env
from ..support.fake_postmark import FakePostmark

USER = "postmark-hook"
PASSWORD = "pw-do-not-leak-XYZZY-51"
CREDENTIALS = f"{USER}:{PASSWORD}"
PROBLEM = "application/problem+json"


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def record(kind: str, mail_id: str | None, message_id: str = "", **fields: Any) -> dict[str, Any]:
    """One Postmark record about ``mail_id`` (in its Metadata)."""
    times = {"Delivery": "DeliveredAt", "Bounce": "BouncedAt", "SpamComplaint": "BouncedAt"}
    times |= {"Open": "ReceivedAt", "Click": "ReceivedAt", "SubscriptionChange": "ChangedAt"}
    out: dict[str, Any] = {
        "RecordType": kind,
        "MessageStream": "outbound",
        "MessageID": message_id or secrets.token_hex(16),
        "Recipient": "ann@example.com",
        times[kind]: now(),
        "Metadata": {} if mail_id is None else {"mail_id": mail_id},
    }
    return {**out, **fields}


@dataclass
class Service:
    url: str
    http: aiohttp.ClientSession
    postmark: FakePostmark

    async def send(self, to: str = "ann@example.com") -> str:
        body = {"to": [to], "from": "noreply@example.com", "subject": "Hi", "content": "Hi"}
        async with self.http.post(f"{self.url}/mail/send", json=body) as resp:
            assert resp.status == 201, await resp.text()
            mail_id: str = (await resp.json())["mail"]["id"]
        return mail_id

    async def sent(self, to: str = "ann@example.com") -> dict[str, Any]:
        return await self.wait(await self.send(to), "sent")

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

    async def post(
        self, body: object, authorization: str | None = basic(CREDENTIALS)
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.http.post(f"{self.url}{POSTMARK_PATH}", data=data, headers=headers) as resp:
            answer: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 400:
                assert resp.content_type == PROBLEM
            return resp.status, answer, {k: v for k, v in resp.headers.items()}


def env_for(pm: FakePostmark, **extra: str) -> dict[str, str]:
    return {
        "MAILMAN_PROVIDERS": "postmark",
        **postmark_env(pm),
        "MAILMAN_POSTMARK_WEBHOOK_CREDENTIALS": CREDENTIALS,
        **extra,
    }


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    """Mailman sending through the Postmark fake, its Postmark webhook on."""
    async with (
        FakePostmark() as pm,
        aiohttp.ClientSession() as http,
        embedded(make_config(tmp_path, env_for(pm))) as mailman,
    ):
        yield Service(mailman.url, http, pm)


def counts(recorded: int = 0, duplicate: int = 0, unknown: int = 0, skipped: int = 0) -> Any:
    return {"recorded": recorded, "duplicate": duplicate, "unknown": unknown, "skipped": skipped}


async def test_delivery_moves_sent_to_delivered(service: Service) -> None:
    """A Delivery record with the mail id in its Metadata moves the mail to delivered."""
    mail = await service.sent()
    status, answer, _ = await service.post(record("Delivery", mail["id"]))
    shown = await service.show(mail["id"])

    assert (status, answer) == (200, counts(recorded=1))
    assert shown["status"] == "delivered"
    assert [(e["provider"], e["event"], e["recipient"]) for e in shown["events"]] == [
        ("postmark", "delivered", "ann@example.com")
    ]


async def test_a_record_without_metadata_is_matched_by_message_id(service: Service) -> None:
    """Without the mail id in Metadata, Postmark's MessageID finds the mail."""
    mail = await service.sent()
    status, answer, _ = await service.post(
        record("Delivery", None, message_id=mail["provider_message_id"])
    )

    assert (status, answer) == (200, counts(recorded=1))
    assert (await service.show(mail["id"]))["status"] == "delivered"


async def test_every_record_type_maps_to_the_event_set(service: Service) -> None:
    """Hard bounce, soft bounce, spam complaint, open, click and an unsubscribe each become
    their event; a reactivation and an auto-responder are skipped."""
    mail = await service.sent()
    mid = mail["id"]
    posts = [
        record("Bounce", mid, Type="SoftBounce", TypeCode=4096, ID=1, Name="Soft bounce"),
        record("Open", mid),
        record("Click", mid, OriginalLink="https://example.com"),
        record("SpamComplaint", mid, Type="SpamComplaint", ID=2, Email="ann@example.com"),
        record(
            "SubscriptionChange", mid, SuppressSending=True, SuppressionReason="ManualSuppression"
        ),
        record("SubscriptionChange", mid, SuppressSending=False, SuppressionReason=None),
        record("Bounce", mid, Type="AutoResponder", TypeCode=64, ID=3),
        record(
            "Bounce",
            mid,
            Type="HardBounce",
            TypeCode=1,
            ID=4,
            Name="Hard bounce",
            Description="Unknown user.",
        ),
    ]
    answers = [(await service.post(p))[1] for p in posts]
    shown = await service.show(mid)

    assert answers == [counts(recorded=1)] * 5 + [counts(skipped=1)] * 2 + [counts(recorded=1)]
    assert [(e["event"], e["bounce"]) for e in shown["events"]] == [
        ("bounced", "soft"),
        ("opened", None),
        ("clicked", None),
        ("complained", None),
        ("unsubscribed", None),
        ("bounced", "hard"),
    ]
    assert shown["status"] == "bounced"
    assert shown["reason"] == "Hard bounce: Unknown user."


async def test_a_record_posted_twice_is_kept_once(service: Service) -> None:
    """Postmark posting a record again (a retry) keeps it once."""
    mail = await service.sent()
    delivery = record("Delivery", mail["id"])
    first = await service.post(delivery)
    again = await service.post(delivery)

    assert (first[1], again[1]) == (counts(recorded=1), counts(duplicate=1))
    assert len((await service.show(mail["id"]))["events"]) == 1


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        basic(f"{USER}:wrong-password"),
        basic(f"someone:{PASSWORD}"),
        basic(USER),
        "Bearer " + PASSWORD,
        "Basic not-base64!",
    ],
)
async def test_missing_or_wrong_credentials_are_401_and_store_nothing(
    service: Service, authorization: str | None
) -> None:
    """No credentials, or wrong ones, answer 401 asking for basic auth; nothing is stored."""
    mail = await service.sent()
    with capture_logs() as logs:
        status, answer, headers = await service.post(
            record("Delivery", mail["id"]), authorization=authorization
        )
    shown = await service.show(mail["id"])

    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert (shown["status"], shown["events"]) == ("sent", [])
    assert PASSWORD not in repr(answer) and PASSWORD not in repr(logs)


async def test_a_malformed_record_is_400_and_stores_nothing(service: Service) -> None:
    """Not JSON, no RecordType, or a record without its time: 400, nothing stored."""
    mail = await service.sent()
    bad: list[object] = [b"{not json", [record("Delivery", mail["id"])], {"MessageID": "x"}]
    bad.append({**record("Delivery", mail["id"]), "DeliveredAt": "yesterday"})
    statuses = [(await service.post(body))[0] for body in bad]

    assert statuses == [400, 400, 400, 400]
    assert (await service.show(mail["id"]))["events"] == []


async def test_a_record_for_an_unknown_mail_is_acknowledged(service: Service) -> None:
    """Postmark's test post (a mail this store lacks) answers 200 and keeps nothing."""
    status, answer, _ = await service.post(record("Delivery", None))

    assert (status, answer) == (200, counts(unknown=1))


async def test_off_without_credentials(tmp_path: Path) -> None:
    """Without MAILMAN_POSTMARK_WEBHOOK_CREDENTIALS the endpoint answers 404."""
    async with (
        FakePostmark() as pm,
        aiohttp.ClientSession() as http,
        embedded(make_config(tmp_path, {"MAILMAN_PROVIDERS": "postmark", **postmark_env(pm)})) as m,
    ):
        status, _, _ = await Service(m.url, http, pm).post(record("Delivery", "x"))
    assert status == 404


async def test_the_fake_reports_delivered_and_bounced_through_its_url(tmp_path: Path) -> None:
    """The fake posts Postmark's records to a URL with the credentials in it: one mail ends
    delivered, one to bounce@ bounced (hard), every post answered 200."""
    async with (
        FakePostmark() as pm,
        aiohttp.ClientSession() as http,
        embedded(make_config(tmp_path, env_for(pm))) as mailman,
    ):
        host = mailman.url.removeprefix("http://")
        pm.webhook_url = f"http://{USER}:{PASSWORD}@{host}{POSTMARK_PATH}"
        service = Service(mailman.url, http, pm)
        delivered = await service.wait(await service.send(), "delivered")
        bounced = await service.wait(await service.send("bounce@example.com"), "bounced")
    assert pm.webhook_answers == [200, 200]
    assert [(e["provider"], e["event"]) for e in delivered["events"]] == [("postmark", "delivered")]
    assert [(e["event"], e["bounce"], e["recipient"]) for e in bounced["events"]] == [
        ("bounced", "hard", "bounce@example.com")
    ]
    assert bounced["reason"].startswith("Hard bounce: The server was unable to deliver")


def test_credentials_are_user_password_and_never_shown(tmp_path: Path) -> None:
    """The setting takes user:password, masked in the config; anything else stops the start."""
    config = make_config(tmp_path, {"MAILMAN_POSTMARK_WEBHOOK_CREDENTIALS": CREDENTIALS})
    assert config.postmark_webhook_credentials is not None
    assert config.postmark_webhook_credentials.reveal() == CREDENTIALS
    assert PASSWORD not in repr(config)
    for bad in ("no-colon", ":password", "user:"):
        with pytest.raises(ConfigError, match="MAILMAN_POSTMARK_WEBHOOK_CREDENTIALS"):
            make_config(tmp_path, {"MAILMAN_POSTMARK_WEBHOOK_CREDENTIALS": bad})


def test_basic_auth_is_checked_whole() -> None:
    """Only the exact user:password verifies, whatever the scheme's case."""
    assert verify_basic(basic(CREDENTIALS), CREDENTIALS)
    assert verify_basic("basic " + basic(CREDENTIALS).split()[1], CREDENTIALS)
    assert not verify_basic(basic(CREDENTIALS + "x"), CREDENTIALS)
    assert not verify_basic(basic(CREDENTIALS[:-1]), CREDENTIALS)
    assert not verify_basic("Basic", CREDENTIALS)


def test_a_bounce_of_unknown_type_is_skipped() -> None:
    """Bounce types that say nothing of delivery are skipped, not guessed at."""
    assert parse_postmark(record("Bounce", "m", Type="Subscribe", ID=9)) is None
    assert parse_postmark(record("Bounce", "m", Type="SomethingNew", ID=9)) is None

"""Provider events in: SendGrid's and Mailgun's signed webhooks, posted to the running service.

Payloads are signed the way the providers sign them (a P-256 key for SendGrid,
an HMAC key for Mailgun); SendGrid's own published test vector checks the
verifier byte for byte. The provider fakes also send these webhooks themselves
after accepting a mail, so the end-to-end tests see ``delivered`` and
``bounced`` without a hand-made post.
"""

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
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

from mailman.config import ConfigError, load
from mailman.routes.webhooks import (
    MAILGUN_PATH,
    MAX_SKEW_SECONDS,
    SENDGRID_PATH,
    RecentTokens,
    sendgrid_public_key,
    verify_mailgun,
    verify_sendgrid,
)
from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.fakes import (
    FakeMailgun,
    FakeSendGrid,
    mailgun_webhook_signature,
    sendgrid_verification_key,
    sendgrid_webhook_signature,
)

# --- SendGrid's published test vector ----------------------------------------------
# From SendGrid's official Python SDK, sendgrid/sendgrid-python,
# test/unit/test_eventwebhook.py (the same vector as in its "Event Webhook
# security features" docs): the JSON with sorted keys, no spaces, and a trailing CRLF.
VECTOR_PUBLIC_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpV"
    "KS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
VECTOR_SIGNATURE = (
    "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M"
    "15TluLtEZtM="
)
VECTOR_TIMESTAMP = "1600112502"
VECTOR_PAYLOAD = (
    b'[{"email":"hello@world.com","event":"dropped","reason":"Bounced Address",'
    b'"sg_event_id":"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",'
    b'"sg_message_id":"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",'
    b'"smtp-id":"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>","timestamp":1600112492}]'
    b"\r\n"
)
#: The SDK's "bad key" case: a valid P-256 key that did not sign the vector.
VECTOR_OTHER_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWH"
    "w8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA=="
)

# --- keys of these tests ------------------------------------------------------------------
SG_KEY = ec.generate_private_key(ec.SECP256R1())
MG_SIGNING_KEY = "mg-signing-key-do-not-leak-41c9"
PROBLEM = "application/problem+json"


def test_sendgrid_published_test_vector_verifies() -> None:
    """SendGrid's published vector verifies; its bad key, payload, signature and time do not."""
    key = sendgrid_public_key(VECTOR_PUBLIC_KEY)
    assert verify_sendgrid(key, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_PAYLOAD)
    other = sendgrid_public_key(VECTOR_OTHER_KEY)
    assert not verify_sendgrid(other, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_PAYLOAD)
    assert not verify_sendgrid(key, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, b"payload")
    assert not verify_sendgrid(key, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_PAYLOAD[:-2])
    assert not verify_sendgrid(key, VECTOR_SIGNATURE, "1600112503", VECTOR_PAYLOAD)
    bad = (  # the SDK's "bad signature" case
        "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nl"
        "xFDWYNH3j/0="
    )
    assert not verify_sendgrid(key, bad, VECTOR_TIMESTAMP, VECTOR_PAYLOAD)
    assert not verify_sendgrid(key, "not base64!", VECTOR_TIMESTAMP, VECTOR_PAYLOAD)


def test_signatures_made_like_the_providers_verify() -> None:
    """A P-256 signature over timestamp + body, and Mailgun's HMAC, verify; altered ones do not."""
    key = sendgrid_public_key(sendgrid_verification_key(SG_KEY))
    body = b'[{"event":"delivered"}]\r\n'
    signature = sendgrid_webhook_signature(SG_KEY, "1700000000", body)
    assert verify_sendgrid(key, signature, "1700000000", body)
    assert not verify_sendgrid(key, signature, "1700000000", body.replace(b"delivered", b"bounce"))
    mg = mailgun_webhook_signature(MG_SIGNING_KEY, "1700000000", "t" * 50)
    assert verify_mailgun(MG_SIGNING_KEY, "1700000000", "t" * 50, mg)
    assert not verify_mailgun("another-key", "1700000000", "t" * 50, mg)
    assert not verify_mailgun(MG_SIGNING_KEY, "1700000001", "t" * 50, mg)
    assert not verify_mailgun(MG_SIGNING_KEY, "1700000000", "t" * 50, "é" + mg[1:])


def test_recent_tokens_forget_the_oldest_and_the_stale() -> None:
    """The replay memory is bounded in count and forgets tokens older than it needs."""
    tokens = RecentTokens(limit=2, keep=10)
    tokens.add("a", 0)
    tokens.add("b", 1)
    tokens.add("c", 2)
    assert "a" not in tokens and "b" in tokens and "c" in tokens
    tokens.add("d", 12)
    assert "b" not in tokens and "c" in tokens and "d" in tokens


# --- config ------------------------------------------------------------------------------


def test_config_takes_the_keys_and_masks_the_signing_key(tmp_path: Path) -> None:
    """The verification key may be base64 DER or PEM; the signing key is a masked Secret."""
    der = sendgrid_verification_key(SG_KEY)
    pem = "-----BEGIN PUBLIC KEY-----\n" + der[:64] + "\n" + der[64:] + "\n-----END PUBLIC KEY-----"
    env = {
        "MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY": pem,
        "MAILMAN_MAILGUN_WEBHOOK_SIGNING_KEY": MG_SIGNING_KEY,
    }
    config = load([], env)
    assert config.sendgrid_webhook_public_key == der
    assert config.mailgun_webhook_signing_key is not None
    assert config.mailgun_webhook_signing_key.reveal() == MG_SIGNING_KEY
    assert MG_SIGNING_KEY not in repr(config)
    defaults = load([], {})
    assert defaults.sendgrid_webhook_public_key is None
    assert defaults.mailgun_webhook_signing_key is None


@pytest.mark.parametrize(
    "key",
    ["not base64!", "aGVsbG8=", "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="],
)
def test_config_refuses_a_key_that_is_no_p256_public_key(key: str) -> None:
    """Garbage, non-DER and an Ed25519 key are refused at start, naming the variable."""
    with pytest.raises(ConfigError, match="MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY"):
        load([], {"MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY": key})


# --- the running service ---------------------------------------------------------------


@dataclass
class Service:
    """The embedded system with both webhooks on, its fakes, and ways to post to it."""

    url: str
    http: aiohttp.ClientSession
    sendgrid: FakeSendGrid
    mailgun: FakeMailgun

    async def send(self, to: str = "ann@example.com") -> str:
        body = {"to": [to], "from": "noreply@example.com", "subject": "Hi", "content": "Hi"}
        async with self.http.post(f"{self.url}/mail/send", json=body) as resp:
            assert resp.status == 201, await resp.text()
            mail_id: str = (await resp.json())["mail"]["id"]
            return mail_id

    async def show(self, mail_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/mail/{mail_id}") as resp:
            assert resp.status == 200
            mail: dict[str, Any] = (await resp.json())["mail"]
            return mail

    async def wait(self, mail_id: str, status: str) -> dict[str, Any]:
        """The mail once it has ``status``."""
        shown: dict[str, Any] = {}

        async def reached() -> bool:
            shown.update(await self.show(mail_id))
            return bool(shown["status"] == status)

        await eventually(reached, what=f"{mail_id} {status}")
        return shown

    async def sent(self, to: str = "ann@example.com") -> dict[str, Any]:
        """A new mail, once a provider took it."""
        return await self.wait(await self.send(to), "sent")

    async def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.url}{path}", data=body, headers=headers) as resp:
            answer: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 400:
                assert resp.content_type == PROBLEM
            return resp.status, answer

    async def post_sendgrid(
        self,
        events: list[dict[str, Any]] | bytes,
        *,
        timestamp: str | None = None,
        key: ec.EllipticCurvePrivateKey = SG_KEY,
        signed: bytes | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Post ``events`` as SendGrid does (``signed``: the body the signature is made over)."""
        body = events if isinstance(events, bytes) else orjson.dumps(events) + b"\r\n"
        timestamp = timestamp or str(int(time.time()))
        signature = sendgrid_webhook_signature(key, timestamp, body if signed is None else signed)
        headers = {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            "X-Twilio-Email-Event-Webhook-Signature": signature,
        }
        return await self.post(SENDGRID_PATH, body, headers)

    async def post_mailgun(
        self,
        event_data: object,
        *,
        timestamp: str | None = None,
        token: str | None = None,
        key: str = MG_SIGNING_KEY,
    ) -> tuple[int, dict[str, Any]]:
        """Post one event as Mailgun does."""
        return await self.post(
            MAILGUN_PATH, mailgun_body(event_data, timestamp, token, key), JSON_HEADERS
        )


JSON_HEADERS = {"Content-Type": "application/json"}


def mailgun_body(
    event_data: object,
    timestamp: str | None = None,
    token: str | None = None,
    key: str = MG_SIGNING_KEY,
) -> bytes:
    timestamp = timestamp or str(int(time.time()))
    token = token or secrets.token_hex(25)
    signature = mailgun_webhook_signature(key, timestamp, token)
    return orjson.dumps(
        {
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": event_data,
        }
    )


def sg_event(mail_id: str | None, event: str, **fields: Any) -> dict[str, Any]:
    """One SendGrid event about ``mail_id`` (its custom_args at top level)."""
    out = {
        "email": "ann@example.com",
        "timestamp": int(time.time()),
        "event": event,
        "sg_event_id": secrets.token_urlsafe(16),
        **fields,
    }
    if mail_id is not None:
        out["mail_id"] = mail_id
    return out


def mg_event(mail_id: str | None, event: str, **fields: Any) -> dict[str, Any]:
    """One Mailgun ``event-data`` about ``mail_id`` (in its user-variables)."""
    return {
        "event": event,
        "id": secrets.token_urlsafe(16),
        "timestamp": time.time(),
        "recipient": "ann@example.com",
        "user-variables": {} if mail_id is None else {"mail_id": mail_id},
        **fields,
    }


def counts(recorded: int = 0, duplicate: int = 0, unknown: int = 0, skipped: int = 0) -> Any:
    return {"recorded": recorded, "duplicate": duplicate, "unknown": unknown, "skipped": skipped}


def webhook_env(sg: FakeSendGrid, mg: FakeMailgun, **extra: str) -> dict[str, str]:
    return provider_env(
        sg,
        mg,
        MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY=sendgrid_verification_key(SG_KEY),
        MAILMAN_MAILGUN_WEBHOOK_SIGNING_KEY=MG_SIGNING_KEY,
        **extra,
    )


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    """Mailman with both webhooks on and the fakes behind it (sending no webhooks themselves)."""
    async with (
        FakeSendGrid() as sg,
        FakeMailgun() as mg,
        aiohttp.ClientSession() as http,
        embedded(make_config(tmp_path, webhook_env(sg, mg))) as mailman,
    ):
        yield Service(mailman.url, http, sg, mg)


async def test_sendgrid_delivered_moves_sent_to_delivered(service: Service) -> None:
    """A signed SendGrid batch (processed, delivered) is kept whole and moves the mail to
    delivered; processed, for a mail already sent, moves nothing."""
    mail = await service.sent()
    with capture_logs() as logs:
        answer = await service.post_sendgrid(
            [
                sg_event(mail["id"], "processed"),
                sg_event(mail["id"], "delivered", response="250 OK"),
            ]
        )
    assert answer == (200, counts(recorded=2))
    shown = await service.show(mail["id"])
    assert shown["status"] == "delivered"
    assert shown["provider_message_id"] == mail["provider_message_id"]
    processed, event = shown["events"]
    assert (processed["provider"], processed["event"]) == ("sendgrid", "processed")
    assert event["provider"] == "sendgrid"
    assert event["event"] == "delivered"
    assert event["recipient"] == "ann@example.com"
    (line,) = [e for e in logs if e["event"] == "webhook.received"]
    assert line["provider"] == "sendgrid"
    assert (line["events"], line["recorded"], line["skipped"]) == (2, 2, 0)


async def test_mailgun_delivered_moves_sent_to_delivered(service: Service) -> None:
    """A signed Mailgun delivered event moves the mail to delivered; accepted is skipped."""
    mail = await service.sent()
    assert await service.post_mailgun(mg_event(mail["id"], "accepted")) == (
        200,
        counts(skipped=1),
    )
    assert await service.post_mailgun(mg_event(mail["id"], "delivered")) == (
        200,
        counts(recorded=1),
    )
    shown = await service.show(mail["id"])
    assert shown["status"] == "delivered"
    assert [(e["provider"], e["event"]) for e in shown["events"]] == [("mailgun", "delivered")]


async def test_sendgrid_matches_by_message_id_without_custom_args(service: Service) -> None:
    """Without mail_id, SendGrid's sg_message_id (X-Message-Id, a dot, more) finds the mail."""
    mail = await service.sent()
    sg_message_id = f"{mail['provider_message_id']}.filterdrecv-p3mdw1-756b-18-5F5FC76C-9.0"
    status, answer = await service.post_sendgrid(
        [sg_event(None, "delivered", sg_message_id=sg_message_id)]
    )
    assert (status, answer) == (200, counts(recorded=1))
    assert (await service.show(mail["id"]))["status"] == "delivered"


async def test_mailgun_matches_by_message_id_without_user_variables(service: Service) -> None:
    """Without v:mail_id, Mailgun's message-id (no angle brackets) finds a mail Mailgun took."""
    service.sendgrid.mode = "503"
    mail = await service.sent()
    assert mail["provider"] == "mailgun"
    assert mail["provider_message_id"].startswith("<")
    headers = {"message-id": mail["provider_message_id"].strip("<>")}
    event = mg_event(None, "delivered", message={"headers": headers})
    assert await service.post_mailgun(event) == (200, counts(recorded=1))
    assert (await service.show(mail["id"]))["status"] == "delivered"


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
async def test_hard_bounce_moves_to_bounced_with_reason(service: Service, provider: str) -> None:
    """A hard bounce (SendGrid bounce/bounce, Mailgun failed/permanent) ends bounced, with why."""
    mail = await service.sent()
    if provider == "sendgrid":
        why = "550 5.1.1 The email account that you tried to reach does not exist."
        answer = await service.post_sendgrid(
            [sg_event(mail["id"], "bounce", type="bounce", status="5.1.1", reason=why)]
        )
    else:
        why = "bounce: 550 5.1.1 No such user"
        status = {"code": 550, "message": "", "description": "550 5.1.1 No such user"}
        event = mg_event(
            mail["id"],
            "failed",
            severity="permanent",
            reason="bounce",
            **{"delivery-status": status},
        )
        answer = await service.post_mailgun(event)
    assert answer == (200, counts(recorded=1))
    shown = await service.show(mail["id"])
    assert shown["status"] == "bounced"
    assert shown["reason"] == why
    (event,) = shown["events"]
    assert (event["event"], event["bounce"], event["reason"]) == ("bounced", "hard", why)


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
async def test_soft_bounce_keeps_the_status(service: Service, provider: str) -> None:
    """A soft bounce (SendGrid blocked, Mailgun temporary) is kept but moves nothing."""
    mail = await service.sent()
    if provider == "sendgrid":
        answer = await service.post_sendgrid(
            [sg_event(mail["id"], "bounce", type="blocked", reason="421 try later")]
        )
    else:
        event = mg_event(mail["id"], "failed", severity="temporary", reason="generic")
        answer = await service.post_mailgun(event)
    assert answer == (200, counts(recorded=1))
    shown = await service.show(mail["id"])
    assert shown["status"] == "sent"
    assert [(e["event"], e["bounce"]) for e in shown["events"]] == [("bounced", "soft")]


async def test_duplicates_are_kept_once(service: Service) -> None:
    """The same SendGrid event (sg_event_id) and the same Mailgun token count once."""
    mail = await service.sent()
    batch = [sg_event(mail["id"], "delivered"), sg_event(mail["id"], "open")]
    assert await service.post_sendgrid(batch) == (200, counts(recorded=2))
    assert await service.post_sendgrid(batch) == (200, counts(duplicate=2))
    body = mailgun_body(mg_event(mail["id"], "clicked"))
    assert await service.post(MAILGUN_PATH, body, JSON_HEADERS) == (200, counts(recorded=1))
    assert await service.post(MAILGUN_PATH, body, JSON_HEADERS) == (200, counts(duplicate=1))
    shown = await service.show(mail["id"])
    assert sorted(e["event"] for e in shown["events"]) == ["clicked", "delivered", "opened"]


async def test_out_of_order_events_never_move_a_status_backwards(service: Service) -> None:
    """A delivered event arriving after the hard bounce leaves the mail bounced; both are kept."""
    mail = await service.sent()
    earlier = int(time.time()) - 60
    bounce = sg_event(mail["id"], "bounce", type="bounce", reason="550 gone")
    delivered = sg_event(mail["id"], "delivered", timestamp=earlier)
    assert await service.post_sendgrid([bounce]) == (200, counts(recorded=1))
    assert await service.post_sendgrid([delivered]) == (200, counts(recorded=1))
    shown = await service.show(mail["id"])
    assert shown["status"] == "bounced"
    assert [e["event"] for e in shown["events"]] == ["delivered", "bounced"]  # oldest first
    # A delivery reported after a hard bounce on Mailgun's side: still bounced.
    assert await service.post_mailgun(mg_event(mail["id"], "delivered")) == (
        200,
        counts(recorded=1),
    )
    assert (await service.show(mail["id"]))["status"] == "bounced"


async def test_events_for_unknown_mails_are_acknowledged_and_logged(service: Service) -> None:
    """Events for no mail of ours get 200 (the provider stops) and a webhook.unknown_mail line."""
    stranger = "01HZZZZZZZZZZZZZZZZZZZZZZZ"
    with capture_logs() as logs:
        answer = await service.post_sendgrid(
            [
                sg_event(stranger, "delivered"),
                sg_event(None, "delivered", sg_message_id="nosuchid.filterdrecv-1"),
                sg_event(None, "bounce"),  # an async bounce: no sg_message_id at all
            ]
        )
        assert answer == (200, counts(unknown=3))
        assert await service.post_mailgun(mg_event(stranger, "delivered")) == (
            200,
            counts(unknown=1),
        )
    unknown = [e for e in logs if e["event"] == "webhook.unknown_mail"]
    assert [(e["provider"], e["mail_id"]) for e in unknown] == [
        ("sendgrid", stranger),
        ("sendgrid", None),
        ("sendgrid", None),
        ("mailgun", stranger),
    ]
    assert unknown[1]["message_id"] == "nosuchid"


async def test_a_bad_signature_is_403_and_stores_nothing(service: Service) -> None:
    """A wrong key, a body other than the one signed, or a mangled signature: 403, nothing kept."""
    mail = await service.sent()
    events = [sg_event(mail["id"], "delivered")]
    other = ec.generate_private_key(ec.SECP256R1())
    with capture_logs() as logs:
        for status, problem in (
            await service.post_sendgrid(events, key=other),
            await service.post_sendgrid(events, signed=b"[]"),
            await service.post_mailgun(mg_event(mail["id"], "delivered"), key="wrong-key"),
        ):
            assert status == 403
            assert problem["type"].endswith("/signature-invalid")
            assert MG_SIGNING_KEY not in str(problem)
        garbled = {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time())),
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(b"nonsense").decode(),
        }
        status, _ = await service.post(SENDGRID_PATH, orjson.dumps(events), garbled)
        assert status == 403
    assert MG_SIGNING_KEY not in str(logs)
    shown = await service.show(mail["id"])
    assert (shown["status"], shown["events"]) == ("sent", [])


async def test_a_missing_signature_is_401(service: Service) -> None:
    """No SendGrid signature headers, or no Mailgun signature object: 401, nothing kept."""
    mail = await service.sent()
    body = orjson.dumps([sg_event(mail["id"], "delivered")])
    status, problem = await service.post(SENDGRID_PATH, body, JSON_HEADERS)
    assert status == 401
    assert problem["type"].endswith("/signature-missing")
    only_time = {**JSON_HEADERS, "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()))}
    assert (await service.post(SENDGRID_PATH, body, only_time))[0] == 401
    for unsigned in (
        {"event-data": mg_event(mail["id"], "delivered")},
        {"signature": {"timestamp": "1", "token": ""}, "event-data": {}},
    ):
        status, problem = await service.post(MAILGUN_PATH, orjson.dumps(unsigned), JSON_HEADERS)
        assert status == 401
        assert problem["type"].endswith("/signature-missing")
    assert (await service.show(mail["id"]))["events"] == []


@pytest.mark.parametrize("skew", [-(MAX_SKEW_SECONDS + 5), MAX_SKEW_SECONDS + 60])
async def test_a_stale_timestamp_is_refused(service: Service, skew: float) -> None:
    """Correctly signed, but too old or too far ahead: 403 signature-stale, nothing kept."""
    mail = await service.sent()
    timestamp = str(int(time.time() + skew))
    for status, problem in (
        await service.post_sendgrid([sg_event(mail["id"], "delivered")], timestamp=timestamp),
        await service.post_mailgun(mg_event(mail["id"], "delivered"), timestamp=timestamp),
    ):
        assert status == 403
        assert problem["type"].endswith("/signature-stale")
    assert (await service.show(mail["id"]))["events"] == []


async def test_a_replayed_mailgun_token_is_not_processed_again(service: Service) -> None:
    """A replayed token is refused as new: acknowledged as a duplicate, even for unknown mails."""
    stranger = "01HZZZZZZZZZZZZZZZZZZZZZZZ"
    token = secrets.token_hex(25)
    with capture_logs() as logs:
        first = await service.post_mailgun(mg_event(stranger, "delivered"), token=token)
        again = await service.post_mailgun(mg_event(stranger, "delivered"), token=token)
    assert first == (200, counts(unknown=1))
    assert again == (200, counts(duplicate=1))
    assert len([e for e in logs if e["event"] == "webhook.unknown_mail"]) == 1
    # A mail of ours: the replay of a recorded token changes nothing either.
    mail = await service.sent()
    token = secrets.token_hex(25)
    bounce = mg_event(mail["id"], "failed", severity="permanent", reason="bounce")
    assert await service.post_mailgun(bounce, token=token) == (200, counts(recorded=1))
    delivered = mg_event(mail["id"], "delivered")
    assert await service.post_mailgun(delivered, token=token) == (200, counts(duplicate=1))
    shown = await service.show(mail["id"])
    assert [e["event"] for e in shown["events"]] == ["bounced"]


async def test_a_malformed_body_is_400_and_stores_nothing(service: Service) -> None:
    """Signed but not JSON, not an array of events, an event without its id: 400, never a 500."""
    mail = await service.sent()
    for body, problem_type, field in (
        (b"not json", "/malformed-json", None),
        (orjson.dumps({"event": "delivered"}), "/bad-request", None),
        (orjson.dumps(["delivered"]), "/bad-request", "[0]"),
        (orjson.dumps([{"event": "delivered", "timestamp": 1}]), "/bad-request", "[0].sg_event_id"),
        (orjson.dumps([{"event": "open", "sg_event_id": "x"}]), "/bad-request", "[0].timestamp"),
    ):
        status, problem = await service.post_sendgrid(body)
        assert status == 400, body
        assert problem["type"].endswith(problem_type)
        if field is not None:
            assert [e["field"] for e in problem["errors"]] == [field]
    assert (await service.post(MAILGUN_PATH, b"{nope", JSON_HEADERS))[0] == 400
    assert (await service.post(MAILGUN_PATH, b"[]", JSON_HEADERS))[0] == 400
    for event_data in (None, {"event": "delivered"}, {"event": 7}):
        status, problem = await service.post_mailgun(event_data)
        assert status == 400, event_data
        assert problem["errors"][0]["field"].startswith("event-data")
    assert (await service.show(mail["id"]))["events"] == []


async def test_published_vector_reaches_the_verifier_and_is_refused_as_stale(
    tmp_path: Path,
) -> None:
    """Posted to a service keyed with the vector's key, the 2020 vector is refused as stale."""
    env = {"MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY": VECTOR_PUBLIC_KEY}
    async with embedded(make_config(tmp_path, env)) as mailman, aiohttp.ClientSession() as http:
        headers = {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Timestamp": VECTOR_TIMESTAMP,
            "X-Twilio-Email-Event-Webhook-Signature": VECTOR_SIGNATURE,
        }
        async with http.post(
            f"{mailman.url}{SENDGRID_PATH}", data=VECTOR_PAYLOAD, headers=headers
        ) as resp:
            assert resp.status == 403
            assert (await resp.json(content_type=None))["type"].endswith("/signature-stale")


async def test_endpoints_are_off_without_keys(tmp_path: Path) -> None:
    """With no key configured, both webhook endpoints answer 404 problems, signed or not."""
    async with embedded(make_config(tmp_path)) as mailman, aiohttp.ClientSession() as http:
        for path in (SENDGRID_PATH, MAILGUN_PATH):
            async with http.post(f"{mailman.url}{path}", data=b"[]", headers=JSON_HEADERS) as resp:
                assert resp.status == 404
                assert resp.content_type == PROBLEM
                assert (await resp.json(content_type=None))["type"].endswith("/not-found")


# --- end to end: the fakes send the webhooks themselves -------------------------------------


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
async def test_fakes_report_delivered_and_bounced_by_webhook(tmp_path: Path, provider: str) -> None:
    """With webhooks from the fakes, one mail ends delivered and one to bounce@ ends bounced."""
    async with (
        FakeSendGrid(webhook_private_key=SG_KEY) as sg,
        FakeMailgun(webhook_signing_key=MG_SIGNING_KEY) as mg,
        aiohttp.ClientSession() as http,
    ):
        env = webhook_env(sg, mg, MAILMAN_PROVIDERS=provider)
        async with embedded(make_config(tmp_path, env)) as mailman:
            sg.webhook_url = f"{mailman.url}{SENDGRID_PATH}"
            mg.webhook_url = f"{mailman.url}{MAILGUN_PATH}"
            service = Service(mailman.url, http, sg, mg)
            delivered = await service.wait(await service.send("ann@example.com"), "delivered")
            bounced = await service.wait(await service.send("bounce@example.com"), "bounced")
        fake = sg if provider == "sendgrid" else mg
    assert fake.webhook_answers and set(fake.webhook_answers) == {200}
    kept = [(provider, "delivered")]
    if provider == "sendgrid":  # SendGrid's processed is kept too (Mailgun's accepted is not)
        kept.insert(0, (provider, "processed"))
    assert [(e["provider"], e["event"]) for e in delivered["events"]] == kept
    events = [e for e in bounced["events"] if e["event"] != "processed"]
    assert [(e["provider"], e["event"], e["bounce"]) for e in events] == [
        (provider, "bounced", "hard")
    ]
    assert "does not exist" in bounced["reason"]
    assert events[0]["recipient"] == "bounce@example.com"


async def test_a_fake_tries_a_refused_webhook_again_without_holding_up_the_send(
    tmp_path: Path,
) -> None:
    """Posting to a service with webhooks off, the fake tries 3 times; the mail is sent anyway."""
    async with FakeSendGrid(webhook_private_key=SG_KEY) as sg, FakeMailgun() as mg:
        env = provider_env(sg, mg, MAILMAN_PROVIDERS="sendgrid")
        async with embedded(make_config(tmp_path, env)) as mailman, aiohttp.ClientSession() as http:
            sg.webhook_url = f"{mailman.url}{SENDGRID_PATH}"
            service = Service(mailman.url, http, sg, mg)
            mail = await service.sent()
            await eventually(lambda: len(sg.webhook_answers) == 3, what="three tries")
            shown = await service.show(mail["id"])
        assert sg.webhook_answers == [404, 404, 404]
        assert (shown["status"], shown["events"]) == ("sent", [])

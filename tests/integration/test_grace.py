"""A lost answer from SendGrid or SES waits for the provider's own event before the mail
is sent again (``MAILMAN_UNKNOWN_GRACE_SECONDS``, their webhooks on).

The whole system, embedded, on real fakes: the provider takes the mail and drops the
connection unanswered (an ``unknown`` attempt). The tests post the provider's signed
event themselves, once the mail is seen waiting, so the order is the test's.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.fake_ses import FakeSes, isolate_aws
from ..support.fakes import FakeMailgun, FakeSendGrid
from .test_ses_events import LOOPBACK
from .test_webhooks import Service, sg_event, webhook_env


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def waiting(
    logs: Sequence[MutableMapping[str, Any]], mail_id: str, provider: str = "sendgrid"
) -> bool:
    """Whether the mail was seen waiting for ``provider``'s event."""
    return any(
        e["event"] == "attempt.waiting" and e["mail_id"] == mail_id and e["provider"] == provider
        for e in logs
    )


async def processed(service: Service, mail_id: str, message_id: str) -> None:
    """SendGrid's signed ``processed`` event for the mail, as its Event Webhook posts it."""
    event = sg_event(mail_id, "processed", sg_message_id=f"{message_id}.filterdrecv-1-0.0")
    assert await service.post_sendgrid([event]) == (
        200,
        {"recorded": 1, "duplicate": 0, "unknown": 0, "skipped": 0},
    )


async def test_sendgrid_processed_event_settles_a_lost_answer_as_sent(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SendGrid takes the mail and drops the answer; its processed event comes within the
    grace: the mail is sent by SendGrid, once, with its message id; Mailgun never called."""
    async with FakeSendGrid(mode="drop") as sg, FakeMailgun() as mg:
        env = webhook_env(sg, mg, MAILMAN_UNKNOWN_GRACE_SECONDS="60")
        async with embedded(make_config(tmp_path, env)) as mailman:
            service = Service(mailman.url, http, sg, mg)
            with capture_logs() as logs:
                mail_id = await service.send()
                await eventually(lambda: waiting(logs, mail_id), what="the mail waiting")
            await processed(service, mail_id, sg.message_ids[0])
            shown = await service.wait(mail_id, "sent")
    assert sg.mail_ids() == [mail_id] and mg.calls == 0
    assert (shown["provider"], shown["provider_message_id"]) == ("sendgrid", sg.message_ids[0])
    (attempt,) = shown["attempts"]
    assert (attempt["provider"], attempt["outcome"], attempt["checked"]) == (
        "sendgrid",
        "unknown",
        "taken",
    )
    assert attempt["message_id"] == sg.message_ids[0]
    assert [e["event"] for e in shown["events"]] == ["processed"]


async def test_no_event_within_the_grace_fails_over_once(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """No processed event within a short grace: the attempt is checked cannot-check (no
    event) and the mail goes to Mailgun, once."""
    async with FakeSendGrid(mode="drop") as sg, FakeMailgun() as mg:
        env = webhook_env(sg, mg, MAILMAN_UNKNOWN_GRACE_SECONDS="0.5")
        async with embedded(make_config(tmp_path, env)) as mailman:
            service = Service(mailman.url, http, sg, mg)
            with capture_logs() as logs:
                mail_id = await service.send()
                shown = await service.wait(mail_id, "sent")
    assert waiting(logs, mail_id)
    assert sg.mail_ids() == [mail_id] and mg.mail_ids() == [mail_id]
    assert shown["provider"] == "mailgun"
    first, second = shown["attempts"]
    assert (first["provider"], first["outcome"], first["checked"]) == (
        "sendgrid",
        "unknown",
        "cannot-check",
    )
    assert "no event from sendgrid that it took the mail within 0.5 s" in first["reason"]
    assert (second["provider"], second["outcome"]) == ("mailgun", "accepted")


async def test_without_the_webhook_a_lost_answer_is_sent_again_at_once(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SendGrid's webhook off: nothing waits; the mail goes to Mailgun as before."""
    async with FakeSendGrid(mode="drop") as sg, FakeMailgun() as mg:
        env = provider_env(sg, mg, MAILMAN_UNKNOWN_GRACE_SECONDS="60")
        async with embedded(make_config(tmp_path, env)) as mailman:
            service = Service(mailman.url, http, sg, mg)
            with capture_logs() as logs:
                mail_id = await service.send()
                shown = await service.wait(mail_id, "sent")
    assert not waiting(logs, mail_id)
    assert shown["provider"] == "mailgun" and mg.mail_ids() == [mail_id]
    assert shown["attempts"][0]["checked"] == "cannot-check"
    assert "SendGrid has no lookup" in shown["attempts"][0]["reason"]


async def test_the_wait_survives_a_restart(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Stopped while the mail waits, the system started again on the same store waits on:
    the event that comes then settles the mail sent, Mailgun never called."""
    async with FakeSendGrid(mode="drop") as sg, FakeMailgun() as mg:
        config = make_config(tmp_path, webhook_env(sg, mg, MAILMAN_UNKNOWN_GRACE_SECONDS="60"))
        with capture_logs() as logs:
            async with embedded(config) as mailman:
                mail_id = await Service(mailman.url, http, sg, mg).send()
                await eventually(lambda: waiting(logs, mail_id), what="the mail waiting")
        with capture_logs() as logs:
            async with embedded(config) as mailman:
                service = Service(mailman.url, http, sg, mg)
                await eventually(lambda: waiting(logs, mail_id), what="waiting after the restart")
                await processed(service, mail_id, sg.message_ids[0])
                shown = await service.wait(mail_id, "sent")
    assert sg.mail_ids() == [mail_id] and mg.calls == 0
    assert shown["provider"] == "sendgrid"
    assert [(a["outcome"], a["checked"]) for a in shown["attempts"]] == [("unknown", "taken")]


async def test_ses_send_event_settles_a_lost_answer_as_sent(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SES takes the mail and drops the answer; its Send event comes through SNS within the
    grace: the mail is sent by SES, once, with SES's message id; Mailgun never called."""
    async with FakeSes(mode="drop") as ses, FakeSendGrid() as sg, FakeMailgun() as mg:
        isolate_aws(monkeypatch, ses.env())
        env = provider_env(
            sg,
            mg,
            MAILMAN_PROVIDERS="ses,mailgun",
            SES_REGION=ses.region,
            SES_ENDPOINT_URL=ses.base_url,
            MAILMAN_SES_SNS_TOPIC_ARNS=ses.topic_arn,
            MAILMAN_SNS_HOST_PATTERN=LOOPBACK,
            MAILMAN_UNKNOWN_GRACE_SECONDS="60",
        )
        async with embedded(make_config(tmp_path, env)) as mailman:
            service = Service(mailman.url, http, sg, mg)
            with capture_logs() as logs:
                mail_id = await service.send()
                await eventually(lambda: waiting(logs, mail_id, "ses"), what="the mail waiting")
            event = ses.ses_event("Send", ses.mail_ids().index(mail_id))
            notification = ses.sns_message("Notification", orjson.dumps(event).decode())
            status, _ = await service.post("/webhooks/ses", orjson.dumps(notification), {})
            assert status == 200
            shown = await service.wait(mail_id, "sent")
    assert ses.mail_ids() == [mail_id] and mg.calls == 0
    assert (shown["provider"], shown["provider_message_id"]) == ("ses", ses.message_ids[0])
    assert [(a["provider"], a["outcome"], a["checked"]) for a in shown["attempts"]] == [
        ("ses", "unknown", "taken")
    ]


async def test_an_event_for_a_mail_already_sent_elsewhere_moves_nothing(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A processed event that comes after the grace, the mail sent by Mailgun meanwhile: kept
    in the history, the mail stays Mailgun's, the checked attempt is not rewritten."""
    async with FakeSendGrid(mode="drop") as sg, FakeMailgun() as mg:
        env = webhook_env(sg, mg, MAILMAN_UNKNOWN_GRACE_SECONDS="0.1")
        async with embedded(make_config(tmp_path, env)) as mailman:
            service = Service(mailman.url, http, sg, mg)
            mail_id = await service.send()
            await service.wait(mail_id, "sent")
            await processed(service, mail_id, secrets.token_hex(8))
            shown = await service.show(mail_id)
    assert (shown["status"], shown["provider"]) == ("sent", "mailgun")
    assert shown["provider_message_id"] == mg.message_ids[0]
    assert shown["attempts"][0]["checked"] == "cannot-check"
    assert [e["event"] for e in shown["events"]] == ["processed"]


async def test_with_hold_no_event_holds_the_mail_and_a_late_event_settles_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """MAILMAN_UNKNOWN_POLICY=hold: no event within the grace holds the mail unknown, not
    sent again; SendGrid's processed event coming later makes it sent."""
    async with FakeSendGrid(mode="drop") as sg, FakeMailgun() as mg:
        env = webhook_env(
            sg, mg, MAILMAN_UNKNOWN_GRACE_SECONDS="0.2", MAILMAN_UNKNOWN_POLICY="hold"
        )
        async with embedded(make_config(tmp_path, env)) as mailman:
            service = Service(mailman.url, http, sg, mg)
            mail_id = await service.send()
            held = await service.wait(mail_id, "unknown")
            await processed(service, mail_id, sg.message_ids[0])
            shown = await service.wait(mail_id, "sent")
    assert sg.mail_ids() == [mail_id] and mg.calls == 0
    assert "no event from sendgrid" in held["attempts"][0]["reason"]
    assert (shown["provider"], shown["provider_message_id"]) == ("sendgrid", sg.message_ids[0])

"""SES events through SNS: POST /webhooks/ses verifies SNS signatures, confirms subscriptions,
maps SES's events, and stores nothing it cannot verify."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from mailman.config import ConfigError
from mailman.system import embedded

from ..conftest import eventually, make_config
from ..support.fake_ses import FakeSes, isolate_aws, sns_certificate
from .test_system import Api

PATH = "/webhooks/ses"
LOOPBACK = r"http://127\.0\.0\.1:[0-9]+"


def ses_env(ses: FakeSes, **extra: str) -> dict[str, str]:
    return {
        "MAILMAN_PROVIDERS": "ses",
        "SES_REGION": ses.region,
        "SES_ENDPOINT_URL": ses.base_url,
        "MAILMAN_SES_SNS_TOPIC_ARNS": ses.topic_arn,
        "MAILMAN_SNS_HOST_PATTERN": LOOPBACK,
        **extra,
    }


@dataclass
class Service:
    api: Api
    ses: FakeSes

    async def post(self, message: dict[str, Any] | bytes) -> tuple[int, dict[str, Any]]:
        body = message if isinstance(message, bytes) else orjson.dumps(message)
        headers = {"Content-Type": "text/plain; charset=UTF-8"}
        async with self.api.http.post(f"{self.api.url}{PATH}", data=body, headers=headers) as r:
            answer: dict[str, Any] = await r.json(content_type=None)
            return r.status, answer

    async def sent(self, to: str = "ann@example.com") -> tuple[str, int]:
        """A mail SES took: its id, and its index in the fake's records."""
        mail_id = await self.api.send(to=[to])
        await self.api.wait_status(mail_id, "sent")
        return mail_id, self.ses.mail_ids().index(mail_id)

    def notification(self, event: dict[str, Any], **changes: Any) -> dict[str, Any]:
        return self.ses.sns_message("Notification", orjson.dumps(event).decode(), **changes)


@pytest.fixture
async def service(
    tmp_path: Path, ses: FakeSes, http: aiohttp.ClientSession
) -> AsyncIterator[Service]:
    """Mailman sending through the SES fake, taking its topic's events at /webhooks/ses."""
    async with embedded(make_config(tmp_path, ses_env(ses))) as mailman:
        yield Service(Api(http, mailman.url), ses)


def counts(recorded: int = 0, duplicate: int = 0, unknown: int = 0, skipped: int = 0) -> Any:
    return {"recorded": recorded, "duplicate": duplicate, "unknown": unknown, "skipped": skipped}


@pytest.mark.parametrize("version", ["1", "2"])
async def test_the_fake_reports_delivered_and_bounced_through_sns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession, version: str
) -> None:
    """SES's events, posted by SNS signed with SHA1 (version 1) or SHA256 (2), move one mail
    to delivered and one to bounce@ to bounced (hard, with SES's reason); the signing
    certificate is fetched once."""
    async with FakeSes(signature_version=version) as ses:
        isolate_aws(monkeypatch, ses.env())
        async with embedded(make_config(tmp_path, ses_env(ses))) as mailman:
            ses.webhook_url = f"{mailman.url}{PATH}"
            api = Api(http, mailman.url)
            delivered = await api.send(to=["ann@example.com"])
            bounced = await api.send(to=["bounce@example.com"])
            await api.wait_status(delivered, "delivered")
            await api.wait_status(bounced, "bounced")
            shown = {m: await api.show(m) for m in (delivered, bounced)}
    assert set(ses.webhook_answers) == {200}
    assert [(e["provider"], e["event"], e["recipient"]) for e in shown[delivered]["events"]] == [
        ("ses", "processed", None),
        ("ses", "delivered", "ann@example.com"),
    ]
    _, bounce = shown[bounced]["events"]
    assert (bounce["event"], bounce["bounce"]) == ("bounced", "hard")
    assert "does not exist" in bounce["reason"] and "Permanent" in bounce["reason"]
    assert ses.cert_fetches == 1


@pytest.mark.slow
async def test_the_fake_tries_a_post_again_as_snss_delivery_policy_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession
) -> None:
    """A post SNS gets no 2xx for is tried again 3 times (SNS's default), the policy's
    delay apart; the mail is sent all the same."""
    async with FakeSes() as ses:
        ses.sns_retry_seconds = 0.2
        isolate_aws(monkeypatch, ses.env())
        env = ses_env(ses, MAILMAN_SES_SNS_TOPIC_ARNS="")  # the endpoint off: 404
        async with embedded(make_config(tmp_path, env)) as mailman:
            ses.webhook_url = f"{mailman.url}{PATH}"
            api = Api(http, mailman.url)
            began = time.monotonic()
            mail_id = await api.send(to=["ann@example.com"])
            await api.wait_status(mail_id, "sent")
            await eventually(lambda: len(ses.webhook_answers) == 2 * 4, what="4 tries of 2 posts")
            took = time.monotonic() - began
    assert ses.webhook_answers == [404] * 8
    assert took >= 2 * 3 * 0.2


def test_the_fakes_retries_are_jittered_never_shorter_than_the_policy() -> None:
    """The fake waits SNS's delay and up to half of it more before a retry, drawn for each
    wait: posts that failed together do not come back in step."""
    ses = FakeSes()
    ses.sns_retry_seconds = 1.0
    waits = [ses.webhook_retry_wait(retry) for retry in range(1, 4) for _ in range(50)]
    assert all(1.0 <= wait <= 1.5 for wait in waits)
    assert len(set(waits)) > 1


async def test_subscription_confirmation_visits_the_subscribe_url(service: Service) -> None:
    """A signed SubscriptionConfirmation for the topic is confirmed by visiting its
    SubscribeURL; a signed UnsubscribeConfirmation is acknowledged."""
    confirm = service.ses.sns_message("SubscriptionConfirmation", "You have chosen to subscribe")
    status, answer = await service.post(confirm)
    bye = service.ses.sns_message(
        "UnsubscribeConfirmation", "unsubscribed", Token="t" * 64, SubscribeURL="http://x/"
    )
    bye_status, _ = await service.post(bye)

    assert (status, answer) == (200, counts())
    assert service.ses.confirmations == [confirm["Token"]]
    assert bye_status == 200


async def test_a_subscribe_url_off_the_sns_host_is_not_visited(service: Service) -> None:
    """A well-signed SubscriptionConfirmation whose SubscribeURL is not on an SNS host is
    refused (403) and the URL is never visited."""
    port = service.ses.base_url.rpartition(":")[2]
    confirm = service.ses.sns_message(
        "SubscriptionConfirmation",
        "subscribe",
        SubscribeURL=f"http://localhost:{port}/confirm?Action=ConfirmSubscription&Token=x",
    )
    status, answer = await service.post(confirm)

    assert status == 403 and "SubscribeURL" in answer["detail"]
    assert service.ses.confirmations == []


async def test_forged_and_unsigned_posts_are_refused_and_store_nothing(service: Service) -> None:
    """Unsigned: 401. A certificate off the SNS host (never fetched), a foreign topic, another
    key, a changed message, an unknown signature version, a URL that is no .pem: 403. The
    mail keeps no event and stays sent."""
    mail_id, index = await service.sent()
    ses = service.ses
    delivery = ses.ses_event("Delivery", index, recipients=["ann@example.com"])
    port = ses.base_url.rpartition(":")[2]
    off_host = service.notification(delivery, cert_url=f"http://localhost:{port}{ses.cert_path}")
    unsigned = service.notification(delivery)
    del unsigned["Signature"]
    foreign = service.notification(delivery, topic_arn="arn:aws:sns:us-east-1:999999999999:x")
    forged = service.notification(delivery, key=sns_certificate("forger").key)
    changed = service.notification(delivery)
    changed["Message"] = changed["Message"].replace("Delivery", "Bounce")
    version = service.notification(delivery)
    version["SignatureVersion"] = "3"
    not_pem = service.notification(delivery, cert_url=f"{ses.base_url}/cert.txt")

    answers = [await service.post(m) for m in (off_host, unsigned)]
    assert ses.cert_fetches == 0  # the certificate off the SNS host was never fetched
    answers += [await service.post(m) for m in (foreign, forged, changed, version, not_pem)]

    assert [status for status, _ in answers] == [403, 401, 403, 403, 403, 403, 403]
    assert "not on an SNS host" in answers[0][1]["detail"]
    assert "topic" in answers[2][1]["detail"]
    shown = await service.api.show(mail_id)
    assert (shown["status"], shown["events"]) == ("sent", [])


async def test_each_ses_event_type_maps_to_mailmans_event(service: Service) -> None:
    """Send becomes processed; DeliveryDelay, Delivery, Open, Click, Complaint and a transient
    Bounce become deferred, delivered, opened, clicked, complained and a soft bounce."""
    mail_id, i = await service.sent()
    ses = service.ses
    ann = "ann@example.com"
    events = [
        ses.ses_event("Send", i),
        ses.ses_event(
            "DeliveryDelay",
            i,
            delayType="MailboxFull",
            delayedRecipients=[{"emailAddress": ann, "status": "4.2.2"}],
        ),
        ses.ses_event("Delivery", i, recipients=[ann], smtpResponse="250 OK"),
        ses.ses_event("Open", i, ipAddress="192.0.2.1", userAgent="Mail"),
        ses.ses_event("Click", i, link="https://example.com/x", ipAddress="192.0.2.1"),
        ses.ses_event(
            "Complaint",
            i,
            complainedRecipients=[{"emailAddress": ann}],
            complaintFeedbackType="abuse",
        ),
        ses.ses_event(
            "Bounce",
            i,
            bounceType="Transient",
            bounceSubType="MailboxFull",
            bouncedRecipients=[{"emailAddress": ann, "diagnosticCode": "smtp; 452 full"}],
        ),
    ]
    answers = [await service.post(service.notification(e)) for e in events]

    assert all(a == (200, counts(recorded=1)) for a in answers)
    shown = await service.api.show(mail_id)
    assert shown["status"] == "delivered"
    assert [(e["event"], e["bounce"], e["recipient"]) for e in shown["events"]] == [
        ("processed", None, None),
        ("deferred", None, ann),
        ("delivered", None, ann),
        ("opened", None, None),
        ("clicked", None, None),
        ("complained", None, ann),
        ("bounced", "soft", ann),
    ]
    assert shown["events"][1]["reason"] == "MailboxFull"
    assert shown["events"][-1]["reason"] == "Transient: MailboxFull: smtp; 452 full"


async def test_a_reject_drops_the_mail(service: Service) -> None:
    """SES's Reject (it would not send the mail: a virus) moves the mail to bounced."""
    mail_id, i = await service.sent()
    status, answer = await service.post(
        service.notification(service.ses.ses_event("Reject", i, reason="Bad content"))
    )

    assert (status, answer) == (200, counts(recorded=1))
    shown = await service.api.show(mail_id)
    assert shown["status"] == "bounced"
    assert shown["events"][0]["event"] == "dropped"


async def test_an_event_without_the_tag_is_found_by_ses_message_id(service: Service) -> None:
    """An identity notification (notificationType) without the mail_id tag or X-Mailman-Id
    header is matched by SES's messageId, the provider id Mailman kept."""
    mail_id, i = await service.sent()
    event = service.ses.ses_event(
        "Bounce",
        i,
        bounceType="Permanent",
        bouncedRecipients=[{"emailAddress": "ann@example.com"}],
    )
    event["notificationType"] = event.pop("eventType")
    event["mail"]["tags"] = {}
    event["mail"]["headers"] = []
    status, answer = await service.post(service.notification(event))

    assert (status, answer) == (200, counts(recorded=1))
    assert (await service.api.show(mail_id))["status"] == "bounced"


async def test_a_notification_sent_again_is_kept_once(service: Service) -> None:
    """SNS delivering one message twice records its event once; an unknown mail's event is
    acknowledged (200) as unknown."""
    _, i = await service.sent()
    message = service.notification(
        service.ses.ses_event("Delivery", i, recipients=["ann@example.com"])
    )
    first, again = await service.post(message), await service.post(message)
    stranger = service.ses.ses_event("Delivery", i, recipients=["ann@example.com"])
    stranger["mail"].update(tags={"mail_id": ["01NOSUCHMAIL0000000000000"]}, messageId="nope")
    unknown = await service.post(service.notification(stranger))

    assert first == (200, counts(recorded=1))
    assert again == (200, counts(duplicate=1))
    assert unknown == (200, counts(unknown=1))


async def test_a_malformed_event_is_400(service: Service) -> None:
    """A verified message whose Message is not an SES event is 400; not JSON at all is 400."""
    status, _ = await service.post(service.ses.sns_message("Notification", "not json"))
    shapeless, _ = await service.post(service.ses.sns_message("Notification", "[1]"))
    garbage, _ = await service.post(b"{")

    assert (status, shapeless, garbage) == (400, 400, 400)


async def test_off_without_topics(
    tmp_path: Path, ses: FakeSes, http: aiohttp.ClientSession
) -> None:
    """Without MAILMAN_SES_SNS_TOPIC_ARNS the endpoint answers 404, signed or not."""
    env = ses_env(ses, MAILMAN_SES_SNS_TOPIC_ARNS="")
    async with embedded(make_config(tmp_path, env)) as mailman:
        message = ses.sns_message("SubscriptionConfirmation", "subscribe")
        async with http.post(f"{mailman.url}{PATH}", data=orjson.dumps(message)) as resp:
            assert resp.status == 404
    assert ses.confirmations == [] and ses.cert_fetches == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAILMAN_SES_SNS_TOPIC_ARNS": "arn:aws:sqs:us-east-1:1:x"}, "SNS topic ARNs"),
        ({"MAILMAN_SNS_HOST_PATTERN": "https://(sns"}, "not a regular expression"),
    ],
)
def test_settings_refused(tmp_path: Path, env: dict[str, str], message: str) -> None:
    """A topic list that is no SNS ARNs, or a host pattern that is no regex: ConfigError."""
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, env)


def test_settings_default_to_off_and_sns_hosts(tmp_path: Path) -> None:
    """By default the endpoint is off and certificates come only from SNS hosts over HTTPS."""
    import re

    from mailman.config import SETTINGS

    config = make_config(tmp_path)
    assert config.ses_sns_topic_arns == ()
    pattern = re.compile(config.sns_host_pattern)
    assert pattern.fullmatch("https://sns.eu-west-1.amazonaws.com")
    assert pattern.fullmatch("https://sns.cn-north-1.amazonaws.com.cn")
    for bad in (
        "http://sns.eu-west-1.amazonaws.com",
        "https://sns.eu-west-1.amazonaws.com.evil.com",
        "https://evil.com",
        "https://sns.eu-west-1.amazonaws.com:8443",
    ):
        assert not pattern.fullmatch(bad), bad
    assert SETTINGS["sns_host_pattern"].env == "MAILMAN_SNS_HOST_PATTERN"

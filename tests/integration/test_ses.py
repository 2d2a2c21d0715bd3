"""The SES client against a fake SES that verifies SigV4; its settings; failover in and out."""

from __future__ import annotations

import base64
import io
import json
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from structlog.testing import capture_logs

from mailman.config import ConfigError
from mailman.core.ids import new_id
from mailman.core.model import Address, Attachment, Check, Disposition, Mail
from mailman.providers import Accepted, Misconfigured, Rejected, Result, Transient, Unknown
from mailman.providers.ses import NO_CREDENTIALS, SesClient, SesConfig, body
from mailman.system import embedded, make_client

from ..conftest import make_config, provider_env
from ..support.fake_ses import SECRET_KEY, FakeSes, isolate_aws
from ..support.fakes import FakeMailgun, FakeSendGrid, Mode
from .test_system import Api

TIMEOUT = 2.0


def make_mail(**changes: object) -> Mail:
    fields: dict[str, object] = {
        "id": new_id(),
        "sender": Address("noreply@example.com", "Mailman"),
        "to": (Address("ann@example.com", "Ann"),),
        "subject": "Hello",
        "text": "Hi Ann",
        "html": "<p>Hi Ann</p>",
    }
    fields.update(changes)
    return Mail(**fields)  # type: ignore[arg-type]


def ses_client(
    fake: FakeSes | str,
    region: str = "us-east-1",
    configuration_set: str | None = None,
    timeout: float = TIMEOUT,
) -> SesClient:
    url = fake if isinstance(fake, str) else fake.base_url
    return SesClient(SesConfig(region, url, configuration_set), timeout)


async def send_once(client: SesClient, mail: Mail) -> Result:
    await client.start()
    try:
        return await client.send(mail)
    finally:
        await client.close()


# --- sending -------------------------------------------------------------------


async def test_sends_raw_mime_with_our_message_id_and_headers(ses: FakeSes) -> None:
    """A mail reaches SES as signed raw MIME: our Message-ID and headers, Bcc only in the
    envelope, the mail id and tag-safe metadata as email tags, the configuration set."""
    mail = make_mail(
        to=(Address("ann@example.com", "Doe, Ann"), Address("dan@example.com")),
        cc=(Address("cat@example.com", "Cat"),),
        bcc=(Address("secret-bob@example.com", "Bob"),),
        reply_to=Address("help@example.com", "Help"),
        subject="Grüße",
        headers=(("X-Campaign", "spring 2026"),),
        tags=("welcome", "onboarding"),
        metadata=(("user_id", "42"), ("note", "has spaces")),
    )
    result = await send_once(ses_client(ses, configuration_set="mailman"), mail)

    assert result == Accepted(message_id=ses.message_ids[0])
    (sent,) = ses.received
    assert sent["FromEmailAddress"] == "noreply@example.com"
    assert sent["Destination"] == {
        "ToAddresses": ["ann@example.com", "dan@example.com"],
        "CcAddresses": ["cat@example.com"],
        "BccAddresses": ["secret-bob@example.com"],
    }
    # "note" has a space: SES refuses it as a tag; it travels in the MIME header only.
    assert sent["EmailTags"] == [
        {"Name": "mail_id", "Value": mail.id},
        {"Name": "user_id", "Value": "42"},
    ]
    assert sent["ConfigurationSetName"] == "mailman"
    assert ses.mail_ids() == [mail.id]
    (msg,) = ses.messages
    assert msg["Message-ID"] == mail.message_id
    assert msg["X-Mailman-Id"] == mail.id
    assert msg["Subject"] == "Grüße"
    assert msg["From"] == "Mailman <noreply@example.com>"
    assert [a.display_name for a in msg["To"].addresses] == ["Doe, Ann", ""]
    assert msg["Cc"] == "Cat <cat@example.com>"
    assert msg["Reply-To"] == "Help <help@example.com>"
    assert msg["X-Campaign"] == "spring 2026"
    assert msg["X-Mailman-Tags"] == "welcome, onboarding"
    assert json.loads(msg["X-Mailman-Metadata"]) == {"user_id": "42", "note": "has spaces"}
    assert msg["Bcc"] is None
    assert b"secret-bob" not in base64.b64decode(sent["Content"]["Raw"]["Data"])
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content() == "Hi Ann\n"
    assert html.get_content() == "<p>Hi Ann</p>\n"
    # Signed with the key from the environment, no token for long-term keys.
    assert ses.request_headers[0]["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ses.access_key}/"
    )
    assert "X-Amz-Security-Token" not in ses.request_headers[0]


@pytest.mark.parametrize(
    ("text", "html", "kind"),
    [
        ("Hi", None, "text/plain"),
        (None, "<p>Hi</p>", "text/html"),
        ("Hi", "<p>Hi</p>", "multipart/alternative"),
    ],
)
async def test_text_html_or_both(
    ses: FakeSes, text: str | None, html: str | None, kind: str
) -> None:
    """Text alone, html alone or both become the MIME body SES is given."""
    result = await send_once(ses_client(ses), make_mail(text=text, html=html))

    assert isinstance(result, Accepted)
    assert ses.messages[0].get_content_type() == kind
    assert "ConfigurationSetName" not in ses.received[0]


async def test_attachments_and_inline_files_arrive_whole(ses: FakeSes) -> None:
    """Attachments and inline files are in the raw MIME SES gets, bytes, names and ids kept."""
    pdf = bytes(range(256)) * 4000
    logo = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    mail = make_mail(
        html='<p><img src="cid:logo"></p>',
        attachments=(
            Attachment.of("report é.pdf", pdf, "application/pdf"),
            Attachment.of("logo.png", logo, "image/png", Disposition.INLINE, "logo"),
        ),
    )
    result = await send_once(ses_client(ses), mail)

    assert isinstance(result, Accepted)
    files = {f.filename: f for f in ses.files[0]}
    assert files["report é.pdf"].data == pdf
    assert files["report é.pdf"].disposition == "attachment"
    assert files["logo.png"].data == logo
    assert (files["logo.png"].disposition, files["logo.png"].content_id) == ("inline", "logo")


async def test_temporary_credentials_send_the_session_token(
    ses: FakeSes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temporary credentials (AWS_SESSION_TOKEN) sign with X-Amz-Security-Token; SES
    refuses the same keys without it (403: Misconfigured)."""
    ses.keys[ses.access_key] = (SECRET_KEY, "session-token-7c1e")
    without = await send_once(ses_client(ses), make_mail())
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-7c1e")
    with_token = await send_once(ses_client(ses), make_mail())

    assert isinstance(without, Misconfigured) and without.status == 403
    assert "security token" in without.reason
    assert isinstance(with_token, Accepted)
    assert ses.request_headers[0]["X-Amz-Security-Token"] == "session-token-7c1e"


async def test_credentials_from_a_named_profile(
    ses: FakeSes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A profile of the shared credentials file (AWS_PROFILE) signs the request."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[mail]\naws_access_key_id = AKIAPROFILE000000001\naws_secret_access_key = profile-secret\n"
    )
    ses.keys["AKIAPROFILE000000001"] = ("profile-secret", None)
    isolate_aws(
        monkeypatch, {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_PROFILE": "mail"}
    )
    result = await send_once(ses_client(ses), make_mail())

    assert isinstance(result, Accepted)
    assert "Credential=AKIAPROFILE000000001/" in ses.request_headers[0]["Authorization"]


async def test_expiring_credentials_are_refreshed_before_signing(
    ses: FakeSes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Role-like credentials (a credential_process) near expiry are fetched again before a
    send, so a rotated key is used; ones far from expiry are not fetched again."""
    current = tmp_path / "current.json"
    script = tmp_path / "creds.py"
    script.write_text(f"import sys; sys.stdout.write(open({str(current)!r}).read())\n")
    config = tmp_path / "config"
    config.write_text(f"[default]\ncredential_process = {sys.executable} {script}\n")
    isolate_aws(monkeypatch, {"AWS_CONFIG_FILE": str(config)})

    def issue(n: int, lasts: float) -> None:
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + lasts))
        ses.keys = {f"ASIAROLE{n:012d}": (f"role-secret-{n}", f"role-token-{n}")}
        current.write_text(
            json.dumps(
                {
                    "Version": 1,
                    "AccessKeyId": f"ASIAROLE{n:012d}",
                    "SecretAccessKey": f"role-secret-{n}",
                    "SessionToken": f"role-token-{n}",
                    "Expiration": expiry,
                }
            )
        )

    # 12 minutes left: inside botocore's advisory refresh window (15), outside its
    # mandatory one (10): a send refreshes them first.
    issue(1, 12 * 60)
    client = ses_client(ses)
    await client.start()
    try:
        first = await client.send(make_mail())
        issue(2, 12 * 60)
        refreshed = await client.send(make_mail())
        issue(3, 3600)
        third = await client.send(make_mail())
        issue(4, 3600)  # the client's key (3) lasts an hour more: not fetched again
        kept = await client.send(make_mail())
    finally:
        await client.close()

    assert [type(r) for r in (first, refreshed, third)] == [Accepted] * 3
    assert isinstance(kept, Misconfigured) and kept.status == 403
    tokens = [h["X-Amz-Security-Token"] for h in ses.request_headers]
    assert tokens == ["role-token-1", "role-token-2", "role-token-3"]


async def test_a_failed_refresh_of_expiring_credentials_is_transient(
    ses: FakeSes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Credentials within botocore's mandatory refresh window whose refresh fails give
    Transient (tried again later), no call, and nothing of the old secret in the reason."""
    current = tmp_path / "current.json"
    script = tmp_path / "creds.py"
    script.write_text(f"import sys; sys.stdout.write(open({str(current)!r}).read())\n")
    config = tmp_path / "config"
    config.write_text(f"[default]\ncredential_process = {sys.executable} {script}\n")
    isolate_aws(monkeypatch, {"AWS_CONFIG_FILE": str(config)})
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5 * 60))
    ses.keys = {"ASIAROLE000000000009": ("role-secret-do-not-leak", "role-token-9")}
    issued = {
        "Version": 1,
        "AccessKeyId": "ASIAROLE000000000009",
        "SecretAccessKey": "role-secret-do-not-leak",
        "SessionToken": "role-token-9",
        "Expiration": expiry,
    }
    current.write_text(json.dumps(issued))
    client = ses_client(ses)
    await client.start()
    try:
        first = await client.send(make_mail())
        current.write_text("the credential process broke")
        failed = await client.send(make_mail())
    finally:
        await client.close()

    assert isinstance(first, Accepted)
    assert isinstance(failed, Transient)
    assert failed.reason.startswith("AWS credentials: ")
    assert "do-not-leak" not in failed.reason
    assert ses.calls == 1


async def test_no_credentials_is_misconfigured_without_a_call(
    ses: FakeSes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no credentials anywhere in the chain, a send is Misconfigured and SES never called."""
    isolate_aws(monkeypatch, {})
    with capture_logs() as logs:
        result = await send_once(ses_client(ses), make_mail())

    assert result == Misconfigured(NO_CREDENTIALS)
    assert ses.calls == 0
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["ses.no_credentials"]


async def test_wrong_secret_is_misconfigured_and_never_shown(
    ses: FakeSes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret SES does not know gives 403 (Misconfigured) with SES's message; no result or
    log line holds the secret."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong/secret+do-not-leak-Z7")
    with capture_logs() as logs:
        result = await send_once(ses_client(ses), make_mail())

    assert isinstance(result, Misconfigured)
    assert result.status == 403
    assert result.reason.startswith("InvalidSignatureException: The request signature")
    assert "do-not-leak" not in repr(result) + repr(logs)


@pytest.mark.parametrize(
    ("skew", "accepted"), [(14 * 60, True), (16 * 60, False), (-16 * 60, False)]
)
async def test_clock_skew_over_15_minutes_is_refused(
    ses: FakeSes, skew: float, accepted: bool
) -> None:
    """A signature dated within 15 minutes of SES's clock passes; past that SES refuses it
    (403: Misconfigured, saying the signature expired or is not yet current)."""
    ses.clock_skew = skew
    result = await send_once(ses_client(ses), make_mail())

    assert isinstance(result, Accepted) is accepted
    if not accepted:
        assert isinstance(result, Misconfigured) and result.status == 403
        assert "Signature expired" in result.reason or "not yet current" in result.reason


async def test_the_signature_covers_region_host_and_body(ses: FakeSes) -> None:
    """A request signed for another region is refused; so is one whose bytes or Host
    changed after signing (the fake recomputes the signature over what it received)."""
    wrong_region = await send_once(ses_client(ses, region="eu-west-1"), make_mail())
    # The same signed request replayed to "localhost:port": another Host, same bytes.
    client = ses_client(ses)
    await client.start()
    credentials = await client._signing_credentials()
    assert not isinstance(credentials, Result)
    data, headers = client._signed(make_mail(), credentials)
    await client.close()
    other_host = ses.base_url.replace("127.0.0.1", "localhost")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{other_host}/v2/email/outbound-emails", data=data, headers=headers
        ) as resp:
            host_status = resp.status
        async with http.post(
            f"{ses.base_url}/v2/email/outbound-emails", data=data + b" ", headers=headers
        ) as resp:
            body_status = resp.status
        async with http.post(
            f"{ses.base_url}/v2/email/outbound-emails", data=data, headers=headers
        ) as resp:
            same_status = resp.status

    assert isinstance(wrong_region, Misconfigured)
    assert "scoped to a valid region" in wrong_region.reason
    assert (host_status, body_status, same_status) == (403, 403, 200)


@pytest.mark.parametrize(
    ("mode", "kind", "status"),
    [
        ("503", Transient, 503),
        ("429", Transient, 429),
        ("400", Rejected, 400),
        ("401", Misconfigured, 403),
    ],
)
async def test_failure_modes_map_to_results(
    ses: FakeSes, mode: Mode, kind: type[Result], status: int
) -> None:
    """SES's 503, 429 (with Retry-After), 400 and 403 give Transient, Transient (rate
    limited), Rejected and Misconfigured, with SES's error type and message."""
    ses.mode = mode
    ses.retry_after = "7"
    result = await send_once(ses_client(ses), make_mail())

    assert type(result) is kind
    assert getattr(result, "status", None) == status
    assert ":" in getattr(result, "reason", "")
    if mode == "429":
        assert result == Transient(
            "TooManyRequestsException: Maximum sending rate exceeded.", 429, 7.0, True
        )
    assert ses.received == []


async def test_timeout_and_dropped_answer_are_unknown(ses: FakeSes) -> None:
    """No answer in time, or the connection closed after SES kept the mail: Unknown."""
    ses.mode = "timeout"
    timed_out = await send_once(ses_client(ses, timeout=0.2), make_mail())
    ses.mode = "drop"
    dropped = await send_once(ses_client(ses), make_mail())

    assert isinstance(timed_out, Unknown) and timed_out.reason.startswith("timeout")
    assert isinstance(dropped, Unknown)
    assert len(ses.received) == 1  # SES has the dropped one


async def test_connection_refused_is_transient(ses: FakeSes) -> None:
    """An SES endpoint that is not listening gives Transient."""
    async with FakeSes() as gone:
        url = gone.base_url
    result = await send_once(ses_client(url), make_mail())

    assert isinstance(result, Transient)
    assert result.reason.startswith("connection error")


async def test_more_than_50_recipients_is_rejected_without_a_request(ses: FakeSes) -> None:
    """SES takes at most 50 recipients: a mail to 51 is Rejected, saying so, and never
    sent to SES; one to 50 is taken."""
    to = tuple(Address(f"r{n}@example.com") for n in range(40))
    cc = tuple(Address(f"c{n}@example.com") for n in range(10))
    result = await send_once(ses_client(ses), make_mail(to=to, cc=cc, bcc=(to[0],)))
    fifty = await send_once(ses_client(ses), make_mail(to=to, cc=cc))

    assert result == Rejected(
        "SES takes at most 50 recipients a message (to, cc and bcc together); this mail has 51"
    )
    assert isinstance(fifty, Accepted) and ses.calls == 1


async def post_signed(ses: FakeSes, request: dict[str, object]) -> tuple[int, str, str]:
    """SES's answer to ``request``, sent as it is, signed with the fake's credentials:
    the status, the error type ("" for none) and the message."""
    url = f"{ses.base_url}/v2/email/outbound-emails"
    data = json.dumps(request).encode()
    signed = AWSRequest(method="POST", url=url, data=data, headers=JSON)
    SigV4Auth(Credentials(ses.access_key, ses.secret_key), "ses", ses.region).add_auth(signed)
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=io.BytesIO(data), headers=dict(signed.headers.items())) as resp,
    ):
        answer = await resp.json()
        kind = resp.headers.get("x-amzn-ErrorType", "").rstrip(":")
        return resp.status, kind, str(answer.get("message", ""))


JSON = {"Content-Type": "application/json"}


def send_request(
    mime: bytes = b"To: a@example.com\r\n\r\nHi", **fields: object
) -> dict[str, object]:
    """A SendEmail request for ``mime``, to one recipient, with ``fields`` over it."""
    return {
        "FromEmailAddress": "a@example.com",
        "Destination": {"ToAddresses": ["b@example.com"]},
        "Content": {"Raw": {"Data": base64.b64encode(mime).decode()}},
        **fields,
    }


async def test_the_fake_refuses_what_ses_refuses(ses: FakeSes) -> None:
    """At the fake, as at SES: 51 recipients, a tag name or value with another character
    than letters, digits, _ and -, or of 257 characters, is a 400 BadRequestException;
    50 recipients and tags of 256 characters are taken."""
    crowd = [f"r{n}@example.com" for n in range(51)]
    refused = [
        send_request(Destination={"ToAddresses": crowd[:40], "BccAddresses": crowd[40:]}),
        send_request(EmailTags=[{"Name": "user.id", "Value": "1"}]),
        send_request(EmailTags=[{"Name": "plan", "Value": "é"}]),
        send_request(EmailTags=[{"Name": "n" * 257, "Value": "1"}]),
        send_request(EmailTags=[{"Name": "plan", "Value": "v" * 257}]),
    ]
    answers = [await post_signed(ses, request) for request in refused]
    taken = await post_signed(
        ses,
        send_request(
            Destination={"ToAddresses": crowd[:50]},
            EmailTags=[{"Name": "n" * 256, "Value": "v" * 256}],
        ),
    )

    assert [(status, kind) for status, kind, _ in answers] == [(400, "BadRequestException")] * 5
    assert answers[0][2] == "Recipient count exceeds 50."
    assert taken[:2] == (200, "") and len(ses.received) == 1


@pytest.mark.slow  # a request of 54 MB
async def test_the_fake_refuses_a_message_over_40_mb(ses: FakeSes) -> None:
    """SES v2 takes 40 MB a message, files base64-encoded in the MIME: one byte more is
    its 400 MessageRejected."""
    head = b"To: a@example.com\r\n\r\n"
    over = await post_signed(ses, send_request(head + b"x" * (40 * 1024 * 1024 + 1 - len(head))))

    assert over == (400, "MessageRejected", "Message length is more than 40 megabytes")
    assert ses.received == []


async def test_unknown_configuration_set_is_misconfigured(ses: FakeSes) -> None:
    """A configuration set SES does not have is its 404 NotFoundException: Misconfigured."""
    result = await send_once(ses_client(ses, configuration_set="nope"), make_mail())

    assert result == Misconfigured(
        "NotFoundException: Configuration set <nope> does not exist.", 404
    )


async def test_paused_account_is_misconfigured(ses: FakeSes) -> None:
    """An account whose sending is paused (a 400) is Misconfigured: no mail would go."""
    ses.sending_paused = True
    result = await send_once(ses_client(ses), make_mail())

    assert isinstance(result, Misconfigured) and result.status == 400
    assert result.unwell


def test_tags_ses_refuses_are_left_out() -> None:
    """Metadata that is no valid SES tag (characters, length, the name mail_id) is not a tag."""
    mail = make_mail(
        metadata=(("ok-key_1", "v-1"), ("dot.key", "v"), ("k", "é"), ("long", "x" * 257))
    )
    assert body(mail)["EmailTags"] == [
        {"Name": "mail_id", "Value": mail.id},
        {"Name": "ok-key_1", "Value": "v-1"},
    ]


async def test_lookup_cannot_check(ses: FakeSes) -> None:
    """SES offers no lookup by Message-ID: an unknown attempt cannot be checked."""
    found = await ses_client(ses).lookup(make_mail(), 0.0)

    assert found.check is Check.CANNOT
    assert found.reason and "SES" in found.reason


# --- settings --------------------------------------------------------------------


def test_settings_region_endpoint_and_configuration_set(tmp_path: Path) -> None:
    """ses in the chain takes SES_REGION (else AWS_REGION, AWS_DEFAULT_REGION), the endpoint and
    the configuration set; the default endpoint is the region's."""
    env = {"MAILMAN_PROVIDERS": "ses", "SES_REGION": "eu-west-1", "SES_CONFIGURATION_SET": "tx"}
    (ses,) = make_config(tmp_path, env).providers
    assert ses.settings == SesConfig("eu-west-1", None, "tx")
    client = make_client(ses, 1.0)
    assert isinstance(client, SesClient) and client.name == "ses"
    assert client._url == "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"
    for fallback in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        (ses,) = make_config(
            tmp_path, {"MAILMAN_PROVIDERS": "ses", fallback: "ap-south-1"}
        ).providers
        assert isinstance(ses.settings, SesConfig) and ses.settings.region == "ap-south-1"
    env = {"MAILMAN_PROVIDERS": "ses", "SES_REGION": "us-east-1", "SES_ENDPOINT_URL": "http://x:1/"}
    (ses,) = make_config(tmp_path, env).providers
    assert make_client(ses, 1.0)._url == "http://x:1/v2/email/outbound-emails"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SES_REGION (or AWS_REGION) is required"),
        ({"SES_REGION": "evil.com/x"}, "must be an AWS region"),
        ({"SES_REGION": "us-east-1", "SES_CONFIGURATION_SET": "a b"}, "SES_CONFIGURATION_SET"),
    ],
)
def test_settings_refused(tmp_path: Path, env: dict[str, str], message: str) -> None:
    """No region, a region that is no region's name, or a bad configuration set: ConfigError."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_config(tmp_path, {"MAILMAN_PROVIDERS": "ses", **env})


# --- the whole system: failover in and out -------------------------------------------


def ses_env(ses: FakeSes, **extra: str) -> dict[str, str]:
    return {"SES_REGION": ses.region, "SES_ENDPOINT_URL": ses.base_url, **extra}


async def test_fails_over_from_ses_to_sendgrid(
    tmp_path: Path,
    ses: FakeSes,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SES first and down (503): the mail goes out through SendGrid, once; no AWS secret in
    the mail's record or the logs."""
    ses.mode = "503"
    env = provider_env(sendgrid, mailgun, **ses_env(ses, MAILMAN_PROVIDERS="ses,sendgrid,mailgun"))
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send(subject="Failover out of SES")
        await api.wait_status(mail_id, "sent")
        shown = await api.show(mail_id)
    assert [(a["provider"], a["outcome"]) for a in shown["attempts"]] == [
        ("ses", "transient"),
        ("sendgrid", "accepted"),
    ]
    assert sendgrid.mail_ids() == [mail_id] and ses.received == [] and mailgun.received == []
    assert SECRET_KEY not in str(shown) + "".join(capsys.readouterr())


async def test_fails_over_from_sendgrid_into_ses(
    tmp_path: Path,
    ses: FakeSes,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """SendGrid and Mailgun down: the mail goes out through SES, with its id as SES's tag."""
    sendgrid.mode = mailgun.mode = "503"
    env = provider_env(sendgrid, mailgun, **ses_env(ses, MAILMAN_PROVIDERS="sendgrid,mailgun,ses"))
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send(subject="Failover into SES", bcc=["bob@example.com"])
        await api.wait_status(mail_id, "sent")
        shown = await api.show(mail_id)
    assert [(a["provider"], a["outcome"]) for a in shown["attempts"]] == [
        ("sendgrid", "transient"),
        ("mailgun", "transient"),
        ("ses", "accepted"),
    ]
    assert shown["provider"] == "ses"
    assert ses.mail_ids() == [mail_id]
    assert ses.received[0]["Destination"]["BccAddresses"] == ["bob@example.com"]
    assert ses.messages[0]["Subject"] == "Failover into SES"


@pytest.mark.parametrize("chain", ["ses,sendgrid", "ses"])
async def test_a_mail_to_more_than_50_goes_on_past_ses(
    tmp_path: Path,
    ses: FakeSes,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
    chain: str,
) -> None:
    """A mail to 60 recipients is rejected by SES, saying why, and goes out through the
    next provider; with SES alone it is failed with that reason, nothing sent to SES."""
    env = provider_env(sendgrid, mailgun, **ses_env(ses, MAILMAN_PROVIDERS=chain))
    to = [f"r{n}@example.com" for n in range(60)]
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send(to=to, subject="To sixty")
        await api.wait_status(mail_id, "sent" if "sendgrid" in chain else "failed")
        shown = await api.show(mail_id)
    reason = "SES takes at most 50 recipients a message (to, cc and bcc together); this mail has 60"
    assert [(a["provider"], a["outcome"], a.get("reason")) for a in shown["attempts"]] == [
        ("ses", "rejected", reason),
        *([("sendgrid", "accepted", None)] if "sendgrid" in chain else []),
    ]
    assert ses.calls == 0
    assert sendgrid.mail_ids() == ([mail_id] if "sendgrid" in chain else [])
    if chain == "ses":
        assert shown["reason"] == "every provider rejected the mail"

"""The smtp-relay provider against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from structlog.testing import capture_logs

from mailman.config import ConfigError, Secret, load, parse_smtp_relay_url
from mailman.core.ids import new_id
from mailman.core.model import Address, Attachment, Check, Disposition, Mail
from mailman.providers import Accepted, Misconfigured, Rejected, Result, Transient, Unknown
from mailman.providers.smtp_relay import SmtpRelayClient, SmtpRelayConfig
from mailman.system import embedded

from ..conftest import make_config, provider_env
from ..support.fake_smtp_relay import FakeSmtpRelay
from ..support.fakes import FakeMailgun, FakeSendGrid
from .test_system import Api

TIMEOUT = 2.0
SCHEMES = ["smtp+starttls", "smtps"]


def make_mail(**changes: object) -> Mail:
    fields: dict[str, object] = {
        "id": new_id(),
        "sender": Address("noreply@example.com", "Mailman"),
        "to": (Address("ann@example.com", "Ann"),),
        "subject": "Hello",
        "text": "Hi Ann",
    }
    fields.update(changes)
    return Mail(**fields)  # type: ignore[arg-type]


def client(url: str, timeout: float = TIMEOUT, connections: int = 4) -> SmtpRelayClient:
    return SmtpRelayClient(SmtpRelayConfig(Secret(url), connections), timeout)


async def send_once(url: str, mail: Mail) -> Result:
    relay_client = client(url)
    await relay_client.start()
    try:
        return await relay_client.send(mail)
    finally:
        await relay_client.close()


def parsed(data: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_sends_over_tls_with_the_envelope_and_no_bcc_header(
    scheme: str, smtp_relay: FakeSmtpRelay
) -> None:
    """Over STARTTLS and implicit TLS, authenticated: MAIL FROM the sender, RCPT TO every
    recipient, the message our Message-ID, Cc shown, Bcc nowhere in the headers."""
    mail = make_mail(
        cc=(Address("cat@example.com"),),
        bcc=(Address("bob@example.com"), Address("dan@example.com")),
        html="<p>Hi Ann</p>",
    )
    result = await send_once(smtp_relay.url(scheme), mail)
    assert result == Accepted("RELAY0001")
    (got,) = smtp_relay.envelopes
    assert got.tls
    assert got.mail_from == "noreply@example.com"
    assert got.rcpt_tos == (
        "ann@example.com",
        "cat@example.com",
        "bob@example.com",
        "dan@example.com",
    )
    message = parsed(got.data)
    assert message["Message-ID"] == mail.message_id
    assert message["Cc"] == "cat@example.com"
    assert "Bcc" not in message
    assert b"bob@example.com" not in got.data
    body = message.get_body(("html",))
    assert body is not None and body.get_content().strip() == "<p>Hi Ann</p>"
    plain = message.get_body(("plain",))
    assert plain is not None and plain.get_content().strip() == "Hi Ann"


async def test_attachments_and_utf8_go_out_whole(smtp_relay: FakeSmtpRelay) -> None:
    """Files arrive byte for byte; a non-ASCII subject and body read back exactly."""
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 40
    mail = make_mail(
        subject="Grüße aus Köln",
        text="Hallo Ann, schöne Grüße\n.\n..leading dots survive\n",
        attachments=(Attachment.of("report.pdf", pdf, "application/pdf", Disposition.ATTACHMENT),),
    )
    assert isinstance(await send_once(smtp_relay.url("smtps"), mail), Accepted)
    message = parsed(smtp_relay.envelopes[0].data)
    assert message["Subject"] == "Grüße aus Köln"
    (part,) = list(message.iter_attachments())
    assert part.get_filename() == "report.pdf" and part.get_content() == pdf
    plain = message.get_body(("plain",))
    assert plain is not None
    assert (
        plain.get_content().replace("\r\n", "\n")
        == "Hallo Ann, schöne Grüße\n.\n..leading dots survive\n"
    )


async def test_plain_smtp_without_credentials(tmp_path: Path) -> None:
    """smtp://host:port: plain text, no AUTH, no STARTTLS even though it is offered."""
    async with FakeSmtpRelay(tmp_path, auth_required=False) as relay:
        result = await send_once(relay.url("smtp", password=""), make_mail())
    assert isinstance(result, Accepted)
    assert [e.tls for e in relay.envelopes] == [False]


def test_smtp_url_with_a_password_is_refused_off_loopback() -> None:
    """smtp:// would send the password in the clear: refused unless the host is loopback,
    and the error never quotes it; every URL part is decoded."""
    with pytest.raises(ConfigError) as refused:
        parse_smtp_relay_url("smtp://user:hunter2-secret@mail.example.com:25")
    assert "hunter2-secret" not in str(refused.value)
    local = parse_smtp_relay_url("smtp://u%40x:p%3Aw%2Fd@127.0.0.1")
    assert (local.security, local.port, local.username, local.password) == (
        "plain",
        25,
        "u@x",
        "p:w/d",
    )
    assert parse_smtp_relay_url("smtp+starttls://a:b@h").port == 587
    assert parse_smtp_relay_url("smtps://a:b@h").port == 465
    with pytest.raises(ConfigError, match="scheme"):
        parse_smtp_relay_url("http://a:b@h")
    with pytest.raises(ConfigError) as bad_load:
        load([], {"MAILMAN_PROVIDERS": "smtp-relay", "SMTP_RELAY_URL": "smtp://u:s3cr3t@10.0.0.1"})
    assert "s3cr3t" not in str(bad_load.value)


def test_the_chain_names_smtp_relay_and_skips_it_without_a_url() -> None:
    """MAILMAN_PROVIDERS=smtp-relay takes SMTP_RELAY_URL; without one it is skipped."""
    env = {"MAILMAN_PROVIDERS": "smtp-relay", "SMTP_RELAY_URL": "smtps://a:b@h"}
    config = load([], {**env, "SMTP_RELAY_MAX_CONNECTIONS": "7"})
    assert config.chain == ("smtp-relay",)
    assert [p.settings for p in config.providers] == [SmtpRelayConfig(Secret("smtps://a:b@h"), 7)]
    assert "a:b" not in repr(config)
    skipped = load([], {"MAILMAN_PROVIDERS": "smtp-relay"})
    assert skipped.skipped_providers == ("smtp-relay",)


async def test_an_unknown_certificate_is_misconfigured_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay whose certificate the trust store does not know: Misconfigured (it will not
    heal), for STARTTLS and implicit TLS, and the relay never sees a mail nor the password."""
    async with FakeSmtpRelay(tmp_path) as trusted, FakeSmtpRelay(tmp_path) as stranger:
        monkeypatch.setenv("SSL_CERT_FILE", str(trusted.ca_file))
        for scheme in SCHEMES:
            result = await send_once(stranger.url(scheme), make_mail())
            assert isinstance(result, Misconfigured), result
            assert "certificate" in result.reason
            assert stranger.password not in result.reason
    assert stranger.envelopes == [] and stranger.auth_failures == 0


async def test_a_wrong_password_is_misconfigured_and_never_shown(smtp_relay: FakeSmtpRelay) -> None:
    """535 to AUTH is Misconfigured; the reason and the logs hold no password."""
    wrong = "wr0ng-p@ss-XYZZY"
    with capture_logs() as logs:
        result = await send_once(smtp_relay.url("smtp+starttls", password=wrong), make_mail())
    assert isinstance(result, Misconfigured), result
    assert "535" in result.reason
    assert wrong not in result.reason and wrong not in repr(result)
    assert wrong not in repr(logs)
    assert smtp_relay.auth_failures >= 1 and smtp_relay.envelopes == []


async def test_starttls_required_but_not_offered_is_misconfigured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """smtp+starttls:// to a relay that offers no STARTTLS: Misconfigured, and neither the
    password nor the mail crosses in plain text."""
    async with FakeSmtpRelay(tmp_path, starttls=False, auth_required=False) as relay:
        monkeypatch.setenv("SSL_CERT_FILE", str(relay.ca_file))
        result = await send_once(relay.url("smtp+starttls"), make_mail())
    assert isinstance(result, Misconfigured), result
    assert "STARTTLS" in result.reason
    assert relay.envelopes == [] and relay.auth_failures == 0


async def test_no_relay_listening_is_transient(smtp_relay: FakeSmtpRelay) -> None:
    """Connection refused: Transient (nothing left)."""
    port = smtp_relay.port
    await smtp_relay.__aexit__(None, None, None)
    result = await send_once(f"smtps://a:b@127.0.0.1:{port}", make_mail())
    assert isinstance(result, Transient), result


@pytest.mark.parametrize(
    ("step", "reply", "kind"),
    [
        ("MAIL", "451 4.3.0 Try again later", Transient),
        ("MAIL", "553 5.7.1 Sender not allowed", Rejected),
        ("MAIL", "530 5.7.0 Authentication required", Misconfigured),
        ("RCPT", "450 4.2.0 Mailbox busy", Transient),
        ("RCPT", "550 5.1.1 No such user", Rejected),
        ("DATA", "452 4.3.1 Insufficient storage", Transient),
        ("DATA", "554 5.7.1 Message refused as spam", Rejected),
    ],
)
async def test_replies_map_to_results(
    step: str, reply: str, kind: type[Result], smtp_relay: FakeSmtpRelay
) -> None:
    """4xx is Transient, 5xx Rejected with the server's text, 530 Misconfigured."""
    smtp_relay.replies[step] = reply
    result = await send_once(smtp_relay.url("smtps"), make_mail())
    assert type(result) is kind, result
    assert reply.split(" ", 1)[1] in getattr(result, "reason", "")
    assert smtp_relay.envelopes == []


async def test_some_recipients_refused_sends_to_none(smtp_relay: FakeSmtpRelay) -> None:
    """One of three recipients refused with 550: nothing is sent (the transaction is
    reset), Rejected naming the field; with a 4xx among them, Transient. The kept
    connection then sends the next mail."""
    smtp_relay.refuse["bob@example.com"] = "550 5.1.1 No such user"
    mail = make_mail(cc=(Address("cat@example.com"),), bcc=(Address("bob@example.com"),))
    relay_client = client(smtp_relay.url("smtps"))
    await relay_client.start()
    try:
        rejected = await relay_client.send(mail)
        smtp_relay.refuse["cat@example.com"] = "451 4.7.1 Greylisted"
        transient = await relay_client.send(mail)
        smtp_relay.refuse.clear()
        accepted = await relay_client.send(mail)
    finally:
        await relay_client.close()
    assert isinstance(rejected, Rejected) and "bcc[0]: 550 5.1.1 No such user" in rejected.reason
    assert isinstance(transient, Transient) and transient.status == 451
    assert isinstance(accepted, Accepted)
    assert [e.rcpt_tos for e in smtp_relay.envelopes] == [
        ("ann@example.com", "cat@example.com", "bob@example.com")
    ]
    assert smtp_relay.connections == 1


async def test_lost_answer_after_data_is_unknown(smtp_relay: FakeSmtpRelay) -> None:
    """The smtp_relay takes the message and drops the connection before its 250: Unknown (it may
    have the mail), never Transient; the smtp_relay offers no lookup; the next mail reconnects."""
    smtp_relay.drop = True
    relay_client = client(smtp_relay.url("smtp+starttls"))
    await relay_client.start()
    try:
        result = await relay_client.send(make_mail())
        smtp_relay.drop = False
        after = await relay_client.send(make_mail())
        found = await relay_client.lookup(make_mail(), 0.0)
    finally:
        await relay_client.close()
    assert isinstance(result, Unknown), result
    assert len(smtp_relay.dropped) == 1
    assert isinstance(after, Accepted) and smtp_relay.connections == 2
    assert found.check is Check.CANNOT


async def test_no_answer_is_transient_before_data_and_unknown_after(
    smtp_relay: FakeSmtpRelay,
) -> None:
    """A relay silent at MAIL FROM: Transient, and that connection is not used again (a
    late reply would answer the next mail's command). Silent after the message: Unknown."""
    relay_client = client(smtp_relay.url("smtps"), timeout=0.3)
    await relay_client.start()
    try:
        smtp_relay.stall = {"MAIL"}
        silent = await relay_client.send(make_mail())
        smtp_relay.stall = set()
        after = await relay_client.send(make_mail())
        smtp_relay.stall = {"DATA"}
        lost = await relay_client.send(make_mail())
    finally:
        await relay_client.close()
    assert isinstance(silent, Transient) and "MAIL FROM" in silent.reason, silent
    assert isinstance(after, Accepted) and smtp_relay.connections == 2
    assert isinstance(lost, Unknown), lost


async def test_connections_are_reused_and_a_closed_one_replaced(smtp_relay: FakeSmtpRelay) -> None:
    """Mails one after another share one connection; one the smtp_relay closed while idle is
    replaced before anything is sent (no error, one copy)."""
    relay_client = client(smtp_relay.url("smtps"))
    await relay_client.start()
    try:
        for _ in range(3):
            assert isinstance(await relay_client.send(make_mail()), Accepted)
        assert smtp_relay.connections == 1
        for protocol in smtp_relay._protocols:
            assert protocol.transport is not None
            protocol.transport.close()
        assert isinstance(await relay_client.send(make_mail()), Accepted)
    finally:
        await relay_client.close()
    assert smtp_relay.connections == 2 and len(smtp_relay.envelopes) == 4


async def test_the_password_is_in_no_reason_even_when_the_server_echoes_it(
    smtp_relay: FakeSmtpRelay,
) -> None:
    """A smtp_relay that quotes the password back: the reason says [redacted]."""
    smtp_relay.replies["DATA"] = f"554 5.0.0 bad login {smtp_relay.password}"
    result = await send_once(smtp_relay.url("smtps"), make_mail())
    assert isinstance(result, Rejected)
    assert smtp_relay.password not in result.reason and "[redacted]" in result.reason


def relay_env(sg: FakeSendGrid, mg: FakeMailgun, url: str) -> dict[str, str]:
    """SendGrid, then the relay, then Mailgun."""
    return provider_env(sg, mg, MAILMAN_PROVIDERS="sendgrid,smtp-relay,mailgun", SMTP_RELAY_URL=url)


async def test_fails_over_into_the_relay_and_out_of_it(
    tmp_path: Path,
    smtp_relay: FakeSmtpRelay,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """SendGrid down: the smtp_relay sends the mail (one copy, its queue id recorded). Relay
    answering 451 too: Mailgun sends the next; the smtp_relay never got it."""
    sendgrid.mode = "503"
    env = relay_env(sendgrid, mailgun, smtp_relay.url("smtp+starttls"))
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        first = await api.send(subject="Into the smtp_relay")
        await api.wait_status(first, "sent")
        smtp_relay.replies["MAIL"] = "451 4.3.0 Try again later"
        second = await api.send(subject="Out of it")
        await api.wait_status(second, "sent")
        shown = [await api.show(first), await api.show(second)]
    assert [(s["provider"], s["provider_message_id"]) for s in shown] == [
        ("smtp-relay", "RELAY0001"),
        ("mailgun", mailgun.message_ids[0]),
    ]
    assert [a["outcome"] for a in shown[1]["attempts"]] == ["transient", "transient", "accepted"]
    (got,) = smtp_relay.envelopes
    assert parsed(got.data)["X-Mailman-Id"] == first
    assert mailgun.mail_ids() == [second]


async def test_a_wrong_relay_password_is_never_logged_nor_shown(
    tmp_path: Path,
    smtp_relay: FakeSmtpRelay,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """A refused smtp_relay password: the mail goes out through Mailgun, and neither the logs
    nor the mail's attempts hold the password (or the URL that carries it)."""
    sendgrid.mode = "503"
    wrong = "Wr0ng-relay-pass-XYZZY"
    url = smtp_relay.url("smtps", password=wrong)
    with capture_logs() as logs:
        async with embedded(make_config(tmp_path, relay_env(sendgrid, mailgun, url))) as m:
            api = Api(http, m.url)
            mail_id = await api.send()
            await api.wait_status(mail_id, "sent")
            shown = await api.show(mail_id)
    assert [a["outcome"] for a in shown["attempts"]] == ["transient", "misconfigured", "accepted"]
    assert smtp_relay.auth_failures >= 1
    assert any("535" in repr(entry) for entry in logs)
    for text in (repr(logs), repr(shown)):
        assert wrong not in text and quote(wrong, safe="") not in text


async def held_mail(api: Api, smtp_relay: FakeSmtpRelay) -> str:
    """A mail whose relay answer was lost, once the hold policy held it."""
    smtp_relay.drop = True
    mail_id = await api.send(subject="Lost answer")
    await api.wait_status(mail_id, "unknown")
    smtp_relay.drop = False
    return mail_id


async def test_hold_keeps_a_lost_answer_unknown_until_an_operator_acts(
    tmp_path: Path,
    smtp_relay: FakeSmtpRelay,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """MAILMAN_UNKNOWN_POLICY=hold: the relay took the message but its 250 was lost; the
    mail stays unknown (one copy, Mailgun never called, listed by status); /retry sends it
    once more, /sent records another one sent without sending it; the kept figures agree."""
    env = provider_env(
        sendgrid,
        mailgun,
        MAILMAN_PROVIDERS="smtp-relay,mailgun",
        SMTP_RELAY_URL=smtp_relay.url("smtps"),
        MAILMAN_UNKNOWN_POLICY="hold",
    )
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        retried = await held_mail(api, smtp_relay)
        held = await api.show(retried)
        async with http.get(f"{mailman.url}/mail", params={"status": "unknown"}) as resp:
            listed = [m["id"] for m in (await resp.json())["mails"]]
        async with http.post(f"{mailman.url}/mail/{retried}/retry") as resp:
            assert resp.status == 202, await resp.text()
        await api.wait_status(retried, "sent")
        marked = await held_mail(api, smtp_relay)
        async with http.post(f"{mailman.url}/mail/{marked}/sent") as resp:
            assert resp.status == 200, await resp.text()
        shown = await api.show(retried)
        assert await api.status(marked) == "sent"
        # The figures kept per status (held, then sent again) are what a count finds.
        assert await mailman.store.metrics_snapshot() == await mailman.store.recount()
    assert [(a["provider"], a["outcome"], a["checked"]) for a in held["attempts"]] == [
        ("smtp-relay", "unknown", "cannot-check")
    ]
    assert "held" in held["reason"] and listed == [retried]
    assert [(a["provider"], a["outcome"]) for a in shown["attempts"]] == [
        ("smtp-relay", "unknown"),
        ("smtp-relay", "accepted"),
    ]
    assert [parsed(m.data)["X-Mailman-Id"] for m in smtp_relay.dropped] == [retried, marked]
    assert [parsed(m.data)["X-Mailman-Id"] for m in smtp_relay.envelopes] == [retried]
    assert mailgun.calls == 0 and sendgrid.calls == 0


async def test_resend_by_default_sends_a_lost_answer_on(
    tmp_path: Path,
    smtp_relay: FakeSmtpRelay,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """Without a policy (resend): the relay cannot be asked, so Mailgun sends the mail,
    a second copy if the relay had it."""
    env = provider_env(
        sendgrid,
        mailgun,
        MAILMAN_PROVIDERS="smtp-relay,mailgun",
        SMTP_RELAY_URL=smtp_relay.url("smtps"),
    )
    smtp_relay.drop = True
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send()
        await api.wait_status(mail_id, "sent")
        shown = await api.show(mail_id)
    assert [(a["provider"], a["outcome"], a["checked"]) for a in shown["attempts"]] == [
        ("smtp-relay", "unknown", "cannot-check"),
        ("mailgun", "accepted", None),
    ]
    assert len(smtp_relay.dropped) == 1 and mailgun.mail_ids() == [mail_id]

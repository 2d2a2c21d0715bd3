"""SMTP submission (actors.smtp): smtplib and Django's SMTP backend against the running system."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import email.policy
import ipaddress
import smtplib
import sqlite3
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.mime.image import MIMEImage
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailman.actors.smtp import refusal
from mailman.config import SMTP_PORT, Config, ConfigError, load
from mailman.config.roles import ROLE_SMTP, all_roles
from mailman.core.validation import MAX_RECIPIENTS, FieldError, ValidationFailed
from mailman.intake.keys import Scope, create_key
from mailman.intake.refusals import BacklogFull, KeyInFlight, Rate, RateLimited, Refused
from mailman.store import MailQuery, Store
from mailman.system import Mailman, check_exposure, embedded

from ..conftest import eventually, make_config, provider_env
from ..support.fakes import FakeMailgun, FakeSendGrid, ReceivedFile
from ..support.kafka_broker import free_port
from ..support.processes import mailman_process

T = TypeVar("T")

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 12
HTML = '<p>Hello <b>Ann</b></p><img src="cid:logo@example">'


def smtp_config(tmp_path: Path, env: dict[str, str] | None = None) -> Config:
    """The test config with the SMTP listener on a free port (from code: the env's 0 is off)."""
    config = make_config(tmp_path, env)
    return dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, port=0))


def message(
    subject: str = "Welcome", *, to: str = "Ann <ann@example.com>", cc: str | None = None
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Shop <shop@example.com>"
    msg["To"] = to
    if cc is not None:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg.set_content("Hello Ann,\nwelcome aboard.\n")
    return msg


async def in_thread(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking client call, off the loop the system runs in."""
    return await asyncio.to_thread(call, *args, **kwargs)


def transaction(
    port: int,
    msg: EmailMessage | bytes,
    recipients: list[str],
    *,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    sender: str = "bounces@example.com",
) -> tuple[int, str]:
    """One SMTP transaction with smtplib: DATA's reply code and text."""
    raw = msg if isinstance(msg, bytes) else msg.as_bytes(policy=email.policy.SMTP)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("test.example")
        if tls is not None:
            client.starttls(context=tls)
            client.ehlo("test.example")
        if password is not None:
            client.login("api", password)
        code, reply = client.mail(sender)
        if code != 250:
            return code, reply.decode()
        for recipient in recipients:
            client.rcpt(recipient)
        code, reply = client.data(raw)
        return code, reply.decode()


def queued_id(reply: str) -> str:
    prefix = "2.0.0 Ok: queued as "
    assert reply.startswith(prefix), reply
    return reply.removeprefix(prefix)


async def mails_in(store: Store) -> int:
    return len(await store.list_mails(MailQuery(tenant=None, limit=100)))


async def wait_sent(http: aiohttp.ClientSession, url: str, mail_id: str, **headers: str) -> Any:
    async def sent() -> bool:
        async with http.get(f"{url}/mail/{mail_id}/status", headers=headers) as resp:
            return resp.status == 200 and (await resp.json())["mail"]["status"] == "sent"

    await eventually(sent, what=f"mail {mail_id} sent")
    async with http.get(f"{url}/mail/{mail_id}", headers=headers) as resp:
        assert resp.status == 200
        return (await resp.json())["mail"]


# --- end to end ------------------------------------------------------------------


async def test_a_mail_by_smtp_reaches_sendgrid_with_every_recipient(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """From, To, Cc, an envelope-only Bcc and a UTF-8 subject (encoded-words on the wire)
    reach SendGrid; the 250 names the mail id, and GET /mail/{id} knows the mail. The mail
    counts in the process's load while it is taken."""
    config = smtp_config(tmp_path, provider_env(sendgrid, mailgun))
    msg = message("Grüße — willkommen ✓", cc="Bob <bob@example.com>")
    assert b"=?utf-8?" in msg.as_bytes()
    async with embedded(config) as mailman:
        recipients = ["ann@example.com", "bob@example.com", "hidden@example.com"]
        before = mailman.load.active_at
        code, reply = await in_thread(transaction, mailman.smtp_port, msg, recipients)
        assert code == 250, reply
        # The mail counted in the process's load (the relay puts accepts first), and left it.
        assert mailman.load.active_at > before and mailman.load.requests == 0
        mail_id = queued_id(reply)
        shown = await wait_sent(http, mailman.url, mail_id)
    assert shown["provider"] == "sendgrid"
    assert shown["submitted"]["subject"] == "Grüße — willkommen ✓"
    (sent,) = sendgrid.received
    assert sent["personalizations"] == [
        {
            "to": [{"email": "ann@example.com", "name": "Ann"}],
            "cc": [{"email": "bob@example.com", "name": "Bob"}],
            "bcc": [{"email": "hidden@example.com"}],
        }
    ]
    assert sent["from"] == {"email": "shop@example.com", "name": "Shop"}
    assert sent["subject"] == "Grüße — willkommen ✓"
    assert sent["content"] == [{"type": "text/plain", "value": "Hello Ann,\nwelcome aboard.\n"}]
    assert sent["custom_args"]["mail_id"] == mail_id


async def test_alternative_bodies_files_and_an_inline_image_reach_sendgrid_intact(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """multipart/alternative text and HTML, a PDF and an inline image (multipart/related,
    Content-ID) reach SendGrid, the files byte for byte."""
    msg = message()
    msg.add_alternative(HTML, subtype="html")
    html = msg.get_body(("html",))
    assert html is not None
    html.add_related(PNG, "image", "png", cid="<logo@example>", filename="logo.png")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="Rechnung März.pdf")
    async with embedded(smtp_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        code, reply = await in_thread(transaction, mailman.smtp_port, msg, ["ann@example.com"])
        assert code == 250, reply
        await wait_sent(http, mailman.url, queued_id(reply))
    (sent,) = sendgrid.received
    assert [c["type"] for c in sent["content"]] == ["text/plain", "text/html"]
    assert sent["content"][1]["value"] == HTML + "\n"  # as add_alternative wrote it
    assert sendgrid.files == [
        (
            ReceivedFile("inline", "logo.png", "image/png", PNG, content_id="logo@example"),
            ReceivedFile("attachment", "Rechnung März.pdf", "application/pdf", PDF),
        )
    ]


async def test_django_sends_through_its_smtp_backend_with_a_key(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """A Django app whose only change is EMAIL_HOST/EMAIL_PORT/EMAIL_HOST_PASSWORD sends text,
    HTML, a file and an inline image; its Bcc goes out as bcc."""
    from django.conf import settings
    from django.core.mail import EmailMultiAlternatives
    from django.test.utils import override_settings

    if not settings.configured:
        settings.configure(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend")
    async with embedded(smtp_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        _, key = await create_key(mailman.store, tenant="shop", scopes=(Scope.SEND,))

        def send() -> int:
            with override_settings(
                EMAIL_HOST="127.0.0.1",
                EMAIL_PORT=mailman.smtp_port,
                EMAIL_HOST_USER="api",
                EMAIL_HOST_PASSWORD=key,
                EMAIL_TIMEOUT=10,
            ):
                mail = EmailMultiAlternatives(
                    subject="Ihre Rechnung — Grüße",
                    body="Hello Ann,\nyour invoice.\n",
                    from_email="Shop <shop@example.com>",
                    to=["Ann <ann@example.com>"],
                    bcc=["audit@example.com"],
                )
                mail.attach_alternative(HTML, "text/html")
                mail.attach("invoice.pdf", PDF, "application/pdf")
                logo = MIMEImage(PNG, "png")
                logo.add_header("Content-ID", "<logo@example>")
                logo.add_header("Content-Disposition", "inline", filename="logo.png")
                mail.attach(logo)
                return int(mail.send())

        assert await in_thread(send) == 1
        await eventually(lambda: len(sendgrid.received) == 1, what="the mail at SendGrid")
    (sent,) = sendgrid.received
    assert sent["personalizations"] == [
        {
            "to": [{"email": "ann@example.com", "name": "Ann"}],
            "bcc": [{"email": "audit@example.com"}],
        }
    ]
    assert sent["subject"] == "Ihre Rechnung — Grüße"
    assert sent["content"] == [
        {"type": "text/plain", "value": "Hello Ann,\nyour invoice.\n"},
        {"type": "text/html", "value": HTML},
    ]
    assert sendgrid.files == [
        (
            ReceivedFile("attachment", "invoice.pdf", "application/pdf", PDF),
            ReceivedFile("inline", "logo.png", "image/png", PNG, content_id="logo@example"),
        )
    ]


@pytest.mark.slow
async def test_once_a_key_exists_auth_is_required_and_checked(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """530 without AUTH, 535 for an unknown key and for one without the send scope; a good
    key (PLAIN or LOGIN) sends, and the mail is its tenant's."""
    async with embedded(smtp_config(tmp_path)) as mailman:
        _, good = await create_key(mailman.store, tenant="acme", scopes=(Scope.SEND,))
        _, reader = await create_key(mailman.store, tenant="acme", scopes=(Scope.READ,))
        port = mailman.smtp_port
        code, reply = await in_thread(transaction, port, message(), ["ann@example.com"])
        assert (code, reply) == (530, "5.7.0 Authentication required")
        for wrong in ("not-a-key", reader):
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                await in_thread(transaction, port, message(), ["a@example.com"], password=wrong)
            error = refused.value.smtp_error
            assert refused.value.smtp_code == 535
            assert isinstance(error, bytes) and error.startswith(b"5.7.8 ")
            assert wrong.encode() not in error
        code, reply = await in_thread(
            transaction, port, message(), ["ann@example.com"], password=good
        )
        assert code == 250, reply
        record = await mailman.store.get(queued_id(reply))
        assert record is not None and record.mail.tenant == "acme"

        def login_mechanism() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("test.example")
                client.user, client.password = "api", good
                return client.auth("LOGIN", client.auth_login, initial_response_ok=False)

        assert (await in_thread(login_mechanism))[0] == 235
        assert await mails_in(mailman.store) == 1


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp.crt", directory / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_starttls_is_offered_and_auth_waits_for_it(tmp_path: Path) -> None:
    """With a certificate: STARTTLS offered, AUTH neither offered nor taken before it (538);
    after it the key authenticates and the mail is accepted."""
    cert, key = self_signed(tmp_path)
    env = {"MAILMAN_SMTP_TLS_CERT": str(cert), "MAILMAN_SMTP_TLS_KEY": str(key)}
    trust = ssl.create_default_context(cafile=str(cert))
    async with embedded(smtp_config(tmp_path, env)) as mailman:
        _, secret = await create_key(mailman.store, tenant="acme", scopes=(Scope.SEND,))
        port = mailman.smtp_port

        def before_tls() -> tuple[bool, bool, int]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("test.example")
                offered = (client.has_extn("starttls"), client.has_extn("auth"))
                plain = base64.b64encode(f"\0api\0{secret}".encode()).decode()
                code, _ = client.docmd("AUTH", f"PLAIN {plain}")
                return (*offered, code)

        assert await in_thread(before_tls) == (True, False, 538)
        code, reply = await in_thread(
            transaction, port, message(), ["ann@example.com"], password=secret, tls=trust
        )
        assert code == 250, reply
        assert await mails_in(mailman.store) == 1


async def test_the_implicit_tls_port_speaks_tls_at_once_and_takes_auth(tmp_path: Path) -> None:
    """MAILMAN_SMTP_TLS_PORT (as on 465): TLS from the first byte, AUTH offered without
    STARTTLS, and a mail sent with SMTP_SSL is accepted."""
    cert, key = self_signed(tmp_path)
    env = {"MAILMAN_SMTP_TLS_CERT": str(cert), "MAILMAN_SMTP_TLS_KEY": str(key)}
    config = smtp_config(tmp_path, env)
    config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, tls_port=0))
    trust = ssl.create_default_context(cafile=str(cert))
    async with embedded(config) as mailman:
        _, secret = await create_key(mailman.store, tenant="acme", scopes=(Scope.SEND,))
        port = mailman.smtp_tls_port
        assert port is not None and port != mailman.smtp_port

        def send() -> tuple[bool, bool, str]:
            with smtplib.SMTP_SSL("127.0.0.1", port, context=trust, timeout=10) as client:
                client.ehlo("test.example")
                offered = (client.has_extn("starttls"), client.has_extn("auth"))
                client.login("api", secret)
                client.send_message(message(), to_addrs=["ann@example.com"])
                assert isinstance(client.sock, ssl.SSLSocket)
                return (*offered, client.sock.version() or "")

        starttls, auth, version = await in_thread(send)
        assert await mails_in(mailman.store) == 1
    assert (starttls, auth) == (False, True)
    assert version.startswith("TLS")


async def test_a_mail_over_the_size_limit_is_refused_with_552(tmp_path: Path) -> None:
    """EHLO says SIZE; a larger DATA, or a MAIL FROM announcing more, gets 552 5.3.4."""
    async with embedded(smtp_config(tmp_path, {"MAILMAN_SMTP_MAX_BYTES": "4000"})) as mailman:
        port = mailman.smtp_port
        big = message()
        big.add_attachment(PDF, maintype="application", subtype="pdf", filename="big.pdf")
        code, reply = await in_thread(transaction, port, big, ["ann@example.com"])
        assert (code, reply) == (552, "5.3.4 The mail is larger than the limit of 4000 bytes")

        def announced() -> tuple[int | None, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("test.example")
                size = client.esmtp_features.get("size")
                return int(size) if size else None, client.mail("a@example.com", ["SIZE=5000"])

        size, (code, _) = await in_thread(announced)
        assert (size, code) == (4000, 552)
        assert await mails_in(mailman.store) == 0


async def test_more_recipients_than_the_limit_get_452(tmp_path: Path) -> None:
    """RCPT past MAX_RECIPIENTS is 452 4.5.3; a malformed one 553; the mail goes to the rest."""
    async with embedded(smtp_config(tmp_path)) as mailman:
        port = mailman.smtp_port

        def many() -> tuple[list[int], int, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo("test.example")
                client.mail("shop@example.com")
                bad = client.rcpt("not-an-address")[0]
                codes = [client.rcpt(f"r{i}@example.com")[0] for i in range(MAX_RECIPIENTS + 1)]
                raw = message(to="r0@example.com").as_bytes(policy=email.policy.SMTP)
                return codes, bad, client.data(raw)

        codes, bad, (code, reply) = await in_thread(many)
    assert codes == [250] * MAX_RECIPIENTS + [452]
    assert bad == 553
    assert code == 250, reply


async def test_an_invalid_from_is_refused_naming_the_field_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    """A From Mailman cannot send from is 550 5.1.7 naming ``from``; nothing is stored."""
    raw = b"From: Shop <shop@@example.com>\r\nTo: ann@example.com\r\nSubject: x\r\n\r\nHello\r\n"
    async with embedded(smtp_config(tmp_path)) as mailman:
        code, reply = await in_thread(transaction, mailman.smtp_port, raw, ["ann@example.com"])
        assert await mails_in(mailman.store) == 0
    assert code == 550
    lines = reply.splitlines()
    assert lines[0] == "5.1.7 The mail is not valid; nothing was stored:"
    assert lines[1].startswith("5.1.7 from: ")


async def test_a_mail_sent_again_with_its_message_id_is_taken_once(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """The same mail again (a client that lost the 250) gets the first id back and goes out
    once; another mail with the same Message-ID, or with none, is a new mail."""
    config = smtp_config(tmp_path, provider_env(sendgrid, mailgun))
    msg = message()
    msg["Message-ID"] = "<order-4711@shop.example.com>"
    reused = message("Another mail")
    reused["Message-ID"] = msg["Message-ID"]
    bare = message()
    recipients = ["ann@example.com"]
    async with embedded(config) as mailman:
        port = mailman.smtp_port
        first = queued_id((await in_thread(transaction, port, msg, recipients))[1])
        again = queued_id((await in_thread(transaction, port, msg, recipients))[1])
        other = queued_id((await in_thread(transaction, port, reused, recipients))[1])
        plain = [queued_id((await in_thread(transaction, port, bare, recipients))[1]) for _ in "ab"]
        for mail_id in (first, other, *plain):
            await wait_sent(http, mailman.url, mail_id)
    assert again == first
    assert len({first, other, *plain}) == 4
    assert sorted(sendgrid.mail_ids()) == sorted([first, other, *plain])


def connect(port: int) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, timeout=10)


async def test_connections_past_the_limit_get_421_and_the_rest_are_served(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With a limit of 2, a third connection is told 421 at once; once one closes, a new
    connection is served again; /metrics counts the 421 and the mail's 250."""
    config = smtp_config(tmp_path)
    config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, max_connections=2))
    async with embedded(config) as mailman:
        port = mailman.smtp_port
        first, second = await in_thread(connect, port), await in_thread(connect, port)
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            await in_thread(connect, port)
        assert refused.value.smtp_code == 421
        await in_thread(first.quit)
        code, reply = await in_thread(transaction, port, message(), ["ann@example.com"])
        await in_thread(second.quit)
        async with http.get(f"{mailman.url}/metrics") as resp:
            metrics = await resp.text()
    assert code == 250, reply
    assert 'mailman_smtp_replies_total{code="421",stage="connect"} 1.0' in metrics
    assert 'mailman_smtp_replies_total{code="250",stage="data"} 1.0' in metrics


@pytest.mark.slow
async def test_a_locked_store_is_a_transient_451(tmp_path: Path) -> None:
    """The store not answering in time: 451 4.3.0 (the client tries again), nothing lost."""
    config = smtp_config(tmp_path, {"MAILMAN_STORE_TIMEOUT_SECONDS": "0.3"})
    async with embedded(config) as mailman:
        port = mailman.smtp_port
        with smtplib.SMTP(timeout=10) as client:  # connected off the loop: it greets
            await in_thread(client.connect, "127.0.0.1", port)
            await in_thread(client.ehlo, "test.example")
            assert (await in_thread(client.mail, "shop@example.com"))[0] == 250
            assert (await in_thread(client.rcpt, "ann@example.com"))[0] == 250
            blocker = sqlite3.connect(tmp_path / "mailman.db", isolation_level=None)
            try:
                blocker.execute("BEGIN EXCLUSIVE")
                raw = message().as_bytes(policy=email.policy.SMTP)
                code, reply = await in_thread(client.data, raw)
            finally:
                blocker.rollback()
                blocker.close()
        assert code == 451, reply
        assert reply.startswith(b"4.3.0 ")
        code, reply_text = await in_thread(transaction, port, message(), ["ann@example.com"])
        assert code == 250, reply_text


async def test_stopping_says_421_to_an_idle_connection_and_is_prompt(tmp_path: Path) -> None:
    """An open connection does not hold up the stop: it hears 421 and is closed."""
    client = smtplib.SMTP(timeout=10)
    try:
        async with embedded(smtp_config(tmp_path)) as mailman:
            await in_thread(client.connect, "127.0.0.1", mailman.smtp_port)
            await in_thread(client.ehlo, "test.example")
            loop = asyncio.get_running_loop()
            stopping_at = loop.time()
        assert loop.time() - stopping_at < 5
        try:
            code, _ = await in_thread(client.noop)
        except smtplib.SMTPServerDisconnected:
            code = 421
        assert code == 421
    finally:
        client.close()


@pytest.mark.parametrize(
    ("refused", "reply"),
    [
        (
            ValidationFailed([FieldError("to[1]", "is not valid: ünï")]),
            "550-5.1.3 The mail is not valid; nothing was stored:\r\n"
            "550 5.1.3 to[1]: is not valid: ?n?",
        ),
        (
            ValidationFailed([FieldError("attachments", "at most 10 MiB")], status=413),
            "552-5.3.4 The mail is too large; nothing was stored:\r\n"
            "552 5.3.4 attachments: at most 10 MiB",
        ),
        (
            RateLimited(Rate(2.0, 0, 1.0), retry_after=3),
            "451 4.3.0 Rate limited: this key sends too fast. Try again in 3 s",
        ),
        (
            BacklogFull(100, 100, retry_after=5),
            "451 4.3.0 Mailman cannot take mail now; nothing was stored. Try again in 5 s",
        ),
        (
            KeyInFlight(retry_after=1),
            "451 4.3.0 This mail is being taken already. Try again in 1 s",
        ),
    ],
)
def test_refusals_are_worded_as_smtp_replies(
    refused: Refused | ValidationFailed, reply: str
) -> None:
    """An invalid mail is 550 (5.1.3 for a recipient), one too large 552 5.3.4; a rate
    limit, a full backlog and the same Message-ID in flight are a transient 451; one reply
    line per field, printable ASCII."""
    assert refusal(refused) == reply


# --- its own process ---------------------------------------------------------------


@pytest.mark.slow
async def test_role_smtp_runs_in_its_own_process_beside_the_rest(tmp_path: Path) -> None:
    """--role smtp in one process, the relay and senders in another, on one SQLite file: a
    mail sent by SMTP is committed there and sent by the other (the relay is woken)."""
    port = free_port()
    env = {
        "MAILMAN_STORE": f"sqlite:///{tmp_path / 'm.db'}",
        "MAILMAN_PROVIDERS": "outbox",
        "MAILMAN_OUTBOX_DIR": str(tmp_path / "outbox"),
        "MAILMAN_SMTP_PORT": str(port),
        "MAILMAN_RELAY_INTERVAL_SECONDS": "60",  # only the wake-up can send it in time
    }
    rest = "outbox,relay,retry,sweeper"
    async with (
        mailman_process(env, tmp_path / "rest.log", "--role", rest),
        mailman_process(env, tmp_path / "smtp.log", "--role", "smtp") as smtp,
    ):
        (ready,) = smtp.events("mailman.ready")
        assert ready["smtp_port"] == port
        code, reply = await in_thread(transaction, port, message(), ["ann@example.com"])
        assert code == 250, reply
        eml = tmp_path / "outbox" / f"{queued_id(reply)}.eml"
        await eventually(eml.exists, within=15, what="the mail written by the other process")
    assert b"Hello Ann" in eml.read_bytes()


# --- configuration and roles ---------------------------------------------------------


def test_smtp_listens_on_2525_by_default_and_0_turns_it_off() -> None:
    """A plain run serves SMTP on 2525 (role smtp in all); MAILMAN_SMTP_PORT=0 turns it off."""
    default = load([], {})
    assert default.smtp.port == SMTP_PORT == 2525 and Config().smtp.port == SMTP_PORT
    assert ROLE_SMTP in all_roles(default)
    off = load([], {"MAILMAN_SMTP_PORT": "0"})
    assert off.smtp.port is None and ROLE_SMTP not in all_roles(off)
    with pytest.raises(ConfigError, match="MAILMAN_SMTP_PORT is 0"):
        Mailman(load(["--role", "smtp", "--store", "sqlite:///x.db"], {"MAILMAN_SMTP_PORT": "0"}))
    with pytest.raises(ConfigError, match="MAILMAN_SMTP_PORT"):
        load([], {"MAILMAN_SMTP_PORT": "70000"})


def test_tls_files_are_checked_at_load_naming_paths_not_contents(tmp_path: Path) -> None:
    """A certificate without its key, an unreadable file, or files that are no certificate
    and key are refused at load; the message names the files, never what they hold."""
    cert, key = self_signed(tmp_path)
    loaded = load([], {"MAILMAN_SMTP_TLS_CERT": str(cert), "MAILMAN_SMTP_TLS_KEY": str(key)})
    assert (loaded.smtp.tls_cert, loaded.smtp.tls_key) == (cert, key)
    with pytest.raises(ConfigError, match="go together"):
        load([], {"MAILMAN_SMTP_TLS_CERT": str(cert)})
    missing = tmp_path / "missing.key"
    with pytest.raises(ConfigError, match=f"MAILMAN_SMTP_TLS_KEY: cannot read {missing}"):
        load([], {"MAILMAN_SMTP_TLS_CERT": str(cert), "MAILMAN_SMTP_TLS_KEY": str(missing)})
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2-very-secret")
    with pytest.raises(ConfigError) as refused:
        load([], {"MAILMAN_SMTP_TLS_CERT": str(secret), "MAILMAN_SMTP_TLS_KEY": str(key)})
    assert str(secret) in str(refused.value) and "hunter2" not in str(refused.value)


def test_the_implicit_tls_port_needs_the_certificate(tmp_path: Path) -> None:
    """MAILMAN_SMTP_TLS_PORT is taken with a certificate, refused without one or with SMTP off."""
    cert, key = self_signed(tmp_path)
    files = {"MAILMAN_SMTP_TLS_CERT": str(cert), "MAILMAN_SMTP_TLS_KEY": str(key)}
    assert load([], {**files, "MAILMAN_SMTP_TLS_PORT": "465"}).smtp.tls_port == 465
    assert load([], files).smtp.tls_port is None
    with pytest.raises(ConfigError, match="MAILMAN_SMTP_TLS_CERT"):
        load([], {"MAILMAN_SMTP_TLS_PORT": "465"})
    with pytest.raises(ConfigError, match="MAILMAN_SMTP_PORT"):
        load([], {**files, "MAILMAN_SMTP_TLS_PORT": "465", "MAILMAN_SMTP_PORT": "0"})


def test_role_smtp_splits_like_api_and_wakes_a_relay_elsewhere(tmp_path: Path) -> None:
    """smtp runs alone or beside api (its mails wake the relay in the other process); the
    other roles still go all together with in-process mailboxes."""
    env = {"MAILMAN_SMTP_PORT": str(SMTP_PORT)}
    alone = Mailman(make_config(tmp_path, env, "--role", "smtp"))
    assert alone.roles == {"smtp"} and alone.nudge.remote is not None
    both = Mailman(make_config(tmp_path, env, "--role", "api,smtp"))
    assert both.roles == {"api", "smtp"}
    with pytest.raises(ConfigError, match="split only into api and the rest"):
        Mailman(make_config(tmp_path, env, "--role", "smtp,relay"))


async def test_an_open_smtp_listener_off_loopback_is_refused(store: Store) -> None:
    """With no key in the store, SMTP on a public address is refused like the API; with a key
    (or on loopback) it may serve."""
    public = dataclasses.replace(Config(), smtp=dataclasses.replace(Config().smtp, host="0.0.0.0"))
    roles = frozenset({ROLE_SMTP})
    with pytest.raises(ConfigError, match=r"refusing to serve SMTP on 0\.0\.0\.0"):
        await check_exposure(public, store, roles)
    await check_exposure(Config(), store, roles)
    await create_key(store, tenant="acme", scopes=(Scope.SEND,))
    await check_exposure(public, store, roles)

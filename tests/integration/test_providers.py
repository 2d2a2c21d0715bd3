"""Provider clients against fake providers that are real HTTP servers."""

from __future__ import annotations

import email.policy
import email.utils
import os
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from mailman.config import Secret
from mailman.core.ids import new_id
from mailman.core.model import Address, Mail
from mailman.providers import (
    MAX_REASON,
    Accepted,
    Misconfigured,
    ProviderClient,
    Rejected,
    Result,
    Transient,
    Unknown,
    classify,
    parse_retry_after,
)
from mailman.providers.mailgun import MailgunClient, MailgunConfig
from mailman.providers.outbox import OutboxClient, OutboxConfig
from mailman.providers.sendgrid import SendGridClient, SendGridConfig
from tests.support.fakes import FakeMailgun, FakeSendGrid, Mode

SG_KEY = "SG.test-key-7f3a9c"
MG_KEY = "key-test-4b8e21"
MG_DOMAIN = "mg.example.com"
TIMEOUT = 2.0
#: A key no reason may ever contain.
SECRET = "SG.do-not-leak-XYZZY-0b5e"


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


def sendgrid_client(
    fake: FakeSendGrid | str, key: str = SG_KEY, timeout: float = TIMEOUT
) -> SendGridClient:
    url = fake if isinstance(fake, str) else fake.base_url
    return SendGridClient(SendGridConfig(Secret(key), url), timeout)


def mailgun_client(
    fake: FakeMailgun | str, key: str = MG_KEY, domain: str = MG_DOMAIN, timeout: float = TIMEOUT
) -> MailgunClient:
    url = fake if isinstance(fake, str) else fake.base_url
    return MailgunClient(MailgunConfig(Secret(key), domain, url), timeout)


async def send_once(client: ProviderClient, mail: Mail) -> Result:
    await client.start()
    try:
        return await client.send(mail)
    finally:
        await client.close()


@pytest.fixture
async def sendgrid() -> AsyncIterator[FakeSendGrid]:
    async with FakeSendGrid(api_key=SG_KEY) as fake:
        yield fake


@pytest.fixture
async def mailgun() -> AsyncIterator[FakeMailgun]:
    async with FakeMailgun(api_key=MG_KEY, domain=MG_DOMAIN) as fake:
        yield fake


# --- SendGrid ----------------------------------------------------------------


async def test_sendgrid_success_sends_the_documented_body(sendgrid: FakeSendGrid) -> None:
    """A mail reaches SendGrid as one personalization, text before html, with its mail id."""
    mail = make_mail(
        cc=(Address("cat@example.com"),),
        bcc=(Address("bob@example.com", "Bob"),),
        reply_to=Address("help@example.com", "Help"),
    )
    result = await send_once(sendgrid_client(sendgrid), mail)

    assert result == Accepted(message_id=sendgrid.message_ids[0])
    assert result.message_id
    assert sendgrid.received == [
        {
            "personalizations": [
                {
                    "to": [{"email": "ann@example.com", "name": "Ann"}],
                    "cc": [{"email": "cat@example.com"}],
                    "bcc": [{"email": "bob@example.com", "name": "Bob"}],
                }
            ],
            "from": {"email": "noreply@example.com", "name": "Mailman"},
            "reply_to": {"email": "help@example.com", "name": "Help"},
            "subject": "Hello",
            "content": [
                {"type": "text/plain", "value": "Hi Ann"},
                {"type": "text/html", "value": "<p>Hi Ann</p>"},
            ],
            # One Message-ID for the mail, whichever provider sends it.
            "headers": {"Message-ID": f"<{mail.id}@example.com>"},
            "custom_args": {"mail_id": mail.id},
        }
    ]
    assert sendgrid.mail_ids() == [mail.id]


async def test_sendgrid_reuses_one_session(sendgrid: FakeSendGrid) -> None:
    """Several sends go through one started client; close is idempotent."""
    client = sendgrid_client(sendgrid)
    await client.start()
    mails = [make_mail(), make_mail(html=None), make_mail(text=None)]
    results = [await client.send(m) for m in mails]
    await client.close()
    await client.close()

    assert all(isinstance(r, Accepted) for r in results)
    assert sendgrid.mail_ids() == [m.id for m in mails]
    assert [b["content"][0]["type"] for b in sendgrid.received] == [
        "text/plain",
        "text/plain",
        "text/html",
    ]


async def test_sendgrid_drops_repeated_recipients(sendgrid: FakeSendGrid) -> None:
    """An address is sent once (first wins, any case); a cc/bcc left empty is dropped."""
    mail = make_mail(
        to=(Address("ann@example.com", "Ann"), Address("ANN@example.com", "Ann again")),
        cc=(Address("Ann@Example.com"), Address("bob@example.com")),
        bcc=(Address("bob@example.com"), Address("ANN@EXAMPLE.COM")),
    )
    result = await send_once(sendgrid_client(sendgrid), mail)

    assert isinstance(result, Accepted)
    (personalization,) = sendgrid.received[0]["personalizations"]
    assert personalization == {
        "to": [{"email": "ann@example.com", "name": "Ann"}],
        "cc": [{"email": "bob@example.com"}],
    }


async def test_sendgrid_recipient_names_lose_separators(sendgrid: FakeSendGrid) -> None:
    """Recipient names with ';' or ',' (which SendGrid refuses) are still sent."""
    mail = make_mail(to=(Address("ann@example.com", "Doe, Ann; PhD"),))
    result = await send_once(sendgrid_client(sendgrid), mail)

    assert isinstance(result, Accepted)
    assert sendgrid.received[0]["personalizations"][0]["to"] == [
        {"email": "ann@example.com", "name": "Doe Ann PhD"}
    ]


async def test_sendgrid_fake_enforces_the_real_validation(sendgrid: FakeSendGrid) -> None:
    """A body SendGrid would refuse (empty subject, no content) is Rejected with its messages."""
    result = await send_once(sendgrid_client(sendgrid), make_mail(subject="", text="", html=None))

    assert isinstance(result, Rejected)
    assert result.status == 400
    assert "The subject is required" in result.reason
    assert "the content parameter is required" in result.reason
    assert sendgrid.calls == 1
    assert sendgrid.received == []


async def test_sendgrid_wrong_key_is_misconfigured(sendgrid: FakeSendGrid) -> None:
    """A key SendGrid does not know gives Misconfigured (401) with SendGrid's message."""
    result = await send_once(sendgrid_client(sendgrid, key="SG.wrong"), make_mail())

    assert isinstance(result, Misconfigured)
    assert result.status == 401
    assert result.reason == "The provided authorization grant is invalid, expired, or revoked"
    assert result.unwell


# --- Mailgun -----------------------------------------------------------------


async def test_mailgun_success_sends_the_documented_form(mailgun: FakeMailgun) -> None:
    """A mail reaches Mailgun as form fields with repeated recipients and its mail id."""
    mail = make_mail(
        to=(Address("ann@example.com", "Ann"), Address("dan@example.com")),
        cc=(Address("cat@example.com", "Doe, Cat"),),
        bcc=(Address("bob@example.com"),),
        reply_to=Address("help@example.com", "Help"),
    )
    result = await send_once(mailgun_client(mailgun), mail)

    assert isinstance(result, Accepted)
    # Mailgun takes the h:Message-Id given as the message's id, angle brackets kept.
    assert result.message_id == mailgun.message_ids[0] == mail.message_id
    assert mailgun.received == [
        {
            "from": ["Mailman <noreply@example.com>"],
            "to": ["Ann <ann@example.com>", "dan@example.com"],
            "cc": ['"Doe, Cat" <cat@example.com>'],
            "bcc": ["bob@example.com"],
            "subject": ["Hello"],
            "text": ["Hi Ann"],
            "html": ["<p>Hi Ann</p>"],
            "h:Reply-To": ["Help <help@example.com>"],
            "h:Message-Id": [f"<{mail.id}@example.com>"],
            "v:mail_id": [mail.id],
        }
    ]
    assert mailgun.mail_ids() == [mail.id]


async def test_mailgun_wrong_key_is_misconfigured(mailgun: FakeMailgun) -> None:
    """A wrong key gets Mailgun's plain-text 401 'Forbidden': Misconfigured."""
    result = await send_once(mailgun_client(mailgun, key="key-wrong"), make_mail())

    assert result == Misconfigured("Forbidden", 401)


async def test_mailgun_wrong_domain_is_misconfigured(mailgun: FakeMailgun) -> None:
    """An unknown domain gets Mailgun's 404 'Domain not found': Misconfigured."""
    result = await send_once(mailgun_client(mailgun, domain="mg.other.org"), make_mail())

    assert result == Misconfigured("Domain not found: mg.other.org", 404)


async def test_mailgun_fake_requires_a_body(mailgun: FakeMailgun) -> None:
    """A mail with neither text nor html is Rejected (400) with Mailgun's message."""
    result = await send_once(mailgun_client(mailgun), make_mail(text=None, html=None))

    assert isinstance(result, Rejected)
    assert result.status == 400
    assert "'text', 'html'" in result.reason


# --- failure modes, both providers -------------------------------------------


def client_for(fake: FakeSendGrid | FakeMailgun, key: str, timeout: float) -> ProviderClient:
    if isinstance(fake, FakeSendGrid):
        return sendgrid_client(fake, key=key, timeout=timeout)
    return mailgun_client(fake, key=key, timeout=timeout)


@pytest.fixture(params=["sendgrid", "mailgun"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeSendGrid | FakeMailgun]:
    """Each fake provider in turn, knowing the key ``SECRET``."""
    provider: FakeSendGrid | FakeMailgun
    if request.param == "sendgrid":
        provider = FakeSendGrid(api_key=SECRET)
    else:
        provider = FakeMailgun(api_key=SECRET, domain=MG_DOMAIN)
    async with provider:
        yield provider


@pytest.mark.parametrize(
    ("mode", "kind", "status"),
    [
        ("503", Transient, 503),
        ("429", Transient, 429),
        ("400", Rejected, 400),
        ("401", Misconfigured, 401),
    ],
)
async def test_modes_are_classified(
    fake: FakeSendGrid | FakeMailgun, mode: Mode, kind: type[Result], status: int
) -> None:
    """Each forced failure gives the result type its status calls for, and no mail is kept."""
    fake.mode = mode
    fake.retry_after = "7"
    result = await send_once(client_for(fake, SECRET, TIMEOUT), make_mail())

    assert type(result) is kind
    assert getattr(result, "status", None) == status
    assert result.unwell is (kind is not Rejected)
    if mode == "429":
        assert isinstance(result, Transient)
        assert result.retry_after == 7.0
    assert fake.calls == 1
    assert fake.received == []


async def test_timeout_is_unknown(fake: FakeSendGrid | FakeMailgun) -> None:
    """A provider that never answers a sent request gives Unknown once the timeout fires."""
    fake.mode = "timeout"
    result = await send_once(client_for(fake, SECRET, 0.2), make_mail())

    assert isinstance(result, Unknown)
    assert result.reason.startswith("timeout")
    assert result.unwell
    assert fake.calls == 1


async def test_slow_provider_past_the_timeout_is_unknown(
    fake: FakeSendGrid | FakeMailgun,
) -> None:
    """A provider slower than the client's timeout gives Unknown; a fast enough one is fine."""
    fake.delay = 0.05
    fast = await send_once(client_for(fake, SECRET, 2.0), make_mail())
    fake.delay = 5.0
    slow = await send_once(client_for(fake, SECRET, 0.2), make_mail())

    assert isinstance(fast, Accepted)
    assert isinstance(slow, Unknown)
    assert slow.reason.startswith("timeout")
    assert fake.calls == 2


async def test_connection_refused_is_transient() -> None:
    """A provider that is not listening gives Transient, for both clients."""
    async with FakeSendGrid() as gone:
        url = gone.base_url
    for client in (sendgrid_client(url, key=SECRET), mailgun_client(url, key=SECRET)):
        result = await send_once(client, make_mail())
        assert isinstance(result, Transient)
        assert result.reason.startswith("connection error")


async def test_malformed_base_url_is_misconfigured() -> None:
    """A base URL that is no URL gives Misconfigured for both clients, without raising."""
    for client in (sendgrid_client("nonsense"), mailgun_client("nonsense")):
        result = await send_once(client, make_mail())
        assert isinstance(result, Misconfigured)
        assert "URL" in result.reason


async def test_api_key_never_in_a_reason(fake: FakeSendGrid | FakeMailgun) -> None:
    """No result reason, in any mode or with a wrong key, contains the API key."""
    results: list[Result] = []
    modes: tuple[Mode, ...] = ("503", "429", "400", "401")
    for mode in modes:
        fake.mode = mode
        results.append(await send_once(client_for(fake, SECRET, TIMEOUT), make_mail()))
    fake.mode = "up"
    wrong = SECRET + "-wrong"
    results.append(await send_once(client_for(fake, wrong, TIMEOUT), make_mail()))
    results.append(
        await send_once(client_for(fake, SECRET, TIMEOUT), make_mail(text=None, html=None))
    )

    assert all(not isinstance(r, Accepted) for r in results)
    for result in results:
        assert SECRET not in repr(result)
        assert "do-not-leak" not in repr(result)


async def test_unstarted_client_starts_itself(sendgrid: FakeSendGrid) -> None:
    """send() before start() opens the session itself; close() releases it."""
    client = sendgrid_client(sendgrid)
    result = await client.send(make_mail())
    await client.close()

    assert isinstance(result, Accepted)


# --- outbox ------------------------------------------------------------------


def read_eml(path: Path) -> EmailMessage:
    with path.open("rb") as f:
        msg = BytesParser(policy=email.policy.default).parse(f)
    assert isinstance(msg, EmailMessage)
    return msg


async def test_outbox_writes_a_parseable_eml(tmp_path: Path) -> None:
    """The .eml has the mail's headers, text and html parts, and no trace of Bcc."""
    directory = tmp_path / "not" / "yet"
    mail = make_mail(
        to=(Address("ann@example.com", "Doe, Ann"), Address("dan@example.com")),
        cc=(Address("cat@example.com", "Cat"),),
        bcc=(Address("secret-bob@example.com", "Bob"),),
        reply_to=Address("help@example.com"),
        subject="Grüße",
    )
    result = await OutboxClient(OutboxConfig(directory)).send(mail)

    assert result == Accepted(message_id=mail.message_id)
    path = directory / f"{mail.id}.eml"
    msg = read_eml(path)
    assert msg["From"] == "Mailman <noreply@example.com>"
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [
        ("Doe, Ann", "ann@example.com"),
        ("", "dan@example.com"),
    ]
    assert msg["Cc"] == "Cat <cat@example.com>"
    assert msg["Reply-To"] == "help@example.com"
    assert msg["Subject"] == "Grüße"
    assert msg["Message-ID"] == mail.message_id
    assert msg["X-Mailman-Id"] == mail.id
    assert email.utils.parsedate_to_datetime(msg["Date"]).timestamp() == int(mail.created_at)
    assert msg["Bcc"] is None
    assert b"secret-bob" not in path.read_bytes()
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content() == "Hi Ann\n"
    assert html.get_content() == "<p>Hi Ann</p>\n"


async def test_outbox_html_only(tmp_path: Path) -> None:
    """A mail with html alone is written as a single text/html part."""
    mail = make_mail(text=None)
    await OutboxClient(OutboxConfig(tmp_path)).send(mail)

    msg = read_eml(tmp_path / f"{mail.id}.eml")
    assert msg.get_content_type() == "text/html"
    assert msg.get_content() == "<p>Hi Ann</p>\n"


async def test_outbox_is_idempotent(tmp_path: Path) -> None:
    """Writing the same mail twice leaves one file and no temporary files."""
    client = OutboxClient(OutboxConfig(tmp_path))
    mail = make_mail()
    first = await client.send(mail)
    second = await client.send(mail)

    assert first == second
    assert os.listdir(tmp_path) == [f"{mail.id}.eml"]


async def test_outbox_unwritable_is_transient(tmp_path: Path) -> None:
    """An outbox path that cannot be a directory gives Transient, not an exception."""
    blocker = tmp_path / "outbox"
    blocker.write_text("a file, not a directory")
    result = await OutboxClient(OutboxConfig(blocker)).send(make_mail())

    assert isinstance(result, Transient)
    assert result.reason.startswith("cannot write outbox: ")


# --- classify and parse_retry_after ------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (408, Transient),
        (429, Transient),
        (500, Transient),
        (502, Transient),
        (503, Transient),
        (504, Transient),
        (401, Misconfigured),
        (402, Misconfigured),
        (403, Misconfigured),
        (404, Misconfigured),
        (405, Misconfigured),
        (400, Rejected),
        (413, Rejected),
        (422, Rejected),
        (302, Transient),
    ],
)
def test_classify_by_status(status: int, kind: type[Result]) -> None:
    """Each HTTP status maps to the result type the failure policy names."""
    result = classify(status, "boom")

    assert type(result) is kind
    assert getattr(result, "status", None) == status


def test_classify_reason() -> None:
    """An empty reason becomes 'HTTP <status>'; a long one is cut to MAX_REASON; a 429 is
    rate limited."""
    assert classify(503, "  ") == Transient("HTTP 503", 503)
    long = classify(400, "x" * 2000)
    assert isinstance(long, Rejected)
    assert len(long.reason) == MAX_REASON
    assert classify(429, "slow down", "30") == Transient("slow down", 429, 30.0, True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("inf", 600.0),
        ("Infinity", 600.0),
        ("1e400", 600.0),
        ("-inf", 0.0),
        ("nan", None),
        ("-5", 0.0),
        ("86400", 600.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 600.0),
        ("Mon, 99 Foo 99999 99:99:99 GMT", None),
        ("\u00e9\u00e9", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After is read as delta-seconds or as an HTTP date, clamped to [0, cap]; a value
    that is neither (garbage, NaN) counts as absent."""
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()

    assert parse_retry_after(value, now=now, cap=600.0) == expected


def test_one_message_id_whichever_provider_sends_the_mail() -> None:
    """SendGrid's body, Mailgun's form and the .eml carry the same Message-ID for one mail."""
    from mailman.providers import mailgun, outbox, sendgrid

    mail = Mail(
        id=new_id(),
        sender=Address("noreply@mg.example.com", "Mailman"),
        to=(Address("ann@example.com"),),
        subject="Hi",
        text="Hello",
    )
    expected = f"<{mail.id}@mg.example.com>"
    assert mail.message_id == expected
    assert sendgrid.body(mail)["headers"] == {"Message-ID": expected}
    assert ("h:Message-Id", expected) in mailgun.form(mail)
    parsed = BytesParser(policy=email.policy.default).parsebytes(outbox.render(mail))
    assert parsed["Message-ID"] == expected


async def test_a_client_holds_more_calls_in_flight_than_aiohttps_default_pool(
    sendgrid: FakeSendGrid,
) -> None:
    """150 sends at once all reach the provider together: no pool cap of 100 queues them."""
    import asyncio

    from ..conftest import eventually

    sendgrid.gate = asyncio.Event()  # holds every request until set
    client = sendgrid_client(sendgrid, timeout=30)
    await client.start()
    try:
        sends = [asyncio.create_task(client.send(make_mail())) for _ in range(150)]
        await eventually(lambda: sendgrid.calls == 150, what="150 requests in flight at once")
        sendgrid.gate.set()
        results = await asyncio.gather(*sends)
    finally:
        await client.close()
    assert all(isinstance(result, Accepted) for result in results)

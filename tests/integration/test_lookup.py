"""Unknown vs Transient, and asking a provider whether it took a mail (``lookup``).

Real fake providers on loopback (tests/support/fakes.py): a slow one that
answers only after it has kept the mail, one that keeps the mail and drops the
connection, Mailgun's Events API. No mocks; nothing waits on a sleep.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from aiohttp import web

from mailman.core.model import Check, Mail
from mailman.providers import Accepted, Found, ProviderClient, Transient, Unknown
from mailman.providers.outbox import OutboxClient, OutboxConfig

from ..support.fakes import FakeMailgun, FakeSendGrid
from .test_providers import mailgun_client, make_mail, send_once, sendgrid_client

#: The key the fakes know; no reason may contain it.
SECRET = "key-do-not-leak-PLUGH-93c1"
DOMAIN = "mg.example.com"
#: A client timeout the fakes' delays run well past.
SHORT = 0.3


@pytest.fixture
async def mailgun() -> AsyncIterator[FakeMailgun]:
    async with FakeMailgun(api_key=SECRET, domain=DOMAIN) as fake:
        yield fake


@pytest.fixture(params=["sendgrid", "mailgun"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeSendGrid | FakeMailgun]:
    """Each fake provider in turn, knowing the key ``SECRET``."""
    provider: FakeSendGrid | FakeMailgun
    if request.param == "sendgrid":
        provider = FakeSendGrid(api_key=SECRET)
    else:
        provider = FakeMailgun(api_key=SECRET, domain=DOMAIN)
    async with provider:
        yield provider


def client_for(fake: FakeSendGrid | FakeMailgun | str, timeout: float = 2.0) -> ProviderClient:
    if isinstance(fake, FakeSendGrid):
        return sendgrid_client(fake, key=SECRET, timeout=timeout)
    return mailgun_client(fake, key=SECRET, domain=DOMAIN, timeout=timeout)


async def lookup_once(client: ProviderClient, mail: Mail, since: float = 0.0) -> Found:
    await client.start()
    try:
        return await client.lookup(mail, since)
    finally:
        await client.close()


def assert_no_secret(found: Found) -> None:
    assert SECRET not in repr(found)
    assert "PLUGH" not in repr(found)


# --- Unknown vs Transient ----------------------------------------------------


async def test_slow_answer_after_keeping_the_mail_is_unknown(
    fake: FakeSendGrid | FakeMailgun,
) -> None:
    """A provider that keeps the mail but answers after the client's timeout gives Unknown."""
    fake.answer_delay = 30.0  # cut short when the fake stops
    mail = make_mail()
    result = await send_once(client_for(fake, timeout=SHORT), mail)

    assert isinstance(result, Unknown)
    assert result.reason == f"timeout after {SHORT:g}s waiting for the answer"
    assert result.unwell
    assert fake.mail_ids() == [mail.id]  # the provider has it: the answer alone was lost
    assert SECRET not in repr(result)


async def test_accept_then_drop_is_unknown(fake: FakeSendGrid | FakeMailgun) -> None:
    """A provider that keeps the mail and closes the connection unanswered gives Unknown."""
    fake.mode = "drop"
    mail = make_mail()
    result = await send_once(client_for(fake), mail)

    assert isinstance(result, Unknown)
    assert result.reason == "connection lost before the answer: the server closed the connection"
    assert fake.mail_ids() == [mail.id]
    assert SECRET not in repr(result)


async def test_connection_refused_is_transient() -> None:
    """Nothing listening gives Transient for both clients: the request never left."""
    async with FakeSendGrid() as gone:
        url = gone.base_url
    for client in (sendgrid_client(url, key=SECRET), client_for(url)):
        result = await send_once(client, make_mail())
        assert isinstance(result, Transient)
        assert result.reason.startswith("connection error: cannot connect to 127.0.0.1:")
        assert "ConnectionRefusedError" in result.reason


@contextmanager
def unaccepting_listener() -> Iterator[str]:
    """A base URL whose listener never accepts and whose backlog is full: a new
    connection hangs in the handshake (Linux drops the SYN of a full accept queue)."""
    server = socket.socket()
    fillers: list[socket.socket] = []
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        server.close()


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux's full-backlog behaviour")
@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
async def test_connect_timeout_is_transient(provider: str) -> None:
    """No connection within the connect share of the timeout gives Transient, not Unknown."""
    with unaccepting_listener() as url:
        client = (
            sendgrid_client(url, key=SECRET, timeout=SHORT)
            if provider == "sendgrid"
            else client_for(url, timeout=SHORT)
        )
        result = await send_once(client, make_mail())

    assert isinstance(result, Transient)
    assert result.reason.startswith("connection error: no connection within")


# --- Mailgun lookup ----------------------------------------------------------


async def test_mailgun_lookup_finds_an_accepted_mail(mailgun: FakeMailgun) -> None:
    """A mail Mailgun accepted is TAKEN, with its Message-ID (Mailgun's id for it)."""
    mail = make_mail()
    sent = await send_once(client_for(mailgun), mail)
    found = await lookup_once(client_for(mailgun), mail, since=time.time() - 5)

    assert isinstance(sent, Accepted)
    assert found == Found(Check.TAKEN, message_id=mail.message_id)
    assert sent.message_id == mail.message_id == mailgun.message_ids[0]
    assert mailgun.lookups == 1


async def test_mailgun_lookup_not_found(mailgun: FakeMailgun) -> None:
    """A mail Mailgun never accepted is NOT_FOUND, though it accepted another."""
    await send_once(client_for(mailgun), make_mail())
    found = await lookup_once(client_for(mailgun), make_mail(), since=time.time() - 5)

    assert found == Found(Check.NOT_FOUND)
    assert len(mailgun.events) == 1


async def test_mailgun_lookup_searches_from_since(mailgun: FakeMailgun) -> None:
    """The search covers events at or after ``since`` (whole seconds): the very time of
    acceptance finds the mail, a second after it does not."""
    mail = make_mail()
    await send_once(client_for(mailgun), mail)
    accepted_at = mailgun.events[0]["timestamp"]

    at = await lookup_once(client_for(mailgun), mail, since=accepted_at)
    after = await lookup_once(client_for(mailgun), mail, since=accepted_at + 1)

    assert at.check is Check.TAKEN
    assert after.check is Check.NOT_FOUND


async def test_lost_answer_then_lookup_finds_the_mail(mailgun: FakeMailgun) -> None:
    """The whole case: the answer is lost (Unknown), and asking Mailgun says it is TAKEN."""
    mailgun.answer_delay = 30.0
    mail = make_mail()
    started = time.time()
    result = await send_once(client_for(mailgun, timeout=SHORT), mail)
    mailgun.answer_delay = 0.0
    found = await lookup_once(client_for(mailgun), mail, since=started)

    assert isinstance(result, Unknown)
    assert found == Found(Check.TAKEN, message_id=mail.message_id)


async def test_mailgun_lookup_wrong_key_cannot_check(mailgun: FakeMailgun) -> None:
    """A key Mailgun refuses (401 Forbidden) gives CANNOT, the key in no reason."""
    mail = make_mail()
    await send_once(client_for(mailgun), mail)
    wrong = mailgun_client(mailgun, key=SECRET + "-wrong", domain=DOMAIN)
    found = await lookup_once(wrong, mail)

    assert found.check is Check.CANNOT
    assert found.reason == "events search: HTTP 401: Forbidden"
    assert found.message_id is None
    assert_no_secret(found)


async def test_mailgun_lookup_server_error_cannot_check(mailgun: FakeMailgun) -> None:
    """Mailgun answering 503 gives CANNOT with its message, the key in no reason."""
    mailgun.mode = "503"
    found = await lookup_once(client_for(mailgun), make_mail())

    assert found == Found(Check.CANNOT, reason="events search: HTTP 503: Service Unavailable")
    assert_no_secret(found)


async def test_mailgun_lookup_timeout_cannot_check(mailgun: FakeMailgun) -> None:
    """Mailgun not answering the search in time gives CANNOT, without raising."""
    mailgun.mode = "timeout"
    found = await lookup_once(client_for(mailgun, timeout=SHORT), make_mail())

    assert found == Found(Check.CANNOT, reason=f"events search: no answer within {SHORT:g}s")
    assert mailgun.lookups == 1


async def test_mailgun_lookup_unreachable_cannot_check() -> None:
    """Nothing listening gives CANNOT, without raising and without the key."""
    async with FakeMailgun(api_key=SECRET) as gone:
        url = gone.base_url
    found = await lookup_once(client_for(url), make_mail())

    assert found.check is Check.CANNOT
    assert found.reason is not None
    assert found.reason.startswith("events search: connection error: ")
    assert_no_secret(found)


@asynccontextmanager
async def serving(body: bytes, content_type: str) -> AsyncIterator[str]:
    """A server answering every events search 200 with ``body``; yields its base URL."""

    async def events(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/v3/{domain}/events", events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"<html>Bad Gateway</html>", "text/html", "events search: the answer is not JSON"),
        (b'{"paging": {}}', "application/json", "events search: the answer has no list of items"),
    ],
)
async def test_mailgun_lookup_bad_answer_cannot_check(
    body: bytes, content_type: str, reason: str
) -> None:
    """A 200 that is not JSON, or JSON without ``items``, gives CANNOT."""
    async with serving(body, content_type) as url:
        found = await lookup_once(client_for(url), make_mail())

    assert found == Found(Check.CANNOT, reason=reason)


# --- outbox and SendGrid -----------------------------------------------------


async def test_outbox_lookup(tmp_path: Path) -> None:
    """The outbox has a mail exactly when its file is there: TAKEN with the send's id."""
    client = OutboxClient(OutboxConfig(tmp_path / "outbox"))
    mail, other = make_mail(), make_mail()
    before = await client.lookup(mail, 0.0)
    sent = await client.send(mail)
    after = await client.lookup(mail, 0.0)

    assert before == Found(Check.NOT_FOUND)  # not even the directory yet
    assert isinstance(sent, Accepted)
    assert after == Found(Check.TAKEN, message_id=sent.message_id)
    assert await client.lookup(other, 0.0) == Found(Check.NOT_FOUND)


async def test_sendgrid_lookup_cannot_check() -> None:
    """SendGrid offers no lookup by Message-ID: CANNOT, saying why, and no call is made."""
    async with FakeSendGrid(api_key=SECRET) as sendgrid:
        found = await lookup_once(client_for(sendgrid), make_mail())

    assert found.check is Check.CANNOT
    assert found.reason is not None
    assert "Message-ID" in found.reason
    assert sendgrid.calls == 0

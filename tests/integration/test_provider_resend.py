"""The Resend client against its fake (tests/support/fake_resend.py): the body, the
results, the Idempotency-Key that makes a lost answer safe to ask about, and the
whole system failing over into and out of Resend."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from mailman.actors import sender
from mailman.config import Secret
from mailman.core.model import Address, Attachment, Check, Disposition, Mail
from mailman.providers import (
    Accepted,
    Found,
    Misconfigured,
    Rejected,
    Result,
    Transient,
    Unknown,
)
from mailman.providers.resend import InProgress, ResendClient, ResendConfig
from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.fake_resend import FakeResend
from ..support.fakes import FakeMailgun, FakeSendGrid, Mode
from .test_providers import make_mail, send_once
from .test_system import Api

#: The key the fake knows; no reason may contain it.
SECRET = "re_do-not-leak-FROBOZZ-41"
SHORT = 0.3


@pytest.fixture
async def fake() -> AsyncIterator[FakeResend]:
    async with FakeResend(api_key=SECRET) as provider:
        yield provider


def client(fake: FakeResend | str, key: str = SECRET, timeout: float = 2.0) -> ResendClient:
    url = fake if isinstance(fake, str) else fake.base_url
    return ResendClient(ResendConfig(Secret(key), url), timeout)


async def lookup_once(resend: ResendClient, mail: Mail, since: float | None = None) -> Found:
    await resend.start()
    try:
        return await resend.lookup(mail, time.time() - 5 if since is None else since)
    finally:
        await resend.close()


def assert_no_secret(thing: object) -> None:
    assert SECRET not in repr(thing)
    assert "FROBOZZ" not in repr(thing)


# --- the request -------------------------------------------------------------


async def test_sends_the_documented_body(fake: FakeResend) -> None:
    """Every field of a mail reaches Resend where its API has it, the mail id as a tag
    and as the Idempotency-Key."""
    logo = Attachment.of("logo.png", b"\x89PNG", "image/png", Disposition.INLINE, "logo")
    mail = make_mail(
        cc=(Address("cy@example.com"),),
        bcc=(Address("bo@example.com", "Bo"),),
        reply_to=Address("help@example.com", "Help"),
        headers=(("X-Campaign", "spring"),),
        tags=("welcome mail",),
        metadata=(("user.id", "42"),),
        attachments=(Attachment.of("a.txt", b"hello", "text/plain"), logo),
    )
    result = await send_once(client(fake), mail)

    assert result == Accepted(fake.message_ids[0])
    [got] = fake.received
    assert got == {
        "from": "Mailman <noreply@example.com>",
        "to": ["Ann <ann@example.com>"],
        "cc": ["cy@example.com"],
        "bcc": ["Bo <bo@example.com>"],
        "reply_to": "Help <help@example.com>",
        "subject": "Hello",
        "text": "Hi Ann",
        "html": "<p>Hi Ann</p>",
        "headers": {"X-Campaign": "spring", "Message-ID": mail.message_id},
        "attachments": [
            {
                "filename": "a.txt",
                "content": base64.b64encode(b"hello").decode(),
                "content_type": "text/plain",
            },
            {
                "filename": "logo.png",
                "content": base64.b64encode(b"\x89PNG").decode(),
                "content_type": "image/png",
                "content_id": "logo",
            },
        ],
        # Characters Resend refuses in a tag (space, dot) become "_".
        "tags": [
            {"name": "mail_id", "value": mail.id},
            {"name": "user_id", "value": "42"},
            {"name": "welcome_mail", "value": "true"},
        ],
    }
    assert list(fake.keys) == [mail.id]
    assert fake.files[0][1].data == b"\x89PNG"


@pytest.mark.parametrize("part", ["text", "html"])
async def test_one_body_part_alone(fake: FakeResend, part: str) -> None:
    """A text-only or an html-only mail goes out with just that part."""
    mail = make_mail(**{"html" if part == "text" else "text": None})
    result = await send_once(client(fake), mail)

    assert isinstance(result, Accepted)
    assert {"text", "html"} & set(fake.received[0]) == {part}


async def test_same_mail_twice_is_one_copy(fake: FakeResend) -> None:
    """Sending a mail again under its key gets the first id back, and Resend keeps one copy."""
    mail = make_mail()
    first = await send_once(client(fake), mail)
    again = await send_once(client(fake), mail)

    assert isinstance(first, Accepted)
    assert again == first
    assert fake.copies == 1 and fake.replays == 1


# --- results -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "kind", "status"),
    [
        ("503", Transient, 503),
        ("429", Transient, 429),
        ("400", Rejected, 422),
        ("401", Misconfigured, 403),
    ],
)
async def test_modes_are_classified(
    fake: FakeResend, mode: Mode, kind: type[Result], status: int
) -> None:
    """Each forced failure gives the result its status calls for, and no mail is kept."""
    fake.mode = mode
    fake.retry_after = "7"
    result = await send_once(client(fake), make_mail())

    assert type(result) is kind
    assert getattr(result, "status", None) == status
    if mode == "429":
        assert isinstance(result, Transient) and result.retry_after == 7.0
    assert fake.copies == 0


async def test_refusals_carry_resends_reason(fake: FakeResend) -> None:
    """A mail Resend refuses is Rejected with its error's name and message; a missing
    key Misconfigured."""
    too_many = tuple(Address(f"r{i}@example.com") for i in range(51))
    rejected = await send_once(client(fake), make_mail(to=too_many))
    missing = await send_once(client(fake, key=""), make_mail())

    assert rejected == Rejected(
        "validation_error: Too many recipients: `to` takes at most 50.", status=422
    )
    assert missing == Misconfigured(
        "missing_api_key: Missing API key in the authorization header", status=401
    )


@pytest.mark.slow  # two requests of 40 MB
async def test_a_mail_over_40_mb_is_rejected(fake: FakeResend) -> None:
    """Resend takes 40 MB a mail, its files base64-encoded: a mail with 30 MiB of files
    (40 MiB encoded) is Rejected with a 413 and not kept; one just under is taken."""
    over = Attachment.of("over.bin", b"\0" * (30 * 1024 * 1024))
    under = Attachment.of("under.bin", b"\0" * (30 * 1024 * 1024 - 4096))
    rejected = await send_once(client(fake), make_mail(attachments=(over,)))
    taken = await send_once(client(fake), make_mail(attachments=(under,)))

    assert isinstance(rejected, Rejected) and rejected.status == 413
    assert rejected.reason.startswith("validation_error: The email exceeds the 40 MB limit")
    assert isinstance(taken, Accepted) and fake.copies == 1


#: Metadata and tags past what Resend takes in a tag: 15 entries, a 300-character name
#: with dots, a 1000-character value, characters Resend refuses, names that end alike.
UNFIT = (
    ("user.id", "42"),
    ("n." + "x" * 298, "long name"),
    ("plan", "p" * 1000),
    ("city", "Zürich am See"),
    ("user_id", "the same name once written"),
    *((f"k{n}", f"v{n}") for n in range(10)),
)


async def test_metadata_resend_cannot_take_as_tags_is_written_so_the_mail_goes(
    fake: FakeResend,
) -> None:
    """A mail with 15 metadata entries, a long name, a long value and characters Resend
    refuses is Accepted: each is a tag Resend takes (other characters as _, cut to 256, a
    name given twice once), the mail id's first; asked again, Resend answers it TAKEN."""
    mail = make_mail(metadata=UNFIT, tags=("Welcome!",))
    result = await send_once(client(fake), mail)
    found = await lookup_once(client(fake), mail)

    assert result == Accepted(fake.message_ids[0])
    [got] = fake.received
    assert got["tags"] == [
        {"name": "mail_id", "value": mail.id},
        {"name": "user_id", "value": "42"},
        {"name": "n_" + "x" * 254, "value": "long_name"},
        {"name": "plan", "value": "p" * 256},
        {"name": "city", "value": "Z_rich_am_See"},
        *({"name": f"k{n}", "value": f"v{n}"} for n in range(10)),
        {"name": "Welcome_", "value": "true"},
    ]
    assert found == Found(Check.TAKEN, message_id=fake.message_ids[0])
    assert fake.copies == 1 and fake.replays == 1


async def test_no_answer_is_unknown_and_no_connection_transient(fake: FakeResend) -> None:
    """Kept then dropped, or no answer in time: Unknown; nothing listening: Transient."""
    fake.mode = "drop"
    dropped = await send_once(client(fake), make_mail())
    fake.mode = "timeout"
    slow = await send_once(client(fake, timeout=SHORT), make_mail())
    async with FakeResend() as gone:
        url = gone.base_url
    refused = await send_once(client(url), make_mail())

    assert dropped == Unknown("connection lost before the answer: the server closed the connection")
    assert slow == Unknown(f"timeout after {SHORT:g}s waiting for the answer")
    assert isinstance(refused, Transient) and refused.reason.startswith("connection error")


async def test_key_never_in_a_reason(fake: FakeResend) -> None:
    """Answers that echo the Authorization header still leave the key out of every reason."""
    fake.echo = True
    results: list[Result] = []
    modes: tuple[Mode, ...] = ("503", "429", "400", "401")
    for mode in modes:
        fake.mode = mode
        results.append(await send_once(client(fake), make_mail()))
    fake.mode = "up"
    results.append(await send_once(client(fake, key=SECRET + "x"), make_mail()))

    assert all(not isinstance(r, Accepted) for r in results)
    assert all("[redacted]" in repr(r) for r in results)
    for result in results:
        assert_no_secret(result)


async def test_in_flight_key_is_in_progress_and_later_answered(fake: FakeResend) -> None:
    """A second request while the first under the key is still served: InProgress, an
    Unknown (409 concurrent: that request may take the mail, so this is no failure to
    fail over on); once the first is done, the same request gets its id, one copy."""
    fake.hold = asyncio.Event()
    mail = make_mail()
    resend = client(fake)
    await resend.start()
    try:
        first = asyncio.create_task(resend.send(mail))
        await fake.holding.wait()
        concurrent = await resend.send(mail)
        fake.hold.set()
        done = await first
        later = await resend.send(mail)
    finally:
        await resend.close()

    assert isinstance(concurrent, InProgress) and isinstance(concurrent, Unknown)
    assert concurrent.reason.startswith("concurrent_idempotent_requests")
    assert concurrent.retry_after == 1.0
    assert isinstance(done, Accepted) and later == done
    assert fake.copies == 1 and fake.concurrent == 1


@pytest.mark.slow
async def test_a_slow_answer_keeps_the_key_in_progress(fake: FakeResend) -> None:
    """Resend took the mail but its answer is still on its way (slower than the client):
    the same request meanwhile is 409 concurrent, then answered with the first id."""
    fake.answer_delay = 1.0
    mail = make_mail()
    slow = await send_once(client(fake, timeout=SHORT), mail)
    meanwhile = await send_once(client(fake), mail)
    await eventually(lambda: fake.in_progress == 0, what="the slow answer to go out")
    after = await send_once(client(fake), mail)

    assert isinstance(slow, Unknown) and isinstance(meanwhile, InProgress)
    assert after == Accepted(fake.message_ids[0])
    assert fake.copies == 1 and (fake.concurrent, fake.replays) == (1, 1)


async def test_key_reused_with_another_body_is_rejected(fake: FakeResend) -> None:
    """The mail's key with another body (the mail changed) is Rejected, nothing sent."""
    mail = make_mail()
    await send_once(client(fake), mail)
    changed = await send_once(client(fake), make_mail(id=mail.id, subject="Other"))

    assert isinstance(changed, Rejected) and changed.status == 409
    assert changed.reason.startswith("invalid_idempotent_request")
    assert fake.copies == 1


# --- lookup ------------------------------------------------------------------


@pytest.mark.parametrize("lost", ["drop", "late"])
async def test_lost_answer_then_lookup_is_taken_with_one_copy(fake: FakeResend, lost: str) -> None:
    """The answer is lost (dropped, or after the client's timeout): Unknown; once Resend's
    answer went out, the lookup asks again under the key and gets the first id back,
    Resend holding one copy."""
    if lost == "drop":
        fake.lose_answers = 1
    else:
        fake.answer_delay = 1.0
    mail = make_mail()
    result = await send_once(client(fake, timeout=SHORT), mail)
    await eventually(lambda: fake.in_progress == 0, what="Resend's answer to go out")
    found = await lookup_once(client(fake), mail)

    assert isinstance(result, Unknown)
    assert found == Found(Check.TAKEN, message_id=fake.message_ids[0])
    assert fake.copies == 1 and fake.replays == 1


@pytest.mark.slow
async def test_lookup_while_the_first_request_is_in_progress_says_ask_again(
    fake: FakeResend,
) -> None:
    """Asked while the lost request is still being answered (409 concurrent): CANNOT with
    a time to ask again, nothing sent; asked again after that: TAKEN, one copy."""
    fake.answer_delay = 1.0
    mail = make_mail()
    await send_once(client(fake, timeout=SHORT), mail)
    early = await lookup_once(client(fake), mail)
    await eventually(lambda: fake.in_progress == 0, what="Resend's answer to go out")
    later = await lookup_once(client(fake), mail)

    assert early.check is Check.CANNOT and early.ask_again_in == 1.0
    assert early.reason == (
        "asked again under its key: concurrent_idempotent_requests: Same idempotency key "
        "used while original request is still in progress."
    )
    assert later == Found(Check.TAKEN, message_id=fake.message_ids[0])
    assert fake.copies == 1


async def test_lookup_of_a_mail_never_taken_sends_it_once(fake: FakeResend) -> None:
    """Had the request never reached Resend, the lookup's request sends it: TAKEN, one copy."""
    mail = make_mail()
    found = await lookup_once(client(fake), mail)

    assert found == Found(Check.TAKEN, message_id=fake.message_ids[0])
    assert fake.mail_ids() == [mail.id] and fake.replays == 0


async def test_lookup_past_the_key_window_cannot_check(fake: FakeResend) -> None:
    """An attempt older than Resend keeps a key is not asked about (that could send a
    second copy): CANNOT, no call."""
    found = await lookup_once(client(fake), make_mail(), since=time.time() - 24 * 3600)

    assert found.check is Check.CANNOT and found.reason is not None
    assert "24 h" in found.reason
    assert fake.calls == 0


async def test_lookup_without_an_answer_cannot_check(fake: FakeResend) -> None:
    """Resend failing or silent gives CANNOT with why, the key in no reason."""
    fake.mode = "503"
    failing = await lookup_once(client(fake), make_mail())
    fake.mode = "timeout"
    silent = await lookup_once(client(fake, timeout=SHORT), make_mail())

    assert failing == Found(
        Check.CANNOT,
        reason="asked again under its key: HTTP 503: application_error: Service unavailable",
    )
    assert silent.check is Check.CANNOT and silent.reason is not None
    assert "timeout" in silent.reason
    assert_no_secret((failing, silent))


# --- the whole system ----------------------------------------------------------


def resend_env(resend: FakeResend, sg: FakeSendGrid, mg: FakeMailgun, chain: str) -> dict[str, str]:
    return provider_env(
        sg,
        mg,
        MAILMAN_PROVIDERS=chain,
        RESEND_API_KEY=resend.api_key,
        RESEND_BASE_URL=resend.base_url,
        MAILMAN_PROVIDER_TIMEOUT="0.5",
    )


async def test_lost_answer_ends_sent_once_through_resend(
    tmp_path: Path,
    fake: FakeResend,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """Resend takes the mail and the answer is lost: the next provider's sender asks
    Resend first, which answers the first id; the mail is sent, one copy in all."""
    fake.lose_answers = 1
    env = resend_env(fake, sendgrid, mailgun, "resend,sendgrid,mailgun")
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send(subject="Lost answer")
        await api.wait_status(mail_id, "sent")
        shown = await api.show(mail_id)

    assert shown["provider"] == "resend"
    assert shown["provider_message_id"] == fake.message_ids[0]
    assert [(a["provider"], a["outcome"], a["checked"]) for a in shown["attempts"]] == [
        ("resend", "unknown", "taken"),
    ]
    assert fake.mail_ids() == [mail_id] and fake.replays == 1
    assert sendgrid.calls == 0 and mailgun.calls == 0


@pytest.mark.slow
async def test_a_slow_resend_is_asked_again_not_sent_elsewhere(
    tmp_path: Path,
    fake: FakeResend,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """Resend takes the mail and answers after the timeout: Mailgun's sender asks Resend,
    which is still on that request (409 concurrent); the mail waits and Resend is asked
    again, which answers its id: sent by Resend, one copy, Mailgun never called."""
    fake.answer_delay = 1.5
    env = resend_env(fake, sendgrid, mailgun, "resend,mailgun")
    with capture_logs() as logs:
        async with embedded(make_config(tmp_path, env)) as mailman:
            api = Api(http, mailman.url)
            mail_id = await api.send(subject="Slow Resend")
            await api.wait_status(mail_id, "sent")
            shown = await api.show(mail_id)

    assert (shown["provider"], shown["provider_message_id"]) == ("resend", fake.message_ids[0])
    assert [(a["provider"], a["outcome"], a["checked"]) for a in shown["attempts"]] == [
        ("resend", "unknown", "taken"),
    ]
    assert fake.copies == 1 and fake.concurrent >= 1 and fake.replays == 1
    assert mailgun.calls == 0
    assert any(e["event"] == "attempt.waiting" and e["provider"] == "resend" for e in logs)


@pytest.mark.slow
async def test_a_request_in_progress_too_long_is_sent_elsewhere(
    tmp_path: Path,
    fake: FakeResend,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resend still on the request past IN_PROGRESS_WAIT_SECONDS from the attempt's start:
    the attempt is cannot-check, saying why, and Mailgun sends the mail."""
    monkeypatch.setattr(sender, "IN_PROGRESS_WAIT_SECONDS", 2.0)
    fake.hold = asyncio.Event()
    env = resend_env(fake, sendgrid, mailgun, "resend,mailgun")
    try:
        async with embedded(make_config(tmp_path, env)) as mailman:
            api = Api(http, mailman.url)
            mail_id = await api.send(subject="Stuck at Resend")
            await api.wait_status(mail_id, "sent")
            shown = await api.show(mail_id)
    finally:
        fake.hold.set()

    assert shown["provider"] == "mailgun" and mailgun.mail_ids() == [mail_id]
    [resend, sent] = shown["attempts"]
    assert (resend["outcome"], resend["checked"]) == ("unknown", "cannot-check")
    assert "concurrent_idempotent_requests" in resend["reason"]
    assert fake.concurrent >= 2 and sent["provider"] == "mailgun"


@pytest.mark.parametrize("chain", ["resend,sendgrid,mailgun", "sendgrid,mailgun,resend"])
async def test_failover_into_and_out_of_resend(
    chain: str,
    tmp_path: Path,
    fake: FakeResend,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """Resend down first: the mail goes on to SendGrid; SendGrid and Mailgun down: to Resend."""
    if chain.startswith("resend"):
        fake.mode = "503"
        expected = ["resend", "sendgrid"]
    else:
        sendgrid.mode = mailgun.mode = "503"
        expected = ["sendgrid", "mailgun", "resend"]
    async with embedded(make_config(tmp_path, resend_env(fake, sendgrid, mailgun, chain))) as mm:
        api = Api(http, mm.url)
        mail_id = await api.send(subject="Failover")
        await api.wait_status(mail_id, "sent")
        shown = await api.show(mail_id)

    assert [a["provider"] for a in shown["attempts"]] == expected
    assert shown["provider"] == expected[-1]
    sent_by = fake if expected[-1] == "resend" else sendgrid
    assert sent_by.mail_ids() == [mail_id]


async def test_key_never_in_a_log_line(
    tmp_path: Path,
    fake: FakeResend,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """Resend refusing the key, its answer echoing it: the mail fails over to SendGrid and
    no log line holds the key."""
    fake.mode, fake.echo = "401", True
    env = resend_env(fake, sendgrid, mailgun, "resend,sendgrid")
    with capture_logs() as logs:
        async with embedded(make_config(tmp_path, env)) as mailman:
            api = Api(http, mailman.url)
            mail_id = await api.send()
            await api.wait_status(mail_id, "sent")
            shown = await api.show(mail_id)

    assert [(a["provider"], a["outcome"]) for a in shown["attempts"]] == [
        ("resend", "misconfigured"),
        ("sendgrid", "accepted"),
    ]
    assert "[redacted]" in shown["attempts"][0]["reason"]
    assert any(line.get("provider") == "resend" for line in logs)
    assert_no_secret(logs)
    assert_no_secret(shown)

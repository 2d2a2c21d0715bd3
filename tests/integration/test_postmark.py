"""The Postmark provider against its fake (a real HTTP server on loopback), alone and
in the embedded system beside the SendGrid and Mailgun fakes."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from mailman.config import Secret
from mailman.core.model import Address, Attachment, Check, Disposition
from mailman.providers import (
    Accepted,
    Found,
    Misconfigured,
    Rejected,
    Result,
    Transient,
    Unknown,
)
from mailman.providers.postmark import PostmarkClient, PostmarkConfig, body, metadata
from mailman.system import embedded

from ..conftest import eventually, make_config, postmark_env, provider_env
from ..support.fake_postmark import FakePostmark
from ..support.fakes import FakeMailgun, FakeSendGrid, Mode
from .test_lookup import lookup_once
from .test_providers import make_mail, send_once
from .test_system import Api

#: The token the fake knows; no reason or log line may contain it.
TOKEN = "pm-do-not-leak-FROTZ-6d2e"
#: A client timeout the held answers run well past.
SHORT = 0.3


@pytest.fixture
async def postmark() -> AsyncIterator[FakePostmark]:
    async with FakePostmark(server_token=TOKEN, streams=("outbound", "broadcast")) as fake:
        yield fake


def client_for(
    fake: FakePostmark | str,
    token: str = TOKEN,
    timeout: float = 2.0,
    stream: str = "outbound",
) -> PostmarkClient:
    url = fake if isinstance(fake, str) else fake.base_url
    return PostmarkClient(PostmarkConfig(Secret(token), url, stream), timeout)


def assert_no_token(value: object) -> None:
    assert TOKEN not in repr(value)
    assert "FROTZ" not in repr(value)


# --- sending -------------------------------------------------------------------------


async def test_send_carries_every_field_and_the_mail_id(postmark: FakePostmark) -> None:
    """A full mail reaches Postmark field for field, the mail id in Metadata, and is
    Accepted with Postmark's MessageID."""
    mail = make_mail(
        sender=Address("noreply@example.com", "Shop, Inc."),
        to=(Address("ann@example.com", "Ann"), Address("bob@example.com")),
        cc=(Address("cy@example.com", "Cy"),),
        bcc=(Address("di@example.com"),),
        reply_to=Address("help@example.com", "Help"),
        headers=(("X-Campaign", "dec"),),
        tags=("welcome", "second"),
        metadata=(("user", "42"),),
    )
    result = await send_once(client_for(postmark), mail)

    assert result == Accepted(message_id=postmark.message_ids[0])
    (got,) = postmark.received
    assert got == {
        "From": '"Shop, Inc." <noreply@example.com>',
        "To": "Ann <ann@example.com>, bob@example.com",
        "Cc": "Cy <cy@example.com>",
        "Bcc": "di@example.com",
        "ReplyTo": "Help <help@example.com>",
        "Subject": "Hello",
        "TextBody": "Hi Ann",
        "HtmlBody": "<p>Hi Ann</p>",
        "Headers": [
            {"Name": "X-Campaign", "Value": "dec"},
            {"Name": "Message-ID", "Value": mail.message_id},
        ],
        "Tag": "welcome",
        "Metadata": {"user": "42", "mail_id": mail.id},
        "MessageStream": "outbound",
    }
    assert postmark.mail_ids() == [mail.id]


@pytest.mark.parametrize(
    ("text", "html"), [("only text", None), (None, "<p>only html</p>"), ("both", "<b>both</b>")]
)
async def test_text_html_or_both(
    postmark: FakePostmark, text: str | None, html: str | None
) -> None:
    """A text-only, HTML-only or two-part mail is sent with just the bodies it has."""
    result = await send_once(client_for(postmark), make_mail(text=text, html=html))

    assert isinstance(result, Accepted)
    (got,) = postmark.received
    assert got.get("TextBody") == text
    assert got.get("HtmlBody") == html


async def test_attachments_and_inline_files(postmark: FakePostmark) -> None:
    """Attachments go as base64 with their names and types; an inline one with its cid."""
    pdf = Attachment.of("report.pdf", b"%PDF-1.4 report", "application/pdf")
    logo = Attachment.of("logo.png", b"\x89PNG logo", "image/png", Disposition.INLINE, "logo")
    mail = make_mail(html='<img src="cid:logo">', attachments=(pdf, logo))
    result = await send_once(client_for(postmark), mail)

    assert isinstance(result, Accepted)
    assert postmark.received[0]["Attachments"] == [
        {"Name": "report.pdf", "Content": pdf.content, "ContentType": "application/pdf"},
        {
            "Name": "logo.png",
            "Content": base64.b64encode(b"\x89PNG logo").decode(),
            "ContentType": "image/png",
            "ContentID": "cid:logo",
        },
    ]
    (files,) = postmark.files
    assert [(f.disposition, f.filename, f.data, f.content_id) for f in files] == [
        ("attachment", "report.pdf", b"%PDF-1.4 report", None),
        ("inline", "logo.png", b"\x89PNG logo", "logo"),
    ]


async def test_message_stream_is_the_configured_one(postmark: FakePostmark) -> None:
    """POSTMARK_MESSAGE_STREAM picks the stream; one the server lacks (422, ErrorCode
    1235) is Misconfigured: the account is wrong, not the mail."""
    ok = await send_once(client_for(postmark, stream="broadcast"), make_mail())
    missing = await send_once(client_for(postmark, stream="nope"), make_mail())

    assert isinstance(ok, Accepted)
    assert postmark.received[0]["MessageStream"] == "broadcast"
    assert isinstance(missing, Misconfigured)
    assert missing.status == 422
    assert missing.reason == (
        "ErrorCode 1235: The 'MessageStream' provided does not exist on this server."
    )


@pytest.mark.parametrize(
    ("mode", "kind", "status"),
    [
        ("503", Transient, 503),
        ("429", Transient, 429),
        ("400", Rejected, 422),
        ("401", Misconfigured, 401),
    ],
)
async def test_errors_become_the_five_results(
    postmark: FakePostmark, mode: Mode, kind: type[Result], status: int
) -> None:
    """Each of Postmark's failures gives the result its status calls for; nothing is kept."""
    postmark.mode = mode
    postmark.retry_after = "7"
    result = await send_once(client_for(postmark), make_mail())

    assert type(result) is kind
    assert getattr(result, "status", None) == status
    if mode == "429":
        assert isinstance(result, Transient) and result.retry_after == 7.0
    assert postmark.received == []
    assert_no_token(result)


async def test_wrong_or_missing_token_is_misconfigured(postmark: FakePostmark) -> None:
    """A wrong token is 401 ErrorCode 10: Misconfigured, the token never in the reason."""
    result = await send_once(client_for(postmark, token=TOKEN + "-wrong"), make_mail())
    empty = await send_once(client_for(postmark, token=""), make_mail())

    assert result == Misconfigured(
        "ErrorCode 10: Request does not contain a valid Server token.", 401
    )
    assert isinstance(empty, Misconfigured) and empty.status == 401
    assert postmark.received == []
    assert_no_token(result)


async def test_limits_are_rejected(postmark: FakePostmark) -> None:
    """More than 50 recipients, or a request over 10 MB, is Rejected with Postmark's reason."""
    crowd = tuple(Address(f"r{i}@example.com") for i in range(51))
    many = await send_once(client_for(postmark), make_mail(to=crowd[:40], cc=crowd[40:]))
    big = Attachment.of("big.bin", b"\0" * (8 * 1024 * 1024))
    large = await send_once(client_for(postmark), make_mail(attachments=(big,)))
    fifty = await send_once(client_for(postmark), make_mail(to=crowd[:50]))

    assert isinstance(many, Rejected) and many.status == 422
    assert "Too many recipients: at most 50" in many.reason
    assert isinstance(large, Rejected) and large.status == 413
    assert isinstance(fifty, Accepted)
    assert len(postmark.received) == 1


#: A mail's metadata past every limit of Postmark's: 15 entries, among them a name of 21
#: characters, a value of 81 and a name that differs from an earlier one by case alone.
OVERFULL = (
    ("user", "42"),
    ("a_name_of_21_letters_", "too long a name"),
    ("plan", "x" * 81),
    ("User", "a second user, by case"),
    *((f"k{n}", f"v{n}") for n in range(11)),
)


async def post_metadata(postmark: FakePostmark, fields: dict[str, str]) -> tuple[int, Any]:
    """Postmark's answer to a mail with ``fields`` as its ``Metadata``, posted as it is."""
    mail = {"From": "a@example.com", "To": "b@example.com", "TextBody": "t", "Metadata": fields}
    headers = {"X-Postmark-Server-Token": TOKEN, "Accept": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{postmark.base_url}/email", json=mail, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_the_fake_refuses_metadata_past_postmarks_limits(postmark: FakePostmark) -> None:
    """Postmark's limits, at the fake: 11 fields, a 21-character name, an 81-character
    value or two names alike but for case are a 422 ErrorCode 300; 10, 20 and 80 are taken."""
    longest = {f"name_of_twenty_{n:05}": "v" * 80 for n in range(10)}
    refused = [
        {**longest, "one_more": "v"},
        {"a_name_of_21_letters_": "v"},
        {"plan": "v" * 81},
        {"a_key": "1", "A_Key": "2"},
    ]
    answers = [await post_metadata(postmark, fields) for fields in refused]
    taken = await post_metadata(postmark, longest)

    assert [(status, body["ErrorCode"]) for status, body in answers] == [(422, 300)] * 4
    assert answers[1][1]["Message"] == (
        "Invalid metadata content. Field names are limited to 20 characters and field values "
        "are limited to 80 characters in length. The 'a_name_of_21_letters_' field in your "
        "metadata content exceeds these limits."
    )
    assert taken[0] == 200 and len(postmark.received) == 1


def test_metadata_keeps_the_mail_id_and_what_postmark_takes() -> None:
    """The mail id first, then the entries that fit in order, 10 fields in all: a name over
    20 characters, a value over 80 and a name given before in another case are left out."""
    mail = make_mail(metadata=OVERFULL)

    assert list(metadata(mail).items()) == [
        ("mail_id", mail.id),
        ("user", "42"),
        *((f"k{n}", f"v{n}") for n in range(8)),
    ]
    plain = make_mail()
    assert metadata(plain) == {"mail_id": plain.id}


async def test_metadata_past_postmarks_limits_is_sent_and_found(postmark: FakePostmark) -> None:
    """A mail with 15 metadata entries, a long name and a long value is Accepted, not a
    422, with the metadata Postmark takes; the search by its mail id finds it TAKEN."""
    mail = make_mail(metadata=OVERFULL)
    result = await send_once(client_for(postmark), mail)
    found = await lookup_once(client_for(postmark), mail)

    assert result == Accepted(message_id=postmark.message_ids[0])
    (got,) = postmark.received
    assert got["Metadata"] == metadata(mail) and len(got["Metadata"]) == 10
    assert found == Found(Check.TAKEN, message_id=postmark.message_ids[0])


async def test_no_answer_is_unknown_no_connection_transient(postmark: FakePostmark) -> None:
    """A lost answer is Unknown (Postmark has the mail); nothing listening is Transient;
    a URL that is none is Misconfigured."""
    postmark.lost_answers = 1
    mail = make_mail()
    lost = await send_once(client_for(postmark, timeout=SHORT), mail)
    postmark.mode = "drop"
    dropped = await send_once(client_for(postmark), make_mail())
    async with FakePostmark() as gone:
        url = gone.base_url
    refused = await send_once(client_for(url), make_mail())
    nonsense = await send_once(client_for("nonsense"), make_mail())

    assert lost == Unknown(f"timeout after {SHORT:g}s waiting for the answer")
    assert isinstance(dropped, Unknown)
    assert dropped.reason.startswith("connection lost before the answer")
    assert postmark.mail_ids()[0] == mail.id and len(postmark.received) == 2
    assert isinstance(refused, Transient)
    assert refused.reason.startswith("connection error")
    assert isinstance(nonsense, Misconfigured) and "URL" in nonsense.reason


def test_names_are_written_as_in_a_header() -> None:
    """A name with a comma is quoted, a non-ASCII one RFC 2047-encoded, in the lists."""
    mail = make_mail(to=(Address("ann@example.com", "Doe, Ann"), Address("jo@example.com", "Jöe")))

    assert body(mail, "outbound")["To"] == (
        '"Doe, Ann" <ann@example.com>, =?utf-8?q?J=C3=B6e?= <jo@example.com>'
    )


def test_body_is_pure_and_carries_the_message_id() -> None:
    """The body builder needs nothing but the mail; the Message-ID is the mail's own."""
    mail = make_mail(text=None, tags=())
    out = body(mail, "outbound")

    assert out["Headers"] == [{"Name": "Message-ID", "Value": mail.message_id}]
    assert "TextBody" not in out and "Tag" not in out and "Cc" not in out
    assert out == body(mail, "outbound")


# --- lookup --------------------------------------------------------------------------


async def test_lost_answer_then_lookup_finds_it_taken(postmark: FakePostmark) -> None:
    """Postmark took the mail but the answer was lost: the metadata search finds it TAKEN,
    with Postmark's MessageID."""
    mail = make_mail()
    assert isinstance(await send_once(client_for(postmark), make_mail()), Accepted)
    postmark.lost_answers = 1
    result = await send_once(client_for(postmark, timeout=SHORT), mail)
    found = await lookup_once(client_for(postmark), mail, since=time.time() - 5)

    assert isinstance(result, Unknown)
    assert found == Found(Check.TAKEN, message_id=postmark.message_ids[1])
    assert postmark.lookups == 1


async def test_lookup_of_a_mail_never_received_is_not_found(postmark: FakePostmark) -> None:
    """A mail Postmark never read is NOT_FOUND, though others are there."""
    postmark.unread_sends = 1
    mail = make_mail()
    result = await send_once(client_for(postmark, timeout=SHORT), mail)
    assert isinstance(await send_once(client_for(postmark), make_mail()), Accepted)
    found = await lookup_once(client_for(postmark), mail)

    assert isinstance(result, Unknown)
    assert found == Found(Check.NOT_FOUND)
    assert mail.id not in postmark.mail_ids()


async def test_a_search_that_trails_the_sending_finds_a_new_mail_late(
    postmark: FakePostmark,
) -> None:
    """With a search lag, a mail just taken is NOT_FOUND at first, TAKEN once the lag has
    passed (the fake's model of a search index that trails the sending)."""
    postmark.search_lag = 0.5
    mail = make_mail()
    assert isinstance(await send_once(client_for(postmark), mail), Accepted)
    early = await lookup_once(client_for(postmark), mail)

    async def found() -> bool:
        return (await lookup_once(client_for(postmark), mail)).check is Check.TAKEN

    await eventually(found, what="the mail in the search")
    assert early == Found(Check.NOT_FOUND)


async def test_lookup_searches_the_configured_stream(postmark: FakePostmark) -> None:
    """The search is in the client's message stream: a mail on another is not found there."""
    mail = make_mail()
    assert isinstance(await send_once(client_for(postmark, stream="broadcast"), mail), Accepted)
    there = await lookup_once(client_for(postmark, stream="broadcast"), mail)
    elsewhere = await lookup_once(client_for(postmark), mail)

    assert there.check is Check.TAKEN
    assert elsewhere.check is Check.NOT_FOUND


@pytest.mark.parametrize("mode", ["503", "401", "timeout"])
async def test_search_failing_cannot_check(postmark: FakePostmark, mode: Mode) -> None:
    """A search that fails (5xx, bad token, no answer) is CANNOT with why, no token in it."""
    postmark.mode = mode
    found = await lookup_once(client_for(postmark, timeout=SHORT), make_mail())

    assert found.check is Check.CANNOT
    assert found.reason is not None and found.reason.startswith("outbound search: ")
    assert_no_token(found)


async def test_search_unreachable_or_odd_cannot_check() -> None:
    """Nothing listening, or an answer that is no search result, is CANNOT."""
    async with FakePostmark() as gone:
        url = gone.base_url
    unreachable = await lookup_once(client_for(url), make_mail())

    assert unreachable.check is Check.CANNOT
    assert unreachable.reason is not None and "connection error" in unreachable.reason
    from mailman.providers.postmark import _found

    assert _found(b"<html>", "m").check is Check.CANNOT
    assert _found(b'{"TotalCount": 0}', "m").check is Check.CANNOT
    assert _found(b'{"TotalCount": 0, "Messages": []}', "m").check is Check.NOT_FOUND


# --- in the embedded system ----------------------------------------------------------


async def send_and_show(
    tmp_path: Path, env: dict[str, str], http: aiohttp.ClientSession
) -> tuple[str, dict[str, Any], list[str]]:
    """Send one mail through an embedded Mailman; its id, record once final, and logs."""
    with capture_logs() as logs:
        async with embedded(make_config(tmp_path, env)) as mailman:
            api = Api(http, mailman.url)
            mail_id = await api.send(subject="Through Postmark")
            await api.wait_status(mail_id, "sent")
            shown = await api.show(mail_id)
    return mail_id, shown, [repr(line) for line in logs]


def attempts(shown: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(a["provider"], a["outcome"], a["checked"]) for a in shown["attempts"]]


async def test_fails_over_into_postmark(
    tmp_path: Path,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    postmark: FakePostmark,
    http: aiohttp.ClientSession,
) -> None:
    """SendGrid down: the mail goes out through Postmark, the token in no log line."""
    sendgrid.mode = "503"
    env = provider_env(sendgrid, mailgun, MAILMAN_PROVIDERS="sendgrid,postmark,mailgun")
    mail_id, shown, logs = await send_and_show(tmp_path, {**env, **postmark_env(postmark)}, http)

    assert shown["provider"] == "postmark"
    assert shown["provider_message_id"] == postmark.message_ids[0]
    assert attempts(shown) == [("sendgrid", "transient", None), ("postmark", "accepted", None)]
    assert postmark.mail_ids() == [mail_id]
    assert mailgun.calls == 0
    assert not any(TOKEN in line for line in logs)


async def test_fails_over_out_of_postmark(
    tmp_path: Path,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    postmark: FakePostmark,
    http: aiohttp.ClientSession,
) -> None:
    """Postmark refusing the token: the mail goes out through Mailgun, the token unshown."""
    env = provider_env(sendgrid, mailgun, MAILMAN_PROVIDERS="postmark,mailgun")
    env = {**env, **postmark_env(postmark), "POSTMARK_SERVER_TOKEN": TOKEN + "-revoked"}
    mail_id, shown, logs = await send_and_show(tmp_path, env, http)

    assert shown["provider"] == "mailgun"
    assert attempts(shown) == [("postmark", "misconfigured", None), ("mailgun", "accepted", None)]
    assert "ErrorCode 10" in shown["attempts"][0]["reason"]
    assert mailgun.mail_ids() == [mail_id]
    assert postmark.calls == 1 and postmark.received == []
    assert not any("FROTZ" in line for line in logs)


async def test_lost_answer_is_found_taken_and_not_sent_twice(
    tmp_path: Path,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    postmark: FakePostmark,
    http: aiohttp.ClientSession,
) -> None:
    """Postmark took the mail and the answer was lost: the next provider asks Postmark,
    which has it (TAKEN): the mail is sent, once, by Postmark."""
    postmark.lost_answers = 1
    env = provider_env(
        sendgrid, mailgun, MAILMAN_PROVIDERS="postmark,sendgrid", MAILMAN_PROVIDER_TIMEOUT="0.3"
    )
    mail_id, shown, _ = await send_and_show(tmp_path, {**env, **postmark_env(postmark)}, http)

    assert attempts(shown) == [("postmark", "unknown", "taken")]
    assert shown["provider"] == "postmark"
    assert shown["provider_message_id"] == postmark.message_ids[0]
    assert postmark.mail_ids() == [mail_id]
    assert postmark.lookups == 1
    assert sendgrid.calls == 0


async def test_never_received_is_not_found_and_sent_once(
    tmp_path: Path,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    postmark: FakePostmark,
    http: aiohttp.ClientSession,
) -> None:
    """Postmark never read the mail: it is NOT_FOUND there and sent once, by SendGrid."""
    postmark.unread_sends = 1
    env = provider_env(
        sendgrid, mailgun, MAILMAN_PROVIDERS="postmark,sendgrid", MAILMAN_PROVIDER_TIMEOUT="0.3"
    )
    mail_id, shown, _ = await send_and_show(tmp_path, {**env, **postmark_env(postmark)}, http)

    assert attempts(shown) == [("postmark", "unknown", "not-found"), ("sendgrid", "accepted", None)]
    assert sendgrid.mail_ids() == [mail_id]
    assert postmark.received == []
    assert postmark.lookups == 1


def test_postmark_settings(tmp_path: Path) -> None:
    """POSTMARK_* make the provider (stream default outbound); without a token it is skipped."""
    config = make_config(
        tmp_path,
        {
            "MAILMAN_PROVIDERS": "postmark",
            "POSTMARK_SERVER_TOKEN": TOKEN,
            "POSTMARK_BASE_URL": "http://127.0.0.1:9/",
        },
    )
    (provider,) = (p.settings for p in config.providers)
    assert isinstance(provider, PostmarkConfig)
    assert provider.server_token.reveal() == TOKEN
    assert provider.message_stream == "outbound"
    assert TOKEN not in repr(config)
    skipped = make_config(tmp_path, {"MAILMAN_PROVIDERS": "postmark,outbox"})
    assert skipped.skipped_providers == ("postmark",)
    assert [p.name for p in skipped.providers] == ["outbox"]

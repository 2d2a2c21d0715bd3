"""Custom headers, tags and metadata: validated, mapped for every provider, shown back."""

from __future__ import annotations

import email.parser
import email.policy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mailman.core import submission
from mailman.core.messages import decode, encode
from mailman.core.model import Mail
from mailman.core.submission import parse_mail
from mailman.core.validation import (
    MAX_EXTRA_BYTES,
    MAX_HEADERS,
    MAX_METADATA_BYTES,
    ValidationFailed,
)
from mailman.providers.mailgun import basic_auth, form
from mailman.providers.outbox import render
from mailman.providers.sendgrid import body as sendgrid_body
from mailman.routes.models.mail import submitted
from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.fakes import FakeMailgun, FakeSendGrid

MAIL_ID = "01JZ0000000000000000000000"
BASE: dict[str, Any] = {"to": ["ann@example.com"], "from": "noreply@example.com", "content": "Hi"}
FIELDS: dict[str, Any] = {
    "headers": {"X-Campaign": "spring sale", "X-Priority-Hint": "low"},
    "tags": ["welcome", "onboarding"],
    "metadata": {"user_id": "42", "plan": "pro ünïcode"},
}


def parse(**fields: Any) -> Mail:
    """``parse_mail`` of the base body with ``fields`` added."""
    return parse_mail({**BASE, **fields}, mail_id=MAIL_ID, default_subject="(none)", now=0.0)


def refused(**fields: Any) -> dict[str, str]:
    """The field errors (field to message) for the base body with ``fields`` added."""
    with pytest.raises(ValidationFailed) as caught:
        parse(**fields)
    return {e.field: e.message for e in caught.value.errors}


def full_mail() -> Mail:
    return parse(**FIELDS)


# --- validation ------------------------------------------------------------------


def test_the_three_fields_are_optional_and_kept_in_order() -> None:
    """Without the fields the mail has none; with them, they are kept as given, in order."""
    plain = parse()
    assert (plain.headers, plain.tags, plain.metadata) == ((), (), ())
    mail = full_mail()
    assert mail.headers == (("X-Campaign", "spring sale"), ("X-Priority-Hint", "low"))
    assert mail.tags == ("welcome", "onboarding")
    assert mail.metadata == (("user_id", "42"), ("plan", "pro ünïcode"))


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"Subject": "x"}, "headers.Subject"),
        ({"Reply-To": "a@example.com"}, "headers.Reply-To"),
        ({"List-Unsubscribe": "<mailto:u@example.com>"}, "headers.List-Unsubscribe"),
        ({"X-Bad Name": "x"}, "headers.X-Bad Name"),
        ({"X-Colon:": "x"}, "headers.X-Colon:"),
        ({"X-": "x"}, "headers.X-"),
        ({"X-Ünï": "x"}, "headers.X-Ünï"),
        ({"X-" + "a" * 99: "x"}, "headers.X-" + "a" * 99),
        ({"X-SG-ID": "x"}, "headers.X-SG-ID"),
        ({"x-smtpapi": "{}"}, "headers.x-smtpapi"),
        ({"X-Mailgun-Variables": "{}"}, "headers.X-Mailgun-Variables"),
        ({"X-Mailman-Id": "x"}, "headers.X-Mailman-Id"),
        ({"X-Ok": "a\r\nBcc: evil@example.com"}, "headers.X-Ok"),
        ({"X-Ok": "a\nb"}, "headers.X-Ok"),
        ({"X-Ok": "tab\there"}, "headers.X-Ok"),
        ({"X-Ok": "=?utf-8?q?hidden?="}, "headers.X-Ok"),
        ({"X-Ok": "café"}, "headers.X-Ok"),
        ({"X-Ok": ""}, "headers.X-Ok"),
        ({"X-Ok": " padded"}, "headers.X-Ok"),
        ({"X-Ok": "x" * 999}, "headers.X-Ok"),
        ({"X-Ok": "x" * 993}, "headers.X-Ok"),
        ({"X-Ok": 5}, "headers.X-Ok"),
        ({"X-Ok": None}, "headers.X-Ok"),
        ({"X-Same": "a", "x-same": "b"}, "headers.x-same"),
        ({f"X-H{i}": "v" for i in range(MAX_HEADERS + 1)}, "headers"),
        (["X-A", "b"], "headers"),
        ("X-A: b", "headers"),
    ],
)
def test_bad_headers_are_refused_naming_the_header(headers: object, field: str) -> None:
    """A forbidden or malformed header name or value is refused as headers.<Name>."""
    assert list(refused(headers=headers)) == [field]


def test_good_headers_at_the_limits_are_accepted() -> None:
    """Twenty X- headers, a 100-character name, a line of 998 characters are taken."""
    headers = {f"X-H{i}": "v" for i in range(MAX_HEADERS - 2)}
    headers["X-" + "n" * 98] = "word " * 179 + "e"
    headers["X-Max"] = "v" * 991
    assert len("X-" + "n" * 98 + ": " + headers["X-" + "n" * 98]) == 998
    mail = parse(headers=headers)
    assert dict(mail.headers) == headers


@pytest.mark.parametrize(
    ("tags", "field"),
    [
        (["a", "b", "c", "d"], "tags"),
        ("welcome", "tags"),
        ({"a": "b"}, "tags"),
        (["ok", ""], "tags[1]"),
        (["x" * 129], "tags[0]"),
        (["ünï"], "tags[0]"),
        (["line\nbreak"], "tags[0]"),
        ([" padded"], "tags[0]"),
        (["=?utf-8?q?x?="], "tags[0]"),
        (["a", 1], "tags[1]"),
        (["a", None], "tags[1]"),
        (["same", "same"], "tags[1]"),
    ],
)
def test_bad_tags_are_refused_naming_the_tag(tags: object, field: str) -> None:
    """More than three tags, or an empty, long, non-ASCII or repeated one, is refused."""
    assert list(refused(tags=tags)) == [field]


def test_three_tags_of_128_characters_are_accepted() -> None:
    """Three distinct printable tags of up to 128 characters are taken."""
    tags = ["a" * 128, "b b", "~!@#"]
    assert parse(tags=tags).tags == tuple(tags)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"mail_id": "mine"}, "metadata.mail_id"),
        ({"event": "x"}, "metadata.event"),
        ({"email": "x"}, "metadata.email"),
        ({"": "x"}, "metadata."),
        ({"k" * 65: "x"}, "metadata." + "k" * 65),
        ({"bad key": "x"}, "metadata.bad key"),
        ({"ünï": "x"}, "metadata.ünï"),
        ({"n": 1}, "metadata.n"),
        ({"n": None}, "metadata.n"),
        ({"n": ["a"]}, "metadata.n"),
        ({"n": "x" * 1001}, "metadata.n"),
        ({"n": "\ud800"}, "metadata.n"),
        ({f"k{i}": "v" * 1000 for i in range(10)}, "metadata"),
        ({f"k{i}": "" for i in range(2000)}, "metadata"),
        (["a", "b"], "metadata"),
        ("a=b", "metadata"),
    ],
)
def test_bad_metadata_is_refused_naming_the_key(metadata: object, field: str) -> None:
    """A reserved or malformed key, a non-string or long value, or too much in all is refused."""
    assert list(refused(metadata=metadata)) == [field]


def test_metadata_up_to_its_byte_limit_is_accepted() -> None:
    """Metadata whose custom_args JSON (mail_id included) is exactly 10,000 bytes is taken."""
    metadata = {f"k{i}": "v" * 1000 for i in range(9)}
    size = len(json.dumps({**metadata, "mail_id": MAIL_ID}, separators=(",", ":")))
    metadata["last"] = "w" * (MAX_METADATA_BYTES - size - len(',"last":""'))
    mail = parse(metadata=metadata)
    args = sendgrid_body(mail)["custom_args"]
    assert len(json.dumps(args, separators=(",", ":"), ensure_ascii=False)) == MAX_METADATA_BYTES


def test_headers_tags_and_metadata_share_mailguns_budget() -> None:
    """Headers and metadata over Mailgun's room for h:/o:/v: fields together are refused."""
    headers = {f"X-H{i}": "v" * 990 for i in range(MAX_HEADERS)}
    assert list(refused(headers=headers)) == ["headers"]
    half = {f"X-H{i}": "v" * 990 for i in range(5)}
    metadata = {f"k{i}": "v" * 1000 for i in range(7)}
    assert list(refused(headers=half, metadata=metadata)) == ["metadata"]
    assert MAX_EXTRA_BYTES < 16_000


def test_every_bad_field_is_named_at_once() -> None:
    """Bad headers, tags and metadata are reported together, each under its own name."""
    errors = refused(headers={"Subject": "x"}, tags=["", "ok"], metadata={"mail_id": "x"})
    assert list(errors) == ["headers.Subject", "tags[0]", "metadata.mail_id"]


# --- the record ------------------------------------------------------------------


def test_the_fields_survive_encode_and_decode() -> None:
    """A mail with headers, tags and metadata decodes back equal, nested tuples and all."""
    mail = full_mail()
    again = decode(Mail, encode(mail))
    assert again == mail
    assert isinstance(again.headers[0], tuple) and isinstance(again.metadata[0], tuple)
    older = decode(Mail, encode(parse()))
    assert (older.headers, older.tags, older.metadata) == ((), (), ())


def test_submitted_shows_the_fields_only_when_given() -> None:
    """GET /mail/{id}'s submitted shows headers, tags and metadata as given, and leaves them
    out when empty."""
    shown = submitted(full_mail())
    assert shown["headers"] == FIELDS["headers"]
    assert shown["tags"] == FIELDS["tags"]
    assert shown["metadata"] == FIELDS["metadata"]
    assert not {"headers", "tags", "metadata"} & set(submitted(parse()))


# --- the providers' requests -----------------------------------------------------


def test_sendgrid_body_maps_headers_categories_and_custom_args() -> None:
    """SendGrid gets the headers, the tags as categories and the metadata in custom_args."""
    mail = full_mail()
    got = sendgrid_body(mail)
    assert got["headers"] == {**FIELDS["headers"], "Message-ID": mail.message_id}
    assert got["categories"] == FIELDS["tags"]
    assert got["custom_args"] == {**FIELDS["metadata"], "mail_id": MAIL_ID}
    assert "categories" not in sendgrid_body(parse())


def test_mailgun_form_maps_h_o_tag_and_v_fields() -> None:
    """Mailgun gets h:<Name> per header, o:tag per tag and v:<key> per metadata item."""
    fields = form(full_mail())
    assert ("h:X-Campaign", "spring sale") in fields
    assert ("h:X-Priority-Hint", "low") in fields
    assert [v for k, v in fields if k == "o:tag"] == FIELDS["tags"]
    assert [(k, v) for k, v in fields if k.startswith("v:")] == [
        ("v:user_id", "42"),
        ("v:plan", "pro ünïcode"),
        ("v:mail_id", MAIL_ID),
    ]


def test_eml_writes_headers_tags_and_metadata() -> None:
    """The .eml has the headers, X-Mailman-Tags and X-Mailman-Metadata, which read back."""
    mail = parse(
        headers={"X-Long": "word " * 150 + "end", "X-Unbroken": "z" * 900, "X-S": "a  b"},
        tags=["a", "b c"],
        metadata={"k": "v" * 1000, "n": "ünï \u0000 ", "e": "=?utf-8?q?x?="},
    )
    data = render(mail)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert message["X-Long"] == "word " * 150 + "end"
    assert message["X-Unbroken"] == "z" * 900
    assert message["X-Mailman-Tags"] == "a, b c"
    assert message["X-S"] == "a  b"
    metadata = json.loads(str(message["X-Mailman-Metadata"]))
    assert metadata == {"k": "v" * 1000, "n": "ünï \u0000 ", "e": "=?utf-8?q?x?="}
    assert not message.defects and all(not v.defects for v in message.values())


# --- end to end ------------------------------------------------------------------


async def send_and_wait(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    """POST ``body``, wait until the mail is sent, and return GET /mail/{id}'s mail."""
    async with http.post(f"{url}/mail/send", json=body) as resp:
        assert resp.status == 201, await resp.text()
        mail_id = (await resp.json())["mail"]["id"]

    async def shown() -> Any:
        async with http.get(f"{url}/mail/{mail_id}") as resp:
            assert resp.status == 200
            return (await resp.json())["mail"]

    async def sent() -> bool:
        return bool((await shown())["status"] == "sent")

    await eventually(sent, what=f"{mail_id} sent")
    return await shown()


async def test_sendgrid_receives_the_fields_and_get_shows_them(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """Through the running system SendGrid gets headers, categories and custom_args."""
    async with embedded(make_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        shown = await send_and_wait(http, mailman.url, {**BASE, **FIELDS})
    assert shown["provider"] == "sendgrid"
    (got,) = sendgrid.received
    assert {k: v for k, v in got["headers"].items() if k != "Message-ID"} == FIELDS["headers"]
    assert got["categories"] == FIELDS["tags"]
    assert got["custom_args"] == {**FIELDS["metadata"], "mail_id": shown["id"]}
    submitted = shown["submitted"]
    assert (submitted["headers"], submitted["tags"]) == (FIELDS["headers"], FIELDS["tags"])
    assert submitted["metadata"] == FIELDS["metadata"]


async def test_mailgun_receives_the_fields(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """When SendGrid is down, Mailgun gets h:<Name>, o:tag and v:<key> fields."""
    sendgrid.mode = "503"
    async with embedded(make_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        shown = await send_and_wait(http, mailman.url, {**BASE, **FIELDS})
    assert shown["provider"] == "mailgun"
    (got,) = mailgun.received
    assert got["h:X-Campaign"] == ["spring sale"]
    assert got["h:X-Priority-Hint"] == ["low"]
    assert got["o:tag"] == FIELDS["tags"]
    assert got["v:user_id"] == ["42"] and got["v:plan"] == ["pro ünïcode"]
    assert got["v:mail_id"] == [shown["id"]]
    assert shown["submitted"]["tags"] == FIELDS["tags"]


async def test_outbox_eml_carries_the_fields(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """With the outbox provider, the .eml holds the headers, tags and metadata."""
    async with embedded(make_config(tmp_path, {"MAILMAN_PROVIDERS": "outbox"})) as mailman:
        shown = await send_and_wait(http, mailman.url, {**BASE, **FIELDS})
    data = (tmp_path / "outbox" / f"{shown['id']}.eml").read_bytes()
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert message["X-Campaign"] == "spring sale"
    assert message["X-Priority-Hint"] == "low"
    assert message["X-Mailman-Tags"] == "welcome, onboarding"
    assert json.loads(str(message["X-Mailman-Metadata"])) == FIELDS["metadata"]
    assert shown["submitted"]["headers"] == FIELDS["headers"]


async def test_bad_fields_get_a_422_problem_naming_them(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The API answers bad headers, tags and metadata with one 422 problem naming each."""
    body = {
        **BASE,
        "headers": {"Bcc": "x@example.com", "X-Ok": "a\r\nb"},
        "tags": ["a", "a"],
        "metadata": {"mail_id": "mine"},
    }
    async with embedded(make_config(tmp_path)) as mailman:
        async with http.post(f"{mailman.url}/mail/send", json=body) as resp:
            assert resp.status == 422
            assert resp.content_type == "application/problem+json"
            problem = await resp.json()
        assert await mailman.store.unfinished() == []
    assert [e["field"] for e in problem["errors"]] == [
        "headers.Bcc",
        "headers.X-Ok",
        "tags[1]",
        "metadata.mail_id",
    ]
    assert all(e["message"] for e in problem["errors"])


@pytest.mark.parametrize(
    "extra",
    [
        {"categories": [f"c{i}" for i in range(11)]},
        {"custom_args": {"mail_id": "x", "n": 1}},
        {"custom_args": {"mail_id": "x" * 10_000}},
        {"headers": {"Subject": "x"}},
        {"headers": {"X-A": 1}},
    ],
)
async def test_fake_sendgrid_refuses_what_sendgrid_refuses(
    sendgrid: FakeSendGrid, http: aiohttp.ClientSession, extra: dict[str, Any]
) -> None:
    """The SendGrid fake answers 400 for too many categories, bad custom_args or headers."""
    request = {**sendgrid_body(parse()), **extra}
    auth = {"Authorization": f"Bearer {sendgrid.api_key}"}
    async with http.post(f"{sendgrid.base_url}/v3/mail/send", json=request, headers=auth) as resp:
        assert resp.status == 400
    assert sendgrid.received == []


@pytest.mark.parametrize(
    "extra",
    [
        [("o:tag", t) for t in "abcd"],
        [(f"h:X-H{i}", "v" * 998) for i in range(17)],
    ],
)
async def test_fake_mailgun_refuses_what_mailgun_refuses(
    mailgun: FakeMailgun, http: aiohttp.ClientSession, extra: list[tuple[str, str]]
) -> None:
    """The Mailgun fake answers 400 for more than three tags or over 16 kB of o:/h:/v:."""
    fields = form(parse()) + extra
    auth = {"Authorization": basic_auth("api", mailgun.api_key)}
    url = f"{mailgun.base_url}/v3/{mailgun.domain}/messages"
    async with http.post(url, data=aiohttp.FormData(fields), headers=auth) as resp:
        assert resp.status == 400
    assert mailgun.received == []


def test_every_field_the_api_names_is_checked_by_its_rule() -> None:
    """``Submission.check`` reads each field the API names, by that name, and no other."""
    assert set(submission._CHECKED) == set(submission.FIELDS)
    assert submission._CHECKED["from"].name == "sender"
    assert set(submission._REQUIRED) == {"to", "from"}
    for left_out in submission._LEFT_OUT.values():  # one value for every mail: immutable
        assert isinstance(left_out, tuple | None)
    assert parse().cc == () and parse().tags == () and parse().unsubscribe is None


def test_sender_by_its_field_name_is_unknown_and_from_still_required() -> None:
    """``sender`` in place of ``from`` is refused as unknown, and ``from`` as missing."""
    body = {k: v for k, v in BASE.items() if k != "from"} | {"sender": "noreply@example.com"}
    with pytest.raises(ValidationFailed) as refused:
        parse_mail(body, mail_id=MAIL_ID, default_subject="(none)", now=0.0)
    messages = {e.field: e.message for e in refused.value.errors}
    assert messages["from"] == "is required"
    assert messages["sender"].startswith("is not a known field")


def test_a_submission_is_checked_by_check_never_by_pydantic() -> None:
    """Validating ``Submission`` through pydantic is refused: it would skip the rules of
    the mail as a whole, and its rules need the context ``check`` gives them."""
    with pytest.raises(TypeError, match=r"Submission\.check"):
        submission.Submission.model_validate(BASE)

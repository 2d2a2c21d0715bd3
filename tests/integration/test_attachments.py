"""Attachments: validated, stored, mapped for every provider, shown back without content."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email
import email.policy
import os
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import aiomysql
import orjson
import pytest

from mailman.core.messages import decode, encode
from mailman.core.model import Attachment, Disposition, Mail, Status
from mailman.core.submission import parse_mail
from mailman.core.validation import (
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_CONTENT_ID,
    ValidationFailed,
    guess_content_type,
)
from mailman.providers import streamed
from mailman.providers.mailgun import basic_auth, form, request_body
from mailman.providers.outbox import render
from mailman.providers.sendgrid import body as sendgrid_body
from mailman.routes.models.mail import submitted
from mailman.store import MailTooLarge, Store
from mailman.store.mysql import MySQLStore
from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.databases import fresh_mysql
from ..support.fakes import FakeMailgun, FakeSendGrid, ReceivedFile
from .test_mail_model import BASE, MAIL_ID, send_and_wait

#: A PDF-ish file with every byte value, and a small PNG-ish image.
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
HTML = '<p>Hello</p><img src="cid:logo@example">'


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def files() -> list[dict[str, Any]]:
    """A plain attachment (non-ASCII name, type guessed) and an inline image."""
    return [
        {"filename": "Rechnung März.pdf", "content": b64(PDF)},
        {
            "filename": "logo.png",
            "content": b64(PNG),
            "content_type": "image/png",
            "disposition": "inline",
            "content_id": "<logo@example>",
        },
    ]


def parse(**fields: Any) -> Mail:
    """``parse_mail`` of the base body with ``fields`` added."""
    return parse_mail({**BASE, **fields}, mail_id=MAIL_ID, default_subject="(none)", now=0.0)


def refusal(**fields: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        parse(**fields)
    return caught.value


def refused(**fields: Any) -> dict[str, str]:
    """The field errors (field to message) for the base body with ``fields`` added."""
    return {e.field: e.message for e in refusal(**fields).errors}


def one(**file: Any) -> list[dict[str, Any]]:
    """A list of one file: a small valid attachment with ``file``'s fields over it."""
    return [{"filename": "a.txt", "content": b64(b"hello"), **file}]


def with_files() -> Mail:
    return parse(html=HTML, attachments=files())


# --- validation ------------------------------------------------------------------


def test_files_are_optional_and_kept_in_order() -> None:
    """Without attachments a mail has none; with them each is kept in order, typed and sized."""
    assert parse().attachments == ()
    pdf, logo = with_files().attachments
    assert pdf == Attachment(
        "Rechnung März.pdf", b64(PDF), "application/pdf", Disposition.ATTACHMENT, None, len(PDF)
    )
    assert logo == Attachment.of("logo.png", PNG, "image/png", Disposition.INLINE, "logo@example")
    assert pdf.decoded() == PDF and logo.decoded() == PNG


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("report.pdf", "application/pdf"),
        ("PHOTO.JPG", "image/jpeg"),
        ("notes.txt", "text/plain"),
        ("backup.tar.gz", "application/gzip"),
        ("forwarded.eml", "application/octet-stream"),
        ("README", "application/octet-stream"),
        ("data.unknownext", "application/octet-stream"),
    ],
)
def test_the_type_is_guessed_from_the_file_name(filename: str, content_type: str) -> None:
    """Without content_type the type comes from the name; unknown (or message/*) is octet-stream."""
    assert guess_content_type(filename) == content_type
    (file,) = parse(attachments=one(filename=filename)).attachments
    assert file.content_type == content_type


def test_a_given_type_is_kept_lowercase() -> None:
    """A given content_type is kept, lowercased."""
    (file,) = parse(attachments=one(content_type="Application/VND.ms-Excel")).attachments
    assert file.content_type == "application/vnd.ms-excel"


@pytest.mark.parametrize(
    ("given", "stored"),
    [("QUJD", "QUJD"), ("QQ==", "QQ=="), ("QQ", "QQ=="), ("QUI", "QUI="), ("QR==", "QQ==")],
)
def test_base64_is_kept_canonical(given: str, stored: str) -> None:
    """Strict base64 is taken with or without padding and stored padded, spare bits zero."""
    (file,) = parse(attachments=one(content=given)).attachments
    assert file.content == stored
    assert file.decoded() == base64.b64decode(stored)
    assert file.size == len(file.decoded())


def test_angle_brackets_around_a_content_id_are_dropped() -> None:
    """<logo@example> is kept as logo@example; a bare id is kept as given."""
    (file,) = parse(attachments=one(disposition="inline", content_id="<logo@example>")).attachments
    assert file.content_id == "logo@example"
    (file,) = parse(attachments=one(disposition="INLINE", content_id="x.1")).attachments
    assert (file.content_id, file.disposition) == ("x.1", Disposition.INLINE)


@pytest.mark.parametrize(
    ("attachments", "field"),
    [
        ("a.pdf", "attachments"),
        ({"filename": "a.pdf"}, "attachments"),
        ([one()[0]] * (MAX_ATTACHMENTS + 1), "attachments"),
        ([5], "attachments[0]"),
        ([None], "attachments[0]"),
        (one(filename=None), "attachments[0].filename"),
        (one(filename=""), "attachments[0].filename"),
        (one(filename=5), "attachments[0].filename"),
        (one(filename="a" * 256), "attachments[0].filename"),
        (one(filename="dir/a.pdf"), "attachments[0].filename"),
        (one(filename="C:\\a.pdf"), "attachments[0].filename"),
        (one(filename='say "hi".txt'), "attachments[0].filename"),
        (one(filename="a\r\nContent-Type: text/html"), "attachments[0].filename"),
        (one(filename="a\nb"), "attachments[0].filename"),
        (one(filename="tab\there.txt"), "attachments[0].filename"),
        (one(filename="nul\0.txt"), "attachments[0].filename"),
        (one(filename="=?utf-8?q?x?=.txt"), "attachments[0].filename"),
        (one(filename="invoice\u202efdp.exe"), "attachments[0].filename"),
        (one(filename=" padded.txt"), "attachments[0].filename"),
        (one(filename="nbsp.txt\xa0"), "attachments[0].filename"),
        (one(filename="\u3000"), "attachments[0].filename"),
        (one(filename=".."), "attachments[0].filename"),
        (one(filename="\ud800.txt"), "attachments[0].filename"),
        (one(content=None), "attachments[0].content"),
        (one(content=""), "attachments[0].content"),
        (one(content=5), "attachments[0].content"),
        (one(content="aGVs bG8="), "attachments[0].content"),
        (one(content="aGVsbG8=\n"), "attachments[0].content"),
        (one(content="aGVs\r\nbG8="), "attachments[0].content"),
        (one(content="-_8="), "attachments[0].content"),
        (one(content="aGVsbG8=aGVs"), "attachments[0].content"),
        (one(content="QQ="), "attachments[0].content"),
        (one(content="Q"), "attachments[0].content"),
        (one(content="not base64!"), "attachments[0].content"),
        (one(content="é"), "attachments[0].content"),
        (one(content="===="), "attachments[0].content"),
        (one(content_type="pdf"), "attachments[0].content_type"),
        (one(content_type=""), "attachments[0].content_type"),
        (one(content_type=5), "attachments[0].content_type"),
        (one(content_type="text/plain; charset=utf-8"), "attachments[0].content_type"),
        (one(content_type="text/plain\r\nX-Evil: 1"), "attachments[0].content_type"),
        (one(content_type="multipart/mixed"), "attachments[0].content_type"),
        (one(content_type="message/rfc822"), "attachments[0].content_type"),
        (one(content_type="image/pñg"), "attachments[0].content_type"),
        (one(disposition="both"), "attachments[0].disposition"),
        (one(disposition=1), "attachments[0].disposition"),
        (one(disposition="inline"), "attachments[0].content_id"),
        (one(disposition="inline", content_id=None), "attachments[0].content_id"),
        (one(content_id="x@example"), "attachments[0].content_id"),
        (one(disposition="attachment", content_id="x"), "attachments[0].content_id"),
        (one(disposition="inline", content_id=""), "attachments[0].content_id"),
        (one(disposition="inline", content_id="<>"), "attachments[0].content_id"),
        (one(disposition="inline", content_id=5), "attachments[0].content_id"),
        (one(disposition="inline", content_id="a b"), "attachments[0].content_id"),
        (one(disposition="inline", content_id="a<b>"), "attachments[0].content_id"),
        (one(disposition="inline", content_id="dir/logo"), "attachments[0].content_id"),
        (one(disposition="inline", content_id='"q"'), "attachments[0].content_id"),
        (one(disposition="inline", content_id="a&b"), "attachments[0].content_id"),
        (one(disposition="inline", content_id="..."), "attachments[0].content_id"),
        (one(disposition="inline", content_id="x\r\ny"), "attachments[0].content_id"),
        (
            one(disposition="inline", content_id="x" * (MAX_CONTENT_ID + 1)),
            "attachments[0].content_id",
        ),
        (
            one(disposition="inline", content_id="Logo@x")
            + one(disposition="inline", content_id="<logo@X>"),
            "attachments[1].content_id",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_field(attachments: object, field: str) -> None:
    """Each malformed or unsafe part of a file is refused (422) under attachments[i].<field>."""
    failed = refusal(attachments=attachments)
    assert [e.field for e in failed.errors] == [field]
    assert failed.status == 422


def test_every_bad_file_is_named_at_once() -> None:
    """Every bad field of every file is reported together, in order."""
    errors = refused(
        attachments=[
            {"filename": "a/b", "content": "!"},
            {"filename": "ok.png", "content": "QQ==", "disposition": "inline"},
        ],
        tags=["", "x"],
    )
    assert list(errors) == [
        "tags[0]",
        "attachments[0].filename",
        "attachments[0].content",
        "attachments[1].content_id",
    ]
    assert all(errors.values())


def test_the_most_files_at_the_size_limit_are_accepted() -> None:
    """Twenty files of exactly MAX_ATTACHMENT_BYTES in all are taken."""
    each, rest = divmod(MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS)
    sizes = [each] * (MAX_ATTACHMENTS - 1) + [each + rest]
    mail = parse(
        attachments=[
            {"filename": f"f{i}.bin", "content": b64(b"x" * n)} for i, n in enumerate(sizes)
        ]
    )
    assert sum(f.size for f in mail.attachments) == MAX_ATTACHMENT_BYTES
    assert len(mail.attachments) == MAX_ATTACHMENTS


def test_one_byte_over_the_size_limit_is_a_413_on_attachments() -> None:
    """Files over MAX_ATTACHMENT_BYTES in all (decoded) fail with status 413 on attachments."""
    half = MAX_ATTACHMENT_BYTES // 2
    failed = refusal(
        attachments=[
            {"filename": "a.bin", "content": b64(b"a" * half)},
            {"filename": "b.bin", "content": b64(b"b" * (MAX_ATTACHMENT_BYTES - half + 1))},
        ]
    )
    assert failed.status == 413
    assert [e.field for e in failed.errors] == ["attachments"]
    assert str(MAX_ATTACHMENT_BYTES) in failed.errors[0].message


def test_too_large_wins_over_other_errors() -> None:
    """Over the size limit the status is 413 even when other fields are bad; all are named."""
    failed = refusal(
        attachments=[
            {"filename": "a/b.bin", "content": b64(b"a" * (MAX_ATTACHMENT_BYTES + 1))},
        ],
        subject="bad\nsubject",
    )
    assert failed.status == 413
    assert {e.field for e in failed.errors} == {
        "subject",
        "attachments[0].filename",
        "attachments",
    }


# --- the record ------------------------------------------------------------------


def test_files_survive_encode_and_decode() -> None:
    """A mail with files decodes back equal, dispositions as enums; older records have none."""
    mail = with_files()
    again = decode(Mail, encode(mail))
    assert again == mail
    assert again.attachments[1].disposition is Disposition.INLINE
    assert decode(Mail, encode(parse())).attachments == ()


def test_a_bad_disposition_in_a_record_is_refused() -> None:
    """A record whose file has an unknown disposition does not decode."""
    raw = orjson.loads(encode(with_files()))
    raw["attachments"][0]["disposition"] = "sideways"
    with pytest.raises(ValueError):
        decode(Mail, orjson.dumps(raw))


def test_submitted_shows_files_by_name_type_and_size_only() -> None:
    """GET /mail/{id}'s submitted lists each file's name, type, disposition, content id and
    size, never its content."""
    shown = submitted(with_files())
    assert shown["attachments"] == [
        {
            "filename": "Rechnung März.pdf",
            "content_type": "application/pdf",
            "disposition": "attachment",
            "size": len(PDF),
        },
        {
            "filename": "logo.png",
            "content_type": "image/png",
            "disposition": "inline",
            "content_id": "logo@example",
            "size": len(PNG),
        },
    ]
    assert b64(PNG) not in orjson.dumps(shown).decode()
    assert "attachments" not in submitted(parse())
    assert b64(PNG) not in repr(with_files())


# --- the providers' requests -----------------------------------------------------


def test_sendgrid_body_carries_the_files() -> None:
    """SendGrid gets content, filename, type, disposition, and content_id for inline files."""
    got = sendgrid_body(with_files())["attachments"]
    assert got == [
        {
            "content": b64(PDF),
            "filename": "Rechnung März.pdf",
            "type": "application/pdf",
            "disposition": "attachment",
        },
        {
            "content": b64(PNG),
            "filename": "logo.png",
            "type": "image/png",
            "disposition": "inline",
            "content_id": "logo@example",
        },
    ]
    assert "attachments" not in sendgrid_body(parse())


def test_mailgun_goes_multipart_only_with_files() -> None:
    """Mailgun's body stays url-encoded without files and is multipart/form-data with them."""
    assert not request_body(parse()).is_multipart
    assert request_body(with_files()).is_multipart
    assert ("html", HTML) in form(with_files())


def parsed_eml(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_eml_is_mixed_with_the_inline_file_related_to_the_html() -> None:
    """The .eml is mixed[alternative[text, related[html, image]], pdf] and reads back exactly."""
    data = render(parse(content="Hi", html=HTML, attachments=files()))
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert b"\n" not in data.replace(b"\r\n", b"")
    message = parsed_eml(data)
    assert not message.defects
    structure = [part.get_content_type() for part in message.walk()]
    assert structure == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
    ]
    assert data.count(b"MIME-Version:") == 1
    parts = {part.get_content_type(): part for part in message.walk()}
    image, pdf = parts["image/png"], parts["application/pdf"]
    assert image.get_payload(decode=True) == PNG
    assert image["Content-ID"] == "<logo@example>"
    assert image.get_content_disposition() == "inline"
    assert image.get_filename() == "logo.png"
    assert pdf.get_payload(decode=True) == PDF
    assert pdf.get_content_disposition() == "attachment"
    assert pdf.get_filename() == "Rechnung März.pdf"
    assert b"filename*=utf-8''Rechnung%20M%C3%A4rz.pdf" in data  # RFC 2231
    assert all(not part.defects for part in message.walk())


def test_eml_without_html_relates_inline_files_to_the_text() -> None:
    """With a text body only, the inline file is related to the text; a long cid is not folded."""
    cid = "c" * MAX_CONTENT_ID
    mail = parse(attachments=one(filename="logo.png", disposition="inline", content_id=cid))
    data = render(mail)
    message = parsed_eml(data)
    structure = [part.get_content_type() for part in message.walk()]
    assert structure == ["multipart/related", "text/plain", "image/png"]
    assert f"Content-ID: <{cid}>\r\n".encode() in data
    assert message["Subject"] == "(none)" and message["X-Mailman-Id"] == MAIL_ID


# --- the fakes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "files",
    [
        [{"content": "not base64!", "filename": "a.txt"}],
        [{"content": "", "filename": "a.txt"}],
        [{"content": "QQ=="}],
        [{"content": "QQ==", "filename": "a.png", "disposition": "inline"}],
        [{"content": "QQ==", "filename": "a.png", "disposition": "sideways"}],
        [{"content": "QQ==", "filename": "a.txt", "type": "text/plain; charset=utf-8"}],
        "QQ==",
    ],
)
async def test_fake_sendgrid_refuses_what_sendgrid_refuses(
    sendgrid: FakeSendGrid, http: aiohttp.ClientSession, files: object
) -> None:
    """The SendGrid fake answers 400 for bad base64, no filename, inline without content_id..."""
    request = {**sendgrid_body(parse()), "attachments": files}
    auth = {"Authorization": f"Bearer {sendgrid.api_key}"}
    async with http.post(f"{sendgrid.base_url}/v3/mail/send", json=request, headers=auth) as resp:
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["field"].startswith("attachments")
    assert sendgrid.received == [] and sendgrid.files == []


async def test_fake_sendgrid_answers_413_over_30_mb(
    sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """The SendGrid fake refuses a message of 30 MB or more with its HTML 413 page."""
    big = {"content": b64(b"x" * 23_000_000), "filename": "big.bin"}
    request = {**sendgrid_body(parse()), "attachments": [big]}
    headers = {"Authorization": f"Bearer {sendgrid.api_key}", "Content-Type": "application/json"}
    url = f"{sendgrid.base_url}/v3/mail/send"
    async with http.post(url, data=streamed(orjson.dumps(request)), headers=headers) as resp:
        assert resp.status == 413
        assert resp.content_type == "text/html"
    assert sendgrid.received == []


async def test_fake_mailgun_refuses_a_file_in_another_field(
    mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """The Mailgun fake takes files only as attachment or inline parts."""
    body = aiohttp.FormData(form(parse()), quote_fields=False)
    body.add_field("text", b"file", filename="t.txt", content_type="text/plain")
    auth = {"Authorization": basic_auth("api", mailgun.api_key)}
    url = f"{mailgun.base_url}/v3/{mailgun.domain}/messages"
    async with http.post(url, data=body, headers=auth) as resp:
        assert resp.status == 400
    assert mailgun.received == []


#: File names that are easy to mangle in a multipart form's quoted string.
TRICKY_NAMES = [
    "O'Brien (1); v=2.csv",
    "日本語 ファイル.txt",
    "two  spaces.pdf",
    "per%20cent.txt",
    "x*=utf-8''y.txt",
    "filename=x",
    "zero\u200bwidth.txt",
]


async def test_mailgun_gets_file_names_as_they_are(
    mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """Mailgun's form carries each file name unchanged (not percent-encoded), and an inline
    file under its content id."""
    attachments = [{"filename": name, "content": "QQ=="} for name in TRICKY_NAMES]
    attachments += one(disposition="inline", content_id="a!$*+=_~.@-b")
    auth = {"Authorization": basic_auth("api", mailgun.api_key)}
    url = f"{mailgun.base_url}/v3/{mailgun.domain}/messages"
    body = request_body(parse(attachments=attachments))
    async with http.post(url, data=body, headers=auth) as resp:
        assert resp.status == 200
    (got,) = mailgun.files
    assert [f.filename for f in got] == [*TRICKY_NAMES, "a!$*+=_~.@-b"]
    assert [f.disposition for f in got] == ["attachment"] * len(TRICKY_NAMES) + ["inline"]


# --- end to end --------------------------------------------------------------------


def full_body() -> dict[str, Any]:
    return {**BASE, "html": HTML, "attachments": files()}


async def test_sendgrid_receives_the_files_byte_for_byte(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """Through the running system SendGrid gets the attachment and the inline image intact."""
    async with embedded(make_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        shown = await send_and_wait(http, mailman.url, full_body())
    assert shown["provider"] == "sendgrid"
    (got,) = sendgrid.files
    assert got == (
        ReceivedFile("attachment", "Rechnung März.pdf", "application/pdf", PDF),
        ReceivedFile("inline", "logo.png", "image/png", PNG, content_id="logo@example"),
    )
    assert mailgun.received == []


async def test_mailgun_receives_multipart_files_when_sendgrid_is_down(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """With SendGrid down Mailgun gets the files as multipart parts; the inline one is named
    by its content id (Mailgun's Content-ID), so the HTML's cid: reference still holds."""
    sendgrid.mode = "503"
    async with embedded(make_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        shown = await send_and_wait(http, mailman.url, full_body())
    assert shown["provider"] == "mailgun"
    (got,) = mailgun.files
    assert got == (
        ReceivedFile("attachment", "Rechnung März.pdf", "application/pdf", PDF),
        ReceivedFile("inline", "logo@example", "image/png", PNG, content_id="logo@example"),
    )
    (fields,) = mailgun.received
    assert fields["html"] == [HTML]
    assert fields["v:mail_id"] == [shown["id"]]


async def test_outbox_eml_holds_the_same_bytes_and_content_id(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With the outbox provider the .eml parses back to the same bytes, names and Content-ID."""
    async with embedded(make_config(tmp_path, {"MAILMAN_PROVIDERS": "outbox"})) as mailman:
        shown = await send_and_wait(http, mailman.url, full_body())
    message = parsed_eml((tmp_path / "outbox" / f"{shown['id']}.eml").read_bytes())
    by_name = {part.get_filename(): part for part in message.walk() if part.get_filename()}
    assert by_name["Rechnung März.pdf"].get_payload(decode=True) == PDF
    assert by_name["logo.png"].get_payload(decode=True) == PNG
    assert by_name["logo.png"]["Content-ID"] == "<logo@example>"


async def test_get_shows_the_files_without_their_content(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """GET /mail/{id} lists each file by name, type and size, and never its content."""
    async with embedded(make_config(tmp_path, {"MAILMAN_PROVIDERS": "outbox"})) as mailman:
        shown = await send_and_wait(http, mailman.url, full_body())
        async with http.get(f"{mailman.url}/mail/{shown['id']}") as resp:
            text = await resp.text()
    assert [
        (f["filename"], f["content_type"], f["size"]) for f in shown["submitted"]["attachments"]
    ] == [
        ("Rechnung März.pdf", "application/pdf", len(PDF)),
        ("logo.png", "image/png", len(PNG)),
    ]
    assert shown["submitted"]["attachments"][1]["content_id"] == "logo@example"
    assert not any("content" in f for f in shown["submitted"]["attachments"])
    assert b64(PNG)[:100] not in text and b64(PDF)[:100] not in text


async def post(http: aiohttp.ClientSession, url: str, body: object) -> tuple[int, Any]:
    """POST /mail/send (a large body as a stream); the status and the answer's JSON."""
    data = streamed(orjson.dumps(body))
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{url}/mail/send", data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_the_api_answers_413_over_the_limit_and_422_for_bad_files(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Over 10 MiB of files is a 413 naming attachments; a bad file a 422 naming its field;
    neither stores anything."""
    over = [{"filename": "big.bin", "content": b64(b"\0" * (MAX_ATTACHMENT_BYTES + 1))}]
    bad = [*files(), {"filename": "x.txt", "content": "no base64"}]
    async with embedded(make_config(tmp_path)) as mailman:
        status, problem = await post(http, mailman.url, {**BASE, "attachments": over})
        assert status == 413
        assert problem["type"].endswith("/too-large") and problem["status"] == 413
        assert [e["field"] for e in problem["errors"]] == ["attachments"]
        status, problem = await post(http, mailman.url, {**BASE, "attachments": bad})
        assert status == 422
        assert [e["field"] for e in problem["errors"]] == ["attachments[2].content"]
        assert await mailman.store.unfinished() == []


@pytest.mark.slow
async def test_the_largest_mail_fits_the_body_limit_and_is_written_out(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A mail with 10 MiB of files (about 13.4 MiB of JSON) is accepted and written whole."""
    data = os.urandom(MAX_ATTACHMENT_BYTES)
    body = {**BASE, "html": HTML, "attachments": [{"filename": "big.bin", "content": b64(data)}]}
    async with embedded(make_config(tmp_path, {"MAILMAN_PROVIDERS": "outbox"})) as mailman:
        status, accepted = await post(http, mailman.url, body)
        assert status == 201, accepted
        mail_id = accepted["mail"]["id"]

        async def sent() -> bool:
            record = await mailman.store.get(mail_id)
            return record is not None and record.status is Status.SENT

        await eventually(sent, what=f"{mail_id} sent")
        async with http.get(f"{mailman.url}/mail/{mail_id}") as resp:
            shown = (await resp.json())["mail"]
    assert shown["submitted"]["attachments"][0]["size"] == MAX_ATTACHMENT_BYTES
    message = parsed_eml((tmp_path / "outbox" / f"{shown['id']}.eml").read_bytes())
    (part,) = (p for p in message.walk() if p.get_filename() == "big.bin")
    assert part.get_payload(decode=True) == data


# --- the store ---------------------------------------------------------------------


def big_mail(mail_id: str, size: int) -> Mail:
    data = os.urandom(size)
    return parse_mail(
        {**BASE, "attachments": [{"filename": f"{mail_id}.bin", "content": b64(data)}]},
        mail_id=mail_id,
        default_subject="(none)",
        now=0.0,
    )


async def test_two_large_mails_are_stored_at_once(any_store: Store) -> None:
    """Two mails of about 9 MiB of files each, added together, are stored and read back whole."""
    mails = [big_mail(f"01JZBIG{i}0000000000000000000", 9 * 1024 * 1024) for i in range(2)]
    ids = await asyncio.gather(*(any_store.add(m) for m in mails))
    assert ids == [m.id for m in mails]
    for mail in mails:
        loaded = await any_store.load(mail.id)
        assert loaded is not None and loaded[0] == mail


async def packet_limit(url: str) -> int:
    """The MySQL server's ``max_allowed_packet``."""
    parts = urlsplit(url)
    conn = await aiomysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT @@max_allowed_packet")
            (value,) = await cur.fetchone()
    finally:
        conn.close()
    return int(value)


def quotes_over(limit: int) -> str:
    """HTML whose INSERT passes ``limit``: a quote takes four bytes there (JSON's ``\\"``,
    escaped again for SQL), and two in the request's JSON."""
    return '"' * (limit // 4 + 1)


async def test_mysql_refuses_a_mail_over_max_allowed_packet_and_stays_up() -> None:
    """A mail whose INSERT would pass max_allowed_packet is MailTooLarge, not an outage; the
    largest mail of files fits, and the store keeps working."""
    async with fresh_mysql("attachments") as url, MySQLStore.from_url(url) as store:
        limit = await packet_limit(url)
        over = dataclasses.replace(parse(), html=quotes_over(limit))
        with pytest.raises(MailTooLarge) as caught:
            await store.add(over)
        assert caught.value.limit == limit < caught.value.size
        assert await store.load(over.id) is None
        largest = big_mail("01JZLARGEST0000000000000000", MAX_ATTACHMENT_BYTES)
        assert await store.add(largest) == largest.id
        loaded = await store.load(largest.id)
        assert loaded is not None and loaded[0] == largest


async def test_the_api_answers_413_for_a_mail_the_store_cannot_hold(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A valid mail within the body limit whose record is over MySQL's packet limit is a 413
    naming body; nothing is stored, and the store still answers."""
    async with fresh_mysql("attachments") as url:
        limit = await packet_limit(url)
        body = {**BASE, "html": quotes_over(limit), "attachments": one()}
        config = make_config(tmp_path, {"MAILMAN_STORE": url, "MAILMAN_MAX_BODY_BYTES": str(limit)})
        async with embedded(config) as mailman:
            status, problem = await post(http, mailman.url, body)
            assert status == 413, problem
            assert problem["type"].endswith("/too-large")
            assert [e["field"] for e in problem["errors"]] == ["body"]
            assert await mailman.store.unfinished() == []

            async def healthy() -> bool:
                async with http.get(f"{mailman.url}/health") as resp:
                    return resp.status == 200

            await eventually(healthy, what="the store still answers")

"""An SMTP client's MIME mail as the body of POST /mail/send (actors.mime), without I/O."""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from email.mime.image import MIMEImage
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailman.core.mime import message_id, submission_values
from mailman.core.submission import parse_mail
from mailman.core.validation import MAX_HEADERS, ValidationFailed

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 8
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 4


def message(**headers: str) -> EmailMessage:
    """A plain-text mail from the app to Ann, with ``headers`` added (``X_Name`` -> ``X-Name``)."""
    msg = EmailMessage()
    msg["From"] = "App <app@example.com>"
    msg["To"] = "Ann <ann@example.com>"
    msg["Subject"] = "Hello"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hello Ann,\nwelcome.\n")
    return msg


def translate(msg: Any, *recipients: str, mail_from: str = "bounce@example.com") -> dict[str, Any]:
    raw = msg if isinstance(msg, bytes) else msg.as_bytes(policy=email.policy.SMTP)
    return submission_values(
        raw, mail_from=mail_from, recipients=recipients or ("ann@example.com",)
    )


def refused(msg: Any, *recipients: str) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as caught:
        translate(msg, *recipients)
    return {e.field: e.message for e in caught.value.errors}


def test_a_plain_mail_becomes_the_api_body() -> None:
    """From, To, Subject and the text body are taken as the API takes them; line ends are \\n."""
    body = translate(message())
    assert body == {
        "from": "App <app@example.com>",
        "to": ["Ann <ann@example.com>"],
        "subject": "Hello",
        "text": "Hello Ann,\nwelcome.\n",
    }
    parse_mail(body, mail_id="01JZ0000000000000000000000", default_subject="(none)", now=0.0)


def test_envelope_recipients_decide_and_the_rest_are_bcc() -> None:
    """To/Cc addresses that are envelope recipients keep their place and name; every other
    envelope recipient is a bcc; header addresses no envelope recipient names are dropped."""
    msg = message(Cc="Bob <BOB@example.com>, Carl <carl@example.com>")
    msg.replace_header("To", "Ann <ann@example.com>, Nobody <nobody@example.com>")
    body = translate(msg, "ann@example.com", "bob@example.com", "hidden@example.com")
    assert body["to"] == ["Ann <ann@example.com>"]
    assert body["cc"] == ["Bob <BOB@example.com>"]
    assert body["bcc"] == ["hidden@example.com"]


def test_cc_only_recipients_become_to_and_bcc_only_is_refused() -> None:
    """With no To address among the recipients the Cc ones are the To; with neither, refused."""
    msg = message(Cc="bob@example.com")
    body = translate(msg, "bob@example.com", "hidden@example.com")
    assert (body["to"], body.get("cc"), body["bcc"]) == (
        ["bob@example.com"],
        None,
        ["hidden@example.com"],
    )
    assert "to" in refused(message(), "hidden@example.com")


def test_without_a_from_header_the_envelope_sender_is_the_from() -> None:
    """No From header: MAIL FROM is the sender."""
    msg = message()
    del msg["From"]
    assert translate(msg, mail_from="cron@example.com")["from"] == "cron@example.com"


def test_two_from_or_reply_to_addresses_are_refused_by_name() -> None:
    """Mailman sends from one address and has one Reply-To: more is refused, naming the field."""
    msg = message(Reply_To="a@example.com, b@example.com")
    msg.replace_header("From", "a@example.com, b@example.com")
    errors = refused(msg)
    assert set(errors) == {"from", "reply_to"}
    assert "one address" in errors["from"]


def test_an_address_that_is_none_is_passed_on_for_validation_to_name() -> None:
    """A From header that holds no address goes on as written: validation refuses it by name."""
    raw = b"From: not an address\r\nTo: ann@example.com\r\nSubject: x\r\n\r\nHi\r\n"
    body = translate(raw)
    with pytest.raises(ValidationFailed) as caught:
        parse_mail(body, mail_id="01JZ0000000000000000000000", default_subject="-", now=0.0)
    assert [e.field for e in caught.value.errors] == ["from"]


def test_encoded_words_and_raw_utf8_headers_are_decoded() -> None:
    """RFC 2047 subjects and names are decoded; raw UTF-8 (no SMTPUTF8) is read as UTF-8."""
    encoded = message()
    encoded.replace_header("Subject", "Grüße — ✓ ünïcode")
    encoded.replace_header("From", "Jörg Müller <joerg@example.com>")
    raw = encoded.as_bytes(policy=email.policy.SMTP)
    assert b"=?utf-8?" in raw
    body = translate(raw)
    assert (body["subject"], body["from"]) == (
        "Grüße — ✓ ünïcode",
        "Jörg Müller <joerg@example.com>",
    )
    sloppy = "From: Jörg <j@example.com>\r\nTo: ann@example.com\r\nSubject: Grüße\r\n\r\nHi\r\n"
    body = translate(sloppy.encode("utf-8"))
    assert (body["subject"], body["from"]) == ("Grüße", "Jörg <j@example.com>")


def test_alternative_bodies_and_a_quoted_printable_charset() -> None:
    """multipart/alternative: the text and the HTML bodies, each decoded from its charset."""
    msg = MIMEMultipart("alternative")
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", "ann@example.com", "Hi"
    msg.attach(MIMEText("Grüße\n", "plain", "iso-8859-1"))
    msg.attach(MIMEText("<p>Grüße</p>", "html", "utf-8"))
    body = translate(msg.as_bytes())
    assert (body["text"], body["html"]) == ("Grüße\n", "<p>Grüße</p>")
    assert "attachments" not in body


def test_attachments_and_inline_images_keep_their_bytes() -> None:
    """A file and an inline image (Content-ID, in multipart/related, even one marked
    attachment) become attachments, byte for byte; a path in a file name is dropped, a
    file without a name gets one."""
    msg = message()
    msg.add_alternative('<p>Hi <img src="cid:logo@example"></p>', subtype="html")
    html = msg.get_body(("html",))
    assert html is not None
    html.add_related(PNG, "image", "png", cid="<logo@example>", disposition="attachment")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="C:\\tmp\\März.pdf")
    msg.add_attachment(b"a,b\n", maintype="text", subtype="csv")
    body = translate(msg)
    files = body["attachments"]
    assert [f["content"] for f in files] == [PNG, PDF, b"a,b\n"]
    assert files[0] == {
        "filename": "inline-1.png",
        "content": PNG,
        "content_type": "image/png",
        "disposition": "inline",
        "content_id": "logo@example",
    }
    assert (files[1]["filename"], files[1]["disposition"]) == ("März.pdf", "attachment")
    assert "content_id" not in files[1]
    assert files[2]["filename"] == "attachment-3.csv"
    assert body["text"] == "Hello Ann,\nwelcome.\n" and "cid:logo@example" in body["html"]


def test_an_image_with_a_content_id_outside_related_is_inline_and_a_forward_is_a_file() -> None:
    """A Content-ID part without Content-Disposition: attachment is inline wherever it is, one
    with it outside multipart/related a plain file; a forward (message/rfc822) an .eml file."""
    msg = MIMEMultipart("mixed")
    msg["From"], msg["To"] = "app@example.com", "ann@example.com"
    msg.attach(MIMEText("see the logo", "plain"))
    image = MIMEImage(PNG, "png")
    image.add_header("Content-ID", "<logo>")
    msg.attach(image)
    msg.attach(MIMEMessage(message()))
    badge = MIMEImage(PNG, "png")
    badge.add_header("Content-ID", "<badge>")
    badge.add_header("Content-Disposition", "attachment", filename="badge.png")
    msg.attach(badge)
    files = translate(msg.as_bytes())["attachments"]
    assert [(f["disposition"], f.get("content_id")) for f in files] == [
        ("inline", "logo"),
        ("attachment", None),
        ("attachment", None),
    ]
    assert files[1]["filename"].endswith(".eml")
    assert files[1]["content_type"] == "application/octet-stream"
    assert b"Hello Ann" in files[1]["content"]


def test_x_headers_are_carried_and_transport_headers_dropped() -> None:
    """X- headers Mailman can carry go on (the first of a name); reserved, non-ASCII and
    transport headers (Received, Message-ID, Date, MIME-Version...) are dropped."""
    msg = message(
        X_Campaign="spring",
        X_Mailman_Tags="a, b",
        X_SMTPAPI="{}",
        X_Accent="café",
        Received="from app by mailman",
        Message_ID="<1@example.com>",
        Date="Mon, 1 Jan 2024 00:00:00 +0000",
    )
    msg["x-campaign"] = "second"
    assert translate(msg)["headers"] == {"X-Campaign": "spring"}


def test_at_most_max_headers_are_carried() -> None:
    """Beyond MAX_HEADERS X- headers the rest are dropped, not refused."""
    msg = message(**{f"X_H{i}": str(i) for i in range(MAX_HEADERS + 5)})
    headers = translate(msg)["headers"]
    assert list(headers) == [f"X-H{i}" for i in range(MAX_HEADERS)]


def test_a_mail_with_only_a_file_has_no_body_and_validation_says_so() -> None:
    """A single non-text part is a file; the mail then lacks a body, which validation names."""
    msg = EmailMessage()
    msg["From"], msg["To"] = "app@example.com", "ann@example.com"
    msg.set_content(PDF, maintype="application", subtype="pdf", filename="r.pdf")
    body = translate(msg)
    assert "text" not in body and body["attachments"][0]["filename"] == "r.pdf"
    with pytest.raises(ValidationFailed) as caught:
        parse_mail(body, mail_id="01JZ0000000000000000000000", default_subject="-", now=0.0)
    assert [e.field for e in caught.value.errors] == ["content"]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (b"Message-ID: <a.1@shop.example.com>\r\n", "<a.1@shop.example.com>"),
        (b"Message-Id:  <a.1@shop.example.com> \r\n", "<a.1@shop.example.com>"),
        (b"", None),
        (b"Message-ID: <a@b>\r\nMessage-ID: <c@d>\r\n", None),
        (b"Message-ID: no-brackets@example.com\r\n", None),
        (b"Message-ID: <has space@example.com>\r\n", None),
        (b"Message-ID: <" + b"x" * 240 + b"@example.com>\r\n", None),
    ],
)
def test_message_id_is_read_when_it_is_one_plain_id(headers: bytes, expected: str | None) -> None:
    """One plain <left@right> Message-ID is the dedupe key; none, two or odd ones are not."""
    raw = b"From: a@example.com\r\n" + headers + b"Subject: x\r\n\r\nbody\r\n"
    assert message_id(raw) == expected


def test_sendgrid_smtpapi_header_gives_tags_metadata_and_send_at() -> None:
    """X-SMTPAPI's category, unique_args and send_at become tags, metadata and send_at."""
    smtpapi = '{"category": ["welcome", "onboarding"], "unique_args": {"user": "42", "n": 7},'
    smtpapi += ' "send_at": 1750003600}'
    body = translate(message(X_SMTPAPI=smtpapi))
    assert body["tags"] == ["welcome", "onboarding"]
    assert body["metadata"] == {"user": "42", "n": "7"}
    assert body["send_at"] == datetime(2025, 6, 15, 16, 6, 40, tzinfo=UTC)
    assert "headers" not in body


def test_x_mailman_unsubscribe_off_opts_out_and_is_not_carried() -> None:
    """X-Mailman-Unsubscribe: off (any case) is ``"unsubscribe": false``, not a header."""
    body = translate(message(X_Mailman_Unsubscribe=" OFF"))
    assert body["unsubscribe"] is False
    assert "headers" not in body
    assert "unsubscribe" not in translate(message())


def test_mailgun_smtp_headers_give_tags_variables_and_delivery_time() -> None:
    """X-Mailgun-Tag (repeated), X-Mailgun-Variables and X-Mailgun-Deliver-By are honoured."""
    msg = message(X_Mailgun_Variables='{"order": "4711"}')
    msg["X-Mailgun-Tag"] = "receipts"
    msg["X-Mailgun-Tag"] = "eu"
    msg["X-Mailgun-Deliver-By"] = "Sun, 15 Jun 2025 16:00:00 +0000"
    body = translate(msg)
    assert body["tags"] == ["receipts", "eu"]
    assert body["metadata"] == {"order": "4711"}
    assert body["send_at"] == datetime(2025, 6, 15, 16, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"X_SMTPAPI": "not json"}, "headers.X-SMTPAPI"),
        ({"X_SMTPAPI": '["a"]'}, "headers.X-SMTPAPI"),
        ({"X_SMTPAPI": '{"to": ["a@example.com", "b@example.com"]}'}, "headers.X-SMTPAPI"),
        ({"X_SMTPAPI": '{"category": 5}'}, "headers.X-SMTPAPI"),
        ({"X_SMTPAPI": '{"send_at": "tomorrow"}'}, "headers.X-SMTPAPI"),
        ({"X_Mailgun_Variables": "{broken"}, "headers.X-Mailgun-Variables"),
        ({"X_Mailgun_Deliver_By": "someday"}, "headers.X-Mailgun-Deliver-By"),
        ({"X_Mailman_Unsubscribe": "newsletter"}, "headers.X-Mailman-Unsubscribe"),
    ],
)
def test_provider_headers_mailman_cannot_honour_are_refused_naming_them(
    headers: dict[str, str], field: str
) -> None:
    """A provider header that is not what it should be, or asks for batch sending, is refused."""
    assert field in refused(message(**headers))


_HEADER_NAMES = st.sampled_from(
    [
        b"From",
        b"To",
        b"Cc",
        b"Subject",
        b"Reply-To",
        b"Content-Type",
        b"Content-Transfer-Encoding",
        b"Content-Disposition",
        b"Content-ID",
        b"Message-ID",
        b"X-SMTPAPI",
        b"X-Mailgun-Variables",
        b"X-Mailgun-Tag",
        b"X-Mailgun-Deliver-By",
        b"X-Custom",
    ]
)
_HEADER_VALUES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"<",
            b"<@",
            b"Ann <ann@example.com>",
            b"multipart/mixed; boundary=XX",
            b"text/plain; charset=bogus",
            b"base64",
            b"inline; filename*=utf-8''%E2%82%AC.png",
            b'{"send_at": 99999999999999}',
            b'{"category": [1, 2], "unique_args": {"a": [1]}}',
            b"=?utf-8?b?w6k=?=",
        ]
    ),
)
_PARTS = (
    b"--XX\r\nContent-Type: text/plain\r\n\r\nhi\r\n--XX\r\nContent-Type: image/png\r\n"
    b"Content-Transfer-Encoding: base64\r\nContent-ID: <x>\r\n\r\n!!!\r\n--XX--\r\n"
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=8),
    payload=st.one_of(st.binary(max_size=120), st.just(_PARTS)),
    recipients=st.lists(st.sampled_from(["ann@example.com", "x@y", "<>"]), max_size=3),
)
def test_any_bytes_are_a_body_or_a_refusal_naming_fields(
    headers: list[tuple[bytes, bytes]], payload: bytes, recipients: list[str]
) -> None:
    """Whatever a client sends, the translation (and then validation) gives a body or a
    ValidationFailed, never another exception, which SMTP would answer as a transient 451
    for a client to retry forever."""
    raw = b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + payload
    message_id(raw)
    try:
        body = submission_values(raw, mail_from="bounce@example.com", recipients=recipients)
        parse_mail(body, mail_id="01J", default_subject="(none)", now=1.7e9)
    except ValidationFailed as exc:
        assert exc.errors

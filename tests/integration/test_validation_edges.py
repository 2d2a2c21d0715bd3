"""Named edge cases of a submitted mail: refused with a field error, or accepted and buildable.

The general rule is the property test's (``test_validation_props.py``); each
case here is one the rule was written for, so that a regression names it.
"""

from __future__ import annotations

import email
import email.policy
from typing import Any

import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.core.model import Address, Mail
from mailman.core.validation import (
    MAX_NAME,
    MAX_SUBJECT,
    ValidationFailed,
    header_problem,
    parse_address,
)
from mailman.providers import display_name_words, formatted_address, mailgun, outbox
from mailman.store import Store
from tests.support.api import Client, CountingOutbound, client_factory, problem
from tests.unit.test_validation_props import (
    assert_buildable_by_every_client,
    parse,
    parse_addresses,
    same_addresses,
)

VALID: dict[str, Any] = {
    "from": "Sender <sender@example.com>",
    "to": ["ann@example.com"],
    "subject": "Hello",
    "content": "Hi Ann",
}


def refused(body: dict[str, Any]) -> dict[str, str]:
    """The field errors ``parse_mail`` gives ``body``, as {field: message}."""
    with pytest.raises(ValidationFailed) as caught:
        parse(body)
    return {e.field: e.message for e in caught.value.errors}


REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("U+2028 in subject", {"subject": "Hi\u2028there"}, "subject", "U+2028"),
    ("U+2029 in subject", {"subject": "Hi\u2029there"}, "subject", "U+2029"),
    ("U+0085 in subject", {"subject": "Hi\x85there"}, "subject", "U+0085"),
    ("NUL in subject", {"subject": "Hi\x00"}, "subject", "NUL"),
    ("TAB in subject", {"subject": "Hi\tthere"}, "subject", "TAB"),
    ("DEL in subject", {"subject": "Hi\x7f"}, "subject", "U+007F"),
    ("C1 CSI in subject", {"subject": "Hi\x9b"}, "subject", "U+009B"),
    ("form feed in subject", {"subject": "Hi\x0c"}, "subject", "U+000C"),
    ("lone surrogate in subject", {"subject": "Hi\ud800"}, "subject", "surrogate"),
    ("encoded-word subject", {"subject": "=?utf-8?q?Hi?="}, "subject", "encoded-word"),
    ("subject too long", {"subject": "x" * (MAX_SUBJECT + 1)}, "subject", "at most"),
    ("NUL in a name", {"to": ["Ann\x00 <ann@example.com>"]}, "to[0]", "NUL"),
    ("NUL in a quoted name", {"to": ['"Ann\x00" <ann@example.com>']}, "to[0]", "NUL"),
    ("U+2028 in the from name", {"from": "Se\u2028nder <s@example.com>"}, "from", "U+2028"),
    ("U+0085 in a cc name", {"cc": ["ok@example.com", "C\x85y <c@example.com>"]}, "cc[1]", "0085"),
    ("ESC in reply_to", {"reply_to": "\x1b[31mHelp <help@example.com>"}, "reply_to", "U+001B"),
    ("NUL in an address", {"to": ["ann\x00@example.com"]}, "to[0]", "NUL"),
    ("non-ASCII local part", {"to": ["jürgen@example.com"]}, "to[0]", "SMTPUTF8"),
    ("non-ASCII local part in from", {"from": "Jürgen <jürgen@example.com>"}, "from", "ASCII"),
    ("encoded-word address", {"to": ["=?utf-8?q?x?=@example.com"]}, "to[0]", "encoded-word"),
    (
        "encoded-word address with a name",
        {"bcc": ["X <=?utf-8?b?eA==?=@example.com>"]},
        "bcc[0]",
        "encoded-word",
    ),
    ("encoded-word name", {"to": ["=?utf-8?q?Boss?= <ann@example.com>"]}, "to[0]", "encoded-word"),
    ("local part of 65", {"to": ["a" * 65 + "@example.com"]}, "to[0]", "64"),
    (
        "address over 254",
        {"to": ["a" * 64 + "@" + ("b" * 60 + ".") * 3 + "example.com"]},
        "to[0]",
        "too long",
    ),
    ("name too long", {"reply_to": f"{'x' * (MAX_NAME + 1)} <h@example.com>"}, "reply_to", "256"),
    ("lone surrogate in the body", {"content": "Hi\udfff"}, "content", "surrogate"),
    ("lone surrogate in html", {"html": "<p>\ud800</p>"}, "html", "surrogate"),
]


@pytest.mark.parametrize(
    ("changes", "field", "says"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_header_breaking_input_is_refused(changes: dict[str, Any], field: str, says: str) -> None:
    """Each named edge case is refused with one error naming its field and the reason."""
    errors = refused({**VALID, **changes})
    assert list(errors) == [field]
    assert says in errors[field]


def test_crlf_keeps_its_message() -> None:
    """CR and LF are still reported as such (header injection), before other controls."""
    assert refused({**VALID, "subject": "a\x00\r\nBcc: x@example.com"}) == {
        "subject": "must not contain CR or LF"
    }


def test_header_problem_accepts_ordinary_text() -> None:
    """Quotes, separators, non-ASCII, emoji and a lone '=?' are fine in a header."""
    for text in ['Doe, "Ann"; (PhD) <x>', "Grüße 日本 😀", "2+2=? 4", "=?utf-8?", "a\xa0b"]:
        assert header_problem(text) is None, text


def test_a_local_part_of_64_is_accepted() -> None:
    """A local part of exactly 64 characters is accepted, and buildable by every client."""
    mail = parse({**VALID, "to": ["a" * 64 + "@example.com"]})
    assert mail.to == (Address("a" * 64 + "@example.com"),)
    assert_buildable_by_every_client(mail)


def test_non_ascii_name_and_subject_are_accepted_and_buildable() -> None:
    """A non-ASCII display name and subject are kept as given and every client builds them."""
    mail = parse(
        {
            **VALID,
            "from": "Jürgen Groß <j@example.com>",
            "to": ["山田 太郎 <taro@example.jp>", '"Doe, Zoë" <zoe@example.com>'],
            "subject": "Grüße aus München — 日本語の件名 😀",
        }
    )
    assert mail.sender == Address("j@example.com", "Jürgen Groß")
    assert mail.to[0] == Address("taro@example.jp", "山田 太郎")
    assert mail.subject == "Grüße aus München — 日本語の件名 😀"
    assert_buildable_by_every_client(mail)


def test_international_domain_is_kept_as_idna() -> None:
    """An international domain name is accepted and kept in its ASCII (xn--) form."""
    assert parse_address("Ann <ann@Bücher.de>") == Address("ann@xn--bcher-kva.de", "Ann")
    mail = parse({**VALID, "to": ["ann@bücher.de"], "cc": ["bob@xn--bcher-kva.de"]})
    assert mail.to == (Address("ann@xn--bcher-kva.de"),)
    assert mail.cc == (Address("bob@xn--bcher-kva.de"),)
    assert_buildable_by_every_client(mail)


def test_bodies_may_hold_controls_and_separators() -> None:
    """Bodies are not headers: NUL, U+2028, U+0085 and TAB are accepted and buildable."""
    text = "a\x00b\u2028c\x85d\te\x0cf\rg"
    mail = parse({**VALID, "content": text, "html": "<p>\x00\u2029</p>"})
    assert mail.text == text
    assert_buildable_by_every_client(mail)
    assert b"\0" not in outbox.render(mail)


def test_a_long_quoted_name_survives_the_eml() -> None:
    """A quoted display name too long for one line keeps its quotes in the .eml (gh-80222)."""
    name = "Doe, Ann " * 12 + '"the boss"'
    mail = parse({**VALID, "to": [f'"{name.replace(chr(34), chr(92) + chr(34))}" <a@example.com>']})
    assert mail.to == (Address("a@example.com", name),)
    msg = email.message_from_bytes(outbox.render(mail), policy=email.policy.default)
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [(name, "a@example.com")]
    assert_buildable_by_every_client(mail)


def test_a_long_non_ascii_subject_keeps_its_spaces() -> None:
    """A long non-ASCII subject reads back from the .eml exactly, spaces kept (gh-144156)."""
    subject = ("日本 " * 40).strip()
    mail = parse({**VALID, "subject": subject})
    data = outbox.render(mail)
    assert email.message_from_bytes(data, policy=email.policy.default)["Subject"] == subject
    assert all(len(line) <= 78 for line in data.split(b"\r\n")[:20])


def test_mailgun_encoded_words_are_at_most_75_characters() -> None:
    """A long non-ASCII name reaches Mailgun as encoded-words of at most 75 characters."""
    address = Address("a@example.com", "Zoë " * 60)
    value = formatted_address(address)
    words = display_name_words(address.name)
    assert len(words) > 1 and all(len(w) <= 75 for w in words)
    assert same_addresses(parse_addresses("to", value), (address,))
    assert ("to", value) in mailgun.form(
        Mail(id="m1", sender=Address("s@example.com"), to=(address,), subject="s", text="t")
    )


def test_formatted_address_matches_formataddr_for_short_names() -> None:
    """For ASCII and short non-ASCII names, addresses are written as email.utils.formataddr does."""
    for name in ["", "Ann", "Doe, Ann", 'A "B" \\ C', "Grüße"]:
        address = Address("a@example.com", name)
        assert formatted_address(address) == address.formatted()


# --- over HTTP -------------------------------------------------------------------


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound) -> Client:
    return await client_factory(aiohttp_client, store, outbound, Config())()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"subject": "Hi\u2028there"}, "subject"),
        ({"subject": "Hi\x85there"}, "subject"),
        ({"to": ["ok@example.com", "Ann\x00 <ann@example.com>"]}, "to[1]"),
        ({"from": "jürgen@example.com"}, "from"),
        ({"reply_to": "=?utf-8?q?x?=@example.com"}, "reply_to"),
        ({"cc": ["a" * 65 + "@example.com"]}, "cc[0]"),
    ],
    ids=["U+2028", "U+0085", "NUL in a name", "non-ASCII local", "encoded-word", "65 local"],
)
async def test_send_refuses_with_422_naming_the_field(
    client: Client,
    store: Store,
    outbound: CountingOutbound,
    changes: dict[str, Any],
    field: str,
) -> None:
    """POST /mail/send answers 422 naming the field, instead of 201 and a mail that fails."""
    resp = await client.post(
        "/mail/send",
        data=orjson.dumps({**VALID, **changes}),
        headers={"Content-Type": "application/json"},
    )
    body = await problem(resp, 422)
    assert [e["field"] for e in body["errors"]] == [field]
    assert await store.unfinished() == []
    assert outbound.dispatched == []

"""One-click unsubscribe's pure parts: the signed token, a group's name, the
``MAILMAN_PUBLIC_URL`` and ``MAILMAN_UNSUBSCRIBE_SECRET`` settings."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mailman.config import ConfigError, load
from mailman.core.model import Address, Mail, Unsubscribe
from mailman.core.unsubscribe import Ticket, group_problem, link, sign, verify

SECRET = "s3cret"
TICKET = Ticket("acme", "ann@example.com", "newsletter", "01JMAIL")


def test_a_token_says_what_it_was_signed_for_and_only_with_its_secret() -> None:
    """A token verifies to its ticket with its secret; with another secret, altered in
    its payload or signature, or cut short it verifies to nothing."""
    token = sign(SECRET, TICKET)
    assert verify(SECRET, token) == TICKET
    assert verify("other", token) is None
    payload, _, signature = token.partition(".")
    forged = sign(SECRET, Ticket("acme", "bob@example.com", "newsletter", "01JMAIL"))
    assert verify(SECRET, f"{forged.partition('.')[0]}.{signature}") is None
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    assert verify(SECRET, f"{payload}.{flipped}") is None
    assert verify(SECRET, f"{payload}.{signature[:-4]}") is None
    assert verify(SECRET, payload) is None
    assert verify(SECRET, "") is None
    assert verify(SECRET, "a.b.c") is None
    assert link("https://mail.example.com/", token) == (
        f"https://mail.example.com/unsubscribe/{token}"
    )


def test_a_group_is_a_short_name() -> None:
    """Letters, digits, '.', '_', '-', 1 to 64, starting with a letter or digit."""
    assert group_problem("newsletter") is None
    assert group_problem("42") is None
    for bad in ("", "-x", "a b", "x" * 65, 7, None):
        assert group_problem(bad) is not None, bad


def test_a_mail_with_a_link_sends_both_headers_after_its_own() -> None:
    """The headers every provider sends: the caller's, then List-Unsubscribe (link, then
    the mailto) and List-Unsubscribe-Post; a mail of no group sends its own only."""
    plain = Mail(
        "m",
        Address("a@example.com"),
        (Address("b@example.com"),),
        "s",
        "t",
        headers=(("X-A", "1"),),
    )
    assert plain.sent_headers == (("X-A", "1"),)
    assert plain.group == ""
    wanted = Unsubscribe("news", "https://m.example.com/unsubscribe/t", "u@example.com")
    grouped = replace(plain, unsubscribe=wanted)
    assert grouped.group == "news"
    assert grouped.sent_headers == (
        ("X-A", "1"),
        (
            "List-Unsubscribe",
            "<https://m.example.com/unsubscribe/t>, <mailto:u@example.com?subject=unsubscribe>",
        ),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )
    odd = replace(wanted, mailto="a%b/c?d#e@exämple.com")
    links = dict(replace(plain, unsubscribe=odd).sent_headers)["List-Unsubscribe"]
    assert links.endswith(", <mailto:a%25b%2Fc%3Fd%23e@ex%C3%A4mple.com?subject=unsubscribe>")


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("https://mail.example.com/", "https://mail.example.com"),
        ("https://mail.example.com/mailman", "https://mail.example.com/mailman"),
        ("http://127.0.0.1:9292", "http://127.0.0.1:9292"),
        ("http://localhost", "http://localhost"),
    ],
)
def test_the_public_url_is_https_or_loopback_http(value: str, kept: str) -> None:
    """MAILMAN_PUBLIC_URL is kept without its trailing slash."""
    config = load([], {"MAILMAN_PUBLIC_URL": value, "MAILMAN_UNSUBSCRIBE_SECRET": "x"})
    assert config.public_url == kept
    assert config.unsubscribing


@pytest.mark.parametrize(
    "value",
    [
        "http://mail.example.com",
        "mail.example.com",
        "ftp://mail.example.com",
        "https://user:pw@mail.example.com",
        "https://mail.example.com/?a=1",
        "https://mail.example.com/" + "x" * 200,
    ],
)
def test_a_public_url_that_is_not_https_stops_the_start(value: str) -> None:
    """Plain http off loopback, no scheme, a user, a query, over 200 characters (a link
    must fit one header line): refused, naming the setting."""
    with pytest.raises(ConfigError, match="MAILMAN_PUBLIC_URL"):
        load([], {"MAILMAN_PUBLIC_URL": value})


def test_unsubscribing_needs_both_settings() -> None:
    """Off by default; a public URL alone or a secret alone is not enough."""
    assert not load([], {}).unsubscribing
    assert not load([], {"MAILMAN_PUBLIC_URL": "https://m.example.com"}).unsubscribing
    assert not load([], {"MAILMAN_UNSUBSCRIBE_SECRET": "x"}).unsubscribing

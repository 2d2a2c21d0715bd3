"""A plain mail is decided at once, and exactly as the full check decides it.

``parse_mail`` first tries ``_plain_mail``: a submission of addresses, a subject, bodies,
tags and metadata only, each valid as it stands, becomes its ``Mail`` without ``Submission.check``'s
machinery; anything else (another field, any value the check would refuse or word an
error about, an address the fast path does not decide) goes to the full check. Wherever
the plain path returns a mail, the full path must return the same one; ``parse_mail``
must give the full path's verdict, errors included. The plain path must also decide the
common shapes, or it is dead code.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mailman.core.model import Mail
from mailman.core.submission import Context, Submission, _mail, _plain_mail, parse_mail
from mailman.core.validation import (
    MAX_RECIPIENTS,
    MAX_SUBJECT,
    ValidationFailed,
    fits_header,
    header_problem,
)

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MAIL_ID = "01M98D47G7YGK7PRY72NV9GHJ0"
NOW = 1_700_000_000.0
DEFAULT_SUBJECT = "(no subject)"

plain_address = st.builds(
    "{}@{}.{}".format,
    st.text(alphabet=string.ascii_lowercase + "._+-", min_size=1, max_size=8),
    st.text(alphabet=string.ascii_lowercase + "-", min_size=1, max_size=8),
    st.sampled_from(["com", "org", "de", "test", "x1", "localhost"]),
)
named_address = st.builds(
    "{} <{}>".format, st.text(alphabet=string.ascii_letters + " .'", max_size=12), plain_address
)
#: Addresses: mostly valid, sometimes odd (quoted, IDNA, comments, injected lines...).
address = st.one_of(
    plain_address,
    plain_address,
    named_address,
    st.sampled_from(
        [
            '"ann"@example.com',
            "a@xn--bcher-kva.de",
            "ann@b\u00fccher.de",
            "Ann (x) <ann@example.com>",
            "ann@example.com\r\nBcc: x@y.z",
            "=?utf-8?q?Ann?= <ann@example.com>",
            "Ann <ann@example.com>, Bob <bob@example.com>",
            "",
            " ann@example.com",
            "ann@@example.com",
        ]
    ),
)
#: What no header may hold, and what a body may not: a lone surrogate.
oddities = st.sampled_from(
    ["", "\r", "\n", "\t", "\x00", "\x85", "\u2028", "\u202e", "\ud800", "=?a?q?b?="]
)
text = st.builds(
    lambda base, odd, at: base[:at] + odd + base[at:],
    st.text(max_size=30),
    oddities,
    st.integers(min_value=0, max_value=30),
)
wrong_type: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.integers(), st.booleans(), st.just({}), st.just([])
)
recipients = st.one_of(
    address,
    st.lists(address, max_size=4),
    st.lists(st.one_of(address, wrong_type), max_size=3),
    wrong_type,
)
subject = st.one_of(text, st.just("x" * (MAX_SUBJECT + 1)), st.just("  "), wrong_type)
body_text = st.one_of(text, st.just(""), st.just("Hello"), wrong_type)
#: Plain submissions: any of the plain fields, each with a valid or odd value; sometimes
#: another field besides.
submissions = st.fixed_dictionaries(
    {},
    optional={
        "to": recipients,
        "cc": recipients,
        "bcc": recipients,
        "from": st.one_of(address, wrong_type),
        "reply_to": st.one_of(address, wrong_type),
        "subject": subject,
        "content": body_text,
        "text": body_text,
        "html": body_text,
        "tags": st.one_of(
            st.lists(st.sampled_from(["a", "b", " c", "=?x?q?y?=", "", "x" * 200]), max_size=3),
            wrong_type,
        ),
        "metadata": st.one_of(
            st.dictionaries(
                st.sampled_from(["k", "order_id", "mail_id", "bad key", "Email", "x" * 70]),
                st.one_of(st.text(max_size=8), st.just("v" * 2000), wrong_type),
                max_size=3,
            ),
            wrong_type,
        ),
        "headers": st.just({"X-A": "b"}),
        "unsubscribe": st.just(False),
    },
)
word = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8)
valid_address = st.builds(
    "{}.{}@{}.{}".format, word, word, word, st.sampled_from(["com", "org", "de"])
)
#: Valid plain mails of the common shapes: the plain path must decide these itself.
common = st.fixed_dictionaries(
    {
        "to": st.one_of(valid_address, st.lists(valid_address, min_size=1, max_size=3)),
        "from": st.one_of(
            valid_address,
            st.builds(
                "{} <{}>".format, st.text(alphabet=string.ascii_letters, max_size=9), valid_address
            ),
        ),
        "content": st.text(alphabet=string.printable, min_size=1, max_size=40),
    },
    optional={
        "subject": st.text(alphabet=string.ascii_letters + " !?,.", max_size=40),
        "html": st.just("<p>Hi</p>"),
        "cc": st.lists(valid_address, max_size=2),
        "tags": st.lists(st.sampled_from(["welcome", "order", "a.b-c_d"]), max_size=3, unique=True),
        "metadata": st.dictionaries(
            st.sampled_from(["order_id", "k", "user.id"]), st.text(max_size=20), max_size=3
        ),
    },
)


def full(body: dict[str, Any]) -> Mail | list[tuple[str, str]]:
    """The full path's verdict: the mail, or every error (field, message)."""
    given = Context(MAIL_ID, NOW)
    try:
        return _mail(
            Submission.check(body, given),
            given,
            default_subject=DEFAULT_SUBJECT,
            tenant="acme",
            request_id="r1",
        )
    except ValidationFailed as exc:
        return [(e.field, e.message) for e in exc.errors]


def parsed(body: dict[str, Any]) -> Mail | list[tuple[str, str]]:
    """``parse_mail``'s verdict, in the same shape."""
    try:
        return parse_mail(
            body,
            mail_id=MAIL_ID,
            default_subject=DEFAULT_SUBJECT,
            now=NOW,
            tenant="acme",
            request_id="r1",
        )
    except ValidationFailed as exc:
        return [(e.field, e.message) for e in exc.errors]


def plain(body: dict[str, Any]) -> Mail | None:
    return _plain_mail(body, Context(MAIL_ID, NOW), DEFAULT_SUBJECT, "acme", "r1")


@SETTINGS
@given(submissions)
def test_a_plain_mail_is_the_full_checks_mail(body: dict[str, Any]) -> None:
    """Where the plain path decides a submission, the full check gives the same mail."""
    fast = plain(body)
    event("decided" if fast is not None else "deferred")
    if fast is not None:
        assert full(body) == fast
    assert parsed(body) == full(body)


@SETTINGS
@given(common)
def test_the_common_shapes_are_decided_at_once(body: dict[str, Any]) -> None:
    """A valid mail of addresses, a subject and bodies is decided by the plain path."""
    fast = plain(body)
    assert fast is not None
    assert fast == full(body)


@SETTINGS
@given(
    common,
    st.sampled_from(["to", "cc", "bcc", "from", "reply_to", "subject", "content", "text", "html"]),
    st.one_of(text, address, recipients, subject, wrong_type),
)
def test_a_valid_mail_with_one_odd_field(body: dict[str, Any], field: str, value: Any) -> None:
    """A valid mail with one field's value replaced by an odd one: the plain path gives the
    full check's mail, or leaves it to the check."""
    body = {**body, field: value}
    fast = plain(body)
    event("decided" if fast is not None else "deferred")
    if fast is not None:
        assert full(body) == fast
    assert parsed(body) == full(body)


def test_what_the_plain_path_leaves_to_the_check() -> None:
    """Past the recipient limit, bodies that differ or hold a lone surrogate, no body, a
    subject no header may hold, or another field: the full check decides (and words the
    error, if any)."""
    many = [f"r{i}@example.com" for i in range(MAX_RECIPIENTS + 1)]
    base: dict[str, Any] = {"to": "ann@example.com", "from": "shop@example.com", "content": "Hi"}
    for body in (
        {**base, "to": many},
        {**base, "text": "Other"},
        {**base, "content": ""},
        {**base, "content": "Hi \ud800"},
        {**base, "html": "<p>\udfff</p>"},
        {**base, "subject": "Hi\r\nBcc: x@example.com"},
        {**base, "subject": "x" * (MAX_SUBJECT + 1)},
        {**base, "to": []},
    ):
        assert plain(body) is None
        assert isinstance(full(body), list)
    for odd in (
        {**base, "tags": ["a", "a"]},
        {**base, "metadata": {"mail_id": "x"}},
        {**base, "metadata": {f"k{i}": "v" * 999 for i in range(11)}},
    ):
        assert plain(odd) is None
        assert isinstance(full(odd), list)
    headed = {**base, "headers": {"X-A": "b"}}
    assert plain(headed) is None
    assert parsed(headed) == full(headed)


@SETTINGS
@given(st.one_of(text, st.text(), subject.filter(lambda s: isinstance(s, str))))
def test_one_search_finds_what_the_header_rules_refuse(value: str) -> None:
    """``fits_header`` says True exactly where ``header_problem`` finds nothing."""
    assert fits_header(value) == (header_problem(value) is None)

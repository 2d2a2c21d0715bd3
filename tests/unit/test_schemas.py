"""The document's schema of each kind of value (core.schemas) says what the validation takes:
a value matches the schema exactly when core.validation accepts it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailman.core import schemas, validation
from mailman.core.validation import Errors
from mailman.routes.mail import decode_cursor, encode_cursor

from ..support.schemathesis_hooks import ADDRESSES, CURSORS, MAILBOXES

#: Text as JSON carries it (no lone surrogates), with the characters the rules are about.
TEXT = st.text(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(' \t\r\n\x00\x1f\x7f\x85\xa0\u2028\u202e\u3000=?qQbB<>/\\".:_-xX'),
        # Bidirectional controls, invisible characters and the marks (allowed).
        st.sampled_from("\u202a\u202d\u2066\u2069\u200b\u200c\u200d\u2060\ufeff\u200e\u200f"),
    ),
    max_size=40,
)


def _no_errors(check: Callable[[Errors], object]) -> bool:
    errors = Errors()
    check(errors)
    return not errors


def _attachment(**fields: Any) -> bool:
    file = {"filename": "a.txt", "content": "QQ==", **fields}
    return _no_errors(lambda errors: validation.attachments([file], errors))


#: Each schema, and what the validation says of one value.
RULES: dict[str, tuple[dict[str, Any], Callable[[str], bool]]] = {
    "header name": (schemas.HEADER_NAME, lambda v: validation.header_name_problem(v) is None),
    "header value": (schemas.HEADER_VALUE, lambda v: validation.header_value_problem(v) is None),
    "subject": (
        schemas.SUBJECT,
        lambda v: validation.header_problem(v) is None and len(v) <= validation.MAX_SUBJECT,
    ),
    "tag": (schemas.TAG, lambda v: _no_errors(lambda errors: validation.tags([v], errors))),
    "metadata key": (
        schemas.METADATA_KEY,
        lambda v: _no_errors(lambda errors: validation.metadata({v: "x"}, "0" * 26, errors)),
    ),
    "filename": (schemas.FILENAME, lambda v: validation.filename_problem(v) is None),
    "base64": (schemas.BASE64, lambda v: _attachment(content=v)),
    "content type": (schemas.CONTENT_TYPE, lambda v: _attachment(content_type=v)),
    "disposition": (
        schemas.DISPOSITION,
        lambda v: _attachment(disposition=v, content_id="cid" if v.lower() == "inline" else None),
    ),
    "content id": (schemas.CONTENT_ID, lambda v: _attachment(disposition="inline", content_id=v)),
}


def _candidates(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Text of any kind, and text the schema's pattern matches (the edge of the rule)."""
    matching = st.from_regex(schema["pattern"], fullmatch=True) if "pattern" in schema else TEXT
    return st.one_of(TEXT, matching, st.from_regex("(?:" + "|".join(_WORDS) + ").{0,3}"))


#: Words the rules single out (reserved names and types, encoded-words, dots).
_WORDS = [
    *validation.RESERVED_HEADER_PREFIXES,
    *validation.UNSENDABLE_TYPES,
    *sorted(validation.SENDGRID_EVENT_KEYS)[:5],
    "mail_id",
    "=?utf-8?q?a?=",
    "..",
    "<a>",
]


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_value_matches_the_schema_exactly_when_the_validation_takes_it(name: str) -> None:
    """For every kind of value, the document's schema and core.validation agree."""
    schema, takes = RULES[name]
    validator = jsonschema_rs.Draft202012Validator(schema)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_candidates(schema))
    def agree(value: str) -> None:
        assert validator.is_valid(value) == takes(value), value

    agree()


@settings(max_examples=300, deadline=None)
@given(MAILBOXES, ADDRESSES)
@pytest.mark.slow
def test_the_fuzzing_strategies_make_valid_values(mailbox: str, address: str) -> None:
    """What the schemathesis hooks generate for mailbox and address the validation takes."""
    validation.parse_address(mailbox)
    assert validation.parse_address(address).email.lower() == address.lower()


@settings(max_examples=100, deadline=None)
@given(CURSORS)
def test_the_fuzzed_cursors_are_cursors(cursor: str) -> None:
    """What the schemathesis hooks generate for GET /mail's cursor decodes to a creation
    time and a mail id."""
    decoded = decode_cursor(cursor)
    assert decoded is not None and encode_cursor(*decoded) == cursor


@pytest.mark.parametrize(
    "value", ["00000000=", "0000000=", "000000==", "AAAA", "AA", "A===", "AAAA="]
)
def test_base64_padding_is_judged_alike(value: str) -> None:
    """Padding after a whole group of four is refused by the schema and the validation alike."""
    schema, takes = RULES["base64"]
    assert jsonschema_rs.Draft202012Validator(schema).is_valid(value) == takes(value), value

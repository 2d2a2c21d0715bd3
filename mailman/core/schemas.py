"""What each rule of ``core.validation`` accepts, as JSON Schema: the document's word for it.

The fields of ``core.submission.Submission`` and of the SendGrid- and Mailgun-compatible
bodies (``routes.models``) describe their values with these, so the OpenAPI document says
what the validation takes, and schemathesis holds the two together. Patterns are written
for ECMA-262 (the dialect of JSON Schema), which Python's ``re`` reads the same way.

Where a rule depends on more than the one value (recipients in ``to``, ``cc`` and ``bcc``
together, a name and its value on one header line, headers, tags and metadata together,
an inline file's content id unique in the mail, ``send_at`` relative to now) the schema
says it in the description only: JSON Schema cannot.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import validation
from .model import Disposition

#: Characters that mean something in a pattern outside a class (``-`` and ``_`` do not,
#: and ECMA-262's unicode mode refuses them escaped).
_SPECIAL = frozenset(".^$*+?()[]{}|\\/")

#: The formats the document uses that are not JSON Schema's own.
MAILBOX_FORMAT = "mailbox"
ADDRESS_FORMAT = "address"


def caseless(word: str) -> str:
    """A pattern matching ASCII ``word`` in any case (ECMA-262 has no inline flags)."""
    return "".join(
        f"[{c.upper()}{c.lower()}]" if c.isalpha() else f"\\{c}" if c in _SPECIAL else c
        for c in word
    )


def _none_of(words: Iterable[str]) -> str:
    """A lookahead refusing any of ``words`` (in any case) as the whole value."""
    return "(?!(?:" + "|".join(caseless(w) for w in words) + ")$)"


#: What a mail reader would decode as an RFC 2047 encoded-word (``validation._ENCODED_WORD``).
_ENCODED_WORD = r"=\?[^?]*\?[QqBb]\?[^?]*\?="
#: No encoded-word anywhere in the value.
_NO_ENCODED_WORD = rf"(?![\s\S]*{_ENCODED_WORD})"
#: Characters that cannot stand in a header (``validation._NOT_IN_HEADER``; a lone
#: surrogate cannot travel in UTF-8 JSON at all).
_HEADER_CONTROLS = r"\u0000-\u001f\u007f-\u009f\u2028\u2029"
#: Bidirectional controls and invisible characters (``validation._DECEPTIVE``).
_DECEPTIVE = r"\u202a-\u202e\u2066-\u2069\u200b-\u200d\u2060\ufeff"
#: Whitespace as Python's ``str.strip`` sees it, beyond the controls above.
_SPACES = "".join(
    f"\\u{ord(c):04x}" for c in map(chr, range(0x3001)) if c.isspace() and ord(c) >= 0x20
)
_BIDI = r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"


def string(**keywords: Any) -> dict[str, Any]:
    return {"type": "string", **keywords}


def nullable(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """``schema``, or null (the same as leaving the field out)."""
    out: dict[str, Any] = {"anyOf": [schema, {"type": "null"}]}
    if description is not None:
        out["description"] = description
    return out


#: Header text: a subject, a display name (``validation.header_problem``).
HEADER_TEXT: dict[str, Any] = string(
    pattern=f"^{_NO_ENCODED_WORD}[^{_HEADER_CONTROLS}{_DECEPTIVE}]*$"
)

#: One address, with an optional display name (``validation.parse_address``).
MAILBOX: dict[str, Any] = string(
    format=MAILBOX_FORMAT,
    description="One address, optionally with a display name: `ann@example.com` or "
    "`Ann <ann@example.com>`. ASCII before the @ (at most "
    f"{validation.MAX_LOCAL_PART} characters), an international domain is fine, at most "
    f"{validation.MAX_ADDRESS} characters; a name of at most {validation.MAX_NAME}, "
    "without control, bidirectional-control or invisible characters or an encoded-word "
    "(=?...?=)",
)

#: One address alone, no display name (SendGrid's ``email``).
ADDRESS: dict[str, Any] = string(
    format=ADDRESS_FORMAT,
    description="One address, no display name: `ann@example.com`. ASCII before the @; an "
    "international domain is fine",
)

#: A display name beside an address (SendGrid's ``name``).
NAME: dict[str, Any] = {**HEADER_TEXT, "description": "A display name (surrounding space dropped)"}

#: A subject (``Submission.subject``).
SUBJECT: dict[str, Any] = {**HEADER_TEXT, "maxLength": validation.MAX_SUBJECT}

#: A custom header's name (``validation.header_name_problem``): X-, token characters, not
#: a reserved prefix.
HEADER_NAME: dict[str, Any] = string(
    maxLength=validation.MAX_HEADER_NAME,
    pattern="^(?!"
    + "|".join(caseless(p) for p in validation.RESERVED_HEADER_PREFIXES)
    + ")[Xx]-[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
)

#: A custom header's value (``validation.header_value_problem``): printable ASCII, no
#: space at either end.
HEADER_VALUE: dict[str, Any] = string(
    minLength=1,
    maxLength=validation.MAX_HEADER_VALUE,
    pattern=f"^{_NO_ENCODED_WORD}[!-~](?:[ -~]*[!-~])?$",
)

HEADERS_DESCRIPTION = (
    "Custom X- headers (not X-SG-, X-SMTPAPI, X-Mailgun-, X-Mailman-), no name twice in any "
    f"case; `Name: value` at most {validation.MAX_HEADER_LINE} characters"
)

#: Custom headers (``validation.headers``).
HEADERS: dict[str, Any] = {
    "type": "object",
    "maxProperties": validation.MAX_HEADERS,
    "propertyNames": HEADER_NAME,
    "additionalProperties": HEADER_VALUE,
}

#: A tag (``validation.tags``): printable ASCII, no space at either end.
TAG: dict[str, Any] = string(
    minLength=1,
    maxLength=validation.MAX_TAG,
    pattern=f"^{_NO_ENCODED_WORD}[!-~](?:[ -~]*[!-~])?$",
)

#: Tags.
TAGS: dict[str, Any] = {
    "type": "array",
    "maxItems": validation.MAX_TAGS,
    "uniqueItems": True,
    "items": TAG,
}

#: A metadata key (``validation.metadata``): not ``mail_id``, nor a key of SendGrid's events.
METADATA_KEY: dict[str, Any] = string(
    pattern=f"^(?!{validation.RESERVED_METADATA_KEY}$)"
    + _none_of(sorted(validation.SENDGRID_EVENT_KEYS))
    + "[A-Za-z0-9_.-]{1,64}$"
)

METADATA_DESCRIPTION = (
    f"Your own string map (SendGrid custom_args, Mailgun v: variables), at most "
    f"{validation.MAX_METADATA_BYTES} bytes as JSON with Mailman's mail_id; mail_id and the "
    "keys of SendGrid's events are reserved"
)

#: Metadata.
METADATA: dict[str, Any] = {
    "type": "object",
    "maxProperties": validation.MAX_METADATA_BYTES // len('"k":"",'),
    "propertyNames": METADATA_KEY,
    "additionalProperties": string(maxLength=validation.MAX_METADATA_VALUE),
}

#: A file's name (``validation.filename_problem``): header text, no path, no ``"``, no
#: bidirectional controls, no whitespace at either end, not ``.`` or ``..``.
FILENAME: dict[str, Any] = string(
    minLength=1,
    maxLength=validation.MAX_FILENAME,
    pattern=f"^{_NO_ENCODED_WORD}(?!\\.\\.?$)(?![{_SPACES}])(?![\\s\\S]*[{_SPACES}]$)"
    f'[^{_HEADER_CONTROLS}/\\\\"{_BIDI}]+$',
    description="The file's name, no path; non-ASCII is fine",
)

#: Standard base64 (``validation.decode_base64``), padding optional, not empty.
BASE64: dict[str, Any] = string(
    minLength=2,
    pattern="^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}(?:==)?"
    "|[A-Za-z0-9+/]{3}=?)$",
    contentEncoding="base64",
    description="The file's bytes in standard base64 (padding optional, no line breaks)",
)

#: A file's MIME type (``validation._attachment_type``): no parameters, not
#: ``multipart/*`` or ``message/*``.
CONTENT_TYPE: dict[str, Any] = string(
    pattern="^(?!(?:"
    + "|".join(caseless(t) for t in validation.UNSENDABLE_TYPES)
    + "))[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$",
    description="type/subtype, no parameters, not multipart/* or message/*; default: "
    "guessed from the file name",
)

#: A disposition, in any case.
DISPOSITION: dict[str, Any] = string(
    pattern="^(?:" + "|".join(caseless(d.value) for d in Disposition) + ")$",
    description="attachment (the default) or inline, in any case",
)
_INLINE = string(pattern=f"^{caseless(Disposition.INLINE.value)}$")

_CID = f"(?!\\.+$)[A-Za-z0-9!$*+=_~.@-]{{1,{validation.MAX_CONTENT_ID}}}"
#: An inline file's content id, optionally in angle brackets.
CONTENT_ID: dict[str, Any] = string(
    pattern=f"^(?:{_CID}|<{_CID.replace('$)', '>)')}>)$",
    description="Required for an inline file, refused for an attachment: the HTML refers "
    "to it as cid:<content_id>; unique in the mail (in any case); <> around it are dropped",
)


def inline_needs_content_id(content_id: str, *, plain_may_have: bool = False) -> dict[str, Any]:
    """An inline file has its content id (the property ``content_id``); a plain attachment
    has none (or, ``plain_may_have``, one that is ignored, whatever it is)."""
    rule: dict[str, Any] = {
        "if": {"required": ["disposition"], "properties": {"disposition": _INLINE}},
        "then": {"required": [content_id], "properties": {content_id: CONTENT_ID}},
    }
    if not plain_may_have:
        rule["else"] = {"properties": {content_id: {"type": "null"}}}
    return rule

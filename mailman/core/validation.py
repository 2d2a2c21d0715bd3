"""The rules a submitted mail's values must follow, one function per kind of value.

Pure functions, no I/O. ``core.submission`` applies them to a whole mail;
each one adds what is wrong to an ``Errors`` (one message per field, named as
the API names them: ``to[1]``, ``from``, ``subject``, ``headers.X-Name``...).

A ``201`` is a promise that every provider of the chain can take the mail, so
whatever one of them would choke on is refused here, up front, rather than
accepted and then ``failed`` without a provider ever trying:

- Header text (the subject, display names, addresses) holds no character
  that cannot stand in a header: no C0 control (NUL to U+001F, TAB
  included), no DEL, no C1 control (U+0080 to U+009F, so no U+0085 NEL), no
  U+2028/U+2029, no lone surrogate. Python's ``email`` package treats several
  of them as line breaks (``str.splitlines``), the others are invisible or
  undefined in a header and would be written raw. TAB is refused too: it is
  folding whitespace, so a provider may fold at it or turn it into a space,
  and no real subject or name needs one.
- Header text holds no bidirectional control (U+202A to U+202E, U+2066 to
  U+2069) and no invisible character (U+200B to U+200D, U+2060, U+FEFF): they
  make a subject or a display name read as other text than it holds (a
  spoofed sender's name, a reversed word). U+200E and U+200F (the left-to-right
  and right-to-left marks) stay allowed: right-to-left text needs them.
- Header text holds nothing that reads as an RFC 2047 encoded-word
  (``=?utf-8?q?...?=``): a mail reader would decode it, so an address would
  become another one and a subject or name would not be what was submitted.
  Send the text itself; UTF-8 is fine.
- Addresses: one per string, syntax checked by email-validator (no DNS), an
  ASCII local part (SMTPUTF8 is not supported: not every provider or
  receiving server takes it) of at most 64 characters, at most 254
  characters in all. International domain names are accepted and kept in
  their ASCII (IDNA, ``xn--``) form, which every provider and every
  ``.eml`` reader understands. The common shape (``ann@example.com`` or
  ``Ann <ann@example.com>``, plain ASCII) is decided by ``fast_address``,
  a strict check that accepts only what the full path (``slow_address``:
  ``getaddresses`` and email-validator) accepts, with the same normalised
  result; anything else, refusals included, goes through the full path, so
  verdicts and error messages are the full path's.
- A display name has at most ``MAX_NAME`` characters, a subject at most
  ``MAX_SUBJECT``.
- Bodies (``content``/``text``/``html``) may hold any character, controls
  included, except lone surrogates, which cannot be encoded at all.
- ``headers``, ``tags`` and ``metadata`` (``_headers``, ``_tags``,
  ``_metadata``) are bounded by what SendGrid (``headers``, ``categories``,
  ``custom_args``) and Mailgun (``h:``, ``o:tag``, ``v:``) both take.
- ``attachments`` (``_attachments``): at most ``MAX_ATTACHMENTS`` files of
  strict base64, ``MAX_ATTACHMENT_BYTES`` in all (decoded; over it the mail
  is refused with 413, ``ValidationFailed.status``), names that can stand in
  a header and a form part, ``type/subtype`` types (not ``multipart/*`` or
  ``message/*``), inline files with a unique content id.
"""

from __future__ import annotations

import base64
import binascii
import functools
import mimetypes
import re
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from email.utils import getaddresses
from http import HTTPStatus

import orjson
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from email_validator.rfc_constants import ATEXT, CASE_INSENSITIVE_MAILBOX_NAMES

from .clock import parse_time
from .model import Address, Attachment, Disposition

#: The most recipients one mail may have, ``to``, ``cc`` and ``bcc`` together.
MAX_RECIPIENTS = 1000

#: The field named when the body as a whole is wrong (not a JSON object).
BODY_FIELD = "body"

#: The longest local part (before the ``@``) of an address: RFC 5321's limit.
MAX_LOCAL_PART = 64
#: The longest address, RFC 5321's limit (in the ASCII form that is sent).
MAX_ADDRESS = 254
#: The longest display name. Bounded so that an address always fits in one
#: header line of an ``.eml`` (998 octets) and Mailgun's 16 kB of ``h:`` fields.
MAX_NAME = 256
#: The longest subject: RFC 5322's line limit; far more than any real subject.
MAX_SUBJECT = 998

#: The most custom headers one mail may have.
MAX_HEADERS = 20
#: The longest custom header name, ``X-`` included.
MAX_HEADER_NAME = 100
#: The longest custom header value. With its name, ``: `` and the value, a
#: header must fit one line of RFC 5322 (998 characters), so that it can be
#: written unfolded, and so a long name leaves less room.
MAX_HEADER_VALUE = 998
MAX_HEADER_LINE = 998
#: A custom header name: ``X-`` and RFC 7230 token characters, a subset of RFC
#: 5322's field-name characters that is also safe as an HTTP header name and a
#: multipart form field name (Mailgun's ``h:<Name>``).
_HEADER_NAME = re.compile(r"[Xx]-[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Header name prefixes (lowercase) that a provider or Mailman itself reserves:
#: SendGrid's own (``X-SG-ID``, ``X-SG-EID``, the ``X-SMTPAPI`` header),
#: Mailgun's controls (``X-Mailgun-Variables``, ``X-Mailgun-Tag``...), and
#: Mailman's (``X-Mailman-Id``, ``-Tags``, ``-Metadata``).
RESERVED_HEADER_PREFIXES = ("x-sg-", "x-smtpapi", "x-mailgun-", "x-mailman-")
#: A header value: printable ASCII (what every provider takes as it is).
_HEADER_VALUE = re.compile(r"[ -~]*")
#: The most tags: Mailgun's ``o:tag`` limit (SendGrid takes 10 categories).
MAX_TAGS = 3
#: The longest tag.
MAX_TAG = 128
_TAG = re.compile(r"[ -~]+")
#: A metadata key.
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The longest metadata value.
MAX_METADATA_VALUE = 1000
#: The most bytes of metadata, as the compact JSON of SendGrid's ``custom_args``
#: (Mailman's ``mail_id`` included): SendGrid's limit.
MAX_METADATA_BYTES = 10_000
#: The metadata key Mailman sets itself.
RESERVED_METADATA_KEY = "mail_id"
#: Keys of SendGrid's Event Webhook events: SendGrid puts ``custom_args`` at the
#: top level of each event, where such a key would stand for the event's own field.
SENDGRID_EVENT_KEYS = frozenset(
    {
        "asm_group_id",
        "attempt",
        "bounce_classification",
        "category",
        "cert_err",
        "email",
        "event",
        "ip",
        "marketing_campaign_id",
        "marketing_campaign_name",
        "pool",
        "reason",
        "response",
        "send_at",
        "sg_content_type",
        "sg_event_id",
        "sg_machine_open",
        "sg_message_id",
        "sg_template_id",
        "sg_template_name",
        "smtp-id",
        "status",
        "timestamp",
        "tls",
        "type",
        "url",
        "url_offset",
        "useragent",
    }
)
#: The most bytes of headers, tags and metadata together, counted as Mailgun's
#: form fields (``h:Name`` and value, ``o:tag`` and value, ``v:key`` and value):
#: Mailgun takes 16 kB of ``h:``/``o:``/``v:`` fields, and Mailman's own
#: (``h:Reply-To``, ``h:Message-Id``, ``v:mail_id``) need the rest.
MAX_EXTRA_BYTES = 11_000

#: The furthest ahead ``send_at`` may be: what SendGrid allows (72 hours).
MAX_SCHEDULE_SECONDS = 72 * 3600
#: An RFC 3339 date-time: date, ``T`` (or a space), time, optional fraction, and an
#: offset (``Z`` or ``+hh:mm``), which RFC 3339 requires.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)

_LINE_BREAKS = ("\r", "\n")

#: Characters that cannot stand in a header: C0 controls (TAB included), DEL,
#: C1 controls, the Unicode line and paragraph separators, lone surrogates.
_NOT_IN_HEADER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: Characters that make header text read as other than it is: the bidirectional
#: embeddings, overrides and isolates (U+202A to U+202E, U+2066 to U+2069; a U+202E
#: turns ``Invoice for ann`` into ``nna rof eciovnI``), and the invisible ones
#: (U+200B to U+200D, U+2060, U+FEFF), which make two names that look alike differ.
_DECEPTIVE = re.compile("[\u202a-\u202e\u2066-\u2069\u200b-\u200d\u2060\ufeff]")
#: Characters that cannot be encoded at all, not even in a body.
NOT_ENCODABLE = re.compile("[\ud800-\udfff]")
#: What Python's ``email`` parser (and a mail reader) decodes as an RFC 2047
#: encoded-word: ``=?charset?q?text?=`` or ``?b?``, the text free of ``?``
#: (the parser cannot decode one with more). Linear: no backtracking blow-up
#: on a long field full of ``=?``.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[qQbB]\?[^?]*\?=")


@dataclass(frozen=True, slots=True)
class FieldError:
    """What is wrong with one field of a submitted mail."""

    field: str
    message: str


@dataclass(frozen=True, slots=True)
class CallbackRules:
    """What a ``callback_url`` may be here (``core.callbacks.url_problem``)."""

    #: A signing secret is configured: without one, ``callback_url`` is refused.
    enabled: bool = False
    #: Plain ``http`` too: only while the API runs open on loopback.
    allow_http: bool = False
    #: Loopback, private and link-local hosts too (``MAILMAN_CALLBACK_ALLOW_PRIVATE``).
    allow_private: bool = False


class ValidationFailed(ValueError):
    """A submitted mail is invalid; ``errors`` names every bad field.

    ``status`` is the HTTP status that says so: 422, or 413 when the mail is
    over a size limit (its files: ``MAX_ATTACHMENT_BYTES``), whatever else is
    wrong with it too, since fixing the fields alone would not make it acceptable.
    """

    def __init__(
        self, errors: list[FieldError], status: int = HTTPStatus.UNPROCESSABLE_ENTITY
    ) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors
        self.status = int(status)


class Errors:
    """Collects field errors, keeping the first message for each field."""

    def __init__(self) -> None:
        self._by_field: dict[str, FieldError] = {}

    #: The status the errors are answered with (``ValidationFailed.status``).
    status: int = HTTPStatus.UNPROCESSABLE_ENTITY

    def add(self, field: str, message: str) -> None:
        self._by_field.setdefault(field, FieldError(field, message))

    def too_large(self, field: str, message: str) -> None:
        """An error that makes the mail too large: answered 413, not 422."""
        self.add(field, message)
        self.status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __len__(self) -> int:
        return len(self._by_field)

    def __bool__(self) -> bool:
        return bool(self._by_field)

    def as_list(self) -> list[FieldError]:
        return list(self._by_field.values())


#: The longest free text an operator posts: the reason of ``POST /mail/{id}/failed``.
MAX_REASON = 1000

#: The most unknown fields of one object named one by one; the rest are counted.
MAX_UNKNOWN_NAMED = 20
#: What an unknown field of a request body is told.
UNKNOWN_FIELD = "is not a known field: leave it out, or check its spelling"


def unknown_fields(
    value: Mapping[str, object], known: Set[str], prefix: str, errors: Errors
) -> None:
    """Each key of ``value`` that is not in ``known`` as an error naming it (``prefix``:
    the object's own path, ``attachments[0]``; empty at the top), at most
    ``MAX_UNKNOWN_NAMED`` of them and then one error counting the rest."""
    if value.keys() <= known:  # the usual case, decided in C (for a dict)
        return
    unknown = [key for key in value if key not in known]
    for key in unknown[:MAX_UNKNOWN_NAMED]:
        field = _field_name(prefix, key) if prefix else _cut_key(key)
        meant = _meant(key, known)
        errors.add(
            field,
            f"is not a known field: did you mean {meant}?" if meant else UNKNOWN_FIELD,
        )
    if len(unknown) > MAX_UNKNOWN_NAMED:
        errors.add(
            prefix or BODY_FIELD,
            f"has {len(unknown) - MAX_UNKNOWN_NAMED} more unknown fields",
        )


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _meant(key: str, known: Set[str]) -> str | None:
    """The known field ``key`` is likely a misspelling of (``Cc``, ``callbackUrl``,
    ``attachment``, ``reply-to``); None if none is close."""
    if len(key) > 64:
        return None
    snake = _CAMEL.sub(r"_\1", key).lower().replace("-", "_")
    for guess in (snake, snake + "s", snake.removesuffix("s")):
        if guess in known and guess != key:
            return guess
    return None


def has_line_break(value: str) -> bool:
    """True if ``value`` holds a CR or LF (a header injection attempt)."""
    return any(c in value for c in _LINE_BREAKS)


def describe(char: str) -> str:
    if char == "\0":
        return "NUL"
    if char == "\t":
        return "TAB"
    return f"U+{ord(char):04X}"


def header_problem(value: str, *, deceptive: bool = True) -> str | None:
    """Why ``value`` cannot stand in a header (subject, name, address); None if it can.
    ``deceptive=False``: bidirectional controls and invisible characters are left to
    the caller (a file name has its own rule for them).

    Refused: CR and LF (header injection), any other C0 control (NUL, and TAB:
    it is folding whitespace, which providers may fold at or turn into a
    space), DEL, C1 controls (U+0080 to U+009F, U+0085 NEL among them), the
    Unicode separators U+2028 and U+2029 (Python's ``email`` package splits
    header lines at them, like at U+000B, U+000C, U+001C to U+001E and
    U+0085), lone surrogates (not encodable), bidirectional controls (U+202A
    to U+202E, U+2066 to U+2069) and invisible characters (U+200B to U+200D,
    U+2060, U+FEFF), which make a subject or a name read as other text, and
    RFC 2047 encoded-words
    (``=?charset?q?...?=``), which a mail reader would decode into other text.
    """
    if has_line_break(value):
        return "must not contain CR or LF"
    bad = _NOT_IN_HEADER.search(value)
    if bad is not None:
        char = bad.group()
        if "\ud800" <= char <= "\udfff":
            return f"must not contain a lone surrogate ({describe(char)})"
        return f"must not contain control or line-separator characters ({describe(char)})"
    found = _DECEPTIVE.search(value) if deceptive else None
    if found is not None:
        return (
            "must not contain bidirectional control or invisible characters "
            f"({describe(found.group())})"
        )
    if _ENCODED_WORD.search(value):
        return "must not contain an RFC 2047 encoded-word (=?...?=): send the text itself"
    return None


#: Whatever ``header_problem`` refuses (CR and LF are controls), in one pattern.
_REFUSED_IN_HEADER = re.compile(
    f"{_NOT_IN_HEADER.pattern}|{_DECEPTIVE.pattern}|{_ENCODED_WORD.pattern}"
)


def fits_header(value: str) -> bool:
    """Whether ``header_problem`` finds nothing in ``value``, by one search (it words
    what it finds: call it when this says False)."""
    return _REFUSED_IN_HEADER.search(value) is None


def parse_address(raw: str) -> Address:
    """One address, with an optional display name (``Ann <ann@example.com>``).

    Raises ``ValueError`` with a message for the caller if ``raw`` is not
    exactly one valid address that every provider can take (see
    ``header_problem`` and the module's notes). The address part is checked
    for syntax only (no DNS) and kept in its normalized ASCII form: an
    international domain name is kept as IDNA (``xn--...``); a non-ASCII
    local part (SMTPUTF8) is refused, as is a local part over 64 characters.
    The common plain shape is decided by ``fast_address``; the rest, and every
    refusal, by ``slow_address``.
    """
    address = fast_address(raw)
    return address if address is not None else slow_address(raw)


#: A dot-atom of RFC 5322 atext (email-validator's own ``ATEXT`` character
#: class): no leading, trailing or double dot. email-validator's local part.
_FAST_LOCAL = rf"[{ATEXT}]+(?:\.[{ATEXT}]+)*"
#: An LDH label of at most 63 characters, no hyphen at either end.
_FAST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: Two or more labels: email-validator wants a dot in the domain.
_FAST_DOMAIN = rf"{_FAST_LABEL}(?:\.{_FAST_LABEL})+"
#: A display-name word: atext and dots, which Python's legacy address parser
#: reads as one atom of a phrase (none of its specials, no whitespace).
_FAST_WORD = rf"[{ATEXT}.]+"
#: ``local@domain``, or ``<local@domain>`` after an optional name of words
#: separated by spaces. No quotes, comments, backslashes, tabs, surrounding
#: whitespace or non-ASCII: those are left to ``slow_address``. Linear: the
#: character classes of neighbouring tokens do not overlap.
_FAST_ADDRESS = re.compile(
    rf"(?P<local>{_FAST_LOCAL})@(?P<domain>{_FAST_DOMAIN})"
    rf"|(?:(?P<name>{_FAST_WORD}(?: +{_FAST_WORD})*) *)?"
    rf"<(?P<alocal>{_FAST_LOCAL})@(?P<adomain>{_FAST_DOMAIN})>"
)
#: Longer input cannot be a name of ``MAX_NAME`` characters and an address of
#: ``MAX_ADDRESS`` with a space and angle brackets: not worth a regex run.
_FAST_MAX_RAW = MAX_NAME + MAX_ADDRESS + 3
#: Local parts that email-validator lowercases (RFC 2142 mailbox names).
_CASE_INSENSITIVE = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)
#: email-validator refuses these domains and their subdomains (``.local``,
#: ``localhost``, ``.test``, ``.invalid``, ``.onion``, ``.arpa``), as of import.
_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES)
_SPECIAL_USE_SUFFIXES = tuple("." + d for d in SPECIAL_USE_DOMAIN_NAMES)


def fast_address(raw: str) -> Address | None:
    """``parse_address`` for the common shape; None when it cannot decide.

    Returns an ``Address`` only where ``slow_address`` returns the same one;
    returns None (never raises) for anything else, valid or not, for
    ``slow_address`` to decide and word the error. It takes ASCII
    ``local@domain`` and ``Name <local@domain>`` (the name: words of atext
    and dots, separated by spaces) and applies every rule email-validator
    applies to such an address with ``check_deliverability=False`` and
    ``allow_smtputf8=False``, plus this module's limits:

    - local part: a dot-atom of atext, at most ``MAX_LOCAL_PART``
      characters, kept as is, but lowercased when it is an RFC 2142 name
      (``Postmaster`` becomes ``postmaster``), as email-validator does;
    - domain: dot-separated LDH labels of 1 to 63 characters, no hyphen at
      a label's ends, at least one dot, ending with a letter (no numeric
      TLD), not a special-use name or under one; lowercased, as
      email-validator's UTS-46 mapping does to ASCII. A domain with ``--``
      anywhere is left to the full path: ``xn--`` labels are IDNA-checked
      there and other ``ab--`` labels refused;
    - at most ``MAX_ADDRESS`` characters in all (email-validator's limit
      too; with a local part, it keeps the domain within 253);
    - the name, whitespace runs squeezed to one space as ``getaddresses``
      does, at most ``MAX_NAME`` characters;
    - nothing that could read as an RFC 2047 encoded-word (no ``=?``
      anywhere); the character set already rules out what else
      ``header_problem`` refuses.

    The rules for domains read email-validator's module settings as of its
    defaults (``GLOBALLY_DELIVERABLE``, no ``TEST_ENVIRONMENT``); changing
    them only makes the full path accept more, never less.
    """
    if len(raw) > _FAST_MAX_RAW or "=?" in raw:
        return None
    match = _FAST_ADDRESS.fullmatch(raw)
    if match is None:
        return None
    local, domain, name = match["local"], match["domain"], ""
    if local is None:
        local, domain = match["alocal"], match["adomain"]
        if match["name"] is not None:
            name = " ".join(match["name"].split())
            if len(name) > MAX_NAME:
                return None
    if len(local) > MAX_LOCAL_PART or len(local) + 1 + len(domain) > MAX_ADDRESS:
        return None
    domain = domain.lower()
    if (
        "--" in domain
        or not domain[-1].isalpha()
        or domain in _SPECIAL_USE
        or domain.endswith(_SPECIAL_USE_SUFFIXES)
    ):
        return None
    if local.lower() in _CASE_INSENSITIVE:
        local = local.lower()
    return Address(email=f"{local}@{domain}", name=name)


def slow_address(raw: str) -> Address:
    """``parse_address`` for any input: ``getaddresses``, then email-validator.

    Raises ``ValueError`` with the message for the caller. The reference that
    ``fast_address`` must agree with.
    """
    problem = header_problem(raw)
    if problem is not None:
        raise ValueError(problem)
    if not raw.strip():
        raise ValueError("must not be empty")
    parsed = getaddresses([raw])
    if len(parsed) != 1 or not parsed[0][1]:
        raise ValueError("must hold exactly one address")
    name, addr = parsed[0]
    # getaddresses is lenient and may rewrite odd input; insist that the
    # address it found is literally there.
    if addr not in raw:
        raise ValueError("must hold exactly one address")
    local_part = addr.rpartition("@")[0]
    if not local_part.isascii():
        raise ValueError(
            "must have an ASCII local part (before the @): "
            "internationalized addresses (SMTPUTF8) are not supported"
        )
    try:
        valid = validate_email(addr, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"is not a valid address: {exc}") from None
    if len(valid.local_part) > MAX_LOCAL_PART:
        raise ValueError(
            f"is not a valid address: at most {MAX_LOCAL_PART} characters before the @"
        )
    email = valid.ascii_email
    if email is None:  # only for SMTPUTF8 addresses, refused above
        raise ValueError("must have an ASCII local part (before the @)")
    if len(email) > MAX_ADDRESS:
        raise ValueError(f"is not a valid address: at most {MAX_ADDRESS} characters")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise ValueError(f"has a display name over {MAX_NAME} characters")
    return Address(email=email, name=name)


#: How many sender addresses (``from``, ``reply_to``) ``sender_address`` keeps parsed.
SENDER_ADDRESSES = 256


@functools.lru_cache(maxsize=SENDER_ADDRESSES)
def _sender_address(raw: str) -> Address:
    return parse_address(raw)


def sender_address(raw: str) -> Address:
    """``parse_address`` for the fields a service fills from a few addresses of its own
    (``from``, ``reply_to``): each of the last ``SENDER_ADDRESSES`` valid ones is parsed
    once and kept (an ``Address`` is frozen). Recipients are not kept: they are many, and
    each would push a sender out. What is refused is not kept (parsed again each time),
    nor is input longer than ``fast_address`` takes (a long comment can hide in a valid
    address), so what is kept is bounded."""
    if len(raw) > _FAST_MAX_RAW:
        return parse_address(raw)
    return _sender_address(raw)


def one_address(
    value: object, field: str, errors: Errors, parse: Callable[[str], Address] = parse_address
) -> Address | None:
    """``value`` parsed as one address (by ``parse``); None, with the error added, if it
    is not a string or not an address."""
    if not isinstance(value, str):
        errors.add(field, "must be a string")
        return None
    try:
        return parse(value)
    except ValueError as exc:
        errors.add(field, str(exc))
        return None


def address_list(value: object, field: str, errors: Errors) -> list[object] | None:
    """The raw entries of a recipient field (a string or a list); None for a wrong type."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    errors.add(field, "must be a string or a list of strings")
    return None


def addresses(field: str, raw: list[object], errors: Errors) -> tuple[Address, ...]:
    """Every entry of a recipient list parsed; errors name the entry (``to[1]``)."""
    out: list[Address] = []
    for i, entry in enumerate(raw):
        address = one_address(entry, f"{field}[{i}]", errors)
        if address is not None:
            out.append(address)
    return tuple(out)


def send_at(value: object, now: float, errors: Errors) -> float | None:
    """The optional ``send_at``: an RFC 3339 time with its offset (or, from an entry point
    that has one, an aware ``datetime``), at most ``MAX_SCHEDULE_SECONDS`` ahead. A time
    already past means "at once" (None)."""
    if value is None:
        return None
    if isinstance(value, datetime) and value.tzinfo is not None:
        when = value.timestamp()
    elif not isinstance(value, str):
        errors.add("send_at", "must be an RFC 3339 time string, e.g. 2025-01-02T03:04:05Z")
        return None
    else:
        match = _RFC3339.fullmatch(value.strip())
        try:
            if match is None:
                raise ValueError(value)
            when = parse_time(value)
        except ValueError:
            errors.add(
                "send_at", "must be an RFC 3339 time with its offset, e.g. 2025-01-02T03:04:05Z"
            )
            return None
    if when > now + MAX_SCHEDULE_SECONDS:
        hours = MAX_SCHEDULE_SECONDS // 3600
        errors.add("send_at", f"must be at most {hours} hours ahead")
        return None
    return when if when > now else None


def _cut_key(key: str) -> str:
    """``key``, cut short if it is far too long to be valid anyway."""
    return key if len(key) <= 2 * MAX_HEADER_NAME else key[: 2 * MAX_HEADER_NAME]


def _field_name(field: str, key: str) -> str:
    """``field.key``, the key cut short if it is far too long to be valid anyway."""
    return f"{field}.{_cut_key(key)}"


def headers(value: object, errors: Errors) -> tuple[tuple[str, str], ...]:
    """The optional custom ``headers``: an object of ``X-`` header names to values.

    Errors name the header (``headers.X-Name``); a name that differs from an
    earlier one only in case is refused (it would be the same header).
    """
    if value is None:
        return ()
    if not isinstance(value, dict):
        errors.add("headers", "must be an object of header names to string values")
        return ()
    if len(value) > MAX_HEADERS:
        errors.add("headers", f"must have at most {MAX_HEADERS} headers")
        return ()
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, raw in value.items():
        field = _field_name("headers", name)
        problem = header_name_problem(name) or header_value_problem(raw)
        if problem is None and len(name) + 2 + len(raw) > MAX_HEADER_LINE:
            problem = f"must fit one line with its name: at most {MAX_HEADER_LINE} characters"
        if problem is None and name.lower() in seen:
            problem = "repeats another header's name (names are case-insensitive)"
        if problem is not None:
            errors.add(field, problem)
            continue
        seen.add(name.lower())
        out.append((name, raw))
    return tuple(out)


def header_name_problem(name: str) -> str | None:
    if len(name) > MAX_HEADER_NAME:
        return f"has a name over {MAX_HEADER_NAME} characters"
    if not _HEADER_NAME.fullmatch(name):
        return (
            "must be named X-... with letters, digits and -, no spaces or colons "
            "(other headers are set by Mailman or refused by providers)"
        )
    if name.lower().startswith(RESERVED_HEADER_PREFIXES):
        return "is reserved by a provider or by Mailman (X-SG-, X-SMTPAPI, X-Mailgun-, X-Mailman-)"
    return None


def header_value_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    problem = header_problem(value)
    if problem is not None:
        return problem
    if not value.strip():
        return "must not be empty"
    if len(value) > MAX_HEADER_VALUE:
        return f"must be at most {MAX_HEADER_VALUE} characters"
    if not _HEADER_VALUE.fullmatch(value):
        return "must be printable ASCII"
    if value != value.strip(" "):
        return "must not start or end with a space"
    return None


def tags(value: object, errors: Errors) -> tuple[str, ...]:
    """The optional ``tags``: up to ``MAX_TAGS`` distinct printable ASCII strings."""
    if value is None:
        return ()
    if not isinstance(value, list):
        errors.add("tags", "must be a list of strings")
        return ()
    if len(value) > MAX_TAGS:
        errors.add("tags", f"must have at most {MAX_TAGS} tags")
        return ()
    out: list[str] = []
    for i, tag in enumerate(value):
        field = f"tags[{i}]"
        if not isinstance(tag, str):
            errors.add(field, "must be a string")
        elif not 1 <= len(tag) <= MAX_TAG or not _TAG.fullmatch(tag):
            errors.add(field, f"must be 1 to {MAX_TAG} printable ASCII characters")
        elif _ENCODED_WORD.search(tag):
            errors.add(field, "must not contain an RFC 2047 encoded-word (=?...?=)")
        elif tag != tag.strip(" "):
            errors.add(field, "must not start or end with a space")
        elif tag in out:
            errors.add(field, "repeats an earlier tag")
        else:
            out.append(tag)
    return tuple(out)


#: What is wrong with a metadata key that is not one.
METADATA_KEY_RULE = "must be named by 1 to 64 of A-Z, a-z, 0-9, _, . and -"


def is_metadata_key(key: str) -> bool:
    """Whether ``key`` is a metadata key a mail may have (``GET /mail`` finds by it)."""
    return _METADATA_KEY.fullmatch(key) is not None


def metadata(value: object, mail_id: str, errors: Errors) -> tuple[tuple[str, str], ...]:
    """The optional ``metadata``: an object of short keys to string values."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        errors.add("metadata", "must be an object of string values")
        return ()
    if len(value) > MAX_METADATA_BYTES // len('"k":"",'):  # cannot fit: not checked one by one
        errors.add("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return ()
    out: list[tuple[str, str]] = []
    for key, raw in value.items():
        field = _field_name("metadata", key)
        if not is_metadata_key(key):
            errors.add(field, METADATA_KEY_RULE)
        elif key == RESERVED_METADATA_KEY:
            errors.add(field, "is reserved: Mailman sets mail_id itself")
        elif key.lower() in SENDGRID_EVENT_KEYS:
            errors.add(field, "is reserved: SendGrid's delivery events use this key")
        elif not isinstance(raw, str):
            errors.add(field, "must be a string")
        elif len(raw) > MAX_METADATA_VALUE:
            errors.add(field, f"must be at most {MAX_METADATA_VALUE} characters")
        elif NOT_ENCODABLE.search(raw):
            errors.add(field, "must not contain a lone surrogate")
        else:
            out.append((key, raw))
    if out and len(orjson.dumps({**dict(out), RESERVED_METADATA_KEY: mail_id})) > (
        MAX_METADATA_BYTES
    ):
        errors.add("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return tuple(out)


def extra_bytes(
    headers: Sequence[tuple[str, str]],
    tags: Sequence[str],
    metadata: Sequence[tuple[str, str]],
) -> int:
    """Headers, tags and metadata as Mailgun form fields: their names' and values' bytes."""
    return (
        sum(len(f"h:{k}{v}".encode()) for k, v in headers)
        + sum(len(f"o:tag{t}".encode()) for t in tags)
        + sum(len(f"v:{k}{v}".encode()) for k, v in metadata)
    )


# --- attachments ---------------------------------------------------------------

#: The fields of a file in ``attachments``.
ATTACHMENT_FIELDS = frozenset({"filename", "content", "content_type", "disposition", "content_id"})
#: The most files one mail may carry.
MAX_ATTACHMENTS = 20
#: The most bytes of files one mail may carry, decoded, all files together.
#: As base64 in the JSON body that is about 13.4 MiB: ``MAILMAN_MAX_BODY_BYTES``
#: (16 MiB by default) leaves room for the rest of the mail. Over it, the mail is
#: refused with 413, not 422 (``ValidationFailed.status``).
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
#: The longest file name, in characters.
MAX_FILENAME = 255
#: The longest content id (without angle brackets).
MAX_CONTENT_ID = 250
#: What a file is sent as when its type is neither given nor guessed from its name.
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: A MIME type: RFC 6838 restricted names, ``type/subtype``, no parameters.
_CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
#: Types that cannot travel as a base64 file: multipart bodies are built by
#: Mailman, and RFC 2046 allows no base64 for a ``message/*`` part.
UNSENDABLE_TYPES = ("multipart/", "message/")
#: A content id: characters that are safe at once in a ``Content-ID`` header
#: (``<...>``), unescaped in an HTML ``src="cid:..."`` URL, and in a file name
#: (Mailgun names an inline part by its content id).
_CONTENT_ID = re.compile(r"[A-Za-z0-9!$*+=_~.@-]+")
#: Unicode bidirectional controls: in a file name they disguise its extension
#: (``invoice<U+202E>fdp.exe`` shows as ``invoiceexe.pdf``).
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: Types by file extension: Python's built-in table only (not the host's
#: ``/etc/mime.types``), so that a guess is the same on every machine.
_MIME_TYPES = mimetypes.MimeTypes()
#: A compressed file's type, by the compression ``mimetypes`` reads from its name
#: (a ``.tar.gz`` file is gzip data, not a tar file).
_COMPRESSED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}
_DISPOSITIONS = " or ".join(d.value for d in Disposition)


def guess_content_type(filename: str) -> str:
    """The MIME type a file's name suggests; ``application/octet-stream`` if none does
    (or if it suggests one that cannot travel as a file, such as ``message/rfc822``)."""
    guessed, encoding = _MIME_TYPES.guess_type(filename, strict=True)
    if encoding is not None:
        return _COMPRESSED_TYPES.get(encoding, DEFAULT_CONTENT_TYPE)
    if guessed is None or guessed.startswith(UNSENDABLE_TYPES):
        return DEFAULT_CONTENT_TYPE
    return guessed


def decode_base64(value: str) -> tuple[bytes, str]:
    """The bytes that strict standard base64 ``value`` holds, and its canonical form
    (padded, unused bits zero); ``ValueError`` with the message for the caller if
    it is not base64.

    The RFC 4648 alphabet only: no whitespace or line breaks, no base64url
    (``-``, ``_``), nothing after the padding. Missing padding is put back.
    """
    padded = value if value.endswith("=") else value + "=" * (-len(value) % 4)
    try:
        if len(padded) % 4:  # "00000000=": padding after a whole group (strict mode takes it)
            raise ValueError("padding out of place")
        data = binascii.a2b_base64(padded, strict_mode=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        if "-" in value or "_" in value:
            raise ValueError("must be standard base64 (+ and /), not base64url (- and _)") from None
        if any(c.isspace() for c in value):
            raise ValueError("must be base64 without line breaks or spaces") from None
        raise ValueError(
            "must be base64: A-Z, a-z, 0-9, + and /, then up to two = of padding"
        ) from None
    canonical = base64.b64encode(data).decode("ascii")
    return data, value if canonical == value else canonical


def filename_problem(name: str) -> str | None:
    """Why ``name`` cannot name an attached file; None if it can.

    It goes into a ``Content-Disposition`` header (RFC 2231-encoded when it
    is not ASCII) and into a multipart form part: the header rules apply
    (``header_problem``), no path (``/``, ``\\``), no ``"``, no bidirectional
    controls, no leading or trailing whitespace (of any kind: readers strip it),
    not ``.`` or ``..``.
    """
    if not 1 <= len(name) <= MAX_FILENAME:
        return f"must be 1 to {MAX_FILENAME} characters"
    problem = header_problem(name, deceptive=False)
    if problem is not None:
        return problem
    if "/" in name or "\\" in name:
        return "must be a file name without a path (no / or \\)"
    if '"' in name:
        return 'must not contain a double quote (")'
    bidi = _BIDI_CONTROLS.search(name)
    if bidi is not None:
        return f"must not contain bidirectional control characters ({describe(bidi.group())})"
    if name != name.strip():  # Unicode whitespace too: mail readers drop it there
        return "must not start or end with whitespace"
    if name in (".", ".."):
        return "must name a file"
    return None


def attachments(value: object, errors: Errors) -> tuple[Attachment, ...]:
    """The optional ``attachments``: a list of files, each ``{filename, content
    (base64), content_type?, disposition?, content_id?}``.

    Errors name the file's field (``attachments[1].content``). More than
    ``MAX_ATTACHMENT_BYTES`` in all (decoded) is a 413 (``Errors.too_large``
    on ``attachments``); everything else a 422. ``content_type`` defaults to a
    guess from the file name, ``disposition`` to ``attachment``. An
    ``inline`` file needs a ``content_id``, unique in the mail (ignoring
    case), given with or without its angle brackets and kept without; a plain
    attachment may not have one (Mailgun could not send it).
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        errors.add("attachments", "must be a list of objects")
        return ()
    if len(value) > MAX_ATTACHMENTS:
        errors.add("attachments", f"must have at most {MAX_ATTACHMENTS} files")
        return ()
    out: list[Attachment] = []
    content_ids: dict[str, int] = {}
    total = 0
    for i, raw in enumerate(value):
        at = f"attachments[{i}]"
        if not isinstance(raw, dict):
            errors.add(at, "must be an object with filename and content")
            continue
        found = len(errors)
        unknown_fields(raw, ATTACHMENT_FIELDS, at, errors)
        filename = _attachment_filename(raw.get("filename"), f"{at}.filename", errors)
        content = _attachment_content(raw.get("content"), f"{at}.content", errors)
        if content is not None:
            total += len(content[0])
        disposition = _attachment_disposition(raw.get("disposition"), f"{at}.disposition", errors)
        content_type = _attachment_type(
            raw.get("content_type"), filename, f"{at}.content_type", errors
        )
        content_id = _attachment_content_id(
            raw.get("content_id"), disposition, f"{at}.content_id", errors
        )
        if content_id is not None:
            first = content_ids.setdefault(content_id.lower(), i)
            if first != i:
                errors.add(f"{at}.content_id", f"repeats the content_id of attachments[{first}]")
        if len(errors) > found:
            continue
        assert filename is not None and content is not None
        assert disposition is not None and content_type is not None
        data, canonical = content
        out.append(
            Attachment(filename, canonical, content_type, disposition, content_id, len(data))
        )
    if total > MAX_ATTACHMENT_BYTES:
        errors.too_large(
            "attachments",
            f"the files must be at most {MAX_ATTACHMENT_BYTES} bytes in all (decoded); "
            f"these are {total}",
        )
    return tuple(out)


def _attachment_filename(value: object, field: str, errors: Errors) -> str | None:
    if value is None:
        errors.add(field, "is required")
        return None
    if not isinstance(value, str):
        errors.add(field, "must be a string")
        return None
    problem = filename_problem(value)
    if problem is not None:
        errors.add(field, problem)
        return None
    return value


def _attachment_content(value: object, field: str, errors: Errors) -> tuple[bytes, str] | None:
    """The file's bytes and its canonical base64: given as base64 (JSON), or as the bytes
    themselves (an entry point that has them: SMTP, a multipart form)."""
    if value is None:
        errors.add(field, "is required")
        return None
    if isinstance(value, bytes):
        if not value:
            errors.add(field, "must not be empty")
            return None
        return value, base64.b64encode(value).decode("ascii")
    if not isinstance(value, str):
        errors.add(field, "must be a base64 string")
        return None
    try:
        data, canonical = decode_base64(value)
    except ValueError as exc:
        errors.add(field, str(exc))
        return None
    if not data:
        errors.add(field, "must not be empty")
        return None
    return data, canonical


def _attachment_disposition(value: object, field: str, errors: Errors) -> Disposition | None:
    if value is None:
        return Disposition.ATTACHMENT
    if isinstance(value, str) and value.lower() in _DISPOSITION_VALUES:
        return Disposition(value.lower())
    errors.add(field, f"must be {_DISPOSITIONS}")
    return None


_DISPOSITION_VALUES = frozenset(d.value for d in Disposition)


def _attachment_type(value: object, filename: str | None, field: str, errors: Errors) -> str | None:
    """The given MIME type, lowercase; a guess from the file name when none is given."""
    if value is None:
        return guess_content_type(filename) if filename is not None else DEFAULT_CONTENT_TYPE
    if not isinstance(value, str) or not _CONTENT_TYPE.fullmatch(value):
        errors.add(
            field, "must be a MIME type, type/subtype (e.g. application/pdf), without parameters"
        )
        return None
    lowered = value.lower()
    if lowered.startswith(UNSENDABLE_TYPES):
        errors.add(
            field, "must not be multipart/* or message/*: send the file as application/octet-stream"
        )
        return None
    return lowered


def _attachment_content_id(
    value: object, disposition: Disposition | None, field: str, errors: Errors
) -> str | None:
    """An inline file's content id, without angle brackets (None: none given)."""
    if value is None:
        if disposition is Disposition.INLINE:
            errors.add(
                field, "is required for an inline file (the HTML refers to it as cid:<content_id>)"
            )
        return None
    if not isinstance(value, str):
        errors.add(field, "must be a string")
        return None
    if disposition is Disposition.ATTACHMENT:
        errors.add(field, "is only for inline files (disposition inline)")
        return None
    cid = value[1:-1] if len(value) >= 2 and value[0] == "<" and value[-1] == ">" else value
    if not 1 <= len(cid) <= MAX_CONTENT_ID or not _CONTENT_ID.fullmatch(cid) or not cid.strip("."):
        errors.add(
            field,
            f"must be 1 to {MAX_CONTENT_ID} of A-Z a-z 0-9 ! $ * + = _ ~ . @ - "
            "(angle brackets around it are dropped)",
        )
        return None
    return cid

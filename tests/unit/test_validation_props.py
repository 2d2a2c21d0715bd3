"""A 201 is a promise every provider can keep: generated mails, refused or buildable by all.

Each generated body (shaped like the JSON of ``POST /mail/send``, biased
toward nasty characters) either gets ``ValidationFailed`` from ``parse_mail``,
or becomes a ``Mail`` that every provider client builds a request for without
an error: SendGrid's JSON body, Mailgun's form, and the outbox's ``.eml``,
each within the provider's documented constraints (providers.md).
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
import unicodedata
from collections.abc import Callable
from email.headerregistry import AddressHeader
from email.message import EmailMessage
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from mailman.core.ids import new_id
from mailman.core.model import Address, Mail
from mailman.core.submission import parse_mail
from mailman.core.validation import MAX_RECIPIENTS, ValidationFailed
from mailman.providers import mailgun, outbox, sendgrid
from tests.support.fakes import _sendgrid_problems

DEFAULT_SUBJECT = "(no subject)"
NOW = 1_700_000_000.25
#: The longest line RFC 5322 allows, CRLF not counted.
MAX_LINE = 998
#: Mailgun: ``o:``, ``h:`` and ``v:`` fields together at most 16 kB.
MAILGUN_OPTIONS_BYTES = 16 * 1024
#: RFC 2047: an encoded-word is at most 75 characters.
ENCODED_WORD = re.compile(r"=\?[^?]*\?[qQbB]\?[^?]*\?=")

# --- strategies ----------------------------------------------------------------

#: Characters and fragments that break headers, parsers or providers.
NASTY = [
    "\x00",
    "\t",
    "\r",
    "\n",
    "\r\n",
    "\x0b",
    "\x0c",
    "\x1b",
    "\x1c",
    "\x1e",
    "\x7f",
    "\x80",
    "\x85",
    "\x9f",
    "\u2028",
    "\u2029",
    "\ud800",
    "\udfff",
    "=?utf-8?q?x?=",
    "=?UTF-8?B?eA==?=",
    "=?iso-8859-1?q?=E9?=",
]
#: Characters and fragments that are fine in a header but easy to get wrong.
TRICKY = [
    "\ufeff",
    "\u200b",
    "\u202e",
    "\xa0",
    "\u3000",
    "\ufb01",
    '"',
    "\\",
    "'",
    ",",
    ";",
    ":",
    "<",
    ">",
    "(",
    ")",
    "[",
    "]",
    "@",
    ".",
    " ",
    "  ",
    "=?",
    "?=",
    "2+2=? ",
    "=?utf-8?",
    "ü",
    "ß",
    "İ",
    "日本語",
    "😀",
    "e\u0301",
    "x" * 80,
]

#: Any character that may stand in a header (no control, separator or surrogate).
header_char = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"))


def pieces_text(pieces: st.SearchStrategy[str], max_pieces: int) -> st.SearchStrategy[str]:
    return st.lists(pieces, max_size=max_pieces).map("".join)


#: Header text a caller may well send: quotes, commas, non-ASCII, long runs.
fine_text = st.one_of(
    pieces_text(st.one_of(st.sampled_from(TRICKY), st.text(header_char, max_size=5)), 8),
    st.text(header_char, max_size=30),
    st.builds(
        lambda piece, n: (piece * n)[:n],
        st.sampled_from(["x", "ü", "a b ", "日本", '"', ";", "=?", "\\"]),
        st.integers(min_value=40, max_value=256),
    ),
)
#: A subject may be longer than a name.
fine_subjects = st.one_of(
    st.just("Hello"),
    fine_text,
    st.builds(
        lambda piece, n: (piece * n)[:n],
        st.sampled_from(["x", "ü", "a b ", "日本 ", "=?"]),
        st.integers(min_value=900, max_value=998),
    ),
)
#: Header text with at least one thing no header can hold, or far too long.
nasty_text = st.one_of(
    st.builds(
        lambda before, bad, after: before + bad + after,
        fine_text,
        st.sampled_from(NASTY),
        fine_text,
    ),
    st.builds(lambda piece, n: piece * n, st.sampled_from(["x", "ü", "a "]), st.just(1000)),
    st.text(max_size=20),
)

plain_names = st.sampled_from(["", "Ann", "Doe, Ann", "Jürgen Groß", "O'Brien", "山田 太郎"])
fine_names = st.one_of(plain_names, fine_text)

atext = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789!#$%&'*+-/=?^_`{|}~"
atom = st.text(st.sampled_from(atext), min_size=1, max_size=12)
fine_local_parts = st.one_of(
    st.lists(atom, min_size=1, max_size=3).map(".".join),
    st.integers(min_value=55, max_value=64).map(lambda n: "a" * n),
    st.sampled_from(["ann", "x=?y", "a?=b", "=?utf-8?", "o'brien", "a+tag"]),
)
nasty_local_parts = st.one_of(
    st.integers(min_value=65, max_value=70).map(lambda n: "a" * n),
    st.sampled_from(
        ["änn", "ann.ü", "=?utf-8?q?x?=", "=?utf-8?b?eA==?=", '"quoted"', "a..b", ".a", ""]
    ),
    pieces_text(st.sampled_from(NASTY + TRICKY), 3),
)
fine_domains = st.sampled_from(
    [
        "example.com",
        "EXAMPLE.com",
        "mail.example.org",
        "bücher.de",
        "xn--bcher-kva.de",
        "例え.jp",
        "ﬁ.example.com",
        ("a" * 60 + ".") * 2 + "com",
    ]
)
nasty_domains = st.one_of(
    st.sampled_from(
        ["example", "[127.0.0.1]", ("a" * 63 + ".") * 3 + "com", "exa mple.com", "ex\x00.com"]
    ),
    pieces_text(st.sampled_from(NASTY + TRICKY), 3),
)


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def address_strings(
    names: st.SearchStrategy[str],
    local_parts: st.SearchStrategy[str],
    domains: st.SearchStrategy[str],
) -> st.SearchStrategy[str]:
    """Address strings as callers write them: bare, with a name, quoted, with a comment."""
    specs = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)
    return st.one_of(
        specs,
        st.builds(lambda n, a: f"{n} <{a}>", names, specs),
        st.builds(lambda n, a: f"{_quoted(n)} <{a}>", names, specs),
        st.builds(lambda a, n: f"{a} ({n})", specs, names),
    )


fine_addresses = address_strings(fine_names, fine_local_parts, fine_domains)
nasty_addresses = st.one_of(
    address_strings(nasty_text, fine_local_parts, fine_domains),
    address_strings(fine_names, nasty_local_parts, fine_domains),
    address_strings(fine_names, fine_local_parts, nasty_domains),
    st.sampled_from(["a@example.com, b@example.com", "Ann", "", "<>", "a@example.com junk"]),
    nasty_text,
)


def recipients(address: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    return st.one_of(address, st.lists(address, min_size=1, max_size=4))


fine_bodies = st.one_of(st.just("Hello"), st.text(max_size=50).filter(str.strip), fine_text)
#: Bodies may hold controls and separators; only lone surrogates are refused.
any_bodies = st.one_of(
    fine_bodies,
    st.builds(
        lambda before, bad, after: before + bad + after,
        fine_text,
        st.sampled_from(NASTY),
        st.text(max_size=20),
    ),
    st.text(max_size=2000),
    st.sampled_from([None, "", 5, "x" * 5000, "ü\x00" * 600]),
)

#: Printable ASCII: what header values and tags may hold.
printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
header_names = st.one_of(
    st.from_regex(r"X-[A-Za-z0-9-]{1,30}", fullmatch=True),
    st.sampled_from(["X-Campaign", "x-trace-id", "X-" + "n" * 98]),
)
header_values = st.one_of(
    st.text(printable, min_size=1, max_size=100),
    st.builds(lambda n, w: (w + " ") * n + w, st.integers(0, 200), st.sampled_from(["ab", "x"])),
    st.builds(lambda n: "z" * n, st.integers(900, 998)),
)
nasty_header_names = st.one_of(
    header_names,
    st.sampled_from(["Subject", "Bcc", "X-Mailman-Id", "X-SG-ID", "X-", "X-a b", "X-ü", ""]),
    st.text(max_size=30),
)
metadata_values = st.one_of(
    st.text(max_size=50), fine_text, st.builds(lambda n: "v" * n, st.integers(500, 1000))
)
metadata_keys = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
fine_headers = st.dictionaries(header_names, header_values, max_size=20)
nasty_headers = st.one_of(
    st.dictionaries(
        nasty_header_names,
        st.one_of(header_values, nasty_text, st.integers(), st.none()),
        max_size=25,
    ),
    st.sampled_from([None, [], "X-A: b", 5]),
)
fine_tags = st.lists(st.text(printable, min_size=1, max_size=128), max_size=3, unique=True)
nasty_tags = st.one_of(
    st.lists(st.one_of(st.text(max_size=130), nasty_text, st.integers()), max_size=5),
    st.sampled_from([None, "tag", {}]),
)
fine_metadata = st.dictionaries(metadata_keys, metadata_values, max_size=12)
nasty_metadata = st.one_of(
    st.dictionaries(
        st.one_of(metadata_keys, st.text(max_size=70), st.sampled_from(["mail_id", "event"])),
        st.one_of(metadata_values, nasty_text, st.integers(), st.lists(st.text())),
        max_size=15,
    ),
    st.sampled_from([None, [], "a=b"]),
)
fine_filenames = st.one_of(
    st.sampled_from(["a.pdf", "Rechnung März.pdf", "日本語.txt", "O'Brien (1); v=2.csv", "noext"]),
    st.builds(lambda n: "f" * n + ".bin", st.integers(200, 251)),
    fine_text.filter(bool),
)
file_contents = st.one_of(
    st.binary(min_size=1, max_size=300).map(lambda b: base64.b64encode(b).decode()),
    st.binary(min_size=1, max_size=30).map(lambda b: base64.b64encode(b).decode().rstrip("=")),
)
content_types = st.sampled_from(
    ["application/pdf", "image/png", "text/plain", "TEXT/CSV", "application/vnd.ms-excel"]
)
content_ids = st.from_regex(r"[A-Za-z0-9!$*+=_~.@-]{1,40}", fullmatch=True)


@st.composite
def fine_file(draw: st.DrawFn) -> dict[str, Any]:
    """A file as a caller would attach it: a name, base64, maybe a type, maybe inline."""
    file: dict[str, Any] = {"filename": draw(fine_filenames), "content": draw(file_contents)}
    if draw(st.booleans()):
        file["content_type"] = draw(content_types)
    if draw(st.booleans()):
        cid = draw(content_ids)
        file |= {"disposition": "inline", "content_id": draw(st.sampled_from([cid, f"<{cid}>"]))}
    return file


fine_attachments = st.lists(fine_file(), max_size=4)
nasty_attachments = st.one_of(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "filename": st.one_of(fine_filenames, nasty_text, st.integers()),
                "content": st.one_of(file_contents, st.text(max_size=20), st.none()),
                "content_type": st.one_of(
                    content_types,
                    st.text(max_size=20),
                    st.sampled_from(["multipart/mixed", "message/rfc822", "text/plain; a=b"]),
                ),
                "disposition": st.one_of(
                    st.sampled_from(["inline", "attachment"]), st.text(max_size=8)
                ),
                "content_id": st.one_of(content_ids, st.text(max_size=20), nasty_text),
            },
        ),
        max_size=4,
    ),
    st.sampled_from([None, "a.pdf", {}, [1]]),
)

#: Each field: (a value a caller may well send, a value meant to be refused or to break).
FIELDS: dict[str, tuple[st.SearchStrategy[object], st.SearchStrategy[object]]] = {
    "to": (recipients(fine_addresses), st.one_of(recipients(nasty_addresses), st.just([]))),
    "cc": (recipients(fine_addresses), recipients(nasty_addresses)),
    "bcc": (recipients(fine_addresses), recipients(nasty_addresses)),
    "from": (fine_addresses, nasty_addresses),
    "reply_to": (fine_addresses, nasty_addresses),
    "subject": (fine_subjects, nasty_text),
    "content": (fine_bodies, any_bodies),
    "text": (fine_bodies, any_bodies),
    "html": (fine_bodies, any_bodies),
    "headers": (fine_headers, nasty_headers),
    "tags": (fine_tags, nasty_tags),
    "metadata": (fine_metadata, nasty_metadata),
    "attachments": (fine_attachments, nasty_attachments),
}
REQUIRED = ("to", "from")
BODIES = ("content", "text", "html")


@st.composite
def mails(draw: st.DrawFn) -> dict[str, Any]:
    """A body of ``POST /mail/send``: each field missing, plausible, or (rarely) nasty."""
    out: dict[str, Any] = {}
    some_body = draw(st.sampled_from(BODIES))
    for field, (fine, nasty) in FIELDS.items():
        if field not in (*REQUIRED, some_body) and draw(st.booleans()):
            continue
        nasty_now = draw(st.integers(min_value=0, max_value=9)) == 0
        out[field] = draw(nasty if nasty_now else fine)
    if "text" in out and "content" in out and draw(st.integers(0, 3)):
        out["text"] = out["content"]
    return out


# --- what every client must be able to build ------------------------------------------


def header_texts(mail: Mail) -> list[str]:
    """Every piece of the mail that ends up in a header."""
    everyone = (mail.sender, *mail.to, *mail.cc, *mail.bcc)
    if mail.reply_to is not None:
        everyone += (mail.reply_to,)
    return [
        mail.subject,
        *(a.email for a in everyone),
        *(a.name for a in everyone),
        *(value for _, value in mail.headers),
        *mail.tags,
    ]


def assert_header_safe(mail: Mail) -> None:
    """No control, separator or surrogate in any header text; addresses are ASCII."""
    for value in header_texts(mail):
        bad = [c for c in value if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")]
        assert not bad, f"{value!r} holds {bad!r}"
        assert not ENCODED_WORD.search(value), value
    everyone = (mail.sender, *mail.to, *mail.cc, *mail.bcc)
    for address in everyone + ((mail.reply_to,) if mail.reply_to else ()):
        local = address.email.rpartition("@")[0]
        assert address.email.isascii(), address.email
        assert 1 <= len(local) <= 64, address.email
        assert len(address.email) <= 254, address.email


def assert_sendgrid_buildable(mail: Mail) -> None:
    """SendGrid's body serializes and passes SendGrid's documented validation."""
    payload = sendgrid.body(mail)
    raw = orjson.dumps(payload)
    decoded = orjson.loads(raw)
    assert _sendgrid_problems(decoded) == []
    (personalization,) = decoded["personalizations"]
    seen: set[str] = set()
    total = 0
    for kind in ("to", "cc", "bcc"):
        for recipient in personalization.get(kind, []):
            total += 1
            assert recipient["email"].casefold() not in seen
            seen.add(recipient["email"].casefold())
            assert ";" not in recipient.get("name", "") and "," not in recipient.get("name", "")
            assert "name" not in recipient or recipient["name"]
    assert 1 <= total <= MAX_RECIPIENTS
    assert decoded["subject"]
    assert all(c["value"] for c in decoded["content"])
    files = decoded.get("attachments", [])
    assert [base64.b64decode(f["content"], validate=True) for f in files] == [
        a.decoded() for a in mail.attachments
    ]


def parse_addresses(name: str, value: str) -> list[tuple[str, str]]:
    """(display name, address) of each address in a header value; asserts no defects."""
    header = email.policy.default.header_factory(name.removeprefix("h:"), value)
    assert not header.defects, (value, header.defects)
    assert isinstance(header, AddressHeader)
    return [(a.display_name, a.addr_spec) for a in header.addresses]


def same_addresses(got: list[tuple[str, str]], want: tuple[Address, ...]) -> bool:
    """Equal addresses, and names equal up to runs of whitespace (folding whitespace).

    A non-ASCII name is compared without its whitespace: Python's parser keeps
    the space between two adjacent encoded-words of a display name, which
    RFC 2047 (section 6.2) says to drop (CPython gh-128110), and turns any
    run of Unicode whitespace (U+00A0 too) into one space, so it cannot tell.
    """

    def norm(name: str, ascii_name: bool) -> str:
        return " ".join(name.split()) if ascii_name else "".join(name.split())

    return len(got) == len(want) and [
        (norm(n, a.name.isascii()), e) for (n, e), a in zip(got, want, strict=False)
    ] == [(norm(a.name, a.name.isascii()), a.email) for a in want]


def assert_mailgun_buildable(mail: Mail) -> None:
    """Mailgun's form encodes, has the required fields, and every address round-trips."""
    fields = mailgun.form(mail)
    aiohttp.FormData(fields)()  # what the client sends: must encode
    mailgun.request_body(mail)()  # with files: multipart, every part's headers safe
    by_name: dict[str, list[str]] = {}
    for key, value in fields:
        by_name.setdefault(key, []).append(value)
        value.encode("utf-8")
    for required in ("from", "to", "subject"):
        assert any(by_name.get(required, [])), required
    assert any(by_name.get("text", []) + by_name.get("html", []))
    options = sum(
        len(k.encode()) + len(v.encode()) for k, v in fields if k[:2] in ("o:", "h:", "v:")
    )
    assert options <= MAILGUN_OPTIONS_BYTES
    assert len(by_name.get("o:tag", [])) <= 3
    for name, value in mail.headers:
        assert by_name[f"h:{name}"] == [value]
    for key, value in mail.metadata:
        assert by_name[f"v:{key}"] == [value]
    recipients = sum(len(by_name.get(k, [])) for k in ("to", "cc", "bcc"))
    assert 1 <= recipients <= MAX_RECIPIENTS
    for key in ("from", "to", "cc", "bcc", "subject", "h:Reply-To", "v:mail_id"):
        for value in by_name.get(key, []):
            assert len(value.splitlines()) <= 1, (key, value)
    for key, want in (
        ("from", (mail.sender,)),
        ("to", mail.to),
        ("cc", mail.cc),
        ("bcc", mail.bcc),
        ("h:Reply-To", (mail.reply_to,) if mail.reply_to else ()),
    ):
        got = [pair for value in by_name.get(key, []) for pair in parse_addresses(key, value)]
        assert same_addresses(got, want), (key, got, want)
        for value in by_name.get(key, []):
            assert all(len(w) <= 75 for w in ENCODED_WORD.findall(value)), value


def assert_eml_buildable(mail: Mail) -> None:
    """The .eml renders, uses CRLF, keeps lines within 998 octets and parses without defects."""
    data = outbox.render(mail)
    assert b"\0" not in data
    assert data.endswith(b"\r\n")
    for line in data.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line, line[:100]
        assert len(line) <= MAX_LINE, line[:100]
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    for part in msg.walk():
        assert not part.defects, part.defects
        for key, value in part.items():
            assert not value.defects, (key, value, value.defects)
    assert msg["Bcc"] is None
    for name, value in mail.headers:
        assert msg.get_all(name) == [value], name
    assert msg["X-Mailman-Tags"] == (", ".join(mail.tags) if mail.tags else None)
    metadata = msg["X-Mailman-Metadata"]
    assert (json.loads(str(metadata)) if metadata else {}) == dict(mail.metadata)
    # Leading spaces are folding whitespace to a reader (and to Python's parser when
    # the folder starts the subject on a continuation line).
    assert msg["Subject"].lstrip(" ") == mail.subject.lstrip(" ")
    for key, want in (
        ("From", (mail.sender,)),
        ("To", mail.to),
        ("Cc", mail.cc),
        ("Reply-To", (mail.reply_to,) if mail.reply_to else ()),
    ):
        header = msg[key]
        got = [] if header is None else [(a.display_name, a.addr_spec) for a in header.addresses]
        assert same_addresses(got, want), (key, got, want)
    files = sorted(
        (part.get_filename() or "", part.get_payload(decode=True), part["Content-ID"] or "")
        for part in msg.walk()
        if part.get_content_disposition() in ("attachment", "inline")
    )
    assert files == sorted(
        (a.filename, a.decoded(), f"<{a.content_id}>" if a.content_id else "")
        for a in mail.attachments
    )
    for subtype, body in (("plain", mail.text), ("html", mail.html)):
        found = msg.get_body((subtype,))
        if body is None:
            continue
        assert found is not None
        assert one_newline_at_end(found.get_content()) == one_newline_at_end(body)


def one_newline_at_end(text: str) -> str:
    """``text`` with LF line ends and one at the end: the .eml has CRLF, whatever
    the body had, and a line end after the last line."""
    text = re.sub("\r\n|\r", "\n", text)
    return text if text.endswith("\n") else text + "\n"


def assert_buildable_by_every_client(mail: Mail) -> None:
    """``mail`` is safe for headers and every client builds its request within the rules."""
    assert_header_safe(mail)
    assert_sendgrid_buildable(mail)
    assert_mailgun_buildable(mail)
    assert_eml_buildable(mail)


def parse(body: object) -> Mail:
    """``parse_mail`` as the API calls it."""
    return parse_mail(body, mail_id=new_id(NOW), default_subject=DEFAULT_SUBJECT, now=NOW)


# --- the properties ---------------------------------------------------------------


@pytest.mark.slow
@given(body=mails())
@settings(max_examples=300, deadline=None)
def test_a_mail_is_refused_or_buildable_by_every_client(body: dict[str, Any]) -> None:
    """Every generated mail is refused by parse_mail or built without error by every client."""
    try:
        mail = parse(body)
    except ValidationFailed as exc:
        assert exc.errors
        assert len({e.field for e in exc.errors}) == len(exc.errors)
        note(f"refused: {exc}")
        event("refused")
        return
    event("accepted")
    note(f"accepted: {mail!r}")
    assert_buildable_by_every_client(mail)


#: Where a header-breaking piece of text may go, and the field the API then names.
PLACES: dict[str, Callable[[str], dict[str, object]]] = {
    "subject": lambda text: {"subject": text},
    "from": lambda text: {"from": f"{_quoted(text)} <sender@example.com>"},
    "reply_to": lambda text: {"reply_to": f"help@example.com ({text})"},
    "to[1]": lambda text: {"to": ["ann@example.com", f"{text} <bob@example.com>"]},
    "cc[0]": lambda text: {"cc": [f"{text}@example.com"]},
    "bcc[0]": lambda text: {"bcc": f"{_quoted(text)} <b+{text}@example.com>"},
    "attachments[0].filename": lambda text: {
        "attachments": [{"filename": f"f{text}.txt", "content": "QQ=="}]
    },
}


@given(
    place=st.sampled_from(sorted(PLACES)),
    before=fine_text,
    bad=st.one_of(
        st.sampled_from(NASTY),
        st.characters(categories=("Cc", "Cs", "Zl", "Zp")),
    ),
    after=fine_text,
)
@settings(max_examples=200, deadline=None)
def test_what_no_header_can_hold_is_refused_in_its_field(
    place: str, before: str, bad: str, after: str
) -> None:
    """A control, separator, surrogate or encoded-word in header text is refused in its field."""
    body: dict[str, object] = {
        "from": "sender@example.com",
        "to": ["ann@example.com"],
        "content": "Hi",
    }
    body |= PLACES[place](before + bad + after)
    try:
        mail = parse(body)
    except ValidationFailed as exc:
        assert [e.field for e in exc.errors] == [place]
        return
    raise AssertionError(f"accepted {mail!r}")


#: Bidirectional embeddings, overrides and isolates, and invisible characters: refused in
#: a subject and in a display name (they make it read as other text), fine in a body.
DECEPTIVE = [
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
]
#: The places of header text that is a subject or holds a display name.
NAME_PLACES = sorted(p for p in PLACES if p != "attachments[0].filename")


@given(
    place=st.sampled_from(NAME_PLACES),
    before=fine_text,
    bad=st.sampled_from(DECEPTIVE),
    after=fine_text,
)
@settings(max_examples=200, deadline=None)
def test_bidi_and_invisible_characters_are_refused_in_header_text(
    place: str, before: str, bad: str, after: str
) -> None:
    """A bidirectional control or an invisible character anywhere in a subject or an
    address (its display name) is refused in that field, and nowhere else."""
    body: dict[str, object] = {
        "from": "sender@example.com",
        "to": ["ann@example.com"],
        "content": f"{before}{bad}{after}" or "Hi",
    }
    body |= PLACES[place](before + bad + after)
    try:
        mail = parse(body)
    except ValidationFailed as exc:
        assert [e.field for e in exc.errors] == [place]
        return
    raise AssertionError(f"accepted {mail!r}")

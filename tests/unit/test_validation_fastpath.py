"""The address fast path agrees with the full path wherever it decides.

``fast_address`` decides the common shape of an address without
``getaddresses`` or email-validator and returns None for anything else;
``slow_address`` is the full path. Wherever the fast path returns an
``Address``, the full path must accept the input and return the same one; and
``parse_address`` (fast, else slow) must give exactly the full path's verdict,
error message included. Inputs: generated strings biased toward address
shapes, generated near-valid addresses, and hand-written tricky cases. The
fast path must also actually decide the common shapes, or it is dead code.
"""

from __future__ import annotations

import string
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mailman.core import validation
from mailman.core.model import Address
from mailman.core.submission import parse_mail
from mailman.core.validation import (
    MAX_ADDRESS,
    MAX_LOCAL_PART,
    MAX_NAME,
    SENDER_ADDRESSES,
    fast_address,
    parse_address,
    sender_address,
    slow_address,
)

#: Deterministic and quick: the whole file runs in a few seconds.
FAST_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
LDH = string.ascii_lowercase + string.ascii_uppercase + string.digits + "-"
#: Characters that change how an address parses or whether it is valid.
TRICKY = [
    ".",
    "..",
    "@",
    "-",
    "--",
    " ",
    "  ",
    "\t",
    "<",
    ">",
    '"',
    "\\",
    "(",
    ")",
    ",",
    ";",
    ":",
    "[",
    "]",
    "=?",
    "?=",
    "\x00",
    "\r\n",
    "\x85",
    "\u00a0",
    "\u2028",
    "é",
    "ß",
    "İ",
    "\u0301",
    "\uff0e",
    "\uff20",
    "xn--",
    "XN--",
]


def outcome(parse: Callable[[str], Address], raw: str) -> Address | str:
    """What ``parse`` (one of the address parsers) gives ``raw``: the address or the error."""
    try:
        result = parse(raw)
    except ValueError as exc:
        return f"ValueError: {exc}"
    assert isinstance(result, Address)
    return result


def assert_agree(raw: str) -> Address | None:
    """The fast path's answer for ``raw``, checked against the full path's."""
    fast = fast_address(raw)
    slow = outcome(slow_address, raw)
    if fast is not None:
        assert slow == fast, f"fast path accepted {raw!r} as {fast}, full path: {slow}"
    assert outcome(parse_address, raw) == slow
    return fast


# --- strategies ------------------------------------------------------------------

atext_runs = st.text(alphabet=ATEXT, min_size=1, max_size=12)
dot_atoms = st.lists(atext_runs, min_size=1, max_size=4).map(".".join)
#: A local part: mostly dot-atoms, sometimes with stray dots or odd characters.
local_parts = st.one_of(
    dot_atoms,
    dot_atoms,
    dot_atoms,
    st.lists(st.one_of(atext_runs, st.sampled_from(TRICKY)), min_size=1, max_size=6).map("".join),
    st.integers(min_value=MAX_LOCAL_PART - 2, max_value=MAX_LOCAL_PART + 2).map(lambda n: "a" * n),
    st.sampled_from(["Postmaster", "ABUSE", "info", "Info.x", "www", "noreply"]),
)
#: A domain label: LDH, sometimes long (around the 63 limit), sometimes odd.
ldh_labels = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True)
labels = st.one_of(
    ldh_labels,
    ldh_labels,
    ldh_labels,
    st.text(alphabet=LDH, min_size=1, max_size=10),
    st.integers(min_value=61, max_value=65).map(lambda n: "b" * n),
    st.sampled_from(["xn--bcher-kva", "xn--a", "ab--cd", "XN--BCHER-KVA", "-a", "a-", "1"]),
    st.lists(st.one_of(st.text(alphabet=LDH, max_size=4), st.sampled_from(TRICKY)), max_size=4).map(
        "".join
    ),
)
tlds = st.one_of(
    st.text(alphabet=string.ascii_letters, min_size=1, max_size=6),
    st.text(alphabet=string.ascii_letters, min_size=1, max_size=6),
    st.sampled_from(
        [
            *("com", "COM", "de", "123", "c0m", "com1", "co-uk", "x", "museum", ""),
            *("local", "localhost", "test", "invalid", "onion", "arpa", "example"),
        ]
    ),
)
domains = st.builds(
    lambda parts, tld, dot: ".".join([*parts, tld]) + dot,
    st.lists(labels, min_size=1, max_size=3),
    tlds,
    st.sampled_from(["", "", "", "", "", "."]),
)
name_words = st.lists(st.text(alphabet=ATEXT + ".", min_size=1, max_size=8), min_size=1, max_size=4)
names = st.one_of(
    st.just(""),
    name_words.map(" ".join),
    name_words.map(" ".join),
    st.lists(
        st.one_of(st.text(alphabet=ATEXT + ". ", max_size=8), st.sampled_from(TRICKY)),
        max_size=5,
    ).map("".join),
    st.integers(min_value=MAX_NAME - 1, max_value=MAX_NAME + 1).map(lambda n: "N" * n),
)
#: The ways an addr-spec is written: bare, in angle brackets after a name,
#: with spacing around, quoted, commented.
shapes = st.sampled_from(
    [
        "{a}",
        "{a}",
        "{a}",
        "{n} <{a}>",
        "{n} <{a}>",
        "{n} <{a}>",
        "{n}<{a}>",
        "{n}  <{a}>",
        "<{a}>",
        " {a}",
        "{a} ",
        "{n} <{a}> ",
        '"{n}" <{a}>',
        "{a} ({n})",
        "{n} <{a}>, x@example.com",
    ]
)
address_shaped = st.builds(
    lambda shape, local, domain, name: shape.format(a=f"{local}@{domain}", n=name),
    shapes,
    local_parts,
    domains,
    names,
)
#: Free text from an address-biased alphabet: every piece that matters, in any order.
address_soup = st.lists(
    st.one_of(
        st.sampled_from(list(ATEXT)),
        st.sampled_from(TRICKY),
        st.sampled_from(["@", ".", "example", "com", "<", ">"]),
        st.characters(),
    ),
    max_size=30,
).map("".join)

#: Pieces a mutation inserts or puts in place of a character of a valid address.
mutation_pieces = st.one_of(
    st.sampled_from(TRICKY),
    st.sampled_from(list(ATEXT)),
    st.sampled_from(["A", "Z", "9", ".com", ".123", ".local", "x" * 60, "N" * 250]),
    st.characters(codec="utf-8"),
)
#: Edits of a string: (position, 0 insert / 1 replace / 2 delete, piece).
edits = st.lists(
    st.tuples(st.integers(min_value=0, max_value=400), st.integers(0, 2), mutation_pieces),
    min_size=1,
    max_size=3,
)


def mutate(raw: str, changes: list[tuple[int, int, str]]) -> str:
    """``raw`` with each edit applied: insert, replace or delete at a position (modulo length)."""
    for position, kind, piece in changes:
        i = position % (len(raw) + 1)
        if kind == 0:
            raw = raw[:i] + piece + raw[i:]
        elif kind == 1:
            raw = raw[:i] + piece + raw[i + 1 :]
        else:
            raw = raw[:i] + raw[i + 1 :]
    return raw


#: Addresses of the common shape that the fast path must decide itself.
plain_locals = st.lists(
    st.text(alphabet=string.ascii_letters + string.digits + "_+-", min_size=1, max_size=10),
    min_size=1,
    max_size=3,
).map(".".join)
plain_labels = ldh_labels.filter(lambda label: "--" not in label)
plain_domains = st.builds(
    lambda parts, tld: ".".join([*parts, tld]),
    st.lists(plain_labels, min_size=1, max_size=3),
    st.text(alphabet=string.ascii_letters, min_size=2, max_size=6).filter(
        lambda tld: tld.lower() not in {"local", "localhost", "test", "invalid", "onion", "arpa"}
    ),
)
plain_names = st.lists(
    st.text(alphabet=string.ascii_letters + "'-.", min_size=1, max_size=10),
    max_size=3,
).map(" ".join)


# --- properties ------------------------------------------------------------------


@FAST_SETTINGS
@given(address_shaped)
def test_fast_path_agrees_on_address_shapes(raw: str) -> None:
    """Where the fast path decides an address-shaped string, the full path agrees."""
    event("fast path decided" if assert_agree(raw) else "fast path deferred")


@FAST_SETTINGS
@given(address_soup)
def test_fast_path_agrees_on_address_soup(raw: str) -> None:
    """Where the fast path decides a string of address pieces, the full path agrees."""
    event("fast path decided" if assert_agree(raw) else "fast path deferred")


@FAST_SETTINGS
@given(plain_locals, plain_domains, plain_names, st.booleans(), edits)
@pytest.mark.slow
def test_fast_path_agrees_on_mutated_addresses(
    local: str, domain: str, name: str, bracketed: bool, changes: list[tuple[int, int, str]]
) -> None:
    """Where the fast path decides a valid address with a few edits, the full path agrees."""
    raw = f"{name} <{local}@{domain}>" if bracketed else f"{local}@{domain}"
    event("fast path decided" if assert_agree(mutate(raw, changes)) else "fast path deferred")


@FAST_SETTINGS
@given(plain_locals, plain_domains, plain_names)
def test_fast_path_decides_common_shapes(local: str, domain: str, name: str) -> None:
    """The fast path decides plain ``local@domain`` and ``Name <local@domain>`` itself."""
    bare = f"{local}@{domain}"
    assert assert_agree(bare) is not None
    assert assert_agree(f"{name} <{bare}>" if name else f"<{bare}>") is not None


# --- named cases -------------------------------------------------------------------

L64 = "l" * 64
L63 = "d" * 63


def domain_of(n: int) -> str:
    """A valid domain name exactly ``n`` characters long: labels of 62, then a letter TLD."""
    parts: list[str] = []
    while n - 63 * len(parts) > 63:
        parts.append("d" * 62)
    parts.append("c" * (n - 63 * len(parts)))
    domain = ".".join(parts)
    assert len(domain) == n
    return domain


TRICKY_ADDRESSES = [
    # Plain shapes the fast path should take.
    "ann@example.com",
    "Mailman <noreply@example.com>",
    "<ann@example.com>",
    "Ann Smith <ann.smith@example.co.uk>",
    "Ann   Smith <ann@example.com>",
    "Ann<ann@example.com>",
    "J.R. O'Neil <jr@example.com>",
    "ANN@EXAMPLE.COM",
    "Ann@Example.Com",
    "Postmaster@Example.com",
    "ABUSE@example.com",
    "Info.Desk@example.com",
    "a+tag@sub.example.com",
    "a!#$%&'*+-/=?^_`{|}~z@example.com",
    "a@b.co",
    "a@x.y",
    "a@1.2.3.com",
    "a@123.c0m",
    # Dots in the local part.
    ".ann@example.com",
    "ann.@example.com",
    "an..n@example.com",
    # Local-part length.
    f"{L64}@example.com",
    f"{L64}l@example.com",
    f"Name <{L64}@example.com>",
    f"Name <{L64}l@example.com>",
    # Address length (local part 1 or 64).
    f"a@{domain_of(252)}",
    f"a@{domain_of(253)}",
    f"{L64}@{domain_of(189)}",
    f"{L64}@{domain_of(190)}",
    f"{L64}@{domain_of(191)}",
    f"a@{domain_of(254)}",
    # Labels of 63 and 64 characters.
    f"a@{L63}.com",
    f"a@{L63}d.com",
    f"a@example.{'c' * 63}",
    f"a@example.{'c' * 64}",
    # Top-level domains.
    "a@example.123",
    "a@1.2.3.4",
    "a@example.c1",
    "a@example.1c",
    "a@b",
    "a@localhost",
    "a@LOCALHOST",
    "a@example",
    "a@foo.localhost",
    "a@printer.local",
    "a@x.test",
    "a@x.TEST",
    "a@something.invalid",
    "a@x.onion",
    "a@1.168.192.in-addr.arpa",
    "a@localhost.com",
    "a@testing.com",
    "a@local.example.com",
    # Hyphens and IDNA.
    "a@-example.com",
    "a@example-.com",
    "a@ex-ample.com",
    "a@ex--ample.com",
    "a@ab--cd.com",
    "a@xn--bcher-kva.de",
    "a@XN--BCHER-KVA.DE",
    "a@xn--a.com",
    "a@bücher.de",
    "a@BÜCHER.de",
    # Trailing and leading dots in the domain.
    "a@example.com.",
    "a@.example.com",
    "a@example..com",
    # Domain literals.
    "a@[1.2.3.4]",
    "a@[IPv6:::1]",
    "Name <a@[1.2.3.4]>",
    # Quoting and comments.
    '"ann"@example.com',
    '"a b"@example.com',
    '"a@b"@example.com',
    "ann(comment)@example.com",
    "ann@example.com (Ann)",
    "(Ann) ann@example.com",
    # Display names with specials.
    '"Smith, Ann" <ann@example.com>',
    "Smith, Ann <ann@example.com>",
    '"Ann \\"A\\" Smith" <ann@example.com>',
    'Ann "A" Smith <ann@example.com>',
    "Ann (A) Smith <ann@example.com>",
    "Ann\\Smith <ann@example.com>",
    "Ann: <ann@example.com>",
    "Zoë <zoe@example.com>",
    f"{'N' * MAX_NAME} <a@example.com>",
    f"{'N' * (MAX_NAME + 1)} <a@example.com>",
    "=?utf-8?q?Ann?= <ann@example.com>",
    "=?utf-8?q?ann?=@example.com",
    "a=?b@example.com",
    # Whitespace and more than one address.
    " ann@example.com",
    "ann@example.com ",
    "\tann@example.com",
    "ann@example.com\n",
    "ann @example.com",
    "ann@ example.com",
    "ann@example.com, bob@example.com",
    "ann@example.com bob@example.com",
    "Ann <ann@example.com> Bob <bob@example.com>",
    "Ann <ann@example.com",
    "Ann ann@example.com>",
    "<<ann@example.com>>",
    "Ann <ann@example.com>>",
    "a@b@example.com",
    "@example.com",
    "ann@",
    "",
    " ",
    # Non-ASCII.
    "ánn@example.com",
    "ann\uff20example.com",
    "ann@example。com",
]


@pytest.mark.parametrize("raw", TRICKY_ADDRESSES)
def test_fast_path_agrees_on_tricky_addresses(raw: str) -> None:
    """Where the fast path decides a hand-written tricky address, the full path agrees."""
    assert_agree(raw)


@pytest.mark.parametrize(
    ("raw", "email", "name"),
    [
        ("ann@example.com", "ann@example.com", ""),
        ("Mailman <noreply@example.com>", "noreply@example.com", "Mailman"),
        ("<ann@example.com>", "ann@example.com", ""),
        ("Ann   Smith <Ann@EXAMPLE.Com>", "Ann@example.com", "Ann Smith"),
        ("Postmaster@Example.com", "postmaster@example.com", ""),
        (f"{L64}@example.com", f"{L64}@example.com", ""),
        (f"a@{domain_of(252)}", f"a@{domain_of(252)}", ""),
        (f"{L64}@{domain_of(189)}", f"{L64}@{domain_of(189)}", ""),
        (f"a@{L63}.com", f"a@{L63}.com", ""),
    ],
)
def test_fast_path_decides_plain_addresses(raw: str, email: str, name: str) -> None:
    """The fast path itself decides plain addresses, normalised as the full path does."""
    assert assert_agree(raw) == Address(email=email, name=name)


@pytest.mark.parametrize(
    "raw",
    [
        "a@xn--bcher-kva.de",
        "a@localhost",
        "a@x.test",
        "a@example.123",
        f"{L64}l@example.com",
        f"{L64}@{domain_of(190)}",
        f"a@{L63}d.com",
        '"ann"@example.com',
        " ann@example.com",
        "a@[1.2.3.4]",
        "=?utf-8?q?Ann?= <ann@example.com>",
    ],
)
def test_fast_path_defers_what_it_cannot_decide(raw: str) -> None:
    """The fast path leaves IDNA, special-use, over-long, quoted and odd input to the full path."""
    assert fast_address(raw) is None
    assert_agree(raw)


def test_length_cases_are_at_the_limits() -> None:
    """The hand-written length cases sit exactly at and just past the limits."""
    assert len(f"a@{domain_of(252)}") == MAX_ADDRESS
    assert len(f"{L64}@{domain_of(189)}") == MAX_ADDRESS
    assert len(f"{L64}@{domain_of(190)}") == MAX_ADDRESS + 1
    assert len(L64) == MAX_LOCAL_PART


# --- the senders kept parsed -------------------------------------------------------


@pytest.fixture
def no_senders_kept() -> None:
    """Each test below starts with no sender kept."""
    validation._sender_address.cache_clear()


@FAST_SETTINGS
@given(address_shaped)
def test_a_kept_sender_is_what_parsing_gives(raw: str) -> None:
    """``sender_address`` gives ``parse_address``'s verdict, the first time and again."""
    expected = outcome(parse_address, raw)
    assert outcome(sender_address, raw) == expected
    assert outcome(sender_address, raw) == expected


def test_a_sender_is_parsed_once(no_senders_kept: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same sender twice is parsed once; a refused one is parsed each time, never kept."""
    parsed: list[str] = []

    def counting(raw: str) -> Address:
        parsed.append(raw)
        return parse_address(raw)

    monkeypatch.setattr(validation, "parse_address", counting)
    first = sender_address("Shop <shop@example.com>")
    assert sender_address("Shop <shop@example.com>") is first
    assert parsed == ["Shop <shop@example.com>"]
    for _ in range(2):
        with pytest.raises(ValueError):
            sender_address("shop@")
    assert parsed == ["Shop <shop@example.com>", "shop@", "shop@"]
    assert validation._sender_address.cache_info().currsize == 1


def test_long_input_is_not_kept(no_senders_kept: None) -> None:
    """A valid address longer than the fast path takes (a long comment) is parsed, not kept."""
    raw = f"Ann <ann@example.com> ({'x' * 1000})"
    assert sender_address(raw) == parse_address(raw) == Address("ann@example.com", "Ann")
    assert validation._sender_address.cache_info().currsize == 0


def test_the_kept_senders_are_bounded(no_senders_kept: None) -> None:
    """At most ``SENDER_ADDRESSES`` senders are kept; the oldest go first."""
    for i in range(SENDER_ADDRESSES + 10):
        sender_address(f"s{i}@example.com")
    assert validation._sender_address.cache_info().currsize == SENDER_ADDRESSES


def test_a_mail_keeps_its_sender_parsed_but_not_its_recipients(no_senders_kept: None) -> None:
    """Two mails from one sender share its parsed address; their recipients are parsed anew."""
    body: dict[str, object] = {"from": "Shop <shop@example.com>", "reply_to": "help@example.com"}
    body |= {"to": ["ann@example.com"], "subject": "Hi", "content": "Hello"}
    one, two = (
        parse_mail(body, mail_id=f"01M98D47G7YGK7PRY72NV9GHJ{i}", default_subject="", now=1.0)
        for i in range(2)
    )
    assert two.sender is one.sender and two.reply_to is one.reply_to
    assert two.to == one.to and two.to[0] is not one.to[0]

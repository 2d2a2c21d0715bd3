"""Messages: statuses, transitions and the wire format."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailman.core.ids import _UlidSource, new_id
from mailman.core.messages import Dispatch, RetryLater, StatusUpdate, _decoder, decode, encode
from mailman.core.model import ALLOWED_FROM, Address, Attempt, Mail, Outcome, Status


def test_records_survive_the_wire() -> None:
    """Every record kind comes back equal after encode/decode."""
    mail = Mail(
        id="01J",
        sender=Address("a@example.com", "Ann"),
        to=(Address("b@example.com"),),
        subject="Hi ☃",
        text="t",
        html="<p>h</p>",
        cc=(Address("c@example.com", "C"),),
        reply_to=Address("r@example.com"),
        created_at=12.5,
    )
    update = StatusUpdate(
        "01J",
        Status.SENT,
        13,
        provider="sendgrid",
        attempt=Attempt("sendgrid", 0, 13.0, Outcome.ACCEPTED, None, "x-1"),
    )
    retry = RetryLater(Dispatch("01J", 12.5, hop=1, round=2, rejected=("a",), retry_after=3), 99.0)
    for record in (mail, update, retry):
        assert decode(type(record), encode(record)) == record


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"mail_id": 5, "accepted_at": 1}', b'{"accepted_at": 1}']
)
def test_garbage_is_refused(raw: bytes) -> None:
    """Bytes that are not a record raise ValueError (a dead letter, not a crash)."""
    with pytest.raises(ValueError):
        decode(Dispatch, raw)


def test_the_lifecycle_only_moves_forward() -> None:
    """failed and bounced are final; sent moves on only to delivered or bounced, delivered
    only to bounced; nothing goes back to scheduled, queued or sending; scheduled leads
    only to queued (its time came) or failed (cancelled by hand)."""
    done = {Status.SENT, Status.FAILED, Status.DELIVERED, Status.BOUNCED}
    for target, sources in ALLOWED_FROM.items():
        assert Status.FAILED not in sources and Status.BOUNCED not in sources, target
        if target in (Status.SCHEDULED, Status.QUEUED, Status.SENDING):
            assert not sources & done, target
    assert {t for t, s in ALLOWED_FROM.items() if Status.SENT in s} == {
        Status.DELIVERED,
        Status.BOUNCED,
    }
    assert {t for t, s in ALLOWED_FROM.items() if Status.DELIVERED in s} == {Status.BOUNCED}
    assert ALLOWED_FROM[Status.QUEUED] == {Status.SCHEDULED}
    assert not ALLOWED_FROM[Status.SCHEDULED]
    assert {t for t, s in ALLOWED_FROM.items() if Status.SCHEDULED in s} == {
        Status.QUEUED,
        Status.FAILED,
    }
    assert all(status.terminal for status in done)
    assert not any(s.terminal for s in (Status.SENDING, Status.QUEUED, Status.SCHEDULED))


def test_ids_are_unique_and_time_ordered() -> None:
    """Ids made one after another are distinct and sort in the order they were made."""
    ids = [new_id(1_700_000_000.0 + n / 1000) for n in range(50)]
    assert len(set(ids)) == 50
    assert sorted(ids) == ids
    assert len({new_id() for _ in range(1000)}) == 1000


def test_an_id_starts_with_its_time_as_the_ulid_spec_writes_it() -> None:
    """An id's first ten characters are its millisecond, as in the ULID spec's example."""
    assert new_id(1469918176.385)[:10] == "01ARYZ6S41"


def _ulid_by_base32(ms: int, random: int) -> str:
    """A ULID written the long way: standard base32 mapped to Crockford's alphabet."""
    crockford = bytes.maketrans(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    )
    raw = base64.b32encode(ms.to_bytes(10) + random.to_bytes(10))
    return raw.translate(crockford)[6:].decode()


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**80 - 2))
def test_ids_are_26_crockford_characters_of_time_then_randomness(ms: int, random: int) -> None:
    """An id is the 48-bit millisecond and 80 random bits in Crockford base32, 26 characters."""
    source = _UlidSource()
    source._random = lambda: random  # type: ignore[method-assign]
    made = source.new(ms / 1000 + 0.0001)
    assert len(made) == 26
    assert made == _ulid_by_base32(int((ms / 1000 + 0.0001) * 1000), random)


def _full_mail() -> Mail:
    return Mail(
        id="01J",
        sender=Address("a@example.com", "Ann"),
        to=(Address("b@example.com"), Address("c@example.com", "C")),
        subject="Hi",
        text="t",
        html="<p>h</p>",
        bcc=(Address("d@example.com"),),
        reply_to=Address("r@example.com"),
        created_at=12.5,
        tenant="acme",
        callback_url="https://example.com/cb",
        request_id="r-1",
        send_at=99.0,
        headers=(("X-A", "1"),),
        tags=("t1",),
        metadata=(("k", "v"),),
    )


def _outcome(build: Callable[[Any], Any], raw: Any) -> tuple[str, Any]:
    try:
        made = build(raw)
    except Exception as exc:
        return "error", (type(exc), str(exc))
    return "made", (made, [type(getattr(made, f.name)) for f in dataclasses.fields(made)])


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@given(
    changed=st.dictionaries(
        st.sampled_from([f.name for f in dataclasses.fields(Mail)]), _JSON, max_size=4
    ),
    # Not created_at: missing, it is the time of the call (each builder's own).
    dropped=st.sets(
        st.sampled_from([f.name for f in dataclasses.fields(Mail) if f.name != "created_at"]),
        max_size=2,
    ),
)
def test_the_compiled_decoder_builds_what_the_generic_one_builds(
    changed: dict[str, Any], dropped: set[str]
) -> None:
    """Whatever a stored mail's JSON holds (fields changed to any JSON, or missing), the
    decoder made for Mail gives the generic builder's record, field types included, or
    its error, message included."""
    raw = {**orjson.loads(encode(_full_mail())), **changed}
    for name in dropped:
        raw.pop(name, None)
    compiled = _decoder(Mail)
    generic = compiled.__wrapped__  # type: ignore[attr-defined]
    assert _outcome(compiled, raw) == _outcome(generic, raw)


def test_a_stored_mail_comes_back_equal_and_typed() -> None:
    """Every field of a full mail comes back as it went, an int time as a float."""
    mail = _full_mail()
    back = decode(Mail, encode(mail))
    assert back == mail and type(back) is Mail
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.subject = "changed"  # type: ignore[misc]
    raw = orjson.loads(encode(mail))
    raw["created_at"] = 12
    again = decode(Mail, orjson.dumps(raw))
    assert again.created_at == 12.0 and type(again.created_at) is float

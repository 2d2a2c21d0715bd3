"""Messages: statuses, transitions and the wire format."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailman.core.ids import _UlidSource, new_id
from mailman.core.messages import Dispatch, RetryLater, StatusUpdate, decode, encode
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

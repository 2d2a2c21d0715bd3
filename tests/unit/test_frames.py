"""What crosses a SQLite writer process's socket (``mailman.store.frames``)."""

from __future__ import annotations

import enum
import pickle
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mailman.core.messages import StatusUpdate
from mailman.core.model import (
    Address,
    Attachment,
    Attempt,
    Check,
    Disposition,
    Mail,
    Outcome,
    Status,
    Suppressed,
    SuppressionReason,
    TemplateUse,
    Unsubscribe,
)
from mailman.store import Idempotency
from mailman.store.attempts import Begun
from mailman.store.frames import LENGTH, calls_frame, calls_of, count_of, dumps, frame, split


def crossed(value: Any) -> Any:
    return pickle.loads(dumps(value))


def full_mail(**fields: Any) -> Mail:
    values: dict[str, Any] = {
        "id": "01JABCDEFGHJKMNPQRSTVWXYZ0",
        "sender": Address("shop@example.com", "Shop"),
        "to": (Address("ann@example.com"), Address("bob@example.org", "Bob ☃")),
        "subject": "Your order",
        "text": "t",
        "html": "<p>h</p>",
        "cc": (Address("c@example.com", "C"),),
        "bcc": (Address("d@example.com"),),
        "reply_to": Address("r@example.com"),
        "created_at": 12.5,
        "tenant": "acme",
        "callback_url": "https://hooks.example.com/x",
        "request_id": "req-1",
        "send_at": 99.0,
        "headers": (("X-Order", "1234"),),
        "tags": ("receipt",),
        "providers": "sendgrid,mailgun",
        "metadata": (("order", "1234"),),
        "attachments": (Attachment.of("a.txt", b"hello", "text/plain"),),
        "suppressed": (Suppressed("e@example.com", SuppressionReason.BOUNCE),),
        "template": TemplateUse("t1", "receipt", 3),
        "unsubscribe": Unsubscribe("news", "https://mailman.example.com/u/x", "u@example.com"),
    }
    values.update(fields)
    return Mail(**values)


def test_the_records_that_cross_come_back_equal() -> None:
    """A mail with every field, a sender's Begun, a status update and an add's arguments
    come back equal after crossing."""
    mail = full_mail()
    attempt = Attempt("sendgrid", 1, 13.0, Outcome.UNKNOWN, "timeout", "x-1", 7, Check.NOT_FOUND)
    records = [
        mail,
        Begun(mail, Status.SENDING, attempt_id=5, unknown=(attempt,)),
        StatusUpdate("01J", Status.SENT, 13.0, provider="sendgrid", attempt=attempt),
        (mail, Idempotency("k" * 64, "f" * 64, 99.0)),
    ]
    for record in records:
        assert crossed(record) == record
    assert crossed(attempt).id == 7  # compare=False: equality alone would not tell


def test_enum_members_come_back_as_themselves() -> None:
    """An enum member crosses as the member itself, and classes and functions by name."""
    back = crossed([Status.SENT, Outcome.ACCEPTED, Disposition.INLINE, Status, len, full_mail])
    assert back[0] is Status.SENT and back[1] is Outcome.ACCEPTED
    assert back[2] is Disposition.INLINE
    assert back[3:] == [Status, len, full_mail]


@given(
    subject=st.text(max_size=40),
    text=st.none() | st.text(max_size=200),
    created_at=st.floats(allow_nan=False),
    to=st.lists(st.builds(Address, st.emails(), st.text(max_size=10)), min_size=1, max_size=4),
    tags=st.lists(st.text(max_size=8), max_size=3),
)
def test_any_mail_comes_back_equal(
    subject: str, text: str | None, created_at: float, to: list[Address], tags: list[str]
) -> None:
    """Mails of any subject, text, time, recipients and tags come back equal."""
    mail = full_mail(
        subject=subject, text=text, created_at=created_at, to=tuple(to), tags=tuple(tags)
    )
    assert crossed(mail) == mail


@dataclass(frozen=True)
class Doubled:
    value: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", self.value * 2)


@dataclass(frozen=True)
class Counted:
    value: int
    later: int = field(init=False, default=0)


@dataclass(frozen=True)
class Base:
    value: int


class Extended(Base):
    """A subclass that is no dataclass of its own: it has an attribute the fields miss."""

    extra: str

    def __init__(self, value: int, extra: str) -> None:
        super().__init__(value)
        object.__setattr__(self, "extra", extra)


class Color(enum.Flag):
    RED = 1
    BLUE = 2


def test_records_that_cannot_be_rebuilt_by_their_fields_cross_as_pickle_takes_them() -> None:
    """A dataclass with a __post_init__ is not run through it twice, one with a field
    outside __init__ keeps it, a subclass keeps its own attributes, a flag's
    combination stays whole."""
    assert crossed(Doubled(2)).value == 4
    counted = Counted(1)
    object.__setattr__(counted, "later", 9)
    assert crossed(counted).later == 9
    extended = crossed(Extended(1, "kept"))
    assert (extended.value, extended.extra) == (1, "kept")
    assert crossed(Color.RED | Color.BLUE) == Color.RED | Color.BLUE


def test_frames_split_whole_ones_off_and_keep_a_partial_one() -> None:
    """A buffer gives back its whole frames in order; a partial one waits for the rest."""
    one, two = frame({"a": 1}), calls_frame([("op", (1,), {}), ("op", (2,), {})])
    buffer = bytearray(one + two[:-3])
    assert [pickle.loads(f) for f in split(buffer)] == [{"a": 1}]
    assert buffer == two[:-3]
    buffer += two[-3:]
    (calls,) = split(buffer)
    assert int.from_bytes(calls[:4], "big") == count_of(calls) == 2
    assert pickle.loads(calls[4:]) == calls_of(calls) == [("op", (1,), {}), ("op", (2,), {})]
    assert buffer == b""
    assert int.from_bytes(one[:LENGTH], "big") == len(one) - LENGTH

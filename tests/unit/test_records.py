"""``core.records.fast_init``: a frozen record made by setting its slots is the record the
dataclass's own ``__init__`` makes, with the same parameters, defaults and errors."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest

from mailman.core import messages, model
from mailman.core.records import TWIN_FIELDS, fast_init, twin_of


@fast_init
@dataclass(frozen=True, slots=True)
class _Sample:
    name: str
    count: int = 3
    items: list[str] = field(default_factory=list)


#: Every record of the mail core, and its dataclass's own ``__init__``.
RECORDS = [
    cls
    for module in (model, messages)
    for cls in vars(module).values()
    if isinstance(cls, type) and cls.__module__ == module.__name__ and dataclasses.is_dataclass(cls)
]


def _both(cls: type, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``cls(*args, **kwargs)``, made by ``fast_init``'s ``__init__`` and by the dataclass's."""
    made = cls(*args, **kwargs)
    theirs: Any = object.__new__(cls)
    _dataclass_init(cls)(theirs, *args, **kwargs)
    return made, theirs


def _dataclass_init(cls: type) -> Any:
    """The dataclass's own ``__init__`` of ``cls``, which ``fast_init`` keeps."""
    return cls.__dict__["__init__"].__wrapped__


def test_a_record_is_made_with_the_same_fields_as_by_the_dataclass() -> None:
    """Positional, by name, defaults and a fresh default from the factory for each."""
    for args, kwargs in [(("a",), {}), (("a", 5), {}), ((), {"name": "b", "items": ["x"]})]:
        made, theirs = _both(_Sample, *args, **kwargs)
        assert made == theirs
        assert [getattr(made, f.name) for f in dataclasses.fields(_Sample)] == [
            getattr(theirs, f.name) for f in dataclasses.fields(_Sample)
        ]
    first, second = _Sample("a"), _Sample("b")
    assert first.items == [] and first.items is not second.items


def test_a_record_made_fast_refuses_what_the_dataclass_refuses_and_stays_frozen() -> None:
    """A missing field, an unknown one or one too many is a TypeError; assigning, as ever,
    a FrozenInstanceError."""
    bad: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((), {}),
        (("a",), {"colour": "red"}),
        (("a", 1, [], 4), {}),
    ]
    for args, kwargs in bad:
        with pytest.raises(TypeError):
            _Sample(*args, **kwargs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Sample("a").name = "b"  # type: ignore[misc]
    assert inspect.signature(_Sample.__init__) == inspect.signature(_dataclass_init(_Sample))


@fast_init
@dataclass(frozen=True, slots=True)
class _Wide:
    a: str
    b: int = 1
    c: int = 2
    d: int = 3
    e: int = 4
    f: list[str] = field(default_factory=list)


class _WideChild(_Wide):
    __slots__ = ()


def test_a_wide_record_made_through_its_twin_is_of_its_own_class_and_frozen() -> None:
    """A record of ``TWIN_FIELDS`` fields or more, its fields stored as its twin's, comes
    out of its own class, frozen, equal to the dataclass's; a subclass's object made by
    the same ``__init__`` stays of the subclass."""
    assert len(dataclasses.fields(_Wide)) >= TWIN_FIELDS
    made, theirs = _both(_Wide, "x", 5, f=["y"])
    assert type(made) is _Wide and made == theirs and hash(made.a) == hash("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.b = 6  # type: ignore[misc]
    child = _WideChild("z", 7)
    assert type(child) is _WideChild
    assert (child.a, child.b, child.c, child.f) == ("z", 7, 2, [])


def test_a_record_made_by_storing_into_its_twin_is_the_record_its_init_makes() -> None:
    """``twin_of`` gives the one twin of a wide record (none for a narrow one): an object
    made a twin, its fields stored and then made the record, equals the record its
    ``__init__`` makes and is frozen like it."""
    twin = twin_of(_Wide)
    assert twin is not None and twin is twin_of(_Wide)
    assert twin_of(_Sample) is None and twin_of(model.Address) is None
    made: Any = object.__new__(twin)
    for name, value in zip("abcdef", ("x", 5, 2, 3, 4, ["y"]), strict=True):
        setattr(made, name, value)
    made.__class__ = _Wide
    assert made == _Wide("x", 5, f=["y"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.b = 6


def test_every_record_of_the_core_is_made_fast_and_as_the_dataclass_makes_it() -> None:
    """Each frozen record of ``core.model`` and ``core.messages`` has ``fast_init``'s
    ``__init__``; a mail, a status update and a dispatch come out the same either way."""
    assert RECORDS and all(hasattr(cls.__dict__["__init__"], "__wrapped__") for cls in RECORDS)
    sender = model.Address("noreply@example.com", "Shop")
    mail: dict[str, Any] = dict(
        id="01JZ0000000000000000000000",
        sender=sender,
        to=(model.Address("ann@example.com"),),
        subject="Hi",
        text="Hello",
        created_at=1.5,
        tags=("a",),
    )
    attempt = model.Attempt("sendgrid", 0, 2.0, model.Outcome.ACCEPTED, message_id="m1")
    cases: list[tuple[type, dict[str, Any]]] = [
        (model.Mail, mail),
        (
            messages.StatusUpdate,
            {"mail_id": "m", "status": model.Status.SENT, "at": 2.0, "attempt": attempt},
        ),
        (messages.Dispatch, {"mail_id": "m", "accepted_at": 1.0, "chain": ("sendgrid",)}),
    ]
    for cls, kwargs in cases:
        made, theirs = _both(cls, **kwargs)
        assert made == theirs and hash(made) == hash(theirs)


@pytest.mark.parametrize(
    "options",
    [
        {"frozen": False, "slots": True},
        {"frozen": True, "slots": False},
        {"frozen": True, "slots": True, "kw_only": True},
    ],
)
def test_a_class_it_cannot_stand_for_is_refused(options: dict[str, bool]) -> None:
    """Not frozen, without slots, or with fields only by name: refused when made."""
    with pytest.raises(TypeError):

        @fast_init
        @dataclass(**options)
        class _Other:
            name: str


@dataclass(frozen=True, slots=True)
class _PostInit:
    name: str

    def __post_init__(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _NotGiven:
    name: str
    upper: str = field(init=False, default="")


@dataclass(frozen=True, slots=True)
class _Clash:
    set0: str


@pytest.mark.parametrize(
    ("shape", "why"),
    [
        (_PostInit, "__post_init__"),
        (_NotGiven, "more or less than its fields"),
        (_Clash, "named like"),
    ],
)
def test_a_record_whose_init_is_more_than_setting_its_fields_is_refused(
    shape: type, why: str
) -> None:
    """A ``__post_init__`` or a field not given to ``__init__`` would be skipped, and a
    field named ``set0`` would hide the setter the made ``__init__`` calls: refused."""
    with pytest.raises(TypeError, match=why):
        fast_init(shape)

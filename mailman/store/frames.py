"""What crosses a SQLite writer process's socket: length-prefixed pickles.

The event loop sends each turn's calls as one frame and reads their outcomes
back as one; the writer process does the reverse. A frame is its length (8
bytes, big-endian: a batch of 500 large mails may pass 4 GiB), then a pickle;
a frame of calls starts with their number (4 bytes), so that the writer can
answer each even when it cannot read them.

The records that cross it most (mails, their attempts, the sender's ``Begun``,
status updates) are frozen slotted dataclasses, which the standard pickle
takes apart and rebuilds with dataclasses' Python-level ``__getstate__`` and
``__setstate__``: measured, half of what the pickling cost the event loop. Here
a frozen dataclass goes as its class and its fields' values (rebuilt by
calling the class); everything else as pickle does it. ``pickle.loads`` reads either.
"""

from __future__ import annotations

import copyreg
import dataclasses
import enum
import io
import operator
import pickle
from collections.abc import Callable
from typing import Any

#: A frame's length: 8 bytes, big-endian.
LENGTH = 8
#: A frame of calls starts with their number: 4 bytes, big-endian.
COUNT = 4

Reducer = Callable[[Any], Any]


class _Reducers(dict[type, Reducer]):
    """The pickler's dispatch table: a reducer chosen on first sight of each class:
    copyreg's, a frozen dataclass's or an enum member's as said above, or what pickle
    itself would do (so that each class is looked at once)."""

    def __missing__(self, cls: type) -> Reducer:
        reducer = (
            copyreg.dispatch_table.get(cls)  # registered by now, if at all
            or _by_fields(cls)
            or _by_value(cls)
            or _as_pickle_does(cls)
        )
        self[cls] = reducer
        return reducer


def _by_fields(cls: type) -> Reducer | None:
    """A frozen dataclass of its own (not a subclass that may add attributes), every
    field given to ``__init__``, no ``__post_init__`` to run twice and no reduction of
    its own: its class and its fields' values, rebuilt by calling the class."""
    params = cls.__dict__.get("__dataclass_params__")
    if params is None or not params.frozen or hasattr(cls, "__post_init__"):
        return None
    if "__reduce__" in cls.__dict__ or "__reduce_ex__" in cls.__dict__:
        return None
    fields = dataclasses.fields(cls)
    if not fields or not all(f.init for f in fields):
        return None
    get = operator.attrgetter(*(f.name for f in fields))
    if len(fields) == 1:
        return lambda record: (cls, (get(record),))
    return lambda record: (cls, get(record))


def _by_value(cls: type) -> Reducer | None:
    """An enum member, as ``Enum.__reduce_ex__`` gives it (without a Python method's
    lookup and call); not for an enum with a reduction of its own."""
    if not issubclass(cls, enum.Enum) or cls.__reduce_ex__ is not enum.Enum.__reduce_ex__:
        return None
    return lambda member: (cls, (member._value_,))


def _as_pickle_does(cls: type) -> Reducer:
    """A class with a metaclass (an enum's, an ABC) by its name, as pickle saves any
    class; any other object by its ``__reduce_ex__``."""
    if issubclass(cls, type):
        return lambda kind: kind.__qualname__
    return lambda value: value.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


class _Pickler(pickle.Pickler):
    dispatch_table = _Reducers()


def dumps(value: Any) -> bytes:
    """``value`` pickled (the highest protocol), records by their fields."""
    buffer = io.BytesIO()
    _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def frame(value: Any) -> bytes:
    """``value`` as one frame."""
    data = dumps(value)
    return len(data).to_bytes(LENGTH, "big") + data


def calls_frame(calls: list[Any]) -> bytes:
    """A batch of calls: how many (so that the writer process can answer each, even if
    it cannot read them), then their pickle."""
    data = dumps(calls)
    return (COUNT + len(data)).to_bytes(LENGTH, "big") + len(calls).to_bytes(COUNT, "big") + data


def count_of(frame: bytes) -> int:
    """How many calls a frame of ``calls_frame`` holds (readable when they are not)."""
    return int.from_bytes(frame[:COUNT], "big")


def calls_of(frame: bytes) -> Any:
    """The calls of a frame of ``calls_frame``: raises what unpickling them raised."""
    return pickle.loads(memoryview(frame)[COUNT:])


def split(buffer: bytearray) -> list[bytes]:
    """The whole frames at the start of ``buffer``, taken out of it (a partial one stays)."""
    frames = []
    while len(buffer) >= LENGTH:
        size = int.from_bytes(buffer[:LENGTH], "big")
        if len(buffer) < LENGTH + size:
            break
        frames.append(bytes(buffer[LENGTH : LENGTH + size]))
        del buffer[: LENGTH + size]
    return frames

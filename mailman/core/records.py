"""Frozen records made fast: ``fast_init`` gives a frozen dataclass with slots an
``__init__`` that sets each field through its slot.

A frozen dataclass's own ``__init__`` sets each field with ``object.__setattr__``
(its ``__setattr__`` refuses): a global, an attribute, a call and a look-up of the
field's name in the class, for every field of every record made. The slot's own
setter (its member descriptor's ``__set__``) is one call and no look-up, and it
does not go through ``__setattr__`` either. Counted by callgrind
(``python -m bench.instructions``): an accept on the event loop 837,356 →
799,892 instructions with ``Mail`` and ``Address`` made this way
(``docs/performance.md``, "Records made fast").

Still, a setter is a call through a method wrapper, about 700 instructions a field.
A record of ``TWIN_FIELDS`` fields or more is made through its twin: a class with the
same slots and no ``__setattr__`` of its own, so that each field is a plain store the
interpreter caches (about 80 instructions); the object is the twin's only while its
fields are stored, and its own class again before ``__init__`` returns (``__class__``
changed twice: the two classes' layouts are checked the same when the twin is made).
``Mail`` (22 fields) 23,600 → 14,500 instructions; an accept on the loop 715,847 →
702,172 (one connection).

Only where the dataclass's ``__init__`` does nothing else: frozen, with slots, every
field given to it by position or name (no ``kw_only``, ``init=False`` or
``InitVar``), no ``__post_init__``. Anything else is refused when the class is made.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


def slot_setters(cls: type) -> list[Callable[[Any, Any], None]] | None:
    """The setters of ``cls``'s fields' slots, in field order, where making a ``cls`` is
    only setting them (what ``fast_init`` stands for); None otherwise."""
    return None if _unfit(cls) else [cls.__dict__[f.name].__set__ for f in dataclasses.fields(cls)]


def twin_of(cls: type) -> type | None:
    """The twin ``fast_init`` makes a ``cls`` through (its slots, no ``__setattr__``):
    an object made a twin, its fields stored and then made a ``cls``
    (``obj.__class__ = cls``) is the ``cls`` its ``__init__`` would make. None where
    making a ``cls`` is more than setting its fields, or where it has fewer than
    ``TWIN_FIELDS`` (its slots' setters are then cheaper)."""
    if _unfit(cls) or len(dataclasses.fields(cls)) < TWIN_FIELDS:
        return None
    return _twin(cls)


def _unfit(cls: type) -> str | None:
    """Why a ``cls`` is more than its fields' slots set from its ``__init__``'s
    parameters; None if it is not."""
    params = cls.__dict__.get("__dataclass_params__")
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        return "is not a frozen dataclass with slots"
    if hasattr(cls, "__post_init__"):
        return "has a __post_init__"
    fields = dataclasses.fields(cls)
    given = list(inspect.signature(cls.__dict__["__init__"]).parameters.values())[1:]
    plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
    if [p.name for p in given] != [f.name for f in fields] or any(p.kind != plain for p in given):
        return "takes more or less than its fields in its __init__"
    for f in fields:
        if not isinstance(cls.__dict__.get(f.name), types.MemberDescriptorType):
            return f"has a field that is not a slot of its own class ({f.name})"
    return None


def fast_init(cls: T) -> T:
    """``cls`` (a frozen dataclass with slots) with an ``__init__`` that sets its slots:
    the same parameters, defaults and default factories as the dataclass's own, which
    stays as ``__init__.__wrapped__``. ``TypeError`` for a class it cannot stand for."""
    reason = _unfit(cls)
    if reason is not None:
        raise TypeError(f"{cls.__qualname__} {reason}")
    fields = dataclasses.fields(cls)
    original = cls.__dict__["__init__"]
    twin = twin_of(cls)
    env: dict[str, Any] = {
        "_FACTORY": _FACTORY,
        "_CLS": cls,
        "_TWIN": twin,
        "_SET_CLASS": object.__setattr__,
    }
    params_code, factories, stores, sets = [], [], [], []
    for i, f in enumerate(fields):
        env[f"set{i}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            env[f"default{i}"] = f.default
            params_code.append(f"{f.name}=default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            env[f"factory{i}"] = f.default_factory
            params_code.append(f"{f.name}=_FACTORY")
            factories.append(f"    if {f.name} is _FACTORY:\n        {f.name} = factory{i}()")
        else:
            params_code.append(f.name)
        stores.append(f"            self.{f.name} = {f.name}")
        sets.append(f"    set{i}(self, {f.name})")
    if not env.keys().isdisjoint(f.name for f in fields):  # a parameter would hide it
        raise TypeError(f"{cls.__qualname__} has a field named like a name of its __init__")
    if twin is None:
        body = [*factories, *sets]
    else:  # at least TWIN_FIELDS stores and setters
        body = [
            *factories,
            # The fields stored as the twin's (plain stores, cached by the interpreter), then
            # the object made a ``cls`` again; a subclass's object through the setters.
            "    if type(self) is _CLS:",
            "        _SET_CLASS(self, '__class__', _TWIN)",
            "        try:",
            *stores,
            "        finally:",
            "            self.__class__ = _CLS",
            "    else:",
            *(f"    {line}" for line in sets),
        ]
    source = f"def __init__(self, {', '.join(params_code)}):\n" + "\n".join(body or ["    pass"])
    # Made of the class's own field names (identifiers, checked by dataclasses), once.
    exec(source, env)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = original.__doc__
    init.__wrapped__ = original
    type.__setattr__(cls, "__init__", init)
    return cls


#: From this many fields a record is made through its twin (two ``__class__`` changes,
#: about 2,500 instructions, then about 80 a field) rather than its slots' setters (about
#: 700 a field): counted by callgrind on Python 3.11.
TWIN_FIELDS = 6


@functools.cache
def _twin(cls: type) -> type:
    """A class with ``cls``'s slots and nothing else (no ``__setattr__`` that refuses): an
    object of either can be made the other (``__class__``), and a field stored as the
    twin's is the ``cls``'s. ``TypeError`` if their layouts differ."""
    twin = type(f"{cls.__name__}Fields", (), {"__slots__": cls.__dict__["__slots__"]})
    twin.__qualname__ = f"{cls.__qualname__}.<fields>"
    twin.__module__ = cls.__module__
    probe: Any = object.__new__(twin)
    probe.__class__ = cls  # raises TypeError where the layouts differ
    return twin


class _Factory:
    """The default of a parameter whose field has a ``default_factory``."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()

"""How a setting is declared: once, as a dataclass field.

``setting(default, env=..., flag=..., help=...)`` is a ``dataclasses.field``
whose metadata holds a ``Setting``: its environment variable, its flag, its
parser and bounds, its one-line help and its docs line. ``walk(Config)``
yields every declared setting, nested configs included, with its attribute
path (``breaker.fail_max``). Reading (``Setting.read``), ``--help`` and the
docs table all come from these declarations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar, overload

from . import parse as parsers

T = TypeVar("T")

#: A setting's parser (``parse``): the raw text (from its flag or its environment
#: variable) to its value, or ``ConfigError`` with a message that names the setting.
Parse = parsers.Parse


def by_load(raw: str, setting: parsers.Bounds) -> Any:
    """The parser of a setting that ``load`` reads with its own code (it needs more
    than one variable, e.g. the provider chain, with the settings of each provider);
    never called."""
    raise AssertionError(f"{setting.name} is read by load's own code")


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: where its value comes from, how it is parsed, what it means."""

    #: One line for ``--help``.
    help: str
    parse: Parse
    #: Its attribute path in ``Config`` (``breaker.fail_max``); set by ``walk``.
    path: str = ""
    default: Any = None
    env: str | None = None
    flag: str | None = None
    #: The docs' meaning (Markdown); ``help`` when empty.
    doc: str = ""
    #: Bounds, as written (messages quote them: ``1``, not ``1.0``).
    minimum: float = 0
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    #: The name error messages give it, when not the one ``name`` picks.
    label: str = ""
    #: The text an unset setting stands for, when that is not ``default``'s text.
    unset: str | None = None
    #: A word on the default ("16 MiB", "off"), in help and docs.
    note: str = ""
    #: Not in ``--help`` or the docs (internal flags).
    hidden: bool = False
    #: The path of the setting whose own code reads this one: ``providers`` for each
    #: provider's settings, which ``MAILMAN_PROVIDERS`` reads when it names the provider.
    owner: str = ""

    @property
    def name(self) -> str:
        """The name error messages use: ``label``, else a flag that takes a value, else the
        environment variable (a flag without a value cannot be wrong; its twin can)."""
        if self.label:
            return self.label
        if self.flag is not None and not isinstance(self.default, bool):
            return self.flag
        return self.env or self.flag or self.path

    @property
    def dest(self) -> str:
        """Its attribute in an ``argparse.Namespace``."""
        return self.path.replace(".", "_")

    @property
    def meaning(self) -> str:
        return self.doc or self.help

    @property
    def shown(self) -> str:
        """The default as text ('' for none)."""
        return self.unset if self.unset is not None else render(self.default)

    def raw(self, given: str | None, env: Mapping[str, str]) -> str | None:
        """The text to parse: ``given`` (its flag's value) wins over its environment
        variable, which wins over ``unset``; None: the default."""
        if given is not None:
            return given
        if self.env is not None and (value := env.get(self.env)) is not None:
            return value
        return self.unset

    def read(self, given: str | None, env: Mapping[str, str]) -> Any:
        """Its value: parsed from ``raw``, or the default."""
        raw = self.raw(given, env)
        return self.default if raw is None else self.parse(raw, self)

    def read_args(self, args: object, env: Mapping[str, str]) -> Any:
        """Its value, from parsed flags (an ``argparse.Namespace``; its flag's value, if
        there, is at ``dest``) and ``env``."""
        return self.read(getattr(args, self.dest, None), env)


def render(value: object) -> str:
    """A default as ``--help`` and the docs show it: ``30`` not ``30.0``, ``all`` not
    ``('all',)``, '' for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(render(item) for item in value)
    return str(value)


_KEY = "mailman.setting"


@overload
def setting(default: T, *, help: str, parse: Parse | None = None, **spec: Any) -> T: ...
@overload
def setting(*, help: str, parse: Parse, **spec: Any) -> Any: ...
def setting(default: Any = MISSING, *, help: str, parse: Parse | None = None, **spec: Any) -> Any:
    """A dataclass field declaring a setting (``spec``: the other ``Setting`` fields).

    Without ``parse``, the default's type says: bool, int, float or str. Without a
    default the field is required and the setting's default is None.
    """
    if parse is None:
        parse = _parser_for(default)
    declared = Setting(help=help, parse=parse, default=None if default is MISSING else default)
    declared = replace(declared, **spec)
    if default is MISSING:
        return field(metadata={_KEY: declared})
    return field(default=default, metadata={_KEY: declared})


def _parser_for(default: object) -> Parse:
    by_type: tuple[tuple[type, Parse], ...] = (
        (bool, parsers.boolean),
        (int, parsers.integer),
        (float, parsers.number),
        (str, parsers.text),
    )
    for kind, parser in by_type:
        if isinstance(default, kind):
            return parser
    raise TypeError(f"setting({default!r}) needs parse=: its type says nothing")


def walk(cls: type, prefix: str = "", owner: str = "") -> Iterator[Setting]:
    """Every setting ``cls`` declares, in field order, with its path (``prefix`` and
    the field's name) and ``owner``; a nested config (a field whose default is a
    dataclass) is walked in place."""
    for f in fields(cls):
        found = f.metadata.get(_KEY)
        if isinstance(found, Setting):
            yield replace(found, path=prefix + f.name, owner=owner)
        elif is_dataclass(f.default):
            yield from walk(type(f.default), f"{prefix}{f.name}.", owner)


def build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """An instance of ``cls`` with ``values`` (by path) for its settings and nested
    configs; a field without a value keeps its default."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        path = prefix + f.name
        if path in values:
            kwargs[f.name] = values[path]
        elif f.metadata.get(_KEY) is None and is_dataclass(f.default):
            kwargs[f.name] = build(type(f.default), values, f"{path}.")
    return cls(**kwargs)

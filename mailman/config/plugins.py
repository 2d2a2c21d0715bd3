"""Providers as plugins: the entry point group ``mailman.providers``.

A provider is a package that names a ``ProviderPlugin`` in its metadata::

    [project.entry-points."mailman.providers"]
    acme = "acme_mailman:plugin"

The plugin carries the provider's name in the chain (the entry point's name),
the frozen dataclass of its settings (each field a ``setting(...)``: its
environment variable, flag, help and docs line, read and documented like
every other setting), a ``configure`` step that checks them, and the factory
of its client (a ``mailman.providers.ProviderClient``). Mailman's own
providers come through the same door, named in its own ``pyproject.toml``.

Plugins are found once, the first time the settings are needed
(``installed``), never while ``mailman.config`` itself is being imported: a
plugin imports ``mailman.config`` to declare its settings. A plugin that
cannot be loaded, or that clashes with a setting or another plugin, is kept
as ``broken`` with the reason: naming it in the chain is a configuration
error that says why, and the service warns about it at start.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

S = TypeVar("S")

#: The entry point group providers register under.
GROUP = "mailman.providers"
#: A provider's name: what ``MAILMAN_PROVIDERS`` and the attempt history say. At most
#: 16 characters: ``mailman_failovers_total`` keeps it in a VARCHAR(16) on MySQL.
NAME = re.compile(r"[a-z][a-z0-9-]{0,15}")


def as_read(settings: S, env: Mapping[str, str]) -> S | None:
    """The default ``configure``: the settings as read; the provider is always there."""
    return settings


@dataclass(frozen=True, slots=True)
class ProviderPlugin(Generic[S]):
    """One provider, as an entry point of the group ``mailman.providers`` names it."""

    #: Its name in the chain (``MAILMAN_PROVIDERS``), logs, metrics and attempt history.
    name: str
    #: A frozen dataclass whose fields are ``mailman.config.setting(...)`` declarations
    #: (other fields need a default). Read from flags and environment variables.
    settings: type[S]
    #: ``(settings, timeout)`` to its ``mailman.providers.ProviderClient``; ``timeout``
    #: is ``MAILMAN_PROVIDER_TIMEOUT``, the seconds one call may take.
    client: Callable[[S, float], Any]
    #: ``(settings as read, environment)`` to the settings to use; None when the
    #: provider is not configured (no key: left out of the chain with a warning).
    #: Raises ``ConfigError`` for values that cannot work.
    configure: Callable[[S, Mapping[str, str]], S | None] = as_read
    #: One line for the docs and ``--help``: what it is.
    summary: str = ""


@dataclass(frozen=True, slots=True)
class ConfiguredProvider:
    """A provider of the chain: its plugin and its checked settings."""

    name: str
    settings: Any = field(compare=True)
    plugin: ProviderPlugin[Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Plugins:
    """The providers found: usable ones by name (sorted), broken ones with the reason."""

    usable: Mapping[str, ProviderPlugin[Any]]
    broken: Mapping[str, str]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.usable)


def discover(
    entry_points: Iterable[importlib.metadata.EntryPoint],
    taken: Callable[[str], bool] = lambda key: False,
) -> Plugins:
    """The plugins ``entry_points`` name. ``taken(key)``: whether an environment
    variable or flag (``key``) already belongs to another setting."""
    usable: dict[str, ProviderPlugin[Any]] = {}
    broken: dict[str, str] = {}
    values: dict[str, str] = {}
    for ep in entry_points:
        if values.get(ep.name) == ep.value:
            continue  # the same distribution found twice on the path
        if ep.name in values:
            broken[ep.name] = f"named by two plugins: {values[ep.name]} and {ep.value}"
            usable.pop(ep.name, None)
            continue
        values[ep.name] = ep.value
        try:
            usable[ep.name] = _checked(ep)
        except Exception as exc:  # a third party's import may raise anything
            broken[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
    claimed: dict[str, str] = {}
    for name in sorted(usable):
        try:
            clash = _clash(usable[name], taken, claimed)
        except Exception as exc:  # settings that are no declarations
            clash = f"its settings: {type(exc).__name__}: {exc}"
        if clash is not None:
            broken[name] = clash
            del usable[name]
    return Plugins({n: usable[n] for n in sorted(usable)}, broken)


def _checked(ep: importlib.metadata.EntryPoint) -> ProviderPlugin[Any]:
    if not NAME.fullmatch(ep.name):
        raise ValueError(
            f"provider name {ep.name!r}: at most 16 lower-case letters, digits and -, "
            "starting with a letter"
        )
    plugin = ep.load()
    if not isinstance(plugin, ProviderPlugin):
        raise TypeError(f"{ep.value} is a {type(plugin).__name__}, not a ProviderPlugin")
    if plugin.name != ep.name:
        raise ValueError(f"the plugin calls itself {plugin.name!r}, its entry point {ep.name!r}")
    if not dataclasses.is_dataclass(plugin.settings):
        raise TypeError(f"its settings ({plugin.settings!r}) are not a dataclass")
    return plugin


def _clash(
    plugin: ProviderPlugin[Any], taken: Callable[[str], bool], claimed: dict[str, str]
) -> str | None:
    """Why ``plugin`` cannot be used beside the settings and the plugins before it."""
    from .declare import walk  # declare does not import this module; keep it that way

    keys = [key for s in walk(plugin.settings) for key in (s.env, s.flag) if key is not None]
    for key in keys:
        if taken(key):
            return f"its setting {key} is already one of Mailman's"
        if key in claimed:
            return f"its setting {key} is already the {claimed[key]} provider's"
    claimed.update(dict.fromkeys(keys, plugin.name))
    return None


@functools.cache
def installed(taken: frozenset[str]) -> Plugins:
    """The plugins installed in this environment (found once per process); ``taken``:
    the environment variables and flags of Mailman's own settings."""
    return discover(importlib.metadata.entry_points(group=GROUP), taken.__contains__)


def required(attribute: str) -> Callable[[S, Mapping[str, str]], S | None]:
    """A ``configure`` that leaves the provider out while its ``attribute`` (a key,
    a token, a URL) is not set."""

    def configure(settings: S, env: Mapping[str, str]) -> S | None:
        return None if getattr(settings, attribute) is None else settings

    return configure

"""Mailman: transactional mail through several providers behind one API.

The public surface is small: ``Config`` and ``load`` (``mailman.config``),
``embedded`` and ``Mailman`` (the whole system in your event loop), and
``main`` (the ``mailman`` command). Everything else lives in the packages
beside them: ``mailman.actors``, ``mailman.routes``, ``mailman.config``.

The names are imported when first used, so a process that needs one part (the
SQLite writer process imports ``mailman.store``) does not load all of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailman.cli import main
    from mailman.config import Config, load
    from mailman.system import Mailman, embedded

#: Each public name and the module it comes from.
_FROM = {
    "main": "mailman.cli",
    "Config": "mailman.config",
    "load": "mailman.config",
    "Mailman": "mailman.system",
    "embedded": "mailman.system",
}


def __getattr__(name: str) -> Any:
    module = _FROM.get(name)
    if module is None:
        raise AttributeError(f"module 'mailman' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["Config", "Mailman", "embedded", "load", "main"]

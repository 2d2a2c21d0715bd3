"""Mailman: transactional mail through several providers behind one API.

The public surface is small: ``Config`` and ``load`` (``mailman.config``),
``embedded`` and ``Mailman`` (the whole system in your event loop), and
``main`` (the ``mailman`` command). Everything else lives in the packages
beside them: ``mailman.actors``, ``mailman.routes``, ``mailman.config``.
"""

from __future__ import annotations

from mailman.cli import main
from mailman.config import Config, load
from mailman.system import Mailman, embedded

__all__ = ["Config", "Mailman", "embedded", "load", "main"]

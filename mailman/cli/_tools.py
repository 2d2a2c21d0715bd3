"""What the command-line tools beside the service (``mailman keys``, ``mailman
dead-letters``, ``mailman erase``) share: the ``--store`` flag, open the service's
store, run, turn errors into exit codes.

Every tool takes ``--store`` the same way (``store_flags``): the service's
setting (``MAILMAN_STORE`` when not given, then its default), before or after
the tool's action. A tool works on the service's store, so it never creates one:
a SQLite file that does not exist is refused (exit 2) rather than made empty.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TextIO

from mailman.config import SETTINGS, check_store_url, redact_url
from mailman.config.flags import add_flag


def add_store_flag(
    parser: argparse.ArgumentParser, env: Mapping[str, str], *, default: Any = None
) -> None:
    """``--store``: the service's setting (its variable, its default), its help showing the
    store in effect, password masked. ``default``: as ``flags.add_flag``'s."""
    store = SETTINGS["store"]
    now = redact_url(store.read(None, env))
    add_flag(parser, store, help="store URL, as the service's", now=now, default=default)


def store_flags(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> argparse.ArgumentParser:
    """``--store`` on a tool's parser, and a parent for each of its actions' parsers
    (``add_parser(..., parents=[...])``) so that the flag may stand before or after the
    action; given after, it is not reset by the action's own default."""
    add_store_flag(parser, env)
    after = argparse.ArgumentParser(add_help=False)
    add_store_flag(after, env, default=argparse.SUPPRESS)
    return after


def missing_sqlite_file(store: str) -> str | None:
    """The path of the SQLite file ``store`` names if that file does not exist; None for
    one that does, for an in-memory database and for any other kind of store."""
    scheme, _, rest = store.partition("://")
    if scheme != "sqlite":
        return None
    path = rest[1:] if rest.startswith("/") else rest
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return None if Path(path).exists() else path


def run_store_tool(
    prog: str,
    store: str,
    run: Callable[[], Coroutine[Any, Any, int]],
    err: TextIO,
) -> int:
    """``run()``'s exit code; 2 for a bad ``store`` URL, a SQLite file that does not
    exist or a ``ValueError`` (bad usage), 1 when the store failed. Errors show their
    type and message only: store errors never carry the password (see the stores)."""
    try:
        check_store_url(store)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=err)
        return 2
    missing = missing_sqlite_file(store)
    if missing is not None:
        print(
            f"{prog}: no store at {missing}: give the service's --store (or MAILMAN_STORE); "
            "`mailman serve` creates it on its first start",
            file=err,
        )
        return 2
    try:
        return asyncio.run(run())
    except ValueError as exc:
        print(f"{prog}: {exc}", file=err)
        return 2
    except Exception as exc:
        print(f"{prog}: the store failed: {type(exc).__name__}: {exc}", file=err)
        return 1

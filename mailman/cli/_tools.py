"""What the command-line tools beside the service (``mailman keys``, ``mailman
dead-letters``, ``mailman erase``) share: open the service's store, run, turn errors
into exit codes."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine, Mapping
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


def run_store_tool(
    prog: str,
    store: str,
    run: Callable[[], Coroutine[Any, Any, int]],
    err: TextIO,
) -> int:
    """``run()``'s exit code; 2 for a bad ``store`` URL or a ``ValueError`` (bad usage),
    1 when the store failed. Errors show their type and message only: store errors
    never carry the password (see the stores)."""
    try:
        check_store_url(store)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=err)
        return 2
    try:
        return asyncio.run(run())
    except ValueError as exc:
        print(f"{prog}: {exc}", file=err)
        return 2
    except Exception as exc:
        print(f"{prog}: the store failed: {type(exc).__name__}: {exc}", file=err)
        return 1

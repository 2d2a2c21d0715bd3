"""What the command-line tools beside the service (``mailman keys``, ``mailman
dead-letters``) share: open the service's store, run, turn errors into exit codes."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

from mailman.config import check_store_url


def run_store_tool(
    prog: str,
    args: argparse.Namespace,
    run: Callable[[], Coroutine[Any, Any, int]],
    err: TextIO,
) -> int:
    """``run()``'s exit code; 2 for a bad ``args.store`` or a ``ValueError`` (bad usage),
    1 when the store failed. Errors show their type and message only: store errors
    never carry the password (see the stores)."""
    try:
        check_store_url(args.store)
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

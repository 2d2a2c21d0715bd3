"""Mailman's command line: ``mailman [serve] [flags]``, ``mailman keys ...``,
``mailman tenants ...``, ``mailman suppressions ...``,
``mailman dead-letters ...``, ``mailman erase ...``, ``mailman --version`` (or
``python -m mailman ...``).

Thin on purpose: one parser (``parser``) picks the command, the command reads
its configuration once, runs, and returns its exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

import structlog

from mailman.config.logging import configure_logging

from . import dead_letters, erase, keys, serve, suppressions, tenants
from .command import Call, Command
from .parser import build_parser, with_command

#: Every command; the first is the default.
COMMANDS: tuple[Command, ...] = (
    serve.COMMAND,
    keys.COMMAND,
    tenants.COMMAND,
    suppressions.COMMAND,
    dead_letters.COMMAND,
    erase.COMMAND,
)


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the command ``argv`` names (``sys.argv``'s by default) with ``env``
    (``os.environ``'s); its exit code. ``--help``, ``--version`` and bad usage exit
    through ``SystemExit``, as argparse does."""
    call = Call(
        argv=with_command(sys.argv[1:] if argv is None else argv, COMMANDS),
        env=os.environ if env is None else env,
        out=out or sys.stdout,
        err=err or sys.stderr,
    )
    args = build_parser(COMMANDS, call.env).parse_args(list(call.argv))
    command = next(c for c in COMMANDS if c.name == args.command)
    try:
        return command.run(args, call)
    except Exception as exc:  # one JSON line with the traceback inside, not raw text
        if not structlog.is_configured():
            configure_logging("info", call.env.get("MAILMAN_LOG_FORMAT", "auto"), cache=False)
        structlog.get_logger("mailman").error("mailman.crashed", exc_info=exc)
        return 1

"""Mailman's command line: ``mailman [serve] [flags]``, ``mailman keys ...``,
``mailman dead-letters ...`` (or ``python -m mailman ...``).

Thin on purpose: pick the command, read the configuration once, set up
logging, run it, return its exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import structlog

from mailman.config import ConfigError, load
from mailman.config.logging import configure_logging

from .dead_letters import dead_letters_main
from .keys import keys_main
from .serve import run, serve

log = structlog.get_logger("mailman")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = os.environ
    if argv[:1] == ["keys"]:
        return keys_main(argv[1:], env)
    if argv[:1] == ["dead-letters"]:
        return dead_letters_main(argv[1:], env)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    try:
        config = load(argv, env)
    except ConfigError as exc:
        print(f"mailman: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    try:
        return run(serve(config, argv, env), config.event_loop)
    except ConfigError as exc:
        log.error("config.invalid", detail=str(exc))
        return 2

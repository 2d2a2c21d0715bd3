"""Logging, configured in one place: structlog events, JSON unless on a terminal.

Context (``mail_id``, ``provider``, ``attempt``, ``request_id``) is bound with
contextvars by the code that knows it. A last processor masks any value whose
key looks like a secret, so a key or password passed by mistake never
reaches the output.

Libraries (aiohttp, asyncio, aiokafka...) log through the standard library;
their records go through ``structlog.stdlib.ProcessorFormatter`` and the same
processors, so every line of the output has the same shape: one JSON object
with ``event``, ``level``, ``logger`` and ``timestamp``, a traceback (if any)
as one string field ``exception``, never raw multi-line text.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

SECRET_MARKERS = ("key", "password", "passwd", "secret", "token", "authorization", "auth")
MASK = "********"

#: The ``logger`` of an event logged with a bare ``structlog.get_logger()``.
DEFAULT_LOGGER_NAME = "mailman"


def mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of every secret-looking key with a mask."""
    for key in list(event):
        lowered = key.lower()
        if any(m in lowered for m in SECRET_MARKERS) and lowered != "event":
            event[key] = MASK
    return event


class NamedPrintLogger(structlog.PrintLogger):
    """structlog's print logger, knowing the name it was asked for (for the ``logger`` field)."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class NamedPrintLoggerFactory:
    """``structlog.get_logger("mailman.http")`` → a print logger named ``mailman.http``."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> NamedPrintLogger:
        name = args[0] if args and isinstance(args[0], str) else DEFAULT_LOGGER_NAME
        return NamedPrintLogger(self._file, name)


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    cache: bool = True,
) -> None:
    """Set up structlog (and stdlib logging, for libraries) for the whole process.

    ``cache=False`` lets a later call (a test's) redirect loggers already used:
    structlog binds a cached logger to the stream of the configuration it first saw.
    """
    out = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_secrets,
    ]
    renderer: Any
    if as_json:
        # Tracebacks and stacks become string fields of the one JSON line.
        shared += [structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info]
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=NamedPrintLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )
    # Libraries log through the standard library: keep only their warnings and
    # errors, rendered by the same processors into the same stream. ``extra``
    # fields of a record become fields of the line (and are masked like ours).
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    # Python's own warnings (RuntimeWarning...) as log lines too, not raw text.
    logging.captureWarnings(True)

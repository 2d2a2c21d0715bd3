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

Our JSON pipeline runs on the request path, so it is lean: few processors,
a ``timestamp`` that is a ``datetime`` orjson writes as ISO 8601 (``...Z``),
field names known not to be secret remembered, orjson's bytes written straight
to the stream's binary buffer when it has one, and module loggers
(``get_logger``) that are the bound logger itself once caching is on.
``python -m bench.logcost`` measures what a line costs.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import functools
import logging
import sys
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

SECRET_MARKERS = ("key", "password", "passwd", "secret", "token", "authorization", "auth")
MASK = "********"

#: The ``logger`` of an event logged with a bare ``structlog.get_logger()``.
DEFAULT_LOGGER_NAME = "mailman"

#: ``timestamp`` as ``2025-01-02T03:04:05.678901Z``, like ``TimeStamper(fmt="iso", utc=True)``.
_ORJSON_OPTIONS = orjson.OPT_UTC_Z
#: Field names seen and found not secret (bounded: names are a small, fixed set).
_NOT_SECRET: set[str] = set()
_NOT_SECRET_LIMIT = 4096
#: ``level`` of a method whose name is not a level (as ``add_log_level`` maps them).
_LEVEL_OF = {"warn": "warning", "exception": "error"}


@functools.lru_cache(maxsize=_NOT_SECRET_LIMIT)
def _is_secret(key: str) -> bool:
    """Whether a field named ``key`` may hold a secret."""
    lowered = str(key).lower()
    return lowered != "event" and any(m in lowered for m in SECRET_MARKERS)


def mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of every secret-looking key with a mask."""
    if _NOT_SECRET.issuperset(event):  # the usual line: only names seen before
        return event
    for key in event:
        if _is_secret(key):
            event[key] = MASK  # a value changes, not the keys: safe while iterating
        elif len(_NOT_SECRET) < _NOT_SECRET_LIMIT:
            _NOT_SECRET.add(key)
    return event


def add_timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``timestamp``: now, in UTC, as a ``datetime`` the JSON renderer writes in ISO 8601.

    Several times cheaper than formatting it here (``TimeStamper(fmt="iso")``).
    """
    event["timestamp"] = datetime.now(UTC)
    return event


def add_level_logger_timestamp(
    logger: Any, method_name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``add_log_level``, ``add_logger_name`` and ``add_timestamp`` in one processor.

    For our own loggers only (their ``name`` is the logger's); stdlib records go
    through structlog's processors, which read the record.
    """
    event["level"] = _LEVEL_OF.get(method_name, method_name)
    event["logger"] = logger.name
    event["timestamp"] = datetime.now(UTC)
    return event


_render_stack = structlog.processors.StackInfoRenderer()


def render_exception(
    logger: Any, method_name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``StackInfoRenderer`` and ``format_exc_info``, run only when the line asks for them."""
    if "exc_info" in event or "stack_info" in event:
        event = _render_stack(logger, method_name, event)
        event = structlog.processors.format_exc_info(logger, method_name, event)
    return event


def _plain(value: Any) -> Any:
    """``value`` if orjson surely writes it, else its ``repr``."""
    if isinstance(value, str | float | datetime | None):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    return repr(value)


def _dumps(event: MutableMapping[str, Any]) -> bytes:
    """The event as one JSON object; values orjson cannot write become their ``repr``."""
    try:
        return orjson.dumps(event, default=repr, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: a key that is no str, an int beyond 64 bits...
        plain = {str(k): _plain(v) for k, v in event.items()}
        return orjson.dumps(plain, default=repr, option=_ORJSON_OPTIONS)


def render_json_bytes(_: Any, __: str, event: MutableMapping[str, Any]) -> bytes:
    """The last processor of the JSON pipeline, for a bytes logger."""
    return _dumps(event)


def render_json_str(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    """The same line as a str (stdlib handlers, and text streams without a binary buffer)."""
    return _dumps(event).decode()


class CachedLogger:
    """A module's logger: ``log = get_logger("mailman.http")`` at import time.

    structlog's lazy proxy resolves ``log.info`` through ``__getattr__`` on every
    call, even for a filtered-out ``debug``. Once logging is configured with
    ``cache_logger_on_first_use`` (the default of ``configure_logging``), this one
    keeps each method it resolved as its own attribute: later calls go straight
    to the bound logger (a filtered-out level is a no-op method). Without
    caching (tests that reconfigure) it is as lazy as structlog's proxy.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        config = structlog.get_config()
        if not config["cache_logger_on_first_use"]:
            return getattr(structlog.get_logger(self._name), attr)
        bound = self.__dict__.get("_bound")
        if bound is None:
            bound = self.__dict__["_bound"] = structlog.get_logger(self._name).bind()
        value = getattr(bound, attr)
        ours = _OURS_AS_BYTES[0]
        if (
            attr in _LEVEL_METHODS
            and ours is not None
            and config["processors"] is ours
            and isinstance(bound._logger, NamedBytesLogger)
            and getattr(value, "__func__", None) is not _filtered
        ):
            value = _fast_method(bound._logger, _LEVEL_METHODS[attr], value, ours)
        setattr(self, attr, value)
        return value


#: The level methods ``_fast_method`` stands for, by the level they log at (structlog's
#: method names; ``exception`` adds a traceback: left to structlog).
_LEVEL_METHODS = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "warn": "warning",
    "error": "error",
    "critical": "critical",
    "fatal": "critical",
}
#: A filtered-out level's method (structlog's no-op), left as it is.
_filtered = structlog.make_filtering_bound_logger(logging.CRITICAL).debug
#: The processor list of our JSON lines written as bytes, as last configured (a list in a
#: list: ``configure_logging`` replaces it).
_OURS_AS_BYTES: list[list[Any] | None] = [None]


def _fast_method(
    logger: NamedBytesLogger, level: str, slow: Callable[..., Any], processors: list[Any]
) -> Callable[..., Any]:
    """A module logger's ``level`` method when our JSON lines go out as bytes: the
    configured ``processors`` run on the call's fields and ``event``, and their bytes go
    to the line writer, without structlog's bound logger around them (its method, its
    proxy, its event processing: an ``http.request`` line 44,123 → 28,962 instructions,
    counted by callgrind). A call with positional arguments (``%`` formatting) goes to
    structlog's (``slow``)."""
    emit = getattr(logger, level)

    def method(event: str, *args: Any, **kw: Any) -> Any:
        if args:
            return slow(event, *args, **kw)
        kw["event"] = event
        for processor in processors:
            kw = processor(logger, level, kw)
        emit(kw)
        return None

    return method


def get_logger(name: str) -> Any:
    """The logger named ``name`` (its ``logger`` field), cheap to call once configured."""
    return CachedLogger(name)


class NamedPrintLogger(structlog.PrintLogger):
    """structlog's print logger, knowing the name it was asked for (for the ``logger`` field)."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class LineWriter:
    """Writes log lines to a binary stream, one write per event-loop turn under load.

    A line logged in a thread that runs an event loop is buffered and written
    with the others of the same loop turn (one ``write`` system call for the
    access lines of every request that finished in that turn, instead of one
    each). Warnings and errors, lines from other threads, and lines logged
    with no loop running are written at once, after whatever is buffered, so
    the order holds. What is buffered at exit is written by an ``atexit`` hook;
    a ``kill -9`` can lose the info lines of the last loop turn.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._lines: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)

    def line(self, message: bytes) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.now(message)
            return
        if not self._lines:
            self._loop = loop
            loop.call_soon(self.flush)
        elif loop is not self._loop:  # another loop's thread: keep this one's order simple
            self.now(message)
            return
        self._lines.append(message)

    def now(self, message: bytes) -> None:
        self.flush()
        with contextlib.suppress(ValueError, OSError):  # the stream is closed or gone
            self._file.write(message + b"\n")
            self._file.flush()

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            lines.append(b"")
            with contextlib.suppress(ValueError, OSError):
                self._file.write(b"\n".join(lines))
                self._file.flush()


class NamedBytesLogger:
    """Our bytes logger (info and below buffered per loop turn, see ``LineWriter``), named."""

    def __init__(self, writer: LineWriter, name: str) -> None:
        self.name = name
        self._writer = writer
        self.msg = self.info = self.debug = writer.line
        self.warning = self.warn = self.error = self.err = writer.now
        self.critical = self.fatal = self.exception = self.failure = writer.now


def _logger_name(args: tuple[Any, ...]) -> str:
    return args[0] if args and isinstance(args[0], str) else DEFAULT_LOGGER_NAME


class NamedPrintLoggerFactory:
    """``structlog.get_logger("mailman.http")`` → a print logger named ``mailman.http``."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> NamedPrintLogger:
        return NamedPrintLogger(self._file, _logger_name(args))


class NamedBytesLoggerFactory:
    """``structlog.get_logger("mailman.http")`` → a bytes logger named ``mailman.http``."""

    def __init__(self, file: BinaryIO) -> None:
        self._writer = LineWriter(file)

    def __call__(self, *args: Any) -> NamedBytesLogger:
        return NamedBytesLogger(self._writer, _logger_name(args))


def _utf8_buffer(out: TextIO) -> BinaryIO | None:
    """The binary buffer under a UTF-8 text stream (stderr...); None for a StringIO and the like."""
    buffer = getattr(out, "buffer", None)
    encoding = getattr(out, "encoding", None)
    if buffer is None or not encoding:
        return None
    try:
        utf8 = codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return None
    return buffer if utf8 else None


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
        add_timestamp if as_json else structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_secrets,
    ]
    renderer: Any
    ours: list[Any]
    factory: NamedBytesLoggerFactory | NamedPrintLoggerFactory = NamedPrintLoggerFactory(out)
    if as_json:
        # Tracebacks and stacks become string fields of the one JSON line.
        shared += [structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info]
        renderer = render_json_str
        # Our own lines: the same fields from fewer processors (each call counts).
        ours = [
            structlog.contextvars.merge_contextvars,
            add_level_logger_timestamp,
            mask_secrets,
            render_exception,
            render_json_str,
        ]
        buffer = _utf8_buffer(out)
        if buffer is not None:
            # orjson's bytes go to the buffer as they are, one write and flush a line.
            # stdlib's handler flushes the text layer after each record: no interleaving.
            ours[-1], factory = render_json_bytes, NamedBytesLoggerFactory(buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        ours = [*shared, renderer]
    # The fast level methods of module loggers stand for this list alone (``_fast_method``).
    _OURS_AS_BYTES[0] = ours if isinstance(factory, NamedBytesLoggerFactory) else None
    structlog.configure(
        processors=ours,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
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

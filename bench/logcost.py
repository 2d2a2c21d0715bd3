"""``python -m bench.logcost``: what logging costs a request, in µs of CPU, before and after.

    python -m bench.logcost [--number N] [--repeat R]

Measures, each with the pipeline as it was ("before": eight processors, stdlib
``json``, an ISO ``TimeStamper``, ``PrintLogger``, every field name checked for
secrets, structlog's lazy proxy as the module logger) and as
``config.logging.configure_logging`` sets it up now ("after": five processors,
orjson bytes straight to the stream's buffer, a ``datetime`` timestamp orjson
writes, known field names skipped, ``config.logging.get_logger``), writing to
``/dev/null`` at level ``info``:

- one ``log.info`` line rendered (the ``http.request`` line of a POST /mail/send);
- one ``log.debug`` call, filtered out;
- binding the request's context and undoing it (before: ``bound_contextvars``
  for ``request_id``, then for ``tenant`` and ``key_id``; after: one
  ``bind_contextvars``/``reset_contextvars`` for ``request_id``);
- the whole per-request logging of an accepted mail (before: ``http.request`` and
  ``mail.accepted`` at info plus the bindings; after: one ``http.request`` line,
  ``mail.accepted`` at debug, the binding and the noted fields);
- a few pieces of a line (timestamp, JSON, secret masking).

CPU time is ``time.process_time``; each figure is the best of ``--repeat`` runs of
``--number`` calls. The figures vary with the machine; no test asserts on them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import timeit
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from mailman.config.logging import (
    MASK,
    SECRET_MARKERS,
    NamedPrintLoggerFactory,
    add_timestamp,
    configure_logging,
    get_logger,
    mask_secrets,
    render_json_bytes,
)

RID = "0123456789abcdef0123456789abcdef"
MAIL_ID = "01JABCDEFGHJKMNPQRSTVWXYZ0"
#: The fields of a POST /mail/send's ``http.request`` line, after.
REQUEST = {"method": "POST", "path": "/mail/send", "status": 201, "duration_ms": 0.84}
NOTED = {"tenant": "acme", "mail_id": MAIL_ID, "recipients": 1}


def _mask_secrets_before(
    _: Any, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``mask_secrets`` as it was: every marker tested against every key of every line."""
    for key in list(event):
        lowered = key.lower()
        if any(m in lowered for m in SECRET_MARKERS) and lowered != "event":
            event[key] = MASK
    return event


def configure_before(out: TextIO) -> None:
    """structlog's part of ``configure_logging("info", "json")`` as it was before."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets_before,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=NamedPrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


def configure_after(out: TextIO) -> None:
    configure_logging("info", "json", stream=out)


@contextmanager
def bound_before() -> Iterator[None]:
    """The request's context as request_id_middleware and auth_middleware bound it before."""
    with (
        structlog.contextvars.bound_contextvars(request_id=RID),
        structlog.contextvars.bound_contextvars(tenant="acme", key_id="k1"),
    ):
        yield


def per_call_us(func: Callable[[], object], number: int, repeat: int) -> float:
    """The best CPU time of one call of ``func``, in µs."""
    func()  # warm up (the first call caches the logger)
    runs = timeit.repeat(func, number=number, repeat=repeat, timer=time.process_time)
    return min(runs) / number * 1e6


def measure(which: str, number: int, repeat: int) -> dict[str, float]:
    """The figures of one pipeline, ``before`` or ``after``."""
    configure = configure_before if which == "before" else configure_after
    with open(os.devnull, "w", encoding="utf-8") as out:
        configure(out)
        # As the modules get theirs: structlog's lazy proxy before, a CachedLogger after.
        log = (
            structlog.get_logger("mailman.http")
            if which == "before"
            else get_logger("mailman.http")
        )
        tokens = structlog.contextvars.bind_contextvars(request_id=RID)
        try:
            if which == "before":
                fields = {**REQUEST, "request_id": RID}
            else:
                fields = {**REQUEST, "request_id": RID, **NOTED}
            figures = {
                "info line": per_call_us(
                    lambda: log.info("http.request", **fields), number, repeat
                ),
                "filtered debug": per_call_us(
                    lambda: log.debug("mail.accepted", mail_id=MAIL_ID, recipients=1),
                    number,
                    repeat,
                ),
            }
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

        def context_before() -> None:
            with bound_before():
                pass

        def context_after() -> None:
            tokens = structlog.contextvars.bind_contextvars(request_id=RID)
            structlog.contextvars.reset_contextvars(**tokens)

        context = context_before if which == "before" else context_after
        figures["contextvars per request"] = per_call_us(context, number, repeat)

        def request_before() -> None:
            with bound_before():
                log.info("mail.accepted", mail_id=MAIL_ID, recipients=1)
                log.info("http.request", **REQUEST)

        def request_after() -> None:
            noted: dict[str, Any] = {}
            tokens = structlog.contextvars.bind_contextvars(request_id=RID)
            try:
                noted.update(tenant="acme")
                noted.update(mail_id=MAIL_ID, recipients=1)
                log.debug("mail.accepted", mail_id=MAIL_ID, recipients=1)
                log.info("http.request", **REQUEST, request_id=RID, **noted)
            finally:
                structlog.contextvars.reset_contextvars(**tokens)

        request = request_before if which == "before" else request_after
        figures["logging per accepted mail"] = per_call_us(request, number, repeat)
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()  # configure_logging's handler wrote to ``out``
    logging.captureWarnings(False)
    return figures


def pieces(number: int, repeat: int) -> list[tuple[str, float]]:
    """Parts of one line, and the alternatives weighed: (what, µs)."""
    event = {"event": "http.request", **REQUEST, "request_id": RID, **NOTED}
    event |= {"level": "info", "logger": "mailman.http"}
    as_str = {**event, "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
    as_datetime = {**event, "timestamp": datetime.now(UTC)}
    as_float = {**event, "timestamp": time.time()}
    iso = structlog.processors.TimeStamper(fmt="iso", utc=True)
    unix = structlog.processors.TimeStamper(fmt=None, utc=True)
    json_renderer = structlog.processors.JSONRenderer()
    return [
        ("timestamp: ISO str (before)", per_call_us(lambda: iso(None, "", {}), number, repeat)),
        (
            "timestamp: datetime (after)",
            per_call_us(lambda: add_timestamp(None, "", {}), number, repeat),
        ),
        ("timestamp: float ts", per_call_us(lambda: unix(None, "", {}), number, repeat)),
        (
            "render: json, str ts (before)",
            per_call_us(lambda: json_renderer(None, "", as_str), number, repeat),
        ),
        (
            "render: orjson, datetime (after)",
            per_call_us(lambda: render_json_bytes(None, "", as_datetime), number, repeat),
        ),
        (
            "render: orjson, float ts",
            per_call_us(lambda: render_json_bytes(None, "", as_float), number, repeat),
        ),
        (
            "mask_secrets, 12 fields (before)",
            per_call_us(lambda: _mask_secrets_before(None, "", event), number, repeat),
        ),
        (
            "mask_secrets, 12 fields (after)",
            per_call_us(lambda: mask_secrets(None, "", event), number, repeat),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logcost", description=__doc__)
    parser.add_argument("--number", type=int, default=10_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best counts")
    args = parser.parse_args(argv)
    before = measure("before", args.number, args.repeat)
    after = measure("after", args.number, args.repeat)
    print(f"CPU µs per call (best of {args.repeat} x {args.number}), to /dev/null, level info")
    print(f"{'':34} {'before':>8} {'after':>8} {'ratio':>6}")
    for name in before:
        b, a = before[name], after[name]
        print(f"{name:34} {b:8.2f} {a:8.2f} {b / a:5.1f}x")
    print("pieces of a line:")
    for name, us in pieces(args.number, args.repeat):
        print(f"  {name:32} {us:8.2f}")
    print(f"(python {sys.version.split()[0]}, structlog {structlog.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

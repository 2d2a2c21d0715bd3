"""Times as Mailman writes and reads them: RFC 3339 in UTC with ``Z``.

The one place that turns unix times into text and back: the API, callbacks
and the dashboard write milliseconds; the CLI tables and the SendGrid
translation write whole seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

Precision = Literal["seconds", "milliseconds", "microseconds"]


def iso_time(ts: float, precision: Precision = "milliseconds") -> str:
    """A unix time as RFC 3339 in UTC, e.g. ``2025-01-02T03:04:05.678Z`` (or
    ``2025-01-02T03:04:05Z`` to the second, ``...05.678901Z`` to the microsecond)."""
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec=precision)
    return text.replace("+00:00", "Z")


def parse_time(raw: str) -> float:
    """An RFC 3339 time as unix time; one that names no offset is UTC. ``z`` reads as
    ``Z``; ValueError if ``raw`` is not such a time."""
    value = datetime.fromisoformat(raw.strip().replace("z", "Z"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()

"""Times as Mailman writes and reads them: RFC 3339 in UTC with ``Z``.

The one place that turns unix times into text and back: the API, callbacks
and the dashboard write milliseconds; the CLI tables write whole seconds.
``datetime_of`` gives a unix time as an aware ``datetime`` (what an entry point hands a
``Submission`` when its client gave a unix time).
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


def datetime_of(ts: float) -> datetime:
    """A unix time as an aware ``datetime`` in UTC."""
    return datetime.fromtimestamp(ts, UTC)


def parse_time(raw: str) -> float:
    """An RFC 3339 time as unix time; one that names no offset is UTC. ``z`` reads as
    ``Z``; ValueError if ``raw`` is not such a time."""
    value = datetime.fromisoformat(raw.strip().replace("z", "Z"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()

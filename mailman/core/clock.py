"""Times as the API writes them: RFC 3339 in UTC, milliseconds, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_time(ts: float) -> str:
    """A unix time as RFC 3339 in UTC, e.g. ``2025-01-02T03:04:05.678Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

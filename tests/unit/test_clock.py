"""The one clock/ISO helper: how Mailman writes unix times as text and reads them back."""

from __future__ import annotations

import pytest

from mailman.core.clock import iso_time, parse_time

#: 2025-01-02T03:04:05.678901Z
AT = 1735787045.678901


def test_iso_time_writes_utc_with_z_to_the_millisecond_second_or_microsecond() -> None:
    """The API's times carry milliseconds; the CLI tables whole seconds; both end in Z."""
    assert iso_time(AT) == "2025-01-02T03:04:05.678Z"
    assert iso_time(AT, "seconds") == "2025-01-02T03:04:05Z"
    assert iso_time(AT, "microseconds") == "2025-01-02T03:04:05.678901Z"
    assert iso_time(0, "seconds") == "1970-01-01T00:00:00Z"


def test_parse_time_reads_back_what_iso_time_writes() -> None:
    """A written time reads back as the same instant (to its precision)."""
    assert parse_time(iso_time(AT)) == pytest.approx(1735787045.678)
    assert parse_time(iso_time(AT, "seconds")) == 1735787045.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-01-02T03:04:05Z", 1735787045.0),
        ("2025-01-02t03:04:05z", 1735787045.0),
        (" 2025-01-02 03:04:05+01:00 ", 1735787045.0 - 3600),
        ("2025-01-02T03:04:05", 1735787045.0),  # no offset: UTC
        ("2025-01-02T03:04Z", 1735787040.0),
    ],
)
def test_parse_time_reads_rfc_3339_and_takes_a_time_without_offset_as_utc(
    raw: str, expected: float
) -> None:
    """Offsets are honoured, ``z`` is ``Z``, and a time that names no offset is UTC."""
    assert parse_time(raw) == expected


@pytest.mark.parametrize("raw", ["", "yesterday", "2025-13-01T00:00:00Z", "1735787045"])
def test_parse_time_refuses_what_is_no_time(raw: str) -> None:
    """Anything that is not an ISO time is a ValueError."""
    with pytest.raises(ValueError):
        parse_time(raw)

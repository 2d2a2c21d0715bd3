"""The fast tier leaves out the slow one: tests/system, the Kafka tests, the marked ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def collected(*args: str) -> list[str]:
    """The test ids pytest would run with ``args`` (collection only)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: nothing selected
    return [line for line in done.stdout.splitlines() if "::" in line]


@pytest.mark.slow  # three pytest collections: the full run holds the fast tier to its word
def test_not_slow_leaves_out_the_system_tier_and_the_kafka_tests() -> None:
    """``-m "not slow"`` selects no test of tests/system and no test on the Kafka broker,
    but still the memory legs beside them."""
    system = collected("tests/system")
    assert system, "tests/system holds tests"
    assert collected("-m", "not slow", "tests/system") == []
    mailbox = collected("-m", "not slow", "tests/integration/test_mailbox.py")
    assert mailbox and not [t for t in mailbox if "kafka" in t]
    assert [t for t in mailbox if "[memory]" in t]

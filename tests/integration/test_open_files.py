"""A process's open files and its senders' ceilings (``actors.open_files``), in real
processes started with a low limit on open files."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import orjson

from mailman.actors.open_files import RESERVE, sender_ceiling

#: Builds the system as ``mailman`` does (flags, environment) in the child and prints
#: each sender's ceiling, the soft limit on open files afterwards and the lines logged.
CHILD = """
import sys, resource, orjson
from structlog.testing import capture_logs
from mailman.config.load import load
from mailman.system import Mailman
with capture_logs() as logs:
    system = Mailman(load([], dict(a.split("=", 1) for a in sys.argv[1:])))
soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
lowered = [e for e in logs if e["event"] == "sender.max_concurrency_lowered"]
print(orjson.dumps({"ceilings": system.max_concurrency, "soft": soft, "lowered": lowered}).decode())
"""


def run_child(tmp_path: Path, soft: int, hard: int, **env: str) -> dict[str, object]:
    """The child's answer, started with ``soft`` and ``hard`` limits on open files."""

    def limit() -> None:  # between fork and exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    settings = {
        "MAILMAN_PORT": "0",
        "MAILMAN_SMTP_PORT": "0",
        "MAILMAN_STORE": f"sqlite:///{tmp_path / 'm.db'}",
        "MAILMAN_OUTBOX_DIR": str(tmp_path / "outbox"),
        **env,
    }
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAN_")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *(f"{k}={v}" for k, v in settings.items())],
        env=child_env,
        capture_output=True,
        preexec_fn=limit,
        timeout=60,
        check=True,
    )
    answer: dict[str, object] = orjson.loads(done.stdout.splitlines()[-1])
    return answer


def test_a_process_with_senders_raises_its_soft_limit_to_the_hard_one(tmp_path: Path) -> None:
    """Started with a soft limit of 700 under a hard one of 4,000: it runs with 4,000, and
    its sender keeps the whole configured ceiling."""
    answer = run_child(tmp_path, 700, 4000)
    assert answer["soft"] == 4000
    assert answer["ceilings"] == {"outbox": 2048}
    assert answer["lowered"] == []


def test_an_api_process_raises_its_soft_limit_too(tmp_path: Path) -> None:
    """A process without senders (``--role api``) has no ceilings, but its clients'
    connections are open files too: it runs with the hard limit as well."""
    answer = run_child(tmp_path, 700, 4000, MAILMAN_ROLE="api")
    assert answer["soft"] == 4000
    assert answer["ceilings"] == {}


def test_a_low_hard_limit_lowers_the_ceiling_and_says_so(tmp_path: Path) -> None:
    """With 700 open files at most, a sender starting at 100 grows to 700 - RESERVE at
    most, and one line says so; one starting at 256 keeps 256 (never below its start)."""
    answer = run_child(tmp_path, 700, 700, MAILMAN_SENDER_CONCURRENCY="100")
    assert answer["ceilings"] == {"outbox": 700 - RESERVE}
    assert answer["lowered"] == [
        {
            "event": "sender.max_concurrency_lowered",
            "log_level": "info",
            "provider": "outbox",
            "max_concurrency": 700 - RESERVE,
            "configured": 2048,
            "open_files": 700,
        }
    ]
    assert run_child(tmp_path, 700, 700)["ceilings"] == {"outbox": 256}


def test_the_open_files_are_shared_by_the_senders_of_a_process() -> None:
    """Each of N senders gets an Nth of what is left after the reserve, within what it
    wants and never below its start; without a limit, what it wants."""
    assert sender_ceiling(open_files=4096, senders=2, start=256, wanted=2048) == 1792
    assert sender_ceiling(open_files=100_000, senders=2, start=256, wanted=2048) == 2048
    assert sender_ceiling(open_files=1024, senders=4, start=256, wanted=2048) == 256
    assert sender_ceiling(open_files=None, senders=4, start=256, wanted=2048) == 2048

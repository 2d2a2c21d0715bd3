"""Mailman as a child process: started like production, its JSON log in a file."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ..conftest import eventually

ROOT = Path(__file__).resolve().parent.parent.parent


class Process:
    """A ``python -m mailman`` child process whose JSON log goes to a file."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.url = ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log events so far (only those called ``name``, if given)."""
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        events = []
        for line in lines:
            if not line.startswith("{"):
                continue
            try:
                events.append(json.loads(line))
            except ValueError:  # a line still being written, or cut short by a kill
                continue
        return [e for e in events if name is None or e.get("event") == name]

    def ready(self) -> bool:
        """Ready: the one process, or with ``--processes`` the parent, logged ``mailman.ready``."""
        events = self.events()
        parent = any(e.get("event") == "processes.starting" for e in events)
        for event in events:
            if event.get("event") != "mailman.ready":
                continue
            if parent and event.get("logger") != "mailman.processes":
                continue  # a child is ready; the parent says when all are
            if "url" in event:
                self.url = str(event["url"])
            return True
        return False

    def children(self) -> dict[str, int]:
        """``--processes``: each child's name and the pid it has now (restarts included)."""
        return {str(e["process"]): int(e["pid"]) for e in self.events("process.started")}


async def start_mailman(env: Mapping[str, str], log: Path, *argv: str) -> Process:
    """Start ``python -m mailman ARGV`` and wait until it is ready (or fail with its log)."""
    # No SMTP listener unless ``env`` asks for one: 2525 is one port for every test.
    full_env = {
        **os.environ,
        "MAILMAN_PORT": "0",
        "MAILMAN_SMTP_PORT": "0",
        **env,
        "MAILMAN_LOG_FORMAT": "json",
    }
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mailman",
            *argv,
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=out,
            stdin=asyncio.subprocess.DEVNULL,
        )
    child = Process(proc, log)
    try:
        await eventually(
            lambda: child.ready() or proc.returncode is not None,
            within=60,
            what=f"mailman {' '.join(argv)} to be ready",
        )
    except BaseException:
        await stop_process(child)
        raise
    assert proc.returncode is None, log.read_text()
    return child


async def stop_process(child: Process) -> None:
    """Kill the child if it still runs."""
    if child.proc.returncode is None:
        child.proc.kill()
        await child.proc.wait()


@asynccontextmanager
async def mailman_process(env: Mapping[str, str], log: Path, *argv: str) -> AsyncIterator[Process]:
    """A ready ``mailman`` child process; killed if the test left it running."""
    child = await start_mailman(env, log, *argv)
    try:
        yield child
    finally:
        await stop_process(child)

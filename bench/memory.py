"""``python -m bench memory``: the service process's peak memory under large and many bodies.

    python -m bench memory [--budget BYTES] [--large N] [--small N] [--out DIR]

Starts the fake providers (``python -m bench.fakes``) and, for each load, a
fresh ``python -m mailman`` (every actor in one process, SQLite, the fakes as
providers) with ``MAILMAN_MAX_INFLIGHT_BYTES=BYTES`` (default: the service's
default; ``0``: no budget, as before issue 18). Then:

- ``large``: N (40) concurrent ``POST /mail/send``, each with a 10 MiB
  attachment (a 13.4 MiB JSON body), all from one key; an over-budget 503
  (counted as status ``1503``) is retried after its ``Retry-After`` until the
  mail is taken, at most 100 times; any other answer is final;
- ``small``: N (1,000) concurrent small ``POST /mail/send`` (one connection
  each).

For each: the peak resident set of the service's process (VmHWM from
``/proc/PID/status``, read after the load and after every mail was sent),
its resident set at the end (VmRSS), the answers by status, and the time to
take every mail. Figures vary with the machine; no test asserts on them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .services import Child, Fakes, SQLiteRows, start_announcing, start_mailman

MIB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def large_body() -> bytes:
    """A mail with a 10 MiB attachment (random: base64 of it does not compress)."""
    content = base64.b64encode(os.urandom(10 * MIB)).decode()
    mail = {
        "from": "shop@example.com",
        "to": ["ann@example.com"],
        "subject": "The report",
        "content": "Attached.",
        "attachments": [
            {
                "filename": "report.bin",
                "content": content,
                "content_type": "application/octet-stream",
            }
        ],
    }
    return orjson.dumps(mail)


SMALL = orjson.dumps(
    {"from": "shop@example.com", "to": ["ann@example.com"], "subject": "Hi", "content": "Hello"}
)


#: A try whose connection the service closed while the body was still being sent.
RESET = 1000


async def post_until_taken(
    http: aiohttp.ClientSession, url: str, body: bytes, statuses: Counter[int]
) -> None:
    """POST ``body`` until it is taken (201), waiting out each over-budget 503's
    Retry-After (any other answer ends it: a store that does not answer is not retried).

    The service answers an over-budget body before reading it and closes the
    connection, so the client may see the reset while it still writes, before it
    reads that 503: such a try counts as ``RESET`` and is made again after a second.
    """
    for _ in range(100):
        try:
            async with http.post(
                f"{url}/mail/send", data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                answer = await resp.read()
                over_budget = resp.status == 503 and b"over-budget" in answer
                statuses[resp.status if not over_budget else 1503] += 1
                if not over_budget:
                    return
                wait = float(resp.headers.get("Retry-After", "1"))
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            statuses[RESET] += 1
            wait = 1.0
        await asyncio.sleep(wait)


async def run_load(
    name: str,
    fakes: Fakes,
    workdir: Path,
    budget: str | None,
    bodies: Sequence[bytes],
    roles: str | None = None,
) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"memory-{name}-", dir=workdir))
    db = run_dir / "mailman.db"
    env = {**fakes.env(), "MAILMAN_STORE": f"sqlite:///{db}"}
    if budget is not None:
        env["MAILMAN_MAX_INFLIGHT_BYTES"] = budget
    if roles is not None:
        env["MAILMAN_ROLE"] = roles
    child: Child = await start_mailman("mailman", env, run_dir / "mailman.log")
    try:
        idle_kib = _status_kib(child.pid, "VmRSS")
        statuses: Counter[int] = Counter()
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=600)
        started = time.perf_counter()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await asyncio.gather(
                *(post_until_taken(http, child.url, body, statuses) for body in bodies)
            )
        taken_s = time.perf_counter() - started
        rows = SQLiteRows(db)
        deadline = time.monotonic() + 300
        while roles is None and time.monotonic() < deadline:
            if not await rows.unfinished():
                break
            await asyncio.sleep(0.2)  # polling the store: the service tells us nothing
        sent_s = time.perf_counter() - started
        return {
            "load": name,
            "mails": len(bodies),
            "budget": budget if budget is not None else "default",
            "roles": roles or "all",
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "idle_rss_mib": round((idle_kib or 0) / 1024, 1),
            "peak_rss_mib": round((_status_kib(child.pid, "VmHWM") or 0) / 1024, 1),
            "end_rss_mib": round((_status_kib(child.pid, "VmRSS") or 0) / 1024, 1),
            "taken_s": round(taken_s, 1),
            "sent_s": round(sent_s, 1),
            "unsent": await rows.unfinished(),
        }
    finally:
        await child.stop()


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__)
    parser.add_argument("--budget", help="MAILMAN_MAX_INFLIGHT_BYTES (0: none)")
    parser.add_argument("--large", type=int, default=40, help="10 MiB mails at once")
    parser.add_argument("--small", type=int, default=1000, help="small mails at once")
    parser.add_argument("--roles", help="MAILMAN_ROLE (api: the intake alone, nothing sent)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    fakes_child, announced = await start_announcing("fakes", "bench.fakes", workdir / "fakes.log")
    results = []
    try:
        async with aiohttp.ClientSession() as control:
            fakes = Fakes(announced, control)
            if args.large:
                body = large_body()
                results.append(
                    await run_load(
                        "large", fakes, workdir, args.budget, [body] * args.large, args.roles
                    )
                )
                print(orjson.dumps(results[-1]).decode(), flush=True)
            if args.small:
                results.append(
                    await run_load(
                        "small", fakes, workdir, args.budget, [SMALL] * args.small, args.roles
                    )
                )
                print(orjson.dumps(results[-1]).decode(), flush=True)
    finally:
        await fakes_child.stop()
    suffix = "none" if args.budget == "0" else args.budget or "default"
    suffix += f"-{args.roles}" if args.roles else ""
    (args.out / f"memory-{suffix}.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))

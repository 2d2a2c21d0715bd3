"""``python -m bench.durable``: how long a provider's 2xx waits to be recorded.

    python -m bench.durable [--mails 2000] [--rate 300] [--store sqlite|mysql] [--mysql URL]

The sender records each provider call's outcome in the store before it acks
the mail (record first, then ack). Between the provider's 2xx arriving and
that outcome being committed (group commit) lies the only window in which a
crash can send a mail twice: the restarted service finds the attempt
``pending`` and calls again. Each accepted call's ``provider.call`` log line (debug)
carries that window as ``durable_ms``, and the provider call's own time as
``ms``.

For each ``--store`` (give it twice for both): the fake providers
(``python -m bench.fakes``) and a fresh ``python -m mailman`` (the embedded
deployment, one process, log level info, JSON log to a file) on a fresh store
(SQLite file, or a fresh MySQL database, dropped after); ``--mails`` POSTs at
``--rate`` per second (open loop); wait until every mail is final; then
count, p50, p90, p99 and max of both figures over the accepted calls. It
asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .load import percentile, run_steady
from .services import (
    DEFAULT_MYSQL_URL,
    Child,
    Fakes,
    MailRows,
    MySQLRows,
    SQLiteRows,
    _events,
    start_announcing,
    start_mailman,
)

#: How long the mails may take to become final once the load stopped.
DRAIN_S = 120.0
FIGURES = (("durable_ms", "2xx -> committed"), ("ms", "provider call"))


@asynccontextmanager
async def store(kind: str, run_dir: Path, mysql: str) -> AsyncIterator[tuple[str, MailRows]]:
    """A fresh store: (its URL, a reader of its mails); a MySQL database is dropped after."""
    if kind == "sqlite":
        db = run_dir / "mailman.db"
        yield f"sqlite:///{db}", SQLiteRows(db)
        return
    from mailman.store.mysql import MySQLStore

    url = urlunsplit(urlsplit(mysql)._replace(path=f"/mailman_durable_{secrets.token_hex(4)}"))
    await MySQLStore.create_database(url)
    try:
        yield url, MySQLRows(url)
    finally:
        await MySQLStore.drop_database(url)


async def measure(
    kind: str, args: argparse.Namespace, fakes: Fakes, workdir: Path
) -> tuple[list[dict[str, Any]], int]:
    """One run on a fresh ``kind`` store: the accepted ``provider.call`` events, and the
    mails not final (or refused)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
    log = run_dir / "mailman.log"
    await fakes.reset()
    async with store(kind, run_dir, args.mysql) as (url, rows):
        env = {
            **fakes.env(),
            "MAILMAN_STORE": url,
            "MAILMAN_OUTBOX_DIR": str(run_dir / "outbox"),
            # An accepted call's provider.call line (with durable_ms) is a debug line.
            "MAILMAN_LOG_LEVEL": "debug",
        }
        mailman: Child = await start_mailman("mailman", env, log)
        try:
            print(f"[{kind}] {args.mails} mails at {args.rate:g}/s", file=sys.stderr)
            samples = await run_steady(mailman.url, rate=args.rate, seconds=args.mails / args.rate)
            refused = sum(1 for s in samples if s.status != 201)
            deadline = time.monotonic() + DRAIN_S
            while time.monotonic() < deadline:
                if not await rows.unfinished():
                    break
                await asyncio.sleep(0.2)  # polling the store: the service tells us nothing
            left = await rows.unfinished()
            print(f"[{kind}] {refused} refused, {left} not final", file=sys.stderr)
        finally:
            await mailman.stop()
    accepted = [
        e
        for e in _events(log)
        if e.get("event") == "provider.call" and e.get("outcome") == "accepted"
    ]
    return accepted, refused + left


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        f"{'store':<7} {'figure':<17} {'count':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"
    ]
    for kind, events in runs.items():
        for key, label in FIGURES:
            values = [float(e[key]) for e in events if key in e]
            cells = [f"{percentile(values, q):8.2f}" for q in (50, 90, 99)]
            top = f"{max(values):8.2f}" if values else f"{'-':>8}"
            lines.append(f"{kind:<7} {label:<17} {len(values):>6} {' '.join(cells)} {top}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    runs: dict[str, list[dict[str, Any]]] = {}
    unfinished = 0
    with tempfile.TemporaryDirectory(prefix="mailman-durable-") as tmp:
        workdir = Path(tmp)
        fakes_child, announced = await start_announcing(
            "fakes", "bench.fakes", workdir / "fakes.log"
        )
        try:
            async with aiohttp.ClientSession() as http:
                fakes = Fakes(announced, http)
                for kind in args.store or ["sqlite"]:
                    runs[kind], missing = await measure(kind, args, fakes, workdir)
                    unfinished += missing
        finally:
            await fakes_child.stop()
    print()
    print(f"{args.mails} mails at {args.rate:g}/s, one process (embedded); ms")
    print(table(runs))
    print()
    print("2xx -> committed: a crash can send a mail twice only if it lands in this window")
    print("after the provider's 2xx.")
    return 1 if unfinished else 0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.durable", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--mails", type=int, default=2000, help="mails POSTed (default 2000)")
    parser.add_argument("--rate", type=float, default=300.0, help="mails/s, steady (default 300)")
    parser.add_argument(
        "--store",
        action="append",
        choices=("sqlite", "mysql"),
        help="the store (default sqlite); give it twice for both",
    )
    parser.add_argument(
        "--mysql", default=DEFAULT_MYSQL_URL, help="MySQL server (a fresh database, dropped after)"
    )
    args = parser.parse_args(argv)
    if args.mails < 1 or args.rate <= 0:
        parser.error("--mails and --rate must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        print("bench.durable: interrupted; every process it started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench soak``: steady traffic with short retention; the store levels off.

    python -m bench soak [--minutes 4] [--rate 50] [--attachment-kib 20]
                         [--body 30s] [--record 60s] [--every 10]

Starts the fake providers and one ``python -m mailman`` (embedded, SQLite, JSON
log) with ``MAILMAN_BODY_RETENTION`` and ``MAILMAN_RECORD_RETENTION`` short and
the purger looking every 5 s; POSTs ``--rate`` mails a second (open loop), each
with a random ``--attachment-kib`` file, for ``--minutes``; and every ``--every``
seconds reads the store's file sizes (main file and ``-wal``), its page and
free-page counts and its rows (mails, purged). Without retention the file would
grow by every mail's size for ever; with it the file should level off once the
record retention has passed: a mail's content stays ``--body``, its record
``--record``, and freed pages are reused or given back (``auto_vacuum =
INCREMENTAL``). Prints a table and the ``retention.purged`` passes' totals; it
asserts nothing about sizes (a figure, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .load import MAIL
from .services import Child, Fakes, _events, start_announcing, start_mailman

MIB = 1024 * 1024


@dataclass(frozen=True)
class Reading:
    """The store at one moment of the soak."""

    seconds: float
    posted: int
    accepted: int
    mails: int
    purged: int
    db_mib: float
    wal_mib: float
    pages: int
    free_pages: int


def read_store(db: Path) -> tuple[int, int, int, int]:
    """(mails, purged mails, page count, free pages) of the store file, read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        mails, purged = conn.execute("SELECT COUNT(*), COUNT(purged_at) FROM mails").fetchone()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        return int(mails), int(purged), int(pages), int(free)
    finally:
        conn.close()


def size_mib(path: Path) -> float:
    try:
        return round(path.stat().st_size / MIB, 2)
    except FileNotFoundError:
        return 0.0


class Sender:
    """POSTs mails at a steady rate (open loop), each with a random file."""

    def __init__(self, url: str, rate: float, attachment_kib: int) -> None:
        self.url = f"{url}/mail/send"
        self.rate = rate
        self.attachment = attachment_kib * 1024
        self.posted = 0
        self.accepted = 0

    def body(self) -> bytes:
        mail: dict[str, Any] = dict(MAIL)
        if self.attachment:
            content = base64.b64encode(os.urandom(self.attachment)).decode()
            mail["attachments"] = [{"filename": "invoice.pdf", "content": content}]
        return orjson.dumps(mail)

    async def run(self, seconds: float) -> None:
        gate = asyncio.Semaphore(128)
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as group:

            async def one() -> None:
                try:
                    async with http.post(self.url, data=self.body(), headers=headers) as resp:
                        await resp.read()
                        self.accepted += resp.status == 201
                except (aiohttp.ClientError, TimeoutError):
                    pass
                finally:
                    gate.release()

            start = time.monotonic()
            for i in range(max(1, round(self.rate * seconds))):
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                self.posted += 1
                group.create_task(one())


async def soak(args: argparse.Namespace, workdir: Path) -> tuple[list[Reading], dict[str, int]]:
    db = workdir / "mailman.db"
    log = workdir / "mailman.log"
    fakes_child, announced = await start_announcing("fakes", "bench.fakes", workdir / "fakes.log")
    try:
        async with aiohttp.ClientSession() as http:
            fakes = Fakes(announced, http)
            env = {
                **fakes.env(),
                "MAILMAN_STORE": f"sqlite:///{db}",
                "MAILMAN_LOG_LEVEL": "info",
                "MAILMAN_BODY_RETENTION": args.body,
                "MAILMAN_RECORD_RETENTION": args.record,
                "MAILMAN_RETENTION_INTERVAL": "5s",
            }
            mailman: Child = await start_mailman("mailman", env, log)
            try:
                sender = Sender(mailman.url, args.rate, args.attachment_kib)
                readings: list[Reading] = []
                started = time.monotonic()
                load = asyncio.create_task(sender.run(args.minutes * 60))
                try:
                    while not load.done():
                        await asyncio.wait({load}, timeout=args.every)
                        mails, purged, pages, free = await asyncio.to_thread(read_store, db)
                        reading = Reading(
                            seconds=round(time.monotonic() - started),
                            posted=sender.posted,
                            accepted=sender.accepted,
                            mails=mails,
                            purged=purged,
                            db_mib=size_mib(db),
                            wal_mib=size_mib(db.with_name(db.name + "-wal")),
                            pages=pages,
                            free_pages=free,
                        )
                        readings.append(reading)
                        print(row(reading), file=sys.stderr, flush=True)
                finally:
                    load.cancel()
                    await asyncio.gather(load, return_exceptions=True)
            finally:
                await mailman.stop()
    finally:
        await fakes_child.stop()
    totals = {"passes": 0, "bodies": 0, "mails": 0, "pages_reclaimed": 0}
    for event in _events(log):
        if event.get("event") == "retention.purged":
            totals["passes"] += 1
            for key in ("bodies", "mails", "pages_reclaimed"):
                totals[key] += int(event.get(key, 0))
    return readings, totals


HEADER = (
    f"{'t (s)':>6} {'posted':>7} {'201':>7} {'mails':>6} {'purged':>6} "
    f"{'db MiB':>7} {'wal MiB':>7} {'pages':>7} {'free':>6}"
)


def row(r: Reading) -> str:
    return (
        f"{r.seconds:>6} {r.posted:>7} {r.accepted:>7} {r.mails:>6} {r.purged:>6} "
        f"{r.db_mib:>7.2f} {r.wal_mib:>7.2f} {r.pages:>7} {r.free_pages:>6}"
    )


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench soak", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=4.0, help="how long (default 4)")
    parser.add_argument("--rate", type=float, default=50.0, help="mails/s (default 50)")
    parser.add_argument(
        "--attachment-kib", type=int, default=20, help="a random file per mail (default 20 KiB)"
    )
    parser.add_argument("--body", default="30s", help="MAILMAN_BODY_RETENTION (default 30s)")
    parser.add_argument("--record", default="60s", help="MAILMAN_RECORD_RETENTION (default 60s)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between readings")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.every <= 0 or args.attachment_kib < 0:
        parser.error("--minutes, --rate and --every must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="mailman-soak-") as tmp:
        print(HEADER, file=sys.stderr)
        try:
            readings, totals = asyncio.run(soak(args, Path(tmp)))
        except KeyboardInterrupt:
            print("bench soak: interrupted; every process it started was stopped", file=sys.stderr)
            return 130
    print(
        f"soak: {args.rate:g} mails/s with a {args.attachment_kib} KiB file for "
        f"{args.minutes:g} min; body retention {args.body}, record retention {args.record}"
    )
    print(HEADER)
    for reading in readings:
        print(row(reading))
    print(
        f"purger: {totals['passes']} passes, {totals['bodies']} contents erased, "
        f"{totals['mails']} mails deleted, {totals['pages_reclaimed']} pages given back"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

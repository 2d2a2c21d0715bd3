"""``python -m bench figures``: what a read of the figures costs as the store grows.

    python -m bench figures [--sizes 1000,100000,1000000] [--reads R] [--mysql]

For each size N, a fresh store (SQLite in a temporary folder; ``--mysql``: a fresh
database on ``$MYSQL_URL``, else MariaDB on 127.0.0.1) is filled directly with N
mails, nearly all final (sent, delivered, bounced, failed), a few on their way, each
with one attempt, in multi-row INSERTs through the store's own engine; the figures
(``store.summary``) are bumped with them as the operations would. Then:

- ``kept``: ``Store.metrics_snapshot()``, what ``/metrics`` and the dashboard read (the
  figures table, the outbox, dead letters waiting, breakers), ``--reads`` times; p50,
  p99 and max in ms;
- ``recount``: the same figures counted from every row, as every scrape did before
  (``Store.recount()``), a few times; p50 in ms.

Both are checked equal. Prints a table; figures vary with the machine, no test asserts
on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from mailman.core.messages import encode
from mailman.core.model import Address, Mail, Outcome, Status
from mailman.store import Store, summary
from mailman.store.dialect import Dialect
from mailman.store.mysql import MySQLStore
from mailman.store.operation import Engine, Statement, Steps, write
from mailman.store.sqlite import SQLiteStore

from .services import DEFAULT_MYSQL_URL

#: Rows per multi-row INSERT, and mails per fill transaction.
ROWS = 500
PER_TRANSACTION = 20_000
#: One mail in this many is still on its way (queued or sending); the rest are final.
ON_ITS_WAY = 1000
FINAL = (Status.SENT, Status.DELIVERED, Status.DELIVERED, Status.BOUNCED, Status.FAILED)
PROVIDERS = ("sendgrid", "mailgun")


def _row(n: int, payload: str) -> tuple[tuple[object, ...], tuple[object, ...], Status, str]:
    """Mail ``n``'s row, its attempt's, its status and provider."""
    if n % ON_ITS_WAY == 0:
        status = Status.QUEUED if n % (2 * ON_ITS_WAY) == 0 else Status.SENDING
    else:
        status = FINAL[n % len(FINAL)]
    provider = PROVIDERS[n % 2]
    mail_id = f"b{n:010d}"
    at = 1_700_000_000.0 + n
    mail = (mail_id, status.value, payload, at, at, provider)
    outcome = (
        Outcome.PENDING
        if status is Status.SENDING
        else (Outcome.REJECTED if status is Status.FAILED else Outcome.ACCEPTED)
    )
    attempt = (mail_id, provider, 1 if n % 3 == 0 else 0, at, outcome.value)
    return mail, attempt, status, provider


@write
def fill(d: Dialect, start: int, stop: int, payload: str) -> Steps[None]:
    """Mails ``start``..``stop - 1`` with their attempts, and the figures they add."""
    deltas: Counter[summary.Key] = Counter()
    for first in range(start, stop, ROWS):
        mails: list[object] = []
        attempts: list[object] = []
        for n in range(first, min(first + ROWS, stop)):
            mail, attempt, status, provider = _row(n, payload)
            mails.extend(mail)
            attempts.extend(attempt)
            deltas[(summary.MAILS, status.value, "")] += 1
            deltas[(summary.ATTEMPTS, provider, str(attempt[4]))] += 1
            if attempt[2]:
                deltas[(summary.RETRIES, provider, "")] += 1
        count = len(mails) // 6
        yield Statement(
            "INSERT INTO mails (id, status, payload, created_at, updated_at, provider) "
            f"VALUES {d.rows(count, 6)}",
            mails,
        )
        yield Statement(
            "INSERT INTO attempts (mail_id, provider, round, at, outcome) "
            f"VALUES {d.rows(count, 5)}",
            attempts,
        )
    yield from summary.bump(d, deltas)


def _payload() -> str:
    mail = Mail(
        id="b0000000000",
        sender=Address("from@example.com"),
        to=(Address("ann@example.com"),),
        subject="Your order has shipped",
        text="Hello Ann, your order 12345 is on its way. " * 4,
        created_at=1_700_000_000.0,
    )
    return encode(mail).decode()


async def _timed(read: Callable[[], Awaitable[object]], times: int) -> list[float]:
    took = []
    for _ in range(times):
        started = time.perf_counter()
        await read()
        took.append((time.perf_counter() - started) * 1000)
    return took


@contextlib.asynccontextmanager
async def _fresh(kind: str, folder: Path, size: int) -> AsyncIterator[Store]:
    if kind == "sqlite":
        async with SQLiteStore(str(folder / f"figures-{size}.db")) as store:
            yield store
        return
    base = os.environ.get("MYSQL_URL") or DEFAULT_MYSQL_URL
    url = f"{base.rstrip('/')}/mailman_bench_figures_{size}"
    await MySQLStore.drop_database(url)
    await MySQLStore.create_database(url)
    try:
        async with MySQLStore.from_url(url) as store:
            yield store
    finally:
        await MySQLStore.drop_database(url)


async def measure(
    kind: str, size: int, reads: int, recounts: int, folder: Path
) -> dict[str, float]:
    """Fill a fresh store with ``size`` mails, then time both reads."""
    async with _fresh(kind, folder, size) as store:
        assert isinstance(store, Engine)
        payload = _payload()
        started = time.perf_counter()
        for start in range(0, size, PER_TRANSACTION):
            await store.run(fill, start, min(start + PER_TRANSACTION, size), payload)
        filled = time.perf_counter() - started
        kept_value = await store.metrics_snapshot()
        counted = await store.recount()
        if kept_value != counted:
            raise AssertionError(f"figures kept {kept_value} != recounted {counted}")
        kept = await _timed(store.metrics_snapshot, reads)
        recount = await _timed(store.recount, recounts)
    return {
        "size": size,
        "fill_s": round(filled, 1),
        "kept_p50_ms": round(statistics.median(kept), 3),
        "kept_p99_ms": round(sorted(kept)[int(len(kept) * 0.99) - 1], 3),
        "kept_max_ms": round(max(kept), 3),
        "recount_p50_ms": round(statistics.median(recount), 1),
    }


def table(kind: str, rows: Sequence[dict[str, float]]) -> str:
    lines = [
        "| store | mails | kept: p50 ms | kept: p99 ms | kept: max ms | recount: p50 ms | fill s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {kind} | {int(r['size']):,} | {r['kept_p50_ms']} | {r['kept_p99_ms']} | "
            f"{r['kept_max_ms']} | "
            f"{r['recount_p50_ms']} | {r['fill_s']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench figures",
        description="What reading the figures (/metrics, the dashboard) costs as the store grows.",
    )
    parser.add_argument(
        "--sizes", default="1000,100000,1000000", help="mails per store, comma separated"
    )
    parser.add_argument("--reads", type=int, default=200, help="timed reads of the figures kept")
    parser.add_argument("--recounts", type=int, default=3, help="timed recounts from every row")
    parser.add_argument("--mysql", action="store_true", help="MySQL/MariaDB instead of SQLite")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes: whole numbers, comma separated")
    if not sizes or min(sizes) < 1 or args.reads < 1 or args.recounts < 1:
        parser.error("--sizes, --reads and --recounts must be positive")
    kind = "mysql" if args.mysql else "sqlite"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-figures-") as folder:
        for size in sizes:
            row = asyncio.run(measure(kind, size, args.reads, args.recounts, Path(folder)))
            print(row, flush=True)
            rows.append(row)
    print()
    print(table(kind, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

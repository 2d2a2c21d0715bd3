"""``python -m bench figures``: what a read of the figures costs as the store grows.

    python -m bench figures [--sizes 1000,100000,1000000] [--reads R] [--recounts R]
                            [--mysql] [--writes N]

For each size N, a fresh store (SQLite in a temporary folder; ``--mysql``: a fresh
database on ``$MYSQL_URL``, else MariaDB on 127.0.0.1) is filled directly with N
mails, nearly all final (sent, delivered, bounced, failed), a few on their way, each
with one attempt, in multi-row INSERTs through the store's own engine; the figures
(``store.summary``) are bumped with them as the operations would. Then, every store
in turn (round robin, so that what else the machine does falls on every size alike):

- ``kept``: ``Store.metrics_snapshot()``, what ``/metrics`` and the dashboard read (the
  figures table, the outbox, dead letters waiting, breakers), ``--reads`` times; p50,
  p99 and max in ms;
- ``recount``: the same figures counted from every row, as every scrape did before
  (``Store.recount()``), a few times; p50 in ms.

Both are checked equal. ``--writes N`` also times N mails added, claimed, begun and
sent at once on a fresh store (CPU and wall µs per mail), what keeping the figures
costs the writes: run it on two checkouts to compare. Prints a table; figures vary
with the machine, no test asserts on them.
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

from mailman.core.messages import StatusUpdate, encode
from mailman.core.model import Address, Attempt, Mail, Outcome, Status
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


async def _timed(read: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await read()
    return (time.perf_counter() - started) * 1000


@contextlib.asynccontextmanager
async def fresh_store(kind: str, folder: Path, name: str) -> AsyncIterator[Store]:
    """An empty store of ``kind`` (``sqlite``: ``folder/name.db``; ``mysql``: the database
    ``mailman_bench_name`` on ``$MYSQL_URL``, dropped before and after)."""
    if kind == "sqlite":
        async with SQLiteStore(str(folder / f"{name}.db")) as store:
            yield store
        return
    base = os.environ.get("MYSQL_URL") or DEFAULT_MYSQL_URL
    url = f"{base.rstrip('/')}/mailman_bench_{name}"
    await MySQLStore.drop_database(url)
    await MySQLStore.create_database(url)
    try:
        async with MySQLStore.from_url(url) as store:
            yield store
    finally:
        await MySQLStore.drop_database(url)


async def measure(
    kind: str, sizes: Sequence[int], reads: int, recounts: int, folder: Path
) -> list[dict[str, float]]:
    """Fill a fresh store per size, then time the reads of every store in turn (round
    robin: whatever else the machine does meanwhile falls on every size alike)."""
    payload = _payload()
    async with contextlib.AsyncExitStack() as stack:
        stores: list[Store] = []
        filled: list[float] = []
        for size in sizes:
            store = await stack.enter_async_context(fresh_store(kind, folder, f"figures_{size}"))
            assert isinstance(store, Engine)
            started = time.perf_counter()
            for start in range(0, size, PER_TRANSACTION):
                await store.run(fill, start, min(start + PER_TRANSACTION, size), payload)
            filled.append(time.perf_counter() - started)
            kept, counted = await store.metrics_snapshot(), await store.recount()
            if kept != counted:
                raise AssertionError(f"figures kept {kept} != recounted {counted}")
            print(f"filled {size:,} mails in {filled[-1]:.1f} s", flush=True)
            stores.append(store)
        kept_ms: list[list[float]] = [[] for _ in sizes]
        recount_ms: list[list[float]] = [[] for _ in sizes]
        for _ in range(reads):
            for n, store in enumerate(stores):
                kept_ms[n].append(await _timed(store.metrics_snapshot))
        for _ in range(recounts):
            for n, store in enumerate(stores):
                recount_ms[n].append(await _timed(store.recount))
    return [
        {
            "size": size,
            "fill_s": round(filled[n], 1),
            "kept_p50_ms": round(statistics.median(kept_ms[n]), 3),
            "kept_p99_ms": round(sorted(kept_ms[n])[max(int(reads * 0.99) - 1, 0)], 3),
            "kept_max_ms": round(max(kept_ms[n]), 3),
            "recount_p50_ms": round(statistics.median(recount_ms[n]), 1),
        }
        for n, size in enumerate(sizes)
    ]


async def write_path(kind: str, count: int, folder: Path) -> dict[str, float]:
    """What the writes that keep the figures cost: ``count`` mails added, claimed, begun
    and answered (sent) at once on a fresh store; this process's CPU µs (SQLite's writer
    thread included) and wall µs per mail, each phase. Run it on two checkouts to compare."""
    async with fresh_store(kind, folder, "figures_0") as store:
        ids = [f"w{n:07d}" for n in range(count)]
        phases: dict[str, float] = {}

        async def phase(name: str, work: Awaitable[object]) -> None:
            cpu, wall = time.process_time(), time.perf_counter()
            await work
            phases[f"{name}_cpu_us"] = round((time.process_time() - cpu) * 1e6 / count, 1)
            phases[f"{name}_wall_us"] = round((time.perf_counter() - wall) * 1e6 / count, 1)

        def one(mail_id: str) -> Mail:
            return Mail(
                id=mail_id,
                sender=Address("from@example.com"),
                to=(Address("ann@example.com"),),
                subject="s",
                text="t",
                created_at=1000.0,
            )

        async def send(mail_id: str) -> None:
            begun = await store.begin_attempt(mail_id, "sendgrid", 0, 1002.0, 0.0)
            assert begun is not None and begun.attempt_id is not None
            done = Attempt("sendgrid", 0, 1002.0, Outcome.ACCEPTED, None, "x", id=begun.attempt_id)
            sent = StatusUpdate(mail_id, Status.SENT, 1003.0, "sendgrid", "x", attempt=done)
            await store.apply([sent])

        await phase("add", asyncio.gather(*(store.add(one(i)) for i in ids)))
        await phase("claim", store.claim_outbox("relay", count, 30.0, 1001.0))
        await phase("send", asyncio.gather(*(send(i) for i in ids)))
        return phases


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
    parser.add_argument(
        "--writes",
        type=int,
        default=0,
        help="also time N mails added, claimed, begun and sent at once (CPU and wall µs "
        "per mail): what keeping the figures costs the writes, to compare two checkouts",
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes: whole numbers, comma separated")
    if not sizes or min(sizes) < 1 or args.reads < 1 or args.recounts < 1:
        parser.error("--sizes, --reads and --recounts must be positive")
    kind = "mysql" if args.mysql else "sqlite"
    with tempfile.TemporaryDirectory(prefix="bench-figures-") as folder:
        rows = asyncio.run(measure(kind, sizes, args.reads, args.recounts, Path(folder)))
        if args.writes > 0:
            writes = asyncio.run(write_path(kind, args.writes, Path(folder)))
    print()
    print(table(kind, rows))
    if args.writes > 0:
        print()
        print(f"writes ({kind}, {args.writes} mails at once), µs per mail: {writes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

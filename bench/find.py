"""``python -m bench find``: what finding mails (``GET /mail``'s filters) costs on a full store.

    python -m bench find [--mails 100000] [--reads 200] [--mysql]

A fresh store (SQLite in a temporary folder; ``--mysql``: a fresh database on
``$MYSQL_URL``, else MariaDB on 127.0.0.1) is filled with ``--mails`` mails of 10
tenants through the store's own rows (``mails.mail_values``, ``finding.index``: the
mail and its side rows, as an accepted mail is written), in multi-row INSERTs:

- each to one of 20,000 addresses (about 5 mails each), one in seven also cc
  ``ops@example.com`` (the busy address);
- one of 23 tags each (``tag0``...), one in a thousand also ``rare``;
- metadata ``order`` (unique) and ``plan`` (one of 3 values);
- nearly all final (sent, delivered, failed, bounced), one in 53 queued; created one
  every half second.

Then each query (``Store.list_mails``, a page of 100 as ``GET /mail`` asks it, as tenant
``t0``'s key unless it says admin) runs ``--reads`` times, all in turn (round robin);
p50, p99 and max in ms, and the mails the page held. For scale, ``scan`` times what a
query finds without an index: the mails whose payload mentions one address (``LIKE``
over every payload, as ``mailman erase --address`` looks), a few times. Prints a
table; figures vary with the machine, no test asserts on them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mailman.core.model import Address, Mail, Status
from mailman.store import MailQuery
from mailman.store.dialect import Dialect, chunks
from mailman.store.finding import index
from mailman.store.mails import MAIL_COLUMNS, mail_values
from mailman.store.operation import Engine, Statement, Steps, read, write

from .figures import fresh_store

#: Mails per fill transaction.
PER_TRANSACTION = 10_000
TENANTS = 10
ADDRESSES = 20_000
TAGS = 23
START = 1_700_000_000.0
FINAL = (Status.SENT, Status.DELIVERED, Status.DELIVERED, Status.FAILED, Status.BOUNCED)
PLANS = ("free", "pro", "team")


def _mail(n: int) -> tuple[Mail, Status]:
    """Mail ``n`` and the status it is stored with."""
    cc = (Address("ops@example.com"),) if n % 7 == 0 else ()
    tags = (f"tag{n % TAGS}",) + (("rare",) if n % 1000 == 10 else ())
    mail = Mail(
        id=f"f{n:010d}",
        sender=Address("from@example.com"),
        to=(Address(f"r{n % ADDRESSES}@example.com"),),
        cc=cc,
        subject="Your order has shipped",
        text="Hello, your order is on its way. " * 4,
        created_at=START + n / 2,
        tenant=f"t{n % TENANTS}",
        tags=tags,
        metadata=(("order", str(n)), ("plan", PLANS[n % len(PLANS)])),
    )
    status = Status.QUEUED if n % 53 == 0 else FINAL[(n // TENANTS) % len(FINAL)]
    return mail, status


@write
def fill(d: Dialect, start: int, stop: int) -> Steps[None]:
    """Mails ``start``..``stop - 1`` and their side rows."""
    made = [_mail(n) for n in range(start, stop)]
    for chunk in chunks(made):
        rows: list[object] = []
        for mail, status in chunk:
            values = list(mail_values(mail))
            values[1] = status.value
            rows += values
        yield Statement(f"INSERT INTO mails ({MAIL_COLUMNS}) VALUES {d.rows(len(chunk), 10)}", rows)
    yield from index(d, [mail for mail, _ in made])


@read
def scan(d: Dialect, address: str) -> Steps[int]:
    """The mails whose payload mentions ``address``: every payload read."""
    cur = yield Statement(
        f"SELECT COUNT(*) FROM mails WHERE LOWER(payload) LIKE {d.mark}", (f"%{address}%",)
    )
    return int(cur.fetchone()[0])


def queries(mails: int) -> dict[str, MailQuery]:
    """The queries timed, by name; times and ids in the middle of the store."""
    middle = START + mails / 4  # created_at of mail mails/2
    page = 100
    return {
        "tenant": MailQuery("t0", page),
        "tenant, deep page (cursor)": MailQuery("t0", page, before=(middle, f"f{mails // 2:010d}")),
        "status=queued": MailQuery("t0", page, status=Status.QUEUED),
        "since..until (1 h)": MailQuery("t0", page, since=middle - 3600, until=middle),
        "recipient (5 mails)": MailQuery("t0", page, recipient="r1230@example.com"),
        "recipient (busy, cc)": MailQuery("t0", page, recipient="ops@example.com"),
        "recipient + status + time": MailQuery(
            "t0",
            page,
            recipient="ops@example.com",
            status=Status.BOUNCED,
            since=middle - 3600,
        ),
        "recipient (busy) + status=queued (1 in 53)": MailQuery(
            "t0", page, recipient="ops@example.com", status=Status.QUEUED
        ),
        "tag": MailQuery("t0", page, tag="tag10"),
        "tag (rare)": MailQuery("t0", page, tag="rare"),
        "metadata (unique)": MailQuery("t0", page, metadata=("order", str(mails // 2 + 10))),
        "metadata + tag": MailQuery("t0", page, metadata=("plan", "pro"), tag="tag10"),
        "recipient + tag + metadata": MailQuery(
            "t0", page, recipient="ops@example.com", tag="tag0", metadata=("plan", "pro")
        ),
        "admin: every tenant": MailQuery(None, page),
        "admin: status=queued": MailQuery(None, page, status=Status.QUEUED),
        "admin: recipient (busy)": MailQuery(None, page, recipient="ops@example.com"),
    }


async def measure(kind: str, mails: int, reads: int, folder: Path) -> list[dict[str, object]]:
    async with fresh_store(kind, folder, "find") as store:
        assert isinstance(store, Engine)
        started = time.perf_counter()
        for start in range(0, mails, PER_TRANSACTION):
            await store.run(fill, start, min(start + PER_TRANSACTION, mails))
        print(f"filled {mails:,} mails in {time.perf_counter() - started:.1f} s", flush=True)
        named = queries(mails)
        times: dict[str, list[float]] = {name: [] for name in named}
        sizes: dict[str, int] = {}
        for _ in range(reads):
            for name, query in named.items():
                began = time.perf_counter()
                page = await store.list_mails(query)
                times[name].append((time.perf_counter() - began) * 1000)
                sizes[name] = len(page)
        scans = []
        for _ in range(3):
            began = time.perf_counter()
            await store.run(scan, "r1230@example.com")
            scans.append((time.perf_counter() - began) * 1000)
    rows: list[dict[str, object]] = [
        {
            "query": name,
            "found": sizes[name],
            "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(sorted(ms)[math.ceil(len(ms) * 0.99) - 1], 3),
            "max_ms": round(max(ms), 3),
        }
        for name, ms in times.items()
    ]
    rows.append(
        {
            "query": "scan: LIKE over every payload (no index)",
            "found": "",
            "p50_ms": round(statistics.median(scans), 1),
            "p99_ms": "",
            "max_ms": round(max(scans), 1),
        }
    )
    return rows


def table(kind: str, mails: int, rows: Sequence[dict[str, object]]) -> str:
    lines = [
        f"{kind}, {mails:,} mails ({TENANTS} tenants); a page of at most 100",
        "",
        "| query | found | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['query']} | {r['found']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench find", description="What GET /mail's filters cost on a full store."
    )
    parser.add_argument("--mails", type=int, default=100_000, help="mails in the store")
    parser.add_argument("--reads", type=int, default=200, help="timed runs of each query")
    parser.add_argument("--mysql", action="store_true", help="MySQL/MariaDB instead of SQLite")
    args = parser.parse_args(argv)
    if args.mails < 1000 or args.reads < 1:
        parser.error("--mails must be at least 1000, --reads positive")
    kind = "mysql" if args.mysql else "sqlite"
    with tempfile.TemporaryDirectory(prefix="bench-find-") as folder:
        rows = asyncio.run(measure(kind, args.mails, args.reads, Path(folder)))
    print()
    print(table(kind, args.mails, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

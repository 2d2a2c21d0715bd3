"""Load generators: ``wrk`` with a Lua script where installed, an aiohttp client otherwise.

Both POST the same mail (``BODY``) to ``/mail/send`` and report a
``LoadResult``: requests, errors (any answer but 201, and socket errors and
timeouts; also counted by status), requests per second, p50 and p99 latency.

- ``wrk`` runs as a child process for a fixed duration with fixed connections
  and one thread (``-t1``; this is a 2-core box). The Lua script counts the
  answers that are not 201 and, in ``done()``, prints one JSON line with the
  counts and latency percentiles, which ``run_wrk`` parses. The warm-up is a
  separate, shorter run whose numbers are dropped.
- The aiohttp client runs in the benchmark process (never in the service's or
  the fakes' process), with a fixed number of workers (the concurrency), each
  sending the next request as soon as its previous one is answered, for a
  fixed number of requests. It keeps the ids of the accepted mails. The
  warm-up is a separate call whose numbers are dropped.
- ``run_steady`` sends at a fixed rate (open loop: a request every
  1/rate seconds, whether the earlier ones were answered or not), for the
  failover figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

#: The mail every request submits: one recipient, a plain-text body.
MAIL: dict[str, Any] = {
    "to": ["ann@example.com"],
    "from": "Shop <shop@example.com>",
    "subject": "Your order has shipped",
    "content": "Hello Ann, your order #1234 has shipped and will arrive on Tuesday.",
}
BODY = orjson.dumps(MAIL)
HEADERS = {"Content-Type": "application/json"}

#: How long one request may take before it counts as an error.
REQUEST_TIMEOUT = 10.0

_WRK_MARK = "BENCH_JSON "

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  answered = 0
  not201 = 0
  statuses = {}
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 201 then
    not201 = not201 + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local answered, not201, counts = 0, 0, {}
  for _, thread in ipairs(threads) do
    answered = answered + thread:get("answered")
    not201 = not201 + thread:get("not201")
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%%d": %%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests": %%.0f, "duration_us": %%.0f, "answered": %%.0f, "not201": %%.0f, ' ..
    '"connect": %%.0f, "read": %%.0f, "write": %%.0f, "timeout": %%.0f, ' ..
    '"p50_us": %%.0f, "p99_us": %%.0f, "max_us": %%.0f, "statuses": {%%s}}\\n',
    summary.requests, summary.duration, answered, not201,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, table.concat(parts, ", ")))
end
"""


class LoadError(RuntimeError):
    """The load generator failed (not: the service answered errors)."""


@dataclass(frozen=True)
class LoadResult:
    """What one measured load run saw."""

    loadgen: str
    #: Requests answered (or failed) during the measured run.
    requests: int
    #: Answers other than 201, plus connection errors and timeouts.
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    #: The ids of the accepted mails (the aiohttp client only; wrk does not read bodies).
    accepted_ids: tuple[str, ...] | None = None
    #: The errors by HTTP status ("0": no answer: a socket error or a timeout).
    error_statuses: Mapping[str, int] = field(default_factory=dict)
    #: CPU µs per accepted request of the server process (set for the reference).
    cpu_us_per_request: float | None = None
    #: The share of the run its main thread (the event loop) was on a core, and waiting
    #: for one (set for the reference: ``bench.cpu.main_thread``).
    main_thread: Mapping[str, float] | None = None

    @property
    def accepted(self) -> int:
        """Requests answered 201."""
        return max(0, self.requests - self.errors)

    @property
    def rps(self) -> float:
        """Requests per second, answered or not."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def accepted_rps(self) -> float:
        """201 answers per second: the throughput the figures compare."""
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "loadgen": self.loadgen,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "accepted_rps": round(self.accepted_rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "error_statuses": dict(sorted(self.error_statuses.items())),
            "cpu_us_per_request": self.cpu_us_per_request,
            "main_thread": None if self.main_thread is None else dict(self.main_thread),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


# --- wrk -----------------------------------------------------------------------


def wrk_script() -> str:
    """The Lua script: POST ``BODY``, count non-201 answers, print the figures as JSON."""
    body = BODY.decode()
    assert "]]" not in body  # it sits in a Lua long string
    return _WRK_SCRIPT % {"body": body, "mark": _WRK_MARK}


@contextlib.contextmanager
def _script_file() -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="bench-", suffix=".lua")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(wrk_script())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def run_wrk(base_url: str, *, connections: int, seconds: int) -> LoadResult:
    """One ``wrk -t1`` run of ``seconds`` with ``connections`` connections."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise LoadError("wrk is not installed")
    with _script_file() as script:
        argv = [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, seconds)}s",
            "--timeout",
            f"{int(REQUEST_TIMEOUT)}s",
            "-s",
            script,
            f"{base_url}/mail/send",
        ]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = out.decode(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(_WRK_MARK)]
    if proc.returncode != 0 or not lines:
        raise LoadError(f"wrk exited {proc.returncode}: {text}\n{err.decode(errors='replace')}")
    got = orjson.loads(lines[-1][len(_WRK_MARK) :])
    socket_errors = int(got["connect"] + got["read"] + got["write"] + got["timeout"])
    statuses = {str(k): int(v) for k, v in got.get("statuses", {}).items()}
    if socket_errors:
        statuses["0"] = socket_errors
    return LoadResult(
        loadgen="wrk",
        requests=int(got["requests"]),
        errors=int(got["not201"]) + socket_errors,
        seconds=got["duration_us"] / 1e6,
        p50_ms=got["p50_us"] / 1000,
        p99_ms=got["p99_us"] / 1000,
        error_statuses=statuses,
    )


# --- aiohttp -------------------------------------------------------------------


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def _post(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    """One POST; (status, body), status 0 for a connection error or timeout."""
    try:
        async with http.post(url, data=BODY, headers=HEADERS) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError):
        return 0, b""


def _mail_id(body: bytes) -> str:
    mail_id: str = orjson.loads(body)["mail"]["id"]
    return mail_id


async def _closed_loop(
    http: aiohttp.ClientSession, url: str, concurrency: int, requests: int
) -> _Tally:
    tally = _Tally()
    numbers = iter(range(requests))  # shared by the workers: each takes the next one

    async def worker() -> None:
        for _ in numbers:
            started = time.perf_counter()
            status, body = await _post(http, url)
            tally.latencies.append(time.perf_counter() - started)
            if status == 201:
                tally.ids.append(_mail_id(body))
            else:
                tally.errors[str(status)] += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, min(concurrency, requests))):
            group.create_task(worker())
    return tally


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(1, concurrency)),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
    )


async def run_aiohttp(base_url: str, *, concurrency: int, requests: int) -> LoadResult:
    """``requests`` POSTs, ``concurrency`` at once (closed loop); warm up with a separate call."""
    url = f"{base_url}/mail/send"
    async with _session(concurrency) as http:
        started = time.perf_counter()
        tally = await _closed_loop(http, url, concurrency, requests)
        elapsed = time.perf_counter() - started
    latencies_ms = [s * 1000 for s in tally.latencies]
    return LoadResult(
        loadgen="aiohttp",
        requests=len(tally.latencies),
        errors=sum(tally.errors.values()),
        seconds=elapsed,
        p50_ms=percentile(latencies_ms, 50),
        p99_ms=percentile(latencies_ms, 99),
        accepted_ids=tuple(tally.ids),
        error_statuses=dict(tally.errors),
    )


# --- steady rate ---------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request of a steady run."""

    #: Unix time the request was sent.
    at: float
    latency_ms: float
    status: int
    mail_id: str | None


async def run_steady(
    base_url: str, *, rate: float, seconds: float, max_in_flight: int = 256
) -> list[Sample]:
    """POST at ``rate`` requests per second for ``seconds`` (open loop); every request's sample.

    At most ``max_in_flight`` requests wait for their answer at once; beyond
    that the schedule slips (and the samples show it).
    """
    url = f"{base_url}/mail/send"
    samples: list[Sample] = []
    gate = asyncio.Semaphore(max_in_flight)
    count = max(1, round(rate * seconds))

    async def one(http: aiohttp.ClientSession) -> None:
        try:
            at = time.time()
            started = time.perf_counter()
            status, body = await _post(http, url)
            latency = (time.perf_counter() - started) * 1000
            mail_id = _mail_id(body) if status == 201 else None
            samples.append(Sample(at, latency, status, mail_id))
        finally:
            gate.release()

    async with _session(max_in_flight) as http, asyncio.TaskGroup() as group:
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            group.create_task(one(http))
    samples.sort(key=lambda s: s.at)
    return samples

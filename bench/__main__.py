"""``python -m bench``: Mailman's figures, each side by side with a reference, as ratios.

    python -m bench [--quick] [--requests N] [--concurrency C] [--duration S]
                    [--warmup N] [--no-scaled] [--out DIR] [--loadgen auto|wrk|aiohttp]
    python -m bench soak [--minutes M] [--rate R] ...   (see bench/soak.py)
    python -m bench figures [--sizes 1000,100000,1000000] [--mysql]  (bench/figures.py)
    python -m bench memory [--budget B] [--large 40] [--small 1000]  (bench/memory.py)
    python -m bench find [--mails 100000] [--reads 200] [--mysql]  (bench/find.py)

Starts everything itself on loopback, each in its own process: the fake
providers (``python -m bench.fakes``), the reference app (``python -m
bench.reference``), and for every figure a fresh Mailman (``python -m
mailman``, ``python -m mailman --processes 2``, or one process per role
for the scaled figures) on a fresh store. The load generator is ``wrk`` where
installed, else an aiohttp client in this process. Then it prints a table,
writes ``DIR/results.json`` and draws ``DIR/bench.png``, and stops everything
it started (also on Ctrl-C or an error).

The figures (targets, issue 21: ratios to the reference measured just before,
in the same run, except 2d):

1. accept: POST /mail/send per second and p50/p99 latency, SQLite, providers
   answering at once. 1a one process (target 0.30), 1b ``--processes 2``
   (0.40).
2. end to end: mails per second from POST to ``sent`` and the p50/p99 time
   to ``sent`` (from the store). 2a one process (0.16), 2b ``--processes 2``
   (0.16), 2c one process with the fake providers answering every send after
   200 ms (0.10: with ``MAILMAN_SENDER_CONCURRENCY`` 256 one sender may
   deliver ~1,280 mails/s, so the machine, not the wait, should be the limit);
   2d CPU per delivered mail of 2b's worker child, its SQLite writer process
   included (at most 300 µs).
3. failover: steady load; SendGrid's fake turns to 503: time until mails
   flow through Mailgun, mails delayed, p99 time to ``sent`` around the switch.
4. scaled: Tansu (Kafka) and MariaDB, one process per role, with 1, 2 and 4
   SendGrid sender processes (``--quick``: 1 and 2); accept and end to end
   from one run per sender count; no target (skipped with ``--no-scaled`` or
   when either is missing).
5. peak memory (VmHWM) of the service's process(es) in every run.

The reference is measured once per throughput figure, right before it, with
the same load, on a quiet machine: after the previous figure's backlog was
sent and its processes exited. ``results.json`` records, beside each
reference, the load average (``/proc/loadavg``), the cores the whole machine
kept busy in the second before it (``/proc/stat``) and the mails the previous
figure left pending, so a machine that was not quiet shows.

Every throughput figure reports CPU microseconds per mail of each process of
the deployment (``bench.cpu``; one process: ``mailman``; ``--processes``: the
``parent``, its ``api`` and ``worker`` children, told apart by the ``--role``
on their command line) and in total: utime + stime from the start of the
measured load until every mail was sent, divided by the mails delivered
(``cpu_delivered``); accept figures also per accepted mail during the load
(``cpu``). The fake providers' process is sampled beside them as
infrastructure (``infra_us_per_mail``: ``fakes``, and Tansu and MariaDB in
the scaled figures): on the same cores, never in Mailman's total.

"lost" counts accepted (201) mails that never reached ``sent``, in every run.

Exit status: 0 when every figure was measured and nothing was lost (a
missed target is reported, not an error); 1 when a figure failed or a mail
was lost; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson

from . import cpu
from .load import LoadResult, percentile, run_aiohttp, run_steady, run_wrk, wrk_available
from .report import (
    FIGURES,
    NOTES,
    PROCESSES,
    SCALED_SENDERS,
    draw_chart,
    format_table,
    machine_line,
)
from .services import (
    DEFAULT_MYSQL_URL,
    UNFINISHED,
    Child,
    Deployment,
    Fakes,
    Receipts,
    Row,
    embedded,
    scaled,
    scaled_unavailable,
    start_announcing,
)

#: Ratios to the reference (issue 21): one process (``python -m mailman``) ...
ACCEPT_TARGET = 0.30
END_TO_END_TARGET = 0.16
#: ... and ``python -m mailman --processes PROCESSES`` ...
PROCESSES_ACCEPT_TARGET = 0.40
PROCESSES_END_TO_END_TARGET = 0.16
#: ... and one process with the fake providers answering every send this late (2c).
SLOW_PROVIDER_S = 0.2
SLOW_END_TO_END_TARGET = 0.10
#: CPU µs per delivered mail of 2b's worker child (2d): a ceiling, not a ratio.
WORKER_CPU_TARGET_US = 300.0
#: The process of 2b whose CPU per delivered mail 2d checks.
WORKER = "worker"
#: Before each reference: how long the previous deployment's processes may take to exit ...
GONE_WITHIN_S = 30.0
#: ... and the window over which the whole machine's busy cores are read.
QUIET_WINDOW_S = 1.0
#: The scaled runs (``SCALED_SENDERS`` SendGrid senders; no target) that --quick makes.
QUICK_SCALED_SENDERS = (1, 2)
FAILOVER_TARGET_S = 1.0
#: The failover window: mails accepted from this long before the switch ...
WINDOW_BEFORE_S = 0.5
#: ... to this long after it.
WINDOW_AFTER_S = 2.0
#: How long the warm-up mails may take to be sent before the measured run.
WARMUP_DRAIN_S = 60.0

#: What ``--only`` takes: each measurement's label starts with one of these.
ONLY_NAMES = frozenset({"1a", "1b", "2a", "2b", "2c", "3", "4"})

#: Starts a fresh deployment (an async context manager).
Deployment_ = Callable[[], AbstractAsyncContextManager[Deployment]]


@dataclass(frozen=True)
class Settings:
    quick: bool
    loadgen: Literal["wrk", "aiohttp"]
    requests: int
    concurrency: int
    duration: int
    warmup: int
    wrk_warmup_seconds: int
    scaled: bool
    out: Path
    failover_rate: float
    failover_seconds: float
    switch_after: float
    drain_within: float
    mysql_url: str
    #: The figures to measure (``--only``: "1a", "2c", "4", ...); None: all of them.
    only: frozenset[str] | None = None


def parse_args(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Mailman's benchmark: every figure side by side with a reference.",
        epilog="Exit 0: measured, nothing lost (missed targets are reported, not errors).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts and short runs (a smoke run)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        help="aiohttp client: measured requests per run (default 3000; --quick 200)",
    )
    parser.add_argument(
        "--concurrency", type=int, help="connections / requests in flight (default 32; --quick 8)"
    )
    parser.add_argument(
        "--duration", type=int, help="wrk: seconds per measured run (default 5; --quick 2)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help="aiohttp client: warm-up requests per run, excluded (default 300; --quick 20); "
        "wrk warms up with a separate run of 2 s (--quick 1 s)",
    )
    parser.add_argument(
        "--no-scaled", action="store_true", help="skip figure 4 (Tansu + MariaDB, roles)"
    )
    parser.add_argument(
        "--only",
        help="measure only these figures, comma-separated (1a,1b,2a,2b,2c,3,4; 2d comes "
        "with 2b); the others are reported as skipped",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results"),
        help="where results.json and bench.png go (default bench/results)",
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="auto: wrk if installed, else the aiohttp client",
    )
    args = parser.parse_args(argv)
    quick: bool = args.quick
    if args.loadgen == "wrk" and not wrk_available():
        parser.error("--loadgen wrk: wrk is not installed")
    loadgen: Literal["wrk", "aiohttp"] = (
        "wrk"
        if args.loadgen == "wrk" or (args.loadgen == "auto" and wrk_available())
        else "aiohttp"
    )

    only = None
    if args.only is not None:
        only = frozenset(name.strip() for name in args.only.split(",") if name.strip())
        unknown = sorted(only - ONLY_NAMES)
        if unknown or not only:
            parser.error(
                f"--only: unknown figure(s) {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(sorted(ONLY_NAMES))}"
            )

    def positive(value: int | None, default: int, name: str) -> int:
        chosen = default if value is None else value
        if chosen < (0 if name == "--warmup" else 1):
            parser.error(f"{name} must be positive")
        return chosen

    return Settings(
        quick=quick,
        loadgen=loadgen,
        requests=positive(args.requests, 200 if quick else 3000, "--requests"),
        concurrency=positive(args.concurrency, 8 if quick else 32, "--concurrency"),
        duration=positive(args.duration, 2 if quick else 5, "--duration"),
        warmup=positive(args.warmup, 20 if quick else 300, "--warmup"),
        wrk_warmup_seconds=1 if quick else 2,
        scaled=not args.no_scaled,
        out=args.out,
        failover_rate=100.0 if quick else 200.0,
        failover_seconds=3.0 if quick else 6.0,
        switch_after=1.0 if quick else 2.0,
        drain_within=30.0 if quick else 120.0,
        mysql_url=os.environ.get("MYSQL_URL") or DEFAULT_MYSQL_URL,
        only=only,
    )


def _plain(value: object) -> object:
    """A setting as results.json holds it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, frozenset):
        return sorted(value)
    return value


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _ms(values: Sequence[float], q: float) -> float | None:
    value = percentile(values, q)
    return None if value != value else round(value * 1000, 2)  # nan: no values


def _peak_memory(peaks: dict[str, int]) -> dict[str, Any]:
    return {
        "processes": peaks,
        "max_kib": max(peaks.values(), default=None),
        "sum_kib": sum(peaks.values()),
    }


def lost_mails(rows: Sequence[Row], accepted: int, ids: Sequence[str] | None) -> int:
    """Accepted mails that are not ``sent`` in the store.

    With the ids (the aiohttp client), exactly those; without them (wrk), every
    stored mail counts as accepted, and 201s beyond the stored mails as lost.
    """
    status = {mail_id: s for mail_id, s, _, _ in rows}
    if ids is not None:
        return sum(1 for mail_id in ids if status.get(mail_id) != "sent")
    unsent = sum(1 for s in status.values() if s != "sent")
    return unsent + max(0, accepted - len(status))


async def quiet(previous: Sequence[int], pending: int) -> dict[str, Any]:
    """Wait until the previous deployment's processes are gone; then how busy the machine is.

    Every figure drains its backlog before its deployment stops, so once its
    processes (``previous``) have exited nothing of it runs any more; ``pending``
    is what it left unsent all the same. The load average and the cores the
    whole machine kept busy over ``QUIET_WINDOW_S`` show what else (another
    user of a shared machine) was running.
    """
    deadline = time.monotonic() + GONE_WITHIN_S
    left = [pid for pid in previous if cpu.alive(pid)]
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # polling /proc: another's exit is not ours to wait for
        left = [pid for pid in left if cpu.alive(pid)]
    before = cpu.machine_ticks()
    await asyncio.sleep(QUIET_WINDOW_S)  # the window the machine's busy cores are read over
    return {
        "loadavg": cpu.loadavg(),
        "machine_busy_cores": cpu.busy_cores(before, cpu.machine_ticks()),
        "previous_processes_left": len(left),
        "previous_pending": pending,
    }


class Bench:
    """One benchmark run: the shared processes, and a method per figure."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        fakes: Fakes,
        reference_url: str,
        reference_pid: int | None = None,
    ) -> None:
        self.settings = settings
        self.workdir = workdir
        self.fakes = fakes
        self.reference_url = reference_url
        #: The reference's process, for its CPU per request.
        self.reference_pid = reference_pid
        #: The last deployment's processes and its mails left pending (``leaving``).
        self.previous: list[int] = []
        self.previous_pending = 0

    # --- load --------------------------------------------------------------------

    async def warm_up(self, url: str) -> LoadResult:
        s = self.settings
        if s.loadgen == "wrk":
            return await run_wrk(url, connections=s.concurrency, seconds=s.wrk_warmup_seconds)
        return await run_aiohttp(url, concurrency=s.concurrency, requests=s.warmup)

    async def measure(self, url: str) -> LoadResult:
        s = self.settings
        if s.loadgen == "wrk":
            return await run_wrk(url, connections=s.concurrency, seconds=s.duration)
        return await run_aiohttp(url, concurrency=s.concurrency, requests=s.requests)

    async def quiet(self) -> dict[str, Any]:
        """``quiet`` after the previous deployment (``leaving``)."""
        return await quiet(self.previous, self.previous_pending)

    async def reference(self) -> tuple[LoadResult, dict[str, Any]]:
        """The ceiling, measured now with the same load as the figure that follows, on a
        machine the previous figure has left (``quiet``); the result and the conditions."""
        conditions = await self.quiet()
        await self.warm_up(self.reference_url)
        pid = self.reference_pid
        sampled = {} if pid is None else {pid: "reference"}
        first = cpu.take(time.monotonic(), sampled, {})
        result = await self.measure(self.reference_url)
        last = cpu.take(time.monotonic(), sampled, {})
        if pid in first.mailman and pid in last.mailman and result.accepted:
            ticks = last.mailman[pid][1] - first.mailman[pid][1]
            per_request = ticks * 1e6 / cpu.CLK_TCK / result.accepted
            result = dataclasses.replace(
                result,
                cpu_us_per_request=round(per_request, 1),
                main_thread=cpu.main_threads(first, last).get("reference"),
            )
        load = conditions["loadavg"]
        progress(
            f"  reference: {result.accepted_rps:.0f} req/s "
            f"(load average {'-' if load is None else load[0]}, "
            f"{conditions['machine_busy_cores']} cores busy before it)"
        )
        return result, conditions

    def leaving(self, deployment: Deployment, rows: Sequence[Row]) -> None:
        """Note the deployment about to stop: its processes, and its mails still pending."""
        self.previous = list(deployment.members())
        self.previous_pending = sum(1 for _, s, _, _ in rows if s in UNFINISHED)

    async def settle(self, deployment: Deployment, within: float) -> list[Row]:
        """Wait (at most ``within`` s) until no mail is queued or sending; then every row."""
        deadline = time.monotonic() + within
        while True:
            while time.monotonic() < deadline:
                if not await deployment.rows.unfinished():
                    break
                await asyncio.sleep(0.1)  # polling the store: the service tells us nothing
            rows = await deployment.rows.rows()
            # A request still in flight when the load stopped may commit late: read again.
            if not any(s in UNFINISHED for _, s, _, _ in rows) or time.monotonic() >= deadline:
                return rows

    # --- figures -----------------------------------------------------------------

    async def load_run(
        self,
        run: str,
        deploy: Callable[[], AbstractAsyncContextManager[Deployment]],
        provider_delay: float = 0.0,
    ) -> LoadRun:
        """The reference, then a fresh deployment: warm-up, drain, measured load, drain.

        CPU is sampled just before the measured load, just after it, and once
        the mails are drained. With ``provider_delay``, the fake providers answer
        every send that many seconds late (warm-up included).
        """
        reference, conditions = await self.reference()
        await self.fakes.reset()
        if provider_delay:
            await self.fakes.set_delay(provider_delay)
        async with deploy() as deployment:
            progress(f"  {deployment.name} Mailman ready at {deployment.url}")
            warm = await self.warm_up(deployment.url)
            await self.settle(deployment, WARMUP_DRAIN_S)
            before = deployment.cpu_sample()
            started = time.time()
            result = await self.measure(deployment.url)
            loaded = deployment.cpu_sample()
            progress(f"  Mailman: {result.accepted_rps:.0f} req/s; waiting until all are sent")
            rows = await self.settle(deployment, self.settings.drain_within)
            drained = deployment.cpu_sample()
            peaks = deployment.peak_memory_kib()
            details = deployment.details
            log_tails = {}
            if result.errors or warm.errors:  # what the service said about them
                progress(f"  errors: {dict(result.error_statuses)}; see the figure's log_tails")
                log_tails = {c.name: c.log_tail(10) for c in deployment.processes}
            self.leaving(deployment, rows)
        receipts = await self.fakes.receipts()
        if provider_delay:
            await self.fakes.reset()
        return LoadRun(
            run=run,
            reference=reference,
            conditions=conditions,
            warm=warm,
            result=result,
            started=started,
            rows=rows,
            receipts=receipts,
            peaks=peaks,
            details=details,
            samples=(before, loaded, drained),
            provider_delay_s=provider_delay,
            log_tails=log_tails,
        )

    async def failover(self) -> dict[str, Any]:
        """Figure 3: steady load; SendGrid's fake turns to 503 during it."""
        s = self.settings
        await self.fakes.reset()
        async with embedded(self.workdir, self.fakes) as deployment:
            progress(
                f"  Mailman ready; {s.failover_rate:.0f} req/s for {s.failover_seconds:.0f} s, "
                f"SendGrid -> 503 after {s.switch_after:.0f} s"
            )

            async def switch() -> float:
                await asyncio.sleep(s.switch_after)
                return await self.fakes.set_mode("sendgrid", "503")

            async with asyncio.TaskGroup() as group:
                load = group.create_task(
                    run_steady(deployment.url, rate=s.failover_rate, seconds=s.failover_seconds)
                )
                switched = group.create_task(switch())
            samples, switch_at = load.result(), switched.result()
            rows = await self.settle(deployment, s.drain_within)
            peaks = deployment.peak_memory_kib()
            details = deployment.details
            self.leaving(deployment, rows)
        receipts = await self.fakes.receipts()
        await self.fakes.reset()

        ids = [x.mail_id for x in samples if x.mail_id is not None]
        lost = lost_mails(rows, len(ids), ids)
        by_id = {r[0]: r for r in rows}
        mails = [by_id[i] for i in ids if i in by_id and by_id[i][1] == "sent"]
        mailgun_after = [t for t in receipts["mailgun"].at if t >= switch_at]
        to_mailgun = min(mailgun_after) - switch_at if mailgun_after else None
        before = [u - c for _, _, c, u in mails if c < switch_at - WINDOW_BEFORE_S]
        pre_p99 = percentile(before, 99)
        affected = [u - c for _, _, c, u in mails if c >= switch_at - WINDOW_BEFORE_S]
        delayed = sum(1 for t in affected if pre_p99 == pre_p99 and t > pre_p99)
        window = [
            u - c
            for _, _, c, u in mails
            if switch_at - WINDOW_BEFORE_S <= c <= switch_at + WINDOW_AFTER_S
        ]
        answered = [x for x in samples if x.status == 201]
        span = samples[-1].at - samples[0].at if len(samples) > 1 else 0.0
        sendgrid_after = sum(1 for t in receipts["sendgrid"].at if t >= switch_at)
        return {
            "run": "failover",
            "kind": "failover",
            "deployment": details,
            "rate": s.failover_rate,
            "requests": len(samples),
            "achieved_rps": round(len(samples) / span, 1) if span > 0 else None,
            "errors": len(samples) - len(answered),
            "accept_p50_ms": round(percentile([x.latency_ms for x in answered], 50), 2),
            "accept_p99_ms": round(percentile([x.latency_ms for x in answered], 99), 2),
            "switch_after_s": s.switch_after,
            "to_mailgun_s": None if to_mailgun is None else round(to_mailgun, 4),
            "pre_switch_p99_ms": _ms(before, 99),
            "delayed": delayed,
            "window_mails": len(window),
            "window_p50_ms": _ms(window, 50),
            "window_p99_ms": _ms(window, 99),
            "after_switch_p99_ms": _ms(affected, 99),
            "sendgrid_accepted_after_switch": sendgrid_after,
            "provider_receipts": {n: len(r.ids) for n, r in receipts.items()},
            "sendgrid_calls": receipts["sendgrid"].calls,
            "accepted": len(ids),
            "lost": lost,
            "peak_memory": _peak_memory(peaks),
            "target_s": FAILOVER_TARGET_S,
            "pass": to_mailgun is not None and to_mailgun < FAILOVER_TARGET_S and lost == 0,
        }


@dataclass(frozen=True)
class LoadRun:
    """What one throughput run measured (figures 1, 2 and 4 are views of it)."""

    run: str
    reference: LoadResult
    #: How quiet the machine was when the reference was measured (``Bench.quiet``).
    conditions: dict[str, Any]
    warm: LoadResult
    result: LoadResult
    #: Unix time the measured load began.
    started: float
    rows: list[Row]
    receipts: dict[str, Receipts]
    peaks: dict[str, int]
    details: dict[str, Any]
    #: CPU just before the measured load, just after it, and once every mail was sent.
    samples: tuple[cpu.Sample, cpu.Sample, cpu.Sample]
    #: How late the fake providers answered every send (0: at once).
    provider_delay_s: float
    #: The last lines of each process's log, when the service answered errors.
    log_tails: dict[str, str]

    def measured_rows(self) -> list[Row]:
        """The mails of the measured load (the warm-up's were sent before it began)."""
        return [r for r in self.rows if r[2] >= self.started]

    def delivered(self) -> int:
        """Mails of the measured load that reached ``sent``."""
        return sum(1 for r in self.measured_rows() if r[1] == "sent")

    def cpu_accepted(self) -> dict[str, Any]:
        """CPU per accepted mail, per process, during the measured load."""
        before, loaded, _ = self.samples
        return cpu.usage(before, loaded, self.result.accepted)

    def cpu_delivered(self) -> dict[str, Any]:
        """CPU per delivered mail, per process, from the load's start until every mail was sent."""
        before, _, drained = self.samples
        return cpu.usage(before, drained, self.delivered(), per="delivered")


def _common(run: LoadRun) -> dict[str, Any]:
    warm, result, rows = run.warm, run.result, run.rows
    ids = (
        None
        if result.accepted_ids is None or warm.accepted_ids is None
        else [*warm.accepted_ids, *result.accepted_ids]
    )
    delivered = [i for r in run.receipts.values() for i in r.ids]
    return {
        "run": run.run,
        "deployment": run.details,
        "reference": {**run.reference.as_json(), **run.conditions},
        "provider_delay_s": run.provider_delay_s,
        "service": result.as_json(),
        "accepted": warm.accepted + result.accepted,
        "warmup_accepted": warm.accepted,
        "stored": len(rows),
        "sent": sum(1 for _, s, _, _ in rows if s == "sent"),
        "lost": lost_mails(rows, warm.accepted + result.accepted, ids),
        "provider_receipts": {n: len(r.ids) for n, r in run.receipts.items()},
        "duplicate_deliveries": len(delivered) - len(set(delivered)),
        "peak_memory": _peak_memory(run.peaks),
        **({"log_tails": run.log_tails} if run.log_tails else {}),
    }


def _verdict(figure: dict[str, Any]) -> bool:
    """Nothing lost, mails accepted in the measured run and, where there is a target,
    the ratio meets it."""
    target = figure["target_ratio"]
    ratio = figure["ratio"]
    met = target is None or (ratio is not None and ratio >= target)
    return bool(met and figure["lost"] == 0 and figure["cpu"]["mails"] > 0)


def accept_figure(run: LoadRun, target: float | None) -> dict[str, Any]:
    """Accepts per second of the measured load; CPU per accept during the load, and per
    delivered mail until every mail was sent."""
    ceiling = run.reference.accepted_rps
    figure = _common(run)
    figure.update(
        kind="accept",
        ratio=run.result.accepted_rps / ceiling if ceiling else None,
        target_ratio=target,
        cpu=run.cpu_accepted(),
        cpu_delivered=run.cpu_delivered(),
    )
    figure["cpu_ratio"] = _cpu_ratio(run.reference, figure["cpu"])
    figure["pass"] = _verdict(figure)
    return figure


def _cpu_ratio(reference: LoadResult, usage: dict[str, Any]) -> float | None:
    """The reference's CPU per request over Mailman's CPU per mail: the ratio without the
    noise of a shared machine (what another process or the hypervisor took does not count)."""
    ours = usage.get("total_us_per_mail")
    theirs = reference.cpu_us_per_request
    return round(theirs / ours, 3) if ours and theirs else None


def end_to_end_figure(run: LoadRun, target: float | None) -> dict[str, Any]:
    """Mails per second from POST to ``sent``; CPU per delivered mail from the load's start
    until all were sent."""
    ceiling = run.reference.accepted_rps
    measured = run.measured_rows()
    sent = [r for r in measured if r[1] == "sent"]
    times = [updated - created for _, _, created, updated in sent]
    span = (max(r[3] for r in sent) - min(r[2] for r in measured)) if sent else 0.0
    mails_per_s = len(sent) / span if span > 0 else 0.0
    delivered = run.cpu_delivered()
    figure = _common(run)
    figure.update(
        kind="end_to_end",
        mails=len(measured),
        mails_sent=len(sent),
        span_s=round(span, 3),
        mails_per_s=round(mails_per_s, 1),
        time_to_sent_p50_ms=_ms(times, 50),
        time_to_sent_p99_ms=_ms(times, 99),
        ratio=mails_per_s / ceiling if ceiling else None,
        target_ratio=target,
        cpu=delivered,
        cpu_delivered=delivered,
    )
    figure["cpu_ratio"] = _cpu_ratio(run.reference, delivered)
    figure["pass"] = _verdict(figure)
    return figure


def process_cpu_figure(
    source: str, figure: dict[str, Any], process: str, target_us: float
) -> dict[str, Any]:
    """CPU µs per delivered mail of one process of the figure ``source`` against a ceiling
    (2d: 2b's worker child, at most ``WORKER_CPU_TARGET_US``)."""
    if "cpu_delivered" not in figure:
        why = figure.get("error") or figure.get("skipped") or "no CPU measured"
        return {"kind": "process_cpu", "skipped": f"{source}: {why}"}
    usage = figure["cpu_delivered"]
    spent = usage["us_per_mail"]
    # The process with its SQLite writer process, if it has one: its writes are its work.
    parts = [spent.get(process), spent.get(process + cpu.WRITER_SUFFIX)]
    value = None if parts[0] is None else round(sum(p for p in parts if p is not None), 1)
    return {
        "kind": "process_cpu",
        "source": source,
        "process": process,
        "us_per_mail": value,
        "mails": usage["mails"],
        "processes": usage["us_per_mail"],
        "target_us": target_us,
        "pass": value is not None and usage["mails"] > 0 and value <= target_us,
    }


async def _figures(
    label: str,
    names: Sequence[str],
    measure: Callable[[], Awaitable[Sequence[dict[str, Any]]]],
    only: frozenset[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run one measurement that gives the figures ``names``; an error is recorded
    (and printed) for each of them, not raised. With ``only``, a measurement whose
    label does not start with one of its names is skipped."""
    if only is not None and label.split()[0] not in only:
        return {name: {"skipped": "--only"} for name in names}
    progress(f"figure {label}")
    started = time.monotonic()
    try:
        measured = await measure()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return {name: {"error": error} for name in names}
    wall = round(time.monotonic() - started, 1)
    return {name: {**figure, "wall_s": wall} for name, figure in zip(names, measured, strict=True)}


async def run(settings: Settings) -> dict[str, Any]:
    """Every figure; the results dictionary (as written to results.json)."""
    results: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "loadgen": settings.loadgen,
        },
        "settings": {k: _plain(v) for k, v in asdict(settings).items()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "targets": {
            "accept": ACCEPT_TARGET,
            "processes_accept": PROCESSES_ACCEPT_TARGET,
            "end_to_end": END_TO_END_TARGET,
            "processes_end_to_end": PROCESSES_END_TO_END_TARGET,
            "slow_end_to_end": SLOW_END_TO_END_TARGET,
            "worker_cpu_us_per_delivered_mail": WORKER_CPU_TARGET_US,
        },
        "slow_provider_s": SLOW_PROVIDER_S,
        "figures": {},
    }
    results["settings"].pop("mysql_url")  # it may carry a password
    # SIGTERM stops the benchmark like Ctrl-C does: cancelled, and everything it started stopped.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    figures: dict[str, Any] = results["figures"]
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="mailman-bench-") as tmp:
        workdir = Path(tmp)
        try:
            fakes_child, announced = await start_announcing(
                "fakes", "bench.fakes", workdir / "fakes.log"
            )
            children.append(fakes_child)
            reference_child, ref = await start_announcing(
                "reference", "bench.reference", workdir / "reference.log", "--port", "0"
            )
            children.append(reference_child)
            reference_url = f"http://127.0.0.1:{ref['port']}"
            progress(f"fakes and reference ready; load generator: {settings.loadgen}")
            async with aiohttp.ClientSession() as http:
                fakes = Fakes(announced, http, fakes_child.pid)
                bench = Bench(settings, workdir, fakes, reference_url, reference_child.pid)
                await _measure_all(settings, bench, workdir, fakes, figures)
        finally:
            await asyncio.gather(*(c.stop() for c in reversed(children)))
    results["peak_memory"] = {
        name: figures[name]["peak_memory"] for name in FIGURES if "peak_memory" in figures[name]
    }
    runs = {f["run"]: f["lost"] for f in figures.values() if f.get("lost") is not None}
    results["lost"] = sum(runs.values())
    results["errors"] = [name for name, f in figures.items() if f.get("error")]
    return results


async def _measure_all(
    settings: Settings, bench: Bench, workdir: Path, fakes: Fakes, figures: dict[str, Any]
) -> None:
    """Every figure, into ``figures`` (keyed as ``bench.report.FIGURES``)."""

    def one_process() -> AbstractAsyncContextManager[Deployment]:
        return embedded(workdir, fakes)

    def several() -> AbstractAsyncContextManager[Deployment]:
        return embedded(workdir, fakes, processes=PROCESSES)

    async def accept(run: str, deploy: Deployment_, target: float) -> list[dict[str, Any]]:
        return [accept_figure(await bench.load_run(run, deploy), target)]

    async def end_to_end(run: str, deploy: Deployment_, target: float) -> list[dict[str, Any]]:
        return [end_to_end_figure(await bench.load_run(run, deploy), target)]

    figures.update(
        await _figures(
            "1a accept, one process",
            ["accept"],
            lambda: accept("accept", one_process, ACCEPT_TARGET),
            settings.only,
        )
    )
    figures.update(
        await _figures(
            f"1b accept, --processes {PROCESSES}",
            ["processes_accept"],
            lambda: accept("processes_accept", several, PROCESSES_ACCEPT_TARGET),
            settings.only,
        )
    )
    figures.update(
        await _figures(
            "2a end to end, one process",
            ["end_to_end"],
            lambda: end_to_end("end_to_end", one_process, END_TO_END_TARGET),
            settings.only,
        )
    )
    figures.update(
        await _figures(
            f"2b end to end, --processes {PROCESSES}",
            ["processes_end_to_end"],
            lambda: end_to_end("processes_end_to_end", several, PROCESSES_END_TO_END_TARGET),
            settings.only,
        )
    )
    figures["worker_cpu"] = process_cpu_figure(
        "processes_end_to_end", figures["processes_end_to_end"], WORKER, WORKER_CPU_TARGET_US
    )

    async def slow_providers() -> list[dict[str, Any]]:
        run = await bench.load_run("slow_end_to_end", one_process, provider_delay=SLOW_PROVIDER_S)
        return [end_to_end_figure(run, SLOW_END_TO_END_TARGET)]

    figures.update(
        await _figures(
            f"2c end to end, one process, providers answering in {SLOW_PROVIDER_S * 1000:.0f} ms",
            ["slow_end_to_end"],
            slow_providers,
            settings.only,
        )
    )

    async def failover() -> list[dict[str, Any]]:
        return [await bench.failover()]

    figures.update(await _figures("3 failover", ["failover"], failover, settings.only))

    why = "--no-scaled" if not settings.scaled else None
    why = why or await scaled_unavailable(settings.mysql_url)

    async def scaled_run(senders: int) -> list[dict[str, Any]]:
        def deploy() -> AbstractAsyncContextManager[Deployment]:
            return scaled(workdir, fakes, settings.mysql_url, senders=senders)

        # One run, two views: accepts during the load, and the mails sent until drained.
        measured = await bench.load_run(f"scaled_{senders}", deploy)
        return [accept_figure(measured, None), end_to_end_figure(measured, None)]

    for senders in SCALED_SENDERS:
        names = [f"scaled_{senders}_accept", f"scaled_{senders}_end_to_end"]
        quick_skip = settings.quick and senders not in QUICK_SCALED_SENDERS
        skip = why or ("--quick" if quick_skip else None)
        if skip is not None:
            figures.update({name: {"skipped": skip} for name in names})
            continue
        label = f"4 scaled, {senders} sender{'s' if senders > 1 else ''}"
        measure = functools.partial(scaled_run, senders)
        figures.update(await _figures(label, names, measure, settings.only))
    if why is not None:
        progress(f"figure 4 (scaled) skipped: {why}")


def write_outputs(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    png_path = out / "bench.png"
    draw_chart(results, png_path)
    return json_path, png_path


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:  # python -m bench soak: retention levels the store off
        from . import soak

        return soak.main(argv[1:])
    if argv[:1] == ["figures"]:  # python -m bench figures: what a read of them costs
        from . import figures

        return figures.main(argv[1:])
    if argv[:1] == ["find"]:  # python -m bench find: GET /mail's filters on a full store
        from . import find

        return find.main(argv[1:])
    if argv[:1] == ["memory"]:  # python -m bench memory: peak RSS with bodies in flight
        from . import memory

        return asyncio.run(memory.main(argv[1:]))
    settings = parse_args(argv)
    try:
        results = asyncio.run(run(settings))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    json_path, png_path = write_outputs(results, settings.out)
    print()
    print(machine_line(results))
    print()
    print(format_table(results))
    print()
    print(NOTES)
    print()
    print(f"results: {json_path}  chart: {png_path}")
    return 1 if results["errors"] or results["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's own logic: naming a deployment's processes from /proc, CPU per mail by
process, the quiet-machine check before a reference, the 2d CPU ceiling, the table rows
and the fake providers' delay control.

The benchmark's figures are never asserted (they depend on the machine); these check
what turns /proc and the results into figures.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench import cpu, instructions
from bench.__main__ import (
    WORKER_CPU_TARGET_US,
    _figures,
    parse_args,
    process_cpu_figure,
    quiet,
)
from bench.fakes import TimedMailgun, TimedSendGrid, control_app
from bench.report import format_table
from mailman.store.sqlite import SQLiteStore, _ProcessWriter
from tests.conftest import eventually

_SLEEPER = "import time; time.sleep(60)"
#: A parent that starts a child per role (as ``--processes 2`` does), then sleeps.
_PARENT = f"""
import subprocess, sys, time
roles = sys.argv[1:]
kids = [subprocess.Popen([sys.executable, "-c", {_SLEEPER!r}, "serve", "--role", r])
        for r in roles]
time.sleep(60)
"""


Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Starts ``python -c code args...``; each one (and its children) killed and reaped after."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(code: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code, *args])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        for pid in cpu.descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


def test_role_flag_reads_the_last_role_in_either_spelling() -> None:
    """The ``--role`` value is read as ``--role X`` or ``--role=X``; the last one wins."""
    argv = ["python", "-m", "mailman", "serve", "--role", "all", "--role", "api", "--port", "0"]
    assert cpu.role_flag(argv) == "api"
    assert cpu.role_flag(["mailman", "--role=relay,sendgrid"]) == "relay,sendgrid"
    assert cpu.role_flag(["python", "-m", "mailman"]) is None
    assert cpu.role_flag(["mailman", "--role"]) is None


def test_role_name_is_api_worker_or_the_one_role() -> None:
    """The API role alone is ``api``, several roles (``--processes``' worker) ``worker``,
    one other role its own name."""
    assert cpu.role_name("api") == "api"
    assert cpu.role_name("bookkeeper,mailgun,relay,retry,sendgrid") == "worker"
    assert cpu.role_name("sendgrid") == "sendgrid"


async def test_descendants_are_named_by_the_role_on_their_command_line(spawn: Spawn) -> None:
    """A started process's children are named from the ``--role`` in /proc/<pid>/cmdline,
    ahead of what the parent logged, a second of a name numbered."""
    parent = spawn(_PARENT, "relay,sendgrid,sweeper", "api", "api")
    await eventually(
        lambda: (
            all(cpu.role_flag(cpu.cmdline(c)) for c in cpu.descendants(parent.pid))
            and len(cpu.descendants(parent.pid)) == 3
        ),
        what="three children with their command lines",
    )
    kids = cpu.descendants(parent.pid)
    names: dict[int, str] = {}
    logged = {pid: "logged" for pid in kids}
    cpu.name_tree({parent.pid: "parent"}, None, names, logged)
    assert sorted(names.values()) == ["api", "api-2", "parent", "worker"]
    by_role = {cpu.role_flag(cpu.cmdline(pid)): names[pid] for pid in kids}
    assert by_role["relay,sendgrid,sweeper"] == "worker"


def test_usage_attributes_cpu_to_each_process_per_delivered_mail() -> None:
    """CPU per mail is each process's ticks between two samples (all of a process new in the
    second) over the mails, in µs, with the total of Mailman's processes apart from infra."""
    tick_us = 1e6 / cpu.CLK_TCK
    before = cpu.Sample(10.0, {1: ("api", 100), 2: ("worker", 40)}, {9: ("mariadb", 5)})
    after = cpu.Sample(
        12.0,
        {1: ("api", 130), 2: ("worker", 100), 3: ("parent", 10)},
        {9: ("mariadb", 25)},
    )
    usage = cpu.usage(before, after, 200, per="delivered")
    assert usage["per"] == "delivered"
    assert usage["mails"] == 200
    assert usage["us_per_mail"] == {
        "api": round(30 * tick_us / 200, 1),
        "worker": round(60 * tick_us / 200, 1),
        "parent": round(10 * tick_us / 200, 1),
    }
    assert usage["total_us_per_mail"] == round(100 * tick_us / 200, 1)
    assert usage["infra_us_per_mail"] == {"mariadb": round(20 * tick_us / 200, 1)}
    assert cpu.usage(before, after, 0)["us_per_mail"]["api"] is None
    assert usage["total_bytes_written_per_mail"] is None  # no process's writes were read


def test_usage_gives_the_bytes_written_to_storage_per_mail() -> None:
    """Bytes written per mail are each Mailman process's write_bytes between two samples
    (all of a process new in the second) over the mails, and their total."""
    before = cpu.Sample(10.0, {}, {}, {1: ("api", 1_000), 2: ("api-writer", 50_000)})
    after = cpu.Sample(
        12.0, {}, {}, {1: ("api", 1_000), 2: ("api-writer", 2_050_000), 3: ("worker", 400)}
    )
    usage = cpu.usage(before, after, 100)
    assert usage["bytes_written_per_mail"] == {"api": 0, "api-writer": 20_000, "worker": 4}
    assert usage["total_bytes_written_per_mail"] == 20_004
    assert cpu.usage(before, after, 0)["total_bytes_written_per_mail"] is None


def test_usage_gives_the_share_of_the_span_each_main_thread_ran_or_waited() -> None:
    """A main thread's shares are its ns on a core and in the run queue between two samples
    over the span's wall time; a process missing from the first sample is left out."""
    before = cpu.Sample(10.0, {}, {}, sched={1: ("api", (5_000_000_000, 100_000_000))})
    after = cpu.Sample(
        12.0,
        {},
        {},
        sched={
            1: ("api", (6_740_000_000, 160_000_000)),
            2: ("worker", (900_000_000, 0)),
        },
    )
    shares = cpu.usage(before, after, 100)["main_thread"]
    assert shares == {"api": {"on_cpu": 0.87, "waiting_for_cpu": 0.03}}
    assert cpu.main_threads(after, before) == {}  # no span


def test_main_thread_reads_the_time_a_process_spent_on_a_core() -> None:
    """``main_thread`` reads at least the CPU time the process's main thread used (it spun
    for half a second, by its own clock), and None for a process that is gone."""
    script = (
        "import sys, time\n"
        "while time.thread_time() < 0.5: pass\n"
        "print('spun', flush=True); sys.stdin.readline()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline() == "spun\n"
        figures = cpu.main_thread(proc.pid)
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait()
    assert figures is not None
    ran, waited = figures
    assert ran >= 0.5e9 and waited >= 0
    assert cpu.main_thread(proc.pid) is None


def test_table_shows_how_much_of_the_load_each_serving_loop_was_on_a_core() -> None:
    """An accept figure's row shows the serving process's loop on a core, and the share it
    waited for one when that is not nothing, beside the reference's own."""
    reference = {
        "accepted_rps": 20000.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "errors": 0,
        "main_thread": {"on_cpu": 0.99, "waiting_for_cpu": 0.001},
    }
    accept = {
        "kind": "accept",
        "reference": reference,
        "service": {"accepted_rps": 6000.0, "p50_ms": 5.0, "p99_ms": 9.0, "errors": 0},
        "cpu": {
            "total_us_per_mail": 210.0,
            "us_per_mail": {"api": 140.0, "api-writer": 70.0},
            "main_thread": {
                "api": {"on_cpu": 0.874, "waiting_for_cpu": 0.031},
                "api-writer": {"on_cpu": 0.4, "waiting_for_cpu": 0.0},
            },
        },
        "ratio": 0.3,
        "target_ratio": 0.4,
        "lost": 0,
        "pass": False,
    }
    table = format_table({"figures": {"processes_accept": accept}, "lost": 0})
    row = next(line for line in table.splitlines() if line.startswith("1b"))
    assert "6000 req/s, p50 5.0 ms, p99 9.0 ms; loop on a core 87 %, waiting for one 3 %" in row
    assert "20000 req/s, p50 1.0 ms, p99 2.0 ms; loop on a core 99 %" in row
    assert "loop on a core 99 %, waiting" not in row


def test_written_bytes_reads_what_a_process_wrote_to_a_file(tmp_path: Path) -> None:
    """``written_bytes`` counts a process's writes to a file once they reach storage
    (fsynced here), and is None for a process that is gone."""
    script = (
        "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT); "
        "os.write(fd, b'x' * 1_048_576); os.fsync(fd); print('written', flush=True); "
        "sys.stdin.readline()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "f")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline() == "written\n"
        written = cpu.written_bytes(proc.pid)
        proc.stdin.close()
    assert written is not None, "this kernel does not count write_bytes (/proc/<pid>/io)"
    assert written >= 1_048_576
    assert cpu.written_bytes(proc.pid) is None


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[0]


async def test_a_zombie_is_not_alive(spawn: Spawn) -> None:
    """A process that exited but was not reaped yet (a zombie in /proc) counts as gone."""
    proc = spawn(_SLEEPER)
    assert cpu.alive(proc.pid)
    proc.kill()  # not reaped: its /proc entry stays, in state Z, until wait()
    await eventually(lambda: _state(proc.pid) == "Z", what="the killed process to be a zombie")
    assert cpu.cpu_ticks(proc.pid) is not None  # still in /proc
    assert not cpu.alive(proc.pid)


async def test_quiet_waits_for_the_previous_deployment_and_reads_the_load(
    spawn: Spawn,
) -> None:
    """Before a reference, the previous deployment's processes must have exited; the load
    average, the machine's busy cores and the mails left pending are recorded."""
    proc = spawn(_SLEEPER)
    proc.kill()
    conditions = await quiet([proc.pid], pending=3)
    assert conditions["previous_processes_left"] == 0
    assert conditions["previous_pending"] == 3
    assert conditions["loadavg"] is not None and len(conditions["loadavg"]) == 3
    assert conditions["machine_busy_cores"] is not None


def test_busy_cores_from_two_readings_of_the_machine() -> None:
    """The cores the machine kept busy: busy ticks over all ticks, times the cores."""
    cores = os.cpu_count() or 1
    assert cpu.busy_cores((100, 1000), (150, 1100)) == round(0.5 * cores, 2)
    assert cpu.busy_cores(None, (1, 2)) is None
    assert cpu.busy_cores((1, 2), (1, 2)) is None


def _end_to_end(worker_us: float, mails: int = 500) -> dict[str, Any]:
    return {
        "kind": "end_to_end",
        "cpu_delivered": {
            "mails": mails,
            "us_per_mail": {"parent": 3.0, "worker": worker_us, "api": 180.0},
            "total_us_per_mail": worker_us + 183.0,
        },
    }


def test_worker_cpu_target_is_a_ceiling_on_2b_worker() -> None:
    """2d passes when 2b's worker child spends at most the target per delivered mail, and
    misses above it or when nothing was delivered."""
    at = process_cpu_figure("processes_end_to_end", _end_to_end(300.0), "worker", 300.0)
    assert at["pass"] is True and at["us_per_mail"] == 300.0
    above = process_cpu_figure("processes_end_to_end", _end_to_end(300.1), "worker", 300.0)
    assert above["pass"] is False
    none = process_cpu_figure("processes_end_to_end", _end_to_end(0.0, mails=0), "worker", 300.0)
    assert none["pass"] is False
    assert WORKER_CPU_TARGET_US == 300.0


def test_worker_cpu_counts_its_sqlite_writer_process() -> None:
    """2d adds the worker's writer process (``worker-writer``) to the worker's own CPU."""
    figure = _end_to_end(200.0)
    figure["cpu_delivered"]["us_per_mail"]["worker-writer"] = 120.0
    counted = process_cpu_figure("processes_end_to_end", figure, "worker", 300.0)
    assert counted["us_per_mail"] == 320.0 and counted["pass"] is False


async def test_a_sqlite_writer_process_is_named_after_the_process_it_writes_for(
    tmp_path: Path,
) -> None:
    """A store's writer process is found below its process (under the forker) and named
    ``<name>-writer``, the forker ``<name>-forker``."""
    store = SQLiteStore(str(tmp_path / "m.db"), writer="process")
    async with store:
        writer = store._writer
        assert isinstance(writer, _ProcessWriter) and writer._pid is not None
        names: dict[int, str] = {}
        cpu.name_tree({os.getpid(): "mailman"}, None, names)
        assert names[writer._pid] == "mailman-writer"
        assert "mailman-forker" in names.values()


def test_worker_cpu_is_skipped_when_2b_was_not_measured() -> None:
    """Without 2b's CPU (an error), 2d says why instead of a verdict."""
    figure = process_cpu_figure("processes_end_to_end", {"error": "boom"}, "worker", 300.0)
    assert figure["skipped"] == "processes_end_to_end: boom"
    assert "pass" not in figure


def test_only_takes_figure_names_and_refuses_others(capsys: pytest.CaptureFixture[str]) -> None:
    """``--only 1a,2c`` selects those figures; an unknown name is a usage error naming it."""
    assert parse_args(["--only", "1a, 2c"]).only == frozenset({"1a", "2c"})
    assert parse_args([]).only is None
    with pytest.raises(SystemExit):
        parse_args(["--only", "1a,9z"])
    assert "9z" in capsys.readouterr().err


async def test_a_figure_left_out_by_only_is_skipped_unmeasured() -> None:
    """A measurement whose label starts with a name ``only`` lacks is not run."""
    ran: list[str] = []

    async def measure() -> list[dict[str, Any]]:
        ran.append("measured")
        return [{"value": 1}]

    skipped = await _figures("2c end to end", ["slow_end_to_end"], measure, frozenset({"1a"}))
    assert skipped == {"slow_end_to_end": {"skipped": "--only"}} and ran == []
    taken = await _figures("2c end to end", ["slow_end_to_end"], measure, frozenset({"2c"}))
    assert taken["slow_end_to_end"]["value"] == 1 and ran == ["measured"]


def test_table_shows_the_2d_verdict_and_each_reference_with_its_load() -> None:
    """The table has 2d's process and ceiling, and the reference's req/s with the load average
    beside every ratio."""
    reference = {
        "accepted_rps": 20000.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "errors": 0,
        "loadavg": [1.25, 0.5, 0.25],
    }
    slow = {
        **_end_to_end(350.0),
        "run": "slow_end_to_end",
        "reference": reference,
        "mails_per_s": 2000.0,
        "time_to_sent_p50_ms": 210.0,
        "time_to_sent_p99_ms": 400.0,
        "ratio": 0.1,
        "target_ratio": 0.10,
        "lost": 0,
        "pass": True,
    }
    worker = process_cpu_figure("processes_end_to_end", _end_to_end(350.0), "worker", 300.0)
    table = format_table({"figures": {"slow_end_to_end": slow, "worker_cpu": worker}, "lost": 0})
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    row_2d = rows["2d CPU per delivered mail, 2b's worker"]
    assert "worker 350 us per delivered mail" in row_2d and "<= 300 us" in row_2d
    assert row_2d.rstrip().endswith("MISS")
    row_2c = rows["2c end to end, providers answer in 200 ms (1 process)"]
    assert "20000 req/s" in row_2c and "load 1.25" in row_2c
    assert "worker 350" in row_2c and row_2c.rstrip().endswith("pass")


async def test_fake_providers_take_a_delay_and_reset_clears_it() -> None:
    """``POST /_control/{provider}/delay`` makes that fake wait before each request; reset
    brings it back to answering at once; a delay that is not seconds is refused."""
    async with TimedSendGrid() as sendgrid, TimedMailgun() as mailgun:
        runner = web.AppRunner(control_app({"sendgrid": sendgrid, "mailgun": mailgun}))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            control = f"http://{host}:{port}/_control"
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{control}/sendgrid/delay", data="0.2") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["delay_s"] == 0.2
                assert sendgrid.delay == 0.2 and mailgun.delay == 0.0
                for bad in ("slow", "-1", "nan", "3600"):
                    async with http.post(f"{control}/mailgun/delay", data=bad) as resp:
                        assert resp.status == 400, bad
                assert mailgun.delay == 0.0
                async with http.post(f"{control}/reset") as resp:
                    assert resp.status == 200
                assert sendgrid.delay == 0.0
        finally:
            await runner.cleanup()


def test_the_memory_benchmarks_mails_are_valid_mails() -> None:
    """`python -m bench memory` posts mails the API takes (a refused one measures nothing)."""
    import orjson

    from bench.memory import SMALL, large_body
    from mailman.core.submission import parse_mail

    for body in (large_body(), SMALL):
        mail = parse_mail(orjson.loads(body), mail_id="m1", default_subject="", now=0.0)
        assert mail.to[0].email == "ann@example.com"
    assert parse_mail(
        orjson.loads(large_body()), mail_id="m", default_subject="", now=0.0
    ).attachments


def test_instructions_per_request_are_the_runs_difference_over_the_requests() -> None:
    """One more request costs the measured run's count less the warm-up's, over its requests."""
    count = instructions.Count("mailman", warm_up=4_000_000, measured=6_000_000, requests=1000)
    assert count.per_request == 2000


def test_instructions_are_read_from_callgrinds_summary() -> None:
    """The count is callgrind's ``Collected`` line; output without one is an error."""
    printed = b"==123== Events    : Ir\n==123== Collected : 4529482420\n==123==\n"
    assert instructions.collected(printed) == 4529482420
    with pytest.raises(RuntimeError, match="no count"):
        instructions.collected(b"==123== Events    : Ir\n")


def test_instructions_are_told_apart_by_the_process_that_ran_them() -> None:
    """Following children, the first command is the serving loop, a process forked
    without an exec (printing no command of its own) a writer, any other command
    another helper; output without a command, or without the serving one's count, is
    an error."""
    printed = (
        b"==10== Command: python -m bench.instructions --serve mailman\n"
        b"==11== Command: python -c forker\n"
        b"==12== Collected : 700\n==13== Collected : 50\n"
        b"==11== Collected : 90\n==10== Collected : 4000\n"
    )
    assert instructions.collected_by_process(printed) == {
        instructions.LOOP: 4000,
        instructions.WRITER: 750,
        instructions.OTHER: 90,
    }
    with pytest.raises(RuntimeError, match="no command"):
        instructions.collected_by_process(b"==12== Collected : 700\n")
    with pytest.raises(RuntimeError, match="no count"):
        instructions.collected_by_process(b"==10== Command: python\n==12== Collected : 700\n")


def test_instructions_take_requests_as_a_multiple_of_the_connections(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every connection sends as many requests: a count they do not divide is refused."""
    assert instructions.parse_args(["--requests", "800", "--connections", "4"]).requests == 800
    for bad in (["--requests", "801"], ["--connections", "0"], ["--requests", "-4"]):
        with pytest.raises(SystemExit):
            instructions.parse_args(bad)
    assert "multiple of --connections" in capsys.readouterr().err


def test_a_counted_run_is_this_module_serving_under_callgrind() -> None:
    """A counted run is callgrind (its own output discarded: the count is in its summary)
    running ``bench.instructions``'s serving mode with this Python."""
    argv = instructions.run_argv("/usr/bin/valgrind", "mailman", 2000, 4)
    assert argv[:3] == ["/usr/bin/valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    assert argv[3] == sys.executable
    assert argv[4:] == [
        "-m",
        "bench.instructions",
        "--serve",
        "mailman",
        "--requests",
        "2000",
        "--connections",
        "4",
    ]
    assert instructions.parse_args(argv[6:]).serve == "mailman"


def test_a_run_counting_the_writer_follows_the_children() -> None:
    """With the writer counted, callgrind follows the serving process's children (the
    writers' forker, and the writers it forks); without, it does not."""
    argv = instructions.run_argv("/usr/bin/valgrind", "mailman", 2000, 4, writer=True)
    assert argv[:4] == [
        "/usr/bin/valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        "--trace-children=yes",
    ]
    assert instructions.parse_args(argv[7:]).serve == "mailman"
    assert instructions.parse_args(["--writer"]).writer
    plain = instructions.run_argv("/usr/bin/valgrind", "mailman", 2000, 4)
    assert not any(a.startswith("--trace-children") for a in plain)


def test_a_delivered_run_is_given_the_fake_providers_it_sends_to() -> None:
    """A delivered run's command carries what the fake providers announced; a run of
    another target carries nothing of them."""
    fakes = {"sendgrid": "http://127.0.0.1:1", "sendgrid_api_key": "SG.bench"}
    argv = instructions.run_argv("/usr/bin/valgrind", "delivered", 2000, 4, fakes)
    assert instructions.parse_args(argv[6:]).fakes == fakes
    assert "--fakes" not in instructions.run_argv("/usr/bin/valgrind", "mailman", 2000, 4)


def test_the_counted_packages_are_compiled_before_counting(tmp_path: Path) -> None:
    """Before counting, every module of the counted packages has its cached bytecode,
    whatever ``PYTHONDONTWRITEBYTECODE`` says (a run would otherwise count compiling it)."""
    for package in instructions.COMPILED:
        (tmp_path / package / "sub").mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("X = 1\n")
        (tmp_path / package / "sub" / "mod.py").write_text("def f() -> int:\n    return 2\n")
    instructions.compile_sources(tmp_path)
    for source in tmp_path.rglob("*.py"):
        assert Path(importlib.util.cache_from_source(str(source))).is_file(), source
    (tmp_path / "bench" / "broken.py").write_text("def (:\n")
    with pytest.raises(RuntimeError, match="did not compile"):
        instructions.compile_sources(tmp_path)

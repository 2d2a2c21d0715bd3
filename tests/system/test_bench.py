"""The benchmark cannot rot: one quick smoke run of ``python -m bench`` as a real process.

The benchmark itself is not part of the suite (it takes minutes and its
figures depend on the machine); this runs it with small counts, the aiohttp
load generator and no scaled figure, and checks what it produced (the
``--processes`` figures and the run with providers answering in 200 ms too).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import instructions

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quick_bench_run_measures_every_figure_and_loses_nothing(tmp_path: Path) -> None:
    """A quick bench run exits 0, measures every figure with nothing lost and draws the chart."""
    out = tmp_path / "results"
    argv = [sys.executable, "-m", "bench", "--quick", "--no-scaled", "--loadgen", "aiohttp"]
    done = subprocess.run(
        [*argv, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    results = json.loads((out / "results.json").read_text())
    figures = results["figures"]
    measured = [
        "accept",
        "end_to_end",
        "failover",
        "processes_accept",
        "processes_end_to_end",
        "slow_end_to_end",
    ]
    for name in measured:
        figure = figures[name]
        assert "error" not in figure, f"{name}: {figure}"
        assert figure["accepted"] > 0, name
        assert figure["lost"] == 0, f"{name}: {figure}"
        assert figure["peak_memory"]["max_kib"] > 0, name
    for name in measured:
        if name != "failover":  # CPU per delivered mail, per process and in total
            usage = figures[name]["cpu_delivered"]
            assert usage["per"] == "delivered" and usage["mails"] > 0, name
            assert usage["total_us_per_mail"] > 0, f"{name}: {usage}"
            assert set(usage["us_per_mail"]) == set(figures[name]["peak_memory"]["processes"])
            # The fake providers' CPU, beside Mailman's and not in its total.
            assert "fakes" in usage["infra_us_per_mail"], f"{name}: {usage}"
            # What its SQLite writer processes wrote to disk: every mail was committed.
            writers = [n for n in usage["bytes_written_per_mail"] if n.endswith("-writer")]
            assert writers, f"{name}: {usage}"
            assert usage["total_bytes_written_per_mail"] > 0, f"{name}: {usage}"
            # The reference of every ratio, with the machine's load when it was measured.
            reference = figures[name]["reference"]
            assert reference["accepted_rps"] > 0 and len(reference["loadavg"]) == 3, name
            assert reference["previous_processes_left"] == 0, name
    assert figures["accept"]["cpu"]["per"] == "accepted"
    # The parent and its children, named by the --role on their command lines; each
    # child's SQLite writer process and the forker it came from, named after the child.
    processes = set(figures["processes_end_to_end"]["cpu_delivered"]["us_per_mail"])
    children = {"api", "worker"}
    helpers = {f"{c}{suffix}" for c in children for suffix in ("-forker", "-writer")}
    assert processes == {"parent", *children, *helpers}, processes
    worker = figures["worker_cpu"]
    assert worker["process"] == "worker" and worker["us_per_mail"] > 0, worker
    assert worker["target_us"] == 300
    slow = figures["slow_end_to_end"]
    assert slow["provider_delay_s"] == 0.2 and slow["target_ratio"] == 0.10
    assert slow["mails_sent"] == slow["mails"] > 0
    # Every send waited 200 ms at the fake provider.
    assert slow["time_to_sent_p50_ms"] >= 200, slow
    scaled = [n for n in figures if n.startswith("scaled_")]
    assert {"scaled_1_accept", "scaled_1_end_to_end", "scaled_4_end_to_end"} <= set(scaled)
    for name in scaled:
        assert figures[name] == {"skipped": "--no-scaled"}
    assert figures["accept"]["reference"]["accepted_rps"] > 0
    assert figures["accept"]["target_ratio"] == 0.30
    assert figures["end_to_end"]["target_ratio"] == 0.16
    assert figures["processes_accept"]["target_ratio"] == 0.40
    assert figures["end_to_end"]["mails_sent"] == figures["end_to_end"]["mails"] > 0
    assert figures["failover"]["to_mailgun_s"] is not None
    assert results["lost"] == 0
    assert set(results["peak_memory"]) == set(measured)
    assert (out / "bench.png").read_bytes().startswith(PNG_MAGIC)
    assert "lost (201, never sent)" in done.stdout
    assert "CPU us/mail" in done.stdout


def test_find_bench_times_every_query_on_a_filled_store() -> None:
    """``python -m bench find`` on 1,000 mails exits 0 and prints a row for each query, each
    recipient, tag and metadata query finding mails."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "find", "--mails", "1000", "--reads", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    rows = {
        cells[1].strip(): cells[2].strip()
        for line in done.stdout.splitlines()
        if line.startswith("| ") and (cells := line.split("|"))[2].strip().isdigit()
    }
    assert len(rows) == 16, done.stdout
    for name in ("recipient (busy, cc)", "tag", "metadata (unique)", "admin: recipient (busy)"):
        assert int(rows[name]) > 0, (name, done.stdout)


def test_instruction_count_serves_every_target() -> None:
    """``bench.instructions``'s serving mode (what valgrind runs) serves its requests to
    each target, each answered 201, and a delivered run ends once every mail was sent
    by the fake providers; each exits 0."""
    with instructions.fake_providers() as fakes:
        for target in instructions.TARGETS:
            argv = [sys.executable, "-m", "bench.instructions", "--serve", target]
            argv += ["--requests", "8", "--connections", "2", "--fakes", json.dumps(fakes)]
            done = subprocess.run(
                argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
            )
            assert done.returncode == 0, done.stderr[-2000:]

"""The benchmark cannot rot: one quick smoke run of ``python -m bench`` as a real process.

The benchmark itself is not part of the suite (it takes minutes and its
figures depend on the machine); this runs it with small counts, the aiohttp
load generator and no scaled figure, and checks what it produced.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    results = json.loads((out / "results.json").read_text())
    figures = results["figures"]
    for name in ("accept", "end_to_end", "failover"):
        figure = figures[name]
        assert "error" not in figure, f"{name}: {figure}"
        assert figure["accepted"] > 0, name
        assert figure["lost"] == 0, f"{name}: {figure}"
        assert figure["peak_memory"]["max_kib"] > 0, name
    for name in ("scaled_accept", "scaled_end_to_end"):
        assert figures[name] == {"skipped": "--no-scaled"}
    assert figures["accept"]["reference"]["accepted_rps"] > 0
    assert figures["end_to_end"]["mails_sent"] == figures["end_to_end"]["mails"] > 0
    assert figures["failover"]["to_mailgun_s"] is not None
    assert results["lost"] == 0
    assert set(results["peak_memory"]) == {"accept", "end_to_end", "failover"}
    assert (out / "bench.png").read_bytes().startswith(PNG_MAGIC)
    assert "lost (201, never sent)" in done.stdout

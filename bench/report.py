"""The benchmark's output: the table printed to stdout and the PNG chart.

Both read the results dictionary that ``bench.__main__`` also writes as
``results.json``; neither measures anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The figures in the order of the issue (peak memory and "lost" are rows of their own).
FIGURES = ("accept", "end_to_end", "failover", "scaled_accept", "scaled_end_to_end")

TITLES = {
    "accept": "1 accept (embedded, SQLite)",
    "end_to_end": "2 end to end (embedded)",
    "failover": "3 failover (SendGrid -> 503)",
    "scaled_accept": "4a accept (scaled: Kafka+MySQL)",
    "scaled_end_to_end": "4b end to end (scaled)",
}

#: Short labels for the chart's x axes.
CHART_LABELS = {
    "accept": "accept\nembedded",
    "end_to_end": "end to end\nembedded",
    "failover": "failover\n(switch window)",
    "scaled_accept": "accept\nscaled",
    "scaled_end_to_end": "end to end\nscaled",
}

HEADER = (
    "figure",
    "Mailman",
    "reference (ceiling)",
    "ratio",
    "target",
    "lost",
    "peak RSS",
    "result",
)


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f} %"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "MISS")


def _load(load: Mapping[str, Any]) -> str:
    return f"{load['accepted_rps']:.0f} req/s, p50 {_ms(load['p50_ms'])}, p99 {_ms(load['p99_ms'])}"


def _peak(figure: Mapping[str, Any]) -> str:
    memory = figure.get("peak_memory")
    if not memory:
        return "-"
    if len(memory["processes"]) == 1:
        return _mib(memory["max_kib"])
    count = len(memory["processes"])
    return f"sum {_mib(memory['sum_kib'])}, max {_mib(memory['max_kib'])} ({count} procs)"


def _memory_summary(runs: Sequence[Mapping[str, Any]]) -> str:
    """Figure 5 in one cell: the single-process runs, then the multi-process ones."""
    single = [r["max_kib"] for r in runs if len(r["processes"]) == 1]
    multi = [r for r in runs if len(r["processes"]) > 1]
    parts = []
    if single:
        low, high = _mib(min(single)), _mib(max(single))
        span = high if low == high else f"{low[:-4]}-{high}"
        parts.append(f"one process: {span} ({len(single)} runs)")
    if multi:
        total = _mib(max(r["sum_kib"] for r in multi))
        biggest = _mib(max(r["max_kib"] for r in multi))
        parts.append(f"scaled: up to {total} in all, {biggest} the largest process")
    return "; ".join(parts)


def _row(name: str, figure: Mapping[str, Any]) -> list[str]:
    title = TITLES[name]
    if figure.get("skipped"):
        return [title, f"skipped: {figure['skipped']}", "", "", "", "", "", "-"]
    if figure.get("error"):
        return [title, f"ERROR: {figure['error']}", "", "", "", "", "", "MISS"]
    lost = str(figure["lost"])
    peak = _peak(figure)
    if name == "failover":
        to_mailgun = figure["to_mailgun_s"]
        measured = (
            f"Mailgun after {'-' if to_mailgun is None else f'{to_mailgun:.3f} s'}, "
            f"{figure['delayed']} delayed, p99 to sent {_ms(figure['window_p99_ms'])}"
        )
        return [title, measured, "-", "-", "< 1 s", lost, peak, _verdict(figure["pass"])]
    reference = _load(figure["reference"])
    target = f">= {figure['target_ratio'] * 100:.0f} %"
    if name.endswith("accept"):
        measured = _load(figure["service"])
    else:
        measured = (
            f"{figure['mails_per_s']:.0f} mails/s, to sent p50 "
            f"{_ms(figure['time_to_sent_p50_ms'])}, p99 {_ms(figure['time_to_sent_p99_ms'])}"
        )
    ratio = _pct(figure["ratio"])
    return [title, measured, reference, ratio, target, lost, peak, _verdict(figure["pass"])]


def table_rows(results: Mapping[str, Any]) -> list[list[str]]:
    """One row per figure, then peak memory and lost."""
    figures = results["figures"]
    rows = [_row(name, figures[name]) for name in FIGURES if name in figures]
    memory = _memory_summary(
        [figures[n]["peak_memory"] for n in FIGURES if n in figures and "peak_memory" in figures[n]]
    )
    rows.append(["5 peak memory (VmHWM)", memory or "-", "-", "-", "-", "", "", "-"])
    lost_total = results["lost"]
    runs = sum(1 for f in figures.values() if f.get("lost") is not None)
    lost_text = f"{lost_total} in {runs} run{'s' if runs != 1 else ''}"
    verdict = _verdict(lost_total == 0 and runs > 0)
    rows.append(
        ["lost (201, never sent)", lost_text, "-", "-", "= 0", str(lost_total), "", verdict]
    )
    return rows


def format_table(results: Mapping[str, Any]) -> str:
    """The table as printed: a header, then one aligned row per figure."""
    rows = [list(HEADER), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def machine_line(results: Mapping[str, Any]) -> str:
    m = results["machine"]
    s = results["settings"]
    if s["loadgen"] == "wrk":
        load = (
            f"wrk -t1 -c{s['concurrency']}, {s['duration']} s per run "
            f"(warm-up: a separate {s['wrk_warmup_seconds']} s run, excluded)"
        )
    else:
        load = (
            f"aiohttp client, {s['requests']} requests per run, concurrency {s['concurrency']} "
            f"({s['warmup']} warm-up requests excluded)"
        )
    return (
        f"machine: {m['cores']} cores, Python {m['python']} ({m['platform']}); "
        f"load generator: {load}"
    )


NOTES = """\
Every figure ran against a fresh Mailman process (or set of processes) and a fresh store, with the
reference measured just before it in the same run, with the same load. Throughput counts 201
answers per second. reference = python -m bench.reference, a bare aiohttp app whose one handler
parses the same JSON and answers 201 with the same body and Location, storing nothing.
end to end: mails per second from the first POST to the last `sent` (sent / (last updated_at - first
created_at)) and the time from POST to `sent`, read from the store after every mail was sent.
failover: steady load; SendGrid's fake switched to 503; "Mailgun after" = first Mailgun receipt
after the switch - the switch; delayed = mails accepted from 0.5 s before the switch on whose
time to sent exceeded the pre-switch p99; p99 to sent = mails accepted in switch - 0.5 s ..
switch + 2 s. lost = accepted (201) mails that never reached `sent`."""


# --- the chart -----------------------------------------------------------------


def _short(value: float) -> str:
    if math.isnan(value):
        return ""
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _bars(
    ax: Any, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]]
) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
        heights = [math.nan if v is None else v for v in values]
        bars = ax.bar(xs, heights, width, label=name)
        ax.bar_label(bars, labels=[_short(h) for h in heights], fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(series))


def draw_chart(results: Mapping[str, Any], path: Path) -> None:
    """Throughput (Mailman vs the reference) and latency (p50, p99) of every figure that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = results["figures"]
    ran = [n for n in FIGURES if n in figures and figures[n].get("lost") is not None]
    throughput = [n for n in ran if n != "failover"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    try:
        labels = [CHART_LABELS[n] for n in throughput]
        mailman = [
            figures[n]["service"]["accepted_rps"]
            if n.endswith("accept")
            else figures[n]["mails_per_s"]
            for n in throughput
        ]
        reference = [figures[n]["reference"]["accepted_rps"] for n in throughput]
        _bars(left, labels, [("Mailman", mailman), ("reference (ceiling)", reference)])
        for x, name in enumerate(throughput):
            ratio = figures[name]["ratio"]
            if ratio is not None:
                left.annotate(
                    f"{ratio * 100:.1f} %\nof ceiling",
                    (x - 0.2, mailman[x]),
                    xytext=(0, 12),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                    fontweight="bold",
                )
        left.margins(y=0.15)
        left.set_ylabel("per second (201 answers; mails sent for end to end)")
        left.set_title("Throughput")

        latency_labels = [CHART_LABELS[n] for n in ran]
        p50: list[float | None] = []
        p99: list[float | None] = []
        for n in ran:
            f = figures[n]
            if n.endswith("accept"):
                p50.append(f["service"]["p50_ms"])
                p99.append(f["service"]["p99_ms"])
            elif n == "failover":
                p50.append(f["window_p50_ms"])
                p99.append(f["window_p99_ms"])
            else:
                p50.append(f["time_to_sent_p50_ms"])
                p99.append(f["time_to_sent_p99_ms"])
        _bars(right, latency_labels, [("p50", p50), ("p99", p99)])
        right.set_yscale("log")
        right.set_ylabel("ms (accept: POST answered; others: POST to sent)")
        right.set_title("Latency")
        fig.suptitle(machine_line(results), fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)

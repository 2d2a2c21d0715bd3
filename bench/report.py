"""The benchmark's output: the table printed to stdout and the PNG chart.

Both read the results dictionary that ``bench.__main__`` also writes as
``results.json``; neither measures anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: ``python -m mailman --processes PROCESSES`` for figures 1b and 2b.
PROCESSES = 2
#: The scaled deployment's SendGrid sender processes: one run (4a/4b/4c) for each.
SCALED_SENDERS = (1, 2, 4)

#: The figures in the table's order (peak memory and "lost" are rows of their own).
FIGURES = (
    "accept",
    "processes_accept",
    "end_to_end",
    "processes_end_to_end",
    "slow_end_to_end",
    "worker_cpu",
    "failover",
    *(f"scaled_{n}_{view}" for n in SCALED_SENDERS for view in ("accept", "end_to_end")),
)


def _senders(n: int) -> str:
    return f"{n} sender{'s' if n != 1 else ''}"


TITLES = {
    "accept": "1a accept (1 process, SQLite)",
    "processes_accept": f"1b accept (--processes {PROCESSES})",
    "end_to_end": "2a end to end (1 process)",
    "processes_end_to_end": f"2b end to end (--processes {PROCESSES})",
    "slow_end_to_end": "2c end to end, providers answer in 200 ms (1 process)",
    "worker_cpu": "2d CPU per delivered mail, 2b's worker",
    "failover": "3 failover (SendGrid -> 503)",
    **{
        f"scaled_{n}_{view}": f"4{letter} {label} (scaled, {_senders(n)})"
        for letter, n in zip("abcdefgh", SCALED_SENDERS, strict=False)
        for view, label in (("accept", "accept"), ("end_to_end", "end to end"))
    },
}

#: Short labels for the chart's x axes.
CHART_LABELS = {
    "accept": "accept\n1 process",
    "processes_accept": f"accept\n--processes {PROCESSES}",
    "end_to_end": "end to end\n1 process",
    "processes_end_to_end": f"end to end\n--processes {PROCESSES}",
    "slow_end_to_end": "end to end\n200 ms providers",
    "failover": "failover\n(switch window)",
    **{
        f"scaled_{n}_{view}": f"{label}\nscaled x{n}"
        for n in SCALED_SENDERS
        for view, label in (("accept", "accept"), ("end_to_end", "end to end"))
    },
}

HEADER = (
    "figure",
    "Mailman",
    "reference (ceiling)",
    "ratio",
    "target",
    "CPU us/mail: total (per process)",
    "lost",
    "peak RSS",
    "result",
)


def _kind(name: str, figure: Mapping[str, Any]) -> str:
    """accept, end_to_end or failover."""
    kind = figure.get("kind")
    if kind:
        return str(kind)
    return "accept" if name.endswith("accept") else name if name == "failover" else "end_to_end"


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
    text = f"{load['accepted_rps']:.0f} req/s, p50 {_ms(load['p50_ms'])}, p99 {_ms(load['p99_ms'])}"
    if load.get("errors"):
        statuses = ", ".join(f"{s} x{n}" for s, n in (load.get("error_statuses") or {}).items())
        text += f" ({load['errors']} errors{': ' + statuses if statuses else ''})"
    return text


#: The process whose event loop answers the requests, in an accept figure's deployment.
_SERVING = ("mailman", "api")


def _loop(share: Mapping[str, float] | None) -> str:
    """``loop on a core N %[, waiting for one M %]`` of a main thread's shares ("" without)."""
    if not share:
        return ""
    text = f"loop on a core {share['on_cpu'] * 100:.0f} %"
    waiting = share.get("waiting_for_cpu") or 0.0
    if waiting >= 0.005:
        text += f", waiting for one {waiting * 100:.0f} %"
    return text


def _serving_loop(figure: Mapping[str, Any]) -> str:
    """The serving process's loop shares during an accept figure's load ("" unknown)."""
    shares = (figure.get("cpu") or {}).get("main_thread") or {}
    for name in _SERVING:
        if name in shares:
            return _loop(shares[name])
    return ""


def _peak(figure: Mapping[str, Any]) -> str:
    memory = figure.get("peak_memory")
    if not memory:
        return "-"
    if len(memory["processes"]) == 1:
        return _mib(memory["max_kib"])
    count = len(memory["processes"])
    return f"sum {_mib(memory['sum_kib'])}, max {_mib(memory['max_kib'])} ({count} procs)"


def _per_process(usage: Mapping[str, Any] | None) -> str | None:
    """``total (name value, ...)[; infra: ...][; disk N KB]`` of one CPU usage (None: not
    measured); the disk part is what Mailman's processes wrote to storage per mail."""
    if not usage or usage.get("total_us_per_mail") is None:
        return None
    text = f"{usage['total_us_per_mail']:.0f}"
    each = usage["us_per_mail"]
    if len(each) > 1:
        text += " (" + ", ".join(f"{n} {_us(v)}" for n, v in each.items()) + ")"
    infra = usage.get("infra_us_per_mail") or {}
    if infra:
        text += "; infra: " + ", ".join(f"{n} {_us(v)}" for n, v in infra.items())
    written = usage.get("total_bytes_written_per_mail")
    if written is not None:
        text += f"; disk {written / 1000:.1f} KB"
    return text


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _cpu(figure: Mapping[str, Any]) -> str:
    """CPU µs per delivered mail (every process, until all were sent); an accept figure
    shows its CPU per accepted mail during the load first."""
    delivered = _per_process(figure.get("cpu_delivered"))
    if figure.get("kind") == "accept" or "cpu_delivered" not in figure:
        accepted = _per_process(figure.get("cpu"))
        if accepted is None:
            return "-" if delivered is None else f"per sent {delivered}"
        return accepted if delivered is None else f"per accept {accepted}; per sent {delivered}"
    return delivered or "-"


def _reference(figure: Mapping[str, Any]) -> str:
    """The reference's own figure, and the machine's 1-minute load average when it ran."""
    reference = figure["reference"]
    text = _load(reference)
    load = reference.get("loadavg")
    if load:
        text += f", load {load[0]:.2f}"
    loop = _loop(reference.get("main_thread"))
    if loop:
        text += f"; {loop}"
    return text


_DEPLOYMENT_LABELS = {"embedded": "1 process", "processes": "--processes", "scaled": "scaled"}


def _memory_summary(figures: Mapping[str, Mapping[str, Any]]) -> str:
    """Figure 5 in one cell: per kind of deployment, the largest sum over its processes
    and the largest process, over its runs."""
    kinds: dict[str, list[Mapping[str, Any]]] = {}
    for figure in figures.values():
        memory = figure.get("peak_memory")
        if memory and memory["processes"]:
            kind = str((figure.get("deployment") or {}).get("kind", "embedded"))
            kinds.setdefault(kind, []).append(memory)
    parts = []
    for kind, runs in kinds.items():
        label = _DEPLOYMENT_LABELS.get(kind, kind)
        if all(len(r["processes"]) == 1 for r in runs):
            single = [r["max_kib"] for r in runs]
            low, high = _mib(min(single)), _mib(max(single))
            span = high if low == high else f"{low[:-4]}-{high}"
            parts.append(f"{label}: {span}")
        else:
            total = _mib(max(r["sum_kib"] for r in runs))
            biggest = _mib(max(r["max_kib"] for r in runs))
            parts.append(f"{label}: sum {total}, max {biggest}")
    return "; ".join(parts)


def _row(name: str, figure: Mapping[str, Any]) -> list[str]:
    title = TITLES[name]
    blank = ["", "", "", "", "", "", ""]
    if figure.get("skipped"):
        return [title, f"skipped: {figure['skipped']}", *blank[:-1], "-"]
    if figure.get("error"):
        return [title, f"ERROR: {figure['error']}", *blank[:-1], "MISS"]
    kind = _kind(name, figure)
    if kind == "process_cpu":
        value = figure["us_per_mail"]
        measured = f"{figure['process']} {_us(value)} us per delivered mail"
        target = f"<= {figure['target_us']:.0f} us"
        others = _per_process(
            {"total_us_per_mail": sum(v or 0 for v in figure["processes"].values()),
             "us_per_mail": figure["processes"]}
        )  # fmt: skip
        return [title, measured, "-", "-", target, others or "-", "", "", _verdict(figure["pass"])]
    lost = str(figure["lost"])
    peak = _peak(figure)
    if kind == "failover":
        to_mailgun = figure["to_mailgun_s"]
        measured = (
            f"Mailgun after {'-' if to_mailgun is None else f'{to_mailgun:.3f} s'}, "
            f"{figure['delayed']} delayed, p99 to sent {_ms(figure['window_p99_ms'])}"
        )
        return [title, measured, "-", "-", "< 1 s", "-", lost, peak, _verdict(figure["pass"])]
    reference = _reference(figure)
    target_ratio = figure.get("target_ratio")
    target = "-" if target_ratio is None else f">= {target_ratio * 100:.0f} %"
    if kind == "accept":
        measured = _load(figure["service"])
        loop = _serving_loop(figure)
        if loop:
            measured += f"; {loop}"
    else:
        measured = (
            f"{figure['mails_per_s']:.0f} mails/s, to sent p50 "
            f"{_ms(figure['time_to_sent_p50_ms'])}, p99 {_ms(figure['time_to_sent_p99_ms'])}"
        )
    ratio = _pct(figure["ratio"])
    if figure.get("cpu_ratio") is not None:
        ratio += f" (CPU {_pct(figure['cpu_ratio'])})"
    cpu = _cpu(figure)
    return [title, measured, reference, ratio, target, cpu, lost, peak, _verdict(figure["pass"])]


def table_rows(results: Mapping[str, Any]) -> list[list[str]]:
    """One row per figure, then peak memory and lost."""
    figures = results["figures"]
    rows = [_row(name, figures[name]) for name in FIGURES if name in figures]
    memory = _memory_summary({n: figures[n] for n in FIGURES if n in figures})
    rows.append(["5 peak memory (VmHWM)", memory or "-", "-", "-", "-", "-", "", "", "-"])
    lost_total = results["lost"]
    runs = len({f.get("run", n) for n, f in figures.items() if f.get("lost") is not None})
    lost_text = f"{lost_total} in {runs} run{'s' if runs != 1 else ''}"
    verdict = _verdict(lost_total == 0 and runs > 0)
    rows.append(
        ["lost (201, never sent)", lost_text, "-", "-", "= 0", "-", str(lost_total), "", verdict]
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


NOTES = f"""\
Every figure ran against a fresh Mailman process (or set of processes) and a fresh store, with the
reference measured just before it in the same run, with the same load, once the previous figure's
mails were all sent and its processes had exited; "load" is the machine's 1-minute load average
then (results.json: loadavg, the cores busy in the second before, mails the previous figure left
pending). Throughput counts 201 answers per second. reference = python -m bench.reference, a bare
aiohttp app whose one handler parses the same JSON and answers 201 with the same body and
Location, storing nothing. 1b/2b: python -m mailman --processes {PROCESSES} (the API in N - 1
children sharing the port, the other actors in one more child, one SQLite file). 2c: as 2a, with
the fake providers answering every send after 200 ms. 4: Kafka (Tansu) + MySQL, one process per
role and 1, 2 or 4 SendGrid senders; accept and end to end are two views of one run per sender
count. end to end: mails per second from the first POST to the last `sent` (sent / (last
updated_at - first created_at)) and the time from POST to `sent`, read from the store after every
mail was sent.
CPU us/mail: utime + stime (/proc/<pid>/stat) of each process of the deployment (--processes: the
parent, and its children named by the --role on their command line: api, worker; a SQLite writer
process by its process's name and "-writer", counted in the total) from the start
of the measured load until every mail was sent, divided by the mails delivered ("per sent"); accept
figures also show it over the load alone, divided by the mails accepted ("per accept"). total =
Mailman's processes; infra (the fake providers, Tansu, MariaDB: on the same cores, shared with
anything else running) is not in the total. disk: the bytes Mailman's processes wrote to storage
over the same span (write_bytes, /proc/<pid>/io: the SQLite WAL and its checkpoints, and the log
file's lines; MySQL's own writes are not counted), per mail likewise. 2d: 2b's worker child (with
its writer process) per delivered mail, against a ceiling in us. ratio (CPU x %): the reference's
CPU per request over Mailman's CPU per mail, a ratio that what other processes or the hypervisor
took cannot move.
loop on a core (accept figures and references): the share of the measured load the serving
process's main thread, its event loop, spent on a core (/proc/<pid>/schedstat), and waiting in
the run queue for one; the rest it slept with nothing to do, waiting for its clients or its store.
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


def _throughput(name: str, figure: Mapping[str, Any]) -> float:
    """What the figure compares: accepts per second, or mails sent per second."""
    value: float = (
        figure["service"]["accepted_rps"]
        if _kind(name, figure) == "accept"
        else figure["mails_per_s"]
    )
    return value


def _ratio_labels(
    ax: Any, names: Sequence[str], figures: Mapping[str, Any], tops: Sequence[float]
) -> None:
    """The ratio to the reference (and the target) above each Mailman bar."""
    for x, name in enumerate(names):
        figure = figures[name]
        ratio = figure["ratio"]
        if ratio is None:
            continue
        target = figure.get("target_ratio")
        text = f"{ratio * 100:.1f} %"
        if target is not None:
            text += f"\n(target {target * 100:.0f} %)"
        ax.annotate(
            text,
            (x - 0.2, tops[x]),
            xytext=(0, 12),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            fontweight="bold",
        )


def _delivered(figure: Mapping[str, Any]) -> Mapping[str, Any]:
    """The figure's CPU per delivered mail (results without it: its CPU per accepted mail)."""
    usage: Mapping[str, Any] = figure.get("cpu_delivered") or figure.get("cpu") or {}
    return usage


def _cpu_panel(ax: Any, names: Sequence[str], figures: Mapping[str, Any]) -> None:
    """Stacked bars: CPU us per delivered mail by process (infra hatched, on top)."""
    segments: dict[tuple[str, bool], list[float]] = {}
    for i, name in enumerate(names):
        usage = _delivered(figures[name])
        for infra, part in ((False, "us_per_mail"), (True, "infra_us_per_mail")):
            for process, value in (usage.get(part) or {}).items():
                column = segments.setdefault((process, infra), [0.0] * len(names))
                column[i] = value or 0.0
    import matplotlib

    colors = matplotlib.colormaps["tab20"]  # more processes than the default cycle's 10 colours
    bottom = [0.0] * len(names)
    ordered = sorted(segments.items(), key=lambda kv: kv[0][1])
    for n, ((process, infra), values) in enumerate(ordered):
        ax.bar(
            range(len(names)),
            values,
            0.6,
            bottom=bottom,
            color=colors(n % colors.N),
            label=f"{process} (infra)" if infra else process,
            hatch="//" if infra else None,
            alpha=0.6 if infra else 1.0,
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    totals = [_delivered(figures[n]).get("total_us_per_mail") for n in names]
    for x, total in enumerate(totals):
        if total is not None:
            ax.annotate(
                f"{total:.0f}", (x, bottom[x]), xytext=(0, 3), textcoords="offset points",
                ha="center", fontsize=7,
            )  # fmt: skip
    ax.set_xticks(range(len(names)), [CHART_LABELS[n] for n in names], fontsize=7)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=8)
    ax.margins(y=0.1)
    ax.set_ylabel("CPU us per delivered mail (number: Mailman's total)")
    ax.set_title("CPU per delivered mail (load start until all sent), by process")


def draw_chart(results: Mapping[str, Any], path: Path) -> None:
    """Throughput (Mailman vs the reference), the scaled runs, latency and CPU per mail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = results["figures"]
    ran = [n for n in FIGURES if n in figures and figures[n].get("lost") is not None]
    throughput = [n for n in ran if _kind(n, figures[n]) != "failover"]
    embedded = [n for n in throughput if not n.startswith("scaled_")]
    scaled = [n for n in throughput if n.startswith("scaled_")]
    fig, axes = plt.subplots(2, 2, figsize=(16, 11))
    (left, right), (latency, cpu) = axes
    try:
        mailman = [_throughput(n, figures[n]) for n in embedded]
        reference = [figures[n]["reference"]["accepted_rps"] for n in embedded]
        labels = [CHART_LABELS[n] for n in embedded]
        _bars(left, labels, [("Mailman", mailman), ("reference (ceiling)", reference)])
        _ratio_labels(left, embedded, figures, mailman)
        left.margins(y=0.15)
        left.set_ylabel("per second (201 answers; mails sent for end to end)")
        left.set_title("Throughput: one process and --processes, vs the reference")

        right.set_title("Scaled (Kafka + MySQL): 1, 2, 4 SendGrid senders")
        if scaled:
            mailman = [_throughput(n, figures[n]) for n in scaled]
            reference = [figures[n]["reference"]["accepted_rps"] for n in scaled]
            _bars(
                right,
                [CHART_LABELS[n] for n in scaled],
                [("Mailman", mailman), ("reference (ceiling)", reference)],
            )
            _ratio_labels(right, scaled, figures, mailman)
            right.set_yscale("log")
            right.set_ylabel("per second (log)")
        else:
            right.text(0.5, 0.5, "not measured", ha="center", va="center")
            right.set_axis_off()

        p50: list[float | None] = []
        p99: list[float | None] = []
        for n in ran:
            f = figures[n]
            kind = _kind(n, f)
            if kind == "accept":
                p50.append(f["service"]["p50_ms"])
                p99.append(f["service"]["p99_ms"])
            elif kind == "failover":
                p50.append(f["window_p50_ms"])
                p99.append(f["window_p99_ms"])
            else:
                p50.append(f["time_to_sent_p50_ms"])
                p99.append(f["time_to_sent_p99_ms"])
        _bars(latency, [CHART_LABELS[n] for n in ran], [("p50", p50), ("p99", p99)])
        for tick in latency.get_xticklabels():
            tick.set_fontsize(6)
        latency.set_yscale("log")
        latency.set_ylabel("ms (accept: POST answered; others: POST to sent)")
        latency.set_title("Latency")

        _cpu_panel(cpu, throughput, figures)
        fig.suptitle(machine_line(results), fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)

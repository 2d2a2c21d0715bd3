"""CPU time per accepted mail, read from ``/proc``, and the processes of a deployment.

``/proc/<pid>/stat`` holds a process's user and system CPU time (``utime``,
``stime``, fields 14 and 15, in clock ticks: ``os.sysconf("SC_CLK_TCK")``,
100 per second on Linux), summed over all its threads. A ``Sample`` reads
both for every process of a deployment at one moment; ``usage`` turns two
samples into CPU microseconds per accepted mail, per process and in total.

A deployment's processes are the ones the benchmark started plus all their
descendants (``/proc/<pid>/task/*/children``, recursively): a ``mailman
--processes N`` parent's children are found that way. A descendant takes the
name its parent logged for it (``process.started``: ``worker``, ``api-1``,
...), else ``api`` (``api-2``, ...) if it holds a listening socket on the
service's port, else ``worker`` (``worker-2``, ...). Infrastructure
(Tansu, MariaDB) is sampled too but reported apart from Mailman's total.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")

_TCP_LISTEN = "0A"


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15, counted from 1 with pid


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak resident set size so far (VmHWM), None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])  # "VmHWM:   81234 kB"
    return None


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (of every one of its threads)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(c) for c in (task / "children").read_text().split())
    return sorted(set(found))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    found: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop(0)
        if child not in found:
            found.append(child)
            todo.extend(children(child))
    return found


def listening_inodes(port: int) -> set[int]:
    """The socket inodes listening on TCP ``port`` (IPv4 or IPv6, any address)."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                listening = len(cols) > 9 and cols[3] == _TCP_LISTEN
                if listening and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(int(cols[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` has open."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def find_process(*names: str) -> int | None:
    """The lowest pid whose ``comm`` is one of ``names`` (e.g. ``mariadbd``), if any."""
    wanted = set(names)
    pids = sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() in wanted:
                return pid
    return None


def _unique(base: str, taken: Iterable[str]) -> str:
    used = set(taken)
    if base not in used:
        return base
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"


def name_tree(
    roots: Mapping[int, str],
    port: int | None,
    names: MutableMapping[int, str],
    known: Mapping[int, str] | None = None,
) -> None:
    """Name every live process of the deployment in ``names`` (pid -> name), keeping old names.

    ``roots`` are the processes the benchmark started (named by it); a
    descendant takes its name from ``known`` (what a ``--processes`` parent
    logged), else ``api``/``api-2``/... when it listens on ``port``, else
    ``worker``/``worker-2``/...
    """
    names.update(roots)
    new = [pid for root in roots for pid in descendants(root) if pid not in names]
    if not new:
        return
    listening = listening_inodes(port) if port else set()
    for pid in sorted(new):
        if known and pid in known:
            base = known[pid]
        else:
            base = "api" if listening and socket_inodes(pid) & listening else "worker"
        names[pid] = _unique(base, names.values())


@dataclass(frozen=True)
class Sample:
    """CPU ticks of every process of a deployment at one moment."""

    at: float
    #: pid -> (name, ticks) of Mailman's processes.
    mailman: dict[int, tuple[str, int]]
    #: pid -> (name, ticks) of the infrastructure (broker, database).
    infra: dict[int, tuple[str, int]]


def take(at: float, mailman: Mapping[int, str], infra: Mapping[int, str]) -> Sample:
    """Read the ticks of ``mailman`` and ``infra`` (pid -> name); gone processes are left out."""

    def read(pids: Mapping[int, str]) -> dict[int, tuple[str, int]]:
        got = {}
        for pid, name in pids.items():
            ticks = cpu_ticks(pid)
            if ticks is not None:
                got[pid] = (name, ticks)
        return got

    return Sample(at, read(mailman), read(infra))


Ticks = Mapping[int, tuple[str, int]]


def _by_name(before: Ticks, after: Ticks) -> dict[str, int]:
    """Ticks spent between the samples, by process name (a process new in ``after``: all of its)."""
    spent: dict[str, int] = {}
    for pid, (name, ticks) in after.items():
        earlier = before.get(pid)
        spent[name] = spent.get(name, 0) + ticks - (earlier[1] if earlier else 0)
    return spent


def usage(before: Sample, after: Sample, mails: int) -> dict[str, Any]:
    """CPU between two samples: µs per mail by process and in total, and cores kept busy.

    ``mails`` is the number of mails accepted in the measured run.
    """
    wall = after.at - before.at
    tick_us = 1e6 / CLK_TCK
    mailman = _by_name(before.mailman, after.mailman)
    infra = _by_name(before.infra, after.infra)
    total = sum(mailman.values())

    def per_mail(ticks: int) -> float | None:
        return round(ticks * tick_us / mails, 1) if mails else None

    return {
        "mails": mails,
        "wall_s": round(wall, 3),
        "clk_tck": CLK_TCK,
        "us_per_mail": {name: per_mail(t) for name, t in mailman.items()},
        "total_us_per_mail": per_mail(total),
        "infra_us_per_mail": {name: per_mail(t) for name, t in infra.items()},
        "cpu_s": {name: round(t / CLK_TCK, 2) for name, t in {**mailman, **infra}.items()},
        "cores_busy": round(total / CLK_TCK / wall, 2) if wall > 0 else None,
    }

"""CPU time and disk writes per mail, read from ``/proc``, the processes of a deployment,
and the machine's load.

``/proc/<pid>/stat`` holds a process's user and system CPU time (``utime``,
``stime``, fields 14 and 15, in clock ticks: ``os.sysconf("SC_CLK_TCK")``,
100 per second on Linux), summed over all its threads. A ``Sample`` reads
both for every process of a deployment at one moment; ``usage`` turns two
samples into CPU microseconds per mail (accepted, or delivered), per process
and in total. ``/proc/<pid>/io`` holds the bytes a process has sent to storage
(``write_bytes``: its files' writes, never its sockets'); a ``Sample`` reads
those too, and ``usage`` gives them in bytes per mail (a SQLite writer's WAL
and checkpoints, and a log file's lines: what the disk has to take, and, unlike
CPU time, much the same from run to run on a noisy machine).

A deployment's processes are the ones the benchmark started plus all their
descendants (``/proc/<pid>/task/*/children``, recursively): a ``mailman
--processes N`` parent's children are found that way. A descendant is named
by the role flag on its command line (``/proc/<pid>/cmdline``, ``--role``:
``api`` for the API alone, ``worker`` for several roles, else the role), else
by the name its parent logged for it (``process.started``), else ``api`` if it
holds a listening socket on the service's port, else ``worker``; a second
process of a name gets ``-2`` (``api-2``), and so on. Infrastructure (Tansu,
MariaDB) is sampled too but reported apart from Mailman's total.

``/proc/<pid>/schedstat`` holds the time a process's main thread (its event
loop) has spent on a core and waiting in the run queue for one, in ns: a
``Sample`` reads those too, and ``usage`` gives them as shares of the wall
time (``main_thread``). What is left is the loop asleep with nothing to do:
a loop on a core 87 % of the time is not held back by its CPU alone; the
13 % it sleeps, waiting for its clients or its store, counts too.

``loadavg`` and ``machine_ticks`` say how busy the whole machine is (every
process, not only ours): the benchmark records both where it measures its
reference, so a machine that was not quiet shows in ``results.json``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mailman.store.sqlite import FORKER_IMPORT

CLK_TCK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")

_TCP_LISTEN = "0A"


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command (from ``state``), None once
    it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return stat[stat.rindex(")") + 2 :].split()


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks; None once it is gone."""
    fields = _stat(pid)
    if fields is None:
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15, counted from 1 with pid


def _proc_value(pid: int, name: str, key: str) -> int | None:
    """The number after ``key`` in ``/proc/<pid>/<name>`` (``VmHWM:   81234 kB``); None
    once the process is gone, or where the file has no such line."""
    try:
        text = Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return None


def main_thread(pid: int) -> tuple[int, int] | None:
    """(ns on a core, ns waiting in the run queue for one) of ``pid``'s main thread so far
    (``/proc/<pid>/schedstat``: the thread group's leader, where a Mailman process runs
    its event loop); None once it is gone, or where the kernel keeps no such figures.

    Over a span of wall time, the rest (neither on a core nor waiting for one) is the
    thread asleep: an event loop with nothing to do until a socket answers. A loop on
    a core all the time is short of CPU; one asleep part of the time waits for its
    peers (the clients, its store), however fast it is.
    """
    try:
        fields = Path(f"/proc/{pid}/schedstat").read_text().split()
    except OSError:
        return None
    if len(fields) < 2:
        return None
    return int(fields[0]), int(fields[1])


def written_bytes(pid: int) -> int | None:
    """The bytes ``pid`` has caused to be written to storage so far (``/proc/<pid>/io``'s
    ``write_bytes``: files, not sockets); None once it is gone, or where the kernel
    does not count them."""
    return _proc_value(pid, "io", "write_bytes:")


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs: it exists and is not a zombie (exited, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak resident set size so far (VmHWM), None once it is gone."""
    return _proc_value(pid, "status", "VmHWM:")


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (of every one of its threads)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(c) for c in (task / "children").read_text().split())
    return sorted(set(found))


#: On the command line of a SQLite writer process (``MAILMAN_SQLITE_WRITER=process``) and
#: of the forker its Mailman process starts them from.
WRITER_MODULE = FORKER_IMPORT
#: A writer process is named after the Mailman process it writes for, with this suffix
#: (its forker with ``FORKER_SUFFIX``).
WRITER_SUFFIX = "-writer"
FORKER_SUFFIX = "-forker"


def parent(pid: int) -> int | None:
    """The parent of ``pid`` (``/proc/<pid>/stat``), None once it is gone."""
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


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


def cmdline(pid: int) -> list[str]:
    """The arguments ``pid`` was started with (empty once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]  # each argument ends with a NUL


def role_flag(argv: Sequence[str]) -> str | None:
    """The value of the last ``--role`` flag (``--role X`` or ``--role=X``) in ``argv``."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--role" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("--role="):
            found = arg.split("=", 1)[1]
    return found


def role_name(role: str) -> str:
    """A process's name from its ``--role``: ``api`` alone, ``worker`` for several roles (the
    worker of ``--processes``), else the one role (``sendgrid``)."""
    roles = {r.strip() for r in role.split(",") if r.strip()}
    if len(roles) == 1:
        return roles.pop()
    return "worker"


def loadavg() -> list[float] | None:
    """The machine's load average over 1, 5 and 15 minutes (``/proc/loadavg``)."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
    except OSError:
        return None
    return [float(f) for f in fields[:3]]


def machine_ticks() -> tuple[int, int] | None:
    """(busy, all) clock ticks of every core since boot (``/proc/stat``'s ``cpu`` line)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    ticks = [int(f) for f in first.split()[1:9]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def busy_cores(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Cores the whole machine kept busy between two ``machine_ticks`` (None: unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    cores = os.cpu_count() or 1
    return round((after[0] - before[0]) / (after[1] - before[1]) * cores, 2)


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
    forked = {pid for pid in new if any(WRITER_MODULE in arg for arg in cmdline(pid))}
    for pid in sorted(set(new) - forked):
        role = role_flag(cmdline(pid))
        if role is not None:
            base = role_name(role)
        elif known and pid in known:
            base = known[pid]
        else:
            base = "api" if listening and socket_inodes(pid) & listening else "worker"
        names[pid] = _unique(base, names.values())
    for pid in sorted(forked):  # a forker (a Mailman process's child) or a writer (its child)
        up = parent(pid) or 0
        owner, suffix = (parent(up) or 0, WRITER_SUFFIX) if up in forked else (up, FORKER_SUFFIX)
        names[pid] = _unique(f"{names.get(owner, 'mailman')}{suffix}", names.values())


#: pid -> (name, a count: clock ticks, or bytes).
Ticks = Mapping[int, tuple[str, int]]


@dataclass(frozen=True)
class Sample:
    """CPU ticks (and bytes written to storage) of every process of a deployment at one
    moment."""

    at: float
    #: pid -> (name, ticks) of Mailman's processes.
    mailman: dict[int, tuple[str, int]]
    #: pid -> (name, ticks) of the infrastructure (broker, database).
    infra: dict[int, tuple[str, int]]
    #: pid -> (name, bytes written to storage so far) of Mailman's processes.
    written: dict[int, tuple[str, int]] = field(default_factory=dict)
    #: pid -> (name, (ns on a core, ns waiting for one)) of Mailman's processes' main
    #: threads (``main_thread``).
    sched: dict[int, tuple[str, tuple[int, int]]] = field(default_factory=dict)


def take(at: float, mailman: Mapping[int, str], infra: Mapping[int, str]) -> Sample:
    """Read the ticks of ``mailman`` and ``infra`` (pid -> name), and the bytes Mailman's
    processes wrote to storage and their main threads' time on and waiting for a core;
    gone processes are left out."""

    def read(
        pids: Mapping[int, str], reader: Callable[[int], T | None]
    ) -> dict[int, tuple[str, T]]:
        got = {}
        for pid, name in pids.items():
            value = reader(pid)
            if value is not None:
                got[pid] = (name, value)
        return got

    return Sample(
        at,
        read(mailman, cpu_ticks),
        read(infra, cpu_ticks),
        read(mailman, written_bytes),
        read(mailman, main_thread),
    )


def main_threads(before: Sample, after: Sample) -> dict[str, dict[str, float]]:
    """Of the wall time between two samples, the share each process's main thread spent on a
    core (``on_cpu``) and waiting for one (``waiting_for_cpu``), by name; a process not
    in both samples is left out (its span is not the samples')."""
    wall_ns = (after.at - before.at) * 1e9
    shares: dict[str, dict[str, float]] = {}
    if wall_ns <= 0:
        return shares
    for pid, (name, (ran, waited)) in after.sched.items():
        earlier = before.sched.get(pid)
        if earlier is None:
            continue
        shares[name] = {
            "on_cpu": round((ran - earlier[1][0]) / wall_ns, 3),
            "waiting_for_cpu": round((waited - earlier[1][1]) / wall_ns, 3),
        }
    return shares


def _by_name(before: Ticks, after: Ticks) -> dict[str, int]:
    """Ticks (or bytes) spent between the samples, by process name (a process new in
    ``after``: all of its)."""
    spent: dict[str, int] = {}
    for pid, (name, ticks) in after.items():
        earlier = before.get(pid)
        spent[name] = spent.get(name, 0) + ticks - (earlier[1] if earlier else 0)
    return spent


def usage(before: Sample, after: Sample, mails: int, per: str = "accepted") -> dict[str, Any]:
    """CPU between two samples: µs per mail by process and in total, and cores kept busy;
    the bytes Mailman's processes wrote to storage meanwhile, per mail; and the share of
    the span each process's main thread was on a core or waiting for one.

    ``mails`` is what both are divided by: the mails accepted in the measured
    run (``per="accepted"``), or the ones delivered (``per="delivered"``).
    """
    wall = after.at - before.at
    tick_us = 1e6 / CLK_TCK
    mailman = _by_name(before.mailman, after.mailman)
    infra = _by_name(before.infra, after.infra)
    total = sum(mailman.values())
    written = _by_name(before.written, after.written)

    def per_mail(ticks: int) -> float | None:
        return round(ticks * tick_us / mails, 1) if mails else None

    return {
        "mails": mails,
        "per": per,
        "wall_s": round(wall, 3),
        "clk_tck": CLK_TCK,
        "us_per_mail": {name: per_mail(t) for name, t in mailman.items()},
        "total_us_per_mail": per_mail(total),
        "infra_us_per_mail": {name: per_mail(t) for name, t in infra.items()},
        "cpu_s": {name: round(t / CLK_TCK, 2) for name, t in {**mailman, **infra}.items()},
        "cores_busy": round(total / CLK_TCK / wall, 2) if wall > 0 else None,
        "bytes_written_per_mail": {
            name: round(b / mails) if mails else None for name, b in written.items()
        },
        "total_bytes_written_per_mail": (
            round(sum(written.values()) / mails) if mails and written else None
        ),
        "main_thread": main_threads(before, after),
    }

"""What one accept costs the event loop, counted in instructions: a figure that holds still.

    python -m bench.instructions [--requests 2000] [--connections 4] [--writer]

The machine the other figures are measured on swings: the same code has run at
half its speed a few minutes later, and a change of a few per cent cannot be told
from that by timing. Valgrind's callgrind counts the instructions a process runs,
whatever else the machine does (the same count twice, to a few tenths of a per
cent), so this counts them for ``POST /mail/send`` in one process:

- ``mailman``: the API as ``routes.create_app`` builds it on a fresh SQLite store
  (its writer process, as ``python -m mailman`` runs it: the writer's own work is
  not counted, only the event loop's), the mail handed on to nowhere (no relay
  runs), logging at info as JSON to ``/dev/null``, no backlog limit (its count runs
  on a clock, not per request);
- ``reference``: ``bench.reference``'s bare aiohttp app, on the same event loop;
- ``delivered``: the whole of Mailman in one process (``mailman.embedded``, its
  SQLite writer process not counted), each mail accepted and then sent through the
  fake providers (``bench.fakes``, in a process of their own, not counted), the
  run ending once every mail is ``sent``: per mail, what the accept and the
  delivery cost the event loop together (less ``mailman``: the delivery's share).

``mailman`` and ``delivered`` run with the heap as ``python -m mailman`` serves
(``cli.serve.serving_heap``: frozen, its young generation collected at 5,000
allocations), the reference with Python's defaults, as a bare aiohttp app runs.
All on uvloop, served to a client in the same process: ``--connections``
keep-alive connections, each sending the same mail and reading each answer
before the next. Each is run twice: a warm-up of ``WARM`` requests per
connection alone, then the same warm-up and ``--requests`` more. The difference
over ``--requests`` is what one more request costs, without start-up and warm-up.
The client's share is in both.

``--writer`` counts the SQLite writer process too (callgrind follows the children:
the writer is the forker's child, which it forks without an exec): what one accept,
or one mail accepted and sent, costs the writer, beside the event loop's count. The
writer then runs as slowly as the loop (both under valgrind) rather than at full
speed beside a slowed loop, so its batches, and the loop's count with them, differ a
little from a run without ``--writer``: compare counts made the same way.

It needs ``valgrind`` (``apt-get install valgrind``); each run takes about a minute,
two at a time.
Exit 0: counted; 2: no valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

#: The mail every request sends: ``bench.load``'s shape, with a tag and a metadata key
#: (their rules and rows counted too).
BODY = (
    b'{"from":"sender@example.com","to":["ann@example.com"],"subject":"Hello",'
    b'"content":"Hi Ann","tags":["a"],"metadata":{"k":"v"}}'
)
#: Requests per connection before anything is counted.
WARM = 200
#: What is counted.
TARGETS = ("reference", "mailman", "delivered")
#: How often a ``delivered`` run looks whether every mail was sent (seconds).
SENT_POLL_S = 0.2
_COLLECTED = re.compile(rb"Collected : (\d+)")
#: The checkout: the counted runs' working directory, its packages compiled before.
ROOT = Path(__file__).resolve().parent.parent
#: The packages whose modules the counted runs import from the checkout.
COMPILED = ("mailman", "bench")
#: Valgrind's lines for one process: ``==PID== Collected : N``, ``==PID== Command: ...``.
_PROCESS_COLLECTED = re.compile(rb"^==(\d+)== Collected : (\d+)", re.MULTILINE)
_PROCESS_COMMAND = re.compile(rb"^==(\d+)== Command: ", re.MULTILINE)
#: What a counted process is: the serving one; a process forked without an exec (the
#: SQLite writer, forked by the writers' forker); another command (the forker itself).
LOOP, WRITER, OTHER = "loop", "writer", "other"


@dataclass(frozen=True)
class Count:
    """One target's count: instructions per request, from a run with ``requests`` after
    the warm-up and one with the warm-up alone."""

    target: str
    warm_up: int
    measured: int
    requests: int
    #: Whose instructions: the serving process's (``LOOP``) or its writers' (``WRITER``).
    process: str = LOOP

    @property
    def per_request(self) -> float:
        return (self.measured - self.warm_up) / self.requests


def collected(output: bytes) -> int:
    """The instructions callgrind counted, from what it printed."""
    found = _COLLECTED.search(output)
    if found is None:
        raise RuntimeError(f"no count in callgrind's output:\n{output.decode(errors='replace')}")
    return int(found.group(1))


def collected_by_process(output: bytes) -> dict[str, int]:
    """The instructions callgrind counted in each kind of process, from what it printed
    while following children: ``LOOP`` the first command (the one started), ``WRITER``
    the processes forked without an exec (each prints no command of its own), ``OTHER``
    every other command. Output without the serving process's count is an error, as
    in ``collected``."""
    commands = [int(pid) for pid in _PROCESS_COMMAND.findall(output)]
    if not commands:
        raise RuntimeError(f"no command in valgrind's output:\n{output.decode(errors='replace')}")
    counts = {LOOP: 0, WRITER: 0, OTHER: 0}
    loop_counted = False
    for pid, instructions in _PROCESS_COLLECTED.findall(output):
        if int(pid) == commands[0]:
            kind, loop_counted = LOOP, True
        elif int(pid) in commands:
            kind = OTHER
        else:
            kind = WRITER
        counts[kind] += int(instructions)
    if not loop_counted:
        raise RuntimeError(f"no count in callgrind's output:\n{output.decode(errors='replace')}")
    return counts


# --- inside valgrind: the server and its client ---------------------------------------


async def _client(port: int, requests: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        b"POST /mail/send HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(BODY)
    )
    request = head + BODY
    try:
        for _ in range(requests):
            writer.write(request)
            answer = await reader.readuntil(b"\r\n\r\n")
            if not answer.startswith(b"HTTP/1.1 201"):
                raise RuntimeError(f"not accepted: {answer[:200]!r}")
            at = answer.lower().index(b"content-length: ") + len(b"content-length: ")
            await reader.readexactly(int(answer[at : answer.index(b"\r\n", at)]))
    finally:
        writer.close()


class _Nowhere:
    """The outbound of an API with no relay: a mail handed on goes nowhere."""

    async def dispatch(self, dispatch: object) -> None:
        return None


async def _serve(
    target: str, requests: int, connections: int, fakes: Mapping[str, str] | None = None
) -> None:
    if target == "delivered":
        if fakes is None:
            raise ValueError("a delivered run needs the fake providers (--fakes)")
        await _deliver(requests, connections, fakes)
        return
    from aiohttp import web

    from bench import reference
    from mailman.config import Config
    from mailman.routes import create_app
    from mailman.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="instructions-") as directory:
        store = None
        if target == "mailman":
            # No backlog count: it runs every half second (under valgrind, a hundred times
            # a run), a count of the mails not sent, which here are all of them.
            config = dataclasses.replace(Config(), backlog_limit=0)
            store = SQLiteStore(str(Path(directory) / "mailman.db"), writer=config.sqlite_writer)
            await store.open()
            app = create_app(store=store, outbound=_Nowhere(), config=config)
        else:
            app = reference.create_app()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            await asyncio.gather(*(_client(port, WARM) for _ in range(connections)))
            if requests:
                each = requests // connections
                await asyncio.gather(*(_client(port, each) for _ in range(connections)))
        finally:
            await runner.cleanup()
            if store is not None:
                await store.close()


async def _deliver(requests: int, connections: int, fakes: Mapping[str, str]) -> None:
    """Mailman as ``python -m mailman`` runs it, in this event loop, sending to ``fakes``;
    the warm-up's mails, then ``requests`` more, each batch sent before the next."""
    from bench.services import SQLiteRows, provider_env
    from mailman.config.load import load
    from mailman.system import embedded

    with tempfile.TemporaryDirectory(prefix="instructions-") as directory:
        db = Path(directory) / "mailman.db"
        env = {
            "MAILMAN_STORE": f"sqlite:///{db}",
            "MAILMAN_PORT": "0",
            "MAILMAN_SMTP_PORT": "0",
            "MAILMAN_OUTBOX_DIR": str(Path(directory) / "outbox"),
            **provider_env(fakes),
        }
        rows = SQLiteRows(db)
        async with embedded(load([], env)) as mailman:
            for batch in (WARM * connections, requests):
                if batch:
                    each = batch // connections
                    await asyncio.gather(*(_client(mailman.port, each) for _ in range(connections)))
                while True:
                    if not await rows.unfinished():
                        break
                    await asyncio.sleep(SENT_POLL_S)  # the store tells nothing: look again


# --- outside: the runs and the table ----------------------------------------------------


def compile_sources(root: Path = ROOT) -> None:
    """Byte-compile the checkout's packages before counting: a module without its cached
    bytecode is compiled at each import (always, under ``PYTHONDONTWRITEBYTECODE``), and
    a run that compiles what the other of its pair finds cached counts the compiling too."""
    for package in COMPILED:
        if not compileall.compile_dir(root / package, quiet=1):
            raise RuntimeError(f"{root / package} did not compile")


@contextlib.contextmanager
def fake_providers() -> Iterator[dict[str, str]]:
    """``python -m bench.fakes`` in a process of its own while the block runs: what it
    announced (its providers' base URLs and credentials)."""
    with subprocess.Popen(
        [sys.executable, "-m", "bench.fakes"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("the fake providers did not start")
            yield json.loads(line)
        finally:
            process.terminate()
            process.wait(timeout=30)


def run_argv(
    valgrind: str,
    target: str,
    requests: int,
    connections: int,
    fakes: Mapping[str, str] | None = None,
    *,
    writer: bool = False,
) -> list[str]:
    """The command of one counted run: this module serving ``target``, under callgrind
    (``writer``: its children too)."""
    return [
        *(valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"),
        *(("--trace-children=yes",) if writer else ()),
        sys.executable,
        *("-m", "bench.instructions", "--serve", target, "--requests", str(requests)),
        *("--connections", str(connections)),
        *(() if fakes is None else ("--fakes", json.dumps(dict(fakes)))),
    ]


def count(
    target: str,
    requests: int,
    connections: int,
    fakes: Mapping[str, str] | None = None,
    *,
    writer: bool = False,
) -> dict[str, int]:
    """Instructions of one run of ``target`` serving ``requests`` after the warm-up: the
    serving process's (``LOOP``), and with ``writer`` its writer processes' too."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise FileNotFoundError("valgrind")
    argv = run_argv(valgrind, target, requests, connections, fakes, writer=writer)
    done = subprocess.run(argv, capture_output=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{target} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    if writer:
        return collected_by_process(done.stderr)
    return {LOOP: collected(done.stderr)}


def measure(
    targets: Sequence[str],
    requests: int,
    connections: int,
    fakes: Mapping[str, str] | None = None,
    *,
    writer: bool = False,
) -> list[Count]:
    """Each target's instructions per request (``requests``: a multiple of
    ``connections``); the runs side by side, one per core (a count does not depend on
    what else runs). ``fakes``: the fake providers a ``delivered`` run sends to.
    ``writer``: the writer processes' count too, for the targets that have one."""
    runs = [(t, n) for t in targets for n in (0, requests)]

    def one(run: tuple[str, int]) -> dict[str, int]:
        delivered = fakes if run[0] == "delivered" else None
        return count(run[0], run[1], connections, delivered, writer=writer)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        done = dict(zip(runs, pool.map(one, runs), strict=True))
    counts = []
    for t in targets:
        warm_up, measured = done[(t, 0)], done[(t, requests)]
        for process in (LOOP, WRITER):
            if measured.get(process):
                counts.append(Count(t, warm_up[process], measured[process], requests, process))
    return counts


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="the larger run (2000)")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections (4)")
    parser.add_argument(
        "--writer", action="store_true", help="count the SQLite writer processes too"
    )
    parser.add_argument("--serve", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--fakes", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.connections < 1 or args.requests < 0 or args.requests % args.connections:
        parser.error("--requests must be a multiple of --connections (at least 1)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve is not None:
        import uvloop

        from mailman.cli.serve import serving_heap
        from mailman.config.logging import configure_logging

        with open(os.devnull, "w") as nowhere:  # Mailman's lines, at info, as JSON
            configure_logging("info", "json", nowhere)
            # Mailman's heap as ``python -m mailman`` serves (frozen, young collections
            # less often); the reference's as a bare aiohttp app's.
            heap = contextlib.nullcontext() if args.serve == "reference" else serving_heap()
            with heap:
                uvloop.run(_serve(args.serve, args.requests, args.connections, args.fakes))
        return 0
    if shutil.which("valgrind") is None:
        print("python -m bench.instructions needs valgrind (apt-get install valgrind)")
        return 2
    compile_sources()
    with fake_providers() as fakes:
        counts = measure(TARGETS, args.requests, args.connections, fakes, writer=args.writer)
    per = {(c.target, c.process): c.per_request for c in counts}
    for c in counts:
        name = c.target if c.process == LOOP else f"{c.target} ({c.process})"
        print(f"{name:20} {c.per_request:12,.0f} instructions per request")
    ratio = per[("reference", LOOP)] / per[("mailman", LOOP)]
    print(f"{'ratio':20} {ratio:12.3f} (reference / mailman)")
    for process in (LOOP, WRITER):
        if ("delivered", process) in per and ("mailman", process) in per:
            delivery = per[("delivered", process)] - per[("mailman", process)]
            name = "delivery" if process == LOOP else f"delivery ({process})"
            print(f"{name:20} {delivery:12,.0f} (delivered - mailman)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

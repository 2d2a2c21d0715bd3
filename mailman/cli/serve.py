"""``mailman [serve] [flags]``: run the service until SIGTERM or SIGINT.

Read the configuration once, handle signals in one place, run the system (or,
with ``--processes``, supervise its processes), turn the outcome into an exit
code: 0 after a clean stop, 1 when the supervisor gave up (restart budget
spent) or something unexpected ended it, 2 for a bad configuration or a store
or broker that could not be opened at start (waited for up to
``MAILMAN_STARTUP_TIMEOUT_SECONDS``).

Logging is configured before anything can fail (the configuration included),
so every line this command writes, a failure at start included, is one JSON
object (off a terminal), never a raw traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any

import structlog

from mailman.actors.processes import ProcessSupervisor
from mailman.actors.supervisor import RestartBudgetExceeded
from mailman.config import SETTINGS, Config, ConfigError, from_args
from mailman.config.flags import DESCRIPTION, add_service_flags
from mailman.config.logging import configure_logging
from mailman.config.settings import LOG_FORMATS
from mailman.system import Mailman, StartupFailed

from .command import Call, Command

log = structlog.get_logger("mailman")


def _define(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    parser.description = DESCRIPTION
    add_service_flags(parser)


def _run(args: argparse.Namespace, call: Call) -> int:
    """0 after a clean stop, 1 when it gave up or crashed, 2 for a bad configuration or a
    store or broker it could not open."""
    # Before the configuration is read (it may be what fails): its format from the
    # environment, JSON off a terminal.
    early = call.env.get("MAILMAN_LOG_FORMAT", "").strip().lower()
    configure_logging("info", early if early in LOG_FORMATS else "auto", call.err, cache=False)
    try:
        config = from_args(args, call.env)
    except ConfigError as exc:
        log.error("config.invalid", detail=str(exc))
        return 2
    configure_logging(config.log_level, config.log_format)
    try:
        # The flags alone (not the command): what --processes' children are started with.
        return run(serve(config, call.argv[1:], call.env), config.event_loop)
    except ConfigError as exc:
        log.error("config.invalid", detail=str(exc))
        return 2


COMMAND = Command("serve", "run the service (the default command)", _define, _run)


async def serve(
    config: Config, argv: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> int:
    """Run until SIGTERM or SIGINT; the exit code.

    With ``--processes N`` (N >= 2) this process supervises N child processes
    (``argv``, the flags, and ``env``, this process's environment by default,
    are what they are started with); otherwise it runs the actors itself.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        if config.processes > 1:
            children_env = os.environ if env is None else env
            return await ProcessSupervisor(config, argv, children_env).run(stop)
        system = Mailman(config)
        async with asyncio.TaskGroup() as group:
            group.create_task(system.run(stop), name="mailman")
            if config.ready_fd is not None:
                group.create_task(_tell_ready(system, config.ready_fd))
    except* RestartBudgetExceeded:
        code = 1
    except* StartupFailed as eg:
        failed = eg.exceptions[0]
        assert isinstance(failed, StartupFailed)
        log.error("mailman.start_failed", **{failed.what: failed.target}, detail=failed.detail)
        code = 2
    except* ConfigError as eg:
        log.error("config.invalid", detail=str(eg.exceptions[0]))
        code = 2
    except* OSError as eg:
        log.error("mailman.start_failed", detail=str(eg.exceptions[0]))
        code = 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return code


async def _tell_ready(system: Mailman, fd: int) -> None:
    """Write "ready" to the parent's pipe (``--processes``) once serving."""
    with os.fdopen(fd, "wb", buffering=0) as pipe:
        ready = asyncio.ensure_future(system.ready.wait())
        stopped = asyncio.ensure_future(system.stopped.wait())
        try:
            await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            stopped.cancel()
        if system.ready.is_set():
            pipe.write(b"ready\n")


#: The garbage collector's young generation threshold while serving (Python's: 700).
#: A young collection walks every tracked object still alive since the last one: with
#: 32 requests in flight, about 4,500 of them (136 µs a collection), and almost never
#: finds garbage (one object in 1,201 collections, 1b's API child under the bench).
#: At 5,000 they come 50 times less often under that load: an accept 729,300 → 689,397
#: instructions on the loop (``bench.instructions`` with 32 connections, -5.5 %), with
#: the same peak memory under 40 concurrent 10 MiB mails (``python -m bench memory``:
#: 238 MiB against 248). 10,000, measured at issue 21's second stop, doubled that
#: peak (the cyclic garbage of a refused 13 MiB body waited longer for a collection);
#: 2,000 counted no gain with 4 connections in flight; 20,000 counted a mail accepted
#: and sent 6 % more than 5,000 (each young collection walking more of what came since).
YOUNG_THRESHOLD = 5000


@contextlib.contextmanager
def serving_heap() -> Iterator[None]:
    """Inside: what is alive once the code is imported and configured (modules, classes,
    the settings) moved out of the garbage collector's sight (``gc.freeze``), and its
    young generation collected at ``YOUNG_THRESHOLD`` allocations; both as before after.

    A full collection walks every object the collector tracks; while mails flow,
    the objects of the mails in flight pass on to the old generation and full
    collections come every thousand mails or so. Measured on the ``--processes 2``
    worker delivering 20,000 mails to loopback fakes (gc callbacks): 18-21 full
    collections took 0.53-0.95 s of CPU with the heap in sight, 0.08-0.09 s frozen;
    every collection together 45-76 µs per mail, then 23-25 (docs/performance.md).
    """
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def run(main: Coroutine[Any, Any, int], event_loop: str = "auto") -> int:
    """Run ``main`` on uvloop when it is installed (and not refused), else on asyncio's
    loop, with the heap as it is now frozen and young collections less often
    (``serving_heap``)."""
    with serving_heap():
        if event_loop != "asyncio":
            try:
                import uvloop
            except ImportError:
                if event_loop == "uvloop":
                    name = SETTINGS["event_loop"].name
                    raise ConfigError(f"{name}=uvloop but uvloop is not installed") from None
            else:
                return uvloop.run(main)
        return asyncio.run(main)

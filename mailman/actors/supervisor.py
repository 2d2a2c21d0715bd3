"""The supervisor: starts actors in order, restarts the one that crashed.

Strategy ``one_for_one``: a crashed child is restarted alone, after an
exponential backoff; its siblings go on. Restart budget: more than
``max_restarts`` restarts within ``window_seconds`` means something is
wrong that restarting will not fix, so the supervisor stops everything and
raises ``RestartBudgetExceeded``; the entry point exits non-zero and the
container runtime takes over.

Children start in the order given, each ready before the next starts (the
HTTP actor comes last, so storage and mailboxes are ready before the port is
bound); they stop in the reverse order (the HTTP actor first: no new work
comes in while the rest winds down).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from mailman.config import SupervisorConfig
from mailman.core.backoff import capped_exponential

from .lifecycle import Actor

log = structlog.get_logger("mailman.supervisor")


class Restart(enum.StrEnum):
    PERMANENT = "permanent"  # restarted whenever it ends, normally or not
    TRANSIENT = "transient"  # restarted only when it crashed (a one-shot job)


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    factory: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT


class RestartBudgetExceeded(RuntimeError):
    """Children crashed more often than the budget allows."""


class RestartBudget:
    """At most ``max_restarts`` restarts within ``window_seconds``, for any kind of child.

    Shared by the actor supervisor and the ``--processes`` parent, so both
    give up by the same rule.
    """

    def __init__(self, config: SupervisorConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self._recent: collections.deque[float] = collections.deque()

    def charge(self) -> bool:
        """Count one restart now; whether the budget still holds."""
        now = self.clock()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - self.config.window_seconds:
            self._recent.popleft()
        return len(self._recent) <= self.config.max_restarts

    @property
    def recent(self) -> int:
        """Restarts within the window."""
        return len(self._recent)


class Supervisor:
    strategy = "one_for_one"

    def __init__(
        self,
        children: Sequence[ChildSpec],
        config: SupervisorConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            raise ValueError("child names must be unique")
        self.children = tuple(children)
        self.config = config
        self.clock = clock
        self.running: dict[str, Actor] = {}
        self.restarts: dict[str, int] = collections.Counter()
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._budget = RestartBudget(config, clock)

    def stop(self) -> None:
        """Ask ``run`` to stop every child and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Start the children, watch them until ``stop``; raises ``RestartBudgetExceeded``."""
        log.info("supervisor.starting", strategy=self.strategy, children=len(self.children))
        try:
            for spec in self.children:
                if self._stopping.is_set():
                    return
                actor = spec.factory()
                await actor.start()
                self.running[spec.name] = actor
            # Ready once every actor takes work: one that reads a mailbox once its
            # subscription is open (a Kafka group join takes seconds), all at once.
            await asyncio.gather(*(a.until_taking() for a in self.running.values()))
            self.ready.set()
            try:
                async with asyncio.TaskGroup() as group:
                    for spec in self.children:
                        group.create_task(self._watch(spec), name=f"watch:{spec.name}")
            except* RestartBudgetExceeded as eg:
                raise eg.exceptions[0] from None
        finally:
            await self._stop_all()
            log.info("supervisor.stopped")

    async def _stop_all(self) -> None:
        for spec in reversed(self.children):
            actor = self.running.pop(spec.name, None)
            if actor is not None:
                try:
                    await actor.stop()
                except Exception:
                    log.exception("actor.stop_failed", actor=spec.name)

    async def _watch(self, spec: ChildSpec) -> None:
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        try:
            while spec.name in self.running:
                actor = self.running[spec.name]
                ended: asyncio.Future[Any] = asyncio.ensure_future(actor.wait())
                await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not ended.done():
                    ended.cancel()
                    return
                error = ended.exception()
                if error is None and spec.restart is Restart.TRANSIENT:
                    log.info("actor.finished", actor=spec.name)
                    await self.running.pop(spec.name).stop()
                    return
                if error is None:
                    log.error("actor.exited", actor=spec.name)
                else:
                    log.error("actor.crashed", actor=spec.name, exc_info=error)
                await self._replace(spec, stopping)
        finally:
            stopping.cancel()

    async def _replace(self, spec: ChildSpec, stopping: asyncio.Future[Any]) -> None:
        """Stop the dead child, wait out its backoff, start a fresh one (retrying on failure)."""
        old = self.running.pop(spec.name)
        await old.stop()
        while True:
            self._charge(spec.name)
            delay = self._backoff(spec.name)
            log.warning(
                "actor.restarting", actor=spec.name, restart=self.restarts[spec.name], delay=delay
            )
            await asyncio.wait({stopping}, timeout=delay)
            if stopping.done():
                return
            actor = spec.factory()
            try:
                await actor.start()
            except Exception as exc:
                log.error("actor.start_failed", actor=spec.name, exc_info=exc)
                continue
            self.running[spec.name] = actor
            return

    def _charge(self, name: str) -> None:
        self.restarts[name] += 1
        if not self._budget.charge():
            log.critical(
                "supervisor.gave_up",
                actor=name,
                restarts=self._budget.recent,
                window_seconds=self.config.window_seconds,
            )
            raise RestartBudgetExceeded(
                f"more than {self.config.max_restarts} restarts within "
                f"{self.config.window_seconds:g} s (last: {name})"
            )

    def _backoff(self, name: str) -> float:
        # Grows with the restarts inside the budget window, so a child that has
        # been up for a while starts again from the base delay.
        cfg = self.config
        recent = max(1, self._budget.recent)
        return capped_exponential(cfg.backoff_base_seconds, cfg.backoff_cap_seconds, recent)

"""The supervisor: one-for-one restarts, a restart budget, ordered start and stop."""

from __future__ import annotations

import asyncio

import pytest

from mailman.actors.lifecycle import Actor
from mailman.actors.supervisor import ChildSpec, Restart, RestartBudgetExceeded, Supervisor
from mailman.config import SupervisorConfig

from ..conftest import eventually

FAST = SupervisorConfig(
    max_restarts=3, window_seconds=60, backoff_base_seconds=0.001, backoff_cap_seconds=0.01
)


class Toy(Actor):
    """An actor that records its lifecycle and crashes when told to."""

    def __init__(self, name: str, journal: list[str]) -> None:
        super().__init__(name)
        self.journal = journal
        self.crash = asyncio.Event()

    async def setup(self) -> None:
        self.journal.append(f"start {self.name}")

    async def run(self) -> None:
        stop = asyncio.ensure_future(self.stopping.wait())
        crash = asyncio.ensure_future(self.crash.wait())
        await asyncio.wait({stop, crash}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        crash.cancel()
        if self.crash.is_set():
            raise RuntimeError(f"{self.name} crashed")

    async def teardown(self) -> None:
        self.journal.append(f"stop {self.name}")


class Registry:
    """Makes Toy actors and remembers the latest of each name."""

    def __init__(self) -> None:
        self.journal: list[str] = []
        self.latest: dict[str, Toy] = {}
        self.made: dict[str, int] = {}

    def spec(self, name: str) -> ChildSpec:
        def factory() -> Actor:
            actor = self.latest[name] = Toy(name, self.journal)
            self.made[name] = self.made.get(name, 0) + 1
            return actor

        return ChildSpec(name, factory)


async def test_actor_lifecycle_is_idempotent_and_a_context_manager() -> None:
    """start/stop work as async with, stop twice is harmless, and teardown runs once."""
    journal: list[str] = []
    async with Toy("a", journal) as actor:
        assert journal == ["start a"]
    await actor.stop()
    assert journal == ["start a", "stop a"]


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    """The last child (the HTTP actor in production) starts last and stops first."""
    reg = Registry()
    sup = Supervisor([reg.spec("store"), reg.spec("worker"), reg.spec("api")], FAST)
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.ready.wait(), 5)
    sup.stop()
    await asyncio.wait_for(task, 5)
    assert reg.journal == [
        "start store",
        "start worker",
        "start api",
        "stop api",
        "stop worker",
        "stop store",
    ]


async def test_crashed_child_is_restarted_alone() -> None:
    """one_for_one: the crashed child gets a fresh instance; its siblings keep running."""
    reg = Registry()
    sup = Supervisor([reg.spec("a"), reg.spec("b")], FAST)
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.ready.wait(), 5)
    first_b = reg.latest["b"]
    reg.latest["a"].crash.set()
    await eventually(
        lambda: reg.made["a"] == 2 and sup.running.get("a") is reg.latest["a"], what="a restarted"
    )
    assert reg.made["b"] == 1 and sup.running["b"] is first_b
    assert sup.restarts["a"] == 1
    sup.stop()
    await asyncio.wait_for(task, 5)


async def test_supervisor_gives_up_past_its_budget() -> None:
    """More restarts than the budget within the window stops everything and raises."""
    reg = Registry()
    sup = Supervisor([reg.spec("steady"), reg.spec("flaky")], FAST)
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.ready.wait(), 5)
    for n in range(1, FAST.max_restarts + 2):
        await eventually(
            lambda n=n: reg.made["flaky"] == n and "flaky" in sup.running,
            what=f"flaky instance {n}",
        )
        reg.latest["flaky"].crash.set()
    with pytest.raises(RestartBudgetExceeded):
        await asyncio.wait_for(task, 5)
    assert reg.made["flaky"] == FAST.max_restarts + 1
    assert reg.journal[-1] == "stop steady"  # everything was stopped
    assert not sup.running


async def test_transient_child_may_finish() -> None:
    """A transient child that returns normally is not restarted."""

    class OneShot(Actor):
        async def run(self) -> None:
            return None

    made = []

    def factory() -> Actor:
        made.append(1)
        return OneShot("once")

    sup = Supervisor([ChildSpec("once", factory, Restart.TRANSIENT)], FAST)
    task = asyncio.create_task(sup.run())
    await eventually(lambda: sup.ready.is_set() and "once" not in sup.running, what="finished")
    sup.stop()
    await asyncio.wait_for(task, 5)
    assert len(made) == 1


async def test_stop_cancels_a_loop_that_ignores_it() -> None:
    """An actor whose loop does not end within stop_timeout is cancelled and still torn down."""
    journal: list[str] = []

    class Stubborn(Toy):
        stop_timeout = 0.05

        async def run(self) -> None:
            await asyncio.Event().wait()

    actor = Stubborn("s", journal)
    await actor.start()
    await asyncio.wait_for(actor.stop(), 5)
    assert journal == ["start s", "stop s"]

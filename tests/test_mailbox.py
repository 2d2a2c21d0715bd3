"""The mailbox contract: one suite, run against every implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from actors.mailbox import Broker, MemoryBroker
from actors.messages import Dispatch

from .conftest import eventually


@pytest.fixture(params=["memory"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A started broker of each implementation."""
    made: Broker = MemoryBroker(capacity=4)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


def dispatch(n: int) -> Dispatch:
    return Dispatch(mail_id=f"mail-{n}", accepted_at=1000.0 + n)


async def test_messages_arrive_in_order(broker: Broker) -> None:
    """What is put comes out once, in the order it was put, as equal records."""
    box = broker.mailbox("contract.order", Dispatch)
    sent = [dispatch(n) for n in range(3)]
    async with box.subscribe() as inbox:
        for message in sent:
            await box.put(message)
        got = []
        for _ in sent:
            delivery = await asyncio.wait_for(inbox.get(), 5)
            got.append(delivery.message)
            await delivery.ack()
    assert got == sent


async def test_same_name_same_mailbox(broker: Broker) -> None:
    """Asking twice for one name gives the same mailbox; another type for it is refused."""
    assert broker.mailbox("contract.same", Dispatch) is broker.mailbox("contract.same", Dispatch)
    with pytest.raises(TypeError):
        broker.mailbox("contract.same", str)


async def test_unacked_message_is_delivered_again(broker: Broker) -> None:
    """A message taken but not acked before the subscription closes goes to the next subscriber."""
    box = broker.mailbox("contract.redeliver", Dispatch)
    await box.put(dispatch(1))
    await box.put(dispatch(2))
    async with box.subscribe() as inbox:
        first = await asyncio.wait_for(inbox.get(), 5)
        await first.ack()
        await asyncio.wait_for(inbox.get(), 5)  # taken, never acked: a crash
    async with box.subscribe() as inbox:
        again = await asyncio.wait_for(inbox.get(), 5)
        await again.ack()
    assert (first.message, again.message) == (dispatch(1), dispatch(2))


async def test_acked_message_is_not_delivered_again(broker: Broker) -> None:
    """An acked message never comes back, even after the subscription closes."""
    box = broker.mailbox("contract.acked", Dispatch)
    await box.put(dispatch(1))
    async with box.subscribe() as inbox:
        delivery = await asyncio.wait_for(inbox.get(), 5)
        await delivery.ack()
    async with box.subscribe() as inbox:
        assert inbox.get_nowait() is None


async def test_get_nowait_batches_what_is_ready(broker: Broker) -> None:
    """get_nowait returns ready messages without waiting, and None once the box is empty."""
    box = broker.mailbox("contract.nowait", Dispatch)
    for n in range(3):
        await box.put(dispatch(n))
    async with box.subscribe() as inbox:
        got = []
        while (delivery := inbox.get_nowait()) is not None:
            got.append(delivery.message)
            await delivery.ack()
    assert got == [dispatch(n) for n in range(3)]


async def test_put_waits_while_full(broker: Broker) -> None:
    """A bounded mailbox makes put wait until a consumer makes room (backpressure)."""
    box = broker.mailbox("contract.full", Dispatch)
    for n in range(4):  # the fixture's capacity
        await box.put(dispatch(n))
    blocked = asyncio.create_task(box.put(dispatch(4)))
    await asyncio.sleep(0)
    assert not blocked.done()
    async with box.subscribe() as inbox:
        delivery = await inbox.get()
        await delivery.ack()
        await asyncio.wait_for(blocked, 5)
        rest = []
        while (d := inbox.get_nowait()) is not None:
            rest.append(d.message.mail_id)
            await d.ack()
    assert rest == [f"mail-{n}" for n in range(1, 5)]


async def test_get_waits_for_a_message(broker: Broker) -> None:
    """A waiting consumer receives a message put later."""
    box = broker.mailbox("contract.wait", Dispatch)
    async with box.subscribe() as inbox:
        waiting = asyncio.create_task(inbox.get())
        await box.put(dispatch(7))
        delivery = await asyncio.wait_for(waiting, 5)
        await delivery.ack()
    assert delivery.message == dispatch(7)


async def test_cancelled_get_loses_nothing(broker: Broker) -> None:
    """Cancelling a waiting get takes no message away from later consumers."""
    box = broker.mailbox("contract.cancel", Dispatch)
    async with box.subscribe() as inbox:
        waiting = asyncio.create_task(inbox.get())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await box.put(dispatch(3))
        seen: list[Dispatch] = []

        async def take() -> bool:
            d = inbox.get_nowait()
            if d is not None:
                seen.append(d.message)
                await d.ack()
            return bool(seen)

        await eventually(take, what="the message after a cancelled get")
    assert seen == [dispatch(3)]

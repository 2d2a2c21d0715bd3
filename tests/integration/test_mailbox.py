"""The mailbox contract: one suite, run against every implementation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from mailman.core.messages import Dispatch
from mailman.mailboxes import Broker, Inbox, MemoryBroker
from mailman.mailboxes.kafka import (
    DEAD_LETTER_ERROR,
    DEAD_LETTER_OFFSET,
    DEAD_LETTER_PARTITION,
    DEAD_LETTER_TOPIC,
    IdempotenceUnsupported,
    KafkaBroker,
    _Partition,
    heartbeat_interval,
)

from ..conftest import eventually
from ..support.kafka_broker import external_kafka, kafka_options, start_tansu

#: Runs a test against one implementation only (the fixture is parametrised by name).
memory_only = pytest.mark.parametrize("broker", ["memory"], indirect=True)
kafka_only = pytest.mark.parametrize("broker", ["kafka"], indirect=True)


@pytest.fixture(params=["memory", "kafka"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A started broker of each implementation; Kafka topics are unique to the test."""
    made: Broker
    if request.param == "memory":
        made = MemoryBroker(capacity=4)
    else:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        made = KafkaBroker(bootstrap, topic_prefix=f"test-{uuid4().hex[:8]}.", **kafka_options())
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


def dispatch(n: int) -> Dispatch:
    """A message about mail n (each n its own mail, so its own Kafka key)."""
    return Dispatch(mail_id=f"mail-{n}", accepted_at=1000.0 + n)


def step(n: int, mail: str = "mail-0") -> Dispatch:
    """The n-th message about one mail: one key, so one order on any broker."""
    return Dispatch(mail_id=mail, accepted_at=1000.0, hop=n)


async def test_messages_arrive_in_order(broker: Broker) -> None:
    """What is put about one mail comes out once, in the order it was put, as equal records."""
    box = broker.mailbox("contract.order", Dispatch)
    sent = [step(n) for n in range(3)]
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
    await box.put(step(1))
    await box.put(step(2))
    async with box.subscribe() as inbox:
        first = await asyncio.wait_for(inbox.get(), 5)
        await first.ack()
        await asyncio.wait_for(inbox.get(), 5)  # taken, never acked: a crash
    async with box.subscribe() as inbox:
        again = await asyncio.wait_for(inbox.get(), 5)
        await again.ack()
    assert (first.message, again.message) == (step(1), step(2))


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
        await box.put(step(n))
    async with box.subscribe() as inbox:
        got = []
        while (delivery := inbox.get_nowait()) is not None:
            got.append(delivery.message)
            await delivery.ack()
    assert got == [step(n) for n in range(3)]


@memory_only
async def test_put_waits_while_full(broker: Broker) -> None:
    """A bounded mailbox makes put wait for room; memory only: a topic is not bounded."""
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


@memory_only
async def test_get_nowait_makes_room_for_a_waiting_put(broker: Broker) -> None:
    """Taking from a full mailbox without waiting (a batch) also wakes a put waiting for room."""
    box = broker.mailbox("contract.full-nowait", Dispatch)
    for n in range(4):  # the fixture's capacity
        await box.put(dispatch(n))
    blocked = asyncio.create_task(box.put(dispatch(4)))
    await asyncio.sleep(0)
    assert not blocked.done()
    async with box.subscribe() as inbox:
        taken = inbox.get_nowait()
        assert taken is not None
        await taken.ack()
        await asyncio.wait_for(blocked, 5)


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


# --- more of the contract ----------------------------------------------------


async def drain(inbox: Inbox[Dispatch], *, ack: bool = True) -> list[Dispatch]:
    """What the inbox has ready now, acked unless told otherwise."""
    got = []
    while (delivery := inbox.get_nowait()) is not None:
        got.append(delivery.message)
        if ack:
            await delivery.ack()
    return got


async def test_one_mails_messages_arrive_in_order(broker: Broker) -> None:
    """Messages about one mail arrive in the order they were put, however mails interleave."""
    box = broker.mailbox("contract.keyorder", Dispatch)
    mails = [f"mail-{m}" for m in range(4)]
    sent = [step(n, mail) for n in range(6) for mail in mails]

    async def put_all() -> None:  # while we take: the memory fixture holds only 4
        await box.put_many(sent[:12])
        for message in sent[12:]:
            await box.put(message)

    got: list[Dispatch] = []
    async with box.subscribe() as inbox:
        putting = asyncio.create_task(put_all())
        while len(got) < len(sent):
            delivery = await asyncio.wait_for(inbox.get(), 10)
            got.append(delivery.message)
            await delivery.ack()
        await putting
    assert sorted(got, key=repr) == sorted(sent, key=repr)
    for mail in mails:
        assert [m.hop for m in got if m.mail_id == mail] == list(range(6))


async def test_two_subscribers_share_each_message_once(broker: Broker) -> None:
    """Two subscribers of one mailbox together receive each message exactly once, all acked."""
    box = broker.mailbox("contract.shared", Dispatch)
    sent = [dispatch(n) for n in range(12)]
    seen: dict[str, list[Dispatch]] = {"a": [], "b": []}

    async def consume(inbox: Inbox[Dispatch], into: list[Dispatch]) -> None:
        async for delivery in inbox:
            into.append(delivery.message)
            await delivery.ack()

    # a, the first to join (the group's leader), leaves first: Tansu wedges a
    # group whose leader leaves while it rebalances after another member left.
    async with contextlib.AsyncExitStack() as b_stack, contextlib.AsyncExitStack() as a_stack:
        a = await a_stack.enter_async_context(box.subscribe())
        b = await b_stack.enter_async_context(box.subscribe())
        tasks = [
            asyncio.create_task(consume(a, seen["a"])),
            asyncio.create_task(consume(b, seen["b"])),
        ]
        try:
            await box.put_many(sent)
            await eventually(
                lambda: len(seen["a"]) + len(seen["b"]) >= len(sent), what="every message"
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        together = seen["a"] + seen["b"]
        assert sorted(together, key=repr) == sorted(sent, key=repr)
    async with box.subscribe() as inbox:
        assert await drain(inbox) == []  # all of it was acked: none comes back


async def test_out_of_order_ack_redelivers_the_unacked(broker: Broker) -> None:
    """Acking message 2 but not 1 before closing brings 1 back (Kafka may bring 2 as well)."""
    box = broker.mailbox("contract.ackorder", Dispatch)
    await box.put_many([step(1), step(2)])
    async with box.subscribe() as inbox:
        first = await asyncio.wait_for(inbox.get(), 10)
        second = await asyncio.wait_for(inbox.get(), 10)
        assert (first.message, second.message) == (step(1), step(2))
        await second.ack()
    async with box.subscribe() as inbox:
        again = await drain(inbox)
    assert again[:1] == [step(1)]
    assert set(again) <= {step(1), step(2)}
    if isinstance(broker, MemoryBroker):
        assert again == [step(1)]


# --- Kafka only ---------------------------------------------------------------


def kafka(broker: Broker) -> KafkaBroker:
    assert isinstance(broker, KafkaBroker)
    return broker


def test_commit_point_never_passes_an_unfinished_offset() -> None:
    """Acks in any order move a partition's commit point only past offsets all done."""
    partition = _Partition(TopicPartition("t", 0))
    for offset in (5, 6, 7, 9):  # 8 is missing, as after compaction
        partition.add(offset)
    assert partition.committable() == 5
    partition.finish(6)
    partition.finish(9)
    assert partition.committable() == 5
    partition.finish(5)
    assert partition.committable() == 7
    partition.committed = 7
    assert partition.committable() is None  # nothing new to commit
    partition.finish(7)
    assert partition.committable() == 10


def test_heartbeat_is_a_tenth_of_the_session_within_bounds() -> None:
    """Members hear of a rebalance soon: heartbeats every tenth of the session, 0.1 to 1 s."""
    assert heartbeat_interval(6000) == 600  # the production default session
    assert heartbeat_interval(2000) == 200  # the tests' session on Tansu
    assert heartbeat_interval(45000) == 1000
    assert heartbeat_interval(300) == 100  # never above a third of the session
    kb = KafkaBroker("127.0.0.1:9", session_timeout_ms=6000)
    assert (kb.heartbeat_interval_ms, kb.rebalance_timeout_ms) == (600, 6000)
    with pytest.raises(ValueError):
        KafkaBroker("127.0.0.1:9", session_timeout_ms=6000, heartbeat_interval_ms=6000)


@kafka_only
async def test_undecodable_record_goes_to_dead_letters(broker: Broker) -> None:
    """A record that is not a message goes to the dead-letter topic; the next one is delivered."""
    kb = kafka(broker)
    box = kb.mailbox("contract.poison", Dispatch)
    await box.put(step(1))
    raw = AIOKafkaProducer(bootstrap_servers=kb.bootstrap, enable_idempotence=False)
    await raw.start()
    try:
        poison = await raw.send_and_wait(box.topic, b"{not a dispatch", key=b"mail-0")
    finally:
        await raw.stop()
    await box.put(step(2))  # same key: same partition, after the poison
    async with box.subscribe() as inbox:
        got = [await asyncio.wait_for(inbox.get(), 10) for _ in range(2)]
        for delivery in got:
            await delivery.ack()
        assert [d.message for d in got] == [step(1), step(2)]

    letters = AIOKafkaConsumer(
        kb.dead_letter_topic, bootstrap_servers=kb.bootstrap, auto_offset_reset="earliest"
    )
    group = AIOKafkaConsumer(bootstrap_servers=kb.bootstrap, group_id=box.topic)  # never joins
    await letters.start()
    await group.start()
    try:
        record = await asyncio.wait_for(letters.getone(), 10)
        committed = await group.committed(TopicPartition(box.topic, poison.partition))
    finally:
        await letters.stop()
        await group.stop()
    headers = {name: value.decode() for name, value in record.headers}
    assert (record.key, record.value) == (b"mail-0", b"{not a dispatch")
    assert headers[DEAD_LETTER_TOPIC] == box.topic
    assert headers[DEAD_LETTER_PARTITION] == str(poison.partition)
    assert headers[DEAD_LETTER_OFFSET] == str(poison.offset)
    assert "not JSON" in headers[DEAD_LETTER_ERROR]
    # The poison counted as done: the commit went past it and past step 2.
    assert committed == poison.offset + 2


async def committed_offset(kb: KafkaBroker, tp: TopicPartition) -> int | None:
    """The offset the mailbox's consumer group committed for ``tp``, asked from outside it."""
    group = AIOKafkaConsumer(bootstrap_servers=kb.bootstrap, group_id=tp.topic)  # never joins
    await group.start()
    try:
        committed: int | None = await group.committed(tp)
        return committed
    finally:
        await group.stop()


@kafka_only
async def test_dead_letter_sink_gets_the_raw_record_and_keeps_it_while_failing(
    broker: Broker,
) -> None:
    """An undecodable record goes to the sink with its raw bytes; while the sink fails it stays."""
    kb = kafka(broker)
    calls: list[tuple[str, bytes | None, bytes, str]] = []
    failing = True

    async def sink(mailbox: str, key: bytes | None, value: bytes, error: str) -> None:
        calls.append((mailbox, key, value, error))
        if failing:
            raise RuntimeError("the dead-letter store is down")

    sinking = KafkaBroker(
        kb.bootstrap, topic_prefix=kb.topic_prefix, dead_letters=sink, **kafka_options()
    )
    await sinking.start()
    try:
        box = sinking.mailbox("contract.sink", Dispatch)
        await box.put(step(1))
        raw = AIOKafkaProducer(bootstrap_servers=kb.bootstrap, enable_idempotence=False)
        await raw.start()
        try:
            poison = await raw.send_and_wait(box.topic, b"{not a dispatch", key=b"mail-0")
        finally:
            await raw.stop()
        await box.put(step(2))  # same key: same partition, behind the poison
        tp = TopicPartition(box.topic, poison.partition)

        async def committed_is(offset: int) -> bool:
            return await committed_offset(sinking, tp) == offset

        # The sink fails: the records around the poison are delivered, the sink is
        # tried again, and the commit point stays at the poison.
        async with box.subscribe() as inbox:
            got = [await asyncio.wait_for(inbox.get(), 10) for _ in range(2)]
            for delivery in got:
                await delivery.ack()
            assert [d.message for d in got] == [step(1), step(2)]
            await eventually(lambda: len(calls) >= 3, what="the sink tried again")
            await eventually(lambda: committed_is(poison.offset), what="step 1 committed")
        assert await committed_is(poison.offset)  # closed while failing: not skipped

        # The next owner of the partition gets the poison again; now the sink takes it.
        failing = False
        tried = len(calls)
        again: list[Dispatch] = []
        async with box.subscribe() as inbox:

            async def past_the_poison() -> bool:
                again.extend(await drain(inbox))
                return await committed_is(poison.offset + 2)

            await eventually(past_the_poison, what="the commit past the poison")
        assert len(calls) == tried + 1
        assert again == [step(2)]  # behind the uncommitted poison: delivered again
        letters = AIOKafkaConsumer(bootstrap_servers=kb.bootstrap)
        await letters.start()
        try:
            dead_topic = [
                TopicPartition(sinking.dead_letter_topic, p)
                for p in letters.partitions_for_topic(sinking.dead_letter_topic) or ()
            ]
            ends = await letters.end_offsets(dead_topic) if dead_topic else {}
        finally:
            await letters.stop()
    finally:
        await sinking.stop()
    mailbox, key, value, error = calls[-1]
    assert (mailbox, key, value) == ("contract.sink", b"mail-0", b"{not a dispatch")
    assert "not JSON" in error
    assert all(offset == 0 for offset in ends.values())  # nothing went to the topic


@kafka_only
async def test_ack_after_revoke_is_ignored(broker: Broker) -> None:
    """An ack for a partition taken away by a rebalance is ignored; the message comes again."""
    box = broker.mailbox("contract.revoke", Dispatch)
    await box.put(step(1))
    async with box.subscribe() as a:
        taken = a.get_nowait()
        assert taken is not None
        async with box.subscribe() as b:  # joining makes the group take a's partitions back
            await taken.ack()
            again: list[Dispatch] = []

            async def seen_again() -> bool:
                again.extend(await drain(a))
                again.extend(await drain(b))
                return bool(again)

            await eventually(seen_again, what="the message after the rebalance")
    assert again == [step(1)]


@kafka_only
async def test_small_buffer_pauses_and_resumes(broker: Broker) -> None:
    """An inbox holds at most max_buffered deliveries, and fetches the rest as they are taken."""
    kb = kafka(broker)
    small = KafkaBroker(
        kb.bootstrap, topic_prefix=kb.topic_prefix, max_buffered=2, **kafka_options()
    )
    await small.start()
    try:
        box = small.mailbox("contract.small", Dispatch)
        sent = [step(n) for n in range(5)]
        await box.put_many(sent)
        async with box.subscribe() as inbox:
            got = await drain(inbox)
            assert 1 <= len(got) <= 2
            while len(got) < len(sent):
                delivery = await asyncio.wait_for(inbox.get(), 10)
                got.append(delivery.message)
                await delivery.ack()
        assert got == sent
    finally:
        await small.stop()


@kafka_only
async def test_failed_publish_raises(broker: Broker) -> None:
    """A publish the broker does not take raises (here: the broker went away)."""
    tansu = start_tansu()
    try:
        gone = KafkaBroker(
            tansu.bootstrap,
            topic_prefix=f"test-{uuid4().hex[:8]}.",
            request_timeout_ms=1000,
            **{**kafka_options(), "idempotent": False},
        )
        await gone.start()
        try:
            box = gone.mailbox("contract.gone", Dispatch)
            await box.put(step(1))
            tansu.kill()  # its port is closed now
            with pytest.raises(KafkaError):
                await asyncio.wait_for(box.put(step(2)), 10)
        finally:
            await gone.stop()
    finally:
        tansu.stop()


@kafka_only
@pytest.mark.skipif(external_kafka() is not None, reason="about Tansu, not the given Kafka")
async def test_idempotent_producer_on_tansu_fails_loudly(broker: Broker) -> None:
    """Tansu cannot give a producer id: start() says so instead of silently going non-idempotent."""
    strict = KafkaBroker(kafka(broker).bootstrap, topic_prefix=kafka(broker).topic_prefix)
    with pytest.raises(IdempotenceUnsupported):
        await strict.start()
    await strict.stop()


async def test_consumer_lag_counts_what_each_group_has_not_committed(
    kafka_bootstrap: str,
) -> None:
    """consumer_lag(): a mailbox's lag is what was put and not yet acknowledged (committed)
    by its group; a mailbox whose topic does not exist yet has none."""
    from mailman.mailboxes.kafka import consumer_lag

    broker = KafkaBroker(kafka_bootstrap, topic_prefix=f"lag-{uuid4().hex[:8]}.", **kafka_options())
    box = broker.mailbox("send.x", Dispatch)
    await broker.start()
    try:
        topics = {"send.x": box.topic, "retry": broker.topic_of("retry")}
        # One put per message: Tansu 0.6 answers ListOffsets with an end offset one past
        # a multi-record batch's first record, not its last (Kafka: one past the last).
        for n in range(5):
            await box.put(dispatch(n))
        assert await consumer_lag(kafka_bootstrap, topics) == {"send.x": 5, "retry": 0}
        async with box.subscribe() as inbox:
            for _ in range(3):
                delivery = await asyncio.wait_for(inbox.get(), 10)
                await delivery.ack()

            async def lag_is_two() -> bool:
                return (await consumer_lag(kafka_bootstrap, topics))["send.x"] == 2

            await eventually(lag_is_two, what="three acknowledged messages committed")
    finally:
        await broker.stop()

"""Mailboxes on Kafka: one topic per mailbox, one consumer group per mailbox.

``KafkaBroker`` makes ``KafkaMailbox``es with the semantics of the in-process
``MemoryMailbox`` (see ``actors.mailboxes.memory``), within what Kafka can promise:

* **Publishing.** One shared producer per broker, ``acks="all"``. A message is
  keyed by ``key_of(message)`` (its mail id), so one mail's messages stay in
  order on one partition; there is no order across mails. ``put`` returns once
  the broker holds the message and raises if it does not (never swallowed).
  With ``idempotent=True`` (the default) the producer's retries cannot
  duplicate or reorder a message. Brokers that cannot give a producer id fail
  ``start()`` with ``IdempotenceUnsupported``; pass ``idempotent=False`` for
  those explicitly (Tansu 0.6, which the tests use, is one: it answers
  UNKNOWN_SERVER_ERROR to InitProducerId v0, the only version aiokafka sends).
  Without idempotence a retried send may be stored twice: at-least-once, which
  the actors tolerate since their handlers are idempotent.

* **Consuming.** A subscription is a consumer in the group
  ``{topic_prefix}{name}``: subscribers of one mailbox share its partitions.
  Offsets are committed by us, never automatically. A partition with no
  committed offset (a new group) is read from its earliest offset, so what
  was put before the group's first assignment is delivered, not skipped.
  Deliveries of one partition may be handled concurrently and acknowledged in
  any order; the offset committed for a partition never passes a delivery
  that is not yet acknowledged (see ``_Partition``). An unacknowledged
  delivery is therefore delivered again to whoever next owns its partition:
  at-least-once. A subscription is open once the group assigned it its
  partitions (``kafka.subscribed`` logs how long that took).

* **Poison records.** A record that does not decode as the mailbox's type is
  never handed to a handler. It goes to the broker's ``dead_letters`` sink if
  one was given (called with the mailbox name, the record's key, its value
  bytes, ``b""`` for a tombstone, and the error), else it is copied to the
  dead-letter topic (original key and bytes, headers naming the source topic,
  partition, offset and the error). Only once that succeeded does it count as
  done. Until then it stays unacknowledged: the sink (or the publish) is tried
  again with a backoff (0.1 s doubling to 5 s, each try bounded by
  ``request_timeout_ms``), in the background, so the records behind it and the
  other partitions are delivered meanwhile, but the partition's commit point
  stays at the poison record; if the partition moves or the inbox closes first,
  whoever next owns the partition gets the record again.

* **Rebalances.** When partitions are revoked, what is done on them is
  committed, their buffered deliveries are dropped, and acks that arrive later
  for deliveries taken from them are ignored (the new owner gets those again).
  Each assignment and revocation is logged (``kafka.assigned``,
  ``kafka.revoked``, at info).

* **Membership and takeover.** A member that stops cleanly (the subscription
  closes) sends LeaveGroup, so the others rebalance at their next heartbeat.
  A member that dies (SIGKILL, a lost host) is only noticed when its session
  lapses: the coordinator drops it ``session_timeout_ms`` after its last
  heartbeat, the others learn of it at their next heartbeat and rejoin, and
  its partitions (with their unacknowledged deliveries) are theirs after that
  one rebalance. So a killed member's partitions are served again within
  ``session_timeout_ms`` + ``heartbeat_interval_ms`` + the rebalance itself.
  The heartbeat interval is therefore short: a tenth of the session, between
  0.1 and 1 s (Kafka's rule is at most a third); and the rebalance timeout is
  the session timeout (a member that does not rejoin within it is dropped).
  During a rebalance every member stops fetching (the eager protocol, the
  only one aiokafka has). Apache Kafka ends a rebalance as soon as every
  member rejoined, and delays a new group's first one by the broker's
  ``group.initial.rebalance.delay.ms`` (set it to 0, as docker-compose.yml
  does). Tansu 0.6, which the tests use, holds every JoinGroup for about half
  the session timeout (3 s at 6 s), numbers a group's first generation 0
  (aiokafka sends LeaveGroup only for generations above 0, so a member that
  never saw a rebalance leaves silently there), and makes a member joining a
  group whose only member died wait for that member's session to lapse and
  then join again: see tests/support/kafka_broker.py.

* **Timeouts.** The inbox calls ``getmany`` continually from a background
  task, also while handlers run and while its buffer is full (it pauses its
  partitions then), so heartbeats go on and aiokafka never sees the poll
  interval lapse because a handler is slow. Even so, a sender's provider
  timeout (times the attempts it makes per delivery) must fit inside
  ``max_poll_interval_ms``: that is the budget the deployment declares for
  handling one message, and a handler still running when its partition moves
  to another member has its ack ignored, so the new owner handles (sends) the
  message again.

Topics are created (``partitions``, ``replication_factor``) by ``start()`` for
every mailbox asked for so far, and lazily by ``put``/``subscribe`` for
mailboxes asked for later. Stop a broker after the subscriptions on it closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
    UnknownError,
    for_code,
)

from mailman.core.messages import decode, encode, key_of
from mailman.retry import Backoff, retrying

from .base import Broker, Delivery, Inbox, M, Mailbox

log = structlog.get_logger("mailman.kafka")

_TOPIC_ALREADY_EXISTS = 36

#: Header names on a dead-lettered record.
DEAD_LETTER_TOPIC = "mailman-dead-letter-topic"
DEAD_LETTER_PARTITION = "mailman-dead-letter-partition"
DEAD_LETTER_OFFSET = "mailman-dead-letter-offset"
DEAD_LETTER_ERROR = "mailman-dead-letter-error"


#: Where undecodable records go instead of the dead-letter topic:
#: ``await sink(mailbox name, record key, record value, error text)``.
DeadLetterSink = Callable[[str, bytes | None, bytes, str], Awaitable[None]]

#: Waits between tries to dead-letter a record, and to commit offsets: 0.1 s doubling to 5 s.
DEAD_LETTER_BACKOFF = Backoff(first=0.1, cap=5.0)
COMMIT_BACKOFF = Backoff(first=0.1, cap=5.0)


def heartbeat_interval(session_timeout_ms: int) -> int:
    """The heartbeat interval for a session: a tenth of it, between 100 ms and 1 s
    (never above a third of the session, Kafka's rule).

    Members learn of a rebalance (another member joined, left or was dropped)
    at their next heartbeat, so it bounds how long a rebalance waits for them.
    """
    floor = min(100, session_timeout_ms // 3)
    return max(1, floor, min(1000, session_timeout_ms // 10))


class IdempotenceUnsupported(RuntimeError):
    """The broker would not give the producer an id: run it with ``idempotent=False``."""


class KafkaBroker(Broker):
    """Mailboxes as topics of one Kafka cluster, sharing one producer."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic_prefix: str = "mailman.",
        partitions: int = 6,
        replication_factor: int = 1,
        client_id: str = "mailman",
        dead_letter_topic: str | None = None,
        idempotent: bool = True,
        linger_ms: int = 5,
        max_poll_interval_ms: int = 300000,
        session_timeout_ms: int = 30000,
        request_timeout_ms: int = 30000,
        fetch_max_wait_ms: int = 500,
        max_buffered: int = 1000,
        heartbeat_interval_ms: int | None = None,
        dead_letters: DeadLetterSink | None = None,
    ) -> None:
        if partitions < 1 or replication_factor < 1:
            raise ValueError("partitions and replication_factor must be at least 1")
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.client_id = client_id
        self.dead_letter_topic = dead_letter_topic or f"{topic_prefix}dead-letters"
        self.idempotent = idempotent
        self.linger_ms = linger_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.session_timeout_ms = session_timeout_ms
        #: A member learns of a rebalance at its next heartbeat (see heartbeat_interval).
        if heartbeat_interval_ms is None:
            heartbeat_interval_ms = heartbeat_interval(session_timeout_ms)
        elif not 0 < heartbeat_interval_ms < session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be above 0 and below session_timeout_ms")
        self.heartbeat_interval_ms = heartbeat_interval_ms
        #: How long a rebalance waits for members to rejoin before it drops them.
        self.rebalance_timeout_ms = session_timeout_ms
        self.request_timeout_ms = request_timeout_ms
        #: How long the broker may hold a fetch that finds nothing. Kafka answers
        #: as soon as a record arrives; Tansu holds it, so there it is latency.
        self.fetch_max_wait_ms = fetch_max_wait_ms
        #: Deliveries an inbox holds before it pauses fetching.
        self.max_buffered = max_buffered
        #: Where undecodable records go; None: the dead-letter topic.
        self.dead_letters = dead_letters
        self._boxes: dict[str, KafkaMailbox[Any]] = {}
        self._producer: Any = None  # AIOKafkaProducer once started
        self._admin: Any = None  # AIOKafkaAdminClient once started
        self._topics: set[str] = set()
        self._topics_lock = asyncio.Lock()

    def topic_of(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def mailbox(self, name: str, kind: type[M]) -> KafkaMailbox[M]:
        box = self._boxes.get(name)
        if box is None:
            box = self._boxes[name] = KafkaMailbox(self, name, kind)
        elif box.kind is not kind:
            raise TypeError(f"mailbox {name} carries {box.kind.__name__}, not {kind.__name__}")
        made: KafkaMailbox[M] = box
        return made

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Create the topics (of the mailboxes so far, and for dead letters); start the producer."""
        if self._producer is not None:
            return
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=self.request_timeout_ms,
        )
        await admin.start()
        try:
            self._admin = admin
            await self._create_topics(
                [
                    *([self.dead_letter_topic] if self.dead_letters is None else []),
                    *(box.topic for box in self._boxes.values()),
                ]
            )
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=self.client_id,
                acks="all",
                enable_idempotence=self.idempotent,
                linger_ms=self.linger_ms,
                request_timeout_ms=self.request_timeout_ms,
            )
            try:
                await producer.start()
            except BaseException as exc:
                await producer.stop()
                if self.idempotent and isinstance(exc, UnknownError):
                    raise IdempotenceUnsupported(
                        f"Kafka at {self.bootstrap} refused a producer id (InitProducerId "
                        f"failed: {exc!r}); this broker cannot run an idempotent producer, "
                        "start the KafkaBroker with idempotent=False"
                    ) from exc
                raise
        except BaseException:
            self._admin = None
            await admin.close()
            raise
        if not self.idempotent:
            log.warning(
                "kafka.producer_not_idempotent",
                bootstrap=self.bootstrap,
                note="a retried send may store a message twice (at-least-once)",
            )
        self._producer = producer

    async def stop(self) -> None:
        """Flush and stop the producer; close the admin client. Idempotent."""
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        try:
            if producer is not None:
                try:
                    await producer.flush()
                finally:
                    await producer.stop()
        finally:
            if admin is not None:
                await admin.close()

    def may_come_up(self, exc: BaseException) -> bool:
        """A cluster that is down or unreachable may come up; one that cannot run an
        idempotent producer will not."""
        if isinstance(exc, IdempotenceUnsupported):
            return False
        return isinstance(exc, KafkaError | OSError)

    async def ping(self) -> None:
        """Ask the cluster for its metadata through the producer's connections: raises
        (``KafkaError``) unless a broker answers, or when the broker is not started."""
        await self._running_producer().client.fetch_all_metadata()

    def _running_producer(self) -> Any:
        if self._producer is None:
            raise RuntimeError("the KafkaBroker is not started")
        return self._producer

    async def _ensure_topic(self, topic: str) -> None:
        if topic not in self._topics:
            await self._create_topics([topic])

    async def _create_topics(self, topics: Iterable[str]) -> None:
        async with self._topics_lock:
            wanted = sorted({t for t in topics if t not in self._topics})
            if not wanted:
                return
            if self._admin is None:
                raise RuntimeError("the KafkaBroker is not started")
            try:
                response = await self._admin.create_topics(
                    [NewTopic(t, self.partitions, self.replication_factor) for t in wanted],
                    timeout_ms=self.request_timeout_ms,
                )
            except TopicAlreadyExistsError:
                pass
            else:
                for item in response.topic_errors:
                    topic, code = item[0], item[1]
                    if code not in (0, _TOPIC_ALREADY_EXISTS):
                        message = item[2] if len(item) > 2 else None
                        raise for_code(code)(f"cannot create topic {topic}: {message}")
            self._topics.update(wanted)


class KafkaMailbox(Mailbox[M]):
    """A topic; ``put`` publishes to it, ``subscribe`` joins its consumer group."""

    def __init__(self, broker: KafkaBroker, name: str, kind: type[M]) -> None:
        super().__init__(name, kind)
        self.broker = broker
        self.topic = broker.topic_of(name)

    async def put(self, message: M) -> None:
        """Publish; returns once the broker holds the message (all in-sync replicas)."""
        await self._send(message)

    async def put_many(self, messages: Iterable[M]) -> None:
        """Publish several messages in batches; returns once the broker holds them all.

        Every message is sent before any is awaited, so they share requests.
        Raises the first failure once every send finished (some may be stored).
        """
        pending: list[asyncio.Future[Any]] = []
        try:
            for message in messages:
                pending.append(await self._enqueue(message))
        finally:
            # Awaited even if a send failed, so no outcome goes unretrieved.
            results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _send(self, message: M) -> None:
        await self.broker._ensure_topic(self.topic)
        await self.broker._running_producer().send_and_wait(
            self.topic, value=encode(message), key=key_of(message).encode()
        )

    async def _enqueue(self, message: M) -> asyncio.Future[Any]:
        await self.broker._ensure_topic(self.topic)
        future: asyncio.Future[Any] = await self.broker._running_producer().send(
            self.topic, value=encode(message), key=key_of(message).encode()
        )
        return future

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Inbox[M]]:
        """Join the mailbox's consumer group; returns once the group assigned this
        subscriber its partitions and what was on them was fetched (up to
        ``max_buffered``), so ``get_nowait`` sees messages put before."""
        await self.broker._ensure_topic(self.topic)
        inbox = _KafkaInbox(self)
        await inbox.open()
        try:
            yield inbox
        except BaseException:
            await inbox.close(clean=False)
            raise
        else:
            await inbox.close(clean=True)


class _Partition:
    """Offsets of one assigned partition: which are delivered and which of those are done.

    ``pending`` is a heap of the offsets fetched but not yet done; ``done``
    holds offsets acked while a lower one is still pending. The committable
    offset is the lowest pending one (everything fetched below it is done),
    or, with nothing pending, the offset after the last one fetched. So a
    commit never passes an unfinished delivery, however acks are ordered.
    """

    __slots__ = ("committed", "done", "fetched", "pending", "revoked", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.pending: list[int] = []
        self.done: set[int] = set()
        self.fetched: int | None = None
        self.committed: int | None = None
        self.revoked = False

    def add(self, offset: int) -> None:
        heapq.heappush(self.pending, offset)
        self.fetched = offset + 1

    def finish(self, offset: int) -> None:
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            self.done.discard(heapq.heappop(self.pending))

    def committable(self) -> int | None:
        """The offset to commit now, or None if nothing new is done."""
        offset = self.pending[0] if self.pending else self.fetched
        if offset is None or offset == self.committed:
            return None
        return offset


class _KafkaDelivery(Delivery[M]):
    __slots__ = ("_acked", "_inbox", "_partition", "offset")

    def __init__(
        self, message: M, inbox: _KafkaInbox[M], partition: _Partition, offset: int
    ) -> None:
        super().__init__(message)
        self._inbox = inbox
        self._partition = partition
        self.offset = offset
        self._acked = False

    async def ack(self) -> None:
        """Done: counts towards the partition's next commit (made in the background,
        and at the latest when the subscription closes). Ignored if the partition
        was revoked meanwhile."""
        if self._acked:
            return
        self._acked = True
        self._inbox._done(self._partition, self.offset)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, inbox: _KafkaInbox[Any]) -> None:
        self.inbox = inbox

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.inbox._revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.inbox._assign(assigned)


class _KafkaInbox(Inbox[M]):
    #: How long one poll waits for records (ms); shorter while paused, so a
    #: drained buffer resumes fetching soon, and while catching up at subscribe.
    POLL_MS = 500
    SHORT_POLL_MS = 50

    def __init__(self, mailbox: KafkaMailbox[M]) -> None:
        self.mailbox = mailbox
        broker = mailbox.broker
        self.broker = broker
        self.consumer: Any = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            client_id=broker.client_id,
            group_id=mailbox.topic,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=broker.max_poll_interval_ms,
            session_timeout_ms=broker.session_timeout_ms,
            heartbeat_interval_ms=broker.heartbeat_interval_ms,
            rebalance_timeout_ms=broker.rebalance_timeout_ms,
            request_timeout_ms=broker.request_timeout_ms,
            fetch_max_wait_ms=broker.fetch_max_wait_ms,
        )
        self.buffer: collections.deque[_KafkaDelivery[M]] = collections.deque()
        self.partitions: dict[TopicPartition, _Partition] = {}
        self.closed = False
        self._failure: BaseException | None = None
        self._arrived = asyncio.Event()  # something in the buffer, a failure, or closed
        self._dirty = asyncio.Event()  # acks not yet committed
        self._ready = asyncio.Event()  # caught up after the first assignment
        self._assignments = 0  # rebalances that gave us partitions
        self._targets: tuple[int, dict[TopicPartition, int]] | None = None
        self._commit_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        #: Undecodable records being dead-lettered (tried until done, revoked or closed),
        #: and those of them in a try right now (the rest wait for their next one).
        self._dead: set[asyncio.Task[None]] = set()
        self._trying: set[asyncio.Task[Any] | None] = set()

    # --- life -----------------------------------------------------------------

    async def open(self) -> None:
        """Join the group (aiokafka's start waits for the first assignment), then
        fetch what the assigned partitions held. Raises ``TimeoutError`` if the
        group does not take us in within ``2 * session + request`` timeout."""
        broker = self.broker
        bound = (2 * broker.session_timeout_ms + broker.request_timeout_ms) / 1000
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + bound
        self.consumer.subscribe([self.mailbox.topic], listener=_Listener(self))
        try:
            try:
                await asyncio.wait_for(self.consumer.start(), bound)
            except TimeoutError:
                raise TimeoutError(
                    f"consumer group {self.mailbox.topic} did not take this subscriber "
                    f"in within {bound} s"
                ) from None
            self._tasks = [
                loop.create_task(self._fetch_loop(), name=f"kafka-fetch-{self.mailbox.name}"),
                loop.create_task(self._commit_loop(), name=f"kafka-commit-{self.mailbox.name}"),
            ]
            try:
                await asyncio.wait_for(self._ready.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                # Not fatal: the inbox works, get_nowait just sees the backlog later.
                log.warning("kafka.subscribe_slow", topic=self.mailbox.topic, waited=bound)
            if self._failure is not None:
                raise self._failure
        except BaseException:
            await self.close(clean=False)
            raise
        log.info(
            "kafka.subscribed",
            topic=self.mailbox.topic,
            partitions=sorted(tp.partition for tp in self.partitions),
            seconds=round(loop.time() - started, 3),
        )

    async def close(self, *, clean: bool) -> None:
        """Stop fetching, commit what is done, leave the group. Raises a failed
        final commit only when ``clean`` (the subscription ended without error)."""
        if self.closed:
            return
        self.closed = True
        self._arrived.set()  # a get still waiting gives up
        self._dirty.set()  # the commit loop sees closed even if a cancel is lost
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        trying = {task for task in self._trying if task is not None}
        if clean and trying:
            # A record in a try right now may still count as done (each try
            # is bounded); those waiting for another go to the partition's next owner.
            await asyncio.wait(trying, timeout=self.broker.request_timeout_ms / 1000)
        for task in list(self._dead):
            task.cancel()
        await asyncio.gather(*self._dead, return_exceptions=True)
        try:
            try:
                await self._commit(list(self.partitions.values()))
            except (KafkaError, TimeoutError) as exc:
                log.warning("kafka.final_commit_failed", topic=self.mailbox.topic, error=repr(exc))
                if clean:
                    raise
        finally:
            self.buffer.clear()
            await self.consumer.stop()

    # --- taking ---------------------------------------------------------------

    async def get(self) -> Delivery[M]:
        while True:
            if self.closed:
                raise RuntimeError(f"subscription to {self.mailbox.name} is closed")
            delivery = self._take()
            if delivery is not None:
                return delivery
            self._arrived.clear()
            await self._arrived.wait()

    def get_nowait(self) -> Delivery[M] | None:
        return None if self.closed else self._take()

    def _take(self) -> Delivery[M] | None:
        """A buffered delivery; once the buffer is empty, the fetch loop's failure."""
        if self.buffer:
            return self.buffer.popleft()
        if self._failure is not None:
            raise self._failure
        return None

    def _done(self, partition: _Partition, offset: int) -> None:
        if partition.revoked or self.closed:
            return  # its new owner gets the message again
        partition.finish(offset)
        self._dirty.set()

    # --- background -----------------------------------------------------------

    async def _fetch_loop(self) -> None:
        try:
            while True:
                self._flow_control()
                # Short polls while paused (to resume soon) and while catching up.
                short = bool(self.consumer.paused()) or not self._ready.is_set()
                batches = await self.consumer.getmany(
                    timeout_ms=self.SHORT_POLL_MS if short else self.POLL_MS,
                    max_records=max(1, self.broker.max_buffered - len(self.buffer)),
                )
                for tp, records in batches.items():
                    self._take_in(tp, records)
                if self.buffer:
                    self._arrived.set()
                if not self._ready.is_set():
                    await self._check_ready()
        except Exception as exc:
            log.error("kafka.fetch_failed", topic=self.mailbox.topic, error=repr(exc))
            self._failure = exc
            self._arrived.set()
            self._ready.set()

    def _flow_control(self) -> None:
        assigned = self.consumer.assignment()
        if not assigned:
            return
        if len(self.buffer) >= self.broker.max_buffered:
            self.consumer.pause(*assigned)
        elif self.consumer.paused():
            self.consumer.resume(*assigned)

    def _take_in(self, tp: TopicPartition, records: list[Any]) -> None:
        partition = self.partitions.get(tp)
        for record in records:
            if partition is None or partition.revoked:
                return  # moved to another member while we were busy
            partition.add(record.offset)
            try:
                if record.value is None:
                    raise ValueError("no value (a tombstone)")
                message = decode(self.mailbox.kind, record.value)
            except ValueError as exc:
                task = asyncio.get_running_loop().create_task(
                    self._dead_letter(partition, record, str(exc)),
                    name=f"kafka-dead-letter-{self.mailbox.name}",
                )
                self._dead.add(task)
                task.add_done_callback(self._dead.discard)
                continue
            self.buffer.append(_KafkaDelivery(message, self, partition, record.offset))

    async def _dead_letter(self, partition: _Partition, record: Any, error: str) -> None:
        """Hand an undecodable record to the sink (or the dead-letter topic) until that
        succeeds, then count it as done. Not retried once its partition was revoked or
        the inbox closed: it stays uncommitted, so the partition's next owner gets it."""
        me = asyncio.current_task()
        tries = 0

        def gone() -> bool:
            return partition.revoked or self.closed

        async def once() -> bool:
            nonlocal tries
            tries += 1
            if tries > 1 and gone():
                return False
            self._trying.add(me)
            try:
                async with asyncio.timeout(self.broker.request_timeout_ms / 1000):
                    await self._dead_letter_once(record, error)
            finally:
                self._trying.discard(me)
            return True

        where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        try:
            done = await retrying(
                once,
                on=lambda exc: not gone(),
                backoff=DEAD_LETTER_BACKOFF,
                event="kafka.dead_letter_failed",
                logger=log,
                describe=repr,
                **where,
            )
        except Exception as exc:  # the partition moved or the inbox closed meanwhile
            log.warning(
                "kafka.dead_letter_failed",
                **where,
                attempt=tries,
                error=repr(exc),
                then="left to the partition's next owner",
            )
            return
        if not done:
            return
        log.warning(
            "kafka.dead_lettered",
            **where,
            error=error,
            **(
                {"sink": True}
                if self.broker.dead_letters is not None
                else {"dead_letter_topic": self.broker.dead_letter_topic}
            ),
        )
        if not partition.revoked:
            partition.finish(record.offset)
            self._dirty.set()

    async def _dead_letter_once(self, record: Any, error: str) -> None:
        sink = self.broker.dead_letters
        if sink is not None:
            await sink(self.mailbox.name, record.key, record.value or b"", error)
            return
        headers = [
            *(record.headers or ()),
            (DEAD_LETTER_TOPIC, record.topic.encode()),
            (DEAD_LETTER_PARTITION, str(record.partition).encode()),
            (DEAD_LETTER_OFFSET, str(record.offset).encode()),
            (DEAD_LETTER_ERROR, error.encode()),
        ]
        await self.broker._ensure_topic(self.broker.dead_letter_topic)
        await self.broker._running_producer().send_and_wait(
            self.broker.dead_letter_topic, value=record.value, key=record.key, headers=headers
        )

    async def _check_ready(self) -> None:
        """Ready once assigned and fetched up to where the partitions ended then."""
        if self._assignments == 0:
            return
        if len(self.buffer) >= self.broker.max_buffered:
            self._ready.set()
            return
        assigned = list(self.consumer.assignment())
        if self._targets is None or self._targets[0] != self._assignments:
            ends = await self.consumer.end_offsets(assigned) if assigned else {}
            self._targets = (self._assignments, ends)
        ends = self._targets[1]
        try:
            for tp in assigned:
                if tp in ends and await self.consumer.position(tp) < ends[tp]:
                    return
        except IllegalStateError:
            return  # a rebalance took it meanwhile: look again after the next poll
        self._ready.set()

    async def _commit_loop(self) -> None:
        """Commit what is done whenever an ack comes; a failed commit is tried again (with
        whatever was acked meanwhile) after ``COMMIT_BACKOFF``, until it goes through."""
        while not self.closed:
            await self._dirty.wait()
            self._dirty.clear()
            await retrying(
                lambda: self._commit(list(self.partitions.values())),
                on=(KafkaError, TimeoutError),
                backoff=COMMIT_BACKOFF,
                event="kafka.commit_failed",
                logger=log,
                describe=repr,
                topic=self.mailbox.topic,
            )

    async def _commit(self, partitions: list[_Partition]) -> None:
        async with self._commit_lock:
            offsets = {}
            for partition in partitions:
                offset = partition.committable()
                if offset is not None and not partition.revoked:
                    offsets[partition.tp] = offset
            if not offsets:
                return
            # asyncio.timeout, not wait_for: on Python 3.11 a cancel that lands in the
            # loop turn wait_for's inner task finishes is lost, and close() hangs.
            async with asyncio.timeout(self.broker.request_timeout_ms / 1000):
                await self.consumer.commit(offsets)
            for partition in partitions:
                if partition.tp in offsets:
                    partition.committed = offsets[partition.tp]

    # --- rebalances (called by aiokafka's coordinator) -------------------------

    async def _revoke(self, revoked: set[TopicPartition]) -> None:
        leaving = [p for tp, p in self.partitions.items() if tp in revoked]
        if not leaving:
            return
        try:
            await self._commit(leaving)
        except (KafkaError, TimeoutError) as exc:
            # Not fatal: the new owner gets what we could not commit again.
            log.warning("kafka.revoke_commit_failed", topic=self.mailbox.topic, error=repr(exc))
        for partition in leaving:
            partition.revoked = True
            del self.partitions[partition.tp]
        self.buffer = collections.deque(d for d in self.buffer if not d._partition.revoked)
        log.info(
            "kafka.revoked",
            topic=self.mailbox.topic,
            partitions=sorted(p.tp.partition for p in leaving),
        )

    def _assign(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self.partitions[tp] = _Partition(tp)
        self._assignments += 1
        log.info(
            "kafka.assigned",
            topic=self.mailbox.topic,
            partitions=sorted(tp.partition for tp in assigned),
        )


async def consumer_lag(
    bootstrap: str, topics: Mapping[str, str], *, request_timeout_ms: int = 5000
) -> dict[str, int]:
    """Messages each mailbox's consumer group has not committed yet, by mailbox name.

    ``topics`` maps a mailbox name to its topic; its consumer group has the
    topic's name (see ``_KafkaInbox``). Per partition: the end offset minus the
    group's committed offset, or minus the partition's first offset when the
    group never committed there (it starts from the earliest). A topic that
    does not exist yet has no lag. Raises ``KafkaError``/``OSError`` when the
    cluster does not answer.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=request_timeout_ms,
    )
    await admin.start()
    try:
        await consumer.start()
        try:
            known = await consumer.topics()
            lags: dict[str, int] = {}
            for name, topic in topics.items():
                if topic not in known:
                    lags[name] = 0
                    continue
                parts = [
                    TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
                ]
                ends = await consumer.end_offsets(parts)
                firsts = await consumer.beginning_offsets(parts)
                committed = await admin.list_consumer_group_offsets(topic, partitions=parts)
                lag = 0
                for tp in parts:
                    done = committed.get(tp)
                    start = done.offset if done is not None and done.offset >= 0 else firsts[tp]
                    lag += max(0, ends[tp] - start)
                lags[name] = lag
            return lags
        finally:
            await consumer.stop()
    finally:
        await admin.close()

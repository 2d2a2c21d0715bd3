"""``GET /metrics``: Prometheus' text format. No key needed; no mail content, only counts.

Three kinds of figures:

- **HTTP** (``routes.instruments``): requests and their latency, measured by this
  process; with ``--processes`` (multiprocess mode) the sum over every API process.
- **Delivery, read from the store** when scraped: mails by status, provider
  attempts by outcome, retries, breaker states, outbox depth and dead letters.
  The store is what every process of every deployment shares, so these are right
  whichever process answers, also in the scaled deployment, whose senders serve
  no HTTP. The store keeps these figures as mails move (``store.summary``), so the
  read is of a few dozen rows, the same cost with a thousand mails kept or a
  hundred million: one read transaction (``Store.metrics_snapshot``) at most every
  ``FIGURES_TTL_SECONDS``, shared by concurrent scrapes; while the store does
  not answer, ``mailman_store_up`` is 0 and these figures are left out.
- **This process's in-process mailboxes** (``mailman_mailbox_depth``), where it has
  them next to its API (the one-process default).
- **Consumer lag on Kafka** (``mailman_mailbox_lag``): per mailbox, the messages its
  consumer group has not committed, asked of the cluster at most every
  ``LAG_TTL_SECONDS``; left out while the cluster does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

import structlog
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mailman.config import Config
from mailman.core.model import Outcome, Status, SuppressionReason
from mailman.intake.guard import guarded
from mailman.mailboxes.routing import RETRY_MAILBOX, send_mailbox
from mailman.store import Store
from mailman.store.base import MetricsSnapshot

from . import CONFIG, HTTP_METRICS, PROBES, STORE
from .contract import Answer, operation
from .health import CLOSED, HALF_OPEN, OPEN, UNKNOWN, provider_states

log = structlog.get_logger("mailman.http")

#: How long one read of the store's figures serves scrapes.
FIGURES_TTL_SECONDS = 1.0
#: How long one read of the Kafka consumer lag serves scrapes (it opens two connections).
LAG_TTL_SECONDS = 5.0
#: Prometheus' text format, as ``generate_latest`` writes it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

routes = web.RouteTableDef()

Read = tuple[MetricsSnapshot | None, float]
T = TypeVar("T")


class Cached(Generic[T]):
    """A slow read made at most once per ``ttl`` seconds; concurrent scrapes share it, and a
    failed one (its fallback) is kept as long, so a source that is down is not hammered.
    Subclasses write ``_read``."""

    #: The read task's name.
    name = "metrics-read"

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._task: asyncio.Task[T] | None = None
        self._started = -math.inf

    async def read(self) -> T:
        now = self.clock()
        task = self._task
        if task is None or (task.done() and now - self._started >= self.ttl):
            self._started = now
            task = self._task = asyncio.create_task(self._read(), name=self.name)
        # A scrape that gives up does not cancel the read the others wait for.
        return await asyncio.shield(task)

    async def _read(self) -> T:
        raise NotImplementedError

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class StoreFigures(Cached[Read]):
    """The store's figures (None: the store did not answer) and how long reading took."""

    name = "metrics-store-read"

    def __init__(
        self,
        store: Store,
        timeout: float,
        ttl: float = FIGURES_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ttl, clock)
        self.store = store
        self.timeout = timeout

    async def _read(self) -> Read:
        started = time.perf_counter()
        try:
            snapshot: MetricsSnapshot | None = await guarded(
                self.store, self.timeout, self.store.metrics_snapshot()
            )
        except Exception as exc:
            log.warning("metrics.store_unavailable", error=type(exc).__name__)
            snapshot = None
        return snapshot, time.perf_counter() - started


FIGURES = web.AppKey("store_figures", StoreFigures)


class KafkaLag(Cached[dict[str, int] | None]):
    """Each mailbox's consumer lag on the deployment's Kafka cluster (None while the
    cluster is away)."""

    name = "metrics-kafka-lag"

    def __init__(self, config: Config, ttl: float = LAG_TTL_SECONDS) -> None:
        super().__init__(ttl)
        self.bootstrap = config.broker.partition("://")[2].strip("/")
        prefix = config.kafka.topic_prefix
        names = [*(send_mailbox(p) for p in config.chain), RETRY_MAILBOX]
        self.topics = {name: f"{prefix}{name}" for name in names}

    async def _read(self) -> dict[str, int] | None:
        from mailman.mailboxes.kafka import consumer_lag

        try:
            return await consumer_lag(self.bootstrap, self.topics)
        except Exception as exc:  # the cluster is away: the figure is left out
            log.warning("metrics.kafka_unavailable", error=type(exc).__name__)
            return None


LAG = web.AppKey("kafka_lag", KafkaLag)


def setup(app: web.Application) -> None:
    """Route ``/metrics`` in ``app`` (from ``create_app``)."""
    figures = StoreFigures(app[STORE], app[CONFIG].store_timeout)
    app[FIGURES] = figures
    lag = KafkaLag(app[CONFIG]) if app[CONFIG].broker.startswith("kafka://") else None
    if lag is not None:
        app[LAG] = lag

    async def close(_: web.Application) -> None:
        await figures.close()
        if lag is not None:
            await lag.close()

    app.on_cleanup.append(close)
    app.add_routes(routes)


@routes.get("/metrics")
@operation(
    "metrics",
    "Prometheus metrics (text format 0.0.4): HTTP figures of the API processes, delivery "
    "figures read from the store",
    answers={200: Answer("The metrics", schema={"type": "string"}, media="text/plain")},
)
async def metrics(request: web.Request) -> web.Response:
    """Every figure in Prometheus' text format."""
    app = request.app
    config, probes = app[CONFIG], app[PROBES]
    snapshot, took = await app[FIGURES].read()
    local = probes.breakers() if probes.breakers is not None else ()
    shared = None if snapshot is None else snapshot.breakers
    providers = provider_states(config, shared, local, time.time())
    families = store_families(config, snapshot, took, providers)
    if probes.mailboxes is not None:
        families.append(mailbox_family(probes.mailboxes()))
    if LAG in app:
        lags = await app[LAG].read()
        if lags is not None:
            families.append(lag_family(lags))
    body = app[HTTP_METRICS].exposition() + generate_latest(_Families(families))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def store_families(
    config: Config, snapshot: MetricsSnapshot | None, took: float, providers: Mapping[str, str]
) -> list[Metric]:
    """The store's figures as metric families (only ``mailman_store_*`` without a snapshot)."""
    up = GaugeMetricFamily(
        "mailman_store_up", "1 if the store answered the last read of these figures, else 0"
    )
    up.add_metric([], 0.0 if snapshot is None else 1.0)
    read = GaugeMetricFamily(
        "mailman_store_read_seconds", "How long the last read of these figures from the store took"
    )
    read.add_metric([], took)
    families: list[Metric] = [up, read]
    if snapshot is None:
        return families

    mails = GaugeMetricFamily(
        "mailman_mails",
        "Mails by status: on their way now (queued, scheduled, sending), or that ended there "
        "(sent, delivered, bounced, failed, suppressed: still counted once retention removed "
        "them)",
        labels=["status"],
    )
    for status in _ordered([s.value for s in Status], snapshot.mails):
        mails.add_metric([status], snapshot.mails.get(status, 0))

    chain = list(config.chain)
    providers_seen = _ordered(chain, {p for p, _ in snapshot.attempts} | set(snapshot.retries))
    final = [o.value for o in Outcome if o is not Outcome.PENDING]
    outcomes = _ordered(final, {o for _, o in snapshot.attempts} - {Outcome.PENDING.value})
    attempts = CounterMetricFamily(
        "mailman_provider_attempts",
        "Provider attempts by provider and outcome, once they have one (skipped: the breaker "
        "was open, no call made); still counted once retention removed them",
        labels=["provider", "outcome"],
    )
    pending = GaugeMetricFamily(
        "mailman_provider_attempts_pending",
        "Provider calls in flight now (recorded before the call, not answered yet)",
        labels=["provider"],
    )
    retries = CounterMetricFamily(
        "mailman_provider_retries",
        "Provider attempts in a retry round (round > 0), any outcome",
        labels=["provider"],
    )
    suppressed = CounterMetricFamily(
        "mailman_duplicates_suppressed",
        "Sends not made: an unknown attempt the provider was asked about had taken the mail",
        labels=["provider"],
    )
    failovers = CounterMetricFamily(
        "mailman_failovers",
        "Mails handed on at once from one provider (from) to the next (to) after an attempt "
        "that did not send them (not a retry round after a backoff)",
        labels=["from", "to"],
    )
    for (source, target), count in sorted(snapshot.failovers.items()):
        failovers.add_metric([source, target], count)
    dropped = CounterMetricFamily(
        "mailman_suppressed_recipients",
        "Recipients dropped from mails because their address is on the tenant's suppression "
        "list, at acceptance or right before a provider call, by the suppression's reason",
        labels=["reason"],
    )
    for reason in _ordered([r.value for r in SuppressionReason], snapshot.dropped):
        dropped.add_metric([reason], snapshot.dropped.get(reason, 0))
    for provider in providers_seen:
        suppressed.add_metric([provider], snapshot.suppressed.get(provider, 0))
        for outcome in outcomes:
            attempts.add_metric([provider, outcome], snapshot.attempts.get((provider, outcome), 0))
        pending.add_metric([provider], snapshot.attempts.get((provider, Outcome.PENDING.value), 0))
        retries.add_metric([provider], snapshot.retries.get(provider, 0))

    breakers = GaugeMetricFamily(
        "mailman_breaker_state",
        "1 for the state each provider's circuit breaker is in (an open breaker past its "
        "reset time counts as half_open: the next call is a trial)",
        labels=["provider", "state"],
    )
    for provider, state in providers.items():
        if state == UNKNOWN:
            continue
        for name in _ordered([CLOSED, OPEN, HALF_OPEN], {state}):
            breakers.add_metric([provider, name], 1.0 if name == state else 0.0)

    outbox = GaugeMetricFamily(
        "mailman_outbox_entries",
        "Outbox entries not yet published to the senders (or published in the relay's last turn)",
    )
    outbox.add_metric([], snapshot.outbox)
    dead = GaugeMetricFamily(
        "mailman_dead_letters", "Dead letters not replayed (mailman dead-letters list)"
    )
    dead.add_metric([], snapshot.dead_letters)
    return [
        *families,
        *(mails, attempts, pending, retries, suppressed, failovers, dropped, breakers),
        *(outbox, dead),
    ]


def mailbox_family(depths: Mapping[str, int]) -> Metric:
    family = GaugeMetricFamily(
        "mailman_mailbox_depth",
        "Messages waiting in this process's in-process mailboxes",
        labels=["mailbox"],
    )
    for mailbox in sorted(depths):
        family.add_metric([mailbox], depths[mailbox])
    return family


def _ordered(known: list[str], seen: Iterable[str]) -> list[str]:
    """``known`` in its order, then whatever else was ``seen``, sorted."""
    return [*known, *sorted(set(seen) - set(known))]


def lag_family(lags: Mapping[str, int]) -> Metric:
    family = GaugeMetricFamily(
        "mailman_mailbox_lag",
        "Messages in a Kafka mailbox its consumer group has not committed (handled) yet",
        labels=["mailbox"],
    )
    for mailbox, lag in sorted(lags.items()):
        family.add_metric([mailbox], lag)
    return family

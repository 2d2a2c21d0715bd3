"""The whole system: store, mailboxes, provider clients and actors, wired from a Config.

``Mailman.run`` is what the entry point runs; ``embedded`` starts the same
system inside the caller's event loop (for integration tests, ours and our
users'):

    async with embedded(config) as mailman:
        async with aiohttp.ClientSession() as http:
            await http.post(f"{mailman.url}/mail/send", json={...})
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from mailman.actors import open_files
from mailman.actors.breakers import ProviderBreaker, SharedHealth, make_breaker, states_of
from mailman.actors.callbacks import Notifier
from mailman.actors.journal import Journal
from mailman.actors.lifecycle import Actor
from mailman.actors.purger import Purger
from mailman.actors.relay import Nudge, Relay
from mailman.actors.scheduler import RetryScheduler
from mailman.actors.sender import Sender
from mailman.actors.server import HttpServer
from mailman.actors.smtp import SmtpServer
from mailman.actors.supervisor import ChildSpec, Supervisor
from mailman.actors.sweeper import Sweeper
from mailman.actors.wake import WakeSender, wake_address
from mailman.config import (
    Config,
    ConfigError,
    ConfiguredProvider,
    is_loopback,
    is_memory_store,
    provider_plugins,
    redact_url,
)
from mailman.config.roles import (
    INTAKE_ROLES,
    RENAMED_ROLES,
    ROLE_API,
    ROLE_RELAY,
    ROLE_RETRY,
    ROLE_SMTP,
    ROLE_SWEEPER,
    in_memory,
    roles_of,
)
from mailman.intake.budget import Budget
from mailman.intake.instruments import HttpMetrics
from mailman.intake.load import Load
from mailman.mailboxes import Broker, MemoryBroker
from mailman.mailboxes.routing import Router
from mailman.providers import HttpClient, ProviderClient
from mailman.retry import Backoff, retrying
from mailman.routes import Probes, create_app
from mailman.routes.errors import bad_http
from mailman.store import Store, open_store

if TYPE_CHECKING:  # aiokafka is imported only when Kafka is used
    from mailman.mailboxes.kafka import DeadLetterSink

log = structlog.get_logger("mailman")


#: Start-up's waits for a store or broker that is not up yet: 0.5 s, doubling to 5 s.
STARTUP_BACKOFF = Backoff(first=0.5, cap=5.0, jitter=0.25)


class StartupFailed(Exception):
    """The store or the broker could not be opened at start (waited for in vain, or it
    needs someone to act first): one line names it (password redacted) and why."""

    def __init__(self, what: str, target: str, detail: str) -> None:
        super().__init__(f"{what} {target}: {detail}")
        self.what = what
        self.target = target
        self.detail = detail


def _secret_free(url: str) -> Callable[[BaseException], str]:
    """Describes an error as ``Type: message``, any password of ``url`` masked."""
    password = urlsplit(url).password if "://" in url else None

    def describe(exc: BaseException) -> str:
        text = str(exc)
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return text.replace(password, "********") if password else text

    return describe


async def wait_until_up(
    what: str,
    url: str,
    attempt: Callable[[], Awaitable[None]],
    may_come_up: Callable[[Exception], bool],
    *,
    within: float,
    stop: asyncio.Event | None = None,
    hint: Callable[[], str | None] = lambda: None,
) -> None:
    """``await attempt()``, tried again with ``STARTUP_BACKOFF`` while it fails with an
    error that ``may_come_up``, for up to ``within`` seconds: one ``{what}.waiting``
    warning per try. ``StartupFailed`` once the time is up, or at once for an error no
    wait mends. (``stop`` set: no further try; the last failure is raised.)"""
    target = redact_url(url)
    describe = _secret_free(url)
    last: list[Exception] = []

    async def once() -> None:
        try:
            await attempt()
        except Exception as exc:
            last[:] = [exc]
            raise

    tries = STARTUP_BACKOFF if within > 0 else Backoff(first=0.0, attempts=1)
    named: dict[str, Any] = {what: target}
    try:
        async with asyncio.timeout(within if within > 0 else None) as deadline:
            await retrying(
                once,
                on=may_come_up,
                backoff=tries,
                event=f"{what}.waiting",
                logger=log,
                stop=stop,
                describe=describe,
                **named,
            )
    except TimeoutError:
        if not deadline.expired():
            raise StartupFailed(what, target, _detail(describe(last[-1]), hint())) from None
        why = describe(last[-1]) if last else "no answer"
        raise StartupFailed(
            what, target, _detail(f"still down after {within:g} s: {why}", hint())
        ) from None
    except Exception as exc:
        raise StartupFailed(what, target, _detail(describe(exc), hint())) from None


def _detail(detail: str, hint: str | None) -> str:
    return f"{detail} ({hint})" if hint else detail


def sqlite_hint(path: str | None) -> str | None:
    """What is wrong with a SQLite file's directory, if anything (for start-up's line)."""
    if path is None:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable by this user"
    return None


def event_grace(config: Config, provider: ConfiguredProvider) -> float:
    """How long an ``unknown`` attempt with ``provider`` waits for its own event that it
    took the mail: ``MAILMAN_UNKNOWN_GRACE_SECONDS`` for SendGrid and SES when their
    webhook is on here, else 0 (not waited for)."""
    if provider.name == "sendgrid" and config.sendgrid_webhook_public_key is not None:
        return config.unknown_grace_seconds
    if provider.name == "ses" and config.ses_sns_topic_arns:
        return config.unknown_grace_seconds
    return 0.0


def make_client(provider: ConfiguredProvider, timeout: float) -> ProviderClient:
    """The client for one configured provider, made by its plugin."""
    client = provider.plugin.client(provider.settings, timeout)
    if not isinstance(client, ProviderClient):
        raise ConfigError(
            f"the {provider.name} provider's plugin made a {type(client).__name__}, "
            "not a mailman.providers.ProviderClient"
        )
    client.name = provider.name
    return client


def sqlite_file(config: Config) -> str | None:
    """The path of the store's SQLite file; None for MySQL or an in-memory database."""
    scheme, _, rest = config.store.partition("://")
    if scheme != "sqlite" or is_memory_store(config.store):
        return None
    return rest[1:] if rest.startswith("/") else rest


def make_broker(config: Config, dead_letters: DeadLetterSink | None = None) -> Broker:
    if in_memory(config):
        return MemoryBroker(capacity=config.mailbox_capacity)
    scheme, _, rest = config.broker.partition("://")
    if scheme == "kafka" and rest.strip("/"):
        from mailman.mailboxes.kafka import KafkaBroker

        kafka = config.kafka
        return KafkaBroker(
            rest.strip("/"),
            topic_prefix=kafka.topic_prefix,
            partitions=kafka.partitions,
            replication_factor=kafka.replication_factor,
            idempotent=kafka.idempotent,
            linger_ms=kafka.linger_ms,
            session_timeout_ms=kafka.session_timeout_ms,
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            # A provider call never holds up polling (handlers run beside the
            # poll loop), but keep the limit well above the provider timeout.
            max_poll_interval_ms=max(300_000, int(config.provider_timeout * 4000)),
            dead_letters=dead_letters,
        )
    raise ConfigError(
        f"unsupported broker {redact_url(config.broker)!r} "
        "(expected memory:// or kafka://host:9092[,host2:9092])"
    )


async def check_exposure(
    config: Config, store: Store, roles: frozenset[str] = frozenset({ROLE_API})
) -> None:
    """The secure default: an API, or an SMTP listener, with no key at all is refused off
    loopback (ConfigError). ``roles``: those this process runs.

    On loopback it runs open, with one warning line.
    """
    if await store.any_keys():
        return
    listeners = []
    if ROLE_API in roles:
        listeners.append(("", config.host))
    if ROLE_SMTP in roles:
        listeners.append(("SMTP ", config.smtp.host or config.host))
    for what, host in listeners:
        if is_loopback(host):
            continue
        raise ConfigError(
            f"refusing to serve {what}on {host}: the store holds no API key, so anyone who "
            "can reach the port could send mail. Create one first: "
            "mailman keys create --tenant NAME (with the same --store), "
            "or bind to 127.0.0.1"
        )
    log.warning(
        "auth.open",
        detail="no API key exists: the API is open to anyone on this machine "
        "(run `mailman keys create --tenant NAME` to require keys)",
    )


class Mailman:
    """One deployment's actors in this process, under one supervisor."""

    def __init__(
        self,
        config: Config,
        *,
        clients: Mapping[str, ProviderClient] | None = None,
        store: Store | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.config = config
        self.roles = roles_of(config)
        self.store = store or open_store(config.store, sqlite_writer=config.sqlite_writer)
        self.broker = broker or make_broker(config, dead_letters=self._undecodable)
        self.router = Router(self.broker, config.chain, config.weights)
        given = dict(clients or {})
        self.clients: dict[str, ProviderClient] = {
            p.name: given.pop(p.name)
            if p.name in given
            else make_client(p, config.provider_timeout)
            for p in config.providers
        }
        if given:
            raise ConfigError(f"clients given for providers not in the chain: {', '.join(given)}")
        for p in config.providers:
            client = self.clients[p.name]
            client.event_grace = event_grace(config, p)
            if isinstance(client, HttpClient):
                client.listen_late(config.late_answer_seconds)
        #: The senders' group commit: every sender's outcomes share transactions.
        self.journal = Journal(self.store)
        #: This process's open files at most, raised to the hard limit (every process:
        #: clients' connections count too); None where there is no such limit.
        self.open_files = open_files.raise_limit()
        #: Each sender's most calls in flight, within those open files.
        self.max_concurrency = self._max_concurrency()
        #: One breaker per provider, outliving restarts of its sender.
        self.breakers: dict[str, ProviderBreaker] = {
            name: make_breaker(
                name,
                config.breaker.fail_max,
                config.breaker.reset_seconds,
                # A trial call lasts at most the provider timeout; twice that, and
                # another process may take over the trial of one that died.
                trial_lease=2 * config.provider_timeout + 1.0,
            )
            for name in config.chain
        }
        #: The relay's wake-up socket: API and relay in other processes of one machine.
        path = sqlite_file(config)
        if path is not None:
            self.wake_address = wake_address(path)
        elif in_memory(config) and not is_memory_store(config.store):
            self.wake_address = wake_address(config.store)  # MySQL, split on one machine
        else:
            self.wake_address = None  # with Kafka the relay looks every interval
        remote = None
        if (
            self.wake_address is not None
            and self.roles & INTAKE_ROLES
            and ROLE_RELAY not in self.roles
        ):
            remote = WakeSender(self.wake_address)
        #: The API's (and SMTP's) outbound mailbox: wakes the relay (they never publish).
        self.nudge = Nudge(remote)
        #: The API's (and SMTP's) requests in flight: the relay beside it, or one in
        #: another process of this machine (told while they saturate), puts accepts first.
        self.load = Load(None if remote is None else remote.busy)
        #: This process's HTTP (and SMTP) metrics, kept across restarts of their actors.
        self.http_metrics = (
            HttpMetrics(config.metrics_dir) if self.roles & {ROLE_API, ROLE_SMTP} else None
        )
        #: Bytes of bodies in flight, shared by the API and SMTP of this process.
        self.budget = Budget(config.max_inflight_bytes)
        self.supervisor: Supervisor | None = None
        self.ready = asyncio.Event()
        #: Set once every actor stopped, also when the supervisor gave up.
        self.stopped = asyncio.Event()
        self._server: HttpServer | None = None
        self._smtp: SmtpServer | None = None

    @property
    def smtp_port(self) -> int:
        """The port the SMTP actor listens on (role smtp)."""
        if self._smtp is None:
            raise RuntimeError("this process runs no SMTP server (role smtp)")
        return self._smtp.port

    @property
    def smtp_tls_port(self) -> int | None:
        """The SMTP actor's implicit-TLS port (None: it has none)."""
        if self._smtp is None:
            raise RuntimeError("this process runs no SMTP server (role smtp)")
        return self._smtp.tls_port

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("this process runs no HTTP server (role api)")
        return self._server.port

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def _children(self) -> list[ChildSpec]:
        cfg = self.config
        router = self.router
        children: list[ChildSpec] = []
        senders = [name for name in cfg.chain if name in self.roles]
        if senders:
            breakers = {name: self.breakers[name] for name in senders}
            children.append(
                ChildSpec(
                    "health",
                    lambda: SharedHealth(
                        breakers=breakers, store=self.store, sync_seconds=cfg.breaker.sync_seconds
                    ),
                )
            )
        if ROLE_SWEEPER in self.roles:
            children.append(
                ChildSpec(
                    "sweeper",
                    lambda: Sweeper(
                        store=self.store, stale_after=cfg.stale_after, interval=cfg.sweep_interval
                    ),
                )
            )
            # Retention (store.retention) erases beside every sweeper, in small batches.
            children.append(
                ChildSpec(
                    "purger",
                    lambda: Purger(
                        store=self.store,
                        body_retention=cfg.body_retention,
                        record_retention=cfg.record_retention,
                        interval=cfg.retention_interval,
                    ),
                )
            )
            if cfg.callbacks.secret is not None:
                # Status callbacks go out beside every sweeper (they need the secret).
                children.append(
                    ChildSpec("notifier", lambda: Notifier(store=self.store, config=cfg.callbacks))
                )
        if ROLE_RETRY in self.roles:
            children.append(
                ChildSpec(
                    "retry",
                    lambda: RetryScheduler(
                        router=router, store=self.store, poison_attempts=cfg.poison_attempts
                    ),
                )
            )
        for name in senders:
            children.append(ChildSpec(f"sender:{name}", self._sender_factory(name)))
        if ROLE_RELAY in self.roles:
            children.append(
                ChildSpec(
                    "relay",
                    lambda: Relay(
                        store=self.store,
                        router=router,
                        config=cfg.relay,
                        nudge=self.nudge,
                        wake_address=self.wake_address,
                        load=self.load if self.roles & INTAKE_ROLES else None,
                    ),
                )
            )
        if ROLE_API in self.roles:
            children.append(ChildSpec("api", self._server_factory))
        if ROLE_SMTP in self.roles:
            children.append(ChildSpec("smtp", self._smtp_factory))
        return children

    def _max_concurrency(self) -> dict[str, int]:
        """Each sender's ceiling of calls in flight (``MAILMAN_SENDER_MAX_CONCURRENCY``),
        lowered to fit this process's open files (a line says so); empty in a process
        without senders."""
        cfg = self.config
        limit = self.open_files
        senders = [name for name in cfg.chain if name in self.roles]
        if not senders:
            return {}
        ceilings = {}
        for name in senders:
            wanted = cfg.max_concurrency_of(name)
            ceiling = open_files.sender_ceiling(
                open_files=limit,
                senders=len(senders),
                start=cfg.concurrency_of(name),
                wanted=wanted,
            )
            if ceiling < wanted:
                log.info(
                    "sender.max_concurrency_lowered",
                    provider=name,
                    max_concurrency=ceiling,
                    configured=wanted,
                    open_files=limit,
                )
            ceilings[name] = ceiling
        return ceilings

    def _sender_factory(self, name: str) -> Callable[[], Actor]:
        def factory() -> Actor:
            return Sender(
                client=self.clients[name],
                breaker=self.breakers[name],
                router=self.router,
                store=self.store,
                retry=self.config.retry,
                concurrency=self.config.concurrency_of(name),
                max_concurrency=self.max_concurrency[name],
                rate=self.config.rate_of(name),
                adaptive=self.config.sender_adaptive,
                calls_log_seconds=self.config.calls_log_seconds,
                stop_timeout=self.config.shutdown_timeout,
                stale_after=self.config.stale_after,
                poison_attempts=self.config.poison_attempts,
                peers=self.clients,
                journal=self.journal,
                hold_unknown=self.config.unknown_policy == "hold",
            )

        return factory

    def _probes(self) -> Probes:
        """What ``/readyz`` and ``/metrics`` see of the actors beside the API in this process."""
        others = self.roles - INTAKE_ROLES
        local = {name: self.breakers[name] for name in self.config.chain if name in self.roles}
        broker = self.broker
        return Probes(
            # An API-only process never starts the broker: it does not depend on it.
            broker=broker.ping if others else None,
            breakers=(lambda: states_of(local)) if local else None,
            mailboxes=broker.depths if others and isinstance(broker, MemoryBroker) else None,
        )

    def _server_factory(self) -> Actor:
        cfg = self.config
        probes = self._probes()
        self._server = HttpServer(
            lambda: create_app(
                store=self.store,
                outbound=self.nudge,
                config=cfg,
                load=self.load,
                metrics=self.http_metrics,
                probes=probes,
                budget=self.budget,
            ),
            bad_request=bad_http,
            host=cfg.host,
            port=self._server.port if self._server is not None else cfg.port,
            shutdown_timeout=cfg.shutdown_timeout,
            header_timeout=cfg.header_timeout,
            body_idle_timeout=cfg.body_idle_timeout,
            keepalive_seconds=cfg.keepalive_seconds,
            reuse_port=cfg.reuse_port,
        )
        return self._server

    def _smtp_factory(self) -> Actor:
        # A restarted actor binds the port its predecessor had (port 0: the same free one).
        self._smtp = SmtpServer(
            store=self.store,
            outbound=self.nudge,
            config=self.config,
            port=self._smtp.port if self._smtp is not None else None,
            tls_port=self._smtp.tls_port if self._smtp is not None else None,
            metrics=self.http_metrics,
            budget=self.budget,
            load=self.load,
        )
        return self._smtp

    def _announce(self) -> None:
        cfg = self.config
        log.info(
            "mailman.starting",
            roles=sorted(self.roles),
            chain=list(cfg.chain),
            store=redact_url(cfg.store),
            broker=redact_url(cfg.broker),
        )
        for old in sorted(set(cfg.roles) & RENAMED_ROLES.keys()):
            log.warning("role.renamed", role=old, now=RENAMED_ROLES[old])
        for name in cfg.skipped_providers:
            log.warning("provider.skipped", provider=name, why="no API key configured")
        for name, why in provider_plugins().broken.items():
            log.warning("provider.plugin_broken", provider=name, why=why)
        if len(cfg.providers) == 1 and cfg.providers[0].name == "outbox":
            log.warning(
                "providers.none_configured",
                detail="no provider configured: mails are written as .eml files to "
                f"{cfg.providers[0].settings.directory}/ (set a provider's key, such as "
                "SENDGRID_API_KEY, POSTMARK_SERVER_TOKEN or SMTP_RELAY_URL, to send for real)",
            )

    async def _undecodable(self, mailbox: str, key: bytes | None, value: bytes, error: str) -> None:
        """A Kafka record that does not decode: kept in the store's dead letters (if the
        store is down this raises, and the inbox tries again: the record is not skipped)."""
        mail_id = key.decode(errors="replace") if key else None
        await self.store.add_dead_letter(
            mailbox, mail_id, value, f"undecodable: {error}", time.time()
        )

    async def _close_clients(self) -> None:
        for client in self.clients.values():
            await client.close()

    async def _open_store(self, until: asyncio.Event) -> None:
        """Open the store, waiting for it while it is down or missing (start-up timeout)."""
        path = sqlite_file(self.config)
        await wait_until_up(
            "store",
            self.config.store,
            self.store.open,
            self.store.may_come_up,
            within=self.config.startup_timeout,
            stop=until,
            hint=lambda: sqlite_hint(path),
        )

    async def _start_broker(self, until: asyncio.Event) -> None:
        """Start the broker, waiting for it while it is down (start-up timeout).

        An API-only (or SMTP) process never touches a mailbox (the relay
        publishes), so it does not start one: it answers even while Kafka is down.
        """
        await wait_until_up(
            "broker",
            self.config.broker,
            self.broker.start,
            self.broker.may_come_up,
            within=self.config.startup_timeout,
            stop=until,
        )

    async def run(self, until: asyncio.Event) -> None:
        """Run until ``until`` is set; ``RestartBudgetExceeded`` if the supervisor gives up."""
        self._announce()
        async with contextlib.AsyncExitStack() as stack:
            try:
                await self._open_store(until)
                stack.push_async_callback(self.store.close)
                if self.roles - INTAKE_ROLES:
                    await self._start_broker(until)
                    stack.push_async_callback(self.broker.stop)
            except StartupFailed:
                if not until.is_set():
                    raise
                self.stopped.set()  # stopped while waiting: a clean stop
                log.info("mailman.stopped")
                return
            # Senders close their own client; one opened only to ask about an
            # ``unknown`` attempt (a lookup) is closed here.
            stack.push_async_callback(self._close_clients)
            if self.roles & INTAKE_ROLES:
                await check_exposure(self.config, self.store, self.roles)
            if in_memory(self.config) and ROLE_RELAY in self.roles:
                # In-process mailboxes died with the last run: every mail it
                # left unfinished goes back to the outbox for the relay.
                requeued = await self.store.requeue_unfinished()
                if requeued:
                    log.info("recovery.requeued", mails=requeued)
            supervisor = self.supervisor = Supervisor(self._children(), self.config.supervisor)
            running = asyncio.create_task(supervisor.run(), name="supervisor")
            ready = asyncio.ensure_future(supervisor.ready.wait())
            stop = asyncio.ensure_future(until.wait())
            try:
                await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
                if supervisor.ready.is_set():
                    self.ready.set()
                    log.info(
                        "mailman.ready",
                        **({"url": self.url} if self._server else {}),
                        **({"smtp_port": self.smtp_port} if self._smtp else {}),
                    )
                await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
                supervisor.stop()
                await running  # raises why the supervisor gave up, if it did
            finally:
                ready.cancel()
                stop.cancel()
                if not running.done():  # we were cancelled: stop the actors all the same
                    supervisor.stop()
                    await asyncio.shield(running)
                if self.nudge.remote is not None:
                    self.nudge.remote.close()
                self.stopped.set()
        log.info("mailman.stopped")


@contextlib.asynccontextmanager
async def embedded(
    config: Config,
    *,
    clients: Mapping[str, ProviderClient] | None = None,
) -> AsyncIterator[Mailman]:
    """The whole system running in this event loop until the block ends.

    Ready when the block starts: the store is open, every actor runs and the
    HTTP server listens on ``mailman.url`` (use ``port=0`` for a free port).
    """
    system = Mailman(config, clients=clients)
    until = asyncio.Event()
    task = asyncio.create_task(system.run(until), name="mailman")
    ready = asyncio.ensure_future(system.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()  # raises why it could not start
        raise RuntimeError("mailman stopped before it was ready")
    try:
        yield system
    finally:
        until.set()
        await task

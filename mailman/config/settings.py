"""Every setting, declared once: the frozen dataclasses ``load`` fills.

Each field made with ``setting(...)`` carries its default, environment
variable, flag, parser, bounds, one-line help and docs line (``declare``).
Fields without one (``skipped_providers``) are derived by ``load``. Each
provider declares its own settings beside its code and comes in as a plugin
(``plugins``); ``SETTINGS`` holds them with the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from . import parse, plugins
from .declare import Setting, by_load, setting, walk
from .plugins import ConfiguredProvider, Plugins
from .secret import Secret

ROLE_ALL = "all"
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
#: Where a SQLite file's writes run: a process of their own, or a thread of this one.
SQLITE_WRITERS = ("process", "thread")
#: What follows an attempt whose answer was lost at a provider that cannot be asked.
UNKNOWN_POLICIES = ("resend", "hold")
#: The SMTP port of a plain ``mailman`` run (``MAILMAN_SMTP_PORT``).
SMTP_PORT = 2525
#: The highest TCP port.
PORT_MAX = 65535
#: SNS's own hosts, over HTTPS: where signing certificates and subscribe URLs may be.
SNS_HOST_PATTERN = r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"
#: 24 hours, in seconds.
DAY = 24 * 3600.0


# --- nested configs -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    fail_max: int = setting(
        5,
        env="MAILMAN_BREAKER_FAIL_MAX",
        minimum=1,
        help="unwell answers in a row that open a provider's breaker",
    )
    reset_seconds: float = setting(
        30.0,
        env="MAILMAN_BREAKER_RESET_SECONDS",
        help="seconds a breaker stays open before its half-open trial",
    )
    #: How often each process reads the breaker states the others shared.
    sync_seconds: float = setting(
        0.5,
        env="MAILMAN_BREAKER_SYNC_SECONDS",
        minimum=0.01,
        help="how often each process applies the breaker states other processes shared",
    )


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Backoff once every provider failed transiently: base * 2**round, capped, with jitter."""

    base_seconds: float = setting(
        5.0, env="MAILMAN_RETRY_BASE_SECONDS", help="backoff of the first retry round"
    )
    cap_seconds: float = setting(
        600.0, env="MAILMAN_RETRY_CAP_SECONDS", help="longest backoff between rounds"
    )
    window_seconds: float = setting(
        DAY,
        env="MAILMAN_RETRY_WINDOW_SECONDS",
        note="24 h",
        help="after this, an unsent mail ends failed",
        doc="after this, an unsent mail ends `failed`",
    )


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """One-for-one restarts; more than ``max_restarts`` in ``window_seconds`` ends the process."""

    max_restarts: int = setting(
        5,
        env="MAILMAN_MAX_RESTARTS",
        help="restart budget: more restarts than this within the restart window end the process",
        doc="restart budget: more restarts than this…",
    )
    window_seconds: float = setting(
        60.0,
        env="MAILMAN_RESTART_WINDOW_SECONDS",
        help="the restart budget's window, in seconds (past the budget: exit 1)",
        doc="…within this many seconds ends the process (exit 1)",
    )
    backoff_base_seconds: float = setting(
        0.1,
        env="MAILMAN_RESTART_BACKOFF_SECONDS",
        help="first delay before a restart, doubling up to the backoff cap",
        doc="first delay before a restart, doubling up to…",
    )
    backoff_cap_seconds: float = setting(
        5.0,
        env="MAILMAN_RESTART_BACKOFF_CAP_SECONDS",
        help="longest delay before a restart",
        doc="…this",
    )


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Kafka mailboxes: one topic per mailbox, ``{topic_prefix}{mailbox}``."""

    topic_prefix: str = setting(
        "mailman.",
        env="MAILMAN_KAFKA_TOPIC_PREFIX",
        metavar="PREFIX",
        help="prefix of every topic and consumer group",
    )
    partitions: int = setting(
        6, env="MAILMAN_KAFKA_PARTITIONS", minimum=1, help="partitions of topics Mailman creates"
    )
    replication_factor: int = setting(
        1,
        env="MAILMAN_KAFKA_REPLICATION_FACTOR",
        minimum=1,
        help="replicas of topics Mailman creates (3 on a production cluster)",
    )
    #: Idempotent producer (exactly-once per partition on retries); needs broker support.
    idempotent: bool = setting(
        True,
        env="MAILMAN_KAFKA_IDEMPOTENT",
        help="idempotent producer; false for brokers without InitProducerId (for example Tansu)",
        doc="idempotent producer. Set it to `false` for brokers without `InitProducerId` "
        "(for example Tansu)",
    )
    linger_ms: int = setting(5, env="MAILMAN_KAFKA_LINGER_MS", help="producer batching delay")
    #: A consumer silent this long is out of its group; its partitions move to the others.
    session_timeout_ms: int = setting(
        6_000,
        env="MAILMAN_KAFKA_SESSION_TIMEOUT_MS",
        minimum=1,
        help="a silent (killed) consumer leaves its group after this and one heartbeat",
        doc="a silent (killed) consumer leaves its group after this plus one heartbeat (a tenth "
        "of it, at most 1 s), and its partitions move to the others after one rebalance; 6000 "
        "is the lowest a Kafka broker allows by default (`group.min.session.timeout.ms`). A "
        "stopped one leaves at once",
    )
    #: How long the broker may hold a fetch open waiting for data (a latency bound).
    fetch_max_wait_ms: int = setting(
        500,
        env="MAILMAN_KAFKA_FETCH_MAX_WAIT_MS",
        help="longest a fetch may wait on the broker (Tansu: 100)",
        doc="longest a fetch may wait on the broker; lower it for brokers that hold fetches "
        "even with data waiting (Tansu: `100`)",
    )


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The relay publishes committed outbox entries to the first sender mailbox."""

    batch: int = setting(
        500, env="MAILMAN_RELAY_BATCH", minimum=1, help="outbox entries published per batch"
    )
    #: How often a relay looks for entries when nothing woke it.
    interval_seconds: float = setting(
        0.2,
        env="MAILMAN_RELAY_INTERVAL_SECONDS",
        minimum=0.001,
        help="how often an idle relay looks for new entries",
        doc="how often an idle relay looks for new entries (an API on the same machine and "
        "store wakes it at once)",
    )
    #: How long a claimed entry stays leased to one relay (then another may take it).
    lease_seconds: float = setting(
        30.0,
        env="MAILMAN_RELAY_LEASE_SECONDS",
        minimum=0.1,
        help="how long a claimed entry belongs to one relay before another may take it",
    )


@dataclass(frozen=True, slots=True)
class CallbackConfig:
    """Status callbacks (``actors.callbacks``): ``callback_url`` hears each status change."""

    #: Signs every callback (HMAC-SHA256); without it ``callback_url`` is refused.
    secret: Secret | None = setting(
        None,
        env="MAILMAN_CALLBACK_SECRET",
        parse=parse.secret,
        help="signs every status callback (HMAC-SHA256); without it callback_url is refused",
        doc="signs every status callback (HMAC-SHA256); without it `callback_url` is refused "
        "and no callbacks are sent (see [Status callbacks](callbacks.md))",
    )
    #: Let callbacks go to loopback, private and link-local addresses (a receiver on your network).
    allow_private: bool = setting(
        False,
        env="MAILMAN_CALLBACK_ALLOW_PRIVATE",
        help="let callbacks go to loopback, private and link-local addresses",
        doc="let callbacks go to loopback, private and link-local addresses (a receiver on "
        "your own network)",
    )
    #: Seconds a receiver has to answer one callback.
    timeout_seconds: float = setting(
        5.0,
        env="MAILMAN_CALLBACK_TIMEOUT_SECONDS",
        minimum=0.01,
        help="seconds a receiver has to answer one callback",
    )
    #: After a failed call: base * 2**(tries - 1), capped...
    retry_base_seconds: float = setting(
        5.0,
        env="MAILMAN_CALLBACK_RETRY_BASE_SECONDS",
        minimum=0.001,
        help="wait after a callback's first failed try, doubling after each one",
        doc="wait after a callback's first failed try, doubling after each one...",
    )
    retry_cap_seconds: float = setting(
        600.0,
        env="MAILMAN_CALLBACK_RETRY_CAP_SECONDS",
        minimum=0.001,
        help="longest wait between a callback's tries",
        doc="...up to this",
    )
    #: ...until this long after the status change; then it is given up.
    window_seconds: float = setting(
        DAY,
        env="MAILMAN_CALLBACK_WINDOW_SECONDS",
        note="24 h",
        help="a callback still failing this long after its change is given up",
    )
    #: Calls in flight at once, per notifier.
    concurrency: int = setting(
        16,
        env="MAILMAN_CALLBACK_CONCURRENCY",
        minimum=1,
        help="callbacks in flight at once, per notifier",
    )
    #: How often a notifier looks for due callbacks.
    interval_seconds: float = setting(
        1.0,
        env="MAILMAN_CALLBACK_INTERVAL_SECONDS",
        minimum=0.01,
        help="how often a notifier looks for due callbacks",
    )


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """SMTP submission (``actors.smtp``): apps send by SMTP, a Mailman key as the password."""

    #: The port; None: no SMTP listener (``MAILMAN_SMTP_PORT=0``). 0 binds any free port,
    #: from code only (tests): an app is configured with a port that stays put.
    port: int | None = setting(
        SMTP_PORT,
        env="MAILMAN_SMTP_PORT",
        parse=parse.port_or_off,
        maximum=PORT_MAX,
        help="SMTP submission port; 0 turns SMTP off",
        doc="SMTP submission port ([Drop-in: SMTP](drop-in-smtp.md)); `0` turns SMTP "
        "off (unlike `MAILMAN_PORT`, `0` is not \u201cany free port\u201d: apps need a port "
        "that stays put)",
    )
    #: The bind address; None: the API's (``Config.host``).
    host: str | None = setting(
        None,
        env="MAILMAN_SMTP_HOST",
        parse=parse.stripped,
        note="the API's, MAILMAN_HOST",
        help="the SMTP bind address; off loopback it needs a key in the store",
        doc="the SMTP bind address. Off loopback it needs a key in the store, as the API does",
    )
    #: A PEM certificate chain and its private key: STARTTLS is offered, and AUTH needs it.
    tls_cert: Path | None = setting(
        None,
        env="MAILMAN_SMTP_TLS_CERT",
        parse=parse.stripped_path,
        note="no TLS",
        help="a PEM certificate chain: STARTTLS is offered and AUTH needs it (with the key)",
        doc="a PEM certificate chain: STARTTLS is offered and AUTH needs it. It goes with "
        "`MAILMAN_SMTP_TLS_KEY`, both or neither; a file that cannot be read, or that is no "
        "certificate and matching key, stops the start (exit 2, naming the file)",
    )
    tls_key: Path | None = setting(
        None,
        env="MAILMAN_SMTP_TLS_KEY",
        parse=parse.stripped_path,
        note="no TLS",
        help="the certificate's unencrypted private key (PEM)",
        doc="the unencrypted private key of `MAILMAN_SMTP_TLS_CERT`'s certificate (PEM); both "
        "or neither",
    )
    #: A second port speaking TLS from the first byte (implicit TLS, "SMTPS", as on 465)
    #: with the same certificate; None: none. 0 binds any free port (from code: tests).
    tls_port: int | None = setting(
        None,
        env="MAILMAN_SMTP_TLS_PORT",
        parse=parse.port_or_off,
        maximum=PORT_MAX,
        unset="0",
        note="off",
        help="a second SMTP port with implicit TLS (as on 465); needs the certificate",
        doc="a second SMTP port with implicit TLS (as on 465), with the certificate above, "
        "which it needs; AUTH is taken at once there",
    )
    #: The largest mail accepted (the SIZE extension), in bytes; None: ``Config.max_body_bytes``.
    max_bytes: int | None = setting(
        None,
        env="MAILMAN_SMTP_MAX_BYTES",
        parse=parse.integer,
        minimum=1,
        note="MAILMAN_MAX_BODY_BYTES",
        help="the largest mail SMTP takes (SIZE); bigger ones get 552",
        doc="the largest mail SMTP takes (`SIZE`); bigger ones get `552`",
    )
    #: Connections served at once; more are told ``421`` and closed (each may hold
    #: a mail of up to ``max_bytes`` in memory while it arrives).
    max_connections: int = setting(
        100,
        env="MAILMAN_SMTP_MAX_CONNECTIONS",
        minimum=1,
        help="SMTP connections served at once; more are answered 421 and closed",
        doc="SMTP connections served at once; more are answered `421 4.7.0` and closed (each "
        "may hold a mail of up to `MAILMAN_SMTP_MAX_BYTES` in memory while it arrives)",
    )
    #: Connections from one client address at once; more from it are told ``421``.
    max_connections_per_ip: int = setting(
        20,
        env="MAILMAN_SMTP_MAX_CONNECTIONS_PER_IP",
        minimum=1,
        help="SMTP connections from one client address at once; more get 421 and are closed",
        doc="SMTP connections from one client address at once; more from it are answered "
        "`421 4.7.0` and closed, while other addresses still get in",
    )
    #: A connection that sends no command for this long is told ``421 4.4.2`` and closed.
    idle_timeout: float = setting(
        30.0,
        env="MAILMAN_SMTP_IDLE_TIMEOUT_SECONDS",
        minimum=0.01,
        help="an SMTP connection silent this long between commands gets 421 and is closed",
        doc="an SMTP connection that sends no command for this long gets `421 4.4.2` and is "
        "closed (a mail's `DATA` is under `MAILMAN_BODY_IDLE_TIMEOUT_SECONDS` likewise)",
    )
    #: Once the store holds a key: a connection not authenticated this long after it
    #: opened is told ``421 4.4.2`` and closed.
    auth_timeout: float = setting(
        10.0,
        env="MAILMAN_SMTP_AUTH_TIMEOUT_SECONDS",
        minimum=0.01,
        help="a connection that has not authenticated this long after connecting gets 421",
        doc="once the store holds a key, a connection that has not authenticated this long "
        "after it opened gets `421 4.4.2` and is closed (silent or not)",
    )
    #: A failed AUTH is answered after this long, doubled with each failure on the
    #: connection, at most 8 times as long (other connections are not held up).
    auth_failure_delay: float = setting(
        1.0,
        env="MAILMAN_SMTP_AUTH_FAILURE_DELAY_SECONDS",
        minimum=0.0,
        help="a failed SMTP AUTH is answered after this long, doubling per failure (8x at most)",
        doc="a failed SMTP AUTH (`535`) is answered after this long, doubled with each "
        "failure on the connection, at most 8 times as long; other clients are not held up",
    )


# --- the whole configuration --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    host: str = setting(
        "127.0.0.1",
        env="MAILMAN_HOST",
        flag="--host",
        metavar="HOST",
        help="bind address",
        doc="bind address (`0.0.0.0` in a container)",
    )
    port: int = setting(
        9292,
        env="MAILMAN_PORT",
        flag="--port",
        metavar="PORT",
        parse=parse.whole,
        maximum=PORT_MAX,
        label="port",
        help="HTTP port, 0: any free port",
        doc="HTTP port (`0`: any free port)",
    )
    store: str = setting(
        "sqlite:///mailman.db",
        env="MAILMAN_STORE",
        flag="--store",
        metavar="URL",
        help="store URL",
        doc="store URL: `sqlite:///relative.db`, `sqlite:////abs/path.db`, or "
        "`mysql://user:password@host:3306/db` (the password is never logged)",
    )
    #: process | thread (a SQLite file's writes; in memory: always a thread)
    sqlite_writer: str = setting(
        "process",
        env="MAILMAN_SQLITE_WRITER",
        parse=parse.choice(),
        choices=SQLITE_WRITERS,
        help="where a SQLite file's writes run: process or thread",
        doc="where a SQLite file's writes run: `process` (a process of their own, beside "
        "each Mailman process: its transactions never wait for this process's GIL; "
        "docs/performance.md) or `thread` (a thread of this process: one process less)",
    )
    broker: str = setting(
        "memory://",
        env="MAILMAN_BROKER",
        flag="--broker",
        metavar="URL",
        help="broker URL",
        doc="mailboxes: `memory://` (in-process) or `kafka://host:9092[,host2:9092]`",
    )
    roles: tuple[str, ...] = setting(
        (ROLE_ALL,),
        env="MAILMAN_ROLE",
        flag="--role",
        metavar="ROLES",
        parse=parse.roles,
        help="comma list of actors to run in this process",
        doc="actors to run here: `all`, or a comma list of `api`, `smtp`, `relay`, `sweeper`, "
        "`retry` and provider names. A subset needs Kafka and MySQL, except `api` and the rest "
        "on one SQLite file",
    )
    #: 1: every actor in this process. N >= 2: a parent runs the API in N - 1
    #: processes sharing the port and the other actors in one more.
    processes: int = setting(
        1,
        env="MAILMAN_PROCESSES",
        flag="--processes",
        metavar="N",
        parse=parse.whole,
        minimum=1,
        help="processes to run: N >= 2 runs the API in N-1 processes sharing the port and "
        "the other actors in one more, on the same store",
        doc="`N` \u2265 2: the API in N \u2212 1 processes sharing the port, the other actors in "
        "one more, all on the same store (see [One machine, every "
        "core](processes.md))",
    )
    #: Share the port with other processes (SO_REUSEPORT): set for --processes' API children.
    reuse_port: bool = setting(
        False,
        env="MAILMAN_REUSE_PORT",
        flag="--reuse-port",
        unset="off",
        help="share the port with other Mailman processes through SO_REUSEPORT, e.g. several "
        "--role api processes started by hand",
        doc="bind the port with `SO_REUSEPORT`, so several `--role api` processes can listen on "
        "it (`--processes` sets it for its own)",
    )
    #: Internal (--processes' children): a pipe to write "ready" to once serving.
    ready_fd: int | None = setting(
        None,
        flag="--ready-fd",
        parse=parse.whole,
        hidden=True,
        help="internal (--processes' children): a pipe to write ready to once serving",
    )
    providers: tuple[ConfiguredProvider, ...] = setting(
        (),
        env="MAILMAN_PROVIDERS",
        parse=by_load,
        unset="sendgrid,mailgun",
        help="the provider chain, in failover order ({providers}); name:weight splits first "
        "attempts by weight, e.g. sendgrid:3,mailgun:1,outbox",
        doc="the provider chain, in failover order ({providers}; a plugin adds more, see "
        "[Provider plugins](provider-plugins.md)). `name:weight` (a whole number \u2265 1) "
        "splits the mails' first attempts between the weighted providers by weight, e.g. "
        "`sendgrid:3,mailgun:1,outbox`: the weighted ones come first, then the rest in order "
        "(see [Which provider first](how-it-works.md#which-provider-first))",
    )
    #: Providers named in MAILMAN_PROVIDERS but left out (no key): warned about at start.
    skipped_providers: tuple[str, ...] = ()
    #: The weight of each of ``providers`` (``name:weight``; 0: unweighted), in its order.
    provider_weights: tuple[int, ...] = ()
    default_subject: str = setting(
        "(no subject)",
        env="MAILMAN_DEFAULT_SUBJECT",
        parse=parse.text_or_default,
        help="subject for mails submitted without one",
    )
    #: 16 MiB: a mail with the most attachments (10 MiB, about 13.4 MiB as base64
    #: in JSON) and room for the rest of it.
    max_body_bytes: int = setting(
        16 * 1024 * 1024,
        env="MAILMAN_MAX_BODY_BYTES",
        minimum=1,
        note="16 MiB",
        help="larger request bodies get 413",
        doc="larger request bodies get 413. Room for a mail with the most attachments "
        "(10 MiB, about 13.4 MiB as base64)",
    )
    #: 256 MiB: bodies (HTTP and SMTP) read or held at once, across the process.
    max_inflight_bytes: int = setting(
        256 * 1024 * 1024,
        env="MAILMAN_MAX_INFLIGHT_BYTES",
        minimum=0,
        note="256 MiB",
        help="memory for bodies being read or held at once (about 4x their size); "
        "past it 503/452; 0: no limit",
        doc="memory for request bodies and SMTP mails being read or held at once, across "
        "the process, each charged about 4 times its size; past it new bodies get `503` with "
        "`Retry-After` (SMTP: `452 4.3.1`), and one key (or client address) may hold half "
        "at most. `0`: no limit. See [Limits](limits.md#memory)",
    )
    provider_timeout: float = setting(
        10.0,
        env="MAILMAN_PROVIDER_TIMEOUT",
        minimum=0.001,
        help="seconds per provider HTTP call",
    )
    unknown_grace_seconds: float = setting(
        60.0,
        env="MAILMAN_UNKNOWN_GRACE_SECONDS",
        minimum=0.0,
        help="seconds a lost SendGrid/SES answer waits for the provider's own event before "
        "the mail is sent again (0: off)",
        doc="seconds an attempt at SendGrid or SES whose answer was lost (`unknown`) waits, "
        "from its start, for the provider's own event that it took the mail (SendGrid's "
        "`processed`, SES's `Send`) before the mail is sent again; only where that provider's "
        "webhook is on (`MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY`, `MAILMAN_SES_SNS_TOPIC_ARNS`). "
        "`0`: not waited for. See [Guarantees](guarantees.md)",
    )
    late_answer_seconds: float = setting(
        10.0,
        env="MAILMAN_LATE_ANSWER_SECONDS",
        minimum=0.0,
        help="seconds a provider's answer is still listened for after MAILMAN_PROVIDER_TIMEOUT "
        "before the mail is sent on (0: off)",
        doc="seconds an HTTP provider's answer is still listened for once "
        "`MAILMAN_PROVIDER_TIMEOUT` has passed. At the timeout the call counts as failed "
        "(the attempt is `unknown`, the circuit breaker counts it) but the request goes on: "
        "an answer in these seconds settles the mail (`2xx`: `sent` by that provider, not "
        "sent again), and the mail is handed on to the next provider only once they are "
        "over. `0`: handed on at the timeout. See [Guarantees](guarantees.md#a-slow-provider)",
    )
    unknown_policy: str = setting(
        "resend",
        env="MAILMAN_UNKNOWN_POLICY",
        parse=parse.choice(),
        choices=UNKNOWN_POLICIES,
        help="a mail whose answer was lost at a provider that cannot be asked (smtp-relay, "
        "sendgrid, ses): resend it, or hold it as unknown for an operator",
        doc="a mail whose answer was lost (an `unknown` attempt) at a provider that cannot be "
        "asked whether it took it (`smtp-relay`, `sendgrid`, `ses`): `resend` sends it on, at "
        "the risk "
        "of a second copy; `hold` keeps it `unknown` for an operator (`POST /mail/{id}/retry` "
        "or `/sent`). See [Delivery guarantees](guarantees.md#a-lost-answer)",
    )
    sender_concurrency: int = setting(
        256,
        env="MAILMAN_SENDER_CONCURRENCY",
        minimum=1,
        help="provider calls in flight per sender (where an adaptive sender starts)",
        doc="provider calls in flight per sender (each provider's sender, in each process "
        "that runs it): about the mails per second wanted times the provider's answer time, "
        "kept under the provider's rate limit; an adaptive sender starts here and grows "
        "above it only up to `MAILMAN_SENDER_MAX_CONCURRENCY`. See "
        "[Sizing the sender concurrency](performance.md#sizing-the-sender-concurrency)",
    )
    sender_max_concurrency: int = setting(
        2048,
        env="MAILMAN_SENDER_MAX_CONCURRENCY",
        minimum=1,
        help="the most provider calls in flight an adaptive sender grows to (small mails only)",
        doc="the most provider calls in flight an adaptive sender grows to while every slot "
        "is in use, the provider's answer time stays flat and the mails are small (64 KiB "
        "or less each; a larger one brings it back to `MAILMAN_SENDER_CONCURRENCY`), and "
        "no further than 5,000 mails a second need at that answer time: a slow but healthy "
        "provider meets a backlog with more calls (about 1,000 at 200 ms), within the "
        "process's open files. At or below "
        "`MAILMAN_SENDER_CONCURRENCY` (or for a provider named in "
        "`MAILMAN_SENDER_CONCURRENCY_PER_PROVIDER`) a sender never grows past its start. See "
        "[Adaptive concurrency](performance.md#adaptive-concurrency)",
    )
    sender_concurrency_per_provider: tuple[tuple[str, int], ...] = setting(
        (),
        env="MAILMAN_SENDER_CONCURRENCY_PER_PROVIDER",
        parse=parse.provider_numbers,
        note="none",
        help="provider:N,... : the concurrency of those providers' senders, e.g. resend:2",
        doc="`provider:N,...`: the concurrency of those providers' senders instead of "
        "`MAILMAN_SENDER_CONCURRENCY`, e.g. `resend:2,ses:4` for providers with a low rate "
        "limit, and their ceiling too (they never grow past it); each must be in "
        "`MAILMAN_PROVIDERS`",
    )
    sender_rate_per_provider: tuple[tuple[str, int], ...] = setting(
        (),
        env="MAILMAN_SENDER_RATE_PER_PROVIDER",
        parse=parse.provider_numbers,
        note="none",
        help="provider:N,... : at most N calls a second from each of those providers' "
        "senders, e.g. resend:2",
        doc="`provider:N,...`: at most N calls a second (evenly spaced) from each of "
        "those providers' senders, for a provider whose limit is counted per second, e.g. "
        "`resend:2` (Resend's default) or `ses:14` (an SES account's maximum send rate); "
        "per process running the sender; each must be in `MAILMAN_PROVIDERS`. See "
        "[Sizing the sender concurrency](performance.md#sizing-the-sender-concurrency)",
    )
    sender_adaptive: bool = setting(
        True,
        env="MAILMAN_SENDER_ADAPTIVE",
        help="adapt each sender's calls in flight to its provider (halve on 429/5xx/timeout, "
        "grow while answers stay fast, up to the max concurrency)",
        doc="adapt each sender's calls in flight to its provider: it starts at the sender's "
        "concurrency, halves on a `429`, a 5xx or a timeout, grows back by one per round "
        "trip while the provider's answer time stays flat, and above its start up to "
        "`MAILMAN_SENDER_MAX_CONCURRENCY` while every slot is in use; `false`: always the "
        "concurrency. See [Adaptive concurrency](performance.md#adaptive-concurrency)",
    )
    calls_log_seconds: float = setting(
        10.0,
        env="MAILMAN_CALLS_LOG_SECONDS",
        minimum=0.1,
        help="seconds between a sender's provider.calls summary lines (info)",
        doc="seconds between a sender's `provider.calls` line (`info`): the calls of the "
        "interval, how many were accepted, their p50 and p99 ms; one call's own "
        "`provider.call` line is `debug` when it is accepted. See "
        "[Logs](logs.md#provider-calls)",
    )
    mailbox_capacity: int = setting(
        1000,
        env="MAILMAN_MAILBOX_CAPACITY",
        minimum=1,
        help="messages an in-process mailbox holds before put waits",
        doc="messages an in-process mailbox holds before `put` waits",
    )
    shutdown_timeout: float = setting(
        10.0,
        env="MAILMAN_SHUTDOWN_TIMEOUT",
        help="seconds in-flight requests and provider calls get on stop",
    )
    startup_timeout: float = setting(
        60.0,
        env="MAILMAN_STARTUP_TIMEOUT_SECONDS",
        minimum=0.0,
        help="how long start-up waits for a store or broker that is missing or down (then exit 2)",
        doc="how long start-up waits for a store or broker that is missing or down, "
        "trying again with backoff (then exit 2)",
    )
    breaker: BreakerConfig = BreakerConfig()
    retry: RetryConfig = RetryConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    kafka: KafkaConfig = KafkaConfig()
    relay: RelayConfig = RelayConfig()
    #: The HTTP edge: a request's headers must arrive within this many seconds...
    header_timeout: float = setting(
        10.0,
        env="MAILMAN_HEADER_TIMEOUT_SECONDS",
        minimum=0.01,
        help="a request's headers must arrive within this long (slow-loris clients are cut)",
    )
    #: ...a request body that sends nothing for this long is cut...
    body_idle_timeout: float = setting(
        10.0,
        env="MAILMAN_BODY_IDLE_TIMEOUT_SECONDS",
        minimum=0.01,
        help="a request body that sends nothing for this long is cut (408)",
        doc="a request body that sends nothing for this long is cut (`408`)",
    )
    #: ...and an idle keep-alive connection is closed after this long.
    keepalive_seconds: float = setting(
        75.0,
        env="MAILMAN_KEEPALIVE_SECONDS",
        minimum=0.01,
        help="idle keep-alive connections close after this long",
    )
    #: How long the API waits on the store before it answers 503.
    store_timeout: float = setting(
        5.0,
        env="MAILMAN_STORE_TIMEOUT_SECONDS",
        minimum=0.01,
        help="how long the API waits on the store before it answers 503 with Retry-After",
        doc="how long the API waits on the store before it answers `503` with `Retry-After`",
    )
    #: How long an ``Idempotency-Key`` is remembered.
    idempotency_ttl: float = setting(
        DAY,
        env="MAILMAN_IDEMPOTENCY_TTL_SECONDS",
        minimum=1,
        note="24 h",
        help="how long an Idempotency-Key is remembered",
        doc="how long an `Idempotency-Key` is remembered",
    )
    #: Mails per second per API key when the key sets no rate of its own (0: unlimited).
    rate_limit: float = setting(
        0.0,
        env="MAILMAN_RATE_LIMIT",
        note="unlimited",
        help="mails per second (and burst) for keys made without --rate",
        doc="mails per second (and burst) for keys made without `--rate`",
    )
    #: How long an API replica trusts what it read about a key (revocation takes this long).
    key_cache_seconds: float = setting(
        2.0,
        env="MAILMAN_KEY_CACHE_SECONDS",
        help="how long an API replica trusts what it read about a key: a revocation takes at "
        "most this long",
    )
    #: How long rendering one mail from a template may take before it is refused (422).
    template_render_seconds: float = setting(
        0.25,
        env="MAILMAN_TEMPLATE_RENDER_SECONDS",
        minimum=0.001,
        help="how long rendering one mail from a template may take; longer is a 422",
        doc="how long rendering one mail from a template may take (its subject and bodies "
        "together); past it the mail is refused with `422`, and the rendered mail may be at "
        "most `MAILMAN_MAX_BODY_BYTES` characters. See [Templates](templates.md#limits)",
    )
    #: Unsent mails (queued or sending) beyond which POST /mail/send answers 503 (0: no limit).
    backlog_limit: int = setting(
        100_000,
        env="MAILMAN_BACKLOG_LIMIT",
        help="unsent mails at which POST /mail/send answers 503 (0: no limit)",
        doc="unsent mails (`queued` or `sending`) at which `POST /mail/send` answers `503` "
        "(0: no limit; see [Back pressure](limits.md#back-pressure))",
    )
    #: Times a mailbox record's handler may fail before the record is dead-lettered.
    poison_attempts: int = setting(
        5,
        env="MAILMAN_POISON_ATTEMPTS",
        minimum=1,
        help="times a mailbox record's handler may fail before the record goes to the dead letters",
        doc="times a mailbox record's handler may fail before the record goes to the dead "
        "letters and its mail ends `failed`",
    )
    #: Seconds past the provider timeout after which an attempt with no recorded answer
    #: counts as ``unknown``, and a ``sending`` mail nothing handles is picked up again.
    sweep_margin: float = setting(
        20.0,
        env="MAILMAN_SWEEP_MARGIN_SECONDS",
        minimum=0.0,
        help="seconds past the provider timeout after which an unanswered attempt is unknown",
        doc="an attempt with no answer recorded `MAILMAN_PROVIDER_TIMEOUT` + this many seconds "
        "after it started is `unknown`, and a `sending` mail that nothing has handled for that "
        "long is dispatched again (see [Delivery guarantees](guarantees.md))",
    )
    #: How often the sweeper looks for such mails.
    sweep_interval: float = setting(
        5.0,
        env="MAILMAN_SWEEP_INTERVAL_SECONDS",
        minimum=0.01,
        help="how often the sweeper (role sweeper) looks for such mails",
        doc="how often the sweeper (role `sweeper`) looks for such mails",
    )
    #: After this, a final mail's content is erased (``store.retention``); None: kept.
    body_retention: float | None = setting(
        30 * DAY,
        env="MAILMAN_BODY_RETENTION",
        parse=parse.duration_or_off,
        unset="30d",
        help="a final mail's content (addresses, subject, text, files...) is erased this "
        "long after its last change: 90s, 15m, 12h, 30d, or off",
        doc="a final mail's content (addresses, subject, text, HTML, files, headers, "
        "metadata) is erased this long after its last status change; its status record "
        "stays. `90s`, `15m`, `12h`, `30d`, or `off` (see [Retention](retention.md))",
    )
    #: After this, a final mail is deleted with all its rows; None: kept.
    record_retention: float | None = setting(
        400 * DAY,
        env="MAILMAN_RECORD_RETENTION",
        parse=parse.duration_or_off,
        unset="400d",
        help="a final mail is deleted with its attempts, events and callbacks this long "
        "after its last change: 90s, 15m, 12h, 30d, or off",
        doc="a final mail is deleted (then `404`) with its attempts, events, callbacks and "
        "idempotency keys this long after its last status change; finished callbacks and "
        "replayed dead letters too. `90s`, `15m`, `12h`, `30d`, or `off`",
    )
    #: How often the purger (role sweeper) looks for what retention erases.
    retention_interval: float = setting(
        60.0,
        env="MAILMAN_RETENTION_INTERVAL",
        parse=parse.duration,
        unset="1m",
        help="how often the purger (role sweeper) erases what retention says",
        doc="how often the purger (role `sweeper`) erases what the two retentions say, "
        "in batches of 500 mails",
    )
    #: SendGrid's Event Webhook verification key (base64 DER): turns POST /webhooks/sendgrid on.
    sendgrid_webhook_public_key: str | None = setting(
        None,
        env="MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY",
        parse=parse.public_key,
        note="off",
        help="SendGrid's Event Webhook verification key: turns POST /webhooks/sendgrid on",
        doc="SendGrid's Event Webhook verification key (base64, as SendGrid shows it; a PEM "
        "block works too). Turns `POST /webhooks/sendgrid` on; a key that is not ECDSA P-256 "
        "stops the start (exit 2)",
    )
    #: Mailgun's HTTP webhook signing key: turns POST /webhooks/mailgun on.
    mailgun_webhook_signing_key: Secret | None = setting(
        None,
        env="MAILMAN_MAILGUN_WEBHOOK_SIGNING_KEY",
        parse=parse.secret,
        note="off",
        help="Mailgun's HTTP webhook signing key: turns POST /webhooks/mailgun on",
        doc="Mailgun's HTTP webhook signing key (not the API key; a secret, never logged). "
        "Turns `POST /webhooks/mailgun` on",
    )
    #: Resend's webhook signing secret (Svix, whsec_...): turns POST /webhooks/resend on.
    resend_webhook_secret: Secret | None = setting(
        None,
        env="MAILMAN_RESEND_WEBHOOK_SECRET",
        parse=parse.svix_secret,
        note="off",
        help="Resend's webhook signing secret (whsec_...): turns POST /webhooks/resend on",
        doc="Resend's webhook signing secret (`whsec_...`, a secret, never logged). Turns "
        "`POST /webhooks/resend` on; one that is not `whsec_<base64>` stops the start (exit 2)",
    )
    #: The SNS topics whose SES events POST /webhooks/ses takes: turns it on.
    ses_sns_topic_arns: tuple[str, ...] = setting(
        (),
        env="MAILMAN_SES_SNS_TOPIC_ARNS",
        parse=parse.sns_topic_arns,
        note="off",
        help="the SNS topics (comma list of ARNs) SES publishes events to: turns POST "
        "/webhooks/ses on",
        doc="the SNS topics (a comma list of ARNs) that SES's event destination publishes to. "
        "Turns `POST /webhooks/ses` on; a message signed by SNS for any other topic is refused "
        "(see [Delivery events](webhooks.md#amazon-ses))",
    )
    sns_host_pattern: str = setting(
        SNS_HOST_PATTERN,
        env="MAILMAN_SNS_HOST_PATTERN",
        parse=parse.pattern,
        help="where SNS signing certificates and subscribe URLs may be fetched from (a regex "
        "over scheme://host[:port]); for tests only",
        doc="where SNS signing certificates (`SigningCertURL`) and subscription URLs "
        "(`SubscribeURL`) may be fetched from: a regular expression over `scheme://host[:port]`. "
        "Change it for tests only",
    )
    #: ``user:password`` of Postmark's webhooks (basic auth): turns POST /webhooks/postmark on.
    postmark_webhook_credentials: Secret | None = setting(
        None,
        env="MAILMAN_POSTMARK_WEBHOOK_CREDENTIALS",
        parse=parse.user_password,
        note="off",
        help="user:password Postmark's webhooks send: turns POST /webhooks/postmark on",
        doc="`user:password` that Postmark's webhooks must send as HTTP basic auth (put them "
        "in the webhook URL; a secret, never logged). Turns `POST /webhooks/postmark` on",
    )
    log_level: str = setting(
        "info",
        env="MAILMAN_LOG_LEVEL",
        parse=parse.choice(echo=True),
        choices=LOG_LEVELS,
        help="debug, info, warning, error or critical",
        doc="`debug`, `info`, `warning`, `error`, `critical` (anything else is refused at start)",
    )
    #: auto (JSON unless on a terminal) | json | console
    log_format: str = setting(
        "auto",
        env="MAILMAN_LOG_FORMAT",
        parse=parse.choice(),
        choices=LOG_FORMATS,
        help="json, console, or auto: JSON lines unless stderr is a terminal",
        doc="`json`, `console`, or `auto`: JSON lines unless stderr is a terminal",
    )
    #: auto (uvloop when installed) | uvloop | asyncio
    event_loop: str = setting(
        "auto",
        env="MAILMAN_EVENT_LOOP",
        parse=parse.choice(),
        choices=EVENT_LOOPS,
        help="uvloop, asyncio, or auto: uvloop when installed",
        doc="`uvloop` (faster; used by `auto` when installed, which it is on Linux) or `asyncio`",
    )
    #: prometheus-client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``): the API
    #: processes that share it each answer /metrics with the sum over all of them.
    #: ``--processes`` makes a fresh one for its children.
    metrics_dir: str | None = setting(
        None,
        env="PROMETHEUS_MULTIPROC_DIR",
        parse=parse.text_or_default,
        note="none, or with --processes a fresh one of its own",
        help="prometheus-client's multiprocess directory: /metrics sums the API processes "
        "sharing it",
        doc="prometheus-client's multiprocess directory: every API process sharing it answers "
        "`/metrics` with the sum over all of them ([Observability](observability.md))."
        " Read when the process starts; `--processes` passes it to its children and empties it "
        "at start",
    )
    #: Where this service is reached from outside: one-click unsubscribe links point there.
    public_url: str | None = setting(
        None,
        env="MAILMAN_PUBLIC_URL",
        parse=parse.public_url,
        note="off",
        help="where Mailman is reached from outside (https://mail.example.com): one-click "
        "unsubscribe links point there",
        doc="where Mailman is reached from outside (`https://mail.example.com`, https, at most "
        "200 characters; plain http only for a loopback host): the `List-Unsubscribe` links "
        "of mails sent with `unsubscribe` point there ([One-click unsubscribe]"
        "(unsubscribe.md)). Without it (and `MAILMAN_UNSUBSCRIBE_SECRET`) such a mail is a `422`",
    )
    #: Signs one-click unsubscribe links (HMAC-SHA256): the same on every replica.
    unsubscribe_secret: Secret | None = setting(
        None,
        env="MAILMAN_UNSUBSCRIBE_SECRET",
        parse=parse.secret,
        note="off",
        help="signs one-click unsubscribe links (HMAC-SHA256); the same on every replica",
        doc="signs one-click unsubscribe links (HMAC-SHA256; a secret, never logged). Give "
        "every replica the same value: any of them checks any link. Changing it voids the "
        "links of mails already sent",
    )
    #: Status callbacks (``callback_url``).
    callbacks: CallbackConfig = CallbackConfig()
    #: SMTP submission (``actors.smtp``).
    smtp: SmtpConfig = SmtpConfig()

    @property
    def unsubscribing(self) -> bool:
        """Whether mails may ask for one-click unsubscribe: a public URL and a secret."""
        return self.public_url is not None and self.unsubscribe_secret is not None

    @property
    def stale_after(self) -> float:
        """Seconds after its start when an attempt with no answer recorded is ``unknown``."""
        return self.provider_timeout + self.sweep_margin

    @property
    def chain(self) -> tuple[str, ...]:
        """Provider names in the order ``MAILMAN_PROVIDERS`` gives them."""
        return tuple(p.name for p in self.providers)

    def concurrency_of(self, provider: str) -> int:
        """The provider calls ``provider``'s sender starts with (all it ever keeps in
        flight when not adaptive)."""
        return dict(self.sender_concurrency_per_provider).get(provider, self.sender_concurrency)

    def rate_of(self, provider: str) -> int | None:
        """The calls a second ``provider``'s sender makes at most; None: no such limit."""
        return dict(self.sender_rate_per_provider).get(provider)

    def max_concurrency_of(self, provider: str) -> int:
        """The most provider calls ``provider``'s adaptive sender grows to: its own
        concurrency when given per provider, else ``MAILMAN_SENDER_MAX_CONCURRENCY`` (never
        below where it starts)."""
        pinned = dict(self.sender_concurrency_per_provider).get(provider)
        if pinned is not None:
            return pinned
        return max(self.sender_concurrency, self.sender_max_concurrency)

    @property
    def weights(self) -> tuple[int, ...]:
        """The weight of each provider of ``chain`` (0: unweighted)."""
        return self.provider_weights or (0,) * len(self.providers)


class _Settings(Mapping[str, Setting]):
    """Every setting by its path, in the order of the declarations, each provider's
    (``sendgrid.api_key``) right after the chain's own. Built on first use: the
    providers are plugins (``plugins``), and a plugin imports ``mailman.config``."""

    def __init__(self) -> None:
        self._by_path: dict[str, Setting] | None = None

    @property
    def _all(self) -> dict[str, Setting]:
        if self._by_path is None:
            self._by_path = _every_setting()
        return self._by_path

    def __getitem__(self, path: str) -> Setting:
        return self._all[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)


def provider_plugins() -> Plugins:
    """The provider plugins installed here (found on first use)."""
    own = frozenset(key for s in walk(Config) for key in (s.env, s.flag) if key is not None)
    return plugins.installed(own)


def _every_setting() -> dict[str, Setting]:
    found = provider_plugins()
    names = ", ".join(found.names)
    listed = ", ".join(f"`{n}`" for n in found.names)
    by_path: dict[str, Setting] = {}
    for s in walk(Config):
        if s.path == "providers":
            s = replace(
                s,
                help=s.help.replace("{providers}", names),
                doc=s.doc.replace("{providers}", listed),
            )
        by_path[s.path] = s
        if s.path == "providers":
            for name, plugin in found.usable.items():
                by_path.update((p.path, p) for p in walk(plugin.settings, f"{name}.", s.path))
    return by_path


#: Every setting by its path (``breaker.fail_max``, ``sendgrid.api_key``), in the
#: order of the declarations.
SETTINGS: Mapping[str, Setting] = _Settings()


def env_only() -> tuple[str, ...]:
    """Settings without a flag: environment variables only (``--help`` lists them)."""
    return tuple(s.env for s in SETTINGS.values() if s.env is not None and s.flag is None)

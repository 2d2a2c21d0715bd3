"""Configuration: frozen dataclasses, built once at the entry point.

``load(argv, env)`` reads flags and environment variables (a flag wins over
its env twin) and returns a ``Config`` that is passed down explicitly.
Nothing else in Mailman reads ``os.environ``.
"""

from __future__ import annotations

import argparse
import base64
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

ROLE_ALL = "all"


class ConfigError(ValueError):
    """The configuration cannot work; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A value that must never be printed: its repr and str are masked."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class SendGridConfig:
    api_key: Secret
    base_url: str = "https://api.sendgrid.com"
    name: str = "sendgrid"


@dataclass(frozen=True, slots=True)
class MailgunConfig:
    api_key: Secret
    domain: str
    base_url: str = "https://api.mailgun.net"
    name: str = "mailgun"


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """The local provider: each mail becomes an RFC 5322 ``.eml`` file in ``directory``."""

    directory: Path = Path("outbox")
    name: str = "outbox"


ProviderConfig = SendGridConfig | MailgunConfig | OutboxConfig


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    fail_max: int = 5
    reset_seconds: float = 30.0
    #: How often each process reads the breaker states the others shared.
    sync_seconds: float = 0.5


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Backoff once every provider failed transiently: base * 2**round, capped, with jitter."""

    base_seconds: float = 5.0
    cap_seconds: float = 600.0
    window_seconds: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """One-for-one restarts; more than ``max_restarts`` in ``window_seconds`` ends the process."""

    max_restarts: int = 5
    window_seconds: float = 60.0
    backoff_base_seconds: float = 0.1
    backoff_cap_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Kafka mailboxes: one topic per mailbox, ``{topic_prefix}{mailbox}``."""

    topic_prefix: str = "mailman."
    partitions: int = 6
    replication_factor: int = 1
    #: Idempotent producer (exactly-once per partition on retries); needs broker support.
    idempotent: bool = True
    linger_ms: int = 5
    #: A consumer silent this long is out of its group; its partitions move to the others.
    session_timeout_ms: int = 6_000
    #: How long the broker may hold a fetch open waiting for data (a latency bound).
    fetch_max_wait_ms: int = 500


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The relay publishes committed outbox entries to the first sender mailbox."""

    batch: int = 500
    #: How often a relay looks for entries when nothing woke it.
    interval_seconds: float = 0.2
    #: How long a claimed entry stays leased to one relay (then another may take it).
    lease_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class CallbackConfig:
    """Status callbacks (``actors.callbacks``): ``callback_url`` hears each status change."""

    #: Signs every callback (HMAC-SHA256); without it ``callback_url`` is refused.
    secret: Secret | None = None
    #: Let callbacks go to loopback, private and link-local addresses (a receiver on your network).
    allow_private: bool = False
    #: Seconds a receiver has to answer one callback.
    timeout_seconds: float = 5.0
    #: After a failed call: base * 2**(tries - 1), capped...
    retry_base_seconds: float = 5.0
    retry_cap_seconds: float = 600.0
    #: ...until this long after the status change; then it is given up.
    window_seconds: float = 24 * 3600.0
    #: Calls in flight at once, per notifier.
    concurrency: int = 16
    #: How often a notifier looks for due callbacks.
    interval_seconds: float = 1.0


#: The SMTP port of a plain ``mailman`` run (``MAILMAN_SMTP_PORT``).
SMTP_PORT = 2525


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """SMTP submission (``actors.smtp``): apps send by SMTP, a Mailman key as the password."""

    #: The port; None: no SMTP listener (``MAILMAN_SMTP_PORT=0``). 0 binds any free port,
    #: from code only (tests): an app is configured with a port that stays put.
    port: int | None = SMTP_PORT
    #: The bind address; None: the API's (``Config.host``).
    host: str | None = None
    #: A PEM certificate chain and its private key: STARTTLS is offered, and AUTH needs it.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: A second port speaking TLS from the first byte (implicit TLS, "SMTPS", as on 465)
    #: with the same certificate; None: none. 0 binds any free port (from code: tests).
    tls_port: int | None = None
    #: The largest mail accepted (the SIZE extension), in bytes; None: ``Config.max_body_bytes``.
    max_bytes: int | None = None
    #: Connections served at once; more are told ``421`` and closed (each may hold
    #: a mail of up to ``max_bytes`` in memory while it arrives).
    max_connections: int = 100


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 9292
    store: str = "sqlite:///mailman.db"
    broker: str = "memory://"
    roles: tuple[str, ...] = (ROLE_ALL,)
    #: 1: every actor in this process. N >= 2: a parent runs the API in N - 1
    #: processes sharing the port and the other actors in one more.
    processes: int = 1
    #: Share the port with other processes (SO_REUSEPORT): set for --processes' API children.
    reuse_port: bool = False
    #: Internal (--processes' children): a pipe to write "ready" to once serving.
    ready_fd: int | None = None
    providers: tuple[ProviderConfig, ...] = (OutboxConfig(),)
    #: Providers named in MAILMAN_PROVIDERS but left out (no key): warned about at start.
    skipped_providers: tuple[str, ...] = ()
    default_subject: str = "(no subject)"
    #: 16 MiB: a mail with the most attachments (10 MiB, about 13.4 MiB as base64
    #: in JSON) and room for the rest of it.
    max_body_bytes: int = 16 * 1024 * 1024
    provider_timeout: float = 10.0
    sender_concurrency: int = 32
    mailbox_capacity: int = 1000
    shutdown_timeout: float = 10.0
    breaker: BreakerConfig = BreakerConfig()
    retry: RetryConfig = RetryConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    kafka: KafkaConfig = KafkaConfig()
    relay: RelayConfig = RelayConfig()
    #: The HTTP edge: a request's headers must arrive within this many seconds...
    header_timeout: float = 10.0
    #: ...a request body that sends nothing for this long is cut...
    body_idle_timeout: float = 10.0
    #: ...and an idle keep-alive connection is closed after this long.
    keepalive_seconds: float = 75.0
    #: How long the API waits on the store before it answers 503.
    store_timeout: float = 5.0
    #: How long an ``Idempotency-Key`` is remembered.
    idempotency_ttl: float = 24 * 3600.0
    #: Mails per second per API key when the key sets no rate of its own (0: unlimited).
    rate_limit: float = 0.0
    #: How long an API replica trusts what it read about a key (revocation takes this long).
    key_cache_seconds: float = 2.0
    #: Unsent mails (queued or sending) beyond which POST /mail/send answers 503 (0: no limit).
    backlog_limit: int = 100_000
    #: Times a mailbox record's handler may fail before the record is dead-lettered.
    poison_attempts: int = 5
    #: Seconds past the provider timeout after which an attempt with no recorded answer
    #: counts as ``unknown``, and a ``sending`` mail nothing handles is picked up again.
    sweep_margin: float = 20.0
    #: How often the sweeper looks for such mails.
    sweep_interval: float = 5.0
    #: SendGrid's Event Webhook verification key (base64 DER): turns POST /webhooks/sendgrid on.
    sendgrid_webhook_public_key: str | None = None
    #: Mailgun's HTTP webhook signing key: turns POST /webhooks/mailgun on.
    mailgun_webhook_signing_key: Secret | None = None
    log_level: str = "info"
    log_format: str = "auto"  # auto (JSON unless on a terminal) | json | console
    event_loop: str = "auto"  # auto (uvloop when installed) | uvloop | asyncio
    #: prometheus-client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``): the API
    #: processes that share it each answer /metrics with the sum over all of them.
    #: ``--processes`` makes a fresh one for its children.
    metrics_dir: str | None = None
    #: Status callbacks (``callback_url``).
    callbacks: CallbackConfig = CallbackConfig()
    #: SMTP submission (``actors.smtp``).
    smtp: SmtpConfig = SmtpConfig()

    @property
    def stale_after(self) -> float:
        """Seconds after its start when an attempt with no answer recorded is ``unknown``."""
        return self.provider_timeout + self.sweep_margin

    @property
    def chain(self) -> tuple[str, ...]:
        """Provider names in failover order."""
        return tuple(p.name for p in self.providers)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """A Config from environment variables alone (no flags)."""
        return load([], env)


def redact_url(url: str) -> str:
    """``url`` with any password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:********@{host}"))


KNOWN_PROVIDERS = ("sendgrid", "mailgun", "outbox")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")

#: Settings without a flag: environment variables only (``--help`` lists them).
ENV_ONLY = (
    "MAILMAN_PROVIDERS",
    "MAILMAN_POISON_ATTEMPTS",
    "MAILMAN_SWEEP_MARGIN_SECONDS",
    "MAILMAN_SWEEP_INTERVAL_SECONDS",
    "SENDGRID_API_KEY",
    "SENDGRID_BASE_URL",
    "MAILGUN_API_KEY",
    "MAILGUN_DOMAIN",
    "MAILGUN_BASE_URL",
    "MAILMAN_OUTBOX_DIR",
    "MAILMAN_DEFAULT_SUBJECT",
    "MAILMAN_MAX_BODY_BYTES",
    "MAILMAN_PROVIDER_TIMEOUT",
    "MAILMAN_SENDER_CONCURRENCY",
    "MAILMAN_MAILBOX_CAPACITY",
    "MAILMAN_SHUTDOWN_TIMEOUT",
    "MAILMAN_BREAKER_FAIL_MAX",
    "MAILMAN_BREAKER_RESET_SECONDS",
    "MAILMAN_BREAKER_SYNC_SECONDS",
    "MAILMAN_RETRY_BASE_SECONDS",
    "MAILMAN_RETRY_CAP_SECONDS",
    "MAILMAN_RETRY_WINDOW_SECONDS",
    "MAILMAN_MAX_RESTARTS",
    "MAILMAN_RESTART_WINDOW_SECONDS",
    "MAILMAN_RESTART_BACKOFF_SECONDS",
    "MAILMAN_RESTART_BACKOFF_CAP_SECONDS",
    "MAILMAN_RELAY_BATCH",
    "MAILMAN_RELAY_INTERVAL_SECONDS",
    "MAILMAN_RELAY_LEASE_SECONDS",
    "MAILMAN_KAFKA_TOPIC_PREFIX",
    "MAILMAN_KAFKA_PARTITIONS",
    "MAILMAN_KAFKA_REPLICATION_FACTOR",
    "MAILMAN_KAFKA_IDEMPOTENT",
    "MAILMAN_KAFKA_LINGER_MS",
    "MAILMAN_KAFKA_SESSION_TIMEOUT_MS",
    "MAILMAN_KAFKA_FETCH_MAX_WAIT_MS",
    "MAILMAN_HEADER_TIMEOUT_SECONDS",
    "MAILMAN_BODY_IDLE_TIMEOUT_SECONDS",
    "MAILMAN_KEEPALIVE_SECONDS",
    "MAILMAN_STORE_TIMEOUT_SECONDS",
    "MAILMAN_IDEMPOTENCY_TTL_SECONDS",
    "MAILMAN_RATE_LIMIT",
    "MAILMAN_KEY_CACHE_SECONDS",
    "MAILMAN_BACKLOG_LIMIT",
    "MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY",
    "MAILMAN_MAILGUN_WEBHOOK_SIGNING_KEY",
    "MAILMAN_EVENT_LOOP",
    "MAILMAN_LOG_LEVEL",
    "MAILMAN_LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
    "MAILMAN_CALLBACK_SECRET",
    "MAILMAN_CALLBACK_ALLOW_PRIVATE",
    "MAILMAN_CALLBACK_TIMEOUT_SECONDS",
    "MAILMAN_CALLBACK_RETRY_BASE_SECONDS",
    "MAILMAN_CALLBACK_RETRY_CAP_SECONDS",
    "MAILMAN_CALLBACK_WINDOW_SECONDS",
    "MAILMAN_CALLBACK_CONCURRENCY",
    "MAILMAN_CALLBACK_INTERVAL_SECONDS",
    "MAILMAN_SMTP_PORT",
    "MAILMAN_SMTP_HOST",
    "MAILMAN_SMTP_TLS_CERT",
    "MAILMAN_SMTP_TLS_KEY",
    "MAILMAN_SMTP_TLS_PORT",
    "MAILMAN_SMTP_MAX_BYTES",
    "MAILMAN_SMTP_MAX_CONNECTIONS",
)

_EPILOG = (
    "Every flag has an environment twin; the flag wins. Settings without a flag are "
    "environment variables: " + ", ".join(ENV_ONLY) + ". "
    "README.md (section Configuration) says what each one does and its default. "
    "Commands: `mailman [serve]` runs the service (the default; HTTP on --port, SMTP on "
    "MAILMAN_SMTP_PORT, 2525 unless 0); "
    "`mailman keys create|list|revoke` manages API keys (`mailman keys --help`)."
)


def _option(
    p: argparse.ArgumentParser,
    env: Mapping[str, str],
    flag: str,
    var: str,
    default: str,
    help: str,
    metavar: str,
) -> None:
    """Add ``flag``: its value comes from ``var`` in ``env`` when the flag is not given.

    The help shows the built-in default, not the environment's value.
    """
    p.add_argument(
        flag,
        default=env.get(var, default),
        metavar=metavar,
        help=f"{help} (default: {default}; env {var})".replace("%", "%%"),
    )


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mailman",
        description="Mailman: transactional mail through several providers, with failover.",
        epilog=_EPILOG,
    )
    _option(p, env, "--host", "MAILMAN_HOST", "127.0.0.1", "bind address", "HOST")
    _option(p, env, "--port", "MAILMAN_PORT", "9292", "HTTP port, 0: any free port", "PORT")
    _option(p, env, "--store", "MAILMAN_STORE", "sqlite:///mailman.db", "store URL", "URL")
    _option(p, env, "--broker", "MAILMAN_BROKER", "memory://", "broker URL", "URL")
    _option(
        p,
        env,
        "--role",
        "MAILMAN_ROLE",
        ROLE_ALL,
        "comma list of actors to run in this process",
        "ROLES",
    )
    _option(
        p,
        env,
        "--processes",
        "MAILMAN_PROCESSES",
        "1",
        "processes to run: N >= 2 runs the API in N-1 processes sharing the port and "
        "the other actors in one more, on the same store",
        "N",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        default=_flag(env, "MAILMAN_REUSE_PORT", False),
        help="share the port with other Mailman processes through SO_REUSEPORT, e.g. several "
        "--role api processes started by hand (default: off; env MAILMAN_REUSE_PORT)",
    )
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    return p


# --- store and broker URLs: checked at load, so a typo is exit 2, not a traceback ----

_STORE_EXPECTED = "expected sqlite:///path/to.db or mysql://user:password@host:3306/database"
_MYSQL_EXAMPLE = "mysql://user:password@host:3306/database"
_MYSQL_DATABASE_NAME = re.compile(r"[A-Za-z0-9_$]{1,64}")
_BROKER_EXPECTED = "expected memory:// or kafka://host:9092[,host2:9092]"


def is_memory_store(url: str) -> bool:
    """Whether a store URL names an in-memory SQLite database (one process's alone)."""
    scheme, _, rest = url.partition("://")
    return scheme == "sqlite" and rest.lstrip("/") in ("", ":memory:")


def check_store_url(url: str) -> None:
    """Raise ``ConfigError`` unless ``open_store`` can open a store for ``url``.

    The same checks as ``open_store`` and the MySQL store's URL parser, without
    importing a database driver. Messages never quote a password.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError(f"the store URL has no scheme ({_STORE_EXPECTED})")
    if scheme == "sqlite":
        return
    if scheme != "mysql":
        raise ConfigError(f"unsupported store {scheme!r} ({_STORE_EXPECTED})")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or out of range
    except ValueError:
        raise ConfigError(f"malformed mysql store URL (expected {_MYSQL_EXAMPLE})") from None
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ConfigError(f"the mysql store URL names no database (expected {_MYSQL_EXAMPLE})")
    if not _MYSQL_DATABASE_NAME.fullmatch(database):
        raise ConfigError(
            "the database name in the mysql store URL must be 1 to 64 letters, digits, _ or $"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - {"pool_min", "pool_max"})
    if unknown:
        raise ConfigError(
            f"unsupported mysql store URL options {unknown} (known: pool_min, pool_max)"
        )
    try:
        pool_min = int(options.get("pool_min", 1))
        pool_max = int(options.get("pool_max", 10))
    except ValueError:
        raise ConfigError("pool_min and pool_max in the mysql store URL must be integers") from None
    if not 0 <= pool_min <= pool_max or pool_max < 1:
        raise ConfigError(
            f"the mysql store URL needs 0 <= pool_min <= pool_max and 1 <= pool_max, "
            f"got pool_min={pool_min}, pool_max={pool_max}"
        )


def check_broker_url(url: str) -> None:
    """Raise ``ConfigError`` unless ``make_broker`` accepts ``url``.

    ``memory://``, or ``kafka://`` and a comma list of ``host:port`` addresses.
    """
    if url.startswith("memory:"):
        return
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"unsupported broker: the URL has no scheme ({_BROKER_EXPECTED})")
    if scheme != "kafka":
        raise ConfigError(f"unsupported broker {scheme!r} ({_BROKER_EXPECTED})")
    addresses = rest.strip("/").split(",")
    if addresses == [""]:
        raise ConfigError(f"the kafka broker URL names no address ({_BROKER_EXPECTED})")
    for address in addresses:
        if "@" in address:
            raise ConfigError("kafka broker addresses take no user or password")
        try:
            parts = urlsplit(f"//{address.strip()}")
            host, port, extra = parts.hostname, parts.port, parts.path + parts.query
        except ValueError:
            host, port, extra = None, None, ""
        if not host or not port or extra:
            raise ConfigError(
                f"bad kafka broker address {address!r}: need host:port, "
                f"a port from 1 to 65535 ({_BROKER_EXPECTED})"
            )


def _number(env: Mapping[str, str], key: str, default: float, *, minimum: float = 0) -> float:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {raw!r}")
    return value


def _integer(env: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    value = _number(env, key, default, minimum=minimum)
    if value != int(value):
        raise ConfigError(f"{key} must be a whole number, got {env.get(key)!r}")
    return int(value)


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key} must be true or false, got {env.get(key)!r}")


def _secret(env: Mapping[str, str], key: str) -> Secret | None:
    raw = env.get(key, "").strip()
    return Secret(raw) if raw else None


def _public_key(env: Mapping[str, str], key: str) -> str | None:
    """An ECDSA P-256 public key as base64 DER (SubjectPublicKeyInfo); PEM armour is dropped."""
    raw = env.get(key, "")
    lines = [line.strip() for line in raw.splitlines() if not line.strip().startswith("-----")]
    text = "".join("".join(lines).split())
    if not text:
        return None
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        loaded = load_der_public_key(base64.b64decode(text, validate=True))
    except ValueError:  # binascii.Error too
        loaded = None
    if not isinstance(loaded, ec.EllipticCurvePublicKey) or loaded.curve.name != "secp256r1":
        raise ConfigError(
            f"{key} must be an ECDSA P-256 public key, base64 DER as SendGrid shows it"
        )
    return text


def _providers(env: Mapping[str, str]) -> tuple[tuple[ProviderConfig, ...], tuple[str, ...]]:
    names = [n.strip().lower() for n in env.get("MAILMAN_PROVIDERS", "sendgrid,mailgun").split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in KNOWN_PROVIDERS]
    if unknown:
        raise ConfigError(
            f"MAILMAN_PROVIDERS names unknown provider(s) {', '.join(unknown)}; "
            f"known: {', '.join(KNOWN_PROVIDERS)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError("MAILMAN_PROVIDERS names a provider twice")
    outbox = OutboxConfig(Path(env.get("MAILMAN_OUTBOX_DIR") or "outbox"))
    chain: list[ProviderConfig] = []
    skipped: list[str] = []
    for name in names:
        if name == "sendgrid":
            key = env.get("SENDGRID_API_KEY", "").strip()
            if not key:
                skipped.append(name)
                continue
            base = env.get("SENDGRID_BASE_URL") or "https://api.sendgrid.com"
            chain.append(SendGridConfig(Secret(key), base.rstrip("/")))
        elif name == "mailgun":
            key = env.get("MAILGUN_API_KEY", "").strip()
            domain = env.get("MAILGUN_DOMAIN", "").strip()
            if not key:
                skipped.append(name)
                continue
            if not domain:
                raise ConfigError("MAILGUN_API_KEY is set but MAILGUN_DOMAIN is not")
            base = env.get("MAILGUN_BASE_URL") or "https://api.mailgun.net"
            chain.append(MailgunConfig(Secret(key), domain, base.rstrip("/")))
        else:
            chain.append(outbox)
    if not chain:
        chain.append(outbox)
    return tuple(chain), tuple(skipped)


def tls_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server's TLS context from a PEM certificate chain and its private key.

    ``ConfigError`` naming the files (never their contents) when one cannot be
    read or they are no certificate and matching key. An encrypted key is
    refused, not prompted for: a server has no one to ask.
    """
    for var, path in (("MAILMAN_SMTP_TLS_CERT", cert), ("MAILMAN_SMTP_TLS_KEY", key)):
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"{var}: cannot read {path} ({exc.strerror or type(exc).__name__})"
            ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, ValueError) as exc:
        why = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(
            f"MAILMAN_SMTP_TLS_CERT and MAILMAN_SMTP_TLS_KEY: {cert} and {key} are not a PEM "
            f"certificate chain and its unencrypted private key ({why})"
        ) from None
    return context


def _no_password() -> str:
    return ""


def _smtp(env: Mapping[str, str]) -> SmtpConfig:
    """``MAILMAN_SMTP_*``: port (0: off), host, TLS files, size limit."""
    port = _integer(env, "MAILMAN_SMTP_PORT", SMTP_PORT)
    if port > 65535:
        raise ConfigError(f"MAILMAN_SMTP_PORT must be between 0 (off) and 65535, got {port}")
    cert = env.get("MAILMAN_SMTP_TLS_CERT", "").strip()
    key = env.get("MAILMAN_SMTP_TLS_KEY", "").strip()
    if bool(cert) != bool(key):
        raise ConfigError(
            "MAILMAN_SMTP_TLS_CERT and MAILMAN_SMTP_TLS_KEY go together: set both (a PEM "
            "certificate chain and its private key) or neither"
        )
    if cert:
        tls_server_context(Path(cert), Path(key))
    tls_port = _integer(env, "MAILMAN_SMTP_TLS_PORT", 0)
    if tls_port > 65535:
        raise ConfigError(
            f"MAILMAN_SMTP_TLS_PORT must be between 0 (off) and 65535, got {tls_port}"
        )
    if tls_port and not cert:
        raise ConfigError(
            "MAILMAN_SMTP_TLS_PORT needs MAILMAN_SMTP_TLS_CERT and MAILMAN_SMTP_TLS_KEY "
            "(the certificate it speaks TLS with)"
        )
    if tls_port and not port:
        raise ConfigError("MAILMAN_SMTP_TLS_PORT needs the SMTP listener on (MAILMAN_SMTP_PORT)")
    max_bytes = None
    if env.get("MAILMAN_SMTP_MAX_BYTES", "").strip():
        max_bytes = _integer(env, "MAILMAN_SMTP_MAX_BYTES", 0, minimum=1)
    return SmtpConfig(
        port=port or None,
        host=env.get("MAILMAN_SMTP_HOST", "").strip() or None,
        tls_cert=Path(cert) if cert else None,
        tls_key=Path(key) if key else None,
        tls_port=tls_port or None,
        max_bytes=max_bytes,
        max_connections=_integer(env, "MAILMAN_SMTP_MAX_CONNECTIONS", 100, minimum=1),
    )


def load(argv: Sequence[str], env: Mapping[str, str]) -> Config:
    """The Config that ``argv`` (flags) and ``env`` (environment) describe.

    Raises ``ConfigError`` for values that cannot work, and ``SystemExit`` for
    ``--help`` or unknown flags (argparse's own behaviour).
    """
    args = _parser(env).parse_args(list(argv))
    try:
        port = int(args.port)
    except ValueError:
        raise ConfigError(f"port must be a whole number, got {args.port!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, got {port}")
    roles = tuple(r.strip().lower() for r in str(args.role).split(",") if r.strip())
    if not roles:
        raise ConfigError("--role names no role")
    try:
        processes = int(args.processes)
    except ValueError:
        raise ConfigError(f"--processes must be a whole number, got {args.processes!r}") from None
    if processes < 1:
        raise ConfigError(f"--processes must be at least 1, got {processes}")
    if processes > 1 and roles != (ROLE_ALL,):
        raise ConfigError("--processes runs every role itself: leave --role at all")
    if processes > 1 and is_memory_store(args.store):
        raise ConfigError(
            "--processes needs a store the processes can share: a SQLite file "
            "(sqlite:///mailman.db) or MySQL, not an in-memory database"
        )
    try:
        check_store_url(args.store)
    except ConfigError as exc:
        raise ConfigError(f"--store (MAILMAN_STORE): {exc}") from None
    try:
        check_broker_url(args.broker)
    except ConfigError as exc:
        raise ConfigError(f"--broker (MAILMAN_BROKER): {exc}") from None
    providers, skipped = _providers(env)
    log_level = env.get("MAILMAN_LOG_LEVEL", "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(
            f"MAILMAN_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
            f"got {env.get('MAILMAN_LOG_LEVEL')!r}"
        )
    log_format = env.get("MAILMAN_LOG_FORMAT", "auto").lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"MAILMAN_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
    event_loop = env.get("MAILMAN_EVENT_LOOP", "auto").lower()
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"MAILMAN_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}")
    breaker = BreakerConfig(
        fail_max=_integer(env, "MAILMAN_BREAKER_FAIL_MAX", 5, minimum=1),
        reset_seconds=_number(env, "MAILMAN_BREAKER_RESET_SECONDS", 30.0),
        sync_seconds=_number(env, "MAILMAN_BREAKER_SYNC_SECONDS", 0.5, minimum=0.01),
    )
    kafka = KafkaConfig(
        topic_prefix=env.get("MAILMAN_KAFKA_TOPIC_PREFIX", "mailman."),
        partitions=_integer(env, "MAILMAN_KAFKA_PARTITIONS", 6, minimum=1),
        replication_factor=_integer(env, "MAILMAN_KAFKA_REPLICATION_FACTOR", 1, minimum=1),
        idempotent=_flag(env, "MAILMAN_KAFKA_IDEMPOTENT", True),
        linger_ms=_integer(env, "MAILMAN_KAFKA_LINGER_MS", 5),
        session_timeout_ms=_integer(env, "MAILMAN_KAFKA_SESSION_TIMEOUT_MS", 6_000, minimum=1),
        fetch_max_wait_ms=_integer(env, "MAILMAN_KAFKA_FETCH_MAX_WAIT_MS", 500),
    )
    relay = RelayConfig(
        batch=_integer(env, "MAILMAN_RELAY_BATCH", 500, minimum=1),
        interval_seconds=_number(env, "MAILMAN_RELAY_INTERVAL_SECONDS", 0.2, minimum=0.001),
        lease_seconds=_number(env, "MAILMAN_RELAY_LEASE_SECONDS", 30.0, minimum=0.1),
    )
    retry = RetryConfig(
        base_seconds=_number(env, "MAILMAN_RETRY_BASE_SECONDS", 5.0),
        cap_seconds=_number(env, "MAILMAN_RETRY_CAP_SECONDS", 600.0),
        window_seconds=_number(env, "MAILMAN_RETRY_WINDOW_SECONDS", 86400.0),
    )
    supervisor = SupervisorConfig(
        max_restarts=_integer(env, "MAILMAN_MAX_RESTARTS", 5),
        window_seconds=_number(env, "MAILMAN_RESTART_WINDOW_SECONDS", 60.0),
        backoff_base_seconds=_number(env, "MAILMAN_RESTART_BACKOFF_SECONDS", 0.1),
        backoff_cap_seconds=_number(env, "MAILMAN_RESTART_BACKOFF_CAP_SECONDS", 5.0),
    )
    callbacks = CallbackConfig(
        secret=_secret(env, "MAILMAN_CALLBACK_SECRET"),
        allow_private=_flag(env, "MAILMAN_CALLBACK_ALLOW_PRIVATE", False),
        timeout_seconds=_number(env, "MAILMAN_CALLBACK_TIMEOUT_SECONDS", 5.0, minimum=0.01),
        retry_base_seconds=_number(env, "MAILMAN_CALLBACK_RETRY_BASE_SECONDS", 5.0, minimum=0.001),
        retry_cap_seconds=_number(env, "MAILMAN_CALLBACK_RETRY_CAP_SECONDS", 600.0, minimum=0.001),
        window_seconds=_number(env, "MAILMAN_CALLBACK_WINDOW_SECONDS", 86400.0),
        concurrency=_integer(env, "MAILMAN_CALLBACK_CONCURRENCY", 16, minimum=1),
        interval_seconds=_number(env, "MAILMAN_CALLBACK_INTERVAL_SECONDS", 1.0, minimum=0.01),
    )
    return Config(
        host=args.host,
        port=port,
        store=args.store,
        broker=args.broker,
        roles=roles,
        processes=processes,
        reuse_port=bool(args.reuse_port),
        ready_fd=args.ready_fd,
        providers=providers,
        skipped_providers=skipped,
        default_subject=env.get("MAILMAN_DEFAULT_SUBJECT") or "(no subject)",
        max_body_bytes=_integer(env, "MAILMAN_MAX_BODY_BYTES", 16 * 1024 * 1024, minimum=1),
        provider_timeout=_number(env, "MAILMAN_PROVIDER_TIMEOUT", 10.0, minimum=0.001),
        sender_concurrency=_integer(env, "MAILMAN_SENDER_CONCURRENCY", 32, minimum=1),
        mailbox_capacity=_integer(env, "MAILMAN_MAILBOX_CAPACITY", 1000, minimum=1),
        shutdown_timeout=_number(env, "MAILMAN_SHUTDOWN_TIMEOUT", 10.0),
        breaker=breaker,
        retry=retry,
        supervisor=supervisor,
        kafka=kafka,
        relay=relay,
        header_timeout=_number(env, "MAILMAN_HEADER_TIMEOUT_SECONDS", 10.0, minimum=0.01),
        body_idle_timeout=_number(env, "MAILMAN_BODY_IDLE_TIMEOUT_SECONDS", 10.0, minimum=0.01),
        keepalive_seconds=_number(env, "MAILMAN_KEEPALIVE_SECONDS", 75.0, minimum=0.01),
        store_timeout=_number(env, "MAILMAN_STORE_TIMEOUT_SECONDS", 5.0, minimum=0.01),
        idempotency_ttl=_number(env, "MAILMAN_IDEMPOTENCY_TTL_SECONDS", 86400.0, minimum=1),
        rate_limit=_number(env, "MAILMAN_RATE_LIMIT", 0.0),
        key_cache_seconds=_number(env, "MAILMAN_KEY_CACHE_SECONDS", 2.0),
        backlog_limit=_integer(env, "MAILMAN_BACKLOG_LIMIT", 100_000),
        poison_attempts=_integer(env, "MAILMAN_POISON_ATTEMPTS", 5, minimum=1),
        sweep_margin=_number(env, "MAILMAN_SWEEP_MARGIN_SECONDS", 20.0, minimum=0.0),
        sweep_interval=_number(env, "MAILMAN_SWEEP_INTERVAL_SECONDS", 5.0, minimum=0.01),
        sendgrid_webhook_public_key=_public_key(env, "MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY"),
        mailgun_webhook_signing_key=_secret(env, "MAILMAN_MAILGUN_WEBHOOK_SIGNING_KEY"),
        log_level=log_level,
        log_format=log_format,
        event_loop=event_loop,
        metrics_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        callbacks=callbacks,
        smtp=_smtp(env),
    )

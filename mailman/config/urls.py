"""Store and broker URLs: checked at load, so a typo is exit 2, not a traceback; and
redacted, so a password never reaches a log or an error."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from .errors import ConfigError


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


#: ``SMTP_RELAY_URL`` schemes: how each one secures the connection, and its default port.
SMTP_RELAY_SCHEMES = {
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
    "smtp": ("plain", 25),
}
_RELAY_EXPECTED = (
    "expected smtp+starttls://user:pass@host:587, smtps://user:pass@host:465 or smtp://host:25"
)


@dataclass(frozen=True, slots=True)
class SmtpRelayTarget:
    """An ``SMTP_RELAY_URL``, parsed: ``security`` is ``starttls`` (required), ``tls``
    (implicit, from the first byte) or ``plain``. User and password URL-decoded."""

    security: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_smtp_relay_url(url: str) -> SmtpRelayTarget:
    """``url`` parsed, or ``ConfigError`` (whose message never quotes the password).

    ``smtp://`` is plain text: it carries a user and password only to a loopback
    host (a relay on the same machine), never across a network in the clear.
    """
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SMTP_RELAY_SCHEMES:
        raise ConfigError(f"unsupported SMTP relay URL scheme {scheme!r} ({_RELAY_EXPECTED})")
    security, default_port = SMTP_RELAY_SCHEMES[scheme.lower()]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"malformed SMTP relay URL ({_RELAY_EXPECTED})") from None
    if not parts.hostname:
        raise ConfigError(f"the SMTP relay URL names no host ({_RELAY_EXPECTED})")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError("the SMTP relay URL takes no path, query or fragment")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if (username is None) != (password is None):
        raise ConfigError("the SMTP relay URL needs both a user and a password, or neither")
    if security == "plain" and password is not None and not is_loopback(parts.hostname):
        raise ConfigError(
            "smtp:// would send the relay's password in the clear: use smtp+starttls:// or "
            "smtps:// (smtp:// takes a user and password on a loopback host only)"
        )
    return SmtpRelayTarget(security, parts.hostname, port or default_port, username, password)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, an address, an address in brackets) is this machine only:
    ``localhost`` or a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

"""Setting parsers: a setting's raw text to its value, or ``ConfigError``.

Each takes the raw text and the setting (a ``Bounds``: its default, bounds and
the name its messages use; ``declare.Setting`` is one). Numbers, booleans and
the text parsers take a blank value as the default; the others take it as what
it says.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from yarl import URL

from .errors import ConfigError
from .secret import Secret
from .urls import is_loopback


class Bounds(Protocol):
    """What a parser reads of the setting it parses for."""

    @property
    def name(self) -> str: ...

    @property
    def default(self) -> Any: ...

    @property
    def minimum(self) -> float: ...

    @property
    def maximum(self) -> float | None: ...

    @property
    def choices(self) -> tuple[str, ...]: ...


#: A setting's parser: the raw text to its value, or ``ConfigError`` naming the setting.
Parse = Callable[[str, Bounds], Any]

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def text(raw: str, s: Bounds) -> str:
    """As given, empty included."""
    return raw


def text_or_default(raw: str, s: Bounds) -> Any:
    """As given; empty: the default."""
    return raw or s.default


def stripped(raw: str, s: Bounds) -> Any:
    """Without surrounding blanks; blank: the default."""
    return raw.strip() or s.default


def path(raw: str, s: Bounds) -> Any:
    """A path; empty: the default."""
    return Path(raw) if raw else s.default


def stripped_path(raw: str, s: Bounds) -> Any:
    """A path without surrounding blanks; blank: the default."""
    value = raw.strip()
    return Path(value) if value else s.default


def base_url(raw: str, s: Bounds) -> str:
    """A base URL without trailing slashes; empty: the default."""
    return str(raw or s.default).rstrip("/")


#: The longest ``MAILMAN_PUBLIC_URL``.
MAX_PUBLIC_URL = 200


def public_url(raw: str, s: Bounds) -> Any:
    """Where this service is reached from outside: an absolute https URL without a user,
    query or fragment, trailing slashes dropped (plain http only for a loopback host, for
    tests); blank: the default."""
    value = raw.strip()
    if not value:
        return s.default
    if len(value) > MAX_PUBLIC_URL:
        # A link with the longest token (about 700 characters) must fit one header line.
        raise ConfigError(f"{s.name} must be at most {MAX_PUBLIC_URL} characters")
    try:
        parsed = URL(value)
        host = parsed.host
    except (ValueError, TypeError):
        raise ConfigError(f"{s.name} is not a URL: {value!r}") from None
    if not parsed.is_absolute() or not host:
        raise ConfigError(f"{s.name} must be an absolute URL (https://mail.example.com)")
    if parsed.user is not None or parsed.password is not None:
        raise ConfigError(f"{s.name} must not hold a user or password")
    if parsed.query_string or parsed.fragment:
        raise ConfigError(f"{s.name} must not have a query or fragment")
    if parsed.scheme != "https" and not (parsed.scheme == "http" and is_loopback(host)):
        raise ConfigError(
            f"{s.name} must be an https URL (plain http only for a loopback host, for tests)"
        )
    return value.rstrip("/")


def secret(raw: str, s: Bounds) -> Any:
    """A ``Secret`` without surrounding blanks; blank: the default."""
    value = raw.strip()
    return Secret(value) if value else s.default


def user_password(raw: str, s: Bounds) -> Any:
    """``user:password`` as a ``Secret`` (both parts non-empty); blank: the default."""
    value = raw.strip()
    if not value:
        return s.default
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"{s.name} must be user:password, both non-empty")
    return Secret(value)


def number(raw: str, s: Bounds) -> Any:
    """A number of at least ``s.minimum``; blank: the default."""
    if raw.strip() == "":
        return s.default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{s.name} must be a number, got {raw!r}") from None
    if value < s.minimum:
        raise ConfigError(f"{s.name} must be at least {s.minimum}, got {raw!r}")
    return value


def integer(raw: str, s: Bounds) -> Any:
    """A whole number (``1e3`` too) of at least ``s.minimum``; blank: the default."""
    value = number(raw, s)
    if value is s.default:
        return value
    if not math.isfinite(value) or value != int(value):
        raise ConfigError(f"{s.name} must be a whole number, got {raw!r}")
    return int(value)


def whole(raw: str, s: Bounds) -> int:
    """Digits only, from ``s.minimum`` up to ``s.maximum``."""
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{s.name} must be a whole number, got {raw!r}") from None
    if s.maximum is not None and not s.minimum <= value <= s.maximum:
        raise ConfigError(f"{s.name} must be between {s.minimum} and {s.maximum}, got {value}")
    if value < s.minimum:
        raise ConfigError(f"{s.name} must be at least {s.minimum}, got {value}")
    return value


def port_or_off(raw: str, s: Bounds) -> int | None:
    """A port up to ``s.maximum``; 0: None (off); blank: the default."""
    value = integer(raw, s)
    if value is None:
        return None
    if s.maximum is not None and value > s.maximum:
        raise ConfigError(
            f"{s.name} must be between {s.minimum} (off) and {s.maximum}, got {value}"
        )
    return int(value) or None


#: The units of a duration, in seconds.
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(raw: str, s: Bounds) -> Any:
    """A duration with its unit: ``90s``, ``15m``, ``12h``, ``30d`` (``1.5h`` too), more
    than 0; blank: the default. A bare number is refused: ``30`` could mean 30 seconds
    or 30 days, and a retention cut to seconds erases mail."""
    value = raw.strip().lower()
    if not value:
        return s.default
    amount, unit = value[:-1].strip(), value[-1:]
    try:
        seconds = float(amount) * DURATION_UNITS[unit]
    except (KeyError, ValueError):
        raise ConfigError(
            f"{s.name} must be a duration like 90s, 15m, 12h or 30d, got {raw!r}"
        ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{s.name} must be a duration over 0 (like 30d), got {raw!r}")
    return seconds


def duration_or_off(raw: str, s: Bounds) -> Any:
    """A ``duration``, or ``off`` (None: never); blank: the default."""
    if raw.strip().lower() == "off":
        return None
    try:
        return duration(raw, s)
    except ConfigError:
        raise ConfigError(
            f"{s.name} must be a duration like 90s, 15m, 12h or 30d, or off, got {raw!r}"
        ) from None


def boolean(raw: str, s: Bounds) -> Any:
    """true/false, yes/no, on/off or 1/0, in any case; blank: the default."""
    value = raw.strip().lower()
    if not value:
        return s.default
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{s.name} must be true or false, got {raw!r}")


def choice(*, echo: bool = False) -> Parse:
    """One of ``s.choices``, in any case (lowered); ``echo``: the refusal quotes the value."""

    def parse(raw: str, s: Bounds) -> str:
        value = raw.lower()
        if value in s.choices:
            return value
        got = f", got {raw!r}" if echo else ""
        raise ConfigError(f"{s.name} must be one of {', '.join(s.choices)}{got}")

    return parse


def roles(raw: str, s: Bounds) -> tuple[str, ...]:
    """A comma list of roles, lowered, blanks dropped; at least one."""
    value = tuple(item.strip().lower() for item in raw.split(",") if item.strip())
    if not value:
        raise ConfigError(f"{s.name} names no role")
    return value


def svix_secret(raw: str, s: Bounds) -> Any:
    """A Svix signing secret (``whsec_`` then base64, as Resend shows it) as a ``Secret``;
    blank: the default. Its value is never in an error."""
    value = raw.strip()
    if not value:
        return s.default
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except ValueError:  # binascii.Error too
        key = b""
    if not key:
        raise ConfigError(f"{s.name} must be a signing secret as Resend shows it: whsec_<base64>")
    return Secret(value)


#: An SNS topic's ARN: ``arn:aws:sns:us-east-1:123456789012:name`` (other partitions too).
_SNS_TOPIC_ARN = re.compile(
    r"arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?"
)


def sns_topic_arns(raw: str, s: Bounds) -> tuple[str, ...]:
    """A comma list of SNS topic ARNs, blanks dropped; blank: none."""
    value = tuple(item.strip() for item in raw.split(",") if item.strip())
    for arn in value:
        if not _SNS_TOPIC_ARN.fullmatch(arn):
            raise ConfigError(
                f"{s.name} must list SNS topic ARNs (arn:aws:sns:region:account:name), got {arn!r}"
            )
    return value


def pattern(raw: str, s: Bounds) -> str:
    """A regular expression that compiles; blank: the default."""
    value = raw.strip()
    if not value:
        return str(s.default)
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{s.name} is not a regular expression: {exc}") from None
    return value


def public_key(raw: str, s: Bounds) -> str | None:
    """An ECDSA P-256 public key as base64 DER (SubjectPublicKeyInfo); PEM armour is
    dropped; blank: None."""
    lines = [line.strip() for line in raw.splitlines() if not line.strip().startswith("-----")]
    value = "".join("".join(lines).split())
    if not value:
        return None
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        loaded = load_der_public_key(base64.b64decode(value, validate=True))
    except ValueError:  # binascii.Error too
        loaded = None
    if not isinstance(loaded, ec.EllipticCurvePublicKey) or loaded.curve.name != "secp256r1":
        raise ConfigError(
            f"{s.name} must be an ECDSA P-256 public key, base64 DER as SendGrid shows it"
        )
    return value


def provider_numbers(raw: str, s: Bounds) -> tuple[tuple[str, int], ...]:
    """``name:N,...``: (provider, N) pairs, N a whole number of at least 1 for each."""
    try:
        pairs = weighted_names(raw)
    except ValueError as exc:
        raise ConfigError(f"{s.name}: {exc}".replace("the weight of", "the number of")) from None
    for name, number in pairs:
        if number == 0:
            raise ConfigError(f"{s.name}: give {name} a number ({name}:N)")
    return pairs


def weighted_names(text: str) -> tuple[tuple[str, int], ...]:
    """A provider chain ``name[:weight],...``: (name, weight) pairs, weight 0 when none is
    given (names lower-cased, blanks ignored). ``ValueError`` saying what is wrong: a
    part without a name, a provider named twice, a weight that is not a whole number of
    at least 1."""
    pairs: list[tuple[str, int]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        name, colon, weight = part.partition(":")
        name = name.strip().lower()
        if not name:
            raise ValueError(f"{part.strip()!r} has no provider name")
        value = 0
        if colon:
            raw = weight.strip()
            if not raw.isdigit() or int(raw) < 1:
                raise ValueError(
                    f"the weight of {name} must be a whole number of at least 1, got {raw!r}"
                )
            value = int(raw)
        if any(name == seen for seen, _ in pairs):
            raise ValueError(f"{name} is named twice")
        pairs.append((name, value))
    return tuple(pairs)

"""Configuration: frozen dataclasses, built once at the entry point.

``load(argv, env)`` reads flags and environment variables (a flag wins over
its env twin) and returns a ``Config`` that is passed down explicitly.
Nothing else in Mailman reads ``os.environ``.

Each setting is declared once, as a field of those dataclasses
(``settings``, ``declare``): its default, environment variable, flag,
parser, bounds, help and docs line. ``load``, ``--help`` (``flags``) and
docs/configuration.md (``docs``; ``python -m mailman.config --markdown``)
all come from the declarations.
"""

from __future__ import annotations

from .declare import Setting
from .errors import ConfigError
from .load import configured_chain, from_args, load
from .secret import Secret
from .settings import (
    ENV_ONLY,
    EVENT_LOOPS,
    KNOWN_PROVIDERS,
    LOG_FORMATS,
    LOG_LEVELS,
    ROLE_ALL,
    SETTINGS,
    SMTP_PORT,
    BreakerConfig,
    CallbackConfig,
    Config,
    KafkaConfig,
    MailgunConfig,
    OutboxConfig,
    PostmarkConfig,
    ProviderConfig,
    RelayConfig,
    ResendConfig,
    RetryConfig,
    SendGridConfig,
    SesConfig,
    SmtpConfig,
    SmtpRelayConfig,
    SupervisorConfig,
)
from .tls import tls_server_context
from .urls import (
    SmtpRelayTarget,
    check_broker_url,
    check_store_url,
    is_memory_store,
    parse_smtp_relay_url,
    redact_url,
)

__all__ = [
    "ENV_ONLY",
    "EVENT_LOOPS",
    "KNOWN_PROVIDERS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ROLE_ALL",
    "SETTINGS",
    "SMTP_PORT",
    "BreakerConfig",
    "CallbackConfig",
    "Config",
    "ConfigError",
    "KafkaConfig",
    "MailgunConfig",
    "OutboxConfig",
    "PostmarkConfig",
    "ProviderConfig",
    "RelayConfig",
    "ResendConfig",
    "RetryConfig",
    "Secret",
    "SendGridConfig",
    "SesConfig",
    "Setting",
    "SmtpConfig",
    "SmtpRelayConfig",
    "SmtpRelayTarget",
    "SupervisorConfig",
    "check_broker_url",
    "check_store_url",
    "configured_chain",
    "from_args",
    "is_memory_store",
    "load",
    "parse_smtp_relay_url",
    "redact_url",
    "tls_server_context",
]

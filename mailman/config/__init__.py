"""Configuration: frozen dataclasses, built once at the entry point.

``load(argv, env)`` reads flags and environment variables (a flag wins over
its env twin) and returns a ``Config`` that is passed down explicitly.
Nothing else in Mailman reads ``os.environ``.

Each setting is declared once, as a field of those dataclasses
(``settings``, ``declare``): its default, environment variable, flag,
parser, bounds, help and docs line. ``load``, ``--help`` (``flags``) and
docs/configuration.md (``docs``; ``python -m mailman.config --markdown``)
all come from the declarations. Providers are plugins (``plugins``): each
declares its own settings with ``setting`` beside its code.
"""

from __future__ import annotations

from . import parse
from .declare import Setting, setting
from .errors import ConfigError
from .load import configured_chain, configured_provider, from_args, load
from .plugins import ConfiguredProvider, ProviderPlugin, required
from .secret import Secret
from .settings import (
    EVENT_LOOPS,
    LOG_FORMATS,
    LOG_LEVELS,
    ROLE_ALL,
    SETTINGS,
    SMTP_PORT,
    BreakerConfig,
    CallbackConfig,
    Config,
    KafkaConfig,
    RelayConfig,
    RetryConfig,
    SmtpConfig,
    SupervisorConfig,
    env_only,
    provider_plugins,
)
from .tls import tls_server_context
from .urls import (
    SmtpRelayTarget,
    check_broker_url,
    check_store_url,
    is_loopback,
    is_memory_store,
    parse_smtp_relay_url,
    redact_url,
)

__all__ = [
    "EVENT_LOOPS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ROLE_ALL",
    "SETTINGS",
    "SMTP_PORT",
    "BreakerConfig",
    "CallbackConfig",
    "Config",
    "ConfigError",
    "ConfiguredProvider",
    "KafkaConfig",
    "ProviderPlugin",
    "RelayConfig",
    "RetryConfig",
    "Secret",
    "Setting",
    "SmtpConfig",
    "SmtpRelayTarget",
    "SupervisorConfig",
    "check_broker_url",
    "check_store_url",
    "configured_chain",
    "configured_provider",
    "env_only",
    "from_args",
    "is_loopback",
    "is_memory_store",
    "load",
    "parse",
    "parse_smtp_relay_url",
    "provider_plugins",
    "redact_url",
    "required",
    "setting",
    "tls_server_context",
]

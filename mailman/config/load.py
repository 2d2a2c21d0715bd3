"""``load(argv, env)``: the ``Config`` that flags and environment variables describe.

Every declared setting is read the same way (``Setting.read``: flag, else
environment variable, else default) and built into the dataclasses. What
needs more than one setting's parse follows: the provider chain, the SMTP
TLS files, ``--processes`` against ``--role`` and the store, the store and
broker URLs.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .declare import build, by_load
from .errors import ConfigError
from .flags import service_parser
from .parse import weighted_names
from .settings import (
    KNOWN_PROVIDERS,
    ROLE_ALL,
    SETTINGS,
    Config,
    MailgunConfig,
    OutboxConfig,
    PostmarkConfig,
    ProviderConfig,
    ResendConfig,
    SendGridConfig,
    SesConfig,
    SmtpConfig,
    SmtpRelayConfig,
)
from .tls import tls_server_context
from .urls import check_broker_url, check_store_url, is_memory_store, parse_smtp_relay_url


def load(argv: Sequence[str], env: Mapping[str, str]) -> Config:
    """The Config that ``argv`` (flags) and ``env`` (environment) describe.

    Raises ``ConfigError`` for values that cannot work, and ``SystemExit`` for
    ``--help`` or unknown flags (argparse's own behaviour).
    """
    return from_args(service_parser().parse_args(list(argv)), env)


def from_args(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """The Config of parsed flags (``flags.add_service_flags``) and ``env``."""
    values: dict[str, Any] = {}
    for s in SETTINGS.values():
        if s.parse is not by_load and not s.owner:
            values[s.path] = s.read_args(args, env)
    providers, skipped = _providers(env)
    weights = _weights(env, providers)
    config = replace(
        build(Config, values),
        providers=providers,
        skipped_providers=skipped,
        provider_weights=weights,
    )
    _check_processes(config)
    _check_urls(config)
    _check_smtp(config.smtp)
    return config


def _providers(env: Mapping[str, str]) -> tuple[tuple[ProviderConfig, ...], tuple[str, ...]]:
    """The chain ``MAILMAN_PROVIDERS`` names, less the providers without a key (skipped);
    the outbox alone when none is left."""
    chain_setting = SETTINGS["providers"]
    names = [name for name, _ in _weighted(env)]
    unknown = [n for n in names if n not in KNOWN_PROVIDERS]
    if unknown:
        raise ConfigError(
            f"{chain_setting.name} names unknown provider(s) {', '.join(unknown)}; "
            f"known: {', '.join(KNOWN_PROVIDERS)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"{chain_setting.name} names a provider twice")

    def read(path: str) -> Any:
        return SETTINGS[path].read(None, env)

    outbox = OutboxConfig(read("outbox.directory"))
    chain: list[ProviderConfig] = []
    skipped: list[str] = []
    for name in names:
        if name == "sendgrid":
            key = read("sendgrid.api_key")
            if key is None:
                skipped.append(name)
                continue
            chain.append(SendGridConfig(key, read("sendgrid.base_url")))
        elif name == "mailgun":
            key, domain = read("mailgun.api_key"), read("mailgun.domain")
            if key is None:
                skipped.append(name)
                continue
            if not domain:
                raise ConfigError(
                    f"{SETTINGS['mailgun.api_key'].name} is set but "
                    f"{SETTINGS['mailgun.domain'].name} is not"
                )
            chain.append(MailgunConfig(key, domain, read("mailgun.base_url")))
        elif name == "resend":
            key = read("resend.api_key")
            if key is None:
                skipped.append(name)
                continue
            chain.append(ResendConfig(key, read("resend.base_url")))
        elif name == "ses":
            chain.append(_ses(env, read("ses.region"), read))
        elif name == "postmark":
            token = read("postmark.server_token")
            if token is None:
                skipped.append(name)
                continue
            chain.append(
                PostmarkConfig(token, read("postmark.base_url"), read("postmark.message_stream"))
            )
        elif name == "smtp-relay":
            url = read("smtp-relay.url")
            if url is None:
                skipped.append(name)
                continue
            parse_smtp_relay_url(url.reveal())  # a bad URL is exit 2, never a traceback
            chain.append(SmtpRelayConfig(url, read("smtp-relay.max_connections")))
        else:
            chain.append(outbox)
    if not chain:
        chain.append(outbox)
    return tuple(chain), tuple(skipped)


#: An AWS region's name (``us-east-1``, ``eu-central-2``): it becomes part of a host name.
_AWS_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-[0-9]+")
#: An SES configuration set's name: letters, digits, ``_`` and ``-``, at most 64.
_SES_CONFIGURATION_SET = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _ses(env: Mapping[str, str], region: str | None, read: Callable[[str], Any]) -> SesConfig:
    """SES's settings: the region (``SES_REGION``, else ``AWS_REGION``, else
    ``AWS_DEFAULT_REGION``) is required and must be a region's name."""
    name = SETTINGS["ses.region"].name
    region = (
        region or env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
    )
    if not region:
        raise ConfigError(f"{name} (or AWS_REGION) is required with ses in the provider chain")
    if not _AWS_REGION.fullmatch(region):
        raise ConfigError(f"{name} must be an AWS region such as eu-west-1, got {region!r}")
    configuration_set = read("ses.configuration_set")
    if configuration_set is not None and not _SES_CONFIGURATION_SET.fullmatch(configuration_set):
        raise ConfigError(
            f"{SETTINGS['ses.configuration_set'].name} must be 1 to 64 letters, digits, _ or -, "
            f"got {configuration_set!r}"
        )
    return SesConfig(region, read("ses.endpoint_url"), configuration_set)


def configured_chain(env: Mapping[str, str]) -> tuple[str, ...]:
    """The providers this deployment's ``env`` configures (``MAILMAN_PROVIDERS`` less
    those without a key); ``ConfigError`` as at start."""
    providers, _ = _providers(env)
    return tuple(p.name for p in providers)


def _weighted(env: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """``MAILMAN_PROVIDERS`` as (name, weight) pairs (weight 0: none given)."""
    chain_setting = SETTINGS["providers"]
    try:
        return weighted_names(chain_setting.raw(None, env) or "")
    except ValueError as exc:
        raise ConfigError(
            f"{chain_setting.name}: {exc} (a chain like sendgrid:3,mailgun:1,outbox)"
        ) from None


def _weights(env: Mapping[str, str], providers: tuple[ProviderConfig, ...]) -> tuple[int, ...]:
    """The weight of each provider of the chain (0: unweighted), in its order."""
    given = dict(_weighted(env))
    return tuple(given.get(p.name, 0) for p in providers)


def _check_processes(config: Config) -> None:
    """``--processes`` N >= 2 runs every role itself, on a store the processes can share."""
    processes, roles = SETTINGS["processes"].name, SETTINGS["roles"].name
    if config.processes > 1 and config.roles != (ROLE_ALL,):
        raise ConfigError(f"{processes} runs every role itself: leave {roles} at {ROLE_ALL}")
    if config.processes > 1 and is_memory_store(config.store):
        raise ConfigError(
            f"{processes} needs a store the processes can share: a SQLite file "
            "(sqlite:///mailman.db) or MySQL, not an in-memory database"
        )


def _check_urls(config: Config) -> None:
    """The store and broker URLs name something Mailman can open."""
    for s, check in ((SETTINGS["store"], check_store_url), (SETTINGS["broker"], check_broker_url)):
        try:
            check(getattr(config, s.path))
        except ConfigError as exc:
            raise ConfigError(f"{s.flag} ({s.env}): {exc}") from None


def _check_smtp(smtp: SmtpConfig) -> None:
    """The TLS files go together and load; the TLS port needs them and the SMTP port."""
    cert, key = SETTINGS["smtp.tls_cert"].name, SETTINGS["smtp.tls_key"].name
    port, tls_port = SETTINGS["smtp.port"].name, SETTINGS["smtp.tls_port"].name
    if (smtp.tls_cert is None) != (smtp.tls_key is None):
        raise ConfigError(
            f"{cert} and {key} go together: set both (a PEM certificate chain and its private "
            "key) or neither"
        )
    if smtp.tls_cert is not None and smtp.tls_key is not None:
        tls_server_context(smtp.tls_cert, smtp.tls_key)
    if smtp.tls_port is not None and smtp.tls_cert is None:
        raise ConfigError(f"{tls_port} needs {cert} and {key} (the certificate it speaks TLS with)")
    if smtp.tls_port is not None and smtp.port is None:
        raise ConfigError(f"{tls_port} needs the SMTP listener on ({port})")

"""``load(argv, env)``: the ``Config`` that flags and environment variables describe.

Every declared setting is read the same way (``Setting.read``: flag, else
environment variable, else default) and built into the dataclasses. What
needs more than one setting's parse follows: the provider chain, the SMTP
TLS files, ``--processes`` against ``--role`` and the store, the store and
broker URLs.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .declare import build, by_load
from .errors import ConfigError
from .flags import service_parser
from .parse import weighted_names
from .plugins import ConfiguredProvider, ProviderPlugin
from .settings import ROLE_ALL, SETTINGS, Config, SmtpConfig, provider_plugins
from .tls import tls_server_context
from .urls import check_broker_url, check_store_url, is_memory_store

#: The provider that is the whole chain when no other is configured.
OUTBOX = "outbox"


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
    providers, skipped = _providers(args, env)
    weights = _weights(env, providers)
    config = replace(
        build(Config, values),
        providers=providers,
        skipped_providers=skipped,
        provider_weights=weights,
    )
    _check_processes(config)
    _check_concurrency(config)
    _check_urls(config)
    _check_smtp(config.smtp)
    return config


def _providers(
    args: argparse.Namespace | None, env: Mapping[str, str]
) -> tuple[tuple[ConfiguredProvider, ...], tuple[str, ...]]:
    """The chain ``MAILMAN_PROVIDERS`` names, less the providers that are not configured
    (no key: skipped); the outbox alone when none is left."""
    chain_setting = SETTINGS["providers"]
    found = provider_plugins()
    names = [name for name, _ in _weighted(env)]
    for name in names:
        if name in found.broken:
            raise ConfigError(
                f"{chain_setting.name} names {name}, whose plugin cannot be used: "
                f"{found.broken[name]}"
            )
    unknown = [n for n in names if n not in found.usable]
    if unknown:
        raise ConfigError(
            f"{chain_setting.name} names unknown provider(s) {', '.join(unknown)}; "
            f"known: {', '.join(found.names) or 'none (is Mailman installed? pip install .)'}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"{chain_setting.name} names a provider twice")
    chain: list[ConfiguredProvider] = []
    skipped: list[str] = []
    for name in names:
        provider = _configured(found.usable[name], args, env)
        if provider is None:
            skipped.append(name)
        else:
            chain.append(provider)
    if not chain:
        if (outbox := found.usable.get(OUTBOX)) is None:
            raise ConfigError(f"no provider is configured, and the {OUTBOX} provider is missing")
        chain.append(_configured(outbox, args, env) or ConfiguredProvider(OUTBOX, None, outbox))
    return tuple(chain), tuple(skipped)


def _configured(
    plugin: ProviderPlugin[Any], args: argparse.Namespace | None, env: Mapping[str, str]
) -> ConfiguredProvider | None:
    """``plugin``'s settings as read and checked by its ``configure``; None: not configured."""
    prefix = f"{plugin.name}."
    values = {
        s.path: s.read_args(args, env) if args is not None else s.read(None, env)
        for s in SETTINGS.values()
        if s.owner == "providers" and s.path.startswith(prefix)
    }
    settings = plugin.configure(build(plugin.settings, values, prefix), env)
    return None if settings is None else ConfiguredProvider(plugin.name, settings, plugin)


def configured_provider(name: str, env: Mapping[str, str]) -> ConfiguredProvider | None:
    """The provider ``name`` as ``env`` configures it, in the chain or not (None: it is not
    configured: no key); ``ConfigError`` for an unknown provider or settings that cannot
    work, as at start."""
    found = provider_plugins()
    if name in found.broken:
        raise ConfigError(f"the {name} plugin cannot be used: {found.broken[name]}")
    plugin = found.usable.get(name)
    if plugin is None:
        raise ConfigError(f"unknown provider {name}; known: {', '.join(found.names)}")
    return _configured(plugin, None, env)


def configured_chain(env: Mapping[str, str]) -> tuple[str, ...]:
    """The providers this deployment's ``env`` configures (``MAILMAN_PROVIDERS`` less
    those without a key); ``ConfigError`` as at start."""
    providers, _ = _providers(None, env)
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


def _weights(env: Mapping[str, str], providers: tuple[ConfiguredProvider, ...]) -> tuple[int, ...]:
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


def _check_concurrency(config: Config) -> None:
    """``MAILMAN_SENDER_CONCURRENCY_PER_PROVIDER`` and ``MAILMAN_SENDER_RATE_PER_PROVIDER``
    name providers of the chain."""
    chain = {*config.chain, *config.skipped_providers}
    for path in ("sender_concurrency_per_provider", "sender_rate_per_provider"):
        for name, _ in getattr(config, path):
            if name not in chain:
                known = ", ".join(config.chain)
                raise ConfigError(f"{SETTINGS[path].name} names {name}, not in the chain ({known})")


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

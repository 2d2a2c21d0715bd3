"""Roles: which actors a process runs (``--role``), each named after what it runs.

``all`` (the default) is every role in one process. A subset needs a store the
processes share, and mailboxes they share unless the split is the intake
roles (``api``, ``smtp``) against the rest, which the outbox in a shared store
joins.
"""

from __future__ import annotations

from . import ROLE_ALL, Config, ConfigError, is_memory_store

ROLE_API = "api"
ROLE_RELAY = "relay"
#: The sweeper, and the notifier of status callbacks beside it.
ROLE_SWEEPER = "sweeper"
ROLE_RETRY = "retry"
#: SMTP submission (``actors.smtp``): a role while ``MAILMAN_SMTP_PORT`` is not 0.
ROLE_SMTP = "smtp"
#: Roles renamed, by their old names: still taken, with a warning at start.
RENAMED_ROLES = {"bookkeeper": ROLE_SWEEPER}
#: The roles that take mail in (commit it, wake the relay) and touch no mailbox.
INTAKE_ROLES = frozenset({ROLE_API, ROLE_SMTP})


def all_roles(config: Config) -> frozenset[str]:
    smtp = (ROLE_SMTP,) if config.smtp.port is not None else ()
    return frozenset({ROLE_API, ROLE_RELAY, ROLE_SWEEPER, ROLE_RETRY, *config.chain, *smtp})


def in_memory(config: Config) -> bool:
    return config.broker.startswith("memory:")


def roles_of(config: Config) -> frozenset[str]:
    """The actors this process runs; refuses roles it does not know or cannot run alone."""
    known = all_roles(config)
    if ROLE_ALL in config.roles:
        return known
    named = frozenset(RENAMED_ROLES.get(role, role) for role in config.roles)
    unknown = set(named) - known
    if ROLE_SMTP in unknown and config.smtp.port is None:
        raise ConfigError("--role smtp needs an SMTP port, but MAILMAN_SMTP_PORT is 0 (off)")
    if unknown:
        raise ConfigError(
            f"unknown role(s) {', '.join(sorted(unknown))}; known: all, {', '.join(sorted(known))}"
        )
    roles = named
    if roles == known:
        return roles
    if is_memory_store(config.store):
        raise ConfigError(
            "running a subset of roles needs a store the processes share: an in-memory "
            "database belongs to one process (use --store sqlite:///mailman.db or "
            "mysql://user:password@host:3306/db, or --role all)"
        )
    # The intake roles (api, smtp) only commit mails and wake the relay: they go
    # anywhere. The rest read in-process mailboxes: with memory:// all or none of them.
    workers = known - INTAKE_ROLES
    if in_memory(config) and (roles & workers) not in (frozenset(), workers):
        raise ConfigError(
            "with --broker memory:// the roles split only into api and the rest "
            f"(--role api, and --role {','.join(sorted(workers))}; smtp may go with "
            "either, or alone): the outbox in the shared store carries mails between "
            "them. Other splits need a shared broker (--broker kafka://host:9092), "
            "or --role all"
        )
    return roles

"""The HTTP layer: ``create_app`` builds the aiohttp application.

The app holds no global state: its store, outbound mailbox and config are
given to ``create_app`` and kept in the app under typed keys. The caller
owns their lifecycle and binds the port (see ``actors.server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from aiohttp import web

from mailman.config import Config
from mailman.intake.accept import Intake, Outbound
from mailman.intake.auth import Keyring
from mailman.intake.backlog import Backlog, refresher
from mailman.intake.budget import Budget
from mailman.intake.instruments import HttpMetrics
from mailman.intake.load import Load
from mailman.store import BreakerState, Store


@dataclass(frozen=True, slots=True)
class Probes:
    """What ``/readyz`` and ``/metrics`` may look at beside the store, where this process has it."""

    #: Raises when the broker this process uses cannot be reached; None: it uses none.
    broker: Callable[[], Awaitable[None]] | None = None
    #: This process's own provider breakers (fresher than the states shared in the store).
    breakers: Callable[[], Sequence[BreakerState]] | None = None
    #: Messages waiting in each in-process mailbox of this process.
    mailboxes: Callable[[], Mapping[str, int]] | None = None


STORE = web.AppKey("store", Store)
OUTBOUND = web.AppKey("outbound", Outbound)
CONFIG = web.AppKey("config", Config)
BACKLOG = web.AppKey("backlog", Backlog)
HTTP_METRICS = web.AppKey("http_metrics", HttpMetrics)
PROBES = web.AppKey("probes", Probes)

log = structlog.get_logger("mailman.http")

#: How often the janitor forgets expired idempotency keys.
PURGE_SECONDS = 60.0

#: Accepts mail for every HTTP entry point (``mailman.intake``).
INTAKE = web.AppKey("intake", Intake)

# The handlers read the keys above, so they are imported after them.
from .auth import KEYRING, authenticating  # noqa: E402
from .body import BodyLimits, budgeting  # noqa: E402
from .compat_mailgun import error_shape as mailgun_error_shape  # noqa: E402
from .compat_mailgun import routes as mailgun_compat_routes  # noqa: E402
from .compat_sendgrid import error_shape as sendgrid_error_shape  # noqa: E402
from .compat_sendgrid import routes as sendgrid_compat_routes  # noqa: E402
from .compat_sendgrid import v3_error_shape as sendgrid_v3_error_shape  # noqa: E402
from .dashboard import routes as dashboard_routes  # noqa: E402
from .errors import ERROR_SHAPES, error_middleware, request_ids  # noqa: E402
from .health import routes as health_routes  # noqa: E402
from .mail import routes as mail_routes  # noqa: E402
from .metrics import setup as setup_metrics  # noqa: E402
from .openapi import routes as openapi_routes  # noqa: E402
from .suppressions import routes as suppression_routes  # noqa: E402
from .templates import routes as template_routes  # noqa: E402
from .unsubscribe import routes as unsubscribe_routes  # noqa: E402
from .webhooks import add_webhooks  # noqa: E402
from .webhooks_ses import add_ses_webhook  # noqa: E402

__all__ = [
    "BACKLOG",
    "CONFIG",
    "HTTP_METRICS",
    "INTAKE",
    "KEYRING",
    "OUTBOUND",
    "PROBES",
    "STORE",
    "HttpMetrics",
    "Load",
    "Outbound",
    "Probes",
    "create_app",
]


def create_app(
    *,
    store: Store,
    outbound: Outbound,
    config: Config,
    load: Load | None = None,
    metrics: HttpMetrics | None = None,
    probes: Probes | None = None,
    budget: Budget | None = None,
) -> web.Application:
    """The API as an aiohttp application; ``store`` must already be open.

    ``load`` counts the requests in flight (for a relay in the same process);
    ``metrics`` this process's HTTP metrics (they outlive a restart of the
    app); ``probes`` what else ``/readyz`` and ``/metrics`` may look at.
    """
    load = load or Load()
    metrics = metrics or HttpMetrics()
    budget = budget or Budget(config.max_inflight_bytes)
    keyring = Keyring(store, ttl=config.key_cache_seconds, timeout=config.store_timeout)
    # The middlewares get their dependencies bound here, not looked up on the app (two
    # Python-level properties and a lookup each) on every request.
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[
            request_ids(load, metrics),
            error_middleware,
            authenticating(keyring),
            budgeting(budget, BodyLimits(config.max_body_bytes, config.body_idle_timeout)),
        ],
    )
    app[STORE] = store
    app[OUTBOUND] = outbound
    app[CONFIG] = config
    app[HTTP_METRICS] = metrics
    app[PROBES] = probes or Probes()
    app[KEYRING] = keyring
    app[BACKLOG] = backlog = Backlog(config.backlog_limit)
    app[INTAKE] = Intake(store=store, outbound=outbound, config=config, backlog=backlog)
    app.cleanup_ctx.append(janitor)
    app.cleanup_ctx.append(lambda _: refresher(backlog, store))
    app.add_routes(mail_routes)
    app.add_routes(suppression_routes)
    app.add_routes(template_routes)
    app.add_routes(unsubscribe_routes)
    app.add_routes(health_routes)
    setup_metrics(app)
    app.add_routes(openapi_routes)
    add_webhooks(app)
    add_ses_webhook(app)
    app.add_routes(dashboard_routes)
    app.add_routes(mailgun_compat_routes)
    app.add_routes(sendgrid_compat_routes)
    # Errors under the drop-in endpoints' paths (404, 405, a middleware's) in their
    # provider's shape: SendGrid's Mail Send path, Mailgun's paths and Basic-auth
    # callers, then SendGrid's for the rest of /v3/.
    app[ERROR_SHAPES] = (
        sendgrid_error_shape,
        mailgun_error_shape,
        sendgrid_v3_error_shape,
    )
    return app


async def janitor(app: web.Application) -> AsyncIterator[None]:
    """While the app runs: write keys' last use, forget expired idempotency keys."""
    task = asyncio.create_task(_sweep(app), name="api-janitor")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with contextlib.suppress(Exception):
        await app[KEYRING].flush()


async def _sweep(app: web.Application) -> None:
    keyring, store = app[KEYRING], app[STORE]
    every = max(app[CONFIG].key_cache_seconds, 1.0)
    last_purge = time.monotonic()
    while True:
        await asyncio.sleep(every)
        try:
            await keyring.flush()
            if time.monotonic() - last_purge >= PURGE_SECONDS:
                last_purge = time.monotonic()
                purged = await store.purge_idempotency(time.time())
                if purged:
                    log.info("idempotency.purged", keys=purged)
        except Exception as exc:  # the store may be down for a while: try again later
            log.warning("janitor.failed", error=type(exc).__name__)

"""The HTTP layer: ``create_app`` builds the aiohttp application.

The app holds no global state: its store, outbound mailbox and config are
given to ``create_app`` and kept in the app under typed keys. The caller
owns their lifecycle and binds the port (see ``actors.server``).
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from actors.messages import Dispatch
from actors.store import Store
from config import Config


class Outbound(Protocol):
    """Where an accepted mail is handed on for sending (``actors.routing.Router``)."""

    async def dispatch(self, dispatch: Dispatch) -> None: ...


STORE = web.AppKey("store", Store)
OUTBOUND = web.AppKey("outbound", Outbound)
CONFIG = web.AppKey("config", Config)

# The handlers read the keys above, so they are imported after them.
from .errors import error_middleware, request_id_middleware  # noqa: E402
from .health import routes as health_routes  # noqa: E402
from .mail import routes as mail_routes  # noqa: E402

__all__ = ["CONFIG", "OUTBOUND", "STORE", "Outbound", "create_app"]


def create_app(*, store: Store, outbound: Outbound, config: Config) -> web.Application:
    """The API as an aiohttp application; ``store`` must already be open."""
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[request_id_middleware, error_middleware],
    )
    app[STORE] = store
    app[OUTBOUND] = outbound
    app[CONFIG] = config
    app.add_routes(mail_routes)
    app.add_routes(health_routes)
    return app

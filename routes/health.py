"""``GET /health``: for load balancers and container health checks."""

from __future__ import annotations

from http import HTTPStatus

import structlog
from aiohttp import web

from . import CONFIG, STORE
from .errors import STORE_RETRY_AFTER_SECONDS, STORE_UNAVAILABLE, Problem
from .guard import guarded

log = structlog.get_logger("mailman.http")

routes = web.RouteTableDef()

#: An id no mail has (ULIDs are 26 characters): reading it is a cheap round trip.
_PROBE = "health-probe"


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """200 while the store answers; 503 problem when it does not."""
    store = request.app[STORE]
    try:
        await guarded(store, request.app[CONFIG].store_timeout, store.load(_PROBE))
    except Exception as exc:
        log.warning("health.store_unavailable", error=type(exc).__name__)
        raise Problem(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "The store does not answer.",
            type=STORE_UNAVAILABLE,
            headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
        ) from None
    return web.json_response({"status": "ok"})

"""``GET /health``: for load balancers and container health checks."""

from __future__ import annotations

from http import HTTPStatus

import structlog
from aiohttp import web

from . import STORE
from .errors import Problem

log = structlog.get_logger("mailman.http")

routes = web.RouteTableDef()

#: An id no mail has (ULIDs are 26 characters): reading it is a cheap round trip.
_PROBE = "health-probe"


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """200 while the store answers; 503 problem when it does not."""
    try:
        await request.app[STORE].load(_PROBE)
    except Exception as exc:
        log.warning("health.store_unavailable", error=type(exc).__name__)
        raise Problem(HTTPStatus.SERVICE_UNAVAILABLE, "The store does not answer.") from None
    return web.json_response({"status": "ok"})

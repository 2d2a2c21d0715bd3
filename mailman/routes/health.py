"""Health checks, none of which needs a key or shows any mail:

- ``GET /healthz``: the process is alive and serving (always 200 while it answers),
  with each provider's circuit-breaker state as details (``providers``);
- ``GET /readyz``: this replica can accept and keep mail: the store answers a trivial
  query within ``READY_TIMEOUT_SECONDS`` and the broker answers where this process
  uses one. Otherwise 503, a problem naming what is not ready (``not_ready``) with
  every check's finding (``checks``). Provider breakers are shown there too but never
  make it 503: with every provider down, accepting and queueing mail is exactly what
  a replica should go on doing (an orchestrator takes a replica that is not ready out
  of its load balancer), and the mails go out once a provider is back.
- ``GET /health``: what it always was (the store answers), for existing load balancers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Literal

import orjson
import structlog
from aiohttp import web

from mailman.config import Config
from mailman.intake.guard import guarded
from mailman.store import BreakerState, Store

from . import CONFIG, PROBES, STORE, Probes
from .contract import PROBLEM, Answer, operation, problem
from .errors import (
    NOT_READY,
    PROBLEM_CONTENT_TYPE,
    STORE_RETRY_AFTER_SECONDS,
    STORE_UNAVAILABLE,
    Problem,
)
from .models.health import Alive, Health, NotReady, Readiness, Ready, ReadyChecks

log = structlog.get_logger("mailman.http")

routes = web.RouteTableDef()

#: An id no mail has (ULIDs are 26 characters): reading it is a cheap round trip.
_PROBE = "health-probe"

#: The longest ``/readyz`` waits for the store or the broker (or the store timeout, if shorter).
READY_TIMEOUT_SECONDS = 1.0

#: The longest ``/healthz`` waits for the breaker states shared in the store: liveness
#: probes time out after a second or so, and it must answer while the store does not.
ALIVE_STORE_SECONDS = 0.25

#: A breaker's states (``actors.breakers``), and one this process cannot know now.
OPEN, HALF_OPEN, CLOSED, UNKNOWN = "open", "half_open", "closed", "unknown"


@routes.get("/health")
@operation(
    "health",
    "For load balancers: the store answers",
    answers={
        200: Answer("Healthy", Health),
        503: problem("The store does not answer", "Retry-After"),
    },
)
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
    return web.json_response(OK)


#: Healthy, alive.
OK: Health = {"status": "ok"}


@routes.get("/healthz")
@operation(
    "healthz",
    "Liveness: the process serves (200 whatever else is down), with each provider's "
    "breaker state as details",
    answers={200: Answer("Alive", Alive)},
)
async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves, whatever else is down; each provider's breaker state as
    details (``unknown`` where neither this process nor the store can say now)."""
    app = request.app
    config, store, probes = app[CONFIG], app[STORE], app[PROBES]
    within = min(ALIVE_STORE_SECONDS, config.store_timeout)
    shared = await _shared_breakers(store, within)
    local = probes.breakers() if probes.breakers is not None else ()
    alive: Alive = {
        "status": "ok",
        "providers": provider_states(config, shared, local, time.time()),
    }
    return web.json_response(alive)


@routes.get("/readyz")
@operation(
    "readyz",
    "Readiness: this replica can accept and keep mail (the store answers, the broker answers "
    "where this process uses one); provider breakers are shown, never make it 503",
    answers={
        200: Answer("Ready", Ready),
        503: Answer("Not ready; not_ready names what", NotReady, media=PROBLEM),
    },
)
async def readyz(request: web.Request) -> web.Response:
    """200 when the store and the broker answer; else a 503 naming which does not. Provider
    breakers are reported in ``checks`` but do not count (see the module's docstring)."""
    app = request.app
    config, store, probes = app[CONFIG], app[STORE], app[PROBES]
    within = min(READY_TIMEOUT_SECONDS, config.store_timeout)
    shared, broker = await asyncio.gather(_shared_breakers(store, within), _broker(probes, within))
    local = probes.breakers() if probes.breakers is not None else ()
    providers = provider_states(config, shared, local, time.time())
    checks: ReadyChecks = {
        "store": "ok" if shared is not None else "unreachable",
        "broker": broker,
        "providers": providers,
    }
    not_ready: list[Readiness] = []
    if checks["store"] == "unreachable":
        not_ready.append("store")
    if checks["broker"] == "unreachable":
        not_ready.append("broker")
    if not not_ready:
        ready: Ready = {"status": "ready", "checks": checks}
        return web.json_response(ready)
    log.warning("health.not_ready", not_ready=not_ready)
    problem_json = Problem(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"Not ready: {', '.join(not_ready)}.",
        type=NOT_READY,
    ).as_json()
    body: NotReady = {**problem_json, "not_ready": not_ready, "checks": checks}
    return web.Response(
        status=HTTPStatus.SERVICE_UNAVAILABLE,
        body=orjson.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
    )


async def _shared_breakers(store: Store, within: float) -> list[BreakerState] | None:
    """The breaker states shared in the store (the trivial query); None if it does not answer."""
    try:
        return await guarded(store, within, store.breakers())
    except Exception as exc:
        log.warning("health.store_unavailable", error=type(exc).__name__)
        return None


async def _broker(probes: Probes, within: float) -> Literal["ok", "unreachable", "not-used"]:
    if probes.broker is None:
        return "not-used"
    try:
        async with asyncio.timeout(within):
            await probes.broker()
    except Exception as exc:
        log.warning("health.broker_unreachable", error=type(exc).__name__)
        return "unreachable"
    return "ok"


def effective_state(state: BreakerState, now: float, reset_seconds: float) -> str:
    """The state a call would meet: an open breaker past its reset time lets a trial call
    through (half-open) at the next call, though nothing has recorded that yet."""
    if (
        state.state == OPEN
        and state.opened_at is not None
        and now >= state.opened_at + reset_seconds
    ):
        return HALF_OPEN
    return state.state


def provider_states(
    config: Config,
    shared: Sequence[BreakerState] | None,
    local: Sequence[BreakerState],
    now: float,
) -> dict[str, str]:
    """Each provider of the chain's breaker state, as a call would meet it.

    This process's own breaker where it has one (the freshest), else the state
    shared in the store; a provider with neither is ``closed`` (nothing has
    opened it), or ``unknown`` while the store does not answer (``shared`` None).
    """
    known: Mapping[str, BreakerState] = {
        **{s.provider: s for s in shared or ()},
        **{s.provider: s for s in local},
    }
    states: dict[str, str] = {}
    for provider in config.chain:
        state = known.get(provider)
        if state is not None:
            states[provider] = effective_state(state, now, config.breaker.reset_seconds)
        else:
            states[provider] = CLOSED if shared is not None else UNKNOWN
    return states

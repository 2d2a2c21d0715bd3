"""The health answers: ``/health`` and ``/healthz``, ``/readyz`` ready and not ready."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, WithJsonSchema
from typing_extensions import TypedDict

from .common import Problem

#: A provider's circuit breaker as a call would meet it (``unknown``: the store does not
#: answer); the states of ``actors.breakers``, as the store keeps them (strings).
Breaker = Annotated[
    str, WithJsonSchema({"type": "string", "enum": ["closed", "open", "half_open", "unknown"]})
]
#: What ``/readyz`` may find not ready.
Readiness = Literal["store", "broker"]


class Health(TypedDict):
    """Healthy (``/health``), alive (``/healthz``)."""

    status: Literal["ok"]


class Alive(TypedDict):
    """Alive (``/healthz``), with each provider's breaker state as details."""

    status: Literal["ok"]
    providers: Annotated[
        dict[str, Breaker],
        Field(
            description="each provider's breaker state, as a call would meet it (shown, "
            "never counted: readiness is about accepting and keeping mail)"
        ),
    ]


class ReadyChecks(TypedDict):
    """What each readiness check found."""

    store: Literal["ok", "unreachable"]
    broker: Literal["ok", "unreachable", "not-used"]
    providers: Annotated[
        dict[str, Breaker],
        Field(description="each provider's breaker state, as a call would meet it"),
    ]


class Ready(TypedDict):
    """Ready for traffic."""

    status: Literal["ready"]
    checks: ReadyChecks


class NotReady(Problem):
    """Not ready: a problem naming what is not (``not_ready``), with every check's finding."""

    not_ready: list[Readiness]
    checks: ReadyChecks

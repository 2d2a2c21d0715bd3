"""What ``GET /dashboard/data`` answers: the figures the dashboard shows."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, WithJsonSchema
from typing_extensions import TypedDict

from mailman.core.model import Outcome, Status

from .common import Count, Time
from .health import Breaker

#: Outcomes of a provider call that did not get the mail taken (``skipped``: no call made).
FAILED_OUTCOMES: tuple[str, ...] = tuple(
    o.value for o in (Outcome.TRANSIENT, Outcome.MISCONFIGURED, Outcome.REJECTED, Outcome.UNKNOWN)
)


class Window(TypedDict):
    """Calls started in the chart's minutes."""

    accepted: Count
    failed: Count


#: Every attempt kept, by outcome (pending: in flight).
AttemptCounts = Annotated[
    dict[str, int],
    WithJsonSchema(
        {
            "type": "object",
            "description": "every attempt kept, by outcome (pending: in flight)",
            "required": [o.value for o in Outcome],
            "properties": {o.value: {"type": "integer", "minimum": 0} for o in Outcome},
            "additionalProperties": False,
        }
    ),
]

#: Mails by status.
StatusCounts = Annotated[
    dict[str, int],
    WithJsonSchema(
        {
            "type": "object",
            "required": [s.value for s in Status],
            "properties": {s.value: {"type": "integer", "minimum": 0} for s in Status},
            "additionalProperties": False,
        }
    ),
]


class ProviderFigures(TypedDict):
    name: str
    in_chain: bool
    breaker: Breaker
    window: Window
    attempts: AttemptCounts
    retries: Count


class Minute(TypedDict):
    minute: Time
    accepted: Count
    failed: Count


class Throughput(TypedDict):
    minutes: Count
    per_minute: Annotated[
        list[Minute], Field(description="oldest first; the last is the current minute (UTC)")
    ]


class FailedMail(TypedDict):
    id: str
    provider: str | None
    reason: str | None
    at: Time


class FailedAttempt(TypedDict):
    mail_id: str
    provider: str
    round: Count
    outcome: Annotated[str, WithJsonSchema({"type": "string", "enum": list(FAILED_OUTCOMES)})]
    reason: str | None
    at: Time


class Failures(TypedDict):
    mails: Annotated[list[FailedMail], Field(description="the newest failed mails, newest first")]
    attempts: Annotated[
        list[FailedAttempt],
        Field(
            description="the newest provider calls that did not get the mail taken "
            "(transient, misconfigured, rejected, unknown), newest first"
        ),
    ]


class DashboardData(TypedDict):
    """What the dashboard shows, read from the store: no mail content (ids, statuses,
    providers, outcomes, reasons, times and counts)."""

    generated_at: Time
    providers: Annotated[
        list[ProviderFigures],
        Field(description="the provider chain in order, then providers only seen in attempts"),
    ]
    mails: StatusCounts
    backlog: Count
    outbox: Count
    dead_letters: Count
    throughput: Throughput
    failures: Failures

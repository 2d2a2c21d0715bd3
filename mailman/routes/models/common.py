"""Shapes several answers share: problem details and their field errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, NotRequired

from pydantic import Field, ValidationError

# pydantic reads typing_extensions' TypedDict (typing's lacks what it needs before 3.12).
from typing_extensions import TypedDict

from mailman.core.validation import (
    BODY_FIELD,
    MAX_UNKNOWN_NAMED,
    UNKNOWN_FIELD,
    FieldError,
    ValidationFailed,
)


class InvalidField(TypedDict):
    """One field at fault, named as the API names it (``to[1]``, ``headers.X-Name``)."""

    field: str
    message: str


class Problem(TypedDict):
    """An error answer: problem details (RFC 9457). ``errors`` names every field at fault
    (always present on a 422)."""

    type: Annotated[str, Field(description="A URI naming the kind of problem")]
    title: str
    status: int
    detail: Annotated[str, Field(description="What went wrong, for a person")]
    errors: NotRequired[list[InvalidField]]
    mail_id: NotRequired[
        Annotated[
            str,
            Field(description="The mail an outcome-unknown 503 is about: GET /mail/{mail_id}"),
        ]
    ]


#: A time as the API writes it: ISO 8601 in UTC with milliseconds (``2025-01-02T03:04:05.678Z``).
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]

#: A count: a whole number, never negative.
Count = Annotated[int, Field(ge=0)]


def validation_failed(
    exc: ValidationError, said: Mapping[str, str] | None = None
) -> ValidationFailed:
    """A body model's ``exc`` as the API says it: each error (at most
    ``MAX_UNKNOWN_NAMED``) naming its field, an unknown or missing field in our words,
    the error types in ``said`` in the caller's, the rest in pydantic's."""
    messages = {"extra_forbidden": UNKNOWN_FIELD, "missing": "is required", **(said or {})}
    return ValidationFailed(
        [
            FieldError(
                ".".join(str(p) for p in e["loc"]) or BODY_FIELD, messages.get(e["type"], e["msg"])
            )
            for e in exc.errors()[:MAX_UNKNOWN_NAMED]
        ]
    )

"""The suppression endpoints' bodies: a tenant's suppression list, one suppression, and
``POST /suppressions``'s body."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from mailman.core.clock import iso_time
from mailman.core.model import SuppressionReason
from mailman.core.schemas import ADDRESS_FORMAT
from mailman.core.suppression import MAX_ADDRESS, normalise
from mailman.core.unsubscribe import GROUP, group_problem
from mailman.core.validation import (
    BODY_FIELD,
    FieldError,
    ValidationFailed,
    parse_address,
)
from mailman.intake.keys import TENANT
from mailman.store import Suppression

from .common import Time, validation_failed

#: A tenant name, as a JSON Schema pattern (anchored: a pattern matches anywhere).
TENANT_PATTERN = f"^{TENANT.pattern}$"


class SuppressionShown(TypedDict):
    """An address the tenant's mails do not go to."""

    address: Annotated[str, Field(description="Normalised: trimmed, lower-case")]
    reason: SuppressionReason
    tenant: str
    group: Annotated[
        str | None,
        Field(description="null: every mail; a name: the mails of that unsubscribe group"),
    ]
    source: Annotated[
        str,
        Field(
            description="Where it came from: a provider's name (its webhook event), api, cli, "
            "import:csv or import:<provider>"
        ),
    ]
    created_at: Time


class SuppressionAnswer(TypedDict):
    """One suppression."""

    suppression: SuppressionShown


class SuppressionList(TypedDict):
    """A page of suppressions, by tenant and address; ``next`` is absent on the last page."""

    suppressions: list[SuppressionShown]
    next: NotRequired[Annotated[str, Field(description="The next page's path")]]


def bare_address(value: str) -> str:
    """``value`` as a suppression keeps it: one bare address (no display name), valid as
    a recipient is, normalised; ``ValueError`` saying why not."""
    address = parse_address(value)
    if address.name or "<" in value:
        raise ValueError("must be a bare address (ann@example.com), without a display name")
    normalised = normalise(address.email)
    if len(normalised) > MAX_ADDRESS:
        raise ValueError(f"must be at most {MAX_ADDRESS} characters")
    return normalised


class NewSuppression(BaseModel):
    """``POST /suppressions``'s body; any other field is refused (422)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: Annotated[
        str,
        Field(
            description="One bare address, as a recipient is written; kept lower-case",
            json_schema_extra={"format": ADDRESS_FORMAT, "maxLength": MAX_ADDRESS},
        ),
    ]
    reason: Annotated[
        SuppressionReason,
        Field(description="Why; manual unless given"),
    ] = SuppressionReason.MANUAL
    group: Annotated[
        str | None,
        Field(
            description="Only the mails of this unsubscribe group (as a mail's "
            "unsubscribe.group names it); null: every mail of the tenant"
        ),
        WithJsonSchema(
            {"anyOf": [{"type": "string", "pattern": f"^{GROUP.pattern}$"}, {"type": "null"}]}
        ),
    ] = None
    tenant: Annotated[
        str | None,
        Field(description="Whose list (admin keys only); the key's own tenant by default"),
        WithJsonSchema(
            {"anyOf": [{"type": "string", "pattern": TENANT_PATTERN}, {"type": "null"}]}
        ),
    ] = None

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise PydanticCustomError("not_a_string", "must be a string")
        try:
            return bare_address(value)
        except ValueError as exc:
            raise PydanticCustomError("bad_address", str(exc)) from None

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, value: Any) -> Any:
        if value not in SuppressionReason.__members__.values():
            raise PydanticCustomError(
                "bad_reason", f"must be one of {', '.join(SuppressionReason)}"
            )
        return value

    @field_validator("group", mode="before")
    @classmethod
    def _group(cls, value: Any) -> Any:
        if value is not None:
            problem = group_problem(value)
            if problem is not None:
                raise PydanticCustomError("bad_group", problem)
        return value

    @field_validator("tenant", mode="before")
    @classmethod
    def _tenant(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise PydanticCustomError("not_a_string", "must be a string")
        if value is not None and not TENANT.fullmatch(value):
            raise PydanticCustomError("bad_tenant", "is not a tenant name")
        return value

    @classmethod
    def read(cls, body: object) -> NewSuppression:
        """What ``body`` (decoded JSON) says; ``ValidationFailed`` naming what is wrong."""
        if not isinstance(body, dict):
            raise ValidationFailed([FieldError(BODY_FIELD, "must be a JSON object")])
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise validation_failed(exc) from None


def shown(s: Suppression) -> SuppressionShown:
    return {
        "address": s.address,
        "reason": s.reason,
        "tenant": s.tenant,
        "group": s.group or None,
        "source": s.source,
        "created_at": iso_time(s.created_at),
    }

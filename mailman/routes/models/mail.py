"""The mail endpoints' bodies: the 201 of ``POST /mail/send``, a mail's status, the
listing, the mail shown in full, and ``POST /mail/{id}/failed``'s optional body."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from mailman.core.clock import iso_time
from mailman.core.model import (
    Address,
    Attachment,
    Attempt,
    Check,
    DeliveryEvent,
    Disposition,
    EventKind,
    Mail,
    Outcome,
    Status,
    SuppressionReason,
)
from mailman.core.validation import (
    BODY_FIELD,
    MAX_REASON,
    Errors,
    FieldError,
    ValidationFailed,
    unknown_fields,
)
from mailman.store import MailRecord

from .common import Time, validation_failed

# --- links -------------------------------------------------------------------------


class AcceptedLinks(TypedDict):
    """Where an accepted mail is read: its status, and itself."""

    status: str
    self: str


class StatusLinks(TypedDict):
    self: str
    show: Annotated[str, Field(description="The whole mail")]


class MailLinks(TypedDict):
    self: str
    status: str


# --- answers -----------------------------------------------------------------------

#: The status a mail has once accepted: ``scheduled`` while it waits for its ``send_at``,
#: ``suppressed`` if every visible recipient is on the tenant's suppression list.
FirstStatus = Annotated[
    Status,
    WithJsonSchema(
        {
            "type": "string",
            "enum": [Status.QUEUED.value, Status.SCHEDULED.value, Status.SUPPRESSED.value],
        }
    ),
]


class AcceptedMail(TypedDict):
    id: Annotated[str, Field(description="The mail's id (a ULID)")]
    status: FirstStatus
    links: list[AcceptedLinks]


class Accepted(TypedDict):
    """What ``POST /mail/send`` answers (and an idempotent repeat answers again)."""

    mail: AcceptedMail


class MailStatus(TypedDict):
    id: str
    status: Status
    links: list[StatusLinks]


class StatusAnswer(TypedDict):
    """A mail's status."""

    mail: MailStatus


class MailListed(TypedDict):
    id: str
    status: Status
    created_at: Time
    links: list[MailLinks]


class MailList(TypedDict):
    """A page of mails, newest first; ``next`` is absent on the last page."""

    mails: list[MailListed]
    next: NotRequired[Annotated[str, Field(description="The next page's path")]]


class AddressShown(TypedDict):
    """An address, and its display name when it has one."""

    email: str
    name: NotRequired[str]


class AttachmentShown(TypedDict):
    """A file as ``GET /mail/{id}`` shows it: never its content."""

    filename: str
    content_type: str
    disposition: Disposition
    content_id: NotRequired[str]
    size: Annotated[int, Field(ge=1, description="bytes, decoded")]


class TemplateShown(TypedDict):
    """The template a mail was rendered from at acceptance."""

    id: str
    name: str
    version: int


class UnsubscribeShown(TypedDict):
    """A mail's one-click unsubscribe: its group and the link its List-Unsubscribe names."""

    group: str
    url: Annotated[
        str,
        Field(
            description="The signed link on MAILMAN_PUBLIC_URL; empty: none (a tenant's "
            "default group where MAILMAN_PUBLIC_URL or MAILMAN_UNSUBSCRIBE_SECRET is unset)"
        ),
    ]
    mailto: NotRequired[str]


# ``from`` is a keyword: the functional form.
SubmittedMail = TypedDict(
    "SubmittedMail",
    {
        "from": AddressShown,
        "to": list[AddressShown],
        "subject": str,
        "cc": NotRequired[list[AddressShown]],
        "bcc": NotRequired[list[AddressShown]],
        "reply_to": NotRequired[AddressShown],
        "text": NotRequired[str],
        "html": NotRequired[str],
        "callback_url": NotRequired[str],
        "send_at": NotRequired[Time],
        "headers": NotRequired[dict[str, str]],
        "tags": NotRequired[list[str]],
        "metadata": NotRequired[dict[str, str]],
        "attachments": NotRequired[list[AttachmentShown]],
        "template": NotRequired[
            Annotated[
                TemplateShown,
                Field(description="The template subject, text and html were rendered from"),
            ]
        ],
        "unsubscribe": NotRequired[UnsubscribeShown],
    },
)
SubmittedMail.__doc__ = (
    "The mail as it was accepted (after validation); what was not given is absent."
)


class AttemptShown(TypedDict):
    """One call to one provider."""

    provider: str
    round: int
    at: Time
    outcome: Annotated[
        Outcome,
        Field(
            description="pending: the call is in flight; unknown: no answer (a timeout, or "
            "the process died mid-call): the provider may have taken the mail"
        ),
    ]
    reason: str | None
    message_id: str | None
    checked: Annotated[
        Check | None,
        Field(
            description="for an unknown attempt: what asking the provider found (null: not asked)"
        ),
    ]


#: A bounce's kind (``DeliveryEvent.bounce``): hard (permanent) or soft (temporary).
Bounce = Annotated[
    str | None, WithJsonSchema({"anyOf": [{"enum": ["hard", "soft"]}, {"type": "null"}]})
]


class EventShown(TypedDict):
    """What a provider reported after taking the mail (its webhooks)."""

    provider: str
    event: EventKind
    at: Time
    bounce: Bounce
    reason: str | None
    recipient: str | None


class SuppressedShown(TypedDict):
    """A recipient dropped because its address is on the tenant's suppression list."""

    email: Annotated[str, Field(description="The address, normalised (lower-case)")]
    reason: SuppressionReason


class MailShown(TypedDict):
    id: str
    status: Status
    provider: str | None
    provider_message_id: str | None
    reason: str | None
    created_at: Time
    updated_at: Time
    submitted: NotRequired[
        Annotated[
            SubmittedMail,
            Field(description="What was submitted; absent once the content was erased"),
        ]
    ]
    purged_at: Annotated[
        Time | None,
        Field(
            description="When the mail's content (addresses, subject, text, files, headers, "
            "metadata) was erased by MAILMAN_BODY_RETENTION; null: kept. Its status, attempts "
            "and events stay until MAILMAN_RECORD_RETENTION, then the mail is gone (404)"
        ),
    ]
    suppressed: Annotated[
        list[SuppressedShown],
        Field(
            description="Recipients dropped, at acceptance or before a provider call, because "
            "their address is suppressed (they are not in submitted's to, cc, bcc); empty once "
            "the content was erased"
        ),
    ]
    attempts: list[AttemptShown]
    events: Annotated[list[EventShown], Field(description="oldest first")]
    links: list[MailLinks]


class MailDetail(TypedDict):
    """The whole mail: what was submitted, its status, provider, attempts and events."""

    mail: MailShown


# --- requests ----------------------------------------------------------------------


class MarkFailed(BaseModel):
    """``POST /mail/{id}/failed``'s optional body; any other field is refused (422)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Annotated[
        str | None,
        Field(
            description="Why, kept as the mail's reason; empty: no reason",
            json_schema_extra={"maxLength": MAX_REASON},
        ),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _object(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise PydanticCustomError("not_an_object", "must be a JSON object")
        return data

    @field_validator("reason", mode="before")
    @classmethod
    def _string(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise PydanticCustomError("not_a_string", "must be a string")
        if isinstance(value, str) and len(value) > MAX_REASON:
            raise PydanticCustomError("too_long", f"must be at most {MAX_REASON} characters")
        return value

    @classmethod
    def read(cls, body: object) -> MarkFailed:
        """What ``body`` (decoded JSON) says; ``ValidationFailed`` naming what is wrong."""
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise validation_failed(exc) from None


class NoFields(BaseModel):
    """The optional body of ``POST /mail/{id}/sent`` and ``/retry``: nothing, or ``{}``;
    any field is refused (422), never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="NoFields")

    @classmethod
    def read(cls, body: object) -> None:
        """``ValidationFailed`` naming every field of ``body`` (decoded JSON)."""
        if not isinstance(body, dict):
            raise ValidationFailed([FieldError(BODY_FIELD, "must be a JSON object")])
        if body:
            errors = Errors()
            unknown_fields(body, frozenset(), "", errors)
            raise ValidationFailed(errors.as_list())


# --- answers from the mail model ---------------------------------------------------


def accepted(mail_id: str, status: Status) -> Accepted:
    return {
        "mail": {
            "id": mail_id,
            "status": status,
            "links": [{"status": f"/mail/{mail_id}/status", "self": f"/mail/{mail_id}"}],
        }
    }


def status_answer(mail_id: str, status: Status) -> StatusAnswer:
    return {
        "mail": {
            "id": mail_id,
            "status": status,
            "links": [{"self": f"/mail/{mail_id}/status", "show": f"/mail/{mail_id}"}],
        }
    }


def mail_links(mail_id: str) -> MailLinks:
    return {"self": f"/mail/{mail_id}", "status": f"/mail/{mail_id}/status"}


def _address(address: Address) -> AddressShown:
    if address.name:
        return {"email": address.email, "name": address.name}
    return {"email": address.email}


def _attachment(attachment: Attachment) -> AttachmentShown:
    if attachment.content_id is None:
        return {
            "filename": attachment.filename,
            "content_type": attachment.content_type,
            "disposition": attachment.disposition,
            "size": attachment.size,
        }
    return {
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "disposition": attachment.disposition,
        "content_id": attachment.content_id,
        "size": attachment.size,
    }


def submitted(mail: Mail) -> SubmittedMail:
    """The mail as ``GET /mail/{id}`` shows what was submitted: by name, type and size
    for its files, never their content."""
    out: SubmittedMail = {
        "from": _address(mail.sender),
        "to": [_address(a) for a in mail.to],
        "subject": mail.subject,
    }
    if mail.cc:
        out["cc"] = [_address(a) for a in mail.cc]
    if mail.bcc:
        out["bcc"] = [_address(a) for a in mail.bcc]
    if mail.reply_to:
        out["reply_to"] = _address(mail.reply_to)
    if mail.text is not None:
        out["text"] = mail.text
    if mail.html is not None:
        out["html"] = mail.html
    if mail.callback_url is not None:
        out["callback_url"] = mail.callback_url
    if mail.send_at is not None:
        out["send_at"] = iso_time(mail.send_at)
    if mail.headers:
        out["headers"] = dict(mail.headers)
    if mail.tags:
        out["tags"] = list(mail.tags)
    if mail.metadata:
        out["metadata"] = dict(mail.metadata)
    if mail.attachments:
        out["attachments"] = [_attachment(a) for a in mail.attachments]
    if mail.template is not None:
        used = mail.template
        out["template"] = {"id": used.id, "name": used.name, "version": used.version}
    if mail.unsubscribe is not None:
        wanted = mail.unsubscribe
        shown: UnsubscribeShown = {"group": wanted.group, "url": wanted.url}
        if wanted.mailto is not None:
            shown["mailto"] = wanted.mailto
        out["unsubscribe"] = shown
    return out


def _attempt(attempt: Attempt) -> AttemptShown:
    return {
        "provider": attempt.provider,
        "round": attempt.round,
        "at": iso_time(attempt.at),
        "outcome": attempt.outcome,
        "reason": attempt.reason,
        "message_id": attempt.message_id,
        "checked": attempt.checked,
    }


def _event(event: DeliveryEvent) -> EventShown:
    return {
        "provider": event.provider,
        "event": event.kind,
        "at": iso_time(event.at),
        "bounce": event.bounce,
        "reason": event.reason,
        "recipient": event.recipient,
    }


def detail(record: MailRecord) -> MailDetail:
    """The mail in full; a purged one without ``submitted`` (its content is gone)."""
    mail = record.mail
    shown: MailShown = {
        "id": mail.id,
        "status": record.status,
        "provider": record.provider,
        "provider_message_id": record.provider_message_id,
        "reason": record.reason,
        "created_at": iso_time(mail.created_at),
        "updated_at": iso_time(record.updated_at),
        "purged_at": None if record.purged_at is None else iso_time(record.purged_at),
        "suppressed": [{"email": s.email, "reason": s.reason} for s in mail.suppressed],
        "attempts": [_attempt(a) for a in record.attempts],
        "events": [_event(e) for e in record.events],
        "links": [mail_links(mail.id)],
    }
    if record.purged_at is None:
        shown["submitted"] = submitted(mail)
    return {"mail": shown}

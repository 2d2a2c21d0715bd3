"""The SendGrid-compatible endpoint's bodies: SendGrid's v3 Mail Send, and its errors.

``SendGridMail`` documents the request, and names the fields the endpoint takes: the
endpoint (``routes.compat_sendgrid``) translates the body itself, so that every error is
worded and placed as SendGrid words and places it (a SendGrid path such as
``personalizations.0.to.1.email``), which a model's errors are not. Each personalization
becomes a ``Submission``, so the values follow its rules (``core.schemas``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema
from typing_extensions import TypedDict

from mailman.core import schemas
from mailman.core.validation import (
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_RECIPIENTS,
    MAX_SCHEDULE_SECONDS,
)

#: SendGrid's limit on personalizations in one request.
MAX_PERSONALIZATIONS = 1000
#: The latest unix time a ``send_at`` may name (the end of year 9999).
MAX_UNIX_TIME = 253_402_300_799


def _schema(schema: dict[str, Any], description: str | None = None) -> WithJsonSchema:
    return WithJsonSchema({**schema, "description": description} if description else schema)


def _nullable(schema: dict[str, Any], description: str | None = None) -> WithJsonSchema:
    return WithJsonSchema(schemas.nullable(schema, description))


_UNIX_TIME = {
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_UNIX_TIME,
    "description": f"Unix time, whole seconds, at most {MAX_SCHEDULE_SECONDS // 3600} hours ahead",
}


class SendGridAddress(BaseModel):
    """An address; any other field is refused."""

    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, _schema(schemas.ADDRESS)]
    name: Annotated[str | None, _nullable(schemas.NAME)] = None


_ADDRESSES = list[SendGridAddress] | None


class Personalization(BaseModel):
    """One mail: its fields override the message's (headers and custom_args are merged
    over them; no header name twice, in any case)."""

    model_config = ConfigDict(extra="forbid")

    to: Annotated[list[SendGridAddress], Field(min_length=1)]
    cc: _ADDRESSES = None
    bcc: _ADDRESSES = None
    sender: SendGridAddress | None = Field(default=None, alias="from")
    subject: Annotated[str | None, _nullable(schemas.SUBJECT)] = None
    headers: Annotated[dict[str, str] | None, _nullable(schemas.HEADERS)] = None
    custom_args: Annotated[dict[str, str] | None, _nullable(schemas.METADATA)] = None
    send_at: Annotated[int | None, _nullable(_UNIX_TIME)] = None
    dynamic_template_data: Annotated[
        dict[str, Any] | None,
        WithJsonSchema(
            {
                "anyOf": [{"type": "object"}, {"type": "null"}],
                "description": "What template_id's {{variables}} are rendered with for this "
                "personalization (only with template_id); a printed variable it lacks is a 400",
            }
        ),
    ] = None


#: A body's type: text/plain or text/html, in any case, parameters ignored.
_CONTENT_TYPE = {
    "type": "string",
    "pattern": "^\\s*"
    + schemas.caseless("text/")
    + "(?:"
    + schemas.caseless("plain")
    + "|"
    + schemas.caseless("html")
    + ")\\s*(?:;[\\s\\S]*)?$",
    "description": "text/plain or text/html, once each",
}


class Content(BaseModel):
    """A body; any other field is refused."""

    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, _schema(_CONTENT_TYPE)]
    value: Annotated[str, Field(min_length=1)]


class SendGridAttachment(BaseModel):
    """A file; an inline one needs its content_id, a plain attachment's is ignored."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=schemas.inline_needs_content_id("content_id", plain_may_have=True),
    )

    content: Annotated[str, _schema(schemas.BASE64)]
    filename: Annotated[str, _schema(schemas.FILENAME)]
    type: Annotated[str | None, _nullable(schemas.CONTENT_TYPE)] = None
    disposition: Annotated[str | None, _nullable(schemas.DISPOSITION)] = None
    content_id: Annotated[
        Any,
        WithJsonSchema(
            {
                "description": f"An inline file's: {schemas.CONTENT_ID['description']}; ignored "
                "on a plain attachment"
            }
        ),
    ] = None


class SandboxMode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enable: Annotated[
        bool | None, Field(description="true: checked, answered 200, nothing stored or sent")
    ] = None


#: Any other mail setting: never enabled (only sandbox_mode may be); its other fields
#: (a footer's text...) are SendGrid's and left alone.
_OFF: dict[str, Any] = {
    "type": "object",
    "properties": {"enable": {"anyOf": [{"const": False}, {"type": "null"}]}},
    "additionalProperties": True,
}


class MailSettings(BaseModel):
    """Mail settings; only sandbox_mode may be enabled."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": _OFF})

    sandbox_mode: SandboxMode | SkipJsonSchema[None] = None


#: The largest ``asm.group_id`` taken (its digits name the unsubscribe group).
MAX_GROUP_ID = 10**18 - 1


class SendGridAsm(BaseModel):
    """SendGrid's unsubscribe group: Mailman's one-click unsubscribe, its group named by
    group_id's digits (List-Unsubscribe on Mailman; recipients who left it are dropped).
    groups_to_display is ignored."""

    model_config = ConfigDict(extra="forbid")

    group_id: Annotated[int, Field(ge=1, le=MAX_GROUP_ID)]
    groups_to_display: Annotated[list[int] | None, Field(max_length=25)] = None


class SendGridMail(BaseModel):
    """SendGrid's v3 Mail Send body, as far as Mailman honours it. template_id names a
    template of the caller's tenant (POST /templates), rendered by Mailman with each
    personalization's dynamic_template_data. asm.group_id is Mailman's one-click unsubscribe
    (group: the id's digits; one recipient per personalization). Refused with a 400 naming
    the field: sections, ip_pool_name, batch_id, personalizations[].substitutions, any enabled
    mail_settings but sandbox_mode, any other field. tracking_settings is ignored."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": {
                "required": ["reply_to", "reply_to_list"],
                "properties": {"reply_to": {"type": "object"}, "reply_to_list": {"type": "array"}},
            }
        },
    )

    personalizations: Annotated[
        list[Personalization],
        Field(
            min_length=1,
            max_length=MAX_PERSONALIZATIONS,
            description=f"At most {MAX_RECIPIENTS} recipients in all",
        ),
    ]
    sender: SendGridAddress = Field(alias="from")
    reply_to: SendGridAddress | None = None
    reply_to_list: Annotated[
        list[SendGridAddress] | None,
        Field(
            min_length=1,
            max_length=1,
            description="One address (Mailman keeps one reply-to); not with reply_to",
        ),
    ] = None
    subject: Annotated[str | None, _nullable(schemas.SUBJECT)] = None
    content: Annotated[
        list[Content] | None,
        Field(
            min_length=1,
            description="The bodies: text/plain, text/html; required unless template_id "
            "(then refused: the template renders them)",
        ),
    ] = None
    template_id: Annotated[
        str | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": 128},
                    {"type": "null"},
                ],
                "description": "A template of the caller's tenant, by id or name: its subject "
                "(SendGrid's rule: the subject given here is not used), html and text, "
                "rendered with each personalization's dynamic_template_data",
            }
        ),
    ] = None
    attachments: Annotated[
        list[SendGridAttachment] | None,
        Field(
            max_length=MAX_ATTACHMENTS,
            description=f"Files, at most {MAX_ATTACHMENT_BYTES} bytes in all (decoded)",
        ),
    ] = None
    categories: Annotated[list[str] | None, _nullable(schemas.TAGS, "Tags")] = None
    custom_args: Annotated[
        dict[str, str] | None, _nullable(schemas.METADATA, schemas.METADATA_DESCRIPTION)
    ] = None
    headers: Annotated[
        dict[str, str] | None, _nullable(schemas.HEADERS, schemas.HEADERS_DESCRIPTION)
    ] = None
    send_at: Annotated[int | None, _nullable(_UNIX_TIME)] = None
    mail_settings: MailSettings | None = None
    asm: SendGridAsm | None = None
    tracking_settings: Annotated[Any, WithJsonSchema({"description": "Ignored"})] = None


def fields_of(model: type[BaseModel]) -> frozenset[str]:
    """The names of ``model``'s fields in a body (their aliases, where they have one)."""
    return frozenset(f.alias or name for name, f in model.model_fields.items())


class SendGridError(TypedDict):
    """One thing wrong, as SendGrid words it."""

    message: str
    field: Annotated[
        str | None,
        Field(
            description="The field at fault as a SendGrid path, e.g. "
            "personalizations.0.to.1.email (null: the request as a whole)"
        ),
    ]
    help: None


class SendGridErrors(TypedDict):
    """An error answer in SendGrid's shape."""

    errors: Annotated[list[SendGridError], Field(min_length=1)]

"""The SendGrid-compatible endpoint's bodies: SendGrid's v3 Mail Send, and its errors.

``SendGridMail`` only documents the request: ``routes.compat_sendgrid`` translates the body
itself, so that every error is worded and placed as SendGrid words and places it (a
SendGrid path such as ``personalizations.0.to.1.email``), which a model's errors are not.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

#: SendGrid's limit on personalizations in one request.
MAX_PERSONALIZATIONS = 1000
#: The latest unix time a ``send_at`` may name (the end of year 9999).
MAX_UNIX_TIME = 253_402_300_799

UnixTime = Annotated[int, Field(ge=0, le=MAX_UNIX_TIME, description="Unix time, whole seconds")]


class SendGridAddress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, Field(description="The address alone")]
    name: str | None = None


class Personalization(BaseModel):
    """One mail: its fields override the message's (headers and custom_args are merged
    over them)."""

    model_config = ConfigDict(extra="forbid")

    to: Annotated[list[SendGridAddress], Field(min_length=1)]
    cc: list[SendGridAddress] | None = None
    bcc: list[SendGridAddress] | None = None
    sender: SendGridAddress | None = Field(default=None, alias="from")
    subject: str | None = None
    headers: dict[str, str] | None = None
    custom_args: dict[str, str] | None = None
    send_at: UnixTime | None = None


class Content(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text/plain", "text/html"]
    value: Annotated[str, Field(min_length=1)]


class SendGridAttachment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: Annotated[str, Field(json_schema_extra={"contentEncoding": "base64"})]
    filename: str
    type: str | None = None
    disposition: Literal["attachment", "inline"] | None = None
    content_id: str | None = None


class SandboxMode(BaseModel):
    enable: Annotated[
        bool | None,
        Field(description="true: checked, answered 200, nothing stored or sent"),
    ] = None


class MailSettings(BaseModel):
    sandbox_mode: SandboxMode | None = None


class SendGridMail(BaseModel):
    """SendGrid's v3 Mail Send body, as far as Mailman honours it. Refused with a 400
    naming the field: template_id, sections, asm, ip_pool_name, batch_id,
    personalizations[].dynamic_template_data and substitutions, any enabled mail_settings
    but sandbox_mode, any other field. tracking_settings is ignored."""

    model_config = ConfigDict(extra="forbid")

    personalizations: Annotated[
        list[Personalization], Field(min_length=1, max_length=MAX_PERSONALIZATIONS)
    ]
    sender: SendGridAddress = Field(alias="from")
    reply_to: SendGridAddress | None = None
    reply_to_list: Annotated[
        list[SendGridAddress] | None,
        Field(max_length=1, description="One address at most (Mailman keeps one reply-to)"),
    ] = None
    subject: str | None = None
    content: list[Content] | None = None
    attachments: list[SendGridAttachment] | None = None
    categories: Annotated[list[str] | None, Field(description="Tags")] = None
    custom_args: Annotated[dict[str, str] | None, Field(description="Metadata")] = None
    headers: Annotated[dict[str, str] | None, Field(description="X- headers only")] = None
    send_at: UnixTime | None = None
    mail_settings: MailSettings | None = None
    tracking_settings: Annotated[object, Field(description="Ignored")] = None


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

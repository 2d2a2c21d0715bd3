"""The Mailgun-compatible endpoint's bodies: Mailgun's Messages API form, and its answers.

The form models only document the request: ``routes.compat_mailgun`` reads the form itself
(its fields repeat, its files stream) and words every error as Mailgun does,
``{"message": ...}`` naming the form field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from typing_extensions import TypedDict

from mailman.core.validation import MAX_SCHEDULE_SECONDS, MAX_TAGS

#: What Mailgun answers for an accepted message (mypy holds the two to the same text).
Queued = Literal["Queued. Thank you."]
QUEUED: Queued = "Queued. Thank you."

#: One address, or several separated by commas; or the field repeated.
Addresses = Annotated[
    str | list[str],
    Field(description="one address, or several separated by commas (or the field repeated)"),
]


class MailgunForm(BaseModel):
    """Mailgun's Messages API form. Also h:X-<Name> (custom headers) and v:<name>
    (metadata). Ignored: o:tracking, o:tracking-clicks, o:tracking-opens, o:dkim... Refused
    (400): template, t:*, recipient-variables, amp-html, other o: options, h: headers other
    than Reply-To and X-."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"additionalProperties": {"type": "string"}}
    )

    sender: str = Field(alias="from")
    to: Addresses
    cc: Addresses | SkipJsonSchema[None] = None
    bcc: Addresses | SkipJsonSchema[None] = None
    subject: str | SkipJsonSchema[None] = None
    text: str | SkipJsonSchema[None] = None
    html: str | SkipJsonSchema[None] = None
    tag: Annotated[
        str | Annotated[list[str], Field(max_length=MAX_TAGS)] | SkipJsonSchema[None],
        Field(alias="o:tag"),
    ] = None
    deliverytime: Annotated[
        str | SkipJsonSchema[None],
        Field(
            alias="o:deliverytime",
            description="RFC 2822 date (e.g. 'Thu, 13 Oct 2011 18:02:00 +0000'), at most "
            f"{MAX_SCHEDULE_SECONDS // 3600} hours ahead: the mail waits 'scheduled'",
        ),
    ] = None
    testmode: Annotated[
        Literal["yes", "no", "true", "false"] | SkipJsonSchema[None],
        Field(
            alias="o:testmode",
            description="yes: validated and answered 200, nothing stored or sent",
        ),
    ] = None
    reply_to: Annotated[str | SkipJsonSchema[None], Field(alias="h:Reply-To")] = None


#: File parts.
Files = list[bytes]


class MailgunMultipartForm(MailgunForm):
    """Mailgun's Messages API form as multipart/form-data: the form, and its files."""

    attachment: Files | SkipJsonSchema[None] = None
    inline: Annotated[
        Files | SkipJsonSchema[None],
        Field(description="Inline files; the HTML refers to each as cid:<file name>"),
    ] = None


class MailgunQueued(TypedDict):
    """Queued (or, with o:testmode=yes, checked and dropped)."""

    id: Annotated[str, Field(description="<mail id@sender's domain>, the Message-ID")]
    message: Queued


class MailgunError(TypedDict):
    """An error answer in Mailgun's shape."""

    message: Annotated[str, Field(description="Names the form field")]

"""The webhooks' bodies and answer: what the providers post, what Mailman answers.

The request models only document what the providers send: ``routes.webhooks`` parses the
events itself, after checking the signature over the raw bytes, and words a malformed body
as its 400s say (other fields, and other events, are skipped).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from .common import Count


class SendGridEvent(BaseModel):
    """One event of SendGrid's Event Webhook (the fields Mailman reads)."""

    model_config = ConfigDict(extra="allow")

    event: str
    email: str | None = None
    timestamp: int | None = None
    sg_event_id: str | None = None
    sg_message_id: str | None = None
    mail_id: Annotated[str | None, Field(description="the custom_args Mailman sends")] = None
    type: Literal["bounce", "blocked"] | None = None
    reason: str | None = None
    response: str | None = None


#: SendGrid's Event Webhook posts an array of events.
SendGridEvents = list[SendGridEvent]


class MailgunSignature(BaseModel):
    model_config = ConfigDict(extra="allow")

    timestamp: str
    token: str
    signature: str


class MailgunEventData(BaseModel):
    model_config = ConfigDict(extra="allow")

    event: str
    timestamp: float
    recipient: str | None = None
    severity: Literal["permanent", "temporary"] | None = None
    reason: str | None = None
    user_variables: dict[str, Any] | None = Field(default=None, alias="user-variables")
    message: dict[str, Any] | None = None


class MailgunWebhook(BaseModel):
    """One Mailgun webhook: an HMAC-signed event."""

    model_config = ConfigDict(extra="allow")

    signature: MailgunSignature
    event_data: MailgunEventData = Field(alias="event-data")


class ResendWebhook(BaseModel):
    """One Resend webhook event (the fields Mailman reads)."""

    model_config = ConfigDict(extra="allow")

    type: str
    created_at: str | None = None
    data: dict[str, Any] = Field(
        description="the email: email_id (Resend's id), to, tags (mail_id), bounce, failed"
    )


class PostmarkEvent(BaseModel):
    """One Postmark webhook: a record of one kind (the fields Mailman reads)."""

    model_config = ConfigDict(extra="allow")

    RecordType: str
    MessageID: str | None = None
    Metadata: Annotated[
        dict[str, Any] | None, Field(description="holds the mail_id Mailman sends")
    ] = None
    Recipient: str | None = None
    Email: str | None = None
    Type: str | None = None
    TypeCode: int | None = None
    ID: int | None = None
    Description: str | None = None
    Details: str | None = None
    DeliveredAt: str | None = None
    BouncedAt: str | None = None
    ReceivedAt: str | None = None
    ChangedAt: str | None = None
    SuppressSending: bool | None = None
    SuppressionReason: str | None = None


class WebhookAnswer(TypedDict):
    """Handled: counts of the events kept, seen before, for mails this service does not
    have, and skipped."""

    recorded: Count
    duplicate: Count
    unknown: Count
    skipped: Count

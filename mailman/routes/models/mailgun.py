"""The Mailgun-compatible endpoint's bodies: Mailgun's Messages API form, and its answers.

The form models document the request, and name the fields the endpoint treats itself:
``routes.compat_mailgun`` reads the form (its fields repeat, its files stream) and words
every error as Mailgun does, ``{"message": ...}`` naming the form field. The form becomes
a ``Submission``, so its values follow its rules (``core.schemas``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from typing_extensions import TypedDict

from mailman.core import schemas
from mailman.core.validation import (
    MAX_ATTACHMENTS,
    MAX_METADATA_VALUE,
    MAX_RECIPIENTS,
    MAX_SCHEDULE_SECONDS,
)

#: What Mailgun answers for an accepted message (mypy holds the two to the same text).
Queued = Literal["Queued. Thank you."]
QUEUED: Queued = "Queued. Thank you."

#: Options the provider's account settings decide: accepted and ignored.
IGNORED_OPTIONS = frozenset(
    {
        "o:tracking",
        "o:tracking-clicks",
        "o:tracking-opens",
        "o:tracking-pixel-location-top",
        "o:dkim",
        "o:secondary-dkim",
        "o:secondary-dkim-public",
    }
)
#: Fields Mailman cannot honour, and why.
UNSUPPORTED = {
    "recipient-variables": "batch sending is not supported: Mailman would send one mail "
    "to every recipient; send one message per recipient",
    "amp-html": "Mailman sends no AMP part; send text or html",
}
#: The form fields of files.
FILE_FIELDS = ("attachment", "inline")
#: o:testmode's values, in any case: whether test mode is on.
TESTMODE = {"yes": True, "true": True, "no": False, "false": False}

#: The document's format for a recipient field's value.
MAILBOX_LIST_FORMAT = "mailbox-list"
#: The document's format for an RFC 2822 date.
RFC2822_FORMAT = "rfc2822-date-time"

_MAILBOXES = schemas.string(
    format=MAILBOX_LIST_FORMAT,
    description="One address, or several separated by commas; each as in POST /mail/send",
)
_RECIPIENTS = {"anyOf": [_MAILBOXES, {"type": "array", "items": _MAILBOXES}]}
_TO = {
    "anyOf": [_MAILBOXES, {"type": "array", "items": _MAILBOXES, "minItems": 1}],
    "description": f"At most {MAX_RECIPIENTS} in to, cc and bcc together",
}
#: File parts, each not empty. (Said in words: schemathesis checks a file as an empty
#: string, so a minLength would make every file invalid to it.)
_FILES = {
    "type": "array",
    "items": {"type": "string", "format": "binary", "description": "A file, not empty"},
}
_REPLY_TO = "^h:" + schemas.caseless("Reply-To") + "$"
_HEADER = "^h:" + schemas.HEADER_NAME["pattern"].removeprefix("^")
_VARIABLE = "^v:" + schemas.METADATA_KEY["pattern"].removeprefix("^")
#: Field names the endpoint refuses: other o: options, t:, h: headers but Reply-To and X-,
#: the unsupported fields, a file field without a file.
_REFUSED_NAMES = (
    "^(?:o:|t:(?!(?:version|variables|text)$)|h:|v:|(?:"
    + "|".join(sorted(UNSUPPORTED))
    + "|"
    + "|".join(schemas.caseless(f) for f in FILE_FIELDS)
    + ")$)"
)


#: A multipart part's name stands in a header: no control characters.
_PART_NAME = "^[^\\u0000-\\u001f\\u007f]*$"


def _form_schema(files: bool) -> dict[str, Any]:
    """What the form's fields beside its properties may be (``files``: as multipart)."""
    named = [*IGNORED_OPTIONS, *(FILE_FIELDS if files else ())]
    other: dict[str, Any] = {"not": {"pattern": _REFUSED_NAMES}}
    if files:
        other["pattern"] = _PART_NAME
    return {
        "patternProperties": {
            _REPLY_TO: schemas.MAILBOX,
            _HEADER: schemas.HEADER_VALUE,
            _VARIABLE: schemas.string(maxLength=MAX_METADATA_VALUE),
        },
        "additionalProperties": {"type": "string"},
        "propertyNames": {
            "anyOf": [
                {"enum": sorted(named)},
                {"pattern": _REPLY_TO},
                {"pattern": _HEADER},
                {"pattern": _VARIABLE},
                other,
            ]
        },
        "anyOf": [
            *(
                {"required": [name], "properties": {name: schemas.string(minLength=1)}}
                for name in ("text", "html")
            ),
            {"required": ["template"], "properties": {"template": {"type": "string"}}},
        ],
    }


class MailgunForm(BaseModel):
    """Mailgun's Messages API form. Also h:X-<Name> (custom headers, as POST /mail/send's)
    and v:<name> (metadata, as POST /mail/send's). Ignored: o:tracking, o:tracking-clicks,
    o:tracking-opens, o:dkim..., t:text and fields Mailgun does not define. template names a
    template of the caller's tenant (POST /templates), rendered by Mailman with t:variables
    (or h:X-Mailgun-Template-Variables; v: variables too, under them). Refused (400):
    other t: options, recipient-variables, amp-html, other o: options, h: headers other
    than Reply-To and X-. An empty subject, text or html counts as left out."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_form_schema(files=False))

    sender: Annotated[str, Field(alias="from"), WithJsonSchema(schemas.MAILBOX)]
    to: Annotated[str | list[str], WithJsonSchema(_TO)]
    cc: Annotated[str | list[str] | None, WithJsonSchema(_RECIPIENTS)] = None
    bcc: Annotated[str | list[str] | None, WithJsonSchema(_RECIPIENTS)] = None
    subject: Annotated[str | None, WithJsonSchema(schemas.SUBJECT)] = None
    text: Annotated[str | None, WithJsonSchema({"type": "string"})] = None
    html: Annotated[str | None, WithJsonSchema({"type": "string"})] = None
    tag: Annotated[
        str | list[str] | None,
        Field(alias="o:tag"),
        WithJsonSchema({"anyOf": [schemas.TAG, schemas.TAGS]}),
    ] = None
    deliverytime: Annotated[
        str | None,
        Field(alias="o:deliverytime"),
        WithJsonSchema(
            schemas.string(
                format=RFC2822_FORMAT,
                description="RFC 2822 date (e.g. 'Thu, 13 Oct 2011 18:02:00 +0000'; without "
                f"a zone, UTC), at most {MAX_SCHEDULE_SECONDS // 3600} hours ahead: the "
                "mail waits 'scheduled'",
            )
        ),
    ] = None
    template: Annotated[
        str | None,
        WithJsonSchema(
            schemas.string(
                minLength=1,
                maxLength=128,
                pattern="^[A-Za-z0-9._-]+$",
                description="A template of the caller's tenant, by name or id: its html and "
                "text (and its subject, unless subject is given) rendered with t:variables; "
                "text and html are not given with it",
            )
        ),
    ] = None
    template_version: Annotated[
        str | None,
        Field(alias="t:version"),
        WithJsonSchema(
            schemas.string(
                pattern="^[1-9][0-9]{0,8}$",
                description="The template's version (Mailman numbers them); missing: its latest",
            )
        ),
    ] = None
    template_variables: Annotated[
        str | None,
        Field(alias="t:variables"),
        WithJsonSchema(
            schemas.string(
                description="A JSON object: what the template's {{variables}} are rendered "
                "with; a printed variable it lacks is a 400 naming t:variables"
            )
        ),
    ] = None
    template_text: Annotated[
        str | None,
        Field(alias="t:text"),
        WithJsonSchema(schemas.string(description="Ignored: the template's own text part is sent")),
    ] = None
    testmode: Annotated[
        str | None,
        Field(alias="o:testmode"),
        WithJsonSchema(
            schemas.string(
                pattern="^\\s*(?:" + "|".join(schemas.caseless(v) for v in TESTMODE) + ")\\s*$",
                description="yes (or true): validated and answered 200, nothing stored or "
                "sent; no (or false): sent",
            )
        ),
    ] = None


#: File parts.
Files = Annotated[list[bytes] | None, WithJsonSchema(_FILES)]


class MailgunMultipartForm(MailgunForm):
    """Mailgun's Messages API form as multipart/form-data: the form, and its files."""

    model_config = ConfigDict(json_schema_extra=_form_schema(files=True))

    attachment: Annotated[
        Files,
        Field(description=f"Files; with the inline ones at most {MAX_ATTACHMENTS}"),
    ] = None
    inline: Annotated[
        Files,
        Field(
            description="Inline files; the HTML refers to each as cid:<file name>, unique in "
            "any case"
        ),
    ] = None


class MailgunQueued(TypedDict):
    """Queued (or, with o:testmode=yes, checked and dropped)."""

    id: Annotated[str, Field(description="<mail id@sender's domain>, the Message-ID")]
    message: Queued


class MailgunError(TypedDict):
    """An error answer in Mailgun's shape."""

    message: Annotated[str, Field(description="Names the form field")]

"""A mail as a caller submits it: the typed model every entry point builds, and its validation.

``Submission`` is the contract of ``POST /mail/send`` (its JSON Schema is the
request body of the OpenAPI document) and the one road into the mail model for
every other entry point: the SendGrid- and Mailgun-compatible endpoints and
SMTP build a ``Submission`` from what their clients sent, with typed values
where they have them (a file's bytes, a ``datetime``), never through another
entry point's JSON. ``Submission.check`` validates, ``_mail`` builds the
``Mail``; ``parse_mail`` does both.

Each field's rule is a function of ``core.validation`` (no I/O), so every
entry point refuses exactly the same things. What is wrong is raised as one
``ValidationFailed`` naming every bad field, one message per field, in the
order of the fields below, named as the API names them (``to[1]``,
``headers.X-Name``, ``attachments[0].filename``). An unknown field (``Cc``,
``attachment``, ``callbackUrl``...) is refused, named, rather than dropped: a
mail without what the caller meant it to have is another mail. ``null`` is the
same as leaving an optional field out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from . import schemas, templates, validation
from . import unsubscribe as one_click
from .callbacks import MAX_URL, url_problem
from .model import Address, Attachment, Mail, Unsubscribe
from .validation import (
    BODY_FIELD,
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_EXTRA_BYTES,
    MAX_METADATA_BYTES,
    MAX_RECIPIENTS,
    MAX_SCHEDULE_SECONDS,
    MAX_SUBJECT,
    MAX_TAG,
    MAX_TAGS,
    CallbackRules,
    Errors,
    FieldError,
    ValidationFailed,
)

#: The fields, in the order their errors are reported.
FIELDS = (
    "to",
    "cc",
    "bcc",
    "from",
    "reply_to",
    "subject",
    "content",
    "text",
    "html",
    "callback_url",
    "send_at",
    "headers",
    "tags",
    "metadata",
    "attachments",
    "template",
    "template_version",
    "data",
    "unsubscribe",
)
_ORDER = {name: i for i, name in enumerate(FIELDS)}
_KNOWN = frozenset(FIELDS)
_RECIPIENT_FIELDS = ("to", "cc", "bcc")


#: No callbacks: the rules when none are given.
NO_CALLBACKS = CallbackRules()


class Context(NamedTuple):
    """What a submission is checked against besides its own values: the validation context."""

    #: The id the mail gets (its metadata's size counts it).
    mail_id: str
    #: Now (unix time): ``send_at`` may be at most ``MAX_SCHEDULE_SECONDS`` after it.
    now: float
    #: What ``callback_url`` may be for this caller.
    callbacks: CallbackRules = NO_CALLBACKS


class _Run:
    """One validation's context: the rules, and what the field rules leave for the mail's."""

    __slots__ = ("errors", "given", "kept", "too_many_recipients")

    def __init__(self, given: Context) -> None:
        self.given = given
        #: What is wrong, field by field (the first message of each).
        self.errors = Errors()
        #: More than ``MAX_RECIPIENTS`` recipients: their entries are not checked one by one.
        self.too_many_recipients = False
        #: The valid entries of ``headers``, ``tags`` and ``metadata``, for their joint limit.
        self.kept: dict[str, tuple[Any, ...]] = {}


def _not_here(value: Any) -> Any:
    """``Submission``'s fields are checked by ``Submission.check`` (the rules of the mail as
    a whole too), never one by one through pydantic."""
    raise TypeError("a Submission is checked by Submission.check, not by pydantic")


# --- one rule per field -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    """A field that ``check`` validates (adding to ``Errors``), documented by ``schema``."""

    check: Callable[[Any, Errors, _Run], Any]
    schema: dict[str, Any]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(_not_here)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return self.schema


def _recipients(name: str, *, required: bool) -> Callable[[Any, Errors, _Run], Any]:
    def check(value: Any, errors: Errors, run: _Run) -> tuple[Address, ...]:
        if value is None:
            if required:
                errors.add(name, "is required")
            return ()
        entries = validation.address_list(value, name, errors)
        if entries is None:
            return ()
        if required and not entries:
            errors.add(name, "must name at least one recipient")
        if run.too_many_recipients:
            return ()
        return validation.addresses(name, entries, errors)

    return check


def _sender(name: str, *, required: bool) -> Callable[[Any, Errors, _Run], Any]:
    """``from`` or ``reply_to``: one address, of the few a service sends from (kept parsed:
    ``validation.sender_address``)."""

    def check(value: Any, errors: Errors, run: _Run) -> Address | None:
        if value is None:
            if required:
                errors.add(name, "is required")
            return None
        return validation.one_address(value, name, errors, validation.sender_address)

    return check


def _string(name: str) -> Callable[[Any, Errors, _Run], str | None]:
    """An optional string that may hold any character but a lone surrogate (a body)."""

    def check(value: Any, errors: Errors, run: _Run) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            errors.add(name, "must be a string")
            return None
        bad = validation.NOT_ENCODABLE.search(value)
        if bad is not None:
            errors.add(
                name, f"must not contain a lone surrogate ({validation.describe(bad.group())})"
            )
            return None
        return value

    return check


def _subject(value: Any, errors: Errors, run: _Run) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        errors.add("subject", "must be a string")
        return None
    problem = validation.header_problem(value)
    if problem is not None:
        errors.add("subject", problem)
    elif len(value) > MAX_SUBJECT:
        errors.add("subject", f"must be at most {MAX_SUBJECT} characters")
    return value


def _callback_url(value: Any, errors: Errors, run: _Run) -> str | None:
    """Checked without a DNS lookup (the intake resolves the host)."""
    if value is None:
        return None
    if not isinstance(value, str):
        errors.add("callback_url", "must be a string")
        return None
    allowed = run.given.callbacks
    if not allowed.enabled:
        errors.add(
            "callback_url", "callbacks are off here: the server needs MAILMAN_CALLBACK_SECRET"
        )
        return None
    problem = url_problem(value, allow_http=allowed.allow_http, allow_private=allowed.allow_private)
    if problem is not None:
        errors.add("callback_url", problem)
        return None
    return value


def _send_at(value: Any, errors: Errors, run: _Run) -> float | None:
    return validation.send_at(value, run.given.now, errors)


def _kept(name: str, check: Callable[[Any, Errors, _Run], tuple[Any, ...]]) -> Any:
    """``check``, its valid entries kept for the joint limit of headers, tags and metadata."""

    def keep(value: Any, errors: Errors, run: _Run) -> tuple[Any, ...]:
        out = check(value, errors, run)
        if out:
            run.kept[name] = out
        return out

    return keep


def _headers(value: Any, errors: Errors, run: _Run) -> tuple[tuple[str, str], ...]:
    return validation.headers(value, errors)


def _tags(value: Any, errors: Errors, run: _Run) -> tuple[str, ...]:
    return validation.tags(value, errors)


def _metadata(value: Any, errors: Errors, run: _Run) -> tuple[tuple[str, str], ...]:
    return validation.metadata(value, run.given.mail_id, errors)


def _attachments(value: Any, errors: Errors, run: _Run) -> tuple[Attachment, ...]:
    return validation.attachments(value, errors)


def _template(value: Any, errors: Errors, run: _Run) -> str | None:
    """A template's name or id (the intake renders it before the mail is checked)."""
    if value is None:
        return None
    problem = templates.name_problem(value)
    if problem is not None:
        errors.add("template", problem)
        return None
    return str(value)


def _template_version(value: Any, errors: Errors, run: _Run) -> int | None:
    if value is None:
        return None
    problem = templates.version_problem(value)
    if problem is not None:
        errors.add("template_version", problem)
        return None
    return int(value)


def _data(value: Any, errors: Errors, run: _Run) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        errors.add("data", "must be an object")
        return None
    return dict(value)


_UNSUBSCRIBE_FIELDS = frozenset(("group", "mailto"))


def _unsubscribe(value: Any, errors: Errors, run: _Run) -> Unsubscribe | None:
    """``{"group", "mailto"?}``: the group signed into the link (by the intake), and an
    address offered as ``mailto:`` beside it. ``false``: none, not even the tenant's
    default group (``intake.accept``: ``opts_out``)."""
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping):
        errors.add("unsubscribe", 'must be an object: {"group": "newsletter"}, or false')
        return None
    before = len(errors)
    validation.unknown_fields(value, _UNSUBSCRIBE_FIELDS, "unsubscribe", errors)
    group = value.get("group")
    problem = "is required" if group is None else one_click.group_problem(group)
    if problem is not None:
        errors.add("unsubscribe.group", problem)
    mailto = None
    if value.get("mailto") is not None:
        address = validation.one_address(value["mailto"], "unsubscribe.mailto", errors)
        if address is not None and (address.name or "<" in str(value["mailto"])):
            errors.add("unsubscribe.mailto", "must be a bare address, without a display name")
        elif address is not None:
            mailto = address.email
    if len(errors) > before:
        return None
    return Unsubscribe(group=str(group), mailto=mailto)


# --- what the OpenAPI document says of each field ------------------------------------


def _recipients_schema(required: bool, description: str) -> dict[str, Any]:
    listed = {"type": "array", "items": schemas.MAILBOX, "maxItems": MAX_RECIPIENTS}
    options: list[dict[str, Any]] = [
        schemas.MAILBOX,
        {**listed, "minItems": 1} if required else listed,
    ]
    if not required:
        options.append({"type": "null"})
    return {"anyOf": options, "description": description}


_nullable = schemas.nullable

#: A file (``validation.attachments``).
_FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "File",
    "required": ["filename", "content"],
    "additionalProperties": False,
    "properties": {
        "filename": schemas.FILENAME,
        "content": schemas.BASE64,
        "content_type": _nullable(schemas.CONTENT_TYPE),
        "disposition": _nullable(schemas.DISPOSITION),
        "content_id": _nullable(schemas.CONTENT_ID),
    },
    **schemas.inline_needs_content_id("content_id"),
}

#: The rules of the mail as a whole: JSON Schema can say a non-empty body, the rest in words.
_WHOLE: dict[str, Any] = {
    "description": "A mail to send. At least one non-empty body (content or text, or html), "
    "or a template that renders them; "
    "content and text equal when both are given; at most "
    f"{MAX_RECIPIENTS} recipients in to, cc and bcc together; headers, tags and metadata "
    f"together at most {MAX_EXTRA_BYTES} bytes as Mailgun form fields.",
    "anyOf": [
        *(
            {"required": [name], "properties": {name: schemas.string(minLength=1)}}
            for name in ("content", "text", "html")
        ),
        {"required": ["template"], "properties": {"template": {"type": "string"}}},
    ],
}


class Submission(BaseModel):
    """A mail to send: ``POST /mail/send``'s body, and what every other entry point builds.

    At least one non-empty body (``content``/``text`` or ``html``); at most
    ``MAX_RECIPIENTS`` recipients in ``to``, ``cc`` and ``bcc`` together; headers,
    tags and metadata together at most ``MAX_EXTRA_BYTES`` as Mailgun form fields.
    """

    # Unknown fields are refused by ``check`` (worded and ordered like every other error);
    # the document says so with ``additionalProperties: false``.
    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        title="MailSubmission",
        json_schema_extra={**_WHOLE, "additionalProperties": False},
    )

    to: Annotated[
        tuple[Address, ...],
        _Rule(_recipients("to", required=True), _recipients_schema(True, "Who gets the mail")),
    ]
    cc: Annotated[
        tuple[Address, ...],
        _Rule(_recipients("cc", required=False), _recipients_schema(False, "Copies")),
    ] = ()
    bcc: Annotated[
        tuple[Address, ...],
        _Rule(_recipients("bcc", required=False), _recipients_schema(False, "Blind copies")),
    ] = ()
    sender: Annotated[
        Address | None,
        _Rule(_sender("from", required=True), {**schemas.MAILBOX, "description": "Who sends it"}),
    ] = Field(alias="from")
    reply_to: Annotated[
        Address | None,
        _Rule(
            _sender("reply_to", required=False),
            _nullable(schemas.MAILBOX, "Where answers go"),
        ),
    ] = None
    subject: Annotated[
        str | None,
        _Rule(
            _subject,
            _nullable(schemas.SUBJECT, "Missing or empty: MAILMAN_DEFAULT_SUBJECT"),
        ),
    ] = None
    content: Annotated[
        str | None,
        _Rule(_string("content"), _nullable({"type": "string"}, "The plain-text body")),
    ] = None
    text: Annotated[
        str | None,
        _Rule(
            _string("text"),
            _nullable({"type": "string"}, "The same as content; if both, they must be equal"),
        ),
    ] = None
    html: Annotated[
        str | None, _Rule(_string("html"), _nullable({"type": "string"}, "The HTML body"))
    ] = None
    callback_url: Annotated[
        str | None,
        _Rule(
            _callback_url,
            _nullable(
                {"type": "string", "format": "uri", "maxLength": MAX_URL},
                "Each status change is POSTed here, signed: https, a public host "
                "(only with MAILMAN_CALLBACK_SECRET set)",
            ),
        ),
    ] = None
    send_at: Annotated[
        float | None,
        _Rule(
            _send_at,
            _nullable(
                {"type": "string", "format": "date-time"},
                f"When to send it: RFC 3339 with its offset, at most "
                f"{MAX_SCHEDULE_SECONDS // 3600} hours ahead; a time past sends at once",
            ),
        ),
    ] = None
    headers: Annotated[
        tuple[tuple[str, str], ...],
        _Rule(
            _kept("headers", _headers),
            _nullable(schemas.HEADERS, schemas.HEADERS_DESCRIPTION),
        ),
    ] = ()
    tags: Annotated[
        tuple[str, ...],
        _Rule(
            _kept("tags", _tags),
            _nullable(schemas.TAGS, "Tags (SendGrid categories, Mailgun o:tag)"),
        ),
    ] = ()
    metadata: Annotated[
        tuple[tuple[str, str], ...],
        _Rule(
            _kept("metadata", _metadata),
            _nullable(schemas.METADATA, schemas.METADATA_DESCRIPTION),
        ),
    ] = ()
    attachments: Annotated[
        tuple[Attachment, ...],
        _Rule(
            _attachments,
            _nullable(
                {"type": "array", "maxItems": MAX_ATTACHMENTS, "items": _FILE_SCHEMA},
                f"Files, at most {MAX_ATTACHMENTS} and {MAX_ATTACHMENT_BYTES} bytes in all "
                "(decoded); more is a 413",
            ),
        ),
    ] = ()

    template: Annotated[
        str | None,
        _Rule(
            _template,
            _nullable(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": templates.MAX_NAME,
                    "pattern": "^[A-Za-z0-9._-]+$",
                },
                "A template of the caller's tenant, by name or id (POST /templates): its "
                "subject, html and text, rendered with data, are the mail's; give none of "
                "subject, content, text and html with it",
            ),
        ),
    ] = None
    template_version: Annotated[
        int | None,
        _Rule(
            _template_version,
            _nullable(
                {"type": "integer", "minimum": 1, "maximum": templates.MAX_VERSION},
                "The template's version; missing: its latest (only with template)",
            ),
        ),
    ] = None
    data: Annotated[
        dict[str, Any] | None,
        _Rule(
            _data,
            _nullable(
                {"type": "object"},
                "What the template's {{variables}} are rendered with (only with template); "
                "a variable the template prints but data lacks is a 422 naming it",
            ),
        ),
    ] = None

    unsubscribe: Annotated[
        Unsubscribe | None,
        _Rule(
            _unsubscribe,
            {
                "anyOf": [
                    {
                        "type": "object",
                        "title": "UnsubscribeRequest",
                        "required": ["group"],
                        "additionalProperties": False,
                        "properties": {
                            "group": {
                                "type": "string",
                                "pattern": f"^{one_click.GROUP.pattern}$",
                                "description": "The unsubscribe group (newsletter): a recipient "
                                "who unsubscribes no longer gets its mails",
                            },
                            "mailto": _nullable(
                                {"type": "string", "format": "email"},
                                "An address offered as mailto: beside the link",
                            ),
                        },
                    },
                    {"const": False},
                    {"type": "null"},
                ],
                "description": "One-click unsubscribe (RFC 8058): the mail carries "
                "List-Unsubscribe (a signed link on MAILMAN_PUBLIC_URL) and "
                "List-Unsubscribe-Post; only for a mail to one recipient (one to, no cc or "
                "bcc), and only with "
                "MAILMAN_PUBLIC_URL and MAILMAN_UNSUBSCRIBE_SECRET set. Recipients who "
                "unsubscribed from the group, or from every mail, are dropped. Left out: the "
                "tenant's default group, if it has one (mailman tenants set "
                "--unsubscribe-group) and the mail has one recipient; false: no group, not "
                "even the tenant's default",
            },
        ),
    ] = None

    @classmethod
    def check(cls, values: Mapping[str, Any], given: Context) -> dict[str, Any]:
        """The submission ``values`` describe (a decoded JSON body, or what an entry point
        built), checked: each field's value by its name; ``ValidationFailed`` naming every
        bad field.

        Each given field's rule, then the rules of the mail as a whole; every error at
        once, in the fields' order. The rules are called here, not through pydantic,
        which called each through a wrapper of its own and built a model for the mail to
        be copied from (``docs/performance.md``, "Checking a mail")."""
        run = _Run(given)
        errors = run.errors
        validation.unknown_fields(values, _KNOWN, "", errors)
        _count_recipients(values, errors, run)
        checked = dict(_LEFT_OUT)
        for key, value in values.items():
            field = _CHECKED.get(key)
            if field is not None:  # an unknown one is refused above
                checked[field.name] = field.rule(value, errors, run)
        for key in _REQUIRED:
            if key not in values:
                errors.add(key, "is required")
        _bodies(values, errors)
        if values.get("template") is None:
            for name in ("template_version", "data"):
                if values.get(name) is not None:
                    errors.add(name, "only with template")
        if values.get("unsubscribe") not in (None, False) and _recipient_count(values) != 1:
            errors.add(
                "unsubscribe",
                "only for a mail to one recipient (one to, no cc or bcc): the link names "
                "who unsubscribes",
            )
        kept = run.kept
        if kept:
            headers, tags, metadata = (kept.get(n, ()) for n in ("headers", "tags", "metadata"))
            if validation.extra_bytes(headers, tags, metadata) > MAX_EXTRA_BYTES:
                errors.add(
                    "metadata" if metadata else "tags" if tags else "headers",
                    f"headers, tags and metadata together must be at most {MAX_EXTRA_BYTES} bytes",
                )
        if errors:
            raise ValidationFailed(sorted(errors.as_list(), key=_position), status=errors.status)
        return checked


class _Checked(NamedTuple):
    """A field of ``Submission`` as ``Submission.check`` reads it: its name and its rule."""

    name: str
    rule: Callable[[Any, Errors, _Run], Any]


#: Each field by its key in the values (``from`` for ``sender``). The order the rules run
#: in does not matter: each adds errors only about its own field and reads only what
#: ``check`` set before them.
_CHECKED = {
    info.alias or name: _Checked(name, next(m for m in info.metadata if isinstance(m, _Rule)).check)
    for name, info in Submission.model_fields.items()
}
#: Each optional field's value when it is left out, by name (each immutable: one for all).
_LEFT_OUT = {
    name: info.get_default(call_default_factory=True)
    for name, info in Submission.model_fields.items()
    if not info.is_required()
}
#: The keys that may not be left out.
_REQUIRED = tuple(
    info.alias or name for name, info in Submission.model_fields.items() if info.is_required()
)


def _mail(
    checked: Mapping[str, Any],
    given: Context,
    *,
    default_subject: str,
    tenant: str = "",
    request_id: str = "",
) -> Mail:
    """The mail to store, from what ``Submission.check`` found in the context ``given``."""
    sender = checked["sender"]
    assert sender is not None  # required: check refuses a submission without one
    content, subject = checked["content"], checked["subject"]
    plain = content if content is not None else checked["text"]
    return Mail(
        id=given.mail_id,
        sender=sender,
        to=checked["to"],
        subject=subject if subject and subject.strip() else default_subject,
        text=plain or None,
        html=checked["html"] or None,
        cc=checked["cc"],
        bcc=checked["bcc"],
        reply_to=checked["reply_to"],
        created_at=given.now,
        tenant=tenant,
        callback_url=checked["callback_url"],
        request_id=request_id,
        send_at=checked["send_at"],
        headers=checked["headers"],
        tags=checked["tags"],
        metadata=checked["metadata"],
        attachments=checked["attachments"],
        unsubscribe=checked["unsubscribe"],
    )


def parse_mail(
    body: object,
    *,
    mail_id: str,
    default_subject: str,
    now: float,
    tenant: str = "",
    callbacks: CallbackRules | None = None,
    request_id: str = "",
) -> Mail:
    """The ``Mail`` that ``body`` (a decoded JSON body, or an entry point's values)
    describes; ``ValidationFailed`` listing every bad field. ``callback_url`` is checked
    without a DNS lookup (the intake resolves it: ``intake.resolve``)."""
    given = Context(mail_id, now, callbacks or NO_CALLBACKS)
    if type(body) is dict:
        plain = _plain_mail(body, given, default_subject, tenant, request_id)
        if plain is not None:
            return plain
    elif not isinstance(body, Mapping):
        raise ValidationFailed([FieldError(BODY_FIELD, "must be a JSON object")])
    return _mail(
        Submission.check(body, given),
        given,
        default_subject=default_subject,
        tenant=tenant,
        request_id=request_id,
    )


# --- the plain mail, decided at once ---------------------------------------------------

#: The fields of a plain mail: addresses, a subject, bodies (``FIELDS`` up to ``html``),
#: tags and metadata.
_PLAIN = frozenset((*FIELDS[: FIELDS.index("html") + 1], "tags", "metadata"))


def _plain_mail(
    body: dict[str, Any], given: Context, default_subject: str, tenant: str, request_id: str
) -> Mail | None:
    """The mail of a plain submission (only ``_PLAIN``'s fields), where every value is
    valid as it stands; None (never an error) for ``Submission.check`` to decide
    anything else, and to word every error.

    The rules are the same ones ``check`` runs, called directly and in one pass:
    recipients that ``validation.fast_address`` decides (a list or one string, at most
    ``MAX_RECIPIENTS`` in all, at least one in ``to``), senders by
    ``validation.sender_address``, a subject ``header_problem`` finds nothing in
    (``validation.fits_header``),
    bodies without a lone surrogate, ``content`` and ``text`` equal when both are given,
    a non-empty body; tags and metadata by their own rules (``validation.tags`` and
    ``validation.metadata``), which keep them within their joint limit when there are no
    headers. The result equals ``_mail(Submission.check(...))``'s
    (tests/unit/test_submission_plain.py); a mail of any other shape goes there.
    """
    if not body.keys() <= _PLAIN:
        return None
    get = body.get
    to = _plain_recipients(get("to"))
    if not to:
        return None
    cc, bcc = _plain_recipients(get("cc")), _plain_recipients(get("bcc"))
    if cc is None or bcc is None or len(to) + len(cc) + len(bcc) > MAX_RECIPIENTS:
        return None
    sender, reply_to = _plain_sender(get("from")), get("reply_to")
    if sender is None:
        return None
    if reply_to is not None:
        reply_to = _plain_sender(reply_to)
        if reply_to is None:
            return None
    subject = get("subject")
    if subject is not None and (
        type(subject) is not str
        or len(subject) > MAX_SUBJECT
        or not validation.fits_header(subject)
    ):
        return None
    content, text, html = get("content"), get("text"), get("html")
    for value in (content, text, html):
        if value is not None and (
            type(value) is not str or validation.NOT_ENCODABLE.search(value) is not None
        ):
            return None
    if content is not None and text is not None and content != text:
        return None
    plain = content if content is not None else text
    if not plain and not html:
        return None
    tags: tuple[str, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()
    if "tags" in body or "metadata" in body:
        errors = Errors()
        tags = validation.tags(get("tags"), errors)
        metadata = validation.metadata(get("metadata"), given.mail_id, errors)
        if errors:  # valid, and without headers within the joint limit (_PLAIN_EXTRA_BYTES)
            return None
    return Mail(
        id=given.mail_id,
        sender=sender,
        to=to,
        subject=subject if subject and subject.strip() else default_subject,
        text=plain or None,
        html=html or None,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        created_at=given.now,
        tenant=tenant,
        request_id=request_id,
        tags=tags,
        metadata=metadata,
    )


#: The most bytes valid tags and metadata count towards ``MAX_EXTRA_BYTES``: within it,
#: so a plain mail (no headers) needs no count of them.
_PLAIN_EXTRA_BYTES = MAX_TAGS * len("o:tag" + "x" * MAX_TAG) + MAX_METADATA_BYTES
if _PLAIN_EXTRA_BYTES > MAX_EXTRA_BYTES:
    raise RuntimeError("a plain mail's tags and metadata could pass MAX_EXTRA_BYTES")


def _plain_recipients(value: object) -> tuple[Address, ...] | None:
    """A recipient field's addresses where the fast path decides each; () when left out."""
    if value is None:
        return ()
    entries = [value] if type(value) is str else value
    if type(entries) is not list:
        return None
    out = []
    for entry in entries:
        if type(entry) is not str:
            return None
        address = validation.fast_address(entry)
        if address is None:
            return None
        out.append(address)
    return tuple(out)


def _plain_sender(value: object) -> Address | None:
    """``from`` or ``reply_to`` as ``validation.sender_address`` parses it; None if not."""
    if type(value) is not str:
        return None
    try:
        return validation.sender_address(value)
    except ValueError:
        return None


# --- the mail as a whole ------------------------------------------------------------


def _count_recipients(data: Mapping[str, Any], errors: Errors, run: _Run) -> None:
    """At most ``MAX_RECIPIENTS`` in ``to``, ``cc`` and ``bcc`` together; past that their
    entries are not checked one by one (that would be unbounded work)."""
    total = 0
    for name in _RECIPIENT_FIELDS:
        value = data.get(name)
        if type(value) is list:
            total += len(value)
        elif isinstance(value, str):
            total += 1
            continue
        else:
            continue
        if total > MAX_RECIPIENTS:
            run.too_many_recipients = True
            errors.add(
                name, f"too many recipients: at most {MAX_RECIPIENTS} in to, cc and bcc together"
            )
            return


def _recipient_count(data: Mapping[str, Any]) -> int:
    """How many recipients ``to``, ``cc`` and ``bcc`` give together, as written."""
    total = 0
    for name in _RECIPIENT_FIELDS:
        value = data.get(name)
        total += 1 if isinstance(value, str) else len(value) if isinstance(value, list) else 0
    return total


def _bodies(data: Mapping[str, Any], errors: Errors) -> None:
    """``content`` and ``text`` are the same body (equal when both are given), and there
    is a non-empty body (unless a body is of the wrong type: its own error says so)."""
    get = data.get
    content, text, html = get("content"), get("text"), get("html")
    if isinstance(content, str) and isinstance(text, str) and content != text:
        errors.add("text", "differs from content; give the plain text once")
    plain = content if content is not None else text
    if plain or html:  # non-empty (of a wrong type, its own rule says so)
        return
    if all(v is None or isinstance(v, str) for v in (content, text, html)):
        errors.add("content", "give a non-empty plain-text body (content or text) or html")


def _position(error: FieldError) -> int:
    top = error.field.partition(".")[0].partition("[")[0]
    return _ORDER.get(top, len(_ORDER))


__all__ = ["FIELDS", "Context", "Submission", "parse_mail"]

"""SendGrid-compatible ``POST /v3/mail/send``: an app on SendGrid's SDK gets Mailman's failover
by changing only the host (``SendGridAPIClient(api_key=MAILMAN_KEY, host="http://mailman:9292")``).

The body is SendGrid's v3 Mail Send JSON. Each personalization becomes one Mailman mail,
translated into a ``Submission``'s values (``core.submission``) and handed to the intake:

- ``personalizations[]``: ``to``, ``cc``, ``bcc`` ({email, name}), and per personalization
  ``from``, ``subject``, ``headers``, ``custom_args`` and ``send_at``, which override (or,
  for ``headers`` and ``custom_args``, are merged over) the message's own;
- ``from``, ``reply_to`` (or a ``reply_to_list`` of one), ``subject``;
- ``content[]``: ``text/plain`` becomes the text body, ``text/html`` the HTML body; any other
  type (AMP...) is refused;
- ``attachments[]`` {content, filename, type, disposition, content_id}: Mailman's
  ``attachments`` (``type`` is ``content_type``);
- ``categories``: tags; ``custom_args``: metadata; ``headers``: headers; ``send_at`` (unix
  seconds): Mailman's ``send_at``; all under Mailman's rules (``X-`` headers only,
  at most 3 tags...), refused with the SendGrid path of the field at fault;
- ``asm.group_id`` (SendGrid's unsubscribe group): Mailman's one-click unsubscribe with
  the group named by the id's digits (``{"group_id": 42}`` is ``"unsubscribe": {"group":
  "42"}``): ``List-Unsubscribe`` on Mailman, and the recipients who left the group are
  dropped; so each personalization must have one recipient. ``groups_to_display`` (SendGrid's
  preference page) is taken and ignored; SendGrid's ``<%asm_...%>`` substitution tags are not
  replaced;
- ``mail_settings.sandbox_mode.enable``: everything is checked, then the answer is ``200``
  with nothing stored or sent, as SendGrid does;
- ``template_id``: a template of the caller's tenant (``/templates``, by id or name),
  rendered by Mailman for each personalization with its ``dynamic_template_data``
  (``core.templates``). SendGrid's rule: the subject is the template's (rendered too); a
  ``subject`` given is not used; ``content`` with it is refused. A personalization whose
  data lacks a printed variable is a 400 naming its ``dynamic_template_data``.

Refused with a ``400`` naming the field, because dropping them would send another mail than
the one asked for: ``personalizations[].substitutions``, ``sections`` (SendGrid's legacy
substitution templating), ``ip_pool_name``, ``batch_id``, any ``mail_settings``
other than ``sandbox_mode`` that is enabled (``footer``, ``bypass_*``...), a
``reply_to_list`` of more than one, and any field this module does not know. Ignored:
``tracking_settings`` (open and click tracking is each provider's account setting; the mail
goes out the same).

Answers: ``202``, empty body, ``X-Message-Id`` the (first) Mailman mail id, and
``X-Mailman-Ids`` every mail's id, comma-separated, in personalization order. Errors are
SendGrid's shape, ``{"errors": [{"message", "field", "help": null}]}``: 400 invalid (field a
SendGrid path such as ``personalizations.0.to.1.email``), 401 no or bad key, 403 a key
without the ``send`` scope, 408 a stalled body, 409 an ``Idempotency-Key`` still in flight,
413 too large, 415 an unknown ``Content-Encoding``, 429 over the key's rate, 503 backlog
full or store down (with ``Retry-After``). Nothing here answers problem+json or a 500: an
unexpected error is logged (``http.error``) and answered 503 with ``Retry-After``; what is
refused before the handler (a 404 under ``/v3/``, a middleware's refusal) is worded here
too (``error_shape``, which ``routes.errors`` asks). A key given twice in one JSON object
is a 400 naming it, as is an unknown field of any object of the body.

Every personalization is validated before any is committed, so a bad third one leaves no
mail behind. The key's rate is charged per mail (it counts mails a second), after
validation and before the first commit (tokens taken before a 429 stay spent); a request
with more personalizations than the key's burst could never pass, so it is a 400. The
commits are one per mail: should the store fail between two of them, the answer (503) lists
the mails already kept in ``X-Mailman-Ids``. ``Idempotency-Key`` makes a repeat safe: mail
``i`` is kept under ``{key}#{i}``, fingerprinted with the whole request, so a repeat of the
same request answers the same ids (and stores what a failed try did not), and another
request under the same key is refused.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import hdrs, web

from mailman.config.logging import get_logger
from mailman.core.clock import datetime_of
from mailman.core.mime import UNSUBSCRIBE_HEADER
from mailman.core.model import Disposition, Mail, TemplateUse
from mailman.core.validation import MAX_RECIPIENTS, FieldError, ValidationFailed, parse_address
from mailman.intake.accept import Accepted, Intake, fingerprint, idempotency_key_problem
from mailman.intake.auth import BadKey, MissingScope, NoKey, Principal, authenticate
from mailman.intake.keys import Scope
from mailman.intake.refusals import Refused
from mailman.store import OutcomeUnknown, StoreUnavailable

from . import INTAKE
from .auth import KEYRING, PRINCIPAL
from .body import decode_json, read_body
from .contract import (
    ACCEPTED_HEADERS,
    BEARER,
    IDEMPOTENT_REPLAYED,
    RATE_HEADERS,
    Answer,
    Body,
    Header,
    Link,
    idempotency_key,
    operation,
)
from .errors import (
    IDEMPOTENCY_KEY,
    STORE_RETRY_AFTER_SECONDS,
    TOO_LARGE,
    VALIDATION,
    Problem,
    Render,
    as_problem,
    bad_idempotency_key,
    note,
    outcome_unknown,
    rate_headers,
    request_id,
)
from .models.sendgrid import (
    MAX_GROUP_ID,
    MAX_PERSONALIZATIONS,
    MAX_UNIX_TIME,
    Content,
    Personalization,
    SendGridAddress,
    SendGridErrors,
    SendGridMail,
    fields_of,
)
from .models.sendgrid import SendGridError as SendGridErrorJson

log = get_logger("mailman.http")

routes = web.RouteTableDef()

PATH = "/v3/mail/send"
MESSAGE_ID_HEADER = "X-Message-Id"
#: Every mail's id, comma-separated, in personalization order.
MAIL_IDS_HEADER = "X-Mailman-Ids"
#: SendGrid's message for a key it does not take.
GRANT_INVALID = "The provided authorization grant is invalid, expired, or revoked"
#: SendGrid's message for a request without a key.
AUTHORIZATION_REQUIRED = "authorization required"
_CHALLENGE = 'Bearer realm="mailman"'
#: What a 503 for an unexpected error asks the client to wait.
INTERNAL_RETRY_AFTER_SECONDS = 5
#: The body key that carries the whole request's digest into each mail's idempotency
#: fingerprint (``parse_mail`` ignores fields it does not know).
_REQUEST_DIGEST = "sendgrid_request"

#: Top-level fields refused, and why: dropping them would send another mail than asked.
REFUSED: dict[str, str] = {
    "sections": "substitution sections need SendGrid's templating, which Mailman does not have",
    "ip_pool_name": "IP pools are SendGrid's own; other providers cannot honour them",
    "batch_id": "batches (to cancel or pause a scheduled send) are SendGrid's own",
}
#: Personalization fields refused, and why.
REFUSED_IN_PERSONALIZATION: dict[str, str] = {
    "substitutions": "substitutions need SendGrid's templating, which Mailman does not have",
}
#: Top-level fields taken (``tracking_settings`` is taken and ignored): the model's.
KNOWN = fields_of(SendGridMail)
PERSONALIZATION_KNOWN = fields_of(Personalization)
#: The fields of an email object and of a content block (any other is refused).
_ADDRESS_FIELDS = fields_of(SendGridAddress)
_CONTENT_FIELDS = fields_of(Content)
#: SendGrid's content types and the Mailman body each becomes.
_CONTENT_TYPES = {"text/plain": "text", "text/html": "html"}
#: SendGrid's attachment fields and Mailman's names for them.
_ATTACHMENT_FIELDS = {
    "content": "content",
    "filename": "filename",
    "type": "content_type",
    "disposition": "disposition",
    "content_id": "content_id",
}
#: A display name that needs no quoting (and takes the fast address check).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_INDEX = re.compile(r"\[(\d+)\]")


# --- errors ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendGridError:
    """One entry of SendGrid's ``errors``: a message, and the field at fault (a path)."""

    message: str
    field: str | None = None

    def as_json(self) -> SendGridErrorJson:
        return {"message": self.message, "field": self.field, "help": None}


class Refusal(Exception):
    """An error answer in SendGrid's shape."""

    def __init__(
        self,
        status: int,
        errors: Sequence[SendGridError],
        headers: Mapping[str, str] | None = None,
        *,
        reason: str = "",
    ) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.status = int(status)
        self.errors = tuple(dict.fromkeys(errors))  # each (message, field) once, in order
        self.headers = dict(headers or {})
        #: What the request's log line says (its ``problem``).
        self.reason = reason

    @classmethod
    def one(
        cls,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        reason: str,
        field: str | None = None,
    ) -> Refusal:
        return cls(status, [SendGridError(message, field)], headers, reason=reason)

    def response(self) -> web.Response:
        body: SendGridErrors = {"errors": [e.as_json() for e in self.errors]}
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=self.headers,
        )


class _Errors:
    """Collects SendGrid errors (field path, message)."""

    def __init__(self) -> None:
        self.found: list[SendGridError] = []

    def add(self, path: str | None, message: str) -> None:
        self.found.append(SendGridError(message, path))

    def __bool__(self) -> bool:
        return bool(self.found)


# --- translation -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Draft:
    """One personalization as a ``Submission``'s values, and where its fields came from."""

    body: dict[str, Any]
    #: Mailman's field name (``subject``, ``headers.X-A``...) -> the SendGrid path.
    paths: Mapping[str, str] = field(default_factory=dict)
    #: Mailman's address field (``to[0]``, ``from``...) -> (the SendGrid path of the
    #: address object, its bare email), to say whether the email or the name is at fault.
    addresses: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: ``dynamic_template_data``: what ``template_id`` is rendered with for this mail.
    data: object = None
    #: The template its subject and bodies were rendered from (``_rendered``).
    used: TemplateUse | None = None

    def error(self, error: FieldError) -> SendGridError:
        """``error`` (about a field of ``body``) with the SendGrid path of that field."""
        return SendGridError(error.message, self.path(error.field))

    def path(self, name: str) -> str | None:
        """The SendGrid path of Mailman's field ``name``."""
        if name == "body":
            return None
        address = self.addresses.get(name)
        if address is not None:
            where, email = address
            try:
                parse_address(email)
            except ValueError:
                return f"{where}.email"
            return f"{where}.name"  # the email alone is fine: its name is at fault
        found = self.paths.get(name)
        if found is not None:
            return found
        base, _, rest = name.partition(".")
        if rest and base in self.paths:  # headers.X-Name, metadata.key not mapped one by one
            return f"{self.paths[base]}.{rest}"
        # attachments[0].content_type -> attachments.0.type; tags[1] -> categories.1
        dotted = _INDEX.sub(r".\1", name)
        head, dot, tail = dotted.partition(".")
        if head in self.paths:
            dotted = f"{self.paths[head]}{dot}{tail}"
        if dotted.startswith("attachments.") and dotted.endswith(".content_type"):
            dotted = dotted.removesuffix(".content_type") + ".type"
        return dotted


@dataclass(frozen=True, slots=True)
class Translation:
    """A SendGrid request as Mailman mails: one draft per personalization."""

    drafts: tuple[Draft, ...]
    #: ``mail_settings.sandbox_mode.enable``: check everything, store and send nothing.
    sandbox: bool
    #: ``template_id``: the tenant's template each draft is rendered from; None: none.
    template: str | None = None


def mailbox(email: str, name: str) -> str:
    """``email`` with its display name as one address string (``"Doe, Ann" <ann@...>``)."""
    if not name:
        return email
    if _PLAIN_NAME.fullmatch(name):
        return f"{name} <{email}>"
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" <{email}>'


def _address(value: object, path: str, errors: _Errors) -> tuple[str, str] | None:
    """A SendGrid email object as (address string, bare email); None if malformed."""
    if not isinstance(value, dict):
        errors.add(path, "must be an object with an email and an optional name")
        return None
    email, name = value.get("email"), value.get("name")
    ok = True
    for key in value:
        if key not in _ADDRESS_FIELDS:
            errors.add(f"{path}.{key}", "is not a field of an email object (email, name)")
            ok = False
    if not isinstance(email, str) or not email:
        errors.add(f"{path}.email", "is required: a string holding one address")
        ok = False
    elif "<" in email or ">" in email:
        errors.add(f"{path}.email", "must be the address alone: give the display name in name")
        ok = False
    if name is not None and not isinstance(name, str):
        errors.add(f"{path}.name", "must be a string")
        ok = False
    if not ok:
        return None
    assert isinstance(email, str)
    return mailbox(email, name or ""), email


def _object(value: object, path: str, errors: _Errors) -> dict[str, Any]:
    """``value`` if it is an object (None: an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.add(path, "must be an object of strings")
        return {}
    return value


def _send_at(value: object, path: str, errors: _Errors) -> int | None:
    """A unix ``send_at`` (whole seconds, 1970 to 9999); None if it is not one."""
    value = _whole(value)  # 1.0 is the JSON number 1: whole seconds
    if value is None:
        errors.add(path, "must be a unix time in whole seconds")
        return None
    if not 0 <= value <= MAX_UNIX_TIME:
        errors.add(path, "must be a unix time from 1970 to 9999")
        return None
    return value


def _sandbox(value: object, errors: _Errors) -> bool:
    """Whether ``mail_settings`` asks for sandbox mode; other enabled settings are refused."""
    if value is None:
        return False
    if not isinstance(value, dict):
        errors.add("mail_settings", "must be an object")
        return False
    sandbox = False
    for name, setting in value.items():
        where = f"mail_settings.{name}"
        if not isinstance(setting, dict):
            errors.add(where, "must be an object")
            continue
        if name == "sandbox_mode":
            for key in setting:
                if key != "enable":
                    errors.add(f"{where}.{key}", "is not a field of sandbox_mode (enable)")
        enable = setting.get("enable")
        if enable is not None and not isinstance(enable, bool):
            errors.add(f"{where}.enable", "must be true or false")
        elif name == "sandbox_mode":
            sandbox = bool(enable)
        elif enable:
            errors.add(where, "is not supported by Mailman: only sandbox_mode may be enabled")
    return sandbox


def _content(value: object, out: dict[str, Any], paths: dict[str, str], errors: _Errors) -> None:
    """``content`` blocks as ``text`` and ``html``."""
    if value is None:
        return
    if not isinstance(value, list):
        errors.add("content", "must be a list of {type, value} objects")
        return
    seen: dict[str, int] = {}
    for k, block in enumerate(value):
        where = f"content.{k}"
        if not isinstance(block, dict):
            errors.add(where, "must be an object with a type and a value")
            continue
        for key in block:
            if key not in _CONTENT_FIELDS:
                errors.add(f"{where}.{key}", "is not a field of a content object (type, value)")
        type_, text = block.get("type"), block.get("value")
        kind = None
        if not isinstance(type_, str):
            errors.add(f"{where}.type", "is required: text/plain or text/html")
        elif (kind := _CONTENT_TYPES.get(type_.partition(";")[0].strip().lower())) is None:
            errors.add(f"{where}.type", "is not sent by Mailman: only text/plain and text/html")
        elif kind in seen:
            errors.add(f"{where}.type", f"repeats the type of content.{seen[kind]}")
            kind = None
        if not isinstance(text, str) or not text:
            errors.add(f"{where}.value", "must be a string at least one character in length")
        elif kind is not None:
            seen[kind] = k
            out[kind] = text
            paths[kind] = f"{where}.value"


def _attachments(value: object, errors: _Errors) -> list[dict[str, object]] | None:
    """SendGrid's attachments with Mailman's field names."""
    if value is None:
        return None
    if not isinstance(value, list):
        errors.add("attachments", "must be a list of attachment objects")
        return None
    out: list[dict[str, object]] = []
    for k, item in enumerate(value):
        where = f"attachments.{k}"
        if not isinstance(item, dict):
            errors.add(where, "must be an object with content and filename")
            continue
        for key in item:
            if key not in _ATTACHMENT_FIELDS:
                errors.add(f"{where}.{key}", "is not a field of an attachment")
        mapped = {_ATTACHMENT_FIELDS[k]: v for k, v in item.items() if k in _ATTACHMENT_FIELDS}
        disposition = mapped.get("disposition")
        if disposition is None or (
            isinstance(disposition, str) and disposition.lower() == Disposition.ATTACHMENT
        ):
            # SendGrid takes (and ignores) a content_id on a plain attachment; Mailman
            # refuses one (Mailgun could not send it), so it is dropped here.
            mapped.pop("content_id", None)
        out.append(mapped)
    return out


def translate(body: object) -> Translation:
    """The Mailman mails a SendGrid v3 Mail Send body asks for; ``Refusal`` (400) listing
    every field Mailman cannot take as given (bad shapes, refused or unknown fields).

    What is left to Mailman's own validation (addresses, header names...) is checked by
    ``Intake.parse`` on each draft; ``Draft.path`` names its errors the SendGrid way.
    """
    if not isinstance(body, dict):
        raise Refusal.one(400, "The request body must be a JSON object.", reason="validation")
    errors = _Errors()
    for key in body:
        if key in REFUSED:
            errors.add(key, f"is not supported by Mailman: {REFUSED[key]}")
        elif key not in KNOWN:
            errors.add(key, "is not a field of SendGrid's v3 Mail Send that Mailman takes")
    sandbox = _sandbox(body.get("mail_settings"), errors)
    template = body.get("template_id")
    if template is not None and not isinstance(template, str):
        errors.add("template_id", "must be a string: a template's id or name")
        template = None

    common: dict[str, Any] = {}
    paths: dict[str, str] = {}
    addresses: dict[str, tuple[str, str]] = {}
    if body.get("from") is None:
        errors.add("from", "is required: an object with an email and an optional name")
    elif (sender := _address(body["from"], "from", errors)) is not None:
        common["from"], addresses["from"] = sender[0], ("from", sender[1])
    reply_to, reply_list = body.get("reply_to"), body.get("reply_to_list")
    listed = False  # reply_to is reply_to_list's one entry, whatever it is
    if reply_list is not None:
        if reply_to is not None:
            errors.add("reply_to_list", "give reply_to or reply_to_list, not both")
        elif not isinstance(reply_list, list) or len(reply_list) != 1:
            errors.add("reply_to_list", "Mailman keeps one reply-to address: give exactly one")
        else:
            reply_to, listed = reply_list[0], True
    if reply_to is not None or listed:
        where = "reply_to" if reply_list is None else "reply_to_list.0"
        if (got := _address(reply_to, where, errors)) is not None:
            common["reply_to"], addresses["reply_to"] = got[0], (where, got[1])
    subject = body.get("subject")
    if template is not None:
        subject = None  # SendGrid's rule: with template_id, the template's subject
        if body.get("content") is not None:
            errors.add("content", "comes from the template: leave it out with template_id")
    if subject is not None:
        if isinstance(subject, str):
            common["subject"], paths["subject"] = subject, "subject"
        else:
            errors.add("subject", "must be a string")
    _content(body.get("content"), common, paths, errors)
    paths["content"] = "content"
    attachments = _attachments(body.get("attachments"), errors)
    if attachments is not None:
        common["attachments"], paths["attachments"] = attachments, "attachments"
    categories = body.get("categories")
    if categories is not None:
        common["tags"], paths["tags"] = categories, "categories"
    if body.get("asm") is not None:
        group = _asm(body["asm"], errors)
        if group is not None:
            common["unsubscribe"] = {"group": group}
            paths["unsubscribe"] = "asm"
            paths["unsubscribe.group"] = "asm.group_id"
    headers = _object(body.get("headers"), "headers", errors)
    args = _object(body.get("custom_args"), "custom_args", errors)
    send_at = None
    if body.get("send_at") is not None:
        send_at = _send_at(body["send_at"], "send_at", errors)

    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        errors.add("personalizations", "is required: a list of 1 to 1000 personalization objects")
        personalizations = []
    elif len(personalizations) > MAX_PERSONALIZATIONS:
        errors.add("personalizations", f"must have at most {MAX_PERSONALIZATIONS} items")
        personalizations = []
    recipients = sum(
        len(p.get(kind) or ())
        for p in personalizations
        if isinstance(p, dict)
        for kind in ("to", "cc", "bcc")
        if isinstance(p.get(kind), list)
    )
    if recipients > MAX_RECIPIENTS:
        errors.add(
            "personalizations",
            f"too many recipients: at most {MAX_RECIPIENTS} in to, cc and bcc of all "
            "personalizations together",
        )
        personalizations = []  # not checked one by one: that would be unbounded work
    drafts = []
    for i, p in enumerate(personalizations):
        draft = _draft(
            i, p, common, paths, addresses, headers, args, send_at, errors, template is not None
        )
        if draft is not None:
            drafts.append(draft)
    if errors:
        raise Refusal(400, errors.found, reason="validation")
    return Translation(drafts=tuple(drafts), sandbox=sandbox, template=template)


def _whole(value: object) -> int | None:
    """A JSON whole number as an int (``590.0`` is the JSON number 590, as JSON Schema's
    ``integer`` says); None for anything else (a bool, a string, ``1.5``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _asm(value: object, errors: _Errors) -> str | None:
    """SendGrid's ``asm`` as Mailman's unsubscribe group: its ``group_id``'s digits."""
    if not isinstance(value, dict):
        errors.add("asm", 'must be an object: {"group_id": <int>}')
        return None
    for key in value:
        if key not in ("group_id", "groups_to_display"):
            errors.add(f"asm.{key}", "is not a field of asm that Mailman takes")
    group_id = _whole(value.get("group_id"))
    if group_id is None or not 1 <= group_id <= MAX_GROUP_ID:
        errors.add("asm.group_id", "is required: a positive whole number")
        return None
    shown = value.get("groups_to_display")
    if shown is not None and not (
        isinstance(shown, list) and len(shown) <= 25 and all(_whole(g) is not None for g in shown)
    ):
        errors.add("asm.groups_to_display", "must be a list of at most 25 group ids")
    return str(group_id)


def _draft(
    i: int,
    p: object,
    common: Mapping[str, Any],
    common_paths: Mapping[str, str],
    common_addresses: Mapping[str, tuple[str, str]],
    headers: Mapping[str, Any],
    args: Mapping[str, Any],
    send_at: int | None,
    errors: _Errors,
    templated: bool = False,
) -> Draft | None:
    """Personalization ``i`` merged over the message's fields, as a draft."""
    where = f"personalizations.{i}"
    if not isinstance(p, dict):
        errors.add(where, "must be an object")
        return None
    for key in p:
        if key in REFUSED_IN_PERSONALIZATION:
            errors.add(
                f"{where}.{key}", f"is not supported by Mailman: {REFUSED_IN_PERSONALIZATION[key]}"
            )
        elif key not in PERSONALIZATION_KNOWN:
            errors.add(f"{where}.{key}", "is not a field of a personalization that Mailman takes")
    body = dict(common)
    paths = dict(common_paths)
    addresses = dict(common_addresses)
    for kind in ("to", "cc", "bcc"):
        value = p.get(kind)
        if value is None:
            if kind == "to":
                errors.add(f"{where}.to", "is required: a list of at least one email object")
            continue
        if not isinstance(value, list) or (kind == "to" and not value):
            errors.add(f"{where}.{kind}", "must be a list of email objects, at least one in to")
            continue
        paths[kind] = f"{where}.{kind}"
        entries = []
        for j, entry in enumerate(value):
            got = _address(entry, f"{where}.{kind}.{j}", errors)
            if got is not None:
                addresses[f"{kind}[{j}]"] = (f"{where}.{kind}.{j}", got[1])
                entries.append(got[0])
        body[kind] = entries
    if p.get("from") is not None:
        got = _address(p["from"], f"{where}.from", errors)
        if got is not None:
            body["from"], addresses["from"] = got[0], (f"{where}.from", got[1])
    data = p.get("dynamic_template_data")
    paths["data"] = f"{where}.dynamic_template_data"
    if data is not None and not templated:
        errors.add(f"{where}.dynamic_template_data", "needs a template_id to render")
    if p.get("subject") is not None and not templated:
        if isinstance(p["subject"], str):
            body["subject"], paths["subject"] = p["subject"], f"{where}.subject"
        else:
            errors.add(f"{where}.subject", "must be a string")
    if p.get("send_at") is not None:
        send_at = _send_at(p["send_at"], f"{where}.send_at", errors)
        paths["send_at"] = f"{where}.send_at"
    elif send_at is not None:
        paths["send_at"] = "send_at"
    if send_at is not None:
        body["send_at"] = datetime_of(send_at)
    own_headers = _object(p.get("headers"), f"{where}.headers", errors)
    if headers or own_headers:
        # Names are case-insensitive: the personalization's replaces the message's.
        merged = {n: v for n, v in headers.items() if n.lower() not in _lower(own_headers)}
        merged.update(own_headers)
        body["headers"] = merged
        paths["headers"] = "headers" if headers else f"{where}.headers"
        for name in own_headers:
            paths[f"headers.{name}"] = f"{where}.headers.{name}"
        _opt_out(body, where if own_headers else "", errors)
    own_args = _object(p.get("custom_args"), f"{where}.custom_args", errors)
    if args or own_args:
        body["metadata"] = {**args, **own_args}
        paths["metadata"] = "custom_args" if args else f"{where}.custom_args"
        for key in own_args:
            paths[f"metadata.{key}"] = f"{where}.custom_args.{key}"
    return Draft(body=body, paths=paths, addresses=addresses, data=data)


def _opt_out(body: dict[str, Any], where: str, errors: _Errors) -> None:
    """``X-Mailman-Unsubscribe: off`` among a draft's headers: taken out, and the mail is
    of no unsubscribe group (``"unsubscribe": false``), not even the tenant's default;
    refused beside ``asm`` or with another value."""
    headers: dict[str, Any] = body["headers"]
    name = next((n for n in headers if n.lower() == UNSUBSCRIBE_HEADER.lower()), None)
    if name is None:
        return
    value = headers.pop(name)
    if not headers:
        del body["headers"]
    path = f"{where + '.' if where else ''}headers.{name}"
    if not isinstance(value, str) or value.strip().lower() != "off":
        errors.add(path, "must be off (or left out)")
    elif body.get("unsubscribe") is not None:
        errors.add(path, "cannot be off beside asm")
    else:
        body["unsubscribe"] = False


def _lower(names: Mapping[str, object]) -> set[str]:
    return {n.lower() for n in names}


# --- the endpoint ----------------------------------------------------------------------


async def _principal(request: web.Request) -> Principal:
    """The caller: ``Authorization: Bearer <Mailman key>`` with the ``send`` scope."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    secret = None
    challenge: dict[str, str] = {hdrs.WWW_AUTHENTICATE: _CHALLENGE}
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal.one(401, GRANT_INVALID, challenge, reason="unauthorized")
        secret = token.strip()
    try:
        return await authenticate(request.app[KEYRING], secret, Scope.SEND)
    except NoKey:
        raise Refusal.one(401, AUTHORIZATION_REQUIRED, challenge, reason="unauthorized") from None
    except BadKey:
        raise Refusal.one(401, GRANT_INVALID, challenge, reason="unauthorized") from None
    except MissingScope as exc:
        raise Refusal.one(403, str(exc), reason="forbidden") from None


def from_problem(
    problem: Problem, draft: Draft | None = None, headers: Mapping[str, str] | None = None
) -> Refusal:
    """A Mailman ``Problem`` in SendGrid's shape: its status (a 422 is SendGrid's 400),
    its headers, its field errors named as ``draft``'s SendGrid paths."""
    status = 400 if problem.status == HTTPStatus.UNPROCESSABLE_ENTITY else problem.status
    if problem.type in (VALIDATION, TOO_LARGE) and problem.errors:
        errors = [
            draft.error(e) if draft else SendGridError(e.message, e.field) for e in problem.errors
        ]
    elif problem.errors:  # about the Idempotency-Key header
        errors = [SendGridError(problem.detail, e.field) for e in problem.errors]
    else:
        errors = [SendGridError(problem.detail)]
    return Refusal(
        status,
        errors,
        {**problem.headers, **(headers or {})},
        reason=problem.type.rsplit("/", 1)[-1],
    )


async def _rendered(
    intake: Intake, translation: Translation, principal: Principal
) -> tuple[Draft, ...]:
    """The drafts with ``template_id`` rendered for each, with its
    ``dynamic_template_data``; ``Refusal`` (400) naming every personalization that does
    not render, or ``template_id`` if the tenant has no such template."""
    drafts = translation.drafts
    if translation.template is None:
        return drafts
    renderer = intake.renderer
    try:
        template = await renderer.find(principal.tenant, translation.template, field="template_id")
    except ValidationFailed as exc:
        raise Refusal(
            400, [SendGridError(e.message, e.field) for e in exc.errors], reason="validation"
        ) from None
    errors: list[SendGridError] = []
    out: list[Draft] = []
    for draft in drafts:
        try:
            rendered = renderer.render(template, draft.data)
        except ValidationFailed as exc:
            errors += [draft.error(e) for e in exc.errors]
            continue
        body = {k: v for k, v in draft.body.items() if k not in ("subject", "text", "html")}
        paths = dict(draft.paths)
        for name in ("subject", "html", "text"):
            value = getattr(rendered.mail, name)
            if value is not None:
                body[name] = value
            paths[name] = "template_id"  # what is wrong with it is the template's doing
        paths["template"] = paths["content"] = "template_id"
        out.append(dataclasses.replace(draft, body=body, paths=paths, used=rendered.used))
    if errors:
        raise Refusal(400, errors, reason="validation")
    return tuple(out)


def _check(intake: Intake, drafts: Sequence[Draft], principal: Principal, rid: str) -> list[Mail]:
    """Every draft through Mailman's validation: the mails, in order; ``Refusal`` naming
    every bad field."""
    now = time.time()
    errors: list[SendGridError] = []
    mails: list[Mail] = []
    too_large = False
    for draft in drafts:
        try:
            mail = intake.parse(draft.body, principal=principal, request_id=rid, now=now)
            mails.append(
                mail if draft.used is None else dataclasses.replace(mail, template=draft.used)
            )
        except ValidationFailed as exc:
            too_large |= exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            errors += [draft.error(e) for e in exc.errors]
    if errors:
        raise Refusal(413 if too_large else 400, errors, reason="validation")
    return mails


async def _charge(intake: Intake, principal: Principal, mails: int) -> dict[str, str]:
    """One token of the caller's rate per mail, all before the first commit (429 if short)."""
    rate = principal.rate if principal.rate is not None else intake.config.rate_limit
    if rate > 0 and mails > max(rate, 1.0):
        raise Refusal.one(
            400,
            f"This API key may send {rate:g} mails a second: {mails} personalizations "
            "can never pass its rate limit. Split the request.",
            reason="validation",
            field="personalizations",
        )
    taken = await intake.take_token(principal)
    for _ in range(mails - 1 if rate > 0 else 0):
        taken = await intake.take_token(principal)
    return rate_headers(taken)


async def _send(request: web.Request) -> web.Response:
    principal = await _principal(request)
    note(request, tenant=principal.tenant)
    request[PRINCIPAL] = principal  # whose share of the in-flight budget the body takes
    intake = request.app[INTAKE]
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and (bad := idempotency_key_problem(key)) is not None:
        raise bad_idempotency_key(bad)
    raw = await read_body(request)
    try:
        body = decode_json(raw)
    except Problem as problem:  # not JSON, or a key given twice in one object
        raise Refusal(
            400,
            [SendGridError(problem.detail, _INDEX.sub(r".\1", e.field)) for e in problem.errors]
            or [SendGridError(problem.detail)],
            reason=problem.type.rsplit("/", 1)[-1],
        ) from None
    translation = translate(body)
    translation = dataclasses.replace(
        translation, drafts=await _rendered(intake, translation, principal)
    )
    rid = request_id(request)
    parsed = _check(intake, translation.drafts, principal, rid)
    mails = len(parsed)
    if translation.sandbox:
        note(request, sandbox=True, mails=mails)
        log.debug("sendgrid.sandbox", mails=mails)
        return web.Response(status=HTTPStatus.OK)
    intake.check_backlog()
    headers = await _charge(intake, principal, mails)
    digest = fingerprint(body) if key is not None else ""
    accepted: list[Accepted] = []
    for i, (draft, mail) in enumerate(zip(translation.drafts, parsed, strict=True)):
        try:
            accepted.append(
                await intake.keep(
                    mail,
                    {**draft.body, _REQUEST_DIGEST: digest} if key is not None else draft.body,
                    idempotency_key=None if key is None else f"{key}#{i}",
                )
            )
        except (Refused, ValidationFailed) as refusal:
            raise from_problem(as_problem(refusal), draft, {**headers, **_kept(accepted)}) from None
        except StoreUnavailable as exc:
            raise _store_down(exc, request, _kept(accepted)) from None
        except OutcomeUnknown as exc:
            raise _unknown(exc, request, _kept(accepted)) from None
    ids = [a.mail_id for a in accepted]
    headers[MESSAGE_ID_HEADER] = ids[0]
    headers[MAIL_IDS_HEADER] = ",".join(ids)
    replayed = all(a.replayed for a in accepted)
    recipients = sum(a.recipients for a in accepted)
    note(request, mail_id=ids[0], mails=mails, recipients=recipients)
    if replayed:
        headers[IDEMPOTENT_REPLAYED] = "true"
        note(request, replayed=True)
    log.debug("sendgrid.accepted", mail_ids=ids, recipients=recipients, replayed=replayed)
    return web.Response(status=HTTPStatus.ACCEPTED, headers=headers)


def _kept(accepted: Sequence[Accepted]) -> dict[str, str]:
    """The header naming the mails committed before a refusal (none: no header)."""
    return {MAIL_IDS_HEADER: ",".join(a.mail_id for a in accepted)} if accepted else {}


def _store_down(
    exc: StoreUnavailable, request: web.Request, headers: Mapping[str, str] | None = None
) -> Refusal:
    log.warning("store.unavailable", method=request.method, path=request.path, error=str(exc))
    return Refusal.one(
        503,
        "The store does not answer; nothing more was stored. Try again after Retry-After.",
        {hdrs.RETRY_AFTER: str(STORE_RETRY_AFTER_SECONDS), **(headers or {})},
        reason="store-unavailable",
    )


def _unknown(
    exc: OutcomeUnknown, request: web.Request, headers: Mapping[str, str] | None = None
) -> Refusal:
    """A commit whose answer was lost: never "nothing was stored". ``Location`` names the
    mail in doubt (``GET`` settles it; 404: never stored), ``X-Mailman-Ids`` those kept."""
    log.warning("store.outcome_unknown", method=request.method, path=request.path)
    problem = outcome_unknown(exc)
    return Refusal.one(
        503, problem.detail, {**problem.headers, **(headers or {})}, reason="outcome-unknown"
    )


def _error(description: str, *shared: str) -> Answer:
    """An error answer in SendGrid's shape, ``{"errors": [{message, field, help}]}``."""
    return Answer(description, SendGridErrors, shared=shared)


@routes.post(PATH)
@operation(
    "sendgridMailSend",
    "SendGrid-compatible: send as SendGrid's v3 Mail Send takes it",
    description="Point a SendGrid SDK's host at Mailman and give it a Mailman key (needs "
    "`send`). Each personalization is one mail; all are checked before any is stored. "
    "Counts one mail per personalization against the key's rate. Answers as SendGrid does: "
    '202 with X-Message-Id, errors as {"errors": [{"message", "field", "help"}]}.',
    security=({BEARER: []},),
    parameters=(
        idempotency_key(
            "As for POST /mail/send: a repeat of the same request answers the same mails; "
            "another request with the key is a 400"
        ),
    ),
    body=Body.json(
        SendGridMail,
        example={
            "personalizations": [{"to": [{"email": "ann@example.com"}]}],
            "from": {"email": "noreply@example.com", "name": "Shop"},
            "subject": "Welcome",
            "content": [{"type": "text/plain", "value": "Hello Ann"}],
        },
    ),
    answers={
        200: Answer("Sandbox mode: checked, nothing stored or sent (no body)"),
        202: Answer(
            "Accepted: one mail per personalization (no body)",
            headers={
                MESSAGE_ID_HEADER: Header(
                    "The (first) mail's Mailman id: GET /mail/{id}", required=True
                ),
                MAIL_IDS_HEADER: Header(
                    "Every mail's id, comma-separated, in order", required=True
                ),
                **ACCEPTED_HEADERS,
            },
            shared=RATE_HEADERS,
            links={
                name: Link(operation_id, {"id": f"$response.header.{MESSAGE_ID_HEADER}"})
                for name, operation_id in (("ShowMail", "showMail"), ("MailStatus", "mailStatus"))
            },
        ),
        400: _error(
            "Invalid fields, a field Mailman cannot honour, malformed JSON, a bad "
            "Idempotency-Key or one reused with another request; nothing was stored"
        ),
        401: _error("No key, or an unknown or revoked key", "WWW-Authenticate"),
        403: _error("The key lacks the send scope"),
        405: _error("Any method but POST"),
        408: _error("The request body stalled"),
        409: _error("A request with this Idempotency-Key is still being processed", "Retry-After"),
        413: _error("The body or the attachments are too large"),
        415: _error("An unknown Content-Encoding"),
        429: _error(
            "Over the key's rate limit (one token per personalization)",
            "Retry-After",
            *RATE_HEADERS,
        ),
        503: _error(
            "The store does not answer, the backlog is full, or the body does not fit in the "
            "memory for bodies in flight; try again after Retry-After (X-Mailman-Ids names any "
            "mails already stored)",
            "Retry-After",
        ),
    },
)
async def sendgrid_send(request: web.Request) -> web.StreamResponse:
    """SendGrid's v3 Mail Send: 202 and ``X-Message-Id``, or SendGrid's error shape."""
    try:
        return await _send(request)
    except Refusal as refusal:
        return _refused(request, refusal)
    except Problem as problem:  # from the body reader
        return _refused(request, from_problem(problem))
    except Refused as refusal:  # the intake's backlog and rate checks
        return _refused(request, from_problem(as_problem(refusal)))
    except StoreUnavailable as exc:
        return _refused(request, _store_down(exc, request))
    except OutcomeUnknown as exc:
        return _refused(request, _unknown(exc, request))
    except ConnectionError:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise  # the client is gone: nobody to answer (request_id_middleware logs it)
        return _internal(request)
    except Exception:
        return _internal(request)


@routes.route(hdrs.METH_ANY, PATH)
async def sendgrid_other_method(request: web.Request) -> web.StreamResponse:
    """Any method but POST: SendGrid's 405, in its shape."""
    return _refused(
        request,
        Refusal.one(
            405, "method not allowed", {hdrs.ALLOW: hdrs.METH_POST}, reason="method-not-allowed"
        ),
    )


def render(problem: Problem) -> web.Response:
    """A problem raised outside the handler (aiohttp's 404, a middleware's refusal) in
    SendGrid's shape."""
    return from_problem(problem).response()


def error_shape(request: web.Request) -> Render | None:
    """SendGrid's shape for every error at its Mail Send path."""
    path = request.path
    return render if path == PATH or path.startswith(PATH + "/") else None


def v3_error_shape(request: web.Request) -> Render | None:
    """SendGrid's shape at any other ``/v3/`` path (a Mailgun client's are Mailgun's:
    ``compat_mailgun.error_shape`` is asked first)."""
    return render if request.path.startswith("/v3/") else None


def _internal(request: web.Request) -> web.Response:
    log.exception("http.error", method=request.method, path=request.path)
    return _refused(
        request,
        Refusal.one(
            503,
            "Something went wrong on our side; the X-Request-Id names it in our logs. "
            "Try again after Retry-After.",
            {hdrs.RETRY_AFTER: str(INTERNAL_RETRY_AFTER_SECONDS)},
            reason="internal",
        ),
    )


def _refused(request: web.Request, refusal: Refusal) -> web.Response:
    note(request, problem=refusal.reason)
    fields = [e.field for e in refusal.errors if e.field]
    if refusal.status == 400 and fields:
        note(request, invalid=fields)
    return refusal.response()

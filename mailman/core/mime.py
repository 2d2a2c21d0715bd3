"""A mail as an SMTP client sends it (RFC 5322 and MIME) turned into a ``Submission``'s
values (``core.submission``), so that SMTP takes the same road as every entry point.

Pure: bytes in, the values out, no I/O (``tests/unit/test_mime.py``). Typed where the
mail has the thing itself: a file's bytes, a ``datetime``. What is taken, and
from where:

- ``from``: the ``From`` header, what the recipients see; the envelope's
  ``MAIL FROM`` when there is no ``From``. More than one address is refused.
- ``to``, ``cc``: the envelope's recipients (``RCPT TO``) decide who gets the
  mail. Each one the ``To`` or ``Cc`` header names is in ``to`` or ``cc``, with
  the display name the header gives; every other one is a ``bcc``. A header
  address that is no envelope recipient is dropped: the client did not send
  the mail to it. When no ``To`` address is left, the ``Cc`` ones become the
  ``to``; with neither, the mail is refused (Mailman needs a visible recipient,
  and making a Bcc one visible would tell the others about it).
- ``subject`` (RFC 2047 encoded-words decoded), ``reply_to`` (one address).
- ``text`` and ``html``: the plain and HTML bodies a mail reader would show
  (``EmailMessage.get_body``: ``multipart/alternative``, ``related``,
  ``mixed``), decoded to text, line ends made ``\\n``.
- ``attachments``: every other leaf part, its bytes exactly as sent (base64
  or quoted-printable undone). A part with a ``Content-ID`` in a
  ``multipart/related``, or anywhere without ``Content-Disposition:
  attachment``, is an ``inline`` file (an image the HTML shows as
  ``cid:...``); the rest are plain attachments. A file without a name
  gets one (``attachment-1.pdf``); a forwarded mail (``message/rfc822``) goes
  as an ``.eml`` file of type ``application/octet-stream``.
- ``headers``: the ``X-`` headers Mailman can carry (the rules of
  ``core.validation``: printable ASCII, not ``X-Mailman-``, ``X-SG-``,
  ``X-SMTPAPI``, ``X-Mailgun-``, the first of a name only, at most
  ``MAX_HEADERS``). Others are dropped, not refused.
- ``tags``, ``metadata``, ``send_at``: from the headers of the providers' own
  SMTP services (``provider_options``): SendGrid's ``X-SMTPAPI`` and
  Mailgun's ``X-Mailgun-Tag``, ``-Variables`` and ``-Deliver-By``, so an app
  that set them for SendGrid or Mailgun keeps its tags and variables.
- ``unsubscribe``: ``false`` for ``X-Mailman-Unsubscribe: off`` (no group, not even
  the tenant's default); any other value is refused.

Every other header is dropped: ``Received``, ``Message-ID``, ``Date``,
``MIME-Version``, ``Content-*``, ``Return-Path``, ``DKIM-Signature``, ``Bcc``,
``Sender``...: Mailman and the provider write their own.

Whatever is left is checked by ``Submission.check`` like any API request;
only what cannot be put into a submission at all is refused here, as a
``ValidationFailed`` naming the field.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import email.utils
import json
import mimetypes
import re
from collections.abc import Iterator, Sequence
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage, Message, MIMEPart
from typing import Any

from .clock import datetime_of
from .validation import (
    MAX_HEADER_LINE,
    MAX_HEADERS,
    FieldError,
    ValidationFailed,
    header_name_problem,
    header_value_problem,
    parse_address,
)

#: Headers whose addresses are read; all others except ``X-`` ones are dropped.
_FROM, _TO, _CC, _REPLY_TO, _SUBJECT = "from", "to", "cc", "reply-to", "subject"
#: The type a file is sent as when it is a mail itself (a ``message/*`` part:
#: RFC 2046 allows it no base64, so it travels as plain bytes).
_OCTETS = "application/octet-stream"
_LINE_END = re.compile(r"\r\n?")


#: A ``Message-ID`` worth deduplicating by: ``<left@right>``, printable ASCII, no spaces.
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}@[!-;=?-~]{1,250}>")
#: The longest ``Message-ID`` kept as a key (``Idempotency-Key`` takes 255 with its prefix).
_MAX_MESSAGE_ID = 240


def message_id(raw: bytes) -> str | None:
    """The mail's own ``Message-ID`` (headers only are parsed); None if it has none, or
    more than one, or one that is not a plain ``<left@right>`` of at most 240 characters."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    found = headers.get_all("Message-ID") or []
    if len(found) != 1:
        return None
    value = str(found[0]).strip()
    if len(value) > _MAX_MESSAGE_ID or not _MESSAGE_ID.fullmatch(value):
        return None
    return value


def submission_values(
    raw: bytes, *, mail_from: str | None, recipients: Sequence[str]
) -> dict[str, Any]:
    """The ``Submission`` values of the mail ``raw`` (DATA), sent by ``mail_from``
    (``MAIL FROM``) to ``recipients`` (``RCPT TO``); ``ValidationFailed`` if it cannot be one."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # policy.default's message factory
    errors: list[FieldError] = []
    body: dict[str, Any] = {}

    sender = _one_address(message, _FROM, "from", errors)
    if sender is None and not any(e.field == "from" for e in errors):
        sender = mail_from or None
    if sender is not None:
        body["from"] = sender

    to, cc, bcc = _recipients(message, recipients, errors)
    body["to"] = to
    if cc:
        body["cc"] = cc
    if bcc:
        body["bcc"] = bcc

    reply_to = _one_address(message, _REPLY_TO, "reply_to", errors)
    if reply_to is not None:
        body["reply_to"] = reply_to
    subject = _header_text(message, _SUBJECT)
    if subject:
        body["subject"] = subject

    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    if text_part is not None and text_part.get_content_type() == "text/plain":
        body["text"] = _text(text_part)
    else:
        text_part = None
    if html_part is not None and html_part.get_content_type() == "text/html":
        body["html"] = _text(html_part)
    else:
        html_part = None
    bodies = {id(p) for p in (text_part, html_part) if p is not None}
    files = [
        _attachment(part, i, related)
        for i, (part, related) in enumerate(_files(message, bodies, related=False), 1)
    ]
    if files:
        body["attachments"] = files

    headers = custom_headers(message)
    if headers:
        body["headers"] = headers
    body.update(provider_options(message, errors))
    if errors:
        raise ValidationFailed(errors)
    return body


def _fix(value: str) -> str:
    """``value`` with raw 8-bit bytes (a client that sent UTF-8 headers unencoded,
    which the parser keeps as surrogate escapes) read as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _header_text(message: EmailMessage, name: str) -> str | None:
    """A header's decoded value (encoded-words decoded, unfolded); None if absent. A value
    the email package cannot parse (``From: <``: its parsers raise on some) is the raw
    text, unfolded, for validation to judge."""
    try:
        value = message.get(name)
    except Exception:  # the email package's header parsers choke on some malformed values
        value = _raw_header(message, name)
    if value is None:
        return None
    return _fix(str(value)).replace("\t", " ").strip()


def _raw_header(message: Message, name: str) -> str | None:
    """The first ``name`` header's value as sent, unfolded; None if absent."""
    wanted = name.lower()
    for key, value in message.raw_items():
        if key.lower() == wanted:
            return re.sub(r"\r?\n[ \t]", " ", str(value))
    return None


def _addresses(message: EmailMessage, name: str) -> tuple[HeaderAddress, ...] | None:
    """The addresses of an address header; None if absent or not parseable as addresses."""
    try:
        header = message.get(name)
        found = tuple(getattr(header, "addresses", ())) if header is not None else None
    except Exception:  # the email package's parser has choked on odd headers before
        return None
    if found is None:
        return None
    return tuple(a for a in found if a.username and a.domain)


def _formatted(address: HeaderAddress) -> str:
    """``Name <local@domain>`` (the name quoted where RFC 5322 needs it), or the bare address."""
    name = _fix(address.display_name)
    if name == address.display_name:
        return str(address)
    return str(HeaderAddress(display_name=name, username=address.username, domain=address.domain))


def _one_address(
    message: EmailMessage, name: str, field: str, errors: list[FieldError]
) -> str | None:
    """The one address of header ``name``: formatted, or the header as written when it is
    no address (validation then says why); None if absent."""
    text = _header_text(message, name)
    if not text:
        return None
    found = _addresses(message, name)
    if not found:
        return text
    if len(found) > 1:
        errors.append(
            FieldError(field, f"must be one address; the {name.title()} header names {len(found)}")
        )
        return None
    return _formatted(found[0])


def _key(address: str) -> str:
    """What two spellings of one mailbox have in common (case, IDNA)."""
    try:
        return parse_address(address).email.lower()
    except ValueError:
        return address.strip().lower()


def _recipients(
    message: EmailMessage, recipients: Sequence[str], errors: list[FieldError]
) -> tuple[list[str], list[str], list[str]]:
    """``to``, ``cc`` and ``bcc``: the envelope recipients, placed as the headers show them."""
    pending: dict[str, str] = {}
    for recipient in recipients:
        pending.setdefault(_key(recipient), recipient)
    placed: dict[str, list[str]] = {_TO: [], _CC: []}
    for name in (_TO, _CC):
        for address in _addresses(message, name) or ():
            key = _key(address.addr_spec)
            if key in pending:
                del pending[key]
                placed[name].append(_formatted(address))
    to, cc = placed[_TO], placed[_CC]
    if not to:
        to, cc = cc, []
    if not to and pending:
        errors.append(
            FieldError(
                "to",
                "no envelope recipient (RCPT TO) is named in the To or Cc header: Mailman "
                "needs one visible recipient",
            )
        )
    return to, cc, list(pending.values())


def _text(part: MIMEPart) -> str:
    """A body part as text: its charset decoded (UTF-8 if unknown), ``\\n`` line ends."""
    try:
        content = part.get_content()
    except (LookupError, UnicodeError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        content = ""
    return _LINE_END.sub("\n", content)


def _files(part: MIMEPart, bodies: set[int], *, related: bool) -> Iterator[tuple[MIMEPart, bool]]:
    """The leaf parts, depth first, except the bodies (a ``message/rfc822`` part is one
    leaf), each with whether it is a part of a ``multipart/related``."""
    if part.get_content_maintype() == "multipart":
        inside = part.get_content_type() == "multipart/related"
        for sub in part.iter_parts():
            yield from _files(sub, bodies, related=inside)
    elif id(part) not in bodies:
        yield part, related


def _attachment(part: MIMEPart, number: int, related: bool) -> dict[str, str | bytes]:
    """One leaf part as an ``attachments`` entry (``related``: a part of multipart/related)."""
    content_type = part.get_content_type()
    if part.get_content_maintype() == "message":
        inner = part.get_payload()
        first = inner[0] if isinstance(inner, list) and inner else None
        data = first.as_bytes() if isinstance(first, Message) else part.as_bytes()
        content_type, extension = _OCTETS, ".eml"
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        extension = mimetypes.guess_extension(content_type, strict=True) or ".bin"
    content_id = _content_id(part)
    disposition = part.get_content_disposition()
    inline = content_id is not None and (related or disposition != "attachment")
    filename = _filename(part) or f"{'inline' if inline else 'attachment'}-{number}{extension}"
    out: dict[str, str | bytes] = {
        "filename": filename,
        "content": data,
        "content_type": content_type,
        "disposition": "inline" if inline else "attachment",
    }
    if inline and content_id is not None:
        out["content_id"] = content_id
    return out


def _filename(part: MIMEPart) -> str | None:
    """The part's file name (RFC 2231 or encoded-words decoded), without any path."""
    try:
        name = part.get_filename()
    except Exception:  # a malformed parameter: no name, one is made up
        return None
    if not name:
        return None
    base = re.split(r"[/\\]", _fix(name).strip())[-1].strip()
    return base or None


def _content_id(part: MIMEPart) -> str | None:
    value = part.get("Content-ID")
    if value is None:
        return None
    cid = str(value).strip()
    if cid.startswith("<") and cid.endswith(">"):
        cid = cid[1:-1].strip()
    return cid or None


#: The last second of year 9999: a later unix time cannot be written as a date.
_LAST_UNIX_TIME = 253_402_300_799
#: ``X-Mailman-Unsubscribe: off``: the mail is of no unsubscribe group, not even its
#: tenant's default (``"unsubscribe": false``).
UNSUBSCRIBE_HEADER = "X-Mailman-Unsubscribe"
#: What X-SMTPAPI (SendGrid's SMTP API header) keys become; other keys are refused.
_SMTPAPI_KEYS = {"category": "tags", "unique_args": "metadata", "send_at": "send_at"}


def provider_options(message: EmailMessage, errors: list[FieldError]) -> dict[str, Any]:
    """Tags, metadata and ``send_at`` from the headers an app written for a provider's
    SMTP service sets: SendGrid's ``X-SMTPAPI`` JSON (``category``, ``unique_args``,
    ``send_at``) and Mailgun's ``X-Mailgun-Tag`` (repeated), ``X-Mailgun-Variables``
    (a JSON object) and ``X-Mailgun-Deliver-By`` (an RFC 2822 date). Errors name the
    header (``headers.X-SMTPAPI``); other SMTP API options (batch ``to``,
    substitutions, filters...) are refused, as the HTTP endpoints refuse them."""
    out: dict[str, Any] = {}
    tags: list[str] = []
    metadata: dict[str, Any] = {}
    smtpapi = _json_header(message, "X-SMTPAPI", errors)
    if smtpapi is not None:
        for key, value in smtpapi.items():
            if key not in _SMTPAPI_KEYS:
                errors.append(
                    FieldError("headers.X-SMTPAPI", f"{key!r} is not supported by Mailman")
                )
            elif key == "category" and isinstance(value, str | list):
                tags += [value] if isinstance(value, str) else value
            elif key == "unique_args" and isinstance(value, dict):
                metadata.update(value)
            elif key == "send_at" and type(value) is int and 0 <= value <= _LAST_UNIX_TIME:
                out["send_at"] = datetime_of(value)
            else:
                errors.append(FieldError("headers.X-SMTPAPI", f"{key!r} has the wrong type"))
    tags += [
        _fix(v).strip()
        for k, v in message.raw_items()
        if k.lower() == "x-mailgun-tag" and isinstance(v, str)
    ]
    variables = _json_header(message, "X-Mailgun-Variables", errors)
    if variables is not None:
        metadata.update(variables)
    deliver_by = _header_text(message, "X-Mailgun-Deliver-By")
    if deliver_by is not None:
        try:
            when = email.utils.parsedate_to_datetime(str(deliver_by))
        except (TypeError, ValueError):
            when = None
        if when is None or when.tzinfo is None:
            errors.append(FieldError("headers.X-Mailgun-Deliver-By", "is not an RFC 2822 date"))
        else:
            out["send_at"] = when
    unsubscribe = _header_text(message, UNSUBSCRIBE_HEADER)
    if unsubscribe is not None:
        if str(unsubscribe).strip().lower() == "off":
            out["unsubscribe"] = False
        else:
            errors.append(FieldError(f"headers.{UNSUBSCRIBE_HEADER}", "must be off (or left out)"))
    if tags:
        out["tags"] = tags
    if metadata:
        # Mailman's metadata is a string map; numbers and the like are kept as their JSON.
        out["metadata"] = {
            k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
            for k, v in metadata.items()
        }
    return out


def _json_header(
    message: EmailMessage, name: str, errors: list[FieldError]
) -> dict[str, Any] | None:
    """A header holding a JSON object (None without it; an error naming it if not one)."""
    raw = _header_text(message, name)
    if raw is None:
        return None
    try:
        value = json.loads(_fix(str(raw)))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        errors.append(FieldError(f"headers.{name}", "must be a JSON object"))
        return None
    return value


def custom_headers(message: EmailMessage) -> dict[str, str]:
    """The ``X-`` headers Mailman can carry, in order; the first of each name only."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name, _ in message.raw_items():
        lowered = name.lower()
        if not lowered.startswith("x-") or lowered in seen:
            continue
        seen.add(lowered)
        value = _header_text(message, name) or ""
        problem = header_name_problem(name) or header_value_problem(value)
        if problem is None and len(name) + 2 + len(value) <= MAX_HEADER_LINE:
            out[name] = value
            if len(out) == MAX_HEADERS:
                break
    return out

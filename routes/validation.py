"""Validation of a submitted mail: a parsed JSON body in, a ``Mail`` out.

Pure functions, no I/O: ``parse_mail`` either returns a ``Mail`` or raises
``ValidationFailed`` listing every bad field, one message per field, named
as the API names them (``to[1]``, ``from``, ``subject``, ``content``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import getaddresses

from email_validator import EmailNotValidError, validate_email

from actors.messages import Address, Mail

#: The most recipients one mail may have, ``to``, ``cc`` and ``bcc`` together.
MAX_RECIPIENTS = 1000

#: The field named when the body as a whole is wrong (not a JSON object).
BODY_FIELD = "body"

_LINE_BREAKS = ("\r", "\n")
_BODIES = ("content", "text", "html")


@dataclass(frozen=True, slots=True)
class FieldError:
    """What is wrong with one field of a submitted mail."""

    field: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class ValidationFailed(ValueError):
    """A submitted mail is invalid; ``errors`` names every bad field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class _Errors:
    """Collects field errors, keeping the first message for each field."""

    def __init__(self) -> None:
        self._by_field: dict[str, FieldError] = {}

    def add(self, field: str, message: str) -> None:
        self._by_field.setdefault(field, FieldError(field, message))

    def __bool__(self) -> bool:
        return bool(self._by_field)

    def as_list(self) -> list[FieldError]:
        return list(self._by_field.values())


def has_line_break(value: str) -> bool:
    """True if ``value`` holds a CR or LF (a header injection attempt)."""
    return any(c in value for c in _LINE_BREAKS)


def parse_address(raw: str) -> Address:
    """One address, with an optional display name (``Ann <ann@example.com>``).

    Raises ``ValueError`` with a message for the caller if ``raw`` is not
    exactly one valid address. The address part is checked for syntax only
    (no DNS) and kept in its normalized form.
    """
    if has_line_break(raw):
        raise ValueError("must not contain CR or LF")
    if not raw.strip():
        raise ValueError("must not be empty")
    parsed = getaddresses([raw])
    if len(parsed) != 1 or not parsed[0][1]:
        raise ValueError("must hold exactly one address")
    name, addr = parsed[0]
    # getaddresses is lenient and may rewrite odd input; insist that the
    # address it found is literally there.
    if addr not in raw:
        raise ValueError("must hold exactly one address")
    try:
        valid = validate_email(addr, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"is not a valid address: {exc}") from None
    return Address(email=valid.normalized, name=name.strip())


def _one_address(value: object, field: str, errors: _Errors) -> Address | None:
    if not isinstance(value, str):
        errors.add(field, "must be a string")
        return None
    try:
        return parse_address(value)
    except ValueError as exc:
        errors.add(field, str(exc))
        return None


def _address_list(value: object, field: str, errors: _Errors) -> list[object] | None:
    """The raw entries of a recipient field (a string or a list); None for a wrong type."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    errors.add(field, "must be a string or a list of strings")
    return None


def _addresses(field: str, raw: list[object], errors: _Errors) -> tuple[Address, ...]:
    """Every entry of a recipient list parsed; errors name the entry (``to[1]``)."""
    out: list[Address] = []
    for i, entry in enumerate(raw):
        address = _one_address(entry, f"{field}[{i}]", errors)
        if address is not None:
            out.append(address)
    return tuple(out)


def _optional_string(body: Mapping[str, object], field: str, errors: _Errors) -> str | None:
    value = body.get(field)
    if value is None or isinstance(value, str):
        return value
    errors.add(field, "must be a string")
    return None


def parse_mail(body: object, *, mail_id: str, default_subject: str, now: float) -> Mail:
    """The ``Mail`` that a decoded JSON request body describes.

    Raises ``ValidationFailed`` listing every bad field. Unknown fields are
    ignored. When there are more than ``MAX_RECIPIENTS`` recipients, their
    entries are not checked one by one (that would be unbounded work).
    """
    if not isinstance(body, dict):
        raise ValidationFailed([FieldError(BODY_FIELD, "must be a JSON object")])
    errors = _Errors()

    # Recipients: types first, then the count, then each entry.
    lists: dict[str, list[object]] = {}
    for field in ("to", "cc", "bcc"):
        value = body.get(field)
        if value is None:
            if field == "to":
                errors.add(field, "is required")
            continue
        entries = _address_list(value, field, errors)
        if entries is None:
            continue
        if field == "to" and not entries:
            errors.add(field, "must name at least one recipient")
        lists[field] = entries
    total = 0
    too_many = False
    for field, entries in lists.items():
        total += len(entries)
        if total > MAX_RECIPIENTS and not too_many:
            too_many = True
            errors.add(
                field,
                f"too many recipients: at most {MAX_RECIPIENTS} in to, cc and bcc together",
            )
    parsed: dict[str, tuple[Address, ...]] = {}
    if not too_many:
        parsed = {field: _addresses(field, entries, errors) for field, entries in lists.items()}

    sender: Address | None = None
    if body.get("from") is None:
        errors.add("from", "is required")
    else:
        sender = _one_address(body["from"], "from", errors)

    reply_to: Address | None = None
    if body.get("reply_to") is not None:
        reply_to = _one_address(body["reply_to"], "reply_to", errors)

    subject = _optional_string(body, "subject", errors)
    if subject is not None and has_line_break(subject):
        errors.add("subject", "must not contain CR or LF")
    if not subject or not subject.strip():
        subject = default_subject

    text, html = _bodies(body, errors)

    if errors or sender is None:
        raise ValidationFailed(errors.as_list())
    return Mail(
        id=mail_id,
        sender=sender,
        to=parsed.get("to", ()),
        subject=subject,
        text=text,
        html=html,
        cc=parsed.get("cc", ()),
        bcc=parsed.get("bcc", ()),
        reply_to=reply_to,
        created_at=now,
    )


def _bodies(body: Mapping[str, object], errors: _Errors) -> tuple[str | None, str | None]:
    """The plain-text and HTML bodies; ``content`` and ``text`` both name the plain text."""
    content = _optional_string(body, "content", errors)
    text = _optional_string(body, "text", errors)
    html = _optional_string(body, "html", errors)
    if content is not None and text is not None and content != text:
        errors.add("text", "differs from content; give the plain text once")
    plain = content if content is not None else text
    wrong_type = any(body.get(f) is not None and not isinstance(body.get(f), str) for f in _BODIES)
    if not wrong_type and not plain and not html:
        errors.add("content", "give a non-empty plain-text body (content or text) or html")
    return plain or None, html or None

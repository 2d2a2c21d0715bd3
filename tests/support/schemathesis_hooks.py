"""schemathesis hooks for ``tests/system/test_openapi.py``: what the document says in words only.

Loaded by the schemathesis run (``SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks``).

1. Strategies for the formats the document names beside JSON Schema's own, which
   Hypothesis cannot generate: ``mailbox``, ``address`` (``core.schemas``), a Mailgun
   ``mailbox-list`` and ``rfc2822-date-time``, GET /mail's ``cursor`` and GET
   /suppressions's ``suppression-cursor``; and for
   ``date-time``, whose ten thousand years Hypothesis spans where ``send_at`` may be at most
   72 hours ahead.
2. The rules a schema cannot say, because they tie one value to another, to an earlier
   request, or to this deployment (``map_case``): each is in the document's descriptions.
   A case schemathesis generates as valid is kept to them too, the way a client reading
   the description would; a case generated as invalid is left as it is.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime, getaddresses
from typing import Any

import orjson
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, HookContext
from schemathesis.core.parameters import ParameterLocation

from mailman.core.schemas import ADDRESS_FORMAT, MAILBOX_FORMAT
from mailman.core.validation import (
    MAX_ATTACHMENTS,
    MAX_EXTRA_BYTES,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_METADATA_BYTES,
    MAX_RECIPIENTS,
    MAX_SCHEDULE_SECONDS,
    extra_bytes,
)
from mailman.routes.errors import IDEMPOTENCY_KEY
from mailman.routes.mail import CURSOR_FORMAT, encode_cursor
from mailman.routes.models.mailgun import MAILBOX_LIST_FORMAT, RFC2822_FORMAT
from mailman.routes.suppressions import CURSOR_FORMAT as SUPPRESSION_CURSOR_FORMAT

# --- formats --------------------------------------------------------------------------

#: An RFC 5322 dot-atom local part (email-validator's ATEXT), as Mailman takes it.
_ATOM = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}", fullmatch=True)
_LOCAL = st.lists(_ATOM, min_size=1, max_size=3).map(".".join).filter(lambda s: len(s) <= 64)
_LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda label: "--" not in label
)
_TLD = st.sampled_from(["com", "org", "net", "de", "io", "dev", "co"])
_DOMAIN = st.builds(
    lambda labels, tld: ".".join([*labels, tld]), st.lists(_LABEL, min_size=1, max_size=3), _TLD
)
#: ``ann@example.com``.
ADDRESSES = st.builds("{}@{}".format, _LOCAL, _DOMAIN)

_WORD = st.from_regex(r"[A-Za-z0-9]{1,10}", fullmatch=True)
_PLAIN_NAME = st.lists(_WORD, min_size=1, max_size=4).map(" ".join)
#: A quoted display name: any printable character but the quote and the backslash.
_QUOTED_NAME = st.text(
    st.characters(
        min_codepoint=0x20,
        max_codepoint=0x2FF,
        exclude_characters='"\\',
        exclude_categories=("Cc", "Cs"),
    ),
    min_size=1,
    max_size=40,
).filter(lambda name: name.strip() != "" and "=?" not in name)
#: ``ann@example.com``, ``Ann Lee <ann@example.com>``, ``"Lee, Ann" <ann@example.com>``.
MAILBOXES = st.one_of(
    ADDRESSES,
    st.builds("{} <{}>".format, _PLAIN_NAME, ADDRESSES),
    st.builds('"{}" <{}>'.format, _QUOTED_NAME, ADDRESSES),
)


def _latest() -> int:
    """The latest time a generated ``send_at`` may name: inside the window, with an hour to
    spare for the run."""
    return int(time.time()) + MAX_SCHEDULE_SECONDS - 3600


#: Times from 2000 to ``_latest()``, in a few zones.
INSTANTS = st.builds(
    datetime.fromtimestamp,
    st.integers(946_684_800, _latest()),
    st.sampled_from([0, 0, 60, -300, 330]).map(
        lambda minutes: UTC if minutes == 0 else timezone(timedelta(minutes=minutes))
    ),
)


def _rfc3339(at: datetime, millis: bool) -> str:
    return at.isoformat(timespec="milliseconds" if millis else "seconds").replace("+00:00", "Z")


#: A cursor as GET /mail's ``next`` gives it out: a mail's creation time and id.
CURSORS = st.builds(
    encode_cursor,
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.from_regex(r"[0-9A-Za-z]{1,64}", fullmatch=True),
)

#: A cursor as GET /suppressions's ``next`` gives it out: the last (tenant, address, group)
#: as JSON, base64url without padding.
SUPPRESSION_CURSORS = st.builds(
    lambda tenant, address: (
        base64.urlsafe_b64encode(orjson.dumps([tenant, address, ""])).decode().rstrip("=")
    ),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True),
    ADDRESSES,
)

schemathesis.openapi.format(MAILBOX_FORMAT, MAILBOXES)
schemathesis.openapi.format(ADDRESS_FORMAT, ADDRESSES)
schemathesis.openapi.format(
    MAILBOX_LIST_FORMAT, st.lists(MAILBOXES, min_size=1, max_size=3).map(", ".join)
)
schemathesis.openapi.format("date-time", st.builds(_rfc3339, INSTANTS, st.booleans()))
schemathesis.openapi.format(RFC2822_FORMAT, INSTANTS.map(format_datetime))
schemathesis.openapi.format(CURSOR_FORMAT, CURSORS)
schemathesis.openapi.format(SUPPRESSION_CURSOR_FORMAT, SUPPRESSION_CURSORS)


# --- what a schema cannot say ---------------------------------------------------------


def _headers(headers: Any, most: int = MAX_HEADERS) -> Any:
    """At most ``most`` headers, no name twice in any case, each ``Name: value`` on one line."""
    if not isinstance(headers, dict):
        return headers
    out: dict[str, str] = {}
    for name, value in headers.items():
        cut = value[: MAX_HEADER_LINE - 2 - len(name)].rstrip(" ")
        if cut and name.lower() not in {n.lower() for n in out} and len(out) < most:
            out[name] = cut
    return out


def _metadata(metadata: Any, budget: int = MAX_METADATA_BYTES) -> Any:
    """At most ``budget`` bytes as JSON with Mailman's mail_id."""
    if not isinstance(metadata, dict):
        return metadata
    out = dict(metadata)
    while out and len(orjson.dumps({**out, "mail_id": "0" * 26})) > budget:
        out.popitem()
    return out


def _extras(headers: Any, tags: Any, metadata: Any, budget: int = MAX_EXTRA_BYTES) -> None:
    """Headers, tags and metadata together at most ``budget`` bytes as Mailgun's fields
    (trimmed in place)."""

    def size() -> int:
        return extra_bytes(
            list(headers.items()) if isinstance(headers, dict) else [],
            list(tags) if isinstance(tags, list) else [],
            list(metadata.items()) if isinstance(metadata, dict) else [],
        )

    for held in (metadata, headers, tags):
        while held and size() > budget:
            if isinstance(held, dict):
                held.popitem()
            elif isinstance(held, list):
                held.pop()


def _inline_ids_once(files: Any, content_id: str) -> Any:
    """Each inline file's content id once in the mail, in any case."""
    if not isinstance(files, list):
        return files
    seen: set[str] = set()
    out = []
    for file in files:
        cid = file.get(content_id) if isinstance(file, dict) else None
        if isinstance(cid, str):
            if cid.strip("<>").lower() in seen:
                continue
            seen.add(cid.strip("<>").lower())
        out.append(file)
    return out


def _cap_recipients(holders: list[dict[str, Any]], count: Callable[[str], int]) -> None:
    """At most MAX_RECIPIENTS in to, cc and bcc together (of every holder): entries past
    that are dropped, but each holder keeps its first ``to``."""
    room = MAX_RECIPIENTS
    for holder in holders:
        for kind in ("to", "cc", "bcc"):
            value = holder.get(kind)
            if isinstance(value, str):
                room -= count(value)
            elif isinstance(value, list):
                kept: list[Any] = []
                for entry in value:
                    n = count(entry) if isinstance(entry, str) else 1
                    if n <= room or (kind == "to" and not kept):
                        kept.append(entry)
                        room -= n
                holder[kind] = kept


def _one_recipient(holder: dict[str, Any]) -> None:
    """A mail with one-click unsubscribe goes to one recipient (its link names who): its
    first ``to`` only, no cc or bcc."""
    to = holder.get("to")
    if isinstance(to, list) and to:
        holder["to"] = to[:1]
    holder.pop("cc", None)
    holder.pop("bcc", None)


#: What a mail renders when the template a case named is dropped (see ``_untemplated``).
_BODY = "Hello"


def _untemplated(body: dict[str, Any], names: tuple[str, ...]) -> bool:
    """Drop a template and its data: one must be stored, and its data hold what it prints,
    neither of which a schema can say. Whether a template was named."""
    named = body.get(names[0]) is not None
    for name in names:
        body.pop(name, None)
    return named


def _mail(body: dict[str, Any]) -> None:
    """POST /mail/send's body (``Submission``'s rules of the mail as a whole)."""
    _untemplated(body, ("template", "template_version", "data"))
    if not (body.get("content") or body.get("text") or body.get("html")):
        body["content"] = _BODY  # the template named would have rendered it
        if isinstance(body.get("text"), str):
            body["text"] = _BODY
    _cap_recipients([body], lambda entry: 1)
    if body.get("unsubscribe") is not None:
        _one_recipient(body)
    # content and text are the same body: equal when both are given.
    content, text = body.get("content"), body.get("text")
    if isinstance(content, str) and isinstance(text, str) and content != text:
        body["content"] = body["text"] = content or text
    # This service runs without MAILMAN_CALLBACK_SECRET: it takes no callback_url.
    body.pop("callback_url", None)
    body["headers"] = _headers(body.get("headers"))
    body["metadata"] = _metadata(body.get("metadata"))
    _extras(body["headers"], body.get("tags"), body["metadata"])
    body["attachments"] = _inline_ids_once(body.get("attachments"), "content_id")


def _sendgrid(body: dict[str, Any]) -> None:
    """POST /v3/mail/send's body: each personalization is a mail under _mail's rules, its
    headers and custom_args merged over the message's: the message's and a
    personalization's get half the room each."""
    personalizations = [p for p in body.get("personalizations") or [] if isinstance(p, dict)]
    if _untemplated(body, ("template_id",)) or body.get("content") is None:
        body["content"] = [{"type": "text/plain", "value": _BODY}]
    for personalization in personalizations:
        personalization.pop("dynamic_template_data", None)
    _cap_recipients(personalizations, lambda entry: 1)
    if body.get("asm") is not None:
        for personalization in personalizations:
            _one_recipient(personalization)
    for holder in (body, *personalizations):
        holder["headers"] = _headers(holder.get("headers"), MAX_HEADERS // 2)
        holder["custom_args"] = _metadata(holder.get("custom_args"), MAX_METADATA_BYTES // 2)
        _extras(
            holder["headers"],
            holder.get("categories"),
            holder["custom_args"],
            MAX_EXTRA_BYTES // 2,
        )
        send_at = holder.get("send_at")
        if (
            isinstance(send_at, int | float)
            and not isinstance(send_at, bool)
            and send_at > _latest()
        ):
            holder["send_at"] = int(time.time())  # at most 72 hours ahead
    # text/plain and text/html once each.
    if isinstance(body.get("content"), list):
        kinds = [str(b.get("type", "")).partition(";")[0].strip().lower() for b in body["content"]]
        body["content"] = [b for i, b in enumerate(body["content"]) if kinds[i] not in kinds[:i]]
    body["attachments"] = _inline_ids_once(body.get("attachments"), "content_id")


def _mailgun(form: dict[str, Any]) -> None:
    """POST /v3/{domain}/messages's form under _mail's rules: its h:X- fields are headers,
    its v: fields metadata, its o:tag tags."""
    templated = _untemplated(form, ("template", "t:version", "t:variables", "t:text"))
    if templated or not (form.get("text") or form.get("html")):
        form["text"] = _BODY
    _cap_recipients([form], lambda entry: len([a for a in getaddresses([entry]) if a[1]]))
    headers = _headers({k[2:]: v for k, v in form.items() if k[:4].lower() == "h:x-"})
    metadata = _metadata({k[2:]: v for k, v in form.items() if k.startswith("v:")})
    tags = form.get("o:tag")
    _extras(headers, [tags] if isinstance(tags, str) else tags, metadata)
    for key in [k for k in form if k[:4].lower() == "h:x-" or k.startswith("v:")]:
        kept = headers if key.startswith("h:") else metadata
        if key[2:] in kept:
            form[key] = kept[key[2:]]
        else:
            del form[key]
    # An inline file's content id is its file name, and schemathesis names every file part
    # after its field: a second inline file would repeat the first's content id.
    if isinstance(form.get("inline"), list):
        form["inline"] = form["inline"][:1]
    # No empty file (the schema says it in words: schemathesis checks a file as "").
    for field in ("attachment", "inline"):
        if isinstance(form.get(field), list):
            form[field] = [file for file in form[field] if getattr(file, "data", file)]
    # At most MAX_ATTACHMENTS files, attachments and inline ones together.
    if isinstance(form.get("attachment"), list):
        form["attachment"] = form["attachment"][: MAX_ATTACHMENTS - len(form.get("inline") or [])]


def _template(body: dict[str, Any]) -> None:
    """POST /templates' and PUT's body: each part parses (no tag left to be a bad one)."""
    for name in ("subject", "html", "text"):
        if isinstance(body.get(name), str):
            body[name] = body[name].replace("{", "(").replace("}", ")")


#: Bodies schemathesis cannot check again once changed (their files are bytes, which it
#: would take for invalid strings): a case generated as valid that breaks a rule is dropped.
UNCHANGEABLE = "multipart/form-data"


#: Per operation: what keeps a body generated as valid to the rules a schema cannot say.
BODY_RULES: dict[str, Callable[[dict[str, Any]], None]] = {
    "POST /mail/send": _mail,
    "POST /v3/mail/send": _sendgrid,
    "POST /v3/{domain}/messages": _mailgun,
    "POST /templates": _template,
    "PUT /templates/{ref}": _template,
}


def _valid(case: Case[Any], *where: ParameterLocation) -> bool:
    """Whether ``case`` was generated as valid at each of ``where``."""
    meta = case.meta
    return meta is None or not any(meta.is_negative_at(location) for location in where)


def _kept_to_rules(case: Case[Any]) -> dict[str, Any] | None:
    """``case``'s body kept to its operation's rules; None when it has none to keep."""
    rules = BODY_RULES.get(f"{case.method.upper()} {case.path}")
    if rules is None or not isinstance(case.body, dict) or not _valid(case, ParameterLocation.BODY):
        return None
    body = copy.deepcopy(case.body)
    rules(body)
    return body


def _metadata_pair(case: Case[Any]) -> None:
    """GET /mail's metadata_key and metadata_value come together (each one's description
    says so): one generated alone as valid gets its pair, the key another's value."""
    if not _valid(case, ParameterLocation.QUERY):
        return
    query = case.query
    if "metadata_key" in query and "metadata_value" not in query:
        query["metadata_value"] = "42"
    elif "metadata_value" in query and "metadata_key" not in query:
        query["metadata_key"] = "order"


@schemathesis.hook
def filter_case(context: HookContext, case: Case[Any]) -> bool:
    body = _kept_to_rules(case) if case.media_type == UNCHANGEABLE else None
    return body is None or body == case.body


@schemathesis.hook
def map_case(context: HookContext, case: Case[Any]) -> Case[Any]:
    body = _kept_to_rules(case) if case.media_type != UNCHANGEABLE else None
    if body is not None and body != case.body:
        case.body = body
    if case.path == "/mail" and case.method.upper() == "GET" and case.query:
        _metadata_pair(case)
    key = case.headers.get(IDEMPOTENCY_KEY) if case.headers else None
    if key is not None and _valid(case, ParameterLocation.HEADER, ParameterLocation.BODY):
        # An Idempotency-Key used again with another body is refused (422): the key
        # generated is made this body's own.
        digest = hashlib.sha256(repr(case.body).encode()).hexdigest()[:16]
        case.headers[IDEMPOTENCY_KEY] = f"{key.strip()[:200]}.{digest}"
    return case

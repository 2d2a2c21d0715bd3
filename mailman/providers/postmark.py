"""Postmark Email API (``POST /email``, JSON, ``X-Postmark-Server-Token``).

Success is ``200`` ``{"MessageID", "ErrorCode": 0, "SubmittedAt", "To"}``.
Errors are JSON ``{"ErrorCode", "Message"}``: ``422`` for a mail Postmark
will not take, ``401`` (``ErrorCode`` 10) for a bad token, ``413`` over 10 MB.
See the provider API notes (providers.md).

A failure before the request could reach Postmark (no connection) is
``Transient``; one after it may have (no answer in time, the connection lost
before the answer) is ``Unknown``. Every mail carries its id in Postmark's
``Metadata`` (``mail_id``), so ``lookup`` asks the outbound message search
(``GET /messages/outbound``) for a message with that metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from mailman.config import ProviderPlugin, Secret, parse, required, setting
from mailman.core.model import Attachment, Check, Disposition, Mail, SuppressionReason

from . import (
    Accepted,
    Answer,
    Found,
    HttpClient,
    Listed,
    ListUnavailable,
    Misconfigured,
    Result,
    classify,
    describe,
    formatted_address,
    redact,
    shorten,
)

#: The header the server token goes in.
TOKEN_HEADER = "X-Postmark-Server-Token"
#: The metadata key that carries Mailman's mail id (searched by ``lookup``).
MAIL_ID_KEY = "mail_id"
#: ``ErrorCode``s of a 422 that say the account or server is wrong, not the mail:
#: out of credits (405), account pending approval (412), no such message stream
#: (1235). Misconfigured: logged as errors and counted by the breaker.
ACCOUNT_ERRORS = frozenset({405, 412, 1235})
#: Messages asked for per search page (Postmark allows up to 500): one mail id
#: matches one message, so one small page is enough.
SEARCH_COUNT = 50


#: The provider's name in the chain.
NAME = "postmark"


@dataclass(frozen=True, slots=True)
class PostmarkConfig:
    server_token: Secret = setting(
        env="POSTMARK_SERVER_TOKEN",
        parse=parse.secret,
        help="Postmark server token; without one Postmark is left out, with a warning",
        doc="Postmark server API token. Without one, Postmark is left out, with a warning",
    )
    base_url: str = setting(
        "https://api.postmarkapp.com",
        env="POSTMARK_BASE_URL",
        parse=parse.base_url,
        help="Postmark's API",
    )
    message_stream: str = setting(
        "outbound",
        env="POSTMARK_MESSAGE_STREAM",
        parse=parse.stripped,
        help="the Postmark message stream mail goes out on (and is searched in)",
    )


#: Postmark's suppression reasons that say what happened (``ManualSuppression`` depends on
#: who made it).
_SUPPRESSION_REASONS = {
    "HardBounce": SuppressionReason.BOUNCE,
    "SpamComplaint": SuppressionReason.COMPLAINT,
}


class PostmarkClient(HttpClient):
    """Sends mail through Postmark over pooled keep-alive connections."""

    title = "Postmark"

    def __init__(self, config: PostmarkConfig, timeout: float) -> None:
        super().__init__(NAME, timeout)
        self._config = config
        base = config.base_url.rstrip("/")
        self._url = f"{base}/email"
        self._search_url = f"{base}/messages/outbound"

    def _headers(self, token: str) -> dict[str, str]:
        return {TOKEN_HEADER: token, "Accept": "application/json"}

    async def send(self, mail: Mail) -> Result:
        token = self._config.server_token.reveal()
        headers = {**self._headers(token), "Content-Type": "application/json"}
        data = orjson.dumps(body(mail, self._config.message_stream))
        answer = await self.post(self._url, data, headers, token)
        if not isinstance(answer, Answer):
            return answer
        if 200 <= answer.status < 300:
            return Accepted(message_id=_message_id(answer.body))
        reason = redact(_error_reason(answer.body), token)
        result = classify(answer.status, reason, answer.header("Retry-After"))
        if answer.status == 422 and _error_code(answer.body) in ACCOUNT_ERRORS:
            return Misconfigured(shorten(reason), answer.status)
        return result

    async def suppression_list(self) -> list[Listed]:
        """The configured stream's suppressions (``GET /message-streams/{stream}/
        suppressions/dump``: ``{"Suppressions": [{"EmailAddress", "SuppressionReason",
        "Origin", "CreatedAt"}]}``, the whole list at once): ``HardBounce`` is a bounce,
        ``SpamComplaint`` a complaint, ``ManualSuppression`` an unsubscribe when the
        recipient made it (``Origin`` ``Recipient``), else manual."""
        token = self._config.server_token.reveal()
        stream = self._config.message_stream
        url = f"{self._config.base_url.rstrip('/')}/message-streams/{stream}/suppressions/dump"
        answer = await self.get_json(url, self._headers(token), token)
        items = answer.get("Suppressions") if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise ListUnavailable(f"{NAME}: the dump did not answer Suppressions")
        found: list[Listed] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("EmailAddress"), str):
                continue
            reason = _SUPPRESSION_REASONS.get(str(item.get("SuppressionReason")))
            if reason is None:
                reason = (
                    SuppressionReason.UNSUBSCRIBE
                    if item.get("Origin") == "Recipient"
                    else SuppressionReason.MANUAL
                )
            found.append(Listed(item["EmailAddress"], reason))
        return found

    async def lookup(self, mail: Mail, since: float) -> Found:
        """Whether Postmark took ``mail``: an outbound message in the configured stream
        whose ``Metadata`` holds its mail id. Any failure to ask is ``Check.CANNOT``.

        ``since`` is not sent: Postmark reads a ``fromdate`` without an offset as US
        Eastern time, and a mail id is unique, so the search needs no date to be exact.
        """
        session = await self.session()
        token = self._config.server_token.reveal()
        params = {
            "count": str(SEARCH_COUNT),
            "offset": "0",
            f"metadata_{MAIL_ID_KEY}": mail.id,
            "messagestream": self._config.message_stream,
        }
        try:
            async with session.get(
                self._search_url,
                params=params,
                headers=self._headers(token),
                allow_redirects=False,
                timeout=self._ask_timeouts,
            ) as resp:
                raw = await resp.read()
                if not 200 <= resp.status < 300:
                    reason = shorten(redact(_error_reason(raw), token))
                    return _cannot(f"outbound search: HTTP {resp.status}: {reason}")
        except aiohttp.InvalidURL:
            return _cannot(f"invalid Postmark URL {self._search_url!r}")
        except TimeoutError:
            return _cannot(f"outbound search: no answer within {self._ask_timeouts.total:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return _cannot(redact(f"outbound search: connection error: {describe(exc)}", token))
        return _found(raw, mail.id)


def body(mail: Mail, stream: str) -> dict[str, Any]:
    """The ``/email`` JSON body for ``mail`` on the message stream ``stream``.

    Pure. Addresses are written as in a header (``formatted_address``: a name
    with a comma is quoted, so the comma-separated lists stay unambiguous).
    Postmark takes one ``Tag``: the mail's first tag. The mail id goes in
    ``Metadata`` (``mail_id``) with what of the mail's metadata Postmark takes
    (``metadata``), the ``Message-ID`` in ``Headers``.
    """
    out: dict[str, Any] = {
        "From": formatted_address(mail.sender),
        "To": ", ".join(formatted_address(a) for a in mail.to),
        "Subject": mail.subject,
        "MessageStream": stream,
    }
    if mail.cc:
        out["Cc"] = ", ".join(formatted_address(a) for a in mail.cc)
    if mail.bcc:
        out["Bcc"] = ", ".join(formatted_address(a) for a in mail.bcc)
    if mail.reply_to is not None:
        out["ReplyTo"] = formatted_address(mail.reply_to)
    if mail.html:
        out["HtmlBody"] = mail.html
    if mail.text:
        out["TextBody"] = mail.text
    out["Headers"] = [
        {"Name": name, "Value": value}
        for name, value in (*mail.sent_headers, ("Message-ID", mail.message_id))
    ]
    if mail.tags:
        out["Tag"] = mail.tags[0]
    out["Metadata"] = metadata(mail)
    if mail.attachments:
        out["Attachments"] = [attachment(a) for a in mail.attachments]
    return out


#: What Postmark takes in ``Metadata`` (more is a 422, ``ErrorCode`` 300, for the whole
#: mail): fields, characters of a field's name, characters of its value.
MAX_METADATA_FIELDS = 10
MAX_METADATA_NAME = 20
MAX_METADATA_VALUE = 80


def metadata(mail: Mail) -> dict[str, str]:
    """Postmark's ``Metadata`` for ``mail``: ``mail_id`` (its id) first, always; then each
    of its metadata entries in order while there is room (10 fields in all), if its name
    is at most 20 characters, its value at most 80, and its name is not one already given
    in another case (Postmark takes ``a_key`` or ``A_Key``, not both). The others are
    left out: one of them would make Postmark refuse the whole mail."""
    out = {MAIL_ID_KEY: mail.id}
    names = {MAIL_ID_KEY}
    for name, value in mail.metadata:
        if len(out) == MAX_METADATA_FIELDS:
            break
        if (
            len(name) <= MAX_METADATA_NAME
            and len(value) <= MAX_METADATA_VALUE
            and name.lower() not in names
        ):
            names.add(name.lower())
            out[name] = value
    return out


def attachment(file: Attachment) -> dict[str, str]:
    """One of Postmark's ``Attachments``: name, base64 content as stored, type; an inline
    file also its ``ContentID`` as ``cid:<id>`` (what the HTML refers to)."""
    out = {"Name": file.filename, "Content": file.content, "ContentType": file.content_type}
    if file.disposition is Disposition.INLINE and file.content_id is not None:
        out["ContentID"] = f"cid:{file.content_id}"
    return out


def _message_id(raw: bytes) -> str:
    """The ``MessageID`` of a success body; "" if there is none."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    return str(data["MessageID"]) if isinstance(data, dict) and data.get("MessageID") else ""


def _found(raw: bytes, mail_id: str) -> Found:
    """What an outbound search answer says: ``TAKEN`` if it lists a message whose
    metadata holds ``mail_id`` (its ``MessageID`` kept), else ``NOT_FOUND``."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _cannot("outbound search: the answer is not JSON")
    messages = data.get("Messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        return _cannot("outbound search: the answer has no list of Messages")
    for message in messages:
        if not isinstance(message, dict):
            continue
        metadata = message.get("Metadata")
        if isinstance(metadata, dict) and metadata.get(MAIL_ID_KEY) == mail_id:
            found = message.get("MessageID")
            return Found(Check.TAKEN, message_id=str(found) if found else None)
    return Found(Check.NOT_FOUND)


def _cannot(reason: str) -> Found:
    return Found(Check.CANNOT, reason=reason)


def _error_code(raw: bytes) -> int | None:
    """The ``ErrorCode`` of a Postmark error body, if it has one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    code = data.get("ErrorCode") if isinstance(data, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _error_reason(raw: bytes) -> str:
    """``ErrorCode N: Message`` of a Postmark error body, or its text."""
    text = raw.decode("utf-8", errors="replace")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return text
    if isinstance(data, dict) and data.get("Message"):
        code = data.get("ErrorCode")
        prefix = f"ErrorCode {code}: " if isinstance(code, int) else ""
        return f"{prefix}{data['Message']}"
    return text


#: The entry point ``postmark`` of the group ``mailman.providers`` (pyproject.toml).
plugin = ProviderPlugin(
    NAME, PostmarkConfig, PostmarkClient, required("server_token"), summary="Postmark Email API"
)

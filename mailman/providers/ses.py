"""Amazon SES API v2 ``SendEmail`` (``POST /v2/email/outbound-emails``), SigV4-signed.

The mail goes as raw MIME (``Content.Raw.Data``): the RFC 5322 message the
outbox writes (``outbox.render``: our Message-ID, headers, attachments, no
Bcc header), its recipients in ``Destination`` (the Bcc ones only there), the
mail id as the email tag ``mail_id`` (and each metadata entry SES can take as
a tag), and ``ConfigurationSetName`` when one is configured. Success is
``200`` ``{"MessageId"}``; errors are JSON ``{"message"}`` with their type in
the ``x-amzn-ErrorType`` header. See the provider API notes (providers.md).

Requests are signed by botocore's ``SigV4Auth`` over the exact bytes sent,
with credentials from botocore's standard chain (environment, shared files
and profiles, SSO, container and instance roles). Finding them may do network
I/O (a role's metadata service, STS), so it happens in a thread, at start and
whenever botocore says refreshable credentials are near expiry; the event loop
never waits on it. SES has no lookup by Message-ID: ``lookup`` is
``Check.CANNOT``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

from mailman.config import SETTINGS, ConfigError, ProviderPlugin, parse, setting
from mailman.config.logging import get_logger
from mailman.core.model import Check, Mail, SuppressionReason

from . import (
    MAX_LIST_PAGES,
    Accepted,
    Answer,
    Found,
    HttpClient,
    Listed,
    ListUnavailable,
    Misconfigured,
    Rejected,
    Result,
    Transient,
    classify,
    describe,
    shorten,
)
from .outbox import render

if TYPE_CHECKING:  # botocore is imported when SES is used, not when the settings are read
    from botocore.credentials import Credentials, ReadOnlyCredentials

log = get_logger("mailman.providers.ses")

#: The SigV4 service name of SES.
SERVICE = "ses"
#: The send endpoint's path.
SEND_PATH = "/v2/email/outbound-emails"
#: The account suppression list's path (``ListSuppressedDestinations``).
SUPPRESSION_PATH = "/v2/email/suppression/addresses"
#: Entries per page of it (its most).
LIST_PAGE = 1000
#: SES's suppression reasons.
_SUPPRESSION_REASONS = {
    "BOUNCE": SuppressionReason.BOUNCE,
    "COMPLAINT": SuppressionReason.COMPLAINT,
}
#: The email tag that carries the mail id (SES events list it in ``mail.tags``).
MAIL_ID_TAG = "mail_id"
#: What SES takes as an email tag's name or value.
TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")
#: Seconds before credentials that were not found are looked for again.
RESOLVE_AGAIN_SECONDS = 30.0
#: Error types that say the account cannot send at all (400s, but not about this mail).
ACCOUNT_ERRORS = frozenset({"AccountSuspendedException", "SendingPausedException"})
#: Error types that say "later" (a 400 for a sending quota).
LATER_ERRORS = frozenset({"LimitExceededException", "TooManyRequestsException", "Throttling"})

NO_CREDENTIALS = (
    "no AWS credentials found (the standard chain: AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared files, SSO, container or instance role)"
)
LOOKUP_UNAVAILABLE = "SES has no lookup by Message-ID (it offers no search of sent mail)"


#: The provider's name in the chain.
NAME = "ses"


@dataclass(frozen=True, slots=True)
class SesConfig:
    """Amazon SES (API v2). Its credentials come from the standard AWS chain, never from here."""

    region: str = setting(
        env="SES_REGION",
        parse=parse.stripped,
        help="the AWS region SES sends from, e.g. eu-west-1 (unset: AWS_REGION; needed with ses)",
        doc="the AWS region SES sends from, e.g. `eu-west-1`. Unset: `AWS_REGION`, then "
        "`AWS_DEFAULT_REGION`; required with `ses` in the chain. Credentials come from the "
        "standard AWS chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, "
        "`AWS_PROFILE`, SSO, container and instance roles), never logged; see "
        "[Amazon SES](provider-ses.md)",
    )
    endpoint_url: str | None = setting(
        None,
        env="SES_ENDPOINT_URL",
        parse=parse.stripped,
        help="SES's API (default https://email.{region}.amazonaws.com)",
        doc="SES's API. Unset: `https://email.{region}.amazonaws.com`",
    )
    configuration_set: str | None = setting(
        None,
        env="SES_CONFIGURATION_SET",
        parse=parse.stripped,
        help="the SES configuration set every mail names (its event destinations publish events)",
        doc="the SES configuration set every mail names; its event destination publishes the "
        "events `POST /webhooks/ses` takes",
    )


class SesClient(HttpClient):
    """Sends mail through SES over pooled keep-alive connections, signing each request."""

    title = "SES"

    def __init__(self, config: SesConfig, timeout: float) -> None:
        super().__init__(NAME, timeout)
        self._config = config
        base = config.endpoint_url or f"https://email.{config.region}.amazonaws.com"
        self._url = f"{base.rstrip('/')}{SEND_PATH}"
        #: botocore's credentials (refreshable ones refresh themselves when asked).
        self._credentials: Credentials | None = None
        #: The credentials last taken from them: what requests are signed with.
        self._frozen: ReadOnlyCredentials | None = None
        #: When the chain was last asked (monotonic), and what it said if it failed.
        self._resolved_at: float | None = None
        self._resolve_error = NO_CREDENTIALS
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await super().start()
        await self._signing_credentials()

    async def send(self, mail: Mail) -> Result:
        over = over_limits(mail)
        if over is not None:
            return over
        credentials = await self._signing_credentials()
        if isinstance(credentials, Misconfigured | Transient):
            return credentials
        # Megabytes of files take a while to encode and hash: not on the event loop.
        if mail.attachments:
            data, headers = await asyncio.to_thread(self._signed, mail, credentials)
        else:
            data, headers = self._signed(mail, credentials)
        answer = await self.post(self._url, data, headers, credentials.secret_key or "")
        if not isinstance(answer, Answer):
            return answer
        if 200 <= answer.status < 300:
            return Accepted(message_id=_message_id(answer.body))
        kind, message = error_of(answer.body, answer.header("x-amzn-ErrorType"))
        reason = self._redact(f"{kind}: {message}" if kind else message)
        return result_of(answer.status, kind, reason, answer.header("Retry-After"))

    async def lookup(self, mail: Mail, since: float) -> Found:
        return Found(Check.CANNOT, reason=LOOKUP_UNAVAILABLE)

    async def suppression_list(self) -> list[Listed]:
        """The account's suppression list (``GET /v2/email/suppression/addresses``, SigV4:
        ``{"SuppressedDestinationSummaries": [{"EmailAddress", "Reason"}], "NextToken"}``,
        ``Reason`` ``BOUNCE`` or ``COMPLAINT``), following ``NextToken``."""
        credentials = await self._signing_credentials()
        if isinstance(credentials, Misconfigured | Transient):
            raise ListUnavailable(f"{NAME}: {credentials.reason}")
        base = self._url.removesuffix(SEND_PATH)
        found: list[Listed] = []
        token: str | None = None
        for _ in range(MAX_LIST_PAGES):
            query = {"PageSize": str(LIST_PAGE)}
            if token is not None:
                query["NextToken"] = token
            url = f"{base}{SUPPRESSION_PATH}?{urllib.parse.urlencode(sorted(query.items()))}"
            headers = self._signed_get(url, credentials)
            page = await self.get_json(url, headers, credentials.secret_key or "")
            items = page.get("SuppressedDestinationSummaries") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise ListUnavailable(f"{NAME}: the list did not answer its summaries")
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("EmailAddress"), str):
                    reason = _SUPPRESSION_REASONS.get(str(item.get("Reason")))
                    found.append(Listed(item["EmailAddress"], reason or SuppressionReason.MANUAL))
            following = page.get("NextToken")
            if not isinstance(following, str) or not following:
                break
            token = following
        return found

    def _signed_get(self, url: str, credentials: ReadOnlyCredentials) -> dict[str, str]:
        """The headers of a GET of ``url``, SigV4-signed."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="GET", url=url, data=b"")
        SigV4Auth(credentials, SERVICE, self._config.region).add_auth(request)
        return {name: str(value) for name, value in request.headers.items()}

    def _signed(self, mail: Mail, credentials: ReadOnlyCredentials) -> tuple[bytes, dict[str, str]]:
        """The request body for ``mail`` and its headers, SigV4-signed over those bytes."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        data = orjson.dumps(body(mail, self._config.configuration_set))
        request = AWSRequest(
            method="POST", url=self._url, data=data, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(credentials, SERVICE, self._config.region).add_auth(request)
        return data, {name: str(value) for name, value in request.headers.items()}

    async def _signing_credentials(self) -> ReadOnlyCredentials | Misconfigured | Transient:
        """The credentials to sign with: found in a thread (once, or again after
        ``RESOLVE_AGAIN_SECONDS`` when there were none), refreshed in a thread when
        botocore says they are near expiry."""
        if self._stale():
            async with self._lock:
                if self._credentials is None and self._may_resolve():
                    await self._resolve()
                if self._credentials is None:
                    return Misconfigured(self._resolve_error)
                if self._stale():
                    try:
                        self._frozen = await asyncio.to_thread(
                            self._credentials.get_frozen_credentials
                        )
                    except Exception as exc:  # any failure of a refresh: try again next time
                        return Transient(self._redact(f"AWS credentials: {describe(exc)}"))
        assert self._frozen is not None
        return self._frozen

    def _stale(self) -> bool:
        """Whether the frozen credentials are missing or botocore would refresh them."""
        from botocore.credentials import RefreshableCredentials

        if self._frozen is None:
            return True
        creds = self._credentials
        return isinstance(creds, RefreshableCredentials) and creds.refresh_needed()

    def _may_resolve(self) -> bool:
        at = self._resolved_at
        return at is None or time.monotonic() - at >= RESOLVE_AGAIN_SECONDS

    async def _resolve(self) -> None:
        """Ask botocore's credential chain (in a thread: it may call a metadata service)."""
        self._resolved_at = time.monotonic()
        try:
            found = await asyncio.to_thread(_find_credentials)
        except Exception as exc:  # a broken profile or config file: say so, send nothing
            self._resolve_error = shorten(f"AWS credentials: {describe(exc)}")
            log.error("ses.credentials_failed", provider=self.name, error=self._resolve_error)
            return
        if found is None:
            self._resolve_error = NO_CREDENTIALS
            log.error("ses.no_credentials", provider=self.name, detail=NO_CREDENTIALS)
            return
        self._credentials = found
        log.info("ses.credentials", provider=self.name, source=found.method)

    def _redact(self, text: str) -> str:
        """``text`` without the secret key, session token or access key id."""
        frozen = self._frozen
        if frozen is not None:
            for secret in (frozen.secret_key, frozen.token, frozen.access_key):
                if secret:
                    text = text.replace(secret, "[redacted]")
        return text


def _find_credentials() -> Credentials | None:
    """The standard AWS credential chain's answer (blocking: call it in a thread)."""
    from botocore.session import Session

    return Session().get_credentials()


def body(mail: Mail, configuration_set: str | None = None) -> dict[str, Any]:
    """The ``SendEmail`` JSON body for ``mail``: raw MIME content, recipients in
    ``Destination``, the mail id and the tag-safe metadata as ``EmailTags``."""
    destination: dict[str, list[str]] = {"ToAddresses": [a.email for a in mail.to]}
    if mail.cc:
        destination["CcAddresses"] = [a.email for a in mail.cc]
    if mail.bcc:
        destination["BccAddresses"] = [a.email for a in mail.bcc]
    tags = [{"Name": MAIL_ID_TAG, "Value": mail.id}]
    tags += [
        {"Name": key, "Value": value}
        for key, value in mail.metadata
        if key != MAIL_ID_TAG and TAG.fullmatch(key) and TAG.fullmatch(value)
    ]
    out: dict[str, Any] = {
        "FromEmailAddress": mail.sender.email,
        "Destination": destination,
        "Content": {"Raw": {"Data": base64.b64encode(render(mail)).decode("ascii")}},
        "EmailTags": tags,
    }
    if configuration_set:
        out["ConfigurationSetName"] = configuration_set
    return out


#: The most recipients SES takes in one message: ``to``, ``cc`` and ``bcc`` together.
MAX_RECIPIENTS = 50


def over_limits(mail: Mail) -> Rejected | None:
    """``Rejected`` for a mail SES would refuse whatever is tried (more than 50 recipients:
    Mailman takes up to 1,000), said in Mailman's words and without a request; else None."""
    count = len(mail.to) + len(mail.cc) + len(mail.bcc)
    if count > MAX_RECIPIENTS:
        return Rejected(
            f"SES takes at most {MAX_RECIPIENTS} recipients a message (to, cc and bcc "
            f"together); this mail has {count}"
        )
    return None


def result_of(status: int, kind: str, reason: str, retry_after: str | None) -> Result:
    """The result of an SES error: by status (``classify``), but an account that may not
    send is ``Misconfigured`` and a sending quota ``Transient``, whatever their status."""
    if kind in ACCOUNT_ERRORS:
        return Misconfigured(shorten(reason), status)
    if kind in LATER_ERRORS:
        result = classify(429, reason, retry_after)
        assert isinstance(result, Transient)
        return Transient(result.reason, status, result.retry_after, rate_limited=True)
    return classify(status, reason, retry_after)


def error_of(raw: bytes, error_type: str | None) -> tuple[str, str]:
    """(type, message) of an SES error answer: the type from ``x-amzn-ErrorType``
    (``Type:url``) or the body's ``__type``/``code`` (``ns#Type``), the message from
    its ``message``/``Message``; the body's text when it is not JSON."""
    kind = (error_type or "").partition(":")[0].strip()
    text = raw.decode("utf-8", errors="replace")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return kind, text
    if not isinstance(data, dict):
        return kind, text
    if not kind:
        found = data.get("__type") or data.get("code") or data.get("Code") or ""
        kind = str(found).rpartition("#")[2]
    message = data.get("message") or data.get("Message")
    return kind, str(message) if message else text


def _message_id(raw: bytes) -> str:
    """The ``MessageId`` of a success body ("" if there is none)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    return str(data["MessageId"]) if isinstance(data, dict) and data.get("MessageId") else ""


#: An AWS region's name (``us-east-1``, ``eu-central-2``): it becomes part of a host name.
_AWS_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-[0-9]+")
#: An SES configuration set's name: letters, digits, ``_`` and ``-``, at most 64.
_SES_CONFIGURATION_SET = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _configure(settings: SesConfig, env: Mapping[str, str]) -> SesConfig:
    """SES's settings: the region (``SES_REGION``, else ``AWS_REGION``, else
    ``AWS_DEFAULT_REGION``) is required and must be a region's name."""
    name = SETTINGS["ses.region"].name
    region = (
        settings.region
        or env.get("AWS_REGION", "").strip()
        or env.get("AWS_DEFAULT_REGION", "").strip()
    )
    if not region:
        raise ConfigError(f"{name} (or AWS_REGION) is required with ses in the provider chain")
    if not _AWS_REGION.fullmatch(region):
        raise ConfigError(f"{name} must be an AWS region such as eu-west-1, got {region!r}")
    configuration_set = settings.configuration_set
    if configuration_set is not None and not _SES_CONFIGURATION_SET.fullmatch(configuration_set):
        raise ConfigError(
            f"{SETTINGS['ses.configuration_set'].name} must be 1 to 64 letters, digits, _ or -, "
            f"got {configuration_set!r}"
        )
    return replace(settings, region=region)


#: The entry point ``ses`` of the group ``mailman.providers`` (pyproject.toml).
plugin = ProviderPlugin(
    NAME, SesConfig, SesClient, _configure, summary="Amazon SES API v2, SigV4-signed"
)

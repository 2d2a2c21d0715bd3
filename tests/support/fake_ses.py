"""A fake Amazon SES (API v2 ``SendEmail``): a real HTTP server on 127.0.0.1.

    async with FakeSes() as ses:
        # AWS_ACCESS_KEY_ID=ses.access_key, AWS_SECRET_ACCESS_KEY=ses.secret_key
        client = SesClient(SesConfig("us-east-1", ses.base_url), timeout=1)

It checks what SES checks: the SigV4 signature, recomputed with botocore from
the credentials it knows (``keys``: access key id -> (secret, session token or
None)) over the method, path, the signed headers as received (the ``Host`` with
its port) and the body; the credential scope (region, service ``ses``); a
``X-Amz-Date`` within 15 minutes of its clock (``clock_skew`` moves its clock);
the session token of temporary credentials. Then the body: JSON with
``Content.Raw.Data`` (base64 MIME, at most 40 MB), at most 50 recipients,
``EmailTags`` of letters, digits, ``_`` and ``-`` (at most 256), a known
``ConfigurationSetName``. Errors answer as SES does: ``x-amzn-ErrorType``
header and ``{"message"}`` (403 for anything about the signature or the key).

An accepted mail is kept: its JSON in ``received``, its MIME parsed in
``messages`` (``email.message.EmailMessage``), its files in ``files``, the
request's headers in ``request_headers``, the ``MessageId`` it was answered
with in ``message_ids``. ``sending_paused`` answers every send with SES's
``SendingPausedException``. The modes of ``FakeProvider`` apply.

SNS, as SES's event destination: the fake serves its signing certificate
(``cert_path``, issued by a test CA made with ``cryptography``; ``cert_fetches``
counts the fetches) and a subscribe URL (``GET /confirm?Token=...``, kept in
``confirmations``), and ``sns_message`` makes SNS messages signed as SNS signs
them (``SignatureVersion`` 1: SHA1, 2: SHA256). Given ``webhook_url``, it posts
SES's events for every mail it accepted there itself: ``Send``, then
``Delivery`` for the recipients, ``Bounce`` (permanent) for those whose local
part starts with ``bounce_prefix``. A post that gets no 2xx is tried again as
SNS's delivery policy for HTTP/S says: by default 3 more times, 20 s apart
(``webhook_attempts`` counts the first post too; ``sns_retry_seconds``: a
subscription's own policy may change both), each wait jittered as SNS jitters its
retries: up to ``sns_retry_jitter`` of it longer, at random, so that posts which failed
together (an endpoint that went down) do not all come back at the same instants.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.policy
import functools
import io
import random
import re
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from .fakes import FakeProvider, Mode, Post, ReceivedFile

#: The test credentials the fake knows unless told others.
ACCESS_KEY = "AKIAFAKESES000000001"
SECRET_KEY = "fake/ses/secret+do-not-leak-Q9vX"
#: SES's limits: recipients of one mail, the raw message's bytes, a tag's characters.
SES_MAX_RECIPIENTS = 50
SES_MAX_MESSAGE_BYTES = 40 * 1024 * 1024
SES_TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")
#: How far a request's X-Amz-Date may be from SES's clock.
MAX_SKEW = datetime.timedelta(minutes=15)
AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check "
    "your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
INVALID_TOKEN = "The security token included in the request is invalid."
#: The topic the fake's events are published to, and SNS's fields signed per message type.
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:mailman-ses-events"
SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        *("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    ),
}
SNS_SIGNED["UnsubscribeConfirmation"] = SNS_SIGNED["SubscriptionConfirmation"]
SNS_SIGNATURE_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
#: SNS's default delivery policy for HTTP/S endpoints: up to 3 retries, 20 s apart.
SNS_RETRIES = 3
SNS_RETRY_SECONDS = 20.0
#: SNS jitters its retries ("Amazon SNS applies jittering to delivery retries", its
#: message delivery retries page): here each wait is the policy's delay and up to this
#: share of it more, at random, never shorter than the policy's minimum.
SNS_RETRY_JITTER = 0.5


@dataclass(frozen=True, slots=True)
class SigningCertificate:
    """An RSA key and its certificate, issued by a test CA (as SNS's is by Amazon's)."""

    key: rsa.RSAPrivateKey
    pem: bytes


@functools.cache
def sns_certificate(name: str = "sns.amazonaws.com") -> SigningCertificate:
    """A signing certificate for ``name`` from a test CA made here (one per name)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mailman Test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return SigningCertificate(key, leaf.public_bytes(serialization.Encoding.PEM))


def sns_sign(key: rsa.RSAPrivateKey, message: dict[str, Any], version: str = "1") -> str:
    """SNS's ``Signature`` of ``message``: RSA over ``name\nvalue\n`` of its signed fields."""
    text = "".join(
        f"{name}\n{message[name]}\n"
        for name in SNS_SIGNED[message["Type"]]
        if message.get(name) is not None
    )
    signature = key.sign(text.encode(), padding.PKCS1v15(), SNS_SIGNATURE_HASHES[version]())
    return base64.b64encode(signature).decode("ascii")


def iso_now(offset: float = 0.0) -> str:
    """The time as SNS and SES write it: ``2026-12-06T09:00:00.123Z``."""
    now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class FakeSes(FakeProvider[dict[str, Any]]):
    """SES v2 ``POST /v2/email/outbound-emails``: SigV4, JSON with raw MIME, 200 ``MessageId``."""

    path = "/v2/email/outbound-emails"

    def __init__(
        self,
        *,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        session_token: str | None = None,
        region: str = "us-east-1",
        configuration_sets: tuple[str, ...] = ("mailman",),
        mode: Mode = "up",
        retry_after: str = "1",
        delay: float = 0.0,
        answer_delay: float = 0.0,
        webhook_url: str | None = None,
        bounce_prefix: str = "bounce",
        topic_arn: str = TOPIC_ARN,
        signature_version: str = "1",
    ) -> None:
        super().__init__(
            api_key=secret_key,
            mode=mode,
            retry_after=retry_after,
            delay=delay,
            answer_delay=answer_delay,
            webhook_url=webhook_url,
            bounce_prefix=bounce_prefix,
        )
        #: SNS: the topic, the signature version, the certificate and where it is served.
        self.topic_arn = topic_arn
        self.signature_version = signature_version
        self.certificate = sns_certificate()
        self.cert_path = "/SimpleNotificationService-0000000000000000000000.pem"
        self.cert_fetches = 0
        #: The tokens of the subscriptions confirmed at ``/confirm``.
        self.confirmations: list[str] = []
        #: SNS's delivery policy for HTTP/S (its default): the first post and its
        #: retries, the seconds between two.
        self.webhook_attempts = 1 + SNS_RETRIES
        self.sns_retry_seconds = SNS_RETRY_SECONDS
        #: How much longer than ``sns_retry_seconds`` a retry may wait (a share of it).
        self.sns_retry_jitter = SNS_RETRY_JITTER
        self.access_key = access_key
        self.secret_key = secret_key
        self.session_token = session_token
        #: The credentials SES takes: access key id -> (secret key, session token or None).
        self.keys: dict[str, tuple[str, str | None]] = {access_key: (secret_key, session_token)}
        self.region = region
        self.configuration_sets = set(configuration_sets)
        #: Seconds SES's clock is ahead of ours (a client whose clock is that far behind).
        self.clock_skew = 0.0
        self.sending_paused = False
        #: The account's suppression list, as ``ListSuppressedDestinations`` pages it.
        self.suppressed: list[dict[str, Any]] = []
        #: The path and query of every request to the suppression list, in order.
        self.list_requests: list[str] = []
        #: The parsed MIME of each accepted mail, and the headers of its request.
        self.messages: list[EmailMessage] = []
        self.request_headers: list[dict[str, str]] = []

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_get(self.cert_path, self._certificate)
        app.router.add_get("/confirm", self._confirm)
        app.router.add_get("/v2/email/suppression/addresses", self._handle_list)

    async def _handle_list(self, request: web.Request) -> web.StreamResponse:
        self.list_requests.append(request.path_qs)
        return await self.answer(request, self.serve_list)

    async def serve_list(self, request: web.Request) -> web.StreamResponse:
        """``ListSuppressedDestinations``, SigV4-signed: ``{"SuppressedDestinationSummaries":
        [{"EmailAddress", "Reason", "LastUpdateTime"}], "NextToken"}``, ``PageSize`` (1 to
        1000) at a time; ``NextToken`` is opaque (here: where the next page starts, with
        characters a client must keep encoded)."""
        refused = self.refused(request, await request.read())
        if refused is not None:
            return refused
        try:
            size = int(request.query.get("PageSize", "1000"))
        except ValueError:
            return self.bad_request("PageSize must be an integer")
        if not 1 <= size <= 1000:
            return self.bad_request("PageSize must be between 1 and 1000")
        token = request.query.get("NextToken")
        start = 0
        if token is not None:
            try:
                raw = base64.b64decode(token.encode(), validate=True)
                start = int(raw.partition(b"|")[0].decode())
            except (binascii.Error, ValueError):
                return self.bad_request("Invalid NextToken")
        page = self.suppressed[start : start + size]
        answer: dict[str, Any] = {"SuppressedDestinationSummaries": page}
        if start + size < len(self.suppressed):
            # Base64 with "/", "+" and "=": a token a client sends altered is refused.
            raw = f"{start + size}|".encode() + b"\xff\xfe>?"
            answer["NextToken"] = base64.b64encode(raw).decode()
        return web.json_response(answer, dumps=_dumps)

    async def _certificate(self, request: web.Request) -> web.Response:
        self.cert_fetches += 1
        return web.Response(body=self.certificate.pem, content_type="application/x-x509-ca-cert")

    async def _confirm(self, request: web.Request) -> web.Response:
        if request.query.get("Action") != "ConfirmSubscription" or not request.query.get("Token"):
            return web.Response(status=400, text="<Error><Code>InvalidParameter</Code></Error>")
        self.confirmations.append(request.query["Token"])
        arn = f"{request.query.get('TopicArn', '')}:{uuid.uuid4()}"
        return web.Response(
            text=f"<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>"
            f"{arn}</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>",
            content_type="text/xml",
        )

    def sns_message(
        self,
        kind: str,
        message: str,
        *,
        key: rsa.RSAPrivateKey | None = None,
        cert_url: str | None = None,
        topic_arn: str | None = None,
        version: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """An SNS message of type ``kind`` carrying ``message``, signed as SNS signs it
        (with another ``key``, for a forgery), its certificate on this fake."""
        body: dict[str, Any] = {
            "Type": kind,
            "MessageId": str(uuid.uuid4()),
            "TopicArn": topic_arn or self.topic_arn,
            "Message": message,
            "Timestamp": iso_now(),
            "SignatureVersion": version or self.signature_version,
            "SigningCertURL": cert_url or f"{self.base_url}{self.cert_path}",
            **fields,
        }
        if kind == "SubscriptionConfirmation":
            token = uuid.uuid4().hex * 2
            body.setdefault("Token", token)
            body.setdefault(
                "SubscribeURL",
                f"{self.base_url}/confirm?Action=ConfirmSubscription&TopicArn={body['TopicArn']}"
                f"&Token={token}",
            )
        if kind == "Notification":
            body["UnsubscribeURL"] = f"{self.base_url}/unsubscribe"
        body["Signature"] = sns_sign(key or self.certificate.key, body, body["SignatureVersion"])
        return body

    def ses_event(self, kind: str, index: int, **details: Any) -> dict[str, Any]:
        """SES's event ``kind`` for the ``index``-th accepted mail, ``details`` its object."""
        body, message = self.received[index], self.messages[index]
        destination = body["Destination"]
        recipients = [
            a
            for f in ("ToAddresses", "CcAddresses", "BccAddresses")
            for a in destination.get(f, [])
        ]
        tags: dict[str, list[str]] = {t["Name"]: [t["Value"]] for t in body.get("EmailTags", [])}
        if body.get("ConfigurationSetName"):
            tags["ses:configuration-set"] = [body["ConfigurationSetName"]]
        mail = {
            "timestamp": iso_now(),
            "source": body.get("FromEmailAddress", ""),
            "sendingAccountId": "123456789012",
            "messageId": self.message_ids[index],
            "destination": recipients,
            "headersTruncated": False,
            "headers": [{"name": n, "value": str(v)} for n, v in message.items()],
            "commonHeaders": {
                "from": [str(message["From"])],
                "to": [str(message["To"])],
                "messageId": str(message["Message-ID"]),
                "subject": str(message["Subject"]),
            },
            "tags": tags,
        }
        field = {
            "Send": "send",
            "Delivery": "delivery",
            "Bounce": "bounce",
            "Complaint": "complaint",
            "DeliveryDelay": "deliveryDelay",
            "Reject": "reject",
            "Open": "open",
            "Click": "click",
        }[kind]
        return {"eventType": kind, "mail": mail, field: {"timestamp": iso_now(), **details}}

    def _publish(self, index: int) -> None:
        """Post SES's events for the ``index``-th accepted mail to ``webhook_url``."""
        destination = self.received[index]["Destination"]
        recipients = [
            a
            for f in ("ToAddresses", "CcAddresses", "BccAddresses")
            for a in destination.get(f, [])
        ]
        bounced = [a for a in recipients if self.bounces(a)]
        delivered = [a for a in recipients if not self.bounces(a)]
        events = [self.ses_event("Send", index)]
        if delivered:
            events.append(
                self.ses_event(
                    "Delivery",
                    index,
                    recipients=delivered,
                    processingTimeMillis=420,
                    smtpResponse="250 2.6.0 Message received",
                    reportingMTA="a8-70.smtp-out.amazonses.com",
                )
            )
        if bounced:
            events.append(
                self.ses_event(
                    "Bounce",
                    index,
                    bounceType="Permanent",
                    bounceSubType="General",
                    feedbackId=str(uuid.uuid4()),
                    bouncedRecipients=[
                        {
                            "emailAddress": a,
                            "action": "failed",
                            "status": "5.1.1",
                            "diagnosticCode": "smtp; 550 5.1.1 The email account that you tried "
                            "to reach does not exist.",
                        }
                        for a in bounced
                    ],
                )
            )
        self.send_webhooks([self._sns_post(e) for e in events])

    def webhook_retry_wait(self, retry: int) -> float:
        """SNS's delay before each retry (the default policy: 20 s), jittered: up to
        ``sns_retry_jitter`` of it more, drawn for each wait of each post."""
        return self.sns_retry_seconds * (1 + random.uniform(0, self.sns_retry_jitter))

    def _sns_post(self, event: dict[str, Any]) -> Post:
        """The post of one SES event as an SNS notification: the same at every try."""
        message = self.sns_message("Notification", orjson.dumps(event).decode())
        body = orjson.dumps(message)
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": "Notification",
            "x-amz-sns-message-id": message["MessageId"],
            "x-amz-sns-topic-arn": message["TopicArn"],
        }
        return lambda: (body, headers)

    def env(self) -> dict[str, str]:
        """The environment that makes the standard AWS chain find this fake's credentials."""
        out = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        if self.session_token is not None:
            out["AWS_SESSION_TOKEN"] = self.session_token
        return out

    def mail_ids(self) -> list[str]:
        return [
            next((t["Value"] for t in body.get("EmailTags", []) if t["Name"] == "mail_id"), "")
            for body in self.received
        ]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        refused = self.refused(request, raw)
        if refused is not None:
            return refused
        if self.sending_paused:
            return _error(400, "SendingPausedException", "Sending is paused for this account.")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.bad_request("Could not parse request body into json")
        if not isinstance(body, dict):
            return self.bad_request("Could not parse request body into json")
        checked = self._checked(body)
        if isinstance(checked, web.Response):
            return checked
        message, files = checked
        self.received.append(body)
        self.messages.append(message)
        self.files.append(files)
        self.request_headers.append(dict(request.headers))
        stamp = int(time.time() * 1000)
        self.message_ids.append(f"{stamp:016x}-{uuid.uuid4()}-000000")
        if self.webhook_url is not None:
            self._publish(len(self.received) - 1)
        return web.json_response({"MessageId": self.message_ids[-1]}, dumps=_dumps)

    def refused(self, request: web.Request, raw: bytes) -> web.Response | None:
        """SES's 403 for a request whose SigV4 signature does not hold (None: it holds)."""
        match = _AUTHORIZATION.fullmatch(request.headers.get("Authorization", "").strip())
        if match is None:
            return _error(
                403, "MissingAuthenticationTokenException", "Missing Authentication Token"
            )
        access_key, day, region, service, terminal = (match["credential"].split("/") + [""] * 5)[:5]
        amz_date = request.headers.get("X-Amz-Date", "")
        try:
            when = datetime.datetime.strptime(amz_date, AMZ_DATE).replace(tzinfo=datetime.UTC)
        except ValueError:
            return _error(403, "IncompleteSignatureException", "Date must be in ISO-8601 format")
        now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.clock_skew)
        if when < now - MAX_SKEW:
            return _error(
                403,
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier than "
                f"{(now - MAX_SKEW).strftime(AMZ_DATE)} ({now.strftime(AMZ_DATE)} - 15 min.)",
            )
        if when > now + MAX_SKEW:
            return _error(
                403,
                "InvalidSignatureException",
                f"Signature not yet current: {amz_date} is still later than "
                f"{(now + MAX_SKEW).strftime(AMZ_DATE)} ({now.strftime(AMZ_DATE)} + 15 min.)",
            )
        if access_key not in self.keys:
            return _error(403, "UnrecognizedClientException", INVALID_TOKEN)
        secret, token = self.keys[access_key]
        if token is not None and request.headers.get("X-Amz-Security-Token") != token:
            return _error(403, "UnrecognizedClientException", INVALID_TOKEN)
        if day != amz_date[:8] or terminal != "aws4_request":
            return _error(
                403, "InvalidSignatureException", "Credential should be scoped correctly."
            )
        if region != self.region:
            return _error(
                403, "InvalidSignatureException", "Credential should be scoped to a valid region."
            )
        if service != "ses":
            return _error(
                403,
                "InvalidSignatureException",
                "Credential should be scoped to correct service: 'ses'.",
            )
        signed = match["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return _error(403, "InvalidSignatureException", SIGNATURE_MISMATCH)
        if token is not None and "x-amz-security-token" not in signed:
            return _error(403, "InvalidSignatureException", SIGNATURE_MISMATCH)
        expected = _signature(request, raw, signed, Credentials(access_key, secret, token), region)
        if expected != match["signature"]:
            return _error(403, "InvalidSignatureException", SIGNATURE_MISMATCH)
        return None

    def _checked(
        self, body: dict[str, Any]
    ) -> tuple[EmailMessage, tuple[ReceivedFile, ...]] | web.Response:
        """The parsed MIME and files of a SendEmail body, or SES's answer to a bad one."""
        content = body.get("Content")
        raw = content.get("Raw") if isinstance(content, dict) else None
        data = raw.get("Data") if isinstance(raw, dict) else None
        if not isinstance(data, str) or not data:
            return self.bad_request("Content is required: one of Simple, Raw or Template")
        try:
            mime = base64.b64decode(data, validate=True)
        except binascii.Error:
            return self.bad_request("Raw.Data is not valid base64")
        if len(mime) > SES_MAX_MESSAGE_BYTES:
            return _error(400, "MessageRejected", "Message length is more than 40 megabytes")
        destination = body.get("Destination", {})
        if not isinstance(destination, dict):
            return self.bad_request("Destination must be an object")
        recipients: list[str] = []
        for field in ("ToAddresses", "CcAddresses", "BccAddresses"):
            addresses = destination.get(field, [])
            if not isinstance(addresses, list) or not all(
                isinstance(a, str) and "@" in a.strip("@") for a in addresses
            ):
                return self.bad_request(f"Illegal address in Destination.{field}")
            recipients += addresses
        if len(recipients) > SES_MAX_RECIPIENTS:
            return self.bad_request(f"Recipient count exceeds {SES_MAX_RECIPIENTS}.")
        tags = body.get("EmailTags", [])
        if not isinstance(tags, list):
            return self.bad_request("EmailTags must be a list")
        only = "only ASCII letters, numbers, underscores and dashes."
        for tag in tags:
            name = tag.get("Name") if isinstance(tag, dict) else None
            value = tag.get("Value") if isinstance(tag, dict) else None
            if not (isinstance(name, str) and SES_TAG.fullmatch(name)):
                return self.bad_request(f"Invalid tag name <{name}>: {only}")
            if not (isinstance(value, str) and SES_TAG.fullmatch(value)):
                return self.bad_request(f"Invalid tag value <{value}>: {only}")
        configuration_set = body.get("ConfigurationSetName")
        if configuration_set is not None and configuration_set not in self.configuration_sets:
            return _error(
                404, "NotFoundException", f"Configuration set <{configuration_set}> does not exist."
            )
        # As a mail reader reads it: CRLF line ends become newlines.
        message = BytesParser(policy=email.policy.default).parse(io.BytesIO(mime))
        assert isinstance(message, EmailMessage)
        if not recipients and not any(message.get(h) for h in ("To", "Cc", "Bcc")):
            return self.bad_request("Missing required header 'To'.")
        if not body.get("FromEmailAddress") and not message.get("From"):
            return self.bad_request("Missing required header 'From'.")
        return message, _files(message)

    def unavailable(self) -> web.Response:
        return _error(503, "ServiceUnavailable", "Service Unavailable")

    def too_many(self) -> web.Response:
        return _error(429, "TooManyRequestsException", "Maximum sending rate exceeded.")

    def unauthorized(self) -> web.Response:
        return _error(403, "UnrecognizedClientException", INVALID_TOKEN)

    def bad_request(self, message: str, field: str | None = None) -> web.Response:
        return _error(400, "BadRequestException", message)


def _signature(
    request: web.Request, raw: bytes, signed: list[str], credentials: Credentials, region: str
) -> str:
    """The SigV4 signature botocore computes for ``request`` as received: its method,
    path and query, the headers it signed (the ``Host`` it sent, port and all), its body."""
    headers = {name: request.headers.get(name, "") for name in signed}
    recomputed = AWSRequest(
        method=request.method,
        url=f"http://{request.host}{request.path_qs}",
        data=raw,
        headers=headers,
    )
    recomputed.context["timestamp"] = request.headers["X-Amz-Date"]
    signer = SigV4Auth(credentials, "ses", region)
    canonical = signer.canonical_request(recomputed)
    return signer.signature(signer.string_to_sign(recomputed, canonical), recomputed)


def _files(message: EmailMessage) -> tuple[ReceivedFile, ...]:
    """The files of a MIME message: its parts with a Content-Disposition, in order."""
    files = []
    for part in message.walk():
        disposition = part.get_content_disposition()
        if disposition not in ("attachment", "inline"):
            continue
        payload = part.get_payload(decode=True)
        content_id = part.get("Content-ID")
        files.append(
            ReceivedFile(
                disposition=disposition,
                filename=part.get_filename() or "",
                content_type=part.get_content_type(),
                data=payload if isinstance(payload, bytes) else b"",
                content_id=str(content_id).strip("<>") if content_id else None,
            )
        )
    return tuple(files)


def _error(status: int, kind: str, message: str) -> web.Response:
    """SES's error answer: the type in ``x-amzn-ErrorType``, the message in the body."""
    return web.json_response(
        {"message": message},
        status=status,
        headers={"x-amzn-ErrorType": f"{kind}:", "x-amzn-RequestId": str(uuid.uuid4())},
        dumps=_dumps,
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


#: Where botocore's chain could find credentials other than the environment's keys.
AWS_CHAIN_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def isolate_aws(monkeypatch: Any, env: dict[str, str]) -> None:
    """Make the standard AWS chain of this process see ``env`` and nothing else: no
    variables or files of the machine's, no instance metadata service."""
    for name in AWS_CHAIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)

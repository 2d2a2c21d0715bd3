"""A fake SMTP relay: aiosmtpd's real SMTP server on 127.0.0.1, for the smtp-relay provider.

    async with FakeSmtpRelay(tmp_path) as relay:    # relay.url("smtps") ...
        relay.replies["DATA"] = "451 4.3.0 try later"

Two listeners: ``port`` speaks plain SMTP and offers STARTTLS (unless
``starttls=False``), ``tls_port`` is
TLS from the first byte. Both use a certificate for 127.0.0.1 and localhost
signed by a test CA of its own (``ca_file``: point ``SSL_CERT_FILE`` at it to
trust it; another relay's CA does not make this one trusted).

As a real relay: AUTH (PLAIN, LOGIN) is checked against ``username`` and
``password`` (``535 5.7.8`` otherwise) and offered only over TLS; ``MAIL`` needs
it when ``auth_required`` (``530 5.7.0``); ``SIZE`` is enforced (``552``).
What it took is kept: ``envelopes`` (MAIL FROM, RCPT TO, the message bytes, and
whether the connection was TLS), one per accepted message, and in ``dropped``
the messages taken with ``drop`` on. ``connections`` counts connections made.

Forced answers: ``replies`` maps ``"MAIL"``, ``"RCPT"`` or ``"DATA"`` to the reply
given there instead (``"451 4.3.0 ..."``); ``refuse`` maps one recipient address to
its RCPT reply. ``drop=True``: the message is read (and kept in ``dropped``),
then the connection is closed before the ``250``: the client cannot tell.
``stall`` holds the steps (``"MAIL"``, ``"DATA"``) answered only once the relay stops.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import itertools
import logging
import ssl
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class RelayedMail:
    """One message the relay took: its envelope and its bytes as received."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool


class FakeSmtpRelay:
    """An SMTP relay on loopback: STARTTLS and implicit TLS, AUTH, forced replies."""

    def __init__(
        self,
        directory: Path,
        *,
        username: str = "relay-user",
        password: str = "p@ss:w/rd secret",
        auth_required: bool = True,
        starttls: bool = True,
        data_size_limit: int = 10 * 1024 * 1024,
    ) -> None:
        self.username = username
        self.password = password
        self.auth_required = auth_required
        self.starttls = starttls
        self.data_size_limit = data_size_limit
        self.replies: dict[str, str] = {}
        self.refuse: dict[str, str] = {}
        self.drop = False
        #: Steps ("MAIL", "DATA") that get no answer while the relay runs.
        self.stall: set[str] = set()
        self._stopping = asyncio.Event()
        self.envelopes: list[RelayedMail] = []
        self.dropped: list[RelayedMail] = []
        self.connections = 0
        self.auth_failures = 0
        self.ca_file, cert, key = _certificates(Path(tempfile.mkdtemp(dir=directory)))
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(cert, key)
        self._ids = itertools.count(1)
        self._servers: list[asyncio.Server] = []
        self._protocols: list[SMTP] = []
        self.port = 0
        self.tls_port = 0

    def url(self, scheme: str, *, password: str | None = None, host: str = "127.0.0.1") -> str:
        """The ``SMTP_RELAY_URL`` of this relay for ``scheme``, with its credentials."""
        from urllib.parse import quote

        port = self.tls_port if scheme == "smtps" else self.port
        secret = self.password if password is None else password
        user = f"{quote(self.username, safe='')}:{quote(secret, safe='')}@" if secret else ""
        return f"{scheme}://{user}{host}:{port}"

    async def __aenter__(self) -> Self:
        # aiosmtpd logs each command (addresses too) at info: keep its warnings only.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        plain = await loop.create_server(lambda: self._protocol(implicit=False), "127.0.0.1", 0)
        tls = await loop.create_server(
            lambda: self._protocol(implicit=True), "127.0.0.1", 0, ssl=self._tls
        )
        self._servers = [plain, tls]
        self.port = plain.sockets[0].getsockname()[1]
        self.tls_port = tls.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        for server in self._servers:
            server.close()
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        for server in self._servers:
            await server.wait_closed()

    def _protocol(self, *, implicit: bool) -> SMTP:
        self.connections += 1
        with warnings.catch_warnings():
            # aiosmtpd warns of AUTH without TLS: it cannot tell that the implicit-TLS
            # listener's connections are TLS from their first byte.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            protocol = self._smtp(implicit)
        self._protocols.append(protocol)
        return protocol

    def _smtp(self, implicit: bool) -> SMTP:
        return SMTP(
            _Handler(self, implicit),
            hostname="relay.test",
            data_size_limit=self.data_size_limit,
            enable_SMTPUTF8=True,
            tls_context=self._tls if self.starttls and not implicit else None,
            auth_require_tls=not implicit,
            auth_required=self.auth_required,
            authenticator=self._authenticate,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        good = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.username
            and data.password.decode() == self.password
        )
        if not good:
            self.auth_failures += 1
        return AuthResult(success=good, handled=False)


class _Handler:
    """aiosmtpd's hooks: the forced replies, then the healthy relay's."""

    def __init__(self, relay: FakeSmtpRelay, implicit: bool) -> None:
        self.relay = relay
        self.implicit = implicit

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if "MAIL" in self.relay.stall:
            await self.relay._stopping.wait()
        if "MAIL" in self.relay.replies:
            return self.relay.replies["MAIL"]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        forced = self.relay.refuse.get(address) or self.relay.replies.get("RCPT")
        if forced:
            return forced
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if "DATA" in self.relay.stall:
            await self.relay._stopping.wait()
        if "DATA" in self.relay.replies:
            return self.relay.replies["DATA"]
        content = envelope.original_content or b""
        mail = RelayedMail(
            str(envelope.mail_from),
            tuple(envelope.rcpt_tos),
            content,
            self.implicit or session.ssl is not None,
        )
        if self.relay.drop:
            self.relay.dropped.append(mail)
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()  # the message is here; the 250 never leaves
            return "250 2.0.0 Ok: lost"
        self.relay.envelopes.append(mail)
        return f"250 2.0.0 Ok: queued as RELAY{next(self.relay._ids):04d}"


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA file, certificate chain file, key file) for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake relay test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "relay.pem", directory / "key"
    ca_path.write_bytes(ca.public_bytes(pem))
    cert_path.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path

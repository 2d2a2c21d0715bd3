"""The local provider: each mail becomes an RFC 5322 file ``{directory}/{mail.id}.eml``.

Useful in development and as the last link of a chain. Bcc recipients are left
out of the file entirely (a Bcc header would tell every reader who else got
the mail). Writing is atomic (a temporary file in the same directory, then
``os.replace``), so a reader never sees half a file, and writing the same mail
again simply replaces the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.errors
import email.policy
import email.utils
import os
import tempfile
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from pathlib import Path

from config import OutboxConfig

from ..messages import Address, Mail
from . import Accepted, ProviderClient, Rejected, Result, Transient

DOMAIN = "mailman.local"


class OutboxClient(ProviderClient):
    """Writes each mail as an ``.eml`` file into a directory."""

    def __init__(self, config: OutboxConfig) -> None:
        self.name = config.name
        self._directory = Path(config.directory)

    async def send(self, mail: Mail) -> Result:
        if not _safe_file_name(mail.id):
            return Rejected(f"mail id {mail.id!r} cannot name a file")
        try:
            data = render(mail)
        except (ValueError, email.errors.MessageError) as exc:
            return Rejected(f"cannot render mail as RFC 5322: {exc}")
        try:
            await asyncio.to_thread(_write_atomically, self._directory, f"{mail.id}.eml", data)
        except OSError as exc:
            return Transient(f"cannot write outbox: {exc.strerror or exc}")
        return Accepted(message_id=message_id(mail))


def message_id(mail: Mail) -> str:
    return f"<{mail.id}@{DOMAIN}>"


def render(mail: Mail) -> bytes:
    """``mail`` as the bytes of an RFC 5322 message (no Bcc header)."""
    msg = EmailMessage()
    msg["From"] = _header_address(mail.sender)
    msg["To"] = [_header_address(a) for a in mail.to]
    if mail.cc:
        msg["Cc"] = [_header_address(a) for a in mail.cc]
    if mail.reply_to is not None:
        msg["Reply-To"] = _header_address(mail.reply_to)
    msg["Subject"] = mail.subject
    msg["Date"] = email.utils.formatdate(mail.created_at, usegmt=True)
    msg["Message-ID"] = message_id(mail)
    msg["X-Mailman-Id"] = mail.id
    if mail.text is not None:
        msg.set_content(mail.text)
        if mail.html is not None:
            msg.add_alternative(mail.html, subtype="html")
    elif mail.html is not None:
        msg.set_content(mail.html, subtype="html")
    else:
        msg.set_content("")
    # Non-ASCII addresses cannot be written as encoded words: write UTF-8 headers then.
    addresses = (mail.sender, *mail.to, *mail.cc, *((mail.reply_to,) if mail.reply_to else ()))
    ascii_only = all(a.email.isascii() for a in addresses)
    return msg.as_bytes(policy=email.policy.default if ascii_only else email.policy.SMTPUTF8)


def _header_address(address: Address) -> HeaderAddress:
    return HeaderAddress(display_name=address.name, addr_spec=address.email)


def _safe_file_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and Path(name).name == name and "\0" not in name


def _write_atomically(directory: Path, name: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

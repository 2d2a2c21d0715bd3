"""The local provider: each mail becomes an RFC 5322 file ``{directory}/{mail.id}.eml``.

Useful in development and as the last link of a chain. Bcc recipients are left
out of the file entirely (a Bcc header would tell every reader who else got
the mail). Custom headers are written as headers, tags as ``X-Mailman-Tags:
a, b`` and metadata as ``X-Mailman-Metadata: {"key":"value"}`` (compact JSON).
Attachments make it ``multipart/mixed``, inline files in a ``multipart/related``
with the HTML (``_attach``).
Writing is atomic (a temporary file in the same directory, then
``os.replace``), so a reader never sees half a file, and writing the same mail
again simply replaces the file. So the file is there exactly when a send
finished writing it, which is what ``lookup`` asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.charset
import email.errors
import email.policy
import email.utils
import itertools
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from mailman.config import ProviderPlugin, parse, setting
from mailman.core.model import Address, Attachment, Check, Disposition, Mail

from . import (
    MAX_ENCODED_WORD,
    Accepted,
    Found,
    ProviderClient,
    Rejected,
    Result,
    Transient,
    display_name_words,
)

#: Where address headers are folded (RFC 5322's "SHOULD"; a long quoted name
#: may pass it, never the 998 of its "MUST": validation bounds names).
FOLD_AT = 78
#: How the file is written: CRLF line ends; the headers folded here (addresses,
#: subject) are written as they are (``refold_source="none"``).
_ASCII = email.policy.SMTP.clone(refold_source="none")
_UTF8 = email.policy.SMTPUTF8.clone(refold_source="none")
_UTF8_CHARSET = email.charset.Charset("utf-8")


#: The provider's name in the chain.
NAME = "outbox"


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """The local provider: each mail becomes an RFC 5322 ``.eml`` file in ``directory``."""

    directory: Path = setting(
        Path("outbox"),
        env="MAILMAN_OUTBOX_DIR",
        parse=parse.path,
        help="where the local outbox provider writes .eml files (the whole chain when no "
        "provider has a key)",
        doc="where the local `outbox` provider writes `.eml` files. This provider is the whole "
        "chain when no provider has a key",
    )


class OutboxClient(ProviderClient):
    """Writes each mail as an ``.eml`` file into a directory."""

    def __init__(self, config: OutboxConfig) -> None:
        self.name = NAME
        self._directory = Path(config.directory)

    async def send(self, mail: Mail) -> Result:
        if not _safe_file_name(mail.id):
            return Rejected(f"mail id {mail.id!r} cannot name a file")
        try:
            # Megabytes of files take a while to encode: not on the event loop.
            data = await asyncio.to_thread(render, mail) if mail.attachments else render(mail)
        except (ValueError, email.errors.MessageError) as exc:
            return Rejected(f"cannot render mail as RFC 5322: {exc}")
        try:
            await asyncio.to_thread(_write_atomically, self._directory, f"{mail.id}.eml", data)
        except OSError as exc:
            return Transient(f"cannot write outbox: {exc.strerror or exc}")
        return Accepted(message_id=mail.message_id)

    async def lookup(self, mail: Mail, since: float) -> Found:
        """``TAKEN`` if the mail's file is in the outbox (written whenever: the file
        holds this mail alone), ``NOT_FOUND`` if not; ``CANNOT`` if it cannot be told."""
        if not _safe_file_name(mail.id):
            return Found(Check.NOT_FOUND)  # send refuses such a mail: never written
        try:
            await asyncio.to_thread(os.stat, self._directory / f"{mail.id}.eml")
        except (FileNotFoundError, NotADirectoryError):
            return Found(Check.NOT_FOUND)
        except OSError as exc:
            return Found(Check.CANNOT, reason=f"cannot read outbox: {exc.strerror or exc}")
        return Found(Check.TAKEN, message_id=mail.message_id)


def render(mail: Mail) -> bytes:
    """``mail`` as the bytes of an RFC 5322 message (no Bcc header).

    Pure (no I/O): the bytes depend on the mail alone, but for the random
    MIME boundary. Lines end in CRLF, as RFC 5322 wants, and none is longer
    than 998 octets (validation bounds names and subjects so that they fold
    within it). A body holding a NUL is quoted-printable (RFC 2045).

    Address headers and the subject are folded here rather than by the
    ``email`` package, whose folder (Python 3.11) drops the quotes and escapes
    of a quoted display name that it has to fold (CPython gh-80222: ``"Doe,
    Ann"`` becomes two broken addresses) and loses or mangles the space
    between two encoded-words of a long non-ASCII subject (gh-144156).
    """
    msg = EmailMessage()
    msg.set_raw("From", _address_header("From", (mail.sender,)))
    msg.set_raw("To", _address_header("To", mail.to))
    if mail.cc:
        msg.set_raw("Cc", _address_header("Cc", mail.cc))
    if mail.reply_to is not None:
        msg.set_raw("Reply-To", _address_header("Reply-To", (mail.reply_to,)))
    msg.set_raw("Subject", _subject_header(mail.subject))
    msg["Date"] = email.utils.formatdate(mail.created_at, usegmt=True)
    msg["Message-ID"] = mail.message_id
    msg["X-Mailman-Id"] = mail.id
    # Printable ASCII that validation keeps within a line, folded at its spaces.
    for name, value in mail.sent_headers:
        msg.set_raw(name, _folded(name, value.split(" ")))
    if mail.tags:
        msg.set_raw("X-Mailman-Tags", _folded("X-Mailman-Tags", ", ".join(mail.tags).split(" ")))
    if mail.metadata:
        # Not folded here: the email package folds it (a long word as encoded-words,
        # which read back exactly: the JSON holds no space or "=" to lose or decode).
        msg["X-Mailman-Metadata"] = metadata_header(mail.metadata)
    if mail.text is not None:
        msg.set_content(mail.text, cte=_transfer_encoding(mail.text))
        if mail.html is not None:
            msg.add_alternative(mail.html, subtype="html", cte=_transfer_encoding(mail.html))
    elif mail.html is not None:
        msg.set_content(mail.html, subtype="html", cte=_transfer_encoding(mail.html))
    else:
        msg.set_content("")
    if mail.attachments:
        _attach(msg, mail.attachments)
    # Non-ASCII addresses cannot be written as encoded words: write UTF-8 headers then.
    # (Validation now refuses them; mails stored before it may still have them.)
    addresses = (mail.sender, *mail.to, *mail.cc, *((mail.reply_to,) if mail.reply_to else ()))
    ascii_only = all(a.email.isascii() for a in addresses)
    return msg.as_bytes(policy=_ASCII if ascii_only else _UTF8)


def _attach(msg: EmailMessage, files: Sequence[Attachment]) -> None:
    """Add the files to ``msg``, whose body is set: each a base64 part with its type and
    ``Content-Disposition`` (the file name RFC 2231-encoded when it is not ASCII).

    Inline files go into a ``multipart/related`` with the HTML body they belong
    to (with the only body when there is no HTML), each with its ``Content-ID``;
    the others make the message ``multipart/mixed``: ``mixed[alternative[text,
    related[html, inline...]], attachment...]``.
    """
    inline = [f for f in files if f.disposition is Disposition.INLINE]
    if inline:
        html = msg.get_body(("html",))
        related = html if html is not None else msg
        for file in inline:
            maintype, _, subtype = file.content_type.partition("/")
            related.add_related(
                file.decoded(), maintype, subtype, disposition="inline", filename=file.filename
            )
            # Written as it is, never folded: the email package would fold a long
            # one into encoded-words, which RFC 2047 does not allow in a msg-id.
            if file.content_id is not None:  # validation gives every inline file one
                *_, part = related.iter_parts()
                part.set_raw("Content-ID", f"<{file.content_id}>")
    for file in files:
        if file.disposition is Disposition.ATTACHMENT:
            maintype, _, subtype = file.content_type.partition("/")
            msg.add_attachment(file.decoded(), maintype, subtype, filename=file.filename)
    # The email package gives each part it makes a MIME-Version of its own;
    # RFC 2045 wants it in the message's header only.
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]


def metadata_header(metadata: Sequence[tuple[str, str]]) -> str:
    """The ``X-Mailman-Metadata`` value: the metadata as compact JSON, in the order
    given, in ASCII with ``\\u`` escapes for everything else and for space and
    ``=`` too (so no fold can lose a space, nor a reader decode an ``=?...?=``)."""
    text = json.dumps(dict(metadata), separators=(",", ":"))
    return text.replace(" ", "\\u0020").replace("=", "\\u003d")


def _transfer_encoding(body: str) -> str | None:
    """The Content-Transfer-Encoding a body needs; None lets the ``email`` package choose.

    A NUL may not appear in 7bit or 8bit data (RFC 2045), but the package
    would write a short ASCII body holding one as 7bit: quote it instead.
    """
    return "quoted-printable" if "\0" in body else None


def _address_header(name: str, addresses: Sequence[Address]) -> str:
    """The value of address header ``name``: each word of a display name (a
    quoted-string, an atom run, an encoded-word) and each ``<address>`` stays
    whole, so a fold never falls inside a quoted name."""
    words: list[str] = []
    for i, address in enumerate(addresses):
        name_words = display_name_words(address.name)
        last = f"<{address.email}>" if name_words else address.email
        words += [*name_words, last + ("," if i < len(addresses) - 1 else "")]
    return _folded(name, words)


def _subject_header(subject: str) -> str:
    """The Subject value.

    ASCII text made of words that fit a line is written as it is, folded at
    its spaces. Anything else (non-ASCII, a word too long for a line, a run of
    spaces) becomes UTF-8 encoded-words of at most 75 characters; a reader
    drops the whitespace between two of them (RFC 2047, section 6.2), so the
    subject reads back exactly.
    """
    head = len("Subject: ")
    words = subject.split(" ")
    if not subject.isascii() or not all(0 < len(w) <= FOLD_AT - head for w in words):
        widths = itertools.chain([FOLD_AT - head], itertools.repeat(MAX_ENCODED_WORD))
        encoded = _UTF8_CHARSET.header_encode_lines(subject, widths)
        words = [w for w in encoded if w]
    return _folded("Subject", words) if subject else ""


def _folded(name: str, words: Sequence[str]) -> str:
    """The value of header ``name``: ``words`` joined by spaces, folded before a
    word that would pass ``FOLD_AT`` (the first word stays on the header's line)."""
    lines: list[str] = []
    line = f"{name}:"
    for i, word in enumerate(words):
        if i and len(line) + 1 + len(word) > FOLD_AT:
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines)[len(name) + 2 :]


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


#: The entry point ``outbox`` of the group ``mailman.providers`` (pyproject.toml).
plugin = ProviderPlugin(
    NAME,
    OutboxConfig,
    lambda settings, timeout: OutboxClient(settings),
    summary="a directory of .eml files, for local runs and tests",
)

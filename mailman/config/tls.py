"""The SMTP server's TLS context, from the files ``MAILMAN_SMTP_TLS_CERT`` and
``MAILMAN_SMTP_TLS_KEY`` name; checked at load, used by ``actors.smtp``."""

from __future__ import annotations

import ssl
from pathlib import Path

from .errors import ConfigError
from .settings import SETTINGS


def tls_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server's TLS context from a PEM certificate chain and its private key.

    ``ConfigError`` naming the files (never their contents) when one cannot be
    read or they are no certificate and matching key. An encrypted key is
    refused, not prompted for: a server has no one to ask.
    """
    cert_var, key_var = SETTINGS["smtp.tls_cert"].name, SETTINGS["smtp.tls_key"].name
    for var, path in ((cert_var, cert), (key_var, key)):
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"{var}: cannot read {path} ({exc.strerror or type(exc).__name__})"
            ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, ValueError) as exc:
        why = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(
            f"{cert_var} and {key_var}: {cert} and {key} are not a PEM "
            f"certificate chain and its unencrypted private key ({why})"
        ) from None
    return context


def _no_password() -> str:
    return ""

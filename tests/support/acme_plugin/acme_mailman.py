"""Acme Mail: a provider from outside Mailman, as a third party's package adds one.

Its distribution (``acme_mailman-1.0.dist-info`` beside this file) names
``plugin`` in the entry point group ``mailman.providers``; with this directory
on ``PYTHONPATH``, ``MAILMAN_PROVIDERS=acme`` sends through it and
``ACME_SPOOL`` is a setting like any other (``--help``, the docs table).
Each mail becomes one JSON line in the spool file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mailman.config import ProviderPlugin, parse, required, setting
from mailman.core.model import Mail
from mailman.providers import Accepted, ProviderClient, Result


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    spool: Path | None = setting(
        None,
        env="ACME_SPOOL",
        parse=parse.path,
        help="the file Acme Mail appends each mail to, one JSON line; unset: acme is left out",
    )


class AcmeClient(ProviderClient):
    """Appends each mail to the spool file and says it took it."""

    def __init__(self, settings: AcmeSettings, timeout: float) -> None:
        assert settings.spool is not None  # required("spool") left acme out otherwise
        self.name = "acme"
        self._spool = settings.spool

    async def send(self, mail: Mail) -> Result:
        line = {"mail_id": mail.id, "to": [a.email for a in mail.to], "subject": mail.subject}
        with self._spool.open("a") as spool:
            spool.write(json.dumps(line) + "\n")
        return Accepted(message_id=f"acme-{mail.id}")


plugin = ProviderPlugin(
    "acme", AcmeSettings, AcmeClient, required("spool"), summary="Acme Mail (a third party's)"
)

"""Why the intake would not take a mail, said once for every entry point.

Each refusal says what happened and how long a client should wait before it
tries again (``retry_after``, seconds; None: trying again as is will not
help). Nothing was stored for any of them. The HTTP routes turn them into
problem details (``mailman.routes.errors.as_problem``), the SendGrid and
Mailgun faces into those providers' error bodies, the SMTP actor into
reply codes. A mail that is not valid is the core's ``ValidationFailed``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """The caller's rate limit after one request: what the ``RateLimit-*`` headers say."""

    #: Mails per second (also the burst).
    limit: float
    #: Whole mails the caller may still send at once.
    remaining: int
    #: Seconds until the bucket is full again.
    reset: float


class Refused(Exception):
    """The intake refused the mail; nothing was stored."""

    #: Seconds to wait before trying again; None: trying again as is will not help.
    retry_after: int | None = None


class BacklogFull(Refused):
    """Too many mails wait to be sent (``MAILMAN_BACKLOG_LIMIT``)."""

    def __init__(self, size: int, limit: int, retry_after: int) -> None:
        super().__init__(f"{size} mails are waiting to be sent (the limit is {limit})")
        self.size = size
        self.limit = limit
        self.retry_after = retry_after


class RateLimited(Refused):
    """The caller's key sends faster than its rate."""

    def __init__(self, rate: Rate, retry_after: int) -> None:
        super().__init__(f"this key may send {rate.limit:g} mails per second")
        self.rate = rate
        self.retry_after = retry_after


class KeyInFlight(Refused):
    """A request with the same idempotency key is being committed right now."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("a request with this idempotency key is still being processed")
        self.retry_after = retry_after


class KeyReused(Refused):
    """The idempotency key was used before with another request."""

    def __init__(self, mail_id: str) -> None:
        super().__init__("the idempotency key was used before with another request")
        #: The mail the key stands for.
        self.mail_id = mail_id

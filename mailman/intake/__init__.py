"""The intake: what every entry point does with a mail before it answers.

Keys and scopes (``auth``, ``keys``), the caller's rate, back pressure
(``backlog``), validation through the core, the callback URL's host,
idempotency, the commit, and the wake-up of the relay (``accept``). The
entry points (the HTTP routes, the SMTP actor) translate their clients'
input and map what the intake refuses to their own wire format.
"""

from .accept import Accepted, Intake, Outbound
from .auth import ANONYMOUS, BadKey, Keyring, MissingScope, NoKey, Principal, authenticate
from .backlog import Backlog
from .instruments import HttpMetrics
from .keys import Scope, create_key
from .load import Load

__all__ = [
    "ANONYMOUS",
    "Accepted",
    "Backlog",
    "BadKey",
    "HttpMetrics",
    "Intake",
    "Keyring",
    "Load",
    "MissingScope",
    "NoKey",
    "Outbound",
    "Principal",
    "Scope",
    "authenticate",
    "create_key",
]

"""Mailboxes: how actors talk to each other.

``base`` is the interface; ``memory`` the bounded in-process queue (actors in
one process); ``kafka`` a Kafka topic (actors in several processes), imported
only when a Kafka broker is configured. One contract test suite
(``tests/integration/test_mailbox.py``) runs against both.
"""

from .base import Broker, Delivery, Inbox, M, Mailbox
from .memory import MemoryBroker, MemoryMailbox

__all__ = ["Broker", "Delivery", "Inbox", "M", "Mailbox", "MemoryBroker", "MemoryMailbox"]

"""The mail core: the model, its validation, MIME, the failover policy. Pure: no I/O.

Everything above it (the intake, the store, the mailboxes, the providers,
the actors and the entry points) speaks in its records; it imports none of them.
"""

"""Open files: every provider call in flight holds a connection, a file descriptor.

An adaptive sender may grow to ``MAILMAN_SENDER_MAX_CONCURRENCY`` calls in
flight (2,048), each on its own connection, while many systems start a
process with a soft limit of 1,024 open files: past it a new connection, or
an accepted one, fails with ``EMFILE``. So every Mailman process raises its
soft limit to its hard limit at start (as Go's runtime does; an API's clients
are connections too), and a process with senders keeps their ceilings within
what it has: ``RESERVE`` descriptors for everything else (the listening
sockets and clients, the store, the logs), the rest shared by its senders; a
sender never gets less than where it starts.
"""

from __future__ import annotations

#: Descriptors kept for what is not a provider call (clients of the API, the store...).
RESERVE = 512
#: The soft limit asked for when the hard limit is unlimited.
UNLIMITED_WANT = 1 << 20


def raise_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit; the soft limit
    now (None where the platform has no such limit)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = UNLIMITED_WANT if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= want:
        return None if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):  # refused (macOS caps it lower): keep what there is
        return soft
    return want


def sender_ceiling(*, open_files: int | None, senders: int, start: int, wanted: int) -> int:
    """The most calls in flight one of ``senders`` senders may grow to: ``wanted``, within
    the process's ``open_files`` (less ``RESERVE``) shared by the senders, never below
    ``start``."""
    if open_files is None:
        return wanted
    room = (open_files - RESERVE) // max(1, senders)
    return max(start, min(wanted, room))

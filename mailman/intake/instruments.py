"""Per-process HTTP metrics, counted for every request by ``request_id_middleware``.

Three prometheus-client metrics:

- ``mailman_http_requests_total{method, route, status}``, a counter;
- ``mailman_http_request_duration_seconds{method, route}``, a histogram;
- ``mailman_smtp_replies_total{stage, code}``, a counter of the SMTP actor's
  answers that matter (``connect``: turned away; ``auth``; ``data``: a mail's).

``route`` is the template of the route that took the request
(``/mail/{id}/status``), never the raw path, so ids never become labels;
``unrouted`` when no route took it (404, 405). Methods outside the usual
seven are counted as ``other``. The label sets are therefore bounded.

Cheap on purpose: the labelled children are looked up once per
(method, route, status) and kept, so a request costs one dict lookup, one
counter increment and one histogram observation (docs/observability.md
gives the measured cost).

**Multiprocess.** With a directory (``--processes`` gives its children one
as ``PROMETHEUS_MULTIPROC_DIR``), prometheus-client keeps each value in a
file of that directory per process, and ``exposition`` reads every
process's files: whichever API process answers ``/metrics`` shows the sum
over all of them. prometheus-client chooses its multiprocess mode from that
environment variable when it is first imported; ``HttpMetrics`` refuses a
directory the library is not using (a ``ConfigError`` at start), so the
config and the library cannot disagree silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from mailman.config import ConfigError

#: Label of a request no route took (404, 405).
UNROUTED = "unrouted"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Seconds. An accepted mail takes about 1 to 20 ms; a stalled store is cut at 5 s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_active() -> bool:
    """Whether prometheus-client keeps values in files (``PROMETHEUS_MULTIPROC_DIR`` was set
    when it was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class HttpMetrics:
    """This process's HTTP request counter and latency histogram (one per process)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir is not None and not multiprocess_active():
            raise ConfigError(
                "PROMETHEUS_MULTIPROC_DIR must be in the environment when Mailman starts "
                "(prometheus-client reads it when it is imported)"
            )
        if multiprocess_dir is not None and not os.path.isdir(multiprocess_dir):
            raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR {multiprocess_dir!r} is not a directory")
        self.multiprocess_dir = multiprocess_dir
        # A registry of our own: several systems in one process (tests, embedded) never clash.
        own = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            "mailman_http_requests",
            "HTTP requests answered, by method, route template and status",
            ("method", "route", "status"),
            registry=own,
        )
        self._smtp = Counter(
            "mailman_smtp_replies",
            "SMTP replies by stage (connect: turned away; auth; data: a mail's answer) and code",
            ("stage", "code"),
            registry=own,
        )
        self._duration = Histogram(
            "mailman_http_request_duration_seconds",
            "Time from a request's headers to its answer, by method and route template",
            ("method", "route"),
            buckets=BUCKETS,
            registry=own,
        )
        if multiprocess_dir is None:
            self.registry = own
        else:
            self.registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        #: (method, route, status) -> (the counter's inc, the histogram's observe).
        self._children: dict[
            tuple[str, str, int], tuple[Callable[[float], None], Callable[[float], None]]
        ] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request that took ``seconds``."""
        child = self._children.get((method, route, status))
        if child is None:
            child = self._child(method, route, status)
        child[0](1)
        child[1](seconds)

    def _child(
        self, method: str, route: str, status: int
    ) -> tuple[Callable[[float], None], Callable[[float], None]]:
        label = method if method in _METHODS else "other"
        child = (
            self._requests.labels(label, route, str(status)).inc,
            self._duration.labels(label, route).observe,
        )
        if label == method:  # an odd method is looked up each time: the cache stays bounded
            self._children[(method, route, status)] = child
        return child

    def smtp_reply(self, stage: str, code: str) -> None:
        """Count one SMTP reply (``actors.smtp``): ``stage`` connect, auth, mail,
        data, timeout or stop, and the reply's three-digit ``code`` (a bounded set)."""
        self._smtp.labels(stage, code).inc()

    def exposition(self) -> bytes:
        """The HTTP metrics in Prometheus' text format (every process's, in multiprocess mode)."""
        return generate_latest(self.registry)

"""The dashboard: ``GET /dashboard`` (a page, public) and ``GET /dashboard/data`` (admin).

The page is one HTML document with its style and a little plain JavaScript inline:
no build step, nothing fetched from anywhere but Mailman, the chart drawn as inline
SVG. Its three parts are files in ``routes/static`` (``dashboard.html``, ``.css``,
``.js``), read once as package data and put together here; the
Content-Security-Policy allows exactly that style and script, by hash. It shows
nothing by itself; its script reads ``/dashboard/data`` every ``REFRESH_SECONDS``
with the admin key the user typed (kept in ``sessionStorage`` only, sent as
``Authorization: Bearer``), or with none while the API is open.

Every figure is read from the store (``Store.metrics_snapshot``: the figures it
keeps as mails move, a few dozen rows; ``attempts_per_minute``, ``latest_failures``:
index ranges over the last minutes and the newest failures), which every process of
every deployment shares, at a cost that does not grow with the mails kept:
whichever API process answers, with ``--processes N`` or in the scaled
deployment, the figures are the same. Breaker states are the store's
shared ones, or this process's own where it runs the senders (fresher). No mail
content: ids, statuses, providers, outcomes, reasons, times and counts only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import importlib.resources
import string
import time
from collections.abc import Mapping, Sequence
from typing import Literal

from aiohttp import web

from mailman.config import Config
from mailman.core.clock import iso_time
from mailman.core.model import Outcome, Status
from mailman.intake.guard import guarded
from mailman.intake.keys import Scope
from mailman.store.base import BreakerState, Failures, MetricsSnapshot, MinuteCount

from . import CONFIG, PROBES, STORE
from .auth import requires
from .contract import Answer, operation
from .health import CLOSED, effective_state, provider_states
from .models.dashboard import FAILED_OUTCOMES, DashboardData, Minute, ProviderFigures, Window

routes = web.RouteTableDef()

#: Minutes of throughput the chart shows (the last one is the current, partial minute).
WINDOW_MINUTES = 15
#: Failed mails, and failed provider attempts, the page lists.
FAILURES_SHOWN = 10
#: How often the page reads the figures again.
REFRESH_SECONDS = 5

#: What the throughput chart counts.
CHART_OUTCOMES: tuple[str, ...] = (Outcome.ACCEPTED.value, *FAILED_OUTCOMES)


# --- the data ---------------------------------------------------------------------------


@routes.get("/dashboard/data")
@requires(Scope.ADMIN)
@operation(
    "dashboardData",
    "What the dashboard shows, read from the store (needs `admin`): providers and their "
    "breakers, mails by status, provider calls per minute, the latest failures",
    description="No mail content: ids, statuses, providers, outcomes, reasons, times and "
    "counts. The same whichever process answers.",
    answers={200: Answer("The figures", DashboardData)},
)
async def dashboard_data(request: web.Request) -> web.Response:
    """Everything the page shows, read from the store now (admin scope)."""
    app = request.app
    store, config, probes = app[STORE], app[CONFIG], app[PROBES]
    within = config.store_timeout
    now = time.time()
    first = window_start(now)
    snapshot = await guarded(store, within, store.metrics_snapshot())
    minutes = await guarded(store, within, store.attempts_per_minute(first, CHART_OUTCOMES))
    failures = await guarded(store, within, store.latest_failures(FAILURES_SHOWN, FAILED_OUTCOMES))
    local = probes.breakers() if probes.breakers is not None else ()
    body = figures(config, snapshot, minutes, failures, local, now)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def window_start(now: float) -> int:
    """The start (unix seconds) of the chart's first minute."""
    return (int(now // 60) - (WINDOW_MINUTES - 1)) * 60


def figures(
    config: Config,
    snapshot: MetricsSnapshot,
    minutes: Sequence[MinuteCount],
    failures: Failures,
    local: Sequence[BreakerState],
    now: float,
) -> DashboardData:
    """The body of ``GET /dashboard/data``."""
    first = window_start(now)
    states = provider_states(config, snapshot.breakers, local, now)
    shared = {b.provider: b for b in snapshot.breakers}
    seen = {p for p, _ in snapshot.attempts} | {m.provider for m in minutes} | set(snapshot.retries)
    names = [*config.chain, *sorted(seen - set(config.chain))]
    window: dict[str, Window] = {p: {"accepted": 0, "failed": 0} for p in names}
    counts = {"accepted": [0] * WINDOW_MINUTES, "failed": [0] * WINDOW_MINUTES}
    for m in minutes:
        index = (m.minute - first) // 60
        kind: Literal["accepted", "failed"] = (
            "accepted" if m.outcome == Outcome.ACCEPTED.value else "failed"
        )
        if 0 <= index < WINDOW_MINUTES:
            counts[kind][index] += m.count
            window[m.provider][kind] += m.count
    per_minute: list[Minute] = [
        {
            "minute": iso_time(first + 60 * i),
            "accepted": counts["accepted"][i],
            "failed": counts["failed"][i],
        }
        for i in range(WINDOW_MINUTES)
    ]
    providers: list[ProviderFigures] = []
    for name in names:
        if name in states:
            breaker = states[name]
        elif name in shared:
            breaker = effective_state(shared[name], now, config.breaker.reset_seconds)
        else:
            breaker = CLOSED
        providers.append(
            {
                "name": name,
                "in_chain": name in config.chain,
                "breaker": breaker,
                "window": window[name],
                "attempts": {o.value: snapshot.attempts.get((name, o.value), 0) for o in Outcome},
                "retries": snapshot.retries.get(name, 0),
            }
        )
    mails = {s.value: snapshot.mails.get(s.value, 0) for s in Status}
    return {
        "generated_at": iso_time(now),
        "providers": providers,
        "mails": mails,
        "backlog": mails[Status.QUEUED.value] + mails[Status.SENDING.value],
        "outbox": snapshot.outbox,
        "dead_letters": snapshot.dead_letters,
        "throughput": {"minutes": WINDOW_MINUTES, "per_minute": per_minute},
        "failures": {
            "mails": [
                {"id": f.id, "provider": f.provider, "reason": f.reason, "at": iso_time(f.at)}
                for f in failures.mails
            ],
            "attempts": [
                {
                    "mail_id": a.mail_id,
                    "provider": a.provider,
                    "round": a.round,
                    "outcome": a.outcome,
                    "reason": a.reason,
                    "at": iso_time(a.at),
                }
                for a in failures.attempts
            ],
        },
    }


# --- the page ------------------------------------------------------------------------------

#: The page's files, package data beside this module: the HTML with ``$`` slots
#: (``string.Template``), and its style and script, which go inline into it.
_STATIC = importlib.resources.files(__package__) / "static"


def _page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (the inline style and script by hash)."""
    style = (_STATIC / "dashboard.css").read_text(encoding="utf-8")
    script = (_STATIC / "dashboard.js").read_text(encoding="utf-8")
    status_rows = "\n".join(
        f'<tr><th scope="row">{html.escape(s.value)}</th>'
        f'<td class="n" data-status="{html.escape(s.value)}">-</td></tr>'
        for s in Status
    )
    template = string.Template((_STATIC / "dashboard.html").read_text(encoding="utf-8"))
    body = template.substitute(
        style=style,
        script=script,
        status_rows=status_rows,
        window_minutes=WINDOW_MINUTES,
        refresh_ms=REFRESH_SECONDS * 1000,
    )

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src 'sha256-{digest(script)}'",
            f"style-src 'sha256-{digest(style)}'",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return body.encode(), policy


_BODY, _POLICY = _page()
_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": _POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@routes.get("/dashboard")
@operation(
    "dashboard",
    "The dashboard page (HTML, inline script and SVG); it holds no figures: its script "
    "reads /dashboard/data with the admin key typed into it",
    answers={200: Answer("The page", schema={"type": "string"}, media="text/html")},
)
async def dashboard(request: web.Request) -> web.Response:
    """The page (public: it holds no figures; its script reads them with the key)."""
    return web.Response(body=_BODY, content_type="text/html", charset="utf-8", headers=_HEADERS)

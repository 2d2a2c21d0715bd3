"""The dashboard: ``GET /dashboard`` (a page, public) and ``GET /dashboard/data`` (admin).

The page is one HTML document with its style and a little plain JavaScript inline:
no build step, nothing fetched from anywhere but Mailman, the chart drawn as inline
SVG. It shows nothing by itself; its script reads ``/dashboard/data`` every
``REFRESH_SECONDS`` with the admin key the user typed (kept in ``sessionStorage``
only, sent as ``Authorization: Bearer``), or with none while the API is open.

Every figure is read from the store (``Store.metrics_snapshot``,
``attempts_per_minute``, ``latest_failures``), which every process of every
deployment shares: whichever API process answers, with ``--processes N`` or in the
scaled deployment, the figures are the same. Breaker states are the store's
shared ones, or this process's own where it runs the senders (fresher). No mail
content: ids, statuses, providers, outcomes, reasons, times and counts only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Mapping, Sequence
from typing import Literal

from aiohttp import web

from mailman.config import Config
from mailman.core.clock import iso_time as iso
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
            "minute": iso(first + 60 * i),
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
        "generated_at": iso(now),
        "providers": providers,
        "mails": mails,
        "backlog": mails[Status.QUEUED.value] + mails[Status.SENDING.value],
        "outbox": snapshot.outbox,
        "dead_letters": snapshot.dead_letters,
        "throughput": {"minutes": WINDOW_MINUTES, "per_minute": per_minute},
        "failures": {
            "mails": [
                {"id": f.id, "provider": f.provider, "reason": f.reason, "at": iso(f.at)}
                for f in failures.mails
            ],
            "attempts": [
                {
                    "mail_id": a.mail_id,
                    "provider": a.provider,
                    "round": a.round,
                    "outcome": a.outcome,
                    "reason": a.reason,
                    "at": iso(a.at),
                }
                for a in failures.attempts
            ],
        },
    }


# --- the page ------------------------------------------------------------------------------

_STYLE = """
:root { color-scheme: light dark; --ok: #2e7d32; --bad: #c62828; --half: #ef6c00;
  --muted: #777; --line: #8884; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem auto; max-width: 72rem;
  padding: 0 1rem; }
header { display: flex; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
h1 { font-size: 1.4rem; margin: 0; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
#state { color: var(--muted); }
#state[data-state="error"], #state[data-state="offline"] { color: var(--bad); }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); gap: 0 2rem; }
section.wide { grid-column: 1 / -1; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.reason { overflow-wrap: anywhere; }
code { font-size: .9em; }
.breaker { font-weight: 600; }
.breaker.closed { color: var(--ok); }
.breaker.open { color: var(--bad); }
.breaker.half_open, .breaker.unknown { color: var(--half); }
#chart { width: 100%; height: auto; max-height: 16rem; }
#chart .accepted { fill: var(--ok); }
#chart .failed { fill: var(--bad); }
#chart text { fill: currentColor; font-size: 12px; }
.key { display: inline-block; width: .8em; height: .8em; margin: 0 .2em 0 .6em; }
.key.accepted { background: var(--ok); }
.key.failed { background: var(--bad); }
#chart line { stroke: var(--line); }
form { margin: 1rem 0; }
input { font: inherit; width: 28rem; max-width: 100%; }
.problem { color: var(--bad); }
.none { color: var(--muted); }
"""

_SCRIPT = """
"use strict";
(() => {
  const STORED = "mailman.dashboard.key";
  const EVERY_MS = %(every_ms)d;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let timer = null;

  function make(tag, attrs, text) {
    const node = tag.startsWith("svg:")
      ? document.createElementNS(SVG, tag.slice(4))
      : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function cell(text, cls) {
    return make("td", cls ? { class: cls } : {}, text);
  }

  function fill(tbody, rows, columns, empty) {
    tbody.replaceChildren();
    if (!rows.length) {
      const tr = make("tr");
      tr.append(make("td", { class: "none", colspan: String(columns) }, empty));
      tbody.append(tr);
    }
    for (const row of rows) tbody.append(row);
  }

  function clock(at) {
    return at ? at.slice(11, 19) : "";
  }

  function say(state, text) {
    const node = $("state");
    node.dataset.state = state;
    node.textContent = text;
  }

  function ask(problem) {
    clearTimeout(timer);
    $("figures").hidden = true;
    $("forget").hidden = true;
    $("key-form").hidden = false;
    $("key-problem").textContent = problem;
    say("key", "An admin key is needed.");
    $("key").focus();
  }

  function render(data) {
    $("key-form").hidden = true;
    $("figures").hidden = false;
    $("forget").hidden = !sessionStorage.getItem(STORED);
    say("ok", "Updated " + clock(data.generated_at) + " UTC");

    const providers = data.providers.map((p) => {
      const tr = make("tr", { "data-provider": p.name, "data-breaker": p.breaker });
      tr.append(
        cell(p.in_chain ? p.name : p.name + " (not in the chain)"),
        make("td", {}, null),
        cell(p.window.accepted, "n"),
        cell(p.window.failed, "n"),
        cell(p.attempts.pending, "n"),
        cell(p.attempts.accepted, "n"),
        cell(p.attempts.transient + p.attempts.misconfigured + p.attempts.rejected
          + p.attempts.unknown, "n"),
        cell(p.attempts.skipped, "n"),
        cell(p.retries, "n"),
      );
      tr.children[1].append(make("span", { class: "breaker " + p.breaker }, p.breaker));
      for (const [i, name] of ["window-accepted", "window-failed", "pending", "accepted",
        "failed", "skipped", "retries"].entries()) {
        tr.children[i + 2].dataset.figure = name;
      }
      return tr;
    });
    fill($("providers").tBodies[0], providers, 9, "No provider.");

    for (const [status, count] of Object.entries(data.mails)) {
      const td = document.querySelector('#mails td[data-status="' + status + '"]');
      if (td) td.textContent = String(count);
    }
    for (const name of ["backlog", "outbox", "dead_letters"]) {
      $(name).textContent = String(data[name]);
    }

    chart(data.throughput);

    fill($("failed-mails").tBodies[0], data.failures.mails.map((m) => {
      const tr = make("tr", { "data-mail": m.id });
      tr.append(cell(clock(m.at)), make("td", {}, null), cell(m.provider || "-"),
        cell(m.reason || "-", "reason"));
      tr.children[1].append(make("code", {}, m.id));
      return tr;
    }), 4, "No failed mail.");

    fill($("failed-attempts").tBodies[0], data.failures.attempts.map((a) => {
      const tr = make("tr", { "data-mail": a.mail_id, "data-provider": a.provider,
        "data-outcome": a.outcome });
      tr.append(cell(clock(a.at)), make("td", {}, null), cell(a.provider), cell(a.round, "n"),
        cell(a.outcome), cell(a.reason || "-", "reason"));
      tr.children[1].append(make("code", {}, a.mail_id));
      return tr;
    }), 6, "No failed provider call.");
  }

  function chart(throughput) {
    const svg = $("chart");
    const minutes = throughput.per_minute;
    const width = 480, height = 200, left = 36, bottom = 20, top = 10;
    const most = Math.max(1, ...minutes.map((m) => m.accepted + m.failed));
    const step = (width - left) / minutes.length;
    const scale = (height - bottom - top) / most;
    svg.replaceChildren();
    svg.append(make("svg:line", { x1: left, x2: width, y1: height - bottom, y2: height - bottom }));
    svg.append(make("svg:text", { x: left - 4, y: top + 8, "text-anchor": "end" }, most));
    svg.append(make("svg:text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, 0));
    let accepted = 0, failed = 0;
    minutes.forEach((m, i) => {
      accepted += m.accepted;
      failed += m.failed;
      const x = left + i * step + 2;
      const g = make("svg:g", { class: "minute", "data-minute": m.minute,
        "data-accepted": m.accepted, "data-failed": m.failed });
      const ha = m.accepted * scale, hf = m.failed * scale;
      g.append(make("svg:rect", { class: "accepted", x: x, width: step - 4,
        y: height - bottom - ha, height: ha }));
      g.append(make("svg:rect", { class: "failed", x: x, width: step - 4,
        y: height - bottom - ha - hf, height: hf }));
      g.append(make("svg:title", {}, m.minute.slice(11, 16) + " UTC: " + m.accepted
        + " accepted, " + m.failed + " failed"));
      svg.append(g);
      const last = i === minutes.length - 1;
      if (i %% 5 === 0 || last) {
        svg.append(make("svg:text", { x: last ? width : x + (step - 4) / 2, y: height - 4,
          "text-anchor": last ? "end" : "middle" }, m.minute.slice(11, 16)));
      }
    });
    const total = $("chart-total");
    total.dataset.accepted = String(accepted);
    total.dataset.failed = String(failed);
    total.textContent = accepted + " accepted, " + failed + " failed in the last "
      + throughput.minutes + " minutes (UTC).";
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, EVERY_MS);
  }

  async function refresh() {
    clearTimeout(timer);
    const key = sessionStorage.getItem(STORED);
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = "Bearer " + key;
    let resp;
    try {
      resp = await fetch("dashboard/data", { headers, cache: "no-store", credentials: "omit" });
    } catch (err) {
      say("offline", "Mailman does not answer; trying again.");
      schedule();
      return;
    }
    if (resp.status === 401 || resp.status === 403) {
      sessionStorage.removeItem(STORED);
      ask(resp.status === 403 ? "That key lacks the admin scope."
        : key ? "That key is unknown or revoked." : "");
      return;
    }
    if (!resp.ok) {
      say("error", "The figures could not be read (HTTP " + resp.status + "); trying again.");
      schedule();
      return;
    }
    render(await resp.json());
    schedule();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    $("key").value = "";
    if (!key) return;
    sessionStorage.setItem(STORED, key);
    $("key-form").hidden = true;
    say("loading", "Loading…");
    refresh();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(STORED);
    ask("");
  });
  refresh();
})();
"""


def _page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (the inline style and script by hash)."""
    script = _SCRIPT % {"every_ms": REFRESH_SECONDS * 1000}
    status_rows = "\n".join(
        f'<tr><th scope="row">{html.escape(s.value)}</th>'
        f'<td class="n" data-status="{html.escape(s.value)}">-</td></tr>'
        for s in Status
    )
    body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Mailman dashboard</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>Mailman</h1>
<span id="state" data-state="loading">Loading…</span>
<button id="forget" type="button" hidden>Forget the key</button>
</header>
<form id="key-form" hidden autocomplete="off">
<p>The figures need an API key with the <code>admin</code> scope
(<code>mailman keys create --tenant ops --scope admin</code>). It is kept in this
tab only (<code>sessionStorage</code>) and sent to Mailman alone.</p>
<label>Admin key <input id="key" type="password" autocomplete="off" spellcheck="false"
required></label>
<button type="submit">Show</button>
<p id="key-problem" class="problem"></p>
</form>
<main id="figures" hidden>
<section class="wide">
<h2>Providers</h2>
<table id="providers">
<thead><tr><th>provider</th><th>breaker</th>
<th class="n">accepted, {WINDOW_MINUTES} min</th><th class="n">failed, {WINDOW_MINUTES} min</th>
<th class="n">in flight</th><th class="n">accepted</th><th class="n">failed</th>
<th class="n">skipped</th><th class="n">retries</th></tr></thead>
<tbody></tbody>
</table>
</section>
<section>
<h2>Mails by status</h2>
<table id="mails">
<tbody>
{status_rows}
<tr><th scope="row">backlog (queued + sending)</th><td class="n" id="backlog">-</td></tr>
<tr><th scope="row">outbox, not yet handed on</th><td class="n" id="outbox">-</td></tr>
<tr><th scope="row">dead letters</th><td class="n" id="dead_letters">-</td></tr>
</tbody>
</table>
</section>
<section>
<h2>Provider calls per minute</h2>
<svg id="chart" viewBox="0 0 480 200" role="img"
aria-label="Provider calls per minute: accepted, and failed on top"></svg>
<p id="chart-total"></p>
<p><span class="key accepted"></span>accepted <span class="key failed"></span>failed
(transient, misconfigured, rejected, unknown; no call is made while a breaker is open)</p>
</section>
<section class="wide">
<h2>Latest failed mails</h2>
<table id="failed-mails">
<thead><tr><th>at (UTC)</th><th>mail</th><th>provider</th><th>reason</th></tr></thead>
<tbody></tbody>
</table>
<h2>Latest failed provider calls</h2>
<table id="failed-attempts">
<thead><tr><th>at (UTC)</th><th>mail</th><th>provider</th><th class="n">round</th>
<th>outcome</th><th>reason</th></tr></thead>
<tbody></tbody>
</table>
</section>
</main>
<script>{script}</script>
</body>
</html>
"""

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src 'sha256-{digest(script)}'",
            f"style-src 'sha256-{digest(_STYLE)}'",
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

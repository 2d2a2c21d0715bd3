"use strict";
(() => {
  const STORED = "mailman.dashboard.key";
  const EVERY_MS = Number(document.body.dataset.refreshMs);
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
      if (i % 5 === 0 || last) {
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

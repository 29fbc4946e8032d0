// Session replay: renders /approvals/audit/sessions/{id} (a signed-in
// operator's view of one session's audit records). Everything from the
// server is inserted as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function showError(message) {
  const e = $("error");
  e.textContent = message;
  e.hidden = !message;
}

function renderSubject(subject) {
  const table = $("r-subject");
  table.replaceChildren();
  if (!subject) return;
  const rows = [
    ["User (sub)", subject.sub],
    ["Agent chain (act)", (subject.act || []).join(" → ")],
    ["Scope", subject.scope],
    ["Task", subject.task_id],
    ["Build", subject.build],
  ];
  for (const [k, v] of rows) {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = k;
    tr.appendChild(th);
    cell(tr, v);
    table.appendChild(tr);
  }
}

async function load(id) {
  showError("");
  $("result").hidden = true;
  const r = await fetch("/approvals/audit/sessions/" + encodeURIComponent(id), {
    credentials: "same-origin",
    cache: "no-store",
  });
  if (r.status === 401) {
    $("app-view").hidden = true;
    $("login-view").hidden = false;
    return;
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    showError(body.error_description || "The session could not be read (" + r.status + ").");
    return;
  }
  $("r-session").textContent = body.session;
  $("r-summary").textContent =
    body.records + " records, " + body.calls + " calls" + (body.truncated ? " (truncated)" : "") + ".";
  renderSubject(body.subject);
  const tbody = $("timeline-body");
  tbody.replaceChildren();
  for (const e of body.timeline) {
    const tr = document.createElement("tr");
    tr.className = "step-" + e.step;
    cell(tr, e.seq);
    cell(tr, e.time);
    cell(tr, e.step);
    cell(tr, e.tool);
    cell(tr, e.effect, "effect-" + e.effect);
    cell(tr, (e.reasons || []).join("; "));
    cell(tr, (e.approvals || []).join("; "));
    cell(tr, (e.taint || []).join(", "));
    cell(tr, e.outcome || "");
    cell(tr, e.correlation_id);
    tbody.appendChild(tr);
  }
  $("result").hidden = false;
  const url = new URL(window.location.href);
  url.searchParams.set("session", id);
  window.history.replaceState(null, "", url);
}

async function start() {
  const r = await fetch("/approvals/session", { credentials: "same-origin", cache: "no-store" });
  const s = await r.json().catch(() => ({}));
  if (!s.signed_in) {
    $("login-view").hidden = false;
    return;
  }
  $("whoami-sub").textContent = s.sub;
  $("whoami").hidden = false;
  $("app-view").hidden = false;
  $("session-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("session-id").value.trim();
    if (id) load(id).catch(() => showError("The session could not be read."));
  });
  const wanted = new URL(window.location.href).searchParams.get("session");
  if (wanted) {
    $("session-id").value = wanted;
    await load(wanted);
  }
}

start().catch(() => showError("The page could not start."));

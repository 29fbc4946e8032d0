// Mandate approval page. Vanilla JS, no dependencies. Everything shown is
// built with DOM APIs and textContent (never innerHTML), because request
// arguments are written by an agent and may be hostile.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const state = {
    csrf: null,
    source: null,
    offsetMs: 0, // server clock minus browser clock
    pending: new Map(), // id -> {data, node}
    seenHash: null,
    retry: null,
  };

  // ----- small DOM helpers ---------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "hidden") node.hidden = true;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  // Characters a person cannot see but an agent can hide instructions in:
  // controls, zero-width and bidi controls, tag characters, BOM.
  // Control characters and mandate_core::text::is_invisible, one list.
  const INVISIBLE =
    /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F\u00AD\u061C\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u206F\uFEFF\uFFF9-\uFFFB]|[\u{E0000}-\u{E007F}]/gu;

  // A string as text nodes, with every invisible character shown as a
  // visible ⟨U+XXXX⟩ marker.
  function visibleText(s) {
    const out = [];
    let last = 0;
    let hidden = 0;
    for (const m of s.matchAll(INVISIBLE)) {
      if (m.index > last) out.push(document.createTextNode(s.slice(last, m.index)));
      const cp = m[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
      out.push(el("span", { class: "invisible", title: "invisible character", text: `⟨U+${cp}⟩` }));
      last = m.index + m[0].length;
      hidden += 1;
    }
    if (last < s.length) out.push(document.createTextNode(s.slice(last)));
    return { nodes: out, hidden };
  }

  function valueNode(v) {
    if (typeof v === "string") {
      const { nodes, hidden } = visibleText(v);
      const pre = el("pre", { class: "value string" }, nodes);
      return hidden
        ? el("div", {}, pre, el("p", { class: "warn", text: `Contains ${hidden} invisible character(s), shown as ⟨U+…⟩.` }))
        : pre;
    }
    if (v === null || typeof v === "number" || typeof v === "boolean") {
      return el("code", { class: "value scalar", text: JSON.stringify(v) });
    }
    const { nodes } = visibleText(JSON.stringify(v, null, 2));
    return el("pre", { class: "value json" }, nodes);
  }

  function argsTable(args) {
    if (!args || typeof args !== "object" || Array.isArray(args)) {
      return valueNode(args);
    }
    const keys = Object.keys(args);
    if (keys.length === 0) return el("p", { class: "muted", text: "(no arguments)" });
    return el(
      "table",
      { class: "args" },
      el("tbody", {}, keys.map((k) => el("tr", {}, el("th", { scope: "row" }, visibleText(k).nodes), el("td", {}, valueNode(args[k]))))),
    );
  }

  function dl(rows) {
    return el(
      "dl",
      {},
      rows
        .filter(([, v]) => v !== null && v !== undefined && v !== "" && !(Array.isArray(v) && v.length === 0))
        .map(([k, v]) => [el("dt", { text: k }), el("dd", {}, v instanceof Node ? v : String(v))]),
    );
  }

  function chips(list, cls) {
    return el("span", { class: "chips" }, (list || []).map((x) => el("span", { class: `chip ${cls || ""}`, text: x })));
  }

  function when(ms) {
    if (!ms) return "";
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function left(deadline) {
    const ms = deadline - (Date.now() + state.offsetMs);
    if (ms <= 0) return { text: "deadline passed", urgent: true, over: true };
    const s = Math.floor(ms / 1000);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    const text = h > 0 ? `${h} h ${m} min left` : `${m}:${String(sec).padStart(2, "0")} left`;
    return { text, urgent: s < 60, over: false };
  }

  // ----- server calls ----------------------------------------------------------

  async function post(path, fields) {
    const body = new URLSearchParams({ csrf: state.csrf || "", ...fields });
    const r = await fetch(path, {
      method: "POST",
      body,
      credentials: "same-origin",
      cache: "no-store",
      // The page's policy is no-referrer, which would make the browser send
      // `Origin: null`; same-origin lets it send our origin for the check.
      referrerPolicy: "same-origin",
      headers: { "X-CSRF-Token": state.csrf || "", Accept: "application/json" },
    });
    let data = {};
    try {
      data = await r.json();
    } catch (_) {
      data = { error_description: `HTTP ${r.status}` };
    }
    return { ok: r.ok, status: r.status, data };
  }

  async function loadSession() {
    let s;
    try {
      const r = await fetch("/approvals/session", { credentials: "same-origin", cache: "no-store" });
      s = await r.json();
    } catch (_) {
      setTimeout(loadSession, 3000);
      return;
    }
    state.csrf = s.csrf;
    if (s.signed_in) showApp(s);
    else showLogin(s);
  }

  // ----- sign-in -----------------------------------------------------------------

  function showLogin(s) {
    stopFeed();
    show("app-view", false);
    show("whoami", false);
    show("login-view", true);
    const local = !!(s.login && s.login.local);
    const oidc = s.login && s.login.oidc;
    show("login-form", local);
    show("oidc-box", !!oidc);
    show("login-or", local && !!oidc);
    show("login-none", !local && !oidc);
    if (oidc) {
      const frag = location.hash.replace(/^#/, "");
      $("oidc-link").href = "/approvals/oidc/login" + (frag ? "?fragment=" + encodeURIComponent(frag) : "");
      let host = oidc.issuer;
      try {
        host = new URL(oidc.issuer).host;
      } catch (_) {}
      $("oidc-link").textContent = `Sign in with ${host}`;
    }
    if (local) $("login-account").focus();
  }

  async function submitLogin(ev) {
    ev.preventDefault();
    const err = $("login-error");
    err.hidden = true;
    $("login-submit").disabled = true;
    try {
      const r = await post("/approvals/login", {
        account: $("login-account").value,
        password: $("login-password").value,
      });
      $("login-password").value = "";
      if (r.ok) {
        await loadSession();
        return;
      }
      err.textContent = r.data.error_description || "Sign-in failed.";
      err.hidden = false;
      if (r.data.error === "csrf") await refreshCsrf();
    } finally {
      $("login-submit").disabled = false;
    }
  }

  async function refreshCsrf() {
    try {
      const r = await fetch("/approvals/session", { credentials: "same-origin", cache: "no-store" });
      state.csrf = (await r.json()).csrf;
    } catch (_) {}
  }

  async function logout() {
    await post("/approvals/logout", {});
    state.pending.clear();
    $("pending").replaceChildren();
    await loadSession();
  }

  // ----- the app -----------------------------------------------------------------

  function showApp(s) {
    show("login-view", false);
    show("app-view", true);
    show("whoami", true);
    $("whoami-sub").textContent = s.sub;
    $("whoami-method").textContent = s.method === "oidc" ? `(${s.iss})` : "(local account)";
    startFeed();
  }

  function setLive(text, ok) {
    const live = $("live");
    live.textContent = text;
    live.className = ok ? "live ok" : "live";
  }

  function startFeed() {
    stopFeed();
    const source = new EventSource("/approvals/events");
    state.source = source;
    source.addEventListener("open", () => setLive("live", true));
    source.addEventListener("snapshot", (e) => {
      setLive("live", true);
      render(JSON.parse(e.data));
    });
    source.addEventListener("signed_out", () => {
      stopFeed();
      loadSession();
    });
    source.addEventListener("error", () => {
      setLive("reconnecting…", false);
      if (source.readyState === EventSource.CLOSED) {
        // Refused (e.g. the session ended): find out why.
        stopFeed();
        state.retry = setTimeout(loadSession, 2000);
      }
    });
  }

  function stopFeed() {
    if (state.source) state.source.close();
    state.source = null;
    if (state.retry) clearTimeout(state.retry);
    state.retry = null;
  }

  function render(msg) {
    state.offsetMs = msg.now_ms - Date.now();
    const snap = msg.snapshot;
    const banner = $("banner");
    if (snap.unavailable) {
      banner.textContent = "The control store is unavailable: the list below may be out of date, and decisions will fail until it is back.";
      banner.hidden = false;
      return; // keep what is shown
    }
    banner.hidden = !snap.truncated;
    if (snap.truncated) banner.textContent = "More requests are pending than this page shows; use mandate approvals list for the rest.";
    renderPending(snap.pending);
    renderHistory(snap.history);
    focusTarget();
  }

  // Pending cards are kept across snapshots (a comment being typed must
  // survive an update); only new ones are added and closed ones removed.
  function renderPending(list) {
    const container = $("pending");
    const ids = new Set(list.map((a) => a.id));
    for (const [id, entry] of state.pending) {
      if (!ids.has(id)) {
        entry.node.remove();
        state.pending.delete(id);
      }
    }
    list.forEach((a, i) => {
      let entry = state.pending.get(a.id);
      if (!entry) {
        entry = { data: a, node: card(a) };
        state.pending.set(a.id, entry);
      }
      entry.data = a;
      updateWaiting(entry);
      if (container.children[i] !== entry.node) container.insertBefore(entry.node, container.children[i] || null);
    });
    $("pending-count").textContent = String(list.length);
    show("pending-empty", list.length === 0);
    tick();
  }

  function card(a) {
    const deadline = el("span", { class: "deadline" });
    const waiting = el("p", { class: "waiting" });
    const comment = el("textarea", { name: "comment", rows: 2, maxlength: 2000, placeholder: "Why (recorded with your decision)" });
    const approve = el("button", { type: "button", class: "button approve", text: "Approve" });
    const deny = el("button", { type: "button", class: "button deny", text: "Deny" });
    const error = el("p", { class: "error", role: "alert", hidden: true });
    const r = a;
    const node = el(
      "article",
      { class: "request", id: r.id },
      el(
        "header",
        {},
        el("h3", {}, el("code", { text: r.tool })),
        el("span", { class: `badge class-${r.class}`, text: r.class }),
        deadline,
      ),
      el(
        "div",
        { class: "columns" },
        el(
          "section",
          {},
          el("h4", { text: "Who" }),
          dl([
            ["User", r.sub],
            ["Agent", r.act && r.act.length ? r.act.join(" ← ") : "(none)"],
            ["Build", r.build ? el("code", { class: "hash", text: r.build }) : null],
            ["Task", r.task_id],
            ["Session", el("code", { text: r.session })],
          ]),
        ),
        el(
          "section",
          {},
          el("h4", { text: "Why a person is asked" }),
          dl([
            ["Policies", chips(r.policies)],
            ["Reasons", el("ul", { class: "reasons" }, (r.reasons || []).map((x) => el("li", {}, visibleText(x).nodes)))],
            ["Taint", r.taint && r.taint.length ? chips(r.taint, "taint") : null],
            ["Untrusted sources", r.untrusted_sources && r.untrusted_sources.length ? chips(r.untrusted_sources, "taint") : null],
          ]),
        ),
      ),
      el(
        "section",
        { class: "what" },
        el("h4", { text: r.kind === "intent" ? "What the task may do (the grants it asks for)" : "What it will do" }),
        argsTable(r.args),
        dl([[r.kind === "intent" ? "Intent hash" : "Argument hash", el("code", { class: "hash", text: r.args_hash })]]),
      ),
      el(
        "form",
        { class: "decide" },
        el("label", {}, "Comment ", comment),
        el("div", { class: "actions" }, approve, deny),
        error,
      ),
      el(
        "footer",
        {},
        waiting,
        el("p", { class: "muted" }, `Requested ${when(r.created_ms)} · id `, el("code", { text: r.id }), r.correlation_id ? " · correlation " : "", r.correlation_id ? el("code", { text: r.correlation_id }) : ""),
      ),
    );
    const decide = async (action) => {
      error.hidden = true;
      approve.disabled = deny.disabled = true;
      const res = await post(`/approvals/requests/${encodeURIComponent(r.id)}/${action}`, {
        args_hash: r.args_hash,
        comment: comment.value,
      });
      if (res.ok) {
        node.classList.add("decided");
        error.textContent = action === "approve" ? "Approved." : "Denied.";
        error.className = "done";
        error.hidden = false;
        return;
      }
      error.className = "error";
      error.textContent = res.data.error_description || `Refused (HTTP ${res.status}).`;
      error.hidden = false;
      if (res.status === 401) loadSession();
      else if (res.data.error === "csrf") await refreshCsrf();
      approve.disabled = deny.disabled = false;
    };
    approve.addEventListener("click", () => decide("approve"));
    deny.addEventListener("click", () => decide("deny"));
    node.dataset.deadline = String(r.deadline_ms);
    node._refs = { deadline, waiting, approve, deny };
    return node;
  }

  function updateWaiting(entry) {
    const w = entry.node._refs.waiting;
    if (entry.data.kind === "intent") {
      w.textContent = entry.data.waiting
        ? "The task waits for this decision before its agent gets a token."
        : "Past its deadline: the task's ungranted grants are refused.";
      return;
    }
    w.textContent = entry.data.waiting
      ? "The agent's call is waiting for this decision."
      : "No call is waiting on this server (held by another replica, or its client went away).";
  }

  function tick() {
    for (const { node } of state.pending.values()) {
      const refs = node._refs;
      const t = left(Number(node.dataset.deadline));
      refs.deadline.textContent = t.text;
      refs.deadline.className = t.urgent ? "deadline urgent" : "deadline";
      if (t.over && !node.classList.contains("decided")) refs.approve.disabled = refs.deny.disabled = true;
    }
  }

  function renderHistory(list) {
    const body = $("history");
    const rows = [];
    for (const a of list) {
      const details = el(
        "tr",
        { class: "details", hidden: true },
        el(
          "td",
          { colspan: 7 },
          dl([
            ["Id", el("code", { text: a.id })],
            ["Agent", a.act && a.act.length ? a.act.join(" ← ") : "(none)"],
            ["Task", a.task_id],
            ["Session", a.session],
            ["Reasons", el("ul", { class: "reasons" }, (a.reasons || []).map((x) => el("li", {}, visibleText(x).nodes)))],
            ["Taint", a.taint && a.taint.length ? chips(a.taint, "taint") : null],
            ["Argument hash", el("code", { class: "hash", text: a.args_hash })],
            ["Released to the upstream", a.released_ms ? when(a.released_ms) : null],
          ]),
          argsTable(a.args),
        ),
      );
      const toggle = el("button", { type: "button", class: "button quiet small", text: "Details" });
      toggle.addEventListener("click", () => {
        details.hidden = !details.hidden;
        toggle.textContent = details.hidden ? "Details" : "Hide";
      });
      const row = el(
        "tr",
        { id: a.id, class: `status-${a.status}` },
        el("td", {}, el("span", { class: `status ${a.status}`, text: a.status })),
        el("td", {}, el("code", { text: a.tool })),
        el("td", { text: a.sub }),
        el("td", { text: a.decided_by || "—" }),
        el("td", {}, a.comment ? visibleText(a.comment).nodes : "—"),
        el("td", { text: when(a.decided_ms || a.created_ms) }),
        el("td", {}, toggle),
      );
      row._details = details;
      rows.push(row, details);
    }
    body.replaceChildren(...rows);
    show("history-table", list.length > 0);
    show("history-empty", list.length === 0);
  }

  // The page URL …/approvals#<id> leads to that request.
  function focusTarget() {
    const id = decodeURIComponent(location.hash.replace(/^#/, ""));
    const missing = $("target-missing");
    if (!id) {
      missing.hidden = true;
      return;
    }
    const node = document.getElementById(id);
    document.querySelectorAll(".targeted").forEach((n) => n !== node && n.classList.remove("targeted"));
    if (!node || !(node.classList.contains("request") || node.parentElement === $("history"))) {
      missing.textContent = `Request ${id} is not among the pending or recent requests.`;
      missing.hidden = false;
      return;
    }
    missing.hidden = true;
    node.classList.add("targeted");
    if (node._details) node._details.hidden = false;
    if (state.seenHash !== location.hash) {
      state.seenHash = location.hash;
      node.scrollIntoView({ block: "start" });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", submitLogin);
    $("logout").addEventListener("click", logout);
    window.addEventListener("hashchange", () => {
      state.seenHash = null;
      focusTarget();
    });
    setInterval(tick, 1000);
    loadSession();
  });
})();

// The edge-fleet dashboard: plain JS over the REST API, refreshed every few seconds.
// The token stays in this browser (localStorage); every value is inserted as text, never as HTML.
//
// Pages are hash routes (#/, #/devices/ID, #/rollouts/ID), listed in PAGES: a new page (alerts, ...)
// is one render function, one PAGES entry and one link in index.html's <nav>.
"use strict";

const REFRESH_MS = 3000;
const HISTORY_WINDOW_S = 3600;
// the most samples a chart asks for (the API's own bound); more in the window: the newest ones
const HISTORY_LIMIT = 2000;
let token = localStorage.getItem("edgefleet-token") || "";

// ------------------------------------------------------------------------------------------ helpers

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function link(href, text) {
  const a = el("a", text);
  a.href = href;
  return a;
}

function section(title, ...children) {
  const s = el("section");
  s.append(el("h2", title), ...children);
  return s;
}

function table(id, headers, rows) {
  const t = el("table");
  if (id) t.id = id;
  const head = el("tr");
  head.append(...headers.map((h) => el("th", h)));
  const thead = el("thead");
  thead.append(head);
  const tbody = el("tbody");
  tbody.append(...rows);
  t.append(thead, tbody);
  return t;
}

function row(cells, data) {
  const tr = el("tr");
  for (const [k, v] of Object.entries(data || {})) tr.dataset[k] = v;
  tr.append(...cells.map((c) => (c instanceof Node ? wrapCell(c) : el("td", c))));
  return tr;
}

function wrapCell(node) {
  if (node.tagName === "TD") return node;
  const td = el("td");
  td.append(node);
  return td;
}

function facts(pairs) {
  const dl = el("dl", null, "facts");
  for (const [k, v] of pairs) {
    const div = el("div");
    div.dataset.fact = k;
    div.append(el("dt", k), v instanceof Node ? v : el("dd", v === null || v === undefined || v === "" ? "—" : v));
    dl.append(div);
  }
  return dl;
}

async function api(path, options = {}) {
  const res = await fetch("/api/v1" + path, {
    ...options,
    headers: { Authorization: "Bearer " + token, ...(options.headers || {}) },
  });
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error((body && body.error) || res.statusText);
  return body;
}

function ago(t) {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "—";
}

function models(list) {
  return (list || []).map((m) => `${m.name} ${m.active_version || m.version || "?"}${m.state ? " (" + m.state + ")" : ""}`).join(", ") || "—";
}

function labelText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(" ") || "—";
}

// A rollout's selector, strategy or gates as `key value` pairs, the unset ones left out.
function settings(obj) {
  return Object.entries(obj || {}).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k.replaceAll("_", " ")} ${typeof v === "object" ? labelText(v) : v}`).join(", ") || "—";
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

// Rollouts completed before the fleet wrote reasons in words say `done: {'succeeded': 1}`.
function reasonText(reason) {
  if (!reason) return "";
  const m = /^done: \{(.*)\}$/.exec(reason);
  if (!m) return reason;
  const parts = [...m[1].matchAll(/'(\w+)': (\d+)/g)].map(([, k, n]) => `${n} ${k.replace("_", " ")}`);
  return "done: " + (parts.join(", ") || "no devices matched");
}

function setStatus(text, error) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.style.color = error ? "#ffb4a9" : "#c4eed0";
}

// -------------------------------------------------------------------------------------- overview

function deviceRow(d) {
  return row([
    link(`#/devices/${encodeURIComponent(d.id)}`, d.id),
    el("td", d.online ? "online" : "offline", d.online ? "online" : "offline"),
    d.profile || "—",
    labelText(d.labels),
    `r${d.desired_revision}: ${models(d.desired_models)}`,
    `r${d.reported_revision}: ${models(d.reported_models)}`,
    d.last_error || "",
    ago(d.last_seen),
  ], { device: d.id });
}

function progressText(counts) {
  return Object.entries(counts || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
}

function bundleName(b, fallback) {
  return b ? `${b.name} ${b.version} (${b.profile})` : fallback;
}

function rolloutRow(r, bundles) {
  return row([
    link(`#/rollouts/${encodeURIComponent(r.id)}`, r.id),
    bundleName(bundles[r.bundle_id], r.bundle_id),
    el("td", r.state, "state-" + r.state),
    progressText(r.counts),
    reasonText(r.reason),
    actionButtons(r),
  ], { rollout: r.id });
}

function beforeAfter(m, fmt) {
  return m ? `${fmt(m.source)} → ${fmt(m.converted)}` : "—";
}

function fidelityText(f) {
  if (!f) return "—";
  const parts = [];
  if (f.argmax_agreement !== null && f.argmax_agreement !== undefined) parts.push(`argmax agreement ${(100 * f.argmax_agreement).toFixed(1)}%`);
  if (f.cosine !== null && f.cosine !== undefined) parts.push(`cosine ${f.cosine.toFixed(4)}`);
  if (f.max_abs_error !== null && f.max_abs_error !== undefined) parts.push(`max abs error ${fmtNumber(f.max_abs_error)}`);
  return parts.join(", ") || "—";
}

function bundleRow(b) {
  const m = b.metrics || {};
  const acc = m.accuracy;
  return row([
    b.id, b.name, b.version, b.profile, bytes(b.size),
    beforeAfter(m.size_bytes, bytes),
    beforeAfter(m.latency_ms, (v) => `${fmtNumber(v)} ms`),
    fidelityText(m.fidelity),
    acc ? `${acc.metric} ${fmtNumber(acc.source)} → ${fmtNumber(acc.converted)}` : "—",
    b.signer,
  ], { bundle: b.id });
}

function summary(devices, rollouts) {
  const online = devices.filter((d) => d.online).length;
  const failing = devices.filter((d) => d.last_error).length;
  const running = rollouts.filter((r) => r.state === "running").length;
  const items = [["devices", devices.length], ["online", online], ["with errors", failing], ["rollouts running", running]];
  const dl = el("dl", null, "summary");
  dl.id = "summary";
  dl.append(...items.map(([k, v]) => {
    const div = el("div");
    div.append(el("dt", k), el("dd", v));
    div.dataset.metric = k;
    return div;
  }));
  return dl;
}

async function overviewPage() {
  const [devices, rollouts, bundles] = await Promise.all([api("/devices"), api("/rollouts"), api("/bundles")]);
  const byId = Object.fromEntries(bundles.map((b) => [b.id, b]));
  return [
    section("Health", summary(devices, rollouts)),
    section("Devices", table("devices",
      ["Device", "Online", "Profile", "Labels", "Desired", "Reported", "Last error", "Last seen"], devices.map(deviceRow))),
    section("Rollouts", table("rollouts",
      ["Rollout", "Bundle", "State", "Progress", "Reason", "Actions"], rollouts.map((r) => rolloutRow(r, byId)))),
    section("Bundles", table("bundles",
      ["Bundle", "Name", "Version", "Profile", "File", "Model size", "Latency (host)", "Fidelity", "Accuracy", "Signer"],
      bundles.map(bundleRow))),
  ];
}

// ---------------------------------------------------------------------------------------- device

function perSecond(points) {
  return points.map((p) => ({ ...p, requests_per_s: p.requests / p.interval_s, errors_per_s: p.errors / p.interval_s }));
}

async function devicePage(id) {
  const q = encodeURIComponent(id);
  const [d, health, history] = await Promise.all([
    api(`/devices/${q}`),
    api(`/devices/${q}/health`),
    api(`/devices/${q}/telemetry?window_s=${HISTORY_WINDOW_S}&limit=${HISTORY_LIMIT}`),
  ]);
  const points = perSecond(history);
  const charts = el("div", null, "charts");
  charts.id = "charts";
  charts.append(
    lineChart("CPU", points, [{ key: "cpu_percent", label: "cpu" }], "%"),
    lineChart("Memory", points, [{ key: "memory_percent", label: "memory" }], "%"),
    lineChart("Temperature", points, [{ key: "temperature_c", label: "temperature" }], "°C"),
    lineChart("Requests", points, [{ key: "requests_per_s", label: "requests" }, { key: "errors_per_s", label: "errors" }], "per s"),
    lineChart("Latency", points, [{ key: "latency_ms_p50", label: "p50" }, { key: "latency_ms_p99", label: "p99" }], "ms"),
    lineChart("Drift", points, [{ key: "drift", label: "PSI" }], "worst tensor"),
  );
  const events = (health.recent_events || []).map((e) => row([
    when(e.time), e.kind, el("td", e.ok ? "ok" : "failed", e.ok ? "online" : "offline"),
    [e.model, e.version].filter(Boolean).join(" ") || "—", e.revision ?? "—", e.reason || "",
  ]));
  const title = el("h2", `Device ${d.id}`);
  title.id = "page-title";
  return [
    title,
    facts([
      ["state", el("dd", d.online ? "online" : "offline", d.online ? "online" : "offline")],
      ["last seen", ago(d.last_seen)],
      ["profile", d.profile],
      ["labels", labelText(d.labels)],
      ["agent version", d.agent_version],
      ["desired", `r${d.desired_revision}: ${models(d.desired_models)}`],
      ["reported", `r${d.reported_revision}: ${models(d.reported_models)}`],
      ["last error", d.last_error],
      ["errors (5 min)", health.error_rate === null ? `${health.errors} of ${health.requests} requests` : `${health.errors} of ${health.requests} requests (${(100 * health.error_rate).toFixed(1)}%)`],
    ]),
    section(history.length >= HISTORY_LIMIT
      ? `Telemetry, the latest ${history.length} samples`
      : `Telemetry, last ${HISTORY_WINDOW_S / 60} min (${history.length} samples)`, charts),
    section("Events", table("events", ["Time", "Kind", "Result", "Model", "Revision", "Reason"], events)),
  ];
}

// --------------------------------------------------------------------------------------- rollout

// Only what the rollout's state allows (the API says which: `actions`).
function actionButtons(r) {
  const td = el("td", null, "actions");
  for (const action of r.actions || []) {
    const button = el("button", action);
    button.dataset.action = action;
    button.onclick = async () => {
      if (action === "rollback" && !confirm(`Roll back rollout ${r.id} on every device it touched?`)) return;
      try { await api(`/rollouts/${encodeURIComponent(r.id)}/${action}`, { method: "POST" }); await refresh(); }
      catch (e) { setStatus(e.message, true); }
    };
    td.append(button);
  }
  return td;
}

function waveSection(wave, devices) {
  const done = devices.filter((d) => d.state === "succeeded").length;
  const bar = el("progress");
  bar.max = devices.length;
  bar.value = done;
  const counts = {};
  for (const d of devices) counts[d.state] = (counts[d.state] || 0) + 1;
  const head = el("p", `${done} of ${devices.length} succeeded — ${progressText(counts)}`);
  head.prepend(bar, " ");
  const rows = devices.map((d) => row([
    link(`#/devices/${encodeURIComponent(d.device_id)}`, d.device_id),
    el("td", d.state, "state-" + d.state),
    d.revision ?? "—", when(d.started_at), when(d.active_at), d.error || "",
  ], { device: d.device_id }));
  const s = section(wave === 0 ? "Wave 0 (canary)" : `Wave ${wave}`, head,
    table(null, ["Device", "State", "Revision", "Started", "Active", "Error"], rows));
  s.dataset.wave = wave;
  return s;
}

async function rolloutPage(id) {
  const r = await api(`/rollouts/${encodeURIComponent(id)}`);
  const bundle = await api(`/bundles/${encodeURIComponent(r.bundle_id)}`).catch(() => null);
  const waves = new Map();
  for (const d of r.devices) {
    if (!waves.has(d.wave)) waves.set(d.wave, []);
    waves.get(d.wave).push(d);
  }
  const title = el("h2", `Rollout ${r.id}`);
  title.id = "page-title";
  const actions = actionButtons(r);
  actions.id = "rollout-actions";
  return [
    title,
    facts([
      ["state", el("dd", r.state, "state-" + r.state)],
      ["reason", reasonText(r.reason)],
      ["bundle", bundleName(bundle, r.bundle_id)],
      ["selector", settings(r.selector)],
      ["strategy", settings(r.strategy)],
      ["gates", settings(r.gates)],
      ["progress", progressText(r.counts)],
      ["created", when(r.created_at)],
      ["updated", when(r.updated_at)],
      ["actions", actions],
    ]),
    ...[...waves.keys()].sort((a, b) => a - b).map((w) => waveSection(w, waves.get(w))),
  ];
}

// ---------------------------------------------------------------------------------------- router

const PAGES = [
  { name: "device", match: /^#\/devices\/([^/]+)$/, render: devicePage },
  { name: "rollout", match: /^#\/rollouts\/([^/]+)$/, render: rolloutPage },
  { name: "overview", match: /^(#\/?)?$/, render: overviewPage },
];

async function refresh() {
  if (!token) { setStatus("enter an API token"); return; }
  const hash = location.hash;
  const page = PAGES.find((p) => p.match.test(hash)) || PAGES[PAGES.length - 1];
  const args = (page.match.exec(hash) || []).slice(1).map(decodeURIComponent);
  try {
    const content = await page.render(...args);
    if (location.hash !== hash) return; // the user moved on while this page loaded
    const view = document.getElementById("view");
    view.dataset.page = page.name;
    view.replaceChildren(...content);
    setStatus("updated " + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus(e.message, true);
  }
}

// `make demo` prints a link with the token in the fragment (never sent to the server): keep it, drop it from the URL.
const fromLink = /^#token=(.+)$/.exec(location.hash);
if (fromLink) {
  token = decodeURIComponent(fromLink[1]);
  localStorage.setItem("edgefleet-token", token);
  history.replaceState(null, "", location.pathname + "#/");
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value.trim();
  localStorage.setItem("edgefleet-token", token);
  refresh();
});
window.addEventListener("hashchange", refresh);

refresh();
setInterval(refresh, REFRESH_MS);

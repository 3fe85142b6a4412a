// The edge-fleet dashboard: plain JS over the REST API, refreshed every few seconds.
// The token stays in this browser (localStorage); every value is inserted as text, never as HTML.
"use strict";

const REFRESH_MS = 3000;
let token = localStorage.getItem("edgefleet-token") || "";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
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

function models(list) {
  return (list || []).map((m) => `${m.name} ${m.active_version || m.version || "?"}${m.state ? " (" + m.state + ")" : ""}`).join(", ") || "—";
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
}

function deviceRow(d) {
  const tr = el("tr");
  tr.dataset.device = d.id;
  tr.append(
    el("td", d.id),
    el("td", d.online ? "online" : "offline", d.online ? "online" : "offline"),
    el("td", d.profile || "—"),
    el("td", Object.entries(d.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ") || "—"),
    el("td", `r${d.desired_revision}: ${models(d.desired_models)}`),
    el("td", `r${d.reported_revision}: ${models(d.reported_models)}`),
    el("td", d.last_error || ""),
    el("td", ago(d.last_seen)),
  );
  return tr;
}

function rolloutRow(r, bundles) {
  const tr = el("tr");
  tr.dataset.rollout = r.id;
  const b = bundles[r.bundle_id];
  const actions = el("td");
  for (const action of ["pause", "resume", "rollback"]) {
    const button = el("button", action);
    button.onclick = async () => {
      try { await api(`/rollouts/${r.id}/${action}`, { method: "POST" }); refresh(); }
      catch (e) { setStatus(e.message, true); }
    };
    actions.append(button);
  }
  const progress = Object.entries(r.counts || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
  tr.append(
    el("td", r.id),
    el("td", b ? `${b.name} ${b.version} (${b.profile})` : r.bundle_id),
    el("td", r.state, "state-" + r.state),
    el("td", progress),
    el("td", r.reason || ""),
    actions,
  );
  return tr;
}

function bundleRow(b) {
  const tr = el("tr");
  tr.append(el("td", b.id), el("td", b.name), el("td", b.version), el("td", b.profile),
            el("td", `${(b.size / 1024).toFixed(1)} KiB`), el("td", b.signer));
  return tr;
}

function summary(devices, rollouts) {
  const online = devices.filter((d) => d.online).length;
  const failing = devices.filter((d) => d.last_error).length;
  const running = rollouts.filter((r) => r.state === "running").length;
  const items = [["devices", devices.length], ["online", online], ["with errors", failing], ["rollouts running", running]];
  document.getElementById("summary").replaceChildren(...items.map(([k, v]) => {
    const div = el("div");
    div.append(el("dt", k), el("dd", v));
    div.dataset.metric = k;
    return div;
  }));
}

function setStatus(text, error) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.style.color = error ? "#ffb4a9" : "#c4eed0";
}

async function refresh() {
  if (!token) { setStatus("enter an API token"); return; }
  try {
    const [devices, rollouts, bundles] = await Promise.all([api("/devices"), api("/rollouts"), api("/bundles")]);
    const byId = Object.fromEntries(bundles.map((b) => [b.id, b]));
    summary(devices, rollouts);
    fill("devices", devices.map(deviceRow));
    fill("rollouts", rollouts.map((r) => rolloutRow(r, byId)));
    fill("bundles", bundles.map(bundleRow));
    setStatus("updated " + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus(e.message, true);
  }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value.trim();
  localStorage.setItem("edgefleet-token", token);
  refresh();
});

refresh();
setInterval(refresh, REFRESH_MS);

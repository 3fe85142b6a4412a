// The dashboard's alerts section (issue 9): open monitoring alerts (drift, accuracy, bias,
// latency) from GET /api/v1/alerts?state=open, refreshed every few seconds. Self-contained: it
// builds its own section and reads the token the page stored; values go in as text, never as HTML.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const COLUMNS = ["Rule", "State", "Device", "Model", "Version", "Value", "Threshold", "Since", "Detail"];

  function cell(tag, text) {
    const node = document.createElement(tag);
    node.textContent = text === undefined || text === null ? "" : String(text);
    return node;
  }

  function since(t) {
    const s = Math.max(0, Date.now() / 1000 - t);
    return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
  }

  const section = document.createElement("section");
  section.id = "alerts-section";
  section.append(cell("h2", "Alerts"));
  const table = document.createElement("table");
  table.id = "alerts";
  const head = document.createElement("tr");
  head.append(...COLUMNS.map((c) => cell("th", c)));
  table.createTHead().append(head);
  const body = table.createTBody();
  const note = cell("p", "");
  section.append(table, note);
  // beside the page view, not in it: app.js replaces the view's children on every refresh
  const view = document.querySelector("main");
  if (view) view.before(section);
  else document.body.prepend(section);

  async function refresh() {
    const token = localStorage.getItem("edgefleet-token") || "";
    if (!token) return;
    try {
      const res = await fetch("/api/v1/alerts?state=open&limit=200", { headers: { Authorization: "Bearer " + token } });
      if (!res.ok) throw new Error(res.statusText);
      const alerts = await res.json();
      body.replaceChildren(
        ...alerts.map((a) => {
          const row = document.createElement("tr");
          row.className = "alert-" + a.state;
          row.append(
            ...[a.rule, a.state, a.device_id, a.model, a.version, a.value.toPrecision(3), a.threshold.toPrecision(3), since(a.since), a.detail].map(
              (v) => cell("td", v),
            ),
          );
          return row;
        }),
      );
      note.textContent = alerts.length ? "" : "no open alerts";
    } catch (e) {
      note.textContent = "alerts: " + e.message;
    }
  }

  // a token entered in the page's form shows its alerts at once, not at the next refresh
  document.getElementById("login")?.addEventListener("submit", () => setTimeout(refresh, 0));
  refresh();
  setInterval(refresh, REFRESH_MS);
})();

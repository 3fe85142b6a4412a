// Small time-series charts drawn as inline SVG: no library, no CDN, no build step.
// lineChart(title, points, series, unit) -> an <figure>; points are objects with a `time` (unix s),
// each series names the field it plots. A null value breaks the line instead of drawing it as 0.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_W = 340, CHART_H = 130, PAD_L = 44, PAD_R = 8, PAD_T = 8, PAD_B = 20;

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function fmtNumber(v) {
  if (v === null || v === undefined || !isFinite(v)) return "—";
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
}

function fmtClock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function lineChart(title, points, series, unit) {
  const fig = document.createElement("figure");
  fig.className = "chart";
  fig.dataset.chart = title;
  const caption = document.createElement("figcaption");
  const values = points.flatMap((p) => series.map((s) => p[s.key])).filter((v) => v !== null && v !== undefined && isFinite(v));
  const last = series.map((s) => {
    const latest = [...points].reverse().find((p) => p[s.key] !== null && p[s.key] !== undefined);
    return `${s.label} ${latest ? fmtNumber(latest[s.key]) : "—"}`;
  });
  caption.textContent = `${title}${unit ? " (" + unit + ")" : ""}: ${last.join(", ")}`;
  fig.append(caption);
  const root = svg("svg", { viewBox: `0 0 ${CHART_W} ${CHART_H}`, width: CHART_W, height: CHART_H, role: "img" });
  root.append(svg("rect", { x: PAD_L, y: PAD_T, width: CHART_W - PAD_L - PAD_R, height: CHART_H - PAD_T - PAD_B, class: "plot" }));
  if (!values.length || points.length < 1) {
    const t = svg("text", { x: CHART_W / 2, y: CHART_H / 2, "text-anchor": "middle", class: "empty" });
    t.textContent = "no data yet";
    root.append(t);
    fig.append(root);
    return fig;
  }
  const t0 = points[0].time, t1 = Math.max(points[points.length - 1].time, t0 + 1);
  let lo = Math.min(0, ...values), hi = Math.max(...values);
  if (hi <= lo) hi = lo + 1;
  const x = (t) => PAD_L + ((t - t0) / (t1 - t0)) * (CHART_W - PAD_L - PAD_R);
  const y = (v) => CHART_H - PAD_B - ((v - lo) / (hi - lo)) * (CHART_H - PAD_T - PAD_B);
  for (const [v, cls] of [[hi, "tick"], [lo, "tick"]]) {
    const label = svg("text", { x: PAD_L - 4, y: y(v) + 4, "text-anchor": "end", class: cls });
    label.textContent = fmtNumber(v);
    root.append(label);
  }
  for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
    const label = svg("text", { x: x(t), y: CHART_H - 5, "text-anchor": anchor, class: "tick" });
    label.textContent = fmtClock(t);
    root.append(label);
  }
  series.forEach((s, i) => {
    let d = "", pen = "M";
    for (const p of points) {
      const v = p[s.key];
      if (v === null || v === undefined || !isFinite(v)) { pen = "M"; continue; }
      d += `${pen}${x(p.time).toFixed(1)},${y(v).toFixed(1)} `;
      pen = "L";
    }
    if (d) root.append(svg("path", { d, class: `line series-${i}`, "data-series": s.key }));
  });
  fig.append(root);
  if (series.length > 1) {
    const legend = document.createElement("div");
    legend.className = "legend";
    series.forEach((s, i) => {
      const item = document.createElement("span");
      item.className = `series-${i}`;
      item.textContent = s.label;
      legend.append(item);
    });
    fig.append(legend);
  }
  return fig;
}

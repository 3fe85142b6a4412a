"""``report.html``: what the converter did and measured, for a human, in one self-contained file.

Tables of size, latency and fidelity before and after, every quantization candidate with its
verdict, the per-node sensitivity chart and every decision. Charts are inline SVG bars, so the
report needs no plotting library and opens offline.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from converter.context import Findings
from sdk.manifest import Manifest

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}
th{background:#f3f3f3}.ok{color:#176117}.bad{color:#a11}svg text{font-size:12px;font-family:system-ui,sans-serif}
code{background:#f6f6f6;padding:1px 4px}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart(title: str, items: Sequence[tuple[str, float]], unit: str, width: int = 640) -> str:
    """Horizontal bars, one per item, scaled to the largest value."""
    if not items:
        return ""
    label_w, bar_h, gap = 260, 18, 6
    top = max(v for _, v in items) or 1.0
    height = len(items) * (bar_h + gap) + 30
    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
        f'<text x="0" y="14" font-weight="bold">{_e(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        y = 24 + i * (bar_h + gap)
        w = max(1.0, (width - label_w - 90) * value / top)
        parts.append(f'<text x="0" y="{y + 13}">{_e(label[:40])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4a7bb7"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{value:.4g} {_e(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(manifest: Manifest, findings: Findings) -> str:
    m = manifest.metrics
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>edge-convert report: {_e(manifest.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(manifest.name)} {_e(manifest.version)} for {_e(manifest.profile)}</h1>",
        f"<p>precision <b>{_e(manifest.precision)}</b>, runtime {_e(manifest.runtime)}, source "
        f"{_e(manifest.source.format)} <code>{_e(manifest.source.sha256[:16])}</code>, created {_e(manifest.created)}</p>",
        f"<p>calibration data: {_e(findings.calibration_origin)}<br>evaluation data: {_e(findings.eval_origin)}</p>",
        "<h2>Before and after</h2>",
    ]
    rows: list[list[object]] = []
    if m.size_bytes:
        rows.append(
            [
                "size (bytes)",
                m.size_bytes.source,
                m.size_bytes.converted,
                f"{m.size_bytes.converted / max(m.size_bytes.source, 1):.3f}x",
            ]
        )
    if m.latency_ms:
        rows.append(
            [
                f"latency (ms, {m.latency_ms.statistic}, host-measured, {m.latency_ms.threads} threads)",
                m.latency_ms.source,
                m.latency_ms.converted,
                f"{m.latency_ms.converted / max(m.latency_ms.source, 1e-9):.3f}x",
            ]
        )
    if m.accuracy:
        rows.append(
            [
                f"accuracy ({m.accuracy.metric})",
                f"{m.accuracy.source:.4f}",
                f"{m.accuracy.converted:.4f}",
                f"{m.accuracy.converted - m.accuracy.source:+.4f}",
            ]
        )
    out.append(_table(["metric", "source", "converted", "ratio / change"], rows))
    if m.latency_ms and m.latency_ms.host:
        out.append(f"<p>host: {_e(m.latency_ms.host)}</p>")
    if m.fidelity:
        out.append("<h3>Fidelity of converted vs source</h3>")
        out.append(
            _table(
                list(m.fidelity.model_dump(exclude_none=True)),
                [list(m.fidelity.model_dump(exclude_none=True).values())],
            )
        )
    if m.size_bytes and m.latency_ms:
        out.append(
            bar_chart(
                "Size",
                [("source", m.size_bytes.source / 1e6), ("converted", m.size_bytes.converted / 1e6)],
                "MB",
            )
        )
        out.append(
            bar_chart(
                "Latency", [("source", m.latency_ms.source), ("converted", m.latency_ms.converted)], "ms"
            )
        )
    if manifest.litert is not None:
        out.append(_edgetpu_section(manifest))
    if findings.speedup_curve:
        out.append("<h2>--speedup: latency against fidelity, step by step</h2>")
        keys = list(findings.speedup_curve[0])
        out.append(_table(keys, [[_fmt(row.get(k)) for k in keys] for row in findings.speedup_curve]))
    if findings.candidates:
        out.append("<h2>Candidates</h2>")
        crow = []
        for c in findings.candidates:
            fid = c.get("fidelity") or {}
            crow.append(
                [
                    c.get("step", ""),
                    c["name"],
                    c["description"],
                    c["size_bytes"],
                    _fmt(c.get("latency_ms")),
                    _fmt(c.get("latency_ratio")),
                    _fmt(fid.get("argmax_agreement")),
                    _fmt(fid.get("cosine")),
                    _fmt(fid.get("max_abs_error")),
                    c["verdict"],
                    c.get("reason", ""),
                ]
            )
        out.append(
            _table(
                [
                    "step",
                    "candidate",
                    "what",
                    "bytes",
                    "latency ms",
                    "vs source",
                    "argmax",
                    "cosine",
                    "max abs err",
                    "verdict",
                    "why",
                ],
                crow,
            )
        )
        timed = [(c["name"], float(c["latency_ms"])) for c in findings.candidates if c.get("latency_ms")]
        out.append(bar_chart("Candidate latency (host)", timed, "ms"))
        out.append(
            bar_chart(
                "Candidate size", [(c["name"], c["size_bytes"] / 1e6) for c in findings.candidates], "MB"
            )
        )
    if findings.sensitivity:
        ranked = sorted(findings.sensitivity.items(), key=lambda kv: -kv[1])[:40]
        out.append("<h2>Per-node sensitivity</h2>")
        out.append(
            f"<p>{_e(findings.sensitivity_metric)}; worst {len(ranked)} of {len(findings.sensitivity)} nodes.</p>"
        )
        out.append(bar_chart("Fidelity loss when quantized alone", ranked, ""))
    out.append("<h2>Decisions</h2>")
    out.append(
        _table(
            ["step", "choice", "reason", "measured"],
            [
                [d.step, d.choice, d.reason, json.dumps(d.measured, default=str)[:400]]
                for d in manifest.decisions
            ],
        )
    )
    out.append("<h2>Runtime options the agent applies</h2>")
    out.append(f"<pre>{_e(manifest.runtime_options.model_dump_json(indent=1))}</pre></body></html>")
    return "\n".join(out)


def _edgetpu_section(manifest: Manifest) -> str:
    """Per op type, what the Edge TPU compiler would leave on the CPU (predicted: it is not run here)."""
    info = manifest.litert
    assert info is not None
    head = (
        f"<h2>Edge TPU</h2><p>{'fully integer' if info.fully_integer else '<b>not fully integer</b>'};"
        " <code>edgetpu_compiler</code> was not run (it is not installable on this host): a real pipeline"
        " compiles this model.tflite with <code>edgetpu_compiler -s</code> before bundling.</p>"
    )
    if not info.edgetpu_unsupported_ops:
        return head + "<p>Every op is one the Edge TPU runs.</p>"
    rows = [[op, v.get("count"), v.get("reason")] for op, v in info.edgetpu_unsupported_ops.items()]
    return head + _table(["op the Edge TPU cannot run", "count", "why"], rows)


def _fmt(x: object) -> str:
    return "" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def write(path: Path, manifest: Manifest, findings: Findings) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(manifest, findings), encoding="utf-8")
    return path

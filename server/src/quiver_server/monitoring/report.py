"""`quiver monitor report`: one self-contained HTML page of a monitor run.

Per feature, worst first: its status and scores against their thresholds, the
reference and current distributions overlaid (bins of numbers, categories of
strings and booleans) and the trend of its drift over the windows seen. The
charts are inline SVG drawn here; a little inline script adds a filter box and
a "drifted only" toggle. No external resource of any kind is loaded, so the
page works offline and from a CI artifact store.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import UTC, datetime

from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.monitoring.drift import distributions
from quiver_server.monitoring.monitor import FeatureReport, MonitorResult, TrendPoint

__all__ = ["render_report"]

_STATUS = {
    pb.DRIFT_STATUS_OK: ("ok", "OK"),
    pb.DRIFT_STATUS_DRIFT: ("drift", "DRIFT"),
    pb.DRIFT_STATUS_NO_REFERENCE: ("no-reference", "NO REFERENCE"),
    pb.DRIFT_STATUS_NO_CURRENT: ("no-current", "NO CURRENT DATA"),
}
_REFERENCE_COLOR = "#4c78a8"
_CURRENT_COLOR = "#f58518"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d232b;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:20px}
header p{margin:2px 0;color:#c9d1d9}
main{padding:18px 28px}
.controls{margin:0 0 14px;display:flex;gap:16px;align-items:center}
.controls input[type=search]{padding:6px 10px;width:280px;border:1px solid #c7ccd4;border-radius:6px}
.summary{display:flex;gap:12px;margin:0 0 16px;flex-wrap:wrap}
.summary div{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px 14px}
.summary b{font-size:18px;display:block}
section.feature{background:#fff;border:1px solid #dde1e6;border-left:6px solid #9aa5b1;border-radius:8px;margin:0 0 14px;padding:12px 16px}
section.feature.drift{border-left-color:#d62728}
section.feature.ok{border-left-color:#2ca02c}
section.feature h2{margin:0;font-size:16px}
.badge{display:inline-block;font-size:11px;font-weight:600;padding:2px 8px;border-radius:10px;margin-left:8px;vertical-align:middle;background:#e4e7eb}
.badge.drift{background:#fde2e1;color:#a4161a}.badge.ok{background:#e3f5e1;color:#1e6b1e}
table.scores{border-collapse:collapse;margin:8px 0}
table.scores td,table.scores th{padding:3px 12px 3px 0;text-align:left;font-variant-numeric:tabular-nums}
td.over{color:#a4161a;font-weight:600}
.charts{display:flex;gap:24px;flex-wrap:wrap}
.charts figure{margin:0}
.charts figcaption{font-size:12px;color:#57606a}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
.skipped{background:#fff4e5;border:1px solid #f0c36d;border-radius:8px;padding:8px 14px;margin:0 0 16px}
.hidden{display:none}
"""

_SCRIPT = """
(function(){
  var sections=[].slice.call(document.querySelectorAll('section.feature'));
  var search=document.getElementById('filter');
  var onlyDrift=document.getElementById('only-drift');
  function apply(){
    var text=search.value.toLowerCase(), shown=0;
    sections.forEach(function(s){
      var match=s.dataset.name.toLowerCase().indexOf(text)>=0 &&
        (!onlyDrift.checked || s.dataset.status==='drift');
      s.classList.toggle('hidden',!match); if(match){shown++;}
    });
    document.getElementById('shown').textContent=shown+' of '+sections.length+' features shown';
  }
  search.addEventListener('input',apply); onlyDrift.addEventListener('change',apply);
  apply();
  document.body.dataset.ready='true';
})();
"""


def render_report(result: MonitorResult, project: str = "") -> str:
    """The HTML page for `result`."""
    run = result.run
    features = result.features
    drifted = sum(1 for f in features if f.drift.status == pb.DRIFT_STATUS_DRIFT)
    no_reference = sum(1 for f in features if f.drift.status == pb.DRIFT_STATUS_NO_REFERENCE)
    ran_at = run.ran_at.ToDatetime(tzinfo=UTC)
    start = run.current_start.ToDatetime(tzinfo=UTC)
    end = run.current_end.ToDatetime(tzinfo=UTC)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Quiver feature drift {_e(project)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<header>",
        f"<h1>Feature drift{': ' + _e(project) if project else ''}</h1>",
        f"<p>Current: <b>{_e(run.current)}</b>, {_time(start)} to {_time(end)}. "
        f"Reference: <b>{_e(run.reference)}</b>.</p>",
        f"<p>Computed {_time(ran_at)}.</p>",
        "</header><main>",
        '<div class="summary">',
        f'<div id="count-features"><b>{len(features)}</b>features</div>',
        f'<div id="count-drifted"><b>{drifted}</b>drifted</div>',
        f'<div id="count-no-reference"><b>{no_reference}</b>without reference</div>',
        f'<div id="count-views"><b>{len(run.views)}</b>feature views</div>',
        "</div>",
    ]
    if run.skipped_files:
        items = "".join(
            f"<li><code>{_e(path)}</code>: {_e(why)}</li>" for path, why in sorted(run.skipped_files.items())
        )
        parts.append(f'<div class="skipped" id="skipped"><b>Profile files skipped '
                     f"(unreadable):</b><ul>{items}</ul></div>")
    parts.append(
        '<div class="controls"><input type="search" id="filter" placeholder="Filter features">'
        '<label><input type="checkbox" id="only-drift"> drifted only</label>'
        '<span id="shown"></span>'
        f'<span class="legend"><span style="background:{_REFERENCE_COLOR}"></span>reference'
        f'<span style="background:{_CURRENT_COLOR}"></span>current</span></div>'
    )
    for rank, feature in enumerate(features, 1):
        parts.append(_section(rank, feature))
    data = {"features": len(features), "drifted": drifted}
    parts.append(f'<script type="application/json" id="report-data">{_e(json.dumps(data))}</script>')
    parts.append(f"<script>{_SCRIPT}</script></main></body></html>")
    return "\n".join(parts)


def _section(rank: int, feature: FeatureReport) -> str:
    d = feature.drift
    css, label = _STATUS.get(d.status, ("unknown", "UNKNOWN"))
    name = f"{d.feature_view}:{d.feature}"
    change = abs(d.current_null_rate - d.reference_null_rate)
    rows = [
        ("PSI", d.psi, d.psi_threshold, "psi" in d.violations),
        ("Jensen-Shannon", d.jensen_shannon, d.jensen_shannon_threshold,
         "jensen_shannon" in d.violations),
        ("Null-rate change", change, d.null_rate_threshold, "null_rate" in d.violations),
    ]
    scores = "".join(
        f'<tr><th>{title}</th><td class="{"over" if over else ""}" data-metric="{title}">'
        f"{value:.4f}</td><td>threshold {limit:g}</td></tr>"
        for title, value, limit, over in rows
    )
    counts = (
        f"<tr><th>Values</th><td>{d.current_count:,} current</td><td>{d.reference_count:,} reference</td></tr>"
        f"<tr><th>Null rate</th><td>{d.current_null_rate:.2%} current</td>"
        f"<td>{d.reference_null_rate:.2%} reference</td></tr>"
    )
    charts = [_distribution_chart(feature), _trend_chart(feature.trend, d.psi_threshold)]
    return (
        f'<section class="feature {css}" id="f-{rank}" data-name="{_e(name)}" data-status="{css}" '
        f'data-psi="{d.psi:.6f}" data-js="{d.jensen_shannon:.6f}">'
        f'<h2>{rank}. {_e(name)} <span class="badge {css}">{label}</span>'
        f'<span class="badge">{_e(feature.dtype.name.lower())}</span></h2>'
        f'<table class="scores">{scores}{counts}</table>'
        f'<div class="charts">{"".join(c for c in charts if c)}</div></section>'
    )


def _distribution_chart(feature: FeatureReport) -> str:
    if feature.reference is None or feature.current is None:
        return '<p class="note">No distribution to compare: one side has no values.</p>'
    binned = distributions(feature.reference, feature.current)
    if binned is None:
        return '<p class="note">No distribution to compare: one side has no non-null values.</p>'
    width, height, pad_left, pad_bottom = 520, 220, 36, 72
    n = len(binned.labels)
    top = max([*binned.reference, *binned.current, 1e-9])
    slot = (width - pad_left - 8) / n
    bar = max(2.0, slot * 0.38)
    plot_h = height - pad_bottom - 10
    shapes = []
    for i, (label, ref, cur) in enumerate(zip(binned.labels, binned.reference, binned.current, strict=True)):
        x = pad_left + i * slot + slot * 0.1
        for offset, share, color, side in ((0.0, ref, _REFERENCE_COLOR, "reference"),
                                           (bar, cur, _CURRENT_COLOR, "current")):
            h = plot_h * share / top
            shapes.append(
                f'<rect class="bar {side}" x="{x + offset:.1f}" y="{10 + plot_h - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{_e(label)}: {side} {share:.1%}</title></rect>"
            )
        lx, ly = x + bar, height - pad_bottom + 12
        shapes.append(
            f'<text x="{lx:.1f}" y="{ly}" font-size="10" text-anchor="end" '
            f'transform="rotate(-35 {lx:.1f} {ly})">{_e(_clip(label))}</text>'
        )
    axis = (
        f'<line x1="{pad_left}" y1="{10 + plot_h}" x2="{width - 4}" y2="{10 + plot_h}" stroke="#888"/>'
        f'<text x="4" y="16" font-size="10">{top:.0%}</text>'
    )
    return (
        f'<figure><svg class="distribution" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f'{axis}{"".join(shapes)}</svg><figcaption>Share of values per '
        f'{"bin (reference quantiles)" if binned.edges else "category"}: reference vs current'
        f"</figcaption></figure>"
    )


def _trend_chart(points: Sequence[TrendPoint], threshold: float) -> str:
    if not points:
        return ""
    width, height, pad = 360, 200, 36
    top = max([p.psi for p in points] + [threshold, 1e-9]) * 1.1
    n = len(points)
    step = (width - pad - 10) / max(1, n - 1)

    def y(value: float) -> float:
        return 10 + (height - pad - 10) * (1 - value / top)

    coords = [(pad + i * step if n > 1 else pad + (width - pad) / 2, y(p.psi)) for i, p in enumerate(points)]
    line = " ".join(f"{x:.1f},{yy:.1f}" for x, yy in coords)
    dots = "".join(
        f'<circle class="trend-point" cx="{x:.1f}" cy="{yy:.1f}" r="3" fill="#d62728">'
        f"<title>{_time(p.window_start)} to {_time(p.window_end)}: PSI {p.psi:.3f}, "
        f"JS {p.jensen_shannon:.3f}, {p.count:,} values</title></circle>"
        for (x, yy), p in zip(coords, points, strict=True)
    )
    limit = (
        f'<line class="threshold" x1="{pad}" x2="{width - 4}" y1="{y(threshold):.1f}" '
        f'y2="{y(threshold):.1f}" stroke="#a4161a" stroke-dasharray="4 3"/>'
        if threshold else ""
    )
    first, last = points[0].window_end, points[-1].window_end
    return (
        f'<figure><svg class="trend" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - 4}" y2="{height - pad}" stroke="#888"/>'
        f'<text x="4" y="16" font-size="10">{top:.2f}</text>{limit}'
        f'<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{line}"/>{dots}'
        f'<text x="{pad}" y="{height - 12}" font-size="10">{_time(first)}</text>'
        f'<text x="{width - 4}" y="{height - 12}" font-size="10" text-anchor="end">{_time(last)}</text>'
        f"</svg><figcaption>PSI per window against the reference ({n} windows; dashed: "
        f"threshold)</figcaption></figure>"
    )


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _clip(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _e(text: str) -> str:
    return html.escape(text, quote=True)

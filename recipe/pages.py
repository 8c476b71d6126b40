"""Pages to look at: `report.html` beside each Test report and `summary.html` at a sweep's root.

Each page is one self-contained file (inline CSS, inline SVG charts, no script, no font, no CDN):
it opens offline from disk and makes no request. Every string taken from data (answers are model
output, prompts are dataset text, errors quote configs) goes through `html.escape`, so nothing a
model writes can become markup. `tests/test_pages.py` opens both pages in headless Chromium.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from recipe.evaluation.report import is_bound

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#1d1d1f}
h1{font-size:1.5em;margin:.2em 0 .6em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.92em;display:block;overflow-x:auto}
th,td{border:1px solid #d8d8d8;padding:4px 8px;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#f4f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#116b2c;font-weight:600}.worse{color:#a11;font-weight:600}.same,.few{color:#666}
.failed{color:#a11;font-weight:600}.note{color:#555;font-size:.9em}
.pair{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:10px;margin:.4em 0 1.2em}
.answer{border:1px solid #ddd;border-radius:6px;padding:8px 10px;background:#fafafa;white-space:pre-wrap;overflow-wrap:anywhere;max-height:22em;overflow:auto}
.answer b{display:block;margin-bottom:4px}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f4f5f7;padding:8px 10px;border-radius:6px;white-space:pre-wrap;overflow-wrap:anywhere}
svg{max-width:100%;height:auto}svg text{font:12px system-ui,sans-serif;fill:#333}
.headline{font-size:1.1em;font-weight:600}.cell{display:block;padding:2px 4px;border-radius:3px}
.cell .note{color:inherit;opacity:.85}
"""
WORDS = {"better": "better", "worse": "worse", "no difference detected": "same", "too few prompts to tell": "few"}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def number(value: Any, signed: bool = False) -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def interval(value: Any, low: Any, high: Any, signed: bool = False) -> str:
    text = number(value, signed)
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        text += f' <span class="note">[{number(low, signed)}, {number(high, signed)}]</span>'
    return text


def short(value: Any) -> str:
    """A swept value as people read it: a search sweeper's 0.6390508031418598 as 0.6391."""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:.4g}" if len(text) > 8 and "." in text else text


def word(verdict: str | None) -> str:
    if not verdict:
        return ""
    return f'<span class="{WORDS.get(verdict, "same")}">{esc(verdict)}</span>'


def markdown(text: str) -> str:
    """Markdown we wrote (a proposal: tables, bold, code blocks) as HTML, through markdown-it-py
    (CommonMark and tables); raw HTML in it is shown as text, never run."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] | None = None) -> str:
    """`rows` hold HTML already escaped (cells are built with esc/number/interval/word)."""
    numeric = numeric or [False] * len(header)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if n else f"<td>{c}</td>" for c, n in zip(r, numeric, strict=False))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def chart(title: str, bars: Sequence[tuple[str, float | None, float | None, float | None]], zero: bool = False) -> str:
    """A horizontal interval chart: one row per (label, value, low, high), a dot at the value and a
    line over the interval; a vertical line at 0 when `zero` (differences)."""
    drawn = [b for b in bars if isinstance(b[1], (int, float)) and not math.isnan(b[1])]
    if not drawn:
        return ""
    points = [p for _, v, lo, hi in drawn for p in (v, lo, hi) if isinstance(p, (int, float))]
    lo, hi = min(points + ([0.0] if zero else [])), max(points + ([0.0] if zero else []))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    label_w, plot_w, row_h = 230, 420, 22
    height = row_h * len(drawn) + 40

    def x(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * plot_w

    parts = [
        f'<svg role="img" aria-label="{esc(title)}" viewBox="0 0 {label_w + plot_w + 20} {height}" '
        f'width="{label_w + plot_w + 20}" height="{height}">',
        f'<text x="0" y="14" font-weight="600">{esc(title)}</text>',
    ]
    if zero:
        parts.append(
            f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="20" y2="{height - 14}" stroke="#999" stroke-dasharray="3,3"/>'
        )
    for i, (label, value, low, high) in enumerate(drawn):
        y = 32 + i * row_h
        parts.append(f'<text x="0" y="{y + 4}">{esc(label[:34])}</text>')
        if isinstance(low, (int, float)) and isinstance(high, (int, float)):
            parts.append(
                f'<line x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{y}" y2="{y}" stroke="#4a6fa5" stroke-width="3"/>'
            )
        parts.append(
            f'<circle cx="{x(value):.1f}" cy="{y}" r="4.5" fill="#1f3b63"><title>{esc(number(value))}</title></circle>'
        )
    for v in (lo + pad, hi - pad):
        parts.append(f'<text x="{x(v):.1f}" y="{height - 2}" text-anchor="middle">{esc(number(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- Test: report.html -------------------------------------------------------------------------------


def test_report(
    result: dict[str, Any],
    summary: dict[str, dict[str, float]],
    differences: dict[str, dict[str, Any]],
    side_by_side: Sequence[tuple[str, str, str, dict[str, str]]],
    level: float,
    positions: dict[str, dict[str, Any]] | None = None,
    headlines: Sequence[str] = (),
) -> str:
    """`side_by_side`: (suite, prompt, reference, {model: answer}) for a few prompts; `positions`:
    the position map of suites scored by context length x the answer's position; `headlines`: the
    run's first lines (each suite's lift and its word)."""
    models = list(summary)
    metrics = [m for m in dict.fromkeys(k for s in summary.values() for k in s) if not is_bound(m)]
    body = ["<h1>Test report</h1>"]
    body += [f'<p class="headline">{esc(line)}</p>' for line in headlines]
    body.append(
        "<p>"
        + "; ".join(f"<b>{esc(w)}</b>: <code>{esc(result['models'][w]['name'])}</code>" for w in models)
        + f'. <span class="note">[low, high]: {level:.0%} bootstrap interval over prompts; tuned − base is paired '
        "on the same prompts.</span></p>"
    )
    header = ["figure", *models] + (["tuned − base", ""] if differences else [])
    rows = []
    for m in metrics:
        cells = [esc(m)] + [
            interval(summary[w].get(m), summary[w].get(f"{m}_low"), summary[w].get(f"{m}_high")) for w in models
        ]
        if differences:
            d = differences.get(m) or {}
            cells += [interval(d.get("value"), d.get("low"), d.get("high"), signed=True), word(d.get("verdict"))]
        rows.append(cells)
    for name, grid in (positions or {}).items():
        body += [f"<h2>{esc(name)}: accuracy by context length and the answer's position</h2>", heatmaps(grid, models)]
    body += ["<h2>Figures</h2>", table(header, rows, [False] + [True] * (len(header) - 1))]
    for w in models:
        bars = [(m, summary[w].get(m), summary[w].get(f"{m}_low"), summary[w].get(f"{m}_high")) for m in metrics]
        body.append(chart(f"{w}: each figure with its interval", bars))
    if differences:
        bars = [(m, d.get("value"), d.get("low"), d.get("high")) for m, d in differences.items()]
        body.append(chart("tuned − base (paired)", bars, zero=True))
    if side_by_side:
        body.append("<h2>Base and tuned, side by side</h2>")
        for suite, prompt, reference, answers in side_by_side:
            body.append(f"<h3>{esc(suite)}</h3><pre>{esc(prompt[:1500])}</pre>")
            cards = [f'<div class="answer"><b>reference</b>{esc(reference[:1500])}</div>']
            cards += [f'<div class="answer"><b>{esc(w)}</b>{esc(a[:1500])}</div>' for w, a in answers.items()]
            body.append('<div class="pair">' + "".join(cards) + "</div>")
    return page("Test report", body)


def _shade(value: float | None, signed: bool) -> str:
    """A cell's background: accuracy 0..1 from white to green; a difference red (-) to green (+)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "#f4f5f7"
    if signed:
        v = max(-1.0, min(1.0, value))
        return f"rgba(17,107,44,{abs(v):.2f})" if v >= 0 else f"rgba(170,17,17,{abs(v):.2f})"
    return f"rgba(17,107,44,{max(0.0, min(1.0, value)):.2f})"


def heatmaps(grid: dict[str, Any], models: Sequence[str]) -> str:
    """The position map as tables side by side, one per model and one for tuned − base: rows the
    context length, columns the answer's position, each cell its value, interval and (differences) word."""
    cells = {(c["documents"], c["gold"]): c for c in grid["cells"]}
    panels = [(w, w) for w in models]
    if grid["cells"] and "difference" in grid["cells"][0]:
        panels.append(("tuned − base (paired)", "difference"))
    out = ['<div class="pair">']
    for title, key in panels:
        signed = key == "difference"
        rows = []
        for n in grid["documents"]:
            row = [f'{esc(n)} documents<br><span class="note">~{esc(grid["tokens"][str(n)])} tokens</span>']
            for p in grid["positions"]:
                c = (cells.get((n, p)) or {}).get(key) or {}
                value = c.get("value")
                text = interval(value, c.get("low"), c.get("high"), signed)
                if signed:
                    text += "<br>" + word(c.get("verdict"))
                light = value is not None and abs(value) > 0.6
                style = f"background:{_shade(value, signed)};" + ("color:#fff" if light else "")
                row.append(f'<span class="cell" style="{style}">{text}</span>')
            rows.append(row)
        header = ["", *[f"answer {p}" for p in grid["positions"]]]
        out.append(f"<div><b>{esc(title)}</b>{table(header, rows, [False] + [True] * len(grid['positions']))}</div>")
    out.append("</div>")
    return "".join(out)


# -- sweeps: summary.html ------------------------------------------------------------------------------


def sweep_summary(
    title: str,
    rows: Sequence[dict[str, Any]],
    swept: Sequence[dict[str, str]],
    metrics: Sequence[str],
    compared: dict[str, list[Any]],
    base: int,
    proposal: str | None,
    reports: Sequence[str | None],
    headlines: Sequence[str] = (),
) -> str:
    """What the sweep found (`headlines`), then its jobs: the swept values and Mix's shares first,
    every figure with its interval, the difference to the baseline job and the rank groups; a chart
    per figure, and the proposed mixture (its Markdown rendered). `swept`: each row's swept keys and
    their values."""
    keys = list(swept[0]) if swept else []
    body = [f'<h1>Sweep summary</h1><p class="note">{esc(title)}</p>']
    body += [f'<p class="headline">{esc(line)}</p>' for line in headlines]
    if rows and any(f"{m}.vs_baseline" in compared for m in metrics):
        body.append(
            f"<p>Baseline: job {esc(rows[base]['job'])}. Each figure: value [interval]; below it, the paired "
            "difference to the baseline on the prompts both answered, and the rank group (jobs in one group "
            "cannot be told apart; group 1 holds the best).</p>"
        )
    shares = list(dict.fromkeys(k for r in rows for k in r.get("mix", {}) if k.endswith(".share")))
    header = ["job", *keys, *shares, "status", *metrics, "report"]
    table_rows = []
    for i, row in enumerate(rows):
        status = row["status"]
        cells = [esc(row["job"]), *(esc(short(swept[i][k])) for k in keys)]
        cells += [number(row.get("mix", {}).get(k)) for k in shares]
        shown = esc(status) if status == "ok" else f'<span class="failed">{esc(status)}</span>'
        if row.get("error"):
            shown += f'<br><span class="note">{esc(str(row["error"])[:200])}</span>'
        cells.append(shown)
        for m in metrics:
            figures = row["metrics"]
            text = interval(figures.get(m), figures.get(f"{m}_low"), figures.get(f"{m}_high"))
            vs = (compared.get(f"{m}.vs_baseline") or [None] * len(rows))[i]
            rank = (compared.get(f"{m}.rank") or [None] * len(rows))[i]
            if vs and i != base:
                text += (
                    "<br>"
                    + interval(vs.get("value"), vs.get("low"), vs.get("high"), signed=True)
                    + " "
                    + word(vs.get("verdict"))
                )
            if rank is not None:
                text += f'<br><span class="note">group {esc(rank)}</span>'
            cells.append(text)
        cells.append(f'<a href="{esc(reports[i])}">report</a>' if reports[i] else "")
        table_rows.append(cells)
    body += ["<h2>Jobs</h2>", table(header, table_rows)]
    labels = [
        ", ".join(
            f"{k.rsplit('.', 2)[-2] if k.endswith('.share') else k.rsplit('.', 1)[-1]}={short(v)}"
            for k, v in values.items()
        )
        or f"job {r['job']}"
        for values, r in zip(swept, rows, strict=True)
    ]
    charts = []
    for m in metrics:
        bars = [
            (f"{label}", r["metrics"].get(m), r["metrics"].get(f"{m}_low"), r["metrics"].get(f"{m}_high"))
            for label, r in zip(labels, rows, strict=True)
        ]
        charts.append(chart(m, bars))
        vs = compared.get(f"{m}.vs_baseline")
        if vs:
            diffs = [
                (label, (d or {}).get("value"), (d or {}).get("low"), (d or {}).get("high"))
                for label, d in zip(labels, vs, strict=True)
            ]
            charts.append(chart(f"{m} − baseline (paired)", diffs, zero=True))
    if any(charts):
        body += ["<h2>Figures against the swept values</h2>", *[c for c in charts if c]]
    if proposal:
        body += [
            "<h2>Proposed mixture</h2>",
            markdown(proposal.split("\n", 1)[1] if proposal.startswith("# ") else proposal),
        ]
    return page("Sweep summary", body)

"""The Test report: headline figures, the printed summary table, report.md and chart.png.

`result` is what metrics.json holds: {"models": {base|tuned: {"name", "suites": {suite: scores},
"heldout_loss"}}, "suites": {suite: {"kind", "prompts", "skipped"}}}; each suite's scores keep the
per-prompt scores behind its figures (`per_prompt`: figure -> prompt id -> score), from which every
figure gets its bootstrap interval and tuned is compared with base, paired (uncertainty.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recipe.data.tokens import approx_tokens
from recipe.evaluation import uncertainty
from recipe.evaluation.comparison import lower_is_better
from recipe.evaluation.suites import Item

POSITION_ORDER = {"first": 0, "middle": 1, "last": 2}
# The figure a suite is headlined by, by kind: the word on its lift is the run's first line.
MAIN_FIGURE = {"mqa": "accuracy", "synthetic": "accuracy", "booksum": "rouge1", "judge": "win_rate"}

Summary = dict[str, dict[str, float]]  # model -> metric name -> value (and its interval: <name>_low, <name>_high)
Differences = dict[str, dict[str, Any]]  # metric name -> tuned - base: value, low, high, n, verdict
BOUNDS = ("_se", "_low", "_high")  # suffixes of the figures that qualify another


def is_bound(metric: str) -> bool:
    """`mqa.accuracy_low` and the like qualify a figure; they are not figures of their own."""
    return metric.endswith(BOUNDS)


def per_prompt(result: dict[str, Any], which: str) -> dict[str, dict[str, float | None]]:
    """A model's per-prompt scores by headline figure name (`mqa.accuracy` -> prompt id -> score)."""
    out: dict[str, dict[str, float | None]] = {}
    for name, scores in result["models"][which]["suites"].items():
        for metric, values in (scores.get("per_prompt") or {}).items():
            out[f"{name}.{metric}"] = values
    for component, scores in (result["models"][which].get("heldout_components") or {}).items():
        out[f"heldout.loss.{component}"] = scores["per_prompt"]["loss"]
    return out


def differences(result: dict[str, Any], settings: uncertainty.Settings) -> Differences:
    """Tuned minus base on the prompts both answered, per headline figure, with its paired interval
    and its word (none when only one model was tested)."""
    if not {"base", "tuned"} <= set(result["models"]):
        return {}
    tuned, base = per_prompt(result, "tuned"), per_prompt(result, "base")
    return {
        metric: uncertainty.paired(tuned[metric], base[metric], settings, lower_is_better(metric)).as_dict()
        for metric in tuned
        if metric in base
    }


def headline(result: dict[str, Any], kinds: dict[str, str], settings: uncertainty.Settings) -> Summary:
    """The figures a sweep compares, flat: `<suite>.win_rate`, `<suite>.rouge1/2/L`,
    `<suite>.accuracy` and `<suite>.docs<N>`, `heldout.loss` and `heldout.loss.<component>`; each
    suite figure and component loss with its bootstrap interval over prompts (`<figure>_low`,
    `<figure>_high`)."""
    out: Summary = {}
    for which, model in result["models"].items():
        flat: dict[str, float] = {}
        for name, scores in model["suites"].items():
            kind = kinds[name]
            if kind == "judge":
                if scores["win_rate"] is not None:  # None: no readable verdict at all
                    key = f"{name}.win_rate_pct" if scores.get("unit") == "%" else f"{name}.win_rate"
                    flat[key] = scores["win_rate"]
                    flat[f"{key}_se"] = scores["stderr"]
            elif kind == "booksum":
                for key in ("rouge1", "rouge2", "rougeL"):
                    flat[f"{name}.{key}"] = scores[key]
            else:
                flat[f"{name}.accuracy"] = scores["accuracy"]
                for n, value in scores["by_documents"].items():
                    flat[f"{name}.docs{n}"] = value
        if model.get("heldout_loss") is not None:
            flat["heldout.loss"] = model["heldout_loss"]
        for component, scores in (model.get("heldout_components") or {}).items():
            if scores["loss"] is not None:
                flat[f"heldout.loss.{component}"] = scores["loss"]
        for metric, scores in per_prompt(result, which).items():
            if metric in flat:
                bounds = uncertainty.figure(scores, settings)
                if bounds.n:
                    flat[f"{metric}_low"], flat[f"{metric}_high"] = bounds.low, bounds.high
        out[which] = {k: round(v, 5) for k, v in flat.items()}
    return out


def position_map(
    result: dict[str, Any], items: dict[str, list[Item]], settings: uncertainty.Settings
) -> dict[str, dict[str, Any]]:
    """The "Lost in the Middle" picture of every suite scored by context length x the answer's
    position (mqa, synthetic): per setting, each model's accuracy with its interval, and tuned - base
    paired on the setting's prompts with its word; the mean approx tokens of each length's prompts."""
    out: dict[str, dict[str, Any]] = {}
    models = list(result["models"])
    for name, suite_items in items.items():
        settings_of = {i.id: dict(i.group) for i in suite_items}
        if not suite_items or "gold" not in settings_of[suite_items[0].id]:
            continue
        scores = {w: result["models"][w]["suites"][name]["per_prompt"]["accuracy"] for w in models}
        cells = []
        keys = sorted(
            {(g["documents"], g["gold"]) for g in settings_of.values()},
            key=lambda k: (k[0], POSITION_ORDER.get(k[1], 9)),
        )
        for n, position in keys:
            ids = [i for i, g in settings_of.items() if (g["documents"], g["gold"]) == (n, position)]
            cell: dict[str, Any] = {"documents": n, "gold": position, "prompts": len(ids)}
            for w in models:
                cell[w] = uncertainty.figure({i: scores[w].get(i) for i in ids}, settings).as_dict()
            if {"base", "tuned"} <= set(models):
                tuned, base = ({i: scores[w].get(i) for i in ids} for w in ("tuned", "base"))
                cell["difference"] = uncertainty.paired(tuned, base, settings).as_dict()
            cells.append(cell)
        lengths = sorted({n for n, _ in keys})
        tokens = {
            str(n): round(
                sum(approx_tokens(i.prompt) for i in suite_items if dict(i.group)["documents"] == n)
                / max(1, sum(dict(i.group)["documents"] == n for i in suite_items))
            )
            for n in lengths
        }
        positions = sorted({p for _, p in keys}, key=lambda p: POSITION_ORDER.get(p, 9))
        out[name] = {"documents": lengths, "positions": positions, "tokens": tokens, "cells": cells}
    return out


def heldout_counts_line(result: dict[str, Any]) -> list[str]:
    """How many held-out examples of each component were measured, and how many dropped (an answer
    past the row length has no token to score; the fewest measured over the models): one line, or
    none without a held-out loss."""
    counts: dict[str, tuple[int, int]] = {}
    for model in result["models"].values():
        for component, scores in (model.get("heldout_components") or {}).items():
            measured, dropped = counts.get(component, (scores.get("examples", 0), 0))
            counts[component] = (min(measured, scores.get("examples", 0)), max(dropped, scores.get("dropped", 0)))
    if not counts:
        return []
    parts = [
        f"{c} {measured}" + (f" ({dropped} dropped)" if dropped else "")
        for c, (measured, dropped) in sorted(counts.items())
    ]
    return ["held-out examples measured: " + ", ".join(parts)]


def headline_lines(summary: Summary, differences: Differences, kinds: dict[str, str]) -> list[str]:
    """One line per suite: its main figure, base -> tuned, and the paired lift with its interval and word."""
    lines = []
    for name, kind in kinds.items():
        metric = f"{name}.{MAIN_FIGURE.get(kind, 'accuracy')}"
        d = differences.get(metric)
        if d is None or "base" not in summary or "tuned" not in summary or metric not in summary["tuned"]:
            continue
        lines.append(
            f"{name}: tuned - base {with_interval(d['value'], d['low'], d['high'], signed=True)} {d['verdict']} "
            f"({MAIN_FIGURE.get(kind, 'accuracy')} {summary['base'].get(metric, float('nan')):.3f} -> "
            f"{summary['tuned'][metric]:.3f}, {d['n']} prompts)"
        )
    return lines


def with_interval(value: float | None, low: float | None, high: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    number = f"{value:+.3f}" if signed else f"{value:.3f}"
    return number if low is None or high is None else f"{number} [{low:.3f}, {high:.3f}]"


def summary_table(summary: Summary, differences: Differences | None = None, level: float = 0.95) -> str:
    """Each headline figure per model with its interval, and tuned - base (paired) with its word."""
    models = list(summary)
    metrics = [m for m in dict.fromkeys(k for s in summary.values() for k in s) if not is_bound(m)]
    compared = bool(differences)
    header = [*models, "tuned - base"] if compared else models
    rows = []
    for metric in metrics:
        cells = [
            with_interval(summary[w].get(metric), summary[w].get(f"{metric}_low"), summary[w].get(f"{metric}_high"))
            for w in models
        ]
        if compared:
            d = (differences or {}).get(metric)
            cells.append(
                "-" if d is None else f"{with_interval(d['value'], d['low'], d['high'], signed=True)}  {d['verdict']}"
            )
        rows.append([metric, *cells])
    widths = [max(len(str(r[i])) for r in [["metric", *header], *rows]) for i in range(len(header) + 1)]
    lines = ["  ".join(f"{h:<{widths[i]}}" for i, h in enumerate(["metric", *header])).rstrip()]
    lines += ["  ".join(f"{c:<{widths[i]}}" for i, c in enumerate(r)).rstrip() for r in rows]
    lines.append(
        f"[low, high]: {level:.0%} bootstrap interval over prompts; tuned - base is paired on the same prompts"
    )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _quote(text: str, limit: int = 600) -> str:
    text = text if len(text) <= limit else text[:limit] + " …"
    return "\n".join("> " + line for line in text.splitlines() or [""])


def write_report(
    path: Path,
    result: dict[str, Any],
    summary: Summary,
    side_by_side: Sequence[tuple[Item, dict[str, str]]],
    items: dict[str, list[Item]],
    answers: dict[str, dict[str, str]],
    table: str,
    positions: dict[str, dict[str, Any]] | None = None,
) -> None:
    models = list(result["models"])

    def cell(which: str, metric: str) -> str:
        figures = summary.get(which, {})
        return with_interval(figures.get(metric), figures.get(f"{metric}_low"), figures.get(f"{metric}_high"))

    out = ["# Test report", ""]
    out += [f"- **{w}**: `{result['models'][w]['name']}`" for w in models]
    out += ["", "```", table, "```", ""]
    for name, suite in result["suites"].items():
        kind = suite["kind"]
        scores = {w: result["models"][w]["suites"][name] for w in models}
        if kind == "judge":
            protocol = result.get("judge_protocol", "both orders")
            unit = " (%)" if any(scores[w].get("unit") == "%" for w in models) else ""
            out += [f"## {name}: instruction following (win rate against the reference; judged: {protocol})", ""]
            out += [f"| Model | Win rate{unit} [interval] | ± s.e. | Prompts judged |", "|---|---|---|---|"]
            key = f"{name}.win_rate_pct" if unit else f"{name}.win_rate"
            for w in models:
                s = scores[w]
                out.append(f"| {w} | {cell(w, key)} | {_fmt(s['stderr'])} | {s['judged']} of {s['prompts']} |")
        elif kind == "booksum":
            out += [f"## {name}: summarisation (ROUGE F-measure)", ""]
            out += ["| Model | R1 | R2 | RL |", "|---|---|---|---|"]
            for w in models:
                out.append(
                    f"| {w} | " + " | ".join(cell(w, f"{name}.{k}") for k in ("rouge1", "rouge2", "rougeL")) + " |"
                )
        elif positions and name in positions:
            out += [f"## {name}: accuracy by context length and the answer's position (best_subspan_em)", ""]
            out += position_tables(positions[name], models)
            for n in positions[name]["documents"]:
                values = " | ".join(cell(w, f"{name}.docs{n}") for w in models)
                out.append(f"- {n} documents, all positions: {values.replace(' | ', ' / ')} ({' / '.join(models)})")
        else:
            out += [f"## {name}: multi-document QA (best_subspan_em)", ""]
            out += ["| " + " | ".join(["Documents", "Gold position", *models]) + " |", "|---" * (2 + len(models)) + "|"]
            first = scores[models[0]]
            for setting in first["by_position"]:
                n, position = setting.split("/")
                values = " | ".join(_fmt(scores[w]["by_position"].get(setting)) for w in models)
                out.append(f"| {n} | {position} | {values} |")
            for n in first["by_documents"]:
                values = " | ".join(cell(w, f"{name}.docs{n}") for w in models)
                out.append(f"| {n} | **all** | {values} |")
        if suite["skipped"]:
            reasons = ", ".join(f"{count} × {reason}" for reason, count in suite["skipped"].items())
            out += ["", f"Records skipped: {reasons}."]
        out += ["", f"{suite['prompts']} prompts per model.", ""]
    losses = {w: result["models"][w].get("heldout_loss") for w in models}
    if any(v is not None for v in losses.values()):
        components = sorted({c for w in models for c in result["models"][w].get("heldout_components") or {}})
        out += ["## Held-out loss (the mixture's eval split, assistant tokens; lower is better)", ""]
        out += ["| Model | All (packed) | " + " | ".join(components) + " |", "|---" * (2 + len(components)) + "|"]
        for w, v in losses.items():
            cells = [cell(w, f"heldout.loss.{c}") for c in components]
            out.append(f"| {w} | {_fmt(v)} | " + " | ".join(cells) + " |")
        if components:
            out += ["", "Per component: the mean over its held-out examples of each one's loss per answer token."]
            out += ["", *heldout_counts_line(result)]
        out.append("")
    if side_by_side:
        out += ["## Side by side (eval-split prompts)", ""]
        for i, (item, by_model) in enumerate(side_by_side, 1):
            out += [f"### Sample {i}", "", "**Prompt**", "", _quote(item.prompt), ""]
            out += ["**Reference (the mixture)**", "", _quote(item.answers[0]), ""]
            for w, text in by_model.items():
                out += [f"**{w}**", "", _quote(text), ""]
    first_items = [its[0] for its in items.values() if its]
    if first_items:
        out += ["## One prompt per suite", ""]
        for item in first_items:
            out += [f"### {item.id}", "", _quote(item.prompt, 400), ""]
            out += [f"Reference: {item.answers[0][:300]}", ""]
            for w in models:
                out += [f"- **{w}**: {answers[w][item.id][:300]!r}"]
            out.append("")
    path.write_text("\n".join(out).rstrip() + "\n")


def position_tables(positions: dict[str, Any], models: Sequence[str]) -> list[str]:
    """Markdown: a table per model (rows: context length; columns: the answer's position), each cell
    the accuracy with its interval, and tuned - base with its word."""
    cells = {(c["documents"], c["gold"]): c for c in positions["cells"]}
    header = ["Documents (~tokens)", *positions["positions"]]
    out: list[str] = []
    panels = [(w, w) for w in models] + (
        [("tuned - base", "difference")] if "difference" in positions["cells"][0] else []
    )
    for title, key in panels:
        out += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for n in positions["documents"]:
            row = [f"{n} (~{positions['tokens'][str(n)]})"]
            for p in positions["positions"]:
                c = cells.get((n, p), {}).get(key)
                text = "-" if not c else with_interval(c["value"], c["low"], c["high"], signed=key == "difference")
                if c and key == "difference":
                    text += f" {c['verdict']}"
                row.append(text)
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return out


def _heatmap(ax: Any, positions: dict[str, Any], key: str, title: str) -> None:
    """One panel of the position map: rows context length, columns the answer's position."""
    cells = {(c["documents"], c["gold"]): c.get(key) for c in positions["cells"]}
    rows, cols = positions["documents"], positions["positions"]
    diff = key == "difference"
    grid = [[(cells.get((n, p)) or {}).get("value") for p in cols] for n in rows]
    values = [[float("nan") if v is None else v for v in row] for row in grid]
    ax.imshow(values, cmap="RdBu" if diff else "viridis", vmin=-1 if diff else 0, vmax=1, aspect="auto")
    for r, n in enumerate(rows):
        for c, p in enumerate(cols):
            cell = cells.get((n, p))
            if cell and cell.get("value") is not None:
                low, high = cell.get("low"), cell.get("high")
                text = f"{cell['value']:+.2f}" if diff else f"{cell['value']:.2f}"
                if low is not None and high is not None:
                    text += f"\n[{low:.2f}, {high:.2f}]"
                light = (not diff and cell["value"] < 0.5) or (diff and abs(cell["value"]) > 0.6)
                ax.text(c, r, text, ha="center", va="center", fontsize=8, color="white" if light else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), [f"{n} docs\n~{positions['tokens'][str(n)]} tok" for n in rows])
    ax.set_xlabel("the answer's document")
    ax.set_title(title, fontsize=10)


def write_chart(path: Path, summary: Summary, positions: dict[str, dict[str, Any]] | None = None) -> None:
    """Grouped bars, one group per headline score (0–1 scale), one bar per model; the held-out loss
    on its own axis when present; below, a position map per suite scored by context length and
    position (base, tuned, tuned - base)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if positions:
        _write_with_positions(path, summary, positions, plt)
        return

    models = list(summary)
    scores = [m for m in dict.fromkeys(k for s in summary.values() for k in s) if not is_bound(m)]
    loss = "heldout.loss" in scores
    scores = [m for m in scores if m != "heldout.loss"]
    fig, axes = plt.subplots(
        1, 2 if loss else 1, figsize=(max(6, 1.1 * len(scores) + 3), 4), width_ratios=[5, 1] if loss else None
    )
    ax = axes[0] if loss else axes
    width = 0.8 / max(1, len(models))
    for i, which in enumerate(models):
        xs = [j + i * width for j in range(len(scores))]
        figures = summary[which]
        values = [figures.get(m, 0.0) for m in scores]
        below = [max(0.0, v - figures.get(f"{m}_low", v)) for m, v in zip(scores, values, strict=True)]
        above = [max(0.0, figures.get(f"{m}_high", v) - v) for m, v in zip(scores, values, strict=True)]
        ax.bar(xs, values, width, label=which, yerr=[below, above], capsize=3)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(scores))], scores, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend()
    ax.set_title("Test: " + " vs ".join(models))
    if loss:
        axes[1].bar(models, [summary[w].get("heldout.loss", 0.0) for w in models], color=["C0", "C1"][: len(models)])
        axes[1].set_title("held-out loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_with_positions(path: Path, summary: Summary, positions: dict[str, dict[str, Any]], plt: Any) -> None:
    models = list(summary)
    panels = [(w, w) for w in models]
    if any("difference" in (c for c in p["cells"][0]) for p in positions.values()):
        panels.append(("tuned - base (paired)", "difference"))
    fig, axes = plt.subplots(
        len(positions),
        len(panels),
        figsize=(3.6 * len(panels), 1.2 + 1.1 * max(len(p["documents"]) for p in positions.values())),
        squeeze=False,
    )
    for r, (name, grid) in enumerate(positions.items()):
        for c, (title, key) in enumerate(panels):
            _heatmap(axes[r][c], grid, key, f"{name}: {title}")
    fig.suptitle("accuracy by context length and the answer's position, with 95% intervals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

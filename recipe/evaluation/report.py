"""The Test report: headline figures, the printed summary table, report.md and chart.png.

`result` is what metrics.json holds: {"models": {base|tuned: {"name", "suites": {suite: scores},
"heldout_loss"}}, "suites": {suite: {"kind", "prompts", "skipped"}}}.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recipe.evaluation.suites import Item

Summary = dict[str, dict[str, float]]  # model -> metric name -> value


def headline(result: dict[str, Any], kinds: dict[str, str]) -> Summary:
    """The figures a sweep compares, flat: `<suite>.win_rate`, `<suite>.rouge1/2/L`,
    `<suite>.accuracy` and `<suite>.docs<N>`, `heldout.loss`."""
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
        out[which] = {k: round(v, 5) for k, v in flat.items()}
    return out


def summary_table(summary: Summary) -> str:
    models = list(summary)
    metrics = [m for m in dict.fromkeys(k for s in summary.values() for k in s) if not m.endswith("_se")]
    width = max([len(m) for m in metrics] + [6])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{w:>14}" for w in models)]
    for metric in metrics:
        cells = []
        for which in models:
            value = summary[which].get(metric)
            se = summary[which].get(f"{metric}_se")
            text = "-" if value is None else f"{value:.3f}" + (f" ± {se:.3f}" if se else "")
            cells.append(f"{text:>14}")
        lines.append(f"{metric:<{width}}  " + "  ".join(cells))
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
) -> None:
    models = list(result["models"])
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
            out += [f"| Model | Win rate{unit} | ± s.e. | Prompts judged |", "|---|---|---|---|"]
            for w in models:
                s = scores[w]
                out.append(f"| {w} | {_fmt(s['win_rate'])} | {_fmt(s['stderr'])} | {s['judged']} of {s['prompts']} |")
        elif kind == "booksum":
            out += [f"## {name}: summarisation (ROUGE F-measure)", ""]
            out += ["| Model | R1 | R2 | RL |", "|---|---|---|---|"]
            for w in models:
                s = scores[w]
                out.append(f"| {w} | {_fmt(s['rouge1'])} | {_fmt(s['rouge2'])} | {_fmt(s['rougeL'])} |")
        else:
            out += [f"## {name}: multi-document QA (best_subspan_em)", ""]
            out += ["| " + " | ".join(["Documents", "Gold position", *models]) + " |", "|---" * (2 + len(models)) + "|"]
            first = scores[models[0]]
            for cell in first["by_position"]:
                n, position = cell.split("/")
                values = " | ".join(_fmt(scores[w]["by_position"].get(cell)) for w in models)
                out.append(f"| {n} | {position} | {values} |")
            for n in first["by_documents"]:
                values = " | ".join(_fmt(scores[w]["by_documents"].get(n)) for w in models)
                out.append(f"| {n} | **all** | {values} |")
        if suite["skipped"]:
            reasons = ", ".join(f"{count} × {reason}" for reason, count in suite["skipped"].items())
            out += ["", f"Records skipped: {reasons}."]
        out += ["", f"{suite['prompts']} prompts per model.", ""]
    losses = {w: result["models"][w].get("heldout_loss") for w in models}
    if any(v is not None for v in losses.values()):
        out += ["## Held-out loss (the mixture's eval split, assistant tokens)", ""]
        out += ["| Model | Loss |", "|---|---|"] + [f"| {w} | {_fmt(v)} |" for w, v in losses.items()]
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


def write_chart(path: Path, summary: Summary) -> None:
    """Grouped bars, one group per headline score (0–1 scale), one bar per model; the held-out loss
    on its own axis when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary)
    scores = [m for m in dict.fromkeys(k for s in summary.values() for k in s) if not m.endswith("_se")]
    loss = "heldout.loss" in scores
    scores = [m for m in scores if m != "heldout.loss"]
    fig, axes = plt.subplots(
        1, 2 if loss else 1, figsize=(max(6, 1.1 * len(scores) + 3), 4), width_ratios=[5, 1] if loss else None
    )
    ax = axes[0] if loss else axes
    width = 0.8 / max(1, len(models))
    for i, which in enumerate(models):
        xs = [j + i * width for j in range(len(scores))]
        ax.bar(xs, [summary[which].get(m, 0.0) for m in scores], width, label=which)
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

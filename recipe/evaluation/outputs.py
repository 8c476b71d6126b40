"""Test's files, written from its scored result: metrics.json, generations.jsonl, report.md,
report.html, chart.png and summary.txt. The stage asks and scores; what a person reads is made here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipe import pages
from recipe.evaluation import report as reporting
from recipe.evaluation import uncertainty
from recipe.evaluation.contamination import view_lines
from recipe.evaluation.report import Differences, Summary
from recipe.evaluation.suites import Item

Answers = dict[str, dict[str, str]]  # model -> item id -> answer
Verdicts = dict[str, dict[str, tuple[str, str]]]  # model -> item id -> the judge's verdict pair


def write_generations(
    path: Path, items: dict[str, list[Item]], samples: list[Item], answers: Answers, verdicts: Verdicts
) -> None:
    """One line per prompt: its settings, the reference and each model's answer (and verdicts)."""
    with open(path, "w") as f:
        for item in [i for its in items.values() for i in its] + samples:
            row: dict[str, Any] = {"id": item.id, "suite": item.suite, "prompt": item.prompt}
            row.update(dict(item.group))
            row["reference"] = list(item.answers)
            for which in answers:
                row[which] = answers[which][item.id]
                if item.id in verdicts.get(which, {}):
                    row[f"{which}_judge"] = list(verdicts[which][item.id])
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_all(
    out_dir: Path,
    result: dict[str, Any],
    items: dict[str, list[Item]],
    samples: list[Item],
    answers: Answers,
    verdicts: Verdicts,
    kinds: dict[str, str],
    contamination: dict[str, Any],
    settings: uncertainty.Settings,
) -> tuple[Summary, Differences]:
    """Every file of Test's artifact; the headline figures and the tuned - base differences."""
    summary = reporting.headline(result, kinds, settings)
    differences = reporting.differences(result, settings)
    positions = reporting.position_map(result, items, settings)
    metrics_json = {**result, "summary": summary, "differences": differences, "positions": positions}
    (out_dir / "metrics.json").write_text(json.dumps(metrics_json, indent=2) + "\n")
    write_generations(out_dir / "generations.jsonl", items, samples, answers, verdicts)
    side_by_side = [(s, {w: answers[w][s.id] for w in answers}) for s in samples]
    lines = reporting.headline_lines(summary, differences, kinds)
    table = "\n".join(
        [
            *lines,
            reporting.summary_table(summary, differences, settings.level),
            *reporting.heldout_counts_line(result),
            *view_lines(contamination),
        ]
    )
    reporting.write_report(out_dir / "report.md", result, summary, side_by_side, items, answers, table, positions)
    reporting.write_chart(out_dir / "chart.png", summary, positions)
    shown = [i for its in items.values() for i in its[:2]] + list(samples)  # a few prompts per suite
    pairs = [(i.suite, i.prompt, i.answers[0], {w: answers[w][i.id] for w in answers}) for i in shown]
    page = pages.test_report(result, summary, differences, pairs, settings.level, positions, lines)
    (out_dir / "report.html").write_text(page)
    (out_dir / "summary.txt").write_text(table + "\n")
    return summary, differences

"""The pages people look at, in a real browser: Debian's headless Chromium driven by Selenium
(chromium and chromium-driver are installed by `make test`). Each page loads from disk with no
console error and no request, shows what its data says, and keeps model output as text."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from recipe import pages
from recipe.evaluation import report
from recipe.evaluation.uncertainty import Settings
from recipe.sweep import write_summary

from .browser import open_page
from .test_fit import sweep, write_sweep

HOSTILE = '<script>console.error("injected")</script><img src="http://127.0.0.1:9/x.png" onerror="alert(1)">'


def test_the_test_report_page_shows_every_figure_and_keeps_answers_as_text(browser, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(40)]

    def model(rate: float) -> dict:
        em = {i: float(rng.random() < rate) for i in ids}
        scores = {"accuracy": float(np.mean(list(em.values()))), "by_documents": {}, "per_prompt": {"accuracy": em}}
        return {"name": "m", "suites": {"mqa": scores}}

    result = {"models": {"base": model(0.3), "tuned": model(0.7)}, "suites": {}}
    summary = report.headline(result, {"mqa": "mqa"}, Settings())
    differences = report.differences(result, Settings())
    pairs = [("mqa", "Which river? " + HOSTILE, "the Nile", {"base": HOSTILE, "tuned": "**the Nile** " + HOSTILE})]
    path = tmp_path / "report.html"
    path.write_text(pages.test_report(result, summary, differences, pairs, 0.95))
    text = open_page(browser, path, tmp_path / "report.png")
    for which in ("base", "tuned"):
        assert f"{summary[which]['mqa.accuracy']:.3f}" in text
    assert f"{differences['mqa.accuracy']['value']:+.3f}" in text and differences["mqa.accuracy"]["verdict"] in text
    assert HOSTILE in text  # shown as the characters the model wrote, never run as markup


def test_the_sweep_page_shows_every_figure_of_summary_csv(browser, tmp_path: Path) -> None:
    rows, figures = sweep(12, noise=0.002)
    root = tmp_path / "sweep"
    write_sweep(root, rows, figures, objective="mqa.accuracy")
    (root / "3" / "job.json").write_text('{"job": 3, "status": "failed", "error": "' + "<b>bad</b>" + '"}')
    from recipe.sweep import fit

    fit(root)
    write_summary(root)
    text = open_page(browser, root / "summary.html", tmp_path / "summary.png")
    with open(root / "summary.csv") as f:
        for row in csv.DictReader(f):
            if row["mqa.accuracy"]:
                assert f"{float(row['mqa.accuracy']):.3f}" in text
    assert "<b>bad</b>" in text and "failed" in text
    assert "Proposed mixture" in text and "recipe mix.components." in text

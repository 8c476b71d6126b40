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


def test_the_position_map_shows_each_cell_with_its_interval_and_the_headline(browser, tmp_path: Path) -> None:
    """The main job's page: the synthetic suite's prompts at 3 and 6 documents x first/middle/last,
    a base model planted to lose answers in the middle (Lost in the Middle) and a tuned one that finds
    them everywhere; each model's grid and tuned - base, every cell with its interval and word."""
    from omegaconf import OmegaConf

    from recipe.config import SuiteConfig
    from recipe.data.sources import iter_records
    from recipe.evaluation import suites

    suite = OmegaConf.merge(
        OmegaConf.structured(SuiteConfig),
        {
            "kind": "synthetic",
            "synthetic": {"examples": 108},
            "num_documents": [3, 6],
            "gold_positions": ["first", "middle", "last"],
        },
    )
    items = suites.synthetic_items("longctx", iter_records("test.suites.longctx", suite))
    rng = np.random.default_rng(0)
    chance = {"base": {"first": 0.7, "middle": 0.1, "last": 0.5}, "tuned": {"first": 0.95, "middle": 0.9, "last": 0.95}}

    def model(which: str) -> dict:
        em = {i.id: float(rng.random() < chance[which][dict(i.group)["gold"]]) for i in items}
        scores = {"accuracy": float(np.mean(list(em.values()))), "by_documents": {}, "per_prompt": {"accuracy": em}}
        return {"name": which, "suites": {"longctx": scores}}

    result = {"models": {"base": model("base"), "tuned": model("tuned")}, "suites": {}}
    settings = Settings()
    summary = report.headline(result, {"longctx": "synthetic"}, settings)
    differences = report.differences(result, settings)
    positions = report.position_map(result, {"longctx": items}, settings)
    lines = report.headline_lines(summary, differences, {"longctx": "synthetic"})
    path = tmp_path / "report.html"
    path.write_text(pages.test_report(result, summary, differences, [], 0.95, positions, lines))
    text = open_page(browser, path, tmp_path / "positions.png")
    assert lines and lines[0].startswith("longctx: tuned - base +") and lines[0] in text
    cells = positions["longctx"]["cells"]
    assert len(cells) == 6 and all(c["prompts"] == 18 for c in cells)
    for c in cells:  # every cell's figures, intervals and word are on the page
        for which in ("base", "tuned"):
            assert f"{c[which]['value']:.3f}" in text and f"{c[which]['low']:.3f}" in text
        assert f"{c['difference']['value']:+.3f}" in text
    middle = [c for c in cells if c["gold"] == "middle"]
    assert all(c["difference"]["low"] > 0 for c in middle)  # the planted +0.8 in the middle
    # 18 prompts a cell: fewer than test.uncertainty.min_prompts, so no cell gets a word
    assert all(c["difference"]["verdict"] == "too few prompts to tell" for c in cells)
    assert "answer middle" in text and "6 documents" in text


SHARES = ("instructions", "booksum", "mqa")


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
    # What the sweep found comes first; the swept values and Mix's shares lead the table.
    assert text.index("1 of 12 jobs failed: job 3") < text.index("Jobs")
    header = [th.text for th in browser.find_elements("css selector", "table th")][:6]
    assert header[:5] == ["job", "mix.components.instructions.share", *(f"mix.{c}.share" for c in SHARES)]
    # The proposal's Markdown is rendered (its table a table, its commands code), not shown raw.
    proposal = text[text.index("Proposed mixture") :]
    assert "**" not in proposal and "```" not in proposal and "|---" not in proposal
    codes = [c.text for c in browser.find_elements("css selector", "pre code")]
    assert any(c.startswith("recipe mix.components.") for c in codes), codes
    browser.execute_script("document.querySelector('h2:last-of-type').scrollIntoView()")
    browser.save_screenshot(str(tmp_path / "proposal.png"))

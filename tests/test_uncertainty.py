"""Intervals and paired differences of Test's figures (recipe/evaluation/uncertainty.py), checked
against scipy.stats.bootstrap, and how the report shows them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from recipe.evaluation import report, uncertainty
from recipe.evaluation.uncertainty import BETTER, SAME, TOO_FEW, WORSE, Settings

RNG = np.random.default_rng(7)
A = (RNG.random(300) < 0.62).astype(float)  # exact match per prompt, two models
B = (RNG.random(300) < 0.50).astype(float)
ROUGE = RNG.beta(2, 5, size=(2, 240))  # ROUGE-like scores in [0, 1]


def by_id(values: np.ndarray) -> dict[str, float]:
    return {f"p{i}": float(v) for i, v in enumerate(values)}


@pytest.mark.parametrize("scores", [A, ROUGE[0], RNG.lognormal(0, 1, 40)])
def test_an_interval_matches_scipys_bca_bootstrap(scores: np.ndarray) -> None:
    ours = uncertainty.figure(by_id(scores), Settings(resamples=20000, seed=3))
    ref = stats.bootstrap((scores,), np.mean, n_resamples=20000, method="BCa", random_state=3)
    assert ours.value == pytest.approx(scores.mean())
    # Different generators: equal within Monte-Carlo error of a quantile of 20,000 means (over 20
    # seeds the lognormal's upper bound has a standard deviation of 0.010 here, 0.016 in scipy, and
    # both average 2.526; the tolerance is about 3 of those combined).
    tolerance = 0.01 * max(1.0, float(scores.std()) * 4)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=tolerance)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=tolerance)


@pytest.mark.parametrize(("a", "b"), [(A, B), (ROUGE[0], ROUGE[1])])
def test_a_paired_difference_matches_scipys_paired_bootstrap(a: np.ndarray, b: np.ndarray) -> None:
    ours = uncertainty.paired(by_id(a), by_id(b), Settings(resamples=20000, seed=5))
    ref = stats.bootstrap(
        (a, b),
        lambda x, y, axis=-1: np.mean(x - y, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=20000,
        method="BCa",
        random_state=5,
    )
    assert ours.value == pytest.approx((a - b).mean())
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.006)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.006)
    # Paired is narrower than the two separate intervals side by side would suggest.
    alone = [uncertainty.figure(by_id(x), Settings()) for x in (a, b)]
    assert ours.high - ours.low < (alone[0].high - alone[0].low) + (alone[1].high - alone[1].low)


def test_a_question_asked_in_several_settings_is_one_unit() -> None:
    """The MQA suite asks each question at several document counts and positions: its settings
    are resampled together (n counts questions), and the interval is the cluster bootstrap's, wider
    than one that took the settings for independent draws."""
    rng = np.random.default_rng(1)
    chance = rng.beta(0.5, 0.5, 40)
    asked = {f"mqa/{q}@{s}": float(rng.random() < chance[q]) for q in range(40) for s in range(9)}
    as_units = uncertainty.figure(asked, Settings())
    as_prompts = uncertainty.figure({k.replace("@", "-"): v for k, v in asked.items()}, Settings())
    assert as_units.n == 40 and as_prompts.n == 360 and as_units.value == as_prompts.value
    assert as_units.high - as_units.low > 2 * (as_prompts.high - as_prompts.low)
    ref = stats.bootstrap(  # the same figure as a ratio of per-question sums, resampling questions
        (np.array([sum(v for k, v in asked.items() if k.startswith(f"mqa/{q}@")) for q in range(40)]),),
        lambda x, axis=-1: np.mean(x, axis=axis) / 9,
        n_resamples=20000,
        method="BCa",
        random_state=2,
    )
    wide = uncertainty.figure(asked, Settings(resamples=20000, seed=2))
    assert wide.low == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert wide.high == pytest.approx(ref.confidence_interval.high, abs=0.01)
    assert uncertainty.unit_of("mqa/17@6docs/last") == "mqa/17" and uncertainty.unit_of("booksum/3") == "booksum/3"


def test_the_words_follow_the_interval_and_the_number_of_prompts() -> None:
    s = Settings(min_prompts=30)
    ones, zeros = np.ones(40), np.zeros(40)
    assert uncertainty.paired(by_id(ones), by_id(zeros), s).verdict == BETTER
    assert uncertainty.paired(by_id(zeros), by_id(ones), s).verdict == WORSE
    assert uncertainty.paired(by_id(zeros), by_id(ones), s, lower_is_better=True).verdict == BETTER
    same = np.tile([0.0, 1.0], 20)
    assert uncertainty.paired(by_id(same), by_id(same[::-1]), s).verdict == SAME
    assert uncertainty.paired(by_id(ones[:10]), by_id(zeros[:10]), s).verdict == TOO_FEW
    nothing = uncertainty.paired({}, {}, s)
    assert nothing.verdict == TOO_FEW and nothing.as_dict()["value"] is None  # JSON null, never NaN


def test_prompts_without_a_score_are_left_out_and_pairs_use_the_prompts_both_have() -> None:
    a = {"p0": 1.0, "p1": None, "p2": 0.0, "p3": 1.0}
    b = {"p0": 0.0, "p1": 1.0, "p2": None, "p3": 1.0}
    assert uncertainty.figure(a, Settings()).n == 3
    d = uncertainty.paired(a, b, Settings())
    assert (d.n, d.value) == (2, 0.5)


def test_draws_are_seeded_and_many_rows_are_one_product() -> None:
    s = Settings(seed=11)
    assert uncertainty.figure(by_id(A), s) == uncertainty.figure(by_id(A), s)
    rows = [by_id(A), by_id(B), by_id(np.resize(ROUGE[0], 300))]
    many = uncertainty.paired_many(rows, by_id(B), s)
    for together, alone in zip(many, [uncertainty.paired(r, by_id(B), s) for r in rows], strict=True):
        assert (together.low, together.high) == pytest.approx((alone.low, alone.high), abs=1e-12)
        assert (together.value, together.n, together.verdict) == (alone.value, alone.n, alone.verdict)
    assert many[1].value == 0.0 and many[1].low == 0.0 == many[1].high  # the baseline against itself


def result_of(tuned: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> dict:
    """A metrics.json-shaped result with one judge suite and one QA suite."""

    def model(scores: dict[str, np.ndarray]) -> dict:
        judge, qa = by_id(scores["judge"]), by_id(scores["qa"])
        return {
            "name": "m",
            "suites": {
                "alpaca_eval": {
                    "win_rate": float(np.mean(scores["judge"])),
                    "stderr": 0.01,
                    "prompts": len(judge),
                    "judged": len(judge),
                    "per_prompt": {"win_rate": judge},
                },
                "mqa": {
                    "accuracy": float(np.mean(scores["qa"])),
                    "by_documents": {"3": float(np.mean(scores["qa"]))},
                    "by_position": {},
                    "prompts": len(qa),
                    "per_prompt": {"accuracy": qa, "docs3": qa},
                },
            },
            "heldout_loss": 2.0,
        }

    return {"models": {"base": model(base), "tuned": model(tuned)}, "suites": {}}


def test_the_printed_table_and_metrics_carry_intervals_and_words() -> None:
    result = result_of({"judge": A, "qa": np.ones(5)}, {"judge": B, "qa": np.zeros(5)})
    kinds = {"alpaca_eval": "judge", "mqa": "mqa"}
    summary = report.headline(result, kinds, Settings())
    tuned = summary["tuned"]
    assert tuned["alpaca_eval.win_rate_low"] < tuned["alpaca_eval.win_rate"] < tuned["alpaca_eval.win_rate_high"]
    differences = report.differences(result, Settings())
    assert differences["alpaca_eval.win_rate"]["verdict"] == BETTER  # 300 prompts, 0.62 against 0.50
    assert differences["mqa.accuracy"]["verdict"] == TOO_FEW  # 5 prompts, however large the gap
    json.dumps(differences, allow_nan=False)
    table = report.summary_table(summary, differences)
    lines = {line.split()[0]: line for line in table.splitlines()}
    assert "[" in lines["alpaca_eval.win_rate"] and lines["alpaca_eval.win_rate"].endswith(BETTER)
    assert lines["mqa.accuracy"].endswith(TOO_FEW)
    assert "heldout.loss" in lines and "95% bootstrap interval" in table


def test_a_hundred_jobs_of_three_thousand_prompts_take_a_moment() -> None:
    """The sweep-sized case runs (its time is measured in tests/benchmarks/bench_uncertainty.py)."""
    scores = np.random.default_rng(0).random((100, 3000))
    found = uncertainty.intervals(scores, Settings())
    assert len(found) == 100 and all(f.low < f.value < f.high for f in found)

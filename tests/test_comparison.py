"""A sweep's jobs compared (recipe/evaluation/comparison.py) on planted per-prompt scores."""

from __future__ import annotations

import numpy as np
import pytest

from recipe.evaluation import comparison
from recipe.evaluation.uncertainty import BETTER, SAME, TOO_FEW, WORSE, Settings


def job_scores(rates: list[float], prompts: int = 600, seed: int = 0) -> list[dict[str, float]]:
    """Exact match per prompt for jobs of known accuracy: each prompt's chance moves with its
    difficulty, shared by every job (the same prompts, as in a real sweep), and each job draws its
    own answers."""
    rng = np.random.default_rng(seed)
    easiness = rng.uniform(-0.15, 0.15, prompts)
    return [
        {f"p{i}": float(rng.random() < min(1.0, max(0.0, rate + easiness[i]))) for i in range(prompts)}
        for rate in rates
    ]


def test_jobs_that_cannot_be_told_apart_share_a_rank_group() -> None:
    scores = job_scores([0.80, 0.79, 0.50, 0.20])
    assert comparison.rank_groups(scores, "mqa.accuracy", Settings()) == [1, 1, 2, 3]
    # A loss: lower is better, so the order turns round.
    assert comparison.rank_groups(scores, "heldout.loss", Settings()) == [3, 3, 2, 1]


def test_each_job_against_the_baseline_paired() -> None:
    scores = job_scores([0.5, 0.8, 0.5, 0.2])
    # Job 2: the baseline's answers with ten prompts won and ten lost: the same figure, a noisy pair.
    right = [k for k, v in scores[0].items() if v == 1.0][:10]
    wrong = [k for k, v in scores[0].items() if v == 0.0][:10]
    scores[2] = {**scores[0], **dict.fromkeys(right, 0.0), **dict.fromkeys(wrong, 1.0)}
    found = comparison.against_baseline([*scores, None], 0, "mqa.accuracy", Settings())
    assert [d["verdict"] for d in found[:4]] == [SAME, BETTER, SAME, WORSE]
    assert found[0]["value"] == 0.0 and found[1]["value"] == pytest.approx(0.3, abs=0.03)
    assert found[4] is None  # a failed job: no scores, no comparison
    few = comparison.against_baseline(job_scores([0.5, 0.9], prompts=10), 0, "mqa.accuracy", Settings())
    assert few[1]["verdict"] == TOO_FEW


def test_the_baseline_is_a_job_number_or_an_override() -> None:
    jobs = [{"job": 0, "overrides": ["mix.seed=0"]}, {"job": 1, "overrides": ["mix.seed=1"]}]
    assert comparison.baseline_index(jobs, None) == 0
    assert comparison.baseline_index(jobs, "1") == 1
    assert comparison.baseline_index(jobs, "mix.seed=1") == 1
    with pytest.raises(ValueError, match=r"sweep.baseline='mix.seed=7': no job .* \(jobs: 0, 1\)"):
        comparison.baseline_index(jobs, "mix.seed=7")


def test_a_handful_of_units_never_gets_an_interval_wider_than_its_data() -> None:
    """Two held-out examples per job (the main job's BookSum): some bootstrap draws repeat one example,
    their standard error is ~0 and the studentized critical value runs away; the simultaneous
    interval once read [-15183, +15184] in the share sweep's summary. It stays within what the
    examples' differences can give."""
    jobs = [{"a": 1.17, "b": 1.18}, {"a": 1.85, "b": 1.86}, {"a": 2.0, "b": 2.1}]
    found = comparison.against_baseline(jobs, 0, "heldout.loss.booksum", Settings())
    for job, d in zip(jobs[1:], found[1:], strict=True):
        diffs = [job[k] - jobs[0][k] for k in ("a", "b")]
        assert min(diffs) - 1e-9 <= d["low"] <= d["value"] <= d["high"] <= max(diffs) + 1e-9, d
        assert d["verdict"] == "too few prompts to tell"


def headline_of(scores: list[dict[str, float]], settings: Settings) -> list[str]:
    """The summary's first words for a sweep whose jobs scored `scores` (job 0 the baseline)."""
    from recipe.sweep import headline

    rows = [{"job": j, "status": "ok", "overrides": [f"mix.seed={j}"]} for j in range(len(scores))]
    compared = {
        "mqa.accuracy.vs_baseline": comparison.against_baseline(scores, 0, "mqa.accuracy", settings),
        "mqa.accuracy.rank": comparison.rank_groups(scores, "mqa.accuracy", settings),
    }
    return headline(rows, ["mix.seed"], compared, 0, "mqa.accuracy", settings.level)


def test_the_sweeps_headline_says_better_at_its_stated_error_rate_and_finds_a_planted_job() -> None:
    """Seeded sweeps of 4 jobs x 200 prompts. Identical jobs: the headline names a job better or
    worse, or splits rank group 1, in at most the 5% it states (plus simulation slack); a job planted
    +0.15 better is named better than the baseline in most sweeps, and the others never are."""
    settings = Settings(resamples=400)
    sweeps, words, splits, found = 40, 0, 0, 0
    for seed in range(sweeps):
        same = headline_of(job_scores([0.5] * 4, prompts=200, seed=seed), settings)
        assert same and same[0].startswith("mqa.accuracy: ")
        words += any(("better" in line or "worse" in line) and "rank group" not in line for line in same)
        splits += any("rank group 1" in line for line in same)
        if not any("better" in line or "worse" in line or "rank group 1" in line for line in same):
            assert same == ["mqa.accuracy: no job can be told apart from the baseline (job 0 (mix.seed=0)) yet."]
        planted = headline_of(job_scores([0.5, 0.5, 0.65, 0.5], prompts=200, seed=seed), settings)
        better = [line for line in planted if "better than the baseline" in line]
        if better and "job 2 (mix.seed=2)" in better[0]:
            found += 1
            assert "at most 5% of sweeps" in better[0]
        assert not any("job 1 (" in line.split("worse")[0] and "better" in line for line in planted)
    # Each claim at most 5%; 400 such sweeps gave 5.75% and 5.0%. Slack for 40 sweeps: up to 6.
    assert words <= 0.15 * sweeps, f"identical jobs were called better or worse in {words} of {sweeps} sweeps"
    assert splits <= 0.15 * sweeps, f"identical jobs were split from rank group 1 in {splits} of {sweeps} sweeps"
    assert found >= 0.7 * sweeps, f"the planted job was called better in only {found} of {sweeps} sweeps"


def test_a_sweep_with_too_few_prompts_or_failed_jobs_says_so_first() -> None:
    from recipe.sweep import headline

    settings = Settings()
    scores = job_scores([0.5, 0.9], prompts=10)
    rows = [
        {"job": 0, "status": "ok", "overrides": []},
        {"job": 1, "status": "ok", "overrides": []},
        {"job": 2, "status": "failed", "overrides": ["mix.total=-3"]},
    ]
    compared = {
        "mqa.accuracy.vs_baseline": comparison.against_baseline([*scores, None], 0, "mqa.accuracy", settings),
        "mqa.accuracy.rank": comparison.rank_groups([*scores, None], "mqa.accuracy", settings),
    }
    assert headline(rows, ["mix.total"], compared, 0, None, settings.level) == [
        "1 of 3 jobs failed: job 2 (mix.total=-3).",
        "mqa.accuracy: too few prompts to tell any job from the baseline (job 0).",
    ]

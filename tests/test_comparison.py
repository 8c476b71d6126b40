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

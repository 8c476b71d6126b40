"""A sweep's jobs compared on the prompts they share: each against a baseline job, paired, and
rank groups of jobs that cannot be told apart.

Every job of a sweep answers the same Test prompts (the suites are the same), so jobs are compared
like base and tuned are (uncertainty.py): the per-prompt difference, resampled. For each headline
figure:

- **against the baseline** (`sweep.baseline`: a job number, or an override the job was run with;
  default the first job): the paired difference with its interval and word;
- **rank groups**: the best job opens group 1, which holds every job whose paired difference to it
  is not detectably worse (its interval reaches 0); the best job left opens group 2, and so on. A
  job in group 1 is "as good as the best, as far as these prompts can tell". With too few prompts
  every job lands in group 1.

Lower is better for losses (`*.loss`, `heldout.loss.<component>`); higher for every other figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from recipe.evaluation import uncertainty
from recipe.evaluation.uncertainty import Settings

Scores = Mapping[str, float | None]  # prompt id -> score


def lower_is_better(metric: str) -> bool:
    """Losses (`heldout.loss`, `heldout.loss.<component>`, `eval_loss`) go down as models improve."""
    return metric.endswith("loss") or ".loss." in metric


def baseline_index(jobs: Sequence[Mapping[str, Any]], spec: str | int | None) -> int:
    """Which job is the baseline: `spec` a job number, or an override (`key=value`) among a job's
    overrides; None = the first job. An unknown one is an error naming what there is."""
    if spec is None:
        return 0
    text = str(spec)
    for i, job in enumerate(jobs):
        if text == str(job["job"]) or text in job.get("overrides", []):
            return i
    known = ", ".join(str(j["job"]) for j in jobs)
    raise ValueError(f"sweep.baseline={text!r}: no job has that number or override (jobs: {known})")


def against_baseline(
    scores: Sequence[Scores | None], base: int, metric: str, settings: Settings
) -> list[dict[str, Any] | None]:
    """Each job minus the baseline job on the prompts both answered (None where a job has no scores)."""
    if scores[base] is None:
        return [None] * len(scores)
    present = [i for i, s in enumerate(scores) if s is not None]
    found = uncertainty.paired_many(
        [scores[i] for i in present],  # type: ignore[misc]
        scores[base],  # type: ignore[arg-type]
        settings,
        lower_is_better(metric),
    )
    out: list[dict[str, Any] | None] = [None] * len(scores)
    for i, d in zip(present, found, strict=True):
        out[i] = d.as_dict()
    return out


def rank_groups(scores: Sequence[Scores | None], metric: str, settings: Settings) -> list[int | None]:
    """Group 1 = the best job and every job not detectably worse than it (paired); then the same
    among the jobs left. None for jobs without scores."""
    sign = -1.0 if lower_is_better(metric) else 1.0
    means: dict[int, float] = {}
    for i, s in enumerate(scores):
        values = [v for v in (s or {}).values() if v is not None]
        if s is not None and values:
            means[i] = sign * sum(values) / len(values)
    groups: list[int | None] = [None] * len(scores)
    left = sorted(means, key=lambda i: -means[i])
    group = 0
    while left:
        group += 1
        leader = left[0]
        differences = uncertainty.paired_many(
            [scores[i] for i in left],  # type: ignore[misc]
            scores[leader],  # type: ignore[arg-type]
            settings,
            lower_is_better(metric),
        )
        tied = [i for i, d in zip(left, differences, strict=True) if i == leader or d.verdict != uncertainty.WORSE]
        for i in tied:
            groups[i] = group
        left = [i for i in left if i not in tied]
    return groups

"""How sure a Test figure is: seeded bootstrap intervals over prompts, and paired differences.

Every suite figure Test reports is a mean of per-prompt scores (exact match 0/1 per multi-document
QA prompt, a ROUGE F-measure per BookSum chapter, a judge's points per instruction). Its interval
is the **percentile bootstrap** (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993,
ch. 13): draw the prompts with replacement `resamples` times from a seeded generator, take each
draw's mean, and read the (1 - level)/2 and (1 + level)/2 quantiles of those means.

Two models answered the same prompts, so they are compared **paired**: each draw takes the same
prompts for both and the interval is that of the mean per-prompt difference (which cancels how
hard each prompt is, and is much narrower than two separate intervals). The difference gets one
word: `better` or `worse` when the interval lies on one side of 0, `no difference detected` when it
crosses 0, and `too few prompts to tell` below `min_prompts` prompts (a percentile interval from a
handful of prompts covers far less often than it claims).

Draws are a matrix of counts (how often each prompt is drawn, one row per resample), so every
figure of every model, or of every job of a sweep, is one matrix product: `scores @ counts.T / n`.
`tests/test_uncertainty.py` checks the intervals against `scipy.stats.bootstrap` (percentile
method, paired) on fixed data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BETTER, WORSE, SAME, TOO_FEW = "better", "worse", "no difference detected", "too few prompts to tell"


@dataclass(frozen=True)
class Settings:
    """`test.uncertainty`: resamples, interval level, the generator's seed, the fewest prompts a
    difference is judged on."""

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0
    min_prompts: int = 30


@dataclass(frozen=True)
class Interval:
    """A figure (the mean over `n` prompts) and its bootstrap interval."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        """For JSON: a figure over no prompts is null, not NaN."""
        return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in self._fields().items()}

    def _fields(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


@dataclass(frozen=True)
class Difference(Interval):
    """A paired difference (`a - b` on the prompts both have) and what it says."""

    verdict: str = SAME

    def as_dict(self) -> dict[str, float | int | str | None]:  # type: ignore[override]
        return {**super().as_dict(), "verdict": self.verdict}


def counts(n: int, settings: Settings) -> np.ndarray:
    """`resamples` x `n` draw counts (each row sums to n), from the seeded generator. The same
    settings and n give the same draws, so figures over the same prompts are drawn alike."""
    rng = np.random.default_rng(settings.seed)
    draws = rng.integers(0, n, size=(settings.resamples, n)) + n * np.arange(settings.resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=settings.resamples * n).reshape(settings.resamples, n).astype(float)


def resampled_means(scores: np.ndarray, settings: Settings) -> np.ndarray:
    """Bootstrap means of each row of `scores` (rows x n prompts, no missing values): rows x resamples."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    n = scores.shape[1]
    return scores @ counts(n, settings).T / n


def _bounds(means: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - level) / 2.0
    return np.quantile(means, tail, axis=-1), np.quantile(means, 1.0 - tail, axis=-1)


def intervals(scores: np.ndarray, settings: Settings) -> list[Interval]:
    """One interval per row of `scores` (rows x n prompts, every row over the same prompts)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] == 0:
        return [Interval(float("nan"), float("nan"), float("nan"), 0) for _ in scores]
    low, high = _bounds(resampled_means(scores, settings), settings.level)
    return [
        Interval(float(v), float(lo), float(hi), scores.shape[1])
        for v, lo, hi in zip(scores.mean(axis=1), low, high, strict=True)
    ]


def verdict(low: float, high: float, n: int, settings: Settings, lower_is_better: bool = False) -> str:
    """The word for a difference's interval (a - b): better / worse for `a`, or neither."""
    if n < settings.min_prompts:
        return TOO_FEW
    if low > 0:
        return WORSE if lower_is_better else BETTER
    if high < 0:
        return BETTER if lower_is_better else WORSE
    return SAME


def paired(
    a: Mapping[str, float | None], b: Mapping[str, float | None], settings: Settings, lower_is_better: bool = False
) -> Difference:
    """`a - b` on the prompts both scored (by prompt id), with its paired bootstrap interval."""
    return paired_many([a], b, settings, lower_is_better)[0]


def figure(scores: Mapping[str, float | None], settings: Settings) -> Interval:
    """A figure over the prompts that have a score (unreadable judge verdicts are None), with its interval."""
    values = np.array([v for v in scores.values() if v is not None], dtype=np.float64)
    return intervals(values[None, :], settings)[0]


def paired_many(
    rows: Sequence[Mapping[str, float | None]],
    baseline: Mapping[str, float | None],
    settings: Settings,
    lower_is_better: bool = False,
) -> list[Difference]:
    """Each row minus the baseline, paired on the prompts the two share: a sweep's jobs against its
    baseline job. Rows over the same prompts share one matrix product."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, row in enumerate(rows):
        shared = tuple(k for k, v in row.items() if v is not None and baseline.get(k) is not None)
        groups.setdefault(shared, []).append(i)
    found: dict[int, Difference] = {}
    for shared, members in groups.items():
        if not shared:
            for i in members:
                found[i] = Difference(float("nan"), float("nan"), float("nan"), 0, TOO_FEW)
            continue
        base = np.array([baseline[k] for k in shared], dtype=np.float64)
        diffs = np.array([[rows[i][k] for k in shared] for i in members], dtype=np.float64) - base
        for i, one in zip(members, intervals(diffs, settings), strict=True):
            found[i] = Difference(
                one.value, one.low, one.high, one.n, verdict(one.low, one.high, one.n, settings, lower_is_better)
            )
    return [found[i] for i in range(len(rows))]

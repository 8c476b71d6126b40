"""How sure a Test figure is: seeded bootstrap intervals over the units that were drawn, and paired
differences.

Every suite figure Test reports is a mean of per-prompt scores (exact match 0/1 per multi-document
QA prompt, a ROUGE F-measure per BookSum chapter, a judge's points per instruction, a held-out
example's loss). Its interval resamples the **unit that was drawn**: a question that the MQA suite
asks at several document counts and gold positions is one unit (its prompt ids share the part before
`@`: `mqa/17@3docs/first`, `mqa/17@6docs/last`), every other prompt its own. Resampling the settings
of one question as if they were independent draws makes intervals and words far too sure. `n` in
reports counts units.

A figure's interval is the **BCa bootstrap** (bias-corrected and accelerated; Efron & Tibshirani,
*An Introduction to the Bootstrap*, 1993, ch. 14): draw units with replacement `resamples` times
from a seeded generator, take each draw's mean (a ratio of sums when units hold several prompts),
and read quantiles of those means moved for the draws' bias and for the skewness the jackknife
sees (`tests/test_uncertainty.py` checks it against `scipy.stats.bootstrap(method="BCa")`).

Two models answered the same prompts, so they are compared **paired**: each draw takes the same
units for both and the interval is that of the mean per-prompt difference (which cancels how hard
each prompt is). That interval decides a word, so it is the **bootstrap-t** (studentized; ibid.,
ch. 12): each draw's deviation from the estimate is divided by that draw's own standard error, and
the interval is the estimate minus those quantiles times the sample's standard error. Skewed
differences need more units than symmetric ones before a word means what it says, so the word also
needs 25 x the differences' skewness squared units (Cochran's rule), when that is more than
`min_prompts`. On a right-skewed loss at 30 examples with no true difference in the mean, the
percentile interval alone said "better" in 5-8% of runs against 2.5% per side; with both, 3-4%
(`tests/test_calibration.py` holds it; `tests/benchmarks/bench_calibration.py` prints every rate).
The difference gets one word: `better`
or `worse` when its interval lies on one side of 0, `no difference detected` when it crosses 0,
and `too few prompts to tell` below `min_prompts` units. Each such word is a test at
(1 - level) / 2 per side; when many are said at once (a sweep's jobs against its baseline, rank
groups) comparison.py holds the whole family to it.

Draws are a matrix of counts (how often each unit is drawn, one row per resample), so every figure
of every model, or of every job of a sweep, is one matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# `test.uncertainty` (resamples, interval level, the generator's seed, the fewest units a difference
# is judged on): the config's schema is the one definition, built from the composed config as it is.
from recipe.config import UncertaintyConfig as Settings

BETTER, WORSE, SAME, TOO_FEW = "better", "worse", "no difference detected", "too few prompts to tell"
NORMAL = NormalDist()
T_CAP = 1e6  # a studentized deviation past this counts as this (a draw without spread)


@dataclass(frozen=True)
class Interval:
    """A figure (the mean over the prompts of `n` units) and its bootstrap interval."""

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


def unit_of(prompt_id: str) -> str:
    """The unit a prompt was drawn as: `mqa/17@6docs/last` is one setting of question `mqa/17`."""
    return prompt_id.split("@", 1)[0]


@dataclass(frozen=True)
class Units:
    """Prompts grouped by the unit each was drawn as: `index[p]` is prompt p's unit, `sizes[u]` how
    many prompts unit u holds."""

    index: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, prompt_ids: Sequence[str]) -> Units:
        names: dict[str, int] = {}
        index = np.array([names.setdefault(unit_of(p), len(names)) for p in prompt_ids], dtype=np.int64)
        return cls(index, np.bincount(index, minlength=len(names)).astype(np.float64))

    @property
    def count(self) -> int:
        return len(self.sizes)

    def sums(self, scores: np.ndarray) -> np.ndarray:
        """Each row's scores summed per unit: rows x units."""
        scores = np.atleast_2d(scores)
        out = np.zeros((scores.shape[0], self.count))
        for row, values in zip(out, scores, strict=True):
            np.add.at(row, self.index, values)
        return out


def counts(n: int, settings: Settings) -> np.ndarray:
    """`resamples` x `n` draw counts (each row sums to n), from the seeded generator. The same
    settings and n give the same draws, so figures over the same units are drawn alike."""
    rng = np.random.default_rng(settings.seed)
    draws = rng.integers(0, n, size=(settings.resamples, n)) + n * np.arange(settings.resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=settings.resamples * n).reshape(settings.resamples, n).astype(float)


def resampled_means(sums: np.ndarray, sizes: np.ndarray, settings: Settings) -> np.ndarray:
    """Bootstrap means of each row (rows x units of per-unit sums, `sizes` prompts per unit): rows x
    resamples. A draw's mean is its drawn units' summed scores over their summed prompts."""
    drawn = counts(len(sizes), settings)
    return (np.atleast_2d(sums) @ drawn.T) / (drawn @ sizes)


def jackknife(sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each row's mean with each unit left out: rows x units."""
    sums = np.atleast_2d(sums)
    total, n = sums.sum(axis=1, keepdims=True), sizes.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total - sums) / (n - sizes)


def bca_bounds(
    estimate: np.ndarray, means: np.ndarray, leave_one_out: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """BCa interval bounds per row, from the bootstrap means (rows x resamples) and the jackknife
    estimates (rows x units), computed as scipy.stats.bootstrap(method="BCa") does."""
    b = means.shape[1]
    below = ((means < estimate[:, None]).sum(axis=1) + (means <= estimate[:, None]).sum(axis=1)) / (2 * b)
    z0 = np.array([NORMAL.inv_cdf(min(max(p, 0.5 / b), 1 - 0.5 / b)) for p in below])
    spread = leave_one_out.mean(axis=1, keepdims=True) - leave_one_out
    with np.errstate(invalid="ignore", divide="ignore"):
        accel = (spread**3).sum(axis=1) / (6 * ((spread**2).sum(axis=1)) ** 1.5)
    accel = np.nan_to_num(accel)
    low, high = np.empty(len(means)), np.empty(len(means))
    tail = (1 - level) / 2
    for i, (z, a) in enumerate(zip(z0, accel, strict=True)):
        quantiles = []
        for alpha in (tail, 1 - tail):
            za = NORMAL.inv_cdf(alpha)
            quantiles.append(NORMAL.cdf(z + (z + za) / (1 - a * (z + za))))
        low[i], high[i] = np.quantile(means[i], quantiles)
    return low, high


def studentized_bounds(sums: np.ndarray, sizes: np.ndarray, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap-t bounds of each row's mean (rows x units of per-unit sums): d - t*_hi se, d - t*_lo se,
    where t* = (d* - d) / se* over the draws and each se* is estimated from its own draw (the
    linearised variance of a ratio of sums; Efron & Tibshirani 1993, ch. 12). Where the draws' means
    are skewed and few, it keeps the error rate of a word that BCa loses (tests/test_calibration.py)."""
    sums = np.atleast_2d(sums)
    drawn = counts(len(sizes), settings)
    total = drawn @ sizes
    estimate = sums.sum(axis=1) / sizes.sum()

    def se(weights: np.ndarray, d: np.ndarray) -> np.ndarray:  # rows x draws
        tot = weights @ sizes
        spread = (sums**2) @ weights.T - 2 * d * ((sums * sizes) @ weights.T) + d**2 * (weights @ sizes**2)
        return np.sqrt(np.maximum(spread, 0.0)) / tot

    means = (sums @ drawn.T) / total
    observed = se(np.ones((1, len(sizes))), estimate[:, None])[:, 0]
    deviation = means - estimate[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):  # a draw of identical units: no spread, t infinite
        t = np.clip(np.where(np.abs(deviation) > 1e-12, deviation / se(drawn, means), 0.0), -T_CAP, T_CAP)
    tail = (1 - settings.level) / 2
    upper, lower = np.quantile(t, 1 - tail, axis=1), np.quantile(t, tail, axis=1)
    low = np.where(observed > 0, estimate - upper * observed, estimate)
    high = np.where(observed > 0, estimate - lower * observed, estimate)
    # Never wider than any draw's mean can go (an infinite t from a draw of identical units).
    return np.maximum(low, means.min(axis=1)), np.minimum(high, means.max(axis=1))


def intervals(
    scores: np.ndarray, settings: Settings, units: Units | None = None, studentized: bool = False
) -> list[Interval]:
    """One interval per row of `scores` (rows x prompts, every row over the same prompts; `units`:
    which unit each prompt was drawn as, default every prompt its own)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] == 0:
        return [Interval(float("nan"), float("nan"), float("nan"), 0) for _ in scores]
    units = units or Units(np.arange(scores.shape[1]), np.ones(scores.shape[1]))
    sums = units.sums(scores)
    estimate = scores.mean(axis=1)
    if units.count == 1:  # one unit: nothing to resample
        return [Interval(float(v), float(v), float(v), 1) for v in estimate]
    if studentized:
        low, high = studentized_bounds(sums, units.sizes, settings)
    else:
        low, high = bca_bounds(
            estimate, resampled_means(sums, units.sizes, settings), jackknife(sums, units.sizes), settings.level
        )
    return [
        Interval(float(v), float(lo), float(hi), units.count) for v, lo, hi in zip(estimate, low, high, strict=True)
    ]


SKEW_RULE = 25  # Cochran's rule: a mean is near normal from 25 x skewness^2 units on


def needed_units(unit_means: np.ndarray, settings: Settings) -> int:
    """The fewest units a word needs for these per-unit differences: `min_prompts`, or more where
    they are skewed, 25 x their skewness squared (Cochran, *Sampling Techniques*, 1977, sec. 2.15).
    A right-skewed loss at 30 examples otherwise says "better" with no true difference in 4.4-9% of
    runs against 2.5% (tests/test_calibration.py)."""
    values = np.asarray(unit_means, dtype=np.float64)
    if len(values) < 3:
        return settings.min_prompts
    centred = values - values.mean()
    spread = float(np.mean(centred**2))
    if spread <= 1e-24:
        return settings.min_prompts
    skew = float(np.mean(centred**3)) / spread**1.5
    return max(settings.min_prompts, math.ceil(SKEW_RULE * skew**2))


def verdict(
    low: float, high: float, n: int, settings: Settings, lower_is_better: bool = False, needed: int | None = None
) -> str:
    """The word for a difference's interval (a - b): better / worse for `a`, or neither (`needed`:
    the fewest units this difference needs, from needed_units; default min_prompts)."""
    if n < max(settings.min_prompts, needed or 0) or math.isnan(low) or math.isnan(high):
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
    """A figure over the prompts that have a score (unreadable judge verdicts are None), with its
    interval over the units they were drawn as."""
    kept = [(k, v) for k, v in scores.items() if v is not None]
    values = np.array([v for _, v in kept], dtype=np.float64)
    return intervals(values[None, :], settings, Units.of([k for k, _ in kept]))[0]


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
        units = Units.of(shared)
        unit_means = units.sums(diffs) / units.sizes
        for row, (i, one) in enumerate(zip(members, intervals(diffs, settings, units, studentized=True), strict=True)):
            needed = needed_units(unit_means[row], settings)
            found[i] = Difference(
                one.value,
                one.low,
                one.high,
                one.n,
                verdict(one.low, one.high, one.n, settings, lower_is_better, needed),
            )
    return [found[i] for i in range(len(rows))]

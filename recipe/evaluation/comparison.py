"""A sweep's jobs compared on the prompts they share: each against a baseline job, and rank groups of
jobs that cannot be told apart, with the error rate each word claims held for the whole sweep.

Every job of a sweep answers the same Test prompts (the suites are the same), so jobs are compared
like base and tuned are (uncertainty.py): per-prompt differences, resampled by unit, paired. A sweep
says many things at once, and some of them would be wrong by chance alone if each were a 95% test
of its own (with 9 identical jobs, some job was "better" or "worse" than the baseline in 25-30% of
sweeps; ranking 10 identical jobs split them in 57-67%). So the words are **simultaneous**: one
bootstrap of every job's mean (the same draws of units for all) gives the distribution of the
largest studentized deviation over all the comparisons made, each draw's deviation divided by that
draw's own standard error (bootstrap-t; with a fixed one, 9-11% of 50-prompt sweeps of identical
jobs split), the max-t method (Westfall & Young, *Resampling-Based Multiple Testing*, 1993; for
comparisons with a control it is Dunnett's procedure without the normality), and each comparison's
interval is its difference ± that quantile x its standard error. With no true difference anywhere, the chance that *any* word in the family is
"better"/"worse" (or that any job leaves group 1) is at most 1 - level.

- **against the baseline** (`sweep.baseline`: a job number, or an override the job was run with;
  default the first job): each job's paired difference with its simultaneous interval over the
  sweep's k - 1 comparisons and its word; the per-comparison (unadjusted) interval stays beside it,
  labelled, for reading one comparison chosen in advance;
- **rank groups** (multiple comparisons with the best, in the form of Hsu 1996 ch. 4, with the
  max-t quantile over all pairs): group 1 holds every job that no other job beats detectably, so
  the best job is in group 1 whichever it is, and picking the leader by its mean costs nothing;
  group 2 is the same among the jobs left, and so on. "Group 1" means "could be the best".

Lower is better for losses (`*.loss`, `heldout.loss.<component>`); higher for every other figure.
Below `min_prompts` units, every job is in group 1 and every word is "too few prompts to tell".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recipe.evaluation import uncertainty
from recipe.evaluation.uncertainty import Settings, Units

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


class Family:
    """The jobs with scores, on the prompts all of them scored, drawn together: their means,
    bootstrap means (jobs x resamples) and the units (for `n`)."""

    def __init__(self, scores: Sequence[Scores | None], settings: Settings) -> None:
        self.present = [i for i, s in enumerate(scores) if s is not None and any(v is not None for v in s.values())]
        shared: list[str] = []
        if self.present:
            first = scores[self.present[0]]
            assert first is not None
            shared = [
                k for k, v in first.items() if v is not None and all(scores[i].get(k) is not None for i in self.present)
            ]  # type: ignore[union-attr]
        self.units = Units.of(shared)
        self.n = self.units.count
        values = np.array([[scores[i][k] for k in shared] for i in self.present], dtype=np.float64)  # type: ignore[index]
        self.means = values.mean(axis=1) if shared else np.full(len(self.present), np.nan)
        self.sums = self.units.sums(values) if shared else np.zeros((len(self.present), 0))
        self.counts = uncertainty.counts(self.n, settings) if self.n > 1 else np.ones((1, max(self.n, 1)))
        self.draws = (
            (self.sums @ self.counts.T) / (self.counts @ self.units.sizes)
            if self.n > 1
            else np.zeros((len(self.present), 1))
        )
        self.settings = settings

    def standard_errors(self, a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The standard error of each difference a[p] - b[p] of means, estimated from units weighted
        by `weights` (draws x units: counts of a resample, or ones for the sample itself): the
        linearised variance of a ratio of sums, sum_u w_u (D_u - d c_u)^2 / (sum_u w_u c_u)^2, where
        D_u is the unit's summed difference and c_u its prompts. Pairs x draws."""
        sizes = self.units.sizes
        total = weights @ sizes  # draws
        unit_diff = self.sums[a] - self.sums[b]  # pairs x units
        d = (unit_diff @ weights.T) / total
        spread = (unit_diff**2) @ weights.T - 2 * d * ((unit_diff * sizes) @ weights.T) + d**2 * (weights @ sizes**2)
        return np.sqrt(np.maximum(spread, 0.0)) / total

    def spread(self, pairs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, float]:
        """For pairs (i, j) of positions in `present`: the differences i - j, their standard errors,
        and the simultaneous critical value: the `level` quantile, over the bootstrap draws, of the
        largest studentized deviation |d* - d| / se* among the pairs, each draw's standard error
        estimated from that draw (the bootstrap-t; Efron & Tibshirani 1993, ch. 12), which holds
        its level at 50 prompts where a fixed standard error lets 9-11% of identical sweeps split."""
        a = np.array([p[0] for p in pairs], dtype=np.int64)
        b = np.array([p[1] for p in pairs], dtype=np.int64)
        diff = self.means[a] - self.means[b]
        se = self.standard_errors(a, b, np.ones((1, self.n)))[:, 0] if self.n > 1 else np.zeros(len(pairs))
        live = se > 1e-12
        if not live.any():
            return diff, se, 0.0
        drawn = self.draws[a[live]] - self.draws[b[live]]
        drawn_se = self.standard_errors(a[live], b[live], self.counts)
        deviation = np.abs(drawn - diff[live, None])
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.minimum(np.where(deviation > 1e-12, deviation / drawn_se, 0.0), uncertainty.T_CAP)
        return diff, se, float(np.quantile(t.max(axis=0), self.settings.level))


def against_baseline(
    scores: Sequence[Scores | None], base: int, metric: str, settings: Settings
) -> list[dict[str, Any] | None]:
    """Each job minus the baseline job on the prompts all jobs answered (None where a job has no
    scores): value, the simultaneous interval (low, high) and its word, and the per-comparison
    interval (`unadjusted`: its low and high)."""
    if scores[base] is None:
        return [None] * len(scores)
    lower = lower_is_better(metric)
    family = Family(scores, settings)
    out: list[dict[str, Any] | None] = [None] * len(scores)
    if base not in family.present:
        return out
    b = family.present.index(base)
    others = [p for p in range(len(family.present)) if p != b]
    unadjusted = uncertainty.paired_many(
        [scores[i] for i in family.present],  # type: ignore[misc]
        scores[base],  # type: ignore[arg-type]
        settings,
        lower,
    )
    diff, se, crit = family.spread([(p, b) for p in others]) if others else (np.zeros(0), np.zeros(0), 0.0)
    for p in [b, *others]:
        job = family.present[p]
        if p == b:
            value, low, high = 0.0, 0.0, 0.0
        else:
            j = others.index(p)
            value, low, high = float(diff[j]), float(diff[j] - crit * se[j]), float(diff[j] + crit * se[j])
            # Never wider than the draws' differences go: with a handful of units some draws repeat one
            # unit, their standard error is ~0 and the critical value runs away.
            drawn = family.draws[p] - family.draws[b]
            low, high = max(low, float(drawn.min())), min(high, float(drawn.max()))
        unit_diff = family.sums[p] / family.units.sizes - family.sums[b] / family.units.sizes
        word = uncertainty.verdict(
            low, high, family.n, settings, lower, uncertainty.needed_units(unit_diff, settings) if p != b else None
        )
        one = unadjusted[p]
        out[job] = {
            "value": value,
            "low": low,
            "high": high,
            "n": family.n,
            "verdict": word,
            "adjusted_for": len(others),  # the comparisons the interval is simultaneous over
            "unadjusted": {"low": one.low, "high": one.high, "verdict": one.verdict},
        }
    return out


def rank_groups(scores: Sequence[Scores | None], metric: str, settings: Settings) -> list[int | None]:
    """Group 1 = every job no other job beats detectably (simultaneously over all pairs); then the
    same among the jobs left. None for jobs without scores."""
    family = Family(scores, settings)
    groups: list[int | None] = [None] * len(scores)
    if not family.present:
        return groups
    if family.n < settings.min_prompts:
        for job in family.present:
            groups[job] = 1
        return groups
    sign = -1.0 if lower_is_better(metric) else 1.0
    k = len(family.present)
    pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
    diff, se, crit = family.spread(pairs)
    beaten = {i: set() for i in range(k)}  # i -> the jobs that detectably beat it
    for (i, j), d, s in zip(pairs, diff, se, strict=True):
        if s > 1e-12 and sign * d > crit * s:  # i beats j
            beaten[j].add(i)
        elif s <= 1e-12 and sign * d > 0:  # every draw agrees: no noise at all
            beaten[j].add(i)
    left, group = set(range(k)), 0
    while left:
        group += 1
        top = {i for i in left if not (beaten[i] & left)} or left
        for i in top:
            groups[family.present[i]] = group
        left -= top
    return groups

"""Seeded simulations with planted truths: how often each word the project prints is wrong.

Each function draws `sims` sweeps (or Test runs) from a known truth and returns a rate:
tests/test_calibration.py holds them to their targets with a few hundred draws (seconds), and
tests/benchmarks/bench_calibration.py prints them with more draws, for this tree and another.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recipe.evaluation import comparison, fit, uncertainty
from recipe.evaluation.uncertainty import BETTER, WORSE, Settings


def jobs_of(rng: np.random.Generator, rates_shift: list[float], prompts: int) -> list[dict[str, float]]:
    """Exact match per prompt for jobs that share each prompt's chance (Beta(2, 2), the same prompts
    as in a real sweep), shifted per job, each job drawing its own answers."""
    chance = rng.beta(2, 2, prompts)
    return [
        {f"p{i}": float(x) for i, x in enumerate(rng.random(prompts) < np.clip(chance + shift, 0, 1))}
        for shift in rates_shift
    ]


def rank_split_rate(jobs: int, prompts: int, sims: int, seed: int = 0, settings: Settings | None = None) -> float:
    """Identical jobs: the share of sweeps that put any job outside group 1 (target <= 1 - level)."""
    rng = np.random.default_rng(seed)
    split = 0
    for s in range(sims):
        groups = comparison.rank_groups(jobs_of(rng, [0.0] * jobs, prompts), "x.accuracy", settings or Settings(seed=s))
        split += any(g != 1 for g in groups)
    return split / sims


def rank_power(jobs: int, prompts: int, margin: float, sims: int, seed: int = 0) -> float:
    """One job better by `margin`: the share of sweeps whose group 1 is that job alone."""
    rng = np.random.default_rng(seed)
    found = 0
    for s in range(sims):
        groups = comparison.rank_groups(
            jobs_of(rng, [margin] + [0.0] * (jobs - 1), prompts), "x.accuracy", Settings(seed=s)
        )
        found += groups[0] == 1 and all(g != 1 for g in groups[1:])
    return found / sims


def baseline_word_rate(jobs: int, prompts: int, sims: int, seed: int = 0) -> float:
    """Identical jobs: the share of sweeps in which any job is 'better' or 'worse' than the baseline."""
    rng = np.random.default_rng(seed)
    said = 0
    for s in range(sims):
        found = comparison.against_baseline(jobs_of(rng, [0.0] * jobs, prompts), 0, "x.accuracy", Settings(seed=s))
        said += any(d is not None and d["verdict"] in (BETTER, WORSE) for d in found)
    return said / sims


def skewed_false_better(prompts: int, sims: int, seed: int = 0, hard: float = 0.5, noise: float = 0.3) -> float:
    """A right-skewed per-example loss with no true difference in the mean: the base model's loss
    per example lognormal(0, `hard`) (0.5: the spread of the main job's held-out losses, 0.22 to
    0.94), the tuned model's that loss times mean-one lognormal noise (`noise`), so the paired
    differences are right-skewed around 0. The share of runs in which the difference says 'better'
    (target <= 2.5% + 1 point)."""
    rng = np.random.default_rng(seed)
    said = 0
    for s in range(sims):
        base = rng.lognormal(0.0, hard, prompts)
        tuned = base * np.exp(noise * rng.normal(size=prompts) - noise**2 / 2)
        d = uncertainty.paired(
            {f"p{i}": v for i, v in enumerate(tuned)}, {f"p{i}": v for i, v in enumerate(base)}, Settings(seed=s), True
        )
        said += d.verdict == BETTER
    return said / sims


def clustered_coverage(questions: int, settings_each: int, sims: int, units: bool = True, seed: int = 0) -> float:
    """MQA-like prompts: each question asked in `settings_each` settings whose answers share the
    question's difficulty. The share of runs whose interval covers the true accuracy (target: the
    level), resampling questions (`units`) or, as before, every prompt as if independent."""
    rng = np.random.default_rng(seed)
    truth = 0.5
    covered = 0
    for s in range(sims):
        chance = rng.beta(0.5, 0.5, questions)  # questions mostly easy or hard: strong clustering
        scores = {}
        for q in range(questions):
            for k in range(settings_each):
                key = f"mqa/{q}@{k}" if units else f"mqa/{q}-{k}"
                scores[key] = float(rng.random() < chance[q])
        found = uncertainty.figure(scores, Settings(seed=s))
        covered += found.low <= truth <= found.high
    return covered / sims


def noise_proposal_rate(jobs: int, components: int, sims: int, seed: int = 0) -> float:
    """Figures that do not depend on the shares: the share of sweeps that get a proposal (target <= 5%)."""
    rng = np.random.default_rng(seed)
    proposed = 0
    for s in range(sims):
        rows = _shares(rng, jobs, components)
        proposed += fit.propose(rows, list(rng.normal(0.5, 0.05, jobs)), seed=s).shares is not None
    return proposed / sims


def quadratic_proposal_rate(jobs: int, components: int, sims: int, seed: int = 0) -> float:
    """A quadratic truth with its optimum inside the range tried, measured with noise: the share of
    sweeps that get a proposal (target >= 90% from 16 jobs)."""
    return _planted(jobs, components, sims, seed, _quadratic)[0]


def _shares(rng: np.random.Generator, jobs: int, components: int) -> list[dict[str, float]]:
    draws = rng.dirichlet(np.ones(components) * 2, jobs)
    return [{f"c{i}": float(v) for i, v in enumerate(row)} for row in draws]


def _quadratic(s: np.ndarray) -> float:
    target = np.full(len(s), 1 / len(s))
    return float(0.7 - 2.0 * np.sum((s - target) ** 2))


def _planted(
    jobs: int, components: int, sims: int, seed: int, truth: Callable[[np.ndarray], float], noise: float = 0.01
) -> tuple[float, float, float]:
    """(proposal rate, interval coverage of the truth at the proposal, share of proposals on an edge)."""
    rng = np.random.default_rng(seed)
    proposed = covered = edge = 0
    for s in range(sims):
        rows = _shares(rng, jobs, components)
        y = [truth(np.array(list(r.values()))) + rng.normal(0, noise) for r in rows]
        found = fit.propose(rows, y, seed=s)
        if found.shares is None:
            continue
        proposed += 1
        value = truth(np.array([found.shares[c] for c in sorted(found.shares)]))
        covered += found.low is not None and found.low <= value <= found.high
        edge += bool(found.edges)
    return proposed / sims, covered / max(proposed, 1), edge / max(proposed, 1)

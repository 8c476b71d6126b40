"""Benchmark: the statistics of a sweep summary, 100 jobs x 3,000 prompts, 1,000 resamples.

    .venv/bin/python tests/benchmarks/bench_uncertainty.py [--jobs 100] [--prompts 3000] [--repeats 5]

Per-prompt scores are planted (exact match 0/1 and ROUGE-like values in [0, 1]); for each of
`--metrics` figures the script times, in this process:
  (a) every job's 95 % interval (uncertainty.intervals over all jobs at once),
  (b) every job against the baseline, paired (comparison.against_baseline),
  (c) the rank groups (comparison.rank_groups),
and, as the baseline to compare with, (d) scipy.stats.bootstrap (percentile, 1,000 resamples,
vectorised) on the same scores job by job, for the intervals of (a). Medians of the repeats, the
ratio (d)/(a), and the process's peak RSS (ru_maxrss).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np

from recipe.evaluation import comparison, uncertainty
from recipe.evaluation.uncertainty import Settings


def planted(jobs: int, prompts: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    easiness = rng.uniform(-0.2, 0.2, prompts)
    rates = np.linspace(0.3, 0.7, jobs)
    exact = (rng.random((jobs, prompts)) < np.clip(rates[:, None] + easiness, 0, 1)).astype(float)
    rouge = np.clip(rng.beta(2, 5, (jobs, prompts)) + rates[:, None] * 0.1, 0, 1)
    return [exact, rouge]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scipy-jobs", type=int, default=10, help="jobs timed with scipy (scaled to --jobs)")
    args = parser.parse_args()
    settings = Settings()
    metrics = planted(args.jobs, args.prompts, 0)
    ids = [f"p{i}" for i in range(args.prompts)]
    as_dicts = [[dict(zip(ids, row.tolist(), strict=True)) for row in m] for m in metrics]
    times: dict[str, list[float]] = {"intervals": [], "vs baseline": [], "rank groups": [], "scipy intervals": []}
    for _ in range(args.repeats):
        times["intervals"].append(timed(lambda: [uncertainty.intervals(m, settings) for m in metrics]))
        times["vs baseline"].append(
            timed(lambda: [comparison.against_baseline(d, 0, "mqa.accuracy", settings) for d in as_dicts])
        )
        times["rank groups"].append(
            timed(lambda: [comparison.rank_groups(d, "mqa.accuracy", settings) for d in as_dicts])
        )
        from scipy import stats

        def reference() -> None:
            for m in metrics:
                for row in m[: args.scipy_jobs]:
                    stats.bootstrap((row,), np.mean, n_resamples=1000, method="percentile", random_state=0)

        times["scipy intervals"].append(timed(reference) * args.jobs / args.scipy_jobs)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.jobs} jobs x {args.prompts:,} prompts x {len(metrics)} figures, 1,000 resamples, {args.repeats} repeats"
    )
    for name, value in medians.items():
        print(f"  {name:<16} median {value:8.3f} s")
    print(f"  scipy / ours (intervals): {medians['scipy intervals'] / medians['intervals']:.1f}x")
    print(f"  all of the summary's statistics: {sum(v for k, v in medians.items() if k != 'scipy intervals'):.2f} s")
    print(f"  peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()

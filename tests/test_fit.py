"""The proposed mixture (recipe/evaluation/fit.py) on synthetic sweeps with a planted optimum."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from recipe.evaluation.fit import propose

from .conftest import RECIPE
from .subprocesses import limit

OPTIMUM = np.array([0.5, 0.3, 0.2])  # instructions, booksum, mqa


def sweep(jobs: int, noise: float, seed: int = 0, signal: float = 1.0) -> tuple[list[dict[str, float]], list[float]]:
    """Jobs at random shares around the seed's 50/25/25; the figure peaks at OPTIMUM."""
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet([10, 6, 5], size=jobs)
    figure = 0.6 - signal * ((shares - OPTIMUM) ** 2).sum(axis=1) + rng.normal(0, noise, jobs)
    rows = [dict(zip(("instructions", "booksum", "mqa"), s.tolist(), strict=True)) for s in shares]
    return rows, figure.tolist()


def test_the_proposal_lands_near_a_planted_optimum() -> None:
    rows, figures = sweep(24, noise=0.002)
    proposal = propose(rows, figures)
    assert proposal.shares is not None and abs(sum(proposal.shares.values()) - 1.0) < 1e-9
    found = np.array([proposal.shares[c] for c in ("instructions", "booksum", "mqa")])
    assert np.abs(found - OPTIMUM).max() < 0.05, proposal
    assert proposal.loo_error < proposal.mean_error / 3
    assert abs(proposal.predicted - 0.6) < 0.01
    assert proposal.override().startswith("mix.components.booksum.share=")
    for c, (low, high) in proposal.bounds.items():  # never outside what the sweep tried
        assert low - 1e-9 <= proposal.shares[c] <= high + 1e-9


def test_a_loss_is_minimised() -> None:
    rows, figures = sweep(24, noise=0.002)
    proposal = propose(rows, [-f for f in figures], maximize=False)
    found = np.array([proposal.shares[c] for c in ("instructions", "booksum", "mqa")])
    assert np.abs(found - OPTIMUM).max() < 0.05


def test_it_says_so_when_there_are_too_few_jobs_or_only_noise() -> None:
    rows, figures = sweep(3, noise=0.002)  # 3 jobs over 2 free directions: the linear form needs 4
    few = propose(rows, figures)
    assert few.shares is None and few.verdict.startswith("too few jobs to fit: 3 finished jobs")
    rows, figures = sweep(24, noise=0.05, signal=0.0)
    noise = propose(rows, figures)
    assert noise.shares is None and "no proposal: the shares do not explain the figure beyond noise" in noise.verdict


def write_sweep(root: Path, rows: list[dict[str, float]], figures: list[float], objective: str | None) -> None:
    """A multirun directory as a sweep leaves it: per job .hydra/, run.json, Mix's manifest."""
    for job, (shares, figure) in enumerate(zip(rows, figures, strict=True)):
        job_dir = root / str(job)
        (job_dir / ".hydra").mkdir(parents=True)
        overrides = [f"mix.components.instructions.share={shares['instructions']:.4f}"]
        (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"sweep": {"objective": objective}}))
        mix = root / "store" / f"mix{job}"
        mix.mkdir(parents=True)
        (mix / "manifest.json").write_text(json.dumps({"shares": shares, "counts": {c: 10 for c in shares}}))
        run = {
            "status": "ok",
            "stages": {
                "mix": {"status": "ok", "artifact": str(mix)},
                "test": {"status": "ok", "metrics": {"mqa.accuracy": figure, "mqa.accuracy_low": figure - 0.1}},
            },
        }
        (job_dir / "run.json").write_text(json.dumps(run))
        (job_dir / "job.json").write_text(json.dumps({"job": job, "status": "completed"}))


def test_recipe_sweep_fit_writes_the_proposal_and_the_line_that_runs_it(tmp_path: Path) -> None:
    rows, figures = sweep(16, noise=0.002)
    root = tmp_path / "outputs" / "multiruns" / "2026-12-02" / "10-00-00"
    write_sweep(root, rows, figures, objective="mqa.accuracy")
    proc = subprocess.run([RECIPE, "sweep", "fit"], cwd=tmp_path, capture_output=True, text=True, timeout=limit(300))
    assert proc.returncode == 0, proc.stderr
    text = (root / "proposal.md").read_text()
    assert proc.stdout.startswith(text)
    assert "**Objective** mqa.accuracy (maximize): predicted" in text
    best, line = [line for line in text.splitlines() if line.startswith("recipe mix.components.")]
    # The best job tried comes first (the planted optimum: instructions 0.5), then the fit's proposal.
    top = max(range(len(rows)), key=lambda i: figures[i])
    assert f"**Best job** {top}: mqa.accuracy = {figures[top]:.3f}" in text
    assert float(dict(p.split("=") for p in best.split()[1:])["mix.components.instructions.share"]) == pytest.approx(
        rows[top]["instructions"], abs=1e-3
    )
    proposed = dict(part.split("=") for part in line.split()[1:])
    assert abs(float(proposed["mix.components.instructions.share"]) - 0.5) < 0.05
    assert abs(sum(float(v) for v in proposed.values()) - 1.0) < 1e-9
    # No objective configured, too few jobs: said, not guessed.
    few = tmp_path / "few"
    write_sweep(few, rows[:3], figures[:3], objective=None)
    text = subprocess.run([RECIPE, "sweep", "fit", str(few)], capture_output=True, text=True, timeout=limit(300)).stdout
    assert "too few jobs to fit: 3 finished jobs" in text and "No objective: set `sweep.objective" in text
    missing = subprocess.run(
        [RECIPE, "sweep", "fit", str(tmp_path / "nope")], capture_output=True, text=True, timeout=300
    )
    assert missing.returncode == 2 and "not a sweep's directory" in missing.stderr

"""A proposed mixture: a small regression from a sweep's shares to a figure, and the shares it
predicts are best.

The model (as RegMix and "Data Mixing Laws" fit mixtures to per-domain losses, in its smallest
form): ridge regression of the figure on the shares with a quadratic term,

    y ~ b + sum_i w_i s_i + sum_{i<=j} v_ij s_i s_j

over the components' shares s (which sum to 1, so the last share is left out of the features: it
is one minus the others). Features are standardised; the penalty is chosen from a grid by exact
leave-one-out error (for ridge, the LOO residual is r_i / (1 - h_ii), h the hat matrix's
diagonal), and that LOO error is reported next to the mean-only model's (predict each job by the
mean of the others). The proposal maximises (or minimises) the prediction over shares within
**the ranges the sweep tried** (each share between the smallest and largest value any job ran
with, the shares summing to 1): a quadratic fitted on a handful of jobs is not trusted outside
what it saw.

It says plainly when it cannot help: fewer jobs than features + 2 (too few to fit and check), or
a leave-one-out error no better than the mean's (the shares explain nothing the noise does not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass(frozen=True)
class Proposal:
    components: tuple[str, ...]
    jobs: int
    loo_error: float | None  # leave-one-out RMSE of the fit
    mean_error: float | None  # leave-one-out RMSE of predicting the mean
    shares: dict[str, float] | None  # the proposed mixture (None: no proposal)
    predicted: float | None
    bounds: dict[str, tuple[float, float]]
    verdict: str  # what to make of it, in a sentence

    def override(self) -> str | None:
        """The command-line overrides that run the proposed mixture."""
        if self.shares is None:
            return None
        return " ".join(f"mix.components.{c}.share={v:g}" for c, v in self.shares.items())


def _features(shares: np.ndarray) -> np.ndarray:
    """Linear and quadratic terms of all shares but the last."""
    free = shares[:, :-1]
    k = free.shape[1]
    quadratic = [free[:, i] * free[:, j] for i in range(k) for j in range(i, k)]
    return np.column_stack([free, *quadratic]) if k else np.zeros((len(shares), 0))


class Ridge:
    """Ridge on standardised features, intercept unpenalised; `loo` is the exact LOO RMSE."""

    def __init__(self, x: np.ndarray, y: np.ndarray, penalty: float) -> None:
        self.mu, self.sd = x.mean(axis=0), x.std(axis=0)
        self.sd[self.sd == 0] = 1.0
        z = (x - self.mu) / self.sd
        self.y_mean = y.mean()
        gram = z.T @ z + penalty * np.eye(z.shape[1])
        self.w = np.linalg.solve(gram, z.T @ (y - self.y_mean))
        hat = np.einsum("ij,jk,ik->i", z, np.linalg.inv(gram), z) + 1.0 / len(y)  # + the intercept's share
        residual = y - self.predict(x)
        self.loo = float(np.sqrt(np.mean((residual / np.clip(1.0 - hat, 1e-9, None)) ** 2)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.y_mean + ((x - self.mu) / self.sd) @ self.w


def _candidates(bounds: np.ndarray, seed: int, count: int = 20000) -> np.ndarray:
    """Share vectors summing to 1 with every share within its bounds (Dirichlet draws, kept if inside)."""
    rng = np.random.default_rng(seed)
    k = len(bounds)
    draws = rng.dirichlet(np.ones(k), size=count * 4)
    inside = draws[np.all((draws >= bounds[:, 0] - 1e-9) & (draws <= bounds[:, 1] + 1e-9), axis=1)]
    return inside[:count]


def _rounded(shares: np.ndarray, places: int = 3) -> np.ndarray:
    """Shares rounded to `places` decimals that still sum to exactly 1 (largest remainder)."""
    unit = 10**places
    scaled = shares * unit
    floors = np.floor(scaled)
    short = int(unit - floors.sum())
    order = np.argsort(-(scaled - floors))
    floors[order[:short]] += 1
    return floors / unit


def propose(
    rows: Sequence[Mapping[str, float]],
    figures: Sequence[float],
    *,
    maximize: bool = True,
    seed: int = 0,
) -> Proposal:
    """Fit the figure against the shares of `rows` (component -> share, one per finished job) and
    propose the best shares within the ranges tried."""
    components = tuple(sorted({c for row in rows for c in row}))
    shares = np.array([[row.get(c, 0.0) for c in components] for row in rows], dtype=float)
    y = np.asarray(figures, dtype=float)
    bounds = {c: (float(shares[:, i].min()), float(shares[:, i].max())) for i, c in enumerate(components)}
    n = len(y)
    x = _features(shares) if n else np.zeros((0, 0))
    needed = x.shape[1] + 2
    if n < needed or len(components) < 2:
        why = f"{n} finished jobs; a fit over {len(components)} components needs at least {needed}"
        return Proposal(components, n, None, None, None, None, bounds, f"too few jobs to fit: {why}")
    mean_error = float(np.sqrt(np.mean(((y - y.mean()) * n / (n - 1)) ** 2)))  # LOO of the mean
    best = min((Ridge(x, y, p) for p in PENALTIES), key=lambda m: m.loo)
    if best.loo >= mean_error:
        return Proposal(
            components,
            n,
            best.loo,
            mean_error,
            None,
            None,
            bounds,
            f"no proposal: the fit's leave-one-out error ({best.loo:.4g}) is no better than predicting the mean "
            f"({mean_error:.4g}); the shares tried explain nothing the noise does not",
        )
    box = np.array([bounds[c] for c in components])
    candidates = _candidates(box, seed)
    if not len(candidates):
        candidates = shares
    predicted = best.predict(_features(candidates))
    pick = int(np.argmax(predicted) if maximize else np.argmin(predicted))
    chosen = _rounded(candidates[pick])
    value = float(best.predict(_features(chosen[None, :]))[0])
    return Proposal(
        components,
        n,
        best.loo,
        mean_error,
        dict(zip(components, chosen.tolist(), strict=True)),
        value,
        bounds,
        f"predicted {value:.4g} ± {best.loo:.2g} (leave-one-out error; the mean's: {mean_error:.2g}) "
        f"from {n} jobs, within the share ranges the sweep tried",
    )
